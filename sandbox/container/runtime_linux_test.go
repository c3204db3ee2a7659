//go:build linux

package container

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

func TestHello(t *testing.T) {
	r := newRuntime(t, false)
	out, stderr, ex := run(t, r, hostile("whoami"), "", 10*time.Second)
	if !ex.Success() || !strings.HasPrefix(out, "OK uid=0 gid=0 pid=1") {
		t.Fatalf("exit %v, stdout %q, stderr %q", ex, out, stderr)
	}
}

// TestFilesRootBindsBringTheirLibraries: a root made of the function's own
// files (sandbox.files) with an interpreter bound beside them
// (sandbox.binds): the bound program gets its ELF interpreter and shared
// libraries too, as it would in a root built from the command, so a
// script there runs; without the bind it cannot start.
func TestFilesRootBindsBringTheirLibraries(t *testing.T) {
	r := newRuntime(t, false)
	dir := t.TempDir()
	_ = os.Chmod(filepath.Dir(dir), 0o711)
	_ = os.Chmod(dir, 0o755)
	script := "#!/bin/sh\nread line\necho \"got $line\"\n"
	if err := os.WriteFile(filepath.Join(dir, "fn.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		binds []string
		ok    bool
	}{
		{"sh bound", []string{"/bin/sh"}, true},
		{"nothing bound", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := sandbox.Spec{Path: "/fn.sh", Tenant: "t1", Isolation: sandbox.Isolation{
				Root: sandbox.Root{Dir: dir, Binds: tc.binds},
			}}
			if !tc.ok {
				spec.Name = "no-sh"
				r2 := newRuntime(t, false)
				if p, err := r2.Start(context.Background(), withName(spec)); err == nil {
					_ = p.Stdin().Close()
					out, _ := io.ReadAll(p.Stdout())
					if ex := p.Wait(); ex.Success() || strings.Contains(string(out), "got") {
						t.Fatalf("the script ran without its interpreter in the root: exit %v, stdout %q", ex, out)
					}
				}
				return
			}
			out, stderr, ex := run(t, r, spec, "hello\n", 10*time.Second)
			if !ex.Success() || out != "got hello\n" {
				t.Fatalf("exit %v, stdout %q, stderr %q", ex, out, stderr)
			}
		})
	}
}

func withName(s sandbox.Spec) sandbox.Spec {
	if s.Name == "" {
		s.Name = "test"
	}
	s.Env = []string{"PATH=/usr/bin:/bin"}
	s.Stderr = io.Discard
	return s
}
