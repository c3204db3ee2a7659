//go:build linux

package network

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// Manager prepares per-instance network namespaces. Its methods are safe
// for concurrent use.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	nsDir  string // RunDir/<prefix>: namespace bind mounts
	bound  bool   // nsDir is (or may be) a mount point to remove on Close
	lock   *os.File
	hostNS netns.NsHandle
	host   *netlink.Handle
	nftMu  sync.Mutex     // guards nft: a batch is built and flushed whole
	nft    *nftables.Conn // lasting, in the host namespace

	forwarding bool   // ip_forward is on in the host namespace
	restoreFwd string // value to restore on Close, if changed

	warm     chan *shell   // ready egress shells (Config.Warm)
	wantWarm chan struct{} // asks keepWarm for more
	stop     context.CancelFunc
	wg       sync.WaitGroup

	noneSeq atomic.Uint64 // names of none namespaces

	mu     sync.Mutex
	used   []bool // slot -> in use (egress)
	next   int    // where the search for a free slot starts
	closed bool
}

// NewManager takes the lock for cfg.Prefix, removes whatever a previous
// run with that prefix left behind (links, rules, namespace mounts), and
// installs the host-side rules. It needs CAP_NET_ADMIN and CAP_SYS_ADMIN
// (for namespace mounts), i.e. root.
func NewManager(cfg Config) (_ *Manager, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger.With("component", "network", "prefix", cfg.Prefix),
		nsDir: filepath.Join(cfg.RunDir, cfg.Prefix), hostNS: netns.None()}
	defer func() {
		if err != nil {
			m.teardown()
		}
	}()
	if err := os.MkdirAll(m.nsDir, 0o700); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	lockPath := filepath.Join(cfg.RunDir, cfg.Prefix+".lock")
	if m.lock, err = os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := unix.Flock(int(m.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		m.lock.Close()
		m.lock = nil
		return nil, fmt.Errorf("network: another manager with prefix %q is running (lock %s held): %w", cfg.Prefix, lockPath, err)
	}
	if cfg.HostNetns == "" {
		m.hostNS, err = netns.Get()
	} else {
		m.hostNS, err = netns.GetFromPath(cfg.HostNetns)
	}
	if err != nil {
		return nil, fmt.Errorf("network: open host network namespace %q: %w", cfg.HostNetns, err)
	}
	if m.host, err = netlink.NewHandleAt(m.hostNS); err != nil {
		return nil, fmt.Errorf("network: netlink in host namespace: %w", err)
	}
	if err := m.removeAll("leftover"); err != nil {
		return nil, err
	}
	// nsDir is ours by name: a mount on it left by a crashed run is
	// adopted, and Close unmounts it either way.
	m.bound = true
	if _, err = makeShared(m.nsDir); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	fwd, err := sysctl(m.hostNS, "net/ipv4/ip_forward", "")
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	m.forwarding = strings.TrimSpace(fwd) == "1"
	if !m.forwarding && cfg.EnableForwarding {
		if _, err := sysctl(m.hostNS, "net/ipv4/ip_forward", "1"); err != nil {
			return nil, fmt.Errorf("network: enable forwarding: %w", err)
		}
		m.forwarding, m.restoreFwd = true, fwd
		m.log.Info("enabled net.ipv4.ip_forward in the host namespace; restored on close")
	}
	if m.nft, err = nftables.New(nftables.WithNetNSFd(int(m.hostNS)), nftables.AsLasting()); err != nil {
		return nil, fmt.Errorf("network: nftables in host namespace: %w", err)
	}
	addHostTable(m.nft, cfg.Prefix, cfg.Subnet, !cfg.NoMasquerade)
	if err := m.nft.Flush(); err != nil {
		return nil, fmt.Errorf("network: install host rules (table inet %s): %w", cfg.Prefix, err)
	}
	m.used = make([]bool, 1<<(32-cfg.Subnet.Bits()-2))
	m.warm, m.wantWarm = make(chan *shell, cfg.Warm), make(chan struct{}, 1)
	if cfg.Warm > 0 && m.forwarding {
		ctx, stop := context.WithCancel(context.Background())
		m.stop = stop
		m.wg.Add(1)
		go m.keepWarm(ctx)
		m.wantWarm <- struct{}{}
	}
	return m, nil
}

func (m *Manager) hostConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return nil, fmt.Errorf("network: nftables in host namespace: %w", err)
	}
	return c, nil
}

