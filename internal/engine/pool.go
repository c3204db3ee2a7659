package engine

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox"
)

// stage is one function of a route's chain, with its pool of instances.
//
// The pool has scale.max slots (workers). Records are dispatched to slots
// by key hash, by partition or by turn; a slot's process starts when the
// slot has work and stops after scale.idle_timeout without any, unless the
// slot is one of the first scale.min, which start with the pipeline and
// stay. Because a key always hashes to the same slot, whatever the number
// of live processes, per-key order holds while the pool grows and shrinks.
type stage struct {
	rt    *route
	index int
	fn    *pipelines.Function
	base  fnhost.Config
	seed  maphash.Seed
	rr    atomic.Uint64

	warm int // slots below this keep their process
	idle time.Duration

	workers []*worker // dispatch key / any

	pmu        sync.Mutex
	partitions map[string]*worker // dispatch partition

	live, started, idleStops atomic.Int64
}

func newStage(rt *route, index int, fn *pipelines.Function) (*stage, error) {
	e := rt.e
	conf := Confinement{Runtime: e.opts.Runtime}
	if e.opts.Confine != nil {
		var err error
		if conf, err = e.opts.Confine(fn); err != nil {
			return nil, fmt.Errorf("%s: function %q: %w", fn.Pos, fn.Name, err)
		}
	}
	path := conf.Path
	if path == "" {
		var err error
		if path, err = resolveCommand(fn); err != nil {
			return nil, err
		}
	}
	env := append([]string(nil), e.opts.Env...)
	keys := make([]string, 0, len(fn.Env))
	for k := range fn.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+fn.Env[k])
	}
	slots := max(fn.Scale.Max, fn.Instances, 1)
	warm := slots
	if fn.Scale.Min != nil {
		warm = min(*fn.Scale.Min, slots)
	}
	idle := time.Duration(fn.Scale.IdleTimeout)
	if idle <= 0 {
		idle = 5 * time.Minute
	}
	st := &stage{
		rt: rt, index: index, fn: fn, seed: maphash.MakeSeed(), warm: warm, idle: idle,
		base: fnhost.Config{
			Pipeline:  e.p.Name,
			Function:  fn.Name,
			Route:     rt.name,
			Instances: slots,
			Mode:      fnhost.Mode(fn.Mode),
			Path:      path,
			Args:      fn.Args,
			Env:       env,
			Dir:       fn.Dir,
			MaxBatch:  max(fn.Batch.Size, 1),
			Timeout:   time.Duration(fn.Timeout),
			KeepAlive: e.opts.KeepAlive,
			Runtime:   conf.Runtime,
			Tenant:    conf.Tenant,
			Isolation: conf.Isolation,
			Logger:    rt.log,
		},
		partitions: map[string]*worker{},
	}
	// An isolating runtime may create a container for the function now,
	// so that its first start only execs it (sandbox/container).
	// Exec mode's starts differ only in their per-record environment
	// (fnhost.ExecEnv).
	if pc, ok := conf.Runtime.(interface{ Precreate(sandbox.Spec, int) }); ok {
		spec := sandbox.Spec{Name: st.base.Name(), Path: path, Args: fn.Args, Env: env, Dir: fn.Dir,
			Tenant: cmp.Or(conf.Tenant, e.p.Name), Isolation: conf.Isolation}
		if st.base.Mode == fnhost.Exec {
			spec.Env, spec.StartEnv = fnhost.ExecEnv(env), []string{}
		}
		pc.Precreate(spec, slots)
	}
	if fn.Dispatch != "partition" {
		for i := range slots {
			st.workers = append(st.workers, st.newWorker(i, ""))
		}
	}
	return st, nil
}

func (st *stage) newWorker(i int, partition string) *worker {
	cfg := st.base
	cfg.Instance = i
	cfg.Partition = partition
	size := cfg.MaxBatch
	return &worker{
		st: st, cfg: cfg, warm: i < st.warm,
		queue: make(chan []*item, 2*size),
		wake:  make(chan struct{}, 1),
		held:  map[uint64][]*item{},
		heads: map[uint64]*item{},
	}
}

