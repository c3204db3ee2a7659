// Command passthrough is the smallest Culvert function: it returns every
// record unchanged. Benchmarks use it to measure the host and the protocol
// without any work in the function. It answers with culvert.Pass, so that
// records are not sent back (the protocol's "unchanged" capability); with
// --emit it returns each record with culvert.Emit instead, sending it
// back as SDKs without the capability do. It keeps nothing between
// batches, so it lets the SDK decode each batch into the memory of the
// last (ReuseRecords).
package main

import (
	"context"
	"os"
	"slices"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func main() {
	h := func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		return culvert.Pass(), nil
	}
	if slices.Contains(os.Args[1:], "--emit") {
		h = func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
			return culvert.Emit(rec), nil
		}
	}
	culvert.Run(h, culvert.WithAgent("passthrough/1"), culvert.ReuseRecords())
}
