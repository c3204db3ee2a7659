package kafka

import (
	"testing"
	"time"
)

// TestGroupTimingDefaults: the heartbeat is a tenth of the session
// (between 100ms and 3s), and the rebalance timeout defaults to the time a
// live member needs to leave onRevoked and rejoin, only when the session
// is set (otherwise kgo's defaults stand).
func TestGroupTimingDefaults(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		session, revoke, rebalance time.Duration
		wantRebalance, wantBeat    time.Duration
	}{
		{"kgo defaults", 0, 0, 0, 0, 0},
		{"short session", 3 * time.Second, 2 * time.Second, 0, 5 * time.Second, 300 * time.Millisecond},
		{"default grace", 45 * time.Second, 0, 0, 55 * time.Second, 3 * time.Second},
		{"explicit", 3 * time.Second, time.Second, 2 * time.Second, 2 * time.Second, 300 * time.Millisecond},
		{"tiny session", time.Second / 2, time.Second, 0, 1500 * time.Millisecond, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := SourceConfig{Topics: []string{"t"}, Group: "g", SessionTimeout: tc.session, RevokeGrace: tc.revoke, RebalanceTimeout: tc.rebalance}
			if err := c.defaults(); err != nil {
				t.Fatal(err)
			}
			if c.RebalanceTimeout != tc.wantRebalance {
				t.Errorf("rebalance timeout %s, want %s", c.RebalanceTimeout, tc.wantRebalance)
			}
			if tc.session > 0 {
				if got := heartbeatInterval(tc.session); got != tc.wantBeat {
					t.Errorf("heartbeat %s, want %s", got, tc.wantBeat)
				}
			}
			if n := len(groupTiming(c.SessionTimeout, c.RebalanceTimeout)); (tc.session > 0) != (n == 3) || (tc.session == 0 && n != 0) {
				t.Errorf("%d kgo options for session %s, rebalance %s", n, c.SessionTimeout, c.RebalanceTimeout)
			}
		})
	}
}
