package replay

import (
	"context"
	"fmt"
	"testing"

	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// BenchmarkReplay measures a dry-run replay of b.N records through a
// pipeline with one route and no function (source, router, settlement,
// in-memory sink), beside the baseline of the same records going straight
// from the in-memory source's iterator into an in-memory sink, in the same
// run:
//
//	go test -run '^$' -bench Replay -benchtime 20000x ./internal/replay
func BenchmarkReplay(b *testing.B) {
	recs := func(n int) []*culvertv1.Record {
		out := make([]*culvertv1.Record, n)
		for i := range out {
			out[i] = &culvertv1.Record{Key: []byte(fmt.Sprint(i % 64)), Value: []byte(`{"type":"order.created","id":1}`),
				Source: &culvertv1.Position{Subject: "shop.events.web"}}
		}
		return out
	}
	b.Run("baseline-source-to-sink", func(b *testing.B) {
		in := recs(b.N)
		sink := memory.NewSink(memory.SinkConfig{Discard: true})
		defer sink.Close()
		next := memory.Slice(in)
		ctx := context.Background()
		b.ResetTimer()
		for {
			r, err := next(ctx)
			if err != nil {
				break
			}
			sink.Publish(ctx, "out", r, func(error) {})
		}
		if err := sink.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("pipeline-dry-run", func(b *testing.B) {
		p, err := pipelines.Parse("bench.yaml", []byte(`version: 1
name: bench
inputs: { in: { nats: { subjects: ["shop.>"] } } }
routes:
  - { name: all, match: { subjects: ["shop.events.*"] }, outputs: [out] }
outputs: { out: { nats: { subject: "out.{{ .Source.Subject }}" } } }
delivery: { max_in_flight: 4096 }
`), nil)
		if err != nil {
			b.Fatal(err)
		}
		in := recs(b.N)
		b.ResetTimer()
		sum, err := Run(context.Background(), Options{
			Pipeline: p, Next: memory.Slice(in), DryRun: true, Logger: quiet(),
			Runner: runner.Options{Runtime: process.Runtime{}},
		})
		if err != nil {
			b.Fatal(err)
		}
		if sum.Out["out"] != int64(b.N) {
			b.Fatalf("%d out of %d", sum.Out["out"], b.N)
		}
	})
}
