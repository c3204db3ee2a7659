package culvert

import (
	"unicode/utf8"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Serve's codec. Results are encoded by framing with the
// vtprotobuf-generated encoder; Batch frames are decoded by batchDecoder
// without package proto's reflection. Both agree with package proto byte for
// byte and error for error: whatever the fast code cannot vouch for goes to
// package proto.

// validBatchResult reports whether every string in br is valid UTF-8, which
// package proto requires to encode it and the vtprotobuf encoder does not
// check.
func validBatchResult(br *culvertv1.BatchResult) bool {
	for _, rr := range br.Results {
		for _, o := range rr.GetOutputs() {
			if !wire.ValidString(o.GetOutput()) || !wire.ValidRecord(o.GetRecord()) {
				return false
			}
		}
		if f := rr.GetFailure(); f != nil && !utf8.ValidString(f.Message) {
			return false
		}
	}
	return true
}

// batchDecoder is the fast path for the frame that matters: a HostMessage
// holding only a Batch.
type batchDecoder struct {
	last int          // records in the last batch
	recs wire.Records // where decoded records live
	// reuse: the batch's record slice is kept for the next batch (no
	// handler sees it); done clears it.
	reuse bool
	slice []*culvertv1.Record
	// alias (ReuseRecords): records alias the frame and live in slabs
	// reused from batch to batch.
	alias bool
	slab  slab
}

// slab holds the records of one batch and what they point to, for
// ReuseRecords: reset before each batch, grown as batches grow.
type slab struct {
	recs  []culvertv1.Record
	pos   []culvertv1.Position
	times []timestamppb.Timestamp
	n     int // records used in this batch
}

func (sl *slab) reset() {
	clear(sl.recs[:sl.n])
	clear(sl.pos[:sl.n])
	clear(sl.times[:sl.n])
	sl.n = 0
}

// decode decodes b, an encoded Record, into the next record of the slab;
// the record aliases b. It returns false when wire cannot vouch that
// package proto would decode b the same way.
func (sl *slab) decode(b []byte) (*culvertv1.Record, bool) {
	seen, ok := wire.CheckRecordFields(b)
	if !ok {
		return nil, false
	}
	if sl.n == len(sl.recs) {
		// Grown, not moved: records already handed out point into the
		// old arrays, which they keep alive until the next batch.
		n := max(2*len(sl.recs), 64)
		sl.recs, sl.pos, sl.times = make([]culvertv1.Record, n), make([]culvertv1.Position, n), make([]timestamppb.Timestamp, n)
		sl.n = 0
	}
	i := sl.n
	sl.n++
	r := &sl.recs[i]
	// The event time and source b holds, if any, come from the slab.
	var et *timestamppb.Timestamp
	var src *culvertv1.Position
	if seen&(1<<6) != 0 {
		et = &sl.times[i]
	}
	if seen&(1<<7) != 0 {
		src = &sl.pos[i]
	}
	if !wire.UnmarshalAliased(b, r, et, src) {
		return nil, false
	}
	return r, true
}

// done drops the references to the last batch's records held by the
// reused slice.
func (d *batchDecoder) done() {
	clear(d.slice[:cap(d.slice)])
	if d.alias {
		d.slab.reset()
	}
}

// decode decodes a frame body; nothing in the batch aliases b unless
// alias is set (ReuseRecords). It returns
// false, having decoded nothing usable, for any other frame and for
// anything in this one that it cannot vouch package proto would decode the
// same way (an unknown field outside records, a wire type proto would take
// for an unknown field, invalid UTF-8, malformed bytes): package proto then
// decides.
func (d *batchDecoder) decode(b []byte) (*culvertv1.Batch, bool) {
	// Field 17 (batch), length-delimited: the only field of the frame.
	if len(b) < 3 || b[0] != 0x8a || b[1] != 0x01 {
		return nil, false
	}
	body, n := protowire.ConsumeBytes(b[2:])
	if n < 0 || 2+n != len(b) {
		return nil, false
	}
	bt := &culvertv1.Batch{}
	if d.alias {
		d.slab.reset()
	}
	if d.reuse || d.alias {
		bt.Records = d.slice[:0]
	} else {
		bt.Records = make([]*culvertv1.Record, 0, d.last)
	}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return nil, false
		}
		body = body[n:]
		if num == 2 && typ == protowire.BytesType { // records
			v, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, false
			}
			body = body[n:]
			var r *culvertv1.Record
			var ok bool
			if d.alias {
				r, ok = d.slab.decode(v)
			} else {
				r, ok = d.recs.Decode(v)
			}
			if !ok {
				return nil, false
			}
			bt.Records = append(bt.Records, r)
			continue
		}
		if typ != protowire.VarintType {
			return nil, false
		}
		v, n := protowire.ConsumeVarint(body)
		if n < 0 {
			return nil, false
		}
		body = body[n:]
		switch num {
		case 1:
			bt.Id = v
		case 3:
			bt.DeadlineUnixMs = int64(v)
		case 4:
			bt.Attempt = uint32(v)
		default:
			return nil, false
		}
	}
	d.last = len(bt.Records)
	if d.reuse || d.alias {
		d.slice = bt.Records
	}
	if len(bt.Records) == 0 {
		bt.Records = nil // as proto leaves it
	}
	return bt, true
}
