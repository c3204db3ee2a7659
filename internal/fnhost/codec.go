package fnhost

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The framed mode's codec. Batches are encoded by framing with the
// vtprotobuf-generated encoder; BatchResult frames are decoded by
// resultDecoder without package proto's reflection. Both agree with package
// proto byte for byte and error for error: whatever the fast code cannot
// vouch for goes to package proto.

// validRecords reports whether every string in recs is valid UTF-8, which
// package proto requires to encode them and the vtprotobuf encoder does not
// check.
func validRecords(recs []*culvertv1.Record) bool {
	for _, r := range recs {
		if !wire.ValidRecord(r) {
			return false
		}
	}
	return true
}

// resultDecoder holds a decoded BatchResult the way result consumes it: the
// outputs of all records in one slice, and per record its range and its
// failure. It is reused from frame to frame by readLoop.
type resultDecoder struct {
	id      uint64
	results []recordResult
	outs    []Output     // handed on with each batch, then replaced
	last    int          // len(outs) of the last batch
	recs    wire.Records // where decoded records live
	ids     idArena      // where derived output ids live
	sent    *sentBatch   // the batch being answered, if known (decodeAnswer)
	// unchangedOK: the function accepted the unchanged capability, so an
	// Output may be Output.unchanged (decoded as an Output with no Record,
	// which result replaces by a copy of the input record).
	unchangedOK bool
}

type recordResult struct {
	start, end int // the record's outputs: outs[start:end]
	failure    bool
	message    string
	retryable  bool
}

func (d *resultDecoder) reset() {
	clear(d.results)
	d.id, d.results = 0, d.results[:0]
	d.outs = make([]Output, 0, max(d.last, 16))
}

// handedOn drops what the results handed on share.
func (d *resultDecoder) handedOn() {
	clear(d.results)
	d.results, d.last, d.outs = d.results[:0], len(d.outs), nil
}

// from takes a BatchResult decoded by package proto.
func (d *resultDecoder) from(br *culvertv1.BatchResult) {
	d.reset()
	d.id = br.BatchId
	for _, rr := range br.Results {
		r := recordResult{start: len(d.outs)}
		for _, o := range rr.Outputs {
			rec := o.Record
			if rec == nil && !o.Unchanged {
				rec = &culvertv1.Record{}
			}
			d.outs = append(d.outs, Output{Record: rec, To: o.Output})
		}
		r.end = len(d.outs)
		if rr.Failure != nil {
			r.failure, r.message, r.retryable = true, rr.Failure.Message, rr.Failure.Retryable
		}
		d.results = append(d.results, r)
	}
}

// decode is the fast path for the frame that matters: a FunctionMessage
// holding only a BatchResult. It decodes straight into d, without the
// intermediate messages, and nothing in d aliases b. It returns false,
// having decoded nothing usable, for any other frame and for anything in
// this one that it cannot vouch package proto would decode the same way (an
// unknown field outside records, a message field given twice, a wire type
// proto would take for an unknown field, invalid UTF-8, malformed bytes):
// package proto then decides.
func (d *resultDecoder) decode(b []byte) bool {
	// Field 18 (result), length-delimited: the only field of the frame.
	if len(b) < 3 || b[0] != 0x92 || b[1] != 0x01 {
		return false
	}
	body, n := protowire.ConsumeBytes(b[2:])
	if n < 0 || 2+n != len(b) {
		return false
	}
	d.reset()
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return false
		}
		body = body[n:]
		switch {
		case num == 1 && typ == protowire.VarintType: // batch_id
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return false
			}
			d.id, body = v, body[n:]
		case num == 2 && typ == protowire.BytesType: // results
			v, n := protowire.ConsumeBytes(body)
			if n < 0 || !d.recordResult(v) {
				return false
			}
			body = body[n:]
		default:
			return false
		}
	}
	return true
}

func (d *resultDecoder) recordResult(b []byte) bool {
	r := recordResult{start: len(d.outs)}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return false
		}
		b = b[n:]
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1: // outputs
			if !d.output(v) {
				return false
			}
		case num == 2 && !r.failure: // failure
			r.failure = true
			if !decodeFailure(v, &r) {
				return false
			}
		default:
			return false
		}
	}
	r.end = len(d.outs)
	d.results = append(d.results, r)
	return true
}

func (d *resultDecoder) output(b []byte) bool {
	var rec *culvertv1.Record
	var to string
	same := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num == 3 && typ == protowire.VarintType { // unchanged
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			same, b = v != 0, b[n:]
			continue
		}
		if typ != protowire.BytesType {
			return false
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && rec == nil: // record
			if rec = d.unchanged(len(d.results), v); rec != nil {
				continue
			}
			var ok bool
			if rec, ok = d.recs.Decode(v); !ok {
				return false
			}
		case num == 2: // output
			if !utf8.Valid(v) {
				return false
			}
			to = string(v)
		default:
			return false
		}
	}
	switch {
	case same && (rec != nil || !d.unchangedOK):
		return false // a violation: package proto decodes it, badUnchanged names it
	case same:
		if sb := d.sent; sb != nil && len(d.results) < len(sb.recs) && sb.known[len(d.results)] {
			rec = d.copyOf(sb.recs[len(d.results)])
		} // else: result copies the input record
	case rec == nil:
		rec = d.recs.New()
	}
	d.outs = append(d.outs, Output{Record: rec, To: to})
	return true
}

