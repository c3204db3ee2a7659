package nats_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	gonats "github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/nats"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

const inFlight = 16

type harness struct {
	nc  *gonats.Conn // connectors' connection
	pub *gonats.Conn // independent producer / consumer connection
	n   atomic.Int64
	// encoding used by the producer and the sink
	encoding string
}

func (h *harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{ConcurrentSubjects: true, InFlight: inFlight}
}

func (h *harness) New(t *testing.T) connectortest.Env {
	id := h.n.Add(1)
	return &env{h: h, prefix: fmt.Sprintf("ct.%d", id)}
}

type env struct {
	h      *harness
	prefix string
	subs   map[string]*gonats.Subscription
}

func (e *env) Subjects() []string { return []string{e.prefix + ".a", e.prefix + ".b"} }

func (e *env) Produce(t *testing.T, subject string, recs []*culvertv1.Record) {
	t.Helper()
	enc, _ := natsmsg.ParseEncoding(e.h.encoding)
	en := natsmsg.NewEncoder(enc)
	for _, r := range recs {
		m, buf, err := en.Encode(subject, r)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.h.pub.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		en.Release(buf)
	}
	if err := e.h.pub.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	t.Helper()
	src, err := nats.NewSource(e.h.nc, nats.SourceConfig{Subjects: e.Subjects(), MaxInFlight: inFlight}, natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func (e *env) OutputSubject(t *testing.T) string {
	t.Helper()
	subj := e.prefix + ".out"
	sub, err := e.h.pub.SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.pub.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if e.subs == nil {
		e.subs = map[string]*gonats.Subscription{}
	}
	e.subs[subj] = sub
	return subj
}

func (e *env) NewSink(t *testing.T) connectors.Sink {
	t.Helper()
	s, err := nats.NewSink(e.h.nc, nats.SinkConfig{Encoding: e.h.encoding}, natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) Consume(t *testing.T, subject string, n int, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	sub := e.subs[subject]
	deadline := time.Now().Add(timeout)
	var out []*culvertv1.Record
	for len(out) < n {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("consumed %d of %d records from %s: %v", len(out), n, subject, err)
		}
		r, err := natsmsg.Decode(m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestConformance(t *testing.T) {
	s := natstest.Server(t)
	for _, enc := range []string{"record", "value"} {
		h := &harness{nc: natstest.Connect(t, s), pub: natstest.Connect(t, s), encoding: enc}
		connectortest.Run(t, enc, h)
	}
}

// A record-encoded message keeps its id and fields; a raw one gets a fresh
// id, and both get the subject as Source.
func TestSourceDecoding(t *testing.T) {
	s := natstest.Server(t)
	nc, pub := natstest.Connect(t, s), natstest.Connect(t, s)
	src, err := nats.NewSource(nc, nats.SourceConfig{Subjects: []string{"dec.>"}, QueueGroup: "q"}, natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	want := &culvertv1.Record{Id: "up:1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
		Headers: []*culvertv1.Header{{Name: "b", Value: []byte("1")}, {Name: "a", Value: []byte("2")}, {Name: "b", Value: []byte("3")}}}
	body, _ := proto.Marshal(want)
	m := gonats.NewMsg("dec.rec")
	m.Header.Set(natsmsg.HeaderContentType, connectors.RecordContentType)
	m.Data = body
	if err := pub.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	raw := gonats.NewMsg("dec.raw")
	raw.Header.Set("Content-Type", "application/json")
	raw.Header.Set(natsmsg.HeaderKey, "rk")
	raw.Data = []byte(`{"a":1}`)
	if err := pub.PublishMsg(raw); err != nil {
		t.Fatal(err)
	}
	pub.Flush()

	got := make(chan connectors.Message, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, handlerFunc(func(m connectors.Message) { m.Settler.Ack(ctx); got <- m })) }()
	bySubject := map[string]*culvertv1.Record{}
	for range 2 {
		select {
		case m := <-got:
			bySubject[m.Record.GetSource().GetSubject()] = m.Record
		case <-time.After(5 * time.Second):
			t.Fatal("timeout")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r := bySubject["dec.rec"]
	w := proto.Clone(want).(*culvertv1.Record)
	w.Source = &culvertv1.Position{Connector: "nats", Subject: "dec.rec"}
	if !proto.Equal(r, w) {
		t.Errorf("record-encoded: got %v, want %v", r, w)
	}
	r = bySubject["dec.raw"]
	if r.GetContentType() != "application/json" || string(r.GetKey()) != "rk" || string(r.GetValue()) != `{"a":1}` || len(r.GetId()) < 10 {
		t.Errorf("raw: got %v", r)
	}
}

type handlerFunc func(connectors.Message)

func (f handlerFunc) Handle(_ context.Context, m connectors.Message) error { f(m); return nil }
func (f handlerFunc) Revoked([]string)                                     {}

// Publishing a record that value encoding cannot carry fails its done, and
// the sink keeps working.
func TestSinkNotRepresentable(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s)
	sink, err := nats.NewSink(nc, nats.SinkConfig{Encoding: "value"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	errc := make(chan error, 2)
	bad := &culvertv1.Record{Headers: []*culvertv1.Header{{Name: "x", Value: []byte("a\r\nb")}}}
	sink.Publish(context.Background(), "x", bad, func(err error) { errc <- err })
	sink.Publish(context.Background(), "x", &culvertv1.Record{Value: []byte("ok")}, func(err error) { errc <- err })
	if err := <-errc; err == nil {
		t.Errorf("bad record: done(nil)")
	}
	if err := <-errc; err != nil {
		t.Errorf("good record: %v", err)
	}
}
