package tap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Source kinds.
const (
	KindNATS      = "nats"
	KindJetStream = "jetstream"
	KindKafka     = "kafka"
	KindKinesis   = "kinesis"
)

// Source is a parsed SOURCE argument of `culvert tap`:
//
//	nats://SUBJECT                        live only (core NATS keeps nothing)
//	jetstream://STREAM?subject=F&from=P&to=P
//	kafka://BROKER[,BROKER]/TOPIC?partitions=0,2&from=P&to=P
//	kinesis://STREAM?shards=ID,ID&from=P&to=P
//
// A position P is "first" (the oldest record kept), "latest" (only what
// arrives from now on), a sequence number (JetStream stream sequence; Kafka
// offset, for every partition or as PART:OFFSET,PART:OFFSET; Kinesis
// sequence number, with one shard), an RFC 3339 time, or a duration meaning
// that long ago ("15m"). to= also takes "end": the last record present
// when the tap starts, the default for stored sources unless following.
type Source struct {
	Kind string
	// Target is the subject, stream or topic.
	Target string
	// Brokers are Kafka's seed brokers.
	Brokers []string
	// Filter narrows a JetStream stream to a subject.
	Filter string
	// Partitions (Kafka) or shards (Kinesis) to read; empty: all.
	Partitions []string
	From, To   Position
}

// Position is a place in a source.
type Position struct {
	// Kind is first, latest, end, seq or time; "" is unset.
	Kind string
	// Seq is the sequence, offset or Kinesis sequence number (decimal).
	Seq string
	// PerPartition holds Kafka offsets per partition.
	PerPartition map[string]int64
	Time         time.Time
}

// Position kinds.
const (
	PosFirst  = "first"
	PosLatest = "latest"
	PosEnd    = "end"
	PosSeq    = "seq"
	PosTime   = "time"
)

// ParseSource parses a SOURCE; now resolves durations ("15m" ago).
func ParseSource(s string, now time.Time) (*Source, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, fmt.Errorf("source %q: want nats://SUBJECT, jetstream://STREAM, kafka://BROKERS/TOPIC or kinesis://STREAM", s)
	}
	rest, rawQuery, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("source %q: query: %w", s, err)
	}
	src := &Source{Kind: scheme}
	allowed := map[string]bool{"from": true, "to": true}
	switch scheme {
	case KindNATS:
		src.Target = rest
		allowed = map[string]bool{}
	case KindJetStream:
		src.Target = rest
		allowed["subject"] = true
		src.Filter = q.Get("subject")
	case KindKafka:
		brokers, topic, ok := strings.Cut(rest, "/")
		if !ok || brokers == "" {
			return nil, fmt.Errorf("source %q: want kafka://BROKER[,BROKER]/TOPIC", s)
		}
		src.Brokers = strings.Split(brokers, ",")
		src.Target = topic
		allowed["partitions"] = true
		if p := q.Get("partitions"); p != "" {
			for _, x := range strings.Split(p, ",") {
				if _, err := strconv.ParseInt(x, 10, 32); err != nil {
					return nil, fmt.Errorf("source %q: partitions: %q is not a partition number", s, x)
				}
				src.Partitions = append(src.Partitions, x)
			}
		}
	case KindKinesis:
		src.Target = rest
		allowed["shards"] = true
		if p := q.Get("shards"); p != "" {
			src.Partitions = strings.Split(p, ",")
		}
	default:
		return nil, fmt.Errorf("source %q: unknown kind %q (want nats, jetstream, kafka or kinesis)", s, scheme)
	}
	if src.Target == "" || strings.Contains(src.Target, "/") && scheme != KindKafka {
		return nil, fmt.Errorf("source %q: missing or malformed subject, stream or topic", s)
	}
	for k := range q {
		if !allowed[k] {
			return nil, fmt.Errorf("source %q: unknown parameter %q for %s", s, k, scheme)
		}
	}
	if src.From, err = parsePosition(q.Get("from"), scheme, false, now); err != nil {
		return nil, fmt.Errorf("source %q: from: %w", s, err)
	}
	if src.To, err = parsePosition(q.Get("to"), scheme, true, now); err != nil {
		return nil, fmt.Errorf("source %q: to: %w", s, err)
	}
	if scheme == KindKinesis && (src.From.Kind == PosSeq || src.To.Kind == PosSeq) && len(src.Partitions) != 1 {
		return nil, fmt.Errorf("source %q: a Kinesis sequence number belongs to one shard: give shards=ID", s)
	}
	return src, nil
}

