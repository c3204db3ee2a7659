//go:build linux

package container

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
)

// umlInnerEnv marks the test binary run inside the user-mode kernel.
const umlInnerEnv = "CULVERT_TEST_UML_INNER"

// hostileEnv hands the inner run the hostile function the outer built.
const hostileEnv = "CULVERT_TEST_HOSTILE"

// pureV2Tests are the tests TestPureCgroupV2 runs on a pure cgroup v2
// kernel: every one that makes, fills, limits, pools or sweeps cgroups,
// on both cold paths. Left out: the egress tests (the user-mode kernel
// has no nftables inet family), and TestEngineHostile, whose pipeline
// must drain within its 30 s grace, which a user-mode kernel sharing two
// cores with the rest of the test run does not always give it (its
// cgroup parts, the OOM report and restart, are TestLimits's too).
var pureV2Tests = []string{
	"TestHello", "TestCgroupPool", "TestLimits", "TestTenants", "TestHostile",
	"TestInitClonedAhead", "TestBurstStarts", "TestPrecreate", "TestPrecreateStarts",
	"TestOrphansSwept", "TestForkServerClose", "TestColdPathEvidence",
}

// TestPureCgroupV2 runs the cgroup tests again on a pure cgroup v2 host.
// This host binds memory, pids and cpu to cgroup v1, so the test boots
// Debian's user-mode Linux kernel (linux.uml, a kernel that runs as a
// process and needs no virtualisation) with this machine's root as its
// root file system (hostfs), mounts only cgroup2 at /sys/fs/cgroup, and
// runs this test binary there. Each named test must pass there, not
// skip.
func TestPureCgroupV2(t *testing.T) {
	if os.Getenv(umlInnerEnv) != "" {
		t.Skip("already inside the user-mode kernel")
	}
	if cgroups.IsCgroup2UnifiedMode() {
		t.Skip("this host is pure cgroup v2 already: every test here runs on it")
	}
	if err := Check(); err != nil {
		t.Skip("cannot sandbox here: ", err)
	}
	if testing.Short() {
		t.Skip("boots a kernel: not with -short")
	}
	uml, err := exec.LookPath("linux.uml")
	if err != nil {
		t.Fatalf("needs Debian's user-mode-linux (linux.uml): %v (installed by .ci/deps.d in CI)", err)
	}
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755)
	// This package's tests, built again without the race detector, whose
	// runtime cannot map its shadow memory in the user-mode kernel.
	self := filepath.Join(dir, "container.test")
	build := exec.Command("go", "test", "-c", "-tags=seccomp", "-o", self, ".")
	build.Env = append(os.Environ(), "GOFLAGS=")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the tests for the user-mode kernel: %v\n%s", err, b)
	}
	out, status := filepath.Join(dir, "out"), filepath.Join(dir, "status")
	run := "^(" + strings.Join(pureV2Tests, "|") + ")$"
	// The inner tests' temporary files go to a tmpfs, as they would on a
	// host: hostfs cannot hold the tenants' owners. The binary is copied
	// there too, as a launcher is bound into the sandbox at its own path.
	script := fmt.Sprintf(`#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mkdir -p /run/t
export TMPDIR=/run/t HOME=/root PATH=/usr/local/go/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin %s=1 %s=%q
cat /sys/fs/cgroup/cgroup.controllers > %q
cp %q /run/t/container.test && cd %q && /run/t/container.test -test.v -test.count=1 -test.run %q -test.skip Egress >> %q 2>&1
echo "exit=$?" >> %q
echo o > /proc/sysrq-trigger
sleep 60
`, umlInnerEnv, hostileEnv, hostileBin, out, self, mustGetwd(t), run, out, status)
	init := filepath.Join(dir, "init")
	if err := os.WriteFile(init, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, uml, "mem=2G", "rootfstype=hostfs", "rootflags=/", "rw", "init="+init, "con=null", "con0=fd:0,fd:1")
	// HOME holds the kernel's umid directory; TMPDIR its memory file.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "TMPDIR=/dev/shm", "HOME=" + dir}
	// The kernel's helper processes go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	console, err := cmd.CombinedOutput()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	inner, _ := os.ReadFile(out)
	st, _ := os.ReadFile(status)
	t.Logf("user-mode kernel: %v, inner run %q", err, strings.TrimSpace(string(st)))
	if strings.TrimSpace(string(st)) != "exit=0" {
		t.Fatalf("the tests on pure cgroup v2 failed (%s):\n%s\nconsole tail:\n%s", strings.TrimSpace(string(st)), inner, tail(console, 2000))
	}
	lines := strings.SplitN(string(inner), "\n", 2)
	if got := strings.Fields(lines[0]); !slices.Contains(got, "memory") || !slices.Contains(got, "pids") || !slices.Contains(got, "cpu") {
		t.Fatalf("the user-mode kernel's cgroup2 root offers %q, want memory, pids and cpu", lines[0])
	}
	for _, name := range pureV2Tests {
		if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).MatchString(string(inner)) {
			t.Errorf("%s did not pass on pure cgroup v2 (skipped or not run):\n%s", name, inner)
		}
	}
	if regexp.MustCompile(`(?m)^\s*--- SKIP`).MatchString(string(inner)) {
		t.Errorf("a test skipped on pure cgroup v2:\n%s", inner)
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
