package fnhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sdk/go/execenv"
)

// ExitTempFail is the exit status (EX_TEMPFAIL) by which an exec-mode
// function says "retry me"; any other non-zero status is permanent.
const ExitTempFail = 75

// execInst runs one process per record.
type execInst struct {
	cfg    Config
	env    []string // ExecEnv(cfg.Env): every start's Env
	mu     sync.Mutex
	busy   bool
	closed bool
	dead   chan struct{}
}

func newExec(cfg Config) *execInst {
	return &execInst{cfg: cfg, env: ExecEnv(cfg.Env), dead: make(chan struct{})}
}

func (x *execInst) Dead() <-chan struct{} { return x.dead }
func (x *execInst) Err() error            { return nil }

func (x *execInst) Idle() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return !x.busy
}

func (x *execInst) Close(context.Context) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.closed {
		x.closed = true
		close(x.dead)
	}
	return nil
}

// Submit runs the records one after another, then calls Done.
func (x *execInst) Submit(ctx context.Context, call *Call) error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return ErrDead
	}
	x.busy = true
	x.mu.Unlock()
	res := make([]Result, len(call.Records))
	for i, rec := range call.Records {
		res[i] = x.run(ctx, rec)
	}
	x.mu.Lock()
	x.busy = false
	x.mu.Unlock()
	call.Done(res, nil)
	return nil
}

// ExecEnv is an exec-mode instance's environment without any CULVERT_
// variable, which only the record may set (proto/SPEC.md, exec mode). It
// is the Env of every start's spec; the record's variables are its
// StartEnv, so that a runtime that creates instances ahead can serve every
// record's start from one spec.
func ExecEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CULVERT_") {
			out = append(out, kv)
		}
	}
	return out
}

func (x *execInst) run(ctx context.Context, rec *culvertv1.Record) Result {
	cfg := &x.cfg
	tail := newLogTail(cfg.Logger.With("record", rec.Id))
	spec := cfg.spec(tail)
	spec.Env = x.env
	spec.StartEnv = execenv.Encode(rec, cfg.Function, cfg.Pipeline) // never nil: a start of one spec
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	proc, err := cfg.Runtime.Start(ctx, spec)
	if err != nil {
		return Result{Failure: &Failure{Message: fmt.Sprintf("function %s: starting a process for record %s: %v", cfg.Function, rec.Id, err), Retryable: true}}
	}
	go func() {
		_, _ = proc.Stdin().Write(rec.Value)
		_ = proc.Stdin().Close()
	}()
	timedOut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			close(timedOut)
		}
		_ = proc.Kill()
	})
	var out bytes.Buffer
	_, rerr := io.Copy(&out, io.LimitReader(proc.Stdout(), int64(cfg.MaxFrame)+1))
	if out.Len() > cfg.MaxFrame {
		_ = proc.Kill()
	}
	exit := proc.Wait()
	stop()
	select {
	case <-timedOut:
		return Result{Failure: &Failure{Retryable: true, Message: fmt.Sprintf("function %s: timeout: record %s not done within %s; stderr tail: %q", cfg.Function, rec.Id, cfg.Timeout, tail.Tail())}}
	default:
	}
	switch {
	case out.Len() > cfg.MaxFrame:
		return Result{Failure: &Failure{Message: fmt.Sprintf("function %s: output for record %s exceeds the limit of %d bytes", cfg.Function, rec.Id, cfg.MaxFrame)}}
	case exit.Err != nil || (rerr != nil && !errors.Is(rerr, io.EOF)):
		return Result{Failure: &Failure{Retryable: true, Message: fmt.Sprintf("function %s: record %s: %v %v", cfg.Function, rec.Id, exit.Err, rerr)}}
	case !exit.Success():
		return Result{Failure: exitFailure(cfg, rec, exit, tail.Tail())}
	}
	if out.Len() == 0 {
		return Result{}
	}
	outs := []Output{{Record: &culvertv1.Record{Value: out.Bytes(), Headers: rec.Headers}}}
	fillOutputs(cfg.Function, rec, outs, nil)
	return Result{Outputs: outs}
}

func exitFailure(cfg *Config, rec *culvertv1.Record, exit sandbox.Exit, stderr string) *Failure {
	class := ClassCrash
	if exit.OOMKilled {
		class = ClassOOM
	}
	return &Failure{
		Retryable: exit.Code == ExitTempFail || exit.OOMKilled,
		Message:   fmt.Sprintf("function %s: %s: record %s: %s; stderr tail: %q", cfg.Function, class, rec.Id, exit, stderr),
	}
}
