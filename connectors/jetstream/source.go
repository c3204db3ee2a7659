// Package jetstream is the NATS JetStream connector: a Source reading a
// durable pull consumer with explicit acks (optionally shared by several
// processes through a pinned-client priority group), and a Sink publishing
// asynchronously and confirming each record with its publish ack. It owns
// stream and consumer provisioning and the ack/nak mechanics; the Record
// mapping lives in natsmsg, and the connection belongs to the caller (it is
// never closed here).
//
// Record ids are "js:<stream>:<stream sequence>", stable across
// redeliveries, unless the message body is a record-encoded Record that
// already has an id. The sink sets Nats-Msg-Id to the record id, so a record
// republished after a redelivery is dropped by the stream's duplicate
// window.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// ConnectorName is Record.Source.Connector for this source.
const ConnectorName = "jetstream"

// SourceConfig configures a Source.
type SourceConfig struct {
	// Stream to read. Created with Subjects if it does not exist; an
	// existing stream is used as it is.
	Stream   string
	Subjects []string
	// Durable consumer name. Required. The consumer is created, or updated
	// to this configuration.
	Durable string
	// FilterSubjects narrows the consumer, optional.
	FilterSubjects []string
	// DeliverPolicy for a new consumer: "all" (default), "new", "last",
	// "last_per_subject". It cannot change on an existing consumer.
	DeliverPolicy string
	// MaxInFlight is the consumer's MaxAckPending: the server delivers no
	// more un-acked messages than this. Default 1024.
	MaxInFlight int
	// AckWait before the server redelivers an unsettled message. Default 30s.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one message; 0 means unlimited.
	MaxDeliver int
	// FetchBatch is how many messages one pull requests (PullMaxMessages).
	// Default 256, at most MaxInFlight.
	FetchBatch int
	// AckSync makes Ack wait for the server's confirmation (DoubleAck).
	// It costs a round trip per message; the default fire-and-forget ack
	// can be lost, and the message is then redelivered after AckWait.
	AckSync bool
	// Group, when set, makes the consumer a pinned-client priority group
	// of that name (nats-server 2.11+): of the processes reading the
	// durable, the server hands messages to one at a time (the pinned
	// client), and pins another once the holder sent no pull request for
	// PinnedTTL. One key's messages are then never processed by two
	// processes at once.
	Group string
	// PinnedTTL is the consumer's PinnedTTL; default 10s, at least 3s.
	// The holder sends a pull request at least every third of it, so it is
	// unpinned no sooner than two thirds of it after it died; AckWait must
	// be at most that, so that what a dead holder had not acked is due for
	// redelivery before another process is pinned, and is handed to it
	// ahead of newer messages.
	PinnedTTL time.Duration
}

// Source reads a durable pull consumer. Handle is called from one
// goroutine, in stream order (redeliveries come back out of order).
type Source struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
	cfg  SourceConfig
	log  *slog.Logger

	closed atomic.Bool
	mu     sync.Mutex
	run    context.CancelFunc    // non-nil while Run runs
	ran    chan struct{}         // closed when that Run has returned
	out    map[*settler]struct{} // handed over, not settled
	pin    string                // the pin id of the last message (pinned group only)
}

var _ connectors.Source = (*Source)(nil)

