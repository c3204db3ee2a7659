package fnhost

import (
	"unicode/utf8"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/encoding/protowire"
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
			if rec == nil {
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
		case num == 1 && rec == nil: // record
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
	if rec == nil {
		rec = d.recs.New()
	}
	d.outs = append(d.outs, Output{Record: rec, To: to})
	return true
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
