package culvert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

// Version is the protocol version this SDK speaks (proto/SPEC.md).
const Version = 1

// Serve runs the framed protocol (proto/SPEC.md) over in (the host's frames)
// and out (the function's frames) until the host sends Shutdown or closes
// in, then returns nil. It returns an error when the host breaks the
// protocol, when the handshake is refused (unsupported versions, or a
// WithInit error: InitError has been sent), when writing fails, or when the
// shutdown hook fails.
//
// Handlers run one batch at a time on the calling goroutine, with contexts
// derived from ctx. ctx is only checked between frames: cancelling it does
// not interrupt a blocked read.
//
// Each frame is written with one Write call to out, which must not buffer
// (an *os.File or a pipe, not a bufio.Writer). Serve reads in through its own
// buffer.
func Serve(ctx context.Context, in io.Reader, out io.Writer, h BatchHandler, opts ...Option) error {
	return newServer(in, out, h, nil, opts).serve(ctx)
}

// serveRecords is Serve for PerRecord(h), as Run uses it: the batch's
// record slice and the results never reach a handler, so they are reused
// from batch to batch.
func serveRecords(ctx context.Context, in io.Reader, out io.Writer, h Handler, opts ...Option) error {
	s := newServer(in, out, nil, h, opts)
	s.dec.reuse = true
	return s.serve(ctx)
}

func newServer(in io.Reader, out io.Writer, h BatchHandler, per Handler, opts []Option) *server {
	s := &server{h: h, per: per, cfg: config{agent: DefaultAgent}}
	for _, o := range opts {
		o(&s.cfg)
	}
	s.dec.alias = s.cfg.reuse
	s.r = framing.NewReader(in, framing.DefaultMaxFrame)
	s.w = framing.NewWriter(out, framing.DefaultMaxFrame)
	s.max = framing.DefaultMaxFrame
	s.resultMsg.Msg = &culvertv1.FunctionMessage_Result{Result: &s.result}
	return s
}

type server struct {
	h   BatchHandler
	per Handler // instead of h: called per record, with res reused
	cfg config
	r   *framing.Reader
	w   *framing.Writer
	max int
	// unchanged: the host offered the "unchanged" capability, and Ready
	// accepted it, so Pass and PassTo outputs go out as Output.unchanged.
	unchanged bool

	in        culvertv1.HostMessage // reused for every frame read
	dec       batchDecoder          // decodes most batches, instead of proto
	resultMsg culvertv1.FunctionMessage
	result    culvertv1.BatchResult
	// Slabs reused from batch to batch; cleared after each write so that no
	// record outlives its batch here.
	rrs   []culvertv1.RecordResult
	rrp   []*culvertv1.RecordResult
	outs  []culvertv1.Output
	outp  []*culvertv1.Output
	fails []culvertv1.Failure
	res   []Result // per's results
}

func (s *server) serve(ctx context.Context) error {
	hello, err := s.next(ctx)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil // the host gave up before the handshake
		}
		return err
	}
	if err := s.handshake(ctx, hello); err != nil {
		return err
	}
	for {
		m, err := s.next(ctx)
		if errors.Is(err, io.EOF) {
			c, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			return s.stop(c)
		}
		if err != nil {
			return err
		}
		switch x := m.Msg.(type) {
		case *culvertv1.HostMessage_Batch:
			if err := s.batch(ctx, x.Batch); err != nil {
				return err
			}
		case *culvertv1.HostMessage_KeepAlive:
			// Batches run inline, so every batch received before this
			// keep-alive has been answered: echoing now keeps the order.
			if err := s.w.Write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: x.KeepAlive}}); err != nil {
				return fmt.Errorf("writing a keep-alive: %w", err)
			}
		case *culvertv1.HostMessage_Shutdown:
			c, cancel := ctx, context.CancelFunc(func() {})
			if d := x.Shutdown.GetDeadlineUnixMs(); d > 0 {
				c, cancel = context.WithDeadline(ctx, time.UnixMilli(d))
			}
			defer cancel()
			return s.stop(c)
		case *culvertv1.HostMessage_Hello:
			return errors.New("protocol violation: the host sent a second Hello")
		default:
			return errors.New("protocol violation: the host sent an empty or unknown frame, which protocol version 1 does not allow")
		}
	}
}

