package memory_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/memory"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

const inFlight = 16

type harness struct{}

func (harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{Finite: true, InFlight: inFlight}
}

func (harness) New(t *testing.T) connectortest.Env { return &env{} }

// env is a list of produced records that a source reads through its Next,
// and the one sink of the test.
type env struct {
	mu       sync.Mutex
	produced []*culvertv1.Record
	sink     *memory.Sink
}

func (e *env) Subjects() []string { return []string{"mem"} }

func (e *env) Produce(t *testing.T, subject string, recs []*culvertv1.Record) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range recs {
		r = proto.Clone(r).(*culvertv1.Record)
		r.Source = &culvertv1.Position{Connector: "test", Subject: subject, Offset: uint64(len(e.produced) + 1)}
		e.produced = append(e.produced, r)
	}
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	i := 0
	next := func(ctx context.Context) (*culvertv1.Record, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		if i >= len(e.produced) {
			return nil, io.EOF
		}
		i++
		return proto.Clone(e.produced[i-1]).(*culvertv1.Record), nil
	}
	src, err := memory.NewSource(memory.SourceConfig{Name: "conformance", Next: next, MaxInFlight: inFlight}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func (e *env) OutputSubject(*testing.T) string { return "out" }

func (e *env) NewSink(t *testing.T) connectors.Sink {
	e.sink = memory.NewSink(memory.SinkConfig{Name: "conformance"})
	t.Cleanup(func() { e.sink.Close() })
	return e.sink
}

func (e *env) Consume(t *testing.T, subject string, n int, timeout time.Duration) []*culvertv1.Record {
	var out []*culvertv1.Record
	for _, p := range e.sink.Records() {
		if p.Subject != subject {
			t.Errorf("record %s published to %q, want %q", p.Record.Id, p.Subject, subject)
		}
		out = append(out, p.Record)
	}
	if len(out) < n {
		t.Fatalf("sink holds %d records, want %d", len(out), n)
	}
	return out[:n]
}

func TestConformance(t *testing.T) { connectortest.Run(t, "memory", harness{}) }

func handler(f func(connectors.Message)) connectors.Handler { return handlerFunc(f) }

type handlerFunc func(connectors.Message)

func (f handlerFunc) Handle(_ context.Context, m connectors.Message) error { f(m); return nil }
func (f handlerFunc) Revoked([]string)                                     {}

func TestPositionsKeptAndGivenBack(t *testing.T) {
	recs := []*culvertv1.Record{
		{Id: "kafka:orders:2:7", Value: []byte("a"), Source: &culvertv1.Position{Connector: "kafka", Subject: "orders", Partition: "2", Offset: 7}},
		{Value: []byte("b")},
		{Value: []byte("c")},
	}
	src, err := memory.NewSource(memory.SourceConfig{Name: "case", Next: memory.Slice(recs)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []connectors.Message
	if err := src.Run(context.Background(), handler(func(m connectors.Message) { got = append(got, m) })); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d messages", len(got))
	}
	if p := got[0].Record.Source; p.Connector != "kafka" || p.Partition != "2" || p.Offset != 7 || got[0].Record.Id != "kafka:orders:2:7" {
		t.Errorf("captured position changed: %v %q", p, got[0].Record.Id)
	}
	if got[1].Record.Id != "case:2" || got[1].Record.Source.GetConnector() != memory.Connector {
		t.Errorf("made-up id %q, position %v", got[1].Record.Id, got[1].Record.Source)
	}
	ctx := context.Background()
	if err := got[0].Settler.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := got[1].Settler.Nak(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := got[1].Settler.Ack(ctx); !errors.Is(err, connectors.ErrSettled) {
		t.Errorf("second settlement: %v", err)
	}
	if gb := src.GivenBack(); len(gb) != 1 || gb[0].Id != "case:2" {
		t.Errorf("given back %v", gb)
	}
	if src.Acked() != 1 {
		t.Errorf("acked %d", src.Acked())
	}
}

func TestNextError(t *testing.T) {
	boom := errors.New("truncated tap file")
	src, _ := memory.NewSource(memory.SourceConfig{Name: "tap", Next: func(context.Context) (*culvertv1.Record, error) { return nil, boom }}, nil)
	err := src.Run(context.Background(), handler(func(connectors.Message) {}))
	if !errors.Is(err, boom) {
		t.Errorf("Run: %v", err)
	}
	if _, err := memory.NewSource(memory.SourceConfig{}, nil); err == nil {
		t.Error("no Next: no error")
	}
}

func TestSinkCopiesRecords(t *testing.T) {
	s := memory.NewSink(memory.SinkConfig{})
	defer s.Close()
	r := &culvertv1.Record{Id: "x", Value: []byte("before")}
	done := make(chan error, 1)
	s.Publish(context.Background(), "subj", r, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r.Value[0] = 'B' // the engine may reuse the record's memory after done
	if got := s.Records(); len(got) != 1 || string(got[0].Record.Value) != "before" || got[0].Subject != "subj" {
		t.Errorf("kept %v", got)
	}
}
