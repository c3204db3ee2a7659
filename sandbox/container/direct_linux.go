//go:build linux

package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container/internal/spawn"
)

// The direct cold path. The container is described by the same
// *configs.Config as on libcontainer's path (containerConfig); its
// cgroup is made by the same cgroup manager; its seccomp program is
// compiled once per Runtime from the same profile. What replaces
// libcontainer's per-start init (the culvert binary re-executed, its Go
// runtime and package inits, nsexec's three stages, the Go init's mounts
// and libseccomp's compile) is the C shim and init of package spawn,
// which run before the Go runtime of a fresh start of this binary.

// seccompProgram returns the runtime's compiled seccomp program.
func (r *Runtime) seccompProgram() ([]byte, error) {
	r.bpfOnce.Do(func() {
		sc, err := SeccompConfig()
		if err != nil {
			r.bpfErr = err
			return
		}
		r.bpf, r.bpfErr = compileBPF(sc)
	})
	return r.bpf, r.bpfErr
}

// spawnTimeout bounds a direct start from the shim's start to the
// function's exec (a hung mount must not hold Start for ever).
const spawnTimeout = 30 * time.Second

// spawnDirect starts spec's function through the direct spawner and
// returns once the function has been exec'd (or a step failed, ctx ended,
// or r.spawnTimeout passed: the start is then killed and undone).
func (r *Runtime) spawnDirect(ctx context.Context, tenantName string, spec sandbox.Spec) (_ *instance, err error) {
	bpf, err := r.seccompProgram()
	if err != nil {
		return nil, err
	}
	t, _, cfg, releaseNet, err := r.prepare(tenantName, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && releaseNet != nil {
			_ = releaseNet()
		}
	}()
	// The instance's cgroup: one made ahead, or made now. The shim moves
	// the init into it before the init runs the function; the shim itself
	// stays out of it, so the pids limit counts the function's processes
	// only, as on libcontainer's path.
	cgKey := cgroupKey(t, cfg.Cgroups.Resources)
	cg := r.cgroups.take(cgKey)
	if cg == nil {
		if cg, err = r.makeCgroup(t, cfg.Cgroups.Resources); err != nil {
			return nil, err
		}
		r.trace("runtime: cgroup made")
	}
	defer func() {
		if err != nil {
			_ = cg.m.Destroy()
		}
	}()
	args := append([]string{spec.Path}, spec.Args...)
	req, err := spawn.FromConfig(cfg, args, sandbox.MergeEnv(spec.Env, spec.StartEnv), "/", bpf)
	if err != nil {
		return nil, err
	}
	req.Cgroups, req.OptCgroups = cg.paths, cg.optPaths
	reqBytes, err := req.Encode()
	if err != nil {
		return nil, err
	}
	if r.holdRequest { // tests: a start that never gets past reading its request
		reqBytes = reqBytes[:len(reqBytes)-1]
	}
	r.trace("runtime: root, config and request ready")

	inst := &instance{cgroup: cg.cg, cgm: cg.m, trace: r.trace, releaseNet: releaseNet, life: r.life,
		stderrTo: make(chan io.Writer, 1), drained: make(chan struct{}), pidfd: -1}
	var inR, outW, errW, reqR, reqW, stR, stW *os.File
	closeChild := func() {
		for _, f := range []*os.File{inR, outW, errW, reqR, stW} {
			if f != nil {
				_ = f.Close()
			}
		}
		inR, outW, errW, reqR, stW = nil, nil, nil, nil, nil
	}
	defer func() {
		closeChild()
		if reqW != nil {
			_ = reqW.Close()
		}
		if stR != nil {
			_ = stR.Close()
		}
		if err != nil {
			inst.closePipes()
		}
	}()
	for _, p := range []struct{ r, w **os.File }{{&inR, &inst.stdin}, {&inst.stdout, &outW}, {&inst.stderr, &errW}, {&reqR, &reqW}} {
		if *p.r, *p.w, err = os.Pipe(); err != nil {
			return nil, err
		}
	}
	// The status pipe stays blocking and out of Go's poller: the runtime
	// waits for its hang-up, not for each message (waitHangup).
	var st [2]int
	if err := unix.Pipe2(st[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("status pipe: %w", err)
	}
	stR, stW = os.NewFile(uintptr(st[0]), "spawn-status"), os.NewFile(uintptr(st[1]), "spawn-status")
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The request is in the pipe before the shim starts, so that the shim
	// goes on at once; a large one is written while the shim reads it.
	writeErr := make(chan error, 1)
	if len(reqBytes) <= 4096 { // a pipe holds at least a page
		_, werr := reqW.Write(reqBytes)
		writeErr <- werr
	} else {
		go func() {
			_, werr := reqW.Write(reqBytes)
			writeErr <- werr
		}()
	}
	if err := r.startShim(inst, [5]*os.File{inR, outW, errW, reqR, stW}); err != nil {
		return nil, err
	}
	closeChild()
	// From here every failure kills and waits for the shim (and the init
	// with it) and removes the cgroup.
	defer func() {
		if err == nil {
			return
		}
		if inst.shim == nil {
			if pid, perr := peekShimPid(stR); perr == nil {
				inst.shim, _ = os.FindProcess(pid)
			}
		}
		if inst.shim != nil {
			inst.abort()
		} else if r.server != nil && !errors.Is(err, errNoShim) {
			// The server took the descriptors and no shim has said so:
			// it is hung.
			r.server.reset()
		}
	}()
	// Wait until the shim and the init have both closed the status pipe
	// (the init's copy closes on its execve), then read what they wrote:
	// one wake-up of this process per start rather than one per message.
	if err := waitHangup(ctx, stR, time.Now().Add(r.spawnTimeout)); err != nil {
		if errors.Is(err, errSpawnTimeout) {
			return nil, fmt.Errorf("spawn: the function was not exec'd within %v (a hung mount?): killed", r.spawnTimeout)
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("spawn: cancelled before the function was exec'd: %w", cerr)
		}
		return nil, fmt.Errorf("spawn: %w", err)
	}
	status, err := io.ReadAll(stR)
	if err != nil {
		return nil, fmt.Errorf("spawn: status: %w", err)
	}
	sr := bytes.NewReader(status)
	shimPid, err := spawn.ReadShimPid(sr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoShim, err)
	}
	if inst.shim == nil {
		// The server's shim is this process's child, not yet waited for:
		// its pid is its own.
		if inst.shim, err = os.FindProcess(shimPid); err != nil {
			return nil, fmt.Errorf("spawn: shim %d: %w", shimPid, err)
		}
	}
	pid, err := spawn.ReadPid(sr)
	if err != nil {
		return nil, fmt.Errorf("spawn: %w", err)
	}
	if werr := <-writeErr; werr != nil {
		return nil, fmt.Errorf("writing the spawn request: %w", werr)
	}
	inst.initPid = pid
	// The init's pid is still its own while the shim has not reaped it:
	// a pidfd opened now is the init's if the init is still the shim's
	// child after it is open.
	if fd, perr := unix.PidfdOpen(pid, 0); perr == nil {
		if parentPid(pid) == inst.shim.Pid {
			inst.pidfd = fd
		} else {
			_ = unix.Close(fd)
		}
	}
	res, err := spawn.ReadResult(sr)
	if err != nil {
		return nil, fmt.Errorf("spawn: %w", err)
	}
	if res.ProcAhead {
		r.procAhead.Add(1)
	}
	if res.DevAhead {
		r.devAhead.Add(1)
	}
	r.trace("runtime: function exec'd")
	inst.afterUp(func() {
		r.cgroups.refill(cgKey, func() (*readyCgroup, error) { return r.makeCgroup(t, cfg.Cgroups.Resources) }, r.warnCgroup)
	})
	return inst, nil
}

