// Command testfn is a framed Culvert function for the engine and runner
// tests. Its first argument picks the behaviour:
//
//	to        a record whose value is "to:NAME" is sent to the route output
//	          NAME with culvert.To; any other record is emitted unchanged.
//	instance  every record is emitted with the value "<instance> <value>",
//	          where <instance> is InitContext.instance.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"

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
	default:
		fmt.Fprintf(os.Stderr, "testfn: unknown mode %q (to, instance)\n", mode)
		os.Exit(2)
	}
}
