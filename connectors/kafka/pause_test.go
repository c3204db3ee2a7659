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

// holdAllBatches is holdAll as a BatchHandler.
type holdAllBatches struct{ *holdAll }

func (h holdAllBatches) HandleBatch(ctx context.Context, ms []connectors.Message) (int, error) {
	for _, m := range ms {
		_ = h.Handle(ctx, m)
	}
	return len(ms), nil
}

func (h *holdAll) n() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.held) }

// TestBackPressurePauses: with a handler that never settles, the source
// hands over MaxInFlight records, queues at most what one poll brings past
// MaxQueued, pauses the partition, and resumes it once the handler settles.
func TestBackPressurePauses(t *testing.T) {
	t.Run("one at a time", func(t *testing.T) { testBackPressurePauses(t, false) })
	t.Run("batches", func(t *testing.T) { testBackPressurePauses(t, true) })
}

func testBackPressurePauses(t *testing.T, batch bool) {
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
	var hh connectors.Handler = h
	if batch {
		hh = holdAllBatches{h}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, hh) }()
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

// takeSome is a BatchHandler that takes the first take messages it is
// handed, in its first call, then cancels the run and refuses the rest, as
// a handler does when its ctx ends in the middle of a batch.
type takeSome struct {
	take   int
	cancel context.CancelFunc
	mu     sync.Mutex
	got    []connectors.Message
}

func (h *takeSome) Handle(ctx context.Context, m connectors.Message) error {
	_, err := h.HandleBatch(ctx, []connectors.Message{m})
	return err
}

func (h *takeSome) HandleBatch(ctx context.Context, ms []connectors.Message) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cancel == nil {
		h.got = append(h.got, ms...)
		return len(ms), nil
	}
	n := min(h.take, len(ms))
	h.got = append(h.got, ms[:n]...)
	h.cancel()
	h.cancel = nil
	return n, context.Canceled
}

func (h *takeSome) Revoked([]string) {}

func (h *takeSome) offsets() []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var offs []uint64
	for _, m := range h.got {
		offs = append(offs, m.Record.GetSource().GetOffset())
	}
	return offs
}

// TestBatchNotTaken: records of a batch the handler did not take (its
// ctx ended) are handed again, first and in order, by the next Run, and
// the in-flight slots they held are free again: the commit reaches the end
// once everything taken is acked.
func TestBatchNotTaken(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "nt", 1)
	var recs []*kgo.Record
	for i := range 50 {
		recs = append(recs, &kgo.Record{Topic: "nt", Value: []byte(strconv.Itoa(i))})
	}
	c.Produce(t, recs)
	for _, take := range []int{0, 3} {
		t.Run("take "+strconv.Itoa(take), func(t *testing.T) {
			s, err := NewSource(SourceConfig{Client: ClientConfig{Brokers: c.Brokers}, Topics: []string{"nt"}, Group: "g-nt-" + strconv.Itoa(take),
				MaxInFlight: 20, SessionTimeout: 6 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx, cancel := context.WithCancel(context.Background())
			h := &takeSome{take: take, cancel: cancel}
			if err := s.Run(ctx, h); err != nil {
				t.Fatal(err)
			}
			first := h.offsets()
			if len(first) != take {
				t.Fatalf("the first run handed %v, want the first %d records", first, take)
			}
			ctx, cancel = context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx, h) }()
			defer func() { cancel(); <-done }()
			deadline := time.Now().Add(20 * time.Second)
			for {
				h.mu.Lock()
				for _, m := range h.got {
					_ = m.Settler.Ack(ctx) // again for the acked ones: ErrSettled
				}
				n := len(h.got)
				h.mu.Unlock()
				if n >= 50 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d records handed, want 50", n)
				}
				time.Sleep(10 * time.Millisecond)
			}
			offs := h.offsets()
			for i, off := range offs {
				if off != uint64(i) {
					t.Fatalf("handed offsets %v, want 0 to 49 once each, in order", offs)
				}
			}
			s.mu.Lock()
			l := s.lanes[tp{"nt", 0}]
			s.mu.Unlock()
			for {
				off, _, _ := func() (int64, int32, bool) { l.mu.Lock(); defer l.mu.Unlock(); return l.wm.commit() }()
				if off == 50 && s.sem.used.Load() == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("watermark at %d, %d slots in use, want 50 and 0", off, s.sem.used.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
