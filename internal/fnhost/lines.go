package fnhost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// lines speaks the lines mode: one value per line in, exactly one line out
// per line in, in order. An empty output line means no output.
type lines struct {
	*conn
	r *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte
	// skip[call id] marks records that could not be sent (a newline in the
	// value); the reader answers them without reading a line.
	skips sync.Map
}

func startLines(ctx context.Context, cfg Config) (Instance, error) {
	c, err := newConn(ctx, cfg)
	if err != nil {
		return nil, err
	}
	l := &lines{conn: c, r: bufio.NewReaderSize(c.proc.Stdout(), 64<<10)}
	go l.readLoop()
	return l, nil
}

func (l *lines) Submit(ctx context.Context, call *Call) error {
	if err := l.acquire(ctx, call); err != nil {
		return err
	}
	l.wmu.Lock()
	b := l.wbuf[:0]
	var skip []bool
	for i, r := range call.Records {
		if bytes.IndexByte(r.Value, '\n') >= 0 {
			if skip == nil {
				skip = make([]bool, len(call.Records))
			}
			skip[i] = true
			continue
		}
		b = append(b, r.Value...)
		b = append(b, '\n')
	}
	if skip != nil {
		l.skips.Store(call.id, skip)
	}
	_, err := l.proc.Stdin().Write(b)
	if cap(b) <= 1<<20 {
		l.wbuf = b
	}
	l.wmu.Unlock()
	if err != nil {
		go l.fail(&InstanceError{Class: ClassCrash, Function: l.cfg.Name(),
			Msg: fmt.Sprintf("writing %d lines: %v", len(call.Records), err), Err: err})
	}
	return nil
}

func (l *lines) Close(ctx context.Context) error {
	return l.close(ctx, func(time.Time) error { return nil })
}

// readLine reads one line of at most MaxFrame bytes, without the newline.
func (l *lines) readLine() ([]byte, error) {
	var long []byte
	for {
		b, err := l.r.ReadSlice('\n')
		if err == nil {
			b = b[:len(b)-1]
			if long != nil {
				return append(long, b...), nil
			}
			return append([]byte(nil), b...), nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, b...)
			if len(long) > l.cfg.MaxFrame {
				return nil, fmt.Errorf("output line longer than the limit of %d bytes", l.cfg.MaxFrame)
			}
			continue
		}
		if len(b) > 0 || long != nil {
			return nil, fmt.Errorf("stream ended inside a line: %w", io.ErrUnexpectedEOF)
		}
		return nil, err
	}
}

func (l *lines) readLoop() {
	defer l.stopReading()
	for {
		// Wait for the first line before taking a call off the queue, so
		// that unprompted output is caught as such.
		if _, err := l.r.Peek(1); err != nil {
			l.readEnd(err)
			return
		}
		e, ok := l.pop()
		if !ok || e.call == nil {
			peek, _ := l.r.Peek(min(l.r.Buffered(), 64))
			l.stopReading()
			l.fail(&InstanceError{Class: ClassProtocol, Function: l.cfg.Name(),
				Msg: fmt.Sprintf("output %q while no input line was outstanding; did the function print more than one line per input?", peek)})
			return
		}
		call := e.call
		var skip []bool
		if v, ok := l.skips.LoadAndDelete(call.id); ok {
			skip = v.([]bool)
		}
		res := make([]Result, len(call.Records))
		for i, in := range call.Records {
			if skip != nil && skip[i] {
				res[i].Failure = &Failure{Message: "value contains a newline, which lines mode cannot carry; use framed or exec mode"}
				continue
			}
			line, err := l.readLine()
			if err != nil {
				l.stopReading()
				l.failWith(&InstanceError{Class: ClassCrash, Function: l.cfg.Name(),
					Msg: fmt.Sprintf("reading the output line for record %s: %v", in.Id, err), Err: err}, call)
				return
			}
			if len(line) == 0 {
				continue
			}
			out := []Output{{Record: &culvertv1.Record{Value: line, Headers: in.Headers}}}
			fillOutputs(l.cfg.Function, in, out, nil)
			res[i].Outputs = out
		}
		l.complete(call, res)
	}
}

func (l *lines) readEnd(err error) {
	if errors.Is(err, io.EOF) {
		l.readerFailed(err, ClassCrash, "function closed its stdout")
		return
	}
	l.readerFailed(err, ClassCrash, "reading stdout: "+err.Error())
}
