package nats

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/internal/batch"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// SinkConfig configures a Sink.
type SinkConfig struct {
	// Encoding: "record" (default) or "value"; see natsmsg.
	Encoding string
	// FlushInterval bounds how long a published record waits for the
	// flush that confirms it. Default 2ms.
	FlushInterval time.Duration
	// FlushBatch flushes at once when this many records are unconfirmed.
	// Default 256.
	FlushBatch int
	// MaxPending bounds unconfirmed records; Publish blocks beyond it.
	// Default 8192.
	MaxPending int
	// FlushTimeout bounds one flush round trip. Default 10s.
	FlushTimeout time.Duration
}

// Sink publishes to NATS core. A record is confirmed (done(nil)) once a
// PING/PONG round trip that followed its publish succeeded: the server has
// then received it. It may still have had no subscriber; NATS core does not
// tell. Confirmations are batched so that a sink does not pay one round
// trip per record.
type Sink struct {
	nc     *nats.Conn
	cfg    SinkConfig
	enc    *natsmsg.Encoder
	b      *batch.Batcher
	log    *slog.Logger
	closed atomic.Bool
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink returns a Sink publishing on nc.
func NewSink(nc *nats.Conn, cfg SinkConfig, logger *slog.Logger) (*Sink, error) {
	enc, err := natsmsg.ParseEncoding(cfg.Encoding)
	if err != nil {
		return nil, fmt.Errorf("nats sink: %w", err)
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 10 * time.Second
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Sink{nc: nc, cfg: cfg, enc: natsmsg.NewEncoder(enc), log: logger.With("connector", ConnectorName)}
	s.b = batch.New(batch.Config{Interval: cfg.FlushInterval, Size: cfg.FlushBatch, MaxPending: cfg.MaxPending}, s.flush)
	return s, nil
}

func (s *Sink) flush() error {
	if err := s.nc.FlushTimeout(s.cfg.FlushTimeout); err != nil {
		return fmt.Errorf("nats sink: flush: %w", err)
	}
	return nil
}

// Publish publishes rec on subject. It blocks while MaxPending records are
// unconfirmed. rec must not be modified until done is called. done must not
// block: it runs on the sink's flusher.
func (s *Sink) Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	if s.closed.Load() {
		done(fmt.Errorf("nats sink: publish to %q: %w", subject, connectors.ErrClosed))
		return
	}
	if err := s.b.Acquire(ctx); err != nil {
		done(fmt.Errorf("nats sink: publish to %q: %w", subject, err))
		return
	}
	msg, buf, err := s.enc.Encode(subject, rec)
	if err != nil {
		s.b.Cancel()
		done(fmt.Errorf("nats sink: publish to %q: %w", subject, err))
		return
	}
	err = s.nc.PublishMsg(msg) // copies msg into the connection's buffer
	s.enc.Release(buf)
	if err != nil {
		s.b.Cancel()
		done(fmt.Errorf("nats sink: publish record %q to %q: %w", rec.GetId(), subject, err))
		return
	}
	s.b.Add(done)
}

// Flush waits until every record published so far is confirmed or failed.
func (s *Sink) Flush(ctx context.Context) error {
	if err := s.b.Flush(ctx); err != nil {
		return fmt.Errorf("nats sink: flush: %w", err)
	}
	return nil
}

// Close confirms what is pending and stops the sink. Later publishes fail
// with ErrClosed. It is idempotent and does not close the connection.
func (s *Sink) Close() error {
	s.closed.Store(true)
	s.b.Close()
	return nil
}
