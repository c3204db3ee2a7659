// Package natsmsg maps Records to NATS messages and back. It is shared by
// the nats (core) and jetstream connectors and owns nothing else: it never
// talks to a server, sets Record.Source, or derives record ids from
// positions (the connectors do that).
//
// Decoding: a message whose Content-Type header is
// connectors.RecordContentType carries a protobuf Record as its body.
// Any other message is a raw value: its headers become Record headers
// (sorted by name, values in order), Content-Type becomes content_type,
// Culvert-Key (or Culvert-Key-Base64) the key and Culvert-Event-Time
// (RFC 3339) the event time.
//
// Encoding: EncodingRecord writes the whole Record as the body;
// EncodingValue writes the value as the body and carries headers, key,
// content type and event time as NATS headers. Both set Nats-Msg-Id to the
// record id so JetStream drops duplicates of a republished record.
package natsmsg

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Header names used by the mapping.
const (
	HeaderContentType = "Content-Type"
	HeaderKey         = "Culvert-Key"
	// HeaderKeyBase64 carries a key that is not a valid header value
	// (control characters, surrounding spaces, invalid UTF-8).
	HeaderKeyBase64 = "Culvert-Key-Base64"
	HeaderEventTime = "Culvert-Event-Time"
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = "Nats-Msg-Id"
)

// Encoding selects how a sink writes a Record into a NATS message; it is
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
// faithfully in the value encoding (a header name or value NATS cannot
// transport).
var ErrNotRepresentable = errors.New("record not representable as NATS headers")

// Decode turns a message into a Record. It fails only when the message
// claims to carry a Record (Content-Type) and the body does not parse;
// callers then usually fall back to DecodeRaw. The Record may alias data.
func Decode(h nats.Header, data []byte) (*culvertv1.Record, error) {
	if contentType(h) == connectors.RecordContentType {
		rec := new(culvertv1.Record)
		if err := proto.Unmarshal(data, rec); err != nil {
			return nil, fmt.Errorf("decode %s body: %w", connectors.RecordContentType, err)
		}
		return rec, nil
	}
	return DecodeRaw(h, data), nil
}

// DecodeRaw takes data as the value and the headers as described in the
// package comment. Invalid UTF-8 in header names and the content type is
// replaced by U+FFFD (Record strings must be UTF-8). It never fails: a
// Culvert-Event-Time that does not parse
// stays an ordinary header, a Culvert-Key-Base64 that does not parse is
// dropped.
func DecodeRaw(h nats.Header, data []byte) *culvertv1.Record {
	rec := &culvertv1.Record{Value: data}
	if len(h) == 0 {
		return rec
	}
	names := make([]string, 0, len(h))
	n := 0
	for name, vs := range h {
		names = append(names, name)
		n += len(vs)
	}
	slices.Sort(names)
	rec.Headers = make([]*culvertv1.Header, 0, n)
	for _, name := range names {
		vs := h[name]
		if len(vs) == 0 {
			continue
		}
		switch name {
		case HeaderContentType:
			rec.ContentType = strings.ToValidUTF8(vs[0], "\uFFFD")
			continue
		case HeaderKey:
			if rec.Key == nil {
				rec.Key = []byte(vs[0])
			}
			continue
		case HeaderKeyBase64:
			// Takes precedence over Culvert-Key (sorted after it). A value
			// that is not base64 is dropped: it is ours, and keeping it would
			// let it shadow the key on a later encode.
			if k, err := base64.StdEncoding.DecodeString(vs[0]); err == nil {
				rec.Key = k
			}
			continue
		case HeaderEventTime:
			// Only times a Timestamp can hold (years 1 to 9999 UTC).
			if t, err := time.Parse(time.RFC3339Nano, vs[0]); err == nil {
				if y := t.UTC().Year(); y >= 1 && y <= 9999 {
					rec.EventTime = timestamppb.New(t)
					continue
				}
			}
		}
		// Record strings must be UTF-8 to marshal; NATS names need not be.
		name = strings.ToValidUTF8(name, "\uFFFD")
		for _, v := range vs {
			rec.Headers = append(rec.Headers, &culvertv1.Header{Name: name, Value: []byte(v)})
		}
	}
	if len(rec.Headers) == 0 {
		rec.Headers = nil
	}
	return rec
}

