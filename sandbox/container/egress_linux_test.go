//go:build linux

package container

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/network"
	"github.com/culvert-dev/culvert/sandbox/network/nettest"
)

// TestEgressJoinsNetwork: an egress instance joins the namespace
// sandbox/network prepares (in nettest's world, never the machine's own
// network), reaches the allowed server and nothing else.
func TestEgressJoinsNetwork(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip("cannot sandbox here: ", err)
	}
	subnet := netip.MustParsePrefix("10.214.0.0/16")
	w := nettest.New(t, subnet)
	run := t.TempDir()
	m, err := network.NewManager(network.Config{
		Prefix: "cvs", RunDir: filepath.Join(run, "net"), Subnet: subnet, HostNetns: w.HostNetns,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	for _, stock := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "libcontainer"}[stock], func(t *testing.T) {
			r := newRuntimeWith(t, Options{
				StockCold: stock,
				Network: func(ctx context.Context, tenant, instance string, n sandbox.Network) (string, func() error, error) {
					a, err := m.Prepare(ctx, tenant, instance, n)
					if err != nil {
						return "", nil, err
					}
					return a.Path, a.Close, nil
				},
			})
			tests := []struct{ addr, want string }{
				{nettest.OutsideA + ":8080", "ESCAPED connected to " + nettest.OutsideA + ":8080"}, // the allowed one: it must work
				{nettest.OutsideA + ":9090", "DENIED"},
				{nettest.OutsideB + ":8080", "DENIED"},
				{nettest.HostLoopbackTCP, "DENIED"},
			}
			for _, tt := range tests {
				spec := hostile("connect", tt.addr)
				spec.Isolation.Network = sandbox.Network{Mode: "egress", Allow: []sandbox.Endpoint{{CIDR: nettest.OutsideA + "/32", FromPort: 8080, ToPort: 8080}}}
				out, stderr, ex := run2(t, r, spec)
				if got := strings.TrimSpace(out); !strings.HasPrefix(got, tt.want) {
					t.Errorf("connect %s: %q (exit %v, stderr %q), want %s", tt.addr, got, ex, stderr, tt.want)
				}
			}
			wantDirect := uint64(len(tests))
			if stock {
				wantDirect = 0
			}
			if st := r.Stats(); st.Cold != uint64(len(tests)) || st.Direct != wantDirect {
				t.Errorf("stats %+v: want %d cold starts, %d of them direct", st, len(tests), wantDirect)
			}
		})
	}
}

func run2(t *testing.T, r *Runtime, spec sandbox.Spec) (string, string, sandbox.Exit) {
	t.Helper()
	return run(t, r, spec, "", 15*time.Second)
}
