package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// bins holds the example functions, built once.
var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, testbin.Examples, "github.com/culvert-dev/culvert/internal/engine/testdata/testfn")
}

// harness runs a pipeline on an embedded server for one test.
type harness struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	url    string
	eng    *engine.Engine
	logs   *testbin.Buffer
	nc     *nats.Conn
	js     jetstream.JetStream
}

func startPipeline(t *testing.T, yaml string) *harness {
	t.Helper()
	h := startAny(t, yaml)
	if h.nc == nil {
		t.Fatal("the pipeline uses no NATS, so there is no server to talk to")
	}
	return h
}

// stop sends the equivalent of SIGTERM and waits for a clean exit.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	if h.nc != nil {
		h.nc.Close()
	}
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("pipeline run: %v", err)
		}
	case <-time.After(60 * time.Second):
		h.t.Error("pipeline did not stop within 60s of cancellation")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// publish stores msgs in JetStream and waits for every ack, at most 1000
// outstanding at a time.
func (h *harness) publish(msgs []*nats.Msg) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), 1000)]
		msgs = msgs[len(chunk):]
		futures := make([]jetstream.PubAckFuture, 0, len(chunk))
		for _, m := range chunk {
			f, err := h.js.PublishMsgAsync(m)
			if err != nil {
				h.t.Fatal(err)
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				h.t.Fatal(err)
			case <-ctx.Done():
				h.t.Fatal("publish acks not received")
			}
		}
	}
}

