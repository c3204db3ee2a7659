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

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// Containers can outlive the culvert process that made them. When it
// exits without Close (SIGKILL, a crash, the out-of-memory killer, a
// second Ctrl-C), a running function sees its stdin close and usually
// exits, but a pre-created container's init waits on its exec fifo for
// ever, and every libcontainer container leaves its state directory and
// its cgroups behind. So each Runtime writes an owner file,
// StateDir/owners/TAG, naming its process (pid and start time), and New
// removes the containers whose owner has gone: those of this host's other
// culvert processes that still run are left alone, as are containers
// whose tag has no owner file (made by a culvert that did not write one).

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

// procStart reads a process's start time from /proc/PID/stat.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// and parentheses itself: the fields after it follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // field 22; f[0] is field 3
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[startField], 10, 64)
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

// sweepOrphans kills and destroys the libcontainer containers in the state
// directory whose owner has exited, and removes their owner files. It
// returns how many containers it removed. Errors are logged: a sweep that
// fails leaves things as they were, for the next one.
func (r *Runtime) sweepOrphans() int {
	root := filepath.Join(r.opts.StateDir, "containers")
	entries, err := os.ReadDir(root)
	if err != nil {
		return 0
	}
	dead := map[string]owner{} // owner files of exited processes, by tag
	live := map[string]bool{r.tag: true}
	removed := 0
	for _, e := range entries {
		tag, ok := tagOf(e.Name())
		if !ok || live[tag] {
			continue
		}
		if _, ok := dead[tag]; !ok {
			b, err := os.ReadFile(filepath.Join(r.opts.StateDir, ownersDir, tag))
			if err != nil {
				live[tag] = true // no owner file: not ours to judge
				continue
			}
			o, err := parseOwner(b)
			if err != nil {
				r.log.Warn("sandbox: unreadable owner file; its containers are left alone", "tag", tag, "error", err)
				live[tag] = true
				continue
			}
			if o.alive() {
				live[tag] = true
				continue
			}
			dead[tag] = o
		}
		if err := destroyOrphan(root, e.Name()); err != nil {
			r.log.Warn("sandbox: could not remove a container left by an exited culvert process", "container", e.Name(), "pid", dead[tag].pid, "error", err)
			continue
		}
		removed++
	}
	for tag, o := range dead {
		_ = os.Remove(filepath.Join(r.opts.StateDir, ownersDir, tag))
		r.log.Warn("sandbox: removed containers left by a culvert process that exited without stopping them", "pid", o.pid)
	}
	// Owner files of exited processes that left no container behind.
	if files, err := os.ReadDir(filepath.Join(r.opts.StateDir, ownersDir)); err == nil {
		for _, f := range files {
			if live[f.Name()] || strings.HasSuffix(f.Name(), ".tmp") {
				continue
			}
			path := filepath.Join(r.opts.StateDir, ownersDir, f.Name())
			if b, err := os.ReadFile(path); err == nil {
				if o, err := parseOwner(b); err == nil && !o.alive() {
					_ = os.Remove(path)
				}
			}
		}
	}
	return removed
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
