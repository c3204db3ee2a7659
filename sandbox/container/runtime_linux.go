//go:build linux

package container

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	_ "github.com/opencontainers/cgroups/devices" // device cgroup rules
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // the C half of the container init
	"golang.org/x/sys/unix"

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
	// Precreate keeps one container per distinct instance spec created
	// and waiting, so that the next Start of that spec only has to exec
	// the function (see docs/sandbox.md, "Start time").
	Precreate bool
	Logger    *slog.Logger
	// Trace, if set, is called at each step of a container's start (for
	// bench/coldstart's breakdown), and the container init logs its own
	// steps at libcontainer's debug level through its log pipe, which this
	// process's logrus receives. Debug logging costs a little time itself.
	Trace func(step string)
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
	pool    map[string]*instance     // pre-created, by spec key
	filling map[string]chan struct{} // closed when that creation is done
	starts  map[string]int           // starts per spec key
	closed  bool
	bg      sync.WaitGroup

	usedPool, coldStarts atomic.Uint64
}

var _ sandbox.Runtime = (*Runtime)(nil)

type tenant struct {
	name   string
	hostID uint32
	cgroup string
	limits sandbox.Limits
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
	return &Runtime{
		opts: opts, log: opts.Logger, tag: hex.EncodeToString(tag[:]),
		roots: map[string]*preparedRoot{}, tenants: map[string]*tenant{}, slots: map[uint32]string{},
		pool: map[string]*instance{}, filling: map[string]chan struct{}{}, starts: map[string]int{},
	}, nil
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
	r.slots[slot] = name
	r.tenants[name] = t
	return t, nil
}

// Start implements sandbox.Runtime. A pre-created container for the same
// spec is used when there is one; otherwise the container is created,
// started and exec'd now.
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
		r.pmu.Lock()
		if done := r.filling[key]; done != nil && r.pool[key] == nil {
			// A container for this spec is on its way (the pipeline was
			// just loaded, or the last start set it off): it is ready
			// sooner than a new one would be.
			r.pmu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			r.pmu.Lock()
		}
		inst := r.pool[key]
		delete(r.pool, key)
		if len(r.starts) >= maxKeys {
			clear(r.starts)
		}
		r.starts[key]++
		r.pmu.Unlock()
		if inst != nil {
			r.usedPool.Add(1)
			err := inst.exec(spec.Stderr)
			if err == nil {
				inst.afterUp(func() { r.refill(key, tenantName, spec) })
				return inst, nil
			}
			r.log.Warn("pre-created container failed to exec; starting a new one", "instance", spec.Name, "error", err)
		}
	}
	inst, err := r.create(tenantName, spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	if err := inst.exec(spec.Stderr); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	r.coldStarts.Add(1)
	if r.opts.Precreate && r.repeats(key) {
		inst.afterUp(func() { r.refill(key, tenantName, spec) })
	}
	return inst, nil
}

// upGrace bounds how long a refill waits for the instance that set it off
// to answer (see instance.afterUp).
const upGrace = 500 * time.Millisecond

// Stats counts starts by the way they were served.
type Stats struct {
	// Precreated starts found a container waiting; Cold ones created
	// theirs.
	Precreated, Cold uint64
}

// Stats returns the runtime's start counters.
func (r *Runtime) Stats() Stats {
	return Stats{Precreated: r.usedPool.Load(), Cold: r.coldStarts.Load()}
}

// Precreate creates a waiting container for spec now, so that the first
// Start of spec is fast too, and keeps one waiting for it from then on:
// each start that takes it sets off the next (for restarts, scale-ups and
// the first start after scaling to zero). The engine calls it when a
// pipeline is loaded. It is a no-op unless Options.Precreate.
func (r *Runtime) Precreate(spec sandbox.Spec) {
	if !r.opts.Precreate {
		return
	}
	t := spec.Tenant
	if t == "" {
		t = "default"
	}
	key := specKey(t, spec)
	r.pmu.Lock()
	if len(r.starts) >= maxKeys {
		clear(r.starts)
	}
	r.starts[key] = max(r.starts[key], 2) // as if it had come back already
	r.pmu.Unlock()
	r.refill(key, t, spec)
}

// Bounds on pre-creation: distinct specs remembered, and containers kept
// waiting at once.
const (
	maxKeys = 4096
	maxPool = 64
)

