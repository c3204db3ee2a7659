package jetstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gojs "github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/jetstream"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

const inFlight = 16

type harness struct {
	nc       *nats.Conn // connectors' connection
	pub      *nats.Conn // independent producer / consumer connection
	js       gojs.JetStream
	n        atomic.Int64
	encoding string
}

func newHarness(t *testing.T, encoding string) *harness {
	s := natstest.Server(t)
	h := &harness{nc: natstest.Connect(t, s), pub: natstest.Connect(t, s), encoding: encoding}
	var err error
	if h.js, err = gojs.New(h.pub); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{Redelivery: true, NakDelay: true, InFlight: inFlight}
}

func (h *harness) New(t *testing.T) connectortest.Env {
	return &env{h: h, id: h.n.Add(1)}
}

type env struct {
	h  *harness
	id int64
}

func (e *env) stream() string { return fmt.Sprintf("CT%d", e.id) }

func (e *env) Subjects() []string {
	return []string{fmt.Sprintf("ct.%d.a", e.id), fmt.Sprintf("ct.%d.b", e.id)}
}

func (e *env) Produce(t *testing.T, subject string, recs []*culvertv1.Record) {
	t.Helper()
	enc, _ := natsmsg.ParseEncoding(e.h.encoding)
	en := natsmsg.NewEncoder(enc)
	ctx := context.Background()
	for _, r := range recs {
		m, _, err := en.Encode(subject, r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.h.js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("produce to %s: %v", subject, err)
		}
	}
}

func (e *env) sourceConfig() jetstream.SourceConfig {
	return jetstream.SourceConfig{
		Stream:      e.stream(),
		Subjects:    e.Subjects(),
		Durable:     fmt.Sprintf("ct-%d", e.id),
		MaxInFlight: inFlight,
		AckWait:     30 * time.Second, // redelivery in the suite must come from naks, not timeouts
	}
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	t.Helper()
	src, err := jetstream.NewSource(context.Background(), e.h.nc, e.sourceConfig(), natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	t.Cleanup(func() { e.logConsumerIfFailed(t) }) // runs first: before Close naks
	return src
}

// logConsumerIfFailed logs the server's view of the source's consumer
// (pending, ack pending, waiting pulls) when t failed, so that a stalled
// delivery can be told apart from a stalled source.
func (e *env) logConsumerIfFailed(t *testing.T) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := e.h.js.Consumer(ctx, e.stream(), e.sourceConfig().Durable)
	if err != nil {
		t.Logf("consumer info: %v", err)
		return
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Logf("consumer info: %v", err)
		return
	}
	t.Logf("consumer %s at the failure: delivered %d (stream seq %d), ack floor %d, ack pending %d, pending %d, waiting pulls %d, redelivered %d",
		info.Name, info.Delivered.Consumer, info.Delivered.Stream, info.AckFloor.Consumer, info.NumAckPending, info.NumPending, info.NumWaiting, info.NumRedelivered)
}

func (e *env) OutputSubject(t *testing.T) string { return fmt.Sprintf("ctout.%d.x", e.id) }

