package batch

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors"
)

func TestBatchCoalescesAndBounds(t *testing.T) {
	gate := make(chan struct{})
	var flushes atomic.Int32
	b := New(Config{Interval: time.Millisecond, Size: 100, MaxPending: 2}, func() error {
		flushes.Add(1)
		<-gate
		return nil
	})
	var done atomic.Int32
	for range 2 {
		if err := b.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.Add(func(err error) {
			if err != nil {
				t.Error(err)
			}
			done.Add(1)
		})
	}
	// Both slots are taken until the (blocked) flush completes.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire on a full batcher: %v", err)
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer fcancel()
	if err := b.Flush(fctx); err == nil {
		t.Fatal("Flush returned before the flush completed")
	}
	close(gate)
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if done.Load() != 2 {
		t.Fatalf("%d dones after Flush, want 2", done.Load())
	}
	if err := b.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.Add(func(error) { done.Add(1) })
	b.Close()
	b.Close()
	if done.Load() != 3 {
		t.Fatalf("Close did not flush the pending done")
	}
	errc := make(chan error, 1)
	if err := b.Acquire(context.Background()); err == nil {
		b.Add(func(err error) { errc <- err })
		if err := <-errc; !errors.Is(err, connectors.ErrClosed) {
			t.Fatalf("Add after Close: %v", err)
		}
	}
	if n := flushes.Load(); n < 1 || n > 3 {
		t.Fatalf("%d flushes", n)
	}
}

func TestBatchFlushError(t *testing.T) {
	boom := errors.New("boom")
	b := New(Config{}, func() error { return boom })
	defer b.Close()
	errc := make(chan error, 1)
	b.Acquire(context.Background())
	b.Add(func(err error) { errc <- err })
	if err := <-errc; !errors.Is(err, boom) {
		t.Fatalf("done(%v), want the flush error", err)
	}
}
