// Package fnhost is the host side of the function protocols: it starts a
// function instance through a sandbox.Runtime and moves batches of records
// in and results out, in one of three modes (framed, lines, exec).
//
// It owns the protocol rules of proto/SPEC.md as seen from the host: the
// handshake, batch correlation, deadlines, keep-alives, graceful shutdown,
// stray-output detection, and classifying how an instance failed. It does
// not decide what to do about a failure (retry, dead-letter): the engine
// does. An Instance never resynchronises after a protocol error; it dies and
// reports why.
package fnhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unsafe"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox"
)

// Mode is how a function speaks.
type Mode string

// The modes of proto/SPEC.md.
const (
	Framed Mode = "framed"
	Lines  Mode = "lines"
	Exec   Mode = "exec"
)

// Config describes one instance.
type Config struct {
	Pipeline  string
	Function  string
	Route     string
	Instance  int
	Instances int
	// Partition bound to this instance when dispatch is by partition.
	Partition string

	Mode Mode
	Path string
	Args []string
	Env  []string
	Dir  string

	// MaxBatch is the most records per Call.
	MaxBatch int
	// MaxInflight is the most Calls outstanding at once (framed, lines).
	MaxInflight int
	// Timeout bounds one Call (framed, lines) or one record (exec).
	Timeout time.Duration
	// HandshakeTimeout bounds the wait for Ready; default 10s.
	HandshakeTimeout time.Duration
	// KeepAlive is the idle ping interval (framed); 0 disables pings.
	KeepAlive time.Duration
	// MaxFrame bounds a frame body (framed), a line (lines) or an output
	// (exec); default 4 MiB.
	MaxFrame int

	Runtime sandbox.Runtime
	// Tenant owns the instance; default Pipeline.
	Tenant string
	// Isolation is handed to the runtime as it is.
	Isolation sandbox.Isolation
	Logger    *slog.Logger
}

// Name is "pipeline/function#instance", used in logs and errors.
func (c *Config) Name() string {
	return fmt.Sprintf("%s/%s#%d", c.Pipeline, c.Function, c.Instance)
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.MaxBatch <= 0 {
		d.MaxBatch = 100
	}
	if d.MaxInflight <= 0 {
		d.MaxInflight = 2
	}
	if d.Timeout <= 0 {
		d.Timeout = 30 * time.Second
	}
	if d.HandshakeTimeout <= 0 {
		d.HandshakeTimeout = 10 * time.Second
	}
	if d.MaxFrame <= 0 {
		d.MaxFrame = 4 << 20
	}
	if d.Instances <= 0 {
		d.Instances = 1
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	d.Logger = d.Logger.With("function", d.Function, "instance", d.Instance)
	return d
}

// Output is one record emitted for an input.
type Output struct {
	Record *culvertv1.Record
	// To names a route output; empty means all of them (or the next
	// function of the chain).
	To string
}

// Failure is a per-record failure reported by the function (or by the exec
// driver for one process).
type Failure struct {
	Message   string
	Retryable bool
}

// Result is the outcome of one input record.
type Result struct {
	Outputs []Output
	Failure *Failure
}

// Call is one batch submitted to an Instance.
type Call struct {
	Records []*culvertv1.Record
	// Attempt is 1 on first delivery, more on retries.
	Attempt int
	// Done is called exactly once, in submission order, from a goroutine of
	// the instance: with one Result per record, or with a non-nil
	// *InstanceError when the instance failed before answering.
	Done func(results []Result, err error)

	id       uint64
	deadline time.Time
	timer    *time.Timer
}

// Instance is a running function process.
type Instance interface {
	// Submit sends c. It blocks while MaxInflight calls are outstanding. It
	// returns an error, without calling c.Done, when the instance is dead or
	// ctx is done before c was sent.
	Submit(ctx context.Context, c *Call) error
	// Close asks the instance to finish (Shutdown in framed mode), waits for
	// the outstanding calls and the exit, or kills it when ctx is done.
	Close(ctx context.Context) error
	// Dead is closed once the instance has stopped; Err then says why.
	Dead() <-chan struct{}
	Err() error
	// Idle reports whether no call is outstanding.
	Idle() bool
}

// Start starts an instance of cfg. In framed mode it returns after the
// handshake succeeded.
func Start(ctx context.Context, cfg Config) (Instance, error) {
	c := cfg.withDefaults()
	if c.Runtime == nil {
		return nil, errors.New("fnhost: no sandbox runtime configured")
	}
	switch c.Mode {
	case Framed, "":
		return startFramed(ctx, c)
	case Lines:
		return startLines(ctx, c)
	case Exec:
		return newExec(c), nil
	default:
		return nil, fmt.Errorf("function %s: unknown mode %q", c.Function, c.Mode)
	}
}

// Class is the kind of an instance failure, as named in proto/SPEC.md.
type Class string

// Error classes.
const (
	ClassFunction Class = "function_error"
	ClassCrash    Class = "crash"
	ClassProtocol Class = "protocol_violation"
	ClassTimeout  Class = "timeout"
	ClassOOM      Class = "out_of_memory"
	ClassInit     Class = "init_error"
	ClassStart    Class = "start_failed"
	ClassShutdown Class = "shutdown"
)

// InstanceError says why an instance stopped.
type InstanceError struct {
	Class    Class
	Function string // pipeline/function#instance
	Msg      string
	Exit     *sandbox.Exit
	Stderr   string // the tail of its stderr
	Err      error  // the underlying cause, if any
	// Bystander marks a call that was queued behind the one the instance
	// failed on: it was never processed, so its retry is not an attempt.
	Bystander bool
}

func (e *InstanceError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "function %s: %s: %s", e.Function, e.Class, e.Msg)
	if e.Exit != nil {
		fmt.Fprintf(&b, " (%s)", e.Exit)
	}
	if e.Stderr != "" {
		fmt.Fprintf(&b, "; stderr tail: %q", e.Stderr)
	}
	return b.String()
}

