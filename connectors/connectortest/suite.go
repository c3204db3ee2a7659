// Package connectortest is the conformance suite every connector runs
// against a real broker (containerd's ContentSuite style). It owns the
// executable form of the contract in package connectors: ordering per
// partition, settlement and redelivery, back-pressure, sink confirmations
// and clean shutdown. It never mocks a broker: the connector's test supplies
// a Harness that talks to a real one.
//
// A connector test calls
//
//	connectortest.Run(t, "jetstream", harness)
//
// Harness.New gives every subtest an isolated Env (its own subjects,
// stream, topic, consumer or file). The suite only creates sources after
// NewSource, produces, then runs them, so a harness must make records
// produced after NewSource returns visible to that source (subscribe in
// NewSource, use a durable consumer that starts at the beginning, create
// the input file, ...). Partitions are strings throughout, so Kafka and
// Kinesis fit the same suite.
package connectortest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Capabilities says which parts of the contract a connector can honour.
type Capabilities struct {
	// Redelivery: a message that was not settled before its source closed
	// is delivered again to the next source of the same Env (JetStream,
	// Kafka, Kinesis). False for NATS core and files.
	Redelivery bool
	// NakDelay: Nak(delay) redelivers that one message after about delay
	// while later messages keep flowing. Requires Redelivery.
	NakDelay bool
	// Partitions: the source reads several partitions; Handle may run
	// concurrently for different partitions, and order holds within one.
	Partitions bool
	// ConcurrentSubjects: Handle may run concurrently for different
	// subjects (NATS core runs one goroutine per subscription).
	ConcurrentSubjects bool
	// Finite: Run returns nil by itself at the end of what was produced
	// (files).
	Finite bool
	// InFlight is the bound on handed-over, unsettled messages of the
	// sources NewSource makes. 0 skips the in-flight checks.
	InFlight int
	// ValueOnly: only values survive (keys and headers are not carried).
	ValueOnly bool
}

// Harness adapts one connector to the suite.
type Harness interface {
	Capabilities() Capabilities
	// New returns a fresh, isolated environment; it registers its own
	// cleanup with t.
	New(t *testing.T) Env
}

// Env is one isolated environment of a Harness.
type Env interface {
	// Subjects the sources read, at least one. Produce writes to them.
	// Connectors without subjects (files) return one entry, e.g. "".
	Subjects() []string
	// Produce writes recs to subject in order through an independent path
	// (a plain client), and returns once the broker has them.
	Produce(t *testing.T, subject string, recs []*culvertv1.Record)
	// NewSource returns a source reading Subjects. Sources of one Env share
	// durable state (consumer, group), so a new one resumes where the
	// previous one left off.
	NewSource(t *testing.T) connectors.Source
	// OutputSubject returns the subject sinks of this Env publish to in the
	// test. From this call on, everything published to it must be
	// observable by Consume (NATS core keeps nothing: subscribe here).
	OutputSubject(t *testing.T) string
	// NewSink returns a sink able to publish to OutputSubject.
	NewSink(t *testing.T) connectors.Sink
	// Consume reads n records a sink wrote to subject through an
	// independent path, failing t if they do not arrive within timeout.
	Consume(t *testing.T, subject string, n int, timeout time.Duration) []*culvertv1.Record
}

// waitTimeout bounds every wait of the suite; the tests are expected to
// finish far sooner.
const waitTimeout = 15 * time.Second

// Run runs the suite as subtests of t named name/....
func Run(t *testing.T, name string, h Harness) {
	t.Run(name, func(t *testing.T) {
		caps := h.Capabilities()
		t.Run("Ordering", func(t *testing.T) { testOrdering(t, h, caps) })
		t.Run("AckedNotRedelivered", func(t *testing.T) {
			if !caps.Redelivery {
				t.Skip("connector cannot redeliver")
			}
			testAckedNotRedelivered(t, h, caps)
		})
		t.Run("NakRedelivers", func(t *testing.T) {
			if !caps.NakDelay {
				t.Skip("connector cannot redeliver one message after a delay")
			}
			testNakRedelivers(t, h, caps)
		})
		t.Run("NakWithoutRedelivery", func(t *testing.T) {
			if caps.Redelivery {
				t.Skip("connector redelivers")
			}
			testNakWithoutRedelivery(t, h, caps)
		})
		t.Run("BlockingHandle", func(t *testing.T) { testBlockingHandle(t, h, caps) })
		t.Run("InFlightBound", func(t *testing.T) {
			if caps.InFlight <= 0 {
				t.Skip("no in-flight bound declared")
			}
			testInFlightBound(t, h, caps)
		})
		t.Run("SinkConfirms", func(t *testing.T) { testSinkConfirms(t, h, caps) })
		t.Run("ShutdownIdle", func(t *testing.T) { testShutdownIdle(t, h, caps) })
		t.Run("ShutdownBusy", func(t *testing.T) { testShutdownBusy(t, h, caps) })
	})
}