// next reads and decodes one frame into s.in.
func (s *server) next(ctx context.Context) (*culvertv1.HostMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := s.r.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("reading the host's frames: %w", err)
	}
	if bt, ok := s.dec.decode(b); ok { // the common case, without proto
		s.in.Reset()
		s.in.Msg = &culvertv1.HostMessage_Batch{Batch: bt}
		return &s.in, nil
	}
	if err := (proto.UnmarshalOptions{}).Unmarshal(b, &s.in); err != nil {
		return nil, fmt.Errorf("protocol violation: undecodable HostMessage of %d bytes: %v; starts %s", len(b), err, framing.Quote(b[:min(len(b), 32)]))
	}
	return &s.in, nil
}

func (s *server) handshake(ctx context.Context, m *culvertv1.HostMessage) error {
	hello := m.GetHello()
	if hello == nil {
		return errors.New("protocol violation: the host's first frame is not Hello")
	}
	if n := hello.GetMaxFrameBytes(); n > 0 {
		s.max = int(n)
		s.r.SetMax(s.max)
		s.w.SetMax(s.max)
	}
	if !slices.Contains(hello.GetVersions(), Version) {
		msg := fmt.Sprintf("unsupported protocol versions %v: %s speaks [%d]", hello.GetVersions(), DefaultAgent, Version)
		return s.refuse(msg, false)
	}
	if s.cfg.init != nil {
		if err := s.init(ctx, hello.GetContext()); err != nil {
			return s.refuse(err.Error(), IsRetryable(err))
		}
	}
	ready := &culvertv1.Ready{Version: Version, Agent: s.cfg.agent}
	if slices.Contains(hello.GetCapabilities(), capUnchanged) {
		s.unchanged = true
		ready.Capabilities = []string{capUnchanged}
	}
	if err := s.w.Write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: ready}}); err != nil {
		return fmt.Errorf("writing Ready: %w", err)
	}
	return nil
}

func (s *server) init(ctx context.Context, ic *InitContext) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicked("init", v)
		}
	}()
	if ic == nil {
		ic = &InitContext{}
	}
	return s.cfg.init(ctx, ic)
}

// refuse sends InitError and returns the error Serve reports.
func (s *server) refuse(msg string, retryable bool) error {
	ie := &culvertv1.InitError{Message: msg, Retryable: retryable}
	if err := s.w.Write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_InitError{InitError: ie}}); err != nil {
		return fmt.Errorf("init failed (%s), and writing InitError failed: %w", msg, err)
	}
	return fmt.Errorf("init failed: %s", msg)
}