func (e *InstanceError) Unwrap() error { return e.Err }

// Retryable reports whether a batch lost with this error may be retried.
func (e *InstanceError) Retryable() bool { return e.Class != ClassShutdown }

// ErrDead is returned by Submit on an instance that has stopped.
var ErrDead = errors.New("instance is not running")

// fillOutputs applies the host's rules for fields an output leaves empty
// (proto/SPEC.md, "Outputs"): a derived id (also when the function kept the
// input's id, so that ids stay unique), the input's key, content type and
// event time, and always the input's source position.
// Derived ids are built in ids when it is not nil.
func fillOutputs(function string, in *culvertv1.Record, outs []Output, ids *idArena) {
	for n, o := range outs {
		r := o.Record
		if r.Id == "" || r.Id == in.Id {
			r.Id = ids.derive(in.Id, function, n)
		}
		if len(r.Key) == 0 {
			r.Key = in.Key
		}
		if r.ContentType == "" {
			r.ContentType = in.ContentType
		}
		if r.EventTime == nil {
			r.EventTime = in.EventTime
		}
		r.Source = in.Source
	}
}

// idArena builds derived output ids in shared chunks: one allocation for
// many ids instead of one each. An id kept long pins its chunk (at most
// idChunk bytes). The zero value is ready; a nil *idArena allocates each id
// on its own. It is not safe for concurrent use.
type idArena struct{ buf []byte }

const idChunk = 4 << 10

// derive returns "<in>/<function>.<n>".
func (a *idArena) derive(in, function string, n int) string {
	size := len(in) + len(function) + 2 + 20 // 20: the longest int
	if a == nil || size > idChunk/4 {
		return in + "/" + function + "." + strconv.Itoa(n) // no fmt: hot path
	}
	if cap(a.buf)-len(a.buf) < size {
		a.buf = make([]byte, 0, idChunk)
	}
	start := len(a.buf)
	a.buf = append(a.buf, in...)
	a.buf = append(a.buf, '/')
	a.buf = append(a.buf, function...)
	a.buf = append(a.buf, '.')
	a.buf = strconv.AppendInt(a.buf, int64(n), 10)
	// The bytes are never written again: the next id starts after them.
	return unsafe.String(&a.buf[start], len(a.buf)-start)
}
