package engine

import (
	"fmt"
	"testing"
	"time"
)

// wantBackoff is the documented delay before jitter: base doubling per
// attempt from the first, up to ceiling, computed without overflow.
func wantBackoff(base, ceiling time.Duration, attempt int) time.Duration {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if ceiling <= 0 {
		ceiling = 5 * time.Second
	}
	d := base
	for range attempt - 1 {
		if d > ceiling/2 {
			return ceiling
		}
		d *= 2
	}
	return min(d, ceiling)
}

// TestBackoff checks the bounds of every attempt from 1 to 40: never above
// the ceiling, never below half of min(base<<(attempt-1), ceiling), never
// above that min either.
func TestBackoff(t *testing.T) {
	tests := []struct {
		base, ceiling time.Duration
	}{
		{0, 0}, // defaults: 100ms up to 5s
		{100 * time.Millisecond, 5 * time.Second},
		{10 * time.Millisecond, 50 * time.Millisecond},
		{time.Second, time.Second},
		{3 * time.Second, time.Second}, // base above the ceiling: the ceiling
		{time.Nanosecond, 2 * time.Nanosecond},
		{time.Nanosecond, time.Minute},
		{time.Microsecond, time.Hour}, // needs more than 30 doublings to reach the ceiling
		{time.Hour, 24 * time.Hour},   // base<<39 overflows int64
		{17179869185, time.Hour},      // (2^34+1)ns: base<<30 wraps to a small positive value
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v-%v", tc.base, tc.ceiling), func(t *testing.T) {
			t.Parallel()
			ceiling := tc.ceiling
			if ceiling <= 0 {
				ceiling = 5 * time.Second
			}
			for attempt := 1; attempt <= 40; attempt++ {
				want := wantBackoff(tc.base, tc.ceiling, attempt)
				lo, hi := want/2, want
				for range 50 {
					got := backoff(tc.base, tc.ceiling, attempt)
					if got > ceiling {
						t.Fatalf("attempt %d: %v above the ceiling %v", attempt, got, ceiling)
					}
					if got < lo || got > hi {
						t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, got, lo, hi)
					}
				}
			}
		})
	}
}

// TestBackoffJitter: the delays of one attempt are spread, not constant.
func TestBackoffJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 100 {
		seen[backoff(100*time.Millisecond, 5*time.Second, 3)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("100 delays for attempt 3 took only %d distinct values", len(seen))
	}
}
