// Command culvert runs event-stream pipelines: records from NATS (or the
// embedded server), routed through chains of functions, out to downstream
// subjects. Each subcommand lives in its own file.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "culvert:", err)
		os.Exit(exitCode(err))
	}
}
