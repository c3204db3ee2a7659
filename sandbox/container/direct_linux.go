//go:build linux

package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
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
	t, err := r.tenant(tenantName)
	if err != nil {
		return nil, err
	}
	pr, err := r.prepareRoot(spec)
	if err != nil {
		return nil, err
	}
	bpf, err := r.seccompProgram()
	if err != nil {
		return nil, err
	}
	id := "c" + r.tag + "-" + strconv.FormatUint(r.seq.Add(1), 10)
	netnsPath, releaseNet, err := r.prepareNet(tenantName, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && releaseNet != nil {
			_ = releaseNet()
		}
	}()
	cfg, err := r.containerConfig(id, t, pr, spec.Isolation, netnsPath)
	if err != nil {
		return nil, err
	}
	// The shim waits in the instance's cgroup beside the function: one
	// more pid, so that the function may have as many as on libcontainer's
	// path.
	if p := cfg.Cgroups.Resources.PidsLimit; p != nil && *p > 0 {
		n := *p + 1
		cfg.Cgroups.Resources.PidsLimit = &n
	}
	// The instance's cgroup: one made ahead, or made now. The shim joins
	// it itself before it clones, so everything the shim clones starts in
	// it.
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
	for _, p := range []struct{ r, w **os.File }{{&inR, &inst.stdin}, {&inst.stdout, &outW}, {&inst.stderr, &errW}, {&reqR, &reqW}, {&stR, &stW}} {
		if *p.r, *p.w, err = os.Pipe(); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.startShim(inst, [5]*os.File{inR, outW, errW, reqR, stW}); err != nil {
		return nil, err
	}
	closeChild()
	// From here every failure kills and waits for the shim (and the init
	// with it) and removes the cgroup.
	defer func() {
		if err != nil {
			inst.abort()
		}
	}()
	deadline := time.Now().Add(r.spawnTimeout)
	_ = stR.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = stR.SetReadDeadline(time.Now()) })
	defer stop()
	// explain turns a status read cut short into the reason.
	explain := func(err error) error {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if cerr := ctx.Err(); cerr != nil {
				return fmt.Errorf("spawn: cancelled before the function was exec'd: %w", cerr)
			}
			return fmt.Errorf("spawn: the function was not exec'd within %v (a hung mount?): killed", r.spawnTimeout)
		}
		return fmt.Errorf("spawn: %w", err)
	}
	// The pipe holds a request of normal size; a larger one is written
	// while the shim reads it.
	writeErr := make(chan error, 1)
	go func() {
		_, werr := reqW.Write(reqBytes)
		writeErr <- werr
	}()
	pid, err := spawn.ReadPid(stR)
	if err != nil {
		return nil, explain(err)
	}
	if werr := <-writeErr; werr != nil {
		return nil, fmt.Errorf("writing the spawn request: %w", werr)
	}
	if !r.holdRequest {
		_ = reqW.Close()
		reqW = nil
	}
	inst.initPid = pid
	if fd, perr := unix.PidfdOpen(pid, 0); perr == nil {
		inst.pidfd = fd
	}
	r.trace("runtime: init pid reported")
	if err := spawn.ReadResult(stR); err != nil {
		return nil, explain(err)
	}
	r.trace("runtime: function exec'd")
	inst.afterUp(func() {
		r.cgroups.refill(cgKey, func() (*readyCgroup, error) { return r.makeCgroup(t, cfg.Cgroups.Resources) }, r.warnCgroup)
	})
	return inst, nil
}

func (r *Runtime) warnCgroup(err error) {
	r.log.Warn("could not make an instance cgroup ahead", "error", err)
}

// startShim starts the shim of inst with files as its fds 0-4: forked by
// the fork server, or, if there is none and none can be started (or
// Options.ExecShim), by exec of this binary.
func (r *Runtime) startShim(inst *instance, files [5]*os.File) error {
	if r.server != nil {
		pid, delivered, err := r.server.fork(files)
		if err == nil {
			p, ferr := os.FindProcess(pid) // a pidfd: the shim is this process's child
			if ferr != nil {
				return fmt.Errorf("spawn: shim %d: %w", pid, ferr)
			}
			inst.shim = p
			r.trace("runtime: shim forked by the server")
			return nil
		}
		if delivered {
			return err
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
