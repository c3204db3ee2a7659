//go:build linux

package container

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	_ "github.com/opencontainers/cgroups/devices" // device cgroup rules
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // the C half of the container init
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/internal/deps"
	"github.com/culvert-dev/culvert/sandbox"
)

// Options configure a Runtime. The zero value is usable.
type Options struct {
	// StateDir holds container state and root skeletons; default
	// /run/culvert. It must be on a filesystem the tenants' host uids can
	// traverse (the runtime makes its own directories 0711).
	StateDir string
	// CgroupParent is the cgroup under which per-tenant parents are made;
	// default "culvert".
	CgroupParent string
	// TenantLimits gives a tenant's aggregate limits; nil or zero fields:
	// DefaultTenantLimits.
	TenantLimits func(tenant string) sandbox.Limits
	// Network prepares the network namespace of an instance whose network
	// mode is "egress" (sandbox/network's Manager.Prepare) and returns the
	// path to join and what to call once the instance has exited. Nil:
	// egress is refused. Mode "none" needs no provider: the container gets
	// a fresh namespace holding only loopback.
	Network func(ctx context.Context, tenant, instance string, n sandbox.Network) (path string, release func() error, err error)
	// Precreate keeps containers created and waiting for the instance
	// specs that come back (one per spec, or as many as Runtime.Precreate
	// says), so that the next Start of such a spec only has to exec the
	// function (see docs/sandbox.md, "Start time").
	Precreate bool
	Logger    *slog.Logger
	// Trace, if set, is called at each step of a container's start (for
	// bench/coldstart's breakdown), and the container init logs its own
	// steps at libcontainer's debug level through its log pipe, which this
	// process's logrus receives. Debug logging costs a little time itself.
	Trace func(step string)
	// StockCold makes cold starts take libcontainer's stock path (Create,
	// Start and Exec: the culvert binary re-executed as the container's
	// init) instead of the direct spawner (package spawn: a C init that
	// runs before the Go runtime). For comparison (bench/coldstart), and
	// for a host where the spawner cannot run. Pre-created and launcher
	// containers always use libcontainer.
	StockCold bool
	// ExecShim makes every direct start exec its shim (this binary, in
	// the spawner's shim mode) instead of having the runtime's fork server
	// fork it. For comparison (bench/coldstart).
	ExecShim bool
}

// Runtime runs function instances in libcontainer containers.
type Runtime struct {
	opts Options
	log  *slog.Logger
	tag  string // unique per Runtime: container ids and cgroups never collide
	seq  atomic.Uint64

	mu      sync.Mutex
	roots   map[string]*preparedRoot
	tenants map[string]*tenant
	slots   map[uint32]string

	pmu     sync.Mutex
	keys    map[string]*spares // by spec key
	pooled  int                // waiting and being created, all keys
	maxPool int                // bound on pooled
	closed  bool
	bg      sync.WaitGroup

	usedPool, coldStarts, directStarts, procAhead, devAhead atomic.Uint64

	bpfOnce sync.Once // the seccomp program of direct starts, compiled once
	bpf     []byte
	bpfErr  error

	launcherOnce  sync.Once
	launcherFiles []string // the ELF interpreter, this binary, its libraries
	launcherErr   error

	life         *life         // held for this process's life (see life)
	server       *forkServer   // direct starts' shims; nil with ExecShim
	cgroups      *cgroupPool   // instance cgroups made ahead
	spawnTimeout time.Duration // bound of a direct start
	holdRequest  bool          // tests: direct starts never send their request's last byte
}

var _ sandbox.Runtime = (*Runtime)(nil)

type tenant struct {
	name   string
	hostID uint32
	cgroup string
	limits sandbox.Limits
	paths  map[string]string // the tenant cgroup in each hierarchy (read-only once made)
}