// ---- records ----

// rec builds the i-th test record for subject index si under tag.
func rec(tag string, si, i int) *culvertv1.Record {
	return &culvertv1.Record{
		Key:         []byte("k" + strconv.Itoa(i%3)),
		Value:       []byte(fmt.Sprintf("%s/%d/%d", tag, si, i)),
		ContentType: "text/plain",
		Headers: []*culvertv1.Header{
			{Name: "X-Seq", Value: []byte(strconv.Itoa(i))},
			{Name: "X-Dup", Value: []byte("a")},
			{Name: "X-Dup", Value: []byte("b")},
		},
	}
}

func recs(tag string, si, n int) []*culvertv1.Record {
	out := make([]*culvertv1.Record, n)
	for i := range out {
		out[i] = rec(tag, si, i)
	}
	return out
}

// parse splits a value made by rec.
func parse(t testing.TB, r *culvertv1.Record) (tag string, si, i int) {
	t.Helper()
	parts := strings.Split(string(r.GetValue()), "/")
	if len(parts) != 3 {
		t.Fatalf("unexpected record value %q (id %q)", r.GetValue(), r.GetId())
	}
	si, err1 := strconv.Atoi(parts[1])
	i, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil {
		t.Fatalf("unexpected record value %q", r.GetValue())
	}
	return parts[0], si, i
}

// checkRecord compares what arrived with what rec(tag, si, i) produced.
func checkRecord(t testing.TB, caps Capabilities, got *culvertv1.Record) {
	t.Helper()
	tag, si, i := parse(t, got)
	want := rec(tag, si, i)
	if caps.ValueOnly {
		return
	}
	if string(got.GetKey()) != string(want.Key) {
		t.Errorf("record %q: key %q, want %q", got.GetValue(), got.GetKey(), want.Key)
	}
	var gotH []string
	for _, h := range got.GetHeaders() {
		if strings.HasPrefix(h.GetName(), "X-") {
			gotH = append(gotH, h.GetName()+"="+string(h.GetValue()))
		}
	}
	var wantH []string
	for _, h := range want.Headers {
		wantH = append(wantH, h.GetName()+"="+string(h.GetValue()))
	}
	// Sources that spread headers over a map regroup them by name; the
	// order of values of one name must hold, so compare per name.
	if perName(gotH) != perName(wantH) {
		t.Errorf("record %q: headers %q, want %q", got.GetValue(), gotH, wantH)
	}
}

func perName(kvs []string) string {
	m := map[string][]string{}
	var names []string
	for _, kv := range kvs {
		n, v, _ := strings.Cut(kv, "=")
		if _, ok := m[n]; !ok {
			names = append(names, n)
		}
		m[n] = append(m[n], v)
	}
	var b strings.Builder
	for _, n := range sortedStrings(names) {
		fmt.Fprintf(&b, "%s=%q;", n, m[n])
	}
	return b.String()
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// ---- handler ----

// delivery is one Handle call as the collector saw it.
type delivery struct {
	msg  connectors.Message
	at   time.Time
	lane string
}

// collector is a Handler that records deliveries and runs an optional
// behaviour per message.
type collector struct {
	t    testing.TB
	caps Capabilities
	// on runs inside Handle; nil acks at once.
	on func(ctx context.Context, d delivery) error

	mu          sync.Mutex
	got         []delivery
	active      map[string]int
	laneOverlap string
	outstanding int
	maxOut      int
	changed     chan struct{}
	revoked     [][]string
}

func newCollector(t testing.TB, caps Capabilities, on func(ctx context.Context, d delivery) error) *collector {
	return &collector{t: t, caps: caps, on: on, active: map[string]int{}, changed: make(chan struct{})}
}

func (c *collector) lane(r *culvertv1.Record) string {
	var lane string
	if c.caps.ConcurrentSubjects {
		lane = r.GetSource().GetSubject()
	}
	if c.caps.Partitions {
		lane += "|" + r.GetSource().GetPartition()
	}
	return lane
}

func (c *collector) Handle(ctx context.Context, m connectors.Message) error {
	d := delivery{msg: m, at: time.Now(), lane: c.lane(m.Record)}
	m.Settler = &countingSettler{Settler: m.Settler, c: c}
	d.msg = m
	c.mu.Lock()
	c.active[d.lane]++
	if c.active[d.lane] > 1 && c.laneOverlap == "" {
		c.laneOverlap = d.lane
	}
	c.outstanding++
	c.maxOut = max(c.maxOut, c.outstanding)
	c.got = append(c.got, d)
	c.broadcast()
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.active[d.lane]--
		c.mu.Unlock()
	}()
	if c.on == nil {
		if err := m.Settler.Ack(ctx); err != nil {
			c.t.Errorf("ack %q: %v", m.Record.GetId(), err)
		}
		return nil
	}
	return c.on(ctx, d)
}

