// Package kafkamsg maps Records to Kafka records and back. It is shared by
// the kafka source and sink and owns nothing else: it never talks to a
// broker and never derives record ids from positions (the connector does).
//
// Decoding: a Kafka record whose first Content-Type header is
// connectors.RecordContentType carries a protobuf Record as its value.
// Any other Kafka record is a raw value: key -> key, value -> value,
// timestamp -> event time, the first Content-Type header -> content type,
// every other header -> a Record header, in order (Kafka headers are an
// ordered list with repeats, as Record headers are).
//
// Encoding: EncodingRecord writes the whole Record as the value (lossless)
// with the record key as the Kafka key; EncodingValue writes the value,
// the key, the headers in order, the content type as a Content-Type header
// and the event time as the Kafka timestamp (millisecond precision).
package kafkamsg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// HeaderContentType is the Kafka header carrying the content type.
const HeaderContentType = "Content-Type"

// ConnectorName is Record.Source.Connector for Kafka records.
const ConnectorName = "kafka"

// Encoding selects how a sink writes a Record into a Kafka record; it is
// the connectors' shared type.
type Encoding = connectors.Encoding

// The encodings, as in package connectors.
const (
	EncodingRecord = connectors.EncodingRecord
	EncodingValue  = connectors.EncodingValue
)

// ParseEncoding parses "record" (or "") and "value".
func ParseEncoding(s string) (Encoding, error) { return connectors.ParseEncoding(s) }

// ErrNotRepresentable is wrapped by Encode when a record cannot be carried
// faithfully in the value encoding (an event time before 1970, which a
// Kafka timestamp cannot hold).
var ErrNotRepresentable = errors.New("record not representable as a Kafka record")

// ID is the record id the connector gives a Kafka record that carries no
// id of its own: stable across redeliveries of the same offset.
func ID(topic string, partition int32, offset int64) string {
	// One allocation: a concatenation would also allocate the offset's
	// digits.
	var digits [40]byte
	d := appendPartitionOffset(digits[:0], partition, offset)
	var b strings.Builder
	b.Grow(len("kafka:") + len(topic) + 1 + len(d))
	b.WriteString("kafka:")
	b.WriteString(topic)
	b.WriteByte(':')
	b.Write(d)
	return b.String()
}

func appendPartitionOffset(b []byte, partition int32, offset int64) []byte {
	b = strconv.AppendInt(b, int64(partition), 10)
	b = append(b, ':')
	return strconv.AppendInt(b, offset, 10)
}

// appendID appends ID(topic, partition, offset) to b.
func appendID(b []byte, topic string, partition int32, offset int64) []byte {
	b = append(b, "kafka:"...)
	b = append(b, topic...)
	b = append(b, ':')
	return appendPartitionOffset(b, partition, offset)
}

// Position is the Record.Source of a Kafka record.
func Position(r *kgo.Record) *culvertv1.Position {
	return &culvertv1.Position{
		Connector: ConnectorName,
		Stream:    r.Topic,
		Subject:   r.Topic,
		Partition: strconv.FormatInt(int64(r.Partition), 10),
		Offset:    uint64(max(r.Offset, 0)),
	}
}

// Decode turns a Kafka record into a Record, with Source and Id set (the
// id of a record-encoded value is kept when it has one). It fails only
// when the record claims to carry a Record (Content-Type) and the value
// does not parse; callers then usually fall back to DecodeRaw. The Record
// may alias r's key, value and header values.
func Decode(r *kgo.Record) (*culvertv1.Record, error) {
	if contentType(r) == connectors.RecordContentType {
		rec := new(culvertv1.Record)
		if err := proto.Unmarshal(r.Value, rec); err != nil {
			return nil, fmt.Errorf("decode %s value of %s: %w", connectors.RecordContentType, ID(r.Topic, r.Partition, r.Offset), err)
		}
		finish(rec, r)
		return rec, nil
	}
	return DecodeRaw(r), nil
}

// DecodeRaw takes r's value as the value and the rest as described in the
// package comment. It never fails. Invalid UTF-8 in header names and the
// content type is replaced by U+FFFD (Record strings must be UTF-8).
func DecodeRaw(r *kgo.Record) *culvertv1.Record {
	// One allocation for the record, its position and its event time: a
	// decode runs once per consumed record.
	return decodeRaw(new(decoded), r)
}

// Batch decodes several records into one allocation, as Decode and
// DecodeRaw do one: a consumer that hands records on in batches decodes
// each batch with one. The records of a batch keep its allocation alive
// until the last of them is dropped. The zero value is ready; it is not
// safe for concurrent use.
type Batch struct{ free []decoded }

// Grow makes room for n more records in one allocation.
func (b *Batch) Grow(n int) {
	if len(b.free) < n {
		b.free = make([]decoded, n)
	}
}

func (b *Batch) take() *decoded {
	if len(b.free) == 0 {
		b.Grow(1)
	}
	d := &b.free[0]
	b.free = b.free[1:]
	return d
}

// Decode is Decode into the batch's allocation.
func (b *Batch) Decode(r *kgo.Record) (*culvertv1.Record, error) {
	if contentType(r) == connectors.RecordContentType {
		return Decode(r)
	}
	return decodeRaw(b.take(), r), nil
}

// DecodeRaw is DecodeRaw into the batch's allocation.
func (b *Batch) DecodeRaw(r *kgo.Record) *culvertv1.Record { return decodeRaw(b.take(), r) }

