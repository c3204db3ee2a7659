//go:build linux

package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

func ep(s string) sandbox.Endpoint {
	e, err := ParseEndpoint(s)
	if err != nil {
		panic(err)
	}
	return e
}

// TestEgressPolicy checks every kind of destination from inside an egress
// instance, each next to a control showing the destination itself works.
// With warm set, the instance's namespace comes from the warm pool.
func TestEgressPolicy(t *testing.T) {
	t.Run("on demand", func(t *testing.T) { testEgressPolicy(t, newWorld(t, "cvtegr", "10.213.64.0/24")) })
	t.Run("warm", func(t *testing.T) {
		w := newWorld(t, "cvtegw", "10.213.76.0/24", warm(2))
		waitWarm(t, w.m)
		testEgressPolicy(t, w)
		if len(w.m.warm) == cap(w.m.warm) {
			t.Log("the pool was refilled")
		}
	})
}

func testEgressPolicy(t *testing.T, w *world) {
	_, sb := w.prepare(t, "p/f#0", sandbox.Network{Mode: ModeEgress,
		Allow: []sandbox.Endpoint{ep("198.18.0.2/32:8080-8081")}, DNS: "198.18.0.2:5353"})

	tests := []struct {
		name  string
		probe func(*testing.T, netns.NsHandle) error
		allow bool
	}{
		{"tcp to allowed CIDR and port", tcpTo("198.18.0.2:8080"), true},
		{"tcp to allowed CIDR, last port of range", tcpTo("198.18.0.2:8081"), true},
		{"tcp to allowed CIDR, other port", tcpTo("198.18.0.2:9090"), false},
		{"tcp to other CIDR, allowed port", tcpTo("198.18.0.3:8080"), false},
		{"tcp to the host's address", tcpTo("198.18.0.1:7001"), false},
		{"tcp to the host's loopback service", tcpTo("127.0.0.1:7000"), false},
		{"tcp to the real host's loopback service", tcpTo(w.realLoopback), false},
		{"dns to the resolver", func(t *testing.T, ns netns.NsHandle) error { return lookupIn(t, ns, "198.18.0.2:5353") }, true},
		{"udp to the resolver's address, other port", udpTo("198.18.0.2:5354"), false},
		{"udp to the resolver's port, other address", udpTo("198.18.0.3:5353"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.probe(t, sb)
			if tc.allow && err != nil {
				t.Fatalf("want success, got %v", err)
			}
			if !tc.allow && err == nil {
				t.Fatal("want failure, connected")
			}
			t.Logf("result: %v", err)
		})
	}
	// Controls: every refused destination is up and reachable from a
	// namespace without the policy.
	for _, addr := range []string{"198.18.0.2:9090", "198.18.0.3:8080"} {
		if err := dialIn(t, w.host, addr); err != nil {
			t.Errorf("control: %s from the host namespace: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:7000", "198.18.0.1:7001"} {
		if err := dialIn(t, w.host, addr); err != nil {
			t.Errorf("control: %s inside the host namespace: %v", addr, err)
		}
	}
	if err := udpIn(t, w.host, "198.18.0.2:5354"); err != nil {
		t.Errorf("control: udp echo from the host namespace: %v", err)
	}
	if err := lookupIn(t, w.host, "198.18.0.3:5353"); err != nil {
		t.Errorf("control: dns on the other address from the host namespace: %v", err)
	}
	// The refused datagram never arrived: 1 hit is the control's.
	if n := w.UDPHits("198.18.0.2:5354"); n != 1 {
		t.Errorf("udp echo server saw %d datagrams, want 1 (the control's)", n)
	}
}

func tcpTo(addr string) func(*testing.T, netns.NsHandle) error {
	return func(t *testing.T, ns netns.NsHandle) error { return dialIn(t, ns, addr) }
}

func udpTo(addr string) func(*testing.T, netns.NsHandle) error {
	return func(t *testing.T, ns netns.NsHandle) error { return udpIn(t, ns, addr) }
}

// TestEgressAllowsHostService: the host's own address is reachable when,
// and only when, the allowlist names it.
func TestEgressAllowsHostService(t *testing.T) {
	w := newWorld(t, "cvthst", "10.213.65.0/24")
	_, sb := w.prepare(t, "p/f#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.1:7001")}})
	if err := dialIn(t, sb, "198.18.0.1:7001"); err != nil {
		t.Fatalf("allowed host service: %v", err)
	}
	if err := dialIn(t, sb, "198.18.0.2:8080"); err == nil {
		t.Fatal("outside service not in the allowlist: connected")
	}
}

