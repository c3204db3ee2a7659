// Package wire decodes and checks culvert.v1 records on the hot path of the
// framed protocol, for both ends: the host (internal/fnhost) and the Go SDK
// (sdk/go). It uses the vtprotobuf-generated decoder, aliasing small arena
// chunks instead of allocating per field, and agrees with package proto
// byte for byte and error for error: whatever it cannot vouch for, it
// declines, and the caller falls back to package proto.
package wire

import (
	"encoding/binary"
	"unicode/utf8"
	"unsafe"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ProtoOnly hides the vtprotobuf methods of a message from framing, which
// then encodes it with package proto (for its UTF-8 errors).
type ProtoOnly struct{ proto.Message }

// ValidRecord reports whether every string in r is valid UTF-8, which
// package proto requires to encode it and the vtprotobuf encoder does not
// check. Most are
// ASCII, which one pass over all of them shows.
func ValidRecord(r *culvertv1.Record) bool {
	if r == nil {
		return true
	}
	x := orBytes(orBytes(0, r.Id), r.ContentType)
	for _, h := range r.Headers {
		x = orBytes(x, h.GetName())
	}
	if p := r.Source; p != nil {
		x = orBytes(orBytes(orBytes(orBytes(orBytes(x, p.Connector), p.Stream), p.Subject), p.Partition), p.Sequence)
	}
	if x&0x8080808080808080 == 0 {
		return true
	}
	if !utf8.ValidString(r.Id) || !utf8.ValidString(r.ContentType) {
		return false
	}
	for _, h := range r.Headers {
		if !utf8.ValidString(h.GetName()) {
			return false
		}
	}
	if p := r.Source; p != nil {
		return utf8.ValidString(p.Connector) && utf8.ValidString(p.Stream) && utf8.ValidString(p.Subject) &&
			utf8.ValidString(p.Partition) && utf8.ValidString(p.Sequence)
	}
	return true
}

// orBytes ORs the bytes of s into x, eight at a time: s is ASCII if no byte
// of the result has its top bit set.
func orBytes(x uint64, s string) uint64 {
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	for len(b) >= 8 {
		x |= binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	for _, c := range b {
		x |= uint64(c)
	}
	return x
}

// ValidString reports whether s is valid UTF-8, quickly if it is ASCII.
func ValidString(s string) bool {
	return orBytes(0, s)&0x8080808080808080 == 0 || utf8.ValidString(s)
}

// Records allocates and decodes records. The zero value is ready; it is not
// safe for concurrent use.
type Records struct {
	recs  []culvertv1.Record // records not yet used, allocated in chunks
	pos   []culvertv1.Position
	times []timestamppb.Timestamp
	arena []byte // room for copies of encoded records
}

// Records are allocated in chunks, and decoded with UnmarshalVTUnsafe from
// copies of their encoding in arena chunks, which their strings and bytes
// alias: one allocation for many records, not one per field, and chunks
// small enough (at most 20 KiB) for the allocator's size classes, so that a
// record kept long pins two chunks, not a whole frame.
const (
	recordChunk = 128
	arenaChunk  = 16 << 10
)

// New returns a zero record from the current chunk.
func (d *Records) New() *culvertv1.Record {
	return take(&d.recs)
}

// take returns the first element of the chunk *c, allocating a chunk when
// it is used up.
func take[T any](c *[]T) *T {
	if len(*c) == 0 {
		*c = make([]T, recordChunk)
	}
	v := &(*c)[0]
	*c = (*c)[1:]
	return v
}

// Decode decodes b, an encoded Record, into a new record that does not
// alias b. It returns false when it cannot vouch that package proto would
// decode b the same way (invalid UTF-8, a malformed or unexpected field):
// the caller then decodes with package proto, which decides.
func (d *Records) Decode(b []byte) (*culvertv1.Record, bool) {
	seen, ok := checkWire(b, wireRecord)
	if !ok {
		return nil, false
	}
	var c []byte
	switch {
	case len(b) > arenaChunk/4:
		c = make([]byte, len(b))
	case len(b) > 0:
		if len(b) > len(d.arena) {
			d.arena = make([]byte, arenaChunk)
		}
		c = d.arena[:len(b):len(b)]
		d.arena = d.arena[len(b):]
	}
	copy(c, b)
	r := d.New()
	// The decoder merges into the event time and source it finds set, so
	// those that b has come from chunks too instead of an allocation each.
	var et *timestamppb.Timestamp
	var src *culvertv1.Position
	if seen&(1<<6) != 0 {
		et = take(&d.times)
	}
	if seen&(1<<7) != 0 {
		src = take(&d.pos)
	}
	if !UnmarshalAliased(c, r, et, src) {
		return nil, false
	}
	return r, true
}

// UnmarshalAliased decodes b, an encoded Record that CheckRecordFields
// accepted, into r, a zero record, whose strings and bytes alias b. The
// decoder merges into the event time and source it finds set: et and src,
// if not nil, are where b's go (CheckRecordFields tells whether b has
// them, bits 6 and 7). r's bytes fields are capped at their length, so
// that appending to one does not overwrite the next field in b.
func UnmarshalAliased(b []byte, r *culvertv1.Record, et *timestamppb.Timestamp, src *culvertv1.Position) bool {
	r.EventTime, r.Source = et, src
	if r.UnmarshalVTUnsafe(b) != nil {
		return false
	}
	r.Key = r.Key[:len(r.Key):len(r.Key)]
	r.Value = r.Value[:len(r.Value):len(r.Value)]
	for _, h := range r.Headers {
		h.Value = h.Value[:len(h.Value):len(h.Value)]
	}
	return true
}

// The messages checkWire knows, and their fields.
type wireMessage uint8

const (
	wireRecord wireMessage = iota
	wireHeader
	wirePosition
	wireTimestamp
	wireString // a string field, not a message
	wireOther  // a bytes or varint field
	wireUnknown
)

func wireField(m wireMessage, num protowire.Number) (protowire.Type, wireMessage) {
	switch m {
	case wireRecord:
		switch num {
		case 1, 4: // id, content_type
			return protowire.BytesType, wireString
		case 2, 3: // key, value
			return protowire.BytesType, wireOther
		case 5: // headers
			return protowire.BytesType, wireHeader
		case 6: // event_time
			return protowire.BytesType, wireTimestamp
		case 7: // source
			return protowire.BytesType, wirePosition
		}
	case wireHeader:
		switch num {
		case 1: // name
			return protowire.BytesType, wireString
		case 2: // value
			return protowire.BytesType, wireOther
		}
	case wirePosition:
		switch num {
		case 1, 2, 3, 4, 6: // connector, stream, subject, partition, sequence
			return protowire.BytesType, wireString
		case 5: // offset
			return protowire.VarintType, wireOther
		}
	case wireTimestamp:
		switch num {
		case 1, 2: // seconds, nanos
			return protowire.VarintType, wireOther
		}
	}
	return 0, wireUnknown
}

// checkWire reports whether b, an encoded m, is one that package proto
// decodes exactly as the vtprotobuf decoder does: well formed, with every
// occurrence of every string valid UTF-8, known fields with their own wire
// types, and unknown fields with tags in the shortest form (proto stores
// those re-encoded, vtprotobuf as they come) and not in a Timestamp (whose
// vtprotobuf decoder drops them). seen has bit n set for each field n < 64
// that b holds.
func checkWire(b []byte, m wireMessage) (seen uint64, ok bool) {
	for len(b) > 0 {
		// Tags and lengths are mostly one byte: decode those inline.
		var num protowire.Number
		var typ protowire.Type
		n := 1
		if c := b[0]; c < 0x80 {
			num, typ = protowire.Number(c>>3), protowire.Type(c&7)
			if num == 0 {
				return 0, false
			}
		} else if num, typ, n = protowire.ConsumeTag(b); n < 0 || num > protowire.MaxValidNumber {
			return 0, false
		}
		b = b[n:]
		want, sub := wireField(m, num)
		switch {
		case sub == wireUnknown:
			if n != protowire.SizeTag(num) || m == wireTimestamp {
				return 0, false
			}
			n = protowire.ConsumeFieldValue(num, typ, b)
		case typ != want:
			return 0, false
		case typ == protowire.VarintType:
			_, n = protowire.ConsumeVarint(b)
		default:
			var l uint64
			if len(b) > 0 && b[0] < 0x80 {
				l, n = uint64(b[0]), 1
			} else if l, n = protowire.ConsumeVarint(b); n < 0 {
				return 0, false
			}
			if l > uint64(len(b)-n) {
				return 0, false
			}
			v := b[n : n+int(l)]
			n += int(l)
			switch sub {
			case wireString:
				if !ValidBytes(v) {
					return 0, false
				}
			case wireHeader, wirePosition, wireTimestamp:
				if _, ok := checkWire(v, sub); !ok {
					return 0, false
				}
			}
		}
		if n < 0 {
			return 0, false
		}
		if num < 64 {
			seen |= 1 << num
		}
		b = b[n:]
	}
	return seen, true
}

// ValidBytes reports whether b is valid UTF-8, quickly if it is ASCII.
func ValidBytes(b []byte) bool {
	var x uint64
	for c := b; ; c = c[8:] {
		if len(c) < 8 {
			for _, c := range c {
				x |= uint64(c)
			}
			break
		}
		x |= binary.LittleEndian.Uint64(c)
	}
	return x&0x8080808080808080 == 0 || utf8.Valid(b)
}

// CheckRecord reports whether b, an encoded Record, is one that package
// proto decodes exactly as the vtprotobuf decoder does (see checkWire).
func CheckRecord(b []byte) bool {
	_, ok := checkWire(b, wireRecord)
	return ok
}

// CheckRecordFields is CheckRecord that also returns the fields b holds:
// bit n set for each field n < 64.
func CheckRecordFields(b []byte) (seen uint64, ok bool) {
	return checkWire(b, wireRecord)
}
