//go:build linux

package container

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// Containers can outlive the culvert process that made them. When it
// exits without Close (SIGKILL, a crash, the out-of-memory killer, a
// second Ctrl-C), a running function sees its stdin close and usually
// exits, but a pre-created container's init waits on its exec fifo for
// ever, and every libcontainer container leaves its state directory and
// its cgroups behind. Direct starts die with culvert (the life pipe), but
// their cgroups, and those made ahead, stay. So each Runtime writes an
// owner file, StateDir/owners/TAG, naming its process (pid and start
// time), and New removes the containers and cgroups (named cTAG-...)
// whose owner has gone: those of this host's other culvert processes that
// still run are left alone, as are those whose tag has no owner file
// (made by a culvert that did not write one).

const ownersDir = "owners"

// owner identifies a process beyond its pid, which the kernel reuses.
type owner struct {
	pid   int
	start uint64 // in clock ticks after boot: /proc/PID/stat field 22
}

func (o owner) String() string {
	return strconv.Itoa(o.pid) + " " + strconv.FormatUint(o.start, 10) + "\n"
}

// self is this process as an owner.
func self() (owner, error) {
	start, err := procStart(os.Getpid())
	return owner{pid: os.Getpid(), start: start}, err
}

// alive reports whether o still runs: the pid exists and started when o
// did.
func (o owner) alive() bool {
	start, err := procStart(o.pid)
	return err == nil && start == o.start
}

// Fields of /proc/PID/stat, as procStat numbers them: field 3 (the
// state) is f[0].
const (
	statPpid  = 4 - 3
	statStart = 22 - 3 // in clock ticks after boot
)

// procStat returns the fields of /proc/PID/stat after the command name,
// which is in parentheses and may hold spaces and parentheses itself.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) <= statStart {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return f, nil
}

// procStart returns a process's start time.
func procStart(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[statStart], 10, 64)
}

// parseOwner reads an owner file's "PID START".
func parseOwner(b []byte) (owner, error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return owner{}, fmt.Errorf("owner file %q: want \"PID START\"", b)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return owner{}, fmt.Errorf("owner file %q: bad pid", b)
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return owner{}, fmt.Errorf("owner file %q: bad start time", b)
	}
	return owner{pid: pid, start: start}, nil
}

// claimOwner writes this runtime's owner file.
func (r *Runtime) claimOwner() error {
	me, err := self()
	if err != nil {
		return fmt.Errorf("sandbox owner file: %w", err)
	}
	dir := filepath.Join(r.opts.StateDir, ownersDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sandbox owner file: %w", err)
	}
	path := filepath.Join(dir, r.tag)
	if err := os.WriteFile(path+".tmp", []byte(me.String()), 0o600); err != nil {
		return fmt.Errorf("sandbox owner file: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("sandbox owner file: %w", err)
	}
	return nil
}

// releaseOwner removes the owner file, once this runtime has nothing left
// to sweep (Close).
func (r *Runtime) releaseOwner() {
	_ = os.Remove(filepath.Join(r.opts.StateDir, ownersDir, r.tag))
}

// tagOf returns the runtime tag of a container id ("c" TAG "-" N).
func tagOf(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, "c")
	if !ok {
		return "", false
	}
	tag, n, ok := strings.Cut(rest, "-")
	if !ok || tag == "" || n == "" {
		return "", false
	}
	return tag, true
}

