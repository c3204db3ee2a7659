package culvert_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	culvert "github.com/culvert-dev/culvert/sdk/go"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// Host frames.

func hello(versions ...uint32) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{
		Versions: versions, MaxBatchRecords: 100, MaxInflightBatches: 2,
		Context: &culvertv1.InitContext{Pipeline: "p", Function: "f", Instance: 1, Instances: 2, Route: "r"},
	}}}
}

// helloWith is hello(1) offering capabilities.
func helloWith(caps ...string) *culvertv1.HostMessage {
	m := hello(1)
	m.GetHello().Capabilities = caps
	return m
}

func batch(id uint64, values ...string) *culvertv1.HostMessage {
	b := &culvertv1.Batch{Id: id, Attempt: 1, DeadlineUnixMs: time.Now().Add(time.Minute).UnixMilli()}
	for i, v := range values {
		b.Records = append(b.Records, &culvertv1.Record{Id: fmt.Sprintf("in:%d:%d", id, i), Key: []byte("k"), Value: []byte(v),
			Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}}})
	}
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: b}}
}

func keepAlive(n uint64) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: n}}}
}

func shutdown() *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{
		DeadlineUnixMs: time.Now().Add(time.Minute).UnixMilli(), Reason: "test"}}}
}

// Function frames.

func ready(agent string) *culvertv1.FunctionMessage {
	return &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: &culvertv1.Ready{Version: 1, Agent: agent}}}
}

var readyDefault = ready(culvert.DefaultAgent)

// readyUnchanged is Ready accepting the "unchanged" capability.
var readyUnchanged = &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: &culvertv1.Ready{
	Version: 1, Agent: culvert.DefaultAgent, Capabilities: []string{"unchanged"}}}}

// unchanged is Output.unchanged, aimed at to.
func unchanged(to string) *culvertv1.Output { return &culvertv1.Output{Unchanged: true, Output: to} }

func initError(msg string, retryable bool) *culvertv1.FunctionMessage {
	return &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_InitError{InitError: &culvertv1.InitError{Message: msg, Retryable: retryable}}}
}

func result(id uint64, rrs ...*culvertv1.RecordResult) *culvertv1.FunctionMessage {
	return &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{BatchId: id, Results: rrs}}}
}

func echo(n uint64) *culvertv1.FunctionMessage {
	return &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: n}}}
}

func ok(outs ...*culvertv1.Output) *culvertv1.RecordResult {
	return &culvertv1.RecordResult{Outputs: outs}
}

func failed(msg string, retryable bool) *culvertv1.RecordResult {
	return &culvertv1.RecordResult{Failure: &culvertv1.Failure{Message: msg, Retryable: retryable}}
}

func out(to, value string) *culvertv1.Output {
	return &culvertv1.Output{Record: &culvertv1.Record{Value: []byte(value)}, Output: to}
}

// pass is the record batch() makes, unchanged: what passing it through sends.
func pass(id uint64, i int, value string) *culvertv1.Output {
	return &culvertv1.Output{Record: &culvertv1.Record{Id: fmt.Sprintf("in:%d:%d", id, i), Key: []byte("k"), Value: []byte(value),
		Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}}}}
}

// serve drives Serve as a host would: it writes frames from its own
// goroutine (so that neither side can block the other), then closes stdin if
// eof is set, and collects every frame written until Serve returns.
func serve(t *testing.T, h culvert.BatchHandler, opts []culvert.Option, send []any, eof bool) ([]*culvertv1.FunctionMessage, error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := culvert.Serve(context.Background(), inR, outW, h, opts...)
		outW.Close()
		inR.Close() // unblocks the writer if frames remain unread
		done <- err
	}()
	go func() {
		w := framing.NewWriter(inW, 0)
		for _, m := range send {
			var err error
			switch m := m.(type) {
			case rawFrame:
				_, err = inW.Write(m)
			case proto.Message:
				err = w.Write(m)
			}
			if err != nil {
				return
			}
		}
		if eof {
			inW.Close()
		}
	}()
	var got []*culvertv1.FunctionMessage
	r := framing.NewReader(outR, 0)
	for {
		b, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the function's frames: %v", err)
		}
		m := &culvertv1.FunctionMessage{}
		if err := proto.Unmarshal(b, m); err != nil {
			t.Fatalf("undecodable frame: %v", err)
		}
		got = append(got, m)
	}
	select {
	case err := <-done:
		return got, err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil, nil
	}
}

