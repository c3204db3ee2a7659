// Package spawn is the direct cold-start path of sandbox/container: a
// small C program that runs in a constructor, before the Go runtime, when
// the culvert binary is started with _CULVERT_SPAWN set. Importing the
// package (sandbox/container does) links it into every binary that can
// run containers; in every other start of such a binary the constructor
// returns at once.
//
// # Processes
//
// The runtime starts /proc/self/exe once, as the fork server, with
// _CULVERT_SPAWN=server,3,4: fd 3 is its end of a SOCK_SEQPACKET socket
// pair, fd 4 the read end of the runtime's life pipe. The server keeps
// one shim forked ahead (clone with CLONE_PARENT, so that it is the
// runtime's child, which the runtime waits for by pid), named
// culvert-spawn-w while it waits. For each start the runtime writes the
// request into a fresh pipe and sends one byte with five descriptors
// (SCM_RIGHTS) on the socket: the instance's stdin, stdout and stderr
// ends, the request pipe's read end and the status pipe's write end. The
// waiting shim takes the message, renames itself culvert-spawn, moves
// the five descriptors to 0-4 and runs the start, and tells the server
// once its init is released (or the server sees it exit, by pidfd). The
// server forks the next shim 30 ms later, or at once if a start is
// already waiting on the socket: made alongside a start, on the other
// core, the next shim and its init slowed that start by more than they
// saved the next. The server exits when the runtime closes its
// end of the socket or the life pipe hangs up; so does a waiting shim.
// When the runtime stops a server, it reaps the shim left waiting (a
// child named culvert-spawn-w that holds the server's socket).
//
// A waiting shim, at the lowest priority (nice 19), unless a start is
// already waiting for it, clones an init ahead
// in new user, mount, pid, ipc, uts and network namespaces (none of the
// start's data is needed for that). First it makes a /dev for it,
// detached (a tmpfs, the four device nodes bound in, the symlinks,
// read-only: the shim is host root, and the init cannot make files
// before its id maps are written). The init, still at the lowest
// priority and before any start: closes every descriptor but its socket
// pair with the shim and that /dev, brings its loopback up, makes itself
// a session leader, makes its mount tree private, mounts its /proc
// detached with the masked and read-only paths on it, empties its
// capability bounding and ambient sets, maps the pages of code and data
// it will use, and waits. A start whose /proc and /dev are those
// attaches them (move_mount) instead of making its own; where the kernel
// cannot mount on detached mounts (before 6.15), starts make their own. The
// shim then returns to the server's priority and waits for its start.
//
// Without the server (Options.ExecShim, or when the server cannot be
// started), the runtime starts /proc/self/exe per start with os/exec (no
// namespace flags on the Go side, so Go uses vfork, cheap from a large
// parent), with the instance's stdio pipes as fds 0-2, the request pipe's
// read end as fd 3, the status pipe's write end as fd 4, the life pipe's
// read end as fd 5 and _CULVERT_SPAWN=3,4,5 as its only environment.
//
// The shim writes its own pid on the status pipe and reads the request
// into memory it shares with its init. It uses the init cloned ahead if
// the request asks for exactly those namespaces plus a cgroup namespace,
// a new network namespace and its loopback up (network "none", the
// default), and gives it back the server's priority; otherwise it kills
// that init, joins the prepared network namespace if one is named, and
// clones the init into the namespaces the request names (but the cgroup
// namespace). Then it releases it: a message on their socket pair
// carrying the start's stdin, stdout, stderr and status pipe. It writes
// the init's uid_map and gid_map meanwhile, opens a pidfd for it, reports
// the init's host pid on the status pipe, and sends a second message (the
// maps are written). While the init sets itself up, the shim moves it
// into the instance's cgroup (writes its pid to cgroup.procs in every
// hierarchy the request names; the optional ones, named hierarchies, as
// it can), then sends a third message, and tells the server it took a
// start. It closes
// the status pipe and polls the init's pidfd and the life pipe. If the
// life pipe hangs up (the culvert process is gone), it SIGKILLs the init,
// pid 1 of its pid namespace, which takes the rest of the namespace with
// it. It exits with the init's exit status, or dies of the signal that
// killed it.
//
// The init (pid 1 of its namespaces), in this order: PR_SET_PDEATHSIG
// (SIGKILL) and wait for the release; the start's stdio as fds 0-2; the
// request parsed; the second message awaited; setsid (unless done ahead); setgroups(0), setresgid(0),
// setresuid(0), then PR_SET_PDEATHSIG again and a check that the shim is
// still there; sethostname; / made MS_PRIVATE|MS_REC (unless done ahead);
// the root bound onto itself; the mounts in order (each destination
// resolved inside the root with openat2 RESOLVE_IN_ROOT; read-only binds
// remounted read-only with the nosuid/nodev/noexec flags the source mount
// has, which a user namespace may not clear); /dev: the device nodes
// bound from the host, and the ptmx, fd, stdin, stdout, stderr (and core)
// links, as runc makes them; /dev (any non-bind mount with MS_RDONLY)
// remounted read-only; pivot_root(".", ".") and the old root detached;
// masked paths (/dev/null over files, a read-only tmpfs over directories)
// and read-only paths; / remounted read-only; loopback up, when the
// network namespace is new (unless done ahead); rlimits; every fd above 2
// marked close-on-exec; chdir to the working directory; the command
// looked up (a name with a slash as given, otherwise in the environment's
// PATH, inside the new root); the shim's second message awaited (the
// init is in its cgroups); a new cgroup namespace, if the request's clone
// flags name one, so that its root is the instance's cgroup; all
// capabilities dropped (bounding set, ambient, then capset to zero; the
// uid stays 0 in the namespace); no_new_privs; the seccomp filter, last;
// execve. A step that fails writes its name and errno to the status pipe
// and the init exits. An init cloned ahead whose shim goes away dies
// with it (PR_SET_PDEATHSIG).
//
// # Request format (version 1)
//
// All integers are little-endian. A 12-byte header: "CVSP", the version
// byte 1, three zero bytes, and the length of the body (u32, at most
// 16 MiB). The body is a sequence of records: a u16 tag, a u32 payload
// length, the payload. Strings are raw bytes without NUL. An unknown tag,
// a record past the end, or a fixed-size record of the wrong size fails
// the request.
//
//	 1 root        string, absolute host path of the container's root
//	 2 hostname    string
//	 3 clone flags u64, the CLONE_NEW* namespaces of the init (the
//	               cgroup namespace is entered once the init is in its cgroups)
//	 4 netns       string, a network namespace to join before the clone
//	 5 uid map     string, written to /proc/PID/uid_map
//	 6 gid map     string, written to /proc/PID/gid_map
//	 7 mount       u64 mount flags, then source, destination, fstype
//	               ("bind" for a bind mount) and data, each NUL-terminated
//	 8 device      string, a host device node (/dev/NAME) bound at the same path
//	 9 masked path string
//	10 read-only path string
//	11 rlimit      u32 resource, u64 soft, u64 hard
//	12 arg         string, repeated: argv, argv[0] the command
//	13 env         string, repeated: "K=V"
//	14 cwd         string
//	15 seccomp     a BPF program: struct sock_filter entries (8 bytes each)
//	16 flags       u32: 1 read-only root, 2 no_new_privs, 4 bring loopback up
//	17 cgroup      string, repeated: a cgroup directory the shim moves the init into
//	18 opt cgroup  string, repeated: one it moves the init into if it can (a named hierarchy)
//
// Root, at least one arg, and both id maps are required.
//
// # Status
//
// The status pipe carries messages from the shim and the init: first 'S'
// and a u32 pid (the shim's own), then 'P' and a u32 host pid (the
// init's), then 'A' if the init attached the /proc made ahead and 'D' if
// it attached the /dev, or at any point 'E', a u32 errno, a u32 length
// and the failed step's name. EOF after 'P' without an 'E' means the
// function was exec'd (the init's copy of the pipe closes on exec). The runtime waits for the pipe's
// hang-up and then reads all of it.
package spawn
