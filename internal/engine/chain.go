package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// item is one record on its way through a route's chain. It holds one
// reference of its tracker until it is forwarded, published or failed.
type item struct {
	rec     *culvertv1.Record
	tr      *tracker
	attempt int  // failed attempts at the current stage
	solo    bool // send in a batch of its own (isolating a poison record)
	born    time.Time
}

// route is a chain of stages and the outputs its results go to.
type route struct {
	e       *Engine
	name    string
	log     *slog.Logger
	stages  []*stage
	outputs []*output
	dlq     *output
}

// enter starts it on the chain.
func (rt *route) enter(it *item) {
	if len(rt.stages) == 0 {
		rt.deliver(it, []fnhost.Output{{Record: it.rec}}, nil)
		return
	}
	rt.stages[0].dispatch(it)
}

// deliver forwards the outputs produced for it by stage st (nil: no stage)
// to the next stage or to the route's outputs, then releases it.
func (rt *route) deliver(it *item, outs []fnhost.Output, st *stage) {
	last := st == nil || st.index == len(rt.stages)-1
	for _, o := range outs {
		if o.To == "" {
			continue
		}
		if !last {
			rt.fail(it, st, failure{class: fnhost.ClassFunction, msg: fmt.Sprintf("output aimed at %q, but function %s is not the last of route %s's chain", o.To, st.fn.Name, rt.name)})
			return
		}
		if rt.output(o.To) == nil {
			rt.fail(it, st, failure{class: fnhost.ClassFunction, msg: fmt.Sprintf("output aimed at %q, which is not an output of route %s", o.To, rt.name)})
			return
		}
	}
	for _, o := range outs {
		if !last {
			it.tr.add(1)
			rt.stages[st.index+1].dispatch(&item{rec: o.Record, tr: it.tr, born: it.born})
			continue
		}
		for _, out := range rt.outputs {
			if o.To != "" && o.To != out.name {
				continue
			}
			it.tr.add(1)
			if err := rt.e.publish(out, o.Record, it.tr); err != nil {
				// A subject that cannot be rendered is the record's fault.
				rt.fail(&item{rec: o.Record, tr: it.tr, born: it.born}, st, failure{class: "subject", msg: err.Error()})
			}
		}
	}
	it.tr.release(nil)
}

func (rt *route) output(name string) *output {
	for _, o := range rt.outputs {
		if o.name == name {
			return o
		}
	}
	return nil
}

type failure struct {
	class     fnhost.Class
	msg       string
	retryable bool
}

// fail gives up on it: to the dead-letter output when the route has one,
// otherwise the source record is given back to the broker.
func (rt *route) fail(it *item, st *stage, f failure) {
	e := rt.e
	fnName := ""
	if st != nil {
		fnName = st.fn.Name
	}
	if rt.dlq == nil {
		rt.log.Error("record failed for good and the route has no dead_letter output; the source record will be redelivered",
			"record", it.rec.Id, "function", fnName, "class", string(f.class), "attempts", it.attempt, "error", f.msg)
		it.tr.release(errors.New(f.msg))
		return
	}
	e.stats.deadLettered.Add(1)
	rt.log.Warn("record dead-lettered", "record", it.rec.Id, "function", fnName, "class", string(f.class), "attempts", it.attempt, "error", f.msg, "output", rt.dlq.name)
	rec := proto.Clone(it.rec).(*culvertv1.Record)
	src := it.tr.msg.Record.GetSource()
	rec.Headers = append(rec.Headers,
		hdr("culvert-error-class", string(f.class)),
		hdr("culvert-error-message", f.msg),
		hdr("culvert-error-function", fnName),
		hdr("culvert-error-route", rt.name),
		hdr("culvert-error-attempts", strconv.Itoa(it.attempt)),
		hdr("culvert-error-source-record", it.tr.msg.Record.GetId()),
		hdr("culvert-error-source", fmt.Sprintf("%s:%s:%s:%s:%d", src.GetConnector(), src.GetStream(), src.GetSubject(), src.GetPartition(), src.GetOffset())),
		hdr("culvert-error-time", time.Now().UTC().Format(time.RFC3339Nano)),
	)
	if rec.Source == nil {
		rec.Source = src
	}
	if rec.EventTime == nil {
		rec.EventTime = timestamppb.Now()
	}
	// The item's reference passes to the dead-letter publish.
	if err := e.publish(rt.dlq, rec, it.tr); err != nil {
		rt.log.Error("cannot dead-letter record; the source record will be redelivered", "record", rec.Id, "error", err)
		it.tr.release(err)
	}
}