func passThrough(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
	return culvert.Emit(rec), nil
}

// passUnchanged passes records with Pass: "drop" is dropped, "keep-x" goes
// to output x and to the default destination, the rest to the default.
func passUnchanged(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
	switch string(rec.Value) {
	case "drop":
		return nil, nil
	case "keep-x":
		return []culvert.Output{culvert.PassTo("x"), culvert.Pass()[0]}, nil
	}
	return culvert.Pass(), nil
}

func TestServe(t *testing.T) {
	tests := []struct {
		name    string
		handler culvert.BatchHandler
		opts    []culvert.Option
		send    []any
		eof     bool
		want    []proto.Message
		wantErr string // substring; "" means nil
	}{
		{
			name:    "handshake then eof",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1)},
			eof:     true,
			want:    []proto.Message{readyDefault},
		},
		{
			name:    "agent and version choice",
			handler: culvert.PerRecord(passThrough),
			opts:    []culvert.Option{culvert.WithAgent("test/2")},
			send:    []any{hello(3, 1, 2)},
			eof:     true,
			want:    []proto.Message{ready("test/2")},
		},
		{
			name:    "eof before hello",
			handler: culvert.PerRecord(passThrough),
			eof:     true,
		},
		{
			name:    "empty batch",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), batch(1), shutdown()},
			want:    []proto.Message{readyDefault, result(1)},
		},
		{
			name:    "pass through",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), batch(1, "a", "b"), batch(2, "c"), shutdown()},
			want: []proto.Message{readyDefault,
				result(1, ok(pass(1, 0, "a")), ok(pass(1, 1, "b"))),
				result(2, ok(pass(2, 0, "c")))},
		},
		{
			name:    "Pass with the unchanged capability",
			handler: culvert.PerRecord(passUnchanged),
			send:    []any{helloWith("log-frames", "unchanged", "some-future-capability"), batch(1, "a", "keep-x", "drop"), shutdown()},
			want:    []proto.Message{readyUnchanged, result(1, ok(unchanged("")), ok(unchanged("x"), unchanged("")), ok())},
		},
		{
			name:    "Pass without it: the records are sent back",
			handler: culvert.PerRecord(passUnchanged),
			send:    []any{helloWith("log-frames"), batch(1, "a", "keep-x", "drop"), shutdown()},
			want: []proto.Message{readyDefault, result(1, ok(pass(1, 0, "a")),
				ok(&culvertv1.Output{Record: pass(1, 1, "keep-x").Record, Output: "x"}, pass(1, 1, "keep-x")), ok())},
		},
		{
			name:    "the capability offered, Emit still sends records",
			handler: culvert.PerRecord(passThrough),
			send:    []any{helloWith("unchanged"), batch(1, "a"), shutdown()},
			want:    []proto.Message{readyUnchanged, result(1, ok(pass(1, 0, "a")))},
		},
		{
			name: "multiple, zero and named outputs",
			handler: culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
				v := string(rec.Value)
				switch v {
				case "drop":
					return nil, nil
				case "split":
					return culvert.Emit(&culvert.Record{Value: []byte("s1")}, &culvert.Record{Value: []byte("s2")}), nil
				default:
					return []culvert.Output{culvert.To("alerts", &culvert.Record{Value: []byte(v)}), {Record: &culvert.Record{Value: []byte("all")}}}, nil
				}
			}),
			send: []any{hello(1), batch(1, "drop", "split", "x"), shutdown()},
			want: []proto.Message{readyDefault, result(1,
				ok(),
				ok(out("", "s1"), out("", "s2")),
				ok(out("alerts", "x"), out("", "all")))},
		},
		{
			name: "failures",
			handler: culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
				switch string(rec.Value) {
				case "perm":
					return culvert.Emit(rec), errors.New("bad value") // outputs are ignored
				case "retry":
					return nil, fmt.Errorf("lookup: %w", culvert.Retryable(errors.New("service down")))
				case "nil":
					return []culvert.Output{{}}, nil
				}
				return culvert.Emit(rec), nil
			}),
			send: []any{hello(1), batch(1, "perm", "ok", "retry", "nil"), shutdown()},
			want: []proto.Message{readyDefault, result(1,
				failed("bad value", false),
				ok(pass(1, 1, "ok")),
				failed("lookup: service down", true),
				failed("culvert: output 0 of record in:1:3 is a nil record", false))},
		},
		{
			name: "panic fails one record",
			handler: culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
				if string(rec.Value) == "boom" {
					panic("kaboom")
				}
				return culvert.Emit(rec), nil
			}),
			send: []any{hello(1), batch(1, "a", "boom", "c"), batch(2, "d"), shutdown()},
			want: []proto.Message{readyDefault,
				result(1, ok(pass(1, 0, "a")), failed("panic: kaboom", false), ok(pass(1, 2, "c"))),
				result(2, ok(pass(2, 0, "d")))},
		},
		{
			name: "panic in a batch handler fails the batch",
			handler: func(ctx context.Context, recs []*culvert.Record) []culvert.Result {
				if len(recs) == 2 {
					panic(errors.New("two"))
				}
				return []culvert.Result{{Outputs: culvert.Emit(recs[0])}}
			},
			send: []any{hello(1), batch(1, "a", "b"), batch(2, "c"), shutdown()},
			want: []proto.Message{readyDefault,
				result(1, failed("panic: two", false), failed("panic: two", false)),
				result(2, ok(pass(2, 0, "c")))},
		},
		{
			name: "batch handler with a wrong result count",
			handler: func(ctx context.Context, recs []*culvert.Record) []culvert.Result {
				return nil
			},
			send: []any{hello(1), batch(1, "a"), shutdown()},
			want: []proto.Message{readyDefault,
				result(1, failed("culvert: the BatchHandler returned 0 results for 1 records", false))},
		},
		{
			name:    "keep-alives are echoed in order",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), keepAlive(7), batch(1, "a"), keepAlive(8), batch(2, "b"), batch(3), keepAlive(9), shutdown()},
			want: []proto.Message{readyDefault, echo(7), result(1, ok(pass(1, 0, "a"))), echo(8),
				result(2, ok(pass(2, 0, "b"))), result(3), echo(9)},
		},
		{
			name: "batch deadline and info reach the handler",
			handler: culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
				d, hasDeadline := ctx.Deadline()
				info, hasInfo := culvert.CurrentBatch(ctx)
				if !hasDeadline || !hasInfo || !d.Equal(info.Deadline) || d.UnixMilli() != 1767225600000 {
					return nil, fmt.Errorf("deadline %v (%v), info %+v (%v)", d, hasDeadline, info, hasInfo)
				}
				return culvert.Emit(&culvert.Record{Value: fmt.Appendf(nil, "%d/%d", info.ID, info.Attempt)}), nil
			}),
			send: []any{hello(1), &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{
				Id: 1, Attempt: 3, DeadlineUnixMs: 1767225600000, Records: []*culvertv1.Record{{Id: "x"}}}}}, shutdown()},
			want: []proto.Message{readyDefault, result(1, ok(out("", "1/3")))},
		},
		{
			name:    "unsupported versions",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(2, 3)},
			want:    []proto.Message{initError("unsupported protocol versions [2 3]: culvert-sdk-go/1 speaks [1]", false)},
			wantErr: "unsupported protocol versions",
		},
		{
			name:    "init error",
			handler: culvert.PerRecord(passThrough),
			opts: []culvert.Option{culvert.WithInit(func(ctx context.Context, ic *culvert.InitContext) error {
				return culvert.Retryable(fmt.Errorf("database for %s/%s#%d of %d on %s not reachable", ic.Pipeline, ic.Function, ic.Instance, ic.Instances, ic.Route))
			})},
			send:    []any{hello(1)},
			want:    []proto.Message{initError("database for p/f#1 of 2 on r not reachable", true)},
			wantErr: "init failed",
		},
		{
			name:    "init panic",
			handler: culvert.PerRecord(passThrough),
			opts: []culvert.Option{culvert.WithInit(func(ctx context.Context, ic *culvert.InitContext) error {
				panic("no config")
			})},
			send:    []any{hello(1)},
			want:    []proto.Message{initError("panic: no config", false)},
			wantErr: "init failed",
		},
		{
			name:    "shutdown hook error",
			handler: culvert.PerRecord(passThrough),
			opts: []culvert.Option{culvert.WithShutdown(func(ctx context.Context) error {
				if _, ok := ctx.Deadline(); !ok {
					return errors.New("no deadline")
				}
				return errors.New("flush failed")
			})},
			send:    []any{hello(1), shutdown()},
			want:    []proto.Message{readyDefault},
			wantErr: "shutdown: flush failed",
		},
		{
			name:    "shutdown hook on eof",
			handler: culvert.PerRecord(passThrough),
			opts: []culvert.Option{culvert.WithShutdown(func(ctx context.Context) error {
				if d, ok := ctx.Deadline(); !ok || time.Until(d) > time.Second {
					return errors.New("no deadline within a second")
				}
				return errors.New("hook ran")
			})},
			send:    []any{hello(1), batch(1, "a")},
			eof:     true,
			want:    []proto.Message{readyDefault, result(1, ok(pass(1, 0, "a")))},
			wantErr: "shutdown: hook ran",
		},
		{
			name:    "first frame is not hello",
			handler: culvert.PerRecord(passThrough),
			send:    []any{batch(1, "a")},
			wantErr: "first frame is not Hello",
		},
		{
			name:    "second hello",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), hello(1)},
			want:    []proto.Message{readyDefault},
			wantErr: "second Hello",
		},
		{
			name:    "empty frame",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), &culvertv1.HostMessage{}},
			want:    []proto.Message{readyDefault},
			wantErr: "protocol violation",
		},
		{
			name:    "stream ends inside a frame",
			handler: culvert.PerRecord(passThrough),
			send:    []any{hello(1), rawFrame{0x10, 0x8a, 0x01, 0x0e}},
			eof:     true,
			want:    []proto.Message{readyDefault},
			wantErr: "unexpected EOF",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := serve(t, tc.handler, tc.opts, tc.send, tc.eof)
			if tc.wantErr == "" && err != nil {
				t.Errorf("Serve: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Serve returned %v, want an error containing %q", err, tc.wantErr)
			}
			want := make([]*culvertv1.FunctionMessage, len(tc.want))
			for i, m := range tc.want {
				want[i] = m.(*culvertv1.FunctionMessage)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("frames (-want +got):\n%s", diff)
			}
		})
	}
}

