//go:build linux

package container

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

// TestHostile runs one escape attempt per case inside the sandbox and
// checks that it failed, and how. Each case runs directly and after an
// execve, so the filter and the rest hold across exec.
func TestHostile(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		for _, tt := range hostileCases(r.opts.StateDir) {
			for _, via := range []string{"direct", "after execve"} {
				t.Run(tt.name+"/"+via, func(t *testing.T) {
					t.Parallel()
					args := tt.args
					if via != "direct" {
						args = append([]string{"exec"}, args...)
					}
					spec := hostile(args...)
					spec.Isolation.Root.TmpfsBytes = tt.tmpfs
					out, stderr, ex := run(t, r, spec, "", 20*time.Second)
					line := strings.TrimSpace(out)
					if !regexp.MustCompile(tt.want).MatchString(line) {
						t.Errorf("got %q (exit %v, stderr %q), want %s", line, ex, stderr, tt.want)
					}
				})
			}
		}
	})
}

// TestHostileLaunched runs the same attempts in functions started through
// the launcher, as exec mode's are: one spec (per tmpfs size) whose starts
// differ only in their StartEnv, which names the attempt, each start
// taking a pre-created container whose launcher execs the function.
func TestHostileLaunched(t *testing.T) {
	r := newRuntime(t, true)
	base := hostile("env")
	base.Name, base.Env, base.StartEnv = "launched", []string{"PATH=/usr/bin:/bin"}, []string{}
	withTmpfs := base
	withTmpfs.Isolation.Root.TmpfsBytes = 1 << 20
	r.Precreate(base, MaxSpares)
	r.Precreate(withTmpfs, 1)
	for _, tt := range hostileCases(r.opts.StateDir) {
		spec := base
		if tt.tmpfs != 0 {
			if tt.tmpfs != withTmpfs.Isolation.Root.TmpfsBytes {
				t.Fatalf("%s: tmpfs size %d: pre-create a spec for it", tt.name, tt.tmpfs)
			}
			spec = withTmpfs
		}
		waitUntil(t, "a waiting container", func() bool { return r.waitingFor(spec) > 0 })
		before := r.Stats()
		spec.StartEnv = []string{"HOSTILE_ATTEMPT=" + strings.Join(tt.args, " ")}
		out, stderr, ex := run(t, r, spec, "", 20*time.Second)
		if line := strings.TrimSpace(out); !regexp.MustCompile(tt.want).MatchString(line) {
			t.Errorf("%s: got %q (exit %v, stderr %q), want %s", tt.name, line, ex, stderr, tt.want)
		}
		if st := r.Stats(); st.Precreated != before.Precreated+1 || st.Cold != before.Cold {
			t.Fatalf("%s: stats %+v after %+v: the start was not served by a launcher", tt.name, st, before)
		}
	}
}

type hostileCase struct {
	name  string
	args  []string
	want  string // regexp the result line must match
	tmpfs int64
}

