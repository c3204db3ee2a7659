package engine

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestBudget: sizes are let in while they fit, a record larger than the
// bound passes alone, and a waiter is let in by the release that makes
// room (or gives up with its context).
func TestBudget(t *testing.T) {
	tests := []struct {
		name       string
		limit      int64
		held       []int64 // acquired first
		next       int64
		fitsAtOnce bool
	}{
		{"fits", 100, []int64{40, 40}, 20, true},
		{"full", 100, []int64{40, 40}, 21, false},
		{"oversized alone", 100, nil, 500, true},
		{"oversized behind another", 100, []int64{1}, 500, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &budget{limit: tc.limit}
			for _, n := range tc.held {
				if err := b.acquire(context.Background(), n); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			err := b.acquire(ctx, tc.next)
			if got := err == nil; got != tc.fitsAtOnce {
				t.Fatalf("acquire(%d) with %v held: %v, want fits %v", tc.next, tc.held, err, tc.fitsAtOnce)
			}
			if err != nil {
				// Released, it fits.
				done := make(chan error, 1)
				go func() { done <- b.acquire(context.Background(), tc.next) }()
				time.Sleep(10 * time.Millisecond)
				for _, n := range tc.held {
					b.release(n)
				}
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the waiter was not let in after the releases")
				}
			}
		})
	}
}

// TestBudgetConcurrent: many goroutines taking and giving back never hold
// more than the limit together, and all finish.
func TestBudgetConcurrent(t *testing.T) {
	b := &budget{limit: 1000}
	var mu sync.Mutex
	var held, peak int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(100 + 50*g)
			for range 2000 {
				if err := b.acquire(context.Background(), n); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				held += n
				peak = max(peak, held)
				mu.Unlock()
				mu.Lock()
				held -= n
				mu.Unlock()
				b.release(n)
			}
		}()
	}
	wg.Wait()
	if peak > 1000 {
		t.Errorf("%d bytes held at once, limit 1000", peak)
	}
	if u := b.inUse(); u != 0 {
		t.Errorf("%d bytes still in use", u)
	}
}
