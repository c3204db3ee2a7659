package crashtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const faultsPipeline = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    kafka: { brokers: [%s], topics: [in], group: crash, commit_interval: 100ms, max_in_flight: 512 }
functions:
  pass: { command: %s, instances: 2, batch: { size: 100, max_wait: 2ms } }
  fault:
    command: %s
    args: %s
    env: { CULVERT_FAULT_EVERY: "1000" }
    instances: 2
    timeout: %s
    batch: { size: 50, max_wait: 2ms }
    retry: { max_attempts: 3, backoff: 50ms, max_backoff: 200ms }
    restart: { backoff: 10ms, max_backoff: 100ms }
routes:
  - { name: main, chain: pass | fault, outputs: [out], dead_letter: dlq }
outputs:
  out: { jetstream: { subject: out.x, stream: OUT, subjects: ["out.>"] } }
  dlq: { jetstream: { subject: dlq.x, stream: DLQ, subjects: ["dlq.>"] } }
delivery: { max_in_flight: 512, shutdown_grace: 10s }
`

// TestFunctionFaultsKafka runs a Kafka pipeline whose second function
// misbehaves under load (examples/functions/faulty), one fault per case:
//
//   - crash-every: the process exits at its 1000th record; the records of
//     the batch it dies in are retried on a new process and succeed:
//     nothing is dead-lettered;
//   - hang: one record (marked "hang") never returns; the 2s batch timeout
//     kills the instance; that record is dead-lettered after its attempts,
//     its batch-mates are retried and flow;
//   - fail-one: one record (marked "bad") fails permanently; it alone is
//     dead-lettered, at its first attempt;
//   - oom: one record (marked "oom") makes the process allocate until it
//     dies; the function runs with sandbox: none under "ulimit -v" (1 GiB of
//     address space), not in a memory cgroup. The Go runtime aborts ("out
//     of memory"), the host sees a crash (its batch timeout is 30s here, so
//     the crash comes first); that record is dead-lettered after its
//     attempts, everything else flows.
//
// The group keeps kafka's default session timeout (45s): with 3s, the
// kafka source lost its group session while the hanging (or OOM-killed)
// record's retries held the in-flight bound, and the redeliveries that
// followed dead-lettered the record several times (docs/delivery.md).
//
// Every other record must come out exactly once and in per-key order, and
// the dead-letter stream must hold exactly the marked record, unchanged,
// with the error headers.
func TestFunctionFaultsKafka(t *testing.T) {
	faulty := filepath.Join(bins, "faulty")
	cases := []struct {
		name      string
		command   string
		args      string
		markAt    int // record index to mark; -1: none
		mark      string
		wantLog   string // a line the fault writes to the log
		timeout   string // the function's batch timeout
		wantClass string // the dead letter's culvert-error-class
	}{
		{"crash-every", faulty, `["crash-every"]`, -1, "", "faulty: crashing on record 1000", "2s", ""},
		{"hang", faulty, `["hang"]`, 1234, "hang", "faulty: hanging on record", "2s", "timeout"},
		{"fail-one", faulty, `["fail-one"]`, 777, "bad", "", "2s", "function_error"},
		{"oom", "sh", fmt.Sprintf(`["-c", "ulimit -v 1048576; exec \"$0\" oom", %q]`, faulty), 1500, "oom", "allocating without bound", "30s", "crash"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := records()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			r := newRun(t)
			kf := StartKfake(t, filepath.Join(bins, "kfake"), r.dir, r.log, 4, "in")
			url := NATS(t, r.dir)
			out := NewOutStream(ctx, t, url, "OUT", "out.>")
			dlq := NewOutStream(ctx, t, url, "DLQ", "dlq.>")
			ins := produceMarked(ctx, t, kf.Brokers, n, func(i int) string {
				if i == tc.markAt {
					return tc.mark
				}
				return ""
			})
			// The marked record goes to the dead letters, not the outputs.
			var wantDead []string
			flowing := map[string]Input{}
			for id, in := range ins {
				if tc.markAt >= 0 && in.Key == fmt.Sprint("k", tc.markAt%keys) && in.N == tc.markAt/keys {
					wantDead = append(wantDead, id)
					continue
				}
				flowing[id] = in
			}
			pipeline := filepath.Join(r.dir, "pipeline.yaml")
			yaml := fmt.Sprintf(faultsPipeline, url, `"`+strings.Join(kf.Brokers, `", "`)+`"`, filepath.Join(bins, "passthrough"), tc.command, tc.args, tc.timeout)
			if err := os.WriteFile(pipeline, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			ends := partitionEnds(ins)
			c := r.culvert(t, pipeline)
			progress := func() int { return out.Stored(ctx) + dlq.Stored(ctx) }
			WaitFor(ctx, t, 60*time.Second, r.log.Name(), progress, func() bool {
				return out.Stored(ctx) >= len(flowing) && dlq.Stored(ctx) >= len(wantDead) && kafkaDone(ctx, kf.Brokers, ends)
			})
			if err := c.Stop(30 * time.Second); err != nil {
				t.Errorf("culvert after SIGTERM: %v", err)
			}
			rep := Audit(flowing, out.Read(ctx, t), nil)
			t.Logf("%s: %s", tc.name, rep)
			rep.Check(t)
			if rep.Duplicates != 0 {
				t.Errorf("%d duplicates without a kill", rep.Duplicates)
			}
			var gotDead []string
			for _, d := range dlq.Records(ctx, t) {
				hdr := map[string]string{}
				for _, h := range d.Headers {
					hdr[h.Name] = string(h.Value)
				}
				src := hdr["culvert-error-source-record"]
				gotDead = append(gotDead, src)
				t.Logf("dead letter %s %q: class %s, attempts %s, message %q", d.Id, d.Value, hdr["culvert-error-class"], hdr["culvert-error-attempts"], hdr["culvert-error-message"])
				if hdr["culvert-error-function"] != "fault" || hdr["culvert-error-class"] != tc.wantClass {
					t.Errorf("dead letter %s: headers %v, want culvert-error-function fault and class %s", d.Id, hdr, tc.wantClass)
				}
				if in, ok := ins[src]; !ok || string(d.Value) != fmt.Sprintf("%s %d %s", in.Key, in.N, tc.mark) {
					t.Errorf("dead letter %s (source %s): value %q is not the original record", d.Id, src, d.Value)
				}
				if tc.name == "fail-one" && (hdr["culvert-error-attempts"] != "1" || hdr["culvert-error-message"] != "bad record") {
					t.Errorf("dead letter of a permanent error: attempts %q, message %q; want 1 and \"bad record\"", hdr["culvert-error-attempts"], hdr["culvert-error-message"])
				}
			}
			slices.Sort(gotDead)
			slices.Sort(wantDead)
			if !slices.Equal(gotDead, wantDead) {
				t.Errorf("dead letters %v, want %v", gotDead, wantDead)
			}
			if tc.wantLog != "" && !strings.Contains(Tail(r.log.Name(), 1<<30), tc.wantLog) {
				t.Errorf("the fault did not happen: no %q in the log", tc.wantLog)
			}
			if t.Failed() {
				t.Log(r.tail())
			}
		})
	}
}
