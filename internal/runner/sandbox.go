package runner

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/image"
)

// Sandboxing is what the Confine hook chooses from.
type Sandboxing struct {
	// Isolating is the sandbox runtime; nil when this host cannot sandbox,
	// and then Unavailable says why.
	Isolating   sandbox.Runtime
	Unavailable error
	// Plain runs the functions that say `sandbox: none`.
	Plain sandbox.Runtime
	// Images unpacks `image:` roots; nil refuses them.
	Images *image.Cache
	Logger *slog.Logger
}

// CheckSandbox returns an error naming every function that must run
// sandboxed when this host cannot sandbox. It never lets a function run
// unconfined that did not ask for it.
func CheckSandbox(p *pipelines.Pipeline, s Sandboxing) error {
	if s.Isolating != nil {
		return nil
	}
	var need []string
	for _, name := range sortedNames(p.Functions) {
		fn := p.Functions[name]
		if !p.SandboxFor(fn).None {
			need = append(need, fmt.Sprintf("%s: function %q", fn.Pos, name))
		}
	}
	if len(need) == 0 {
		return nil
	}
	return fmt.Errorf("cannot sandbox the functions of pipeline %q (%s): %w", p.Name, strings.Join(need, "; "), s.Unavailable)
}

// Confine returns the engine's Confine hook for p: the sandbox runtime,
// tenant and isolation of each function, or the plain runtime, with a
// warning, for those that say `sandbox: none`.
func (s Sandboxing) Confine(p *pipelines.Pipeline) func(fn *pipelines.Function) (engine.Confinement, error) {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	var warned sync.Map
	return func(fn *pipelines.Function) (engine.Confinement, error) {
		sb := p.SandboxFor(fn)
		if sb.None {
			if _, dup := warned.LoadOrStore(fn.Name, true); !dup {
				log.Warn("function runs WITHOUT a sandbox (sandbox: none): it can read and write whatever this culvert process can",
					"function", fn.Name, "file", fn.Pos.String())
			}
			return engine.Confinement{Runtime: s.Plain, Tenant: sb.Tenant}, nil
		}
		if s.Isolating == nil {
			return engine.Confinement{}, fmt.Errorf("cannot sandbox: %w", s.Unavailable)
		}
		iso := sandbox.Isolation{
			Root:    sandbox.Root{Dir: sb.Files, Binds: sb.Binds, TmpfsBytes: sb.TmpfsBytes},
			Limits:  sandbox.Limits{MemoryBytes: sb.MemoryBytes, Pids: int64(sb.Pids), CPU: sb.CPUCores},
			Network: sandbox.Network{Mode: sb.Network, DNS: sb.DNS},
		}
		for _, e := range sb.AllowEndpoints {
			iso.Network.Allow = append(iso.Network.Allow, sandbox.Endpoint{CIDR: e.Prefix.String(), FromPort: e.FromPort, ToPort: e.ToPort})
		}
		conf := engine.Confinement{Runtime: s.Isolating, Tenant: sb.Tenant, Isolation: iso}
		if sb.Image != "" {
			if s.Images == nil {
				return engine.Confinement{}, fmt.Errorf("image %s: no image cache configured", sb.Image)
			}
			ref, err := image.ParseRef(sb.Image)
			if err != nil {
				return engine.Confinement{}, err
			}
			im, err := s.Images.Unpack(context.Background(), ref)
			if err != nil {
				return engine.Confinement{}, err
			}
			iso.Root.Dir = im.Root
			conf.Isolation = iso
			conf.Path = insidePath(fn.Command, im.Config.Entrypoint)
		} else if sb.Files != "" {
			conf.Path = insidePath(fn.Command, nil)
		}
		return conf, nil
	}
}

// insidePath is the command as the sandbox sees it inside its own root:
// an absolute path as given, a relative one from the root. An empty
// command takes the image's entrypoint.
func insidePath(cmd string, entrypoint []string) string {
	if cmd == "" && len(entrypoint) > 0 {
		cmd = entrypoint[0]
	}
	return filepath.Join("/", filepath.Clean("/"+cmd))
}

func sortedNames[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