func hdr(name, value string) *culvertv1.Header {
	return &culvertv1.Header{Name: name, Value: []byte(value)}
}

// stage is one function of a route's chain, with its instances.
type stage struct {
	rt    *route
	index int
	fn    *pipelines.Function
	base  fnhost.Config
	seed  maphash.Seed
	rr    atomic.Uint64

	workers []*worker // dispatch key / any

	pmu        sync.Mutex
	partitions map[string]*worker // dispatch partition
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
	st := &stage{
		rt: rt, index: index, fn: fn, seed: maphash.MakeSeed(),
		base: fnhost.Config{
			Pipeline:  e.p.Name,
			Function:  fn.Name,
			Route:     rt.name,
			Instances: max(fn.Instances, 1),
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
	if fn.Dispatch != "partition" {
		for i := range st.base.Instances {
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
	return &worker{st: st, cfg: cfg, queue: make(chan *item, 2*size)}
}

func (st *stage) start() {
	for _, w := range st.workers {
		st.rt.e.wg.Add(1)
		go w.run()
	}
}

func (st *stage) close(ctx context.Context) {
	st.pmu.Lock()
	ws := append([]*worker(nil), st.workers...)
	for _, w := range st.partitions {
		ws = append(ws, w)
	}
	st.pmu.Unlock()
	for _, w := range ws {
		w.closeInstance(ctx)
		w.abandonQueue()
	}
}

// dispatch queues it on the instance that owns its key, partition or turn.
// It blocks while that instance's queue is full (back-pressure).
func (st *stage) dispatch(it *item) {
	if st.rt.e.workCtx.Err() != nil {
		it.tr.release(errAbandoned)
		return
	}
	w := st.pick(it.rec)
	select {
	case w.queue <- it:
	case <-st.rt.e.workCtx.Done():
		it.tr.release(errAbandoned)
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
		return st.workers[st.rr.Add(1)%uint64(len(st.workers))]
	default:
		if len(st.workers) == 1 {
			return st.workers[0]
		}
		var h uint64
		if len(rec.Key) > 0 {
			h = maphash.Bytes(st.seed, rec.Key)
		} else {
			h = maphash.String(st.seed, rec.GetSource().GetSubject())
		}
		return st.workers[h%uint64(len(st.workers))]
	}
}

// done handles the answer for items: outputs go on, failures are retried
// or given up. It runs on the instance's reader, in batch order.
func (st *stage) done(items []*item, res []fnhost.Result, err error) {
	e := st.rt.e
	if err != nil && e.workCtx.Err() != nil {
		// Lost to the shutdown, not to the function: give them back.
		for _, it := range items {
			it.tr.release(errAbandoned)
		}
		return
	}
	if err != nil {
		var ie *fnhost.InstanceError
		f := failure{class: fnhost.ClassCrash, msg: err.Error(), retryable: true}
		if errors.As(err, &ie) {
			if ie.Bystander {
				// Never processed: send again, as the same attempt. Not
				// from this goroutine, which the queue may be waiting on.
				go func() {
					for _, it := range items {
						st.dispatch(it)
					}
				}()
				return
			}
			f = failure{class: ie.Class, msg: ie.Error(), retryable: ie.Retryable()}
		}
		for _, it := range items {
			e.stats.failed.Add(1)
			it.attempt++
			st.retryOrFail(it, f, len(items) > 1)
		}
		return
	}
	for i, it := range items {
		r := res[i]
		if r.Failure != nil {
			e.stats.failed.Add(1)
			it.attempt++
			st.retryOrFail(it, failure{class: fnhost.ClassFunction, msg: r.Failure.Message, retryable: r.Failure.Retryable}, false)
			continue
		}
		st.rt.deliver(it, r.Outputs, st)
	}
}

// retryOrFail retries a retryable failure after a backoff, up to the
// function's max_attempts; solo isolates the record in a batch of its own.
func (st *stage) retryOrFail(it *item, f failure, solo bool) {
	if st.rt.e.workCtx.Err() != nil {
		// A failure during the drain may be the shutdown's doing (a killed
		// process): the broker redelivers the record instead.
		it.tr.release(errAbandoned)
		return
	}
	r := st.fn.Retry
	if !f.retryable || it.attempt >= max(r.MaxAttempts, 1) {
		st.rt.fail(it, st, f)
		return
	}
	it.solo = it.solo || solo
	delay := backoff(time.Duration(r.Backoff), time.Duration(r.MaxBackoff), it.attempt)
	st.rt.log.Info("retrying record", "record", it.rec.Id, "function", st.fn.Name, "attempt", it.attempt+1, "in", delay, "error", f.msg)
	time.AfterFunc(delay, func() { st.dispatch(it) })
}

// backoff is exponential with full jitter in [d/2, d].
func backoff(base, ceiling time.Duration, attempt int) time.Duration {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if ceiling <= 0 {
		ceiling = 5 * time.Second
	}
	d := ceiling
	if n := attempt - 1; n < 63 && base <= ceiling>>n {
		d = base << n
	}
	return d/2 + rand.N(d/2+1)
}

// worker owns one instance: it batches its queue and restarts it.
type worker struct {
	st    *stage
	cfg   fnhost.Config
	queue chan *item

	mu       sync.Mutex
	inst     fnhost.Instance
	failures int // consecutive failed starts or crashes
}

func (w *worker) run() {
	defer w.st.rt.e.wg.Done()
	ctx := w.st.rt.e.workCtx
	size := w.cfg.MaxBatch
	maxWait := time.Duration(w.st.fn.Batch.MaxWait)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	batch := make([]*item, 0, size)
	for {
		var first *item
		select {
		case first = <-w.queue:
		case <-ctx.Done():
			return
		}
		if first.solo {
			w.send(ctx, []*item{first})
			continue
		}
		batch = append(batch[:0], first)
		var solo *item
		timer.Reset(maxWait)
	gather:
		for len(batch) < size {
			select {
			case it := <-w.queue:
				if it.solo {
					solo = it
					break gather
				}
				batch = append(batch, it)
			case <-timer.C:
				break gather
			case <-ctx.Done():
				break gather
			}
		}
		timer.Stop()
		w.send(ctx, append([]*item(nil), batch...))
		if solo != nil {
			w.send(ctx, []*item{solo})
		}
	}
}

// send submits items to a live instance, starting or restarting it as
// needed. Items that cannot be sent because of a shutdown are abandoned.
func (w *worker) send(ctx context.Context, items []*item) {
	recs := make([]*culvertv1.Record, len(items))
	attempt := 1
	for i, it := range items {
		recs[i] = it.rec
		attempt = max(attempt, it.attempt+1)
	}
	call := &fnhost.Call{Records: recs, Attempt: attempt, Done: func(res []fnhost.Result, err error) {
		if err == nil {
			w.mu.Lock()
			w.failures = 0
			w.mu.Unlock()
		}
		w.st.done(items, res, err)
	}}
	for {
		inst, err := w.instance(ctx)
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
				w.st.rt.fail(it, w.st, f)
			}
			return
		}
		err = inst.Submit(ctx, call)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			for _, it := range items {
				it.tr.release(errAbandoned)
			}
			return
		}
	}
}

// instance returns the live instance, (re)starting it with backoff.
func (w *worker) instance(ctx context.Context) (fnhost.Instance, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.inst != nil {
			select {
			case <-w.inst.Dead():
				w.failures++
				w.inst = nil
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

// abandonQueue gives back whatever is still queued after the workers
// stopped.
func (w *worker) abandonQueue() {
	for {
		select {
		case it := <-w.queue:
			it.tr.release(errAbandoned)
		default:
			return
		}
	}
}
