package main

// These tests build the culvert binary and the example functions once, then
// run them as subprocesses, the way a user (or run.sh) does. Every server
// they talk to is the embedded one, started by `culvert run` on 127.0.0.1
// with a free port and a data dir under t.TempDir().

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/testbin"
)

// binDir holds culvert and the example functions, built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	testbin.Main(m, &binDir, "github.com/culvert-dev/culvert/cmd/culvert", testbin.Examples)
}

func culvertBin() string { return filepath.Join(binDir, "culvert") }

// baseEnv is a small, predictable environment: no NATS_URL, so `run`
// starts the embedded server and publish/subscribe need --server.
func baseEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range []string{"HOME", "TMPDIR", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// result of a finished command.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs culvert to completion in dir (the test's cwd when empty).
func runCLI(t *testing.T, dir string, env []string, timeout time.Duration, args ...string) result {
	t.Helper()
	p := startCLI(t, dir, env, nil, args...)
	code := p.wait(t, timeout)
	return result{code: code, stdout: p.stdout.String(), stderr: p.stderr.String()}
}

// proc is a running culvert.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *testbin.Buffer
	stdin          io.WriteCloser
	done           chan struct{}
	err            error // set before done is closed
}

// startCLI starts culvert; with stdin nil the child's stdin is a pipe the
// test holds in p.stdin (closing it is end of input).
func startCLI(t *testing.T, dir string, env []string, stdin io.Reader, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(culvertBin(), args...)
	cmd.Dir = dir
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = baseEnv()
	}
	p := &proc{cmd: cmd, stdout: &testbin.Buffer{}, stderr: &testbin.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if stdin != nil {
		cmd.Stdin = stdin
	} else {
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.stdin = w
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait returns the exit status, failing the test (after a kill) if the
// process does not exit within timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("culvert %s did not exit within %s\nstderr:\n%s", strings.Join(p.cmd.Args[1:], " "), timeout, p.stderr.String())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("culvert killed by %v\nstderr:\n%s", ws.Signal(), p.stderr.String())
		}
		return ee.ExitCode()
	}
	t.Fatalf("waiting for culvert: %v", p.err)
	return -1
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writePipeline writes yaml (with $BIN replaced by the binaries' dir) to
// dir/pipeline.yaml.
func writePipeline(t *testing.T, dir, yaml string) string {
	t.Helper()
	path := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(yaml, "$BIN", binDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// pipelinesDir is where the golden files' relative paths start.
var pipelinesDir = filepath.Join("..", "..", "pipelines")

// goldenEnv is the environment the pipelines package's golden files were
// made with (pipelines_test.go, testEnv).
func goldenEnv() []string {
	return append(baseEnv(), "MAX_IN_FLIGHT=512", "REGION=eu-west-1", "NOT_A_NUMBER=ten", "TIMEOUT_SECONDS=30", "EMPTY=")
}

// golden returns the expected errors for a broken file: the pipelines
// package's golden .err, unless cmd/culvert/testdata/validate has one of
// its own (where the real router's messages differ from the stand-in
// checker the pipelines tests use).
func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "validate", name+".err"))
	if os.IsNotExist(err) {
		b, err = os.ReadFile(filepath.Join(pipelinesDir, "testdata", "broken", name+".err"))
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func brokenFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(pipelinesDir, "testdata", "broken", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("broken pipelines: %d files (%v)", len(files), err)
	}
	return files
}

// TestValidateBroken: every broken pipeline fails validation with exit
// status 1 and exactly its golden errors, followed by the summary line.
func TestValidateBroken(t *testing.T) {
	for _, file := range brokenFiles(t) {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rel := "testdata/broken/" + name + ".yaml"
			r := runCLI(t, pipelinesDir, goldenEnv(), 30*time.Second, "validate", rel)
			if r.code != 1 {
				t.Errorf("exit status %d, want 1", r.code)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			want := golden(t, name) + "culvert: 1 of 1 pipeline files are invalid\n"
			if r.stderr != want {
				t.Errorf("stderr:\n%s\nwant:\n%s", r.stderr, want)
			}
		})
	}
}