// New checks that this host can sandbox (see Check) and returns a
// Runtime.
func New(opts Options) (*Runtime, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if opts.StateDir == "" {
		opts.StateDir = "/run/culvert"
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = "culvert"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	for _, d := range []string{opts.StateDir, filepath.Join(opts.StateDir, "roots"), filepath.Join(opts.StateDir, "containers")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("sandbox state directory: %w", err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, fmt.Errorf("sandbox state directory: %w", err)
		}
	}
	removeStaleRoots(filepath.Join(opts.StateDir, "roots"))
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	lf, err := newLife()
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		opts: opts, log: opts.Logger, tag: hex.EncodeToString(tag[:]),
		roots: map[string]*preparedRoot{}, tenants: map[string]*tenant{}, slots: map[uint32]string{},
		keys: map[string]*spares{}, maxPool: maxPool,
		life: lf, cgroups: newCgroupPool(), spawnTimeout: spawnTimeout,
	}
	if !opts.StockCold && !opts.ExecShim {
		r.server = &forkServer{life: lf, exe: "/proc/self/exe", sock: -1}
	}
	if err := r.claimOwner(); err != nil {
		return nil, err
	}
	r.sweepOrphans() // containers of culvert processes that exited without Close
	return r, nil
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return "libcontainer" }

// TenantRange returns the first host uid/gid of tenant's range. It fails
// when another tenant of this runtime already holds the same range.
func (r *Runtime) TenantRange(name string) (uint32, error) {
	t, err := r.tenant(name)
	if err != nil {
		return 0, err
	}
	return t.hostID, nil
}

func (r *Runtime) tenant(name string) (*tenant, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.tenants[name]; t != nil {
		return t, nil
	}
	slot := tenantSlot(name)
	if other, ok := r.slots[slot]; ok {
		return nil, fmt.Errorf("tenants %q and %q hash to the same host uid range (%d); rename one of them", other, name, HostID(name))
	}
	lim := DefaultTenantLimits
	if r.opts.TenantLimits != nil {
		l := r.opts.TenantLimits(name)
		if l.MemoryBytes > 0 {
			lim.MemoryBytes = l.MemoryBytes
		}
		if l.Pids > 0 {
			lim.Pids = l.Pids
		}
		if l.CPU > 0 {
			lim.CPU = l.CPU
		}
	}
	t := &tenant{name: name, hostID: HostID(name), cgroup: cgroupName(name), limits: lim}
	res := &cgroups.Resources{Memory: lim.MemoryBytes, PidsLimit: &lim.Pids, SkipDevices: true}
	if lim.CPU > 0 {
		res.CpuPeriod = 100_000
		res.CpuQuota = int64(lim.CPU * 100_000)
	}
	cg := &cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent, t.cgroup), Resources: res}
	m, err := manager.New(cg)
	if err != nil {
		return nil, fmt.Errorf("tenant %q: cgroup: %w", name, err)
	}
	if err := m.Apply(-1); err != nil {
		return nil, fmt.Errorf("tenant %q: creating cgroup %s: %w", name, cg.Path, err)
	}
	if err := m.Set(res); err != nil {
		return nil, fmt.Errorf("tenant %q: setting cgroup limits: %w", name, err)
	}
	t.paths = m.GetPaths()
	r.slots[slot] = name
	r.tenants[name] = t
	return t, nil
}

// Start implements sandbox.Runtime. A pre-created container for the same
// spec is used when there is one (or one is being created and no other
// start has claimed it); otherwise the container is created, started and
// exec'd now.
func (r *Runtime) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tenantName := spec.Tenant
	if tenantName == "" {
		tenantName = "default"
	}
	key := specKey(tenantName, spec)
	if r.opts.Precreate {
		inst, err := r.take(ctx, key)
		if err != nil {
			return nil, err
		}
		if inst != nil {
			err := inst.exec(spec)
			if err == nil {
				r.usedPool.Add(1)
				inst.afterUp(func() { r.refill(key, tenantName, spec) })
				return inst, nil
			}
			r.log.Warn("pre-created container failed to start its function; starting a new one", "instance", spec.Name, "error", err)
		}
	}
	inst, err := r.startCold(ctx, tenantName, spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	r.coldStarts.Add(1)
	if r.opts.Precreate && r.repeats(key) {
		inst.afterUp(func() { r.refill(key, tenantName, spec) })
	}
	return inst, nil
}

// startCold starts spec with a container made for it now: through the
// direct spawner, or libcontainer's stock path (Options.StockCold).
func (r *Runtime) startCold(ctx context.Context, tenantName string, spec sandbox.Spec) (*instance, error) {
	if !r.opts.StockCold {
		inst, err := r.spawnDirect(ctx, tenantName, spec)
		if err != nil {
			return nil, err
		}
		stderr := spec.Stderr
		if stderr == nil {
			stderr = io.Discard
		}
		inst.stderrTo <- stderr
		go inst.copyStderr()
		r.directStarts.Add(1)
		return inst, nil
	}
	inst, err := r.create(tenantName, spec, false)
	if err != nil {
		return nil, err
	}
	if err := inst.exec(spec); err != nil {
		return nil, err
	}
	return inst, nil
}

