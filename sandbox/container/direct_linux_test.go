//go:build linux

package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container/internal/spawn"
)

// TestColdEnvironment: a cold start of a spec with a StartEnv (exec mode)
// gives the function its base and per-start environment and exactly its
// stdin; it holds no descriptor above 2, and neither its own exe nor pid
// 1's is the culvert binary, on both cold paths (TestLauncher checks the
// same through the launcher).
func TestColdEnvironment(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		spec := hostile("env")
		spec.Name, spec.Env = "coldenv", []string{"PATH=/usr/bin:/bin", "BASE=1", "X=base"}
		spec.StartEnv = []string{"HOSTILE_ATTEMPT=launched", "X=a b=c"}
		stdin := "the record\x00\n\xffbytes"
		want := fmt.Sprintf("OK fds= exe=%s pid1=%s BASE=1 X=a b=c FN= stdin=%q\n", hostileBin, hostileBin, stdin)
		out, stderr, ex := run(t, r, spec, stdin, 20*time.Second)
		if out != want || !ex.Success() {
			t.Fatalf("stdout %q (exit %v, stderr %q), want %q", out, ex, stderr, want)
		}
	})
}

// TestColdPathEvidence: the host's view of a running function shows which
// path started it. On the direct path its parent is the shim (this binary
// started as "culvert-spawn", a child of this process); on libcontainer's
// its parent is this process itself.
func TestColdPathEvidence(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		p, err := r.Start(t.Context(), withName(hostile("sleep", "5")))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = p.Kill(); p.Wait() }()
		ppid := parentOf(t, p.Pid())
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
		if r.opts.StockCold {
			if ppid != os.Getpid() {
				t.Errorf("the function's parent is %d (%q), want this process", ppid, cmdline)
			}
			return
		}
		if !isShim(cmdline) || parentOf(t, ppid) != os.Getpid() {
			t.Errorf("the function's parent is %d (%q), want the shim, a child of this process", ppid, cmdline)
		}
	})
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PPid:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no PPid in /proc/%d/status", pid)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestDirectSpawnFailure: a step of the direct path that fails is
// reported with the instance's name, the step and its errno, and leaves
// no process and no cgroup behind.
func TestDirectSpawnFailure(t *testing.T) {
	r := newRuntime(t, false)
	dir := t.TempDir()
	_ = os.Chmod(filepath.Dir(dir), 0o711)
	_ = os.Chmod(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "fn"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(dir, "gone")
	if err := os.WriteFile(gone, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	noCmd := sandbox.Spec{Name: "nocmd", Path: "/nope", Tenant: "t1"}
	noCmd.Isolation.Root.Dir = dir
	bindGone := hostile("whoami")
	bindGone.Name, bindGone.Isolation.Root.Binds = "bindgone", []string{gone}
	// The bind's root is built while its source exists; the source goes
	// before the start that fails.
	if out, _, ex := run(t, r, bindGone, "", 10*time.Second); !ex.Success() {
		t.Fatalf("with the bind's source there: exit %v, stdout %q", ex, out)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		spec sandbox.Spec
		want string
	}{
		{noCmd, "start nocmd: spawn: find command /nope: no such file or directory"},
		{bindGone, "start bindgone: spawn: bind " + gone + ": no such file or directory"},
	} {
		_, err := r.Start(t.Context(), withName(tt.spec))
		var f *spawn.Failure
		if err == nil || err.Error() != tt.want || !errors.As(err, &f) {
			t.Errorf("start: %v, want %q (a *spawn.Failure)", err, tt.want)
		}
		if kids := shimChildren(t); len(kids) > 0 {
			t.Errorf("%s: shims left running: %v", tt.spec.Name, kids)
		}
		if left := instanceCgroups(t, r, "t1"); len(left) > 0 {
			t.Errorf("%s: cgroups left behind: %v", tt.spec.Name, left)
		}
	}
	if st := r.Stats(); st.Direct != 1 {
		t.Errorf("stats %+v: want the one start that worked", st)
	}
}

// isShim reports whether cmdline is a shim's: "culvert-spawn", exec'd,
// or forked by the fork server (its argv[0], "culvert-spawn-server",
// overwritten with NULs after the name).
func isShim(cmdline []byte) bool {
	return strings.TrimRight(string(cmdline), "\x00") == "culvert-spawn"
}

// shimChildren lists this process's children that are shims.
func shimChildren(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, pid := range children() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if isShim(cmdline) {
			out = append(out, pid)
		}
	}
	return out
}

// instanceCgroups lists the cgroups left under tenant's cgroup, in every
// hierarchy, but for those made ahead and waiting in the runtime's pool.
func instanceCgroups(t *testing.T, r *Runtime, tenant string) []string {
	t.Helper()
	r.cgroups.bg.Wait() // refills under way
	pooled := map[string]bool{}
	r.cgroups.mu.Lock()
	for _, rs := range r.cgroups.ready {
		for _, c := range rs {
			for _, p := range append(c.paths, c.optPaths...) {
				pooled[p] = true
			}
		}
	}
	r.cgroups.mu.Unlock()
	cg := &cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent, cgroupName(tenant)), Resources: &cgroups.Resources{}}
	m, err := manager.New(cg)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range m.GetPaths() {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if e.IsDir() && !pooled[filepath.Join(p, e.Name())] {
				out = append(out, filepath.Join(p, e.Name()))
			}
		}
	}
	return out
}

