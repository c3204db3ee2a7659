// Command passthrough is the smallest Culvert function: it returns every
// record unchanged. Benchmarks use it to measure the host and the protocol
// without any work in the function. It answers with culvert.Pass, so that
// records are not sent back (the protocol's "unchanged" capability), and
// it keeps nothing between batches, so it lets the SDK decode each batch
// into the memory of the last (ReuseRecords).
package main

import (
	"context"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func main() {
	culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		return culvert.Pass(), nil
	}, culvert.WithAgent("passthrough/1"), culvert.ReuseRecords())
}