func (st *stage) start() {
	for _, w := range st.workers {
		st.rt.e.wg.Add(1)
		go w.run()
	}
}

func (st *stage) all() []*worker {
	st.pmu.Lock()
	defer st.pmu.Unlock()
	ws := append([]*worker(nil), st.workers...)
	for _, w := range st.partitions {
		ws = append(ws, w)
	}
	return ws
}

func (st *stage) close(ctx context.Context) {
	for _, w := range st.all() {
		w.closeInstance(ctx)
		w.abandon()
	}
}

// dispatch queues it on the slot that owns its key, partition or turn. It
// blocks while that slot's queue is full (back-pressure).
func (st *stage) dispatch(it *item) {
	if st.rt.e.workCtx.Err() != nil {
		it.tr.release(errAbandoned)
		return
	}
	var w *worker
	it.keyless = len(it.rec.Key) == 0
	if st.byKey() {
		// The lane (laneOf) is this hash too: compute it once.
		it.hash, it.hashed = st.keyHash(it.rec), true
		w = st.workers[it.hash%uint64(len(st.workers))]
	} else {
		w = st.pick(it.rec)
	}
	it.self[0] = it
	select {
	case w.queue <- it.self[:]:
	case <-st.rt.e.workCtx.Done():
		it.tr.release(errAbandoned)
	}
}

// dispatchBatch is dispatch for several items at once: each slot gets its
// share in one queue operation.
func (st *stage) dispatchBatch(its []*item) {
	e := st.rt.e
	if e.workCtx.Err() != nil {
		for _, it := range its {
			it.tr.release(errAbandoned)
		}
		return
	}
	type share struct {
		w   *worker
		its []*item
	}
	var shares []share
	byKey := st.byKey()
	for _, it := range its {
		var w *worker
		it.keyless = len(it.rec.Key) == 0
		if byKey {
			it.hash, it.hashed = st.keyHash(it.rec), true
			w = st.workers[it.hash%uint64(len(st.workers))]
		} else {
			w = st.pick(it.rec)
		}
		i := 0
		for i < len(shares) && shares[i].w != w {
			i++
		}
		if i == len(shares) {
			shares = append(shares, share{w: w, its: make([]*item, 0, len(its)/max(len(st.workers), 1)+1)})
		}
		shares[i].its = append(shares[i].its, it)
	}
	for _, sh := range shares {
		select {
		case sh.w.queue <- sh.its:
		case <-e.workCtx.Done():
			for _, it := range sh.its {
				it.tr.release(errAbandoned)
			}
		}
	}
}

func (st *stage) pick(rec *culvertv1.Record) *worker {
	switch st.fn.Dispatch {
	case "partition":
		p := rec.GetSource().GetPartition()
		st.pmu.Lock()
		defer st.pmu.Unlock()
		w := st.partitions[p]
		if w == nil {
			w = st.newWorker(len(st.partitions), p)
			st.partitions[p] = w
			st.rt.e.wg.Add(1)
			go w.run()
		}
		return w
	case "any":
		if st.warm >= len(st.workers) {
			// A fixed pool: take turns.
			return st.workers[st.rr.Add(1)%uint64(len(st.workers))]
		}
		// A pool that scales: fill the lowest slots first, so that higher
		// slots start their processes only under backlog.
		for _, w := range st.workers {
			if len(w.queue) < cap(w.queue)/2 {
				return w
			}
		}
		return st.workers[st.rr.Add(1)%uint64(len(st.workers))]
	default:
		if len(st.workers) == 1 {
			return st.workers[0]
		}
		return st.workers[st.keyHash(rec)%uint64(len(st.workers))]
	}
}

// byKey reports whether records go to the slot of their key's hash.
func (st *stage) byKey() bool {
	return st.fn.Dispatch != "partition" && st.fn.Dispatch != "any" && len(st.workers) > 1
}

