package kinesis

import (
	"bytes"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// recordMagic starts the data of a Kinesis record that holds a whole
// protobuf Record (the sink's "record" encoding). Kinesis records have no
// headers, so the marker is in the data: a protobuf message never starts
// with a zero byte (field number 0 is invalid), and neither does text.
var recordMagic = []byte{0x00, 'c', 'v', 'r', 0x01}

// encodeRecord returns the data of a Kinesis record for rec: the marked
// protobuf Record ("record" encoding) or the value alone ("value").
func encodeRecord(rec *culvertv1.Record, valueOnly bool) ([]byte, error) {
	if valueOnly {
		return rec.GetValue(), nil
	}
	b := make([]byte, len(recordMagic), len(recordMagic)+proto.Size(rec))
	copy(b, recordMagic)
	b, err := proto.MarshalOptions{}.MarshalAppend(b, rec)
	if err != nil {
		return nil, fmt.Errorf("encoding record %q: %w", rec.GetId(), err)
	}
	return b, nil
}

// EncodeRecord returns the Kinesis data the sink's record encoding writes
// for rec, for producers outside Culvert (tests, tools) that want keys,
// headers and content types to survive.
func EncodeRecord(rec *culvertv1.Record) ([]byte, error) { return encodeRecord(rec, false) }

// decodeRecord turns the data of a Kinesis record into a Record. Data with
// the record marker is parsed as a Record; if that fails the data is kept
// as the value and the error says why. Otherwise the data is the value and
// the partition key is the key. Source positions are set by the caller.
func decodeRecord(data []byte, partitionKey string, arrival time.Time) (*culvertv1.Record, error) {
	if bytes.HasPrefix(data, recordMagic) {
		r := &culvertv1.Record{}
		err := proto.Unmarshal(data[len(recordMagic):], r)
		if err == nil {
			if r.EventTime == nil && !arrival.IsZero() {
				r.EventTime = timestamppb.New(arrival)
			}
			return r, nil
		}
		out := rawRecord(data, partitionKey, arrival)
		return out, fmt.Errorf("data is marked as a Culvert record but does not parse (kept as the raw value): %w", err)
	}
	return rawRecord(data, partitionKey, arrival), nil
}

func rawRecord(data []byte, partitionKey string, arrival time.Time) *culvertv1.Record {
	r := &culvertv1.Record{Value: data}
	if partitionKey != "" {
		r.Key = []byte(partitionKey)
	}
	if !arrival.IsZero() {
		r.EventTime = timestamppb.New(arrival)
	}
	return r
}
