//go:build linux

package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// TestCgroupPool: a direct start's cgroup replacement is made once the
// instance is up; the next start of the same tenant and limits takes it
// (its function runs in it, under its limits); its cgroup goes with it;
// Close removes those still waiting.
func TestCgroupPool(t *testing.T) {
	r := newRuntime(t, false)
	spec := hostile("whoami")
	spec.Isolation.Limits = sandbox.Limits{MemoryBytes: 48 << 20, Pids: 16, CPU: 0.5}
	if out, _, ex := run(t, r, spec, "", 10*time.Second); !ex.Success() {
		t.Fatalf("first start: %q, exit %v", out, ex)
	}
	r.cgroups.bg.Wait()
	if ready, taken := r.cgroups.stats(); ready != cgroupSpares || taken != 0 {
		t.Fatalf("after the first start: %d ready, %d taken; want %d ready, none taken", ready, taken, cgroupSpares)
	}
	p, err := r.Start(t.Context(), withName(hostile("sleep", "10")))
	if err != nil {
		t.Fatal(err)
	}
	// Other limits: not served from the pool.
	if _, taken := r.cgroups.stats(); taken != 0 {
		t.Fatalf("a start with other limits took a pooled cgroup")
	}
	_ = p.Kill()
	p.Wait()
	sleeper := hostile("sleep", "10")
	sleeper.Isolation.Limits = spec.Isolation.Limits
	p, err = r.Start(t.Context(), withName(sleeper))
	if err != nil {
		t.Fatal(err)
	}
	inst := p.(*instance)
	if _, taken := r.cgroups.stats(); taken != 1 {
		t.Fatalf("%d taken, want 1", taken)
	}
	paths := inst.cgm.GetPaths()
	if got := cgroupFile(paths, "memory", "memory.limit_in_bytes", "memory.max"); got != strconv.Itoa(48<<20) {
		t.Errorf("memory limit of the pooled cgroup: %q", got)
	}
	// The shim stays out of the instance's cgroup: the pids limit is the
	// function's own.
	if pmax := cgroupFile(paths, "pids", "pids.max", "pids.max"); pmax != "16" {
		t.Errorf("pids.max of the pooled cgroup: %q, want 16", pmax)
	}
	procs := cgroupFile(paths, "pids", "cgroup.procs", "cgroup.procs")
	if got := strings.Fields(procs); len(got) != 1 || got[0] != strconv.Itoa(p.Pid()) {
		t.Errorf("the pids hierarchy's cgroup holds %q, want the function (%d) alone", procs, p.Pid())
	}
	_ = p.Kill()
	p.Wait()
	if _, err := os.Stat(cgroupDir(paths, "memory")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the instance's cgroup stays after Wait: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if left := instanceCgroups(t, r, "t1"); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
}

// cgroupDir is the directory of an instance's cgroup that holds the
// controller's files: the controller's own hierarchy on cgroup v1, the
// unified one on v2.
func cgroupDir(paths map[string]string, controller string) string {
	if cgroups.IsCgroup2UnifiedMode() {
		return paths[""]
	}
	return paths[controller]
}

// cgroupFile reads one file of an instance's cgroup, named v1 or v2 as
// the host mounts cgroups, without its trailing newline.
func cgroupFile(paths map[string]string, controller, v1, v2 string) string {
	name := v1
	if cgroups.IsCgroup2UnifiedMode() {
		name = v2
	}
	b, _ := os.ReadFile(filepath.Join(cgroupDir(paths, controller), name))
	return strings.TrimSpace(string(b))
}

// TestForkServerRestart: direct starts' shims come from the fork server
// (children of this process, waited for with their exit status); a
// server that is killed is replaced at the next start; when none can be
// started, the start execs its shim.
func TestForkServerRestart(t *testing.T) {
	r := newRuntime(t, false)
	// "env" without HOSTILE_ATTEMPT exits 2.
	if _, _, ex := run(t, r, hostile("env"), "", 10*time.Second); ex.Code != 2 {
		t.Fatalf("exit %v, want code 2 (the shim's status, waited for by pid)", ex)
	}
	first := r.server.pid()
	if first == 0 {
		t.Fatal("no fork server after a direct start")
	}
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, first)
	if out, _, ex := run(t, r, hostile("whoami"), "", 10*time.Second); !ex.Success() {
		t.Fatalf("start after the server was killed: %q, exit %v", out, ex)
	}
	second := r.server.pid()
	if second == 0 || second == first || r.server.started != 2 {
		t.Fatalf("server %d (was %d), %d started; want a new one", second, first, r.server.started)
	}
	// No server can start: the start execs its shim.
	_ = syscall.Kill(second, syscall.SIGKILL)
	waitGone(t, second)
	r.server.mu.Lock()
	r.server.exe = "/nonexistent"
	r.server.mu.Unlock()
	p, err := r.Start(t.Context(), withName(hostile("sleep", "10")))
	if err != nil {
		t.Fatalf("start without a fork server: %v", err)
	}
	defer func() { _ = p.Kill(); p.Wait() }()
	ppid := parentOf(t, p.Pid())
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ppid))
	if string(cmdline) != "culvert-spawn\x00" || parentOf(t, ppid) != os.Getpid() {
		t.Errorf("the function's parent is %d (%q), want a shim exec'd by this process", ppid, cmdline)
	}
}

