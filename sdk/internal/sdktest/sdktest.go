// Package sdktest holds what the Go tests of the non-Go SDKs (sdk/python,
// sdk/node, sdk/c) share: running a language's own test tool under go test,
// and an end-to-end table that sends records with binary values, headers
// and requested failures through Culvert's real function host
// (internal/fnhost) to an SDK's conformance example. Its own test runs a
// pipeline that chains the Python, Node and C examples. It is for tests
// only.
package sdktest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// RunTool runs a language's own test command in dir and fails t, with the
// command's output, when it exits non-zero. A missing tool fails too: the
// install steps in .ci/deps.d must provide it.
func RunTool(t *testing.T, dir string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// Start starts one framed-mode instance of command (path, args...) through
// the real host, with CULVERT_CONFORMANCE=1 in its environment, and closes
// it when the test ends. Its stderr is logged to logs.
func Start(t *testing.T, logs *testbin.Buffer, maxBatch int, command ...string) fnhost.Instance {
	t.Helper()
	inst, err := fnhost.Start(context.Background(), fnhost.Config{
		Pipeline: "sdktest", Function: "fn", Route: "r", Mode: fnhost.Framed,
		Path: command[0], Args: command[1:],
		Env:      []string{"PATH=" + os.Getenv("PATH"), "CULVERT_CONFORMANCE=1"},
		MaxBatch: maxBatch, MaxInflight: 2, Timeout: 30 * time.Second, HandshakeTimeout: 30 * time.Second,
		KeepAlive: 50 * time.Millisecond,
		Runtime:   process.Runtime{},
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("starting %v: %v\nlog:\n%s", command, err, logs)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := inst.Close(ctx); err != nil {
			t.Errorf("closing %v: %v\nlog:\n%s", command, err, logs)
		}
	})
	return inst
}

// Call submits one batch and waits for its answer.
func Call(t *testing.T, inst fnhost.Instance, recs []*culvertv1.Record) ([]fnhost.Result, error) {
	t.Helper()
	type answer struct {
		res []fnhost.Result
		err error
	}
	ch := make(chan answer, 1)
	c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) { ch <- answer{res, err} }}
	if err := inst.Submit(context.Background(), c); err != nil {
		return nil, err
	}
	select {
	case a := <-ch:
		return a.res, a.err
	case <-time.After(60 * time.Second):
		t.Fatal("no answer within 60s")
		return nil, nil
	}
}

// Binary is a value with NUL bytes and invalid UTF-8.
var Binary = []byte("\x00nul\xff\xfe invalid utf-8 \xc3\x28 \x00")

func record(id string, value []byte, directive string) *culvertv1.Record {
	r := &culvertv1.Record{Id: id, Key: []byte("k\x00\xff"), Value: value, ContentType: "application/octet-stream",
		Headers: []*culvertv1.Header{{Name: "x-bin", Value: []byte("\x00\x01\xff")}, {Name: "x-bin", Value: []byte("second")}},
		Source:  &culvertv1.Position{Connector: "test", Subject: "in.x", Offset: 7}}
	if directive != "" {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: "culvert-conformance", Value: []byte(directive)})
	}
	return r
}

