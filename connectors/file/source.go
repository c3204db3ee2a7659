package file

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// SourceConfig configures a Source.
type SourceConfig struct {
	// Path of the file to read. When empty, Reader is read instead (stdin).
	Path   string
	Reader io.Reader
	// Format: ndjson (default), delimited or lines.
	Format string
	// MaxRecordSize bounds one line or delimited record; a larger one
	// fails Run. Default DefaultMaxRecordSize.
	MaxRecordSize int
	// MaxInFlight bounds records handed over and not settled. Default 1024.
	MaxInFlight int
}

// Source reads records from a file or a reader. It runs once: a second Run
// returns an error. Record ids are "file:<path>:<n>" (or "stdin:<n>"), n
// counting lines for ndjson and lines, and records for delimited, from 1;
// Record.Source.Offset is n. A record read from ndjson or delimited keeps
// its own id when it has one.
type Source struct {
	cfg       SourceConfig
	connector string
	log       *slog.Logger
	slots     chan struct{}

	closed atomic.Bool
	mu     sync.Mutex
	ran    bool
	run    context.CancelFunc
}

var _ connectors.Source = (*Source)(nil)

// NewSource returns a Source; the file is opened by Run.
func NewSource(cfg SourceConfig, logger *slog.Logger) (*Source, error) {
	f, err := checkFormat(cfg.Format)
	if err != nil {
		return nil, fmt.Errorf("file source: %w", err)
	}
	cfg.Format = f
	if cfg.Path == "" && cfg.Reader == nil {
		return nil, errors.New("file source: neither a path nor a reader")
	}
	if cfg.MaxRecordSize <= 0 {
		cfg.MaxRecordSize = DefaultMaxRecordSize
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Source{cfg: cfg, connector: ConnectorFile, slots: make(chan struct{}, cfg.MaxInFlight)}
	if cfg.Path == "" {
		s.connector = ConnectorStdin
		s.log = logger.With("connector", ConnectorStdin)
	} else {
		s.log = logger.With("connector", ConnectorFile, "path", cfg.Path)
	}
	return s, nil
}

type item struct {
	rec *culvertv1.Record
	n   uint64
	err error
}

// Run reads the input and hands every record to h, in order, from one
// goroutine. It returns nil at end of input after the last record was
// handed over, nil when ctx is cancelled or Close is called, and an error
// when the input cannot be read or parsed. Reading happens on a separate
// goroutine: a Read blocked on a terminal or pipe is abandoned (not
// interrupted) when Run returns, and ends with the process or the input.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	switch {
	case s.closed.Load():
		s.mu.Unlock()
		return s.errorf(0, connectors.ErrClosed)
	case s.ran:
		s.mu.Unlock()
		return s.errorf(0, errors.New("a file source runs only once"))
	}
	s.ran = true
	ctx, cancel := context.WithCancel(ctx)
	s.run = cancel
	s.mu.Unlock()
	defer cancel()

	r := s.cfg.Reader
	if s.cfg.Path != "" {
		f, err := os.Open(s.cfg.Path)
		if err != nil {
			return fmt.Errorf("file source: %w", err)
		}
		defer f.Close() // after cancel: unblocks the reader goroutine
		r = f
	}
	items := make(chan item)
	go s.read(ctx, r, items)
	for {
		var it item
		var ok bool
		select {
		case it, ok = <-items:
		case <-ctx.Done():
			return nil
		}
		if !ok {
			return nil // end of input
		}
		if it.err != nil {
			return it.err
		}
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		st := &settler{s: s, n: it.n}
		if err := h.Handle(ctx, connectors.Message{Record: it.rec, Settler: st}); err != nil {
			st.settle()
			return nil
		}
	}
}

func (s *Source) errorf(n uint64, err error) error {
	name := s.cfg.Path
	if name == "" {
		name = "stdin"
	}
	if n == 0 {
		return fmt.Errorf("file source %s: %w", name, err)
	}
	return fmt.Errorf("file source %s: record %d: %w", name, n, err)
}

// read parses r and sends records to out; it closes out at end of input.
func (s *Source) read(ctx context.Context, r io.Reader, out chan<- item) {
	send := func(it item) bool {
		select {
		case out <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	var err error
	switch s.cfg.Format {
	case FormatDelimited:
		err = s.readDelimited(r, send)
	default:
		err = s.readLines(r, send)
	}
	if err != nil {
		send(item{err: err})
		return
	}
	close(out)
}

func (s *Source) readLines(r io.Reader, send func(item) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(64<<10, s.cfg.MaxRecordSize)), s.cfg.MaxRecordSize)
	var n uint64
	for sc.Scan() {
		n++
		line := sc.Bytes()
		var rec *culvertv1.Record
		if s.cfg.Format == FormatLines {
			rec = &culvertv1.Record{Value: bytes.Clone(line)}
		} else {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			rec = parseNDJSON(line)
		}
		s.position(rec, n)
		if !send(item{rec: rec, n: n}) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("line longer than %d bytes", s.cfg.MaxRecordSize)
		}
		return s.errorf(n+1, err)
	}
	return nil
}

// parseNDJSON decodes line as a protojson Record, or takes it as the value
// when it is not a Record-shaped object.
func parseNDJSON(line []byte) *culvertv1.Record {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) > 2 && trimmed[0] == '{' {
		rec := new(culvertv1.Record)
		if protojson.Unmarshal(trimmed, rec) == nil && proto.Size(rec) > 0 {
			return rec
		}
	}
	rec := &culvertv1.Record{Value: bytes.Clone(line)}
	if json.Valid(trimmed) {
		rec.ContentType = "application/json"
	}
	return rec
}

func (s *Source) readDelimited(r io.Reader, send func(item) bool) error {
	br := bufio.NewReaderSize(r, 64<<10)
	opts := protodelim.UnmarshalOptions{MaxSize: int64(s.cfg.MaxRecordSize)}
	var n uint64
	for {
		rec := new(culvertv1.Record)
		err := opts.UnmarshalFrom(br, rec)
		if err == io.EOF {
			return nil
		}
		n++
		if err != nil {
			return s.errorf(n, err)
		}
		s.position(rec, n)
		if !send(item{rec: rec, n: n}) {
			return nil
		}
	}
}

func (s *Source) position(rec *culvertv1.Record, n uint64) {
	rec.Source = &culvertv1.Position{Connector: s.connector, Offset: n}
	if rec.Id != "" {
		return
	}
	if s.cfg.Path == "" {
		rec.Id = "stdin:" + strconv.FormatUint(n, 10)
	} else {
		rec.Id = "file:" + s.cfg.Path + ":" + strconv.FormatUint(n, 10)
	}
}

// Close stops Run. Settlements after Close return ErrClosed. Close is
// idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.CompareAndSwap(false, true) && s.run != nil {
		s.run()
	}
	return nil
}

type settler struct {
	s    *Source
	n    uint64
	done atomic.Bool
}

func (st *settler) settle() error {
	if !st.done.CompareAndSwap(false, true) {
		return st.s.errorf(st.n, connectors.ErrSettled)
	}
	<-st.s.slots
	if st.s.closed.Load() {
		return st.s.errorf(st.n, connectors.ErrClosed)
	}
	return nil
}

// Ack frees the record's in-flight slot.
func (st *settler) Ack(context.Context) error { return st.settle() }

// Nak frees the slot and logs: a file cannot redeliver.
func (st *settler) Nak(_ context.Context, delay time.Duration) error {
	if err := st.settle(); err != nil {
		return err
	}
	st.s.log.Debug("nak ignored: a file cannot redeliver", "record", st.n, "delay", delay)
	return nil
}
