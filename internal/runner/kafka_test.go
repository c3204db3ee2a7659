package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// startAny runs a pipeline like startPipeline, but connects to NATS only
// when the pipeline uses it (a Kafka-only pipeline starts no server).
func startAny(t *testing.T, yaml string) *harness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "pipeline.yaml")
	yaml = strings.ReplaceAll(yaml, "$BINS", bins)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := pipelines.LoadWith(path, nil, pipelines.Checker{CEL: router.CheckCEL, SubjectPattern: router.CheckSubjectPattern,
		Template: func(s string) error { _, err := router.ParseTemplate(s); return err }})
	if err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	h := &harness{t: t, done: make(chan error, 1), logs: &testbin.Buffer{}}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(h.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ready := make(chan string, 1)
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(context.Background())
	go func() {
		h.done <- runner.Run(ctx, runner.Options{
			Pipeline: p, DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0",
			Runtime: process.Runtime{}, Logger: log, Stdout: io.Discard,
			Ready:  func(url string) { ready <- url },
			Engine: func(e *engine.Engine) { h.eng = e },
		})
	}()
	select {
	case h.url = <-ready:
	case err := <-h.done:
		t.Fatalf("pipeline stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline not ready within 30s")
	}
	if h.url != "" {
		if h.nc, err = nats.Connect(h.url); err != nil {
			t.Fatal(err)
		}
		h.js, _ = jetstream.New(h.nc)
	}
	t.Cleanup(func() { h.stop() })
	return h
}

func brokersYAML(c *kafkatest.Cluster) string {
	return "[" + strings.Join(c.Brokers, ", ") + "]"
}

// TestKafkaKcat: Debian's kcat (librdkafka, an independent client)
// produces keyed JSON records with a header to a 3-partition topic of a
// 3-broker cluster; the pipeline enriches them with a framed function and
// writes them, value-encoded, to another topic; kcat reads them back. Every
// record must come out once, enriched, with its key and header, in per-key
// order.
func TestKafkaKcat(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat not installed (.ci/deps.d/20-kafka.sh installs it): %v", err)
	}
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	c.CreateTopic(t, "orders", 3)
	c.CreateTopic(t, "enriched", 3)
	const n = 300
	var in bytes.Buffer
	for i := range n {
		fmt.Fprintf(&in, "k%d:{\"seq\":%d,\"amount\":%d.25}\n", i%7, i, i)
	}
	cmd := exec.Command(kcat, "-P", "-b", strings.Join(c.Brokers, ","), "-t", "orders", "-K:", "-H", "origin=kcat", "-X", "acks=all")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce: %v\n%s", err, out)
	}

	h := startAny(t, `
version: 1
name: kcat
inputs:
  orders:
    kafka: { brokers: `+brokersYAML(c)+`, topics: [orders], session_timeout: 6s }
functions:
  enrich: { command: $BINS/enrich, instances: 2 }
routes:
  - name: main
    chain: [enrich]
    outputs: [enriched]
outputs:
  enriched: { kafka: { brokers: `+brokersYAML(c)+`, topic: enriched, encoding: value } }
`)
	h.settled(n, 60*time.Second)

	// Read back with kcat: key, value, headers, one record per line.
	out, err := exec.Command(kcat, "-C", "-b", strings.Join(c.Brokers, ","), "-t", "enriched", "-o", "beginning", "-e", "-q",
		"-f", "%k\t%s\t%h\n").CombinedOutput()
	if err != nil {
		t.Fatalf("kcat consume: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != n {
		t.Fatalf("kcat read %d records from enriched, want %d:\n%s", len(lines), n, out)
	}
	last := map[string]int{}
	seen := map[int]bool{}
	for _, line := range lines {
		parts := strings.SplitN(line, "\t", 3)
		if len(parts) != 3 {
			t.Fatalf("unexpected kcat line %q", line)
		}
		key, value, headers := parts[0], parts[1], parts[2]
		var v struct {
			Seq         int  `json:"seq"`
			Enriched    bool `json:"enriched"`
			AmountCents int  `json:"amount_cents"`
		}
		if err := json.Unmarshal([]byte(value), &v); err != nil {
			t.Fatalf("value %q: %v", value, err)
		}
		if !v.Enriched || v.AmountCents != v.Seq*100+25 {
			t.Errorf("record %d not enriched: %s", v.Seq, value)
		}
		if key != "k"+strconv.Itoa(v.Seq%7) {
			t.Errorf("record %d has key %q", v.Seq, key)
		}
		if !strings.Contains(headers, "origin=kcat") || !strings.Contains(headers, "Content-Type=application/json") {
			t.Errorf("record %d headers %q, want origin=kcat and Content-Type=application/json", v.Seq, headers)
		}
		if seen[v.Seq] {
			t.Errorf("record %d came out twice", v.Seq)
		}
		seen[v.Seq] = true
		if p, ok := last[key]; ok && v.Seq < p {
			t.Errorf("key %s: record %d after %d", key, v.Seq, p)
		}
		last[key] = v.Seq
	}
}