// itemHash is keyHash of it's record, computed once per item.
func (st *stage) itemHash(it *item) uint64 {
	if !it.hashed {
		it.hash, it.hashed = st.keyHash(it.rec), true
	}
	return it.hash
}

// keyHash hashes a record's key, or its subject when it has none.
func (st *stage) keyHash(rec *culvertv1.Record) uint64 {
	if len(rec.Key) > 0 {
		return maphash.Bytes(st.seed, rec.Key)
	}
	return maphash.String(st.seed, rec.GetSource().GetSubject())
}

// laneOf is the ordered lane of a record numbered seq: with retry.lanes,
// its key hash (the subject's, for a record without a key) modulo lanes;
// otherwise its key hash (one lane per key), and a lane of its own for a
// record without a key or dispatched by turn, which has no order to keep.
func (st *stage) laneOf(it *item, seq uint64) uint64 {
	if n := st.fn.Retry.Lanes; n > 0 {
		return st.itemHash(it) % uint64(n)
	}
	if it.keyless || st.fn.Dispatch == "any" {
		return ^seq // keyed lanes are hashes: a collision only makes a record wait
	}
	return st.itemHash(it) // the key's hash, as it has one
}

// worker is one slot of a stage's pool: it owns at most one instance at a
// time, batches what is ready, and holds back the records of lanes whose
// head waits for a retry.
//
// Order: every record gets a sequence number when the worker first sees it.
// A lane is blocked while its head (the earliest record of the lane that
// failed) waits for a retry; later records of the lane, whether they arrive
// then or were already sent and come back with results, are parked in seq
// order and released when the head is done (delivered or given up). Since
// an instance answers batches in order, results are judged in send order,
// and a lane's outputs leave in seq order.
type worker struct {
	st    *stage
	cfg   fnhost.Config
	warm  bool
	queue chan []*item // items dispatched to the slot, one or more a send
	wake  chan struct{}

	lmu    sync.Mutex
	seq    uint64
	ready  readyQueue         // sendable, by seq
	units  [][]*item          // batches to send as they are (retries, bisected halves)
	held   map[uint64][]*item // parked records by lane, in seq order
	heads  map[uint64]*item   // lane -> head waiting for its retry
	closed bool

	// calls counts the calls submitted and not yet judged (see
	// settleDead).
	calls sync.WaitGroup

	mu       sync.Mutex
	inst     fnhost.Instance
	failures int // consecutive failed starts or crashes
	lastUse  time.Time
}

// readyQueue holds sendable items in seq order: those pushed in order
// (records as they arrive, the common case) in a FIFO, the others
// (requeued, or released from a lane) in a heap, so that most records
// cost no heap operation.
type readyQueue struct {
	fifo []*item // fifo[head:], ascending seq
	head int
	late itemHeap
}

func (q *readyQueue) Len() int { return len(q.fifo) - q.head + len(q.late) }

func (q *readyQueue) push(it *item) {
	n := len(q.fifo)
	if n == q.head {
		q.fifo, q.head = q.fifo[:0], 0
		q.fifo = append(q.fifo, it)
		return
	}
	if q.fifo[n-1].seq < it.seq {
		if q.head > 1024 && q.head > n/2 {
			// Reuse the consumed front of the array.
			m := copy(q.fifo, q.fifo[q.head:])
			clear(q.fifo[m:n])
			q.fifo, q.head = q.fifo[:m], 0
		}
		q.fifo = append(q.fifo, it)
		return
	}
	heap.Push(&q.late, it)
}

// peek returns the item with the lowest seq; the queue must not be empty.
func (q *readyQueue) peek() *item {
	if len(q.late) > 0 && (q.head == len(q.fifo) || q.late[0].seq < q.fifo[q.head].seq) {
		return q.late[0]
	}
	return q.fifo[q.head]
}

// pop removes and returns the item with the lowest seq.
func (q *readyQueue) pop() *item {
	if len(q.late) > 0 && (q.head == len(q.fifo) || q.late[0].seq < q.fifo[q.head].seq) {
		return heap.Pop(&q.late).(*item)
	}
	it := q.fifo[q.head]
	q.fifo[q.head] = nil
	q.head++
	return it
}