// repeats reports whether key has been started more than once: only a
// spec that comes back (a restart, a second instance, a pool scaling up)
// is worth a container kept waiting. Specs that differ on every start,
// such as exec mode's per-record environment, never are.
func (r *Runtime) repeats(key string) bool {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return r.starts[key] > 1
}

// refill creates a container for key in the background unless one is
// there or on its way.
func (r *Runtime) refill(key, tenantName string, spec sandbox.Spec) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if r.closed || r.pool[key] != nil || r.filling[key] != nil || len(r.pool)+len(r.filling) >= maxPool {
		return
	}
	done := make(chan struct{})
	r.filling[key] = done
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		defer close(done)
		inst, err := r.create(tenantName, spec)
		r.pmu.Lock()
		delete(r.filling, key)
		if err == nil && !r.closed {
			r.pool[key] = inst
			inst = nil
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

// Close destroys the pre-created containers. Running instances are not
// touched: their owners kill and wait for them.
func (r *Runtime) Close() error {
	r.pmu.Lock()
	r.closed = true
	pool := r.pool
	r.pool = map[string]*instance{}
	r.pmu.Unlock()
	r.bg.Wait()
	for _, inst := range pool {
		inst.discard()
	}
	r.removeTenantCgroups() // those still in use by running instances stay
	return nil
}

func (r *Runtime) trace(step string) {
	if r.opts.Trace != nil {
		r.opts.Trace(step)
	}
}

func specKey(tenant string, spec sandbox.Spec) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%q\x00%q\x00%#v", tenant, spec.Path, spec.Args, spec.Env, spec.Isolation)
	return hex.EncodeToString(h.Sum(nil))
}

// create makes a container whose init waits on its exec fifo.
func (r *Runtime) create(tenantName string, spec sandbox.Spec) (_ *instance, err error) {
	t, err := r.tenant(tenantName)
	if err != nil {
		return nil, err
	}
	pr, err := r.prepareRoot(spec)
	if err != nil {
		return nil, err
	}
	id := "c" + r.tag + "-" + strconv.FormatUint(r.seq.Add(1), 10)
	var netnsPath string
	var releaseNet func() error
	if spec.Isolation.Network.Mode == "egress" {
		if r.opts.Network == nil {
			return nil, fmt.Errorf("network egress is not available: this runtime has no network provider")
		}
		if netnsPath, releaseNet, err = r.opts.Network(context.Background(), tenantName, spec.Name, spec.Isolation.Network); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				_ = releaseNet()
			}
		}()
	}
	cfg, err := r.containerConfig(id, t, pr, spec.Isolation, netnsPath)
	if err != nil {
		return nil, err
	}
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
	inst := &instance{c: c, cgroup: cfg.Cgroups, trace: r.trace, releaseNet: releaseNet, stderrTo: make(chan io.Writer, 1), drained: make(chan struct{})}
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
	env := spec.Env
	if env == nil {
		env = []string{}
	}
	inst.p = &libcontainer.Process{
		Args: args, Env: env, Cwd: "/", Init: true,
		Stdin: inR, Stdout: outW, Stderr: errW,
	}
	if r.opts.Trace != nil {
		inst.p.LogLevel = "5" // logrus.DebugLevel, for the init's own steps
	}
	if err := c.Start(inst.p); err != nil {
		inst.closePipes()
		return nil, fmt.Errorf("starting container: %w", err)
	}
	r.trace("runtime: Start returned (init waits on its exec fifo)")
	go inst.copyStderr()
	return inst, nil
}

// instance is one container and its function process.
type instance struct {
	c          *libcontainer.Container
	p          *libcontainer.Process
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

func (i *instance) exec(stderr io.Writer) error {
	if stderr == nil {
		stderr = io.Discard
	}
	i.stderrTo <- stderr
	i.trace("runtime: Exec called")
	if err := i.c.Exec(); err != nil {
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
	i.up = func() {
		t.Stop()
		run()
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

func (i *instance) Pid() int {
	pid, err := i.p.Pid()
	if err != nil {
		return -1
	}
	return pid
}

// Kill kills the container's init, the function; the pid namespace takes
// everything it started with it.
func (i *instance) Kill() error {
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
	return len(r.pool) > 0
}
