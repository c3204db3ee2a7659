package kafka

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
)

type holdAll struct {
	mu   sync.Mutex
	held []connectors.Settler
}

func (h *holdAll) Handle(_ context.Context, m connectors.Message) error {
	h.mu.Lock()
	h.held = append(h.held, m.Settler)
	h.mu.Unlock()
	return nil
}
func (h *holdAll) Revoked([]string) {}

func (h *holdAll) n() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.held) }

// TestBackPressurePauses: with a handler that never settles, the source
// hands over MaxInFlight records, queues at most what one poll brings past
// MaxQueued, pauses the partition, and resumes it once the handler settles.
func TestBackPressurePauses(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "bp", 1)
	var recs []*kgo.Record
	for i := range 2000 {
		recs = append(recs, &kgo.Record{Topic: "bp", Value: []byte(strconv.Itoa(i))})
	}
	c.Produce(t, recs)
	const inFlight, maxQueued = 5, 50
	s, err := NewSource(SourceConfig{Client: ClientConfig{Brokers: c.Brokers}, Topics: []string{"bp"}, Group: "g-bp",
		MaxInFlight: inFlight, MaxQueued: maxQueued, SessionTimeout: 6 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := &holdAll{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, h) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(15 * time.Second)
	for h.n() < inFlight && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // time to overrun, were nothing bounding it
	if got := h.n(); got != inFlight {
		t.Fatalf("%d records handed over, want %d", got, inFlight)
	}
	if q := s.queued.Load(); q > maxQueued*2 {
		t.Errorf("%d records queued, want at most about MaxQueued (%d)", q, maxQueued)
	}
	if paused := s.cl.PauseFetchPartitions(nil); len(paused["bp"]) != 1 {
		t.Errorf("paused partitions %v, want bp/0", paused)
	}
	// Settle as they come: everything flows and the pause is lifted.
	go func() {
		for ctx.Err() == nil {
			h.mu.Lock()
			held := h.held
			h.held = nil
			h.mu.Unlock()
			for _, st := range held {
				_ = st.Ack(ctx)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	deadline = time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		l := s.lanes[tp{"bp", 0}]
		s.mu.Unlock()
		off, _, _ := func() (int64, int32, bool) { l.mu.Lock(); defer l.mu.Unlock(); return l.wm.commit() }()
		if off == 2000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watermark at %d of 2000 after settling everything", off)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if paused := s.cl.PauseFetchPartitions(nil); len(paused) != 0 {
		t.Errorf("partitions still paused after the backlog drained: %v", paused)
	}
}
