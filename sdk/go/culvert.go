package culvert

import (
	"context"
	"errors"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Record is one event: the input of a handler and the body of its outputs.
type Record = culvertv1.Record

// Header is one record header; names may repeat, values are bytes.
type Header = culvertv1.Header

// InitContext says what an instance serves (pipeline, function, instance
// index, partition, route). WithInit receives it.
type InitContext = culvertv1.InitContext

// Handler processes one record. It returns the record's outputs: none
// filters the record out, Emit(rec) passes it on (modified or not), several
// fan it out, and To sends one to a named route output. A non-nil error fails
// the record and its outputs are ignored: the failure is permanent unless the
// error is marked with Retryable. A panic fails only that record, permanently.
//
// A Handler runs on the protocol loop, one record at a time; ctx carries the
// batch deadline (see CurrentBatch).
type Handler func(ctx context.Context, rec *Record) ([]Output, error)

// BatchHandler processes a whole batch and returns exactly one Result per
// record, in order. A result count that does not match, or a panic, fails
// every record of the batch permanently. The records belong to the handler,
// which may keep them.
type BatchHandler func(ctx context.Context, recs []*Record) []Result

// Result is the outcome of one record: its outputs, or an error. When Err is
// set, Outputs are ignored.
type Result struct {
	Outputs []Output
	Err     error
}

// Output is one emitted record. To names a route output; empty sends the
// record to every output of the route, or to the next function of the
// chain.
//
// Fields of Record left empty are filled by the host from the input record
// (proto/SPEC.md, "Outputs"): the id (derived as "<input id>/<function>.<n>",
// also when Record.Id equals the input's id), the key, the content type and
// the event time. Headers are not inherited: returning the input record,
// modified, keeps them.
type Output struct {
	Record *Record
	To     string
	input  bool // Pass, PassTo: the input record as it came (Record unused)
}

// capUnchanged is the protocol capability behind Pass and PassTo.
const capUnchanged = "unchanged"

// Pass returns the input record, exactly as it came, as the one output to
// the default destination: what a filter, a router or a passthrough
// returns for a record it keeps. It is the same as Emit(rec) with the
// handler's rec left untouched, but the record is not encoded and sent
// back: the SDK answers with Output.unchanged when the host offers the
// "unchanged" capability (proto/SPEC.md, "Capabilities"), as Culvert's
// does, and sends the record otherwise. Changes made to rec are not
// seen: a handler that modifies its record returns it with Emit.
func Pass() []Output { return []Output{{input: true}} }

// PassTo is Pass aimed at the named route output.
func PassTo(output string) Output { return Output{To: output, input: true} }

// Emit returns recs as outputs to the default destination.
func Emit(recs ...*Record) []Output {
	outs := make([]Output, len(recs))
	for i, r := range recs {
		outs[i].Record = r
	}
	return outs
}

// To returns rec as an output aimed at the named route output.
func To(output string, rec *Record) Output { return Output{Record: rec, To: output} }

// Retryable marks err as retryable: the host retries the record with
// backoff, up to the function's max_attempts, before dead-lettering it.
// Errors are permanent by default, because most errors a function returns
// come from the record itself and fail again the same way; mark the ones
// that come from the outside world (a dependency down, a rate limit).
// Retryable(nil) is nil.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &retryableError{err}
}

// IsRetryable reports whether err, or an error it wraps, has a method
// Retryable() bool that returns true, as errors made by Retryable do.
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

type retryableError struct{ err error }

func (e *retryableError) Error() string   { return e.err.Error() }
func (e *retryableError) Unwrap() error   { return e.err }
func (e *retryableError) Retryable() bool { return true }

// BatchInfo describes the batch being processed.
type BatchInfo struct {
	// ID is the batch id: 1, 2, 3... on this instance.
	ID uint64
	// Attempt is 1 on the first delivery of these records, more on retries.
	Attempt uint32
	// Deadline is when the host kills the instance if the batch is not
	// answered; zero if the host set none. ctx.Deadline() says the same.
	Deadline time.Time
}

type batchKey struct{}

// CurrentBatch returns the batch a handler's ctx belongs to.
func CurrentBatch(ctx context.Context) (BatchInfo, bool) {
	b, ok := ctx.Value(batchKey{}).(*BatchInfo)
	if !ok {
		return BatchInfo{}, false
	}
	return *b, true
}

// Option configures Run, RunBatch and Serve.
type Option func(*config)

type config struct {
	init     func(ctx context.Context, ic *InitContext) error
	shutdown func(ctx context.Context) error
	agent    string
	reuse    bool
}

// DefaultAgent is the Ready.agent sent unless WithAgent says otherwise.
const DefaultAgent = "culvert-sdk-go/1"

// WithInit runs f after the host's Hello and before the function reports
// Ready: open connections, load models, read ic. An error refuses the
// handshake with InitError (retryable if marked with Retryable), and the
// process exits 1. f runs within the host's handshake timeout (10 s by
// default).
func WithInit(f func(ctx context.Context, ic *InitContext) error) Option {
	return func(c *config) { c.init = f }
}

// WithShutdown runs f when the host asks the function to stop (Shutdown,
// with ctx carrying the host's deadline) or closes stdin without asking
// (ctx then expires in one second): flush buffers, close connections. Its
// error is logged to stderr and makes the process exit 1.
func WithShutdown(f func(ctx context.Context) error) Option {
	return func(c *config) { c.shutdown = f }
}

// WithAgent sets the free-text Ready.agent the host logs, e.g. "enrich/1.4".
func WithAgent(agent string) Option {
	return func(c *config) { c.agent = agent }
}

// ReuseRecords promises that the handler keeps nothing of a batch once it
// has returned: no record, none of their byte slices or strings (key,
// value, id, headers, source), and no output record. The SDK then decodes
// each batch into the memory of the last one instead of allocating it
// afresh: records alias the frame read from the host, and the record
// structs, their source positions and event times are reused. A handler
// that needs something later copies it (bytes.Clone, strings.Clone,
// proto.Clone). Outputs are encoded before the next batch is read, so
// returning an input record, modified or not, is fine.
//
// It is for functions that pass records on, filter or route them, where
// the garbage of every batch (about half a kilobyte per record, see the
// package comment) costs more than the work itself; a handler that breaks
// the promise sees its kept records change under it.
func ReuseRecords() Option {
	return func(c *config) { c.reuse = true }
}

// PerRecord turns a Handler into a BatchHandler that calls it for each record
// in order, turning a panic into a permanent failure of that record. It is
// exported for Serve; Run does the same without it, reusing the batch's
// record slice and the results (which no handler sees) from batch to batch.
func PerRecord(h Handler) BatchHandler {
	return func(ctx context.Context, recs []*Record) []Result {
		res := make([]Result, len(recs))
		for i, rec := range recs {
			res[i] = callOne(ctx, h, rec)
		}
		return res
	}
}

func callOne(ctx context.Context, h Handler, rec *Record) (r Result) {
	defer func() {
		if v := recover(); v != nil {
			r = Result{Err: panicked("record "+rec.GetId(), v)}
		}
	}()
	outs, err := h(ctx, rec)
	return Result{Outputs: outs, Err: err}
}