func (s *server) stop(ctx context.Context) error {
	if s.cfg.shutdown == nil {
		return nil
	}
	if err := s.cfg.shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func (s *server) batch(ctx context.Context, b *culvertv1.Batch) error {
	info := &BatchInfo{ID: b.GetId(), Attempt: b.GetAttempt()}
	cancel := context.CancelFunc(func() {})
	if d := b.GetDeadlineUnixMs(); d > 0 {
		info.Deadline = time.UnixMilli(d)
		ctx, cancel = context.WithDeadline(ctx, info.Deadline)
	}
	ctx = context.WithValue(ctx, batchKey{}, info)
	recs := b.GetRecords()
	res := s.call(ctx, recs)
	cancel()
	s.build(b.GetId(), recs, res)
	err := s.writeResult()
	if err != nil && proto.Size(&s.resultMsg) > s.max {
		s.shrink()
		err = s.writeResult()
	}
	s.clear()
	if err != nil {
		return fmt.Errorf("writing the result of batch %d: %w", b.GetId(), err)
	}
	return nil
}

// writeResult writes s.resultMsg. Its strings are checked first: package
// proto refuses invalid UTF-8, with its error, and the vtprotobuf encoder
// that framing uses does not check.
func (s *server) writeResult() error {
	if !validBatchResult(&s.result) {
		return s.w.Write(wire.ProtoOnly{Message: &s.resultMsg})
	}
	return s.w.Write(&s.resultMsg)
}

// call runs the handler, turning a panic or a wrong result count into a
// failure of every record.
func (s *server) call(ctx context.Context, recs []*Record) (res []Result) {
	defer func() {
		if v := recover(); v != nil {
			res = failAll(len(recs), panicked(fmt.Sprintf("batch of %d records", len(recs)), v))
		}
	}()
	if s.per != nil {
		s.res = grow(s.res, len(recs))
		for i, rec := range recs {
			s.res[i] = callOne(ctx, s.per, rec)
		}
		return s.res
	}
	res = s.h(ctx, recs)
	if len(res) != len(recs) {
		err := fmt.Errorf("culvert: the BatchHandler returned %d results for %d records", len(res), len(recs))
		fmt.Fprintln(os.Stderr, err)
		res = failAll(len(recs), err)
	}
	return res
}

func failAll(n int, err error) []Result {
	res := make([]Result, n)
	for i := range res {
		res[i].Err = err
	}
	return res
}

// build fills s.result from res, using the reused slabs.
func (s *server) build(id uint64, recs []*Record, res []Result) {
	n, nout := len(res), 0
	for _, r := range res {
		if r.Err == nil {
			nout += len(r.Outputs)
		}
	}
	s.rrs = grow(s.rrs, n)
	s.rrp = grow(s.rrp, n)
	s.outs = grow(s.outs, nout)
	s.outp = grow(s.outp, nout)
	s.fails = grow(s.fails, n)
	o, f := 0, 0
	for i, r := range res {
		rr := &s.rrs[i]
		s.rrp[i] = rr
		err := r.Err
		if err == nil {
			for j, out := range r.Outputs {
				if out.Record == nil && !out.input {
					err = fmt.Errorf("culvert: output %d of record %s is a nil record", j, recs[i].GetId())
					break
				}
			}
		}
		if err != nil {
			fl := &s.fails[f]
			f++
			fl.Message, fl.Retryable = err.Error(), IsRetryable(err)
			rr.Failure, rr.Outputs = fl, nil
			continue
		}
		start := o
		for _, out := range r.Outputs {
			po := &s.outs[o]
			po.Record, po.Output, po.Unchanged = out.Record, out.To, false
			if out.input {
				// The input record as the host sent it: named, not sent
				// back, when the host takes that (SPEC.md, "Capabilities").
				po.Record, po.Unchanged = nil, s.unchanged
				if !s.unchanged {
					po.Record = recs[i]
				}
			}
			s.outp[o] = po
			o++
		}
		rr.Failure = nil
		rr.Outputs = s.outp[start:o:o]
		if start == o {
			rr.Outputs = nil
		}
	}
	s.result.BatchId = id
	s.result.Results = s.rrp[:n]
}

// shrink replaces the largest record results by failures until the batch
// result fits in the negotiated frame size.
func (s *server) shrink() {
	rs := s.result.Results
	order := make([]int, len(rs))
	sizes := make([]int, len(rs))
	for i, rr := range rs {
		order[i], sizes[i] = i, proto.Size(rr)
	}
	slices.SortStableFunc(order, func(a, b int) int { return sizes[b] - sizes[a] })
	for _, i := range order {
		if proto.Size(&s.resultMsg) <= s.max {
			return
		}
		msg := fmt.Sprintf("the outputs of this record (%d bytes) make the batch result exceed the frame limit of %d bytes", sizes[i], s.max)
		fmt.Fprintln(os.Stderr, "culvert:", msg)
		rs[i] = &culvertv1.RecordResult{Failure: &culvertv1.Failure{Message: msg}}
	}
}

// clear drops the references to user records held by the slabs.
func (s *server) clear() {
	for i := range s.outs {
		s.outs[i].Record = nil
	}
	for i := range s.rrs {
		s.rrs[i].Outputs, s.rrs[i].Failure = nil, nil
	}
	s.result.Results = nil
	clear(s.res)
	s.dec.done()
}

// grow returns s with length n, keeping its backing array when it can.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n, n+n/4)
	}
	return s[:n]
}

// panicked logs a recovered panic with its stack to stderr and returns the
// error reported for the records it failed.
func panicked(where string, v any) error {
	fmt.Fprintf(os.Stderr, "culvert: panic in %s: %v\n%s", where, v, debug.Stack())
	return fmt.Errorf("panic: %v", v)
}
