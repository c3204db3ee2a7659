package crashtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

const exactlyOncePipeline = `
version: 1
name: crash
sandbox: none
inputs:
  in:
    kafka: { brokers: [%[1]s], topics: [in], group: crash, transactional_id: crash-1, session_timeout: 6s, max_in_flight: 512 }
functions:
  pass: { command: %[2]s, instances: 2, batch: { size: 100, max_wait: 2ms } }
  mark: { command: sed, args: ["-u", "s/$/ ok/"], mode: lines }
routes:
  - { name: main, chain: pass | mark, outputs: [out] }
outputs:
  out: { kafka: { brokers: [%[1]s], topic: out, transaction: in } }
delivery: { max_in_flight: 512, shutdown_grace: 10s }
`

// TestKill9KafkaExactlyOnce is TestKill9Kafka for delivery through Kafka
// transactions (transactional_id on the input, transaction: in on the
// output): after the kills, a read_committed consumer of the output topic
// sees every input's output exactly once, in per-key order.
func TestKill9KafkaExactlyOnce(t *testing.T) {
	n, kills := records(), killCount()
	const partitions = 4
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	kf := StartKfake(t, filepath.Join(bins, "kfake"), r.dir, r.log, partitions, "in", "out")
	ins := produce(ctx, t, kf.Brokers, n)
	pipeline := filepath.Join(r.dir, "pipeline.yaml")
	yaml := fmt.Sprintf(exactlyOncePipeline, `"`+strings.Join(kf.Brokers, `", "`)+`"`, filepath.Join(bins, "passthrough"))
	if err := os.WriteFile(pipeline, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	ends := partitionEnds(ins)
	progress := func() int {
		sum := 0
		for _, off := range committed(ctx, t, kf.Brokers, "crash", partitions) {
			sum += int(off)
		}
		return sum
	}
	running := func() int { return strings.Count(Tail(r.log.Name(), 1<<30), `msg="pipeline running"`) }
	c := r.culvert(t, pipeline)
	before := 0 // "pipeline running" lines logged before the last start
	for k := range kills {
		target := killTarget(progress(), n, kills-k)
		WaitFor(ctx, t, 60*time.Second, r.log.Name(), progress, func() bool { return progress() >= target })
		c.Kill()
		t.Logf("kill %d: SIGKILL with %d input records committed", k+1, progress())
		// A kill may land before the process finished starting, so count
		// what was logged before the next start rather than assume one
		// line per process.
		before = running()
		c = r.culvert(t, pipeline)
	}
	WaitFor(ctx, t, 90*time.Second, r.log.Name(), progress, func() bool { return kafkaDone(ctx, kf.Brokers, ends) })
	// The last restart may find nothing left to do: let it finish starting
	// (its signal handling included) before SIGTERM.
	WaitFor(ctx, t, 30*time.Second, r.log.Name(), running, func() bool { return running() > before })
	if err := c.Stop(30 * time.Second); err != nil {
		t.Errorf("culvert after SIGTERM: %v", err)
	}

	outs := readOut(ctx, t, kf.Brokers, kgo.ReadCommitted(), n)
	// The same topic read_uncommitted shows the outputs of the
	// transactions the kills aborted: proof that the kills hit open ones.
	all := readOut(ctx, t, kf.Brokers, kgo.ReadUncommitted(), n)
	t.Logf("read_uncommitted sees %d outputs (aborted transactions included), read_committed %d", len(all), len(outs))
	rep := Audit(ins, outs, nil)
	rep.Kills = kills
	t.Logf("kafka exactly-once kill -9 (read_committed): %s", rep)
	rep.Check(t)
	if rep.Duplicates != 0 {
		t.Errorf("%d duplicates seen by read_committed", rep.Duplicates)
	}
	if t.Failed() {
		t.Log(r.tail())
	}
}

// readOut reads topic out from the start at the isolation level until it
// has more than n records or none came for 10s.
func readOut(ctx context.Context, t *testing.T, brokers []string, level kgo.IsolationLevel, n int) []Output {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("out"),
		kgo.FetchIsolationLevel(level), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var outs []Output
	for {
		fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
		fs := cl.PollFetches(fctx)
		fcancel()
		if fctx.Err() != nil && fs.NumRecords() == 0 {
			return outs
		}
		fs.EachRecord(func(kr *kgo.Record) {
			rec := new(culvertv1.Record)
			if err := proto.Unmarshal(kr.Value, rec); err != nil {
				t.Fatalf("output at %s/%d@%d: %v", kr.Topic, kr.Partition, kr.Offset, err)
			}
			src, _, _ := strings.Cut(rec.Id, "/")
			o := Output{Src: src}
			if _, err := fmt.Sscanf(string(rec.Value), "%s %d", &o.Key, &o.N); err != nil {
				t.Fatalf("output %q: %v", rec.Value, err)
			}
			outs = append(outs, o)
		})
	}
}