// upGrace bounds how long a refill waits for the instance that set it off
// to answer (see instance.afterUp).
const upGrace = 500 * time.Millisecond

// Stats counts starts by the way they were served.
type Stats struct {
	// Precreated starts found a container waiting; Cold ones created
	// theirs, Direct of them through the direct spawner (the others took
	// libcontainer's stock path).
	Precreated, Cold, Direct uint64
	// ProcAhead direct starts attached a /proc their init had mounted
	// ahead, DevAhead a /dev their shim had made ahead (Linux 6.15 and
	// later; see the spawner's prepare_proc and prepare_dev).
	ProcAhead, DevAhead uint64
}

// Stats returns the runtime's start counters.
func (r *Runtime) Stats() Stats {
	return Stats{Precreated: r.usedPool.Load(), Cold: r.coldStarts.Load(), Direct: r.directStarts.Load(), ProcAhead: r.procAhead.Load(), DevAhead: r.devAhead.Load()}
}

// Precreate creates n waiting containers for spec now (at most
// MaxSpares), so that the first n simultaneous Starts of spec are fast
// too, and keeps n waiting from then on: each start that takes one sets off
// its replacement once the started instance is up (for restarts,
// scale-ups and the first start after scaling to zero). The engine calls
// it when a pipeline is loaded, with the function's maximum number of
// instances. All specs together keep at most 64 containers waiting. It is
// a no-op unless Options.Precreate.
func (r *Runtime) Precreate(spec sandbox.Spec, n int) {
	if !r.opts.Precreate {
		return
	}
	t := spec.Tenant
	if t == "" {
		t = "default"
	}
	key := specKey(t, spec)
	r.pmu.Lock()
	s := r.spares(key)
	s.want = min(max(n, 1), MaxSpares)
	s.starts = max(s.starts, 2) // as if it had come back already
	r.pmu.Unlock()
	r.refill(key, t, spec)
}

// Bounds on pre-creation: distinct specs remembered, containers kept
// waiting for one spec, and containers kept waiting at once.
const (
	maxKeys = 4096
	// MaxSpares bounds the containers kept waiting for one spec.
	MaxSpares = 4
	maxPool   = 64
)

// spares is what the runtime keeps for one spec key.
type spares struct {
	want    int         // containers to keep waiting
	starts  int         // starts seen
	ready   []*instance // waiting, oldest first
	filling int         // being created
	// waiters are starts that found none ready and wait for one being
	// created, oldest first; each gets one, or nil if its creation failed.
	waiters []chan *instance
	failed  bool // the launcher cannot run: no more launcher containers for this spec
}

func (s *spares) idle() bool { return len(s.ready) == 0 && s.filling == 0 && len(s.waiters) == 0 }

// spares returns key's entry, making it. r.pmu is held.
func (r *Runtime) spares(key string) *spares {
	if s := r.keys[key]; s != nil {
		return s
	}
	if len(r.keys) >= maxKeys {
		for k, s := range r.keys {
			if s.idle() {
				delete(r.keys, k)
			}
		}
	}
	s := &spares{want: 1}
	r.keys[key] = s
	return s
}

// take returns a waiting container for key, or waits for one being
// created that no other start has claimed. It returns nil when there is
// none to take (the start goes cold), and an error only when ctx ends.
func (r *Runtime) take(ctx context.Context, key string) (*instance, error) {
	r.pmu.Lock()
	s := r.spares(key)
	s.starts++
	if len(s.ready) > 0 {
		inst := s.ready[0]
		s.ready = s.ready[1:]
		r.pooled--
		r.pmu.Unlock()
		return inst, nil
	}
	if s.filling <= len(s.waiters) {
		r.pmu.Unlock()
		return nil, nil
	}
	// A container for this spec is on its way (the pipeline was just
	// loaded, or an earlier start set it off): it is ready sooner than a
	// new one would be.
	ch := make(chan *instance, 1)
	s.waiters = append(s.waiters, ch)
	r.pmu.Unlock()
	select {
	case inst := <-ch:
		return inst, nil
	case <-ctx.Done():
	}
	r.pmu.Lock()
	for i, w := range s.waiters {
		if w == ch {
			s.waiters = append(s.waiters[:i:i], s.waiters[i+1:]...)
			break
		}
	}
	var back *instance
	select {
	case back = <-ch: // handed over meanwhile: keep it for the next start
	default:
	}
	if back != nil && !r.closed {
		s.ready = append(s.ready, back)
		r.pooled++
		back = nil
	}
	r.pmu.Unlock()
	if back != nil {
		back.discard()
	}
	return nil, ctx.Err()
}

