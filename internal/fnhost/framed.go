package fnhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

// ProtocolVersion is the version of proto/SPEC.md this host speaks.
const ProtocolVersion = 1

// CapUnchanged is the capability that lets a function answer a record with
// Output.unchanged instead of its bytes (proto/SPEC.md, "Capabilities").
// The host offers it to every framed function.
const CapUnchanged = "unchanged"

// framed speaks proto/SPEC.md's framed mode.
type framed struct {
	*conn
	r *framing.Reader

	wmu   sync.Mutex
	w     *framing.Writer
	msg   culvertv1.HostMessage
	batch culvertv1.Batch
	nonce uint64

	dec  resultDecoder // owned by readLoop
	sent sentBatches   // batches written (under wmu) and not answered

	inPipe  *pipe // stdin, grown under wmu
	outPipe *pipe // stdout, grown by readLoop

	stopPing chan struct{}
}

func startFramed(ctx context.Context, cfg Config) (Instance, error) {
	c, err := newConn(ctx, cfg)
	if err != nil {
		return nil, err
	}
	f := &framed{
		conn:     c,
		r:        framing.NewReader(c.proc.Stdout(), cfg.MaxFrame),
		w:        framing.NewWriter(c.proc.Stdin(), cfg.MaxFrame),
		stopPing: make(chan struct{}),
		inPipe:   newPipe(c.proc.Stdin()),
		outPipe:  newPipe(c.proc.Stdout()),
	}
	hello := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{
		Versions:           []uint32{ProtocolVersion},
		Capabilities:       []string{CapUnchanged},
		MaxFrameBytes:      uint32(cfg.MaxFrame),
		MaxBatchRecords:    uint32(cfg.MaxBatch),
		MaxInflightBatches: uint32(cfg.MaxInflight),
		KeepAliveMs:        uint32(cfg.KeepAlive / time.Millisecond),
		Context: &culvertv1.InitContext{
			Pipeline:  cfg.Pipeline,
			Function:  cfg.Function,
			Instance:  uint32(cfg.Instance),
			Instances: uint32(cfg.Instances),
			Partition: cfg.Partition,
			Route:     cfg.Route,
		},
	}}}
	ready := make(chan error, 1)
	go f.readLoop(ready)
	if err := f.write(hello); err != nil {
		// The reader reports why the process went away.
		cfg.Logger.Debug("writing hello", "error", err)
	}
	t := time.NewTimer(cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case err := <-ready:
		if err != nil {
			<-c.dead
			return nil, c.err
		}
	case <-t.C:
		c.fail(&InstanceError{Class: ClassTimeout, Function: cfg.Name(),
			Msg: fmt.Sprintf("no Ready frame within the handshake timeout of %s", cfg.HandshakeTimeout)})
		return nil, c.err
	case <-ctx.Done():
		c.fail(&InstanceError{Class: ClassShutdown, Function: cfg.Name(), Msg: "cancelled during the handshake"})
		return nil, ctx.Err()
	}
	if cfg.KeepAlive > 0 {
		go f.pingLoop()
	}
	return f, nil
}

func (f *framed) write(m *culvertv1.HostMessage) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.Write(m)
}

// Submit implements Instance.
func (f *framed) Submit(ctx context.Context, call *Call) error {
	if err := f.acquire(ctx, call); err != nil {
		return err
	}
	f.wmu.Lock()
	f.batch.Id = call.id
	f.batch.Records = call.Records
	f.batch.DeadlineUnixMs = call.deadline.UnixMilli()
	f.batch.Attempt = uint32(call.Attempt)
	f.msg.Msg = &culvertv1.HostMessage_Batch{Batch: &f.batch}
	var err error
	if validRecords(call.Records) {
		err = f.sent.write(f.proc.Stdin(), &f.msg, f.cfg.MaxFrame, call, f.inPipe)
	} else {
		// Package proto refuses invalid UTF-8 with its own error.
		err = f.w.Write(wire.ProtoOnly{Message: &f.msg})
	}
	f.batch.Records = nil
	f.wmu.Unlock()
	if err != nil {
		// The call is registered: it fails with the instance.
		go f.fail(&InstanceError{Class: ClassCrash, Function: f.cfg.Name(),
			Msg: fmt.Sprintf("writing batch %d: %v", call.id, err), Err: err})
	}
	return nil
}

