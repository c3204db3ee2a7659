//go:build linux

package sdk_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"

	"github.com/culvert-dev/culvert/internal/scaffold"
	"github.com/culvert-dev/culvert/proto/conformance"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container"
)

// The test binary is also the container init: started as "init" by the
// container runtime, it sets up the container and execs the function
// before any test runs.
func init() { container.Init() }

// sdkDir is this package's directory, sdk/.
func sdkDir(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Dir(file)
}

// TestSDKExamplesInTheSandbox runs the conformance examples of the Python
// and Node SDKs through the whole conformance kit inside Culvert's default
// sandbox (sandbox/container: user namespace, read-only root, the seccomp
// allowlist), with the interpreter, its libraries and the SDK given as
// read-only binds the way a pipeline's sandbox.binds gives them. Every
// rule must pass, with the per-record and the per-batch handler. It needs
// root (CI runs it as root); elsewhere it is skipped with the reason.
func TestSDKExamplesInTheSandbox(t *testing.T) {
	if err := container.Check(); err != nil {
		t.Skip("cannot sandbox here: ", err)
	}
	rt := newRuntime(t)
	dir := sdkDir(t)
	for _, tc := range []struct {
		lang  string
		entry string
	}{
		{"python", "python/examples/conformance/main.py"},
		{"node", "node/examples/conformance/index.js"},
	} {
		in, err := scaffold.FindInterpreter(tc.lang)
		if err != nil {
			t.Fatalf("%s: %v (installed by .ci/deps.d in CI)", tc.lang, err)
		}
		// The SDK directory holds the example, the SDK and, for Node,
		// node_modules.
		binds := append(in.Binds, filepath.Join(dir, tc.lang))
		if tc.lang == "python" {
			// The root holds only what is bound: without the standard
			// library, the interpreter cannot start, which shows that the
			// kit ran it in the sandbox and not on the host.
			t.Run("python without its standard library", func(t *testing.T) {
				t.Parallel()
				rep, err := conformance.Run(context.Background(), conformance.Options{
					Command:   []string{in.Command, filepath.Join(dir, tc.entry)},
					Runtime:   rt,
					Isolation: sandbox.Isolation{Root: sandbox.Root{Binds: []string{in.Command, filepath.Join(dir, tc.lang)}}},
					Rules:     []string{"handshake"},
				})
				if err != nil {
					t.Fatal(err)
				}
				res, _ := rep.Find("handshake")
				if res.Status != conformance.Fail || !strings.Contains(res.Reason, "encodings") {
					t.Fatalf("handshake: %s %q, want a failure naming the missing encodings module", res.Status, res.Reason)
				}
			})
		}
		for _, args := range [][]string{nil, {"--batch"}} {
			name := strings.Join(append([]string{tc.lang}, args...), " ")
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				rep, err := conformance.Run(context.Background(), conformance.Options{
					Command:   append([]string{in.Command, filepath.Join(dir, tc.entry)}, args...),
					Runtime:   rt,
					Isolation: sandbox.Isolation{Root: sandbox.Root{Binds: binds}},
					Parallel:  2,
					Timeout:   30 * time.Second,
				})
				if err != nil {
					t.Fatal(err)
				}
				var text strings.Builder
				rep.WriteText(&text)
				if !rep.OK() || rep.Skipped != 0 || rep.Passed != len(conformance.Rules()) {
					t.Fatalf("%s in the sandbox is not conformant:\n%s", name, text.String())
				}
				t.Logf("%s in the sandbox:\n%s", name, text.String())
			})
		}
	}
}

// newRuntime returns a container runtime with its own state directory and
// cgroup parent, both removed after the test.
func newRuntime(t *testing.T) *container.Runtime {
	t.Helper()
	state := t.TempDir()
	// The tenant's host uids must traverse it (t.TempDir's parent is 0700).
	if err := os.Chmod(filepath.Dir(state), 0o711); err != nil {
		t.Fatal(err)
	}
	// The process id keeps test binaries that run at once apart: t.TempDir
	// names the first directory of each test 001.
	parent := fmt.Sprintf("culvert-sdk-test-%d-%s", os.Getpid(), strings.ToLower(filepath.Base(state)))
	rt, err := container.New(container.Options{
		StateDir: state, CgroupParent: parent,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rt.Close()
		cg := &cgroups.Cgroup{Path: "/" + parent, Resources: &cgroups.Resources{}}
		if m, err := manager.New(cg); err == nil {
			_ = m.Destroy()
		}
	})
	return rt
}