var (
	errSpawnTimeout = errors.New("spawn timed out")
	errNoShim       = errors.New("spawn: no shim started")
)

// peekShimPid reads the shim's pid from the status pipe if it is there.
func peekShimPid(st *os.File) (int, error) {
	fds := []unix.PollFd{{Fd: int32(st.Fd()), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 0); err != nil || n == 0 || fds[0].Revents&unix.POLLIN == 0 {
		return 0, errNoShim
	}
	return spawn.ReadShimPid(st)
}

// waitHangup waits until every writer of the pipe f (a blocking one) has
// closed it, ctx ends (ctx.Err()), or deadline passes (errSpawnTimeout).
func waitHangup(ctx context.Context, f *os.File, deadline time.Time) error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	var mu sync.Mutex
	closed := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			_, _ = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	})
	defer func() {
		stop()
		mu.Lock()
		closed = true
		_ = unix.Close(efd)
		mu.Unlock()
	}()
	fd := int32(f.Fd())
	for {
		ms := time.Until(deadline).Milliseconds()
		if ms <= 0 {
			return errSpawnTimeout
		}
		fds := []unix.PollFd{{Fd: fd}, {Fd: int32(efd), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, int(min(ms, 1<<30)))
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return fmt.Errorf("poll: %w", err)
		case fds[1].Revents != 0:
			return ctx.Err()
		case fds[0].Revents != 0: // POLLHUP (or POLLERR)
			return nil
		}
	}
}