// all returns every item, in no particular order.
func (q *readyQueue) all() []*item {
	return append(append([]*item(nil), q.fifo[q.head:]...), q.late...)
}

// itemHeap orders items by seq.
type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

func (w *worker) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// blockedLocked reports whether it must wait behind its lane's head.
func (w *worker) blockedLocked(it *item) bool {
	h := w.heads[it.lane]
	return h != nil && h != it
}

// parkLocked adds it to its lane's parked records, in seq order.
func (w *worker) parkLocked(it *item) {
	l := w.held[it.lane]
	i := sort.Search(len(l), func(i int) bool { return l[i].seq > it.seq })
	l = append(l, nil)
	copy(l[i+1:], l[i:])
	l[i] = it
	w.held[it.lane] = l
}

// arrive takes records from the queue: it numbers them and makes each
// ready or parks it.
func (w *worker) arrive(its []*item) {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	for _, it := range its {
		w.arriveLocked(it)
	}
}

// arriveQueued takes its and then whatever else is queued, until it took
// n items or more, under one lock.
func (w *worker) arriveQueued(its []*item, n int) {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	for {
		for _, it := range its {
			w.arriveLocked(it)
		}
		if n -= len(its); n <= 0 {
			return
		}
		var ok bool
		if its, ok = w.tryReceive(); !ok {
			return
		}
	}
}

func (w *worker) arriveLocked(it *item) {
	if it.seq == 0 {
		w.seq++
		it.seq = w.seq
		it.lane = w.st.laneOf(it, it.seq)
	}
	if w.blockedLocked(it) {
		w.parkLocked(it)
		return
	}
	w.ready.push(it)
}

// takeReady pops up to n sendable items in seq order, parking those whose
// lane got blocked meanwhile. A solo item (one that was in a batch lost
// with its instance) goes alone: it ends the batch, or is the batch.
func (w *worker) takeReady(batch []*item, n int) []*item {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	for len(batch) < n && w.ready.Len() > 0 {
		if len(batch) > 0 && batch[0].solo {
			break
		}
		it := w.ready.peek()
		if w.blockedLocked(it) {
			w.ready.pop()
			w.parkLocked(it)
			continue
		}
		if it.solo && len(batch) > 0 {
			break
		}
		w.ready.pop()
		batch = append(batch, it)
	}
	return batch
}

func (w *worker) takeUnit() []*item {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	if len(w.units) == 0 {
		return nil
	}
	u := w.units[0]
	w.units[0] = nil
	w.units = w.units[1:]
	return u
}

// pushUnit queues items to be sent as one batch, ahead of ready records.
func (w *worker) pushUnit(items []*item) {
	w.lmu.Lock()
	if w.closed || w.st.rt.e.workCtx.Err() != nil {
		w.lmu.Unlock()
		for _, it := range items {
			it.tr.release(errAbandoned)
		}
		return
	}
	w.units = append(w.units, items)
	w.lmu.Unlock()
	w.notify()
}

// requeue puts back items that were never processed (queued behind a
// failed batch), in their order.
func (w *worker) requeue(items []*item) {
	w.lmu.Lock()
	if w.closed {
		w.lmu.Unlock()
		for _, it := range items {
			it.tr.release(errAbandoned)
		}
		return
	}
	for _, it := range items {
		w.ready.push(it)
	}
	w.lmu.Unlock()
	w.notify()
}

// unblockLocked ends its lane's wait: the parked records become ready. It
// reports whether any did.
func (w *worker) unblockLocked(it *item) bool {
	if w.heads[it.lane] != it {
		return false
	}
	delete(w.heads, it.lane)
	held := w.held[it.lane]
	for _, p := range held {
		w.ready.push(p)
	}
	delete(w.held, it.lane)
	return len(held) > 0
}

func (w *worker) hasUnits() bool {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	return len(w.units) > 0
}

