package runner_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// countingSink counts the confirmations of the sink it wraps.
type countingSink struct {
	connectors.Sink
	n *atomic.Int64
}

func (c countingSink) Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	c.Sink.Publish(ctx, subject, rec, func(err error) {
		if err == nil {
			c.n.Add(1)
		}
		done(err)
	})
}

// TestInjectedConnectors runs a JetStream pipeline with its input and
// outputs injected: no NATS server is started or dialled (the broker URL
// points nowhere), the sink sees the subjects rendered from the output's
// template, and WrapSink sees every confirmation.
func TestInjectedConnectors(t *testing.T) {
	p, err := pipelines.Parse("inject.yaml", []byte(`version: 1
name: inject
broker: { url: "nats://127.0.0.1:1" }
inputs: { in: { jetstream: { stream: IN, subjects: ["in.>"] } } }
routes: [{ name: all, outputs: [out] }]
outputs: { out: { jetstream: { subject: "out.{{ .Source.Subject }}", stream: OUT, subjects: ["out.>"] } } }
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := []*culvertv1.Record{
		{Value: []byte("a"), Source: &culvertv1.Position{Subject: "in.x"}},
		{Value: []byte("b"), Source: &culvertv1.Position{Subject: "in.y"}},
	}
	src, err := memory.NewSource(memory.SourceConfig{Name: "in", Next: memory.Slice(recs)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := memory.NewSink(memory.SinkConfig{})
	var n atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = runner.Run(ctx, runner.Options{
		Pipeline: p, Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Sources:  map[string]connectors.Source{"in": src},
		Sinks:    map[string]connectors.Sink{"out": sink},
		WrapSink: func(name string, s connectors.Sink) connectors.Sink { return countingSink{s, &n} },
	})
	if err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, pub := range sink.Records() {
		subjects = append(subjects, pub.Subject)
	}
	if strings.Join(subjects, ",") != "out.in.x,out.in.y" || n.Load() != 2 || src.Acked() != 2 {
		t.Errorf("subjects %v, wrapped confirmations %d, acked %d", subjects, n.Load(), src.Acked())
	}
}