// TestValidate covers the valid quickstart and mixed argument lists.
func TestValidate(t *testing.T) {
	quickstart := filepath.Join("..", "..", "examples", "quickstart", "pipeline.yaml")
	broken := filepath.Join(pipelinesDir, "testdata", "broken", "unknown_field.yaml")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrHas  []string
		stderrNone bool
	}{
		{"quickstart", []string{quickstart}, 0, quickstart + ": ok\n", nil, true},
		{"quickstart twice", []string{quickstart, quickstart}, 0, quickstart + ": ok\n" + quickstart + ": ok\n", nil, true},
		{"one of two bad", []string{quickstart, broken}, 1, quickstart + ": ok\n",
			[]string{"unknown_field.yaml:", "culvert: 1 of 2 pipeline files are invalid\n"}, false},
		{"missing file", []string{missing}, 1, "", []string{"missing.yaml", "culvert: 1 of 1 pipeline files are invalid\n"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, "", baseEnv(), 30*time.Second, append([]string{"validate"}, tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", r.code, tc.code, r.stderr)
			}
			if r.stdout != tc.stdout {
				t.Errorf("stdout %q, want %q", r.stdout, tc.stdout)
			}
			if tc.stderrNone && r.stderr != "" {
				t.Errorf("stderr %q, want nothing", r.stderr)
			}
			for _, w := range tc.stderrHas {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

// TestUsageErrors: a command line culvert cannot make sense of exits 2,
// with the reason on stderr, before doing anything.
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	p := writePipeline(t, dir, stdioPipeline)
	tests := []struct {
		name string
		args []string
		want string // on stderr
	}{
		{"bad log level", []string{"run", "--log-level", "nope", p}, "--log-level"},
		{"bad log format", []string{"run", "--log-format", "xml", p}, "--log-format"},
		{"bad log level before the command", []string{"--log-level", "nope", "run", p}, "--log-level"},
		{"bad log level, validate", []string{"validate", "--log-level", "nope", p}, "--log-level"},
		{"run without a file", []string{"run"}, "arg"},
		{"run with two files", []string{"run", p, p}, "arg"},
		{"validate without a file", []string{"validate"}, "arg"},
		{"unknown flag", []string{"run", "--nope", p}, "unknown flag"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bad header", []string{"publish", "x", "--header", "novalue", "--server", "nats://127.0.0.1:1"}, "--header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, dir, baseEnv(), 20*time.Second, tc.args...)
			if r.code != 2 {
				t.Errorf("culvert %s: exit status %d, want 2; stderr: %s", strings.Join(tc.args, " "), r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", r.stderr, tc.want)
			}
		})
	}
}

const stdioPipeline = `
version: 1
name: stdio
inputs:
  in: { stdin: { format: lines } }
functions:
  enrich:
    command: $BIN/enrich
    mode: framed
    batch: { size: 10, max_wait: 1ms }
routes:
  - name: main
    chain: [enrich]
    outputs: [out]
outputs:
  out: { stdout: { format: lines } }
delivery: { shutdown_grace: 3s }
`

// TestRunStdio feeds `culvert run` through stdin and reads its stdout. Each
// output appears while the input is still open. A file source ends at end
// of input: the pipeline then drains and exits 0 on its own; SIGTERM or
// SIGINT with the input still open also drains and exits 0.
func TestRunStdio(t *testing.T) {
	tests := []struct {
		name string
		stop func(p *proc)
	}{
		{"eof", func(p *proc) { p.stdin.Close() }},
		{"sigterm", func(p *proc) { p.cmd.Process.Signal(syscall.SIGTERM) }},
		{"sigint", func(p *proc) { p.cmd.Process.Signal(syscall.SIGINT) }},
		{"eof then sigterm", func(p *proc) {
			p.stdin.Close()
			// The pipeline may already be stopping (or gone): a SIGTERM
			// during the drain must not change the outcome.
			time.Sleep(50 * time.Millisecond)
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}},
	}
	const grace = 3 * time.Second
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := writePipeline(t, dir, stdioPipeline)
			p := startCLI(t, dir, nil, nil, "run", path)
			inputs := []string{`{"amount":1.5}`, `{"id":"x","amount":2}`, `{"n":3}`}
			wants := []string{`{"amount":1.5,"amount_cents":150,"enriched":true}`, `{"amount":2,"amount_cents":200,"enriched":true,"id":"x"}`, `{"enriched":true,"n":3}`}
			for i, in := range inputs {
				if _, err := io.WriteString(p.stdin, in+"\n"); err != nil {
					t.Fatal(err)
				}
				want := strings.Join(wants[:i+1], "\n") + "\n"
				waitFor(t, 15*time.Second, fmt.Sprintf("output %d on stdout", i+1), func() bool {
					if p.exited() && p.stdout.String() != want {
						t.Fatalf("culvert exited before output %d; stdout %q; stderr:\n%s", i+1, p.stdout.String(), p.stderr.String())
					}
					return p.stdout.String() == want
				})
			}
			if p.exited() {
				t.Fatalf("culvert exited before the end of its input: %s", p.stderr.String())
			}
			start := time.Now()
			tc.stop(p)
			if code := p.wait(t, grace+5*time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0; stderr:\n%s", code, p.stderr.String())
			}
			if d := time.Since(start); d > grace+2*time.Second {
				t.Errorf("took %s to stop, grace is %s", d, grace)
			}
			logs := p.stderr.String()
			for _, w := range []string{"pipeline stopped", "in=3 acked=3 naked=0 published=3"} {
				if !strings.Contains(logs, w) {
					t.Errorf("log lacks %q:\n%s", w, logs)
				}
			}
			if got := p.stdout.String(); got != strings.Join(wants, "\n")+"\n" {
				t.Errorf("stdout %q", got)
			}
		})
	}
}