// collect reads n records stored on subjects matching filter, in stream
// order, decoding each as a Record.
func (h *harness) collect(stream, filter string, n int, timeout time.Duration) []*culvertv1.Record {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*culvertv1.Record
	for ctx.Err() == nil {
		s, err := h.js.Stream(ctx, stream)
		if err == nil {
			if info, err := s.Info(ctx); err == nil {
				if _, err := s.Info(ctx, jetstream.WithSubjectFilter(filter)); err == nil && info.State.Msgs > 0 {
					break
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	cons, err := h.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		h.t.Fatalf("reading %s: %v", stream, err)
	}
	for len(out) < n {
		batch, err := cons.Fetch(min(n-len(out), 500), jetstream.FetchMaxWait(time.Second))
		if err != nil && ctx.Err() != nil {
			break
		}
		for m := range batch.Messages() {
			if m.Headers().Get(natsmsg.HeaderContentType) != connectors.RecordContentType {
				h.t.Fatalf("message on %s has content type %q, want a Culvert Record", m.Subject(), m.Headers().Get(natsmsg.HeaderContentType))
			}
			rec, err := natsmsg.Decode(m.Headers(), m.Data())
			if err != nil {
				h.t.Fatalf("undecodable record on %s: %v", m.Subject(), err)
			}
			rec.Source = &culvertv1.Position{Subject: m.Subject(), Offset: rec.GetSource().GetOffset(), Stream: rec.GetSource().GetStream()}
			out = append(out, rec)
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(out) < n {
		h.t.Fatalf("got %d of %d records from %s (%s) within %s; stats %+v", len(out), n, stream, filter, timeout, h.eng.Stats())
	}
	return out
}

// settled waits until the engine acked want source records.
func (h *harness) settled(want int64, timeout time.Duration) engine.Stats {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s := h.eng.Stats(); s.Acked >= want {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("only %+v settled within %s, want %d acked", h.eng.Stats(), timeout, want)
	return engine.Stats{}
}

const e2ePipeline = `
version: 1
name: e2e
inputs:
  orders:
    jetstream:
      stream: IN
      subjects: ["in.>"]
      max_in_flight: 2048
functions:
  enrich:
    command: $BINS/enrich
    mode: framed
    instances: 2
    batch: { size: 100, max_wait: 2ms }
  tag:
    command: sed
    args: ["-u", "s/}$/,\"tagged\":true}/"]
    mode: lines
  audit:
    command: sh
    args: ["-c", "printf 'audit %s ' \"$$CULVERT_RECORD_ID\"; cat"]
    mode: exec
    instances: 4
routes:
  - name: main
    match: { subjects: ["in.orders"] }
    chain: enrich | tag
    outputs: [out]
    dead_letter: dlq
  - name: audit
    match: { headers: { audit: "yes" } }
    chain: [audit]
    outputs: [audited]
outputs:
  out:     { jetstream: { subject: "out.{{ .Source.Subject }}", stream: OUT, subjects: ["out.>"] } }
  audited: { jetstream: { subject: "audited.{{ token 1 .Source.Subject }}", stream: AUDITED, subjects: ["audited.>"] } }
  dlq:     { jetstream: { subject: "dlq.e2e", stream: DLQ, subjects: ["dlq.>"] } }
`

// TestEndToEnd10k sends 10,000 keyed records through two routes: a framed
// Go function followed by sed in lines mode, and an exec-mode shell
// function for every tenth record. Every record must come out exactly as
// a decodable Record, in per-key order, and every source record be acked.
func TestEndToEnd10k(t *testing.T) {
	const n, keys = 10_000, 50
	h := startPipeline(t, e2ePipeline)
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		m := nats.NewMsg("in.orders")
		m.Data = fmt.Appendf(nil, `{"n":%d,"amount":%d.5}`, i, i)
		m.Header.Set(natsmsg.HeaderKey, fmt.Sprintf("k%d", i%keys))
		m.Header.Set(natsmsg.HeaderContentType, "application/json")
		if i%10 == 0 {
			m.Header.Set("audit", "yes")
		}
		msgs[i] = m
	}
	start := time.Now()
	h.publish(msgs)
	out := h.collect("OUT", "out.in.orders", n, 120*time.Second)
	audited := h.collect("AUDITED", "audited.orders", n/10, 120*time.Second)
	stats := h.settled(n, 60*time.Second)
	t.Logf("%d records through both routes in %s; %+v", n, time.Since(start), stats)

	last := map[string]int{}
	seen := map[int]bool{}
	for _, rec := range out {
		var v struct {
			N           int  `json:"n"`
			AmountCents int  `json:"amount_cents"`
			Enriched    bool `json:"enriched"`
			Tagged      bool `json:"tagged"`
		}
		if err := json.Unmarshal(rec.Value, &v); err != nil {
			t.Fatalf("record %s: value %q: %v", rec.Id, rec.Value, err)
		}
		if !v.Enriched || !v.Tagged || v.AmountCents != v.N*100+50 {
			t.Fatalf("record %s did not pass through both functions: %s", rec.Id, rec.Value)
		}
		key := string(rec.Key)
		if prev, ok := last[key]; ok && v.N <= prev {
			t.Fatalf("key %s: record %d came after %d: per-key order broken", key, v.N, prev)
		}
		last[key] = v.N
		if seen[v.N] {
			t.Fatalf("record %d came out twice", v.N)
		}
		seen[v.N] = true
		if !strings.HasSuffix(rec.Id, "/enrich.0/tag.0") {
			t.Fatalf("output id %q does not derive from its input", rec.Id)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct records out of %d", len(seen), n)
	}
	for _, rec := range audited {
		if !bytes.HasPrefix(rec.Value, []byte("audit js:IN:")) {
			t.Fatalf("audit output %q", rec.Value)
		}
	}
	if stats.Naked != 0 || stats.DeadLettered != 0 {
		t.Fatalf("unexpected failures: %+v", stats)
	}
	// Nothing is left un-acked at the broker.
	cons, err := h.js.Consumer(context.Background(), "IN", "culvert-e2e-orders")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer still has %d un-acked and %d pending", info.NumAckPending, info.NumPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const faultPipeline = `
version: 1
name: faults
inputs:
  in:
    jetstream:
      stream: IN
      subjects: ["in.>"]
      # Longer than the test: a broker redelivery of a record still in
      # flight would be counted as an ack of its own and end the wait early.
      ack_wait: 10m
functions:
  faulty:
    command: $BINS/faulty
    env: { CULVERT_FAULT: "%s" }
    mode: framed
    timeout: 500ms
    batch: { size: 50, max_wait: 2ms }
    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 50ms }
    restart: { backoff: 10ms, max_backoff: 50ms }
routes:
  - name: main
    chain: [faulty]
    outputs: [out]
    dead_letter: dlq
outputs:
  out: { jetstream: { subject: "out.x", stream: OUT, subjects: ["out.>"] } }
  dlq: { jetstream: { subject: "dlq.x", stream: DLQ, subjects: ["dlq.>"] } }
`

// TestFailuresAccounted runs misbehaving functions and checks that every
// input comes out either as an output or as a dead letter carrying the
// error, that the log names the failure clearly, and that every source
// record is acked.
func TestFailuresAccounted(t *testing.T) {
	const n = 200
	tests := []struct {
		fault   string
		poison  string // value marker that triggers the fault
		every   int    // every n-th record carries it
		class   string // culvert-error-class on the dead letters
		logWant []string
	}{
		{"garbage", "", 0, "protocol_violation", []string{"hello from a bad function", "did the function print to stdout?"}},
		{"exit-mid-batch", "crash", 40, "crash", []string{"class=crash", "exit status 3"}},
		{"hang", "hang", 50, "timeout", []string{"class=timeout", "not answered within 500ms"}},
		{"fail-one", "bad", 20, "function_error", []string{"bad record"}},
	}
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			h := startPipeline(t, fmt.Sprintf(faultPipeline, tc.fault))
			msgs := make([]*nats.Msg, n)
			poisoned := 0
			for i := range msgs {
				m := nats.NewMsg("in.x")
				m.Data = fmt.Appendf(nil, "record %d", i)
				if tc.every > 0 && i%tc.every == tc.every/2 {
					m.Data = fmt.Appendf(m.Data, " %s", tc.poison)
					poisoned++
				}
				msgs[i] = m
			}
			if tc.fault == "garbage" {
				poisoned = n // every first batch of every instance is garbled
			}
			h.publish(msgs)
			stats := h.settled(n, 120*time.Second)
			out := h.collectUpTo("OUT", "out.x", n)
			dlq := h.collectUpTo("DLQ", "dlq.x", n)
			t.Logf("%s: %d out, %d dead letters; %+v", tc.fault, len(out), len(dlq), stats)

			accounted := map[string]bool{}
			for _, rec := range out {
				accounted[string(rec.Value)] = true
			}
			for _, rec := range dlq {
				hdrs := map[string]string{}
				for _, h := range rec.Headers {
					hdrs[h.Name] = string(h.Value)
				}
				if hdrs["culvert-error-class"] != tc.class || hdrs["culvert-error-function"] != "faulty" ||
					hdrs["culvert-error-attempts"] == "" || hdrs["culvert-error-source-record"] == "" || hdrs["culvert-error-message"] == "" {
					t.Fatalf("dead letter %s lacks its error headers: %v", rec.Id, hdrs)
				}
				if tc.poison != "" && !strings.Contains(string(rec.Value), tc.poison) {
					t.Fatalf("innocent record %q was dead-lettered (%v)", rec.Value, hdrs)
				}
				accounted[string(rec.Value)] = true
			}
			for _, m := range msgs {
				if !accounted[string(m.Data)] {
					t.Fatalf("record %q is neither an output nor a dead letter", m.Data)
				}
			}
			if tc.fault != "garbage" && len(dlq) != poisoned {
				t.Fatalf("%d dead letters, want %d", len(dlq), poisoned)
			}
			logs := h.logs.String()
			for _, w := range tc.logWant {
				if !strings.Contains(logs, w) {
					t.Errorf("log lacks %q", w)
				}
			}
			if stats.Acked != n || stats.Naked != 0 {
				t.Fatalf("want every record acked: %+v", stats)
			}
		})
	}
}

// collectUpTo reads everything stored on filter (at most max records).
func (h *harness) collectUpTo(stream, filter string, max int) []*culvertv1.Record {
	h.t.Helper()
	ctx := context.Background()
	s, err := h.js.Stream(ctx, stream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return nil
	}
	return h.collect(stream, filter, min(int(info.State.Msgs), max), 30*time.Second)
}
