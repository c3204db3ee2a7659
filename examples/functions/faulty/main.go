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
//	crash-every     exits with status 3, without answering the batch, when
//	                it reaches its Nth record (N from CULVERT_FAULT_EVERY,
//	                default 1000; counted per process): a function that
//	                crashes on every Nth record and succeeds on the retry.
//	oom             on a record whose value contains "oom", allocates and
//	                touches memory until the process dies of it (run it
//	                under a memory limit).
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
	"strconv"
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
	case "", "exit-mid-batch", "hang", "fail-one", "init-error", "oom":
	case "crash-every":
		f.every = 1000
		if n, err := strconv.Atoi(os.Getenv("CULVERT_FAULT_EVERY")); err == nil && n > 0 {
			f.every = n
		}
	case "garbage":
		// Keep a descriptor of the real stdout before the SDK takes it.
		fd, err := unix.Dup(1)
		if err != nil {
			fmt.Fprintf(os.Stderr, "faulty: dup stdout: %v\n", err)
			os.Exit(1)
		}
		f.rawStdout = fd
	default:
		fmt.Fprintf(os.Stderr, "faulty: unknown fault %q (garbage, exit-mid-batch, crash-every, hang, fail-one, oom, init-error)\n", fault)
		os.Exit(2)
	}
	culvert.RunBatch(f.batch, culvert.WithAgent("faulty/1 ("+fault+")"), culvert.WithInit(f.init))
}

type faulty struct {
	fault     string
	rawStdout int // garbage: the real stdout, or -1 once used
	every     int // crash-every: exit at this record
	seen      int // crash-every: records seen by this process
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
		f.seen++
		switch {
		case f.fault == "crash-every" && f.seen == f.every:
			fmt.Fprintf(os.Stderr, "faulty: crashing on record %d (%s) as asked\n", f.seen, rec.Id)
			os.Exit(3)
		case f.fault == "oom" && bytes.Contains(rec.Value, []byte("oom")):
			fmt.Fprintf(os.Stderr, "faulty: allocating without bound on record %s as asked\n", rec.Id)
			var hog [][]byte
			for {
				b := make([]byte, 16<<20)
				for j := 0; j < len(b); j += 4096 {
					b[j] = 1 // touch every page
				}
				hog = append(hog, b)
				if len(hog)%16 == 0 { // reading hog keeps it live
					fmt.Fprintf(os.Stderr, "faulty: holding %d MiB\n", len(hog)*16)
				}
			}
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
