// Package batch coalesces the completions of sinks whose confirmation is a
// flush (a NATS core PING/PONG round trip, a bufio flush to a file). It owns
// the timer, the bound on pending records and the ordering of Flush; it
// knows nothing about brokers or records.
//
// A sink writes a record, then calls Add with its done. The batcher runs
// the flush function when Size dones are pending or Interval after the
// first one arrived, and calls every done of the batch with its result.
// Because Add follows the write, a flush that starts after Add covers it.
package batch

import (
	"context"
	"sync"
	"time"

	"github.com/culvert-dev/culvert/connectors"
)

// Config tunes a Batcher. Zero values take defaults.
type Config struct {
	// Interval bounds how long a done waits for its flush; default 2ms.
	Interval time.Duration
	// Size flushes at once when this many dones are pending; default 256.
	Size int
	// MaxPending bounds records written and not confirmed; Acquire blocks
	// beyond it. Default 8192.
	MaxPending int
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = 2 * time.Millisecond
	}
	if c.Size <= 0 {
		c.Size = 256
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 8192
	}
	if c.Size > c.MaxPending {
		c.Size = c.MaxPending
	}
}

// Batcher coalesces dones; see the package comment.
type Batcher struct {
	cfg   Config
	flush func() error
	slots chan struct{}

	notEmpty chan struct{}
	full     chan struct{}
	stop     chan struct{}
	stopped  chan struct{}

	mu        sync.Mutex
	pending   []func(error)
	accepted  uint64 // dones ever added to a batch
	completed uint64 // dones ever called by the flusher
	progress  chan struct{}
	closed    bool
}

// New starts a Batcher around flush. Close stops it.
func New(cfg Config, flush func() error) *Batcher {
	cfg.defaults()
	b := &Batcher{
		cfg:      cfg,
		flush:    flush,
		slots:    make(chan struct{}, cfg.MaxPending),
		notEmpty: make(chan struct{}, 1),
		full:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
		progress: make(chan struct{}),
	}
	go b.loop()
	return b
}

// Acquire reserves room for one record (back-pressure). Every successful
// Acquire is followed by exactly one Add or Cancel.
func (b *Batcher) Acquire(ctx context.Context) error {
	select {
	case b.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case b.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stop:
		return connectors.ErrClosed
	}
}

// Cancel gives back a slot whose record was not written.
func (b *Batcher) Cancel() { <-b.slots }

// Add queues done for the next flush. After Close, done gets ErrClosed.
func (b *Batcher) Add(done func(error)) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.slots
		done(connectors.ErrClosed)
		return
	}
	b.pending = append(b.pending, done)
	b.accepted++
	n := len(b.pending)
	b.mu.Unlock()
	if n == 1 {
		signal(b.notEmpty)
	}
	if n >= b.cfg.Size {
		signal(b.full)
	}
}

// Flush waits until every done added before the call has been called.
func (b *Batcher) Flush(ctx context.Context) error {
	b.mu.Lock()
	target := b.accepted
	b.mu.Unlock()
	signal(b.full)
	for {
		b.mu.Lock()
		if b.completed >= target {
			b.mu.Unlock()
			return nil
		}
		ch := b.progress
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-b.stopped:
			// The last flush ran; completed is final.
			b.mu.Lock()
			done := b.completed >= target
			b.mu.Unlock()
			if !done {
				return connectors.ErrClosed
			}
			return nil
		}
	}
}

// Close flushes what is pending, stops the flusher and fails later Adds
// with ErrClosed. It is idempotent.
func (b *Batcher) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.stopped
		return
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	<-b.stopped
}

func (b *Batcher) loop() {
	defer close(b.stopped)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-b.notEmpty:
			// Give others Interval to join the batch.
			t.Reset(b.cfg.Interval)
			select {
			case <-t.C:
			case <-b.full:
				t.Stop()
			case <-b.stop:
				t.Stop()
				b.run()
				return
			}
		case <-b.full:
		case <-b.stop:
			b.run()
			return
		}
		b.run()
	}
}

// run flushes the pending batch and completes it.
func (b *Batcher) run() {
	// A queued notEmpty refers to what is taken below; drop it so the
	// next batch gets its full Interval and no spurious wake-up.
	select {
	case <-b.notEmpty:
	default:
	}
	b.mu.Lock()
	batch := b.pending
	b.pending = nil
	b.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	err := b.flush()
	for range batch {
		<-b.slots
	}
	for _, done := range batch {
		done(err)
	}
	b.mu.Lock()
	b.completed += uint64(len(batch))
	close(b.progress)
	b.progress = make(chan struct{})
	b.mu.Unlock()
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
