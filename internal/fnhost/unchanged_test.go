package fnhost_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

// peerEnv makes this test binary a framed function written from
// proto/SPEC.md alone (see peer), one that answers with Output.unchanged
// in the way the variable's value names.
const peerEnv = "FNHOST_TEST_PEER"

// peer speaks the framed protocol on stdin and stdout: Ready (accepting
// the capabilities the mode names), then one answer per Batch in which
// every record is answered with Output.unchanged, until end of input.
// Modes:
//
//	unchanged         accepts "unchanged"; answers as the spec allows
//	unasked           accepts nothing, yet sends Output.unchanged
//	with-record       accepts "unchanged"; sets record beside it
//	other-capability  accepts "cancel", which the host never offers
func peer(mode string) int {
	r, w := framing.NewReader(os.Stdin, 0), framing.NewWriter(os.Stdout, 0)
	next := func() (*culvertv1.HostMessage, error) {
		b, err := r.Next()
		if err != nil {
			return nil, err
		}
		m := &culvertv1.HostMessage{}
		return m, proto.Unmarshal(b, m)
	}
	hello, err := next()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	ready := &culvertv1.Ready{Version: 1, Agent: "fnhost-test-peer/" + mode}
	switch mode {
	case "unchanged", "with-record":
		ready.Capabilities = []string{"unchanged"}
	case "other-capability":
		ready.Capabilities = []string{"cancel"}
	}
	fmt.Fprintf(os.Stderr, "peer: offered %q\n", hello.GetHello().GetCapabilities())
	if err := w.Write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: ready}}); err != nil {
		return 1
	}
	for {
		m, err := next()
		if err != nil {
			return 0 // end of input: the host is done with us
		}
		b := m.GetBatch()
		if b == nil {
			continue
		}
		br := &culvertv1.BatchResult{BatchId: b.Id}
		for _, rec := range b.Records {
			o := &culvertv1.Output{Unchanged: true}
			if mode == "with-record" {
				o.Record = rec
			}
			br.Results = append(br.Results, &culvertv1.RecordResult{Outputs: []*culvertv1.Output{o}})
		}
		if err := w.Write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: br}}); err != nil {
			return 1
		}
	}
}

func peerConfig(mode string) fnhost.Config {
	exe, _ := os.Executable()
	cfg := config(fnhost.Framed, exe)
	cfg.Env = append(cfg.Env, peerEnv+"="+mode)
	return cfg
}

// TestFramedUnchanged: an Output.unchanged comes back as the input record
// under the rules of any output (a derived id, the input's source), from a
// function that has no SDK, and from the SDK's Pass; both accept the
// capability in Ready (the host logs what was accepted).
func TestFramedUnchanged(t *testing.T) {
	for _, tc := range []struct{ name string }{{"peer"}, {"sdk"}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := peerConfig("unchanged")
			if tc.name == "sdk" {
				cfg = config(fnhost.Framed, filepath.Join(bins, "passthrough"))
			}
			var log testbin.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
			inst := start(t, cfg)
			if !strings.Contains(log.String(), "capabilities=[unchanged]") {
				t.Fatalf("the function did not accept the unchanged capability; the host logged:\n%s", log.String())
			}
			in := records("a", "", "c")
			in[2].ContentType = "text/plain"
			res, err := call(t, inst, in)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if r.Failure != nil || len(r.Outputs) != 1 {
					t.Fatalf("result %d: %+v", i, r)
				}
				got := r.Outputs[0].Record
				want := proto.CloneOf(in[i])
				want.Id = in[i].Id + "/fn.0"
				if !proto.Equal(got, want) {
					t.Errorf("output %d is %v, want %v", i, got, want)
				}
				if got == in[i] {
					t.Errorf("output %d is the input record itself", i)
				}
			}
		})
	}
}

// TestFramedUnchangedViolations: Output.unchanged without the capability,
// or beside a record, and a capability the host did not offer, fail the
// instance with a protocol error that says so; the batch is failed with
// it, not answered.
func TestFramedUnchangedViolations(t *testing.T) {
	tests := []struct {
		mode string
		want string
	}{
		{"unasked", `output 0 of result 0 (record r0) of batch 1 sets unchanged, but the function did not accept the "unchanged" capability in Ready`},
		{"with-record", "output 0 of result 0 (record r0) of batch 1 sets both unchanged and record"},
		{"other-capability", `Ready accepted capability "cancel" that the host did not offer (it offered [unchanged])`},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			inst, err := fnhost.Start(context.Background(), peerConfig(tc.mode))
			if err == nil {
				t.Cleanup(func() { _ = inst.Close(context.Background()) })
				_, err = call(t, inst, records("a", "b"))
			}
			var ie *fnhost.InstanceError
			if !errors.As(err, &ie) || ie.Class != fnhost.ClassProtocol || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a protocol violation containing %q", err, tc.want)
			}
		})
	}
}
