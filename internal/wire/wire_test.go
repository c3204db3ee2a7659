package wire

import (
	"bytes"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func field(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

func TestCheckRecord(t *testing.T) {
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"empty", nil, true},
		{"id", field(1, []byte("é")), true},
		{"unknown varint", cat(tag(99, protowire.VarintType), []byte{1}), true},
		{"unknown group", cat(tag(99, protowire.StartGroupType), tag(1, protowire.VarintType), []byte{1}, tag(99, protowire.EndGroupType)), true},
		{"header and position", cat(field(5, field(1, []byte("n"))), field(7, cat(field(2, []byte("s")), tag(5, protowire.VarintType), []byte{7}))), true},
		{"event time", field(6, cat(tag(1, protowire.VarintType), []byte{0x80, 1}, tag(2, protowire.VarintType), []byte{5})), true},
		// Invalid UTF-8 in a string overwritten later: proto refuses.
		{"invalid then valid id", cat(field(1, []byte{0xff}), field(1, []byte("a"))), false},
		{"invalid header name", field(5, field(1, []byte{0xff})), false},
		{"invalid position", field(7, field(6, []byte{0xc3})), false},
		// Unknown field with an overlong tag: proto stores it re-encoded.
		{"overlong unknown tag", []byte{0x98, 0x86, 0x00, 1}, false},
		{"unknown field in event time", field(6, cat(tag(9, protowire.VarintType), []byte{1})), false},
		{"unbalanced group", cat(tag(99, protowire.StartGroupType), tag(98, protowire.EndGroupType)), false},
		{"varint past 64 bits", cat(tag(1, protowire.VarintType), bytes.Repeat([]byte{0xff}, 9), []byte{0x7f}), false},
		{"id as varint", cat(tag(1, protowire.VarintType), []byte{1}), false},
		{"offset as bytes", field(7, field(5, nil)), false},
		{"field 0", []byte{0x02, 0}, false},
		{"truncated", field(3, []byte("value"))[:4], false},
	}
	for _, c := range tests {
		if got := CheckRecord(c.b); got != c.ok {
			t.Errorf("%s: CheckRecord(%x) = %v, want %v", c.name, c.b, got, c.ok)
		}
		if c.ok {
			// Whatever CheckRecord accepts, proto and vtprotobuf decode alike.
			var v, p culvertv1.Record
			if err := v.UnmarshalVTUnsafe(bytes.Clone(c.b)); err != nil {
				t.Errorf("%s: UnmarshalVTUnsafe: %v", c.name, err)
			}
			if err := proto.Unmarshal(c.b, &p); err != nil {
				t.Errorf("%s: proto.Unmarshal: %v", c.name, err)
			}
			if !proto.Equal(&v, &p) {
				t.Errorf("%s: vtprotobuf decoded %v, proto %v", c.name, &v, &p)
			}
		}
	}
}

// TestDecodeOwnsItsBytes checks that records decoded into a shared arena
// behave as if they had their own copies, and do not alias their input.
func TestDecodeOwnsItsBytes(t *testing.T) {
	rec := &culvertv1.Record{Id: "a", Key: []byte("key"), Value: []byte("value"), ContentType: "text/plain",
		Headers: []*culvertv1.Header{{Name: "h", Value: []byte("hv")}, {Name: "i", Value: []byte("iv")}}}
	b, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var d Records
	r0, ok0 := d.Decode(b)
	r1, ok1 := d.Decode(b)
	if !ok0 || !ok1 {
		t.Fatal("Decode refused a plain record")
	}
	clear(b) // frame buffers are reused
	r0.Key = append(r0.Key, "XXXXXXXXXXXXXXXX"...)
	r0.Value = append(r0.Value, "XXXXXXXXXXXXXXXX"...)
	r0.Headers[0].Value = append(r0.Headers[0].Value, "XXXXXXXXXXXXXXXX"...)
	for i := range r0.Value {
		r0.Value[i] = 'Y'
	}
	if !proto.Equal(r1, rec) {
		t.Errorf("the second record changed: %v", r1)
	}
	want := proto.Clone(rec).(*culvertv1.Record)
	want.Key = []byte("keyXXXXXXXXXXXXXXXX")
	want.Value = bytes.Repeat([]byte{'Y'}, len("valueXXXXXXXXXXXXXXXX"))
	want.Headers[0].Value = []byte("hvXXXXXXXXXXXXXXXX")
	if !proto.Equal(r0, want) {
		t.Errorf("the first record is %v, want %v", r0, want)
	}
}

