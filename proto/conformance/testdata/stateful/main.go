// Command stateful is a test function for transform mode whose answers
// depend on more than the record:
//
//	stateful counter    appends a per-process counter to every value: the
//	                    same sample sent twice is answered differently
//	stateful position   appends the record's position in its batch: a
//	                    sample sent alone is always answered the same, but
//	                    not when it shares a batch
package main

import (
	"context"
	"fmt"
	"os"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: stateful counter|position")
		os.Exit(2)
	}
	var n int
	culvert.RunBatch(func(_ context.Context, recs []*culvert.Record) []culvert.Result {
		res := make([]culvert.Result, len(recs))
		for i, rec := range recs {
			k := i
			if os.Args[1] == "counter" {
				n++
				k = n
			}
			rec.Value = fmt.Appendf(rec.Value, " #%d", k)
			res[i].Outputs = culvert.Emit(rec)
		}
		return res
	}, culvert.WithAgent("stateful/1"))
}