// badUnchanged names what is wrong with the Output.unchanged fields of br,
// if anything: sent without the capability in use, or beside a record. in
// are the records of the batch br answers, when known (nil otherwise), to
// name the record.
func badUnchanged(br *culvertv1.BatchResult, allowed bool, in []*culvertv1.Record) string {
	for i, rr := range br.GetResults() {
		for j, o := range rr.GetOutputs() {
			where := fmt.Sprintf("output %d of result %d", j, i)
			if i < len(in) {
				where += fmt.Sprintf(" (record %s)", in[i].GetId())
			}
			where += fmt.Sprintf(" of batch %d", br.GetBatchId())
			switch {
			case !o.GetUnchanged():
			case !allowed:
				return where + fmt.Sprintf(" sets unchanged, but the function did not accept the %q capability in Ready", CapUnchanged)
			case o.Record != nil:
				return where + " sets both unchanged and record"
			}
		}
	}
	return ""
}

// copyOf returns a copy of in for an output that repeats it: the same
// fields, byte slices and sub-messages, which the host never modifies
// (fillOutputs shares the input's source and event time with its outputs
// anyway). in must have no unknown fields of its own (input handles those).
func (d *resultDecoder) copyOf(in *culvertv1.Record) *culvertv1.Record {
	r := d.recs.New()
	r.Id, r.Key, r.Value, r.ContentType = in.Id, in.Key, in.Value, in.ContentType
	r.Headers, r.EventTime, r.Source = in.Headers, in.EventTime, in.Source
	return r
}

// input is the record an Output.unchanged stands for: what decoding in's
// encoding gives. That is a copy of in, unless in has unknown fields (rare:
// a record decoded from bytes keeps only fields it does not know, which
// decode the same way again); in is then encoded and decoded.
func (d *resultDecoder) input(in *culvertv1.Record) *culvertv1.Record {
	if len(in.ProtoReflect().GetUnknown()) == 0 {
		return d.copyOf(in)
	}
	rec := new(culvertv1.Record)
	if b, err := proto.Marshal(in); err == nil && proto.Unmarshal(b, rec) == nil {
		return rec
	}
	return proto.CloneOf(in)
}

func decodeFailure(b []byte, r *recordResult) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType: // message
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return false
			}
			r.message, b = string(v), b[n:]
		case num == 2 && typ == protowire.VarintType: // retryable
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			r.retryable, b = v != 0, b[n:]
		default:
			return false
		}
	}
	return true
}

// sentBatches keeps the encodings of the batches sent to an instance and
// not answered yet, oldest first. An output that is, byte for byte, the
// input record it answers (a function passing records on unchanged: a
// filter, a router, a passthrough) is then taken as a copy of that record
// instead of being decoded: same fields, the same byte slices and
// sub-messages (which the host never modifies; fillOutputs already shares
// the input's source and event time). It is safe for one writer and one
// reader.
type sentBatches struct {
	mu   sync.Mutex
	q    []*sentBatch // sent, oldest first
	free []*sentBatch
}

// sentBatch is one Batch frame as written, and where each record's
// encoding is in it.
type sentBatch struct {
	id    uint64
	buf   []byte
	recs  []*culvertv1.Record
	spans []span // recs[i] is buf[spans[i].start:spans[i].end]
	// known[i]: recs[i] has no unknown fields (onlyKnown), found while
	// the frame and the records are fresh in the cache.
	known []bool
}

type span struct{ start, end int }

// write encodes m (a HostMessage holding the Batch of call) as one frame
// and writes it with one call to w, keeping the encoding until the answer.
func (s *sentBatches) write(w io.Writer, m *culvertv1.HostMessage, maxFrame int, call *Call, p *pipe) error {
	s.mu.Lock()
	var sb *sentBatch
	if n := len(s.free); n > 0 {
		sb, s.free = s.free[n-1], s.free[:n-1]
	} else {
		sb = &sentBatch{}
	}
	s.mu.Unlock()
	b, err := framing.Append(sb.buf[:0], m, maxFrame)
	if err != nil {
		s.release(sb)
		return err
	}
	sb.buf, sb.id, sb.recs = b, call.id, call.Records
	if !sb.index() {
		sb.recs = nil // not as expected: no record is taken from it
	}
	s.mu.Lock()
	s.q = append(s.q, sb)
	s.mu.Unlock()
	p.fit(len(b))
	_, err = w.Write(b)
	return err
}

