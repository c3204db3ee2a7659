//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container"
)

// recorder collects the timestamped steps of one start: the runtime's own
// (Options.Trace) and the container init's, which libcontainer forwards
// from the init's log pipe to this process's logrus at debug level.
type recorder struct {
	mu    sync.Mutex
	on    bool
	steps []step
}

type step struct {
	at   time.Time
	name string
}

func (r *recorder) mark(name string) {
	t := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on {
		r.steps = append(r.steps, step{t, name})
	}
}

func (r *recorder) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on, r.steps = true, nil
	r.steps = append(r.steps, step{time.Now(), "bench: Start called"})
}

func (r *recorder) end() []step {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	return r.steps
}

// Levels implements logrus.Hook.
func (r *recorder) Levels() []logrus.Level { return logrus.AllLevels }

// Fire implements logrus.Hook: one line of libcontainer's debug log.
func (r *recorder) Fire(e *logrus.Entry) error {
	// Keep the phase, not the pids, fds and paths that differ on every
	// start; leave out seccomp's filter dump.
	msg := strings.Join(strings.Fields(nsexecPrefix.ReplaceAllString(e.Message, "nsexec: ")), " ")
	if strings.HasPrefix(msg, "[") || strings.HasPrefix(msg, "seccomp") && !strings.HasPrefix(msg, "seccomp: adding") {
		return nil
	}
	if len(msg) > 70 {
		msg = msg[:70]
	}
	r.mark("init: " + numbers.ReplaceAllString(msg, "N"))
	return nil
}

var (
	nsexecPrefix = regexp.MustCompile(`^nsexec-?\d*\[\d+\]: `)
	numbers      = regexp.MustCompile(`\d+`)
)

// breakdown times n cold and n pre-created starts step by step and prints,
// per step, the median time since Start was called and the median time
// since the step before.
func breakdown(work, hello string, n int) error {
	rec := &recorder{}
	logrus.SetLevel(logrus.DebugLevel)
	logrus.SetOutput(io.Discard)
	logrus.AddHook(rec)

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	limits := sandbox.Limits{MemoryBytes: 64 << 20, Pids: 32, CPU: 1}
	spec := sandbox.Spec{Name: "bench", Path: hello, Env: []string{"PATH=/bin"}, Tenant: "bench", Stderr: io.Discard,
		Isolation: sandbox.Isolation{Limits: limits}}
	opts := container.Options{StateDir: filepath.Join(work, "bd-direct"), CgroupParent: "culvert-bench", Logger: log, Trace: rec.mark}
	direct, err := container.New(opts)
	if err != nil {
		return err
	}
	defer direct.Close()
	opts.StateDir, opts.StockCold = filepath.Join(work, "bd-cold"), true
	cold, err := container.New(opts)
	if err != nil {
		return err
	}
	defer cold.Close()
	opts.StateDir, opts.Precreate = filepath.Join(work, "bd-warm"), true
	warm, err := container.New(opts)
	if err != nil {
		return err
	}
	defer warm.Close()
	warm.Precreate(spec, 1)

	one := func(r *container.Runtime) ([]step, error) {
		rec.begin()
		p, err := r.Start(context.Background(), spec)
		if err != nil {
			rec.end()
			return nil, err
		}
		_ = p.Stdin().Close()
		buf := make([]byte, 64)
		m, rerr := p.Stdout().Read(buf)
		rec.mark("bench: first output read")
		steps := rec.end()
		_, _ = io.Copy(io.Discard, p.Stdout())
		ex := p.Wait()
		if rerr != nil || !ex.Success() || string(buf[:m]) != "OK hello\n" {
			return nil, fmt.Errorf("output %q, read error %v, exit %v", buf[:m], rerr, ex)
		}
		return steps, nil
	}
	var directRuns, coldRuns, warmRuns [][]step
	var plain []time.Duration
	for i := range n + 1 {
		t0 := time.Now()
		finish, err := firstLine(exec.Command(hello))
		d := time.Since(t0)
		if err == nil {
			err = finish()
		}
		if err != nil {
			return fmt.Errorf("plain exec: %w", err)
		}
		if i > 0 {
			plain = append(plain, d)
		}
		ds, err := one(direct)
		if err != nil {
			return fmt.Errorf("cold, direct: %w", err)
		}
		s, err := one(cold)
		if err != nil {
			return fmt.Errorf("cold: %w", err)
		}
		waitPool(warm)
		// Let the background creation that the last start set off finish
		// (it is not what this row times).
		time.Sleep(20 * time.Millisecond)
		w, err := one(warm)
		if err != nil {
			return fmt.Errorf("pre-created: %w", err)
		}
		waitPool(warm) // the creation this start set off, before the next cold one
		time.Sleep(20 * time.Millisecond)
		if i > 0 { // the first of each is a warm-up
			directRuns, coldRuns, warmRuns = append(directRuns, ds), append(coldRuns, s), append(warmRuns, w)
		}
	}
	fmt.Printf("breakdown: %d starts of each path, steps in order of their median time since Start was called\n\n", n)
	printPhases("cold, direct spawner, by phase", directRuns, directPhases)
	printPhases("cold, libcontainer stock (Create + Start + Exec), by phase", coldRuns, coldPhases)
	printPhases("pre-created (timed from Start; the container waits on its exec fifo), by phase", warmRuns, warmPhases)
	printSteps("cold, direct, every step", directRuns)
	printSteps("cold, libcontainer, every step", coldRuns)
	printSteps("pre-created, every step", warmRuns)
	slices.Sort(plain)
	fmt.Printf("plain exec of the same binary, same run: p50 %.2f ms\n", ms(pct(plain, 50)))
	return nil
}