func parsePosition(v, kind string, isTo bool, now time.Time) (Position, error) {
	switch v {
	case "":
		return Position{}, nil
	case PosFirst, "earliest", "all":
		if isTo {
			return Position{}, errors.New("first is not an end position")
		}
		return Position{Kind: PosFirst}, nil
	case PosLatest, "now", "new":
		if isTo {
			return Position{}, errors.New("use end, a position or a time")
		}
		return Position{Kind: PosLatest}, nil
	case PosEnd:
		if !isTo {
			return Position{}, errors.New("end is only an end position (to=end)")
		}
		return Position{Kind: PosEnd}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return Position{Kind: PosTime, Time: t}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return Position{Kind: PosTime, Time: now.Add(-d)}, nil
	}
	if kind == KindKafka && strings.Contains(v, ":") {
		per := map[string]int64{}
		for _, pair := range strings.Split(v, ",") {
			p, o, ok := strings.Cut(pair, ":")
			off, err := strconv.ParseInt(o, 10, 64)
			if _, perr := strconv.ParseInt(p, 10, 32); !ok || err != nil || perr != nil || off < 0 {
				return Position{}, fmt.Errorf("%q: want PARTITION:OFFSET", pair)
			}
			per[p] = off
		}
		return Position{Kind: PosSeq, PerPartition: per}, nil
	}
	if kind == KindNATS {
		return Position{}, errors.New("core NATS keeps no history: a NATS tap is live only")
	}
	n, ok := decimal(v)
	if !ok {
		return Position{}, fmt.Errorf("%q is not first, latest, a sequence number, an RFC 3339 time or a duration", v)
	}
	if kind != KindKinesis && len(n) > 19 {
		return Position{}, fmt.Errorf("%q is out of range", v)
	}
	return Position{Kind: PosSeq, Seq: n}, nil
}

// decimal accepts an unsigned decimal number of any length (Kinesis
// sequence numbers have 56 digits).
func decimal(s string) (string, bool) {
	if s == "" || len(s) > 128 {
		return "", false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return "", false
		}
	}
	return s, true
}

func (p Position) seq() uint64 {
	n, _ := strconv.ParseUint(p.Seq, 10, 64)
	return n
}

// Options configure a capture.
type Options struct {
	// NATSURL for nats and jetstream sources.
	NATSURL string
	// Kinesis endpoint and region; empty takes the AWS SDK defaults.
	KinesisEndpoint, KinesisRegion string
	// Follow keeps reading live after the end position (default for nats).
	Follow bool
	// Count stops after this many records; 0: no limit.
	Count  int
	Logger *slog.Logger
}

// Emit receives each captured record, in order per partition. Returning
// an error stops the capture with it.
type Emit func(*culvertv1.Record) error

// errDone stops a capture without error.
var errDone = errors.New("capture done")

// Capture reads src and hands its records to emit until the end position,
// Count, ctx, or an error. It returns nil when it stopped for one of the
// first three.
func Capture(ctx context.Context, src *Source, o Options, emit Emit) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	n := 0
	counted := func(r *culvertv1.Record) error {
		if err := emit(r); err != nil {
			return err
		}
		n++
		if o.Count > 0 && n >= o.Count {
			return errDone
		}
		return nil
	}
	var err error
	switch src.Kind {
	case KindNATS:
		err = captureNATS(ctx, src, o, counted)
	case KindJetStream:
		err = captureJetStream(ctx, src, o, counted)
	case KindKafka:
		err = captureKafka(ctx, src, o, counted)
	case KindKinesis:
		err = captureKinesis(ctx, src, o, counted)
	default:
		err = fmt.Errorf("unknown source kind %q", src.Kind)
	}
	if errors.Is(err, errDone) || ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

// pastTime reports whether a record is beyond a to=TIME position.
func pastTime(to Position, r *culvertv1.Record) bool {
	return to.Kind == PosTime && r.EventTime != nil && r.EventTime.AsTime().After(to.Time)
}