// removeAll deletes the table, links and namespace mounts carrying the
// prefix. At start-up they belong to a previous run that did not close,
// since this one holds the prefix's lock; why says which case it is.
func (m *Manager) removeAll(why string) error {
	c, err := m.hostConn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("network: list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == m.cfg.Prefix {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("network: remove %s table inet %s: %w", why, t.Name, err)
			}
			m.log.Debug("removed nftables table", "why", why, "table", t.Name)
		}
	}
	links, err := m.host.LinkList()
	if err != nil {
		return fmt.Errorf("network: list links: %w", err)
	}
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, m.cfg.Prefix+"-") && l.Type() == "veth" {
			if err := m.host.LinkDel(l); err != nil {
				return fmt.Errorf("network: remove %s link %s: %w", why, name, err)
			}
			m.log.Debug("removed link", "why", why, "link", name)
		}
	}
	entries, err := os.ReadDir(m.nsDir)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	for _, e := range entries {
		if err := removeNetns(filepath.Join(m.nsDir, e.Name())); err != nil {
			return fmt.Errorf("network: %s: %w", why, err)
		}
		m.log.Debug("removed network namespace", "why", why, "path", filepath.Join(m.nsDir, e.Name()))
	}
	return nil
}

// Prepare creates the network namespace for one instance of a tenant's
// function and applies policy n to it. "none" (or "") gives a namespace
// with its loopback up and nothing else. "egress" adds a veth link to the
// host namespace, numbered from the manager's subnet, a default route
// through it, and the rules that allow outbound TCP to n.Allow and UDP/TCP
// to n.DNS only; with Config.Warm it takes a namespace prepared ahead and
// only installs the policy. The caller joins Attachment.Path and closes
// the attachment once the instance has exited.
func (m *Manager) Prepare(ctx context.Context, tenant, instance string, n sandbox.Network) (_ *Attachment, err error) {
	what := fmt.Sprintf("network for %s (tenant %s)", instance, tenant)
	if err := Validate(n); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	egress := n.Mode == ModeEgress
	if egress && !m.forwarding {
		return nil, fmt.Errorf("%s: egress needs net.ipv4.ip_forward=1 in the host network namespace, and it is 0: "+
			"enable it (sysctl -w net.ipv4.ip_forward=1) or let Culvert do it (culvert run --enable-ip-forward; Config.EnableForwarding in Go)", what)
	}
	p, err := compile(n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var sh *shell
	if egress {
		sh = m.takeWarm()
	}
	if sh == nil {
		if sh, err = m.newShell(ctx, egress, &p); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	a := &Attachment{Path: sh.path, Mode: ModeNone, release: func() error { return m.releaseShell(sh) }}
	if egress {
		if err := m.applyPolicy(sh, p); err != nil {
			if rerr := a.Close(); rerr != nil {
				m.log.Warn("rolling back a failed prepare", "instance", instance, "err", rerr)
			}
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		a.Mode, a.Addr, a.Gateway, a.HostLink, a.Resolver = ModeEgress, sh.addr, sh.gw, sh.name, p.resolver
	}
	m.log.Debug("network prepared", "instance", instance, "tenant", tenant, "mode", a.Mode, "path", a.Path, "addr", a.Addr)
	return a, nil
}

// shell is a namespace without a policy. For egress its link is up and
// addressed, and its rules drop everything until applyPolicy adds what
// is allowed.
type shell struct {
	slot     int    // address slot (egress), or -1
	name     string // <prefix>-<slot>: namespace file and host link
	path     string
	addr, gw netip.Addr
	undo     []func() error // in the order done; released in reverse

	policyInside bool // the policy is already in the rules inside
}

// newShell prepares a namespace; for egress with p set, its rules inside
// include p from the start.
func (m *Manager) newShell(ctx context.Context, egress bool, p *policy) (_ *shell, err error) {
	var sh *shell
	if egress {
		slot, err := m.alloc()
		if err != nil {
			return nil, err
		}
		name := m.cfg.Prefix + "-" + strconv.FormatUint(uint64(slot), 36)
		sh = &shell{slot: slot, name: name, path: filepath.Join(m.nsDir, name)}
	} else {
		// none takes no address, so no slot: its name only has to be unique.
		if m.isClosed() {
			return nil, errors.New("network manager is closed")
		}
		name := m.cfg.Prefix + "-n" + strconv.FormatUint(m.noneSeq.Add(1), 36)
		sh = &shell{slot: -1, name: name, path: filepath.Join(m.nsDir, name)}
	}
	defer func() {
		if err != nil {
			if rerr := m.releaseShell(sh); rerr != nil {
				m.log.Warn("rolling back a failed namespace", "path", sh.path, "err", rerr)
			}
		}
	}()
	// Everything inside the new namespace happens on the thread that
	// created it, with sockets opened there: no per-call namespace switch.
	sh.undo = append(sh.undo, func() error { return removeNetns(sh.path) })
	err = newNetns(sh.path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("bring loopback up: %w", err)
		}
		if egress {
			return m.buildEgress(ctx, sh, p)
		}
		return nil
	})
	return sh, err
}

func (m *Manager) releaseShell(sh *shell) error {
	if m.isClosed() {
		return nil // the manager's Close removed everything
	}
	var errs []error
	for i := len(sh.undo) - 1; i >= 0; i-- {
		errs = append(errs, sh.undo[i]())
	}
	sh.undo = nil
	if sh.slot >= 0 {
		m.free(sh.slot)
	}
	return errors.Join(errs...)
}

// buildEgress builds the link, addresses, route and base rules of an
// egress namespace. It runs on a thread inside the namespace. The rules go
// in before the link exists, and drop everything until a policy is added;
// on the host side, a link without a policy falls to the prefix's drop.
func (m *Manager) buildEgress(ctx context.Context, sh *shell, p *policy) error {
	base := m.cfg.Subnet.Addr().As4()
	var four [4]byte
	binary.BigEndian.PutUint32(four[:], binary.BigEndian.Uint32(base[:])+uint32(sh.slot)*4+1)
	sh.gw = netip.AddrFrom4(four) // .1 of the slot's /30
	sh.addr = sh.gw.Next()        // .2

	// Runs last on release: the host's connection tracking forgets the
	// address, so an instance that later gets it cannot ride on an earlier
	// one's established connections.
	sh.undo = append(sh.undo, func() error { m.forgetConnections(sh.addr); return nil })

	c, err := nftables.New() // a socket in this thread's namespace: the instance's
	if err != nil {
		return fmt.Errorf("nftables inside: %w", err)
	}
	addInstanceBase(c, m.cfg.Subnet)
	if p != nil {
		addInstancePolicy(c, *p)
		sh.policyInside = true
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install rules inside the namespace: %w", err)
	}

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: sh.name, PeerNamespace: netlink.NsFd(int(m.hostNS))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth eth0/%s: %w", sh.name, err)
	}
	sh.undo = append(sh.undo, func() error {
		err := m.host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: sh.name}})
		var nf netlink.LinkNotFoundError
		if err != nil && !errors.Is(err, unix.ENODEV) && !errors.As(err, &nf) {
			return fmt.Errorf("remove veth %s: %w", sh.name, err)
		}
		return nil
	})
	hostLink, err := m.host.LinkByName(sh.name)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", sh.name, err)
	}
	peer, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 inside: %w", err)
	}
	if err := configure(m.host, hostLink, sh.gw); err != nil {
		return fmt.Errorf("host side %s: %w", sh.name, err)
	}
	if err := configure(nil, peer, sh.addr); err != nil {
		return fmt.Errorf("eth0 inside: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.IP(sh.gw.AsSlice())}); err != nil {
		return fmt.Errorf("default route inside: %w", err)
	}
	return waitOperUp(ctx, linkIn{m.host, sh.name}, linkIn{nil, "eth0"})
}

