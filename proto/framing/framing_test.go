package framing_test

import (
	"bytes"
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

func batch(n int) *culvertv1.HostMessage {
	b := &culvertv1.Batch{Id: 7}
	for i := range n {
		b.Records = append(b.Records, &culvertv1.Record{Id: "r", Value: bytes.Repeat([]byte{byte(i)}, 100)})
	}
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: b}}
}

func TestRoundTrip(t *testing.T) {
	msgs := []proto.Message{
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{1}}}},
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{}}},
		batch(0), batch(1), batch(1000),
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{}}},
	}
	var buf bytes.Buffer
	w := framing.NewWriter(&buf, 0)
	for _, m := range msgs {
		if err := w.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	r := framing.NewReader(&buf, 0)
	for i, want := range msgs {
		b, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		got := &culvertv1.HostMessage{}
		if err := proto.Unmarshal(b, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after last frame: got %v, want io.EOF", err)
	}
}

func TestViolations(t *testing.T) {
	good, _ := framing.Append(nil, batch(2), 0)
	tests := []struct {
		name   string
		in     []byte
		max    int
		reason string // substring of the violation reason; "" means a non-violation error
	}{
		{"printed text", []byte("hello world\n"), 0, "does not start with a culvert.v1 message tag"},
		{"printed json", []byte(`{"level":"info"}` + "\n"), 0, "does not start with a culvert.v1 message tag"},
		{"utf8 text", []byte("héllo wörld, ça va?"), 0, "does not start with a culvert.v1 message tag"},
		{"long varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 0, "varint of at most 5 bytes"},
		{"too large", []byte{0x80, 0x80, 0x80, 0x08, 0x82, 0x01}, 0, "exceeds the limit"},
		{"over negotiated max", good, 10, "exceeds the limit"},
		{"empty frame", []byte{0x00}, 0, "too short"},
		{"field 15", []byte{0x03, 0x7a, 0x01, 0x00}, 0, "message tag"},
		{"wrong wire type", []byte{0x03, 0x80, 0x01, 0x00}, 0, "message tag"},
		{"truncated tag", []byte{0x05, 0x82}, 0, "ended inside a frame"},
		{"truncated body", good[:len(good)-3], 0, ""},
		{"truncated length", []byte{0x85}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := framing.NewReader(bytes.NewReader(tc.in), tc.max).Next()
			var v *framing.ViolationError
			if tc.reason == "" {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("got %v, want unexpected EOF", err)
				}
				return
			}
			if !errors.As(err, &v) {
				t.Fatalf("got %v, want a violation", err)
			}
			if !strings.Contains(v.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to contain %q", v.Reason, tc.reason)
			}
			if !strings.Contains(err.Error(), "did the function print to stdout?") {
				t.Fatalf("error lacks the hint: %v", err)
			}
			if len(v.Bytes) == 0 || !bytes.HasPrefix(tc.in, v.Bytes[:1]) {
				t.Fatalf("offending bytes %q do not start the input", v.Bytes)
			}
		})
	}
}