func (w *worker) pending() bool {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	return w.ready.Len() > 0 || len(w.units) > 0
}

func (w *worker) run() {
	defer w.st.rt.e.wg.Done()
	ctx := w.st.rt.e.workCtx
	if w.warm {
		if _, err := w.instance(ctx); err != nil && ctx.Err() == nil {
			w.st.rt.log.Error("warm instance did not start; it is started again on the next record", "function", w.cfg.Function, "instance", w.cfg.Instance, "error", err)
		}
	}
	size := w.cfg.MaxBatch
	maxWait := time.Duration(w.st.fn.Batch.MaxWait)
	fill := time.NewTimer(time.Hour)
	fill.Stop()
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	batch := make([]*item, 0, size)
	for {
		if u := w.takeUnit(); u != nil {
			w.send(ctx, u, false)
			continue
		}
		batch = w.takeReady(batch[:0], size)
		if len(batch) == 0 {
			// Nothing to send: wait for work, and stop an idle process.
			if !w.warm && w.hasInstance() {
				idle.Reset(w.st.idle)
			}
			select {
			case its := <-w.queue:
				w.arrive(its)
			case <-w.wake:
			case <-idle.C:
				w.idleStop()
			case <-ctx.Done():
				idle.Stop()
				return
			}
			idle.Stop()
			continue
		}
		fill.Reset(maxWait)
	gather:
		for len(batch) < size {
			select {
			case its := <-w.queue:
				// Take what else is queued without another select, then
				// batch it all under one lock.
				w.arriveQueued(its, size-len(batch))
				batch = w.takeReady(batch, size)
			case <-w.wake:
				if w.hasUnits() {
					break gather // a retry is due: send what we have, then it
				}
				batch = w.takeReady(batch, size)
			case <-fill.C:
				break gather
			case <-ctx.Done():
				break gather
			}
		}
		fill.Stop()
		w.send(ctx, append([]*item(nil), batch...), true)
	}
}

// tryReceive takes queued items if some are there.
func (w *worker) tryReceive() ([]*item, bool) {
	select {
	case its := <-w.queue:
		return its, true
	default:
		return nil, false
	}
}

func (w *worker) hasInstance() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inst != nil
}

