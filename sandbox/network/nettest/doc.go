// Package nettest builds, for tests that need root, a small network of
// network namespaces to run sandbox/network policies against: a namespace
// that plays the host and an "outside" namespace with TCP, DNS and UDP
// servers, plus helpers that dial, listen and query from inside any
// namespace. Nothing it makes is routed to the machine's interfaces, and
// the machine's own namespace, sysctls and rules are never touched.
//
// It is Linux-only; elsewhere the package is empty.
package nettest