func TestStrayAfterGoodFrame(t *testing.T) {
	good, _ := framing.Append(nil, batch(1), 0)
	in := append(append([]byte{}, good...), "oops, a print\n"...)
	r := framing.NewReader(bytes.NewReader(in), 0)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	_, err := r.Next()
	var v *framing.ViolationError
	if !errors.As(err, &v) || v.Offset != int64(len(good)) || !bytes.HasPrefix(v.Bytes, []byte("oops")) {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(err.Error(), `"oops, a print\n"`) {
		t.Fatalf("report does not show the bytes: %v", err)
	}
}

func TestWriterRefusesOversize(t *testing.T) {
	w := framing.NewWriter(io.Discard, 100)
	if err := w.Write(batch(10)); err == nil || !strings.Contains(err.Error(), "exceeds the limit of 100") {
		t.Fatalf("got %v", err)
	}
}

// protoOnly hides the vtprotobuf methods of a message, so that Append
// encodes it with package proto.
type protoOnly struct{ proto.Message }

// protoFrame is a frame as package proto encodes it.
func protoFrame(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(protowire.AppendVarint(nil, uint64(len(b))), b...)
}

// TestAppendMatchesProto checks that the vtprotobuf encoder Append uses for
// culvert.v1 messages writes the bytes package proto writes.
func TestAppendMatchesProto(t *testing.T) {
	rec := &culvertv1.Record{
		Id: "js:ORDERS:42", Key: []byte("k"), Value: bytes.Repeat([]byte{0xff}, 300), ContentType: "application/json",
		Headers:   []*culvertv1.Header{{Name: "a", Value: []byte("1")}, nil, {Name: "a"}},
		EventTime: &timestamppb.Timestamp{Seconds: -62135596800, Nanos: 999999999},
		Source:    &culvertv1.Position{Connector: "jetstream", Stream: "ORDERS", Subject: "orders.x", Partition: "3", Offset: 1 << 62, Sequence: "18446744073709551616"},
	}
	// A record with fields from a newer schema: unknown fields are kept.
	withUnknown := &culvertv1.Record{}
	unknown := protowire.AppendString(protowire.AppendTag(nil, 99, protowire.BytesType), "new")
	unknown = protowire.AppendVarint(protowire.AppendTag(unknown, 100, protowire.VarintType), 7)
	recBytes, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(append(recBytes, unknown...), withUnknown); err != nil {
		t.Fatal(err)
	}
	msgs := []proto.Message{
		&culvertv1.HostMessage{},
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{
			Versions: []uint32{1, 2, 1 << 31}, MaxFrameBytes: 4 << 20, MaxBatchRecords: 1000, MaxInflightBatches: 2,
			Capabilities: []string{"x", ""}, KeepAliveMs: 30000,
			Context: &culvertv1.InitContext{Pipeline: "p", Function: "f", Instance: 3, Instances: 4, Partition: "7", Route: "r"},
		}}},
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{
			Id: 1 << 40, DeadlineUnixMs: -1, Attempt: 2, Records: []*culvertv1.Record{rec, {}, nil, withUnknown},
		}}},
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: 9}}},
		&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{DeadlineUnixMs: 5, Reason: "stop"}}},
		&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: &culvertv1.Ready{Version: 1, Capabilities: []string{"c"}, Agent: "a/1"}}},
		&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_InitError{InitError: &culvertv1.InitError{Message: "no", Retryable: true}}},
		&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: 3, Results: []*culvertv1.RecordResult{
			{Outputs: []*culvertv1.Output{{Record: rec, Output: "audit"}, {}, nil}},
			{Failure: &culvertv1.Failure{Message: "bad", Retryable: true}},
			{},
			nil,
		}}}},
		&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{}}},
		batch(1000),
	}
	for i, m := range msgs {
		got, err := framing.Append([]byte("prefix"), m, 0)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		want := append([]byte("prefix"), protoFrame(t, m)...)
		if !bytes.Equal(got, want) {
			t.Errorf("message %d: Append wrote\n%x\npackage proto\n%x", i, got, want)
		}
		viaProto, err := framing.Append([]byte("prefix"), protoOnly{m}, 0)
		if err != nil || !bytes.Equal(viaProto, want) {
			t.Errorf("message %d: Append without vtprotobuf wrote %x, %v", i, viaProto, err)
		}
	}
}

// TestAppendRefusesOversize checks the limit on both encoders, and that a
// refused frame leaves dst as it was.
func TestAppendRefusesOversize(t *testing.T) {
	m := batch(10)
	size := proto.Size(m)
	for _, m := range []proto.Message{m, protoOnly{m}} {
		if _, err := framing.Append(nil, m, size); err != nil {
			t.Errorf("%T: a frame of exactly the limit: %v", m, err)
		}
		dst, err := framing.Append([]byte("x"), m, size-1)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("frame of %d bytes exceeds the limit of %d bytes", size, size-1)) || string(dst) != "x" {
			t.Errorf("%T: got %q, %v", m, dst, err)
		}
	}
}

func FuzzReader(f *testing.F) {
	good, _ := framing.Append(nil, batch(3), 0)
	f.Add(good)
	f.Add([]byte("hello\n"))
	f.Add([]byte{0x03, 0x82, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := framing.NewReader(bytes.NewReader(in), 1<<16)
		var total int64
		for {
			b, err := r.Next()
			if err != nil {
				var v *framing.ViolationError
				if errors.As(err, &v) && (v.Offset < total || len(v.Bytes) == 0) {
					t.Fatalf("bad violation report %+v", v)
				}
				return
			}
			if len(b) < 2 || len(b) > 1<<16 || !framing.ValidTag(b[0], b[1]) {
				t.Fatalf("accepted a bad frame %x", b)
			}
			total = r.Offset()
			_ = proto.Unmarshal(b, &culvertv1.FunctionMessage{})
		}
	})
}

func BenchmarkAppendBatch1000(b *testing.B) {
	m := batch(1000)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = framing.Append(buf[:0], m, 0)
	}
	b.SetBytes(int64(len(buf)))
}
