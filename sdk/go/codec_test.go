package culvert

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func frameBody(t testing.TB, m *culvertv1.HostMessage) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func batchMsg(b *culvertv1.Batch) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: b}}
}

func field(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

// batchFrame is a HostMessage frame holding a Batch with body b.
func batchFrame(b []byte) []byte { return field(17, b) }

// checkFast checks the fast path against package proto on b: whenever it
// accepts b, proto accepts it too, with the same meaning.
func checkFast(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	want := &culvertv1.HostMessage{}
	werr := proto.Unmarshal(b, want)
	// Records of their own, and aliasing the frame in a slab
	// (ReuseRecords); each decoder twice, the second time reusing what the
	// first batch left.
	for i, alias := range []bool{false, true} {
		d := batchDecoder{alias: alias}
		for pass := range 2 {
			got, ok := d.decode(bytes.Clone(b))
			if i == 0 && pass == 0 {
				accepted = ok
			} else if ok != accepted {
				t.Fatalf("frame %x: the fast path accepts it %v with alias %v (pass %d), %v without", b, ok, alias, pass, accepted)
			}
			if !ok {
				continue
			}
			if werr != nil {
				t.Fatalf("frame %x: the fast path (alias %v) accepts what proto refuses (%v)", b, alias, werr)
			}
			if !proto.Equal(batchMsg(got), want) || (got.Records == nil) != (want.GetBatch().GetRecords() == nil) {
				t.Fatalf("frame %x: fast path (alias %v, pass %d) %v, proto %v", b, alias, pass, got, want)
			}
			d.done()
		}
	}
	return accepted
}

func TestBatchFastPath(t *testing.T) {
	full := &culvertv1.Record{
		Id: "r/1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
		Headers:   []*culvertv1.Header{{Name: "a", Value: []byte("1")}, {Name: "a"}},
		EventTime: timestamppb.New(timestamppb.Now().AsTime()),
		Source:    &culvertv1.Position{Connector: "c", Stream: "s", Subject: "x.y", Partition: "3", Offset: 42, Sequence: "9"},
	}
	accept := []*culvertv1.Batch{
		{},
		{Id: 1, Attempt: 3, DeadlineUnixMs: -5},
		{Id: 1 << 50, Records: []*culvertv1.Record{full, {}, {Id: "é", Value: bytes.Repeat([]byte{0xff}, 10000)}}},
	}
	for i, m := range accept {
		b := frameBody(t, batchMsg(m))
		if !checkFast(t, b) {
			t.Errorf("batch %d: the fast path refused %x", i, b)
		}
	}
	ok := frameBody(t, batchMsg(&culvertv1.Batch{Id: 3, Records: []*culvertv1.Record{full}}))
	bad := []struct {
		name string
		b    []byte
	}{
		{"hello", frameBody(t, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{1}}}})},
		{"two batches", append(bytes.Clone(ok), ok...)},
		{"truncated", ok[:len(ok)-1]},
		{"unknown field", batchFrame(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))},
		{"id as bytes", batchFrame(field(1, []byte{1}))},
		{"records as varint", batchFrame(protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 1))},
		{"invalid UTF-8 id", batchFrame(field(2, field(1, []byte{0xff})))},
		{"invalid UTF-8 header", batchFrame(field(2, field(5, field(1, []byte{0xc3}))))},
		{"record id as varint", batchFrame(field(2, protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)))},
		{"invalid then valid content type", batchFrame(field(2, append(field(4, []byte{0xff}), field(4, []byte("a"))...)))},
		{"unknown field in event time", batchFrame(field(2, field(6, protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))))},
		{"overlong unknown tag in a record", batchFrame(field(2, []byte{0x98, 0x86, 0x00, 1}))},
	}
	for _, c := range bad {
		if checkFast(t, c.b) {
			t.Errorf("%s: the fast path accepted %x", c.name, c.b)
		}
	}
}

func FuzzBatchDecoder(f *testing.F) {
	f.Add(frameBody(f, batchMsg(&culvertv1.Batch{Id: 1, Attempt: 2, DeadlineUnixMs: 3, Records: []*culvertv1.Record{
		{Id: "x", Key: []byte("k"), Value: []byte("v"), Headers: []*culvertv1.Header{{Name: "h"}}, Source: &culvertv1.Position{Stream: "s"}},
	}})))
	f.Add(batchFrame(field(2, field(1, []byte{0xff}))))
	f.Add([]byte("\x8a\x01\x1b 0\x12\x13\"\x01\xffB\x010\"\x010E00002\x032\x010 0 0"))
	f.Add(batchFrame(field(2, []byte("2\x020X0"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFast(t, b)
	})
}

// TestInvalidUTF8Output checks that an output package proto cannot encode
// fails the write as it did before vtprotobuf.
func TestInvalidUTF8Output(t *testing.T) {
	var in bytes.Buffer
	w := framing.NewWriter(&in, 0)
	_ = w.Write(&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{1}}}})
	_ = w.Write(batchMsg(&culvertv1.Batch{Id: 1, Records: []*culvertv1.Record{{Id: "a"}}}))
	bad := &culvertv1.Record{Id: "a", Headers: []*culvertv1.Header{{Name: "\xff"}}}
	_, werr := proto.Marshal(bad)
	err := Serve(context.Background(), &in, io.Discard, PerRecord(func(context.Context, *Record) ([]Output, error) {
		return Emit(bad), nil
	}))
	if werr == nil || err == nil || !strings.HasSuffix(err.Error(), werr.Error()) {
		t.Fatalf("Serve returned %v; want the error of proto.Marshal, %v", err, werr)
	}
}