// TestNoInbound: a listener inside an egress instance can be reached from
// inside it, but not from the host, the outside, or another instance that
// may connect anywhere.
func TestNoInbound(t *testing.T) {
	w := newWorld(t, "cvtinb", "10.213.66.0/24", warm(1))
	a, sa := w.prepare(t, "p/a#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}})
	b, sb := w.prepare(t, "p/b#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("0.0.0.0/0:1-65535")}})
	for _, s := range []struct {
		ns netns.NsHandle
		a  *Attachment
	}{{sa, a}, {sb, b}} {
		serveTCP(t, s.ns, "0.0.0.0:8000")
	}
	inA := a.Addr.String() + ":8000"
	if err := dialIn(t, sa, inA); err != nil {
		t.Fatalf("control: A reaches its own listener: %v", err)
	}
	if err := dialIn(t, sb, "198.18.0.3:9090"); err != nil {
		t.Fatalf("control: B's allow-all reaches the outside: %v", err)
	}
	for _, from := range []struct {
		name string
		ns   netns.NsHandle
	}{{"host", w.host}, {"outside", w.outside}, {"instance B", sb}} {
		for _, to := range []string{inA, a.Gateway.String() + ":8000"} {
			if err := dialIn(t, from.ns, to); err == nil {
				t.Errorf("%s connected to %s", from.name, to)
			}
		}
	}
	if err := dialIn(t, sa, b.Addr.String()+":8000"); err == nil {
		t.Error("instance A connected to B's listener")
	}
}

// TestNone: only loopback, which works; nothing outside it is reachable.
func TestNone(t *testing.T) {
	w := newWorld(t, "cvtnon", "10.213.67.0/24")
	a, ns := w.prepare(t, "p/f#0", sandbox.Network{})
	if a.Mode != ModeNone || a.Addr.IsValid() {
		t.Fatalf("attachment = %+v, want mode none without address", a)
	}
	links, err := nlAt(t, ns).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		t.Fatalf("links inside = %v, want [lo]", names)
	}
	serveTCP(t, ns, "127.0.0.1:8000")
	if err := dialIn(t, ns, "127.0.0.1:8000"); err != nil {
		t.Fatalf("own loopback: %v", err)
	}
	for _, addr := range []string{w.realLoopback, "127.0.0.1:7000", "198.18.0.2:8080"} {
		if err := dialIn(t, ns, addr); err == nil {
			t.Errorf("none reached %s", addr)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(a.Path, &st); err != nil || st.Type != unix.NSFS_MAGIC {
		t.Fatalf("%s is not a namespace mount (statfs type %#x, %v)", a.Path, st.Type, err)
	}
}

// TestCloseRemovesEverything: an attachment's Close removes its mount,
// link and rules; the manager's Close removes its table.
func TestCloseRemovesEverything(t *testing.T) {
	w := newWorld(t, "cvtcls", "10.213.68.0/24")
	a, err := w.m.Prepare(context.Background(), "t", "p/f#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}})
	if err != nil {
		t.Fatal(err)
	}
	hnl := nlAt(t, w.host)
	if _, err := hnl.LinkByName(a.HostLink); err != nil {
		t.Fatalf("host link %s missing while open: %v", a.HostLink, err)
	}
	if chains := instEntries(t, w); len(chains) != 1 {
		t.Fatalf("host set entries while open = %v, want one", chains)
	}
	ns, err := netns.GetFromPath(a.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialIn(t, ns, "198.18.0.2:8080"); err != nil {
		t.Fatal(err)
	}
	ns.Close()
	if n := flowsFrom(t, hnl, a.Addr); n == 0 {
		t.Fatalf("control: no conntrack entry from %s after a connection", a.Addr)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := flowsFrom(t, hnl, a.Addr); n != 0 {
		t.Errorf("%d conntrack entries from %s after Close", n, a.Addr)
	}
	if _, err := hnl.LinkByName(a.HostLink); err == nil {
		t.Errorf("host link %s still there after Close", a.HostLink)
	}
	if _, err := os.Stat(a.Path); !os.IsNotExist(err) {
		t.Errorf("namespace file %s after Close: %v", a.Path, err)
	}
	if chains := instEntries(t, w); len(chains) != 0 {
		t.Errorf("host set entries after Close = %v", chains)
	}
	if err := w.m.Close(); err != nil {
		t.Fatal(err)
	}
	if tableExists(t, w.host, w.cfg.Prefix) {
		t.Errorf("table inet %s still there after Manager.Close", w.cfg.Prefix)
	}
	if _, err := w.m.Prepare(context.Background(), "t", "p/f#1", sandbox.Network{}); err == nil {
		t.Error("Prepare after Close succeeded")
	}
}

// TestLeftoversRemoved: a manager that never closed (a crash) leaves its
// mount, link and table; the next manager with the prefix removes them,
// and a second live manager with the same prefix is refused.
func TestLeftoversRemoved(t *testing.T) {
	w := newWorld(t, "cvtlft", "10.213.69.0/24")
	a, err := w.m.Prepare(context.Background(), "t", "p/f#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(w.cfg); err == nil || !strings.Contains(err.Error(), "another manager") {
		t.Fatalf("second manager with the same prefix: err = %v, want refusal", err)
	}
	// Simulate the crash: drop the lock without cleaning up.
	w.m.lock.Close()
	w.m.lock = nil
	w.m.closed = true // its Close would clean up; a crashed process does not

	m2, err := NewManager(w.cfg)
	if err != nil {
		t.Fatalf("NewManager after crash: %v", err)
	}
	defer m2.Close()
	if _, err := nlAt(t, w.host).LinkByName(a.HostLink); err == nil {
		t.Errorf("leftover link %s survived", a.HostLink)
	}
	if _, err := os.Stat(a.Path); !os.IsNotExist(err) {
		t.Errorf("leftover namespace file %s: %v", a.Path, err)
	}
	if chains := instEntries(t, w); len(chains) != 0 {
		t.Errorf("leftover host set entries %v", chains)
	}
	// And the new manager works.
	_, err = m2.Prepare(context.Background(), "t", "p/f#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEgressNeedsForwarding: with forwarding off and not enabled, egress is
// refused with the reason, and none still works. With EnableForwarding the
// manager turns it on and restores it on Close.
func TestEgressNeedsForwarding(t *testing.T) {
	requireRoot(t)
	host := newTestNS(t)
	cfg := Config{Prefix: "cvtfwd", RunDir: t.TempDir(), Subnet: netip.MustParsePrefix("10.213.70.0/24"), HostNetns: nsPath(host), Logger: testLogger(t)}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Prepare(context.Background(), "t", "p/f#0", sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}})
	if err == nil || !strings.Contains(err.Error(), "ip_forward") {
		t.Fatalf("err = %v, want the ip_forward explanation", err)
	}
	a, err := m.Prepare(context.Background(), "t", "p/f#0", sandbox.Network{})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	fwd := func() string {
		v, err := sysctl(host, "net/ipv4/ip_forward", "")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(v)
	}
	cfg.EnableForwarding = true
	if m, err = NewManager(cfg); err != nil {
		t.Fatal(err)
	}
	if got := fwd(); got != "1" {
		t.Errorf("ip_forward with EnableForwarding = %s, want 1", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fwd(); got != "0" {
		t.Errorf("ip_forward after Close = %s, want 0 (restored)", got)
	}
}

func TestPrepareRejectsBadPolicy(t *testing.T) {
	w := newWorld(t, "cvtbad", "10.213.71.0/24")
	for _, n := range []sandbox.Network{
		{Mode: "bridge"},
		{Mode: ModeNone, Allow: []sandbox.Endpoint{ep("10.0.0.0/8:443")}},
		{Mode: ModeEgress, Allow: []sandbox.Endpoint{{CIDR: "10.0.0.1/8", FromPort: 1, ToPort: 2}}},
		{Mode: ModeEgress, DNS: "resolver"},
	} {
		if _, err := w.m.Prepare(context.Background(), "t", "p/f#0", n); err == nil || !strings.Contains(err.Error(), "p/f#0") {
			t.Errorf("Prepare(%+v) err = %v, want an error naming the instance", n, err)
		}
	}
}

func flowsFrom(t *testing.T, h *netlink.Handle, a netip.Addr) int {
	t.Helper()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range flows {
		if f.Forward.SrcIP.Equal(a.AsSlice()) {
			n++
		}
	}
	return n
}

// instEntries lists the links that have entries in the host's src set.
func instEntries(t *testing.T, w *world) []string {
	t.Helper()
	c := hostConnFor(t, w.host)
	els, err := c.GetSetElements(srcSet(hostTableRef(w.cfg.Prefix)))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range els {
		out = append(out, strings.TrimRight(string(e.Key[:16]), "\x00"))
	}
	return out
}

func tableExists(t *testing.T, ns netns.NsHandle, name string) bool {
	t.Helper()
	tables, err := hostConnFor(t, ns).ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == name {
			return true
		}
	}
	return false
}

func hostConnFor(t *testing.T, ns netns.NsHandle) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestConcurrentPrepare: instances prepared and closed from many
// goroutines at once (some from the warm pool) get distinct addresses and
// each its own working policy.
func TestConcurrentPrepare(t *testing.T) {
	w := newWorld(t, "cvtcon", "10.213.77.0/24", warm(2))
	policy := sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}}
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 {
				inst := fmt.Sprintf("p/f#%d.%d", g, i)
				a, err := w.m.Prepare(context.Background(), "t", inst, policy)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if other, dup := seen[a.Addr]; dup {
					errs <- fmt.Errorf("%s and %s both got %s", other, inst, a.Addr)
				}
				seen[a.Addr] = inst
				mu.Unlock()
				ns, err := netns.GetFromPath(a.Path)
				if err != nil {
					errs <- err
					return
				}
				if err := dialIn(t, ns, "198.18.0.2:8080"); err != nil {
					errs <- fmt.Errorf("%s: allowed: %w", inst, err)
				}
				if err := dialIn(t, ns, "198.18.0.2:9090"); err == nil {
					errs <- fmt.Errorf("%s: disallowed port connected", inst)
				}
				ns.Close()
				mu.Lock()
				delete(seen, a.Addr)
				mu.Unlock()
				if err := a.Close(); err != nil {
					errs <- fmt.Errorf("%s: close: %w", inst, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if chains := instEntries(t, w); len(chains) != 0 {
		t.Errorf("host set entries left after all closed: %v", chains)
	}
}

// TestSubnetExhausted: a /29 holds two egress instances; the third is
// refused with the reason, none instances take no address, and a freed
// slot is used again.
func TestSubnetExhausted(t *testing.T) {
	w := newWorld(t, "cvtful", "10.213.78.0/29")
	egress := sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}}
	for i := range 4 {
		w.prepare(t, fmt.Sprintf("p/none#%d", i), sandbox.Network{})
	}
	a, _ := w.prepare(t, "p/e#0", egress)
	w.prepare(t, "p/e#1", egress)
	if _, err := w.m.Prepare(context.Background(), "t", "p/e#2", egress); err == nil || !strings.Contains(err.Error(), "slots") {
		t.Fatalf("third egress in a /29: err = %v, want the subnet to be full", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, sb := w.prepare(t, "p/e#2", egress)
	if b.Addr != a.Addr {
		t.Errorf("freed slot not reused: got %s, want %s", b.Addr, a.Addr)
	}
	if err := dialIn(t, sb, "198.18.0.2:8080"); err != nil {
		t.Errorf("instance on a reused slot: %v", err)
	}
}
