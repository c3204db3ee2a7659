package crashtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaPipeline reads topic in through a consumer group, runs a
// two-function chain (a framed Go function, then sed in lines mode), and
// writes to the audit stream OUT.
const kafkaPipeline = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    # rebalance_timeout below the session: kfake (unlike Kafka) lets the
    # session of a member waiting in JoinGroup run out, and then never
    # answers its join (TestKfakeExpiresMembersAwaitingJoin). A rebalance
    # that waits for a killed member longer than the session therefore
    # strands the live ones; this one gives up on it first.
    kafka: { brokers: [%s], topics: [in], group: crash, commit_interval: 100ms, session_timeout: %s, rebalance_timeout: 2s, max_in_flight: %d, revoke_grace: 1s }
` + crashChain

// crashChain is what every crash pipeline has after its input: the
// two-function chain (passthrough, then sed in lines mode), the audit
// output and the in-flight bound. Its verbs take the passthrough command
// and delivery.max_in_flight.
const crashChain = `functions:
  pass: { command: %s, instances: 2, batch: { size: 100, max_wait: 2ms } }
  mark: { command: sed, args: ["-u", "s/$/ ok/"], mode: lines }
routes:
  - { name: main, chain: pass | mark, outputs: [out] }
outputs:
  out: { jetstream: { subject: out.x, stream: OUT, subjects: ["out.>"] } }
