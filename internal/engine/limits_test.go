package engine

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
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

// TestInFlightRecords: the record bound (max_in_flight) holds while a
// slow function works through more records than it.
func TestInFlightRecords(t *testing.T) {
	l := startLive(t, `
version: 1
name: records
inputs: { in: { stdin: {} } }
functions:
  slow: { command: $TESTFN, args: [sleep], env: { TESTFN_SLEEP: 5ms }, batch: { size: 4, max_wait: 1ms } }
routes:
  - { name: main, chain: [slow], outputs: [a] }
delivery: { max_in_flight: 10 }
`+outputsYAML)
	var input []*culvertv1.Record
	for i := range 100 {
		input = append(input, &culvertv1.Record{Id: fmt.Sprint("r", i), Value: []byte("x")})
	}
	go l.send(input...)
	most := int64(0)
	l.waitFor("all acked", func() bool {
		s := l.e.Stats()
		most = max(most, s.InFlight)
		return s.Acked == 100
	})
	if most > 10 || most == 0 {
		t.Errorf("at most %d records in flight seen, want 1..10", most)
	}
}
