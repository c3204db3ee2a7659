// Command conformance is an echo function written with the Go SDK that
// honours the conformance convention (proto/SPEC.md, appendix A), so that
// `culvert fn conform -- ./conformance` can drive every rule: with
// CULVERT_CONFORMANCE=1 in its environment, a record's culvert-conformance
// header asks it to echo, emit N copies, drop, fail, fail retryably or print
// to stdout. Every other record is echoed.
//
// By default it serves a per-record handler (culvert.Run). With --batch it
// serves the same answers through the per-batch API (culvert.RunBatch),
// reporting a failure in the Result of that record only, so that the kit
// checks that API too.
package main

import (
	"context"
	"os"
	"slices"

	"github.com/culvert-dev/culvert/proto/conformance/convention"
	culvert "github.com/culvert-dev/culvert/sdk/go"
)

// echo passes rec on as it came: with culvert.Pass, so that a host offering
// the "unchanged" capability gets Output.unchanged (the kit's rule of that
// name checks it) and any other host the record.
func echo(_ context.Context, rec *culvert.Record) ([]culvert.Output, error) {
	return culvert.Pass(), nil
}

// batch answers each record of a batch as convention.Wrap(echo) would.
func batch(ctx context.Context, recs []*culvert.Record) []culvert.Result {
	h := convention.Wrap(echo)
	res := make([]culvert.Result, len(recs))
	for i, rec := range recs {
		res[i].Outputs, res[i].Err = h(ctx, rec)
	}
	return res
}

func main() {
	if slices.Contains(os.Args[1:], "--batch") {
		culvert.RunBatch(batch, culvert.WithAgent("conformance-go-batch/1"))
		return
	}
	culvert.Run(convention.Wrap(echo), culvert.WithAgent("conformance-go/1"))
}
