package kafkamsg

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/culvert-dev/culvert/connectors"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

var ts = time.Date(2026, 11, 26, 12, 0, 0, 123_000_000, time.UTC)

func TestDecode(t *testing.T) {
	pos := &culvertv1.Position{Connector: "kafka", Stream: "t", Subject: "t", Partition: "2", Offset: 41}
	encoded, _ := proto.Marshal(&culvertv1.Record{Id: "orig", Key: []byte("k"), Value: []byte("inner")})
	tests := []struct {
		name string
		in   *kgo.Record
		want *culvertv1.Record
	}{
		{"raw value with key, headers in order, content type, timestamp",
			&kgo.Record{Topic: "t", Partition: 2, Offset: 41, Key: []byte("k1"), Value: []byte("v"), Timestamp: ts,
				Headers: []kgo.RecordHeader{{Key: "b", Value: []byte("1")}, {Key: "Content-Type", Value: []byte("text/plain")}, {Key: "a", Value: []byte("2")}, {Key: "b", Value: []byte("3")}}},
			&culvertv1.Record{Id: "kafka:t:2:41", Key: []byte("k1"), Value: []byte("v"), ContentType: "text/plain", EventTime: timestamppb.New(ts), Source: pos,
				Headers: []*culvertv1.Header{{Name: "b", Value: []byte("1")}, {Name: "a", Value: []byte("2")}, {Name: "b", Value: []byte("3")}}}},
		{"second Content-Type stays a header",
			&kgo.Record{Topic: "t", Partition: 2, Offset: 41, Value: []byte("v"), Timestamp: ts,
				Headers: []kgo.RecordHeader{{Key: "Content-Type", Value: []byte("a/b")}, {Key: "Content-Type", Value: []byte("c/d")}}},
			&culvertv1.Record{Id: "kafka:t:2:41", Value: []byte("v"), ContentType: "a/b", EventTime: timestamppb.New(ts), Source: pos,
				Headers: []*culvertv1.Header{{Name: "Content-Type", Value: []byte("c/d")}}}},
		{"invalid UTF-8 header name replaced",
			&kgo.Record{Topic: "t", Partition: 2, Offset: 41, Value: []byte("v"), Headers: []kgo.RecordHeader{{Key: "x\xff", Value: []byte{0, 1}}}},
			&culvertv1.Record{Id: "kafka:t:2:41", Value: []byte("v"), Source: pos, Headers: []*culvertv1.Header{{Name: "x\uFFFD", Value: []byte{0, 1}}}}},
		{"record encoding keeps the inner id",
			&kgo.Record{Topic: "t", Partition: 2, Offset: 41, Key: []byte("k"), Value: encoded, Timestamp: ts,
				Headers: []kgo.RecordHeader{{Key: "Content-Type", Value: []byte(connectors.RecordContentType)}}},
			&culvertv1.Record{Id: "orig", Key: []byte("k"), Value: []byte("inner"), Source: pos}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, protocmp.Transform()); d != "" {
				t.Errorf("Decode (-want +got):\n%s", d)
			}
			// A Batch decodes the same, each record in its own slot.
			var b Batch
			b.Grow(2)
			first, err := b.Decode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			second := b.DecodeRaw(tc.in)
			third := b.DecodeRaw(tc.in) // beyond Grow: allocated
			if d := cmp.Diff(tc.want, first, protocmp.Transform()); d != "" {
				t.Errorf("Batch.Decode (-want +got):\n%s", d)
			}
			if d := cmp.Diff(DecodeRaw(tc.in), second, protocmp.Transform()); d != "" {
				t.Errorf("Batch.DecodeRaw (-want +got):\n%s", d)
			}
			if first == second || second == third || !proto.Equal(second, third) {
				t.Errorf("Batch records share memory or differ: %p %p %p", first, second, third)
			}
		})
	}
	_, err := Decode(&kgo.Record{Topic: "t", Value: []byte{0xff, 0xff}, Headers: []kgo.RecordHeader{{Key: "Content-Type", Value: []byte(connectors.RecordContentType)}}})
	if err == nil {
		t.Errorf("Decode of a broken record-encoded value: no error")
	}
}

