//go:build linux

package kinesistest

import "syscall"

// sysProcAttr puts the server in its own process group (so Stop kills node
// and anything it started) and kills it if the test process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
