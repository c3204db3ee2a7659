package culvert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// hostStream encodes a Hello, batches of the given sizes and a Shutdown as
// the host would send them.
func hostStream(t testing.TB, sizes ...int) []byte {
	t.Helper()
	msgs := []*culvertv1.HostMessage{{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{Version}}}}}
	for b, n := range sizes {
		bt := &culvertv1.Batch{Id: uint64(b + 1), Attempt: 1}
		for i := range n {
			bt.Records = append(bt.Records, &culvertv1.Record{Id: fmt.Sprintf("in:%d:%d", b+1, i), Key: []byte("k"),
				Value: []byte(fmt.Sprintf("v%d.%d", b+1, i)), Source: &culvertv1.Position{Connector: "kafka", Offset: uint64(i)}})
		}
		msgs = append(msgs, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: bt}})
	}
	msgs = append(msgs, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{}}})
	var stream []byte
	for _, m := range msgs {
		var err error
		if stream, err = framing.Append(stream, m, 0); err != nil {
			t.Fatal(err)
		}
	}
	return stream
}

// TestServeRecords: Run's per-record loop, which reuses the batch's record
// slice and the results, answers byte for byte as Serve with PerRecord does,
// and records a handler keeps stay as they came.
func TestServeRecords(t *testing.T) {
	stream := hostStream(t, 3, 200, 0, 1, 150)
	handler := func(kept *[]*Record) Handler {
		return func(ctx context.Context, rec *Record) ([]Output, error) {
			*kept = append(*kept, rec)
			v := string(rec.Value)
			switch {
			case strings.HasSuffix(v, "0"):
				return nil, nil // filtered
			case strings.HasSuffix(v, "1"):
				return nil, Retryable(errors.New("later"))
			case strings.HasSuffix(v, "2"):
				return []Output{To("a", rec), To("b", &Record{Value: []byte("extra")})}, nil
			case strings.HasSuffix(v, "33"):
				panic("thirty-three")
			}
			rec.Value = append(rec.Value, '!')
			return Emit(rec), nil
		}
	}
	tests := []struct {
		name  string
		serve func(in io.Reader, out io.Writer, h Handler) error
	}{
		{"Serve with PerRecord", func(in io.Reader, out io.Writer, h Handler) error {
			return Serve(context.Background(), in, out, PerRecord(h))
		}},
		{"serveRecords", func(in io.Reader, out io.Writer, h Handler) error {
			return serveRecords(context.Background(), in, out, h)
		}},
	}
	var answers [][]byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var kept []*Record
			var out bytes.Buffer
			if err := tc.serve(bytes.NewReader(stream), &out, handler(&kept)); err != nil {
				t.Fatal(err)
			}
			answers = append(answers, out.Bytes())
			if len(kept) != 354 {
				t.Fatalf("the handler saw %d records, want 354", len(kept))
			}
			for _, r := range kept {
				var b, i int
				if _, err := fmt.Sscanf(r.Id, "in:%d:%d", &b, &i); err != nil {
					t.Fatalf("kept record has id %q: %v", r.Id, err)
				}
				want := fmt.Sprintf("v%d.%d", b, i)
				if v := strings.TrimSuffix(string(r.Value), "!"); v != want || r.Source.GetOffset() != uint64(i) {
					t.Fatalf("kept record %s: value %q, offset %d; want %q, %d", r.Id, r.Value, r.Source.GetOffset(), want, i)
				}
			}
		})
	}
	if len(answers) == 2 && !bytes.Equal(answers[0], answers[1]) {
		t.Errorf("serveRecords answered %d bytes, Serve with PerRecord %d bytes, not the same", len(answers[1]), len(answers[0]))
	}
}

// BenchmarkServeRecords is BenchmarkServePassthrough for Run's per-record
// loop, over an in-memory stream of 1000-record batches.
func BenchmarkServeRecords(b *testing.B) {
	const batches, size = 20, 1000
	sizes := make([]int, batches)
	for i := range sizes {
		sizes[i] = size
	}
	stream := hostStream(b, sizes...)
	passthrough := func(ctx context.Context, rec *Record) ([]Output, error) { return Emit(rec), nil }
	for _, tc := range []struct {
		name  string
		serve func(in io.Reader, out io.Writer) error
	}{
		{"PerRecord", func(in io.Reader, out io.Writer) error {
			return Serve(context.Background(), in, out, PerRecord(passthrough))
		}},
		{"serveRecords", func(in io.Reader, out io.Writer) error {
			return serveRecords(context.Background(), in, out, passthrough)
		}},
		{"serveRecords/ReuseRecords", func(in io.Reader, out io.Writer) error {
			return serveRecords(context.Background(), in, out, passthrough, ReuseRecords())
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tc.serve(bytes.NewReader(stream), io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batches*size), "ns/record")
		})
	}
}

