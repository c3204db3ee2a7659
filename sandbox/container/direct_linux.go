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
	"strconv"

	"github.com/opencontainers/cgroups/manager"
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

// spawnDirect starts spec's function through the direct spawner and
// returns once the function has been exec'd (or a step failed).
func (r *Runtime) spawnDirect(tenantName string, spec sandbox.Spec) (_ *instance, err error) {
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
	args := append([]string{spec.Path}, spec.Args...)
	req, err := spawn.FromConfig(cfg, args, sandbox.MergeEnv(spec.Env, spec.StartEnv), "/", bpf)
	if err != nil {
		return nil, err
	}
	reqBytes, err := req.Encode()
	if err != nil {
		return nil, err
	}
	r.trace("runtime: root, config and request ready")

	inst := &instance{cgroup: cfg.Cgroups, trace: r.trace, releaseNet: releaseNet, stderrTo: make(chan io.Writer, 1), drained: make(chan struct{}), pidfd: -1}
	var inR, outW, errW, reqR, reqW, stR, stW *os.File
	closeChild := func() {
		for _, f := range []*os.File{inR, outW, errW, reqR, stW} {
			if f != nil {
				_ = f.Close()
			}
		}
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
	// No namespace flags: Go starts the shim with vfork, whose cost does
	// not grow with this process's memory.
	cmd := &exec.Cmd{
		Path: "/proc/self/exe", Args: []string{"culvert-spawn"}, Env: []string{spawn.Env + "=" + spawn.EnvValue},
		Stdin: inR, Stdout: outW, Stderr: errW, ExtraFiles: []*os.File{reqR, stW}, // fds 3 and 4
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the spawner: %w", err)
	}
	closeChild()
	inR, outW, errW, reqR, stW = nil, nil, nil, nil, nil
	inst.cmd = cmd
	r.trace("runtime: spawner started")
	// The instance's cgroup is below the tenant's in every hierarchy:
	// finding the hierarchies again (manager.New parses mountinfo per
	// controller) is not needed.
	paths := make(map[string]string, len(t.paths))
	for k, p := range t.paths {
		paths[k] = filepath.Join(p, id)
	}
	m, err := manager.NewWithPaths(cfg.Cgroups, paths)
	if err == nil {
		inst.cgm = m
		if err = m.Apply(cmd.Process.Pid); err == nil {
			err = m.Set(cfg.Cgroups.Resources)
		}
	}
	if err != nil {
		inst.abort()
		return nil, fmt.Errorf("cgroup %s: %w", cfg.Cgroups.Path, err)
	}
	r.trace("runtime: cgroup applied")
	// Only now: everything the shim clones starts in the cgroup.
	if _, err := reqW.Write(reqBytes); err != nil {
		inst.abort()
		return nil, fmt.Errorf("writing the spawn request: %w", err)
	}
	_ = reqW.Close()
	reqW = nil
	pid, err := spawn.ReadPid(stR)
	if err != nil {
		inst.abort()
		return nil, fmt.Errorf("spawn: %w", err)
	}
	inst.initPid = pid
	if fd, perr := unix.PidfdOpen(pid, 0); perr == nil {
		inst.pidfd = fd
	}
	r.trace("runtime: init pid reported")
	if err := spawn.ReadResult(stR); err != nil {
		inst.abort()
		return nil, fmt.Errorf("spawn: %w", err)
	}
	r.trace("runtime: function exec'd")
	return inst, nil
}

// abort ends a direct start that failed: the shim, the init with it, the
// cgroup and the network namespace (by the caller's deferred release).
func (i *instance) abort() {
	i.releaseNet = nil
	_ = i.killInit()
	_ = i.cmd.Process.Kill()
	_ = i.cmd.Wait()
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
	if err := i.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
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
	err := i.cmd.Wait()
	ex := exitOf(i.cmd.ProcessState, err)
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
