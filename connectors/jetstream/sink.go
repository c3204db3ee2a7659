package jetstream

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// SinkConfig configures a Sink.
type SinkConfig struct {
	// Encoding: "record" (default) or "value"; see natsmsg.
	Encoding string
	// Stream, when set, is created with Subjects if it does not exist.
	// Without it, publishing to a subject no stream captures fails with
	// "no responders".
	Stream   string
	Subjects []string
	// MaxPending bounds publishes awaiting their ack; Publish blocks beyond
	// it. Default 4096.
	MaxPending int
	// AckTimeout fails a publish whose ack did not arrive in time (the
	// record may still have been stored; a retry is de-duplicated by
	// Nats-Msg-Id). Default 30s.
	AckTimeout time.Duration
}

// Sink publishes with PublishMsgAsync and calls each done when the
// record's publish ack (or error) arrives. dones are called in arrival order
// from one goroutine of the sink; they must not block.
type Sink struct {
	js    jetstream.JetStream
	cfg   SinkConfig
	enc   *natsmsg.Encoder
	log   *slog.Logger
	slots chan struct{}

	mu       sync.Mutex
	closed   bool
	seq      uint64               // publishes ever registered
	pending  map[*nats.Msg]*entry // awaiting the ack
	waiting  map[uint64]struct{}  // seqs whose done has not run yet
	queue    []*entry             // acked or failed, done not called yet
	progress chan struct{}        // closed and replaced when dones ran
	kick     chan struct{}
	stop     chan struct{}
	stopped  chan struct{}
}

type entry struct {
	seq  uint64
	done func(error)
	buf  *natsmsg.Buffer
	err  error
	subj string
	id   string
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink returns a Sink publishing on nc, creating cfg.Stream if needed.
func NewSink(ctx context.Context, nc *nats.Conn, cfg SinkConfig, logger *slog.Logger) (*Sink, error) {
	enc, err := natsmsg.ParseEncoding(cfg.Encoding)
	if err != nil {
		return nil, fmt.Errorf("jetstream sink: %w", err)
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 4096
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 30 * time.Second
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Sink{
		cfg:      cfg,
		enc:      natsmsg.NewEncoder(enc),
		log:      logger.With("connector", ConnectorName),
		slots:    make(chan struct{}, cfg.MaxPending),
		pending:  make(map[*nats.Msg]*entry),
		waiting:  make(map[uint64]struct{}),
		progress: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	s.js, err = jetstream.New(nc,
		// One more than our own bound: ours blocks first, with ctx.
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending+1),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) { s.complete(m, nil) }),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { s.complete(m, err) }),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream sink: %w", err)
	}
	if cfg.Stream != "" {
		if err := ensureStream(ctx, s.js, logger, cfg.Stream, cfg.Subjects); err != nil {
			return nil, fmt.Errorf("jetstream sink: %w", err)
		}
	}
	go s.completer()
	return s, nil
}

// Publish publishes rec on subject asynchronously. It blocks while
// MaxPending publishes await their ack. rec must not be modified until done
// is called.
func (s *Sink) Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	fail := func(err error) {
		done(fmt.Errorf("jetstream sink: publish record %q to %q: %w", rec.GetId(), subject, err))
	}
	select {
	case s.slots <- struct{}{}:
	default:
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			fail(ctx.Err())
			return
		case <-s.stop:
			fail(connectors.ErrClosed)
			return
		}
	}
	msg, buf, err := s.enc.Encode(subject, rec)
	if err != nil {
		<-s.slots
		fail(err)
		return
	}
	e := &entry{done: done, buf: buf, subj: subject, id: rec.GetId()}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.slots
		s.enc.Release(buf)
		fail(connectors.ErrClosed)
		return
	}
	e.seq = s.seq
	s.seq++
	s.pending[msg] = e
	s.waiting[e.seq] = struct{}{}
	s.mu.Unlock()

	// The ack may arrive (and complete e) before this returns.
	if _, err := s.js.PublishMsgAsync(msg); err != nil {
		s.complete(msg, err)
	}
}

// complete moves the entry of m to the completion queue. Called from the
// ack handlers (which may hold the publisher's lock, so it must not call
// into jetstream) and from Publish.
func (s *Sink) complete(m *nats.Msg, err error) {
	s.mu.Lock()
	e, ok := s.pending[m]
	if ok {
		delete(s.pending, m)
		e.err = err
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	if ok {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// completer calls dones outside of nats.go's locks and goroutines, so a
// done may publish again without deadlocking.
func (s *Sink) completer() {
	defer close(s.stopped)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			s.runQueue()
			return
		}
		s.runQueue()
	}
}

func (s *Sink) runQueue() {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	if len(q) == 0 {
		return
	}
	for _, e := range q {
		if e.err == nil {
			// Acked: nats.go no longer references the body (a retry only
			// happens before the ack).
			s.enc.Release(e.buf)
			e.done(nil)
		} else {
			e.done(fmt.Errorf("jetstream sink: publish record %q to %q: %w", e.id, e.subj, e.err))
		}
		<-s.slots
	}
	s.mu.Lock()
	for _, e := range q {
		delete(s.waiting, e.seq)
	}
	close(s.progress)
	s.progress = make(chan struct{})
	s.mu.Unlock()
}

// Flush waits until the done of every record published before the call
// has been called.
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	target := s.seq
	s.mu.Unlock()
	for {
		s.mu.Lock()
		busy := false
		for seq := range s.waiting {
			if seq < target {
				busy = true
				break
			}
		}
		ch := s.progress
		s.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("jetstream sink: flush: %w", ctx.Err())
		case <-s.stopped:
			return fmt.Errorf("jetstream sink: flush: %w", connectors.ErrClosed)
		}
	}
}

// Close waits up to AckTimeout for pending acks, fails what is left with
// ErrClosed and stops the sink. Later publishes fail with ErrClosed. It is
// idempotent and does not close the connection.
func (s *Sink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.stopped
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AckTimeout)
	err := s.Flush(ctx)
	cancel()

	s.mu.Lock()
	for m, e := range s.pending {
		delete(s.pending, m)
		e.err = connectors.ErrClosed
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	close(s.stop)
	<-s.stopped
	if err != nil {
		s.log.Warn("closed with publishes unconfirmed", "error", err)
	}
	return nil
}