func (c *collector) Revoked(partitions []string) {
	c.mu.Lock()
	c.revoked = append(c.revoked, partitions)
	c.mu.Unlock()
}

func (c *collector) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *collector) settled() {
	c.mu.Lock()
	c.outstanding--
	c.broadcast()
	c.mu.Unlock()
}

// snapshot returns the deliveries so far.
func (c *collector) snapshot() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.got...)
}

// waitFor waits until cond holds for the deliveries so far.
func (c *collector) waitFor(what string, cond func([]delivery) bool) []delivery {
	c.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got := append([]delivery(nil), c.got...)
		ch := c.changed
		c.mu.Unlock()
		if cond(got) {
			return got
		}
		select {
		case <-ch:
		case <-deadline.C:
			c.t.Fatalf("timed out waiting for %s: %d deliveries so far", what, len(got))
		}
	}
}

// countingSettler keeps the collector's outstanding count.
type countingSettler struct {
	connectors.Settler
	c    *collector
	once sync.Once
}

// The count drops before the real settlement: a source may hand the next
// message over as soon as the settlement frees its slot.
func (s *countingSettler) Ack(ctx context.Context) error {
	s.once.Do(s.c.settled)
	return s.Settler.Ack(ctx)
}

func (s *countingSettler) Nak(ctx context.Context, d time.Duration) error {
	s.once.Do(s.c.settled)
	return s.Settler.Nak(ctx, d)
}

// values returns the set of "si/i" seen with tag.
func values(t testing.TB, ds []delivery, tag string) map[[2]int]int {
	out := map[[2]int]int{}
	for _, d := range ds {
		tg, si, i := parse(t, d.msg.Record)
		if tg == tag {
			out[[2]int{si, i}]++
		}
	}
	return out
}

func hasAll(t testing.TB, tag string, subjects, n int) func([]delivery) bool {
	return func(ds []delivery) bool {
		v := values(t, ds, tag)
		for si := range subjects {
			for i := range n {
				if v[[2]int{si, i}] == 0 {
					return false
				}
			}
		}
		return true
	}
}

// ---- running a source ----

type running struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
}

func start(t testing.TB, src connectors.Source, h connectors.Handler) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := src.Run(ctx, h)
		if ctx.Err() == nil {
			// Ended on its own, before the test's cleanup cancelled it: say
			// so now, or a test waiting for records reports only a timeout.
			t.Logf("Run returned before it was stopped: %v", err)
		}
		r.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
		}
	})
	return r
}

// stop cancels Run and requires it to return nil promptly.
func (r *running) stop() {
	r.t.Helper()
	r.cancel()
	r.wait()
}

// wait requires Run to return nil within the timeout.
func (r *running) wait() {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // keep it for later waits
		if err != nil {
			r.t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		r.t.Fatalf("Run did not return within %s", waitTimeout)
	}
}

// stopped reports whether Run returned, and its error.
func (r *running) stopped() (bool, error) {
	select {
	case err := <-r.done:
		r.done <- err
		return true, err
	default:
		return false, nil
	}
}

