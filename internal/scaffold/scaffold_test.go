package scaffold_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/scaffold"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/proto/conformance"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// run runs a command in dir and fails the test with its output if it fails.
// A missing program is a failure too: CI installs them (.ci/deps.d).
func run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	look := name
	if strings.HasPrefix(name, "./") {
		look = filepath.Join(dir, name)
	}
	if _, err := exec.LookPath(look); err != nil {
		t.Fatalf("%s is needed (installed by .ci/deps.d): %v", name, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
}

// TestScaffoldsPassTheKit generates each language into a temporary
// directory, builds it and runs its own test the way its README says, checks
// its pipeline snippet, and runs the whole conformance kit against framed
// functions: every rule must pass, none skipped.
func TestScaffoldsPassTheKit(t *testing.T) {
	root := repoRoot(t)
	for _, tc := range []struct {
		lang  string
		build [][]string // each run in the new directory
		fn    []string   // the function's command, relative to it; nil: not framed
	}{
		{"go", [][]string{{"go", "mod", "tidy"}, {"go", "vet", "./..."}, {"go", "test", "./..."}, {"go", "build", "-o", "fn-go", "."}}, []string{"./fn-go"}},
		{"python", [][]string{{"/usr/bin/python3", "-m", "unittest", "-v"}}, []string{"/usr/bin/python3", "main.py"}},
		{"node", [][]string{{"npm", "install", "--offline", "--no-audit", "--no-fund"}, {"node", "--test", "test.js"}}, []string{"node", "index.js"}},
		{"c", [][]string{{"make"}}, []string{"./fn-c"}},
		{"shell", [][]string{{"./test.sh"}}, nil},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			t.Parallel()
			name := "fn-" + tc.lang
			dir := filepath.Join(t.TempDir(), name)
			files, err := scaffold.Generate(scaffold.Options{Lang: tc.lang, Name: name, Dir: dir, CulvertSrc: root})
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"README.md", "pipeline.yaml"} {
				if !contains(files, want) {
					t.Errorf("no %s among %v", want, files)
				}
			}
			env := []string{"GOFLAGS=-mod=mod", "GOWORK=off"}
			for _, c := range tc.build {
				run(t, dir, env, c[0], c[1:]...)
			}
			p, err := pipelines.Load(filepath.Join(dir, "pipeline.yaml"), nil)
			if err != nil {
				t.Fatalf("pipeline snippet: %v", err)
			}
			fn, ok := p.Functions[name]
			if !ok {
				t.Fatalf("the pipeline snippet does not configure %s", name)
			}
			// Sandboxed by default, as every function should be: the
			// snippet then runs in the sandbox (CI runs this as root).
			if p.SandboxFor(fn).None {
				t.Fatalf("the %s pipeline snippet runs %s unconfined (sandbox: none); scaffolds are sandboxed", tc.lang, name)
			}
			runSnippet(t, dir)
			if tc.fn == nil {
				return
			}
			rep, err := conformance.Run(context.Background(), conformance.Options{
				Command: tc.fn, Dir: dir, Parallel: 2, Timeout: 30 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			if !rep.OK() || rep.Skipped != 0 || rep.Passed != len(conformance.Rules()) {
				t.Fatalf("the %s scaffold does not pass the kit:\n%s", tc.lang, text.String())
			}
		})
	}
}

var (
	culvertOnce sync.Once
	culvertBin  string
	culvertErr  error
)

// runSnippet runs the scaffold's pipeline snippet with the culvert binary
// (built with seccomp, as make does: functions run in their default
// sandbox, which needs root) on two lines, and expects them back. For
// Python and Node that proves the sandbox binds the scaffold resolved
// (interpreter, libraries, packages) are complete.
func runSnippet(t *testing.T, dir string) {
	t.Helper()
	culvertOnce.Do(func() {
		d, err := os.MkdirTemp("", "culvert-scaffold")
		if err != nil {
			culvertErr = err
			return
		}
		culvertBin = filepath.Join(d, "culvert")
		cmd := exec.Command("go", "build", "-tags", "seccomp", "-o", culvertBin, "./cmd/culvert")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			culvertErr = fmt.Errorf("building culvert: %v\n%s", err, out)
		}
	})
	if culvertErr != nil {
		t.Fatal(culvertErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, culvertBin, "run", "pipeline.yaml")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("a\nb\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("culvert run pipeline.yaml: %v\nstderr:\n%s", err, stderr.String())
	}
	got := strings.Fields(string(out))
	sort.Strings(got)
	if strings.Join(got, ",") != "a,b" {
		t.Fatalf("culvert run pipeline.yaml printed %q, want a and b\nstderr:\n%s", out, stderr.String())
	}
}

func contains(files []string, f string) bool {
	for _, x := range files {
		if x == f {
			return true
		}
	}
	return false
}

func TestGenerateErrors(t *testing.T) {
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	for _, tc := range []struct {
		name string
		o    scaffold.Options
		want string
	}{
		{"language", scaffold.Options{Lang: "cobol", Name: "f", Dir: t.TempDir()}, `unknown language "cobol"`},
		{"name", scaffold.Options{Lang: "go", Name: "Bad Name", Dir: t.TempDir()}, `function name "Bad Name"`},
		{"name with a path", scaffold.Options{Lang: "go", Name: "../x", Dir: t.TempDir()}, "function name"},
		{"non-empty dir", scaffold.Options{Lang: "shell", Name: "f", Dir: full}, "is not empty"},
		{"no dir", scaffold.Options{Lang: "shell", Name: "f"}, "no directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := scaffold.Generate(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFindCulvertSrc(t *testing.T) {
	root, _ := filepath.Abs(repoRoot(t))
	if got := scaffold.FindCulvertSrc(filepath.Join(root, "internal", "scaffold")); got != root {
		t.Fatalf("got %q, want %q", got, root)
	}
	if got := scaffold.FindCulvertSrc(t.TempDir()); got != "" {
		t.Fatalf("got %q outside a checkout", got)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if culvertBin != "" {
		os.RemoveAll(filepath.Dir(culvertBin))
	}
	os.Exit(code)
}
