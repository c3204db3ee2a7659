//go:build linux

package nettest

import (
	"bufio"
	"fmt"
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
)

// The world New builds:
//
//	instances --veths-- Host ns --veth up0/up1-- Outside ns
//	                    198.18.0.1/24             198.18.0.2 (A), 198.18.0.3 (B) /24
//
// Host plays the host for network.Config.HostNetns: it has loopback
// services of its own and forwarding on. 198.18.0.0/15 is the benchmarking
// range (RFC 2544), never routed on the Internet.
const (
	HostAddr = "198.18.0.1"
	OutsideA = "198.18.0.2"
	OutsideB = "198.18.0.3"
)

// Servers in the world. Every TCP server answers each connection with one
// line, "culvert-probe <listen address>", and closes it; Dial checks it.
const (
	// OutsideTCPPorts listen on both outside addresses.
	OutsideTCPPorts = "8080,8081,9090"
	// HostLoopbackTCP listens on the host namespace's loopback.
	HostLoopbackTCP = "127.0.0.1:7000"
	// HostTCPPort listens on HostAddr.
	HostTCPPort = 7001
	// DNSPort: a DNS responder on both outside addresses answering every
	// A question with 192.0.2.1.
	DNSPort = 5353
	// EchoPort: a UDP echo on both outside addresses.
	EchoPort = 5354
)

// Timeout bounds every dial, read and query of the helpers. Refused
// connections usually fail at once; dropped ones take this long.
const Timeout = 400 * time.Millisecond

const probeMsg = "culvert-probe"

// World is the host and outside namespaces with their servers running.
type World struct {
	Host, Outside netns.NsHandle
	// HostNetns is Host's path, for network.Config.HostNetns.
	HostNetns string

	mu      sync.Mutex
	udpHits map[string]int
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, veth links and nftables rules (CI runs as root)")
	}
}

// New builds the world; routeBack (the manager's subnet) is routed from
// the outside back through the host, so that tests of inbound connections
// are not decided by a missing route. Everything goes when the test ends.
func New(tb testing.TB, routeBack netip.Prefix) *World {
	tb.Helper()
	RequireRoot(tb)
	w := &World{Host: NewNS(tb), Outside: NewNS(tb), udpHits: map[string]int{}}
	w.HostNetns = Path(w.Host)
	hnl, onl := handle(tb, w.Host), handle(tb, w.Outside)
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1", PeerNamespace: netlink.NsFd(int(w.Outside))}
	if err := hnl.LinkAdd(up); err != nil {
		tb.Fatalf("nettest: uplink veth: %v", err)
	}
	host, outA, outB := netip.MustParseAddr(HostAddr), netip.MustParseAddr(OutsideA), netip.MustParseAddr(OutsideB)
	up0 := addrUp(tb, hnl, "up0", host)
	up1 := addrUp(tb, onl, "up1", outA, outB)
	dst := &net.IPNet{IP: routeBack.Masked().Addr().AsSlice(), Mask: net.CIDRMask(routeBack.Bits(), 32)}
	if err := onl.RouteAdd(&netlink.Route{LinkIndex: up1.Attrs().Index, Dst: dst, Gw: host.AsSlice()}); err != nil {
		tb.Fatalf("nettest: outside route: %v", err)
	}
	if err := WriteSysctl(w.Host, "net/ipv4/ip_forward", "1"); err != nil {
		tb.Fatal(err)
	}
	waitUp(tb, hnl, up0.Attrs().Name)
	waitUp(tb, onl, up1.Attrs().Name)

	for _, port := range strings.Split(OutsideTCPPorts, ",") {
		ServeTCP(tb, w.Outside, "0.0.0.0:"+port)
	}
	ServeTCP(tb, w.Host, HostLoopbackTCP)
	ServeTCP(tb, w.Host, netip.AddrPortFrom(host, HostTCPPort).String())
	// One UDP socket per address, so replies come from the address asked.
	for _, a := range []netip.Addr{outA, outB} {
		w.serveDNS(tb, netip.AddrPortFrom(a, DNSPort).String())
		w.serveEcho(tb, netip.AddrPortFrom(a, EchoPort).String())
	}
	return w
}

// UDPHits is how many datagrams the DNS or echo server at addr (e.g.
// "198.18.0.2:5354") has received.
func (w *World) UDPHits(addr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.udpHits[addr]
}

func (w *World) hit(addr string) {
	w.mu.Lock()
	w.udpHits[addr]++
	w.mu.Unlock()
}