func finish(t testing.TB, caps Capabilities, r *running) {
	t.Helper()
	if caps.Finite {
		r.wait()
		return
	}
	r.stop()
}

func closeSource(t testing.TB, src connectors.Source) {
	t.Helper()
	if err := src.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// ---- tests ----

func testOrdering(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subjects := env.Subjects()
	const n = 100
	src := env.NewSource(t)
	for si, subj := range subjects {
		env.Produce(t, subj, recs("ord", si, n))
	}
	c := newCollector(t, caps, nil)
	r := start(t, src, c)
	got := c.waitFor("every record", hasAll(t, "ord", len(subjects), n))
	finish(t, caps, r)
	closeSource(t, src)

	// Per subject (and partition): first deliveries in produced order.
	last := map[string]int{}
	seenID := map[string]string{}
	for _, d := range got {
		r := d.msg.Record
		_, si, i := parse(t, r)
		val := string(r.GetValue())
		if r.GetId() == "" {
			t.Errorf("record %q has no id", val)
		}
		if r.GetSource().GetConnector() == "" {
			t.Errorf("record %q has no Source.Connector", val)
		}
		if prev, ok := seenID[r.GetId()]; ok && prev != val {
			t.Errorf("id %q used by %q and %q", r.GetId(), prev, val)
		}
		if _, dup := seenID[r.GetId()]; dup {
			continue // a redelivery
		}
		seenID[r.GetId()] = val
		checkRecord(t, caps, r)
		lane := strconv.Itoa(si) + "|" + r.GetSource().GetPartition()
		if p, ok := last[lane]; ok && i <= p {
			t.Errorf("subject %d partition %q: record %d delivered after %d", si, r.GetSource().GetPartition(), i, p)
		}
		last[lane] = i
	}
	if c.laneOverlap != "" {
		t.Errorf("Handle ran concurrently within lane %q", c.laneOverlap)
	}
}

func testAckedNotRedelivered(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subj := env.Subjects()[0]
	const n, acked = 10, 5
	src := env.NewSource(t)
	env.Produce(t, subj, recs("ack", 0, n))
	firstID := map[int]string{}
	var held []connectors.Settler
	var mu sync.Mutex
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		_, _, i := parse(t, d.msg.Record)
		mu.Lock()
		defer mu.Unlock()
		if _, ok := firstID[i]; !ok {
			firstID[i] = d.msg.Record.GetId()
		}
		if i < acked {
			return d.msg.Settler.Ack(ctx)
		}
		held = append(held, d.msg.Settler)
		return nil
	})
	r := start(t, src, c)
	c.waitFor("every record", hasAll(t, "ack", 1, n))
	r.stop()
	closeSource(t, src)

	// The unsettled half comes back to the next source, the acked half not.
	src2 := env.NewSource(t)
	c2 := newCollector(t, caps, nil)
	r2 := start(t, src2, c2)
	c2.waitFor("the unsettled records", func(ds []delivery) bool {
		v := values(t, ds, "ack")
		for i := acked; i < n; i++ {
			if v[[2]int{0, i}] == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(300 * time.Millisecond) // let stray redeliveries show up
	r2.stop()
	closeSource(t, src2)
	for _, d := range c2.snapshot() {
		_, _, i := parse(t, d.msg.Record)
		if i < acked {
			t.Errorf("acked record %d was delivered again", i)
			continue
		}
		mu.Lock()
		want := firstID[i]
		mu.Unlock()
		if got := d.msg.Record.GetId(); got != want {
			t.Errorf("redelivered record %d has id %q, first delivery had %q", i, got, want)
		}
		if d.msg.Delivery == 1 {
			t.Errorf("redelivered record %d reports Delivery 1", i)
		}
	}
}

func testNakRedelivers(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subj := env.Subjects()[0]
	const delay = 300 * time.Millisecond
	src := env.NewSource(t)
	env.Produce(t, subj, recs("nak", 0, 3))
	var nakOnce sync.Once
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		_, _, i := parse(t, d.msg.Record)
		nak := false
		if i == 0 {
			nakOnce.Do(func() { nak = true })
		}
		if nak {
			return d.msg.Settler.Nak(ctx, delay)
		}
		return d.msg.Settler.Ack(ctx)
	})
	r := start(t, src, c)
	got := c.waitFor("the nak'd record twice and the others", func(ds []delivery) bool {
		v := values(t, ds, "nak")
		return v[[2]int{0, 0}] >= 2 && v[[2]int{0, 1}] >= 1 && v[[2]int{0, 2}] >= 1
	})
	r.stop()
	closeSource(t, src)

	var first, second *delivery
	pos := map[int]int{}
	for k, d := range got {
		_, _, i := parse(t, d.msg.Record)
		if _, ok := pos[i]; !ok {
			pos[i] = k
		}
		if i == 0 {
			if first == nil {
				first = &got[k]
			} else if second == nil {
				second = &got[k]
				pos[-1] = k
			}
		}
	}
	if pos[-1] < pos[1] || pos[-1] < pos[2] {
		t.Errorf("nak'd record came back (position %d) before the later records were delivered (%d, %d)", pos[-1], pos[1], pos[2])
	}
	if el := second.at.Sub(first.at); el < delay/2 {
		t.Errorf("nak'd record came back after %s, delay was %s", el, delay)
	}
	if first.msg.Record.GetId() != second.msg.Record.GetId() {
		t.Errorf("redelivery changed the id: %q then %q", first.msg.Record.GetId(), second.msg.Record.GetId())
	}
	if second.msg.Delivery != 0 && second.msg.Delivery < 2 {
		t.Errorf("redelivery reports Delivery %d", second.msg.Delivery)
	}
}

