package sdktest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox/process"
	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
	"google.golang.org/protobuf/encoding/protodelim"
)

// TestPipelineChainOfSDKs runs a pipeline whose one route chains the
// Python, Node and C conformance examples (py | js | c), reading records
// from a file and writing outputs and dead letters to files. Each record
// goes through all three SDKs: binary values, keys and repeated headers
// must come out unchanged, fan-out multiplies along the chain, a filtered
// record disappears, and permanent and retryable failures reach the dead
// letter output with the function that failed them.
func TestPipelineChainOfSDKs(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed (.ci/deps.d/50-sdks.sh installs it): %v", err)
	}
	cbin := filepath.Join(dir, "conformance-c")
	build := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-I", filepath.Join(root, "sdk/c"), "-o", cbin,
		filepath.Join(root, "sdk/c/culvert.c"), filepath.Join(root, "sdk/c/examples/conformance/main.c"))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the C example: %v\n%s", err, out)
	}

	in := []*culvertv1.Record{
		rec("bin", sdktest.Binary, ""),
		rec("fan", []byte("fan"), "emit=2"),
		rec("drop", []byte("drop"), "drop"),
		rec("fail", []byte("fail"), "fail"),
		rec("retry", []byte("retry"), "retry"),
		rec("print", []byte("print"), "stdout=printed in a chain"),
	}
	var buf bytes.Buffer
	for _, r := range in {
		if _, err := protodelim.MarshalTo(&buf, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "in.bin"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fn := func(cmd string, args ...string) string {
		a := ""
		if len(args) > 0 {
			a = fmt.Sprintf(", args: [%q]", args[0])
		}
		return fmt.Sprintf("{ command: %q%s, env: {CULVERT_CONFORMANCE: \"1\"}, retry: {max_attempts: 2, backoff: 10ms, max_backoff: 10ms} }", cmd, a)
	}
	yaml := strings.Join([]string{
		"version: 1",
		"name: sdk-chain",
		"inputs:",
		fmt.Sprintf("  in: { file: { path: %q, format: delimited } }", filepath.Join(dir, "in.bin")),
		"functions:",
		"  py: " + fn("/usr/bin/python3", filepath.Join(root, "sdk/python/examples/conformance/main.py")),
		"  js: " + fn(node, filepath.Join(root, "sdk/node/examples/conformance/index.js")),
		"  c: " + fn(cbin),
		"routes:",
		"  - name: chain",
		"    chain: py | js | c",
		"    outputs: [out]",
		"    dead_letter: dlq",
		"outputs:",
		fmt.Sprintf("  out: { file: { path: %q, format: delimited } }", filepath.Join(dir, "out.bin")),
		fmt.Sprintf("  dlq: { file: { path: %q, format: delimited } }", filepath.Join(dir, "dlq.bin")),
		"",
	}, "\n")
	path := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := pipelines.LoadWith(path, nil, pipelines.Checker{CEL: router.CheckCEL, SubjectPattern: router.CheckSubjectPattern,
		Template: func(s string) error { _, err := router.ParseTemplate(s); return err }})
	if err != nil {
		t.Fatalf("pipeline:\n%s\n%v", yaml, err)
	}
	var logs testbin.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runner.Run(ctx, runner.Options{Pipeline: p, DataDir: filepath.Join(dir, "data"), Runtime: process.Runtime{},
			Logger: slog.New(slog.NewTextHandler(&logs, nil)), Stdin: strings.NewReader(""), Stdout: io.Discard})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pipeline run: %v\nlog:\n%s", err, &logs)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("pipeline did not stop within 60s\nlog:\n%s", &logs)
		}
	}
	defer stop()

	// bin: 1 output; fan: 2 x 2 x 2 = 8; print: 1. fail and retry: dead letters.
	// The pipeline drains and stops by itself at the end of its file input;
	// it is stopped after two minutes otherwise.
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatalf("pipeline run: %v\nlog:\n%s", err, &logs)
		}
	case <-time.After(2 * time.Minute):
		stop()
	}
	out, dlq := readRecords(t, filepath.Join(dir, "out.bin")), readRecords(t, filepath.Join(dir, "dlq.bin"))
	for _, r := range append(append([]*culvertv1.Record{}, out...), dlq...) {
		t.Logf("%s: %d bytes, %d headers", r.GetId(), len(r.GetValue()), len(r.GetHeaders()))
	}
	byInput := map[string][]*culvertv1.Record{}
	for _, r := range out {
		byInput[strings.SplitN(r.GetId(), "/", 2)[0]] = append(byInput[strings.SplitN(r.GetId(), "/", 2)[0]], r)
	}
	if n := len(byInput["bin"]); n != 1 {
		t.Fatalf("bin: %d outputs, want 1", n)
	}
	got := byInput["bin"][0]
	if !bytes.Equal(got.GetValue(), sdktest.Binary) || !bytes.Equal(got.GetKey(), in[0].Key) || headers(got) != headers(in[0]) {
		t.Errorf("bin changed through the chain:\n got %q key %q headers %s\nwant %q key %q headers %s",
			got.GetValue(), got.GetKey(), headers(got), sdktest.Binary, in[0].Key, headers(in[0]))
	}
	if got.GetId() != "bin/py.0/js.0/c.0" {
		t.Errorf("bin: output id %q, want the id derived through each function", got.GetId())
	}
	if n := len(byInput["fan"]); n != 8 {
		t.Errorf("fan: %d outputs, want 2x2x2 = 8", n)
	}
	ids := map[string]bool{}
	for _, r := range byInput["fan"] {
		ids[r.GetId()] = true
	}
	if len(ids) != len(byInput["fan"]) {
		t.Errorf("fan: output ids are not distinct: %v", ids)
	}
	if n := len(byInput["print"]); n != 1 {
		t.Errorf("print: %d outputs, want 1", n)
	}
	if n := len(byInput["drop"]) + len(byInput["fail"]) + len(byInput["retry"]); n != 0 {
		t.Errorf("%d outputs for drop, fail and retry, want none", n)
	}
	if len(dlq) != 2 {
		t.Fatalf("%d dead letters, want 2 (fail, retry)", len(dlq))
	}
	for _, r := range dlq {
		h := map[string]string{}
		for _, x := range r.GetHeaders() {
			h[x.GetName()] = string(x.GetValue())
		}
		if r.GetId() != "fail" && r.GetId() != "retry" {
			t.Errorf("unexpected dead letter %q", r.GetId())
		}
		if h["culvert-error-function"] != "py" || !strings.Contains(h["culvert-error-message"], "requested by the culvert-conformance header") {
			t.Errorf("dead letter %s: headers %v", r.GetId(), h)
		}
		if want := map[string]string{"fail": "1", "retry": "2"}[r.GetId()]; h["culvert-error-attempts"] != want {
			t.Errorf("dead letter %s: %s attempts, want %s", r.GetId(), h["culvert-error-attempts"], want)
		}
	}
	if n := strings.Count(logs.String(), "printed in a chain"); n < 3 {
		t.Errorf("the three functions' prints reached the log %d times, want 3:\n%s", n, &logs)
	}
}

func rec(id string, value []byte, directive string) *culvertv1.Record {
	r := &culvertv1.Record{Id: id, Key: []byte("k\x00\xff"), Value: value, ContentType: "application/octet-stream",
		Headers: []*culvertv1.Header{{Name: "x-bin", Value: []byte("\x00\x01\xff")}, {Name: "x-bin", Value: []byte("second")}}}
	if directive != "" {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: "culvert-conformance", Value: []byte(directive)})
	}
	return r
}

func headers(r *culvertv1.Record) string {
	var b strings.Builder
	for _, h := range r.GetHeaders() {
		fmt.Fprintf(&b, "%s=%q;", h.GetName(), h.GetValue())
	}
	return b.String()
}

// readRecords reads a delimited file written so far; a record cut at the
// end (still being written) is left for the next read.
func readRecords(t *testing.T, path string) []*culvertv1.Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []*culvertv1.Record
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		var rec culvertv1.Record
		if err := protodelim.UnmarshalFrom(r, &rec); err != nil {
			break
		}
		out = append(out, &rec)
	}
	return out
}