delivery: { max_in_flight: %d, shutdown_grace: 10s }
`

const kafkaWindow = 512 // max_in_flight of the crash pipelines

// kafkaSetup starts a kfake process with topic in (partitions), the audit
// NATS server, puts n keyed records on in, and writes the pipeline file.
func kafkaSetup(ctx context.Context, t *testing.T, r *run, n, partitions int, session time.Duration) (*Kfake, *OutStream, map[string]Input, string) {
	t.Helper()
	kf := StartKfake(t, filepath.Join(bins, "kfake"), r.dir, r.log, partitions, "in")
	url := NATS(t, r.dir)
	out := NewOutStream(ctx, t, url, "OUT", "out.>")
	ins := produce(ctx, t, kf.Brokers, n)
	pipeline := filepath.Join(r.dir, "pipeline.yaml")
	brokers := ""
	for i, b := range kf.Brokers {
		if i > 0 {
			brokers += ", "
		}
		brokers += `"` + b + `"`
	}
	yaml := fmt.Sprintf(kafkaPipeline, url, brokers, session, kafkaWindow, filepath.Join(bins, "passthrough"), kafkaWindow)
	if err := os.WriteFile(pipeline, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return kf, out, ins, pipeline
}

// produce puts n records "k<i%keys> <i/keys>" keyed k<i%keys> on topic in
// and returns them by the id Culvert gives them.
func produce(ctx context.Context, t *testing.T, brokers []string, n int) map[string]Input {
	t.Helper()
	return produceMarked(ctx, t, brokers, n, nil)
}

// produceMarked is produce with " <mark(i)>" appended to the value of
// record i when mark returns something.
func produceMarked(ctx context.Context, t *testing.T, brokers []string, n int, mark func(i int) string) map[string]Input {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	start := time.Now()
	recs := make([]*kgo.Record, n)
	for i := range n {
		k := fmt.Sprint("k", i%keys)
		recs[i] = &kgo.Record{Topic: "in", Key: []byte(k), Value: fmt.Appendf(nil, "%s %d", k, i/keys)}
		if mark != nil {
			if m := mark(i); m != "" {
				recs[i].Value = fmt.Appendf(recs[i].Value, " %s", m)
			}
		}
	}
	ins := make(map[string]Input, n)
	for chunk := range slicesChunk(recs, 5000) {
		res := cl.ProduceSync(ctx, chunk...)
		if err := res.FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
		for _, pr := range res {
			var in Input
			fmt.Sscanf(string(pr.Record.Value), "%s %d", &in.Key, &in.N)
			in.Part, in.Off = fmt.Sprint(pr.Record.Partition), pr.Record.Offset
			ins[fmt.Sprintf("kafka:in:%d:%d", pr.Record.Partition, pr.Record.Offset)] = in
		}
	}
	t.Logf("%d records on in in %s", n, time.Since(start).Round(time.Millisecond))
	return ins
}

func slicesChunk[T any](s []T, n int) func(func([]T) bool) {
	return func(yield func([]T) bool) {
		for i := 0; i < len(s); i += n {
			if !yield(s[i:min(i+n, len(s))]) {
				return
			}
		}
	}
}

// committed is the group's committed offset of every partition of in (0
// for a partition without a commit), read from the broker.
func committed(ctx context.Context, t *testing.T, brokers []string, group string, partitions int) map[string]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	got := map[string]int64{}
	for p := range partitions {
		got[fmt.Sprint(p)] = 0
	}
	var last error
	for range 50 {
		offs, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			err = offs.Error()
		}
		if err == nil {
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Topic == "in" {
					got[fmt.Sprint(o.Partition)] = o.At
				}
			})
			return got
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("fetching committed offsets of %s: %v", group, last)
	return nil
}

// kafkaDone is true once every partition's commit reached its end.
func kafkaDone(ctx context.Context, brokers []string, ends map[string]int64) bool {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return false
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(ctx, "crash")
	if err != nil || offs.Error() != nil {
		return false
	}
	for p, end := range ends {
		var part int32
		fmt.Sscan(p, &part)
		o, ok := offs.Lookup("in", part)
		if !ok || o.At < end {
			return false
		}
	}
	return true
}

func partitionEnds(ins map[string]Input) map[string]int64 {
	ends := map[string]int64{}
	for _, in := range ins {
		ends[in.Part] = max(ends[in.Part], in.Off+1)
	}
	return ends
}

// killTarget is a random output count at which to kill next: somewhere in
// the middle share of what is left for the kills still to come.
func killTarget(stored, n, killsLeft int) int {
	share := max((n-stored)/(killsLeft+1), 1)
	return stored + share/2 + rand.IntN(share)
}

// TestKill9Kafka puts keyed records on a 4-partition topic of a kfake
// cluster that runs in its own process, runs culvert with a two-function
// chain, kills it with SIGKILL at random moments (CULVERT_CRASH_KILLS, 3),
// restarts it each time, and audits the outputs (see Audit): 0 lost, every
// duplicate at or after the committed offset of its partition at a kill and
// no more than the records exposed there, per-key order kept outside the
// crash windows. Records: CULVERT_CRASH_RECORDS (default 3000; 100000 is
// the full run in docs/delivery.md).
func TestKill9Kafka(t *testing.T) {
	n, kills := records(), killCount()
	const partitions = 4
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	kf, out, ins, pipeline := kafkaSetup(ctx, t, r, n, partitions, 3*time.Second)
	start := time.Now()

	var ks []Kill
	c := r.culvert(t, pipeline)
	for k := range kills {
		target := killTarget(out.Stored(ctx), n, kills-k)
		WaitFor(ctx, t, 60*time.Second, r.log.Name(), func() int { return out.Stored(ctx) }, func() bool { return out.Stored(ctx) >= target })
		c.Kill()
		time.Sleep(200 * time.Millisecond) // publishes already on the wire land
		kill := Kill{Stored: out.Stored(ctx)}
		for p, off := range committed(ctx, t, kf.Brokers, "crash", partitions) {
			kill.Windows = append(kill.Windows, Window{Kill: k + 1, Part: p, From: off})
		}
		ks = append(ks, kill)
		t.Logf("kill %d: SIGKILL with %d outputs stored; committed %v", k+1, kill.Stored, kill.Windows)
		c = r.culvert(t, pipeline)
	}
	ends := partitionEnds(ins)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), func() int { return out.Stored(ctx) }, func() bool {
		return out.Stored(ctx) >= n && kafkaDone(ctx, kf.Brokers, ends)
	})
	if err := c.Stop(30 * time.Second); err != nil {
		t.Errorf("culvert after SIGTERM: %v", err)
	}
	rep := Audit(ins, out.Read(ctx, t), ks)
	t.Logf("kafka kill -9: %s; took %s", rep, time.Since(start).Round(time.Second))
	rep.Check(t)
	if t.Failed() {
		t.Log(r.tail())
	}
}
