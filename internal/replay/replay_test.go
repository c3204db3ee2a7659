package replay

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/natstest"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func drain(t *testing.T, next memory.Next) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if _, err := next(context.Background()); err == io.EOF {
			return time.Since(start)
		} else if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPaced checks the pacing's lower bounds only: a paced replay is never
// faster than asked (a loaded machine may make it slower).
func TestPaced(t *testing.T) {
	recs := func(n int, gap time.Duration) []*culvertv1.Record {
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		var out []*culvertv1.Record
		for i := range n {
			out = append(out, &culvertv1.Record{EventTime: timestamppb.New(base.Add(time.Duration(i) * gap))})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		pace Pace
		recs []*culvertv1.Record
		min  time.Duration
	}{
		{"rate 50/s", Pace{Rate: 50}, recs(11, 0), 200 * time.Millisecond},
		{"original", Pace{Original: true}, recs(4, 100*time.Millisecond), 300 * time.Millisecond},
		{"original twice as fast", Pace{Original: true, Speed: 2}, recs(5, 100*time.Millisecond), 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if el := drain(t, Paced(memory.Slice(tc.recs), tc.pace)); el < tc.min {
				t.Errorf("took %s, want at least %s", el, tc.min)
			}
		})
	}
	// Without event times, original pacing sends at once.
	if el := drain(t, Paced(memory.Slice(make([]*culvertv1.Record, 0)), Pace{Original: true})); el > time.Second {
		t.Errorf("empty replay took %s", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	next := Paced(memory.Slice(recs(3, time.Hour)), Pace{Original: true})
	next(ctx)
	if _, err := next(ctx); err == nil {
		t.Error("a cancelled wait returned a record")
	}
}

func loadExample(t *testing.T, name string) *pipelines.Pipeline {
	t.Helper()
	p, err := pipelines.Load(filepath.Join("../../examples", name, "pipeline.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDryRun(t *testing.T) {
	p := loadExample(t, "order-events")
	recs, err := tap.ReadFile("../../examples/order-events/events.ndjson", "")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string][]string{}
	sum, err := Run(context.Background(), Options{
		Pipeline: p, Next: memory.Slice(recs), DryRun: true, Logger: quiet(),
		OnOutput: func(out string, pub memory.Published) {
			mu.Lock()
			got[out] = append(got[out], pub.Subject)
			mu.Unlock()
		},
		Runner: runner.Options{Runtime: process.Runtime{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.In != 5 || sum.Out["fulfilment"] != 3 || sum.Out["refunds"] != 1 || sum.Out["unrouted"] != 1 || sum.Dead != 0 || len(sum.GivenBack) != 0 {
		t.Errorf("summary %+v", sum)
	}
	if len(got["fulfilment"]) != 3 || !strings.HasPrefix(got["fulfilment"][0], "fulfilment.") {
		t.Errorf("dry-run outputs %v", got)
	}
	var b strings.Builder
	WriteSummary(&b, sum)
	for _, want := range []string{"5 records in", "fulfilment", "refunds", "unrouted"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

// TestReplayToRealOutputs replays a tap file into a pipeline whose outputs
// are real JetStream streams on an embedded server, and reads them back
// with a plain client.
func TestReplayToRealOutputs(t *testing.T) {
	srv := natstest.Server(t)
	p := loadExample(t, "order-events")
	f, err := os.Open("../../examples/order-events/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := tap.NewReader(f, "events.ndjson", "")
	if err != nil {
		t.Fatal(err)
	}
	next := func(context.Context) (*culvertv1.Record, error) { return r.Next() }
	sum, err := Run(context.Background(), Options{
		Pipeline: p, Next: Paced(next, Pace{Rate: 200}), Logger: quiet(),
		Runner: runner.Options{Runtime: process.Runtime{}, NATSURL: srv.ClientURL()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.In != 5 || sum.Out["fulfilment"] != 3 || sum.Out["refunds"] != 1 || sum.Out["unrouted"] != 1 {
		t.Errorf("summary %+v", sum)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for stream, want := range map[string]uint64{"FULFILMENT": 3, "REFUNDS": 1, "UNROUTED": 1} {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		info, _ := s.Info(context.Background())
		if info.State.Msgs != want {
			t.Errorf("stream %s holds %d messages, want %d", stream, info.State.Msgs, want)
		}
	}
}

// TestSummaryCountsDeadLettersAndGivenBack replays records of which one
// fails on a route with a dead-letter output and one on a route without:
// the summary counts them apart and marks the dead-letter output.
func TestSummaryCountsDeadLettersAndGivenBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(`version: 1
name: failing
inputs: { in: { nats: { subjects: ["in.>"] } } }
functions:
  broken: { command: "false", mode: exec, sandbox: none, retry: { max_attempts: 1 } }
routes:
  - { name: good, match: { subjects: [in.good] }, outputs: [out] }
  - { name: bad, match: { subjects: [in.bad] }, chain: broken, outputs: [out], dead_letter: dlq }
  - { name: lost, match: { subjects: [in.lost] }, chain: broken, outputs: [out] }
outputs:
  out: { nats: { subject: out } }
  dlq: { nats: { subject: dlq } }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := pipelines.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var recs []*culvertv1.Record
	for i, subj := range []string{"in.good", "in.bad", "in.good", "in.lost"} {
		recs = append(recs, &culvertv1.Record{Id: subj + ":" + string(rune('0'+i)), Value: []byte("x"), Source: &culvertv1.Position{Subject: subj}})
	}
	sum, err := Run(context.Background(), Options{
		Pipeline: p, Next: memory.Slice(recs), DryRun: true, Logger: quiet(),
		Runner: runner.Options{Runtime: process.Runtime{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.In != 4 || sum.Out["out"] != 2 || sum.Out["dlq"] != 1 || sum.Dead != 1 || len(sum.GivenBack) != 1 || sum.GivenBack[0].Id != "in.lost:3" {
		t.Errorf("summary %+v", sum)
	}
	var b strings.Builder
	WriteSummary(&b, sum)
	for _, want := range []string{
		"replay: 4 records in, 1 dead-lettered, 1 given back, ",
		"records/s)",
		"  dlq            1  dead letters",
		"  out            2  ",
		"  given back: in.lost:3",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

// TestReplayToRealKafkaOutputs replays the payments-fanout tap file into
// that pipeline with its outputs on kfake, and reads the topics back with
// a plain client.
func TestReplayToRealKafkaOutputs(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 1})
	want := map[string]int{"payments.card": 2, "payments.sepa": 1, "payments.audit.EUR": 2, "payments.audit.GBP": 1, "payments.audit.USD": 1, "payments.dlq": 0}
	for topic := range want {
		c.CreateTopic(t, topic, 1)
	}
	b, err := os.ReadFile("../../examples/payments-fanout/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), "127.0.0.1:9092", c.Brokers[0])), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := pipelines.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := tap.ReadFile("../../examples/payments-fanout/payments.tap", "")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), Options{
		Pipeline: p, Next: memory.Slice(recs), Logger: quiet(),
		Runner: runner.Options{Runtime: process.Runtime{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.In != int64(len(recs)) || sum.Out["card-settlement"] != 2 || sum.Out["sepa-settlement"] != 1 || sum.Out["audit"] != 4 || sum.Dead != 0 {
		t.Errorf("summary %+v", sum)
	}
	for topic, n := range want {
		if n == 0 {
			continue
		}
		got := c.Read(t, topic, n, 10*time.Second)
		if len(got) != n {
			t.Errorf("topic %s holds %d records, want %d", topic, len(got), n)
		}
	}
}
