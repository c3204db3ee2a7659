package engine

// Pool and delivery tests: instances that grow, idle out and come back, and
// retries that hold back their lane. They count real processes in /proc and
// wait for states (with a generous deadline) instead of asserting timings.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/file"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// live is an engine fed through a pipe, so that a test decides when
// records arrive.
type live struct {
	t      *testing.T
	e      *Engine
	in     *io.PipeWriter
	out    map[string]*testbin.Buffer
	logs   *testbin.Buffer
	cancel context.CancelFunc
	done   chan error
}

func startLive(t *testing.T, yaml string) *live {
	t.Helper()
	p := parse(t, yaml)
	logs := &testbin.Buffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	pr, pw := io.Pipe()
	src, err := file.NewSource(file.SourceConfig{Reader: pr, Format: file.FormatNDJSON}, log)
	if err != nil {
		t.Fatal(err)
	}
	l := &live{t: t, in: pw, out: map[string]*testbin.Buffer{}, logs: logs, done: make(chan error, 1)}
	sinks := map[string]connectors.Sink{}
	for name := range p.Outputs {
		l.out[name] = &testbin.Buffer{}
		sink, err := file.NewSink(file.SinkConfig{Writer: l.out[name], Format: file.FormatNDJSON}, log)
		if err != nil {
			t.Fatal(err)
		}
		sinks[name] = sink
	}
	sources := map[string]connectors.Source{}
	for name := range p.Inputs {
		sources[name] = src
	}
	l.e, err = New(Options{Pipeline: p, Sources: sources, Sinks: sinks, Runtime: process.Runtime{},
		Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	go func() { l.done <- l.e.Run(ctx) }()
	t.Cleanup(func() {
		pw.Close()
		cancel()
		select {
		case <-l.done:
		case <-time.After(30 * time.Second):
			t.Errorf("engine did not stop")
		}
		src.Close()
		for _, s := range sinks {
			s.Close()
		}
	})
	return l
}

func (l *live) send(recs ...*culvertv1.Record) {
	l.t.Helper()
	if _, err := io.WriteString(l.in, ndjson(l.t, recs)); err != nil {
		l.t.Fatal(err)
	}
}

// waitFor polls cond until it holds, failing after a deadline far above
// what the condition needs.
func (l *live) waitFor(what string, cond func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			l.t.Fatalf("timed out waiting until %s; stats %+v, pools %+v\n%s", what, l.e.Stats(), l.e.Pools(), l.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processes counts the running children of this test process that run
// exe: the real function processes, not the engine's idea of them.
func processes(t *testing.T, exe string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	me := strconv.Itoa(os.Getpid())
	n := 0
	for _, ent := range ents {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces.
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 || f[1] != me || f[0] == "Z" {
			continue
		}
		if path, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe")); err == nil && path == exe {
			n++
		}
	}
	return n
}

// keyed makes n records over keys k0..k(keys-1), values "k<key> <i>" with
// i counting per key.
func keyed(prefix string, n, keys int) []*culvertv1.Record {
	var recs []*culvertv1.Record
	for i := range n {
		k := i % keys
		recs = append(recs, &culvertv1.Record{Id: fmt.Sprintf("%s%d", prefix, i), Key: []byte(fmt.Sprint("k", k)),
			Value: fmt.Appendf(nil, "k%d %d", k, i/keys)})
	}
	return recs
}

// checkKeyOrder: for every key, the outputs' per-key counters increase.
func checkKeyOrder(t *testing.T, outs []*culvertv1.Record) {
	t.Helper()
	last := map[string]int{}
	for _, o := range outs {
		var k string
		var n int
		if _, err := fmt.Sscanf(string(o.Value), "%s %d", &k, &n); err != nil {
			t.Fatalf("output %q: %v", o.Value, err)
		}
		if prev, ok := last[k]; ok && n <= prev {
			t.Errorf("key %s: %d came after %d", k, n, prev)
		}
		last[k] = n
	}
}

// TestPoolScales: a pool starts at min, grows to max under a backlog, drops
// back to min (zero included) after the idle timeout, and starts again on
// the next record; per-key order holds throughout.
func TestPoolScales(t *testing.T) {
	for _, min := range []int{1, 0} {
		t.Run(fmt.Sprint("min ", min), func(t *testing.T) {
			l := startLive(t, fmt.Sprintf(`
version: 1
name: pool
inputs: { in: { stdin: {} } }
functions:
  slow:
    command: $TESTFN
    args: [sleep]
    env: { TESTFN_SLEEP: 20ms }
    batch: { size: 2, max_wait: 1ms }
    scale: { min: %d, max: 4, idle_timeout: 300ms }
routes:
  - { name: main, chain: [slow], outputs: [a] }
`+outputsYAML, min))
			exe := testfnPath()
			l.waitFor(fmt.Sprint(min, " warm processes"), func() bool { return l.e.Stats().InstancesStarted == int64(min) })
			if n := processes(t, exe); n != min {
				t.Fatalf("%d processes before any record, want min %d", n, min)
			}

			// A backlog over many keys: every slot gets work.
			l.send(keyed("a", 400, 40)...)
			most := 0
			l.waitFor("the backlog is done", func() bool {
				most = max(most, processes(t, exe))
				return l.e.Stats().Acked == 400
			})
			if most > 4 {
				t.Errorf("%d processes at once, more than max 4", most)
			}
			if s := l.e.Stats(); s.InstancesStarted != 4 {
				t.Errorf("%d instances started under the backlog, want max 4; stats %+v", s.InstancesStarted, s)
			}

			// Idle: back to min.
			l.waitFor("the pool is back to min", func() bool { return processes(t, exe) == min && l.e.Stats().InstancesLive == int64(min) })
			if s := l.e.Stats(); s.InstancesIdleStopped != int64(4-min) {
				t.Errorf("%d idle stops, want %d", s.InstancesIdleStopped, 4-min)
			}
			if !strings.Contains(l.logs.String(), "function instance stopped after idle timeout") {
				t.Errorf("no idle stop in the log")
			}

			// The next record starts a process again (when min is 0) and
			// is processed.
			l.send(&culvertv1.Record{Id: "late", Key: []byte("k1"), Value: []byte("k1 10")})
			l.waitFor("the late record is acked", func() bool { return l.e.Stats().Acked == 401 })
			if min == 0 {
				if s := l.e.Stats(); s.InstancesStarted != 5 {
					t.Errorf("%d instances started, want 5 (4, then one for the late record)", s.InstancesStarted)
				}
			}
			outs := parseNDJSON(t, l.out["a"].String())
			if len(outs) != 401 {
				t.Fatalf("%d outputs, want 401", len(outs))
			}
			checkKeyOrder(t, outs)
			l.waitFor("the pool is back to min again", func() bool { return processes(t, exe) == min })
		})
	}
}

// TestRetryHoldsLane: a record waiting for its retry holds back the later
// records of its key, and only those (by default), or of its whole
// instance (lanes: 1).
func TestRetryHoldsLane(t *testing.T) {
	tests := []struct {
		lanes      string
		bystanders string // where the other key's records land relative to the retried record
	}{
		{"", "before"},
		{"lanes: 1,", "after"},
	}
	for _, tc := range tests {
		t.Run("lanes "+tc.lanes, func(t *testing.T) {
			t.Parallel()
			input := []*culvertv1.Record{
				{Id: "a0", Key: []byte("a"), Value: []byte("a 0 flaky")},
				{Id: "a1", Key: []byte("a"), Value: []byte("a 1")},
				{Id: "a2", Key: []byte("a"), Value: []byte("a 2")},
			}
			for i := range 5 {
				input = append(input, &culvertv1.Record{Id: fmt.Sprint("b", i), Key: []byte("b"), Value: fmt.Appendf(nil, "b %d", i)})
			}
			input = append(input, &culvertv1.Record{Id: "a3", Key: []byte("a"), Value: []byte("a 3")})
			r := runEngine(t, setup{input: input, yaml: `
version: 1
name: lanes
inputs: { in: { stdin: {} } }
functions:
  flaky:
    command: $TESTFN
    args: [flaky]
    env: { TESTFN_OK_AT: "3" }
    batch: { size: 2, max_wait: 1ms }
    retry: { ` + tc.lanes + ` max_attempts: 5, backoff: 300ms, max_backoff: 400ms }
routes:
  - { name: main, chain: [flaky], outputs: [a], dead_letter: dlq }
` + outputsYAML})
			outs := r.outputs["a"]
			if len(outs) != len(input) || len(r.outputs["dlq"]) != 0 {
				t.Fatalf("%d outputs, %d dead letters; want %d, 0", len(outs), len(r.outputs["dlq"]), len(input))
			}
			checkKeyOrder(t, outs)
			var order []string
			for _, o := range outs {
				order = append(order, strings.Fields(string(o.Value))[0]+strings.Fields(string(o.Value))[1])
			}
			pos := func(v string) int { return slicesIndex(order, v) }
			switch tc.bystanders {
			case "before":
				if pos("b4") > pos("a0") {
					t.Errorf("key b waited for key a's retry: %v", order)
				}
			case "after":
				if pos("b0") < pos("a0") {
					t.Errorf("with one lane, key b overtook key a's retry: %v", order)
				}
			}
			if r.stats.Retried != 2 || r.stats.Failed != 2 {
				t.Errorf("stats %+v, want 2 retries of a0", r.stats)
			}
			checkSettled(t, r, input, false)
		})
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestBisect: a function that fails a whole batch when a poison record is
// in it. Bisecting isolates the poison record, which alone is
// dead-lettered; retrying each record of the failed batch with
// max_attempts 1 dead-letters the whole batch.
func TestBisect(t *testing.T) {
	tests := []struct {
		mode     string
		dlq      func(n int) bool
		bisected bool
	}{
		{"bisect", func(n int) bool { return n == 1 }, true},
		{"each", func(n int) bool { return n > 1 }, false},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			var input []*culvertv1.Record
			for i := range 32 {
				v := fmt.Sprintf("k%d %d", i%4, i/4)
				if i == 13 {
					v += " poison"
				}
				input = append(input, &culvertv1.Record{Id: fmt.Sprint("r", i), Key: []byte(fmt.Sprint("k", i%4)), Value: []byte(v)})
			}
			r := runEngine(t, setup{input: input, yaml: `
version: 1
name: bisect
inputs: { in: { stdin: {} } }
functions:
  poison:
    command: $TESTFN
    args: [poison]
    batch: { size: 8, max_wait: 500ms }
    retry: { max_attempts: 1, batch_failure: ` + tc.mode + ` }
routes:
  - { name: main, chain: [poison], outputs: [a], dead_letter: dlq }
` + outputsYAML})
			dlq := r.outputs["dlq"]
			if !tc.dlq(len(dlq)) {
				t.Errorf("%d dead letters: %v", len(dlq), values(dlq))
			}
			if len(dlq)+len(r.outputs["a"]) != len(input) {
				t.Errorf("%d outputs + %d dead letters, want %d", len(r.outputs["a"]), len(dlq), len(input))
			}
			found := false
			for _, d := range dlq {
				found = found || strings.Contains(string(d.Value), "poison")
				if header(d, "culvert-error-attempts") != "1" || header(d, "culvert-error-function") != "poison" {
					t.Errorf("dead letter headers %v", d.Headers)
				}
			}
			if !found {
				t.Errorf("the poison record was not dead-lettered")
			}
			if (r.stats.Bisected > 0) != tc.bisected {
				t.Errorf("stats %+v", r.stats)
			}
			checkKeyOrder(t, r.outputs["a"])
			checkSettled(t, r, input, false)
		})
	}
}

// TestMaxRecordAge: a record that keeps failing retryably is given up once
// it is older than max_record_age, long before max_attempts.
func TestMaxRecordAge(t *testing.T) {
	input := []*culvertv1.Record{rec("old", "flaky forever")}
	r := runEngine(t, setup{input: input, yaml: `
version: 1
name: age
inputs: { in: { stdin: {} } }
functions:
  flaky:
    command: $TESTFN
    args: [flaky]
    env: { TESTFN_OK_AT: "1000" }
    retry: { max_attempts: 1000, backoff: 20ms, max_backoff: 40ms, max_record_age: 300ms }
routes:
  - { name: main, chain: [flaky], outputs: [a], dead_letter: dlq }
` + outputsYAML})
	dlq := r.outputs["dlq"]
	if len(dlq) != 1 || !strings.Contains(header(dlq[0], "culvert-error-message"), "max_record_age") {
		t.Fatalf("dead letters %v", dlq)
	}
	if n, _ := strconv.Atoi(header(dlq[0], "culvert-error-attempts")); n < 2 || n >= 1000 {
		t.Errorf("attempts %d", n)
	}
	checkSettled(t, r, input, false)
}

// TestNackThreshold: after N permanent failures within the window the
// pipeline stops with an error, the later failures are given back rather
// than dead-lettered, and no record is lost.
func TestNackThreshold(t *testing.T) {
	var input []*culvertv1.Record
	for i := range 20 {
		input = append(input, rec(fmt.Sprint("n", i), "x"))
	}
	l := startLive(t, `
version: 1
name: nacks
inputs: { in: { stdin: {} } }
functions:
  fail: { command: $TESTFN, args: [fail], batch: { size: 1, max_wait: 1ms } }
routes:
  - { name: main, chain: [fail], outputs: [a], dead_letter: dlq }
delivery: { nack_threshold: { failures: 3, window: 1m } }
`+outputsYAML)
	l.send(input...)
	var err error
	select {
	case err = <-l.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the pipeline did not stop; stats %+v", l.e.Stats())
	}
	l.done <- err // for the cleanup
	if err == nil || !strings.Contains(err.Error(), "nack threshold: 3 records failed for good within 1m0s") {
		t.Fatalf("Run: %v", err)
	}
	s := l.e.Stats()
	if s.DeadLettered != 3 {
		t.Errorf("%d dead-lettered, want 3 (the threshold)", s.DeadLettered)
	}
	if s.Acked+s.Naked != s.In || s.Acked != 3 {
		t.Errorf("stats %+v: every record taken must be settled, 3 acked (dead-lettered)", s)
	}
}

// TestInFlightBytes: the byte bound holds while a slow function works
// through records that would fit the record bound many times over.
func TestInFlightBytes(t *testing.T) {
	l := startLive(t, `
version: 1
name: bytes
inputs: { in: { stdin: {} } }
functions:
  slow: { command: $TESTFN, args: [sleep], env: { TESTFN_SLEEP: 5ms }, batch: { size: 4, max_wait: 1ms } }
routes:
  - { name: main, chain: [slow], outputs: [a] }
delivery: { max_in_flight: 1000, max_in_flight_bytes: 2000 }
`+outputsYAML)
	var input []*culvertv1.Record
	for i := range 100 {
		input = append(input, &culvertv1.Record{Id: fmt.Sprint("b", i), Value: []byte(strings.Repeat("x", 100))})
	}
	go l.send(input...)
	most := int64(0)
	l.waitFor("all acked", func() bool {
		s := l.e.Stats()
		most = max(most, s.InFlightBytes)
		return s.Acked == 100
	})
	if most > 2000 || most == 0 {
		t.Errorf("at most %d bytes in flight seen, want 1..2000", most)
	}
}

// TestNakDelay: a record that failed for good on a route without a
// dead-letter output is given back with a backoff delay (at least half a
// second on its first delivery), not for immediate redelivery.
func TestNakDelay(t *testing.T) {
	input := []*culvertv1.Record{rec("1", "a"), rec("2", "b")}
	r := runEngine(t, setup{input: input, yaml: `
version: 1
name: nakdelay
inputs: { in: { stdin: {} } }
functions:
  fail: { command: $TESTFN, args: [fail] }
routes:
  - { name: main, chain: [fail], outputs: [a] }
` + outputsYAML})
	checkSettled(t, r, input, true)
	for _, in := range input {
		if d := r.settled.get(in.Id).delay; d < 500*time.Millisecond || d > 30*time.Second {
			t.Errorf("record %s naked with delay %s, want between 500ms and 30s", in.Id, d)
		}
	}
}

// TestPoolAnyGrowsOnBacklog: with dispatch any, a pool that may shrink
// fills its lowest slot first: records sent one at a time use one process,
// and only a backlog starts the others.
func TestPoolAnyGrowsOnBacklog(t *testing.T) {
	l := startLive(t, `
version: 1
name: any
inputs: { in: { stdin: {} } }
functions:
  slow:
    command: $TESTFN
    args: [sleep]
    env: { TESTFN_SLEEP: 30ms }
    dispatch: any
    batch: { size: 1, max_wait: 1ms }
    scale: { min: 1, max: 3, idle_timeout: 1m }
routes:
  - { name: main, chain: [slow], outputs: [a] }
`+outputsYAML)
	for i := range 5 {
		l.send(rec(fmt.Sprint("one", i), "x"))
		l.waitFor("the record is acked", func() bool { return l.e.Stats().Acked == int64(i+1) })
	}
	if s := l.e.Stats(); s.InstancesStarted != 1 {
		t.Errorf("%d processes started for records sent one at a time, want 1", s.InstancesStarted)
	}
	var backlog []*culvertv1.Record
	for i := range 40 {
		backlog = append(backlog, rec(fmt.Sprint("many", i), "x"))
	}
	l.send(backlog...)
	l.waitFor("the backlog is acked", func() bool { return l.e.Stats().Acked == 45 })
	if s := l.e.Stats(); s.InstancesStarted != 3 {
		t.Errorf("%d processes started under a backlog, want max 3", s.InstancesStarted)
	}
}

// TestInstanceDeathKeepsKeyOrder: a function instance dies (it exits, or
// hangs until its batch timeout kills it) on a chosen record while the
// next batch is pipelined behind that record's batch and the slot has
// gathered a third one. The dead batch's records are retried, the batch
// queued behind it (never processed) is sent again, and every key's records
// still come out in their input order, through one or two functions with
// two instances each.
//
// Each slot of the failing function gets two keys, x and y (chosen with the
// stage's own dispatch, so that they share their slot in every function of
// the chain): x0 (which kills the instance on its first attempt, after a
// pause in which the host fills the pipeline), x1..x3, then y0..y11, in
// batches of 4. The dead batch holds x records only; the batch behind it
// and the one gathered meanwhile both hold y records. Before the fix the
// gathered batch went to the next instance ahead of the one sent back, and
// y4 came out before y0.
func TestInstanceDeathKeepsKeyOrder(t *testing.T) {
	const crashy = `
  crashy:
    command: $TESTFN
    args: [crash]
    env: { TESTFN_SLEEP: 300ms, TESTFN_HANG: "%s" }
    instances: 2
    timeout: 500ms
    batch: { size: 4, max_wait: 20ms }
    retry: { max_attempts: 5, backoff: 10ms, max_backoff: 20ms }
    restart: { backoff: 10ms, max_backoff: 20ms }`
	const pass = `
  pass: { command: $TESTFN, args: [to], instances: 2, batch: { size: 4, max_wait: 1ms } }`
	tests := []struct {
		name  string
		hang  string
		chain string
		class string // of the instance failure, in the log
	}{
		{"exit", "", "[crashy]", "class=crash"},
		{"batch timeout", "1", "[crashy]", "class=timeout"},
		{"exit, second of two", "", "[pass, crashy]", "class=crash"},
		{"exit, first of two", "", "[crashy, pass]", "class=crash"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := startLive(t, `
version: 1
name: death
inputs: { in: { stdin: {} } }
functions:`+fmt.Sprintf(crashy, tc.hang)+pass+`
routes:
  - { name: main, chain: `+tc.chain+`, outputs: [a], dead_letter: dlq }
`+outputsYAML)
			var input []*culvertv1.Record
			for _, pair := range keysPerSlot(t, l.e.routes[0].stages, "crashy") {
				for i := range 16 {
					k, n := pair[0], i
					if i >= 4 {
						k, n = pair[1], i-4
					}
					v := fmt.Sprintf("%s %d", k, n)
					if k == pair[0] && n == 0 {
						v += " crash"
					}
					input = append(input, &culvertv1.Record{Id: fmt.Sprintf("%s-%d", k, n), Key: []byte(k), Value: []byte(v)})
				}
			}
			l.send(input...)
			l.waitFor("every record is settled", func() bool { return l.e.Stats().Acked == int64(len(input)) })
			logs := l.logs.String()
			if n := strings.Count(logs, "function instance failed"); n < 2 || !strings.Contains(logs, tc.class) {
				t.Fatalf("%d instance failures, want one per slot, of %s: the test did not test anything", n, tc.class)
			}
			outs := parseNDJSON(t, l.out["a"].String())
			if len(outs) != len(input) || l.out["dlq"].String() != "" {
				t.Fatalf("%d outputs, want %d; dead letters %q", len(outs), len(input), l.out["dlq"].String())
			}
			checkKeyOrder(t, outs)
			if s := l.e.Stats(); s.Retried == 0 {
				t.Errorf("stats %+v: the dead batch was not retried", s)
			}
		})
	}
}

// keysPerSlot picks, for each slot of the function named fn, two keys
// that go to that slot and share their slot in every other function of
// stages too.
func keysPerSlot(t *testing.T, stages []*stage, fn string) [][2]string {
	t.Helper()
	var target *stage
	for _, st := range stages {
		if st.fn.Name == fn {
			target = st
		}
	}
	if target == nil {
		t.Fatalf("no function %s in the chain", fn)
	}
	slotOf := func(st *stage, key string) int {
		return slicesIndexWorker(st.workers, st.pick(&culvertv1.Record{Key: []byte(key)}))
	}
	first := map[string]string{} // slots in every stage -> the first key seen there
	pairs := make([][2]string, len(target.workers))
	found := 0
	for i := 0; found < len(pairs) && i < 10000; i++ {
		key := fmt.Sprint("k", i)
		sig := ""
		for _, st := range stages {
			sig += fmt.Sprint(slotOf(st, key), ",")
		}
		s := slotOf(target, key)
		if pairs[s][1] != "" {
			continue
		}
		x, ok := first[sig]
		if !ok {
			first[sig] = key
			continue
		}
		pairs[s] = [2]string{x, key}
		found++
	}
	if found < len(pairs) {
		t.Fatalf("found keys for %d of %d slots", found, len(pairs))
	}
	return pairs
}

func slicesIndexWorker(ws []*worker, w *worker) int {
	for i, x := range ws {
		if x == w {
			return i
		}
	}
	return -1
}
