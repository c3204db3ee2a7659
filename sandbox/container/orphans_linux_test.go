//go:build linux

package container

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"

	"github.com/culvert-dev/culvert/sandbox"
)

// The test binary, started with these set, is a culvert process that
// leaves containers behind (orphanMain), for TestOrphansSwept to SIGKILL.
const (
	orphanStateEnv  = "CULVERT_TEST_ORPHAN_STATE"
	orphanParentEnv = "CULVERT_TEST_ORPHAN_CGROUP"
	orphanBinEnv    = "CULVERT_TEST_ORPHAN_BIN"
)

func init() {
	if os.Getenv(orphanStateEnv) != "" {
		if err := orphanMain(); err != nil {
			fmt.Fprintln(os.Stderr, "orphan maker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// orphanMain makes a runtime on the given state directory, keeps two
// containers waiting for a spec, one running its function and a direct
// start of another spec running, prints READY, and waits to be killed.
func orphanMain() error {
	r, err := New(Options{
		StateDir: os.Getenv(orphanStateEnv), CgroupParent: os.Getenv(orphanParentEnv),
		Precreate: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	spec := sandbox.Spec{Name: "orphan", Path: os.Getenv(orphanBinEnv), Args: []string{"sleep", "120"}, Tenant: "t1",
		Env: []string{"PATH=/usr/bin:/bin"}, Stderr: io.Discard}
	r.Precreate(spec, 2)
	if _, err := r.Start(context.Background(), spec); err != nil {
		return err
	}
	// A spec never pre-created starts cold, through the direct spawner:
	// its cgroup is not libcontainer's.
	cold := spec
	cold.Args = []string{"sleep", "119"}
	if _, err := r.Start(context.Background(), cold); err != nil {
		return err
	}
	if st := r.Stats(); st.Direct != 1 {
		return fmt.Errorf("the cold start did not take the direct path: %+v", st)
	}
	// Wait until two are waiting again (the start took one).
	for deadline := time.Now().Add(30 * time.Second); r.waiting() < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the spares were not refilled: %d waiting", r.waiting())
		}
	}
	fmt.Println("READY")
	select {}
}

// leftover is a container of the state directory, as found on disk.
type leftover struct {
	id     string
	pid    int
	cgroup *cgroups.Cgroup
}

func leftovers(t *testing.T, state string) []leftover {
	t.Helper()
	root := filepath.Join(state, "containers")
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []leftover
	for _, e := range entries {
		c, err := libcontainer.Load(root, e.Name())
		if err != nil {
			t.Fatalf("load %s: %v", e.Name(), err)
		}
		st, err := c.State()
		if err != nil {
			t.Fatalf("state of %s: %v", e.Name(), err)
		}
		cg := c.Config().Cgroups
		out = append(out, leftover{id: e.Name(), pid: st.InitProcessPid, cgroup: &cgroups.Cgroup{Path: cg.Path, Resources: &cgroups.Resources{}}})
	}
	return out
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && len(b) > i+2 && b[i+2] != 'Z' && b[i+2] != 'X'
}

// TestOrphansSwept: a culvert process killed with SIGKILL leaves its
// containers (two waiting on their exec fifo, one running its function)
// with their cgroups; the next runtime on the same state directory kills
// and removes them, and its owner file. A live runtime's containers stay.
func TestOrphansSwept(t *testing.T) {
	live := newRuntime(t, true)
	state, parent := live.opts.StateDir, live.opts.CgroupParent
	spec := withName(hostile("sleep", "120"))
	live.Precreate(spec, 1)
	waitUntil(t, "the live runtime's spare", func() bool { return live.waiting() == 1 })

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), orphanStateEnv+"="+state, orphanParentEnv+"="+parent, orphanBinEnv+"="+hostileBin)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "READY\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("orphan maker said %q", line)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("orphan maker not ready after 60s")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	var mine, orphans []leftover
	for _, l := range leftovers(t, state) {
		if tag, _ := tagOf(l.id); tag == live.tag {
			mine = append(mine, l)
		} else {
			orphans = append(orphans, l)
		}
	}
	// What the sweep must remove is there: without it, it stays.
	if len(orphans) < 3 || len(mine) != 1 {
		t.Fatalf("%d containers of the killed process, %d of the live one; want at least 3 and 1", len(orphans), len(mine))
	}
	time.Sleep(200 * time.Millisecond)
	for _, l := range orphans {
		if !running(l.pid) {
			t.Fatalf("container %s's init (pid %d) died with its owner; nothing to sweep", l.id, l.pid)
		}
	}
	// The direct start's cgroups (its own and those made ahead) are
	// named after its runtime's tag like the containers.
	deadTag, _ := tagOf(orphans[0].id)
	direct := cgroupDirs(t, parent, deadTag)
	if !slices.ContainsFunc(direct, func(d string) bool { return strings.Contains(filepath.Base(d), "-g") }) {
		t.Fatalf("no cgroup of the killed process's direct start among %v", direct)
	}

	next, err := New(Options{StateDir: state, CgroupParent: parent, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	waitUntil(t, "the orphans' inits to die", func() bool {
		return !slices.ContainsFunc(orphans, func(l leftover) bool { return running(l.pid) })
	})
	for _, l := range orphans {
		if _, err := os.Stat(filepath.Join(state, "containers", l.id)); !os.IsNotExist(err) {
			t.Errorf("state directory of %s still there (%v)", l.id, err)
		}
		if m, err := manager.New(l.cgroup); err == nil && m.Exists() {
			t.Errorf("cgroup %s of %s still there", l.cgroup.Path, l.id)
		}
	}
	if left := cgroupDirs(t, parent, deadTag); len(left) > 0 {
		t.Errorf("cgroups of the killed process still there: %v", left)
	}
	owners, _ := os.ReadDir(filepath.Join(state, ownersDir))
	var names []string
	for _, o := range owners {
		names = append(names, o.Name())
	}
	slices.Sort(names)
	want := []string{live.tag, next.tag}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("owner files %v, want the live runtimes' %v", names, want)
	}
	// The live runtime's container is untouched and still serves a start.
	if !running(mine[0].pid) {
		t.Fatalf("the live runtime's waiting container (pid %d) was killed", mine[0].pid)
	}
	got, _, ex := run(t, live, spec, "", 20*time.Second)
	if st := live.Stats(); st.Precreated != 1 {
		t.Errorf("the live runtime's start was not served by its waiting container: %+v (output %q, exit %v)", st, got, ex)
	}
}

// cgroupDirs lists the cgroups of runtime tag under parent, in every
// hierarchy of a cgroup v1 or v2 host.
func cgroupDirs(t *testing.T, parent, tag string) []string {
	t.Helper()
	var dirs []string
	for _, pattern := range []string{"/sys/fs/cgroup/*/" + parent + "/*/c" + tag + "-*", "/sys/fs/cgroup/" + parent + "/*/c" + tag + "-*"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, m...)
	}
	return dirs
}

func TestOwnerFile(t *testing.T) {
	me, err := self()
	if err != nil {
		t.Fatal(err)
	}
	if !me.alive() {
		t.Fatal("this process is not alive by its own owner record")
	}
	for _, tc := range []struct {
		in    string
		want  owner
		alive bool
		err   bool
	}{
		{me.String(), me, true, false},
		{fmt.Sprintf("%d %d\n", me.pid, me.start+1), owner{me.pid, me.start + 1}, false, false}, // the pid, reused
		{"2147483646 5", owner{2147483646, 5}, false, false},
		{"", owner{}, false, true},
		{"12", owner{}, false, true},
		{"0 5", owner{}, false, true},
		{"x 5", owner{}, false, true},
		{"12 y", owner{}, false, true},
		{"1 2 3", owner{}, false, true},
	} {
		o, err := parseOwner([]byte(tc.in))
		if (err != nil) != tc.err || o != tc.want {
			t.Errorf("parseOwner(%q) = %+v, %v; want %+v (error %v)", tc.in, o, err, tc.want, tc.err)
			continue
		}
		if err == nil && o.alive() != tc.alive {
			t.Errorf("%q alive: %v, want %v", tc.in, o.alive(), tc.alive)
		}
	}
}

func TestTagOf(t *testing.T) {
	for _, tc := range []struct {
		id, tag string
		ok      bool
	}{
		{"c0a1b2c3d-12", "0a1b2c3d", true},
		{"cdeadbeef-1", "deadbeef", true},
		{"deadbeef-1", "", false},
		{"cdeadbeef", "", false},
		{"c-1", "", false},
		{"cdeadbeef-", "", false},
	} {
		tag, ok := tagOf(tc.id)
		if tag != tc.tag || ok != tc.ok {
			t.Errorf("tagOf(%q) = %q, %v; want %q, %v", tc.id, tag, ok, tc.tag, tc.ok)
		}
	}
}

func TestProcStartCommandWithParens(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	dir := t.TempDir()
	bin := filepath.Join(dir, "a) b")
	if err := os.Symlink("/bin/sleep", bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	start, err := procStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := procStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if start < mine {
		t.Fatalf("child started at %d, before this process (%d): wrong field", start, mine)
	}
}
