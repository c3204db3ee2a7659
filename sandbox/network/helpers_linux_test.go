//go:build linux

package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/culvert-dev/culvert/sandbox"
)

// The test world. Nothing in it is routed to the machine's interfaces:
//
//	sandbox ns --veth (10.213.x.0/30)-- "host" ns --veth up0/up1-- "outside" ns
//	                                    198.18.0.1/24                198.18.0.2, .3/24
//
// The "host" namespace plays the host (Config.HostNetns): it has its own
// loopback services and forwarding enabled, so the tests never change the
// real host's sysctls or rules. 198.18.0.0/15 is the benchmarking range
// (RFC 2544), never routed on the Internet.

const (
	testDialTimeout = 400 * time.Millisecond
	probeMsg        = "culvert-probe"
)

var (
	hostAddr    = netip.MustParseAddr("198.18.0.1")
	outsideA    = netip.MustParseAddr("198.18.0.2") // allowed CIDR
	outsideB    = netip.MustParseAddr("198.18.0.3") // not allowed
	testNetwork = netip.MustParsePrefix("198.18.0.0/24")
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, veth links and nftables rules (CI runs as root)")
	}
}

// newTestNS creates an anonymous network namespace with loopback up, kept
// alive by the returned handle until the test ends.
func newTestNS(tb testing.TB) netns.NsHandle {
	tb.Helper()
	hc := make(chan netns.NsHandle, 1)
	ec := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ec <- err
			return
		}
		h, err := netns.New()
		if err != nil {
			ec <- err
			return
		}
		hc <- h
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}()
	var h netns.NsHandle
	select {
	case h = <-hc:
	case err := <-ec:
		tb.Fatalf("create test namespace: %v", err)
	}
	tb.Cleanup(func() { h.Close() })
	nl := nlAt(tb, h)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("loopback up: %v", err)
	}
	return h
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func nsPath(h netns.NsHandle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h)) }

func nlAt(tb testing.TB, h netns.NsHandle) *netlink.Handle {
	tb.Helper()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		tb.Fatalf("netlink: %v", err)
	}
	tb.Cleanup(nl.Close)
	return nl
}

// world is the host and outside namespaces, their servers and a manager.
type world struct {
	host, outside netns.NsHandle
	m             *Manager
	cfg           Config
	realLoopback  string // a TCP listener on 127.0.0.1 in the test's own (real host) namespace
	udpHits       *counter
}

type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(k string) { c.mu.Lock(); c.n[k]++; c.mu.Unlock() }
func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// newWorld builds the topology and a Manager whose host is the test's
// "host" namespace. prefix must be unique per test.
func newWorld(tb testing.TB, prefix string, subnet string, opts ...func(*Config)) *world {
	tb.Helper()
	requireRoot(tb)
	w := &world{host: newTestNS(tb), outside: newTestNS(tb), udpHits: &counter{n: map[string]int{}}}
	hnl, onl := nlAt(tb, w.host), nlAt(tb, w.outside)
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1", PeerNamespace: netlink.NsFd(int(w.outside))}
	if err := hnl.LinkAdd(up); err != nil {
		tb.Fatalf("uplink veth: %v", err)
	}
	mustAddr := func(nl *netlink.Handle, name string, addrs ...netip.Addr) netlink.Link {
		l, err := nl.LinkByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		for _, a := range addrs {
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				tb.Fatalf("address %s on %s: %v", a, name, err)
			}
		}
		if err := nl.LinkSetUp(l); err != nil {
			tb.Fatal(err)
		}
		return l
	}
	mustAddr(hnl, "up0", hostAddr)
	up1 := mustAddr(onl, "up1", outsideA, outsideB)
	if err := waitOperUp(context.Background(), linkIn{hnl, "up0"}, linkIn{onl, "up1"}); err != nil {
		tb.Fatal(err)
	}
	// The outside knows the way to the instances, so the tests of inbound
	// connections are not decided by a missing route.
	_, sub, _ := net.ParseCIDR(subnet)
	if err := onl.RouteAdd(&netlink.Route{LinkIndex: up1.Attrs().Index, Dst: sub, Gw: hostAddr.AsSlice()}); err != nil {
		tb.Fatalf("outside route: %v", err)
	}

	for _, port := range []string{"8080", "8081", "9090"} {
		serveTCP(tb, w.outside, "0.0.0.0:"+port)
	}
	serveTCP(tb, w.host, "127.0.0.1:7000")
	serveTCP(tb, w.host, hostAddr.String()+":7001")
	// One UDP socket per address, so replies come from the address asked.
	for _, a := range []netip.Addr{outsideA, outsideB} {
		serveDNS(tb, w.outside, a.String()+":5353", w.udpHits)
		serveUDPEcho(tb, w.outside, a.String()+":5354", w.udpHits)
	}
	w.realLoopback = serveTCPHere(tb)

	w.cfg = Config{Prefix: prefix, RunDir: tb.TempDir(), Subnet: netip.MustParsePrefix(subnet),
		HostNetns: nsPath(w.host), EnableForwarding: true, Logger: testLogger(tb)}
	for _, o := range opts {
		o(&w.cfg)
	}
	m, err := NewManager(w.cfg)
	if err != nil {
		tb.Fatalf("NewManager: %v", err)
	}
	w.m = m
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
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