// forgetConnections deletes the host namespace's conntrack entries whose
// original source is addr. A failure is logged, not returned: the rules
// inside the next instance's namespace are stateless and hold anyway.
func (m *Manager) forgetConnections(addr netip.Addr) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(addr.AsSlice())); err != nil {
		m.log.Warn("conntrack filter", "addr", addr, "err", err)
		return
	}
	if _, err := m.host.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
		m.log.Warn("could not delete the connection tracking entries of a closed instance", "addr", addr, "err", err)
	}
}

// applyPolicy adds p to an egress shell: one batch inside, one on the host
// side. Neither registers a hook, which is what makes a warm namespace
// fast to hand out.
func (m *Manager) applyPolicy(sh *shell, p policy) error {
	if sh.policyInside {
		return m.addHostPolicy(sh, p)
	}
	ns, err := netns.GetFromPath(sh.path)
	if err != nil {
		return fmt.Errorf("open %s: %w", sh.path, err)
	}
	defer ns.Close()
	err = inNetns(ns, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		addInstancePolicy(c, p)
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("install the policy inside: %w", err)
	}
	sh.policyInside = true
	return m.addHostPolicy(sh, p)
}

func (m *Manager) addHostPolicy(sh *shell, p policy) error {
	if err := m.addHostRules(sh.name, sh.addr, p); err != nil {
		return err
	}
	sh.undo = append(sh.undo, func() error { return m.delHostRules(sh.name, sh.addr, p) })
	return nil
}

// takeWarm returns a prepared egress shell, if one is ready, and asks for
// another.
func (m *Manager) takeWarm() *shell {
	select {
	case sh := <-m.warm:
		select {
		case m.wantWarm <- struct{}{}:
		default:
		}
		return sh
	default:
		return nil
	}
}