// TestKafkaToNATS is the mixed pipeline Kafka -> chain -> JetStream: keyed
// records from a 3-partition topic go through a framed function dispatched
// by partition and land in a stream, every one of them, in per-partition
// order, carrying their Kafka position.
func TestKafkaToNATS(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	c.CreateTopic(t, "events", 3)
	const n = 600
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "events", Key: []byte("user-" + strconv.Itoa(i%11)), Value: fmt.Appendf(nil, `{"seq":%d,"amount":1}`, i),
			Headers: []kgo.RecordHeader{{Key: "Content-Type", Value: []byte("application/json")}}}
	}
	c.Produce(t, recs)
	h := startAny(t, `
version: 1
name: k2n
inputs:
  events:
    kafka: { brokers: `+brokersYAML(c)+`, topics: [events], session_timeout: 6s }
functions:
  enrich: { command: $BINS/enrich, instances: 3, dispatch: partition }
routes:
  - name: main
    chain: [enrich]
    outputs: [out]
outputs:
  out: { jetstream: { subject: "enriched.{{ .Source.Subject }}", stream: ENRICHED, subjects: ["enriched.>"] } }
`)
	h.settled(n, 60*time.Second)
	got := h.collect("ENRICHED", "enriched.events", n, 30*time.Second)
	seen := map[int]bool{}
	lastPerKey := map[string]int{}
	for _, r := range got {
		var v struct {
			Seq      int  `json:"seq"`
			Enriched bool `json:"enriched"`
		}
		if err := json.Unmarshal(r.GetValue(), &v); err != nil || !v.Enriched {
			t.Fatalf("unexpected value %q (%v)", r.GetValue(), err)
		}
		if seen[v.Seq] {
			t.Errorf("record %d twice", v.Seq)
		}
		seen[v.Seq] = true
		k := string(r.GetKey())
		if p, ok := lastPerKey[k]; ok && v.Seq < p {
			t.Errorf("key %s: %d after %d", k, v.Seq, p)
		}
		lastPerKey[k] = v.Seq
	}
	if len(seen) != n {
		t.Errorf("%d distinct records, want %d", len(seen), n)
	}
	if s := h.eng.Stats(); s.Acked != n || s.Naked != 0 {
		t.Errorf("stats %+v, want %d acked and none naked", s, n)
	}
}

// TestKafkaBrokerRestart takes the whole 3-broker cluster away in the
// middle of a Kafka -> function -> Kafka run and brings it back on the same
// ports from its data directory: once stopped cleanly in-process, once as
// a separate broker process killed with SIGKILL (fsync on every write, as
// a durable broker). The pipeline must reconnect by itself, log the
// outage, and in the end every input must be in the output topic
// (duplicates allowed: at-least-once).
func TestKafkaBrokerRestart(t *testing.T) {
	tests := []struct {
		name  string
		start func(t *testing.T) (brokers func() []string, createTopics func(), restart func())
	}{
		{"in-process stop and restart", func(t *testing.T) (func() []string, func(), func()) {
			c := kafkatest.Start(t, kafkatest.Options{Brokers: 3, Persist: true})
			return func() []string { return c.Brokers },
				func() { c.CreateTopic(t, "in", 3); c.CreateTopic(t, "out", 3) },
				func() { c.Restart(t, 1500*time.Millisecond) }
		}},
		{"broker process SIGKILL and restart", func(t *testing.T) (func() []string, func(), func()) {
			p := kafkatest.StartProcess(t, kafkatest.ProcessOptions{Brokers: 3, Sync: true, Topics: map[string]int32{"in": 3, "out": 3}})
			return func() []string { return p.Brokers }, func() {},
				func() { p.Kill(t); time.Sleep(time.Second); p.Start(t) }
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			brokers, create, restart := tc.start(t)
			create()
			testBrokerRestart(t, brokers, restart)
		})
	}
}

