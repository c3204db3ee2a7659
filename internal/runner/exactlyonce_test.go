package runner_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/internal/testbin"
)

// TestRouteExactlyOnce runs Kafka -> function -> Kafka with nothing but
// `delivery: exactly-once` on the routes: no transactional_id on the input,
// no transaction on the outputs. One route sends every record through a
// slow function to "out"; the other fails every record for good, so that
// each record is also dead-lettered to "dead". The pipeline is stopped in
// the middle of a transaction (outputs written, not committed) and started
// again: a read_committed reader must see each input's output and its dead
// letter exactly once, and a read_uncommitted reader must see more (the
// aborted outputs), which shows that the outputs really were transactional.
func TestRouteExactlyOnce(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	for _, topic := range []string{"in", "out", "dead"} {
		c.CreateTopic(t, topic, 3)
	}
	const n = 300
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "in", Key: []byte("k" + strconv.Itoa(i%7)), Value: []byte("v" + strconv.Itoa(i))}
	}
	c.Produce(t, recs)
	yaml := `
version: 1
name: eos-route
inputs:
  in:
    kafka: { brokers: ` + brokersYAML(c) + `, topics: [in], session_timeout: 6s }
functions:
  slow:
    command: $BINS/testfn
    args: [sleep]
    env: { TESTFN_SLEEP: 100ms }
    batch: { size: 10, max_wait: 1ms }
  refuse:
    command: $BINS/testfn
    args: [fail]
routes:
  - name: main
    delivery: exactly-once
    chain: [slow]
    outputs: [out]
  - name: refused
    delivery: exactly-once
    chain: [refuse]
    outputs: [out]
    dead_letter: dead
outputs:
  out: { kafka: { brokers: ` + brokersYAML(c) + `, topic: out, encoding: value } }
  dead: { kafka: { brokers: ` + brokersYAML(c) + `, topic: dead, encoding: value } }
delivery: { shutdown_grace: 200ms }
`
	yaml = strings.ReplaceAll(yaml, "$BINS/testfn", testfn())
	committed := kgo.FetchIsolationLevel(kgo.ReadCommitted())

	h := startAny(t, yaml)
	// Stop in the middle of a transaction (one polled batch, up to 1000
	// records): some of its outputs written, none of them committed. The
	// function takes 100ms per 10 records and the grace is 200ms, so the
	// drain cannot finish the batch and its transaction is aborted.
	uncommitted := kgo.FetchIsolationLevel(kgo.ReadUncommitted())
	deadline := time.Now().Add(30 * time.Second)
	for len(c.Read(t, "out", n/3, 200*time.Millisecond, uncommitted)) < n/3 && time.Now().Before(deadline) {
	}
	h.stop()
	t.Logf("stopped with %d outputs and dead letters written; %d outputs committed", h.eng.Stats().Published,
		len(c.Read(t, "out", n, time.Second, committed)))

	h2 := startAny(t, yaml)
	want := func(topic string) []*kgo.Record {
		var got []*kgo.Record
		count := map[string]int{}
		deadline := time.Now().Add(60 * time.Second)
		for len(count) < n && time.Now().Before(deadline) {
			got = c.Read(t, topic, n+1, 2*time.Second, committed)
			clear(count)
			for _, r := range got {
				count[string(r.Value)]++
			}
		}
		for i := range n {
			if k := count["v"+strconv.Itoa(i)]; k != 1 {
				t.Errorf("%s, read_committed: v%d appears %d times, want exactly once", topic, i, k)
			}
		}
		if len(got) != n {
			t.Errorf("%s, read_committed: %d records, want %d", topic, len(got), n)
		}
		return got
	}
	out, dead := want("out"), want("dead")
	h2.stop()
	for _, r := range dead {
		if !hasHeader(r, "culvert-error-function", "refuse") {
			t.Errorf("dead letter %s lacks culvert-error-function: refuse (headers %v)", r.Value, r.Headers)
			break
		}
	}
	all := c.Read(t, "out", 2*n, 3*time.Second, uncommitted)
	if len(all) <= n {
		t.Errorf("out, read_uncommitted: %d records; the stop aborted nothing, so the test proved little", len(all))
	}
	t.Logf("read_committed: %d outputs and %d dead letters; read_uncommitted outputs: %d (aborted, hidden: %d)",
		len(out), len(dead), len(all), len(all)-len(out))
}

