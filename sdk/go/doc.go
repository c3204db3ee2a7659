// Package culvert is the Go SDK for Culvert functions in framed mode: it
// speaks the protocol of proto/SPEC.md on stdin and stdout so that a
// function is just a handler.
//
// A complete function that upper-cases text records, drops empty ones and
// sends alerts to their own output:
//
//	package main
//
//	import (
//		"bytes"
//		"context"
//		"errors"
//		"unicode/utf8"
//
//		culvert "github.com/culvert-dev/culvert/sdk/go"
//	)
//
//	func main() {
//		culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
//			switch {
//			case len(rec.Value) == 0:
//				return nil, nil // consumed: no output
//			case !utf8.Valid(rec.Value):
//				return nil, errors.New("value is not UTF-8") // permanent: dead-lettered
//			}
//			rec.Value = bytes.ToUpper(rec.Value)
//			rec.ContentType = "text/plain"
//			if bytes.Contains(rec.Value, []byte("ALERT")) {
//				return []culvert.Output{culvert.To("alerts", rec)}, nil // a named route output
//			}
//			return culvert.Emit(rec), nil // the input record, modified: key and headers kept
//		}, culvert.WithAgent("shout/1"))
//	}
//
// # Handlers
//
// A [Handler] sees one record and returns its outputs: none filters it, the
// input record itself (modified or not) passes it on with its headers, and
// several fan it out. A [BatchHandler] sees a whole batch and returns one
// [Result] per record. Both run inline on the protocol loop, one batch at a
// time: no goroutine per call. The ctx they receive ends at the batch
// deadline set by the host; [CurrentBatch] gives the batch id and attempt.
//
// A handler that passes a record on exactly as it came (a filter keeping
// it, a router, a sampler) returns [Pass], or [PassTo] for a named output.
// With a host that offers the protocol's "unchanged" capability, as
// Culvert's does, the record is then neither encoded nor written back: the
// answer says "the input, unchanged" in two bytes, and the host uses the
// record it sent (proto/SPEC.md, "Capabilities"). With another host the SDK
// sends the record. In bench/framedhop this cut both the function's and
// the host's CPU per 1,000-byte record by about 30%. A
// handler that changes its record returns it with [Emit]: Pass ignores
// changes.
//
// An error fails one record. It is permanent (the record goes to the dead
// letter output at once) unless wrapped with [Retryable], in which case the
// host tries the record again with backoff. A panic in a Handler fails only
// its record, permanently, with the panic message; a panic in a BatchHandler
// fails every record of the batch. Panics are logged with their stack to
// stderr and never crash the process.
//
// # Stdout is protected
//
// [Run] and [RunBatch] take the protocol's file descriptors before any
// handler, init or shutdown code runs: the frames go through private
// close-on-exec copies of fds 0 and 1, fd 1 then points at stderr, fd 0 at
// /dev/null, and os.Stdout is os.Stderr. fmt.Println, a C library's printf
// and child processes that inherit fd 1 all end up in the function's log
// instead of corrupting the frames. Code that runs before main (package init
// functions) is not protected and must not print to stdout.
//
// Everything written to stderr is the function's log: the host logs it line
// by line under the function's name and keeps the tail for crash reports.
//
// # Memory
//
// Every record a handler gets is its own: decoded into memory that no later
// batch reuses, so a handler may keep records, their bytes and the outputs
// it returned for as long as it likes. That costs about half a kilobyte of
// garbage per record (the record, its source position and event time, a
// copy of its bytes, and the slice Emit returns). A function whose own live
// heap is small spends a good part of its CPU collecting it at Go's default
// GOGC=100: in bench/kafkahop, GOGC=400 in the function's environment cut
// the passthrough function's CPU per record by about a quarter, for a heap
// that may grow to five times the live data (16 MiB at least) instead of
// twice (4 MiB).
//
// A function that keeps nothing of a batch once its handler returned (a
// filter, a router, a passthrough) can say so with [ReuseRecords]: each
// batch is then decoded into the memory of the last, the records aliasing
// the frame read from the host, and the garbage left is the slice Emit (or
// Pass) returns. In BenchmarkServeRecords that halves the SDK's time per
// record (about 500 to 270 ns).
//
// # Lifecycle
//
// Run answers the host's Hello (running the [WithInit] hook first), answers
// each Batch with one BatchResult, echoes keep-alives, and exits 0 after the
// host's Shutdown (running the [WithShutdown] hook) or when stdin closes. It
// exits 1 when the host breaks the protocol or the init hook fails. [Serve]
// is the same loop over any reader and writer, for tests.
package culvert
