//go:build unix

package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// openStdio returns the frame streams. Done right (as SPEC.md 15 advises),
// frames use private close-on-exec copies of fds 0 and 1, fd 1 then points
// at stderr and os.Stdout is os.Stderr. The stdout-protected defect keeps
// fd 1 for frames and for everyone else; the slow-reader defect makes the
// frame descriptor non-blocking and writes each frame once.
func openStdio(shareStdout, nonBlocking bool) (io.Reader, frameWriter, error) {
	in := io.Reader(os.Stdin)
	outFd := 1
	if !shareStdout {
		ofd, err := unix.FcntlInt(1, unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return nil, nil, fmt.Errorf("dup stdout: %w", err)
		}
		ifd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return nil, nil, fmt.Errorf("dup stdin: %w", err)
		}
		if err := unix.Dup2(2, 1); err != nil {
			return nil, nil, fmt.Errorf("stdout to stderr: %w", err)
		}
		os.Stdout = os.Stderr
		in, outFd = os.NewFile(uintptr(ifd), "frames-in"), ofd
	}
	if nonBlocking {
		if err := unix.SetNonblock(outFd, true); err != nil {
			return nil, nil, err
		}
		return in, onceWriter(outFd), nil
	}
	return in, rawWriter(outFd), nil
}

// rawWriter writes with write(2), looping on short writes.
type rawWriter int

func (w rawWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(int(w), b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// onceWriter calls write(2) once and reports success whatever it wrote.
type onceWriter int

func (w onceWriter) Write(b []byte) (int, error) {
	unix.Write(int(w), b)
	return len(b), nil
}