// NewSource provisions the stream and the durable consumer.
func NewSource(ctx context.Context, nc *nats.Conn, cfg SourceConfig, logger *slog.Logger) (*Source, error) {
	if cfg.Stream == "" || cfg.Durable == "" {
		return nil, fmt.Errorf("jetstream source: stream %q, durable %q: both are required", cfg.Stream, cfg.Durable)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.FetchBatch <= 0 {
		cfg.FetchBatch = 256
	}
	cfg.FetchBatch = min(cfg.FetchBatch, cfg.MaxInFlight)
	if cfg.Group != "" {
		if cfg.PinnedTTL <= 0 {
			cfg.PinnedTTL = 10 * time.Second
		}
		// The holder pulls every third of the ttl (pullExpiry), so it is
		// unpinned no sooner than two thirds of the ttl after it died.
		if cfg.PinnedTTL < 3*time.Second || 3*cfg.AckWait > 2*cfg.PinnedTTL {
			return nil, fmt.Errorf("jetstream source: stream %q consumer %q: group %q: pinned ttl %s must be at least 3s and ack_wait %s at most two thirds of it, or a dead holder's un-acked messages may be handed to the next holder after newer ones", cfg.Stream, cfg.Durable, cfg.Group, cfg.PinnedTTL, cfg.AckWait)
		}
	}
	maxDeliver := cfg.MaxDeliver
	if maxDeliver <= 0 {
		maxDeliver = -1
	}
	policy, err := deliverPolicy(cfg.DeliverPolicy)
	if err != nil {
		return nil, fmt.Errorf("jetstream source: stream %q consumer %q: %w", cfg.Stream, cfg.Durable, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream source: stream %q: %w", cfg.Stream, err)
	}
	if err := ensureStream(ctx, js, logger, cfg.Stream, cfg.Subjects); err != nil {
		return nil, fmt.Errorf("jetstream source: %w", err)
	}
	ccfg := jetstream.ConsumerConfig{
		Durable:        cfg.Durable,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxAckPending:  cfg.MaxInFlight,
		MaxDeliver:     maxDeliver,
		DeliverPolicy:  policy,
		FilterSubjects: cfg.FilterSubjects,
	}
	if cfg.Group != "" {
		ccfg.PriorityPolicy = jetstream.PriorityPolicyPinned
		ccfg.PriorityGroups = []string{cfg.Group}
		ccfg.PinnedTTL = cfg.PinnedTTL
	}
	if len(ccfg.FilterSubjects) == 1 {
		ccfg.FilterSubject, ccfg.FilterSubjects = ccfg.FilterSubjects[0], nil
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, ccfg)
	if err != nil {
		return nil, fmt.Errorf("jetstream source: stream %q: create consumer %q: %w", cfg.Stream, cfg.Durable, err)
	}
	return &Source{
		js:   js,
		cons: cons,
		cfg:  cfg,
		log:  logger.With("connector", ConnectorName, "stream", cfg.Stream, "consumer", cfg.Durable),
		out:  make(map[*settler]struct{}),
	}, nil
}

func deliverPolicy(s string) (jetstream.DeliverPolicy, error) {
	switch s {
	case "", "all":
		return jetstream.DeliverAllPolicy, nil
	case "new":
		return jetstream.DeliverNewPolicy, nil
	case "last":
		return jetstream.DeliverLastPolicy, nil
	case "last_per_subject":
		return jetstream.DeliverLastPerSubjectPolicy, nil
	}
	return 0, fmt.Errorf("unknown deliver policy %q (want all, new, last, last_per_subject)", s)
}

// ensureStream uses stream name, or creates it with subjects.
func ensureStream(ctx context.Context, js jetstream.JetStream, log *slog.Logger, name string, subjects []string) error {
	st, err := js.Stream(ctx, name)
	if err == nil {
		if len(subjects) > 0 {
			have := st.CachedInfo().Config.Subjects
			for _, s := range subjects {
				if !slices.Contains(have, s) {
					// Used as it is: widening someone else's stream is not ours to do.
					log.Warn("existing stream lacks a configured subject", "stream", name, "subject", s, "stream_subjects", have)
				}
			}
		}
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %q: %w", name, err)
	}
	if len(subjects) == 0 {
		return fmt.Errorf("stream %q does not exist and no subjects are configured to create it", name)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: subjects, Storage: jetstream.FileStorage})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil // created concurrently
	}
	if err != nil {
		return fmt.Errorf("create stream %q with subjects %q: %w", name, subjects, err)
	}
	return nil
}

// drainWait bounds how long Run, when cancelled, collects prefetched
// messages to nak them.
const drainWait = time.Second

