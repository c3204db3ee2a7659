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
