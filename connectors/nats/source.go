// Package nats is the NATS core connector: a Source that subscribes to
// subjects (optionally in a queue group) and a Sink that publishes and
// confirms with a flush round trip. It owns only the subscription and
// publish mechanics; the Record mapping lives in natsmsg, the connection
// belongs to the caller (it is never closed here).
//
// NATS core is at-most-once at the broker: a message is lost when no
// subscription exists, when the client's pending buffer overflows (slow
// consumer, logged), or when a process dies with messages in hand. Ack is a
// no-op; Nak cannot redeliver and only logs.
package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// ConnectorName is Record.Source.Connector for this source.
const ConnectorName = "nats"

// SourceConfig configures a Source.
type SourceConfig struct {
	// Subjects to subscribe to (wildcards allowed). At least one.
	Subjects []string
	// QueueGroup, when set, shares the subjects among the group's members.
	QueueGroup string
	// MaxInFlight bounds messages handed to the Handler and not yet
	// settled, across all subjects. Default 1024.
	MaxInFlight int
	// PendingMsgs and PendingBytes bound the client-side buffer of each
	// subscription while the handler applies back-pressure; beyond them
	// NATS drops messages (slow consumer). Defaults 65536 and 64 MiB.
	PendingMsgs  int
	PendingBytes int
}

// Source subscribes to NATS core subjects.
//
// The subscriptions are made by NewSource, so every message published
// after NewSource returns is buffered (within the pending limits) until Run
// hands it over. Each subscription has its own goroutine: Handle is called
// in order for one subscription, and concurrently across subscriptions.
type Source struct {
	nc    *nats.Conn
	cfg   SourceConfig
	log   *slog.Logger
	subs  []*nats.Subscription
	slots chan struct{}

	closed atomic.Bool
	mu     sync.Mutex
	run    context.CancelFunc // non-nil while Run runs
}

var _ connectors.Source = (*Source)(nil)

// NewSource subscribes to cfg.Subjects on nc and waits for the server to
// register the subscriptions.
func NewSource(nc *nats.Conn, cfg SourceConfig, logger *slog.Logger) (*Source, error) {
	if len(cfg.Subjects) == 0 {
		return nil, errors.New("nats source: no subjects")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if cfg.PendingMsgs <= 0 {
		cfg.PendingMsgs = 65536
	}
	if cfg.PendingBytes <= 0 {
		cfg.PendingBytes = 64 << 20
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Source{
		nc:    nc,
		cfg:   cfg,
		log:   logger.With("connector", ConnectorName),
		slots: make(chan struct{}, cfg.MaxInFlight),
	}
	for _, subj := range cfg.Subjects {
		var sub *nats.Subscription
		var err error
		if cfg.QueueGroup != "" {
			sub, err = nc.QueueSubscribeSync(subj, cfg.QueueGroup)
		} else {
			sub, err = nc.SubscribeSync(subj)
		}
		if err == nil {
			err = sub.SetPendingLimits(cfg.PendingMsgs, cfg.PendingBytes)
		}
		if err != nil {
			s.unsubscribe()
			return nil, fmt.Errorf("nats source: subscribe to %q (queue %q): %w", subj, cfg.QueueGroup, err)
		}
		s.subs = append(s.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		s.unsubscribe()
		return nil, fmt.Errorf("nats source: subscribe to %q: flush: %w", cfg.Subjects, err)
	}
	return s, nil
}

// Run hands messages to h until ctx is cancelled or Close is called (then
// it returns nil), or a subscription fails. Run may be called again after it
// returned; it must not run twice at once.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fmt.Errorf("nats source %q: %w", s.cfg.Subjects, connectors.ErrClosed)
	}
	if s.run != nil {
		s.mu.Unlock()
		return fmt.Errorf("nats source %q: already running", s.cfg.Subjects)
	}
	ctx, cancel := context.WithCancel(ctx)
	s.run = cancel
	s.mu.Unlock()
	defer func() {
		cancel()
		s.mu.Lock()
		s.run = nil
		s.mu.Unlock()
	}()

	errs := make(chan error, len(s.subs))
	for _, sub := range s.subs {
		go func() { errs <- s.consume(ctx, sub, h) }()
	}
	var first error
	for range s.subs {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel() // stop the other subscriptions
		}
	}
	return first
}

func (s *Source) consume(ctx context.Context, sub *nats.Subscription, h connectors.Handler) error {
	ids := nuid.New() // one per goroutine: nuid.NUID is not safe for concurrent use
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			switch {
			case ctx.Err() != nil || s.closed.Load():
				return nil
			case errors.Is(err, nats.ErrSlowConsumer):
				dropped, _ := sub.Dropped()
				s.log.Warn("slow consumer: NATS dropped messages", "subject", sub.Subject, "dropped_total", dropped)
				continue
			}
			return fmt.Errorf("nats source: subject %q: %w", sub.Subject, err)
		}
		// Back-pressure: wait for a free in-flight slot. Messages keep
		// arriving into the subscription's pending buffer meanwhile.
		select {
		case s.slots <- struct{}{}:
		default:
			select {
			case s.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
		rec, err := natsmsg.Decode(m.Header, m.Data)
		if err != nil {
			s.log.Warn("undecodable record body, delivering it as a raw value", "subject", m.Subject, "error", err)
			rec = natsmsg.DecodeRaw(m.Header, m.Data)
		}
		rec.Source = &culvertv1.Position{Connector: ConnectorName, Subject: m.Subject}
		if rec.Id == "" {
			rec.Id = "nats:" + ids.Next()
		}
		st := &settler{s: s, subject: m.Subject}
		if err := h.Handle(ctx, connectors.Message{Record: rec, Settler: st}); err != nil {
			st.settle() // not taken: give the slot back
			return nil
		}
	}
}

// Close unsubscribes and stops Run. Settlements after Close return
// ErrClosed. Close is idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if s.run != nil {
		s.run()
	}
	s.unsubscribe()
	return nil
}

func (s *Source) unsubscribe() {
	for _, sub := range s.subs {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			s.log.Warn("unsubscribe failed", "subject", sub.Subject, "error", err)
		}
	}
}

type settler struct {
	s       *Source
	subject string
	done    atomic.Bool
}

func (st *settler) settle() error {
	if !st.done.CompareAndSwap(false, true) {
		return fmt.Errorf("nats source: subject %q: %w", st.subject, connectors.ErrSettled)
	}
	<-st.s.slots
	if st.s.closed.Load() {
		return fmt.Errorf("nats source: subject %q: %w", st.subject, connectors.ErrClosed)
	}
	return nil
}

// Ack releases the in-flight slot; NATS core has nothing to acknowledge.
func (st *settler) Ack(context.Context) error { return st.settle() }

// Nak releases the slot and logs at debug: NATS core cannot redeliver.
func (st *settler) Nak(_ context.Context, delay time.Duration) error {
	if err := st.settle(); err != nil {
		return err
	}
	st.s.log.Debug("nak ignored: NATS core cannot redeliver", "subject", st.subject, "delay", delay)
	return nil
}