// parentPid returns pid's parent, or -1.
func parentPid(pid int) int {
	f, err := procStat(pid)
	if err != nil {
		return -1
	}
	ppid, err := strconv.Atoi(f[statPpid])
	if err != nil {
		return -1
	}
	return ppid
}

func (r *Runtime) warnCgroup(err error) {
	r.log.Warn("could not make an instance cgroup ahead", "error", err)
}

// startShim starts the shim of inst with files as its fds 0-4: forked by
// the fork server (inst.shim is then set from the status pipe), or, if
// there is none and none can be started (or Options.ExecShim), by exec of
// this binary.
func (r *Runtime) startShim(inst *instance, files [5]*os.File) error {
	if r.server != nil {
		err := r.server.fork(files)
		if err == nil {
			r.trace("runtime: request and descriptors sent to the fork server")
			return nil // the shim's pid comes on the status pipe
		}
		r.log.Warn("fork server unavailable; this start execs its shim", "error", err)
	}
	// No namespace flags: Go starts the shim with vfork, whose cost does
	// not grow with this process's memory.
	cmd := &exec.Cmd{
		Path: "/proc/self/exe", Args: []string{"culvert-spawn"}, Env: []string{spawn.Env + "=" + spawn.EnvValue},
		Stdin: files[0], Stdout: files[1], Stderr: files[2],
		ExtraFiles: []*os.File{files[3], files[4], r.life.r}, // fds 3, 4 and 5
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the spawner: %w", err)
	}
	inst.shim = cmd.Process
	r.trace("runtime: spawner started")
	return nil
}

// abort ends a direct start that failed: the shim, the init with it, the
// cgroup and the network namespace (by the caller's deferred release).
func (i *instance) abort() {
	i.releaseNet = nil
	_ = i.killInit()
	_ = i.shim.Kill()
	_, _ = i.shim.Wait()
	i.closePidfd()
	if i.cgm != nil {
		_ = i.cgm.Destroy()
	}
}

// killInit sends SIGKILL to a direct instance's init (the function, pid
// 1 of its namespaces: the kernel kills the rest of its pid namespace).
func (i *instance) killInit() error {
	i.pidMu.Lock()
	defer i.pidMu.Unlock()
	if i.reaped {
		return nil
	}
	if i.pidfd >= 0 {
		err := unix.PidfdSendSignal(i.pidfd, unix.SIGKILL, nil, 0)
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return err
	}
	// No init known (the start failed before it was reported): the shim
	// takes it along (PR_SET_PDEATHSIG).
	if err := i.shim.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (i *instance) closePidfd() {
	i.pidMu.Lock()
	defer i.pidMu.Unlock()
	i.reaped = true
	if i.pidfd >= 0 {
		_ = unix.Close(i.pidfd)
		i.pidfd = -1
	}
}

// waitDirect waits for the shim, which exits as the init did.
func (i *instance) waitDirect() sandbox.Exit {
	st, err := i.shim.Wait()
	ex := exitOf(st, err)
	i.closePidfd()
	if n, oerr := i.cgm.OOMKillCount(); oerr == nil && n > 0 && !ex.Success() {
		ex.OOMKilled = true
	}
	_ = i.cgm.Destroy()
	return ex
}

// prepareNet prepares the network namespace of an egress instance.
func (r *Runtime) prepareNet(tenantName string, spec sandbox.Spec) (string, func() error, error) {
	if spec.Isolation.Network.Mode != "egress" {
		return "", nil, nil
	}
	if r.opts.Network == nil {
		return "", nil, fmt.Errorf("network egress is not available: this runtime has no network provider")
	}
	return r.opts.Network(context.Background(), tenantName, spec.Name, spec.Isolation.Network)
}