// TestShimRejectsBadRequests: the C decoder refuses what the format does
// not allow, and says so on the status pipe.
func TestShimRejectsBadRequests(t *testing.T) {
	good, err := (&spawn.Request{Root: "/nonexistent", UIDMap: "0 100000 1\n", GIDMap: "0 100000 1\n", Args: []string{"/fn"}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	withBody := func(body []byte) []byte {
		b := append([]byte("CVSP\x01\x00\x00\x00"), byte(len(body)), byte(len(body)>>8), 0, 0)
		return append(b, body...)
	}
	for _, tt := range []struct {
		name string
		req  []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("XXXX"), good[4:]...)},
		{"version 2", append([]byte("CVSP\x02"), good[5:]...)},
		{"truncated body", good[:len(good)-3]},
		{"unknown record", withBody([]byte{99, 0, 0, 0, 0, 0})},
		{"record past the end", withBody([]byte{1, 0, 50, 0, 0, 0, '/'})},
		{"NUL in a string", withBody([]byte{1, 0, 3, 0, 0, 0, '/', 0, 'x'})},
		{"no root", withBody(nil)},
		{"bad rlimit", withBody([]byte{11, 0, 3, 0, 0, 0, 1, 2, 3})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reqR, reqW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			stR, stW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer stR.Close()
			cmd := &exec.Cmd{Path: "/proc/self/exe", Args: []string{"culvert-spawn"}, Env: []string{spawn.Env + "=" + spawn.EnvValue}, ExtraFiles: []*os.File{reqR, stW}}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			reqR.Close()
			stW.Close()
			_, _ = reqW.Write(tt.req)
			reqW.Close()
			if _, err := spawn.ReadShimPid(stR); err != nil {
				t.Fatal(err)
			}
			_, err = spawn.ReadPid(stR)
			var f *spawn.Failure
			if !errors.As(err, &f) || !strings.HasPrefix(f.Step, "read request") {
				t.Errorf("got %v, want a failure of the step \"read request\"", err)
			}
			if err := cmd.Wait(); err == nil {
				t.Error("the shim exited 0")
			}
		})
	}
}

