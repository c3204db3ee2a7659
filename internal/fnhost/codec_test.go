package fnhost

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

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
// taken the way readLoop and result consume it. ok is false if proto
// refuses b, b is not a BatchResult, or readLoop would call its
// Output.unchanged fields a violation (unchangedOK: the capability is in
// use).
func viaProto(b []byte, unchangedOK bool) (d *resultDecoder, ok bool) {
	m := &culvertv1.FunctionMessage{}
	if proto.Unmarshal(b, m) != nil || m.GetResult() == nil || badUnchanged(m.GetResult(), unchangedOK, nil) != "" {
		return nil, false
	}
	d = &resultDecoder{}
	d.from(m.GetResult())
	return d, true
}

// resolved is the record of output i of d as result hands it on: an
// Output.unchanged left without a record stands for the input record of
// its result (in[r]; nil when the inputs are not known).
func resolved(d *resultDecoder, i int, in []*culvertv1.Record) *culvertv1.Record {
	if rec := d.outs[i].Record; rec != nil || in == nil {
		return rec
	}
	for r, rr := range d.results {
		if i >= rr.start && i < rr.end && r < len(in) {
			return d.input(in[r])
		}
	}
	return nil
}

func sameDecoding(t *testing.T, b []byte, got, want *resultDecoder, in ...*culvertv1.Record) {
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
		gr, wr := resolved(got, i, in), resolved(want, i, in)
		if g.To != w.To || (gr == nil) != (wr == nil) || !proto.Equal(gr, wr) {
			t.Fatalf("frame %x: output %d: fast path %v %q, proto %v %q", b, i, gr, g.To, wr, w.To)
		}
	}
}

// checkFast checks the fast path against package proto on b, with the
// unchanged capability in use and not: whenever it accepts b, proto
// accepts it too, with the same meaning.
func checkFast(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	for _, unchangedOK := range []bool{false, true} {
		d := resultDecoder{unchangedOK: unchangedOK}
		if !d.decode(bytes.Clone(b)) {
			continue
		}
		want, ok := viaProto(b, unchangedOK)
		if !ok {
			t.Fatalf("frame %x: the fast path (unchanged in use: %v) accepts what proto refuses", b, unchangedOK)
		}
		sameDecoding(t, b, &d, want)
		accepted = true
	}
	return accepted
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
	f.Add(resultFrame(f, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 5, Results: []*culvertv1.RecordResult{
		{Outputs: []*culvertv1.Output{{Unchanged: true}, {Unchanged: true, Output: "o"}, {Record: &culvertv1.Record{Id: "x"}}}},
		{Outputs: []*culvertv1.Output{{Unchanged: true, Record: &culvertv1.Record{}}}},
	}}}}))
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

// sent encodes a Batch of recs as Submit does and returns its sentBatch.
func sent(t testing.TB, id uint64, recs []*culvertv1.Record) *sentBatch {
	t.Helper()
	var s sentBatches
	m := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: id, Records: recs, DeadlineUnixMs: 1 << 41, Attempt: 2}}}
	if err := s.write(io.Discard, m, 0, &Call{Records: recs, id: id}, nil); err != nil {
		t.Fatal(err)
	}
	sb := s.head()
	if sb == nil || sb.recs == nil {
		t.Fatal("the batch was not indexed")
	}
	return sb
}

