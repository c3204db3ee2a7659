package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox/process"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// BenchmarkDispatch measures the engine's cost per record: handing a
// source record in, routing it, running it through the chain (none, or
// testfn passing records on unchanged in framed mode, batches of 1000,
// two instances), publishing it and settling it. The source hands b.N
// prebuilt Kafka-like records (key of 1000, value of 100 bytes) and
// counts settlements; the sink confirms each record at once, so that only
// the engine (and the function hop) is measured, not a connector.
// allocs/record counts this process only.
func BenchmarkDispatch(b *testing.B) {
	for _, chain := range []string{"[]", "[pass]"} {
		b.Run("chain="+chain, func(b *testing.B) {
			yaml := strings.ReplaceAll(`
version: 1
name: bench
inputs: { in: { stdin: {} } }
functions:
  pass: { command: $TESTFN, args: [to], mode: framed, instances: 2, batch: { size: 1000, max_wait: 1ms } }
routes:
  - name: main
    chain: `+chain+`
    outputs: [out]
outputs:
  out: { file: { path: out.ndjson } }
delivery: { max_in_flight: 20000 }
`, "$TESTFN", testfnPath())
			chk := pipelines.Checker{CEL: router.CheckCEL, SubjectPattern: router.CheckSubjectPattern,
				Template: func(s string) error { _, err := router.ParseTemplate(s); return err }}
			p, err := pipelines.ParseWith(filepath.Join(b.TempDir(), "pipeline.yaml"), []byte(yaml), func(string) (string, bool) { return "", false }, chk)
			if err != nil {
				b.Fatal(err)
			}
			src := &genSource{n: b.N, done: make(chan struct{})}
			e, err := New(Options{
				Pipeline: p, Sources: map[string]connectors.Source{"in": src}, Sinks: map[string]connectors.Sink{"out": nullSink{}},
				Runtime: process.Runtime{}, Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			b.ResetTimer()
			go func() { errc <- e.Run(ctx) }()
			select {
			case <-src.done:
			case err := <-errc:
				b.Fatalf("Run: %v", err)
			case <-time.After(5 * time.Minute):
				b.Fatalf("not settled; stats %+v", e.Stats())
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms1)
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			if st := e.Stats(); st.Naked != 0 || st.Acked != int64(b.N) {
				b.Fatalf("stats %+v, want %d acked", st, b.N)
			}
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "allocs/record")
			b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(b.N), "B/record")
		})
	}
}

// genSource hands n records and closes done once all are acked.
type genSource struct {
	n     int
	acked atomic.Int64
	done  chan struct{}
}

func (s *genSource) Run(ctx context.Context, h connectors.Handler) error {
	val := bytes.Repeat([]byte{'x'}, 100)
	t := timestamppb.New(time.Unix(1700000000, 0))
	for i := range s.n {
		rec := &culvertv1.Record{Id: "kafka:in:0:" + strconv.Itoa(i), Key: []byte("key-" + strconv.Itoa(i%1000)), Value: val, EventTime: t,
			Source: &culvertv1.Position{Connector: "kafka", Stream: "in", Subject: "in", Partition: "0", Offset: uint64(i)}}
		if err := h.Handle(ctx, connectors.Message{Record: rec, Settler: (*genSettler)(s)}); err != nil {
			return nil // cancelled
		}
	}
	<-ctx.Done()
	return nil
}

func (s *genSource) Close() error { return nil }

type genSettler genSource

func (s *genSettler) Ack(context.Context) error {
	if s.acked.Add(1) == int64(s.n) {
		close(s.done)
	}
	return nil
}

func (s *genSettler) Nak(context.Context, time.Duration) error {
	return fmt.Errorf("nak")
}

// nullSink confirms every record at once.
type nullSink struct{}

func (nullSink) Publish(_ context.Context, _ string, _ *culvertv1.Record, done func(error)) {
	done(nil)
}
func (nullSink) Flush(context.Context) error { return nil }
func (nullSink) Close() error                { return nil }
