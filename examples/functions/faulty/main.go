// Command faulty is a Culvert function that misbehaves on purpose, for the
// host's failure tests. The fault is chosen by the environment variable
// CULVERT_FAULT, or by the first argument when it is given; records the
// fault does not concern pass through unchanged.
//
//	garbage         on the first batch, after the handshake, writes
//	                "hello from a bad function\n" to the real stdout,
//	                bypassing the SDK (as a library that kept a copy of fd 1
//	                would), then answers normally: the host must report a
//	                protocol violation showing those bytes.
//	exit-mid-batch  on a record whose value contains "crash", writes a
//	                message to stderr and exits with status 3 without
//	                answering the batch: a crash.
//	hang            on a record whose value contains "hang", sleeps forever:
//	                the host's batch deadline must fire.
//	fail-one        fails records whose value contains "bad", permanently,
//	                with the message "bad record".
//	init-error      refuses the handshake: InitError "faulty: init-error
//	                requested", not retryable.
//	(empty)         no fault.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	culvert "github.com/culvert-dev/culvert/sdk/go"
	"golang.org/x/sys/unix"
)

func main() {
	fault := os.Getenv("CULVERT_FAULT")
	if len(os.Args) > 1 {
		fault = os.Args[1]
	}
	f := &faulty{fault: fault, rawStdout: -1}
	switch fault {
	case "", "exit-mid-batch", "hang", "fail-one", "init-error":
	case "garbage":
		// Keep a descriptor of the real stdout before the SDK takes it.
		fd, err := unix.Dup(1)
		if err != nil {
			fmt.Fprintf(os.Stderr, "faulty: dup stdout: %v\n", err)
			os.Exit(1)
		}
		f.rawStdout = fd
	default:
		fmt.Fprintf(os.Stderr, "faulty: unknown fault %q (garbage, exit-mid-batch, hang, fail-one, init-error)\n", fault)
		os.Exit(2)
	}
	culvert.RunBatch(f.batch, culvert.WithAgent("faulty/1 ("+fault+")"), culvert.WithInit(f.init))
}

type faulty struct {
	fault     string
	rawStdout int // garbage: the real stdout, or -1 once used
}

func (f *faulty) init(ctx context.Context, ic *culvert.InitContext) error {
	if f.fault == "init-error" {
		return errors.New("faulty: init-error requested")
	}
	return nil
}

func (f *faulty) batch(ctx context.Context, recs []*culvert.Record) []culvert.Result {
	if f.rawStdout >= 0 {
		unix.Write(f.rawStdout, []byte("hello from a bad function\n"))
		unix.Close(f.rawStdout)
		f.rawStdout = -1
	}
	res := make([]culvert.Result, len(recs))
	for i, rec := range recs {
		switch {
		case f.fault == "exit-mid-batch" && bytes.Contains(rec.Value, []byte("crash")):
			fmt.Fprintf(os.Stderr, "faulty: crashing on record %s as asked\n", rec.Id)
			os.Exit(3)
		case f.fault == "hang" && bytes.Contains(rec.Value, []byte("hang")):
			fmt.Fprintf(os.Stderr, "faulty: hanging on record %s as asked\n", rec.Id)
			time.Sleep(math.MaxInt64) // not select{}: the runtime would call that a deadlock
		case f.fault == "fail-one" && bytes.Contains(rec.Value, []byte("bad")):
			res[i].Err = errors.New("bad record")
		default:
			res[i].Outputs = culvert.Emit(rec)
		}
	}
	return res
}
