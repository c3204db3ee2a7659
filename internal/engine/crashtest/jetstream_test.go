package crashtest

// TestKill9JetStream puts keyed records on a JetStream stream served by a
// NATS server that outlives culvert (in the test process), runs the culvert binary with a two-function
// chain (a framed Go function, then sed in lines mode), kills it with
// SIGKILL at random moments, restarts it each time, and checks at the end:
//
//   - lost: inputs without an output; must be 0;
//   - duplicates: outputs beyond the first for an input; counted, and at
//     most kills × the consumer's max_in_flight (the records that can be
//     un-acked when the process dies);
//   - order: for every key, the outputs with each input's repeats removed
//     (keeping its first output) follow the input order, except for a
//     record of a crash's re-processed window: one the broker had delivered
//     and not seen acked when culvert died (stream sequences from the
//     consumer's ack floor to its last delivered, read from the broker after
//     each kill). Such a record may first come out after later records of
//     its key; it is counted as "late within a crash window". Any other
//     violation fails the test. Culvert restarts after the consumer's
//     ack_wait, so that the broker redelivers the window ahead of newer
//     records, which keeps late records rare.
//
// The record count is $CULVERT_CRASH_RECORDS: 100000 is the full run
// (docs/delivery.md has its table); the default, 3000, keeps the test well
// under a minute on two cores. $CULVERT_CRASH_KILLS sets the kills (default
// 3).

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, "github.com/culvert-dev/culvert/cmd/culvert", "github.com/culvert-dev/culvert/examples/functions/passthrough")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// natsServer starts a NATS server with JetStream on a free loopback port,
// with its store in dir, and returns its URL. It runs in the test process,
// so it outlives every culvert process the test kills. (Debian's
// nats-server 2.9 does not sort the records it redelivers after an ack
// timeout; nats-server 2.15, the module Culvert embeds, does.)
func natsServer(t *testing.T, dir string) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "store"), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

const pipelineYAML = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    jetstream: { stream: IN, subjects: ["in.>"], ack_wait: %s, max_in_flight: %d, fetch_batch: 256 }
functions:
  pass: { command: %s, instances: 2, batch: { size: 100, max_wait: 2ms } }
  mark: { command: sed, args: ["-u", "s/$/ ok/"], mode: lines }
routes:
  - { name: main, chain: pass | mark, outputs: [out] }
outputs:
  out: { jetstream: { subject: out.x, stream: OUT, subjects: ["out.>"] } }
