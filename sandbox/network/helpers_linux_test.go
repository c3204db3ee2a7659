//go:build linux

package network

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/network/nettest"
)

// The tests run in nettest's world: a namespace playing the host
// (Config.HostNetns) and an outside namespace with servers at 198.18.0.2
// and 198.18.0.3. They never touch the machine's own namespace, sysctls
// or rules; the one server in the test's own namespace listens on its
// loopback.

func requireRoot(tb testing.TB) { tb.Helper(); nettest.RequireRoot(tb) }

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newTestNS(tb testing.TB) netns.NsHandle { return nettest.NewNS(tb) }
func nsPath(h netns.NsHandle) string         { return nettest.Path(h) }

func nlAt(tb testing.TB, h netns.NsHandle) *netlink.Handle {
	tb.Helper()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		tb.Fatalf("netlink: %v", err)
	}
	tb.Cleanup(nl.Close)
	return nl
}

// world is nettest's world with a Manager whose host is its host
// namespace.
type world struct {
	*nettest.World
	host, outside netns.NsHandle
	m             *Manager
	cfg           Config
	realLoopback  string // a TCP server on 127.0.0.1 in the test's own (the real host's) namespace
}

// newWorld builds the world and a manager; prefix must be unique per test.
func newWorld(tb testing.TB, prefix string, subnet string, opts ...func(*Config)) *world {
	tb.Helper()
	sub := netip.MustParsePrefix(subnet)
	nw := nettest.New(tb, sub)
	w := &world{World: nw, host: nw.Host, outside: nw.Outside}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	nettest.Serve(l)
	w.realLoopback = l.Addr().String()

	w.cfg = Config{Prefix: prefix, RunDir: tb.TempDir(), Subnet: sub, HostNetns: nw.HostNetns, Logger: testLogger(tb)}
	for _, o := range opts {
		o(&w.cfg)
	}
	if w.m, err = NewManager(w.cfg); err != nil {
		tb.Fatalf("NewManager: %v", err)
	}
	tb.Cleanup(func() {
		if err := w.m.Close(); err != nil {
			tb.Errorf("Manager.Close: %v", err)
		}
	})
	return w
}

func (w *world) prepare(tb testing.TB, instance string, n sandbox.Network) (*Attachment, netns.NsHandle) {
	tb.Helper()
	a, err := w.m.Prepare(context.Background(), "tenant-a", instance, n)
	if err != nil {
		tb.Fatalf("Prepare(%s): %v", instance, err)
	}
	tb.Cleanup(func() {
		if err := a.Close(); err != nil {
			tb.Errorf("Attachment.Close(%s): %v", instance, err)
		}
	})
	h, err := netns.GetFromPath(a.Path)
	if err != nil {
		tb.Fatalf("open %s: %v", a.Path, err)
	}
	tb.Cleanup(func() { h.Close() })
	return a, h
}

func serveTCP(tb testing.TB, ns netns.NsHandle, addr string) {
	tb.Helper()
	nettest.ServeTCP(tb, ns, addr)
}
func dialIn(_ testing.TB, ns netns.NsHandle, addr string) error  { return nettest.Dial(ns, addr) }
func udpIn(_ testing.TB, ns netns.NsHandle, addr string) error   { return nettest.UDP(ns, addr) }
func lookupIn(_ testing.TB, ns netns.NsHandle, srv string) error { return nettest.Lookup(ns, srv) }

func warm(n int) func(*Config) { return func(c *Config) { c.Warm = n } }

// waitWarm waits until the manager's warm pool is full.
func waitWarm(tb testing.TB, m *Manager) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(m.warm) < cap(m.warm) {
		if time.Now().After(deadline) {
			tb.Fatalf("warm pool has %d of %d after 10s", len(m.warm), cap(m.warm))
		}
		time.Sleep(time.Millisecond)
	}
}
