//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package culvert

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// takeStdio moves the protocol off fds 0 and 1: it dups them to private
// close-on-exec descriptors, points fd 1 at stderr and fd 0 at /dev/null,
// and sets os.Stdout to os.Stderr. Whatever prints to stdout afterwards (this
// process, a C library, a child that inherits fd 1) goes to the log, and
// nothing can read the host's frames by accident.
func takeStdio() (in, out *os.File, err error) {
	ofd, err := unix.FcntlInt(1, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, nil, fmt.Errorf("dup stdout: %w", err)
	}
	ifd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		unix.Close(ofd)
		return nil, nil, fmt.Errorf("dup stdin: %w", err)
	}
	if err := unix.Dup2(2, 1); err != nil {
		// No stderr: send stray output nowhere rather than into frames.
		if err := devNullOnto(1, unix.O_WRONLY); err != nil {
			return nil, nil, fmt.Errorf("redirecting stdout: %w", err)
		}
	}
	if err := devNullOnto(0, unix.O_RDONLY); err != nil {
		return nil, nil, fmt.Errorf("redirecting stdin: %w", err)
	}
	os.Stdout = os.Stderr
	return os.NewFile(uintptr(ifd), "culvert-host-frames"), os.NewFile(uintptr(ofd), "culvert-function-frames"), nil
}

func devNullOnto(fd, mode int) error {
	n, err := unix.Open("/dev/null", mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(n)
	return unix.Dup2(n, fd)
}
