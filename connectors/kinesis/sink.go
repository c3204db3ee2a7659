package kinesis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
)

// API limits of PutRecords.
const (
	MaxBatchRecords    = 500
	MaxBatchBytes      = 5 << 20
	MaxRecordBytes     = 1 << 20 // data + partition key
	MaxPartitionKeyLen = 256     // Unicode characters
)

// SinkConfig configures a Sink. Zero values take the defaults shown.
type SinkConfig struct {
	// Stream records go to when Publish's subject is empty.
	Stream string
	// Encoding of the data: record (default: the protobuf Record behind a
	// marker, so keys, headers and content types survive a Culvert
	// reader) or value (the value bytes alone, for other consumers).
	Encoding string
	// PartitionKey is a template over the record (as for NATS subjects,
	// e.g. "{{ .Key }}-{{ header \"tenant\" }}"); empty uses the record key,
	// else its id. Keys longer than 256 characters or not UTF-8 are
	// replaced by their SHA-256 in hex (same key, same shard).
	PartitionKey string
	// MaxPending bounds records published and not yet confirmed: Publish
	// blocks beyond it; default 8192.
	MaxPending int
	// BatchRecords and BatchBytes bound one PutRecords call; defaults and
	// maxima 500 and 5 MiB.
	BatchRecords, BatchBytes int
	// Linger is how long a batch that is not full waits for more records;
	// default 2ms.
	Linger time.Duration
	// MaxBackoff caps the wait between retries; default 10s.
	MaxBackoff time.Duration
	// Lanes is how many PutRecords calls may be in flight at once; default
	// 4. A partition key always goes through the same lane, so records of
	// one key are never in two concurrent calls.
	Lanes int
	// CallTimeout bounds one PutRecords call (a hung connection is then
	// retried); default 30s.
	CallTimeout time.Duration
	// CloseTimeout bounds how long Close waits for unconfirmed records;
	// default 30s. Records still unconfirmed then fail with ErrClosed.
	CloseTimeout time.Duration
}

// Sink puts records to Kinesis with PutRecords, in batches within the API
// limits, retrying only the records that failed. done is called once per
// record, with nil only once Kinesis returned its sequence number.
type Sink struct {
	client *kinesis.Client
	cfg    SinkConfig
	log    *slog.Logger
	pk     *router.Template
	sem    chan struct{}

	lanes []*lane

	mu        sync.Mutex // guards the lanes' queues and what follows
	closed    bool
	published uint64
	tr        tracker // completion order, for Flush
	changed   chan struct{}

	stop    context.Context // cancelled when Close gives up
	abandon context.CancelFunc
	once    sync.Once
}

// lane is one sequence of PutRecords calls, for the partition keys that
// hash to it.
type lane struct {
	queue   []*pending // guarded by Sink.mu
	wake    chan struct{}
	loopEnd chan struct{}
}

type pending struct {
	stream, pk string
	data       []byte
	id         string
	done       func(error)
	idx        uint64
	attempts   int
}

func (p *pending) size() int { return len(p.data) + len(p.pk) }