// in runs fn on a thread inside ns; sockets fn creates belong to ns.
func in(tb testing.TB, ns netns.NsHandle, fn func() error) error {
	tb.Helper()
	return inNetns(ns, fn)
}

// listenIn opens a listener inside ns.
func listenIn(tb testing.TB, ns netns.NsHandle, addr string) net.Listener {
	tb.Helper()
	var l net.Listener
	if err := in(tb, ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// serveTCP answers every connection with one line naming the listener.
func serveTCP(tb testing.TB, ns netns.NsHandle, addr string) {
	tb.Helper()
	acceptLoop(listenIn(tb, ns, addr), addr)
}

func serveTCPHere(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	acceptLoop(l, "real-host-loopback")
	return l.Addr().String()
}

func acceptLoop(l net.Listener, name string) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", probeMsg, name)
			c.Close()
		}
	}()
}

// dialIn connects to addr from inside ns and reads the server's line.
func dialIn(tb testing.TB, ns netns.NsHandle, addr string) error {
	tb.Helper()
	var c net.Conn
	err := in(tb, ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, testDialTimeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testDialTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("connected, but read: %w", err)
	}
	if !strings.HasPrefix(line, probeMsg) {
		return fmt.Errorf("connected, but got %q", line)
	}
	return nil
}

func serveUDPEcho(tb testing.TB, ns netns.NsHandle, addr string, hits *counter) {
	tb.Helper()
	pc := listenUDP(tb, ns, addr)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			hits.add(addr)
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func listenUDP(tb testing.TB, ns netns.NsHandle, addr string) net.PacketConn {
	var pc net.PacketConn
	if err := in(tb, ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		tb.Fatalf("listen udp %s: %v", addr, err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
}

// serveDNS answers every A question with 192.0.2.1.
func serveDNS(tb testing.TB, ns netns.NsHandle, addr string, hits *counter) {
	tb.Helper()
	pc := listenUDP(tb, ns, addr)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			hits.add(addr)
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			r := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true}, Questions: q.Questions,
				Answers: []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}},
				}}}
			out, err := r.Pack()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
}

// lookupIn resolves name with a DNS query over UDP sent from inside ns.
func lookupIn(tb testing.TB, ns netns.NsHandle, server string) error {
	tb.Helper()
	var c net.Conn
	if err := in(tb, ns, func() (err error) { c, err = net.Dial("udp", server); return err }); err != nil {
		return err
	}
	defer c.Close()
	name := dnsmessage.MustNewName("fn.example.")
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: 7, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	b, _ := q.Pack()
	c.SetDeadline(time.Now().Add(testDialTimeout))
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	var r dnsmessage.Message
	if err := r.Unpack(buf[:n]); err != nil {
		return err
	}
	if len(r.Answers) != 1 || r.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{192, 0, 2, 1} {
		return fmt.Errorf("unexpected answer %v", r.Answers)
	}
	return nil
}

// udpIn sends one datagram from inside ns and waits for the echo.
func udpIn(tb testing.TB, ns netns.NsHandle, addr string) error {
	tb.Helper()
	var c net.Conn
	if err := in(tb, ns, func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testDialTimeout))
	if _, err := c.Write([]byte(probeMsg)); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf[:n]) != probeMsg {
		return fmt.Errorf("got %q", buf[:n])
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

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
