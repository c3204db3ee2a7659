//go:build linux

package container

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// TestEngineHostile runs the hostile function through the real runner and
// engine, sandboxed by the Confine hook from a pipeline file: records
// carrying escape attempts, a memory bomb and a stdout flood are mixed
// with ordinary records. Every attempt fails inside the sandbox, the bomb
// is reported as out of memory and the instance restarts, and every
// ordinary record still comes out.
func TestEngineHostile(t *testing.T) {
	r := newRuntime(t, true)
	dir := t.TempDir()
	yaml := fmt.Sprintf(`version: 1
name: hostile
inputs:
  in: { stdin: {} }
functions:
  evil:
    command: %s
    args: [lines]
    mode: lines
    timeout: 5s
    retry: { max_attempts: 2, backoff: 10ms }
    sandbox: { memory: 64MiB, pids: 32, cpu: "0.5" }
routes:
  - name: main
    chain: [evil]
    outputs: [out]
    dead_letter: dlq
outputs:
  out: { stdout: { format: lines } }
  dlq: { file: { path: %s } }
`, hostileBin, filepath.Join(dir, "dlq.ndjson"))
	attempts := []string{
		"read /etc/shadow", "ptrace", "mount", "unshare", "bpf", "keyctl", "reboot", "raw-socket",
		"sethostname", "proc-sys", "write /pwned", "signal " + fmt.Sprint(os.Getpid()), "connect 127.0.0.1:22",
		"membomb 512", "flood 64", "init_module", "perf_event_open", "clock_settime", "setns",
	}
	pr := runPipeline(t, r, yaml)
	for _, a := range attempts {
		if _, err := fmt.Fprintf(pr.in, "%s\nhello\n", a); err != nil {
			t.Fatal(err)
		}
	}
	pr.stop()
	out, logs := &pr.out, &pr.logs
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	hellos, denied := 0, 0
	for _, l := range lines {
		switch {
		case l == "OK hello":
			hellos++
		case strings.HasPrefix(l, "DENIED "):
			denied++
		case strings.HasPrefix(l, "ESCAPED"):
			t.Errorf("escape: %q", l)
		}
	}
	if hellos != len(attempts) {
		t.Errorf("%d ordinary records came out, want %d\nout:\n%s\nlogs:\n%s", hellos, len(attempts), out.String(), logs.String())
	}
	if want := len(attempts) - 2; denied != want { // all but the bomb and the flood answer DENIED
		t.Errorf("%d attempts denied, want %d\nout:\n%s", denied, want, out.String())
	}
	if !strings.Contains(logs.String(), "out_of_memory") && !strings.Contains(logs.String(), "out of memory") {
		t.Errorf("the memory bomb was not reported as out of memory; logs:\n%s", logs.String())
	}
	dlq, _ := os.ReadFile(filepath.Join(dir, "dlq.ndjson"))
	if n := strings.Count(string(dlq), "\n"); n != 2 {
		t.Errorf("%d dead letters, want 2 (the bomb and the flood):\n%s", n, dlq)
	}
	_ = io.Discard
}

// TestEnginePrecreates: a pipeline whose function scales to zero, run by
// the real runner and engine. Loading the pipeline pre-creates a container,
// so the first start execs a waiting one; after the instance is stopped for
// idleness, the next record's start finds one waiting too. No start is cold.
func TestEnginePrecreates(t *testing.T) {
	r := newRuntime(t, true)
	yaml := fmt.Sprintf(`version: 1
name: zero
inputs:
  in: { stdin: {} }
functions:
  echo:
    command: %s
    args: [lines]
    mode: lines
    timeout: 5s
    scale: { min: 0, max: 1, idle_timeout: 100ms }
routes:
  - name: main
    chain: [echo]
    outputs: [out]
outputs:
  out: { stdout: { format: lines } }
`, hostileBin)
	pr := runPipeline(t, r, yaml)
	for i := range 3 {
		// Idle: the instance has stopped (or never started) and a
		// container waits for the next start.
		pr.waitFor("a waiting container", func() bool { return r.waiting() == 1 })
		if _, err := fmt.Fprintln(pr.in, "hello"); err != nil {
			t.Fatal(err)
		}
		pr.waitFor("the answer", func() bool { return strings.Count(pr.out.String(), "OK hello\n") == i+1 })
		if st := r.Stats(); st.Precreated != uint64(i+1) || st.Cold != 0 {
			t.Fatalf("record %d: %+v, want %d pre-created starts and none cold", i, st, i+1)
		}
		time.Sleep(300 * time.Millisecond) // past idle_timeout: scaled to zero
	}
	pr.stop()
}

