//go:build linux

package container

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/runc/libcontainer/configs"
	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/sys/unix"
)

// compileBPF compiles a seccomp profile to a BPF program with libseccomp,
// as libcontainer's init does at every start (same actions, conditions and
// binary-tree optimisation), for the direct path to install as it is.
// libcontainer also prepends a stub that answers ENOSYS for system calls
// newer than libseccomp knows (runc's patchbpf); this program answers
// those with the profile's default, EPERM.
func compileBPF(sc *configs.Seccomp) ([]byte, error) {
	if sc.DefaultAction != configs.Errno || sc.DefaultErrnoRet == nil || len(sc.Architectures) > 0 || len(sc.Flags) > 0 {
		return nil, errors.New("seccomp: only an errno default, the native architecture and no flags are supported")
	}
	def := libseccomp.ActErrno.SetReturnCode(int16(*sc.DefaultErrnoRet))
	f, err := libseccomp.NewFilter(def)
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	defer f.Release()
	if len(sc.Syscalls) > 32 {
		_ = f.SetOptimize(2) // as libcontainer: a binary tree, where libseccomp has it
	}
	for _, s := range sc.Syscalls {
		nr, err := libseccomp.GetSyscallFromName(s.Name)
		if err != nil {
			continue // unknown on this architecture: libcontainer skips it too
		}
		var act libseccomp.ScmpAction
		switch s.Action {
		case configs.Allow:
			act = libseccomp.ActAllow
		case configs.Errno:
			ret := *sc.DefaultErrnoRet
			if s.ErrnoRet != nil {
				ret = *s.ErrnoRet
			}
			act = libseccomp.ActErrno.SetReturnCode(int16(ret))
		default:
			return nil, fmt.Errorf("seccomp: %s: action %v is not supported", s.Name, s.Action)
		}
		if act == def {
			continue
		}
		if len(s.Args) == 0 {
			if err := f.AddRule(nr, act); err != nil {
				return nil, fmt.Errorf("seccomp: %s: %w", s.Name, err)
			}
			continue
		}
		var conds []libseccomp.ScmpCondition
		for _, a := range s.Args {
			var op libseccomp.ScmpCompareOp
			switch a.Op {
			case configs.EqualTo:
				op = libseccomp.CompareEqual
			case configs.MaskEqualTo:
				op = libseccomp.CompareMaskedEqual
			default:
				return nil, fmt.Errorf("seccomp: %s: operator %v is not supported", s.Name, a.Op)
			}
			c, err := libseccomp.MakeCondition(a.Index, op, a.Value, a.ValueTwo)
			if err != nil {
				return nil, fmt.Errorf("seccomp: %s: %w", s.Name, err)
			}
			conds = append(conds, c)
		}
		if err := f.AddRuleConditional(nr, act, conds); err != nil {
			return nil, fmt.Errorf("seccomp: %s: %w", s.Name, err)
		}
	}
	// ExportBPFMem needs libseccomp 2.6; a memfd serves with older ones.
	fd, err := unix.MemfdCreate("culvert-seccomp", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("seccomp: exporting the program: %w", err)
	}
	mf := os.NewFile(uintptr(fd), "culvert-seccomp")
	defer mf.Close()
	if err := f.ExportBPF(mf); err != nil {
		return nil, fmt.Errorf("seccomp: exporting the program: %w", err)
	}
	if _, err := mf.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seccomp: exporting the program: %w", err)
	}
	b, err := io.ReadAll(mf)
	if err != nil {
		return nil, fmt.Errorf("seccomp: exporting the program: %w", err)
	}
	return b, nil
}