// TestUnchangedOutputs: outputs that repeat their input record are taken
// from it, and the decoding still equals proto's, whatever the answer
// holds: changed records, records answering another input, fan-out,
// unknown fields, or an answer to another batch.
func TestUnchangedOutputs(t *testing.T) {
	unknown := &culvertv1.Record{Id: "u"}
	unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	// Unknown bytes that repeat a known field: decoding the record's
	// encoding gives the later value, which the record itself does not have.
	repeated := &culvertv1.Record{Id: "r", Value: []byte("first")}
	repeated.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "second"))
	// Unknown bytes that add a header, or a field the record leaves empty.
	header := &culvertv1.Record{Id: "h", Headers: []*culvertv1.Header{{Name: "a"}}}
	header.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType),
		protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "b")))
	added := &culvertv1.Record{Id: "a", Value: []byte("v")}
	added.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), "key"))
	in := []*culvertv1.Record{
		{Id: "kafka:in:0:1", Key: []byte("k1"), Value: []byte("v1"), EventTime: timestamppb.New(time.Unix(5, 6)),
			Source: &culvertv1.Position{Connector: "kafka", Stream: "in", Partition: "0", Offset: 1}},
		{Id: "kafka:in:0:2", Value: []byte("v2"), Headers: []*culvertv1.Header{{Name: "h", Value: []byte("x")}}},
		unknown,
		repeated,
		header,
		added,
		{}, // nothing set: an empty encoding
	}
	changed := proto.Clone(in[0]).(*culvertv1.Record)
	changed.Value = []byte("other")
	same := &culvertv1.Record{} // stands for Output.unchanged
	answer := func(id uint64, outs ...[]*culvertv1.Record) []byte {
		br := &culvertv1.BatchResult{BatchId: id}
		for _, o := range outs {
			rr := &culvertv1.RecordResult{}
			for _, r := range o {
				if r == same {
					rr.Outputs = append(rr.Outputs, &culvertv1.Output{Unchanged: true})
					continue
				}
				rr.Outputs = append(rr.Outputs, &culvertv1.Output{Record: r})
			}
			br.Results = append(br.Results, rr)
		}
		return resultFrame(t, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: br}})
	}
	one := func(r ...*culvertv1.Record) []*culvertv1.Record { return r }
	withRecord := resultFrame(t, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 9,
		Results: []*culvertv1.RecordResult{{Outputs: []*culvertv1.Output{{Unchanged: true, Record: in[0]}}}, {}, {}, {}, {}, {}, {}}}}})
	tests := []struct {
		name        string
		frame       []byte
		unchangedOK bool   // the unchanged capability is in use
		taken       []bool // per output: taken from its input record
		violation   string // readLoop's complaint; the fast path refuses the frame
	}{
		{"passthrough", answer(9, one(in[0]), one(in[1]), one(in[2]), one(in[3]), one(in[4]), one(in[5]), one(in[6])),
			false, []bool{true, true, false, false, false, false, false}, ""},
		{"changed", answer(9, one(changed), one(in[1]), nil, nil, nil, nil, nil), false, []bool{false, true}, ""},
		{"fan-out", answer(9, one(in[0], in[0]), nil, nil, nil, nil, nil, nil), false, []bool{true, true}, ""},
		{"another input's record", answer(9, one(in[1]), one(in[0]), nil, nil, nil, nil, nil), false, []bool{false, false}, ""},
		{"another batch", answer(8, one(in[0]), one(in[1]), one(in[2]), one(in[3]), one(in[4]), one(in[5]), one(in[6])),
			false, []bool{false, false, false, false, false, false, false}, ""},
		{"Output.unchanged", answer(9, one(same), one(same, in[1]), one(same), one(same), one(same), one(same), one(same)),
			true, []bool{true, true, true, false, false, false, false, false}, ""},
		{"Output.unchanged, another batch", answer(8, one(same), one(same), nil, nil, nil, nil, nil), true, []bool{false, false}, ""},
		{"Output.unchanged without the capability", answer(9, one(same), nil, nil, nil, nil, nil, nil), false, nil,
			`sets unchanged, but the function did not accept the "unchanged" capability`},
		{"Output.unchanged with a record", withRecord, true, nil, "sets both unchanged and record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := sent(t, 9, in)
			d := resultDecoder{unchangedOK: tc.unchangedOK}
			accepted := d.decodeAnswer(bytes.Clone(tc.frame), sb)
			if tc.violation != "" {
				m := &culvertv1.FunctionMessage{}
				if err := proto.Unmarshal(tc.frame, m); err != nil {
					t.Fatal(err)
				}
				if got := badUnchanged(m.GetResult(), tc.unchangedOK, in); accepted || !strings.Contains(got, tc.violation) {
					t.Fatalf("fast path accepted: %v; violation %q, want one containing %q", accepted, got, tc.violation)
				}
				return
			}
			if !accepted {
				t.Fatal("the fast path refused the answer")
			}
			want, ok := viaProto(tc.frame, tc.unchangedOK)
			if !ok {
				t.Fatal("proto refused the answer")
			}
			var inputs []*culvertv1.Record
			if d.id == 9 {
				inputs = in // what result would pair the outputs with
			}
			sameDecoding(t, tc.frame, &d, want, inputs...)
			if len(d.outs) != len(tc.taken) {
				t.Fatalf("%d outputs, want %d", len(d.outs), len(tc.taken))
			}
			for i, o := range d.outs {
				rec := resolved(&d, i, inputs)
				shared := false
				for _, r := range in {
					shared = shared || len(r.Value) > 0 && len(rec.GetValue()) > 0 && &r.Value[0] == &rec.Value[0]
				}
				if shared != tc.taken[i] {
					t.Errorf("output %d: taken from its input %v, want %v", i, shared, tc.taken[i])
				}
				for _, r := range in {
					if o.Record == r {
						t.Errorf("output %d is the input record itself, not a copy", i)
					}
				}
			}
		})
	}
}