// hostileCases are TestHostile's attempts; stateDir is the runtime's.
func hostileCases(stateDir string) []hostileCase {
	self := strconv.Itoa(os.Getpid())
	return []hostileCase{
		{name: "read /etc/shadow", args: []string{"read", "/etc/shadow"}, want: `^DENIED ENOENT$`},
		{name: "read a host file by /proc/1/root", args: []string{"read", "/proc/1/root/etc/shadow"}, want: `^DENIED ENOENT$`},
		{name: "read the state dir", args: []string{"list", stateDir}, want: `^DENIED ENOENT$`},
		{name: "root holds only the function", args: []string{"ls", "/"}, want: `^OK /dev,/proc,` + regexp.QuoteMeta(strings.Join(pathPrefixes(hostileBin), ",")) + `$`},
		{name: "write its root", args: []string{"write", "/pwned"}, want: `^DENIED EROFS$`},
		{name: "write next to its binary", args: []string{"write", hostileBin + ".x"}, want: `^DENIED EROFS$`},
		{name: "write /tmp without tmpfs", args: []string{"write", "/tmp/x"}, want: `^DENIED EROFS$`},
		{name: "write the tmpfs", args: []string{"write", "/tmp/x"}, tmpfs: 1 << 20, want: `^ESCAPED wrote /tmp/x$`}, // allowed: the one writable place
		{name: "exceed the tmpfs", args: []string{"fill", "/tmp/big", "8"}, tmpfs: 1 << 20, want: `^DENIED ENOSPC$`},
		{name: "write /dev", args: []string{"write", "/dev/x"}, want: `^DENIED EROFS$`},
		{name: "write a device's mount point", args: []string{"write", "/dev/null2"}, want: `^DENIED EROFS$`},
		{name: "see host processes", args: []string{"procs"}, want: `^OK 1$`},
		{name: "signal culvert", args: []string{"signal", self}, want: `^DENIED ESRCH$`},
		{name: "signal host init", args: []string{"signal", "-1"}, want: `^DENIED ESRCH$`},
		{name: "ptrace", args: []string{"ptrace"}, want: `^DENIED EPERM$`},
		{name: "mount", args: []string{"mount"}, want: `^DENIED EPERM$`},
		{name: "umount /proc", args: []string{"umount"}, want: `^DENIED EPERM$`},
		{name: "unshare", args: []string{"unshare"}, want: `^DENIED EPERM$`},
		{name: "clone a user namespace", args: []string{"clone-newuser"}, want: `^DENIED EPERM$`},
		{name: "setns", args: []string{"setns"}, want: `^DENIED EPERM$`},
		{name: "init_module", args: []string{"init_module"}, want: `^DENIED EPERM$`},
		{name: "finit_module", args: []string{"finit_module"}, want: `^DENIED EPERM$`},
		{name: "bpf", args: []string{"bpf"}, want: `^DENIED EPERM$`},
		{name: "perf_event_open", args: []string{"perf_event_open"}, want: `^DENIED EPERM$`},
		{name: "keyctl", args: []string{"keyctl"}, want: `^DENIED EPERM$`},
		{name: "add_key", args: []string{"add_key"}, want: `^DENIED EPERM$`},
		{name: "clock_settime", args: []string{"clock_settime"}, want: `^DENIED EPERM$`},
		{name: "settimeofday", args: []string{"settimeofday"}, want: `^DENIED EPERM$`},
		{name: "reboot", args: []string{"reboot"}, want: `^DENIED EPERM$`},
		{name: "kexec_load", args: []string{"kexec"}, want: `^DENIED EPERM$`},
		{name: "swapon", args: []string{"swapon"}, want: `^DENIED EPERM$`},
		{name: "userfaultfd", args: []string{"userfaultfd"}, want: `^DENIED EPERM$`},
		{name: "io_uring", args: []string{"io_uring"}, want: `^DENIED EPERM$`},
		{name: "chroot", args: []string{"chroot"}, want: `^DENIED EPERM$`},
		{name: "raw socket", args: []string{"raw-socket"}, want: `^DENIED EPERM$`},
		{name: "packet socket", args: []string{"packet-socket"}, want: `^DENIED EPERM$`},
		{name: "sethostname", args: []string{"sethostname"}, want: `^DENIED EPERM$`},
		{name: "write /proc/sys", args: []string{"proc-sys"}, want: `^DENIED (EROFS|EACCES|EPERM)$`},
		{name: "no /sys", args: []string{"sysfs"}, want: `^DENIED ENOENT$`},
		{name: "only four devices", args: []string{"devices"}, want: `^OK null,random,urandom,zero$`},
		{name: "mknod", args: []string{"mknod"}, tmpfs: 1 << 20, want: `^DENIED EPERM$`},
		{name: "no capabilities, no_new_privs, seccomp", args: []string{"caps"},
			want: `^OK CapInh:0+ CapPrm:0+ CapEff:0+ CapBnd:0+ CapAmb:0+ NoNewPrivs:1 Seccomp:2`},
		{name: "rlimits", args: []string{"rlimits"}, want: `^OK nofile=4096 core=0 nproc=\d+$`},
		{name: "UDP to the host", args: []string{"udp", "127.0.0.1:9"}, want: `^DENIED ECONNREFUSED$`},
	}
}

// pathPrefixes lists p's parent directories and p, as the walk of the
// root shows them.
func pathPrefixes(p string) []string {
	var out []string
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i := range parts {
		out = append(out, "/"+strings.Join(parts[:i+1], "/"))
	}
	return out
}

