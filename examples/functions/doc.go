// Package functions holds example Culvert functions written with the Go SDK
// (sdk/go), one main package per directory:
//
//   - passthrough returns every record unchanged; benchmarks use it.
//   - enrich adds fields to JSON objects.
//   - faulty misbehaves on purpose, for the host's failure tests.
//
// Build them with: go build ./examples/functions/...
package functions
