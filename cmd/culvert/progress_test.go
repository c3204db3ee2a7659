package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/internal/testbin"
)

// TestProgressPlain: off a terminal, progress is a plain line with the
// count and the rate, every interval, and no bar or control characters.
func TestProgressPlain(t *testing.T) {
	var buf testbin.Buffer
	p := newProgressEvery(&buf, "replay", 0, 50*time.Millisecond)
	p.add(7)
	waitFor(t, 5*time.Second, "a progress line", func() bool { return strings.Contains(buf.String(), "replay: 7 records, ") })
	p.add(3)
	waitFor(t, 5*time.Second, "a second progress line", func() bool { return strings.Contains(buf.String(), "replay: 10 records, ") })
	p.finish()
	out := buf.String()
	if !regexp.MustCompile(`(?m)^replay: 10 records, \d+/s$`).MatchString(out) {
		t.Errorf("progress lines:\n%s", out)
	}
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("control characters off a terminal: %q", out)
	}
}

// TestProgressTerminal: on a terminal (a pseudo-terminal here) progress is
// a bar redrawn in place, with the count and the rate.
func TestProgressTerminal(t *testing.T) {
	master, slave := openPTY(t)
	var out testbin.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			_, _ = out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	p := newProgressEvery(slave, "tap", 0, 50*time.Millisecond)
	for range 5 {
		p.add(1)
		time.Sleep(120 * time.Millisecond)
	}
	// The bar redraws at most every 100 ms: on a loaded machine the last
	// add may fall inside that; a later add(0) draws it.
	waitFor(t, 5*time.Second, "the bar at 5", func() bool {
		if strings.Contains(out.String(), "tap (5/") {
			return true
		}
		time.Sleep(120 * time.Millisecond)
		p.add(0)
		return false
	})
	p.finish()
	slave.Close()
	master.SetReadDeadline(time.Now().Add(2 * time.Second))
	<-read
	s := out.String()
	// "\r⠼ tap (5/-, 10 records/s) [0s]": count, rate, redrawn with \r.
	if !strings.Contains(s, "\r") || !regexp.MustCompile(`tap \(5/[-\d]*, \d+ records/s\)`).MatchString(s) {
		t.Errorf("no progress bar with count and rate on a terminal: %q", s)
	}
	if regexp.MustCompile(`(?m)^tap: \d+ records, `).MatchString(s) {
		t.Errorf("plain progress lines on a terminal: %q", s)
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	var unlock int32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlockpt: %v", e)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}
