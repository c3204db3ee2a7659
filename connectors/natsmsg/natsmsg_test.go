package natsmsg_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func hdr(name, value string) *culvertv1.Header {
	return &culvertv1.Header{Name: name, Value: []byte(value)}
}

func TestDecodeRaw(t *testing.T) {
	et := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	tests := []struct {
		name string
		h    nats.Header
		want *culvertv1.Record
	}{
		{"no headers", nil, &culvertv1.Record{Value: []byte("v")}},
		{
			"headers sorted by name, values in order",
			nats.Header{"b": {"1", "2"}, "a": {"x"}, "C": {"y"}},
			&culvertv1.Record{Value: []byte("v"), Headers: []*culvertv1.Header{hdr("C", "y"), hdr("a", "x"), hdr("b", "1"), hdr("b", "2")}},
		},
		{
			"mapped headers",
			nats.Header{"Content-Type": {"application/json"}, "Culvert-Key": {"k1"}, "Culvert-Event-Time": {et.Format(time.RFC3339Nano)}, "Nats-Msg-Id": {"m"}},
			&culvertv1.Record{Value: []byte("v"), ContentType: "application/json", Key: []byte("k1"), EventTime: timestamppb.New(et),
				Headers: []*culvertv1.Header{hdr("Nats-Msg-Id", "m")}},
		},
		{
			"base64 key wins, bad event time stays a header",
			nats.Header{"Culvert-Key": {"k1"}, "Culvert-Key-Base64": {"AAEC"}, "Culvert-Event-Time": {"yesterday"}},
			&culvertv1.Record{Value: []byte("v"), Key: []byte{0, 1, 2}, Headers: []*culvertv1.Header{hdr("Culvert-Event-Time", "yesterday")}},
		},
		{
			"bad base64 key is dropped",
			nats.Header{"Culvert-Key-Base64": {"!!"}},
			&culvertv1.Record{Value: []byte("v")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := natsmsg.Decode(tt.h, []byte("v"))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got, protocmp.Transform()); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestDecodeRecord(t *testing.T) {
	want := &culvertv1.Record{Id: "x", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
		Headers: []*culvertv1.Header{hdr("b", "1"), hdr("a", "2"), hdr("b", "3")}, EventTime: timestamppb.Now()}
	body, _ := proto.Marshal(want)
	h := nats.Header{"Content-Type": {connectors.RecordContentType}, "Culvert-Key": {"ignored"}, "Other": {"ignored"}}
	got, err := natsmsg.Decode(h, body)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	if _, err := natsmsg.Decode(h, []byte{0xff, 0xff}); err == nil {
		t.Errorf("garbage body with the record content type decoded")
	}
}

func TestEncodeRecordKeepsEverything(t *testing.T) {
	enc := natsmsg.NewEncoder(natsmsg.EncodingRecord)
	in := &culvertv1.Record{Id: "js:S:1", Key: []byte{0, '\n'}, Value: []byte("v"),
		Headers: []*culvertv1.Header{hdr("b", "1"), hdr("a", " spaced "), hdr("b", "3"), {Name: "bin", Value: []byte{0, 1}}}}
	for range 3 { // exercise buffer reuse
		m, buf, err := enc.Encode("s", in)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("Content-Type") != connectors.RecordContentType || m.Header.Get("Nats-Msg-Id") != "js:S:1" || m.Header.Get("Culvert-Key-Base64") != "AAo=" {
			t.Errorf("headers %v", m.Header)
		}
		got, err := natsmsg.Decode(m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(in, got, protocmp.Transform()); d != "" {
			t.Errorf("(-want +got)\n%s", d)
		}
		enc.Release(buf)
	}
}

func TestEncodeValue(t *testing.T) {
	enc := natsmsg.NewEncoder(natsmsg.EncodingValue)
	et := time.Date(2024, 5, 6, 7, 8, 9, 1, time.UTC)
	in := &culvertv1.Record{Id: "id1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain", EventTime: timestamppb.New(et),
		Headers: []*culvertv1.Header{hdr("b", "1"), hdr("a", "2"), hdr("b", "3")}}
	m, buf, err := enc.Encode("s", in)
	if err != nil || buf != nil {
		t.Fatal(err, buf)
	}
	want := nats.Header{"b": {"1", "3"}, "a": {"2"}, "Content-Type": {"text/plain"}, "Culvert-Key": {"k"},
		"Culvert-Event-Time": {"2024-05-06T07:08:09.000000001Z"}, "Nats-Msg-Id": {"id1"}}
	if d := cmp.Diff(want, m.Header); d != "" {
		t.Errorf("headers (-want +got)\n%s", d)
	}
	got, _ := natsmsg.Decode(m.Header, m.Data)
	if got.Headers[0].Name != "Nats-Msg-Id" { // the id comes back as a header
		t.Fatalf("headers %v", got.Headers)
	}
	got.Headers = got.Headers[1:]
	in.Id = ""
	in.Headers = []*culvertv1.Header{hdr("a", "2"), hdr("b", "1"), hdr("b", "3")} // per-name order only
	if d := cmp.Diff(in, got, protocmp.Transform()); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}

	for _, bad := range []*culvertv1.Header{hdr("a b", "x"), hdr("a:b", "x"), hdr("x", "a\r\nb"), hdr("x", " lead"), {Name: "x", Value: []byte{0xff}}} {
		_, _, err := enc.Encode("s", &culvertv1.Record{Headers: []*culvertv1.Header{bad}})
		if !errors.Is(err, natsmsg.ErrNotRepresentable) {
			t.Errorf("header %q=%q: %v, want ErrNotRepresentable", bad.Name, bad.Value, err)
		}
	}
}

func TestParseEncoding(t *testing.T) {
	for s, want := range map[string]natsmsg.Encoding{"": natsmsg.EncodingRecord, "record": natsmsg.EncodingRecord, "value": natsmsg.EncodingValue} {
		if got, err := natsmsg.ParseEncoding(s); err != nil || got != want {
			t.Errorf("ParseEncoding(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := natsmsg.ParseEncoding("json"); err == nil {
		t.Error("ParseEncoding(json): no error")
	}
}

// FuzzDecode feeds wire-format header blocks and bodies to Decode. What
// decodes must survive a round trip: through the record encoding always,
// through the value encoding when the record is representable.
func FuzzDecode(f *testing.F) {
	rec, _ := proto.Marshal(&culvertv1.Record{Id: "a", Value: []byte("v"), Headers: []*culvertv1.Header{hdr("x", "1"), hdr("x", "2")}})
	f.Add([]byte("NATS/1.0\r\nContent-Type: "+connectors.RecordContentType+"\r\n\r\n"), rec)
	f.Add([]byte("NATS/1.0\r\nB: 1\r\nA: 2\r\nB: 3\r\nCulvert-Key: k\r\n\r\n"), []byte("raw"))
	f.Add([]byte("NATS/1.0\r\nCulvert-Event-Time: 2024-01-02T03:04:05.6+01:00\r\nCulvert-Key-Base64: AAE=\r\n\r\n"), []byte{})
	f.Fuzz(func(t *testing.T, hdrBlock, body []byte) {
		h, err := nats.DecodeHeadersMsg(hdrBlock)
		if err != nil {
			return
		}
		got, err := natsmsg.Decode(h, body)
		if err != nil {
			return
		}
		for _, e := range []natsmsg.Encoding{natsmsg.EncodingRecord, natsmsg.EncodingValue} {
			m, _, err := natsmsg.NewEncoder(e).Encode("s", got)
			if err != nil {
				if e == natsmsg.EncodingValue && errors.Is(err, natsmsg.ErrNotRepresentable) {
					continue
				}
				t.Fatalf("%v: encode %v: %v", e, got, err)
			}
			again, err := natsmsg.Decode(m.Header, m.Data)
			if err != nil {
				t.Fatalf("%v: decode own encoding: %v", e, err)
			}
			want := got
			if e == natsmsg.EncodingValue {
				// Unknown fields of a record-encoded body have no header form,
				// and headers come back grouped by name.
				want = proto.Clone(got).(*culvertv1.Record)
				dropUnknown(want.ProtoReflect())
				// Nor has the source position, which the reading source
				// connector sets anew.
				want.Source = nil
				slices.SortStableFunc(want.Headers, func(a, b *culvertv1.Header) int { return strings.Compare(a.Name, b.Name) })
			}
			if e == natsmsg.EncodingValue && got.GetId() != "" {
				// The value encoding carries the id only as Nats-Msg-Id, which
				// a raw decode keeps as a header (sources derive ids).
				want.Id = ""
				var hs []*culvertv1.Header
				for _, h := range again.Headers {
					if h.Name != natsmsg.HeaderMsgID {
						hs = append(hs, h)
					}
				}
				again.Headers = hs
				want.Headers = slices.DeleteFunc(want.Headers, func(h *culvertv1.Header) bool { return h.Name == natsmsg.HeaderMsgID })
			}
			if !proto.Equal(want, again) {
				t.Fatalf("%v: round trip changed the record\nfirst:  %v\nsecond: %v", e, want, again)
			}
		}
	})
}

func dropUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				dropUnknown(v.List().Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			dropUnknown(v.Message())
		}
		return true
	})
}

func BenchmarkEncodeRecord(b *testing.B) {
	enc := natsmsg.NewEncoder(natsmsg.EncodingRecord)
	r := &culvertv1.Record{Id: "js:S:1", Key: []byte("k"), Value: make([]byte, 256), Headers: []*culvertv1.Header{hdr("a", "1")}}
	b.ReportAllocs()
	for b.Loop() {
		_, buf, _ := enc.Encode("s", r)
		enc.Release(buf)
	}
}
