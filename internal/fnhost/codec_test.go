package fnhost

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/internal/wire"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func resultFrame(t testing.TB, m *culvertv1.FunctionMessage) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func passthroughResult(id uint64, n int) *culvertv1.FunctionMessage {
	br := &culvertv1.BatchResult{BatchId: id}
	for i := range n {
		br.Results = append(br.Results, &culvertv1.RecordResult{Outputs: []*culvertv1.Output{{Record: &culvertv1.Record{
			Id: fmt.Sprintf("js:B:%d", i), Key: []byte("k"), Value: []byte(strings.Repeat("x", 100)),
		}}}})
	}
	return &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: br}}
}

// viaProto is what the fast path must agree with: package proto's decoding,
// taken the way result consumes it. ok is false if proto refuses b or b is
// not a BatchResult.
func viaProto(b []byte) (d *resultDecoder, ok bool) {
	m := &culvertv1.FunctionMessage{}
	if proto.Unmarshal(b, m) != nil || m.GetResult() == nil {
		return nil, false
	}
	d = &resultDecoder{}
	d.from(m.GetResult())
	return d, true
}

func sameDecoding(t *testing.T, b []byte, got, want *resultDecoder) {
	t.Helper()
	if got.id != want.id || len(got.results) != len(want.results) || len(got.outs) != len(want.outs) {
		t.Fatalf("frame %x: fast path gave id %d, %d results, %d outputs; proto %d, %d, %d",
			b, got.id, len(got.results), len(got.outs), want.id, len(want.results), len(want.outs))
	}
	for i := range got.results {
		if got.results[i] != want.results[i] {
			t.Fatalf("frame %x: result %d: fast path %+v, proto %+v", b, i, got.results[i], want.results[i])
		}
	}
	for i := range got.outs {
		g, w := got.outs[i], want.outs[i]
		if g.To != w.To || !proto.Equal(g.Record, w.Record) {
			t.Fatalf("frame %x: output %d: fast path %v %q, proto %v %q", b, i, g.Record, g.To, w.Record, w.To)
		}
	}
}

// checkFast checks the fast path against package proto on b: whenever it
// accepts b, proto accepts it too, with the same meaning.
func checkFast(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	var d resultDecoder
	if !d.decode(bytes.Clone(b)) {
		return false
	}
	want, ok := viaProto(b)
	if !ok {
		t.Fatalf("frame %x: the fast path accepts what proto refuses", b)
	}
	sameDecoding(t, b, &d, want)
	return true
}

func TestResultFastPath(t *testing.T) {
	full := &culvertv1.Record{
		Id: "r/1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
		Headers:   []*culvertv1.Header{{Name: "a", Value: []byte("1")}, {Name: "a", Value: nil}},
		EventTime: timestamppb.New(timestamppb.Now().AsTime()),
		Source:    &culvertv1.Position{Connector: "c", Stream: "s", Subject: "x.y", Partition: "3", Offset: 42, Sequence: "9"},
	}
	accept := []*culvertv1.FunctionMessage{
		passthroughResult(7, 0),
		passthroughResult(7, 3),
		{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 1 << 40, Results: []*culvertv1.RecordResult{
			{},
			{Outputs: []*culvertv1.Output{{Record: full, Output: "audit"}, {}, {Record: &culvertv1.Record{}}}},
			{Failure: &culvertv1.Failure{Message: "bad", Retryable: true}},
			{Failure: &culvertv1.Failure{}},
			{Failure: &culvertv1.Failure{Message: "both"}, Outputs: []*culvertv1.Output{{Record: full}}},
		}}}},
		{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{}}},
	}
	for i, m := range accept {
		b := resultFrame(t, m)
		if !checkFast(t, b) {
			t.Errorf("message %d: the fast path refused %x", i, b)
		}
	}

	// Frames the fast path leaves to the general decoder.
	ok := resultFrame(t, passthroughResult(3, 2))
	bad := []struct {
		name string
		b    []byte
	}{
		{"ready", resultFrame(t, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: &culvertv1.Ready{Version: 1}}})},
		{"keep-alive", resultFrame(t, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: 1}}})},
		{"two results", append(bytes.Clone(ok), ok...)},
		{"truncated", ok[:len(ok)-1]},
		{"unknown field in BatchResult", result(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))},
		{"batch id as bytes", result(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{1}))},
		{"unknown field in RecordResult", result(rr(protowire.AppendVarint(protowire.AppendTag(nil, 5, protowire.VarintType), 1)))},
		{"two failures", result(rr(append(field(2, nil), field(2, nil)...)))},
		{"two records in an output", result(rr(field(1, append(field(1, nil), field(1, nil)...))))},
		{"invalid UTF-8 id", result(rr(field(1, field(1, field(1, []byte{0xff})))))},
		{"invalid UTF-8 output", result(rr(field(1, field(2, []byte{0xc3}))))},
		{"invalid UTF-8 failure", result(rr(field(2, field(1, []byte{0xe2, 0x82}))))},
		{"record id as varint", result(rr(field(1, field(1, protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)))))},
	}
	for _, c := range bad {
		if checkFast(t, c.b) {
			t.Errorf("%s: the fast path accepted %x", c.name, c.b)
		}
	}
}

