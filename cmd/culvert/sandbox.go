package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/container"
	"github.com/culvert-dev/culvert/sandbox/image"
	"github.com/culvert-dev/culvert/sandbox/network"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// The culvert binary is also the init of its sandboxes: started as
// "culvert init" by the container runtime, it sets up the container and
// execs the function, before anything else runs.
func init() { container.Init() }

// needsSandbox reports whether any function of p runs sandboxed.
func needsSandbox(p *pipelines.Pipeline) bool {
	for _, fn := range p.Functions {
		if !p.SandboxFor(fn).None {
			return true
		}
	}
	return false
}

// checkSandbox is what validate reports: nil when every function that
// must be sandboxed can be, here.
func checkSandbox(p *pipelines.Pipeline) error {
	s := runner.Sandboxing{Plain: process.Runtime{}}
	if needsSandbox(p) {
		s.Unavailable = container.Check()
		if s.Unavailable == nil {
			return nil
		}
	}
	return runner.CheckSandbox(p, s)
}

// sandboxFlags are the host-side sandbox settings a command takes.
type sandboxFlags struct {
	// State is the sandbox state directory.
	State string
	// IPForward lets egress functions turn on net.ipv4.ip_forward in the
	// host namespace (restored on exit), which egress needs.
	IPForward bool
}

// newSandboxing builds the runtimes p's functions run on. The returned
// close destroys pre-created containers.
func newSandboxing(p *pipelines.Pipeline, flags sandboxFlags, log *slog.Logger) (runner.Sandboxing, func(), error) {
	stateDir := flags.State
	s := runner.Sandboxing{Plain: process.Runtime{}, Logger: log}
	if !needsSandbox(p) {
		return s, func() {}, nil
	}
	top := p.SandboxFor(&pipelines.Function{})
	if stateDir == "" {
		stateDir = "/run/culvert"
	}
	// Egress namespaces come from sandbox/network, only when a function
	// asks for egress.
	var netm *network.Manager
	var prepare func(ctx context.Context, tenant, instance string, n sandbox.Network) (string, func() error, error)
	for _, fn := range p.Functions {
		if sb := p.SandboxFor(fn); !sb.None && sb.Network == "egress" && netm == nil {
			m, err := network.NewManager(network.Config{Logger: log, EnableForwarding: flags.IPForward})
			if err != nil {
				return s, func() {}, fmt.Errorf("%s: function %q: network egress: %w", fn.Pos, fn.Name, err)
			}
			netm = m
			prepare = func(ctx context.Context, tenant, instance string, n sandbox.Network) (string, func() error, error) {
				a, err := m.Prepare(ctx, tenant, instance, n)
				if err != nil {
					return "", nil, err
				}
				return a.Path, a.Close, nil
			}
		}
	}
	closeNet := func() {
		if netm != nil {
			_ = netm.Close()
		}
	}
	rt, err := container.New(container.Options{
		StateDir:  stateDir,
		Precreate: true,
		Network:   prepare,
		Logger:    log,
		TenantLimits: func(string) sandbox.Limits {
			return sandbox.Limits{MemoryBytes: top.TenantMemoryBytes, Pids: int64(top.TenantPids), CPU: top.TenantCPUCores}
		},
	})
	if err != nil {
		closeNet()
		s.Unavailable = err
		return s, func() {}, runner.CheckSandbox(p, s)
	}
	s.Isolating = rt
	s.Images = &image.Cache{Dir: imageCacheDir(), Logger: log}
	return s, func() { _ = rt.Close(); closeNet() }, nil
}

// imageCacheDir is $XDG_CACHE_HOME/culvert/images, or ~/.cache/….
func imageCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "culvert", "images")
	}
	return filepath.Join(os.TempDir(), "culvert-images")
}
