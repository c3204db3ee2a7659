//go:build linux

package container

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

// TestLimits: the cgroup limits hold and are reported as such.
func TestLimits(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		t.Run("memory bomb is OOM-killed and reported", func(t *testing.T) {
			t.Parallel()
			spec := hostile("membomb", "512")
			spec.Isolation.Limits.MemoryBytes = 64 << 20
			out, _, ex := run(t, r, spec, "", 30*time.Second)
			if !ex.OOMKilled || strings.Contains(out, "ESCAPED") {
				t.Errorf("exit %+v, stdout %q; want OOMKilled", ex, out)
			}
		})
		t.Run("fork bomb stops at the pids limit", func(t *testing.T) {
			t.Parallel()
			spec := hostile("forkbomb")
			spec.Isolation.Limits.Pids = 32
			out, _, ex := run(t, r, spec, "", 30*time.Second)
			m := regexp.MustCompile(`^DENIED EAGAIN`).FindString(strings.TrimSpace(out))
			if m == "" {
				t.Errorf("exit %v, stdout %q; want the fork to fail with EAGAIN", ex, out)
			}
			if _, err := os.ReadFile("/proc/self/status"); err != nil {
				t.Errorf("the host can no longer read /proc: %v", err)
			}
		})
		t.Run("CPU spin is held to its quota", func(t *testing.T) {
			t.Parallel()
			spec := hostile("cpu-usage", "1500")
			spec.Isolation.Limits.CPU = 0.2
			out, _, ex := run(t, r, spec, "", 30*time.Second)
			m := regexp.MustCompile(`cpu_ms=(\d+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("exit %v, stdout %q", ex, out)
			}
			// 0.2 CPU over 1.5 s is 300 ms; a loose bound that still fails
			// without a quota (1500 ms of CPU).
			if ms, _ := strconv.Atoi(m[1]); ms > 700 {
				t.Errorf("got %d ms of CPU in 1.5 s with a 0.2 CPU quota", ms)
			}
		})
		t.Run("CPU spin is killed", func(t *testing.T) {
			t.Parallel()
			spec := hostile("spin")
			start := time.Now()
			_, _, ex := run(t, r, spec, "", time.Second)
			if ex.Signal != "killed" || time.Since(start) > 10*time.Second {
				t.Errorf("exit %v after %v; want killed", ex, time.Since(start))
			}
		})
	})
}

// TestTenants: two tenants run under different host uids, cannot see each
// other's processes, and cannot read each other's files even when a bind
// brings them in.
func TestTenants(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		a, b := hostile("sleep", "3"), hostile("sleep", "3")
		a.Tenant, b.Tenant = "tenant-a", "tenant-b"
		hostA, err := r.TenantRange("tenant-a")
		if err != nil {
			t.Fatal(err)
		}
		hostB, err := r.TenantRange("tenant-b")
		if err != nil {
			t.Fatal(err)
		}
		if hostA == hostB || max(hostA, hostB)-min(hostA, hostB) < RangeSize {
			t.Fatalf("tenant ranges overlap: %d and %d", hostA, hostB)
		}
		var uids []string
		for _, spec := range []sandbox.Spec{a, b} {
			p, err := r.Start(t.Context(), spec)
			if err != nil {
				t.Fatal(err)
			}
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
			if err != nil {
				t.Fatal(err)
			}
			uid := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindStringSubmatch(string(status))
			uids = append(uids, uid[1])
			_ = p.Stdin().Close()
			t.Cleanup(func() { _ = p.Kill(); p.Wait() })
		}
		if uids[0] != strconv.Itoa(int(hostA)) || uids[1] != strconv.Itoa(int(hostB)) {
			t.Errorf("host uids %v, want %d and %d", uids, hostA, hostB)
		}

		// B's files, owned by B's host uid and private to it.
		dir := t.TempDir()
		_ = os.Chmod(filepath.Dir(dir), 0o711)
		_ = os.Chmod(dir, 0o755)
		bfiles := filepath.Join(dir, "b")
		if err := os.Mkdir(bfiles, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bfiles, "secret"), []byte("b's secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{bfiles, filepath.Join(bfiles, "secret")} {
			if err := os.Chown(p, int(hostB), int(hostB)); err != nil {
				t.Fatal(err)
			}
		}
		readB := func(tenant string) string {
			spec := hostile("read", filepath.Join(bfiles, "secret"))
			spec.Tenant = tenant
			spec.Isolation.Root.Binds = []string{bfiles}
			out, _, _ := run(t, r, spec, "", 10*time.Second)
			return strings.TrimSpace(out)
		}
		if got := readB("tenant-b"); got != "ESCAPED read 10 bytes" {
			t.Errorf("tenant B reading its own file: %q", got) // the control: the file is readable by its owner
		}
		if got := readB("tenant-a"); got != "DENIED EACCES" {
			t.Errorf("tenant A reading B's file: %q, want DENIED EACCES", got)
		}
		// Without the bind, B's files are not even there.
		out, _, _ := run(t, r, func() sandbox.Spec {
			s := hostile("read", filepath.Join(bfiles, "secret"))
			s.Tenant = "tenant-a"
			return s
		}(), "", 10*time.Second)
		if got := strings.TrimSpace(out); got != "DENIED ENOENT" {
			t.Errorf("tenant A reading B's path: %q, want DENIED ENOENT", got)
		}
	})
}