// keepWarm keeps Config.Warm egress shells ready until ctx ends.
func (m *Manager) keepWarm(ctx context.Context) {
	defer m.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wantWarm:
		}
		for len(m.warm) < cap(m.warm) && ctx.Err() == nil {
			sh, err := m.newShell(ctx, true, nil)
			if err != nil {
				if ctx.Err() == nil {
					m.log.Warn("preparing a warm egress namespace failed; Prepare builds them on demand meanwhile", "err", err)
				}
				break
			}
			m.warm <- sh // only this goroutine fills it, so there is room
		}
	}
}

// addHostRules adds an instance's entries to the host-side sets.
func (m *Manager) addHostRules(link string, addr netip.Addr, p policy) error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := addInstance(m.nft, m.cfg.Prefix, link, addr, p); err != nil {
		return fmt.Errorf("host rules for %s: %w", link, err)
	}
	if err := m.nft.Flush(); err != nil {
		return fmt.Errorf("install host rules for %s: %w", link, err)
	}
	return nil
}

func (m *Manager) delHostRules(link string, addr netip.Addr, p policy) error {
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := delInstance(m.nft, m.cfg.Prefix, link, addr, p); err != nil {
		return err
	}
	if err := m.nft.Flush(); err != nil {
		return fmt.Errorf("remove host rules for %s: %w", link, err)
	}
	return nil
}

// linkIn names a link in the namespace of h; a nil h is the calling
// thread's namespace.
type linkIn struct {
	h    *netlink.Handle
	name string
}

// waitOperUp waits until the links are operationally up. A veth comes up a
// few hundred microseconds after it is set up (the kernel's link watch
// activates its queue); until then it drops packets, and a connection
// attempted at once loses its SYN and waits a second for the retry.
func waitOperUp(ctx context.Context, links ...linkIn) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	wait := 20 * time.Microsecond
	for _, l := range links {
		for {
			link, err := linkByName(l.h, l.name)
			if err != nil {
				return fmt.Errorf("link %s: %w", l.name, err)
			}
			if link.Attrs().OperState == netlink.OperUp {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("link %s not up (state %s): %w", l.name, link.Attrs().OperState, ctx.Err())
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Millisecond)
		}
	}
	return nil
}

func linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	if h == nil {
		return netlink.LinkByName(name)
	}
	return h.LinkByName(name)
}

// configure gives a link its /30 address, no IPv6 link-local address, and
// brings it up. A nil h is the calling thread's namespace.
func configure(h *netlink.Handle, l netlink.Link, a netip.Addr) error {
	if h == nil {
		h = &netlink.Handle{} // the package handle: sockets opened per call, on this thread
	}
	// Without IPv6 addresses the link cannot carry IPv6 at all; the rules
	// drop it anyway. Kernels without IPv6 refuse the setting, harmlessly.
	_ = h.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE)
	ipn := &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(30, 32)}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("address %s: %w", ipn, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("link up: %w", err)
	}
	return nil
}

func (m *Manager) alloc() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, errors.New("network manager is closed")
	}
	for i := range m.used {
		s := (m.next + i) % len(m.used)
		if !m.used[s] {
			m.used[s] = true
			m.next = s + 1
			return s, nil
		}
	}
	return 0, fmt.Errorf("all %d instance slots of subnet %s are in use", len(m.used), m.cfg.Subnet)
}

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

func (m *Manager) free(slot int) {
	m.mu.Lock()
	m.used[slot] = false
	m.mu.Unlock()
}

// Close removes the host-side rules, every link and namespace mount the
// manager still holds, restores ip_forward if it changed it, and releases
// the prefix's lock. Attachments still open become invalid.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.stop != nil {
		m.stop()
		m.wg.Wait()
	}
	return m.teardown()
}

func (m *Manager) teardown() error {
	var errs []error
	if m.host != nil {
		errs = append(errs, m.removeAll("closing"))
		if m.restoreFwd != "" {
			if _, err := sysctl(m.hostNS, "net/ipv4/ip_forward", m.restoreFwd); err != nil {
				errs = append(errs, fmt.Errorf("network: restore ip_forward: %w", err))
			}
		}
		m.host.Close()
	}
	if m.nft != nil {
		m.nft.CloseLasting()
	}
	if m.bound {
		if err := unix.Unmount(m.nsDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("network: unmount %s: %w", m.nsDir, err))
		}
	}
	if m.hostNS.IsOpen() {
		m.hostNS.Close()
	}
	if m.lock != nil {
		m.lock.Close() // releases the flock
	}
	return errors.Join(errs...)
}
