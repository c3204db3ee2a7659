//go:build linux

package main

import (
	"fmt"
	"os"

	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox/container"
	"github.com/opencontainers/runc/libcontainer/configs"
)

// compileProfile compiles the sandbox's seccomp profile with libseccomp to
// BPF, without loading it: what runc's init does on every cold start.
func compileProfile(devnull *os.File) error {
	c, err := container.SeccompConfig()
	if err != nil {
		return err
	}
	f, err := libseccomp.NewFilter(libseccomp.ActErrno.SetReturnCode(int16(unix.EPERM)))
	if err != nil {
		return err
	}
	defer f.Release()
	for _, a := range c.Architectures {
		arch, err := libseccomp.GetArchFromString(a)
		if err == nil {
			_ = f.AddArch(arch)
		}
	}
	ops := map[configs.Operator]libseccomp.ScmpCompareOp{
		configs.EqualTo: libseccomp.CompareEqual, configs.MaskEqualTo: libseccomp.CompareMaskedEqual,
	}
	for _, sc := range c.Syscalls {
		call, err := libseccomp.GetSyscallFromName(sc.Name)
		if err != nil {
			continue // not on this architecture
		}
		act := libseccomp.ActAllow
		if sc.Action == configs.Errno {
			act = libseccomp.ActErrno.SetReturnCode(int16(*sc.ErrnoRet))
		}
		if len(sc.Args) == 0 {
			if err := f.AddRule(call, act); err != nil {
				return fmt.Errorf("%s: %w", sc.Name, err)
			}
			continue
		}
		var conds []libseccomp.ScmpCondition
		for _, a := range sc.Args {
			vals := []uint64{a.Value}
			if a.Op == configs.MaskEqualTo {
				vals = append(vals, a.ValueTwo)
			}
			cond, err := libseccomp.MakeCondition(a.Index, ops[a.Op], vals...)
			if err != nil {
				return err
			}
			conds = append(conds, cond)
		}
		if err := f.AddRuleConditional(call, act, conds); err != nil {
			return fmt.Errorf("%s: %w", sc.Name, err)
		}
	}
	return f.ExportBPF(devnull)
}
