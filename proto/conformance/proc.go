package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"github.com/culvert-dev/culvert/sandbox"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// frame is one thing read from the function's stdout: a message, or the
// error that ended the stream (io.EOF at a clean end).
type frame struct {
	m   *culvertv1.FunctionMessage
	err error
}

// proc is one running function instance driven by the kit.
type proc struct {
	opts   *Options
	kill   func() // kills the function and whatever it started
	stdin  io.WriteCloser
	writes chan []byte   // frames to write, in order; closed to close stdin
	wdone  chan struct{} // closed when the writer has finished
	werr   error         // set before wdone closes
	frames chan frame    // unbuffered: not receiving is a slow reader
	stderr *tail
	exited chan struct{} // closed after Wait
	state  exitState
	// eof is set once the end of stdout has been received.
	eof       bool
	closeOnce sync.Once
}

// exitState is how the function ended: an *os.ProcessState, or a
// sandbox.Exit when Options.Runtime started it.
type exitState interface {
	Success() bool
	String() string
}

// startOpts tunes one process.
type startOpts struct {
	maxFrame int                       // reader limit; 0: framing.DefaultMaxFrame
	wrap     func(io.Reader) io.Reader // e.g. a throttled reader
}

func (o *Options) start(ctx context.Context, so startOpts) (*proc, error) {
	if len(o.Command) == 0 {
		return nil, errors.New("no command to run")
	}
	if o.Runtime != nil {
		return o.startIn(ctx, so)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := exec.Command(o.Command[0], o.Command[1:]...)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), o.Env...)
	if !o.NoConvention {
		cmd.Env = append(cmd.Env, "CULVERT_CONFORMANCE=1")
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		for _, f := range []*os.File{inR, inW, outR, outW, errR, errW} {
			f.Close()
		}
		return nil, fmt.Errorf("starting %q: %w", o.Command[0], err)
	}
	inR.Close()
	outW.Close()
	errW.Close()
	p := &proc{
		opts:   o,
		kill:   func() { killProcessGroup(cmd) },
		stdin:  inW,
		writes: make(chan []byte, 64),
		wdone:  make(chan struct{}),
		frames: make(chan frame),
		stderr: &tail{max: 64 << 10},
		exited: make(chan struct{}),
	}
	go p.writer()
	var stdout io.Reader = outR
	if so.wrap != nil {
		stdout = so.wrap(outR)
	}
	go p.reader(ctx, stdout, outR, so.maxFrame)
	go func() { io.Copy(p.stderr, errR); errR.Close() }()
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) writer() {
	defer close(p.wdone)
	defer p.stdin.Close()
	for b := range p.writes {
		if p.werr != nil {
			continue // drain; the function stopped reading
		}
		if _, err := p.stdin.Write(b); err != nil {
			p.werr = err
		}
	}
}

