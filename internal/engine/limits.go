package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// budget bounds the bytes of source records in flight. A record is let in
// when it fits, or when nothing else is in flight (so that one record
// larger than the bound still passes, alone).
//
// used is taken and given back with atomics (once per record each way);
// the mutex only guards the waiters and their channel.
type budget struct {
	used    atomic.Int64
	limit   int64
	waiters atomic.Int64
	mu      sync.Mutex
	changed chan struct{} // closed when used drops and someone waits
}

// tryAcquire takes n if it fits.
func (b *budget) tryAcquire(n int64) bool {
	for {
		u := b.used.Load()
		if u != 0 && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		if b.tryAcquire(n) {
			return nil
		}
		// Register as a waiter, then look again: a release that came in
		// between either let this one fit or sees the waiter and closes
		// the channel.
		b.mu.Lock()
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		ch := b.changed
		b.waiters.Add(1)
		b.mu.Unlock()
		if b.tryAcquire(n) {
			b.waiters.Add(-1)
			return nil
		}
		select {
		case <-ch:
			b.waiters.Add(-1)
		case <-ctx.Done():
			b.waiters.Add(-1)
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int64) {
	b.used.Add(-n)
	if b.waiters.Load() == 0 {
		return
	}
	b.mu.Lock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	b.mu.Unlock()
}

func (b *budget) inUse() int64 { return b.used.Load() }

// nackWindow trips when n records failed for good within window: the times
// of the last n failures are kept in a ring.
type nackWindow struct {
	mu      sync.Mutex
	n       int
	window  time.Duration
	times   []time.Time
	next    int
	tripped error
}

func newNackWindow(n int, window time.Duration) *nackWindow {
	if window <= 0 {
		window = time.Minute
	}
	return &nackWindow{n: n, window: window, times: make([]time.Time, 0, n)}
}

// add notes one failure now; it returns non-nil once the threshold tripped.
func (w *nackWindow) add(now time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tripped != nil {
		return w.tripped
	}
	if len(w.times) < w.n {
		w.times = append(w.times, now)
	} else {
		w.times[w.next] = now
		w.next = (w.next + 1) % w.n
	}
	if len(w.times) == w.n {
		// While filling, next stays 0 and times[0] is the oldest; once
		// full, next points at the oldest.
		if oldest := w.times[w.next]; now.Sub(oldest) <= w.window {
			w.tripped = fmt.Errorf("nack threshold: %d records failed for good within %s", w.n, w.window)
			return nil // this failure is the last one handled as usual
		}
	}
	return nil
}

// failedForGood counts a record failed for good against the nack
// threshold. Once it tripped, the pipeline is told to stop, and every
// later failure returns the error: the record is given back, not
// dead-lettered.
func (e *Engine) failedForGood() error {
	if e.nacks == nil {
		return nil
	}
	e.nacks.mu.Lock()
	before := e.nacks.tripped
	e.nacks.mu.Unlock()
	if before != nil {
		return before
	}
	e.nacks.add(time.Now())
	e.nacks.mu.Lock()
	after := e.nacks.tripped
	e.nacks.mu.Unlock()
	if after != nil {
		select {
		case e.stop <- after:
		default:
		}
	}
	return nil
}
