//go:build linux

package container

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"

	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/sandbox"
)

// The test binary is also the container init.
func init() { Init() }

// hostileBin is the hostile function, built static once.
var hostileBin string

func TestMain(m *testing.M) {
	if os.Getenv(lifeHelperEnv) != "" {
		os.Exit(lifeHelper())
	}
	code := func() int {
		if err := Check(); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox tests skipped:", err)
			return m.Run() // tests that need the sandbox skip themselves
		}
		if bin := os.Getenv(hostileEnv); bin != "" {
			hostileBin = bin // built by the run that booted this kernel
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "culvert-hostile")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		_ = os.Chmod(dir, 0o755)
		hostileBin = filepath.Join(dir, "hostile")
		cmd := exec.Command("go", "build", "-o", hostileBin, "./testdata/hostile")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building the hostile function:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// newRuntime returns a runtime with its own state directory and cgroup
// parent, cleaned up after the test.
func newRuntime(t testing.TB, precreate bool) *Runtime {
	t.Helper()
	return newRuntimeWith(t, Options{Precreate: precreate})
}

// newRuntimeWith is newRuntime with more options (StateDir, CgroupParent
// and Logger are the test's own).
func newRuntimeWith(t testing.TB, opts Options) *Runtime {
	t.Helper()
	if err := Check(); err != nil {
		t.Skip("cannot sandbox here: ", err)
	}
	state := t.TempDir()
	// The tenants' host uids must traverse it (t.TempDir's parent is 0700).
	_ = os.Chmod(filepath.Dir(state), 0o711)
	opts.StateDir, opts.CgroupParent = state, testCgroupParent(state)
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(); removeParent(r) })
	return r
}

// testCgroupParent names a test's own cgroup parent after its temporary
// directory, /tmp/TestName1234/001: the test's directory is unique (a
// random suffix), its subdirectories are numbered from 001 in every test.
// Tests (and test binaries run at the same time) must not share a parent:
// removeParent removes the empty cgroups under it, such as another
// runtime's cgroups made ahead.
func testCgroupParent(state string) string {
	return "culvert-test-" + strings.ToLower(filepath.Base(filepath.Dir(state))+"-"+filepath.Base(state))
}

// removeParent removes the test's own cgroup parent.
func removeParent(r *Runtime) {
	cg := &cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent), Resources: &cgroups.Resources{}}
	if m, err := manager.New(cg); err == nil {
		_ = m.Destroy()
	}
}

// run starts spec, feeds it stdin, and returns its stdout, stderr and exit.
func run(t testing.TB, r *Runtime, spec sandbox.Spec, stdin string, timeout time.Duration) (string, string, sandbox.Exit) {
	t.Helper()
	var stderr testbin.Buffer
	spec.Stderr = &stderr
	if spec.Name == "" {
		spec.Name = "test"
	}
	if spec.Env == nil {
		spec.Env = []string{"PATH=/usr/bin:/bin"}
	}
	p, err := r.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	go func() {
		_, _ = io.WriteString(p.Stdin(), stdin)
		_ = p.Stdin().Close()
	}()
	timer := time.AfterFunc(timeout, func() { _ = p.Kill() })
	defer timer.Stop()
	out, _ := io.ReadAll(p.Stdout())
	ex := p.Wait()
	return string(out), stderr.String(), ex
}

func hostile(args ...string) sandbox.Spec {
	return sandbox.Spec{Path: hostileBin, Args: args, Tenant: "t1"}
}

// coldPaths runs f once per cold-start path, each with a runtime of its
// own that does not pre-create: the direct spawner (the default) and
// libcontainer's stock path. Once f and its subtests are done, it checks
// that the starts really took that path.
func coldPaths(t *testing.T, f func(t *testing.T, r *Runtime)) {
	for _, p := range []struct {
		name  string
		stock bool
	}{{"direct", false}, {"libcontainer", true}} {
		t.Run(p.name, func(t *testing.T) {
			r := newRuntimeWith(t, Options{StockCold: p.stock})
			t.Cleanup(func() {
				st := r.Stats()
				want := st.Cold
				if p.stock {
					want = 0
				}
				if st.Cold == 0 || st.Direct != want {
					t.Errorf("stats %+v: want cold starts, %d of them direct", st, want)
				}
			})
			f(t, r)
		})
	}
}