// TestUnchangedIsTheInput: the record an Output.unchanged stands for is
// what decoding its input's encoding gives, unknown fields and all, and
// never the input record itself.
func TestUnchangedIsTheInput(t *testing.T) {
	unknown := &culvertv1.Record{Id: "u", Value: []byte("v")}
	unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	repeated := &culvertv1.Record{Id: "r", Value: []byte("first")}
	repeated.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "second"))
	tests := []struct {
		name string
		in   *culvertv1.Record
	}{
		{"empty", &culvertv1.Record{}},
		{"every field", &culvertv1.Record{Id: "kafka:in:0:1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
			Headers: []*culvertv1.Header{{Name: "h", Value: []byte("x")}, {Name: "h", Value: []byte("y")}}, EventTime: timestamppb.New(time.Unix(5, 6)),
			Source: &culvertv1.Position{Connector: "kafka", Stream: "in", Subject: "in", Partition: "0", Offset: 1}}},
		{"unknown fields", unknown},
		{"unknown bytes repeating a known field", repeated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := &culvertv1.Record{}
			if err := proto.Unmarshal(b, want); err != nil {
				t.Fatal(err)
			}
			var d resultDecoder
			got := d.input(tc.in)
			if got == tc.in {
				t.Fatal("input returned the input record itself")
			}
			if !proto.Equal(got, want) {
				t.Fatalf("input gave %v, decoding the input's encoding %v", got, want)
			}
		})
	}
}

// TestSentBatchesRelease: answered batches leave the queue and their
// buffers are reused; an unindexable frame is never used for outputs.
func TestSentBatchesRelease(t *testing.T) {
	var s sentBatches
	recs := []*culvertv1.Record{{Id: "a"}}
	m := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Records: recs}}}
	for id := uint64(1); id <= 3; id++ {
		if err := s.write(io.Discard, m, 0, &Call{Records: recs, id: id}, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.answered(2)
	if h := s.head(); h == nil || h.id != 3 {
		t.Fatalf("head after answering 2: %+v, want batch 3", h)
	}
	s.answered(3)
	if h := s.head(); h != nil {
		t.Fatalf("head after answering 3: %+v, want none", h)
	}
	if len(s.free) != 3 {
		t.Errorf("%d buffers kept for reuse, want 3", len(s.free))
	}
	// A call whose records are not the batch's: not indexed.
	if err := s.write(io.Discard, m, 0, &Call{Records: append(recs, recs...), id: 4}, nil); err != nil {
		t.Fatal(err)
	}
	if h := s.head(); h == nil || h.recs != nil {
		t.Errorf("a frame that does not match its call was indexed: %+v", h)
	}
}

// BenchmarkResultDecodeUnchanged is BenchmarkResultDecode for a function
// that passes its input records on unchanged.
func BenchmarkResultDecodeUnchanged(b *testing.B) {
	const n = 1000
	in := make([]*culvertv1.Record, n)
	for i := range in {
		in[i] = &culvertv1.Record{Id: fmt.Sprintf("kafka:in:0:%d", i), Key: []byte("key-42"), Value: bytes.Repeat([]byte{'x'}, 100),
			EventTime: timestamppb.New(time.Unix(1700000000, 0)), Source: &culvertv1.Position{Connector: "kafka", Stream: "in", Subject: "in", Partition: "0", Offset: uint64(i)}}
	}
	br := &culvertv1.BatchResult{BatchId: 1}
	for _, r := range in {
		br.Results = append(br.Results, &culvertv1.RecordResult{Outputs: []*culvertv1.Output{{Record: r}}})
	}
	frame := resultFrame(b, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: br}})
	for _, tc := range []struct {
		name string
		hint bool
	}{{"decoded", false}, {"taken", true}} {
		b.Run(tc.name, func(b *testing.B) {
			c := &conn{cfg: Config{Function: "fn"}, slots: make(chan struct{}, 1), dead: make(chan struct{})}
			f := &framed{conn: c}
			call := &Call{Records: in, Done: func([]Result, error) {}}
			sb := sent(b, 1, in)
			b.ReportAllocs()
			for b.Loop() {
				var hint *sentBatch
				if tc.hint {
					hint = sb
				}
				if !f.dec.decodeAnswer(frame, hint) {
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
		})
	}
}

// FuzzUnchangedOutputs: with the batch it answers known, whatever the fast
// path accepts decodes as proto decodes it, outputs taken from their input
// records included.
func FuzzUnchangedOutputs(f *testing.F) {
	in := []*culvertv1.Record{
		{Id: "kafka:in:0:1", Key: []byte("k"), Value: []byte("v"), EventTime: timestamppb.New(time.Unix(5, 6)),
			Source: &culvertv1.Position{Connector: "kafka", Stream: "in", Partition: "0", Offset: 1}},
		{Id: "kafka:in:0:2", Headers: []*culvertv1.Header{{Name: "h", Value: []byte("x")}}},
	}
	br := &culvertv1.BatchResult{BatchId: 9}
	for _, r := range in {
		br.Results = append(br.Results, &culvertv1.RecordResult{Outputs: []*culvertv1.Output{{Record: r}}})
	}
	f.Add(resultFrame(f, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: br}}))
	f.Add(resultFrame(f, passthroughResult(9, 2)))
	f.Add(resultFrame(f, &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 9,
		Results: []*culvertv1.RecordResult{{Outputs: []*culvertv1.Output{{Unchanged: true}}}, {Outputs: []*culvertv1.Output{{Unchanged: true, Output: "o"}, {Record: in[1]}}}}}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, unchangedOK := range []bool{false, true} {
			sb := sent(t, 9, in)
			d := resultDecoder{unchangedOK: unchangedOK}
			if !d.decodeAnswer(bytes.Clone(b), sb) {
				continue
			}
			want, ok := viaProto(b, unchangedOK)
			if !ok {
				t.Fatalf("frame %x: the fast path (unchanged in use: %v) accepts what proto refuses", b, unchangedOK)
			}
			var inputs []*culvertv1.Record
			if d.id == 9 {
				inputs = in
			}
			sameDecoding(t, b, &d, want, inputs...)
		}
	})
}

