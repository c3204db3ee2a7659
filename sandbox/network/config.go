package network

import (
	"fmt"
	"log/slog"
	"net/netip"
)

// Config configures a Manager. The zero value is usable: every field has a
// default.
type Config struct {
	// Prefix names everything the manager creates: the host-side veths
	// ("<prefix>-<n>"), its nftables table and its namespace files. It is
	// also how leftovers of a crashed run are found, so two managers on one
	// host need different prefixes. 1 to 8 lowercase letters or digits,
	// starting with a letter. Default "cvt".
	Prefix string
	// RunDir holds the lock file and the namespace bind mounts
	// (RunDir/netns/<prefix>-<n>). Default "/run/culvert/network".
	RunDir string
	// Subnet is the private IPv4 range instance links are numbered from: a
	// /30 per egress instance (host side .1, instance .2), so a /16 holds
	// 16384 egress instances; none instances take no address. It must not
	// overlap anything routed on the host. /16 to /29; default
	// 10.213.0.0/16.
	Subnet netip.Prefix
	// HostNetns is the path of the network namespace that holds the host
	// side of every link and the host-side rules, and through which egress
	// traffic leaves. Empty: the namespace the manager was created in.
	HostNetns string
	// EnableForwarding sets net.ipv4.ip_forward=1 in HostNetns, which
	// egress to anything but the host itself needs, and restores the old
	// value on Close. When false and forwarding is off, Prepare refuses
	// egress rather than hand out a policy that cannot work.
	EnableForwarding bool
	// NoMasquerade leaves the instances' source addresses untranslated;
	// the upstream network must then route Subnet back to the host.
	NoMasquerade bool
	// Warm is how many egress namespaces to keep prepared ahead (link up,
	// addressed, everything dropped), so that Prepare only installs the
	// policy. 0 prepares each on demand.
	Warm int
	// Logger receives start-up clean-up and teardown problems. Default
	// slog.Default().
	Logger *slog.Logger
}

const (
	defaultPrefix = "cvt"
	defaultRunDir = "/run/culvert/network"
)

// DefaultSubnet is the range used when Config.Subnet is unset.
const DefaultSubnet = "10.213.0.0/16"

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if !validPrefix(c.Prefix) {
		return c, fmt.Errorf("network: prefix %q: want 1 to 8 lowercase letters or digits, starting with a letter", c.Prefix)
	}
	if c.RunDir == "" {
		c.RunDir = defaultRunDir
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() < 16 || c.Subnet.Bits() > 29 {
		return c, fmt.Errorf("network: subnet %s: want an IPv4 range from /16 to /29", c.Subnet)
	}
	if c.Subnet.Masked() != c.Subnet {
		return c, fmt.Errorf("network: subnet %s has host bits set; did you mean %s?", c.Subnet, c.Subnet.Masked())
	}
	if c.Warm < 0 {
		return c, fmt.Errorf("network: warm %d: want 0 or more", c.Warm)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

func validPrefix(p string) bool {
	if len(p) < 1 || len(p) > 8 || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for _, r := range p {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// Attachment is one instance's prepared network namespace. The runtime
// joins Path (e.g. libcontainer's NEWNET namespace with this path) and calls
// Close once the instance has exited.
type Attachment struct {
	// Path is the bind-mounted network namespace to join.
	Path string
	// Mode is "none" or "egress".
	Mode string
	// Addr is the instance's address and Gateway the host side of its link
	// (egress only).
	Addr, Gateway netip.Addr
	// Resolver is the one resolver the instance may query (egress with
	// dns only). resolv.conf cannot name a port: a runtime writing one
	// should refuse a resolver whose port is not 53.
	Resolver netip.AddrPort
	// HostLink is the host-side interface name (egress only).
	HostLink string

	release func() error
}

// Close removes the namespace, its link and its rules. It is safe to call
// more than once. For egress it takes tens of milliseconds (deleting a
// veth waits for the kernel's RCU grace periods): call it where that
// delays nothing, e.g. in a goroutine once the instance has exited.
func (a *Attachment) Close() error {
	if a == nil || a.release == nil {
		return nil
	}
	r := a.release
	a.release = nil
	return r()
}
