// Command hostile is a function that tries to escape its sandbox. It is
// built static (CGO_ENABLED=0) by the sandbox tests and run inside the
// container.
//
//	hostile ATTEMPT [ARG]   try one escape, print one result line, exit 0
//	hostile lines           read attempts from stdin, one result line each
//	hostile exec ATTEMPT    execve itself, then try ATTEMPT (checks that
//	                        seccomp and the rest hold after execve)
//	hostile env             try the attempt in $HOSTILE_ATTEMPT (given per
//	                        start, as exec mode gives a record's metadata)
//
// A result line is "DENIED <errno or reason>" when the attempt failed and
// "ESCAPED <what>" when it succeeded; the tests assert on it. Attempts
// that can only be observed from outside (bombs, spins, floods) do their
// thing and the tests watch the host.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: hostile ATTEMPT [ARG] | lines | exec ATTEMPT")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "lines":
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 0 {
				fmt.Println("DENIED empty")
				continue
			}
			fmt.Println(attempt(f[0], f[1:]))
		}
		return
	case "env":
		f := strings.Fields(os.Getenv("HOSTILE_ATTEMPT"))
		if len(f) == 0 {
			fmt.Println("ERROR no HOSTILE_ATTEMPT")
			os.Exit(2)
		}
		fmt.Println(attempt(f[0], f[1:]))
		return
	case "exec":
		self, err := os.Executable()
		if err != nil {
			self = "/proc/self/exe"
		}
		err = syscall.Exec(self, append([]string{self}, os.Args[2:]...), os.Environ())
		fmt.Println("ERROR exec:", err)
		os.Exit(1)
	}
	fmt.Println(attempt(os.Args[1], os.Args[2:]))
}

func result(err error, what string) string {
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return "DENIED " + errnoName(errno)
		}
		return "DENIED " + err.Error()
	}
	return "ESCAPED " + what
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.EROFS:
		return "EROFS"
	case syscall.ENOSPC:
		return "ENOSPC"
	case syscall.ENOSYS:
		return "ENOSYS"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	case syscall.ESRCH:
		return "ESRCH"
	case syscall.EAGAIN:
		return "EAGAIN"
	case syscall.EINVAL:
		return "EINVAL"
	}
	return fmt.Sprintf("errno %d (%v)", int(e), e)
}

func arg(args []string, i int, def string) string {
	if i < len(args) {
		return args[i]
	}
	return def
}

func raw(nr uintptr, a ...uintptr) error {
	var x [6]uintptr
	copy(x[:], a)
	_, _, e := syscall.Syscall6(nr, x[0], x[1], x[2], x[3], x[4], x[5])
	if e != 0 {
		return e
	}
	return nil
}