func hasHeader(r *kgo.Record, key, value string) bool {
	for _, h := range r.Headers {
		if h.Key == key && string(h.Value) == value {
			return true
		}
	}
	return false
}

// TestRouteExactlyOnceKill9 is the crash variant: the culvert command runs
// a route with delivery: exactly-once (and nothing else that asks for
// transactions) and is killed with SIGKILL while a transaction has outputs
// written and not committed, then started again. Without transactions the
// outputs written before the kill would be produced again after the
// restart (their offsets were never committed); with them, the killed
// process's transaction is aborted when the new process with the same
// transactional id starts, and a read_committed reader sees each output
// exactly once.
func TestRouteExactlyOnceKill9(t *testing.T) {
	dir := t.TempDir()
	culvert := filepath.Join(dir, "culvert")
	build := exec.Command("go", "build", "-o", culvert, "github.com/culvert-dev/culvert/cmd/culvert")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build culvert: %v\n%s", err, out)
	}
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	for _, topic := range []string{"in", "out"} {
		c.CreateTopic(t, topic, 3)
	}
	const n = 300
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "in", Key: []byte("k" + strconv.Itoa(i%7)), Value: []byte("v" + strconv.Itoa(i))}
	}
	c.Produce(t, recs)
	pipeline := filepath.Join(dir, "pipeline.yaml")
	yaml := `
version: 1
name: eos-kill
sandbox: none
inputs:
  in:
    kafka: { brokers: ` + brokersYAML(c) + `, topics: [in], session_timeout: 6s }
functions:
  slow:
    command: ` + testfn() + `
    args: [sleep]
    env: { TESTFN_SLEEP: 100ms }
    batch: { size: 10, max_wait: 1ms }
routes:
  - name: main
    delivery: exactly-once
    chain: [slow]
    outputs: [out]
outputs:
  out: { kafka: { brokers: ` + brokersYAML(c) + `, topic: out, encoding: value } }
`
	if err := os.WriteFile(pipeline, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &testbin.Buffer{}
	run := func() (*exec.Cmd, chan error) {
		cmd := exec.Command(culvert, "run", pipeline)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatalf("start culvert: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); <-done; done <- nil })
		return cmd, done
	}
	defer func() {
		if t.Failed() {
			t.Logf("culvert logs:\n%s", logs.String())
		}
	}()

	uncommitted := kgo.FetchIsolationLevel(kgo.ReadUncommitted())
	committed := kgo.FetchIsolationLevel(kgo.ReadCommitted())
	cmd, done := run()
	// Kill once outputs are written: read_uncommitted sees them before
	// their transaction commits.
	deadline := time.Now().Add(60 * time.Second)
	for len(c.Read(t, "out", n/4, 200*time.Millisecond, uncommitted)) < n/4 && time.Now().Before(deadline) {
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	done <- nil
	before := len(c.Read(t, "out", 2*n, time.Second, uncommitted))
	t.Logf("killed with %d outputs written, %d of them committed", before, len(c.Read(t, "out", 2*n, time.Second, committed)))

	cmd, done = run()
	var got []*kgo.Record
	count := map[string]int{}
	deadline = time.Now().Add(90 * time.Second)
	for len(count) < n && time.Now().Before(deadline) {
		got = c.Read(t, "out", n+1, 2*time.Second, committed)
		clear(count)
		for _, r := range got {
			count[string(r.Value)]++
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-done
	done <- nil
	for i := range n {
		if k := count["v"+strconv.Itoa(i)]; k != 1 {
			t.Errorf("read_committed: v%d appears %d times, want exactly once", i, k)
		}
	}
	if len(got) != n {
		t.Errorf("read_committed: %d outputs, want %d", len(got), n)
	}
	all := c.Read(t, "out", 2*n, 3*time.Second, uncommitted)
	if len(all) <= n {
		t.Errorf("read_uncommitted: %d outputs; the kill aborted nothing, so the test proved little", len(all))
	}
	t.Logf("read_committed: %d outputs; read_uncommitted: %d (aborted by the kill, hidden: %d)", len(got), len(all), len(all)-len(got))
}
