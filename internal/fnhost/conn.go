package fnhost

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

// conn is what the long-lived modes (framed, lines) share: the process, the
// window of outstanding calls, their deadlines, and how the instance dies.
type conn struct {
	cfg    Config
	proc   sandbox.Process
	stderr *logTail

	slots chan struct{} // one token per outstanding call

	mu      sync.Mutex
	pending []entry // in the order sent; answers come in this order
	nextID  uint64
	failed  bool
	closing bool
	lastUse time.Time

	dead     chan struct{}
	failOnce sync.Once
	err      error

	// readDone is closed once the mode's reader stops reading stdout
	// (stopReading): failWith waits for it before reaping the process,
	// which closes stdout.
	readDone chan struct{}
	readOnce sync.Once

	// answerMu makes taking a call off pending and answering it one step
	// with respect to a failing instance answering the calls still
	// pending: without it a timer's failure could answer a later batch
	// before the reader hands on the earlier one it has just read, and
	// the host orders retries by the order of answers.
	answerMu sync.Mutex
}

// entry is something sent that awaits an answer: a call or a keep-alive.
type entry struct {
	call  *Call
	nonce uint64
	timer *time.Timer
}

func newConn(ctx context.Context, cfg Config) (*conn, error) {
	c := &conn{
		cfg:      cfg,
		stderr:   newLogTail(cfg.Logger),
		slots:    make(chan struct{}, cfg.MaxInflight),
		dead:     make(chan struct{}),
		readDone: make(chan struct{}),
		lastUse:  time.Now(),
	}
	proc, err := cfg.Runtime.Start(ctx, cfg.spec(c.stderr))
	if err != nil {
		return nil, &InstanceError{Class: ClassStart, Function: cfg.Name(), Msg: err.Error(), Err: err}
	}
	c.proc = proc
	return c, nil
}

// acquire takes a window slot and registers c, with its deadline timer.
func (c *conn) acquire(ctx context.Context, call *Call) error {
	select {
	case c.slots <- struct{}{}:
	case <-c.dead:
		return ErrDead
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed {
		<-c.slots
		return ErrDead
	}
	c.nextID++
	call.id = c.nextID
	call.deadline = time.Now().Add(c.cfg.Timeout)
	t := time.AfterFunc(c.cfg.Timeout, func() {
		c.fail(&InstanceError{Class: ClassTimeout, Function: c.cfg.Name(),
			Msg: fmt.Sprintf("batch %d of %d records not answered within %s (attempt %d, first record %s)",
				call.id, len(call.Records), c.cfg.Timeout, call.Attempt, firstID(call))})
	})
	c.pending = append(c.pending, entry{call: call, timer: t})
	c.lastUse = time.Now()
	return nil
}

// firstPending names the first record the instance was working on.
func firstPending(culprit *Call, pending []entry) string {
	if culprit != nil {
		return firstID(culprit)
	}
	for _, e := range pending {
		if e.call != nil {
			return firstID(e.call)
		}
	}
	return "(none)"
}

func firstID(call *Call) string {
	if len(call.Records) == 0 {
		return "(none)"
	}
	return call.Records[0].Id
}

// pop removes the oldest outstanding entry. ok is false if none is.
func (c *conn) pop() (e entry, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return entry{}, false
	}
	e = c.pending[0]
	c.pending[0] = entry{}
	c.pending = c.pending[1:]
	if e.timer != nil {
		e.timer.Stop()
	}
	c.lastUse = time.Now()
	return e, true
}

// complete hands a call its results and frees its slot.
func (c *conn) complete(call *Call, res []Result) {
	<-c.slots
	call.Done(res, nil)
}

// fail kills the instance once, classifies why, and fails everything
// outstanding: the oldest call gets ie (it is the one the instance was
// working on), the calls queued behind it get a bystander copy (they were
// not processed, and retrying them is not an attempt).
func (c *conn) fail(ie *InstanceError) { c.failWith(ie, nil) }