func attempt(name string, args []string) string {
	switch name {
	case "hello":
		return "OK hello"
	case "whoami":
		return fmt.Sprintf("OK uid=%d gid=%d pid=%d", os.Getuid(), os.Getgid(), os.Getpid())
	case "read": // read ARG: a host file
		b, err := os.ReadFile(arg(args, 0, "/etc/shadow"))
		return result(err, fmt.Sprintf("read %d bytes", len(b)))
	case "cat": // cat PATH: a file of the container's own, newlines as ';'
		b, err := os.ReadFile(arg(args, 0, "/proc/self/cgroup"))
		if err != nil {
			return result(err, "")
		}
		return "OK " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", ";")
	case "list": // list ARG: a host directory
		ents, err := os.ReadDir(arg(args, 0, "/"))
		if err != nil {
			return result(err, "")
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return "OK " + strings.Join(names, ",")
	case "write": // write PATH
		err := os.WriteFile(arg(args, 0, "/pwned"), []byte("x"), 0o644)
		return result(err, "wrote "+arg(args, 0, "/pwned"))
	case "fill": // fill PATH MiB: write past a tmpfs size
		mib, _ := strconv.Atoi(arg(args, 1, "64"))
		f, err := os.Create(arg(args, 0, "/tmp/fill"))
		if err != nil {
			return result(err, "")
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		for i := 0; i < mib; i++ {
			if _, err := f.Write(buf); err != nil {
				return result(err, "")
			}
		}
		return result(f.Sync(), fmt.Sprintf("wrote %d MiB", mib))
	case "procs": // see host processes: count /proc/<pid>
		ents, _ := os.ReadDir("/proc")
		var pids []string
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, e.Name())
			}
		}
		return "OK " + strings.Join(pids, ",")
	case "signal": // signal PID
		pid, _ := strconv.Atoi(arg(args, 0, "1"))
		return result(syscall.Kill(pid, syscall.SIGTERM), "signalled "+strconv.Itoa(pid))
	case "ptrace":
		return result(raw(syscall.SYS_PTRACE, syscall.PTRACE_TRACEME), "ptrace")
	case "mount":
		return result(syscall.Mount("tmpfs", "/tmp", "tmpfs", 0, ""), "mounted")
	case "umount":
		return result(syscall.Unmount("/proc", syscall.MNT_DETACH), "unmounted /proc")
	case "unshare":
		return result(syscall.Unshare(syscall.CLONE_NEWUSER|syscall.CLONE_NEWNS), "unshared")
	case "clone-newuser":
		return result(raw(syscall.SYS_CLONE, syscall.CLONE_NEWUSER|uintptr(syscall.SIGCHLD)), "cloned a user namespace")
	case "setns":
		f, err := os.Open("/proc/self/ns/net")
		if err != nil {
			return result(err, "")
		}
		defer f.Close()
		return result(raw(308 /* setns */, f.Fd(), 0), "setns")
	case "init_module":
		return result(raw(syscall.SYS_INIT_MODULE, 0, 0, 0), "init_module")
	case "finit_module":
		return result(raw(313 /* finit_module */, 0, 0, 0), "finit_module")
	case "bpf":
		return result(raw(321 /* bpf */, 0, 0, 0), "bpf")
	case "perf_event_open":
		var attr [128]byte
		return result(raw(syscall.SYS_PERF_EVENT_OPEN, uintptr(unsafe.Pointer(&attr[0])), 0, ^uintptr(0), ^uintptr(0), 0), "perf_event_open")
	case "keyctl":
		return result(raw(250 /* keyctl */, 0 /* KEYCTL_GET_KEYRING_ID */, ^uintptr(1) /* session */, 0), "keyctl")
	case "add_key":
		return result(raw(248 /* add_key */, 0, 0, 0, 0, 0), "add_key")
	case "clock_settime":
		ts := syscall.Timespec{Sec: 1}
		return result(raw(syscall.SYS_CLOCK_SETTIME, 0, uintptr(unsafe.Pointer(&ts))), "clock_settime")
	case "settimeofday":
		tv := syscall.Timeval{Sec: 1}
		return result(syscall.Settimeofday(&tv), "settimeofday")
	case "reboot":
		return result(syscall.Reboot(syscall.LINUX_REBOOT_CMD_CAD_OFF), "reboot")
	case "kexec":
		return result(raw(246 /* kexec_load */, 0, 0, 0, 0), "kexec_load")
	case "swapon":
		p, _ := syscall.BytePtrFromString("/tmp/swap")
		return result(raw(syscall.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0), "swapon")
	case "userfaultfd":
		return result(raw(323 /* userfaultfd */, 0), "userfaultfd")
	case "io_uring":
		var params [120]byte
		return result(raw(425 /* io_uring_setup */, 1, uintptr(unsafe.Pointer(&params[0]))), "io_uring_setup")
	case "chroot":
		return result(syscall.Chroot("/tmp"), "chroot")
	case "raw-socket":
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
		if err == nil {
			syscall.Close(fd)
		}
		return result(err, "raw socket")
	case "packet-socket":
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, 0x0300)
		if err == nil {
			syscall.Close(fd)
		}
		return result(err, "packet socket")
	case "listen": // listen ADDR: print the address, wait to be reached
		ln, err := net.Listen("tcp", arg(args, 0, "0.0.0.0:0"))
		if err != nil {
			return result(err, "")
		}
		fmt.Println("LISTENING", ln.Addr())
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		return result(err, "accepted a connection")
	case "connect": // connect HOST:PORT
		c, err := net.DialTimeout("tcp", arg(args, 0, "127.0.0.1:1"), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return result(err, "connected to "+arg(args, 0, ""))
	case "udp": // udp HOST:PORT
		c, err := net.Dial("udp", arg(args, 0, "127.0.0.1:1"))
		if err != nil {
			return result(err, "")
		}
		defer c.Close()
		_, err = c.Write([]byte("hostile"))
		if err == nil {
			// A connected UDP socket reports an unreachable peer on a
			// later call; the tests check the host side as well.
			_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			_, err = c.Read(make([]byte, 1))
		}
		return result(err, "udp answered")
	case "sethostname":
		err := syscall.Sethostname([]byte("pwned"))
		h, _ := os.Hostname()
		return result(err, "hostname is now "+h)
	case "proc-sys":
		err := os.WriteFile("/proc/sys/kernel/hostname", []byte("pwned"), 0)
		return result(err, "wrote /proc/sys")
	case "sysfs":
		_, err := os.Stat("/sys/kernel")
		return result(err, "/sys is there")
	case "devices":
		ents, err := os.ReadDir("/dev")
		if err != nil {
			return result(err, "")
		}
		var names []string
		for _, e := range ents {
			// Lstat: the nodes in /dev itself. /dev/core, where /proc/kcore
			// exists, links to that masked path, which is /dev/null.
			if fi, err := os.Lstat("/dev/" + e.Name()); err == nil && fi.Mode()&os.ModeDevice != 0 {
				names = append(names, e.Name())
			}
		}
		return "OK " + strings.Join(names, ",")
	case "mknod":
		return result(syscall.Mknod("/tmp/mem", syscall.S_IFCHR|0o666, 1<<8|1), "made /dev/mem")
	case "open-dev": // open a device node shipped in the root
		f, err := os.OpenFile(arg(args, 0, "/devnode"), os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return result(err, "opened "+arg(args, 0, ""))
	case "setuid-root": // run a setuid binary shipped in the root; it prints its euid
		out, err := exec.Command(arg(args, 0, "/suid"), args[min(1, len(args)):]...).CombinedOutput()
		if err != nil {
			return result(err, "")
		}
		return "OK " + strings.TrimSpace(string(out))
	case "launched": // what a function got: open fds above 2, its exe, pid 1's exe, env, stdin
		var fds []string
		for fd := 3; fd < 1024; fd++ {
			if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); e == 0 {
				fds = append(fds, strconv.Itoa(fd))
			}
		}
		exe, err := os.Readlink("/proc/self/exe")
		if err != nil {
			exe = err.Error()
		}
		pid1, err := os.Readlink("/proc/1/exe")
		if err != nil {
			pid1 = err.Error()
		}
		in, err := io.ReadAll(os.Stdin)
		if err != nil {
			return "ERROR stdin: " + err.Error()
		}
		return fmt.Sprintf("OK fds=%s exe=%s pid1=%s BASE=%s X=%s FN=%s stdin=%q", strings.Join(fds, ","), exe, pid1,
			os.Getenv("BASE"), os.Getenv("X"), os.Getenv("CULVERT_FUNCTION"), in)
	case "euid":
		return fmt.Sprintf("OK euid=%d", os.Geteuid())
	case "caps":
		b, _ := os.ReadFile("/proc/self/status")
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Cap") || strings.HasPrefix(l, "NoNewPrivs") || strings.HasPrefix(l, "Seccomp:") {
				out = append(out, strings.ReplaceAll(l, "\t", ""))
			}
		}
		return "OK " + strings.Join(out, " ")
	case "rlimits":
		var nofile, core, nproc syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile)
		_ = syscall.Getrlimit(syscall.RLIMIT_CORE, &core)
		_ = syscall.Getrlimit(6 /* RLIMIT_NPROC */, &nproc)
		return fmt.Sprintf("OK nofile=%d core=%d nproc=%d", nofile.Max, core.Max, nproc.Max)
	case "symlink-out": // follow a symlink in the root that points at ARG
		b, err := os.ReadFile(arg(args, 0, "/link"))
		return result(err, fmt.Sprintf("read %d bytes through the link", len(b)))
	case "forkbomb":
		n := 0
		var err error
		for i := 0; i < 100000; i++ {
			cmd := exec.Command("/proc/self/exe", "sleep", "20")
			if err = cmd.Start(); err != nil {
				break
			}
			n++
		}
		return result(err, fmt.Sprintf("started %d processes", n))
	case "sleep":
		d, _ := strconv.Atoi(arg(args, 0, "10"))
		time.Sleep(time.Duration(d) * time.Second)
		return "OK slept"
	case "membomb": // allocate and touch ARG MiB
		mib, _ := strconv.Atoi(arg(args, 0, "1024"))
		var keep [][]byte
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		return fmt.Sprintf("ESCAPED allocated %d MiB", len(keep))
	case "spin":
		for {
		}
	case "flood": // write ARG MiB to stdout with no newline
		mib, _ := strconv.Atoi(arg(args, 0, "64"))
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = 'x'
		}
		for i := 0; i < mib; i++ {
			if _, err := os.Stdout.Write(buf); err != nil {
				return result(err, "")
			}
		}
		return "\nOK flooded"
	case "cpu-usage": // spin for ARG ms of wall time and report the CPU time got
		// The time before the loop (the process's start, which counts
		// in its usage when a container init execs it) is left out.
		ms, _ := strconv.Atoi(arg(args, 0, "1000"))
		used := func() time.Duration {
			var ru syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		before := used()
		end := time.Now().Add(time.Duration(ms) * time.Millisecond)
		for time.Now().Before(end) {
		}
		return fmt.Sprintf("OK cpu_ms=%d", (used() - before).Milliseconds())
	case "ls":
		var out []string
		_ = filepath.WalkDir(arg(args, 0, "/"), func(p string, d os.DirEntry, err error) error {
			if p == "/" {
				return nil
			}
			out = append(out, p)
			if err == nil && (p == "/proc" || p == "/dev") {
				return filepath.SkipDir
			}
			return nil
		})
		return "OK " + strings.Join(out, ",")
	}
	return "ERROR unknown attempt " + name
}
