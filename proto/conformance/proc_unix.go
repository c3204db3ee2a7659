//go:build unix

package conformance

import (
	"os/exec"
	"syscall"
)

// setProcessGroup starts the function in its own process group, so that
// stop kills whatever it started too (SPEC.md 8).
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func killProcessGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Process.Kill()
}