func (e *env) NewSink(t *testing.T) connectors.Sink {
	t.Helper()
	s, err := jetstream.NewSink(context.Background(), e.h.nc, jetstream.SinkConfig{
		Encoding: e.h.encoding,
		Stream:   fmt.Sprintf("CTOUT%d", e.id),
		Subjects: []string{fmt.Sprintf("ctout.%d.>", e.id)},
	}, natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) Consume(t *testing.T, subject string, n int, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cons, err := e.h.js.OrderedConsumer(ctx, fmt.Sprintf("CTOUT%d", e.id), gojs.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []*culvertv1.Record
	for len(out) < n {
		b, err := cons.Fetch(n-len(out), gojs.FetchContext(ctx))
		if err != nil {
			t.Fatalf("consume %s: %v", subject, err)
		}
		for m := range b.Messages() {
			r, err := natsmsg.Decode(m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		if err := b.Error(); err != nil {
			t.Fatalf("consume %s after %d records: %v", subject, len(out), err)
		}
	}
	return out
}

func TestConformance(t *testing.T) {
	for _, enc := range []string{"record", "value"} {
		connectortest.Run(t, enc, newHarness(t, enc))
	}
}

type handlerFunc func(context.Context, connectors.Message) error

func (f handlerFunc) Handle(ctx context.Context, m connectors.Message) error { return f(ctx, m) }
func (f handlerFunc) Revoked([]string)                                       {}

// run starts src and returns a function that stops it and checks Run.
func run(t *testing.T, src connectors.Source, h handlerFunc) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// A message handed over and not settled when the source stops comes back,
// with the same id and a higher delivery count, to a new Source (AckWait
// is long: the redelivery comes from Close's nak, not the timeout), and
// messages prefetched but never handed over come back too.
func TestRedeliveryAfterRestart(t *testing.T) {
	h := newHarness(t, "record")
	e := h.New(t).(*env)
	cfg := e.sourceConfig()
	cfg.MaxInFlight, cfg.FetchBatch = 100, 100
	src, err := jetstream.NewSource(context.Background(), h.nc, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	subj := e.Subjects()[0]
	var in []*culvertv1.Record
	for i := range 20 {
		in = append(in, &culvertv1.Record{Value: []byte(fmt.Sprint(i))})
	}
	e.Produce(t, subj, in)

	first := make(chan connectors.Message, 100)
	gate := make(chan struct{})
	stop := run(t, src, func(ctx context.Context, m connectors.Message) error {
		first <- m
		switch string(m.Record.Value) {
		case "0":
			return m.Settler.Ack(ctx)
		case "1":
			return nil // held, never settled
		}
		// Block on "2" so the rest stay prefetched.
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	m0, m1 := <-first, <-first
	<-first // "2" is blocking
	if m0.Record.Id != "js:"+e.stream()+":1" || m1.Record.Id != "js:"+e.stream()+":2" {
		t.Fatalf("ids %q %q", m0.Record.Id, m1.Record.Id)
	}
	if m1.Delivery != 1 || m1.Record.Source.Offset != 2 || m1.Record.Source.Stream != e.stream() || m1.Record.Source.Subject != subj {
		t.Fatalf("first delivery: %d %v", m1.Delivery, m1.Record.Source)
	}
	stop()
	src.Close()

	src2, err := jetstream.NewSource(context.Background(), h.nc, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src2.Close()
	again := make(chan connectors.Message, 100)
	stop2 := run(t, src2, func(ctx context.Context, m connectors.Message) error {
		again <- m
		return m.Settler.Ack(ctx)
	})
	seen := map[string]connectors.Message{}
	deadline := time.After(10 * time.Second)
	for len(seen) < 19 {
		select {
		case m := <-again:
			seen[string(m.Record.Value)] = m
		case <-deadline:
			t.Fatalf("after restart got %d of 19 records", len(seen))
		}
	}
	stop2()
	if _, ok := seen["0"]; ok {
		t.Errorf("acked record redelivered")
	}
	if m := seen["1"]; m.Record.Id != m1.Record.Id || m.Delivery != 2 {
		t.Errorf("redelivered record: id %q delivery %d, want %q 2", m.Record.Id, m.Delivery, m1.Record.Id)
	}
}

// Nak with a delay: the record comes back after the others, with the
// delivery count raised; timings are only checked loosely.
func TestNakDelayOrdering(t *testing.T) {
	h := newHarness(t, "value")
	e := h.New(t).(*env)
	src, err := jetstream.NewSource(context.Background(), h.nc, e.sourceConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var in []*culvertv1.Record
	for i := range 5 {
		in = append(in, &culvertv1.Record{Value: []byte(fmt.Sprint(i))})
	}
	e.Produce(t, e.Subjects()[0], in)
	got := make(chan connectors.Message, 10)
	stop := run(t, src, func(ctx context.Context, m connectors.Message) error {
		got <- m
		if string(m.Record.Value) == "0" && m.Delivery == 1 {
			return m.Settler.Nak(ctx, 200*time.Millisecond)
		}
		return m.Settler.Ack(ctx)
	})
	var order []string
	for len(order) < 6 {
		select {
		case m := <-got:
			order = append(order, fmt.Sprintf("%s#%d", m.Record.Value, m.Delivery))
		case <-time.After(10 * time.Second):
			t.Fatalf("got %v", order)
		}
	}
	stop()
	want := []string{"0#1", "1#1", "2#1", "3#1", "4#1", "0#2"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("order %v, want %v", order, want)
	}
}

// An existing stream is used as it is; a second source on the same durable
// after a config change updates the consumer.
func TestExistingStreamAndConsumerUpdate(t *testing.T) {
	h := newHarness(t, "record")
	ctx := context.Background()
	if _, err := h.js.CreateStream(ctx, gojs.StreamConfig{Name: "PRE", Subjects: []string{"pre.>"}, Storage: gojs.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	cfg := jetstream.SourceConfig{Stream: "PRE", Subjects: []string{"other"}, Durable: "d", MaxInFlight: 5}
	if _, err := jetstream.NewSource(ctx, h.nc, cfg, nil); err != nil {
		t.Fatal(err)
	}
	cfg.MaxInFlight = 7
	if _, err := jetstream.NewSource(ctx, h.nc, cfg, nil); err != nil {
		t.Fatal(err)
	}
	c, err := h.js.Consumer(ctx, "PRE", "d")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MaxAckPending; got != 7 {
		t.Errorf("MaxAckPending %d, want 7", got)
	}
	st, _ := h.js.Stream(ctx, "PRE")
	if subj := st.CachedInfo().Config.Subjects; fmt.Sprint(subj) != "[pre.>]" {
		t.Errorf("stream subjects changed to %v", subj)
	}
	if _, err := jetstream.NewSource(ctx, h.nc, jetstream.SourceConfig{Stream: "MISSING", Durable: "d"}, nil); err == nil {
		t.Errorf("missing stream without subjects: no error")
	}
	if _, err := jetstream.NewSource(ctx, h.nc, jetstream.SourceConfig{Stream: "PRE", Durable: "x", DeliverPolicy: "bogus"}, nil); err == nil {
		t.Errorf("bogus deliver policy: no error")
	}
}

// The sink sets Nats-Msg-Id: republishing a record is de-duplicated, and a
// record-encoded body keeps headers in order with repeats.
func TestSinkDedupAndHeaderOrder(t *testing.T) {
	h := newHarness(t, "record")
	ctx := context.Background()
	sink, err := jetstream.NewSink(ctx, h.nc, jetstream.SinkConfig{Stream: "OUT", Subjects: []string{"out.>"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r := &culvertv1.Record{Id: "js:IN:7/0", Value: []byte("v"), Headers: []*culvertv1.Header{
		{Name: "b", Value: []byte("1")}, {Name: "a", Value: []byte("2")}, {Name: "b", Value: []byte("3")}}}
	errc := make(chan error, 2)
	sink.Publish(ctx, "out.x", r, func(err error) { errc <- err })
	sink.Publish(ctx, "out.x", r, func(err error) { errc <- err })
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	st, _ := h.js.Stream(ctx, "OUT")
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("stream has %d messages, want 1 (dedup by Nats-Msg-Id)", info.State.Msgs)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(natsmsg.HeaderMsgID) != r.Id || m.Header.Get("Content-Type") != connectors.RecordContentType {
		t.Errorf("headers %v", m.Header)
	}
	got := new(culvertv1.Record)
	if err := proto.Unmarshal(m.Data, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, r) {
		t.Errorf("stored %v, want %v", got, r)
	}
}

// Publishing to a subject no stream captures fails that record's done.
func TestSinkNoStream(t *testing.T) {
	h := newHarness(t, "record")
	ctx := context.Background()
	sink, err := jetstream.NewSink(ctx, h.nc, jetstream.SinkConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	errc := make(chan error, 1)
	sink.Publish(ctx, "nowhere", &culvertv1.Record{Value: []byte("v")}, func(err error) { errc <- err })
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("publish without a stream succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no done")
	}
}

// BenchmarkSinkThenSource publishes b.N records through the Sink and reads
// them back through the Source, acking each.
func BenchmarkSinkThenSource(b *testing.B) {
	s := natstest.Server(b)
	nc := natstest.Connect(b, s)
	ctx := context.Background()
	sink, err := jetstream.NewSink(ctx, nc, jetstream.SinkConfig{Stream: "B", Subjects: []string{"b.>"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	r := &culvertv1.Record{Key: []byte("k"), Value: make([]byte, 64)}
	b.ResetTimer()
	for i := range b.N {
		rr := proto.Clone(r).(*culvertv1.Record)
		rr.Id = fmt.Sprint(i)
		sink.Publish(ctx, "b.x", rr, func(err error) {
			if err != nil {
				b.Error(err)
			}
		})
	}
	if err := sink.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	pub := b.Elapsed()
	src, err := jetstream.NewSource(ctx, nc, jetstream.SourceConfig{Stream: "B", Durable: "b"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	got := make(chan struct{})
	n := 0
	rctx, cancel := context.WithCancel(ctx)
	go src.Run(rctx, handlerFuncB(func(m connectors.Message) {
		m.Settler.Ack(ctx)
		if n++; n == b.N {
			close(got)
		}
	}))
	<-got
	cancel()
	b.ReportMetric(float64(b.N)/pub.Seconds(), "pub/s")
	b.ReportMetric(float64(b.N)/(b.Elapsed()-pub).Seconds(), "consume/s")
}

type handlerFuncB func(connectors.Message)

func (f handlerFuncB) Handle(_ context.Context, m connectors.Message) error { f(m); return nil }
func (f handlerFuncB) Revoked([]string)                                     {}
