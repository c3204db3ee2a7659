package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkamsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// TxnConfig configures an exactly-once Kafka -> Kafka pair (NewTxn).
type TxnConfig struct {
	Client ClientConfig
	// Topics to consume and Group to consume them in. Required.
	Topics []string
	Group  string
	// TransactionalID identifies this producer across restarts; a restarted
	// process with the same id fences the old one and aborts its open
	// transaction. Unique per running instance. Required.
	TransactionalID string
	// Start as for SourceConfig.
	Start string
	// BatchMax bounds the records of one transaction; default 1000.
	BatchMax int
	// Encoding of the sink, as for SinkConfig.
	Encoding string
	// SessionTimeout and RebalanceTimeout as for SourceConfig; zero:
	// kgo's defaults (45s, 60s).
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
}

// NewTxn returns a Source and a Sink sharing one franz-go
// GroupTransactSession: every batch the source polls is handed over inside
// a transaction, the sink's records join it, and the batch's offsets are
// committed in the same transaction once every record of the batch was
// acked. A nak, a revocation or a failure aborts the transaction: its
// outputs never become visible to read_committed consumers and the batch
// is fetched again from the committed offsets. Consumers of the output must
// read with isolation level read_committed.
//
// The sink accepts records only while the source's transaction is open
// (that is, for outputs derived from the records the source handed over);
// other publishes fail with ErrNoTransaction.
func NewTxn(cfg TxnConfig, logger *slog.Logger) (*TxnSource, *TxnSink, error) {
	if len(cfg.Topics) == 0 || cfg.Group == "" || cfg.TransactionalID == "" {
		return nil, nil, fmt.Errorf("kafka transactional source: topics %q, group %q, transactional id %q: all are required", cfg.Topics, cfg.Group, cfg.TransactionalID)
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = 1000
	}
	start, err := ParseStart(cfg.Start)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka transactional source: %w", err)
	}
	enc, err := kafkamsg.ParseEncoding(cfg.Encoding)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka transactional sink: %w", err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	log := logger.With("connector", ConnectorName, "group", cfg.Group, "transactional_id", cfg.TransactionalID)
	opts, err := cfg.Client.opts(log)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka transactional source: %w", err)
	}
	opts = append(opts,
		kgo.TransactionalID(cfg.TransactionalID),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.ConsumeResetOffset(start),
		kgo.FetchMaxWait(100*time.Millisecond),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	)
	opts = append(opts, groupTiming(cfg.SessionTimeout, cfg.RebalanceTimeout)...)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka transactional source: group %q: %w", cfg.Group, err)
	}
	src := &TxnSource{cfg: cfg, log: log, sess: sess}
	return src, &TxnSink{src: src, enc: kafkamsg.NewEncoder(enc)}, nil
}

// ErrNoTransaction fails a transactional publish made while no transaction
// of the paired source is open.
var ErrNoTransaction = errors.New("no open transaction: the transactional sink only takes outputs of records its source handed over")

// TxnSource is the source half of NewTxn.
type TxnSource struct {
	cfg  TxnConfig
	log  *slog.Logger
	sess *kgo.GroupTransactSession

	closed  atomic.Bool
	running atomic.Bool
	mu      sync.Mutex
	batch   *txnBatch // open transaction, nil between transactions
	prev    *txnBatch // batch aborted with records in flight (Run's goroutine only)
	cancel  context.CancelFunc
	once    sync.Once
}

var _ connectors.Source = (*TxnSource)(nil)

// txnBatch is one transaction: the records handed over and their
// settlements.
type txnBatch struct {
	mu      sync.Mutex
	pending int
	failed  bool
	delay   time.Duration
	done    chan struct{} // closed when pending reaches 0 after handing ended
	handing bool
	over    bool // ended: settlements are ignored
}

func (b *txnBatch) settle(ack bool, delay time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	// After the transaction ended (aborted at shutdown) the outcome no
	// longer matters, but the count still does: see transact.
	if !ack && !b.over {
		b.failed = true
		b.delay = max(b.delay, delay)
	}
	b.pending--
	if b.pending == 0 && !b.handing {
		close(b.done)
	}
	return nil
}