// TestReuseRecords: with ReuseRecords, Serve and Run answer byte for byte
// as without it, for batches that grow and shrink (the slab grows in the
// middle of one) and records with and without headers, event times,
// sources and content types, and records that package proto must decode
// (a batch with an unknown field) fall back to it. Each record is checked while
// the handler has it.
func TestReuseRecords(t *testing.T) {
	rec := func(b, i int) *culvertv1.Record {
		r := &culvertv1.Record{Id: fmt.Sprintf("in:%d:%d", b, i), Key: []byte("k"), Value: []byte(fmt.Sprintf("v%d.%d", b, i))}
		if i%2 == 0 {
			r.Source = &culvertv1.Position{Connector: "kafka", Partition: "1", Offset: uint64(i)}
		}
		if i%3 == 0 {
			r.EventTime = &timestamppb.Timestamp{Seconds: int64(i), Nanos: 7}
		}
		if i%5 == 0 {
			r.Headers = []*culvertv1.Header{{Name: "h", Value: []byte("x")}, {Name: "g"}}
			r.ContentType = "text/plain"
		}
		if i%7 == 0 {
			r.EventTime = &timestamppb.Timestamp{} // present, empty
		}
		return r
	}
	batches := [][]*culvertv1.Record{}
	for b, n := range []int{3, 70, 200, 0, 1, 150, 500, 2} {
		var recs []*culvertv1.Record
		for i := range n {
			recs = append(recs, rec(b+1, i))
		}
		batches = append(batches, recs)
	}
	msgs := []*culvertv1.HostMessage{{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{Version}}}}}
	for b, recs := range batches {
		bt := &culvertv1.Batch{Id: uint64(b + 1), Attempt: 1, Records: recs}
		if b == 4 {
			// An unknown field: package proto decodes this batch.
			bt.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
		}
		msgs = append(msgs, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: bt}})
	}
	var stream []byte
	for _, m := range msgs {
		var err error
		if stream, err = framing.Append(stream, m, 0); err != nil {
			t.Fatal(err)
		}
	}
	byID := map[string]*culvertv1.Record{}
	for _, recs := range batches {
		for _, r := range recs {
			byID[r.Id] = r
		}
	}
	handler := func(t *testing.T, seen *int) Handler {
		return func(ctx context.Context, r *Record) ([]Output, error) {
			*seen++
			if want := byID[r.Id]; want != nil && !proto.Equal(r, want) {
				t.Errorf("record %s decoded as %v, want %v", r.Id, r, want)
			}
			switch {
			case strings.HasSuffix(string(r.Value), "3"):
				return nil, nil
			case strings.HasSuffix(string(r.Value), "4"):
				return []Output{To("a", r), To("b", &Record{Value: []byte("extra")})}, nil
			}
			r.Value = append(r.Value, '!') // beyond its capacity: a copy
			return Emit(r), nil
		}
	}
	tests := []struct {
		name  string
		serve func(in io.Reader, out io.Writer, h Handler) error
	}{
		{"Serve", func(in io.Reader, out io.Writer, h Handler) error {
			return Serve(context.Background(), in, out, PerRecord(h))
		}},
		{"Serve with ReuseRecords", func(in io.Reader, out io.Writer, h Handler) error {
			return Serve(context.Background(), in, out, PerRecord(h), ReuseRecords())
		}},
		{"serveRecords with ReuseRecords", func(in io.Reader, out io.Writer, h Handler) error {
			return serveRecords(context.Background(), in, out, h, ReuseRecords())
		}},
	}
	var want []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			seen := 0
			if err := tc.serve(bytes.NewReader(stream), &out, handler(t, &seen)); err != nil {
				t.Fatal(err)
			}
			if seen != len(byID) {
				t.Errorf("the handler saw %d records, want %d", seen, len(byID))
			}
			if want == nil {
				want = out.Bytes()
			} else if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("answered %d bytes, not the %d bytes Serve answered", out.Len(), len(want))
			}
		})
	}
}
