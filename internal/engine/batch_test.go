package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// batchSource hands its records to the engine's HandleBatch in batches of
// size, as the Kafka source's lanes do, and counts settlements.
type batchSource struct {
	recs []*culvertv1.Record
	size int

	mu    sync.Mutex
	acks  map[string]int
	naks  int
	total int
	done  chan struct{}
}

type batchSettler struct {
	s  *batchSource
	id string
}

func (st batchSettler) Ack(context.Context) error { return st.s.settle(st.id, true) }
func (st batchSettler) Nak(context.Context, time.Duration) error {
	return st.s.settle(st.id, false)
}

func (s *batchSource) settle(id string, ack bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ack {
		s.acks[id]++
	} else {
		s.naks++
	}
	if s.total++; s.total == len(s.recs) {
		close(s.done)
	}
	return nil
}

func (s *batchSource) Run(ctx context.Context, h connectors.Handler) error {
	bh, ok := h.(interface {
		HandleBatch(context.Context, []connectors.Message) (int, error)
	})
	if !ok {
		return fmt.Errorf("the engine's handler takes no batches")
	}
	ms := make([]connectors.Message, 0, s.size)
	for i := 0; i < len(s.recs); i += s.size {
		ms = ms[:0]
		for _, r := range s.recs[i:min(i+s.size, len(s.recs))] {
			ms = append(ms, connectors.Message{Record: r, Settler: batchSettler{s, r.Id}})
		}
		n, err := bh.HandleBatch(ctx, ms)
		if err != nil {
			return nil // cancelled
		}
		if n != len(ms) {
			return fmt.Errorf("HandleBatch took %d of %d without an error", n, len(ms))
		}
		clear(ms) // the engine must not keep the slice
	}
	<-ctx.Done()
	return nil
}

func (s *batchSource) Close() error { return nil }

// listSink confirms every record at once and keeps them, per output.
type listSink struct {
	mu   sync.Mutex
	recs []*culvertv1.Record
}

func (s *listSink) Publish(_ context.Context, _ string, r *culvertv1.Record, done func(error)) {
	s.mu.Lock()
	s.recs = append(s.recs, r)
	s.mu.Unlock()
	done(nil)
}
func (s *listSink) Flush(context.Context) error { return nil }
func (s *listSink) Close() error                { return nil }

// TestHandleBatch: records handed in batches are all published and acked
// once each, with per-key order kept through the chain and fan-out to
// several routes, whether the batches fit the in-flight budgets
// at once or, with a small max_in_flight or max_in_flight_bytes, go in
// smaller chunks or one record at a time.
func TestHandleBatch(t *testing.T) {
	tests := []struct {
		name     string
		chain    string
		routes   int
		delivery string
		size     int
	}{
		{"empty chain", "[]", 1, "max_in_flight: 20000", 100},
		{"function", "[pass]", 1, "max_in_flight: 20000", 100},
		{"function, batches of one", "[pass]", 1, "max_in_flight: 20000", 1},
		{"function, two routes", "[pass]", 2, "max_in_flight: 20000", 64},
		{"function, small max_in_flight", "[pass]", 1, "max_in_flight: 8", 100},
		{"function, max_in_flight below the batch", "[pass]", 1, "max_in_flight: 3", 100},
		{"empty chain, small max_in_flight_bytes", "[]", 1, "max_in_flight_bytes: 64", 50},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var routes strings.Builder
			for i := range tc.routes {
				fmt.Fprintf(&routes, "  - name: r%d\n    chain: %s\n    outputs: [out%d]\n", i, tc.chain, i)
			}
			var outputs strings.Builder
			for i := range tc.routes {
				fmt.Fprintf(&outputs, "  out%d: { file: { path: out%d.ndjson } }\n", i, i)
			}
			yaml := `
version: 1
name: batch
inputs: { in: { stdin: {} } }
functions:
  pass: { command: ` + testfnPath() + `, args: [to], mode: framed, instances: 2, batch: { size: 50, max_wait: 1ms } }
routes:
` + routes.String() + `outputs:
` + outputs.String() + `delivery: { ` + tc.delivery + ` }
`
			chk := pipelines.Checker{CEL: router.CheckCEL, SubjectPattern: router.CheckSubjectPattern,
				Template: func(s string) error { _, err := router.ParseTemplate(s); return err }}
			p, err := pipelines.ParseWith(filepath.Join(t.TempDir(), "pipeline.yaml"), []byte(yaml), func(string) (string, bool) { return "", false }, chk)
			if err != nil {
				t.Fatal(err)
			}
			input := keyed("b", 1000, 7)
			src := &batchSource{recs: input, size: tc.size, acks: map[string]int{}, done: make(chan struct{})}
			sinks := map[string]connectors.Sink{}
			lists := make([]*listSink, tc.routes)
			for i := range lists {
				lists[i] = &listSink{}
				sinks[fmt.Sprint("out", i)] = lists[i]
			}
			e, err := New(Options{Pipeline: p, Sources: map[string]connectors.Source{"in": src}, Sinks: sinks,
				Runtime: process.Runtime{}, Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- e.Run(ctx) }()
			select {
			case <-src.done:
			case err := <-errc:
				t.Fatalf("Run: %v", err)
			case <-time.After(60 * time.Second):
				t.Fatalf("not settled; stats %+v", e.Stats())
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if src.naks != 0 || len(src.acks) != len(input) {
				t.Fatalf("%d records acked, %d naks; want %d acked", len(src.acks), src.naks, len(input))
			}
			for id, n := range src.acks {
				if n != 1 {
					t.Errorf("record %s acked %d times", id, n)
				}
			}
			for i, l := range lists {
				if len(l.recs) != len(input) {
					t.Errorf("output %d got %d records, want %d", i, len(l.recs), len(input))
				}
				checkKeyOrder(t, l.recs)
			}
			if st := e.Stats(); st.In != int64(len(input)) || st.InFlight != 0 || st.InFlightBytes != 0 {
				t.Errorf("stats %+v: want %d in, nothing in flight", st, len(input))
			}
		})
	}
}