func contentType(h nats.Header) string {
	if vs := h[HeaderContentType]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// maxPooled bounds buffers kept for reuse, so one huge record does not pin
// memory.
const maxPooled = 1 << 20

// Buffer is an encoding buffer lent by an Encoder. Give it back with
// Encoder.Release once nothing references the message body any more.
type Buffer struct{ b []byte }

// Encoder encodes Records into NATS messages, reusing body buffers. It is
// safe for concurrent use. Each sink owns one (no package-level pool).
type Encoder struct {
	enc  Encoding
	pool sync.Pool
}

// NewEncoder returns an Encoder for enc.
func NewEncoder(enc Encoding) *Encoder {
	return &Encoder{enc: enc}
}

// Encoding reports the encoder's encoding.
func (e *Encoder) Encoding() Encoding { return e.enc }

// Encode builds the message publishing rec on subject. With EncodingRecord
// the body lives in the returned Buffer, which the caller releases after the
// publish no longer needs it (nats.Conn.PublishMsg copies the body into its
// write buffer before returning; a JetStream async publish keeps it until
// the ack). With EncodingValue the body aliases rec.Value and the Buffer is
// nil.
func (e *Encoder) Encode(subject string, rec *culvertv1.Record) (*nats.Msg, *Buffer, error) {
	if e.enc == EncodingValue {
		m, err := encodeValue(subject, rec)
		return m, nil, err
	}
	buf, _ := e.pool.Get().(*Buffer)
	if buf == nil {
		buf = new(Buffer)
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(buf.b[:0], rec)
	if err != nil {
		e.Release(buf)
		return nil, nil, fmt.Errorf("marshal record %q: %w", rec.GetId(), err)
	}
	buf.b = b
	h := make(nats.Header, 3)
	h[HeaderContentType] = []string{connectors.RecordContentType}
	if rec.GetId() != "" {
		h[HeaderMsgID] = []string{rec.GetId()}
	}
	setKey(h, rec.GetKey())
	return &nats.Msg{Subject: subject, Header: h, Data: b}, buf, nil
}

// Release returns buf to the pool. nil is ignored.
func (e *Encoder) Release(buf *Buffer) {
	if buf == nil || cap(buf.b) > maxPooled {
		return
	}
	buf.b = buf.b[:0]
	e.pool.Put(buf)
}

func encodeValue(subject string, rec *culvertv1.Record) (*nats.Msg, error) {
	h := make(nats.Header, len(rec.GetHeaders())+4)
	for _, hd := range rec.GetHeaders() {
		if !ValidHeaderName(hd.GetName()) {
			return nil, fmt.Errorf("record %q: header name %q: %w", rec.GetId(), hd.GetName(), ErrNotRepresentable)
		}
		v := string(hd.GetValue())
		if !ValidHeaderValue(v) {
			return nil, fmt.Errorf("record %q: value of header %q: %w", rec.GetId(), hd.GetName(), ErrNotRepresentable)
		}
		h[hd.GetName()] = append(h[hd.GetName()], v)
	}
	if ct := rec.GetContentType(); ct != "" {
		if !ValidHeaderValue(ct) {
			return nil, fmt.Errorf("record %q: content type %q: %w", rec.GetId(), ct, ErrNotRepresentable)
		}
		h[HeaderContentType] = []string{ct}
	}
	setKey(h, rec.GetKey())
	if et := rec.GetEventTime(); et != nil {
		h[HeaderEventTime] = []string{et.AsTime().UTC().Format(time.RFC3339Nano)}
	}
	if id := rec.GetId(); id != "" {
		h[HeaderMsgID] = []string{id}
	}
	if len(h) == 0 {
		h = nil
	}
	return &nats.Msg{Subject: subject, Header: h, Data: rec.GetValue()}, nil
}

// setKey writes Culvert-Key, or Culvert-Key-Base64 when the key is not a
// valid header value. An empty key leaves headers as they are.
func setKey(h nats.Header, key []byte) {
	if len(key) == 0 {
		return
	}
	if k := string(key); ValidHeaderValue(k) {
		h[HeaderKey] = []string{k}
		delete(h, HeaderKeyBase64)
	} else {
		h[HeaderKeyBase64] = []string{base64.StdEncoding.EncodeToString(key)}
		delete(h, HeaderKey)
	}
}

// ValidHeaderName reports whether NATS accepts name as a header name
// (printable ASCII without separators, as nats.go checks before publishing).
func ValidHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 33 || c > 126 || strings.IndexByte(`"()/,:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether v survives a NATS header unchanged:
// valid UTF-8 without control characters other than tab, and without
// leading or trailing spaces or tabs (which the protocol trims).
func ValidHeaderValue(v string) bool {
	if v == "" {
		return true
	}
	if !utf8.ValidString(v) {
		return false
	}
	if isSpace(v[0]) || isSpace(v[len(v)-1]) {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }
