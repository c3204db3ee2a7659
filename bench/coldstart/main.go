//go:build linux

// Command coldstart measures how long a function takes from "start it" to
// its first line of output (handshake-ready; waiting for the exit and
// cleaning up are not timed), for: a plain exec; Culvert's sandbox, cold
// through the direct spawner (the default) and through libcontainer's
// stock path (create + start + exec), and pre-created (exec of a
// libcontainer container created ahead); and `runc run` and `crun run` on an equivalent
// OCI bundle (the same static binary, a read-only root, fresh user, pid,
// mount, ipc, uts, network and cgroup namespaces, the same seccomp
// allowlist, the same cgroup limits). Samples are interleaved, in a
// rotating order, so every row sees the same machine load. It prints a
// table of p50 and p99 with ratios to crun and to plain exec.
//
//	sudo go run -tags seccomp ./bench/coldstart [-n 100] [-culvert bin/culvert]
//
// Rows named "part:" time pieces of the cold path on their own (the
// re-exec of the init binary, libseccomp compiling the profile, the exec
// of a binary up to the direct path's spawner), to show where its time
// goes. With -breakdown it prints instead when each step of a direct
// cold, a libcontainer cold and a pre-created start happens (the
// runtime's steps and libcontainer's container init's, from its debug log):
//
//	sudo go run -tags seccomp ./bench/coldstart -breakdown -n 30
//
// It runs itself in a private mount namespace with the hybrid host's
// cgroup2 mount (/sys/fs/cgroup/unified, hugetlb only) unmounted there,
// because crun refuses the mixed layout; the host's mounts are untouched.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container"
)

func init() { container.Init() }

const reexecEnv = "CULVERT_COLDSTART_NS"

var (
	culvertBin *string
	steps      *bool
)

func main() {
	n := flag.Int("n", 100, "samples per row")
	culvertBin = flag.String("culvert", "", "also time an exec of this culvert binary (its init cost)")
	nop := flag.Bool("nop", false, "exit at once (used to time this binary's own start)")
	steps = flag.Bool("breakdown", false, "instead of the table, time each step of n cold and n pre-created starts")
	flag.Parse()
	if *nop {
		return
	}
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "coldstart:", err)
		os.Exit(1)
	}
}

func run(n int) error {
	if os.Getenv(reexecEnv) == "" {
		// Again, in a private mount namespace.
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command(self, os.Args[1:]...)
		cmd.Env = append(os.Environ(), reexecEnv+"=1")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		return cmd.Run()
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("private mounts: %w", err)
	}
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil {
		if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("hiding the hybrid cgroup2 mount: %w", err)
		}
	}
	if err := container.Check(); err != nil {
		return err
	}
	work, err := os.MkdirTemp("/run", "culvert-coldstart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	_ = os.Chmod(work, 0o711)

	// The function: a static Go hello.
	hello := filepath.Join(work, "bin", "hello")
	build := exec.Command("go", "build", "-o", hello, "./bench/coldstart/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building hello (run from the repository root): %w", err)
	}
	_ = os.Chmod(filepath.Dir(hello), 0o755)
	if *steps {
		return breakdown(work, hello, n)
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	limits := sandbox.Limits{MemoryBytes: 64 << 20, Pids: 32, CPU: 1}
	spec := sandbox.Spec{Name: "bench", Path: hello, Env: []string{"PATH=/bin"}, Tenant: "bench", Stderr: io.Discard,
		Isolation: sandbox.Isolation{Limits: limits}}
	cold, err := container.New(container.Options{StateDir: filepath.Join(work, "cold"), CgroupParent: "culvert-bench", Logger: log, StockCold: true})
	if err != nil {
		return err
	}
	defer cold.Close()
	direct, err := container.New(container.Options{StateDir: filepath.Join(work, "direct"), CgroupParent: "culvert-bench", Logger: log})
	if err != nil {
		return err
	}
	defer direct.Close()
	directExec, err := container.New(container.Options{StateDir: filepath.Join(work, "direct-exec"), CgroupParent: "culvert-bench", Logger: log, ExecShim: true})
	if err != nil {
		return err
	}
	defer directExec.Close()
	warm, err := container.New(container.Options{StateDir: filepath.Join(work, "warm"), CgroupParent: "culvert-bench", Precreate: true, Logger: log})
	if err != nil {
		return err
	}
	defer warm.Close()
	warm.Precreate(spec, 1)
	// Exec mode: every start brings its own environment (the record's
	// metadata); a pre-created container runs the launcher, which takes it.
	execSpec := spec
	execSpec.Name, execSpec.StartEnv = "bench-exec", []string{}
	warmExec, err := container.New(container.Options{StateDir: filepath.Join(work, "warm-exec"), CgroupParent: "culvert-bench", Precreate: true, Logger: log})
	if err != nil {
		return err
	}
	defer warmExec.Close()
	warmExec.Precreate(execSpec, 1)
	// The pre-created rows start once both runtimes have their container
	// waiting: a replacement still being created (set off by the previous
	// sample) would compete for the CPU, which only the "creation
	// alongside" row measures.
	settled := func() { waitPool(warm); waitPool(warmExec) }

	seq := 0
	// Each OCI sample gets its own bundle directory and cgroup (written,
	// untimed, before it): a process of the previous sample that
	// "delete -f" has not reaped yet must not be found in the next one's
	// cgroup, which runc refuses.
	var bundle string
	var bundleErr error
	ociPrepare := func() {
		seq++
		if bundle != "" {
			_ = os.RemoveAll(bundle)
		}
		bundle, bundleErr = makeBundle(work, hello, limits, fmt.Sprintf("oci-%d-%d", os.Getpid(), seq))
	}

	type row struct {
		name, isolation string
		prepare         func() // untimed, before each sample
		// sample starts the function and returns once its first line is
		// read (handshake-ready); finish, untimed, waits and cleans up.
		sample func(i int) (finish func() error, err error)
		times  []time.Duration
	}
	ociRun := func(tool string) func(int) (func() error, error) {
		return func(int) (func() error, error) {
			if bundleErr != nil {
				return nil, fmt.Errorf("writing the bundle: %w", bundleErr)
			}
			id := fmt.Sprintf("cs-%d-%d", os.Getpid(), seq)
			cmd := exec.Command(tool, "run", "--bundle", bundle, id)
			finish, err := firstLine(cmd)
			return func() error {
				err := finish()
				_ = exec.Command(tool, "delete", "-f", id).Run()
				return err
			}, err
		}
	}
	rows := []*row{
		{name: "plain exec", isolation: "none", sample: func(int) (func() error, error) {
			return firstLine(exec.Command(hello))
		}},
		{name: "culvert sandbox, cold direct", isolation: "7 ns, RO root, seccomp, cgroup v1 limits; C shim and its init (empty namespaces, /proc and /dev) made ahead by the fork server, cgroup made ahead, BPF compiled once", sample: func(int) (func() error, error) {
			return culvertSample(direct, spec)
		}},
		{name: "cold direct, shim exec'd", isolation: "same, the shim exec'd per start (Options.ExecShim)", sample: func(int) (func() error, error) {
			return culvertSample(directExec, spec)
		}},
		{name: "cold, libcontainer stock", isolation: "same; Create + Start + Exec (Options.StockCold)", sample: func(int) (func() error, error) {
			return culvertSample(cold, spec)
		}},
		{name: "culvert sandbox, pre-created", isolation: "same; container created ahead, timed from exec",
			prepare: settled,
			sample:  func(int) (func() error, error) { return culvertSample(warm, spec) }},
		{name: "exec mode, pre-created", isolation: "same; launcher waiting in the container, per-start env on its stdin",
			prepare: settled,
			sample: func(i int) (func() error, error) {
				s := execSpec
				s.StartEnv = []string{"CULVERT_RECORD_ID=" + strconv.Itoa(i)}
				return culvertSample(warmExec, s)
			}},
		{name: "pre-created, creation alongside", isolation: "same, while another container is created (refill at exec, as before)",
			prepare: settled,
			sample: func(i int) (func() error, error) {
				other, err := container.New(container.Options{StateDir: filepath.Join(work, "alongside"), CgroupParent: "culvert-bench", Precreate: true, Logger: log})
				if err != nil {
					return nil, err
				}
				other.Precreate(spec, 1)
				finish, err := culvertSample(warm, spec)
				return func() error {
					waitPool(other)
					_ = other.Close()
					if finish == nil {
						return err
					}
					return finish()
				}, err
			}},
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// Where the cold path's time goes, measured in the same run.
	parts := []*row{
		{name: "part: re-exec of this binary", isolation: "fork+exec to exit: Go runtime and package inits (the container init does this)", sample: func(int) (func() error, error) {
			return nothing, exec.Command(self, "-nop").Run()
		}},
		{name: "part: spawner exec", isolation: "this binary started as the shim, to its constructor's exit (direct path's first step)", sample: func(int) (func() error, error) {
			return nothing, spawnerExec(self)
		}},
		{name: "part: libseccomp compile", isolation: "the profile to BPF, as runc's init does per cold start", sample: func(int) (func() error, error) {
			return nothing, compileProfile(devnull)
		}},
	}
	if *culvertBin != "" {
		parts = append(parts, &row{name: "part: exec of culvert binary", isolation: *culvertBin + " -h to exit: its runtime and ~270 package inits", sample: func(int) (func() error, error) {
			return nothing, exec.Command(*culvertBin, "-h").Run()
		}}, &row{name: "part: spawner exec, culvert binary", isolation: *culvertBin + " started as the shim, to its constructor's exit", sample: func(int) (func() error, error) {
			return nothing, spawnerExec(*culvertBin)
		}})
	}
	for _, tool := range []string{"runc", "crun"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "coldstart: %s is not installed; its row is skipped\n", tool)
			continue
		}
		rows = append(rows, &row{name: tool + " run", isolation: "same bundle, seccomp compiled per start", prepare: ociPrepare, sample: ociRun(tool)})
	}
	rows = append(rows, parts...)
	// Warm-up: one of each, untimed, and fail early.
	for _, r := range rows {
		if r.prepare != nil {
			r.prepare()
		}
		finish, err := r.sample(-1)
		if err == nil {
			err = finish()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	for i := range n {
		for j := range rows {
			r := rows[(i+j)%len(rows)]
			if r.prepare != nil {
				r.prepare()
			}
			start := time.Now()
			finish, err := r.sample(i)
			d := time.Since(start)
			if err == nil {
				err = finish()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			r.times = append(r.times, d)
		}
	}
	var crun, plain time.Duration
	for _, r := range rows {
		slices.Sort(r.times)
		switch r.name {
		case "crun run":
			crun = pct(r.times, 50)
		case "plain exec":
			plain = pct(r.times, 50)
		}
	}
	fmt.Printf("cold start, requested -> first output line read (handshake-ready); %d interleaved samples per row; static Go hello\n\n", n)
	fmt.Printf("| %-30s | %8s | %8s | %9s | %10s | %s |\n", "path", "p50 ms", "p99 ms", "p50/crun", "p50/plain", "isolation")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 32), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 11), strings.Repeat("-", 12), strings.Repeat("-", 10))
	for _, r := range rows {
		p50, p99 := pct(r.times, 50), pct(r.times, 99)
		ratio := func(base time.Duration) string {
			if base == 0 {
				return "-"
			}
			return strconv.FormatFloat(float64(p50)/float64(base), 'f', 2, 64) + "x"
		}
		fmt.Printf("| %-30s | %8.2f | %8.2f | %9s | %10s | %s |\n", r.name, ms(p50), ms(p99), ratio(crun), ratio(plain), r.isolation)
	}
	return nil
}

func culvertSample(r *container.Runtime, spec sandbox.Spec) (func() error, error) {
	p, err := r.Start(context.Background(), spec)
	if err != nil {
		return nil, err
	}
	_ = p.Stdin().Close()
	line, err := bufio.NewReader(p.Stdout()).ReadString('\n')
	return func() error {
		_, _ = io.Copy(io.Discard, p.Stdout())
		ex := p.Wait()
		if err == nil && !ex.Success() {
			err = fmt.Errorf("exit: %v", ex)
		}
		return check("culvert", []byte(line), err)
	}, nil
}

// firstLine starts cmd and returns once the first line of its stdout is
// read; finish waits for it and checks the line.
func firstLine(cmd *exec.Cmd) (func() error, error) {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, rerr := bufio.NewReader(out).ReadString('\n')
	return func() error {
		_, _ = io.Copy(io.Discard, out)
		err := cmd.Wait()
		if err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w: %s", cmd.Path, err, stderr.String())
		}
		return check(cmd.Path, []byte(line), nil)
	}, nil
}

func nothing() error { return nil }

// spawnerExec starts bin as the direct path's shim (the variable and
// descriptors of sandbox/container/internal/spawn) with an empty request,
// which its C constructor refuses before the Go runtime starts: the cost
// of exec'ing the binary up to the spawner.
func spawnerExec(bin string) error {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return err
	}
	stR, stW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer stR.Close()
	cmd := &exec.Cmd{Path: bin, Args: []string{"culvert-spawn"}, Env: []string{"_CULVERT_SPAWN=3,4"}, ExtraFiles: []*os.File{reqR, stW}}
	err = cmd.Start()
	_ = reqR.Close()
	_ = stW.Close()
	_ = reqW.Close()
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(stR)
	err = cmd.Wait()
	if !strings.Contains(string(msg), "read request") {
		return fmt.Errorf("%s as the shim: status %q, exit %v: not the spawner", bin, msg, err)
	}
	return nil
}