// server is a `culvert run` with the embedded NATS server.
type server struct {
	*proc
	url string
}

// startServer runs the pipeline at path with the embedded server on a free
// port and its store in dataDir, and waits until the pipeline runs (its
// streams exist).
func startServer(t *testing.T, path, dataDir string) *server {
	t.Helper()
	urlFile := filepath.Join(dataDir, "culvert.url")
	os.Remove(urlFile) // a previous run's
	p := startCLI(t, filepath.Dir(path), nil, nil, "run", path, "--listen", "127.0.0.1:0", "--data-dir", dataDir)
	var url string
	waitFor(t, 30*time.Second, "the server URL and a running pipeline", func() bool {
		if p.exited() {
			t.Fatalf("culvert run exited early:\n%s", p.stderr.String())
		}
		b, err := os.ReadFile(urlFile)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		url = strings.TrimSpace(string(b))
		return strings.Contains(p.stderr.String(), "pipeline running")
	})
	if !strings.HasPrefix(url, "nats://127.0.0.1:") || strings.HasSuffix(url, ":4222") {
		t.Fatalf("server URL %q: want 127.0.0.1 on a free port", url)
	}
	return &server{proc: p, url: url}
}

// stop sends SIGTERM and expects a clean exit within limit.
func (s *server) stop(t *testing.T, limit time.Duration) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.wait(t, limit); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0; stderr:\n%s", code, s.stderr.String())
	}
	if !strings.Contains(s.stderr.String(), "pipeline stopped") {
		t.Errorf("log lacks \"pipeline stopped\":\n%s", s.stderr.String())
	}
}

const embeddedPipeline = `
version: 1
name: cli
inputs:
  orders: { jetstream: { stream: IN, subjects: ["in.>"] } }
functions:
  enrich:
    command: $BIN/enrich
    mode: framed
    batch: { size: 10, max_wait: 2ms }
routes:
  - name: main
    match: { subjects: ["in.orders"] }
    chain: [enrich]
    outputs: [out]
outputs:
  out: { jetstream: { subject: "out.{{ .Source.Subject }}", stream: OUT, subjects: ["out.>"] } }
delivery: { shutdown_grace: 5s }
`

// subscribed is one record printed by `culvert subscribe`.
type subscribed struct {
	subject, meta, value string
}

// parseSubscribe splits subscribe's output: a header line "SUBJECT id=..."
// and an indented value line per record.
func parseSubscribe(t *testing.T, out string) []subscribed {
	t.Helper()
	var recs []subscribed
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if out == "" {
		return nil
	}
	for i := 0; i < len(lines); i += 2 {
		subject, meta, _ := strings.Cut(lines[i], " ")
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "    ") {
			t.Fatalf("subscribe output is not pairs of lines:\n%s", out)
		}
		recs = append(recs, subscribed{subject, meta, strings.TrimPrefix(lines[i+1], "    ")})
	}
	return recs
}