// Run hands messages to h until ctx is cancelled or Close is called (then
// it returns nil), or the consumer fails. On the way out, messages that were
// prefetched but not handed over are nak'd, so they are redelivered at once
// instead of after AckWait. Run may be called again after it returned.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fmt.Errorf("jetstream source: stream %q consumer %q: %w", s.cfg.Stream, s.cfg.Durable, connectors.ErrClosed)
	}
	if s.run != nil {
		s.mu.Unlock()
		return fmt.Errorf("jetstream source: stream %q consumer %q: already running", s.cfg.Stream, s.cfg.Durable)
	}
	ctx, cancel := context.WithCancel(ctx)
	s.run = cancel
	ran := make(chan struct{})
	s.ran = ran
	s.mu.Unlock()
	defer func() {
		cancel()
		s.mu.Lock()
		s.run, s.ran = nil, nil
		s.mu.Unlock()
		close(ran)
	}()

	// Pull requests live defaultPullExpiry (nats.go's own default is 30s),
	// with heartbeats at half of that. Should the server hold no request of
	// ours while nats.go believes one is open (a consumer with messages
	// pending, nothing un-acked and no waiting pull, its iterator blocked),
	// the missing heartbeats make the iterator forget what it thought was
	// pending and pull again: such a stall lasts two heartbeats, not for
	// good. A missed heartbeat is not an error that stops the input.
	expiry := defaultPullExpiry
	if s.cfg.Group != "" {
		// The server keeps the pin while the holder's pull requests keep
		// coming: an expiring request is renewed at least every third of
		// the ttl, also while the consumer has nothing to deliver (and
		// heartbeats come every 500ms for a 3s ttl).
		expiry = pullExpiry(s.cfg.PinnedTTL)
	}
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(s.cfg.FetchBatch), jetstream.PullExpiry(expiry),
		jetstream.WithMessagesErrOnMissingHeartbeat(false)}
	if s.cfg.Group != "" {
		opts = append(opts, jetstream.PullPriorityGroup(s.cfg.Group))
	}
	it, err := s.cons.Messages(opts...)
	if err != nil {
		return fmt.Errorf("jetstream source: stream %q consumer %q: %w", s.cfg.Stream, s.cfg.Durable, err)
	}
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				s.giveBack(it)
				return nil
			}
			it.Stop()
			return fmt.Errorf("jetstream source: stream %q consumer %q: %w", s.cfg.Stream, s.cfg.Durable, err)
		}
		if s.cfg.Group != "" {
			s.pinned(m)
		}
		st, msg := s.message(m)
		if err := h.Handle(ctx, msg); err != nil {
			// Not taken: give it back now.
			if st.claim() {
				s.nak(st.m, 0)
			}
			s.giveBack(it)
			return nil
		}
	}
}

// pullExpiry is how long a pull request of a pinned group lives: a third
// of the pin's ttl (at least 3s, so at least nats.go's minimum of 1s).
func pullExpiry(ttl time.Duration) time.Duration { return ttl / 3 }

// defaultPullExpiry is how long a pull request lives without a group.
const defaultPullExpiry = 5 * time.Second

// pinHeader carries the pin id on the messages of a pinned group.
const pinHeader = "Nats-Pin-Id"

// pinned logs when this process becomes the group's pinned client, and
// takes the pin id off the message: it is the broker's, not the record's.
func (s *Source) pinned(m jetstream.Msg) {
	id := m.Headers().Get(pinHeader)
	if id == "" {
		return
	}
	m.Headers().Del(pinHeader)
	s.mu.Lock()
	changed := id != s.pin
	s.pin = id
	s.mu.Unlock()
	if changed {
		s.log.Info("pinned: this process now gets the consumer's messages", "group", s.cfg.Group, "pin_id", id)
	}
}

// unpin releases the pin when this process still holds it, so that a
// waiting process is pinned at once instead of after the ttl.
func (s *Source) unpin() {
	s.mu.Lock()
	pin := s.pin
	s.pin = ""
	s.mu.Unlock()
	if pin == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := s.cons.Info(ctx)
	if err != nil {
		s.log.Debug("consumer info for unpinning failed; the pin moves after its ttl", "error", err)
		return
	}
	held := false
	for _, g := range info.PriorityGroups {
		held = held || (g.Group == s.cfg.Group && g.PinnedClientID == pin)
	}
	if !held {
		return
	}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err == nil {
		err = st.UnpinConsumer(ctx, s.cfg.Durable, s.cfg.Group)
	}
	if err != nil {
		s.log.Debug("unpin failed; the pin moves after its ttl", "error", err)
		return
	}
	s.log.Info("unpinned: another process may take the consumer", "group", s.cfg.Group)
}