// Run polls batches and runs each in a transaction until ctx is done or
// Close (then it returns nil). An open transaction is aborted on the way
// out.
func (s *TxnSource) Run(ctx context.Context, h connectors.Handler) error {
	if s.closed.Load() {
		return fmt.Errorf("kafka transactional source: group %q: %w", s.cfg.Group, connectors.ErrClosed)
	}
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("kafka transactional source: group %q: already running", s.cfg.Group)
	}
	defer s.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	s.log.Info("consuming in transactions", "topics", s.cfg.Topics)
	for {
		fetches := s.sess.PollRecords(ctx, s.cfg.BatchMax)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.log.Warn("fetch error; the client retries", "topic", topic, "partition", partition, "error", err)
			}
		})
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := s.transact(ctx, h, fetches); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// transact runs one batch in a transaction.
func (s *TxnSource) transact(ctx context.Context, h connectors.Handler, fetches kgo.Fetches) error {
	if p := s.prev; p != nil {
		// A batch aborted at a shutdown may still have records in flight:
		// their outputs must not join this transaction.
		select {
		case <-p.done:
			s.prev = nil
		case <-ctx.Done():
			return nil // the fetched records were not handed over
		}
	}
	if err := s.sess.Begin(); err != nil {
		return fmt.Errorf("kafka transactional source: group %q: begin transaction: %w", s.cfg.Group, err)
	}
	b := &txnBatch{done: make(chan struct{}), handing: true}
	s.mu.Lock()
	s.batch = b
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.batch = nil
		s.mu.Unlock()
	}()

	n := 0
	interrupted := false
	fetches.EachRecord(func(r *kgo.Record) {
		if interrupted {
			return
		}
		rec, err := kafkamsg.Decode(r)
		if err != nil {
			s.log.Warn("undecodable record value, delivering it as a raw value", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "error", err)
			rec = kafkamsg.DecodeRaw(r)
		}
		b.mu.Lock()
		b.pending++
		b.mu.Unlock()
		st := &txnSettler{s: s, b: b, r: r}
		if err := h.Handle(ctx, connectors.Message{Record: rec, Settler: st}); err != nil {
			st.done.Store(true)
			interrupted = true
			return
		}
		n++
	})
	b.mu.Lock()
	b.handing = false
	if interrupted {
		b.failed = true
	}
	if b.pending == 0 {
		close(b.done)
	}
	b.mu.Unlock()

	select {
	case <-b.done:
	case <-ctx.Done():
		s.prev = b
	}
	b.mu.Lock()
	commit := !b.failed && ctx.Err() == nil
	delay := b.delay
	b.over = true
	b.mu.Unlock()
	// From here the sink refuses records: none may join the next
	// transaction unless it derives from that transaction's records. The
	// next transaction begins only after every record of this one was
	// settled (the engine settles a record after all its outputs' dones),
	// so no late output of this batch can land in it.
	s.mu.Lock()
	s.batch = nil
	s.mu.Unlock()

	// End with the caller's context only when committing; an abort on the
	// way out must still reach the broker.
	ectx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	committed, err := s.sess.End(ectx, kgo.TransactionEndTry(commit))
	switch {
	case err != nil:
		return fmt.Errorf("kafka transactional source: group %q: end transaction of %d records: %w", s.cfg.Group, n, err)
	case commit && !committed:
		s.log.Warn("transaction aborted by a rebalance; its records will be delivered again", "records", n)
	case !commit:
		s.log.Info("transaction aborted; its records will be delivered again", "records", n, "delay", delay)
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// Sink returns another sink whose records join this source's
// transactions, with its own encoding.
func (s *TxnSource) Sink(encoding string) (*TxnSink, error) {
	enc, err := kafkamsg.ParseEncoding(encoding)
	if err != nil {
		return nil, fmt.Errorf("kafka transactional sink: %w", err)
	}
	return &TxnSink{src: s, enc: kafkamsg.NewEncoder(enc)}, nil
}

// Close stops Run, aborts an open transaction (its records are fetched
// again by the next owner) and leaves the group. Idempotent.
func (s *TxnSource) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel()
		}
		s.mu.Unlock()
		for s.running.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		s.sess.Close()
	})
	return nil
}

type txnSettler struct {
	s    *TxnSource
	b    *txnBatch
	r    *kgo.Record
	done atomic.Bool
}

func (st *txnSettler) settle(ack bool, delay time.Duration) error {
	if st.s.closed.Load() {
		return st.errorf(connectors.ErrClosed)
	}
	if !st.done.CompareAndSwap(false, true) {
		return st.errorf(connectors.ErrSettled)
	}
	return st.b.settle(ack, delay)
}

func (st *txnSettler) errorf(err error) error {
	return fmt.Errorf("kafka transactional source: group %q %s/%d offset %d: %w", st.s.cfg.Group, st.r.Topic, st.r.Partition, st.r.Offset, err)
}

// Ack marks the record done; the transaction commits once all its records
// are.
func (st *txnSettler) Ack(context.Context) error { return st.settle(true, 0) }

// Nak aborts the record's transaction: the whole batch is fetched again
// after delay.
func (st *txnSettler) Nak(_ context.Context, delay time.Duration) error {
	return st.settle(false, delay)
}

// TxnSink is the sink half of NewTxn.
type TxnSink struct {
	src    *TxnSource
	enc    *kafkamsg.Encoder
	closed atomic.Bool
}

var _ connectors.Sink = (*TxnSink)(nil)

// Publish produces rec inside the source's open transaction. done(nil)
// means the broker has the record; it becomes visible to read_committed
// readers when the transaction commits.
func (s *TxnSink) Publish(ctx context.Context, topic string, rec *culvertv1.Record, done func(error)) {
	if s.closed.Load() {
		done(fmt.Errorf("kafka transactional sink: record %q: %w", rec.GetId(), connectors.ErrClosed))
		return
	}
	if err := CheckTopic(topic); err != nil {
		done(fmt.Errorf("kafka transactional sink: record %q: %w", rec.GetId(), err))
		return
	}
	s.src.mu.Lock()
	b := s.src.batch
	s.src.mu.Unlock()
	if b == nil {
		done(fmt.Errorf("kafka transactional sink: record %q: %w", rec.GetId(), ErrNoTransaction))
		return
	}
	kr, buf, err := s.enc.Encode(topic, rec)
	if err != nil {
		done(fmt.Errorf("kafka transactional sink: topic %q: %w", topic, err))
		return
	}
	s.src.sess.Produce(ctx, kr, func(_ *kgo.Record, err error) {
		s.enc.Release(buf)
		if err != nil {
			err = fmt.Errorf("kafka transactional sink: topic %q record %q: %w", topic, rec.GetId(), err)
		}
		done(err)
	})
}

// Flush waits for the records produced so far.
func (s *TxnSink) Flush(ctx context.Context) error {
	if err := s.src.sess.Client().Flush(ctx); err != nil {
		return fmt.Errorf("kafka transactional sink: flush: %w", err)
	}
	return nil
}

// Close refuses later publishes; the session belongs to the source.
func (s *TxnSink) Close() error {
	s.closed.Store(true)
	return nil
}
