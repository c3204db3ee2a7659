// Command culvert runs event-stream pipelines: records from NATS (or the
// embedded server), routed through chains of functions, out to downstream
// subjects. Each subcommand lives in its own file.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go stopOnSignals(cancel, sigs, os.Stderr, os.Exit)
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "culvert:", err)
		os.Exit(exitCode(err))
	}
}

// stopOnSignals cancels the command's context at the first SIGINT or
// SIGTERM: the command then stops as it documents (run drains in-flight
// work within delivery.shutdown_grace; test finishes the attempt in
// progress). A second signal exits at once, with 128 + the signal's number,
// without waiting for work in flight: a broker delivers again what was not
// acknowledged.
func stopOnSignals(cancel func(), sigs <-chan os.Signal, stderr io.Writer, exit func(int)) {
	<-sigs
	cancel()
	s := <-sigs
	code := 1
	if n, ok := s.(syscall.Signal); ok {
		code = 128 + int(n)
	}
	fmt.Fprintf(stderr, "culvert: %v again while stopping: exiting now, without waiting for work in flight\n", s)
	exit(code)
}