// TestRunPublishSubscribe runs a pipeline on the embedded server and feeds
// and reads it with the publish and subscribe commands.
func TestRunPublishSubscribe(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	srv := startServer(t, writePipeline(t, dir, embeddedPipeline), data)

	orders := filepath.Join(dir, "orders.ndjson")
	os.WriteFile(orders, []byte("{\"id\":\"A-1\",\"amount\":250}\n{\"id\":\"A-2\",\"amount\":12.5}\n{\"id\":\"A-3\"}\n"), 0o644)
	r := runCLI(t, dir, nil, 30*time.Second, "publish", "in.orders", "--server", srv.url, "--file", orders, "--key", "shop-1")
	if r.code != 0 || r.stderr != "published 3 messages to in.orders\n" {
		t.Fatalf("publish: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, dir, nil, 30*time.Second, "subscribe", "out.>", "--server", srv.url, "--count", "3", "--timeout", "20s")
	if r.code != 0 {
		t.Fatalf("subscribe: exit %d, stderr %q", r.code, r.stderr)
	}
	got := parseSubscribe(t, r.stdout)
	want := []string{
		`{"amount":250,"amount_cents":25000,"enriched":true,"id":"A-1"}`,
		`{"amount":12.5,"amount_cents":1250,"enriched":true,"id":"A-2"}`,
		`{"enriched":true,"id":"A-3"}`,
	}
	if len(got) != len(want) {
		t.Fatalf("subscribe printed %d records, want %d:\n%s", len(got), len(want), r.stdout)
	}
	idRE := regexp.MustCompile(`^id=\S+/enrich\.0 key=shop-1( |$)`)
	for i, rec := range got {
		if rec.subject != "out.in.orders" || rec.value != want[i] || !idRE.MatchString(rec.meta) {
			t.Errorf("record %d: %+v, want subject out.in.orders, key shop-1, value %s", i, rec, want[i])
		}
	}
	// A subscribe that cannot get its count in time fails.
	r = runCLI(t, dir, nil, 30*time.Second, "subscribe", "out.>", "--server", srv.url, "--count", "4", "--timeout", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "received 3 of 4 records before the timeout") {
		t.Errorf("subscribe --count 4: exit %d, stderr %q", r.code, r.stderr)
	}
	srv.stop(t, 15*time.Second)
	if !strings.Contains(srv.stderr.String(), "in=3 acked=3 naked=0 published=3") {
		t.Errorf("stop summary:\n%s", srv.stderr.String())
	}
}

const slowPipeline = `
version: 1
name: slow
inputs:
  in: { jetstream: { stream: IN, subjects: ["in.>"], ack_wait: 2s } }
functions:
  slow:
    command: sh
    args: ["-c", "sleep 0.2; cat"]
    mode: exec
    instances: 1
    # This test is about delivery across SIGTERM, timed for plain exec
    # (one process per record): a sandbox's cold start per record would
    # only slow it down. The sandbox itself is tested in sandbox/container.
    sandbox: none
    batch: { size: 5, max_wait: 1ms }
    retry: { max_attempts: %d, backoff: 20ms, max_backoff: 50ms }
routes:
  - name: main
    chain: [slow]
    outputs: [out]
    %s
outputs:
  out: { jetstream: { subject: out.x, stream: OUT, subjects: ["out.>"] } }
  dlq: { jetstream: { subject: dlq.x, stream: DLQ, subjects: ["dlq.>"] } }
delivery: { shutdown_grace: 600ms }
`

// TestSIGTERMInFlight stops a pipeline while a slow exec function holds
// records, then restarts it on the same store: every input must reach the
// output subject at least once across both runs (duplicates are allowed),
// and a record interrupted by the shutdown must not be dead-lettered as if
// it had failed.
func TestSIGTERMInFlight(t *testing.T) {
	tests := []struct {
		name        string
		maxAttempts int
		deadLetter  string
	}{
		{"retries, no dead letter", 3, ""},
		{"no retries, dead letter", 1, "dead_letter: dlq"},
	}
	const n = 20
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			path := writePipeline(t, dir, fmt.Sprintf(slowPipeline, tc.maxAttempts, tc.deadLetter))
			srv := startServer(t, path, data)
			var in bytes.Buffer
			for i := range n {
				fmt.Fprintf(&in, "r%02d\n", i)
			}
			pub := startCLI(t, dir, nil, bytes.NewReader(in.Bytes()), "publish", "in.x", "--server", srv.url)
			if code := pub.wait(t, 30*time.Second); code != 0 {
				t.Fatalf("publish: exit %d: %s", code, pub.stderr.String())
			}
			time.Sleep(500 * time.Millisecond) // a couple of records done, the rest in flight
			start := time.Now()
			srv.stop(t, 15*time.Second)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("stopping took %s with a grace of 600ms", d)
			}
			if m := regexp.MustCompile(`published=(\d+)`).FindStringSubmatch(srv.stderr.String()); m == nil || m[1] == fmt.Sprint(n) {
				t.Fatalf("the first run finished everything before SIGTERM; the test proves nothing:\n%s", srv.stderr.String())
			}

			if strings.Contains(srv.stderr.String(), "record dead-lettered") {
				t.Errorf("records interrupted by SIGTERM were dead-lettered instead of given back:\n%s", srv.stderr.String())
			}
			srv2 := startServer(t, path, data)
			seen := map[string]int{}
			deadline := time.Now().Add(15 * time.Second)
			for len(seen) < n && time.Now().Before(deadline) {
				r := runCLI(t, dir, nil, 30*time.Second, "subscribe", "out.>", "--server", srv2.url, "--timeout", "1s")
				if r.code != 0 {
					t.Fatalf("subscribe: exit %d: %s", r.code, r.stderr)
				}
				clear(seen)
				for _, rec := range parseSubscribe(t, r.stdout) {
					seen[rec.value]++
				}
			}
			var missing []string
			for i := range n {
				if v := fmt.Sprintf("r%02d", i); seen[v] == 0 {
					missing = append(missing, v)
				}
			}
			if len(missing) > 0 {
				dl := runCLI(t, dir, nil, 30*time.Second, "subscribe", "dlq.>", "--server", srv2.url, "--timeout", "1s")
				t.Errorf("records lost across the restart: %v\ndead letters:\n%s\nfirst run:\n%s\nsecond run:\n%s",
					missing, dl.stdout, srv.stderr.String(), srv2.stderr.String())
			}
			if tc.deadLetter != "" {
				dl := runCLI(t, dir, nil, 30*time.Second, "subscribe", "dlq.>", "--server", srv2.url, "--timeout", "1s")
				if dl.stdout != "" {
					t.Errorf("dead letters after a clean stop and restart (no record of this pipeline can fail):\n%s", dl.stdout)
				}
			}
			srv2.stop(t, 15*time.Second)
		})
	}
}

