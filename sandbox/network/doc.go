// Package network owns the network policy of sandboxed function instances:
// the namespaces, virtual links, addresses and nftables rules that give an
// instance either nothing but its own loopback ("none") or outbound TCP to
// an allowlist of CIDRs and ports ("egress").
//
// A Manager prepares one network namespace per instance and hands back its
// path; the sandbox runtime joins that namespace instead of creating its
// own. The namespace is owned by the host's user namespace, so a process
// that is root inside its container's user namespace has no CAP_NET_ADMIN
// over it and cannot change the addresses, routes or rules set here.
//
// The package never starts processes, never decides which policy a function
// gets (that is the pipeline's), and never touches interfaces, routes or
// rules it did not create: everything it makes carries the manager's name
// prefix, and only that is removed on start-up and on Close.
//
// ParseEndpoint and Validate check policy text and values on every OS; the
// Manager works on Linux only and returns ErrNotSupported elsewhere.
package network
