// Package conformance is Culvert's conformance kit for framed-mode functions:
// it starts a function as a plain child process and drives it through every
// rule of proto/SPEC.md that a function must follow, one fresh process per
// rule, reporting pass, fail (with the reason) or skip for each.
//
// The kit is an independent implementation of the host side of the protocol,
// written from SPEC.md alone: it shares only the generated messages and the
// frame codec (proto/framing) with Culvert's own host (internal/fnhost), so
// that it also catches assumptions the host makes. It owns the rules table
// (Rules) and the driver; `culvert fn conform` is its command line.
//
// Rules that need the function's cooperation (fail this record, emit three
// outputs) use the conformance convention of SPEC.md appendix A, implemented
// for Go by the convention subpackage; the kit sets CULVERT_CONFORMANCE=1 in
// the function's environment. A function that does not honour the
// convention can be checked with Options.NoConvention, which skips those
// rules.
//
// Rules expect records back unchanged. A function that transforms them is
// checked in transform mode (Options.Samples): the kit sends values the
// function accepts and compares each answer with the function's answer to
// the same value alone. Options.Runtime starts the function through a
// sandbox.Runtime, e.g. in Culvert's sandbox, instead of as a plain child
// process.
package conformance