// TestInitClonedAhead: with the fork server, a direct start's init was
// cloned before the start was asked for (its process is older than the
// Start call), and without it (Options.ExecShim) at the start; either
// way the function sees its own cgroup as the root of its cgroup
// namespace, which the init enters once it is in its cgroups.
func TestInitClonedAhead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		ahead bool
	}{
		{"fork server", Options{}, true},
		{"exec'd shim", Options{ExecShim: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntimeWith(t, tc.opts)
			out, _, ex := run(t, r, hostile("cat", "/proc/self/cgroup"), "", 10*time.Second)
			lines, ok := strings.CutPrefix(strings.TrimSpace(out), "OK ")
			if !ex.Success() || !ok {
				t.Fatalf("cat /proc/self/cgroup: %q, exit %v", out, ex)
			}
			for _, l := range strings.Split(lines, ";") {
				// "ID:CONTROLLERS:PATH"; a named hierarchy joined only
				// where possible is left out.
				if f := strings.SplitN(l, ":", 3); len(f) != 3 || (f[2] != "/" && !strings.HasPrefix(f[1], "name=")) {
					t.Errorf("/proc/self/cgroup line %q: want the cgroup namespace rooted at the instance's cgroup", l)
				}
			}
			// The shim forked ahead clones its init at once (at the
			// lowest priority, so later on a loaded machine): wait for
			// it, and some clock ticks more, then start. Without a
			// server there is none to wait for; the start must still
			// clone its own.
			if tc.ahead {
				waitClonedAhead(t)
			}
			time.Sleep(300 * time.Millisecond)
			before := uptimeTicks(t)
			p, err := r.Start(t.Context(), withName(hostile("sleep", "5")))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = p.Kill(); p.Wait() }()
			started, err := procStart(p.Pid())
			if err != nil {
				t.Fatal(err)
			}
			// Clock ticks (1/100 s): ahead is at least 20 ms before Start.
			if ahead := started+2 <= before; ahead != tc.ahead {
				t.Errorf("the function's process started at tick %d, Start was called at tick %d: cloned ahead %v, want %v", started, before, ahead, tc.ahead)
			}
			if st := r.Stats(); st.Direct != 2 {
				t.Errorf("stats %+v: want 2 direct starts", st)
			}
			// The init cloned ahead mounts its /proc ahead too, and its
			// shim its /dev, where the kernel mounts on detached mounts;
			// the start attaches them, masked and read-only where a
			// start's own would be.
			out, _, ex = run(t, r, hostile("cat", "/proc/keys"), "", 10*time.Second)
			if strings.TrimSpace(out) != "OK" || !ex.Success() {
				t.Errorf("cat /proc/keys: %q, exit %v; want it masked (empty)", out, ex)
			}
			out, _, _ = run(t, r, hostile("proc-sys"), "", 10*time.Second)
			if !strings.HasPrefix(out, "DENIED") {
				t.Errorf("proc-sys: %q; want the write to /proc/sys denied", out)
			}
			out, _, _ = run(t, r, hostile("write", "/dev/pwned"), "", 10*time.Second)
			if !strings.HasPrefix(out, "DENIED") {
				t.Errorf("write /dev/pwned: %q; want /dev read-only", out)
			}
			out, _, ex = run(t, r, hostile("devices"), "", 10*time.Second)
			if strings.TrimSpace(out) != "OK null,random,urandom,zero" || !ex.Success() {
				t.Errorf("devices: %q, exit %v; want the four device nodes", out, ex)
			}
			want := tc.ahead && detachedMounts(t)
			if st := r.Stats(); (st.ProcAhead > 0) != want || (st.DevAhead > 0) != want {
				t.Errorf("stats %+v: /proc made ahead %v, /dev %v, want %v (kernel %s)", st, st.ProcAhead > 0, st.DevAhead > 0, want, kernelRelease(t))
			}
		})
	}
}

// waitClonedAhead waits until a shim forked ahead (this process's child,
// named waitingName) has cloned its init.
func waitClonedAhead(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, pid := range children() {
			if comm(pid) != waitingName {
				continue
			}
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); len(strings.Fields(string(b))) > 0 {
				return
			}
		}
	}
	t.Fatal("no shim forked ahead cloned an init within a minute")
}

// kernelRelease is uname -r.
func kernelRelease(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// detachedMounts says whether this kernel mounts on detached mounts
// (Linux 6.15), which an init needs to make its /proc ahead.
func detachedMounts(t *testing.T) bool {
	var major, minor int
	if _, err := fmt.Sscanf(kernelRelease(t), "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", kernelRelease(t), err)
	}
	return major > 6 || (major == 6 && minor >= 15)
}

// uptimeTicks is the time since boot in clock ticks (USER_HZ, 100), the
// unit of a process's start time in /proc/PID/stat.
func uptimeTicks(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(s * 100)
}

// TestBurstStarts: starts that come faster than the fork server makes
// shims ahead (it waits a little after each start, and an init cloned
// ahead takes a while) all run: a start that finds no shim waiting has
// one forked at once, and one whose shim has no init yet clones its own.
func TestBurstStarts(t *testing.T) {
	r := newRuntime(t, false)
	const n = 6
	errs := make(chan error, n)
	for i := range n {
		go func() {
			spec := hostile("whoami")
			spec.Name = fmt.Sprintf("burst%d", i)
			spec.Env = []string{"PATH=/usr/bin:/bin"}
			p, err := r.Start(context.Background(), spec)
			if err != nil {
				errs <- fmt.Errorf("start %d: %w", i, err)
				return
			}
			_ = p.Stdin().Close()
			timer := time.AfterFunc(20*time.Second, func() { _ = p.Kill() })
			defer timer.Stop()
			out, _ := io.ReadAll(p.Stdout())
			if ex := p.Wait(); !ex.Success() || !strings.HasPrefix(string(out), "OK uid=0") {
				errs <- fmt.Errorf("start %d: %q, exit %v", i, out, ex)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if st := r.Stats(); st.Direct != n {
		t.Errorf("stats %+v: want %d direct starts", st, n)
	}
}
