package culvert

import (
	"context"
	"fmt"
	"os"
)

// Run serves h over the process's stdin and stdout and never returns: see
// RunBatch.
func Run(h Handler, opts ...Option) {
	run(func(in, out *os.File) error { return serveRecords(context.Background(), in, out, h, opts...) })
}

// RunBatch is the main function of a framed-mode function. Before any
// handler code runs, it takes stdin and stdout for the protocol (see
// package comment, "Stdout is protected"), then serves h until the host
// sends Shutdown or closes stdin, and exits 0. It exits 1, with the reason on
// stderr, when the protocol breaks, the handshake is refused, or the
// shutdown hook fails.
func RunBatch(h BatchHandler, opts ...Option) {
	run(func(in, out *os.File) error { return Serve(context.Background(), in, out, h, opts...) })
}

func run(serve func(in, out *os.File) error) {
	in, out, err := takeStdio()
	if err != nil {
		fmt.Fprintf(os.Stderr, "culvert: taking stdin and stdout for the protocol: %v\n", err)
		os.Exit(1)
	}
	if err := serve(in, out); err != nil {
		fmt.Fprintf(os.Stderr, "culvert: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