// TestHostileNetwork: with network none, a TCP server on the host's
// loopback cannot be reached, and a listener inside cannot be reached from
// the host.
func TestHostileNetwork(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan struct{}, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- struct{}{}
				c.Close()
			}
		}()
		out, _, _ := run(t, r, hostile("connect", ln.Addr().String()), "", 10*time.Second)
		if got := strings.TrimSpace(out); got != "DENIED ECONNREFUSED" {
			t.Errorf("connect to the host's loopback: %q, want DENIED ECONNREFUSED", got)
		}
		select {
		case <-accepted:
			t.Error("the host server accepted a connection from the sandbox")
		default:
		}

		// UDP to a server on the host's loopback never arrives.
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		got := make(chan string, 1)
		go func() {
			b := make([]byte, 64)
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _, err := pc.ReadFrom(b); err == nil {
				got <- string(b[:n])
			}
			close(got)
		}()
		out, _, _ = run(t, r, hostile("udp", pc.LocalAddr().String()), "", 10*time.Second)
		if !strings.HasPrefix(strings.TrimSpace(out), "DENIED") {
			t.Errorf("udp to the host's loopback: %q, want DENIED", out)
		}
		if m, ok := <-got; ok {
			t.Errorf("the host received a datagram from the sandbox: %q", m)
		}

		// A listener inside: the host tries the same port on every host address.
		spec := hostile("listen", "0.0.0.0:47123")
		spec.Name = "listener"
		done := make(chan string, 1)
		go func() { out, _, _ := run(t, r, spec, "", 10*time.Second); done <- out }()
		time.Sleep(300 * time.Millisecond)
		for _, a := range []string{"127.0.0.1:47123", "[::1]:47123"} {
			if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				c.Close()
				t.Errorf("reached the sandbox's listener at %s from the host", a)
			}
		}
		out = <-done
		if !strings.Contains(out, "LISTENING") || !strings.Contains(out, "DENIED") {
			t.Errorf("listener: %q, want it to listen and never be reached", out)
		}
	})
}

// TestHostileRootDir runs with a files directory as the root that ships a
// setuid-root binary, a device node and symlinks pointing out of it.
func TestHostileRootDir(t *testing.T) {
	coldPaths(t, func(t *testing.T, r *Runtime) {
		dir := t.TempDir()
		_ = os.Chmod(filepath.Dir(dir), 0o711)
		_ = os.Chmod(dir, 0o755)
		b, err := os.ReadFile(hostileBin)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite := func(name string, mode os.FileMode) {
			if err := os.WriteFile(filepath.Join(dir, name), b, mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
				t.Fatal(err)
			}
		}
		mustWrite("fn", 0o755)
		mustWrite("suid", 0o755|os.ModeSetuid)
		if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bin", "suid"), b, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(filepath.Join(dir, "bin", "suid"), 0o755|os.ModeSetuid)
		if err := syscall.Mknod(filepath.Join(dir, "devnode"), syscall.S_IFCHR|0o666, int(unixMkdev(1, 1))); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mknod(filepath.Join(dir, "bin", "mem"), syscall.S_IFCHR|0o666, int(unixMkdev(1, 1))); err != nil {
			t.Fatal(err)
		}
		for name, target := range map[string]string{"link": "/etc/shadow", "uplink": "../../../../../../etc/shadow", "bin/link": "/etc/passwd"} {
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			args []string
			want string
		}{
			{[]string{"ls", "/"}, `^OK /bin,/bin/link,/bin/mem,/bin/suid,/dev,/fn,/link,/proc,/suid,/tmp,/uplink$`},
			{[]string{"symlink-out", "/link"}, `^DENIED ENOENT$`},
			{[]string{"symlink-out", "/uplink"}, `^DENIED ENOENT$`},
			{[]string{"symlink-out", "/bin/link"}, `^DENIED ENOENT$`},
			{[]string{"open-dev", "/devnode"}, `^DENIED ENOENT$`},         // not carried into the root
			{[]string{"open-dev", "/bin/mem"}, `^DENIED (EACCES|EPERM)$`}, // nodev
			{[]string{"setuid-root", "/suid", "euid"}, `^OK OK euid=0$`},  // uid 0 *inside*: setuid gains nothing
			{[]string{"write", "/fn"}, `^DENIED EROFS$`},
			{[]string{"write", "/bin/new"}, `^DENIED EROFS$`},
		}
		for _, tt := range tests {
			spec := sandbox.Spec{Path: "/fn", Args: tt.args, Tenant: "t1"}
			spec.Isolation.Root.Dir = dir
			out, stderr, ex := run(t, r, spec, "", 10*time.Second)
			if got := strings.TrimSpace(out); !regexp.MustCompile(tt.want).MatchString(got) {
				t.Errorf("%v: got %q (exit %v, stderr %q), want %s", tt.args, got, ex, stderr, tt.want)
			}
		}
		// The host files the links name are untouched and were never readable.
		if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
			t.Error("the function wrote into its files directory")
		}
	})
}

func unixMkdev(major, minor uint32) uint64 {
	return uint64(major)<<8 | uint64(minor)
}

var _ = fmt.Sprint
