//go:build linux

package container

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// Init is the Go half of the container init, and the launcher. A program
// that uses this runtime calls it from an init function, before anything
// else:
//
//	func init() { container.Init() }
//
// When the program was started as a container init (os.Args[1] is
// "init" and libcontainer's nsenter has run), Init sets up the container
// and execs the function; when it was started as a launcher inside a
// container (see launch), it execs the function with the environment it
// is given. Either way it never returns. Otherwise it returns at once.
func Init() {
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		libcontainer.Init()
	}
	if len(os.Args) > 2 && os.Args[1] == launchArg && os.Getpid() == 1 {
		err := launch(os.Args[2:])
		fmt.Fprintln(os.Stderr, "culvert launcher:", err)
		os.Exit(127)
	}
}

// The launcher. A pre-created container whose starts each bring their own
// environment (sandbox.Spec.StartEnv, exec mode's per-record metadata)
// cannot have its function's environment fixed when it is created, as
// libcontainer does. Its init instead execs this binary again, as
//
//	culvert culvert-launch PATH ARGS...
//
// with the spec's base environment. That process is the container's pid 1,
// under the container's seccomp filter, no_new_privs, no capabilities and
// read-only root, like the function it becomes. It writes launchReadyByte
// to fd 3 (the runtime's ready pipe) and closes it, then blocks reading
// its preamble from stdin: a 4-byte big-endian length, then that many
// bytes of "K=V" entries, each ending in a NUL. It marks every descriptor
// above 2 close-on-exec and execs PATH with the base environment and the
// preamble's (sandbox.MergeEnv). The rest of stdin, unread, is the
// function's.
//
// This binary is linked dynamically, and its ELF interpreter and
// libraries are not in the function's root: the init runs the host's
// interpreter from a descriptor, with this binary and its libraries as
// descriptors too (Runtime.launcherFds).
const (
	launchArg       = "culvert-launch"
	launchReadyFd   = 3
	launchReadyByte = 'R'
	// maxPreamble bounds the preamble; execve refuses more anyway.
	maxPreamble = 4 << 20
)

func launch(argv []string) error {
	ready := os.NewFile(launchReadyFd, "ready")
	if _, err := ready.Write([]byte{launchReadyByte}); err != nil {
		return fmt.Errorf("ready pipe: %w", err)
	}
	_ = ready.Close()
	env, err := readPreamble(os.Stdin)
	if err != nil {
		return err
	}
	// Nothing of the launcher's may reach the function: whatever this
	// binary's package inits opened closes on exec.
	if err := unix.CloseRange(launchReadyFd, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	err = unix.Exec(argv[0], argv, sandbox.MergeEnv(os.Environ(), env))
	return fmt.Errorf("exec %s: %w", argv[0], err)
}

// preamble encodes env for a launcher.
func preamble(env []string) ([]byte, error) {
	n := 0
	for _, kv := range env {
		if strings.IndexByte(kv, 0) >= 0 || !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("environment entry %q: not K=V, or holds a NUL byte", kv)
		}
		n += len(kv) + 1
	}
	if n > maxPreamble {
		return nil, fmt.Errorf("start environment of %d bytes exceeds %d", n, maxPreamble)
	}
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+n), uint32(n))
	for _, kv := range env {
		b = append(append(b, kv...), 0)
	}
	return b, nil
}

// readPreamble reads exactly one preamble from r.
func readPreamble(r io.Reader) ([]string, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("reading the preamble: %w", err)
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxPreamble {
		return nil, fmt.Errorf("preamble of %d bytes exceeds %d", n, maxPreamble)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("reading the preamble: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	if b[n-1] != 0 {
		return nil, errors.New("preamble: last entry does not end in NUL")
	}
	return strings.Split(string(b[:n-1]), "\x00"), nil
}
