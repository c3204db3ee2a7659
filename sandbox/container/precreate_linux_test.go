//go:build linux

package container

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestPrecreate: with Precreate, the second start of a spec uses a
// container created in the background, and runs the function the same.
func TestPrecreate(t *testing.T) {
	r := newRuntime(t, true)
	spec := hostile("lines")
	spec.Name, spec.Env = "test", []string{"PATH=/usr/bin:/bin"}
	r.Precreate(spec)
	for i := range 3 {
		deadline := time.Now().Add(5 * time.Second)
		for r.pooled() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if r.pooled() != 1 {
			t.Fatalf("round %d: %d containers pre-created, want 1", i, r.pooled())
		}
		out, stderr, ex := run(t, r, spec, "whoami\nprocs\nwrite /x\n", 10*time.Second)
		want := "OK uid=0 gid=0 pid=1\nOK 1\nDENIED EROFS\n"
		if out != want || !ex.Success() {
			t.Fatalf("round %d: stdout %q (exit %v, stderr %q), want %q", i, out, ex, stderr, want)
		}
	}
	// Close destroys the waiting container.
	_ = r.Close()
	if n := r.pooled(); n != 0 {
		t.Errorf("%d containers left after Close", n)
	}
}

// TestPrecreateStarts: after Precreate (what the engine calls when a
// pipeline is loaded), the first start, a start right away while the
// container is still being created, and the start after the instance has
// exited (a pool scaled to zero) all find a container waiting; a spec never
// pre-created and started once starts cold.
func TestPrecreateStarts(t *testing.T) {
	r := newRuntime(t, true)
	spec := hostile("lines")
	spec.Name, spec.Env = "test", []string{"PATH=/usr/bin:/bin"}
	want := "OK uid=0 gid=0 pid=1\n"
	tests := []struct {
		name               string
		before             func()
		precreated, cold   uint64
		waitForPrecreation bool
	}{
		{name: "right after Precreate", before: func() { r.Precreate(spec) }, precreated: 1},
		{name: "after scale to zero", waitForPrecreation: true, precreated: 2},
		{name: "again", waitForPrecreation: true, precreated: 3},
		{name: "other spec, first start", before: func() { spec.Args = []string{"lines", "x"} }, precreated: 3, cold: 1},
	}
	for _, tt := range tests {
		if tt.before != nil {
			tt.before()
		}
		if tt.waitForPrecreation {
			deadline := time.Now().Add(10 * time.Second)
			for r.pooled() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
		out, stderr, ex := run(t, r, spec, "whoami\n", 10*time.Second)
		if out != want || !ex.Success() {
			t.Fatalf("%s: stdout %q (exit %v, stderr %q), want %q", tt.name, out, ex, stderr, want)
		}
		if st := r.Stats(); st.Precreated != tt.precreated || st.Cold != tt.cold {
			t.Fatalf("%s: %+v, want %d pre-created and %d cold starts", tt.name, st, tt.precreated, tt.cold)
		}
	}
}

func (r *Runtime) pooled() int {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return len(r.pool)
}

// BenchmarkStart measures requested → first output line → exit, cold and
// pre-created. bench/coldstart compares it with plain exec, runc and crun.
func BenchmarkStart(b *testing.B) {
	for _, pre := range []bool{false, true} {
		name := "cold"
		if pre {
			name = "precreated"
		}
		b.Run(name, func(b *testing.B) {
			r := newRuntime(b, pre)
			spec := hostile("hello")
			spec.Stderr = io.Discard
			spec.Env = []string{"PATH=/usr/bin:/bin"}
			r.Precreate(spec)
			for b.Loop() {
				if pre {
					b.StopTimer()
					for r.pooled() == 0 {
						time.Sleep(time.Millisecond)
					}
					b.StartTimer()
				}
				p, err := r.Start(b.Context(), spec)
				if err != nil {
					b.Fatal(err)
				}
				out, _ := io.ReadAll(p.Stdout())
				p.Wait()
				if !strings.HasPrefix(string(out), "OK hello") {
					b.Fatalf("stdout %q", out)
				}
			}
		})
	}
}
