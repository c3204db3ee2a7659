// Package memory is the in-process connector: a Source that hands over
// records from an iterator (a slice, a tap file being read, a paced
// replay) and a Sink that keeps what it is given. It owns nothing on disk
// and talks to no broker; `culvert test`, `culvert replay --dry-run` and
// `culvert diff` swap a pipeline's connectors for these.
//
// The Source keeps each record's Source position as given (a captured
// record stays "from" its original subject, partition and offset), and
// fills one in only when a record has none. It cannot redeliver: Nak frees
// the in-flight slot and records the message as given back, so a caller can
// report it instead of losing it.
package memory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Connector is the name set in Record.Source.Connector for records that
// carry no position of their own.
const Connector = "memory"

// Next returns the next record to deliver, or io.EOF at the end. It is
// called from one goroutine; it may block (pacing) and must return when ctx
// is done.
type Next func(ctx context.Context) (*culvertv1.Record, error)

// Slice returns a Next that yields recs in order. The records are handed
// over as they are, not copied.
func Slice(recs []*culvertv1.Record) Next {
	i := 0
	return func(context.Context) (*culvertv1.Record, error) {
		if i >= len(recs) {
			return nil, io.EOF
		}
		i++
		return recs[i-1], nil
	}
}

// SourceConfig configures a Source.
type SourceConfig struct {
	// Name identifies the source in errors and logs, and in ids made up for
	// records without one ("<Name>:<n>"). Default "memory".
	Name string
	// Next yields the records. Required.
	Next Next
	// MaxInFlight bounds records handed over and not settled. Default 1024.
	MaxInFlight int
}

// Settlement is how one delivered record was settled.
type Settlement struct {
	Record *culvertv1.Record
	// Acked is true for Ack, false for Nak.
	Acked bool
}

// Source delivers the records of Next in order, from one goroutine, then
// returns nil. It runs once.
type Source struct {
	cfg   SourceConfig
	log   *slog.Logger
	slots chan struct{}

	closed atomic.Bool
	mu     sync.Mutex
	ran    bool
	cancel context.CancelFunc
	naked  []*culvertv1.Record
	acked  int
}

var _ connectors.Source = (*Source)(nil)

// NewSource returns a Source reading cfg.Next.
func NewSource(cfg SourceConfig, logger *slog.Logger) (*Source, error) {
	if cfg.Next == nil {
		return nil, errors.New("memory source: no records (Next is nil)")
	}
	if cfg.Name == "" {
		cfg.Name = Connector
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Source{cfg: cfg, log: logger.With("connector", Connector, "source", cfg.Name), slots: make(chan struct{}, cfg.MaxInFlight)}, nil
}

// Run hands every record of Next to h, in order. It returns nil at the end
// of Next (settlements may still follow), nil when ctx is cancelled or the
// source closed, and the error of Next otherwise.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	switch {
	case s.closed.Load():
		s.mu.Unlock()
		return fmt.Errorf("memory source %s: %w", s.cfg.Name, connectors.ErrClosed)
	case s.ran:
		s.mu.Unlock()
		return fmt.Errorf("memory source %s: a memory source runs only once", s.cfg.Name)
	}
	s.ran = true
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.mu.Unlock()
	defer cancel()

	var n uint64
	for {
		rec, err := s.cfg.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		n++
		if err != nil {
			return fmt.Errorf("memory source %s: record %d: %w", s.cfg.Name, n, err)
		}
		if rec.Source == nil {
			rec.Source = &culvertv1.Position{Connector: Connector, Offset: n}
		}
		if rec.Id == "" {
			rec.Id = s.cfg.Name + ":" + strconv.FormatUint(n, 10)
		}
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		st := &settler{s: s, rec: rec}
		if err := h.Handle(ctx, connectors.Message{Record: rec, Settler: st}); err != nil {
			// Not taken: the handler was stopped. The record is given back.
			_ = st.Nak(context.Background(), 0)
			return nil
		}
	}
}

// Close stops Run. Settlements after Close return ErrClosed. Idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.CompareAndSwap(false, true) && s.cancel != nil {
		s.cancel()
	}
	return nil
}