// message builds the Message for m and tracks its settler.
func (s *Source) message(m jetstream.Msg) (*settler, connectors.Message) {
	rec, err := natsmsg.Decode(m.Headers(), m.Data())
	if err != nil {
		s.log.Warn("undecodable record body, delivering it as a raw value", "subject", m.Subject(), "error", err)
		rec = natsmsg.DecodeRaw(m.Headers(), m.Data())
	}
	pos := &culvertv1.Position{Connector: ConnectorName, Stream: s.cfg.Stream, Subject: m.Subject()}
	delivery := 0
	if md, err := m.Metadata(); err == nil {
		pos.Stream = md.Stream
		pos.Offset = md.Sequence.Stream
		delivery = int(md.NumDelivered)
	} else {
		s.log.Warn("message without JetStream metadata", "subject", m.Subject(), "error", err)
	}
	rec.Source = pos
	if rec.Id == "" {
		rec.Id = "js:" + pos.Stream + ":" + strconv.FormatUint(pos.Offset, 10)
	}
	st := &settler{s: s, m: m, seq: pos.Offset}
	s.mu.Lock()
	s.out[st] = struct{}{}
	s.mu.Unlock()
	return st, connectors.Message{Record: rec, Settler: st, Delivery: delivery}
}

// giveBack stops the iterator and naks what it had prefetched.
func (s *Source) giveBack(it jetstream.MessagesContext) {
	it.Drain()
	deadline := time.Now().Add(drainWait)
	n := 0
	for {
		left := time.Until(deadline)
		if left <= 0 {
			it.Stop()
			break
		}
		m, err := it.Next(jetstream.NextMaxWait(left))
		if err != nil {
			break
		}
		s.nak(m, 0)
		n++
	}
	if n > 0 {
		s.log.Debug("nak'd prefetched messages on stop", "count", n)
	}
}

func (s *Source) nak(m jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = m.NakWithDelay(delay)
	} else {
		err = m.Nak()
	}
	if err != nil {
		s.log.Debug("nak failed; the server redelivers after AckWait", "subject", m.Subject(), "error", err)
	}
}

// Close stops Run and naks every message handed over and not settled, so
// that the next consumer gets them at once. Settlements after Close return
// ErrClosed. Close is idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	if !s.closed.CompareAndSwap(false, true) {
		s.mu.Unlock()
		return nil
	}
	if s.run != nil {
		s.run()
	}
	ran := s.ran
	out := s.out
	s.out = nil
	s.mu.Unlock()
	for st := range out {
		if st.claim() {
			s.nak(st.m, 0)
		}
	}
	if s.cfg.Group != "" {
		// Unpin only once a running Run has given back what it had
		// prefetched: the next holder must not get newer messages while
		// those are still out here.
		if ran != nil {
			select {
			case <-ran:
			case <-time.After(drainWait + time.Second):
			}
		}
		s.unpin()
	}
	return nil
}

type settler struct {
	s    *Source
	m    jetstream.Msg
	seq  uint64
	done atomic.Bool
}

// claim marks st settled; false if it already was.
func (st *settler) claim() bool {
	if !st.done.CompareAndSwap(false, true) {
		return false
	}
	st.s.mu.Lock()
	delete(st.s.out, st)
	st.s.mu.Unlock()
	return true
}

func (st *settler) check() error {
	if st.s.closed.Load() {
		return st.errorf(connectors.ErrClosed)
	}
	if !st.claim() {
		if st.s.closed.Load() {
			return st.errorf(connectors.ErrClosed)
		}
		return st.errorf(connectors.ErrSettled)
	}
	return nil
}

func (st *settler) errorf(err error) error {
	return fmt.Errorf("jetstream source: stream %q consumer %q seq %d: %w", st.s.cfg.Stream, st.s.cfg.Durable, st.seq, err)
}

// Ack acknowledges the message (DoubleAck when AckSync).
func (st *settler) Ack(ctx context.Context) error {
	if err := st.check(); err != nil {
		return err
	}
	var err error
	if st.s.cfg.AckSync {
		err = st.m.DoubleAck(ctx)
	} else {
		err = st.m.Ack()
	}
	if err != nil {
		return st.errorf(fmt.Errorf("ack: %w", err))
	}
	return nil
}

// Nak asks for a redelivery after delay (at once when delay <= 0).
func (st *settler) Nak(_ context.Context, delay time.Duration) error {
	if err := st.check(); err != nil {
		return err
	}
	var err error
	if delay > 0 {
		err = st.m.NakWithDelay(delay)
	} else {
		err = st.m.Nak()
	}
	if err != nil {
		return st.errorf(fmt.Errorf("nak: %w", err))
	}
	return nil
}