func decodeRaw(d *decoded, r *kgo.Record) *culvertv1.Record {
	rec := &d.rec
	rec.Key, rec.Value = r.Key, r.Value
	if !r.Timestamp.IsZero() && r.Timestamp.UnixMilli() >= 0 {
		d.ts.Seconds, d.ts.Nanos = r.Timestamp.Unix(), int32(r.Timestamp.Nanosecond())
		rec.EventTime = &d.ts
	}
	ctSeen := false
	for _, h := range r.Headers {
		if !ctSeen && h.Key == HeaderContentType {
			ctSeen = true
			rec.ContentType = strings.ToValidUTF8(string(h.Value), "\uFFFD")
			continue
		}
		rec.Headers = append(rec.Headers, &culvertv1.Header{Name: strings.ToValidUTF8(h.Key, "\uFFFD"), Value: h.Value})
	}
	d.pos = culvertv1.Position{
		Connector: ConnectorName,
		Stream:    r.Topic,
		Subject:   r.Topic,
		Partition: strconv.FormatInt(int64(r.Partition), 10),
		Offset:    uint64(max(r.Offset, 0)),
	}
	rec.Source = &d.pos
	// The id lives in d too when it fits (64 bytes: topics of up to 27
	// characters always do), sparing an allocation per record.
	if id := appendID(d.id[:0], r.Topic, r.Partition, r.Offset); len(id) <= len(d.id) {
		rec.Id = unsafe.String(&d.id[0], len(id))
	} else {
		rec.Id = string(id)
	}
	return rec
}

// decoded holds what DecodeRaw allocates for one record.
type decoded struct {
	rec culvertv1.Record
	pos culvertv1.Position
	ts  timestamppb.Timestamp
	id  [64]byte // the bytes of rec.Id, never written again once set
}

func finish(rec *culvertv1.Record, r *kgo.Record) {
	rec.Source = Position(r)
	if rec.Id == "" {
		rec.Id = ID(r.Topic, r.Partition, r.Offset)
	}
}

func contentType(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == HeaderContentType {
			return string(h.Value)
		}
	}
	return ""
}

// maxPooled bounds buffers kept for reuse, so one huge record does not pin
// memory.
const maxPooled = 1 << 20

// Buffer is an encoding buffer lent by an Encoder. Give it back with
// Encoder.Release once the produce was answered.
type Buffer struct{ b []byte }

// Encoder encodes Records into Kafka records, reusing value buffers. It is
// safe for concurrent use. Each sink owns one (no package-level pool).
type Encoder struct {
	enc  Encoding
	pool sync.Pool
}

// NewEncoder returns an Encoder for enc.
func NewEncoder(enc Encoding) *Encoder { return &Encoder{enc: enc} }

// Encoding reports the encoder's encoding.
func (e *Encoder) Encoding() Encoding { return e.enc }

// Encode builds the Kafka record producing rec to topic. With
// EncodingRecord the value lives in the returned Buffer, which the caller
// releases once the produce promise ran (kgo keeps the record for retries
// until then). With EncodingValue the value aliases rec.Value and the
// Buffer is nil.
func (e *Encoder) Encode(topic string, rec *culvertv1.Record) (*kgo.Record, *Buffer, error) {
	kr := new(kgo.Record)
	buf, err := e.EncodeTo(kr, topic, rec)
	if err != nil {
		return nil, nil, err
	}
	return kr, buf, nil
}

// EncodeTo is Encode into a Kafka record the caller allocated (and
// zeroed), so that it can share an allocation with the caller's own
// per-record state.
func (e *Encoder) EncodeTo(kr *kgo.Record, topic string, rec *culvertv1.Record) (*Buffer, error) {
	if e.enc == EncodingValue {
		return nil, encodeValue(kr, topic, rec)
	}
	buf, _ := e.pool.Get().(*Buffer)
	if buf == nil {
		buf = new(Buffer)
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(buf.b[:0], rec)
	if err != nil {
		e.Release(buf)
		return nil, fmt.Errorf("marshal record %q: %w", rec.GetId(), err)
	}
	buf.b = b
	kr.Topic = topic
	kr.Key = rec.GetKey()
	kr.Value = b
	kr.Headers = []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(connectors.RecordContentType)}}
	if et := rec.GetEventTime(); et != nil && et.AsTime().UnixMilli() >= 0 {
		kr.Timestamp = et.AsTime()
	}
	return buf, nil
}

// Release returns buf to the pool. nil is ignored.
func (e *Encoder) Release(buf *Buffer) {
	if buf == nil || cap(buf.b) > maxPooled {
		return
	}
	buf.b = buf.b[:0]
	e.pool.Put(buf)
}

func encodeValue(kr *kgo.Record, topic string, rec *culvertv1.Record) error {
	kr.Topic, kr.Key, kr.Value = topic, rec.GetKey(), rec.GetValue()
	n := len(rec.GetHeaders())
	if rec.GetContentType() != "" {
		n++
	}
	if n > 0 {
		kr.Headers = make([]kgo.RecordHeader, 0, n)
	}
	if ct := rec.GetContentType(); ct != "" {
		kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(ct)})
	}
	for _, h := range rec.GetHeaders() {
		kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: h.GetName(), Value: h.GetValue()})
	}
	if et := rec.GetEventTime(); et != nil {
		t := et.AsTime()
		if t.UnixMilli() < 0 {
			return fmt.Errorf("record %q: event time %s: %w", rec.GetId(), t.UTC().Format(time.RFC3339Nano), ErrNotRepresentable)
		}
		kr.Timestamp = t
	}
	return nil
}