func TestValidRecord(t *testing.T) {
	tests := []struct {
		name string
		rec  *culvertv1.Record
		ok   bool
	}{
		{"nil", nil, true},
		{"ascii", &culvertv1.Record{Id: "abc", Source: &culvertv1.Position{Subject: "a.b"}}, true},
		{"utf8", &culvertv1.Record{Id: "é", Headers: []*culvertv1.Header{{Name: "ü"}}}, true},
		{"bad id", &culvertv1.Record{Id: "\xff"}, false},
		{"bad header name", &culvertv1.Record{Headers: []*culvertv1.Header{{Name: "\xc3"}}}, false},
		{"bad subject", &culvertv1.Record{Source: &culvertv1.Position{Subject: "a\xffb"}}, false},
		{"binary value is fine", &culvertv1.Record{Value: []byte{0xff}}, true},
	}
	for _, tc := range tests {
		if got := ValidRecord(tc.rec); got != tc.ok {
			t.Errorf("%s: ValidRecord = %v, want %v", tc.name, got, tc.ok)
		}
		if tc.rec != nil {
			_, err := proto.Marshal(tc.rec)
			if (err == nil) != tc.ok {
				t.Errorf("%s: ValidRecord disagrees with proto.Marshal (%v)", tc.name, err)
			}
		}
	}
}

// decodeCases are encoded records that Decode must decode as proto does,
// with the event time and source present exactly when proto's are.
func decodeCases(t testing.TB) map[string][]byte {
	t.Helper()
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	enc := func(r *culvertv1.Record) []byte {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return map[string][]byte{
		"empty":            nil,
		"no source":        enc(&culvertv1.Record{Id: "a", Value: []byte("v")}),
		"source":           enc(&culvertv1.Record{Id: "a", Source: &culvertv1.Position{Connector: "kafka", Partition: "2", Offset: 7}}),
		"empty source":     field(7, nil),
		"event time":       enc(&culvertv1.Record{EventTime: timestamppb.New(time.Unix(1700000000, 5))}),
		"empty event time": field(6, nil),
		"both, twice":      cat(field(7, field(1, []byte("x"))), field(6, nil), field(7, field(3, []byte("s")))),
		"headers":          enc(&culvertv1.Record{Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}}}),
	}
}

// TestDecodeMatchesProto: records decoded into the shared chunks equal
// proto's decoding, nil sub-messages included, and do not share chunk
// slots with each other.
func TestDecodeMatchesProto(t *testing.T) {
	var d Records
	var got []*culvertv1.Record
	var wants []*culvertv1.Record
	for name, b := range decodeCases(t) {
		want := &culvertv1.Record{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r, ok := d.Decode(bytes.Clone(b))
		if !ok {
			t.Fatalf("%s: Decode refused %x", name, b)
		}
		if !proto.Equal(r, want) || (r.Source == nil) != (want.Source == nil) || (r.EventTime == nil) != (want.EventTime == nil) {
			t.Errorf("%s: Decode gave %v (source %v, event time %v), proto %v", name, r, r.Source != nil, r.EventTime != nil, want)
		}
		got, wants = append(got, r), append(wants, want)
	}
	for i, r := range got { // none was overwritten by a later decode
		if !proto.Equal(r, wants[i]) {
			t.Errorf("record %d changed to %v, want %v", i, r, wants[i])
		}
	}
}

// FuzzDecode: whatever Decode accepts, proto decodes to an equal record
// with the same optional sub-messages present.
func FuzzDecode(f *testing.F) {
	for _, b := range decodeCases(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Records
		r, ok := d.Decode(bytes.Clone(b))
		if !ok {
			return
		}
		want := &culvertv1.Record{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatalf("Decode accepted %x, proto refused it: %v", b, err)
		}
		if !proto.Equal(r, want) || (r.Source == nil) != (want.Source == nil) || (r.EventTime == nil) != (want.EventTime == nil) {
			t.Fatalf("%x: Decode gave %v, proto %v", b, r, want)
		}
	})
}

// BenchmarkDecode measures decoding a Kafka-sourced record of 100 bytes
// into the chunks.
func BenchmarkDecode(b *testing.B) {
	rec := &culvertv1.Record{Id: "kafka:in:2:123456", Key: []byte("key-42"), Value: bytes.Repeat([]byte{'x'}, 100),
		EventTime: timestamppb.New(time.Unix(1700000000, 0)),
		Source:    &culvertv1.Position{Connector: "kafka", Stream: "in", Subject: "in", Partition: "2", Offset: 123456}}
	enc, err := proto.Marshal(rec)
	if err != nil {
		b.Fatal(err)
	}
	var d Records
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := d.Decode(enc); !ok {
			b.Fatal("refused")
		}
	}
}