func waitPool(r *container.Runtime) {
	deadline := time.Now().Add(10 * time.Second)
	for !r.Ready() && time.Now().Before(deadline) {
		time.Sleep(200 * time.Microsecond)
	}
}

func check(what string, out []byte, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if string(out) != "OK hello\n" {
		return fmt.Errorf("%s: output %q", what, out)
	}
	return nil
}

func pct(ts []time.Duration, p int) time.Duration {
	if len(ts) == 0 {
		return 0
	}
	i := (len(ts)*p + 99) / 100
	return ts[min(max(i-1, 0), len(ts)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// makeBundle writes an OCI bundle equivalent to Culvert's container: the
// same binary alone in a read-only root, the same namespaces, uid map,
// masked paths, rlimits, seccomp profile and cgroup limits.
//
// The root is shared (work/rootfs); the bundle directory, named name,
// holds only config.json, whose cgroup is /culvert-bench/name.
func makeBundle(work, hello string, lim sandbox.Limits, name string) (string, error) {
	bundle := filepath.Join(work, name)
	rootfs := filepath.Join(work, "rootfs")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return "", err
	}
	for _, d := range []string{"proc", "dev", "bin"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return "", err
		}
	}
	b, err := os.ReadFile(hello)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "hello"), b, 0o755); err != nil {
		return "", err
	}
	_ = os.Chmod(bundle, 0o755)
	sc, err := container.SeccompConfig()
	if err != nil {
		return "", err
	}
	host := container.HostID("bench-oci")
	pids := lim.Pids
	quota := int64(lim.CPU * 100000)
	period := uint64(100000)
	s := specs.Spec{
		Version: "1.0.2", // what Debian's crun 1.8 and runc 1.1 accept
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Process: &specs.Process{
			Args: []string{"/bin/hello"}, Env: []string{"PATH=/bin"}, Cwd: "/", NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 4096, Soft: 4096}, {Type: "RLIMIT_CORE"}, {Type: "RLIMIT_NPROC", Hard: 2048, Soft: 2048},
			},
		},
		Hostname: "bench",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=64k"}},
		},
		Linux: &specs.Linux{
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: container.RangeSize}},
			GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: container.RangeSize}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.UserNamespace}, {Type: specs.CgroupNamespace},
			},
			CgroupsPath: "/culvert-bench/" + name,
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &lim.MemoryBytes},
				Pids:   &specs.LinuxPids{Limit: &pids},
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
			},
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Seccomp:       ociSeccomp(sc),
		},
	}
	j, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return "", err
	}
	return bundle, os.WriteFile(filepath.Join(bundle, "config.json"), j, 0o644)
}

// ociSeccomp converts libcontainer's form of the profile to the OCI one.
func ociSeccomp(c *configs.Seccomp) *specs.LinuxSeccomp {
	act := func(a configs.Action) specs.LinuxSeccompAction {
		switch a {
		case configs.Allow:
			return specs.ActAllow
		case configs.Errno:
			return specs.ActErrno
		}
		return specs.ActKillProcess
	}
	ops := map[configs.Operator]specs.LinuxSeccompOperator{
		configs.EqualTo: specs.OpEqualTo, configs.NotEqualTo: specs.OpNotEqual, configs.GreaterThan: specs.OpGreaterThan,
		configs.GreaterThanOrEqualTo: specs.OpGreaterEqual, configs.LessThan: specs.OpLessThan,
		configs.LessThanOrEqualTo: specs.OpLessEqual, configs.MaskEqualTo: specs.OpMaskedEqual,
	}
	// Native architecture only, like Culvert's (c.Architectures is empty).
	s := &specs.LinuxSeccomp{DefaultAction: act(c.DefaultAction), DefaultErrnoRet: c.DefaultErrnoRet}
	for _, sc := range c.Syscalls {
		r := specs.LinuxSyscall{Names: []string{sc.Name}, Action: act(sc.Action), ErrnoRet: sc.ErrnoRet}
		for _, a := range sc.Args {
			r.Args = append(r.Args, specs.LinuxSeccompArg{Index: a.Index, Value: a.Value, ValueTwo: a.ValueTwo, Op: ops[a.Op]})
		}
		s.Syscalls = append(s.Syscalls, r)
	}
	return s
}