// Close implements Instance.
func (f *framed) Close(ctx context.Context) error {
	close(f.stopPing)
	return f.close(ctx, func(deadline time.Time) error {
		return f.write(&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{
			DeadlineUnixMs: deadline.UnixMilli(), Reason: "pipeline stopping",
		}}})
	})
}

// readLoop owns stdout: the handshake answer, then one frame after another.
func (f *framed) readLoop(ready chan<- error) {
	defer f.stopReading()
	var err error
	defer func() {
		if err != nil {
			select {
			case ready <- err:
			default:
			}
		}
	}()
	first := true
	for {
		var b []byte
		b, err = f.r.Next()
		if err != nil {
			f.readError(err)
			return
		}
		// Room for a frame as large as this one (body and length prefix):
		// the next answer is likely as large.
		f.outPipe.fit(len(b) + 5)
		if !first && f.dec.decodeAnswer(b, f.sent.head()) { // the common case, without proto
			if err = f.result(&f.dec); err != nil {
				return
			}
			continue
		}
		m := &culvertv1.FunctionMessage{}
		if uerr := proto.Unmarshal(b, m); uerr != nil {
			err = uerr
			f.violation(fmt.Sprintf("undecodable FunctionMessage of %d bytes: %v; first bytes %s", len(b), uerr, framing.Quote(b[:min(len(b), 32)])))
			return
		}
		if first {
			first = false
			if err = f.handshake(m); err != nil {
				return
			}
			ready <- nil
			continue
		}
		switch x := m.Msg.(type) {
		case *culvertv1.FunctionMessage_Result:
			var in []*culvertv1.Record // to name the record in a violation
			if sb := f.sent.head(); sb != nil && sb.id == x.Result.GetBatchId() {
				in = sb.recs
			}
			if msg := badUnchanged(x.Result, f.dec.unchangedOK, in); msg != "" {
				err = errors.New("bad unchanged output")
				f.violation(msg)
				return
			}
			f.dec.from(x.Result)
			if err = f.result(&f.dec); err != nil {
				return
			}
		case *culvertv1.FunctionMessage_KeepAlive:
			e, ok := f.pop()
			if !ok || e.call != nil || e.nonce != x.KeepAlive.Nonce {
				err = errors.New("unexpected keep-alive")
				f.violation(fmt.Sprintf("unexpected KeepAlive (nonce %d): keep-alives must echo the host's, in order", x.KeepAlive.Nonce))
				return
			}
		default:
			err = errors.New("unexpected frame")
			f.violation(fmt.Sprintf("unexpected %s frame after the handshake", frameName(m)))
			return
		}
	}
}

func (f *framed) handshake(m *culvertv1.FunctionMessage) error {
	switch x := m.Msg.(type) {
	case *culvertv1.FunctionMessage_Ready:
		if x.Ready.Version != ProtocolVersion {
			f.violation(fmt.Sprintf("Ready chose protocol version %d; the host offered [%d]", x.Ready.Version, ProtocolVersion))
			return errors.New("bad version")
		}
		for _, c := range x.Ready.Capabilities {
			if c != CapUnchanged {
				f.violation(fmt.Sprintf("Ready accepted capability %q that the host did not offer (it offered [%s])", c, CapUnchanged))
				return errors.New("bad capabilities")
			}
			f.dec.unchangedOK = true
		}
		f.cfg.Logger.Debug("function ready", "agent", x.Ready.Agent, "version", x.Ready.Version, "capabilities", x.Ready.Capabilities)
		return nil
	case *culvertv1.FunctionMessage_InitError:
		f.stopReading()
		f.fail(&InstanceError{Class: ClassInit, Function: f.cfg.Name(), Msg: x.InitError.Message})
		return errors.New("init error")
	default:
		f.violation(fmt.Sprintf("expected Ready or InitError as the first frame, got %s", frameName(m)))
		return errors.New("bad handshake")
	}
}

