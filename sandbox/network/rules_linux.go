//go:build linux

package network

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// The rules, in nft syntax. Host side, table inet <prefix>, created by
// NewManager ("P-*" is any of the manager's links):
//
//	map links { type ifname : verdict }        # host link -> jump inst-N
//	chain input   { type filter hook input priority 0; policy accept;
//	    iifname "P-*" ct state established,related accept
//	    iifname vmap @links
//	    iifname "P-*" drop }
//	chain forward { type filter hook forward priority 0; policy accept;
//	    oifname "P-*" ct state established,related accept
//	    oifname "P-*" drop                      # nothing new reaches an instance
//	    iifname "P-*" ct state established,related accept
//	    iifname vmap @links
//	    iifname "P-*" drop }
//	chain output  { type filter hook output priority 0; policy accept;
//	    oifname "P-*" ct state established,related accept
//	    oifname "P-*" drop }                    # the host cannot connect in
//	chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr SUBNET oifname != "P-*" masquerade }
//
// and per egress instance, added by Prepare and removed by Close:
//
//	chain inst-N {
//	    meta nfproto != ipv4 drop
//	    ip saddr != ADDR drop
//	    ip daddr DNS udp/tcp dport PORT accept  # if dns is set
//	    ip daddr SUBNET drop                    # other instances, link addresses
//	    ip daddr CIDR tcp dport FROM-TO accept  # per allowlist entry
//	    drop }
//
// Inside the instance's namespace, table inet culvert, stateless (see
// addInstanceBase):
//
//	chain output { type filter hook output priority 0; policy drop;
//	    oifname "lo" accept
//	    meta nfproto != ipv4 drop
//	    ip daddr SUBNET tcp reject with tcp reset; ip daddr SUBNET drop
//	    jump allow-out      # resolver and allowlist: accept
//	    meta l4proto tcp reject with tcp reset }   # fail at once, not by timeout
//	chain input { type filter hook input priority 0; policy drop;
//	    iifname "lo" accept
//	    meta nfproto != ipv4 drop
//	    tcp flags & (syn|ack) == syn drop            # no connection in
//	    jump allow-in }     # from the resolver and the allowlist: accept

const (
	instTable = "culvert"
	linksMap  = "links"
)

func estRel() []byte {
	return binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
}

func zero4() []byte { return []byte{0, 0, 0, 0} }

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }
func drop() expr.Any   { return &expr.Verdict{Kind: expr.VerdictDrop} }
func tcpRST() expr.Any { return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST} }

func chainPolicy(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

// ifname returns the 16-byte, zero-padded interface name a meta
// iifname/oifname load produces.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ifPrefix matches interfaces whose name starts with p (nft "p*"); ifExact
// matches the name itself.
func ifPrefix(key expr.MetaKey, p string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(p)},
	}
}

func ifExact(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: append([]byte(name), 0)},
	}
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: estRel(), Xor: zero4()},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero4()},
	}
}

func notIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// ipIn matches the IPv4 source (offset 12) or destination (offset 16)
// address against p; op Neq negates.
func ipIn(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	m := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits())) // /0: shifts to 0
	a := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: zero4()},
		&expr.Cmp{Op: op, Register: 1, Data: a[:]},
	}
}

const (
	saddr = 12
	daddr = 16
)

// l4Ports matches the transport protocol and a port range: the
// destination port when dir is daddr, the source port when it is saddr.
func l4Ports(dir uint32, proto byte, from, to uint16) []expr.Any {
	off := uint32(2) // destination port
	if dir == saddr {
		off = 0
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: 1,
			FromData: binary.BigEndian.AppendUint16(nil, from), ToData: binary.BigEndian.AppendUint16(nil, to)},
	}
}

func l4Proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func v(e expr.Any) []expr.Any { return []expr.Any{e} }

// policy is an egress policy in the form the rules need.
type policy struct {
	allow    []allowRule
	resolver netip.AddrPort // zero: none
}

type allowRule struct {
	dst      netip.Prefix
	from, to uint16
}

func compile(n sandbox.Network) (policy, error) {
	var p policy
	for _, e := range n.Allow {
		pr, err := netip.ParsePrefix(e.CIDR)
		if err != nil {
			return p, err
		}
		p.allow = append(p.allow, allowRule{dst: pr, from: e.FromPort, to: e.ToPort})
	}
	if n.DNS != "" {
		r, err := ParseResolver(n.DNS)
		if err != nil {
			return p, err
		}
		p.resolver = r
	}
	return p, nil
}

// resolverRules accept UDP and TCP to the resolver (TCP for truncated
// answers), or, with dir saddr, from it.
func resolverRules(dir uint32, r netip.AddrPort) [][]expr.Any {
	if !r.IsValid() {
		return nil
	}
	dst := netip.PrefixFrom(r.Addr(), 32)
	var out [][]expr.Any
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		out = append(out, join(ipIn(dir, dst, expr.CmpOpEq), l4Ports(dir, proto, r.Port(), r.Port()), v(accept())))
	}
	return out
}

// allowRules accept TCP to the allowlist, or, with dir saddr, from it.
func allowRules(dir uint32, p policy) [][]expr.Any {
	var out [][]expr.Any
	for _, a := range p.allow {
		out = append(out, join(ipIn(dir, a.dst, expr.CmpOpEq), l4Ports(dir, unix.IPPROTO_TCP, a.from, a.to), v(accept())))
	}
	return out
}

func addRules(c *nftables.Conn, ch *nftables.Chain, rules ...[]expr.Any) {
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r})
	}
}

