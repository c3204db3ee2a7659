//go:build linux

package container

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRemoveStaleRoots: skeletons of exited processes go; those of live
// processes, of this one, and of older versions (key alone) stay.
func TestRemoveStaleRoots(t *testing.T) {
	dir := t.TempDir()
	const key = "0123456789abcdef01234567"
	dead := 1 << 22 // above pid_max's default: no such process
	tests := []struct {
		name string
		gone bool
	}{
		{fmt.Sprintf("%s-%d-deadbeef", key, dead), true},
		{fmt.Sprintf("%s-%d-deadbeef", key, os.Getpid()), false},
		{fmt.Sprintf("%s-%d-deadbeef", key, os.Getppid()), false},
		{key, false},
		{key + ".tmp123", false},
	}
	for _, tt := range tests {
		if err := os.MkdirAll(filepath.Join(dir, tt.name, "usr"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleRoots(dir)
	for _, tt := range tests {
		_, err := os.Stat(filepath.Join(dir, tt.name))
		if gone := os.IsNotExist(err); gone != tt.gone {
			t.Errorf("%s: removed %v, want %v", tt.name, gone, tt.gone)
		}
	}
}

// TestSharedStateDir: two runtimes (two culvert processes) sharing a state
// directory start the same spec at the same time, pre-created and cold;
// each builds its own root, and every start succeeds.
func TestSharedStateDir(t *testing.T) {
	a := newRuntime(t, true)
	b, err := New(Options{
		StateDir: a.opts.StateDir, CgroupParent: a.opts.CgroupParent + "-b", Precreate: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); removeParent(b) })
	spec := hostile("lines")
	spec.Name, spec.Env = "test", []string{"PATH=/usr/bin:/bin"}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 4 {
		r := a
		if i%2 == 1 {
			r = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i < 2 {
				r.Precreate(spec, 1)
			}
			out, stderr, ex := run(t, r, spec, "whoami\n", 20*time.Second)
			if out != "OK uid=0 gid=0 pid=1\n" || !ex.Success() {
				errs <- fmt.Errorf("start %d: stdout %q (exit %v, stderr %q)", i, out, ex, stderr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	roots, _ := os.ReadDir(filepath.Join(a.opts.StateDir, "roots"))
	var names []string
	for _, e := range roots {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("roots %s, want one per runtime", strings.Join(names, " "))
	}
}