// NewNS creates an anonymous network namespace with loopback up, kept
// alive by the returned handle until the test ends.
func NewNS(tb testing.TB) netns.NsHandle {
	tb.Helper()
	type res struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			c <- res{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New()
		c <- res{h, err}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	r := <-c
	if r.err != nil {
		tb.Fatalf("nettest: create namespace: %v", r.err)
	}
	tb.Cleanup(func() { r.h.Close() })
	nl := handle(tb, r.h)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("nettest: loopback up: %v", err)
	}
	return r.h
}

// Path names a namespace handle as a path other code can open.
func Path(h netns.NsHandle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h)) }

// In runs fn on an OS thread inside ns: sockets fn creates belong to ns,
// and processes it starts begin there.
func In(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// WriteSysctl writes /proc/sys/<name> inside ns.
func WriteSysctl(ns netns.NsHandle, name, value string) error {
	err := In(ns, func() error { return os.WriteFile("/proc/sys/"+name, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("nettest: sysctl %s: %w", name, err)
	}
	return nil
}

// Listen opens a TCP listener inside ns, closed when the test ends.
func Listen(tb testing.TB, ns netns.NsHandle, addr string) net.Listener {
	tb.Helper()
	var l net.Listener
	if err := In(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		tb.Fatalf("nettest: listen %s: %v", addr, err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// ServeTCP runs a probe server inside ns (see Dial).
func ServeTCP(tb testing.TB, ns netns.NsHandle, addr string) {
	tb.Helper()
	Serve(Listen(tb, ns, addr))
}

// Serve answers every connection accepted on l with the probe line.
func Serve(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", probeMsg, l.Addr())
			c.Close()
		}
	}()
}

// Dial connects to a probe server at addr from inside ns and reads its
// line: nil means a real, working connection.
func Dial(ns netns.NsHandle, addr string) error {
	var c net.Conn
	err := In(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, Timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(Timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("connected, but read: %w", err)
	}
	if !strings.HasPrefix(line, probeMsg) {
		return fmt.Errorf("connected, but got %q", line)
	}
	return nil
}

// UDP sends one datagram to an echo server from inside ns and waits for
// the echo.
func UDP(ns netns.NsHandle, addr string) error {
	var c net.Conn
	if err := In(ns, func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(Timeout))
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

// Lookup sends a DNS query for an A record over UDP to server from inside
// ns and checks the world's answer.
func Lookup(ns netns.NsHandle, server string) error {
	var c net.Conn
	if err := In(ns, func() (err error) { c, err = net.Dial("udp", server); return err }); err != nil {
		return err
	}
	defer c.Close()
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: 7, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("fn.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	b, err := q.Pack()
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(Timeout))
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
	if len(r.Answers) != 1 {
		return fmt.Errorf("got %d answers, want 1", len(r.Answers))
	}
	if a, ok := r.Answers[0].Body.(*dnsmessage.AResource); !ok || a.A != [4]byte{192, 0, 2, 1} {
		return fmt.Errorf("unexpected answer %v", r.Answers[0].Body)
	}
	return nil
}

func (w *World) listenUDP(tb testing.TB, addr string) net.PacketConn {
	tb.Helper()
	var pc net.PacketConn
	if err := In(w.Outside, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		tb.Fatalf("nettest: listen udp %s: %v", addr, err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
}

func (w *World) serveEcho(tb testing.TB, addr string) {
	pc := w.listenUDP(tb, addr)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			w.hit(addr)
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func (w *World) serveDNS(tb testing.TB, addr string) {
	pc := w.listenUDP(tb, addr)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			w.hit(addr)
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			r := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true}, Questions: q.Questions,
				Answers: []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}},
				}}}
			if out, err := r.Pack(); err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
}

func handle(tb testing.TB, h netns.NsHandle) *netlink.Handle {
	tb.Helper()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		tb.Fatalf("nettest: netlink: %v", err)
	}
	tb.Cleanup(nl.Close)
	return nl
}

func addrUp(tb testing.TB, nl *netlink.Handle, name string, addrs ...netip.Addr) netlink.Link {
	tb.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		tb.Fatalf("nettest: %v", err)
	}
	for _, a := range addrs {
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			tb.Fatalf("nettest: address %s on %s: %v", a, name, err)
		}
	}
	if err := nl.LinkSetUp(l); err != nil {
		tb.Fatalf("nettest: %s up: %v", name, err)
	}
	return l
}

// waitUp waits for a veth to be operationally up: until then it drops
// packets, and a first SYN lost costs a second.
func waitUp(tb testing.TB, nl *netlink.Handle, name string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := nl.LinkByName(name)
		if err != nil {
			tb.Fatalf("nettest: %v", err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nettest: %s not up after 5s (%s)", name, l.Attrs().OperState)
		}
		time.Sleep(100 * time.Microsecond)
	}
}
