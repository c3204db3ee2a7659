package python_test

import (
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
)

var harness sdktest.Harness

// FuzzPythonServe feeds arbitrary host streams (after a valid Hello) to
// the SDK's frame reader and protocol loop, in one long-lived Python
// process: the SDK must either serve them or stop with a protocol error,
// and every frame it writes must decode.
func FuzzPythonServe(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		harness.Check(t, data, python, "tests/fuzz_harness.py")
	})
}

// seeds are host streams that follow a Hello: batches with headers and
// binary values, a keep-alive, a shutdown, and printed text. The stream of
// frames comes twice, once with a byte after the Shutdown, so that both
// parities of length run: the harness offers the "unchanged" capability
// to even ones only.
func seeds(tb testing.TB) [][]byte {
	tb.Helper()
	var all []byte
	for _, m := range []*culvertv1.HostMessage{
		{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Attempt: 1, Records: []*culvertv1.Record{
			{Id: "a", Key: []byte("k"), Value: []byte("v\x00\xff"), Headers: []*culvertv1.Header{{Name: "h", Value: []byte{0}}}},
			{Id: "b", Value: []byte("f")}, {Id: "c", Value: []byte("two")}, {Id: "d", Value: []byte("same")}}}}},
		{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: 5}}},
		{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 2}}},
		{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{}}},
	} {
		b, err := framing.Append(nil, m, framing.DefaultMaxFrame)
		if err != nil {
			tb.Fatal(err)
		}
		all = append(all, b...)
	}
	return [][]byte{all, append(all[:len(all):len(all)], 0), []byte("hello\n"), nil}
}