// repeats reports whether key has been started more than once: only a
// spec that comes back (a restart, a second instance, a pool scaling up)
// is worth a container kept waiting.
func (r *Runtime) repeats(key string) bool {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	s := r.keys[key]
	return s != nil && s.starts > 1
}

// refill creates containers for key in the background until its spares
// (waiting, and being created but not yet claimed by a start) number
// what it wants, within maxPool for all keys.
func (r *Runtime) refill(key, tenantName string, spec sandbox.Spec) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	s := r.keys[key]
	if r.closed || s == nil || s.failed {
		return
	}
	launch := spec.StartEnv != nil
	for len(s.ready)+s.filling-len(s.waiters) < s.want && r.pooled < r.maxPool {
		s.filling++
		r.pooled++
		r.bg.Add(1)
		go func() {
			defer r.bg.Done()
			inst, err := r.create(tenantName, spec, launch)
			r.pmu.Lock()
			s.filling--
			r.pooled--
			switch {
			case err != nil:
				// A launcher that cannot run here will not run next
				// time either; other failures (a cgroup, a full disk)
				// may pass, and the next start tries again.
				s.failed = s.failed || errors.As(err, new(launcherError))
			case r.closed:
			case len(s.waiters) > 0:
				s.waiters[0] <- inst
				s.waiters = s.waiters[1:]
				inst = nil
			default:
				s.ready = append(s.ready, inst)
				r.pooled++
				inst = nil
			}
			// Starts waiting for more creations than are left go cold.
			for len(s.waiters) > s.filling || (r.closed && len(s.waiters) > 0) {
				s.waiters[len(s.waiters)-1] <- nil
				s.waiters = s.waiters[:len(s.waiters)-1]
			}
			r.pmu.Unlock()
			if err != nil {
				r.log.Warn("could not pre-create a container", "instance", spec.Name, "error", err)
			}
			if inst != nil {
				inst.discard()
			}
		}()
	}
}

// Close destroys the pre-created containers. Running instances are not
// touched: their owners kill and wait for them.
func (r *Runtime) Close() error {
	r.pmu.Lock()
	r.closed = true
	var pool []*instance
	for _, s := range r.keys {
		pool = append(pool, s.ready...)
		r.pooled -= len(s.ready)
		s.ready = nil
		for _, w := range s.waiters {
			w <- nil
		}
		s.waiters = nil
	}
	r.pmu.Unlock()
	r.bg.Wait()
	for _, inst := range pool {
		inst.discard()
	}
	if r.server != nil {
		r.server.close()
	}
	r.cgroups.close()
	r.removeTenantCgroups() // those still in use by running instances stay
	r.releaseOwner()
	return nil
}

func (r *Runtime) trace(step string) {
	if r.opts.Trace != nil {
		r.opts.Trace(step)
	}
}

// specKey says which starts a waiting container can serve: StartEnv is
// not part of it (a launcher container takes it at the start), but whether
// there is one is.
func specKey(tenant string, spec sandbox.Spec) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%q\x00%q\x00%t\x00%#v", tenant, spec.Path, spec.Args, spec.Env, spec.StartEnv != nil, spec.Isolation)
	return hex.EncodeToString(h.Sum(nil))
}

// prepare makes what a container of spec starts from, on either path:
// its tenant, id and configuration, and the release of its egress network
// namespace (nil unless egress), which the caller owns from then on.
func (r *Runtime) prepare(tenantName string, spec sandbox.Spec) (t *tenant, id string, cfg *configs.Config, releaseNet func() error, err error) {
	if t, err = r.tenant(tenantName); err != nil {
		return nil, "", nil, nil, err
	}
	pr, err := r.prepareRoot(spec)
	if err != nil {
		return nil, "", nil, nil, err
	}
	id = "c" + r.tag + "-" + strconv.FormatUint(r.seq.Add(1), 10)
	netnsPath, releaseNet, err := r.prepareNet(tenantName, spec)
	if err != nil {
		return nil, "", nil, nil, err
	}
	if cfg, err = r.containerConfig(id, t, pr, spec.Isolation, netnsPath); err != nil {
		if releaseNet != nil {
			_ = releaseNet()
		}
		return nil, "", nil, nil, err
	}
	return t, id, cfg, releaseNet, nil
}