// failWith is fail for a culprit call already taken off the queue: it gets
// ie, and every call still queued is a bystander.
func (c *conn) failWith(ie *InstanceError, culprit *Call) {
	answered := false
	c.failOnce.Do(func() {
		c.mu.Lock()
		c.failed = true
		closing := c.closing
		c.mu.Unlock()
		if ie.Class != ClassShutdown {
			_ = c.proc.Kill()
			// Reaping the process closes its stdout, and what it wrote
			// before it died would be lost with the pipe: answers to
			// batches it did finish, which would then be failed and
			// blamed in place of the one it died on. Let the reader take
			// them in first; it stops at the end of the output, which
			// the kill brings at once.
			t := time.NewTimer(readDrain)
			select {
			case <-c.readDone:
			case <-t.C:
			}
			t.Stop()
		}
		exited := make(chan sandbox.Exit, 1)
		go func() { exited <- c.proc.Wait() }()
		var exit sandbox.Exit
		select {
		case exit = <-exited:
		case <-time.After(5 * time.Second):
			_ = c.proc.Kill()
			exit = <-exited
		}
		ie.Exit = &exit
		ie.Stderr = c.stderr.Tail()
		c.answerMu.Lock()
		defer c.answerMu.Unlock()
		c.mu.Lock()
		pending := c.pending
		c.pending = nil
		c.mu.Unlock()
		if exit.OOMKilled {
			ie.Class = ClassOOM
		}
		if ie.Class == ClassShutdown || (closing && len(pending) == 0 && culprit == nil && ie.Class == ClassCrash) {
			ie.Class = ClassShutdown
			if !exit.Success() {
				c.cfg.Logger.Warn("function exited uncleanly after shutdown", "exit", exit.String(), "stderr", ie.Stderr)
			}
		} else {
			c.cfg.Logger.Error("function instance failed", "class", string(ie.Class), "error", ie.Error(),
				"lost_batches", len(pending), "first_record", firstPending(culprit, pending))
		}
		c.err = ie
		// Dead first: a caller blocked in Submit must see the instance
		// gone before the answers below run engine code.
		close(c.dead)
		// The culprit is the earliest call: answered first, so that the
		// host sees its records fail before the later batches come back
		// unprocessed (it orders retries by that).
		if culprit != nil {
			<-c.slots
			culprit.Done(nil, ie)
			answered = true
		}
		bystander := *ie
		bystander.Bystander = true
		blamed := culprit != nil
		for _, e := range pending {
			if e.timer != nil {
				e.timer.Stop()
			}
			if e.call == nil {
				continue
			}
			<-c.slots
			if !blamed {
				blamed = true
				e.call.Done(nil, ie)
				continue
			}
			e.call.Done(nil, &bystander)
		}
	})
	if culprit != nil && !answered {
		// A later failure of an instance that had already failed: its
		// call was off the queue, so nothing above answered it.
		<-c.slots
		culprit.Done(nil, c.err)
	}
}

func (c *conn) Dead() <-chan struct{} { return c.dead }

func (c *conn) Err() error {
	select {
	case <-c.dead:
		return c.err
	default:
		return nil
	}
}

func (c *conn) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) == 0
}

// close waits for outstanding calls, runs shutdown (which tells the
// function to finish), and waits for the exit; it kills on ctx.
func (c *conn) close(ctx context.Context, shutdown func(deadline time.Time) error) error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	// Wait for the window to empty: every slot back.
	for i := 0; i < cap(c.slots); i++ {
		select {
		case c.slots <- struct{}{}:
		case <-c.dead:
			return nil
		case <-ctx.Done():
			c.fail(&InstanceError{Class: ClassTimeout, Function: c.cfg.Name(), Msg: "outstanding batches not answered before the shutdown deadline"})
			return ctx.Err()
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := shutdown(deadline); err != nil {
		c.cfg.Logger.Debug("sending shutdown", "error", err)
	}
	_ = c.proc.Stdin().Close()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-c.dead:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	c.fail(&InstanceError{Class: ClassTimeout, Function: c.cfg.Name(), Msg: "did not exit before the shutdown deadline"})
	return errors.New("function " + c.cfg.Name() + " killed after the shutdown deadline")
}

// readDrain bounds how long a failing instance waits for its reader to
// take in the output of the killed process (see failWith).
const readDrain = 2 * time.Second

// stopReading tells failWith that the reader reads no more. The reader
// calls it before it fails the instance itself, and when it returns.
func (c *conn) stopReading() { c.readOnce.Do(func() { close(c.readDone) }) }

// readerFailed turns the error that ended the read loop into a failure.
func (c *conn) readerFailed(err error, class Class, msg string) {
	c.stopReading()
	c.mu.Lock()
	closing, idle := c.closing, len(c.pending) == 0
	c.mu.Unlock()
	if class == ClassCrash && closing && idle {
		class = ClassShutdown
	}
	c.fail(&InstanceError{Class: class, Function: c.cfg.Name(), Msg: msg, Err: err})
}

func (cfg *Config) spec(stderr *logTail) sandbox.Spec {
	return sandbox.Spec{
		Name:      cfg.Name(),
		Path:      cfg.Path,
		Args:      cfg.Args,
		Env:       cfg.Env,
		Dir:       cfg.Dir,
		Tenant:    cmp.Or(cfg.Tenant, cfg.Pipeline),
		Stderr:    stderr,
		Isolation: cfg.Isolation,
	}
}