// index finds the records in the frame: a varint length, then the
// HostMessage's batch field (17) and its records (field 2), in order.
func (sb *sentBatch) index() bool {
	sb.spans = sb.spans[:0]
	_, n := protowire.ConsumeVarint(sb.buf)
	if n < 0 || len(sb.buf) < n+2 || sb.buf[n] != 0x8a || sb.buf[n+1] != 0x01 {
		return false
	}
	off := n + 2
	l, n := protowire.ConsumeVarint(sb.buf[off:])
	if n < 0 || uint64(len(sb.buf)-off-n) != l {
		return false
	}
	off += n
	for off < len(sb.buf) {
		num, typ, n := protowire.ConsumeTag(sb.buf[off:])
		if n < 0 {
			return false
		}
		off += n
		if num == 2 && typ == protowire.BytesType {
			l, n := protowire.ConsumeVarint(sb.buf[off:])
			if n < 0 || l > uint64(len(sb.buf)-off-n) {
				return false
			}
			sb.spans = append(sb.spans, span{off + n, off + n + int(l)})
			off += n + int(l)
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, sb.buf[off:])
		if n < 0 {
			return false
		}
		off += n
	}
	if len(sb.spans) != len(sb.recs) {
		return false
	}
	sb.known = sb.known[:0]
	for i, sp := range sb.spans {
		sb.known = append(sb.known, onlyKnown(sb.buf[sp.start:sp.end], sb.recs[i]))
	}
	return true
}

// head is the oldest batch not answered, or nil.
func (s *sentBatches) head() *sentBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) == 0 {
		return nil
	}
	return s.q[0]
}

// answered drops the batches up to id, once their answer was decoded and
// handed on.
func (s *sentBatches) answered(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.q) > 0 && s.q[0].id <= id {
		sb := s.q[0]
		s.q[0] = nil
		s.q = s.q[1:]
		s.releaseLocked(sb)
	}
}

func (s *sentBatches) release(sb *sentBatch) {
	s.mu.Lock()
	s.releaseLocked(sb)
	s.mu.Unlock()
}

func (s *sentBatches) releaseLocked(sb *sentBatch) {
	sb.recs = nil
	if cap(sb.buf) > 16<<20 {
		sb.buf = nil // do not keep a huge buffer after one large frame
	}
	if len(s.free) < 4 {
		s.free = append(s.free, sb)
	}
}

// decodeAnswer decodes b like decode, taking outputs that repeat their
// input record from sent (the batch b should answer; nil: none). If b
// turns out to answer another batch, it decodes b again without it.
func (d *resultDecoder) decodeAnswer(b []byte, sent *sentBatch) bool {
	if sent == nil || sent.recs == nil {
		return d.decode(b)
	}
	d.sent = sent
	ok := d.decode(b)
	d.sent = nil
	if ok && d.id != sent.id {
		ok = d.decode(b)
	}
	return ok
}

// unchanged returns a copy of input record i of d.sent if v is its
// encoding, and nil otherwise. A record with unknown fields of its own is
// decoded instead (the copy would not have them; those of its headers,
// source and event time are shared with them).
func (d *resultDecoder) unchanged(i int, v []byte) *culvertv1.Record {
	sb := d.sent
	if sb == nil || i >= len(sb.spans) {
		return nil
	}
	sp := sb.spans[i]
	in := sb.recs[i]
	// v is the encoding of in, unknown fields included: in must have none,
	// or the copy would lack them (or, for unknown bytes that repeat a
	// known field, differ from what decoding v gives).
	if !sb.known[i] || !bytes.Equal(v, sb.buf[sp.start:sp.end]) {
		return nil
	}
	return d.copyOf(in)
}

// onlyKnown reports whether v, the encoding of in, holds nothing but in's
// own known fields: each field in has set exactly once, one field 5 per
// header, and no other field. The encoder writes in's unknown fields after
// its known ones, so any unknown bytes in has (a field of another number,
// or one that repeats or adds a known field) show up as a field too many.
// This reads the top-level tags of v instead of asking in for its unknown
// fields, which costs in its first ProtoReflect.
func onlyKnown(v []byte, in *culvertv1.Record) bool {
	var count [8]int
	for len(v) > 0 {
		// Fields 1 to 7 are all length-delimited, with one-byte tags; a
		// longer tag is a field above 15, another wire type is not theirs.
		c := v[0]
		num := c >> 3
		if c&7 != byte(protowire.BytesType) || num < 1 || num > 7 {
			return false
		}
		var l uint64
		n := 2
		if len(v) > 1 && v[1] < 0x80 {
			l = uint64(v[1])
		} else if l, n = protowire.ConsumeVarint(v[1:]); n < 0 {
			return false
		} else {
			n++
		}
		if l > uint64(len(v)-n) {
			return false
		}
		count[num]++
		v = v[n+int(l):]
	}
	want := [8]int{
		1: b2i(in.Id != ""), 2: b2i(len(in.Key) > 0), 3: b2i(len(in.Value) > 0), 4: b2i(in.ContentType != ""),
		5: len(in.Headers), 6: b2i(in.EventTime != nil), 7: b2i(in.Source != nil),
	}
	return count == want
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
