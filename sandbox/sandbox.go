// Package sandbox owns how a function process is started, confined and
// stopped. A Runtime turns a Spec into a running Process whose stdin and
// stdout carry the function protocol and whose stderr is the function's log.
//
// The package defines the contract only; implementations live in
// subpackages. process runs plain child processes (no isolation) and is the
// baseline every isolating runtime is measured against. Nothing here knows
// about records or the protocol spoken over the pipes.
package sandbox

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// Spec describes one function instance to start.
type Spec struct {
	// Name identifies the instance in logs and errors, e.g.
	// "pipeline/function#0".
	Name string
	// Path of the executable and its arguments (Args excludes argv[0]).
	Path string
	Args []string
	// Env is the environment, as "K=V" pairs.
	Env []string
	// StartEnv is environment for this start only (e.g. exec mode's
	// per-record metadata), added to Env; a name in both takes StartEnv's
	// value (see MergeEnv). Setting it, even to an empty
	// non-nil slice, says that the spec's starts differ only in it: a
	// runtime that creates instances ahead (sandbox/container) then keeps
	// them for Env and hands StartEnv over at the start, rather than
	// treating every start as a new spec.
	StartEnv []string
	// Dir is the working directory; empty keeps the runtime's default.
	Dir string
	// Tenant groups instances that may share resources; runtimes that
	// isolate keep tenants apart.
	Tenant string
	// Stderr receives the function's standard error. Nil discards it.
	Stderr io.Writer
	// Isolation says how an isolating runtime confines the instance. The
	// process runtime ignores it.
	Isolation Isolation
}

// MergeEnv returns base with the entries of extra added, an entry of extra
// replacing base's of the same name: the environment of a start.
func MergeEnv(base, extra []string) []string {
	names := make(map[string]bool, len(extra))
	for _, kv := range extra {
		names[envName(kv)] = true
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if !names[envName(kv)] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

func envName(kv string) string {
	if i := strings.IndexByte(kv, '='); i >= 0 {
		return kv[:i]
	}
	return kv
}

// Isolation is what an isolating runtime needs beyond the command line.
type Isolation struct {
	// Root holds the files the function can see.
	Root Root
	// Limits are the instance's own cgroup limits; zero means the
	// runtime's default.
	Limits Limits
	// Network is the instance's network policy.
	Network Network
}

// Root describes the function's read-only root filesystem.
type Root struct {
	// Dir is a host directory mounted read-only as the container's /
	// (a function's files, or an unpacked image). Empty: the runtime
	// builds a root holding only Path and Binds.
	Dir string
	// Binds are host paths (files or directories) mounted read-only at the
	// same path inside, e.g. an interpreter the function needs.
	Binds []string
	// TmpfsBytes, when positive, mounts a tmpfs of that size at /tmp: the
	// only place the function can write.
	TmpfsBytes int64
}

// Limits are per-instance resource limits. Zero fields take the runtime's
// defaults.
type Limits struct {
	MemoryBytes int64
	Pids        int64
	// CPU in cores, e.g. 0.5.
	CPU float64
}

// Network is an instance's network policy.
type Network struct {
	// Mode is "none" (only its own loopback; the default) or "egress"
	// (outbound TCP to Allow only).
	Mode string
	// Allow lists the destinations egress may connect to.
	Allow []Endpoint
	// DNS, if set, is the one resolver (ip:port) the instance may query.
	DNS string
}

// Endpoint is a CIDR and an inclusive port range.
type Endpoint struct {
	CIDR     string
	FromPort uint16
	ToPort   uint16
}

// Process is a started function instance.
type Process interface {
	// Stdin is the function's standard input. Closing it signals EOF.
	Stdin() io.WriteCloser
	// Stdout is the function's standard output.
	Stdout() io.ReadCloser
	// Wait waits for the process to exit and for its stderr to be drained.
	// It may be called once.
	Wait() Exit
	// Kill stops the process and everything it started, at once.
	Kill() error
	// Pid is the process id as seen by the host.
	Pid() int
}

// Runtime starts processes.
type Runtime interface {
	// Start starts the instance described by spec. ctx bounds the start
	// only; the process lives until Kill or exit.
	Start(ctx context.Context, spec Spec) (Process, error)
	// Name of the runtime, for logs ("process", "libcontainer").
	Name() string
}

// Exit is how a process ended.
type Exit struct {
	// Code is the exit status, or -1 when killed by a signal.
	Code int
	// Signal that killed the process, if any (e.g. "killed").
	Signal string
	// OOMKilled is true when the runtime knows the kernel killed the
	// process for exceeding its memory limit.
	OOMKilled bool
	// Err is set when waiting itself failed.
	Err error
}

// Success reports a clean exit 0.
func (e Exit) Success() bool { return e.Err == nil && e.Code == 0 && e.Signal == "" }

func (e Exit) String() string {
	switch {
	case e.Err != nil:
		return "wait failed: " + e.Err.Error()
	case e.OOMKilled:
		return "killed: out of memory"
	case e.Signal != "":
		return "killed by signal " + e.Signal
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}