// create makes a container whose init waits on its exec fifo, or, with
// launch, one already exec'd into the launcher, which waits for the
// start's environment on its stdin (see launch).
func (r *Runtime) create(tenantName string, spec sandbox.Spec, launch bool) (_ *instance, err error) {
	_, id, cfg, releaseNet, err := r.prepare(tenantName, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && releaseNet != nil {
			_ = releaseNet()
		}
	}()
	r.trace("runtime: root and config ready")
	c, err := libcontainer.Create(filepath.Join(r.opts.StateDir, "containers"), id, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating container: %w", err)
	}
	r.trace("runtime: libcontainer.Create returned (state dir, cgroup manager)")
	defer func() {
		if err != nil {
			_ = c.Destroy()
		}
	}()
	inst := &instance{c: c, cgroup: cfg.Cgroups, trace: r.trace, launcher: launch, releaseNet: releaseNet, stderrTo: make(chan io.Writer, 1), drained: make(chan struct{})}
	var inR, outW, errW *os.File
	if inR, inst.stdin, err = os.Pipe(); err != nil {
		return nil, err
	}
	if inst.stdout, outW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if inst.stderr, errW, err = os.Pipe(); err != nil {
		return nil, err
	}
	defer inR.Close()
	defer outW.Close()
	defer errW.Close()
	args := append([]string{spec.Path}, spec.Args...)
	env := sandbox.MergeEnv(spec.Env, spec.StartEnv)
	var readyR, readyW *os.File
	var extra []*os.File
	if launch {
		var largs []string
		if largs, extra, err = r.launcherFds(); err != nil {
			inst.closePipes()
			return nil, launcherError{err}
		}
		defer closeAll(extra)
		args = append(largs, args...)
		env = append(env[:0:0], spec.Env...)
		if readyR, readyW, err = os.Pipe(); err != nil {
			inst.closePipes()
			return nil, err
		}
		defer readyR.Close()
		defer readyW.Close()
	}
	inst.p = &libcontainer.Process{
		Args: args, Env: env, Cwd: "/", Init: true,
		Stdin: inR, Stdout: outW, Stderr: errW,
	}
	if launch {
		inst.p.ExtraFiles = append([]*os.File{readyW}, extra...) // fd 3 (launchReadyFd), then launcherFds'
	}
	if r.opts.Trace != nil {
		inst.p.LogLevel = "5" // logrus.DebugLevel, for the init's own steps
	}
	if err := c.Start(inst.p); err != nil {
		inst.closePipes()
		return nil, fmt.Errorf("starting container: %w", err)
	}
	r.trace("runtime: Start returned (init waits on its exec fifo)")
	// The container holds its ends now.
	_ = inR.Close()
	_ = outW.Close()
	_ = errW.Close()
	go inst.copyStderr()
	if launch {
		_ = readyW.Close()
		if err := inst.startLauncher(readyR); err != nil {
			var stderr bytes.Buffer
			inst.stderrTo <- &stderr
			inst.releaseNet = nil // the deferred release does it
			inst.discard()
			return nil, launcherError{fmt.Errorf("%w; its stderr: %q", err, tail(stderr.Bytes(), 512))}
		}
	}
	return inst, nil
}

// launcherError is a failure of the launcher itself (it cannot be found,
// opened or started), as opposed to the container around it.
type launcherError struct{ err error }

func (e launcherError) Error() string { return e.err.Error() }
func (e launcherError) Unwrap() error { return e.err }

// launcherFds opens what the launcher runs from and returns the init's
// command line for it. This binary is linked dynamically (cgo: nsenter,
// libseccomp), and neither its ELF interpreter nor its libraries are in
// the function's root, so the init runs the host's interpreter directly,
// from a descriptor, with this binary and its libraries as descriptors
// too: nothing is added to the root, and no host path is reachable from
// inside except through these read-only descriptors, which only the
// launcher holds and which close when it execs the function.
func (r *Runtime) launcherFds() (args []string, files []*os.File, err error) {
	r.launcherOnce.Do(func() { r.launcherFiles, r.launcherErr = launcherDeps() })
	if r.launcherErr != nil {
		return nil, nil, r.launcherErr
	}
	for _, p := range r.launcherFiles {
		f, err := os.Open(p)
		if err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("launcher: %w", err)
		}
		files = append(files, f)
	}
	fd := func(i int) string { return "/proc/self/fd/" + strconv.Itoa(launchReadyFd+1+i) }
	var preload []string
	for i := 2; i < len(files); i++ {
		preload = append(preload, fd(i))
	}
	args = []string{fd(0)}
	if len(preload) > 0 {
		args = append(args, "--preload", strings.Join(preload, " "))
	}
	return append(args, "--argv0", "culvert", fd(1), launchArg), files, nil
}