// sweepOrphans removes what culvert processes that exited without Close
// left: their libcontainer containers (init SIGKILLed, then Destroy:
// cgroups and state directory) and the cgroups of their direct starts
// (instance cgroups and those made ahead; the life pipe has killed their
// processes), then their owner files. It returns how many containers and
// cgroups it removed. Failures are logged and the owner file kept, for the
// next sweep.
func (r *Runtime) sweepOrphans() int {
	dead := r.deadOwners()
	if len(dead) == 0 {
		return 0
	}
	failed := map[string]bool{}
	removed := 0
	root := filepath.Join(r.opts.StateDir, "containers")
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		tag, ok := tagOf(e.Name())
		if _, gone := dead[tag]; !ok || !gone {
			continue
		}
		if err := destroyOrphan(root, e.Name()); err != nil {
			r.log.Warn("sandbox: could not remove a container left by an exited culvert process", "container", e.Name(), "pid", dead[tag].pid, "error", err)
			failed[tag] = true
			continue
		}
		removed++
	}
	for _, dir := range r.orphanCgroups(dead) {
		tag, _ := tagOf(filepath.Base(dir))
		if err := removeCgroupDir(dir); err != nil {
			r.log.Warn("sandbox: could not remove a cgroup left by an exited culvert process", "cgroup", dir, "pid", dead[tag].pid, "error", err)
			failed[tag] = true
			continue
		}
		removed++
	}
	for tag := range dead {
		if !failed[tag] {
			_ = os.Remove(filepath.Join(r.opts.StateDir, ownersDir, tag))
		}
	}
	if removed > 0 {
		r.log.Warn("sandbox: removed containers and cgroups left by culvert processes that exited without stopping them", "removed", removed, "processes", len(dead))
	}
	return removed
}

// deadOwners returns the owner files of processes that have exited, by
// tag. Containers and cgroups of tags without an owner file are not
// judged.
func (r *Runtime) deadOwners() map[string]owner {
	files, err := os.ReadDir(filepath.Join(r.opts.StateDir, ownersDir))
	if err != nil {
		return nil
	}
	dead := map[string]owner{}
	for _, f := range files {
		tag := f.Name()
		if tag == r.tag || strings.HasSuffix(tag, ".tmp") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.opts.StateDir, ownersDir, tag))
		if err != nil {
			continue
		}
		o, err := parseOwner(b)
		if err != nil {
			r.log.Warn("sandbox: unreadable owner file; its containers are left alone", "tag", tag, "error", err)
			continue
		}
		if !o.alive() {
			dead[tag] = o
		}
	}
	return dead
}

// orphanCgroups lists the instance cgroups of dead tags in every
// hierarchy (the v1 controllers', the named ones and a hybrid layout's
// unified one, as the cgroup manager places them):
// CgroupParent/TENANT/cTAG-....
func (r *Runtime) orphanCgroups(dead map[string]owner) []string {
	m, err := manager.New(&cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent), Resources: &cgroups.Resources{}})
	if err != nil {
		r.log.Warn("sandbox: cannot find the cgroup hierarchies to remove cgroups left behind", "error", err)
		return nil
	}
	var dirs []string
	seen := map[string]bool{}
	for _, parent := range m.GetPaths() {
		if seen[parent] {
			continue // co-mounted controllers
		}
		seen[parent] = true
		tenants, _ := os.ReadDir(parent)
		for _, t := range tenants {
			if !t.IsDir() {
				continue
			}
			insts, _ := os.ReadDir(filepath.Join(parent, t.Name()))
			for _, i := range insts {
				if tag, ok := tagOf(i.Name()); ok && i.IsDir() {
					if _, gone := dead[tag]; gone {
						dirs = append(dirs, filepath.Join(parent, t.Name(), i.Name()))
					}
				}
			}
		}
	}
	return dirs
}

// removeCgroupDir removes an instance cgroup directory, killing what is
// still in it (a process the kernel has not finished killing).
func removeCgroupDir(dir string) error {
	deadline := time.Now().Add(orphanStopWait)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		if b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs")); rerr == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, perr := strconv.Atoi(f); perr == nil {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// orphanStopWait bounds the wait for a killed container's init to be
// gone before it is destroyed.
const orphanStopWait = 5 * time.Second

// destroyOrphan kills a container's processes and destroys it (its
// cgroups and state directory).
func destroyOrphan(root, id string) error {
	c, err := libcontainer.Load(root, id)
	if err != nil {
		if errors.Is(err, libcontainer.ErrNotExist) {
			// A state directory without a state: a creation cut short.
			return os.RemoveAll(filepath.Join(root, id))
		}
		return err
	}
	st, err := c.Status()
	if err != nil {
		return err
	}
	if st != libcontainer.Stopped {
		if err := c.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
			return fmt.Errorf("kill: %w", err)
		}
		deadline := time.Now().Add(orphanStopWait)
		for {
			if st, err = c.Status(); err != nil || st == libcontainer.Stopped {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("still %s %s after SIGKILL", st, orphanStopWait)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return c.Destroy()
}
