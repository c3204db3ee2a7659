//go:build linux

package container

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/sandbox"
)

// TestPrecreate: with Precreate, the second start of a spec uses a
// container created in the background, and runs the function the same.
func TestPrecreate(t *testing.T) {
	r := newRuntime(t, true)
	spec := hostile("lines")
	spec.Name, spec.Env = "test", []string{"PATH=/usr/bin:/bin"}
	r.Precreate(spec, 1)
	for i := range 3 {
		deadline := time.Now().Add(5 * time.Second)
		for r.waiting() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if r.waiting() != 1 {
			t.Fatalf("round %d: %d containers pre-created, want 1", i, r.waiting())
		}
		out, stderr, ex := run(t, r, spec, "whoami\nprocs\nwrite /x\n", 10*time.Second)
		want := "OK uid=0 gid=0 pid=1\nOK 1\nDENIED EROFS\n"
		if out != want || !ex.Success() {
			t.Fatalf("round %d: stdout %q (exit %v, stderr %q), want %q", i, out, ex, stderr, want)
		}
	}
	// Close destroys the waiting container.
	_ = r.Close()
	if n := r.waiting(); n != 0 {
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
		{name: "right after Precreate", before: func() { r.Precreate(spec, 1) }, precreated: 1},
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
			for r.waiting() == 0 && time.Now().Before(deadline) {
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

// waiting counts the containers ready to be taken, all specs.
func (r *Runtime) waiting() int {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	n := 0
	for _, s := range r.keys {
		n += len(s.ready)
	}
	return n
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
			r.Precreate(spec, 1)
			for b.Loop() {
				if pre {
					b.StopTimer()
					for r.waiting() == 0 {
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

// waitingFor counts the containers ready to be taken for spec.
func (r *Runtime) waitingFor(spec sandbox.Spec) int {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if s := r.keys[specKey(cmp.Or(spec.Tenant, "default"), spec)]; s != nil {
		return len(s.ready)
	}
	return 0
}

// pending counts the containers waiting and being created, all specs.
func (r *Runtime) pending() int {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return r.pooled
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startAll starts n instances of spec at once, feeds each "whoami" and
// checks its answer.
func startAll(t *testing.T, r *Runtime, spec sandbox.Spec, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := r.Start(context.Background(), spec)
			if err != nil {
				errs <- err
				return
			}
			go func() {
				_, _ = io.WriteString(p.Stdin(), "whoami\n")
				_ = p.Stdin().Close()
			}()
			timer := time.AfterFunc(20*time.Second, func() { _ = p.Kill() })
			defer timer.Stop()
			out, _ := io.ReadAll(p.Stdout())
			if ex := p.Wait(); string(out) != "OK uid=0 gid=0 pid=1\n" || !ex.Success() {
				errs <- fmt.Errorf("stdout %q, exit %v", out, ex)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestPrecreateSpares: after Precreate(spec, n), n simultaneous starts
// (the pool scaling up, or several instances dying at once) are all served
// by pre-created containers, both right away (while they are being
// created) and once they wait; the spares refill to n, never more, and n
// is capped at MaxSpares.
func TestPrecreateSpares(t *testing.T) {
	r := newRuntime(t, true)
	spec := hostile("lines")
	spec.Name, spec.Env = "spares", []string{"PATH=/usr/bin:/bin"}
	const n = 3
	r.Precreate(spec, n)
	startAll(t, r, spec, n) // while the n are being created
	if st := r.Stats(); st.Precreated != n || st.Cold != 0 {
		t.Fatalf("right after Precreate: %+v, want %d pre-created starts and none cold", st, n)
	}
	waitUntil(t, "the spares to refill", func() bool { return r.waitingFor(spec) == n })
	startAll(t, r, spec, n)
	if st := r.Stats(); st.Precreated != 2*n || st.Cold != 0 {
		t.Fatalf("once waiting: %+v, want %d pre-created starts and none cold", st, 2*n)
	}
	// One more than there are spares: that one is cold.
	waitUntil(t, "the spares to refill", func() bool { return r.waitingFor(spec) == n })
	startAll(t, r, spec, n+1)
	if st := r.Stats(); st.Precreated != 3*n || st.Cold != 1 {
		t.Fatalf("n+1 at once: %+v, want %d pre-created starts and 1 cold", st, 3*n)
	}
	waitUntil(t, "the spares to refill", func() bool { return r.waitingFor(spec) == n && r.pending() == n })
	time.Sleep(upGrace + 200*time.Millisecond)
	if got := r.pending(); got != n {
		t.Fatalf("%d containers waiting or being created, want %d", got, n)
	}

	// Asking for more than MaxSpares gets MaxSpares.
	other := spec
	other.Args = []string{"lines", "other"}
	r.Precreate(other, 10)
	waitUntil(t, "the capped spares", func() bool { return r.waitingFor(other) == MaxSpares })
	time.Sleep(200 * time.Millisecond)
	if got := r.pending(); got != n+MaxSpares {
		t.Fatalf("%d containers waiting or being created, want %d", got, n+MaxSpares)
	}
	_ = r.Close()
	if n := r.waiting(); n != 0 {
		t.Errorf("%d containers left after Close", n)
	}
}

// TestPrecreateBound: the runtime's bound on waiting containers holds over
// all specs, and a spec that finds none waiting starts cold.
func TestPrecreateBound(t *testing.T) {
	r := newRuntime(t, true)
	r.pmu.Lock()
	r.maxPool = 3
	r.pmu.Unlock()
	a := hostile("lines")
	a.Name, a.Env = "a", []string{"PATH=/usr/bin:/bin"}
	b := a
	b.Args = []string{"lines", "b"}
	r.Precreate(a, 2)
	r.Precreate(b, 2)
	waitUntil(t, "the pool to fill", func() bool { return r.waiting() == 3 })
	time.Sleep(200 * time.Millisecond)
	if got, ga, gb := r.pending(), r.waitingFor(a), r.waitingFor(b); got != 3 || ga != 2 || gb != 1 {
		t.Fatalf("%d waiting or being created (a %d, b %d), want 3 (a 2, b 1)", got, ga, gb)
	}
	startAll(t, r, b, 2)
	if st := r.Stats(); st.Precreated != 1 || st.Cold != 1 {
		t.Fatalf("%+v, want 1 pre-created start and 1 cold", st)
	}
	waitUntil(t, "the refill", func() bool { return r.waitingFor(b) == 1 })
	time.Sleep(upGrace + 200*time.Millisecond)
	if got := r.pending(); got != 3 {
		t.Fatalf("%d waiting or being created, want 3", got)
	}
}

// TestLauncher: a spec with a StartEnv, pre-created, runs its function
// through the launcher: the function gets the base and the per-start
// environment and exactly its stdin; it holds no descriptor above 2, and
// neither its own exe nor pid 1's is the culvert binary. A cold start of
// the same spec (none waiting) gives it the same.
func TestLauncher(t *testing.T) {
	r := newRuntime(t, true)
	spec := hostile("env")
	spec.Name, spec.Env, spec.StartEnv = "launcher", []string{"PATH=/usr/bin:/bin", "BASE=1", "X=base"}, []string{}
	r.Precreate(spec, 1)
	stdin := "the record\x00\n\xffbytes"
	want := fmt.Sprintf("OK fds= exe=%s pid1=%s BASE=1 X=a b=c FN= stdin=%q\n", hostileBin, hostileBin, stdin)
	for i, startEnv := range [][]string{
		{"HOSTILE_ATTEMPT=launched", "X=a b=c"},
		{"HOSTILE_ATTEMPT=launched", "X=a b=c", "CULVERT_RECORD_ID=r2"},
	} {
		waitUntil(t, "a waiting container", func() bool { return r.waitingFor(spec) == 1 })
		spec.StartEnv = startEnv
		out, stderr, ex := run(t, r, spec, stdin, 20*time.Second)
		if out != want || !ex.Success() {
			t.Fatalf("start %d: stdout %q (exit %v, stderr %q), want %q", i, out, ex, stderr, want)
		}
		if st := r.Stats(); st.Precreated != uint64(i+1) || st.Cold != 0 {
			t.Fatalf("start %d: %+v, want %d pre-created starts and none cold", i, st, i+1)
		}
	}
	waitUntil(t, "a waiting container", func() bool { return r.waitingFor(spec) == 1 })
	startAll2 := make(chan string, 2)
	for range 2 { // the second finds none waiting
		go func() {
			out, _, _ := run(t, r, spec, stdin, 20*time.Second)
			startAll2 <- out
		}()
	}
	for range 2 {
		if out := <-startAll2; out != want {
			t.Errorf("stdout %q, want %q", out, want)
		}
	}
	if st := r.Stats(); st.Precreated != 3 || st.Cold != 1 {
		t.Fatalf("%+v, want 3 pre-created starts and 1 cold", st)
	}
}

func TestPreamble(t *testing.T) {
	tests := []struct {
		name    string
		env     []string
		wantErr bool
	}{
		{name: "none", env: nil},
		{name: "some", env: []string{"A=1", "B=x=y z", "C="}},
		{name: "NUL", env: []string{"A=1\x00B=2"}, wantErr: true},
		{name: "no =", env: []string{"A"}, wantErr: true},
		{name: "too big", env: []string{"A=" + strings.Repeat("x", maxPreamble)}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := preamble(tt.env)
			if (err != nil) != tt.wantErr {
				t.Fatalf("preamble: %v, want error %t", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			rd := strings.NewReader(string(b) + "the record")
			got, err := readPreamble(rd)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.env) {
				t.Errorf("read %q, want %q", got, tt.env)
			}
			if rest, _ := io.ReadAll(rd); string(rest) != "the record" {
				t.Errorf("left %q on stdin, want the record", rest)
			}
		})
	}
	for _, bad := range []string{"", "\x00\x00", "\x00\x00\x00\x02A=", "\xff\xff\xff\xff"} {
		if _, err := readPreamble(strings.NewReader(bad)); err == nil {
			t.Errorf("readPreamble(%q): no error", bad)
		}
	}
}

// TestLauncherUnavailable: where the launcher cannot run (here its files
// are made unavailable), an exec-mode spec's starts go cold and still get
// their per-start environment and stdin, and the runtime stops creating
// launcher containers for the spec instead of failing at every start.
func TestLauncherUnavailable(t *testing.T) {
	r := newRuntime(t, true)
	r.launcherOnce.Do(func() { r.launcherErr = errors.New("launcher: unavailable in this test") })
	var logs testbin.Buffer
	r.log = slog.New(slog.NewTextHandler(&logs, nil))
	spec := hostile("env")
	spec.Name, spec.Env, spec.StartEnv = "nolauncher", []string{"PATH=/usr/bin:/bin", "BASE=1", "X=base"}, []string{}
	r.Precreate(spec, 2)
	waitUntil(t, "the failed creations", func() bool { return r.pending() == 0 })
	want := fmt.Sprintf("OK fds= exe=%s pid1=%s BASE=1 X=rec FN= stdin=%q\n", hostileBin, hostileBin, "in")
	for i := range 2 {
		spec.StartEnv = []string{"HOSTILE_ATTEMPT=launched", "X=rec"}
		out, stderr, ex := run(t, r, spec, "in", 20*time.Second)
		if out != want || !ex.Success() {
			t.Fatalf("start %d: stdout %q (exit %v, stderr %q), want %q", i, out, ex, stderr, want)
		}
	}
	time.Sleep(600 * time.Millisecond) // past upGrace: a refill would have begun
	if st := r.Stats(); st.Precreated != 0 || st.Cold != 2 {
		t.Fatalf("%+v, want 2 cold starts", st)
	}
	if n := r.pending(); n != 0 {
		t.Fatalf("%d launcher containers waiting or being created after the launcher failed", n)
	}
	// The two asked for at load failed; the starts tried no more.
	if n := strings.Count(logs.String(), "could not pre-create a container"); n != 2 {
		t.Fatalf("%d failed creations, want the 2 at load only:\n%s", n, logs.String())
	}
}

// TestStdoutIsThePipe: whichever way an instance started, its Stdout gives
// the host the pipe itself (syscall.Conn), which internal/fnhost grows to
// fit its frames; a pre-created instance's Stdout wraps the pipe to see
// the instance come up.
func TestStdoutIsThePipe(t *testing.T) {
	r := newRuntime(t, true)
	spec := withName(hostile("sleep", "5"))
	r.Precreate(spec, 1)
	waitUntil(t, "a waiting container", func() bool { return r.waiting() == 1 })
	cold := withName(hostile("sleep", "4")) // never pre-created: a cold start
	for via, spec := range map[string]sandbox.Spec{"pre-created": spec, "cold": cold} {
		p, err := r.Start(t.Context(), spec)
		if err != nil {
			t.Fatal(err)
		}
		sc, ok := p.Stdout().(syscall.Conn)
		if !ok {
			t.Fatalf("%s: Stdout is a %T, not a syscall.Conn", via, p.Stdout())
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var size int
		if cerr := rc.Control(func(fd uintptr) { size, err = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) }); cerr != nil || err != nil || size <= 0 {
			t.Errorf("%s: F_GETPIPE_SZ on Stdout: %d, %v, %v", via, size, cerr, err)
		}
		_ = p.Kill()
		p.Wait()
	}
	if st := r.Stats(); st.Precreated != 1 || st.Cold != 1 {
		t.Errorf("starts %+v, want one pre-created and one cold", st)
	}
}
