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
// NewManager ("P-*" is any of the manager's links); instances only add and
// remove elements of its two sets:
//
//	set src   { type ifname . ipv4_addr }                        # link . its address
//	set allow { type ifname . ipv4_addr . inet_proto . inet_service; flags interval }
//	chain input   { type filter hook input priority 0; policy accept;
//	    iifname "P-*" ct state established,related accept
//	    iifname "P-*" meta nfproto != ipv4 drop
//	    iifname "P-*" iifname . ip saddr != @src drop             # no spoofing
//	    iifname "P-*" ip daddr SUBNET drop                        # no other instance
//	    iifname "P-*" iifname . ip daddr . meta l4proto . th dport @allow accept
//	    iifname "P-*" drop }
//	chain forward { type filter hook forward priority 0; policy accept;
//	    oifname "P-*" ct state established,related accept
//	    oifname "P-*" drop                      # nothing new reaches an instance
//	    ...the input chain's rules }
//	chain output  { type filter hook output priority 0; policy accept;
//	    oifname "P-*" ct state established,related accept
//	    oifname "P-*" drop }                    # the host cannot connect in
//	chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr SUBNET oifname != "P-*" masquerade }
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

const instTable = "culvert"

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

// addHostTable queues the manager's host-side table. Instances add
// elements to its two sets, never chains: a Prepare changes no rule, so its
// cost does not grow with the number of instances.
func addHostTable(c *nftables.Conn, prefix string, subnet netip.Prefix, masquerade bool) {
	links := prefix + "-"
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: prefix})
	src, allow := srcSet(t), allowSet(t)
	_ = c.AddSet(src, nil) // only fails for malformed elements; there are none
	_ = c.AddSet(allow, nil)
	fromLinks := func(rest ...[]expr.Any) []expr.Any {
		return join(append([][]expr.Any{ifPrefix(expr.MetaKeyIIFNAME, links, expr.CmpOpEq)}, rest...)...)
	}
	policyRules := [][]expr.Any{
		fromLinks(ctEstablished(), v(accept())),
		fromLinks(notIPv4(), v(drop())),
		fromLinks(srcLookup(src), v(drop())),
		fromLinks(ipIn(daddr, subnet, expr.CmpOpEq), v(drop())),
		fromLinks(allowLookup(allow), v(accept())),
		fromLinks(v(drop())),
	}
	base := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityFilter, Policy: chainPolicy(nftables.ChainPolicyAccept)})
	}
	in := base("input", nftables.ChainHookInput)
	addRules(c, in, policyRules...)
	fwd := base("forward", nftables.ChainHookForward)
	addRules(c, fwd,
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), ctEstablished(), v(accept())),
		join(ifPrefix(expr.MetaKeyOIFNAME, links, expr.CmpOpEq), v(drop())))
	addRules(c, fwd, policyRules...)
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

// src holds (link . address): the one source address each link may use.
func srcSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: "src", Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)}
}

// allow holds (link . destination range . protocol . port range): what
// each link may open.
func allowSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: "allow", Concatenation: true, Interval: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
}

// Concatenations load each field into consecutive 32-bit registers,
// starting at NFT_REG32_00; a field takes whole registers.
const reg32 = 8

// srcLookup matches packets whose (link . source address) is not in src.
func srcLookup(src *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32},
		&expr.Payload{DestRegister: reg32 + 4, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: 4},
		&expr.Lookup{SourceRegister: reg32, SetName: src.Name, SetID: src.ID, Invert: true},
	}
}

// allowLookup matches packets whose (link . destination . protocol .
// destination port) is in allow.
func allowLookup(allow *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32},
		&expr.Payload{DestRegister: reg32 + 4, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32 + 5},
		&expr.Payload{DestRegister: reg32 + 6, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg32, SetName: allow.Name, SetID: allow.ID},
	}
}

// instanceElements are an instance's entries in the host sets.
func instanceElements(link string, addr netip.Addr, p policy) (src, allow []nftables.SetElement) {
	a4 := addr.As4()
	src = []nftables.SetElement{{Key: append(ifname(link), a4[:]...)}}
	key := func(a [4]byte, proto byte, port uint16) []byte {
		k := append(ifname(link), a[:]...)
		k = append(k, proto, 0, 0, 0)
		return append(k, byte(port>>8), byte(port), 0, 0)
	}
	add := func(dst netip.Prefix, proto byte, from, to uint16) {
		first := dst.Masked().Addr().As4()
		last := lastAddr(dst)
		allow = append(allow, nftables.SetElement{Key: key(first, proto, from), KeyEnd: key(last, proto, to)})
	}
	if r := p.resolver; r.IsValid() {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			add(netip.PrefixFrom(r.Addr(), 32), proto, r.Port(), r.Port())
		}
	}
	for _, a := range p.allow {
		add(a.dst, unix.IPPROTO_TCP, a.from, a.to)
	}
	return src, allow
}

func lastAddr(p netip.Prefix) [4]byte {
	a := p.Masked().Addr().As4()
	// Go shifts a uint32 by 32 to 0, so a /32 is its own last address.
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(a[:])|^uint32(0)>>p.Bits())
	return a
}

// addInstance queues an instance's entries in the host sets.
func addInstance(c *nftables.Conn, prefix, link string, addr netip.Addr, p policy) error {
	t := hostTableRef(prefix)
	src, allow := instanceElements(link, addr, p)
	if err := c.SetAddElements(srcSet(t), src); err != nil {
		return err
	}
	if len(allow) == 0 {
		return nil
	}
	return c.SetAddElements(allowSet(t), allow)
}

// delInstance queues the removal of an instance's entries.
func delInstance(c *nftables.Conn, prefix, link string, addr netip.Addr, p policy) error {
	t := hostTableRef(prefix)
	src, allow := instanceElements(link, addr, p)
	if len(allow) > 0 {
		if err := c.SetDeleteElements(allowSet(t), allow); err != nil {
			return err
		}
	}
	return c.SetDeleteElements(srcSet(t), src)
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