// Acked counts the records acked so far.
func (s *Source) Acked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// GivenBack returns the records naked so far (failed for good without a
// dead-letter output, or abandoned at shutdown), in settlement order.
func (s *Source) GivenBack() []*culvertv1.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*culvertv1.Record(nil), s.naked...)
}

type settler struct {
	s    *Source
	rec  *culvertv1.Record
	done atomic.Bool
}

func (st *settler) settle(acked bool) error {
	if !st.done.CompareAndSwap(false, true) {
		return fmt.Errorf("memory source %s: record %s: %w", st.s.cfg.Name, st.rec.GetId(), connectors.ErrSettled)
	}
	<-st.s.slots
	if st.s.closed.Load() {
		return fmt.Errorf("memory source %s: record %s: %w", st.s.cfg.Name, st.rec.GetId(), connectors.ErrClosed)
	}
	st.s.mu.Lock()
	if acked {
		st.s.acked++
	} else {
		st.s.naked = append(st.s.naked, st.rec)
	}
	st.s.mu.Unlock()
	return nil
}

// Ack frees the record's in-flight slot.
func (st *settler) Ack(context.Context) error { return st.settle(true) }

// Nak frees the slot and records the message as given back: memory cannot
// redeliver.
func (st *settler) Nak(_ context.Context, delay time.Duration) error {
	err := st.settle(false)
	if err == nil {
		st.s.log.Debug("record given back; a memory source cannot redeliver", "record", st.rec.GetId(), "delay", delay)
	}
	return err
}

// Published is one record a Sink confirmed.
type Published struct {
	// Subject the record was published to ("" for outputs without one).
	Subject string
	// Record is a copy taken at Publish.
	Record *culvertv1.Record
}

// SinkConfig configures a Sink.
type SinkConfig struct {
	// Name identifies the sink in errors. Default "memory".
	Name string
	// OnPublish, if set, sees every record as it is confirmed, in order
	// (e.g. to print a dry run as it goes). It runs on the sink's
	// goroutine and must not block for long.
	OnPublish func(Published)
	// Discard drops records after OnPublish instead of keeping them for
	// Records (long replays). Default: keep them.
	Discard bool
}

// Sink keeps what is published, in order, and confirms each record once it
// is stored. done runs on the sink's own goroutine, never inside Publish.
type Sink struct {
	cfg SinkConfig

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []pending
	recs    []Published
	count   int
	pending int // published, done not yet called
	closed  bool
	stopped chan struct{}
}

type pending struct {
	p    Published
	done func(error)
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink returns a running Sink.
func NewSink(cfg SinkConfig) *Sink {
	if cfg.Name == "" {
		cfg.Name = Connector
	}
	s := &Sink{cfg: cfg, stopped: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.loop()
	return s
}

// Publish stores a copy of rec and calls done(nil) from the sink's
// goroutine. After Close, done gets ErrClosed.
func (s *Sink) Publish(_ context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	p := Published{Subject: subject, Record: proto.Clone(rec).(*culvertv1.Record)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		go done(fmt.Errorf("memory sink %s: %w", s.cfg.Name, connectors.ErrClosed))
		return
	}
	s.pending++
	s.queue = append(s.queue, pending{p: p, done: done})
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *Sink) loop() {
	defer close(s.stopped)
	s.mu.Lock()
	for {
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return
		}
		q := s.queue
		s.queue = nil
		for _, it := range q {
			if !s.cfg.Discard {
				s.recs = append(s.recs, it.p)
			}
			s.count++
		}
		s.mu.Unlock()
		for _, it := range q {
			if s.cfg.OnPublish != nil {
				s.cfg.OnPublish(it.p)
			}
			it.done(nil)
		}
		s.mu.Lock()
		s.pending -= len(q)
		s.cond.Broadcast()
	}
}

// Flush waits until every record published so far is confirmed.
func (s *Sink) Flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.pending > 0 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("memory sink %s: flush: %w", s.cfg.Name, err)
		}
		s.cond.Wait()
	}
	return nil
}

// Close confirms what is queued, then refuses further publishes.
// Idempotent.
func (s *Sink) Close() error {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	<-s.stopped
	return nil
}

// Records returns the confirmed records so far, in confirmation order.
func (s *Sink) Records() []Published {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Published(nil), s.recs...)
}

// Count is the number of records confirmed so far.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}