// TestEngineExecMode: an exec-mode function (one process per record, the
// record's metadata in its environment), run by the real runner and
// engine. Loading the pipeline pre-creates launcher containers, and every
// record's start takes one: the function gets the record on stdin, the
// record's variables and the function's own, and no start is cold.
func TestEngineExecMode(t *testing.T) {
	r := newRuntime(t, true)
	yaml := fmt.Sprintf(`version: 1
name: execmode
inputs:
  in: { stdin: {} }
functions:
  echo:
    command: %s
    args: [env]
    env: { HOSTILE_ATTEMPT: launched, BASE: "1" }
    mode: exec
    timeout: 5s
    scale: { min: 0, max: 2, idle_timeout: 100ms }
routes:
  - name: main
    chain: [echo]
    outputs: [out]
outputs:
  out: { stdout: { format: lines } }
`, hostileBin)
	pr := runPipeline(t, r, yaml)
	for i := range 3 {
		if i > 0 { // the first record may come while they are being created
			pr.waitFor("waiting containers", func() bool { return r.waiting() == 2 })
		}
		if _, err := fmt.Fprintf(pr.in, "rec%d\n", i); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`OK fds= exe=%s pid1=%s BASE=1 X= FN=echo stdin="rec%d`, hostileBin, hostileBin, i)
		pr.waitFor("the answer", func() bool { return strings.Contains(pr.out.String(), want) })
		if st := r.Stats(); st.Precreated != uint64(i+1) || st.Cold != 0 {
			t.Fatalf("record %d: %+v, want %d pre-created starts and none cold", i, st, i+1)
		}
	}
	pr.stop()
}

// pipelineRun is a pipeline run by the real runner and engine, its
// functions confined by a container runtime, fed through stdin.
type pipelineRun struct {
	t         *testing.T
	r         *Runtime
	in        *io.PipeWriter
	out, logs testbin.Buffer
	done      chan error
}

// runPipeline loads yaml and runs it until stop.
func runPipeline(t *testing.T, r *Runtime, yaml string) *pipelineRun {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := pipelines.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	pr := &pipelineRun{t: t, r: r, done: make(chan error, 1)}
	log := slog.New(slog.NewTextHandler(&pr.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	sbx := runner.Sandboxing{Isolating: r, Plain: process.Runtime{}, Logger: log}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	inR, inW := io.Pipe()
	pr.in = inW
	go func() {
		pr.done <- runner.Run(ctx, runner.Options{
			Pipeline: p, Runtime: process.Runtime{}, Confine: sbx.Confine(p), Logger: log,
			Stdin: inR, Stdout: &pr.out,
		})
	}()
	return pr
}

// waitFor polls cond for up to 20s.
func (pr *pipelineRun) waitFor(what string, cond func() bool) {
	pr.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			pr.t.Fatalf("timed out waiting for %s; stats %+v; out %q\nlogs:\n%s", what, pr.r.Stats(), pr.out.String(), pr.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop ends the input and waits for the run to finish.
func (pr *pipelineRun) stop() {
	pr.t.Helper()
	_ = pr.in.Close()
	if err := <-pr.done; err != nil {
		pr.t.Fatalf("run: %v\nlogs:\n%s", err, pr.logs.String())
	}
}
