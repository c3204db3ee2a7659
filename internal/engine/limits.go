package engine

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// budget bounds the bytes of source records in flight. A record is let in
// when it fits, or when nothing else is in flight (so that one record
// larger than the bound still passes, alone).
type budget struct {
	mu      sync.Mutex
	used    int64
	limit   int64
	waiters int
	changed chan struct{} // closed when used drops and someone waits
}

func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.limit {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		ch := b.changed
		b.waiters++
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			b.mu.Lock()
			b.waiters--
			b.mu.Unlock()
			return ctx.Err()
		}
		b.mu.Lock()
		b.waiters--
		b.mu.Unlock()
	}
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	if b.changed != nil && b.waiters > 0 {
		close(b.changed)
		b.changed = nil
	}
	b.mu.Unlock()
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

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