func field(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

// rr is a BatchResult body holding one RecordResult with body b.
func rr(b []byte) []byte { return field(2, b) }

// result is a FunctionMessage frame holding a BatchResult with body b.
func result(b []byte) []byte { return field(18, b) }

func FuzzResultDecoder(f *testing.F) {
	f.Add(resultFrame(f, passthroughResult(1, 2)))
	f.Add(resultFrame(f, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 5, Results: []*culvertv1.RecordResult{
		{Failure: &culvertv1.Failure{Message: "x", Retryable: true}},
		{Outputs: []*culvertv1.Output{{Record: &culvertv1.Record{Id: "é", Headers: []*culvertv1.Header{{Name: "n"}}, Source: &culvertv1.Position{Stream: "s"}}, Output: "o"}}},
	}}}}))
	f.Add(result(rr(field(1, field(1, field(1, []byte{0xff}))))))
	f.Add([]byte("\x8a\x01\x1b 0\x12\x13\"\x01\xffB\x010\"\x010E00002\x032\x010 0 0"))
	f.Add([]byte("\x92\x00\x010"))
	f.Add([]byte("2\x020X0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFast(t, b)
		// Records alone, as checkWire sees them.
		if !wire.CheckRecord(b) {
			return
		}
		var v, p culvertv1.Record
		if err := v.UnmarshalVTUnsafe(bytes.Clone(b)); err != nil {
			return // the fast path then gives up
		}
		if err := proto.Unmarshal(b, &p); err != nil {
			t.Fatalf("record %x: checkWire and vtprotobuf accept what proto refuses (%v)", b, err)
		}
		if !proto.Equal(&v, &p) {
			t.Fatalf("record %x: vtprotobuf decoded %v, proto %v", b, &v, &p)
		}
	})
}

func BenchmarkResultDecode(b *testing.B) {
	const n = 1000
	frame := resultFrame(b, passthroughResult(1, n))
	in := make([]*culvertv1.Record, n)
	for i := range in {
		in[i] = &culvertv1.Record{Id: fmt.Sprintf("js:B:%d", i)}
	}
	c := &conn{cfg: Config{Function: "fn"}, slots: make(chan struct{}, 1), dead: make(chan struct{})}
	f := &framed{conn: c}
	call := &Call{Records: in, Done: func([]Result, error) {}}
	b.ReportAllocs()
	for b.Loop() {
		if !f.dec.decode(frame) {
			b.Fatal("fast path refused the frame")
		}
		c.slots <- struct{}{}
		call.id = 1
		c.pending = append(c.pending, entry{call: call})
		if err := f.result(&f.dec); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
}