// printSteps prints the median offset of every step across runs. A step
// that occurs more than once in a run is numbered (#2, #3…).
func printSteps(title string, runs [][]step) {
	offsets := map[string][]time.Duration{}
	for _, run := range runs {
		seen := map[string]int{}
		t0 := run[0].at
		for _, s := range run {
			seen[s.name]++
			name := s.name
			if k := seen[s.name]; k > 1 {
				name = fmt.Sprintf("%s #%d", s.name, k)
			}
			offsets[name] = append(offsets[name], s.at.Sub(t0))
		}
	}
	type row struct {
		name string
		med  time.Duration
		n    int
	}
	var rows []row
	for name, ds := range offsets {
		slices.Sort(ds)
		rows = append(rows, row{name, pct(ds, 50), len(ds)})
	}
	slices.SortFunc(rows, func(a, b row) int { return int(a.med - b.med) })
	fmt.Printf("%s\n\n| %-80s | %9s | %9s |\n|%s|%s|%s|\n", title, "step", "at ms", "+ms", strings.Repeat("-", 82), strings.Repeat("-", 11), strings.Repeat("-", 11))
	var prev time.Duration
	for _, r := range rows {
		name := r.name
		if r.n < len(runs) {
			name += fmt.Sprintf(" (%d of %d runs)", r.n, len(runs))
		}
		fmt.Printf("| %-80s | %9.2f | %9.2f |\n", name, ms(r.med), ms(r.med-prev))
		prev = r.med
	}
	fmt.Println()
}

// A phase ends at the first step, after the previous phase's end, whose
// name starts with end.
type phase struct{ name, end string }

var coldPhases = []phase{
	{"runtime: root and config", "runtime: root and config ready"},
	{"libcontainer.Create: state dir, cgroup manager", "runtime: libcontainer.Create returned"},
	{"sealed clone of /proc/self/exe (overlayfs)", "init: runc exeseal: using /proc/self/exe clone"},
	{"fork + exec of the init binary until nsenter runs", "init: nsexec: => nsexec container setup"},
	{"nsexec: 3 stages, user ns + uid/gid maps, other namespaces", "init: nsexec: booting up go runtime"},
	{"Go runtime + package inits of the init binary", "init: child process in init()"},
	{"init: config, loopback, rootfs mounts, pivot_root, masks", "init: seccomp: adding"},
	{"seccomp: libseccomp compile + load", "init: init: closing the pipe"},
	{"Start returns (init waits on the exec fifo)", "runtime: Start returned"},
	{"Exec: exec fifo handshake", "runtime: Exec returned"},
	{"the function's exec to its first output", "bench: first output read"},
}

var directPhases = []phase{
	{"runtime: tenant, root, config, cgroup taken, request", "runtime: root, config and request ready"},
	{"request written; descriptors sent to the fork server", "runtime: request and descriptors sent"},
	{"waiting shim (request, id maps, cgroups), its init up to execve", "runtime: function exec'd"},
	{"the function's exec to its first output", "bench: first output read"},
}

var warmPhases = []phase{
	{"taking the waiting container", "runtime: Exec called"},
	{"Exec: exec fifo handshake", "runtime: Exec returned"},
	{"the function's exec to its first output", "bench: first output read"},
}

// printPhases prints the median duration of each phase across runs, and
// the median total. Runs in which a phase's end is missing are left out of
// that phase.
func printPhases(title string, runs [][]step, phases []phase) {
	durs := make([][]time.Duration, len(phases))
	var totals []time.Duration
	for _, run := range runs {
		t0, prev, i := run[0].at, run[0].at, 0
		for pi, ph := range phases {
			j := i
			for j < len(run) && !strings.HasPrefix(run[j].name, ph.end) {
				j++
			}
			if j == len(run) {
				continue
			}
			durs[pi] = append(durs[pi], run[j].at.Sub(prev))
			prev, i = run[j].at, j+1
		}
		totals = append(totals, prev.Sub(t0))
	}
	fmt.Printf("%s\n\n| %-62s | %9s |\n|%s|%s|\n", title, "phase", "p50 ms", strings.Repeat("-", 64), strings.Repeat("-", 11))
	for pi, ph := range phases {
		slices.Sort(durs[pi])
		name := ph.name
		if len(durs[pi]) < len(runs) {
			name += fmt.Sprintf(" (%d of %d runs)", len(durs[pi]), len(runs))
		}
		fmt.Printf("| %-62s | %9.2f |\n", name, ms(pct(durs[pi], 50)))
	}
	slices.Sort(totals)
	fmt.Printf("| %-62s | %9.2f |\n\n", "total (p50 of the whole start)", ms(pct(totals, 50)))
}
