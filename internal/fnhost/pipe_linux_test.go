package fnhost

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func pipeSize(t *testing.T, f *os.File) int {
	t.Helper()
	n, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPipeFit: a pipe grows to the next power of two that holds a frame,
// never shrinks, and stops at pipeCap or at what the kernel allows.
func TestPipeFit(t *testing.T) {
	limit, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Skip("no /proc/sys/fs/pipe-max-size:", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	p := newPipe(w)
	if p.rc == nil || p.size != pipeSize(t, r) {
		t.Fatalf("newPipe: %+v, want the pipe's size %d", p, pipeSize(t, r))
	}
	start := p.size
	tests := []struct {
		frame int
		want  int
	}{
		{start / 2, start},   // fits already
		{150_000, 256 << 10}, // grown to a power of two
		{10_000, 256 << 10},  // never shrunk
		{10 << 20, pipeCap},  // capped
	}
	t.Logf("pipe-max-size %s", limit)
	for _, tc := range tests {
		p.fit(tc.frame)
		got := pipeSize(t, r)
		if got < tc.want && p.rc != nil {
			t.Errorf("after fit(%d): pipe holds %d bytes, want %d (or a refusal)", tc.frame, got, tc.want)
		}
		if got > max(tc.want, start) {
			t.Errorf("after fit(%d): pipe holds %d bytes, more than %d", tc.frame, got, tc.want)
		}
	}
	if p.rc != nil {
		t.Errorf("still resizing after reaching the cap: %+v", p)
	}
}

// TestNewPipeKinds: the stdio of an exec.Cmd (what sandbox/process hands
// over) can be resized; a regular file and a plain writer are left alone.
func TestNewPipeKinds(t *testing.T) {
	cmd := exec.Command("true")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	defer stdout.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	tests := []struct {
		name string
		f    any
		pipe bool
	}{
		{"exec stdin", stdin, true},
		{"exec stdout", stdout, true},
		{"regular file", file, false},
		{"not a file", struct{}{}, false},
	}
	for _, tc := range tests {
		p := newPipe(tc.f)
		if (p.rc != nil) != tc.pipe {
			t.Errorf("%s: resizable %v, want %v", tc.name, p.rc != nil, tc.pipe)
		}
		p.fit(1 << 20) // must not fail or panic either way
	}
}