// EndToEnd sends batches through an SDK's conformance example, started by
// command, via the real host, and checks every result: echoed binary
// values, keys and repeated headers, filtered records, fan-out, permanent
// and retryable failures, a print to stdout that must land in the log, an
// empty batch, a batch of 1000 records, and keep-alives while idle.
func EndToEnd(t *testing.T, command ...string) {
	var logs testbin.Buffer
	inst := Start(t, &logs, 1000, command...)
	big := bytes.Repeat([]byte{0, 0xff, 'x'}, 300_000) // ~900 KB
	recs := []*culvertv1.Record{
		record("echo", Binary, ""),
		record("drop", []byte("d"), "drop"),
		record("fail", []byte("f"), "fail"),
		record("retry", []byte("r"), "retry"),
		record("emit3", Binary, "emit=3"),
		record("emit0", []byte("e"), "emit=0"),
		record("print", []byte("p"), "stdout=printed by the handler"),
		record("bad", []byte("b"), "no-such-directive"),
		record("big", big, ""),
		record("last", []byte("z"), "echo"),
	}
	res, err := Call(t, inst, recs)
	if err != nil {
		t.Fatalf("batch: %v\nlog:\n%s", err, &logs)
	}
	if len(res) != len(recs) {
		t.Fatalf("%d results for %d records", len(res), len(recs))
	}
	echoed := func(i int, want []byte, n int) {
		t.Helper()
		r := res[i]
		if r.Failure != nil || len(r.Outputs) != n {
			t.Errorf("%s: got failure %+v and %d outputs, want %d outputs", recs[i].Id, r.Failure, len(r.Outputs), n)
			return
		}
		for _, o := range r.Outputs {
			if !bytes.Equal(o.Record.GetValue(), want) {
				t.Errorf("%s: value %q, want %q", recs[i].Id, short(o.Record.GetValue()), short(want))
			}
			if !bytes.Equal(o.Record.GetKey(), recs[i].Key) {
				t.Errorf("%s: key %q, want %q", recs[i].Id, o.Record.GetKey(), recs[i].Key)
			}
			if got, want := headers(o.Record), headers(recs[i]); got != want {
				t.Errorf("%s: headers %s, want %s", recs[i].Id, got, want)
			}
			if o.Record.GetSource().GetOffset() != 7 {
				t.Errorf("%s: source %v not filled from the input", recs[i].Id, o.Record.GetSource())
			}
			if o.To != "" {
				t.Errorf("%s: output aimed at %q", recs[i].Id, o.To)
			}
		}
	}
	failed := func(i int, retryable bool) {
		t.Helper()
		r := res[i]
		if r.Failure == nil || len(r.Outputs) != 0 {
			t.Errorf("%s: got %+v, want a failure", recs[i].Id, r)
			return
		}
		if r.Failure.Retryable != retryable || r.Failure.Message == "" {
			t.Errorf("%s: failure %+v, want retryable=%v with a message", recs[i].Id, r.Failure, retryable)
		}
	}
	echoed(0, Binary, 1)
	echoed(1, nil, 0)
	failed(2, false)
	failed(3, true)
	echoed(4, Binary, 3)
	if len(res[4].Outputs) == 3 && res[4].Outputs[0].Record.GetId() == res[4].Outputs[2].Record.GetId() {
		t.Errorf("emit=3: outputs share the id %q; the host should derive distinct ids", res[4].Outputs[0].Record.GetId())
	}
	echoed(5, nil, 0)
	echoed(6, []byte("p"), 1)
	failed(7, false)
	echoed(8, big, 1)
	echoed(9, []byte("z"), 1)

	// The instance survived the print: an empty batch, then a full one.
	if res, err := Call(t, inst, nil); err != nil || len(res) != 0 {
		t.Fatalf("empty batch: %v, %d results\nlog:\n%s", err, len(res), &logs)
	}
	many := make([]*culvertv1.Record, 1000)
	for i := range many {
		many[i] = record(fmt.Sprintf("m%d", i), []byte(fmt.Sprintf("v%d\x00", i)), "")
	}
	res, err = Call(t, inst, many)
	if err != nil {
		t.Fatalf("batch of 1000: %v\nlog:\n%s", err, &logs)
	}
	for i, r := range res {
		if r.Failure != nil || len(r.Outputs) != 1 || string(r.Outputs[0].Record.GetValue()) != fmt.Sprintf("v%d\x00", i) {
			t.Fatalf("batch of 1000, record %d: %+v", i, r)
		}
	}
	// Idle: the host pings every 50ms and kills an instance that does not
	// echo; it must still be alive and answering afterwards.
	time.Sleep(300 * time.Millisecond)
	if res, err := Call(t, inst, recs[:1]); err != nil || len(res) != 1 {
		t.Fatalf("after keep-alives: %v\nlog:\n%s", err, &logs)
	}
	if !strings.Contains(logs.String(), "printed by the handler") {
		t.Errorf("the handler's print did not reach the function's log:\n%s", &logs)
	}
	if !inst.Idle() {
		t.Error("instance not idle after its answers")
	}
}

func headers(r *culvertv1.Record) string {
	var b strings.Builder
	for _, h := range r.GetHeaders() {
		if h.GetName() == "culvert-conformance" {
			continue
		}
		fmt.Fprintf(&b, "%s=%q;", h.GetName(), h.GetValue())
	}
	return b.String()
}

func short(b []byte) string {
	if len(b) > 40 {
		return fmt.Sprintf("%q... (%d bytes)", b[:40], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// Discard is a logger for tests that do not look at logs.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