// NewSink returns a sink.
func NewSink(client *kinesis.Client, cfg SinkConfig, log *slog.Logger) (*Sink, error) {
	switch cfg.Encoding {
	case "":
		cfg.Encoding = "record"
	case "record", "value":
	default:
		return nil, fmt.Errorf("kinesis sink: unknown encoding %q (record, value)", cfg.Encoding)
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 8192
	}
	if cfg.BatchRecords <= 0 || cfg.BatchRecords > MaxBatchRecords {
		cfg.BatchRecords = MaxBatchRecords
	}
	if cfg.BatchBytes <= 0 || cfg.BatchBytes > MaxBatchBytes {
		cfg.BatchBytes = MaxBatchBytes
	}
	if cfg.Linger <= 0 {
		cfg.Linger = 2 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.Lanes <= 0 {
		cfg.Lanes = 4
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Sink{
		client: client, cfg: cfg,
		log:     log.With("connector", "kinesis"),
		sem:     make(chan struct{}, cfg.MaxPending),
		changed: make(chan struct{}),
	}
	for range cfg.Lanes {
		s.lanes = append(s.lanes, &lane{wake: make(chan struct{}, 1), loopEnd: make(chan struct{})})
	}
	if cfg.PartitionKey != "" {
		t, err := router.ParseTemplate(cfg.PartitionKey)
		if err != nil {
			return nil, fmt.Errorf("kinesis sink: partition key: %w", err)
		}
		s.pk = t
	}
	s.stop, s.abandon = context.WithCancel(context.Background())
	for _, l := range s.lanes {
		go s.loop(l)
	}
	return s, nil
}

// partitionKey returns the partition key of rec.
func (s *Sink) partitionKey(rec *culvertv1.Record, n uint64) (string, error) {
	var k string
	if s.pk != nil {
		v, err := s.pk.Execute(rec)
		if err != nil {
			return "", err
		}
		k = v
	} else {
		k = string(rec.GetKey())
		if k == "" {
			k = rec.GetId()
		}
		if k == "" {
			k = strconv.FormatUint(n, 10) // spread over the shards
		}
	}
	if utf8.RuneCountInString(k) > MaxPartitionKeyLen || !utf8.ValidString(k) {
		sum := sha256.Sum256([]byte(k))
		k = hex.EncodeToString(sum[:])
	}
	return k, nil
}

// Publish queues rec for stream subject (or the configured stream when
// subject is empty). It blocks while MaxPending records are unconfirmed.
func (s *Sink) Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	stream := subject
	if stream == "" {
		stream = s.cfg.Stream
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		done(connectors.ErrClosed)
		return
	}
	if stream == "" {
		done(fmt.Errorf("kinesis sink: record %q: no stream", rec.GetId()))
		return
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		done(ctx.Err())
		return
	}
	data, err := encodeRecord(rec, s.cfg.Encoding == "value")
	if err != nil {
		<-s.sem
		done(err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.sem
		done(connectors.ErrClosed)
		return
	}
	n := s.published
	s.published++
	pk, err := s.partitionKey(rec, n)
	p := &pending{stream: stream, pk: pk, data: data, id: rec.GetId(), done: done, idx: s.tr.add("")}
	if err == nil && p.size() > MaxRecordBytes {
		err = fmt.Errorf("%d bytes with its partition key, the Kinesis limit is %d", p.size(), MaxRecordBytes)
	}
	if err != nil {
		s.mu.Unlock()
		s.finish(p, fmt.Errorf("kinesis sink: record %q to stream %s: %w", rec.GetId(), stream, err))
		return
	}
	l := s.lanes[laneOf(stream, pk, len(s.lanes))]
	l.queue = append(l.queue, p)
	s.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// laneOf hashes stream and partition key (FNV-1a) to a lane.
func laneOf(stream, pk string, n int) int {
	h := uint32(2166136261)
	for _, str := range [2]string{stream, pk} {
		for i := 0; i < len(str); i++ {
			h ^= uint32(str[i])
			h *= 16777619
		}
		h ^= 0xff
		h *= 16777619
	}
	return int(h % uint32(n))
}

// finish calls p's done and frees its slot.
func (s *Sink) finish(p *pending, err error) {
	p.done(err)
	<-s.sem
	s.mu.Lock()
	s.tr.done(p.idx)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// loop sends l's batches until the sink is closed and l is empty, or
// abandoned.
func (s *Sink) loop(l *lane) {
	defer close(l.loopEnd)
	bo := backoff{max: s.cfg.MaxBackoff}
	failing := false
	for {
		s.mu.Lock()
		n, closed := len(l.queue), s.closed
		s.mu.Unlock()
		if n == 0 {
			if closed {
				return
			}
			select {
			case <-l.wake:
			case <-s.stop.Done():
				return
			}
			continue
		}
		if n < s.cfg.BatchRecords && !closed && !sleep(s.stop, s.cfg.Linger) {
			return
		}
		batch := s.take(l)
		retry, err := s.put(batch)
		if len(retry) > 0 {
			s.mu.Lock()
			l.queue = append(retry, l.queue...)
			s.mu.Unlock()
			wait := bo.next()
			if !failing || bo.n%10 == 0 {
				s.log.Warn("kinesis: PutRecords failed, retrying the failed records", "stream", batch[0].stream,
					"failed", len(retry), "of", len(batch), "error", err, "retry_in", wait)
			}
			failing = true
			if !sleep(s.stop, wait) {
				return
			}
			continue
		}
		if failing {
			s.log.Info("kinesis: PutRecords succeeded again", "stream", batch[0].stream)
			failing = false
		}
		bo.reset()
	}
}

// take removes the next batch from l's queue: records of the first
// record's stream, in order, within the API limits.
func (s *Sink) take(l *lane) []*pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	stream := l.queue[0].stream
	var batch []*pending
	rest := l.queue[:0]
	bytes := 0
	full := false
	for _, p := range l.queue {
		if !full && p.stream == stream {
			if len(batch) < s.cfg.BatchRecords && bytes+p.size() <= s.cfg.BatchBytes {
				batch = append(batch, p)
				bytes += p.size()
				continue
			}
			full = true // keep the stream's order: nothing after this one
		}
		rest = append(rest, p)
	}
	clear(l.queue[len(rest):])
	l.queue = rest
	return batch
}

// put sends batch and settles what it can: it returns the records to send
// again (throttled, internal failures, connection loss) and the error.
func (s *Sink) put(batch []*pending) ([]*pending, error) {
	entries := make([]types.PutRecordsRequestEntry, len(batch))
	for i, p := range batch {
		entries[i] = types.PutRecordsRequestEntry{Data: p.data, PartitionKey: aws.String(p.pk)}
	}
	ctx, cancel := context.WithTimeout(s.stop, s.cfg.CallTimeout)
	out, err := s.client.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(batch[0].stream), Records: entries})
	cancel()
	if err != nil {
		if s.stop.Err() != nil {
			return batch, err
		}
		if !retryable(err) {
			for _, p := range batch {
				s.finish(p, fmt.Errorf("kinesis sink: record %q to stream %s: %w", p.id, p.stream, err))
			}
			return nil, err
		}
		return batch, err
	}
	var retry []*pending
	var firstErr error
	for i, r := range out.Records {
		p := batch[i]
		if r.ErrorCode == nil {
			s.finish(p, nil)
			continue
		}
		code := aws.ToString(r.ErrorCode)
		e := fmt.Errorf("%s: %s", code, aws.ToString(r.ErrorMessage))
		switch code {
		case "ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException":
			retry = append(retry, p)
			if firstErr == nil {
				firstErr = e
			}
		default:
			s.finish(p, fmt.Errorf("kinesis sink: record %q to stream %s: %w", p.id, p.stream, e))
		}
	}
	return retry, firstErr
}

// retryable tells transient errors (throttling, server faults, connection
// loss) from those a retry cannot fix (no such stream, bad request, access
// denied).
func retryable(err error) bool {
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ResourceNotFoundException", "InvalidArgumentException", "AccessDeniedException",
			"ValidationException", "KMSAccessDeniedException", "KMSDisabledException",
			"KMSInvalidStateException", "KMSNotFoundException", "KMSOptInRequired",
			"UnrecognizedClientException", "SerializationException":
			return false
		}
	}
	return true
}

// Flush waits until every record published before it is confirmed or
// failed.
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	target := s.published
	s.mu.Unlock()
	for {
		s.mu.Lock()
		base := s.tr.base
		ch := s.changed
		s.mu.Unlock()
		if base >= target {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close sends what is queued (for up to CloseTimeout), fails the rest with
// ErrClosed and makes later publishes fail. Idempotent.
func (s *Sink) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		for _, l := range s.lanes {
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
		deadline := time.NewTimer(s.cfg.CloseTimeout)
		defer deadline.Stop()
		for _, l := range s.lanes {
			select {
			case <-l.loopEnd:
			case <-deadline.C:
				s.abandon()
				<-l.loopEnd
			}
		}
		s.abandon()
		s.mu.Lock()
		var left []*pending
		for _, l := range s.lanes {
			left = append(left, l.queue...)
			l.queue = nil
		}
		s.mu.Unlock()
		if len(left) > 0 {
			s.log.Error("kinesis: sink closed with unconfirmed records", "records", len(left))
		}
		for _, p := range left {
			s.finish(p, fmt.Errorf("kinesis sink: record %q to stream %s not confirmed before Close: %w", p.id, p.stream, connectors.ErrClosed))
		}
	})
	return nil
}