// launcherDeps returns this binary's ELF interpreter, its own path, and
// the shared libraries it needs.
func launcherDeps() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("launcher: %w", err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("launcher: %w", err)
	}
	defer f.Close()
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return nil, fmt.Errorf("launcher: %s: PT_INTERP: %w", exe, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if interp == "" {
		return []string{exe}, fmt.Errorf("launcher: %s is linked statically; not supported", exe)
	}
	var res deps.Resolver
	all, err := res.Closure(exe)
	if err != nil {
		return nil, fmt.Errorf("launcher: libraries of %s: %w", exe, err)
	}
	out := []string{interp, exe}
	for _, p := range all {
		if p != exe && p != interp && !sameFile(p, interp) {
			out = append(out, p)
		}
	}
	return out, nil
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

func tail(b []byte, n int) []byte {
	return b[max(0, len(b)-n):]
}

// launchReadyTimeout bounds how long the launcher may take to start (its
// Go runtime and this binary's package inits).
const launchReadyTimeout = 20 * time.Second

// startLauncher execs the container's init into the launcher and waits
// until it is ready to read the start's environment.
func (i *instance) startLauncher(ready *os.File) error {
	if err := i.c.Exec(); err != nil {
		return fmt.Errorf("exec of the launcher: %w", err)
	}
	_ = ready.SetReadDeadline(time.Now().Add(launchReadyTimeout))
	var b [1]byte
	if n, err := ready.Read(b[:]); n != 1 || b[0] != launchReadyByte {
		return fmt.Errorf("the launcher did not start (it needs this binary to call container.Init first, and to be executable by the tenant's uid): %v", err)
	}
	i.trace("runtime: launcher ready")
	return nil
}

// instance is one container and its function process, run by one of two
// backends: libcontainer (c and p: cold on the stock path, pre-created,
// launcher) or the direct spawner (cmd, the shim, and the init's pid).
type instance struct {
	c          *libcontainer.Container
	p          *libcontainer.Process
	shim       *os.Process     // direct: the shim (this process's child), which exits as the init does
	life       *life           // direct: kept reachable while the instance runs
	cgm        cgroups.Manager // direct: the instance's cgroup
	initPid    int             // direct: the init's host pid
	pidMu      sync.Mutex
	pidfd      int  // direct: the init's pidfd, or -1
	reaped     bool // direct: the shim has been waited for
	launcher   bool // the init is the launcher, waiting for its preamble
	cgroup     *cgroups.Cgroup
	releaseNet func() error // egress namespace, after exit
	trace      func(string)
	up         func() // set by afterUp, before the instance is handed out

	stdin          *os.File
	stdout, stderr *os.File
	stderrTo       chan io.Writer
	drained        chan struct{}
	waitOnce       sync.Once
	exit           sandbox.Exit
}

// exec lets the container's init exec the function: through the exec
// fifo, or by giving a launcher its preamble (the start's environment).
func (i *instance) exec(spec sandbox.Spec) error {
	stderr := spec.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	i.stderrTo <- stderr
	i.trace("runtime: Exec called")
	var err error
	if i.launcher {
		var pre []byte
		if pre, err = preamble(spec.StartEnv); err == nil {
			_, err = i.stdin.Write(pre)
		}
	} else {
		err = i.c.Exec()
	}
	if err != nil {
		_ = i.Kill()
		i.Wait()
		return fmt.Errorf("exec: %w", err)
	}
	i.trace("runtime: Exec returned (exec fifo read: the init is exec'ing the function)")
	return nil
}

func (i *instance) copyStderr() {
	defer close(i.drained)
	w := <-i.stderrTo
	_, _ = io.Copy(w, i.stderr)
	_ = i.stderr.Close()
}

func (i *instance) closePipes() {
	_ = i.stdin.Close()
	_ = i.stdout.Close()
	_ = i.stderr.Close()
}

// discard destroys a container that never ran its function.
func (i *instance) discard() {
	i.stderrTo <- io.Discard
	_ = i.Kill()
	i.Wait()
	_ = i.stdin.Close()
	_ = i.stdout.Close()
}

// afterUp runs fn once the instance is up: when the first read of its
// stdout returns (the function has written its first bytes, or ended), or
// after upGrace at the latest. Creating the next container for the same
// spec right after the exec made the function's own start compete with
// that creation for the CPU (measured: bench/coldstart -breakdown).
func (i *instance) afterUp(fn func()) {
	var once sync.Once
	run := func() { once.Do(fn) }
	t := time.AfterFunc(upGrace, run)
	prev := i.up
	i.up = func() {
		t.Stop()
		run()
		if prev != nil {
			prev()
		}
	}
}

func (i *instance) Stdin() io.WriteCloser { return i.stdin }

func (i *instance) Stdout() io.ReadCloser {
	if i.up == nil {
		return i.stdout
	}
	return upReader{i}
}

// upReader tells the instance it is up when the first read returns.
type upReader struct{ i *instance }

func (u upReader) Read(p []byte) (int, error) {
	n, err := u.i.stdout.Read(p)
	u.i.up()
	return n, err
}

func (u upReader) Close() error { return u.i.stdout.Close() }

// SyscallConn gives the host the pipe itself (internal/fnhost grows it to
// fit its frames).
func (u upReader) SyscallConn() (syscall.RawConn, error) { return u.i.stdout.SyscallConn() }

var _ syscall.Conn = upReader{}

func (i *instance) Pid() int {
	if i.shim != nil {
		return i.initPid
	}
	pid, err := i.p.Pid()
	if err != nil {
		return -1
	}
	return pid
}

// Kill kills the container's init, the function; the pid namespace takes
// everything it started with it.
func (i *instance) Kill() error {
	if i.shim != nil {
		return i.killInit()
	}
	err := i.c.Signal(unix.SIGKILL)
	if err != nil && (errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, os.ErrProcessDone)) {
		return nil
	}
	return err
}