func testNakWithoutRedelivery(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subj := env.Subjects()[0]
	src := env.NewSource(t)
	env.Produce(t, subj, recs("nnr", 0, 3))
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		if err := d.msg.Settler.Nak(ctx, 10*time.Millisecond); err != nil {
			t.Errorf("Nak on a source without redelivery: %v", err)
		}
		return nil
	})
	r := start(t, src, c)
	c.waitFor("every record", hasAll(t, "nnr", 1, 3))
	time.Sleep(200 * time.Millisecond)
	finish(t, caps, r)
	closeSource(t, src)
	if n := len(c.snapshot()); n != 3 {
		t.Errorf("%d deliveries, want 3 (no redelivery)", n)
	}
}

func testBlockingHandle(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subjects := env.Subjects()
	const n = 30
	src := env.NewSource(t)
	for si, subj := range subjects {
		env.Produce(t, subj, recs("blk", si, n))
	}
	gate := make(chan struct{})
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		return d.msg.Settler.Ack(ctx)
	})
	r := start(t, src, c)
	c.waitFor("a first delivery", func(ds []delivery) bool { return len(ds) > 0 })
	time.Sleep(200 * time.Millisecond)
	blocked := len(c.snapshot())
	lanes := 1
	if caps.ConcurrentSubjects {
		lanes = len(subjects)
	}
	if !caps.Partitions && blocked > lanes {
		t.Errorf("%d Handle calls while Handle blocked, want at most %d (one per lane)", blocked, lanes)
	}
	close(gate)
	c.waitFor("every record after unblocking", hasAll(t, "blk", len(subjects), n))
	finish(t, caps, r)
	closeSource(t, src)
	if c.laneOverlap != "" {
		t.Errorf("Handle ran concurrently within lane %q", c.laneOverlap)
	}
}

func testInFlightBound(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subj := env.Subjects()[0]
	bound := caps.InFlight
	n := 3 * bound
	src := env.NewSource(t)
	env.Produce(t, subj, recs("inf", 0, n))
	var mu sync.Mutex
	var held []connectors.Settler
	release := false
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		mu.Lock()
		defer mu.Unlock()
		if release {
			return d.msg.Settler.Ack(ctx)
		}
		held = append(held, d.msg.Settler)
		return nil
	})
	r := start(t, src, c)
	c.waitFor("the in-flight bound to fill", func(ds []delivery) bool { return len(ds) >= bound })
	time.Sleep(300 * time.Millisecond) // give an unbounded source the chance to overrun
	if got := len(c.snapshot()); got != bound {
		t.Errorf("%d records handed over without settlement, want exactly %d", got, bound)
	}
	mu.Lock()
	release = true
	toAck := held
	held = nil
	mu.Unlock()
	for _, s := range toAck {
		if err := s.Ack(context.Background()); err != nil {
			t.Errorf("ack: %v", err)
		}
	}
	c.waitFor("every record", hasAll(t, "inf", 1, n))
	finish(t, caps, r)
	closeSource(t, src)
	c.mu.Lock()
	maxOut := c.maxOut
	c.mu.Unlock()
	if maxOut > bound {
		t.Errorf("up to %d records were unsettled at once, bound is %d", maxOut, bound)
	}
}