func testBrokerRestart(t *testing.T, brokers func() []string, restart func()) {
	c := &kafkatest.Cluster{Brokers: brokers()}
	const first, second = 3000, 1000
	mk := func(from, n int) []*kgo.Record {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: "in", Key: []byte("k" + strconv.Itoa((from+i)%13)), Value: []byte("v" + strconv.Itoa(from+i))}
		}
		return recs
	}
	c.Produce(t, mk(0, first))
	h := startAny(t, `
version: 1
name: restart
inputs:
  in:
    kafka: { brokers: `+brokersYAML(c)+`, topics: [in], session_timeout: 6s, commit_interval: 200ms, max_in_flight: 256 }
functions:
  pass: { command: $BINS/passthrough, instances: 2, batch: { size: 50 } }
routes:
  - name: main
    chain: [pass]
    outputs: [out]
outputs:
  out: { kafka: { brokers: `+brokersYAML(c)+`, topic: out, encoding: value } }
`)
	// Let part of the run through, then take the cluster away.
	deadline := time.Now().Add(30 * time.Second)
	for h.eng.Stats().Acked < 300 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	before := h.eng.Stats()
	restart()
	t.Logf("cluster restarted after %d of %d records were acked", before.Acked, first)
	c.Produce(t, mk(first, second))

	want := first + second
	var got []*kgo.Record
	deadline = time.Now().Add(90 * time.Second)
	count := map[string]int{}
	for time.Now().Before(deadline) {
		got = c.Read(t, "out", 1<<30, 2*time.Second)
		clear(count)
		for _, r := range got {
			count[string(r.Value)]++
		}
		if len(count) == want {
			break
		}
	}
	missing := 0
	for i := range want {
		if count["v"+strconv.Itoa(i)] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d records lost across the broker restart (%d records in out); stats %+v", missing, want, len(got), h.eng.Stats())
	}
	t.Logf("all %d records out after the restart; %d duplicates (at-least-once); stats %+v", want, len(got)-want, h.eng.Stats())
	if !strings.Contains(h.logs.String(), "kafka broker unreachable") {
		t.Errorf("the outage was not logged as 'kafka broker unreachable'")
	}
}

// TestKafkaExactlyOnce runs Kafka -> function -> Kafka with the input in
// transactions (transactional_id) and the output joining them
// (transaction). The pipeline is stopped while a transaction is open, with
// part of its outputs already written, and started again. A read_committed
// reader must see every input's output exactly once; a read_uncommitted
// reader also sees the outputs of the aborted transaction.
func TestKafkaExactlyOnce(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	c.CreateTopic(t, "in", 3)
	c.CreateTopic(t, "out", 3)
	const n = 300
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "in", Key: []byte("k" + strconv.Itoa(i%7)), Value: []byte("v" + strconv.Itoa(i))}
	}
	c.Produce(t, recs)
	yaml := `
version: 1
name: eos
inputs:
  in:
    kafka: { brokers: ` + brokersYAML(c) + `, topics: [in], session_timeout: 6s, transactional_id: culvert-eos-test }
functions:
  slow:
    command: $BINS/testfn
    args: [sleep]
    env: { TESTFN_SLEEP: 40ms }
    batch: { size: 10, max_wait: 1ms }
routes:
  - name: main
    chain: [slow]
    outputs: [out]
outputs:
  out: { kafka: { brokers: ` + brokersYAML(c) + `, topic: out, encoding: value, transaction: in } }
delivery: { shutdown_grace: 3s }
`
	yaml = strings.ReplaceAll(yaml, "$BINS/testfn", testfn())
	h := startAny(t, yaml)
	// Stop in the middle of the first transaction: some outputs written,
	// not committed.
	deadline := time.Now().Add(30 * time.Second)
	for h.eng.Stats().Published < n/3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	h.stop()
	t.Logf("stopped with %d outputs written; %d of them committed", h.eng.Stats().Published,
		len(c.Read(t, "out", n, time.Second, kgo.FetchIsolationLevel(kgo.ReadCommitted()))))

	h2 := startAny(t, yaml)
	var committed []*kgo.Record
	count := map[string]int{}
	deadline = time.Now().Add(60 * time.Second)
	for len(count) < n && time.Now().Before(deadline) {
		committed = c.Read(t, "out", n+1, 2*time.Second, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
		clear(count)
		for _, r := range committed {
			count[string(r.Value)]++
		}
	}
	h2.stop()
	for i := range n {
		if k := count["v"+strconv.Itoa(i)]; k != 1 {
			t.Errorf("read_committed: v%d appears %d times, want exactly once", i, k)
		}
	}
	if len(committed) != n {
		t.Errorf("read_committed: %d outputs, want %d", len(committed), n)
	}
	all := c.Read(t, "out", 2*n, 3*time.Second, kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	if len(all) <= n {
		t.Errorf("read_uncommitted: %d outputs; the stop aborted nothing, so the test proved little", len(all))
	}
	t.Logf("read_committed: %d outputs, each once; read_uncommitted: %d (aborted outputs hidden: %d)", len(committed), len(all), len(all)-len(committed))
}
