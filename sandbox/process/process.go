// Package process is the sandbox.Runtime that runs functions as plain child
// processes, with no isolation. It is the baseline that isolating runtimes
// are measured against, and the runtime for hosts that cannot sandbox when
// the pipeline explicitly allows it.
//
// Each process leads its own process group, so Kill stops everything it
// started; it dies with its parent (Pdeathsig); and Wait never hangs on a
// grandchild that keeps the pipes open (WaitDelay).
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

// Runtime starts plain child processes.
type Runtime struct{}

var _ sandbox.Runtime = Runtime{}

// Name implements sandbox.Runtime.
func (Runtime) Name() string { return "process" }

// Start implements sandbox.Runtime.
func (Runtime) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = sandbox.MergeEnv(spec.Env, spec.StartEnv)
	cmd.Dir = spec.Dir
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = 2 * time.Second
	if spec.Stderr != nil {
		cmd.Stderr = spec.Stderr
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	return &proc{cmd: cmd, stdin: stdin, stdout: stdout}, nil
}

type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
}

func (p *proc) Stdin() io.WriteCloser { return p.stdin }
func (p *proc) Stdout() io.ReadCloser { return p.stdout }
func (p *proc) Pid() int              { return p.cmd.Process.Pid }

// Kill signals the whole process group.
func (p *proc) Kill() error {
	err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

func (p *proc) Wait() sandbox.Exit {
	err := p.cmd.Wait()
	// Whatever the leader did, nothing it started may outlive it.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	return exitOf(p.cmd, err)
}

func exitOf(cmd *exec.Cmd, err error) sandbox.Exit {
	if cmd.ProcessState == nil {
		return sandbox.Exit{Code: -1, Err: err}
	}
	st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return sandbox.Exit{Code: -1, Err: err}
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return sandbox.Exit{Code: -1, Err: err}
	}
	if st.Signaled() {
		return sandbox.Exit{Code: -1, Signal: st.Signal().String()}
	}
	return sandbox.Exit{Code: st.ExitStatus()}
}