// TestIDArena: derived ids built in shared chunks equal those built one by
// one, and stay intact while later ids fill and replace the chunk.
func TestIDArena(t *testing.T) {
	tests := []struct {
		name, in, function string
	}{
		{"short", "kafka:in:0:1", "fn"},
		{"empty input id", "", "fn"},
		{"long input id", strings.Repeat("x", idChunk), "fn"},
		{"non-ASCII", "ü:1", "fünf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var a idArena
			var got, want []string
			for n := range 3 * idChunk / max(len(tc.in), 1) {
				got = append(got, a.derive(tc.in, tc.function, n))
				want = append(want, (*idArena)(nil).derive(tc.in, tc.function, n))
			}
			for n := range got {
				if got[n] != want[n] || want[n] != fmt.Sprintf("%s/%s.%d", tc.in, tc.function, n) {
					t.Fatalf("id %d: %q from the arena, %q on its own", n, got[n], want[n])
				}
			}
		})
	}
}

// TestOnlyKnown: onlyKnown accepts the encoding of a record exactly when
// it holds one field per field the record sets, one per header, and
// nothing else.
func TestOnlyKnown(t *testing.T) {
	rec := &culvertv1.Record{Id: "i", Value: bytes.Repeat([]byte{'v'}, 300), Headers: []*culvertv1.Header{{Name: "h"}},
		Source: &culvertv1.Position{Connector: "kafka"}}
	enc, err := rec.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	field := func(num protowire.Number, typ protowire.Type, v []byte) []byte {
		b := protowire.AppendTag(nil, num, typ)
		if typ == protowire.BytesType {
			return protowire.AppendBytes(b, v)
		}
		return protowire.AppendVarint(b, 1)
	}
	tests := []struct {
		name string
		v    []byte
		want bool
	}{
		{"its encoding (a two-byte length)", enc, true},
		{"a field it leaves empty", append(bytes.Clone(enc), field(2, protowire.BytesType, []byte("k"))...), false},
		{"a field repeated", append(bytes.Clone(enc), field(1, protowire.BytesType, []byte("j"))...), false},
		{"a header more", append(bytes.Clone(enc), field(5, protowire.BytesType, nil)...), false},
		{"an unknown field", append(bytes.Clone(enc), field(8, protowire.BytesType, nil)...), false},
		{"a field above 15", append(bytes.Clone(enc), field(99, protowire.BytesType, nil)...), false},
		{"a known number with another wire type", append(bytes.Clone(enc), field(4, protowire.VarintType, nil)...), false},
		{"truncated", enc[:len(enc)-1], false},
		{"a tag without its length", append(bytes.Clone(enc), 0x12), false},
	}
	for _, tc := range tests {
		if got := onlyKnown(tc.v, rec); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if !onlyKnown(nil, &culvertv1.Record{}) {
		t.Errorf("an empty record's empty encoding: false, want true")
	}
}