// TestForkServerClose: Close stops the server and waits for it and for
// the shim it forked ahead; no spawner process is left, running or as a
// zombie, and the init cloned ahead is gone too.
func TestForkServerClose(t *testing.T) {
	r := newRuntime(t, false)
	if out, _, ex := run(t, r, hostile("whoami"), "", 10*time.Second); !ex.Success() {
		t.Fatalf("start: %q, exit %v", out, ex)
	}
	time.Sleep(200 * time.Millisecond) // the shim forked ahead clones its init
	kids := spawnerChildren(t)
	if len(kids) != 2 {
		t.Errorf("children before Close: %v, want the server and its shim forked ahead", kids)
	}
	// The init the waiting shim cloned ahead.
	var inits []int
	for _, k := range kids {
		if f := strings.Fields(k); f[1] == waitingName {
			pid, _ := strconv.Atoi(f[0])
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
			for _, c := range strings.Fields(string(b)) {
				n, _ := strconv.Atoi(c)
				inits = append(inits, n)
			}
		}
	}
	if len(inits) != 1 {
		t.Errorf("the waiting shim's children: %v, want its init", inits)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if kids := spawnerChildren(t); len(kids) > 0 {
		t.Errorf("children left after Close: %v", kids)
	}
	for _, pid := range inits {
		waitGone(t, pid)
	}
}

// spawnerChildren lists this process's children that are the spawner's:
// the fork server ("exe", started as /proc/self/exe) and shims (forked
// ahead, or of a start), running or zombies, as "pid comm state".
func spawnerChildren(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, pid := range children() {
		switch c := comm(pid); c {
		case "exe", startedName, waitingName:
			if f, err := procStat(pid); err == nil {
				out = append(out, strconv.Itoa(pid)+" "+c+" "+f[0])
			}
		}
	}
	return out
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// TestSpawnCancel: a direct start stuck before the function's exec ends
// when its ctx does, or at the runtime's bound, and leaves nothing behind.
func TestSpawnCancel(t *testing.T) {
	r := newRuntime(t, false)
	r.holdRequest = true // the shim waits for the request's last byte for ever
	for _, tt := range []struct {
		name    string
		timeout time.Duration // of ctx
		bound   time.Duration // the runtime's
		want    string
	}{
		{"ctx", 200 * time.Millisecond, 30 * time.Second, "cancelled before the function was exec'd: context deadline exceeded"},
		{"bound", time.Minute, 200 * time.Millisecond, "was not exec'd within 200ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.spawnTimeout = tt.bound
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			t0 := time.Now()
			_, err := r.Start(ctx, withName(hostile("whoami")))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("start: %v, want %q", err, tt.want)
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Errorf("start returned after %v", d)
			}
			if kids := shimChildren(t); len(kids) > 0 {
				t.Errorf("shims left running: %v", kids)
			}
			if left := instanceCgroups(t, r, "t1"); len(left) > 0 {
				t.Errorf("cgroups left behind: %v", left)
			}
		})
	}
}

