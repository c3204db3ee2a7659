// Command testfn is a framed Culvert function for the engine and runner
// tests. Its first argument picks the behaviour:
//
//	to        a record whose value is "to:NAME" is sent to the route output
//	          NAME with culvert.To; any other record is emitted unchanged.
//	instance  every record is emitted with the value "<instance> <value>",
//	          where <instance> is InitContext.instance.
//	sleep     every batch waits $TESTFN_SLEEP (a Go duration) and is
//	          emitted unchanged.
//	flaky     a record whose value contains "flaky" fails, retryably,
//	          until the batch's attempt number reaches $TESTFN_OK_AT
//	          (default 2); others are emitted unchanged.
//	poison    when any record of a batch contains "poison", every record
//	          of the batch fails (retryably); otherwise all are emitted.
//	fail      every record fails permanently.
//	crash     a record whose value contains "crash", in a batch's first
//	          attempt, makes the process wait $TESTFN_SLEEP (so that the
//	          host pipelines the next batch and gathers another) and exit
//	          with status 3 without answering: the instance dies with
//	          work queued behind it. With TESTFN_HANG=1 it never answers
//	          instead, until the host's batch timeout kills it. On a retry
//	          the record is emitted like the others.
package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func main() {
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "to":
		culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
			if name, ok := bytes.CutPrefix(rec.Value, []byte("to:")); ok {
				return []culvert.Output{culvert.To(string(name), rec)}, nil
			}
			return culvert.Emit(rec), nil
		}, culvert.WithAgent("testfn/to"))
	case "instance":
		var instance uint32
		culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
			rec.Value = append([]byte(strconv.FormatUint(uint64(instance), 10)+" "), rec.Value...)
			return culvert.Emit(rec), nil
		}, culvert.WithAgent("testfn/instance"), culvert.WithInit(func(ctx context.Context, ic *culvert.InitContext) error {
			instance = ic.Instance
			return nil
		}))
	case "sleep":
		d, _ := time.ParseDuration(os.Getenv("TESTFN_SLEEP"))
		culvert.RunBatch(func(ctx context.Context, recs []*culvert.Record) []culvert.Result {
			time.Sleep(d)
			res := make([]culvert.Result, len(recs))
			for i, r := range recs {
				res[i].Outputs = culvert.Emit(r)
			}
			return res
		}, culvert.WithAgent("testfn/sleep"))
	case "flaky":
		okAt, err := strconv.Atoi(os.Getenv("TESTFN_OK_AT"))
		if err != nil {
			okAt = 2
		}
		culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
			if b, _ := culvert.CurrentBatch(ctx); bytes.Contains(rec.Value, []byte("flaky")) && int(b.Attempt) < okAt {
				return nil, culvert.Retryable(fmt.Errorf("flaky record %s, attempt %d", rec.Id, b.Attempt))
			}
			return culvert.Emit(rec), nil
		}, culvert.WithAgent("testfn/flaky"))
	case "poison":
		culvert.RunBatch(func(ctx context.Context, recs []*culvert.Record) []culvert.Result {
			res := make([]culvert.Result, len(recs))
			poisoned := false
			for _, r := range recs {
				poisoned = poisoned || bytes.Contains(r.Value, []byte("poison"))
			}
			for i, r := range recs {
				if poisoned {
					res[i].Err = culvert.Retryable(fmt.Errorf("batch of %d holds a poison record", len(recs)))
				} else {
					res[i].Outputs = culvert.Emit(r)
				}
			}
			return res
		}, culvert.WithAgent("testfn/poison"))
	case "crash":
		d, _ := time.ParseDuration(os.Getenv("TESTFN_SLEEP"))
		hang := os.Getenv("TESTFN_HANG") == "1"
		culvert.RunBatch(func(ctx context.Context, recs []*culvert.Record) []culvert.Result {
			b, _ := culvert.CurrentBatch(ctx)
			res := make([]culvert.Result, len(recs))
			for i, r := range recs {
				if b.Attempt == 1 && bytes.Contains(r.Value, []byte("crash")) {
					if hang {
						fmt.Fprintf(os.Stderr, "testfn: hanging on record %s as asked\n", r.Id)
						time.Sleep(math.MaxInt64)
					}
					time.Sleep(d)
					fmt.Fprintf(os.Stderr, "testfn: crashing on record %s as asked\n", r.Id)
					os.Exit(3)
				}
				res[i].Outputs = culvert.Emit(r)
			}
			return res
		}, culvert.WithAgent("testfn/crash"))
	case "fail":
		culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
			return nil, fmt.Errorf("record %s refused", rec.Id)
		}, culvert.WithAgent("testfn/fail"))
	default:
		fmt.Fprintf(os.Stderr, "testfn: unknown mode %q (to, instance, sleep, flaky, poison, fail, crash)\n", mode)
		os.Exit(2)
	}
}
