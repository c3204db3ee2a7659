//go:build !linux

package container

import (
	"context"
	"errors"
	"log/slog"
	"runtime"

	"github.com/culvert-dev/culvert/sandbox"
)

// OptOut tells a user how to run without the sandbox.
const OptOut = "to run this pipeline's functions unconfined anyway, set `sandbox: none` on each function or for the whole pipeline"

// Options configure a Runtime (see the Linux documentation).
type Options struct {
	StateDir     string
	CgroupParent string
	TenantLimits func(tenant string) sandbox.Limits
	Network      func(ctx context.Context, tenant, instance string, n sandbox.Network) (path string, release func() error, err error)
	Precreate    bool
	Logger       *slog.Logger
	Trace        func(step string)
	StockCold    bool
}

// Runtime is not available on this operating system.
type Runtime struct{}

// Check reports that this OS cannot sandbox.
func Check() error {
	return errors.New("the sandbox needs Linux (namespaces, cgroups, seccomp); culvert is running on " + runtime.GOOS + "; " + OptOut)
}

// New fails: there is no sandbox on this OS.
func New(Options) (*Runtime, error) { return nil, Check() }

// Init does nothing on this OS.
func Init() {}

// Name implements sandbox.Runtime.
func (*Runtime) Name() string { return "libcontainer" }

// Start implements sandbox.Runtime.
func (*Runtime) Start(context.Context, sandbox.Spec) (sandbox.Process, error) { return nil, Check() }

// Precreate does nothing on this OS.
func (*Runtime) Precreate(sandbox.Spec, int) {}

// Close implements io.Closer.
func (*Runtime) Close() error { return nil }

// Ready reports false on this OS.
func (*Runtime) Ready() bool { return false }
