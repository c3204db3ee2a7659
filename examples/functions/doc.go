// Package functions holds example Culvert functions written with the Go SDK
// (sdk/go), one main package per directory:
//
//   - passthrough returns every record unchanged; benchmarks use it.
//   - enrich adds fields to JSON objects.
//   - faulty misbehaves on purpose, for the host's failure tests.
//   - conformance echoes and honours the conformance convention
//     (proto/SPEC.md appendix A) with the per-record API, or with --batch
//     the per-batch API, so that culvert fn conform checks both.
//   - broken is written from SPEC.md without the SDK and breaks one rule
//     of the conformance kit on request (--break RULE).
//
// Build them with: go build ./examples/functions/...
package functions