// Wait waits for the function, reports an out-of-memory kill as such, and
// destroys the container.
func (i *instance) Wait() sandbox.Exit {
	i.waitOnce.Do(func() {
		if i.shim != nil {
			i.exit = i.waitDirect()
			if i.releaseNet != nil {
				go func() { _ = i.releaseNet() }()
			}
			<-i.drained
			return
		}
		st, err := i.p.Wait()
		i.exit = exitOf(st, err)
		if m, merr := manager.New(i.cgroup); merr == nil {
			// A clean exit stays clean even if the kernel killed one of
			// the function's children for memory along the way.
			if n, oerr := m.OOMKillCount(); oerr == nil && n > 0 && !i.exit.Success() {
				i.exit.OOMKilled = true
			}
		}
		_ = i.c.Destroy()
		if i.releaseNet != nil {
			go func() { _ = i.releaseNet() }() // tens of ms: off the restart path
		}
		<-i.drained
	})
	return i.exit
}

func exitOf(st *os.ProcessState, err error) sandbox.Exit {
	if st == nil {
		return sandbox.Exit{Code: -1, Err: err}
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return sandbox.Exit{Code: -1, Err: err}
	}
	if ws.Signaled() {
		return sandbox.Exit{Code: -1, Signal: ws.Signal().String()}
	}
	return sandbox.Exit{Code: ws.ExitStatus()}
}

// removeTenantCgroups removes the tenant cgroups this runtime made, when
// nothing runs in them any more. Another culvert process may share a
// tenant's cgroup, so it is a plain rmdir, which fails while the cgroup
// has processes or children; the manager's Destroy would remove the empty
// children too, such as the cgroup another process has just made for a
// container it is creating. The shared parent (CgroupParent) stays.
func (r *Runtime) removeTenantCgroups() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.tenants {
		cg := &cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent, t.cgroup), Resources: &cgroups.Resources{}}
		m, err := manager.New(cg)
		if err != nil {
			continue
		}
		for _, p := range m.GetPaths() {
			_ = unix.Rmdir(p)
		}
	}
}

// Ready reports whether a pre-created container is waiting (for
// benchmarks that time only the exec).
func (r *Runtime) Ready() bool {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	for _, s := range r.keys {
		if len(s.ready) > 0 {
			return true
		}
	}
	return false
}
