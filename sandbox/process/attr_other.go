//go:build !linux

package process

import "syscall"

// sysProcAttr: its own process group (no parent-death signal off Linux).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