// The life pipe test's helper: a culvert-like process (this test binary,
// re-executed) that starts a direct instance, prints the pids and cgroup
// directories to watch, and waits to be killed.
const lifeHelperEnv = "CULVERT_TEST_LIFE_HELPER"

func lifeHelper() int {
	hostileBin = os.Getenv("CULVERT_TEST_HOSTILE")
	state := os.Getenv(lifeHelperEnv)
	r, err := New(Options{StateDir: state, CgroupParent: testCgroupParent(state) + "-life", Logger: nil})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	// A function that ignores EOF and SIGTERM: only SIGKILL ends it.
	p, err := r.Start(context.Background(), sandbox.Spec{Name: "life", Path: hostileBin, Args: []string{"sleep", "600"}, Tenant: "t1", Env: []string{"PATH=/bin"}})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	inst := p.(*instance)
	// The next start's shim, forked ahead, and the init it cloned ahead.
	time.Sleep(200 * time.Millisecond)
	r.server.mu.Lock()
	waiting := waitingShims(r.server.sockIno, r.server.cmd.Process.Pid)
	r.server.mu.Unlock()
	if len(waiting) != 1 {
		fmt.Println("ERR waiting shims", waiting)
		return 1
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", waiting[0], waiting[0]))
	preinit, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	fmt.Println("PIDS", inst.shim.Pid, p.Pid(), r.server.pid(), waiting[0], preinit, strings.Join(mapValues(inst.cgm.GetPaths()), " "))
	select {}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestLifePipe: when the culvert process is SIGKILLed, its direct
// instances' shims and inits, its fork server, the shim it forked ahead
// and the init that one cloned ahead are gone within a second or two, and
// the instances' cgroups can be removed.
func TestLifePipe(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip("cannot sandbox here: ", err)
	}
	state := t.TempDir()
	_ = os.Chmod(filepath.Dir(state), 0o711)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lifeHelperEnv+"="+state, "CULVERT_TEST_HOSTILE="+hostileBin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 7 || f[0] != "PIDS" {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	names := []string{"shim", "init", "server", "shim forked ahead", "init cloned ahead"}
	var pids []int
	for _, s := range f[1:6] {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("helper said %q", line)
		}
		pids = append(pids, n)
	}
	for i, pid := range pids {
		if !alive(pid) {
			t.Fatalf("%s %d is not running before the kill", names[i], pid)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	_, _ = io.Copy(io.Discard, out)
	deadline := time.Now().Add(2 * time.Second)
	for i, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s %d still running 2s after culvert was killed", names[i], pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The instance's cgroup can be removed; then the tenant's and the
	// parent's, with the cgroups the helper had made ahead.
	for _, dir := range f[6:] {
		if err := rmdirRetry(dir); err != nil {
			t.Errorf("removing the instance's cgroup %s: %v", dir, err)
		}
		parent := dir
		for b := filepath.Base(parent); !(strings.HasPrefix(b, "culvert-test-") && strings.HasSuffix(b, "-life")) && parent != "/"; b = filepath.Base(parent) {
			parent = filepath.Dir(parent)
		}
		removeTree(parent)
	}
}

// rmdirRetry removes a cgroup directory, waiting out EBUSY (its last task
// still leaving).
func rmdirRetry(dir string) error {
	var err error
	for try := 0; try < 100; try++ {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// removeTree removes a cgroup directory and the cgroups below it.
func removeTree(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			removeTree(filepath.Join(dir, e.Name()))
		}
	}
	_ = rmdirRetry(dir)
}