// rawFrame is bytes written as they are, to break the framing on purpose.
type rawFrame []byte

func TestOversizeResult(t *testing.T) {
	h := hello(1)
	h.GetHello().MaxFrameBytes = 600
	big := strings.Repeat("x", 300)
	got, err := serve(t, culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		if string(rec.Value) == "big" {
			return culvert.Emit(&culvert.Record{Value: []byte(big)}, &culvert.Record{Value: []byte(big)}), nil
		}
		return culvert.Emit(rec), nil
	}), nil, []any{h, batch(1, "a", "big", "b"), shutdown()}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d frames", len(got))
	}
	rs := got[1].GetResult().GetResults()
	if len(rs) != 3 || rs[0].Failure != nil || rs[2].Failure != nil || rs[1].Failure == nil ||
		!strings.Contains(rs[1].Failure.Message, "exceed the frame limit of 600 bytes") || rs[1].Failure.Retryable {
		t.Fatalf("results %v", rs)
	}
	if n := proto.Size(got[1]); n > 600 {
		t.Fatalf("result of %d bytes sent over a limit of 600", n)
	}
}

func TestRetryable(t *testing.T) {
	base := errors.New("x")
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{base, false},
		{culvert.Retryable(base), true},
		{fmt.Errorf("wrapped: %w", culvert.Retryable(base)), true},
	} {
		if got := culvert.IsRetryable(tc.err); got != tc.want {
			t.Errorf("IsRetryable(%v) = %v", tc.err, got)
		}
	}
	if culvert.Retryable(nil) != nil {
		t.Error("Retryable(nil) is not nil")
	}
	if !errors.Is(culvert.Retryable(base), base) {
		t.Error("Retryable does not wrap")
	}
}