// idleStop stops the process of a slot that had no work for the idle
// timeout. It starts again on the slot's next record.
func (w *worker) idleStop() {
	w.mu.Lock()
	inst := w.inst
	if inst == nil || w.pending() || len(w.queue) > 0 || !inst.Idle() || time.Since(w.lastUse) < w.st.idle || isDead(inst) {
		// A dead instance is let go by settleDead, once its answers are
		// judged.
		w.mu.Unlock()
		return
	}
	w.inst = nil
	w.mu.Unlock()
	w.st.idleStops.Add(1)
	w.st.rt.log.Info("function instance stopped after idle timeout", "function", w.cfg.Function, "instance", w.cfg.Instance,
		"idle_timeout", w.st.idle, "live", w.st.live.Load()-1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := inst.Close(ctx); err != nil {
		w.st.rt.log.Warn("closing idle function instance", "function", w.cfg.Function, "instance", w.cfg.Instance, "error", err)
	}
}

// send submits items to a live instance, starting or restarting it as
// needed. Items that cannot be sent because of a shutdown are abandoned.
//
// When the slot's instance has died, send first waits until everything
// that instance was sent has been judged (settleDead): its failed records
// then head their lanes, and the batches queued behind it are back among
// the ready records. A regular batch (not a retry or a bisected half) was
// taken from the ready records before that, so it may hold later records
// of a lane whose earlier records have just come back; it goes back too,
// and the worker takes the ready records again in arrival order. Retries
// and bisected halves hold only records that head their lanes (or that
// their lanes wait for), and go as they are.
func (w *worker) send(ctx context.Context, items []*item, regular bool) {
	for {
		if w.settleDead() && regular {
			w.requeue(items)
			return
		}
		inst, err := w.instance(ctx)
		if errors.Is(err, errInstanceDied) {
			continue // settle it first
		}
		if err != nil {
			if ctx.Err() != nil {
				for _, it := range items {
					it.tr.release(errAbandoned)
				}
				return
			}
			// The restart policy forbids another start.
			f := failure{class: fnhost.ClassCrash, msg: err.Error()}
			for _, it := range items {
				w.giveUp(it, f)
			}
			return
		}
		w.calls.Add(1)
		if err = inst.Submit(ctx, w.call(items)); err == nil {
			return
		}
		w.calls.Done() // not taken: its Done will not run
		if ctx.Err() != nil {
			for _, it := range items {
				it.tr.release(errAbandoned)
			}
			return
		}
	}
}

// call makes the call that carries items; its answer is judged by done.
func (w *worker) call(items []*item) *fnhost.Call {
	recs := make([]*culvertv1.Record, len(items))
	attempt := 1
	for i, it := range items {
		recs[i] = it.rec
		attempt = max(attempt, it.attempt+1)
	}
	return &fnhost.Call{Records: recs, Attempt: attempt, Done: func(res []fnhost.Result, err error) {
		defer w.calls.Done()
		if err == nil {
			w.mu.Lock()
			w.failures = 0
			w.mu.Unlock()
		}
		w.done(items, res, err)
	}}
}

// settleDead waits, when the slot's instance has died, until every call it
// took has been answered and judged, so that the lanes its failures block
// are blocked, and the batches it never processed are back among the ready
// records, before anything goes to the next instance. Only then does it
// let the slot go of the dead instance, so that instance can start the
// next one. It reports whether it settled a dead instance.
func (w *worker) settleDead() bool {
	w.mu.Lock()
	inst := w.inst
	w.mu.Unlock()
	if inst == nil {
		return false
	}
	select {
	case <-inst.Dead():
	default:
		return false
	}
	w.calls.Wait()
	w.mu.Lock()
	if w.inst == inst {
		w.inst = nil
		w.failures++
	}
	w.mu.Unlock()
	return true
}

func isDead(inst fnhost.Instance) bool {
	select {
	case <-inst.Dead():
		return true
	default:
		return false
	}
}

// errInstanceDied: the slot's instance died and settleDead has not yet
// judged what it was sent.
var errInstanceDied = errors.New("function instance died")

// instance returns the live instance, or starts one with backoff when the
// slot has none. It returns errInstanceDied, without starting another, when
// the instance died: settleDead must judge its answers first.
func (w *worker) instance(ctx context.Context) (fnhost.Instance, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastUse = time.Now()
	for {
		if w.inst != nil {
			select {
			case <-w.inst.Dead():
				return nil, errInstanceDied
			default:
				return w.inst, nil
			}
		}
		r := w.st.fn.Restart
		if w.failures > 0 {
			if r.Policy == "never" {
				return nil, fmt.Errorf("function %s: instance %d stopped and restart policy is never", w.cfg.Function, w.cfg.Instance)
			}
			d := backoff(time.Duration(r.Backoff), time.Duration(r.MaxBackoff), w.failures)
			w.st.rt.log.Info("restarting function instance", "function", w.cfg.Function, "instance", w.cfg.Instance, "in", d, "failures", w.failures)
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		inst, err := fnhost.Start(ctx, w.cfg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			w.failures++
			w.st.rt.log.Error("function instance did not start", "function", w.cfg.Function, "instance", w.cfg.Instance, "error", err)
			continue
		}
		w.inst = inst
		st := w.st
		live := st.live.Add(1)
		st.started.Add(1)
		st.rt.log.Info("function instance started", "function", w.cfg.Function, "instance", w.cfg.Instance, "live", live, "warm", w.warm)
		go func() {
			<-inst.Dead()
			st.live.Add(-1)
		}()
	}
}

func (w *worker) closeInstance(ctx context.Context) {
	w.mu.Lock()
	inst := w.inst
	w.inst = nil
	w.mu.Unlock()
	if inst != nil {
		if err := inst.Close(ctx); err != nil {
			w.st.rt.log.Warn("closing function instance", "function", w.cfg.Function, "error", err)
		}
	}
}

// abandon gives back whatever is still queued, ready, parked or waiting
// for a retry after the workers stopped.
func (w *worker) abandon() {
	w.lmu.Lock()
	w.closed = true
	var left []*item
	left = append(left, w.ready.all()...)
	w.ready = readyQueue{}
	for _, u := range w.units {
		left = append(left, u...)
	}
	w.units = nil
	for _, l := range w.held {
		left = append(left, l...)
	}
	clear(w.held)
	// Heads waiting on a timer are released by pushUnit when it fires.
	w.lmu.Unlock()
	for _, it := range left {
		it.tr.release(errAbandoned)
	}
	for {
		select {
		case its := <-w.queue:
			for _, it := range its {
				it.tr.release(errAbandoned)
			}
		default:
			return
		}
	}
}

// done judges the answer for items, in the order they were sent: outputs go
// on, failures are retried or given up, records behind a blocked lane head
// are parked. It runs on the instance's reader, in batch order.
func (w *worker) done(items []*item, res []fnhost.Result, err error) {
	st := w.st
	e := st.rt.e
	if err != nil && e.workCtx.Err() != nil {
		// Lost to the shutdown, not to the function: give them back.
		for _, it := range items {
			it.tr.release(errAbandoned)
		}
		return
	}
	fails := make([]*failure, len(items))
	all := true
	if err != nil {
		var ie *fnhost.InstanceError
		f := failure{class: fnhost.ClassCrash, msg: err.Error(), retryable: true}
		if errors.As(err, &ie) {
			if ie.Bystander {
				// Never processed: send again, as the same attempt.
				w.requeue(items)
				return
			}
			f = failure{class: ie.Class, msg: ie.Error(), retryable: ie.Retryable()}
		}
		for i, it := range items {
			fails[i] = &f
			// Which record killed the instance is unknown: each goes alone
			// from now on, so that the guilty one fails alone.
			it.solo = it.solo || len(items) > 1
		}
	} else {
		failed := false
		for i := range items {
			if r := res[i].Failure; r != nil {
				fails[i] = &failure{class: fnhost.ClassFunction, msg: r.Message, retryable: r.Retryable}
				failed = true
			} else {
				all = false
			}
		}
		if !failed && w.noHeads(items) {
			// The common case: every record succeeded and no lane waits
			// for a retry, so none is parked or unblocked; the lanes are
			// checked under one lock instead of one per record.
			for i, it := range items {
				st.rt.deliver(it, res[i].Outputs, st)
			}
			return
		}
	}
	if all && len(items) > 1 && st.fn.Retry.BatchFailure == "bisect" {
		w.bisect(items, fails[0])
		return
	}
	released := false
	for i, it := range items {
		w.lmu.Lock()
		if w.blockedLocked(it) {
			// An earlier record of its lane waits for a retry: this one's
			// result is dropped, and it is sent again after that record.
			w.parkLocked(it)
			w.lmu.Unlock()
			continue
		}
		if fails[i] == nil {
			it.solo = false
			released = w.unblockLocked(it) || released
			w.lmu.Unlock()
			st.rt.deliver(it, res[i].Outputs, st)
			continue
		}
		// It heads its lane from now on, before the lock is let go: the
		// sender must not take a later record of the lane in between.
		// retryOrFail keeps it there for a retry or lets the lane go.
		if w.heads[it.lane] == nil {
			w.heads[it.lane] = it
		}
		w.lmu.Unlock()
		e.stats.failed.Add(1)
		it.attempt++
		w.retryOrFail(it, *fails[i])
	}
	if released {
		w.notify()
	}
}

// noHeads reports whether no lane waits for a retry, and if so clears
// the items' solo marks (as done does for records that succeed).
func (w *worker) noHeads(items []*item) bool {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	if len(w.heads) > 0 {
		return false
	}
	for _, it := range items {
		it.solo = false
	}
	return true
}

// bisect halves a batch whose every record failed, and resends each half
// as a batch of its own without counting an attempt, until the record that
// fails is alone. The lanes of its records wait meanwhile.
func (w *worker) bisect(items []*item, f *failure) {
	st := w.st
	var members []*item
	w.lmu.Lock()
	for _, it := range items {
		if w.blockedLocked(it) && !contains(items, w.heads[it.lane]) {
			w.parkLocked(it)
			continue
		}
		if w.heads[it.lane] == nil {
			w.heads[it.lane] = it
		}
		members = append(members, it)
	}
	w.lmu.Unlock()
	st.rt.e.stats.bisected.Add(1)
	st.rt.log.Info("batch failed as a whole; bisecting it", "function", st.fn.Name, "records", len(members), "first", firstID(members), "error", f.msg)
	if len(members) == 0 {
		return
	}
	if len(members) == 1 {
		// Alone at last: an ordinary failure.
		it := members[0]
		st.rt.e.stats.failed.Add(1)
		it.attempt++
		w.retryOrFail(it, *f)
		return
	}
	half := len(members) / 2
	w.pushUnit(members[:half:half])
	w.pushUnit(members[half:])
}

func contains(items []*item, it *item) bool {
	for _, x := range items {
		if x == it {
			return true
		}
	}
	return false
}

func firstID(items []*item) string {
	if len(items) == 0 {
		return ""
	}
	return items[0].rec.GetId()
}

// retryOrFail retries a retryable failure after a backoff, alone in its
// batch, up to max_attempts and max_record_age; its lane waits meanwhile.
// Anything else is given up.
func (w *worker) retryOrFail(it *item, f failure) {
	st := w.st
	if st.rt.e.workCtx.Err() != nil {
		// A failure during the drain may be the shutdown's doing (a killed
		// process): the broker redelivers the record instead.
		w.lmu.Lock()
		w.unblockLocked(it)
		w.lmu.Unlock()
		it.tr.release(errAbandoned)
		return
	}
	r := st.fn.Retry
	if !f.retryable || it.attempt >= max(r.MaxAttempts, 1) {
		w.giveUp(it, f)
		return
	}
	if age := time.Since(it.born); r.MaxRecordAge > 0 && age >= time.Duration(r.MaxRecordAge) {
		f.msg = fmt.Sprintf("%s (not retried: the record is %s old, max_record_age is %s)", f.msg, age.Round(time.Millisecond), r.MaxRecordAge)
		w.giveUp(it, f)
		return
	}
	w.lmu.Lock()
	w.heads[it.lane] = it
	w.lmu.Unlock()
	st.rt.e.stats.retried.Add(1)
	delay := backoff(time.Duration(r.Backoff), time.Duration(r.MaxBackoff), it.attempt)
	st.rt.log.Info("retrying record", "record", it.rec.Id, "function", st.fn.Name, "attempt", it.attempt+1, "in", delay, "error", f.msg)
	time.AfterFunc(delay, func() { w.pushUnit([]*item{it}) })
}

// giveUp fails it for good and lets its lane go on.
func (w *worker) giveUp(it *item, f failure) {
	w.lmu.Lock()
	w.unblockLocked(it)
	w.lmu.Unlock()
	w.notify()
	w.st.rt.fail(it, w.st, f)
}

// PoolStats is the state of one function's pool in one route.
type PoolStats struct {
	Route, Function string
	Min, Max        int
	Live            int64 // processes running now
	Started         int64 // processes started so far
	IdleStops       int64 // processes stopped after the idle timeout
}

// Pools reports every pool, in route and chain order.
func (e *Engine) Pools() []PoolStats {
	var out []PoolStats
	for _, rt := range e.routes {
		for _, st := range rt.stages {
			out = append(out, PoolStats{
				Route: rt.name, Function: st.fn.Name, Min: st.warm, Max: st.base.Instances,
				Live: st.live.Load(), Started: st.started.Load(), IdleStops: st.idleStops.Load(),
			})
		}
	}
	return out
}