func testSinkConfirms(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subject := env.OutputSubject(t)
	sink := env.NewSink(t)
	const n = 200
	var mu sync.Mutex
	calls := make([]int, n)
	var errs []error
	ctx := context.Background()
	for i, r := range recs("out", 0, n) {
		r.Id = fmt.Sprintf("ct-out-%d", i)
		sink.Publish(ctx, subject, r, func(err error) {
			mu.Lock()
			calls[i]++
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	fctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if err := sink.Flush(fctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	mu.Lock()
	for i, k := range calls {
		if k != 1 {
			t.Errorf("record %d: done called %d times before Flush returned, want 1", i, k)
		}
	}
	for _, err := range errs {
		t.Errorf("done: %v", err)
	}
	mu.Unlock()

	got := env.Consume(t, subject, n, waitTimeout)
	if len(got) != n {
		t.Fatalf("consumed %d records, want %d", len(got), n)
	}
	last := map[string]int{}
	for _, r := range got {
		_, _, i := parse(t, r)
		checkRecord(t, caps, r)
		lane := ""
		if caps.Partitions {
			lane = string(r.GetKey())
		}
		if p, ok := last[lane]; ok && i <= p {
			t.Errorf("sink reordered: record %d after %d", i, p)
		}
		last[lane] = i
	}

	if err := sink.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := sink.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	after := make(chan error, 2)
	sink.Publish(ctx, subject, rec("out", 0, n), func(err error) { after <- err })
	select {
	case err := <-after:
		if !errors.Is(err, connectors.ErrClosed) {
			t.Errorf("Publish after Close: done(%v), want ErrClosed", err)
		}
	case <-time.After(waitTimeout):
		t.Errorf("Publish after Close never called done")
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	for i, k := range calls {
		if k != 1 {
			t.Errorf("record %d: done called %d times, want 1", i, k)
		}
	}
	mu.Unlock()
	if len(after) != 0 {
		t.Errorf("Publish after Close called done more than once")
	}
}

func testShutdownIdle(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	src := env.NewSource(t)
	r := start(t, src, newCollector(t, caps, nil))
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	r.stop()
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("Run took %s to return after cancel", el)
	}
	closeSource(t, src)
	closeSource(t, src) // idempotent
	if err := src.Run(context.Background(), newCollector(t, caps, nil)); err == nil {
		t.Errorf("Run after Close returned nil, want an error")
	}
}

func testShutdownBusy(t *testing.T, h Harness, caps Capabilities) {
	env := h.New(t)
	subj := env.Subjects()[0]
	src := env.NewSource(t)
	env.Produce(t, subj, recs("sd", 0, 5))
	heldCh := make(chan connectors.Settler, 1)
	blocking := make(chan struct{})
	c := newCollector(t, caps, func(ctx context.Context, d delivery) error {
		_, _, i := parse(t, d.msg.Record)
		switch i {
		case 0:
			heldCh <- d.msg.Settler // never settled before Close
			return nil
		case 1:
			close(blocking)
			<-ctx.Done() // a Handle blocked on back-pressure
			return ctx.Err()
		}
		return d.msg.Settler.Ack(ctx)
	})
	r := start(t, src, c)
	select {
	case <-blocking:
	case <-time.After(waitTimeout):
		t.Fatalf("second record never delivered")
	}
	// With partitions, records 0 and 1 may be in different lanes: wait for
	// record 0 too before stopping.
	var held connectors.Settler
	select {
	case held = <-heldCh:
	case <-time.After(waitTimeout):
		t.Fatalf("first record never delivered")
	}
	t0 := time.Now()
	r.stop()
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("Run took %s to return after cancel", el)
	}
	closeSource(t, src)
	closeSource(t, src)
	if err := held.Ack(context.Background()); !errors.Is(err, connectors.ErrClosed) {
		t.Errorf("Ack after Close: %v, want ErrClosed", err)
	}
	if err := held.Nak(context.Background(), 0); err == nil {
		t.Errorf("second settlement after Close returned nil")
	}
}
