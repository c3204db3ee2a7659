//go:build linux

package fnhost

import (
	"math/bits"
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeCap is the largest pipe capacity the host asks for: a frame larger
// than that takes several writes.
const pipeCap = 1 << 20

// pipe grows the kernel buffer of one of an instance's stdio pipes so that
// a frame fits whole: the writer then hands it over with one write instead
// of one per 64 KiB (the default), each waiting for the reader to drain the
// last. It only grows, to what the frames written so far need, up to
// pipeCap; once the kernel refuses (pipe-max-size, the per-user pipe
// budget), it stops asking. The kernel counts pipe buffers per user
// (fs.pipe-user-pages-soft, 64 MiB by default): an instance whose frames
// are 150 KB takes 512 KiB of it (two 256 KiB pipes) instead of 128 KiB. It
// is not safe for concurrent use.
type pipe struct {
	rc   syscall.RawConn // nil: not a pipe we can resize
	size int
}

func newPipe(f any) *pipe {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return &pipe{}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return &pipe{}
	}
	p := &pipe{rc: rc}
	var size int
	if err := rc.Control(func(fd uintptr) { size, err = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) }); err != nil || size <= 0 {
		return &pipe{} // not a pipe (a file, a socket)
	}
	p.size = size
	return p
}

// fit makes room for a frame of n bytes, as far as it can.
func (p *pipe) fit(n int) {
	if p == nil || p.rc == nil || n <= p.size {
		return
	}
	want := min(pipeCap, 1<<bits.Len(uint(n-1)))
	var got int
	var err error
	if cerr := p.rc.Control(func(fd uintptr) { got, err = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, want) }); cerr != nil || err != nil {
		p.rc = nil
		return
	}
	p.size = got
	if got >= pipeCap {
		p.rc = nil // as large as it gets
	}
}
