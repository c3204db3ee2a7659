//go:build linux

package container

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox/container/internal/spawn"
)

// life is the runtime's life pipe. The runtime holds the write end for as
// long as its process lives and never writes to it; every shim and the
// fork server hold the read end and poll it. When the culvert process
// ends, however it ends (SIGKILL, a crash), the kernel closes the write
// end, the read end hangs up, and each shim kills its container's init
// (pid 1 of its pid namespace: the kernel kills the rest with it) and the
// fork server exits. No thread's lifetime is involved, unlike
// PR_SET_PDEATHSIG on a child of a Go process.
type life struct {
	r, w *os.File
}

func newLife() (*life, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("sandbox: life pipe: %w", err)
	}
	return &life{r: r, w: w}, nil
}

// forkServer is the runtime's long-lived spawner: the culvert binary
// started once in the spawner's server mode (C, before the Go runtime,
// single-threaded). Each direct start sends it its five descriptors
// (stdin, stdout and stderr ends, the request pipe's read end, the status
// pipe's write end) over a unix socket (SOCK_SEQPACKET, SCM_RIGHTS); the
// server forks the shim with CLONE_PARENT, so that the shim is this
// process's child; the shim reports its pid on the status pipe. No exec
// per start.
type forkServer struct {
	life *life
	exe  string // the binary to start in server mode: /proc/self/exe

	mu      sync.Mutex
	cmd     *exec.Cmd
	sock    int           // this side of the socket pair, or -1
	sockIno uint64        // the server's side's inode, which its waiting shim holds
	exited  chan struct{} // closed once cmd has been waited for
	started int           // servers started, for tests
	closed  bool
}

var errServerClosed = errors.New("sandbox: the fork server is closed")

// startLocked starts the server. s.mu is held.
func (s *forkServer) startLocked() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fork server: socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "spawn-server-socket")
	defer theirs.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fds[1], &st); err != nil {
		_ = unix.Close(fds[0])
		return fmt.Errorf("fork server: socket: %w", err)
	}
	cmd := &exec.Cmd{
		Path: s.exe, Args: []string{"culvert-spawn-server"},
		Env:        []string{spawn.Env + "=" + spawn.ServerEnvValue},
		ExtraFiles: []*os.File{theirs, s.life.r}, // fds 3 and 4
	}
	if err := cmd.Start(); err != nil {
		_ = unix.Close(fds[0])
		return fmt.Errorf("fork server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.sock, s.sockIno, s.exited = cmd, fds[0], st.Ino, exited
	s.started++
	return nil
}

// stopLocked kills the server and waits for it, and for the shim it
// forked ahead, which exits when the socket closes. s.mu is held.
func (s *forkServer) stopLocked() {
	if s.cmd == nil {
		return
	}
	// The server first: then no shim is forked while the others are
	// found. A shim it forked still holds the server's socket, whether
	// or not it has named itself yet; one that took a start has closed it.
	_ = s.cmd.Process.Kill()
	<-s.exited
	waiting := waitingShims(s.sockIno, 0)
	_ = unix.Close(s.sock)
	s.cmd, s.sock = nil, -1
	for _, pid := range waiting {
		reapWaiting(pid)
	}
	reapStrayWaiting()
}

// waitingName is the name (comm) of a shim forked ahead until it takes a
// start: it takes the name "culvert-spawn" first thing when it does, and
// whoever starts it reaps it from then on.
const waitingName = "culvert-spawn-w"

// children lists this process's children.
func children() []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

func comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// startedName is the name a shim takes when it takes a start.
const startedName = "culvert-spawn"

// waitingShims returns the children but server that hold the server
// socket whose inode is ino and have not taken a start: the shim that
// server forked ahead.
func waitingShims(ino uint64, server int) []int {
	var out []int
	want := "socket:[" + strconv.FormatUint(ino, 10) + "]"
	for _, pid := range children() {
		if pid == server || comm(pid) == startedName {
			continue
		}
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if l, _ := os.Readlink(dir + "/" + e.Name()); l == want {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// reapStrayWaiting reaps the children that exited as shims forked ahead
// without taking a start (zombies named waitingName), of any server of
// this process: one that a stop could not find (it exited first) is
// reaped at the next. A shim that took a start is named otherwise before
// it does anything, so none of those is touched.
func reapStrayWaiting() {
	for _, pid := range children() {
		if comm(pid) != waitingName {
			continue
		}
		if f, err := procStat(pid); err == nil && f[0] == "Z" {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// reapWaiting waits for a shim forked ahead to exit, its socket closed,
// and reaps it, unless it took a start after all (one sent just before
// the socket closed): then its start reaps it. One still waiting after a
// while is killed.
func reapWaiting(pid int) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		if c := comm(pid); c == startedName || c == "" {
			return // took a start, or gone
		}
		if f, err := procStat(pid); err != nil || f[0] == "Z" || time.Now().After(deadline) {
			if err == nil && f[0] != "Z" {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, 0, nil)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// fork sends files to the server, which forks a shim holding them as
// its fds 0-4; the shim reports its pid on the status pipe (files[4]). A
// server that has died is restarted first. An error means no shim holds
// the files: the start may exec its shim instead.
func (s *forkServer) fork(files [5]*os.File) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errServerClosed
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if s.cmd != nil {
			select {
			case <-s.exited:
				s.stopLocked()
			default:
			}
		}
		if s.cmd == nil {
			if err = s.startLocked(); err != nil {
				return err
			}
		}
		// A whole message or none (SOCK_SEQPACKET); EPIPE or ECONNRESET
		// when the server has gone: try a new one.
		if err = unix.Sendmsg(s.sock, []byte{1}, unix.UnixRights(fds...), nil, unix.MSG_NOSIGNAL); err == nil {
			return nil
		}
		err = fmt.Errorf("fork server: send: %w", err)
		s.stopLocked()
	}
	return err
}

// reset stops the server (one that took a start's descriptors and
// forked no shim in time): the next start starts a new one.
func (s *forkServer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// close stops the server. Shims it forked are this process's children
// and are not affected.
func (s *forkServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.stopLocked()
}

// pid returns the running server's pid, or 0 (for tests).
func (s *forkServer) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}
