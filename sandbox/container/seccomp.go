package container

// The seccomp profile, as a table. Everything not allowed here fails with
// EPERM (the default action), except clone3, which fails with ENOSYS so
// that glibc and Go fall back to clone, whose flags can be checked.
// docs/sandbox.md explains each group.

// Denied lists the calls the profile refuses on purpose, for the record
// and for the tests: none of them is in Allowed, so each fails with EPERM.
var Denied = []string{
	"ptrace", "mount", "umount", "umount2", "pivot_root", "unshare", "setns",
	"bpf", "perf_event_open", "keyctl", "add_key", "request_key",
	"kexec_load", "kexec_file_load", "reboot", "init_module", "finit_module", "delete_module", "swapon", "swapoff",
	"clock_settime", "settimeofday", "clock_adjtime", "adjtimex",
	"userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
	"open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree", "mount_setattr",
	"process_vm_readv", "process_vm_writev", "kcmp", "sethostname", "setdomainname", "chroot",
	"acct", "quotactl", "lookup_dcookie", "iopl", "ioperm", "vhangup", "syslog", "personality",
}

// Allowed lists the system calls a function may make without conditions.
// It covers what Go, C (glibc and musl), Python and Node programs use, and
// what runc's init still calls after it loads the filter.
var Allowed = []string{
	// files and descriptors
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"open", "openat", "openat2", "creat", "close", "close_range", "dup", "dup2", "dup3",
	"lseek", "_llseek", "fcntl", "fcntl64", "ioctl", "flock", "fsync", "fdatasync", "sync_file_range", "syncfs", "sync",
	"stat", "stat64", "fstat", "fstat64", "lstat", "lstat64", "newfstatat", "fstatat64", "statx",
	"statfs", "statfs64", "fstatfs", "fstatfs64",
	"access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
	"mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat",
	"symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
	"truncate", "ftruncate", "utime", "utimes", "utimensat", "futimesat", "umask", "mknod", "mknodat",
	"fallocate", "fadvise64", "readahead", "copy_file_range", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
	"pipe", "pipe2", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
	"setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
	"inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
	"memfd_create", "eventfd", "eventfd2", "signalfd", "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime",
	// polling
	"select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	// memory
	"brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mlock", "mlock2", "munlock", "mlockall", "munlockall",
	"msync", "mincore", "membarrier", "get_mempolicy", "set_mempolicy", "mbind", "pkey_alloc", "pkey_free", "pkey_mprotect",
	// processes and threads (clone: see cloneRule)
	"fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill", "tgkill",
	"getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
	"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
	"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
	"capget", "capset", "prctl", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
	"futex", "futex_waitv", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
	"sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
	"sched_getattr", "sched_setattr", "getpriority", "setpriority", "ioprio_get", "ioprio_set",
	"getrlimit", "setrlimit", "prlimit64", "ugetrlimit", "getrusage", "times", "uname", "sysinfo", "getrandom", "getcpu",
	"pidfd_open", "pidfd_send_signal", "pidfd_getfd",
	// signals and time
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo",
	"rt_tgsigqueueinfo", "sigaltstack", "pause", "alarm", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
	"gettimeofday", "time", "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
	// sockets (socket itself: see socketRules)
	"socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockopt", "setsockopt",
	// System V and POSIX IPC stay inside the ipc namespace
	"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd", "msgrcv", "msgctl",
	"mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
	"restart_syscall", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
}

// Clone flags that create namespaces: clone with any of them is refused.
const cloneNamespaceFlags = 0x00000080 | // CLONE_NEWTIME
	0x00020000 | // CLONE_NEWNS
	0x02000000 | // CLONE_NEWCGROUP
	0x04000000 | // CLONE_NEWUTS
	0x08000000 | // CLONE_NEWIPC
	0x10000000 | // CLONE_NEWUSER
	0x20000000 | // CLONE_NEWPID
	0x40000000 // CLONE_NEWNET

// Socket families and types the profile lets a function open. Raw and
// packet sockets (SOCK_RAW, SOCK_PACKET, AF_PACKET) are refused.
const (
	afUnix        = 1
	afInet        = 2
	afInet6       = 10
	afNetlink     = 16
	sockTypeMask  = 0xf
	sockStream    = 1
	sockDgram     = 2
	sockSeqpacket = 5
	netlinkRoute  = 0
)
