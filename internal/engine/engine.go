// Package engine runs one pipeline: it takes records from the sources,
// routes each to every matching route, runs them through the route's chain
// of function instances, publishes the results to the sinks, and settles
// each source record only when everything derived from it is confirmed.
//
// The engine owns delivery: reference-counted settlement (at-least-once
// across fan-out and chains), bounded in-flight records and bytes
// (back-pressure), each function's pool of instances (scale between min and
// max, and to zero, on stable slots: pool.go), dispatch by key, partition
// or round robin (per-key order), retries that hold back their lane, bisect,
// dead letters, the nack threshold, instance restarts and the drain on
// shutdown. docs/delivery.md states the guarantees. It does not parse configuration (pipelines), decide matches
// (router), speak function protocols (internal/fnhost) or talk to brokers
// (connectors).
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox"
)

// Options are what the engine runs on. The caller builds the connectors
// and closes them after Run returns.
type Options struct {
	Pipeline *pipelines.Pipeline
	// Sources by input name, Sinks by output name.
	Sources map[string]connectors.Source
	Sinks   map[string]connectors.Sink
	// Subjects holds each output's subject template ("" for outputs, such
	// as files, that have no subject).
	Subjects map[string]string
	Runtime  sandbox.Runtime
	// Confine, if set, chooses how each function's instances are
	// confined; otherwise every function runs on Runtime with no isolation
	// settings and its command resolved on the host.
	Confine func(fn *pipelines.Function) (Confinement, error)
	// Env is the environment every function starts with (e.g. PATH),
	// before the function's own env.
	Env    []string
	Logger *slog.Logger
	// KeepAlive is the idle ping interval for framed instances; 0 = 30s.
	KeepAlive time.Duration
}

// Confinement is how one function's instances run.
type Confinement struct {
	Runtime sandbox.Runtime
	// Tenant owns the instances; empty: the pipeline's name.
	Tenant    string
	Isolation sandbox.Isolation
	// Path is the command as the runtime sees it (e.g. inside the
	// function's own root); empty resolves fn.Command on the host.
	Path string
}

// Stats counts what happened, for summaries and tests.
type Stats struct {
	In           int64 // source records handed to the engine
	Acked        int64 // source records acked
	Naked        int64 // source records given back for redelivery
	Published    int64 // records confirmed by sinks (outputs and dead letters)
	DeadLettered int64 // records sent to a dead-letter output
	Failed       int64 // record failures reported by functions or instances
	Dropped      int64 // unmatched records dropped by policy
	Retried      int64 // retries scheduled (each holds back its lane)
	Bisected     int64 // wholly failed batches split in two
	// InstancesStarted and InstancesIdleStopped count function processes
	// started, and stopped after their idle timeout, over all pools;
	// InstancesLive is how many run now. Pools has them per function.
	InstancesStarted, InstancesIdleStopped, InstancesLive int64
	// InFlight and InFlightBytes are the source records (and their key and
	// value bytes) being processed now.
	InFlight, InFlightBytes int64
}

// Engine runs one pipeline.
type Engine struct {
	p       *pipelines.Pipeline
	log     *slog.Logger
	opts    Options
	router  *router.Router
	routes  []*route
	outputs map[string]*output
	unmatch *output
	slots   *budget // in-flight source records, one unit each
	bytes   *budget
	nacks   *nackWindow
	stop    chan error // the nack threshold tripped
	// ages: some function retries with a max_record_age, so items need
	// the time their source record arrived.
	ages bool

	workCtx    context.Context
	cancelWork context.CancelFunc
	wg         sync.WaitGroup // workers

	stats struct {
		in, acked, naked, published, deadLettered, failed, dropped, retried, bisected atomic.Int64
	}
}

type output struct {
	name string
	sink connectors.Sink
	tmpl *router.Template // nil: no subject
}