// startIn starts the function with o.Runtime: in a sandbox, with the
// environment of o.Env only (the kit's own is the host's business).
func (o *Options) startIn(ctx context.Context, so startOpts) (*proc, error) {
	p := &proc{
		opts:   o,
		writes: make(chan []byte, 64),
		wdone:  make(chan struct{}),
		frames: make(chan frame),
		stderr: &tail{max: 64 << 10},
		exited: make(chan struct{}),
	}
	env := slices.Clone(o.Env)
	if !o.NoConvention {
		env = append(env, "CULVERT_CONFORMANCE=1")
	}
	sp, err := o.Runtime.Start(ctx, sandbox.Spec{
		Name: "conformance/" + filepath.Base(o.Command[0]), Path: o.Command[0], Args: o.Command[1:],
		Env: env, Dir: o.Dir, Tenant: "conformance", Stderr: p.stderr, Isolation: o.Isolation,
	})
	if err != nil {
		return nil, fmt.Errorf("starting %q with the %s runtime: %w", o.Command[0], o.Runtime.Name(), err)
	}
	p.kill = func() { _ = sp.Kill() }
	p.stdin = sp.Stdin()
	go p.writer()
	var stdout io.Reader = sp.Stdout()
	if so.wrap != nil {
		stdout = so.wrap(stdout)
	}
	go p.reader(ctx, stdout, sp.Stdout(), so.maxFrame)
	go func() {
		p.state = sp.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) reader(ctx context.Context, r io.Reader, f io.Closer, maxFrame int) {
	defer f.Close()
	fr := framing.NewReader(r, maxFrame)
	for {
		b, err := fr.Next()
		var fm frame
		if err != nil {
			fm.err = err
		} else {
			fm.m, fm.err = decodeFunctionMessage(b)
		}
		select {
		case p.frames <- fm:
		case <-ctx.Done():
			return
		}
		if fm.err != nil {
			return
		}
	}
}

// decodeFunctionMessage decodes a frame body strictly: valid protobuf,
// exactly one frame field set, no other field in the envelope (SPEC.md 3).
func decodeFunctionMessage(b []byte) (*culvertv1.FunctionMessage, error) {
	m := &culvertv1.FunctionMessage{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("frame of %d bytes is not a valid FunctionMessage: %v; starts %s (SPEC.md 3)", len(b), err, framing.Quote(b[:min(len(b), 32)]))
	}
	if m.Msg == nil {
		return nil, fmt.Errorf("frame of %d bytes sets no known FunctionMessage field: starts %s (SPEC.md 3.2, 10)", len(b), framing.Quote(b[:min(len(b), 32)]))
	}
	if u := m.ProtoReflect().GetUnknown(); len(u) > 0 {
		num, _, _ := protowire.ConsumeTag(u)
		return nil, fmt.Errorf("FunctionMessage carries field %d besides its frame; the envelope must have exactly one field (SPEC.md 3)", num)
	}
	// Two frame fields in one body decode as the last one; catch it by
	// counting the top-level fields.
	if n := topLevelFields(b); n != 1 {
		return nil, fmt.Errorf("FunctionMessage has %d top-level fields; the envelope must have exactly one (SPEC.md 3)", n)
	}
	return m, nil
}

func topLevelFields(b []byte) int {
	n := 0
	for len(b) > 0 {
		_, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return -1
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(0, typ, b)
		if l < 0 {
			return -1
		}
		b = b[l:]
		n++
	}
	return n
}

// send queues one message as a frame.
func (p *proc) send(m *culvertv1.HostMessage) error {
	b, err := framing.Append(nil, m, 64<<20)
	if err != nil {
		return err
	}
	p.sendRaw(b)
	return nil
}

// sendBody queues body with its length prefix.
func (p *proc) sendBody(body []byte) {
	p.sendRaw(append(protowire.AppendVarint(nil, uint64(len(body))), body...))
}

func (p *proc) sendRaw(b []byte) {
	defer func() { recover() }() // writes after closeStdin are dropped
	p.writes <- b
}

// closeStdin closes stdin once everything queued has been written.
func (p *proc) closeStdin() {
	p.closeOnce.Do(func() { close(p.writes) })
}

// recv returns the next message, or an error that says why none came.
func (p *proc) recv(ctx context.Context, d time.Duration) (*culvertv1.FunctionMessage, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-p.frames:
		if f.err == nil {
			return f.m, nil
		}
		if errors.Is(f.err, io.EOF) {
			p.eof = true
			return nil, p.closedErr("closed stdout")
		}
		return nil, f.err
	case <-t.C:
		return nil, fmt.Errorf("no frame within %v%s", d, p.stderrNote())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// closedErr describes a function that closed stdout, with its exit status
// when it has one.
func (p *proc) closedErr(what string) error {
	select {
	case <-p.exited:
		return fmt.Errorf("the function %s and exited (%s)%s", what, p.state, p.stderrNote())
	case <-time.After(500 * time.Millisecond):
		return fmt.Errorf("the function %s%s", what, p.stderrNote())
	}
}

// expectEOF waits for stdout to end with no further frame.
func (p *proc) expectEOF(ctx context.Context, d time.Duration) error {
	if p.eof {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-p.frames:
		if errors.Is(f.err, io.EOF) {
			p.eof = true
			return nil
		}
		if f.err != nil {
			return f.err
		}
		return fmt.Errorf("unexpected frame %s", describe(f.m))
	case <-t.C:
		return fmt.Errorf("stdout still open after %v", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// quiet checks that no frame arrives for d.
func (p *proc) quiet(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-p.frames:
		if f.err != nil {
			if errors.Is(f.err, io.EOF) {
				p.eof = true
				return p.closedErr("closed stdout while idle")
			}
			return f.err
		}
		return fmt.Errorf("unsolicited frame %s: every function frame answers one host frame (SPEC.md 4.1)", describe(f.m))
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait waits up to d for the process to exit and returns its status.
func (p *proc) wait(d time.Duration) (exitState, error) {
	select {
	case <-p.exited:
		return p.state, nil
	case <-time.After(d):
		return nil, fmt.Errorf("the process did not exit within %v%s", d, p.stderrNote())
	}
}

// stop kills the process group and releases everything.
func (p *proc) stop() {
	p.kill()
	p.closeStdin()
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
}

func (p *proc) stderrNote() string {
	t := bytes.TrimSpace(p.stderr.Bytes())
	if len(t) == 0 {
		return ""
	}
	if len(t) > 600 {
		t = append([]byte("…"), t[len(t)-600:]...)
	}
	return "; stderr: " + string(t)
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, b...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(b), nil
}

func (t *tail) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.b)
}

// describe names a frame for error messages.
func describe(m *culvertv1.FunctionMessage) string {
	switch x := m.GetMsg().(type) {
	case *culvertv1.FunctionMessage_Ready:
		return fmt.Sprintf("Ready{version %d}", x.Ready.GetVersion())
	case *culvertv1.FunctionMessage_InitError:
		return fmt.Sprintf("InitError{%q, retryable %v}", x.InitError.GetMessage(), x.InitError.GetRetryable())
	case *culvertv1.FunctionMessage_Result:
		return fmt.Sprintf("BatchResult{batch_id %d, %d results}", x.Result.GetBatchId(), len(x.Result.GetResults()))
	case *culvertv1.FunctionMessage_KeepAlive:
		return fmt.Sprintf("KeepAlive{nonce %d}", x.KeepAlive.GetNonce())
	}
	return "an empty FunctionMessage"
}