func TestRoundTrip(t *testing.T) {
	rec := &culvertv1.Record{Id: "r1", Key: []byte{0, 1, 2}, Value: []byte("hello"), ContentType: "text/plain", EventTime: timestamppb.New(ts),
		Headers: []*culvertv1.Header{{Name: "x", Value: []byte("1")}, {Name: "y", Value: []byte{0xff}}, {Name: "x", Value: []byte("2")}}}
	for _, enc := range []Encoding{EncodingRecord, EncodingValue} {
		t.Run(enc.String(), func(t *testing.T) {
			e := NewEncoder(enc)
			kr, buf, err := e.Encode("out", rec)
			if err != nil {
				t.Fatal(err)
			}
			if string(kr.Key) != string(rec.Key) || kr.Topic != "out" {
				t.Errorf("Kafka key %q topic %q", kr.Key, kr.Topic)
			}
			kr.Partition, kr.Offset = 0, 9
			if kr.Timestamp.IsZero() {
				t.Fatalf("no timestamp set from the event time")
			}
			got, err := Decode(kr)
			if err != nil {
				t.Fatal(err)
			}
			want := proto.Clone(rec).(*culvertv1.Record)
			want.Source = &culvertv1.Position{Connector: "kafka", Stream: "out", Subject: "out", Partition: "0", Offset: 9}
			if enc == EncodingValue {
				want.Id = "kafka:out:0:9" // value encoding carries no id
			}
			if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
			e.Release(buf)
		})
	}
	_, _, err := NewEncoder(EncodingValue).Encode("out", &culvertv1.Record{EventTime: timestamppb.New(time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC))})
	if !errors.Is(err, ErrNotRepresentable) {
		t.Errorf("event time before 1970: %v, want ErrNotRepresentable", err)
	}
}

// FuzzDecode feeds arbitrary Kafka records to Decode: it must not panic,
// must produce a Record that marshals (valid UTF-8 strings), and a raw
// record must survive value encoding and decoding again unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("k"), []byte("v"), "a", []byte("1"), "Content-Type", []byte("text/plain"), int64(1700000000000), false)
	f.Add([]byte(nil), []byte{0xff, 0x00}, "x\xff", []byte{0}, "b", []byte(nil), int64(0), false)
	enc, _ := proto.Marshal(&culvertv1.Record{Id: "i", Value: []byte("v"), Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}}})
	f.Add([]byte("k"), enc, "Content-Type", []byte(connectors.RecordContentType), "z", []byte("z"), int64(5), true)
	f.Fuzz(func(t *testing.T, key, value []byte, h1 string, v1 []byte, h2 string, v2 []byte, ms int64, asRecord bool) {
		kr := &kgo.Record{Topic: "t", Partition: 1, Offset: 7, Key: key, Value: value, Timestamp: time.UnixMilli(ms),
			Headers: []kgo.RecordHeader{{Key: h1, Value: v1}, {Key: h2, Value: v2}}}
		if asRecord {
			kr.Headers = append([]kgo.RecordHeader{{Key: "Content-Type", Value: []byte(connectors.RecordContentType)}}, kr.Headers...)
		}
		rec, err := Decode(kr)
		if err != nil {
			rec = DecodeRaw(kr)
		}
		if _, err := proto.Marshal(rec); err != nil {
			t.Fatalf("decoded record does not marshal: %v", err)
		}
		if rec.GetSource().GetPartition() != "1" || rec.GetId() == "" {
			t.Fatalf("position or id missing: %v", rec)
		}
		if err != nil || asRecord || !utf8.ValidString(h1) || !utf8.ValidString(h2) || contentType(kr) == connectors.RecordContentType {
			return // only raw records must survive the value encoding
		}
		out, _, err := NewEncoder(EncodingValue).Encode("t", rec)
		if err != nil {
			return // event time before 1970
		}
		out.Partition, out.Offset = 1, 7
		again := DecodeRaw(out)
		if d := cmp.Diff(rec, again, protocmp.Transform()); d != "" {
			t.Fatalf("value encoding round trip (-first +second):\n%s", d)
		}
	})
}

// BenchmarkDecode measures decoding one raw Kafka record, the source's
// per-record cost (allocations included).
func BenchmarkDecode(b *testing.B) {
	r := &kgo.Record{Topic: "in", Partition: 2, Offset: 123456, Key: []byte("key-1"), Value: make([]byte, 100), Timestamp: time.UnixMilli(1_700_000_000_000)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDecodeRawID: the id DecodeRaw builds in the record's own allocation
// is ID's, for topics and offsets that fit it and that do not, and two
// records never share one.
func TestDecodeRawID(t *testing.T) {
	tests := []struct {
		topic     string
		partition int32
		offset    int64
	}{
		{"t", 0, 0},
		{"orders", 2, 41},
		{strings.Repeat("x", 27), math.MaxInt32, math.MaxInt64},
		{strings.Repeat("y", 28), math.MaxInt32, math.MaxInt64},
		{strings.Repeat("z", 249), 7, 1 << 40},
	}
	for _, tc := range tests {
		a := DecodeRaw(&kgo.Record{Topic: tc.topic, Partition: tc.partition, Offset: tc.offset})
		b := DecodeRaw(&kgo.Record{Topic: tc.topic, Partition: tc.partition, Offset: tc.offset + 1})
		if want := ID(tc.topic, tc.partition, tc.offset); a.Id != want {
			t.Errorf("id %q, want %q", a.Id, want)
		}
		if want := ID(tc.topic, tc.partition, tc.offset+1); b.Id != want {
			t.Errorf("id %q, want %q", b.Id, want)
		}
	}
}
