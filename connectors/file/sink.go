package file

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/internal/batch"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// SinkConfig configures a Sink.
type SinkConfig struct {
	// Path of the file to append to (created 0644 if missing). When empty,
	// Writer is written instead (stdout); it is never closed.
	Path   string
	Writer io.Writer
	// Format: ndjson (default), delimited or lines.
	Format string
	// FlushInterval bounds how long a record waits for the flush that
	// confirms it. Default 2ms.
	FlushInterval time.Duration
	// FlushBatch flushes at once when this many records are unconfirmed.
	// Default 256.
	FlushBatch int
	// MaxPending bounds unconfirmed records; Publish blocks beyond it.
	// Default 8192.
	MaxPending int
}

// Sink writes records through a buffer. done(nil) means the bytes reached
// the operating system (a flushed write); there is no fsync. The subject
// given to Publish is ignored.
type Sink struct {
	cfg    SinkConfig
	log    *slog.Logger
	b      *batch.Batcher
	file   *os.File // nil when writing to cfg.Writer
	closed atomic.Bool

	mu      sync.Mutex
	w       *bufio.Writer
	scratch []byte
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink opens cfg.Path for appending, or wraps cfg.Writer.
func NewSink(cfg SinkConfig, logger *slog.Logger) (*Sink, error) {
	f, err := checkFormat(cfg.Format)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	cfg.Format = f
	if logger == nil {
		logger = slog.Default()
	}
	s := &Sink{cfg: cfg}
	w := cfg.Writer
	if cfg.Path != "" {
		s.file, err = os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("file sink: %w", err)
		}
		w = s.file
		s.log = logger.With("connector", ConnectorFile, "path", cfg.Path)
	} else if w == nil {
		return nil, errors.New("file sink: neither a path nor a writer")
	} else {
		s.log = logger.With("connector", "stdout")
	}
	s.w = bufio.NewWriterSize(w, 64<<10)
	s.b = batch.New(batch.Config{Interval: cfg.FlushInterval, Size: cfg.FlushBatch, MaxPending: cfg.MaxPending}, s.flush)
	return s, nil
}

func (s *Sink) name() string {
	if s.cfg.Path != "" {
		return s.cfg.Path
	}
	return "stdout"
}

func (s *Sink) flush() error {
	s.mu.Lock()
	err := s.w.Flush()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("file sink %s: flush: %w", s.name(), err)
	}
	return nil
}

// Publish writes rec (subject is ignored). done runs on the sink's flusher
// and must not block.
func (s *Sink) Publish(ctx context.Context, _ string, rec *culvertv1.Record, done func(error)) {
	if s.closed.Load() {
		done(fmt.Errorf("file sink %s: %w", s.name(), connectors.ErrClosed))
		return
	}
	if err := s.b.Acquire(ctx); err != nil {
		done(fmt.Errorf("file sink %s: record %q: %w", s.name(), rec.GetId(), err))
		return
	}
	if err := s.write(rec); err != nil {
		s.b.Cancel()
		done(fmt.Errorf("file sink %s: record %q: %w", s.name(), rec.GetId(), err))
		return
	}
	s.b.Add(done)
}

func (s *Sink) write(rec *culvertv1.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.scratch[:0]
	var err error
	switch s.cfg.Format {
	case FormatLines:
		if _, err = s.w.Write(rec.GetValue()); err == nil {
			err = s.w.WriteByte('\n')
		}
		return err
	case FormatDelimited:
		b = protowire.AppendVarint(b, uint64(proto.Size(rec)))
		b, err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, rec)
	default:
		b, err = protojson.MarshalOptions{}.MarshalAppend(b, rec)
		b = append(b, '\n')
	}
	if err != nil {
		return err
	}
	if cap(b) <= 1<<20 {
		s.scratch = b
	}
	_, err = s.w.Write(b)
	return err
}

// Flush waits until every record published so far is flushed or failed.
func (s *Sink) Flush(ctx context.Context) error {
	if err := s.b.Flush(ctx); err != nil {
		return fmt.Errorf("file sink %s: flush: %w", s.name(), err)
	}
	return nil
}

// Close flushes, stops the sink and closes the file (never cfg.Writer).
// It is idempotent.
func (s *Sink) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		s.b.Close()
		return nil
	}
	s.b.Close()
	if s.file != nil {
		if err := s.file.Close(); err != nil {
			return fmt.Errorf("file sink %s: close: %w", s.name(), err)
		}
	}
	return nil
}