delivery: { max_in_flight: %d, shutdown_grace: 10s }
`

// culvert is one run of the binary.
type culvert struct {
	cmd  *exec.Cmd
	done chan error
}

func startCulvert(t *testing.T, pipeline string, logs *os.File) *culvert {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins, "culvert"), "run", pipeline)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.Env = append(os.Environ(), "NATS_URL=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &culvert{cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	return c
}

func TestKill9JetStream(t *testing.T) {
	n := envInt("CULVERT_CRASH_RECORDS", 3000)
	kills := envInt("CULVERT_CRASH_KILLS", 3)
	const keys = 100
	const ackWait = 2 * time.Second
	const window = 512 // the consumer's max_in_flight: un-acked at most
	dir := t.TempDir()
	url := natsServer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(16384))
	if err != nil {
		t.Fatal(err)
	}
	// The output stream keeps repeats (a duplicate window of 100ms instead
	// of Culvert's 2 minutes), so that re-processing is seen and counted.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}, Duplicates: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.>"}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, 4096)
	for i := range n {
		k := i % keys
		m := nats.NewMsg("in.x")
		m.Header.Set(natsmsg.HeaderKey, fmt.Sprint("k", k))
		m.Data = fmt.Appendf(nil, "k%d %d", k, i/keys)
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == cap(futures) {
			waitAcks(t, futures)
			futures = futures[:0]
		}
	}
	waitAcks(t, futures)
	t.Logf("%d records on IN in %s", n, time.Since(start))

	pipeline := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(pipeline, fmt.Appendf(nil, pipelineYAML, url, ackWait, window, filepath.Join(bins, "passthrough"), window), 0o644); err != nil {
		t.Fatal(err)
	}
	logs, err := os.Create(filepath.Join(dir, "culvert.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	out, err := js.Stream(ctx, "OUT")
	if err != nil {
		t.Fatal(err)
	}
	stored := func() int {
		info, err := out.Info(ctx)
		if err != nil {
			return 0
		}
		return int(info.State.Msgs)
	}

	// Kill at random moments: each after a random share of what is left.
	var windows [][2]uint64 // (ack floor, last delivered] at each kill
	c := startCulvert(t, pipeline, logs)
	for k := range kills {
		left := n - stored()
		target := stored() + left/(kills-k+1)/2 + rand.IntN(max(left/(kills-k+1), 1))
		progress, lastCount := time.Now(), stored()
		for stored() < target {
			if s := stored(); s != lastCount {
				progress, lastCount = time.Now(), s
			}
			if time.Since(progress) > 30*time.Second {
				b, _ := os.ReadFile(logs.Name())
				t.Fatalf("no output for 30s (%d stored)\n%s", lastCount, tail(b, 4000))
			}
			time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
		}
		at := stored()
		c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		// The re-processed window of this crash: delivered to culvert, not
		// acked. The server's view survives the kill.
		if cons, err := js.Consumer(ctx, "IN", "culvert-crash-in"); err == nil {
			if info, err := cons.Info(ctx); err == nil {
				windows = append(windows, [2]uint64{info.AckFloor.Stream, info.Delivered.Stream})
			}
		}
		t.Logf("kill %d: SIGKILL with %d outputs stored; un-acked window: stream sequences %v", k+1, at, windows[len(windows)-1])
		// Restart once the broker has given the un-acked records back, so
		// that they come ahead of newer ones.
		time.Sleep(ackWait + 500*time.Millisecond)
		c = startCulvert(t, pipeline, logs)
	}

	// Wait until every input has an output, and the consumer has nothing
	// pending, then stop cleanly.
	cons, err := js.Consumer(ctx, "IN", "culvert-crash-in")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := cons.Info(ctx)
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && stored() >= n {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logs.Name())
			t.Fatalf("not done after 5 minutes: %d outputs, consumer %+v\n%s", stored(), info, tail(b, 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("culvert exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		t.Errorf("culvert did not stop within 30s of SIGTERM")
	}

	// Read every output back and account for every input.
	total := stored()
	seen := map[string]int{} // input id -> outputs
	last := map[string]int{} // key -> last counter seen (first outputs only)
	violations, excused, duplicates := 0, 0, 0
	inWindow := func(id string) bool {
		seq, err := strconv.ParseUint(strings.TrimPrefix(id, "js:IN:"), 10, 64)
		if err != nil {
			return false
		}
		for _, w := range windows {
			if seq > w[0] && seq <= w[1] {
				return true
			}
		}
		return false
	}
	cc, err := out.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range total {
		m, err := cc.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("reading OUT: %v", err)
		}
		rec := new(culvertv1.Record)
		if err := proto.Unmarshal(m.Data(), rec); err != nil {
			t.Fatalf("output: %v", err)
		}
		src, _, _ := strings.Cut(rec.Id, "/")
		seen[src]++
		if seen[src] > 1 {
			duplicates++
			continue
		}
		var key string
		var i int
		if _, err := fmt.Sscanf(string(rec.Value), "%s %d ok", &key, &i); err != nil {
			t.Fatalf("output %q: %v", rec.Value, err)
		}
		if p, ok := last[key]; ok && i <= p {
			if inWindow(src) {
				// Un-acked at a crash: the broker may redeliver it after
				// later records of its key.
				excused++
				continue
			}
			violations++
			if violations <= 10 {
				t.Errorf("key %s: record %d (%s) came after %d", key, i, src, p)
			}
		}
		last[key] = i
	}
	lost := 0
	for seq := 1; seq <= n; seq++ {
		if seen["js:IN:"+strconv.Itoa(seq)] == 0 {
			lost++
		}
	}
	t.Logf("records %d, kills %d, lost %d, duplicates %d (bound %d), order violations %d, late within a crash window %d, outputs %d, took %s",
		n, kills, lost, duplicates, kills*window, violations, excused, total, time.Since(start).Round(time.Second))
	if lost != 0 {
		t.Errorf("%d records lost", lost)
	}
	if duplicates > kills*window {
		t.Errorf("%d duplicates, more than %d kills × %d in flight", duplicates, kills, window)
	}
	if len(seen) != n {
		t.Errorf("outputs name %d inputs, want %d", len(seen), n)
	}
}

func waitAcks(t *testing.T, fs []jetstream.PubAckFuture) {
	t.Helper()
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("publish ack timed out")
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines, "\n")
}
