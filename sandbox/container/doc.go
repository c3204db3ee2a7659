// Package container is the sandbox.Runtime that runs every function
// instance in its own container, described for and largely built by
// libcontainer: user, pid, mount, ipc, uts,
// network and cgroup namespaces; a read-only root holding only the
// function's files; no capabilities; no_new_privs; rlimits; a default-deny
// seccomp allowlist; cgroup limits under a per-tenant parent; and /proc
// masked the way runc masks it.
//
// It owns the container configuration, the function's root (a directory,
// an unpacked image, or one built from the command's ELF dependencies),
// the tenant uid ranges, and pre-created containers that make a start an
// exec. It never touches records or the function protocol, and it never
// runs anything unconfined: when the host cannot sandbox, New fails and
// says why.
//
// Cold starts go through the direct spawner (internal/spawn: a C shim
// and init that run before the Go runtime of this binary started again)
// unless Options.StockCold selects libcontainer's Create, Start and Exec;
// pre-created and launcher containers are libcontainer's.
//
// The culvert binary is its own container init: a program using this
// package must call Init first thing when os.Args[1] is "init" (see Init).
package container
