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

// SinkConfig configures a Sink. Zero values take the defaults shown.
type SinkConfig struct {
	Client ClientConfig
	// Encoding: "record" (default) or "value" (see kafkamsg).
	Encoding string
	// MaxPending bounds records produced and not yet confirmed; Publish
	// blocks beyond it. Default 10000.
	MaxPending int
	// Linger lets a partition's batch wait for more records; default 0
	// (send as soon as the previous request to that broker returned).
	Linger time.Duration
	// CloseTimeout bounds the flush in Close; records still unconfirmed
	// then fail with ErrClosed (their sources redeliver them). Default 30s.
	CloseTimeout time.Duration
}

// Sink produces records with an idempotent producer and acks=all (every
// in-sync replica), partitioned by key with Kafka's murmur2 hash (the
// Java client's partitioner; records without a key are spread stickily).
// done runs once the broker acknowledged the record. The client retries
// produce requests across connection loss and leader changes without
// limit; idempotence keeps those retries free of duplicates and in order.
type Sink struct {
	cfg SinkConfig
	log *slog.Logger
	cl  *kgo.Client
	enc *kafkamsg.Encoder

	mu      sync.RWMutex // write-held by Close; read-held around Produce
	closed  bool
	pending pendingCount

	closeOnce sync.Once
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink makes the producing client. It does not wait for the brokers:
// records published before they answer wait in the client.
func NewSink(cfg SinkConfig, logger *slog.Logger) (*Sink, error) {
	enc, err := kafkamsg.ParseEncoding(cfg.Encoding)
	if err != nil {
		return nil, fmt.Errorf("kafka sink: %w", err)
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 10000
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 30 * time.Second
	}
	if logger == nil {
		logger = slog.Default()
	}
	log := logger.With("connector", ConnectorName)
	opts, err := cfg.Client.opts(log)
	if err != nil {
		return nil, fmt.Errorf("kafka sink: %w", err)
	}
	opts = append(opts,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.MaxBufferedRecords(cfg.MaxPending),
		kgo.ProducerLinger(cfg.Linger),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka sink: %w", err)
	}
	return &Sink{cfg: cfg, log: log, cl: cl, enc: kafkamsg.NewEncoder(enc)}, nil
}

// Publish produces rec to topic. It blocks while MaxPending records are
// unconfirmed, until ctx is done (then done gets ctx's error).
func (s *Sink) Publish(ctx context.Context, topic string, rec *culvertv1.Record, done func(error)) {
	if err := CheckTopic(topic); err != nil {
		done(fmt.Errorf("kafka sink: record %q: %w", rec.GetId(), err))
		return
	}
	p := &produced{Context: context.Background(), s: s, topic: topic, rec: rec, done: done}
	buf, err := s.enc.EncodeTo(&p.kr, topic, rec)
	if err != nil {
		done(fmt.Errorf("kafka sink: topic %q: %w", topic, err))
		return
	}
	p.buf = buf
	p.kr.Context = p
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		s.enc.Release(buf)
		done(fmt.Errorf("kafka sink: topic %q record %q: %w", topic, rec.GetId(), connectors.ErrClosed))
		return
	}
	s.pending.add()
	s.cl.Produce(ctx, &p.kr, producedPromise)
	s.mu.RUnlock()
}

// produced is one published record until its promise ran: the Kafka
// record and what the promise needs, in one allocation (Publish runs once
// per output record). It is the Kafka record's Context, which is how the
// one promise function finds it; as a context it is Background, so it
// never cancels the produce (the ctx given to Produce does).
type produced struct {
	context.Context
	kr    kgo.Record
	s     *Sink
	topic string
	rec   *culvertv1.Record
	buf   *kafkamsg.Buffer
	done  func(error)
}

// producedPromise is the promise of every record a Sink produces.
func producedPromise(r *kgo.Record, err error) {
	p := r.Context.(*produced)
	s := p.s
	s.enc.Release(p.buf)
	if err != nil {
		if errors.Is(err, kgo.ErrClientClosed) {
			err = fmt.Errorf("%w: %w", connectors.ErrClosed, err)
		}
		err = fmt.Errorf("kafka sink: topic %q record %q: %w", p.topic, p.rec.GetId(), err)
	}
	p.done(err)
	s.pending.done()
}

// Flush waits until every done of the records published before it ran.
func (s *Sink) Flush(ctx context.Context) error {
	if err := s.cl.Flush(ctx); err != nil {
		return fmt.Errorf("kafka sink: flush: %w", err)
	}
	// kgo finishes a record's promise before Flush sees it gone, but the
	// promise may still be running: wait for our own count too.
	select {
	case <-s.pending.zero():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka sink: flush: %w", ctx.Err())
	}
}

// Close flushes (bounded by CloseTimeout) and closes the client; records
// still unconfirmed then fail. Later publishes get ErrClosed.
func (s *Sink) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
		defer cancel()
		if ferr := s.Flush(ctx); ferr != nil {
			s.log.Warn("records unconfirmed at close; their sources will deliver them again", "error", ferr)
		}
		s.cl.Close()
		<-s.pending.zero()
	})
	return err
}

// CheckTopic reports whether name is a legal Kafka topic name: 1 to 249
// characters of [a-zA-Z0-9._-], not "." or "..".
func CheckTopic(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("invalid topic %q", name)
	}
	if len(name) > 249 {
		return fmt.Errorf("invalid topic %q: longer than 249 characters", name[:40]+"...")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("invalid topic %q: character %q (a topic is letters, digits, '.', '_' and '-')", name, c)
		}
	}
	return nil
}

// pendingCount counts records whose done has not returned yet. The count
// is an atomic (it moves twice per record); the mutex guards the waiters.
type pendingCount struct {
	n       atomic.Int64
	mu      sync.Mutex
	waiters []chan struct{}
}

func (p *pendingCount) add() { p.n.Add(1) }

func (p *pendingCount) done() {
	if p.n.Add(-1) != 0 {
		return
	}
	p.mu.Lock()
	ws := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

// zero returns a channel closed once the count is (or reaches) zero.
func (p *pendingCount) zero() <-chan struct{} {
	ch := make(chan struct{})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n.Load() == 0 {
		close(ch)
		return ch
	}
	p.waiters = append(p.waiters, ch)
	return ch
}