// addHostTable queues the manager's host-side table.
func addHostTable(c *nftables.Conn, prefix string, subnet netip.Prefix, masquerade bool) {
	links := prefix + "-"
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: prefix})
	m := &nftables.Set{Table: t, Name: linksMap, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
	_ = c.AddSet(m, nil) // only fails for malformed elements; there are none
	vmap := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
	}
	base := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityFilter, Policy: chainPolicy(nftables.ChainPolicyAccept)})
	}
	in := base("input", nftables.ChainHookInput)
	addRules(c, in,
		join(ifPrefix(expr.MetaKeyIIFNAME, links, expr.CmpOpEq), ctEstablished(), v(accept())),
		vmap,
		join(ifPrefix(expr.MetaKeyIIFNAME, links, expr.CmpOpEq), v(drop())))
	fwd := base("forward", nftables.ChainHookForward)
	addRules(c, fwd,
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), ctEstablished(), v(accept())),
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), v(drop())),
		join(ifPrefix(expr.MetaKeyIIFNAME, links, expr.CmpOpEq), ctEstablished(), v(accept())),
		vmap,
		join(ifPrefix(expr.MetaKeyIIFNAME, links, expr.CmpOpEq), v(drop())))
	out := base("output", nftables.ChainHookOutput)
	addRules(c, out,
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), ctEstablished(), v(accept())),
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), v(drop())))
	if masquerade {
		nat := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		addRules(c, nat, join(
			[]expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}},
			ipIn(saddr, subnet, expr.CmpOpEq),
			ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpNeq),
			v(&expr.Masq{})))
	}
}

func hostTableRef(prefix string) *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: prefix}
}

func instChainName(link string) string { return "inst-" + link }

// addInstance queues an instance's host-side chain and its map element.
func addInstance(c *nftables.Conn, prefix, link string, addr netip.Addr, subnet netip.Prefix, p policy) error {
	t := hostTableRef(prefix)
	ch := c.AddChain(&nftables.Chain{Name: instChainName(link), Table: t})
	addRules(c, ch,
		join(notIPv4(), v(drop())),
		join(ipIn(saddr, netip.PrefixFrom(addr, 32), expr.CmpOpNeq), v(drop())))
	addRules(c, ch, resolverRules(daddr, p.resolver)...)
	addRules(c, ch, join(ipIn(daddr, subnet, expr.CmpOpEq), v(drop())))
	addRules(c, ch, allowRules(daddr, p)...)
	addRules(c, ch, v(drop()))
	m := &nftables.Set{Table: t, Name: linksMap, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
	return c.SetAddElements(m, []nftables.SetElement{{Key: ifname(link),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}})
}

// delInstance queues the removal of an instance's map element and chain.
func delInstance(c *nftables.Conn, prefix, link string) error {
	t := hostTableRef(prefix)
	m := &nftables.Set{Table: t, Name: linksMap, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
	if err := c.SetDeleteElements(m, []nftables.SetElement{{Key: ifname(link),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: instChainName(link)}}}); err != nil {
		return err
	}
	ch := &nftables.Chain{Name: instChainName(link), Table: t}
	c.FlushChain(ch)
	c.DelChain(ch)
	return nil
}

// addInstanceBase queues the rules inside an egress instance's own
// namespace that do not depend on its policy; addInstancePolicy fills in
// the two chains they jump to. They are stateless: conntrack in every
// instance namespace would double the cost of preparing one (its hooks are
// registered per namespace) and keep a connection table per instance, and
// a client-only policy does not need it. Output allows what allow-out
// accepts; input drops every TCP SYN without ACK (no connection can be
// opened towards the instance) and accepts only what allow-in accepts:
// packets from the allowlist's addresses and ports, or from the resolver.
func addInstanceBase(c *nftables.Conn, subnet netip.Prefix) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: instTable})
	allowOut := c.AddChain(&nftables.Chain{Name: "allow-out", Table: t})
	allowIn := c.AddChain(&nftables.Chain{Name: "allow-in", Table: t})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: chainPolicy(nftables.ChainPolicyDrop)})
	addRules(c, out,
		join(ifExact(expr.MetaKeyOIFNAME, "lo"), v(accept())),
		join(notIPv4(), v(drop())),
		join(ipIn(daddr, subnet, expr.CmpOpEq), l4Proto(unix.IPPROTO_TCP), v(tcpRST())),
		join(ipIn(daddr, subnet, expr.CmpOpEq), v(drop())),
		v(&expr.Verdict{Kind: expr.VerdictJump, Chain: allowOut.Name}),
		join(l4Proto(unix.IPPROTO_TCP), v(tcpRST())))
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: chainPolicy(nftables.ChainPolicyDrop)})
	addRules(c, in,
		join(ifExact(expr.MetaKeyIIFNAME, "lo"), v(accept())),
		join(notIPv4(), v(drop())),
		join(l4Proto(unix.IPPROTO_TCP), synOnly(), v(drop())),
		v(&expr.Verdict{Kind: expr.VerdictJump, Chain: allowIn.Name}))
}

// addInstancePolicy queues an instance's allowlist and resolver into the
// chains addInstanceBase made.
func addInstancePolicy(c *nftables.Conn, p policy) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: instTable}
	out := &nftables.Chain{Name: "allow-out", Table: t}
	addRules(c, out, resolverRules(daddr, p.resolver)...)
	addRules(c, out, allowRules(daddr, p)...)
	in := &nftables.Chain{Name: "allow-in", Table: t}
	addRules(c, in, resolverRules(saddr, p.resolver)...)
	addRules(c, in, allowRules(saddr, p)...)
}

// synOnly matches TCP segments with SYN set and ACK clear: connection
// attempts.
func synOnly() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	}
}
