package kafka

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestSlots: lanes take as many free slots as they want, up to the limit;
// once none is free they wait in turn, each woken with a share once enough
// are given back (at least grantMin, so that a settled record does not
// wake a lane on its own); a waiter that gives up lets those behind it be
// served, and slots granted to a waiter that gave up come back.
func TestSlots(t *testing.T) {
	tests := []struct {
		name  string
		limit int64
		steps func(t *testing.T, s *slots)
	}{
		{"takes what is free", 10, func(t *testing.T, s *slots) {
			ctx := context.Background()
			if k := s.take(ctx, nil, 4); k != 4 {
				t.Fatalf("took %d of 4 free", k)
			}
			if k := s.take(ctx, nil, 100); k != 6 {
				t.Fatalf("took %d, want the 6 left", k)
			}
			s.release(10)
			if u := s.used.Load(); u != 0 {
				t.Fatalf("%d in use after giving all back", u)
			}
		}},
		{"waiters served in turn", 64, func(t *testing.T, s *slots) {
			ctx := context.Background()
			s.take(ctx, nil, 64)
			got := make(chan [2]int, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() { defer wg.Done(); got <- [2]int{i, s.take(ctx, nil, 20)} }()
				waitWaiters(t, s, int64(i+1))
			}
			s.release(5) // fewer than grantMin (8 of 64): nobody woken
			time.Sleep(20 * time.Millisecond)
			if n := s.nwait.Load(); n != 2 {
				t.Fatalf("%d waiters after 5 slots came back, want 2", n)
			}
			s.release(5) // 10 free: the first waiter takes them
			if g := <-got; g != [2]int{0, 10} {
				t.Fatalf("woken %v, want waiter 0 with 10", g)
			}
			s.release(30)
			if g := <-got; g != [2]int{1, 20} {
				t.Fatalf("woken %v, want waiter 1 with 20", g)
			}
			wg.Wait()
			// A newcomer does not overtake a waiter, and is served after it.
			if k := s.take(ctx, nil, 10); k != 10 {
				t.Fatalf("took %d of the 10 free, want 10", k)
			}
		}},
		{"a waiter that gives up", 16, func(t *testing.T, s *slots) {
			s.take(context.Background(), nil, 16)
			stop := make(chan struct{})
			first := make(chan int, 1)
			go func() { first <- s.take(context.Background(), stop, 16) }()
			waitWaiters(t, s, 1)
			second := make(chan int, 1)
			go func() { second <- s.take(context.Background(), nil, 1) }()
			waitWaiters(t, s, 2)
			s.release(1) // enough for the second, not the first (grantMin 2)
			time.Sleep(20 * time.Millisecond)
			close(stop)
			if k := <-first; k != 0 {
				t.Fatalf("a waiter stopped got %d slots, want 0", k)
			}
			if k := <-second; k != 1 {
				t.Fatalf("the waiter behind got %d, want 1", k)
			}
			if u := s.used.Load(); u != 16 {
				t.Fatalf("%d in use, want 16", u)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.steps(t, &slots{limit: tc.limit})
		})
	}
}

func waitWaiters(t *testing.T, s *slots, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.nwait.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", s.nwait.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPauseOnlyWhenStuck: a partition held up by its own in-flight bound
// with a long queue is paused only once it has been so for FetchMaxWait
// without a break; a moment with room starts the wait again.
func TestPauseOnlyWhenStuck(t *testing.T) {
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:9"), kgo.ConsumeTopics("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const wait = 50 * time.Millisecond
	s := &Source{cfg: SourceConfig{MaxInFlight: 4, MaxInFlightPerPartition: 4, MaxQueued: 10, FetchMaxWait: wait}, cl: cl,
		sem: &slots{limit: 4}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), pollKick: make(chan struct{}, 1)}
	l := newLane(s, tp{"t", 0})
	for i := range 8 {
		l.queue = append(l.queue, &kgo.Record{Offset: int64(i)})
	}
	paused := func() bool { return len(cl.PauseFetchPartitions(nil)["t"]) == 1 }
	tests := []struct {
		name      string
		unsettled int
		sleep     time.Duration
		wantWake  bool
		wantPause bool
	}{
		{"room: no pause", 3, 0, false, false},
		{"held up: not yet", 4, 0, true, false},
		{"held up, half the wait: not yet", 4, wait / 2, true, false},
		{"room again", 3, 0, false, false},
		{"held up again: the wait starts over", 4, wait * 3 / 4, true, false},
		{"held up for the wait: paused", 4, wait + wait/10, false, true},
	}
	for _, tc := range tests {
		time.Sleep(tc.sleep)
		l.mu.Lock()
		l.unsettled = tc.unsettled
		l.mu.Unlock()
		its, wake, _ := l.next(nil, 1)
		l.mu.Lock()
		for _, it := range its { // back at the head: the queue stays long
			l.queue = append([]*kgo.Record{it.r}, l.queue...)
		}
		l.mu.Unlock()
		if got := !wake.IsZero(); got != tc.wantWake {
			t.Errorf("%s: wake %v, want a wake time %v", tc.name, wake, tc.wantWake)
		}
		if got := paused(); got != tc.wantPause {
			t.Errorf("%s: paused %v, want %v", tc.name, got, tc.wantPause)
		}
	}
}