// New checks the options and compiles routes and templates. Nothing starts
// until Run.
func New(opts Options) (*Engine, error) {
	p := opts.Pipeline
	if p == nil || opts.Runtime == nil {
		return nil, errors.New("engine: a pipeline and a sandbox runtime are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 30 * time.Second
	}
	e := &Engine{
		p:       p,
		opts:    opts,
		log:     opts.Logger.With("pipeline", p.Name),
		outputs: map[string]*output{},
	}
	e.workCtx, e.cancelWork = context.WithCancel(context.Background())
	maxInFlight := p.Delivery.MaxInFlight
	if maxInFlight <= 0 {
		maxInFlight = 1024
	}
	e.slots = &budget{limit: int64(maxInFlight)}
	maxBytes := int64(p.Delivery.MaxInFlightBytes)
	if maxBytes <= 0 {
		maxBytes = 64 << 20
	}
	e.bytes = &budget{limit: maxBytes}
	e.stop = make(chan error, 1)
	if t := p.Delivery.NackThreshold; t != nil {
		e.nacks = newNackWindow(t.Failures, time.Duration(t.Window))
	}

	for name := range p.Outputs {
		sink, ok := opts.Sinks[name]
		if !ok {
			return nil, fmt.Errorf("engine: output %q has no sink", name)
		}
		o := &output{name: name, sink: sink}
		if s := opts.Subjects[name]; s != "" {
			t, err := router.ParseTemplate(s)
			if err != nil {
				return nil, fmt.Errorf("output %q: subject: %w", name, err)
			}
			o.tmpl = t
		}
		e.outputs[name] = o
	}
	if p.Unmatched.Action == "output" {
		e.unmatch = e.outputs[p.Unmatched.Output]
		if e.unmatch == nil {
			return nil, fmt.Errorf("unmatched: output %q is not declared", p.Unmatched.Output)
		}
	}
	specs := make([]router.Spec, len(p.Routes))
	for i, r := range p.Routes {
		specs[i] = router.Spec{Name: r.Name, Subjects: r.Match.Subjects, Headers: r.Match.Headers, CEL: r.Match.CEL}
		rt, err := e.newRoute(r)
		if err != nil {
			return nil, err
		}
		e.routes = append(e.routes, rt)
	}
	rtr, err := router.New(specs)
	if err != nil {
		return nil, err
	}
	e.router = rtr
	for name := range p.Inputs {
		if _, ok := opts.Sources[name]; !ok {
			return nil, fmt.Errorf("engine: input %q has no source", name)
		}
	}
	for name, fn := range p.Functions {
		if fn.Retry.MaxRecordAge > 0 {
			e.ages = true
		}
		if fn.Dispatch == "partition" {
			// NATS, JetStream and file inputs carry no partition: every
			// record then goes to the one instance of partition "".
			e.log.Warn("function dispatches by partition, but records from unpartitioned inputs (nats, jetstream, file) all go to one instance", "function", name, "file", fn.Pos.String())
		}
	}
	return e, nil
}

func (e *Engine) newRoute(r *pipelines.Route) (*route, error) {
	rt := &route{e: e, name: r.Name, log: e.log.With("route", r.Name)}
	for _, name := range r.Outputs {
		o := e.outputs[name]
		if o == nil {
			return nil, fmt.Errorf("route %q: output %q is not declared", r.Name, name)
		}
		rt.outputs = append(rt.outputs, o)
	}
	if r.DeadLetter != "" {
		rt.dlq = e.outputs[r.DeadLetter]
		if rt.dlq == nil {
			return nil, fmt.Errorf("route %q: dead_letter output %q is not declared", r.Name, r.DeadLetter)
		}
	}
	for i, fname := range r.Chain {
		fn := e.p.Functions[fname]
		if fn == nil {
			return nil, fmt.Errorf("route %q: function %q is not declared", r.Name, fname)
		}
		st, err := newStage(rt, i, fn)
		if err != nil {
			return nil, err
		}
		rt.stages = append(rt.stages, st)
	}
	return rt, nil
}

// Stats returns the counters so far.
func (e *Engine) Stats() Stats {
	s := Stats{
		In: e.stats.in.Load(), Acked: e.stats.acked.Load(), Naked: e.stats.naked.Load(),
		Published: e.stats.published.Load(), DeadLettered: e.stats.deadLettered.Load(),
		Failed: e.stats.failed.Load(), Dropped: e.stats.dropped.Load(),
		Retried: e.stats.retried.Load(), Bisected: e.stats.bisected.Load(),
		InFlight: e.slots.inUse(), InFlightBytes: e.bytes.inUse(),
	}
	for _, rt := range e.routes {
		for _, st := range rt.stages {
			s.InstancesStarted += st.started.Load()
			s.InstancesIdleStopped += st.idleStops.Load()
			s.InstancesLive += st.live.Load()
		}
	}
	return s
}

// Run runs the pipeline until ctx is cancelled or a source fails, then
// drains: it stops fetching, lets in-flight records finish within the
// pipeline's shutdown grace, stops the function instances and flushes the
// sinks. Records not finished by then are given back (nak) or left un-acked
// at the broker. It returns nil after a clean stop.
func (e *Engine) Run(ctx context.Context) error {
	for _, rt := range e.routes {
		for _, st := range rt.stages {
			st.start()
		}
	}
	srcCtx, cancelSrc := context.WithCancel(ctx)
	defer cancelSrc()
	errs := make(chan error, len(e.opts.Sources))
	var srcWG sync.WaitGroup
	for name, src := range e.opts.Sources {
		srcWG.Add(1)
		go func() {
			defer srcWG.Done()
			h := &handler{e: e, input: name}
			if err := src.Run(srcCtx, h); err != nil && srcCtx.Err() == nil {
				errs <- fmt.Errorf("input %q: %w", name, err)
				return
			}
			errs <- nil
		}()
	}
	e.log.Info("pipeline running", "inputs", len(e.opts.Sources), "routes", len(e.routes), "outputs", len(e.outputs))
	var runErr error
	pending := len(e.opts.Sources)
wait:
	for pending > 0 {
		select {
		case <-ctx.Done():
			break wait
		case runErr = <-e.stop:
			e.log.Error("stopping the pipeline", "error", runErr)
			break wait
		case err := <-errs:
			pending--
			if err != nil {
				runErr = err
				e.log.Error("input failed; stopping the pipeline", "error", err)
				break wait
			}
		}
	}
	cancelSrc()
	srcWG.Wait()
	if err := e.drain(); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// drain finishes in-flight work within the grace period, then stops.
func (e *Engine) drain() error {
	grace := time.Duration(e.p.Delivery.ShutdownGrace)
	if grace <= 0 {
		grace = 30 * time.Second
	}
	e.log.Info("draining", "in_flight", e.slots.inUse(), "grace", grace)
	deadline := time.Now().Add(grace)
	for e.slots.inUse() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	left := e.slots.inUse()
	e.cancelWork()
	e.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, rt := range e.routes {
		for _, st := range rt.stages {
			wg.Add(1)
			go func() { defer wg.Done(); st.close(ctx) }()
		}
	}
	wg.Wait()
	var err error
	for name, o := range e.outputs {
		if ferr := o.sink.Flush(ctx); ferr != nil {
			err = errors.Join(err, fmt.Errorf("output %q: flush: %w", name, ferr))
		}
	}
	s := e.Stats()
	e.log.Info("pipeline stopped", "in", s.In, "acked", s.Acked, "naked", s.Naked, "published", s.Published,
		"dead_lettered", s.DeadLettered, "unfinished_at_deadline", left)
	return err
}

// handler receives one input's messages.
type handler struct {
	e     *Engine
	input string
}

func (h *handler) Revoked(partitions []string) {
	h.e.log.Info("partitions revoked", "input", h.input, "partitions", partitions)
}

func (h *handler) Handle(ctx context.Context, m connectors.Message) error {
	e := h.e
	if err := e.slots.acquire(ctx, 1); err != nil {
		return err
	}
	size := int64(len(m.Record.GetKey()) + len(m.Record.GetValue()))
	if err := e.bytes.acquire(ctx, size); err != nil {
		e.slots.release(1)
		return err
	}
	e.stats.in.Add(1)
	// The tracker and the item of the first matching route share one
	// allocation (most records match one route).
	en := new(entry)
	var buf [8]int
	matches := e.start(en, m, size, buf[:0])
	var born time.Time
	if len(matches) > 0 && e.ages {
		born = time.Now()
	}
	for k, i := range matches {
		e.routes[i].enter(en.item(k, born))
	}
	en.tracker.release(nil)
	return nil
}

// start sets en up for m: its tracker, holding one reference (the
// caller's, released once the record has entered its routes), and the
// routes it matches, which it returns (appended to buf). A record that
// matches none goes to the unmatched output, or is dropped.
func (e *Engine) start(en *entry, m connectors.Message, size int64, buf []int) []int {
	en.tracker = tracker{e: e, msg: m, size: size}
	tr := &en.tracker
	tr.refs.Store(1)
	matches, err := e.router.Match(m.Record, buf)
	if err != nil {
		e.log.Warn("route condition failed for record; the route does not match", "record", m.Record.Id, "error", err)
	}
	if len(matches) == 0 {
		if e.unmatch == nil {
			e.stats.dropped.Add(1)
		} else {
			tr.add(1)
			if err := e.publish(e.unmatch, m.Record, tr); err != nil {
				e.log.Error("cannot publish unmatched record; it will be redelivered", "record", m.Record.Id, "error", err)
				tr.release(err)
			}
		}
	}
	return matches
}

// HandleBatch takes messages of one partition at once, in order, as the
// Kafka source hands them (kafka.BatchHandler): the in-flight records and
// bytes are reserved once for all of them, and each route's first
// function gets its share in one queue operation per instance slot
// instead of one per record. When they do not fit in the budgets at once,
// they go one at a time through Handle, which waits for room. It does not
// keep ms.
func (h *handler) HandleBatch(ctx context.Context, ms []connectors.Message) (int, error) {
	e := h.e
	done := 0
	for done < len(ms) {
		chunk := ms[done:min(len(ms), done+int(max(e.slots.limit/4, 1)))]
		var size int64
		for _, m := range chunk {
			size += int64(len(m.Record.GetKey()) + len(m.Record.GetValue()))
		}
		if size > e.bytes.limit/4 || !e.slots.tryAcquire(int64(len(chunk))) {
			if err := h.Handle(ctx, chunk[0]); err != nil {
				return done, err
			}
			done++
			continue
		}
		if !e.bytes.tryAcquire(size) {
			e.slots.release(int64(len(chunk)))
			if err := h.Handle(ctx, chunk[0]); err != nil {
				return done, err
			}
			done++
			continue
		}
		h.enterBatch(chunk)
		done += len(chunk)
	}
	return done, nil
}

// enterBatch is Handle for messages whose budgets are taken.
func (h *handler) enterBatch(ms []connectors.Message) {
	e := h.e
	e.stats.in.Add(int64(len(ms)))
	ens := make([]entry, len(ms))
	var born time.Time
	if e.ages {
		born = time.Now()
	}
	// Each route's items, in order; most records match one route.
	var perRoute [][]*item
	var buf [8]int
	for j, m := range ms {
		en := &ens[j]
		matches := e.start(en, m, int64(len(m.Record.GetKey())+len(m.Record.GetValue())), buf[:0])
		for k, i := range matches {
			it := en.item(k, born)
			if perRoute == nil {
				perRoute = make([][]*item, len(e.routes))
			}
			if perRoute[i] == nil {
				perRoute[i] = make([]*item, 0, len(ms))
			}
			perRoute[i] = append(perRoute[i], it)
		}
	}
	for i, its := range perRoute {
		if len(its) > 0 {
			e.routes[i].enterBatch(its)
		}
	}
	for j := range ens {
		ens[j].tracker.release(nil)
	}
}

// entry is a source message's tracker and the item it enters its first
// route as.
type entry struct {
	tracker tracker
	first   item
}

// item returns the item the record enters its k-th matching route as,
// holding a reference to the tracker: the first is en's own.
func (en *entry) item(k int, born time.Time) *item {
	tr := &en.tracker
	tr.add(1)
	it := &en.first
	if k > 0 {
		it = new(item)
	}
	*it = item{rec: tr.msg.Record, tr: tr, born: born}
	return it
}

// tracker counts the references to one source message: one per record
// derived from it that is still being processed or published. At zero the
// message is settled: acked, or naked if anything failed for good without a
// dead-letter output.
type tracker struct {
	e      *Engine
	msg    connectors.Message
	size   int64 // key and value bytes, held in the byte budget
	refs   atomic.Int64
	failed atomic.Bool
	// abandoned: failed only because of the shutdown. delay: the longest
	// nak delay asked for by a failure (nanoseconds).
	abandoned atomic.Bool
	delay     atomic.Int64
}

// wantDelay asks for the source record's nak to wait at least d.
func (t *tracker) wantDelay(d time.Duration) {
	for {
		cur := t.delay.Load()
		if int64(d) <= cur || t.delay.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (t *tracker) add(n int64) { t.refs.Add(n) }

func (t *tracker) release(err error) {
	if err != nil {
		if errors.Is(err, errAbandoned) {
			t.abandoned.Store(true)
		} else {
			t.failed.Store(true)
		}
	}
	if t.refs.Add(-1) != 0 {
		return
	}
	e := t.e
	// Settling is fire-and-forget at the brokers (a JetStream ack is one
	// publish), so no per-record timer bounds it.
	ctx := context.Background()
	if t.failed.Load() || t.abandoned.Load() {
		e.stats.naked.Add(1)
		if err := t.msg.Settler.Nak(ctx, t.nakDelay()); err != nil {
			e.log.Warn("nak failed; the broker will redeliver after its ack wait", "record", t.msg.Record.Id, "error", err)
		}
	} else {
		e.stats.acked.Add(1)
		if err := t.msg.Settler.Ack(ctx); err != nil {
			e.log.Warn("ack failed; the record will be redelivered", "record", t.msg.Record.Id, "error", err)
		}
	}
	e.bytes.release(t.size)
	e.slots.release(1)
}

// nakDelay is how long the broker should wait before redelivering: the
// backoff a failure asked for (by the broker's delivery count), at least
// one second after any failure so that a broken sink is not hammered, and
// none for records only abandoned by a shutdown, which another consumer
// may take at once.
func (t *tracker) nakDelay() time.Duration {
	d := time.Duration(t.delay.Load())
	if t.failed.Load() {
		d = max(d, backoff(time.Second, 30*time.Second, max(t.msg.Delivery, 1)))
	}
	return d
}

// errAbandoned marks work dropped by a shutdown; its source message is
// given back for redelivery.
var errAbandoned = errors.New("abandoned at shutdown")

// publish sends rec to o; its confirmation releases one reference of tr.
// When o's subject cannot be rendered for rec, nothing is sent, the
// reference is still held, and the error (naming the output and record) is
// the caller's to handle.
func (e *Engine) publish(o *output, rec *culvertv1.Record, tr *tracker) error {
	subject := ""
	if o.tmpl != nil {
		s, err := o.tmpl.Execute(rec)
		if err != nil {
			return fmt.Errorf("output %q: subject for record %s: %w", o.name, rec.Id, err)
		}
		subject = s
	}
	// Not the work context: publishing goes on during the drain, after it
	// is cancelled.
	o.sink.Publish(context.Background(), subject, rec, func(err error) {
		if err != nil {
			e.log.Error("publish failed; the source record will be redelivered", "output", o.name, "subject", subject, "record", rec.Id, "error", err)
		} else {
			e.stats.published.Add(1)
		}
		tr.release(err)
	})
	return nil
}

// resolveCommand finds a function's executable: a path with a slash is
// relative to the pipeline file; a bare name is looked up on PATH.
func resolveCommand(fn *pipelines.Function) (string, error) {
	cmd := fn.Command
	if filepath.IsAbs(cmd) {
		return cmd, nil
	}
	if filepath.Base(cmd) != cmd {
		p := filepath.Join(fn.Dir, cmd)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("function %q: command %s: %w", fn.Name, p, err)
		}
		return filepath.Abs(p)
	}
	p, err := exec.LookPath(cmd)
	if err != nil {
		return "", fmt.Errorf("function %q: command %q not found on PATH: %w", fn.Name, cmd, err)
	}
	return p, nil
}