// TestRunInvalidPipeline: run refuses a broken pipeline with exit status 1
// and every error, file:line:col first, on stderr.
func TestRunInvalidPipeline(t *testing.T) {
	for _, name := range []string{"several", "unknown_field", "dangling_function", "yaml_syntax"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rel := "testdata/broken/" + name + ".yaml"
			data := t.TempDir()
			r := runCLI(t, pipelinesDir, goldenEnv(), 30*time.Second, "run", rel, "--listen", "127.0.0.1:0", "--data-dir", data)
			if r.code != 1 {
				t.Errorf("exit status %d, want 1", r.code)
			}
			errs := golden(t, name)
			count := strings.Count(errs, "\n")
			want := errs + fmt.Sprintf("culvert: %s is invalid (%d errors)\n", rel, count)
			if r.stderr != want {
				t.Errorf("stderr:\n%s\nwant:\n%s", r.stderr, want)
			}
			for _, line := range strings.Split(strings.TrimSuffix(errs, "\n"), "\n") {
				if !regexp.MustCompile(`^` + regexp.QuoteMeta(rel) + `:\d+:\d+: `).MatchString(line) {
					t.Errorf("error %q does not start with file:line:col", line)
				}
			}
			if entries, _ := os.ReadDir(data); len(entries) != 0 {
				t.Errorf("an invalid pipeline started the server: data dir holds %d entries", len(entries))
			}
		})
	}
}