func (f *framed) result(br *resultDecoder) error {
	f.answerMu.Lock()
	e, ok := f.pop()
	switch {
	case !ok || e.call == nil:
		f.answerMu.Unlock()
		f.violation(fmt.Sprintf("BatchResult for batch %d while no batch was outstanding", br.id))
		return errors.New("unexpected result")
	case br.id != e.call.id:
		f.answerMu.Unlock()
		f.failPopped(e.call, fmt.Sprintf("BatchResult for batch %d, expected batch %d (results must come in order)", br.id, e.call.id))
		return errors.New("wrong batch id")
	case len(br.results) != len(e.call.Records):
		f.answerMu.Unlock()
		f.failPopped(e.call, fmt.Sprintf("BatchResult for batch %d has %d results for %d records", br.id, len(br.results), len(e.call.Records)))
		return errors.New("wrong result count")
	}
	res := make([]Result, len(br.results))
	for i := range br.results {
		rr := &br.results[i]
		in := e.call.Records[i]
		if rr.failure {
			if rr.end > rr.start {
				f.answerMu.Unlock()
				f.failPopped(e.call, fmt.Sprintf("result %d of batch %d (record %s) has both a failure and outputs", i, br.id, in.Id))
				return errors.New("failure with outputs")
			}
			res[i].Failure = &Failure{Message: rr.message, Retryable: rr.retryable}
			continue
		}
		// One array for the batch; each record's outputs are capped so that
		// appending to them cannot reach its neighbour's.
		outs := br.outs[rr.start:rr.end:rr.end]
		for j := range outs {
			if outs[j].Record == nil { // Output.unchanged
				outs[j].Record = br.input(in)
			}
		}
		fillOutputs(f.cfg.Function, in, outs, &br.ids)
		res[i].Outputs = outs
	}
	br.handedOn()
	f.sent.answered(br.id)
	f.complete(e.call, res)
	f.answerMu.Unlock()
	return nil
}

// failPopped fails a call that was already taken off the queue, then the
// instance.
func (f *framed) failPopped(call *Call, msg string) {
	f.stopReading()
	f.failWith(&InstanceError{Class: ClassProtocol, Function: f.cfg.Name(), Msg: msg}, call)
}

// violation fails the instance for what the reader read.
func (f *framed) violation(msg string) {
	f.stopReading()
	f.fail(&InstanceError{Class: ClassProtocol, Function: f.cfg.Name(), Msg: msg})
}

func (f *framed) readError(err error) {
	var v *framing.ViolationError
	switch {
	case errors.As(err, &v):
		f.readerFailed(err, ClassProtocol, v.Error())
	case errors.Is(err, io.EOF):
		f.readerFailed(err, ClassCrash, "function closed its stdout")
	case errors.Is(err, io.ErrUnexpectedEOF):
		f.readerFailed(err, ClassCrash, "function closed its stdout inside a frame: "+err.Error())
	default:
		f.readerFailed(err, ClassCrash, "reading stdout: "+err.Error())
	}
}

// pingLoop sends a KeepAlive whenever the instance has been idle for the
// keep-alive interval; an unanswered one times out like a batch.
func (f *framed) pingLoop() {
	t := time.NewTicker(f.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-f.stopPing:
			return
		case <-f.dead:
			return
		case <-t.C:
		}
		f.mu.Lock()
		if len(f.pending) > 0 || time.Since(f.lastUse) < f.cfg.KeepAlive || f.failed || f.closing {
			f.mu.Unlock()
			continue
		}
		f.nonce++
		nonce := f.nonce
		timer := time.AfterFunc(f.cfg.HandshakeTimeout, func() {
			f.fail(&InstanceError{Class: ClassTimeout, Function: f.cfg.Name(),
				Msg: fmt.Sprintf("keep-alive %d not answered within %s", nonce, f.cfg.HandshakeTimeout)})
		})
		f.pending = append(f.pending, entry{nonce: nonce, timer: timer})
		f.mu.Unlock()
		if err := f.write(&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: nonce}}}); err != nil {
			f.cfg.Logger.Debug("writing keep-alive", "error", err)
		}
	}
}

func frameName(m *culvertv1.FunctionMessage) string {
	switch m.Msg.(type) {
	case *culvertv1.FunctionMessage_Ready:
		return "Ready"
	case *culvertv1.FunctionMessage_InitError:
		return "InitError"
	case *culvertv1.FunctionMessage_Result:
		return "BatchResult"
	case *culvertv1.FunctionMessage_KeepAlive:
		return "KeepAlive"
	default:
		return "empty or unknown"
	}
}
