package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/culvert-dev/culvert/sandbox"
)

// Network modes.
const (
	ModeNone   = "none"
	ModeEgress = "egress"
)

// ErrNotSupported is returned by NewManager where network sandboxing is not
// available (any OS but Linux).
var ErrNotSupported = errors.New("network sandboxing is supported on Linux only")

// ParseEndpoint parses one allowlist entry of the form CIDR:PORT or
// CIDR:FROM-TO, e.g. "10.0.0.0/8:443", "192.0.2.7/32:8000-8099". A bare
// IPv4 address stands for its /32: "192.0.2.7:53". Ports are 1..65535 and
// the range is inclusive. Only IPv4 is accepted: egress has no IPv6 route.
func ParseEndpoint(s string) (sandbox.Endpoint, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return sandbox.Endpoint{}, fmt.Errorf("endpoint %q: want CIDR:PORT or CIDR:FROM-TO, e.g. 10.0.0.0/8:443", s)
	}
	addr, ports := s[:i], s[i+1:]
	e := sandbox.Endpoint{}
	p, err := parsePrefix(addr)
	if err != nil {
		return sandbox.Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	e.CIDR = p.String()
	from, to, isRange := strings.Cut(ports, "-")
	if e.FromPort, err = parsePort(from); err != nil {
		return sandbox.Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	e.ToPort = e.FromPort
	if isRange {
		if e.ToPort, err = parsePort(to); err != nil {
			return sandbox.Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
		}
	}
	if err := checkEndpoint(e); err != nil {
		return sandbox.Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	return e, nil
}

// FormatEndpoint is the inverse of ParseEndpoint.
func FormatEndpoint(e sandbox.Endpoint) string {
	if e.FromPort == e.ToPort {
		return fmt.Sprintf("%s:%d", e.CIDR, e.FromPort)
	}
	return fmt.Sprintf("%s:%d-%d", e.CIDR, e.FromPort, e.ToPort)
}

// Validate checks a network policy as the Manager would, without needing
// Linux or root: the mode, every allowlist entry and the resolver. The
// empty mode means "none".
func Validate(n sandbox.Network) error {
	switch n.Mode {
	case "", ModeNone:
		if len(n.Allow) > 0 || n.DNS != "" {
			return fmt.Errorf("network mode %q has no outbound access: allow and dns need mode %q", ModeNone, ModeEgress)
		}
		return nil
	case ModeEgress:
	default:
		return fmt.Errorf("network mode %q: want %q or %q", n.Mode, ModeNone, ModeEgress)
	}
	for i, e := range n.Allow {
		if err := checkEndpoint(e); err != nil {
			return fmt.Errorf("allow[%d] %s: %w", i, FormatEndpoint(e), err)
		}
	}
	if n.DNS != "" {
		if _, err := ParseResolver(n.DNS); err != nil {
			return err
		}
	}
	return nil
}

// ParseResolver parses the dns setting: an IPv4 address with an optional
// port (53 when omitted), e.g. "192.0.2.53" or "192.0.2.53:5353".
func ParseResolver(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		s = netip.AddrPortFrom(a, 53).String()
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dns %q: want IPv4:PORT, e.g. 192.0.2.53:53", s)
	}
	if !ap.Addr().Is4() {
		return netip.AddrPort{}, fmt.Errorf("dns %q: only IPv4 resolvers are supported", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("dns %q: port 0 is not a port", s)
	}
	return ap, nil
}

func checkEndpoint(e sandbox.Endpoint) error {
	p, err := netip.ParsePrefix(e.CIDR)
	if err != nil {
		return fmt.Errorf("cidr %q is not a CIDR (e.g. 10.0.0.0/8)", e.CIDR)
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("cidr %q: only IPv4 destinations are supported", e.CIDR)
	}
	if p.Masked() != p {
		return fmt.Errorf("cidr %q has host bits set; did you mean %s?", e.CIDR, p.Masked())
	}
	if e.FromPort == 0 || e.ToPort == 0 {
		return errors.New("port 0 is not a port: ports are 1..65535")
	}
	if e.FromPort > e.ToPort {
		return fmt.Errorf("port range %d-%d runs backwards", e.FromPort, e.ToPort)
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an address", s)
		}
		if !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("%q: only IPv4 destinations are supported", s)
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (e.g. 10.0.0.0/8)", s)
	}
	return p, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number 1..65535", s)
	}
	return uint16(n), nil
}
