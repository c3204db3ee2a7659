package process

import "syscall"

// sysProcAttr: its own process group, killed when culvert dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
