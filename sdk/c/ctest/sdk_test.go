package ctest_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
	"google.golang.org/protobuf/proto"
)

// sdkDir is sdk/c, where the C sources are; the compilers run there.
const sdkDir = ".."

// strict are the warnings every build of the SDK must pass.
var strict = []string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-I."}

// sanitize builds with AddressSanitizer and UBSan, failing on the first
// report.
var sanitize = []string{"-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"}

// build compiles sources into dir/name with compiler and flags; a missing
// compiler fails the test (.ci/deps.d/50-sdks.sh installs gcc and clang).
func build(t testing.TB, dir, compiler, name string, flags []string, sources ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	args := append(append(append([]string{}, flags...), "-o", out), sources...)
	cmd := exec.Command(compiler, args...)
	cmd.Dir = sdkDir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", compiler, strings.Join(args, " "), err, b)
	}
	return out
}

// TestCStrictBuilds compiles the SDK and its examples with gcc and clang,
// warnings as errors.
func TestCStrictBuilds(t *testing.T) {
	dir := t.TempDir()
	for _, cc := range []string{"gcc", "clang"} {
		for _, ex := range []string{"passthrough", "conformance"} {
			build(t, dir, cc, cc+"-"+ex, append([]string{"-O2"}, strict...), "culvert.c", "examples/"+ex+"/main.c")
		}
	}
}

// TestCUnit runs the C test program, optimised and under the sanitizers.
func TestCUnit(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []struct {
		name, cc string
		flags    []string
	}{
		{"gcc-O2", "gcc", []string{"-O2"}},
		{"gcc-asan-ubsan", "gcc", sanitize},
		{"clang-asan-ubsan", "clang", sanitize},
	} {
		t.Run(v.name, func(t *testing.T) {
			bin := build(t, dir, v.cc, "test-"+v.name, append(append([]string{}, strict[1:]...), v.flags...), "test/test_culvert.c")
			out := sdktest.RunTool(t, sdkDir, 2*time.Minute, bin)
			if !strings.Contains(out, " passed, 0 failed") {
				t.Fatalf("no summary line:\n%s", out)
			}
			t.Log(out)
		})
	}
}

// TestCEndToEnd runs the conformance example, built with the sanitizers,
// through the real host.
func TestCEndToEnd(t *testing.T) {
	bin, err := conformanceBinary()
	if err != nil {
		t.Fatal(err)
	}
	sdktest.EndToEnd(t, bin)
}

// TestCPassthroughUnchanged runs the passthrough example, built with the
// sanitizers, through the real host, which offers the unchanged
// capability: Ready accepts it, and the records come back as they went in
// whether the example answers with culvert_pass (Output.unchanged) or,
// with --emit, with culvert_emit (the records sent back). The bytes on
// the wire are checked by test/test_culvert.c.
func TestCPassthroughUnchanged(t *testing.T) {
	bin, err := cachedBuild("passthrough", nil, "culvert.c", "examples/passthrough/main.c")
	if err != nil {
		t.Fatal(err)
	}
	recs := []*culvertv1.Record{
		{Id: "a", Key: []byte("k\x00\xff"), Value: []byte("v\x00\xff"), ContentType: "application/octet-stream",
			Headers: []*culvertv1.Header{{Name: "h", Value: []byte{0}}, {Name: "h", Value: []byte("x")}},
			Source:  &culvertv1.Position{Connector: "test", Offset: 7}},
		{Id: "b", Value: []byte("second"), Source: &culvertv1.Position{Connector: "test", Offset: 8}},
	}
	for _, args := range [][]string{nil, {"--emit"}} {
		t.Run(fmt.Sprint("args", args), func(t *testing.T) {
			var logs testbin.Buffer
			inst := sdktest.Start(t, &logs, 100, append([]string{bin}, args...)...)
			res, err := sdktest.Call(t, inst, recs)
			if err != nil {
				t.Fatalf("batch: %v\nlog:\n%s", err, &logs)
			}
			if len(res) != len(recs) {
				t.Fatalf("%d results for %d records", len(res), len(recs))
			}
			for i, r := range res {
				if r.Failure != nil || len(r.Outputs) != 1 {
					t.Fatalf("%s: failure %+v, %d outputs; want one output\nlog:\n%s", recs[i].Id, r.Failure, len(r.Outputs), &logs)
				}
				got, want := r.Outputs[0].Record, recs[i]
				if !bytes.Equal(got.GetValue(), want.Value) || !bytes.Equal(got.GetKey(), want.Key) ||
					got.GetContentType() != want.ContentType || len(got.GetHeaders()) != len(want.Headers) ||
					got.GetSource().GetOffset() != want.Source.Offset {
					t.Errorf("%s: got %v, want %v", want.Id, got, want)
				}
			}
			if !strings.Contains(logs.String(), "capabilities=[unchanged]") {
				t.Errorf("Ready did not accept the unchanged capability:\n%s", &logs)
			}
		})
	}
}

// seeds are streams a host writes: a handshake, batches with headers,
// binary values and event times, a keep-alive and a shutdown.
func seeds(t testing.TB) [][]byte {
	t.Helper()
	frame := func(b *bytes.Buffer, m *culvertv1.HostMessage) {
		f, err := framing.Append(nil, m, framing.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(f)
	}
	var hello, full bytes.Buffer
	h := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{1}, MaxFrameBytes: 1 << 16,
		Context: &culvertv1.InitContext{Pipeline: "p", Function: "f", Route: "r", Instances: 1}}}}
	frame(&hello, h)
	frame(&full, h)
	recs := []*culvertv1.Record{
		{Id: "a", Key: []byte("k"), Value: []byte("v\x00\xff"), ContentType: "text/plain",
			Headers: []*culvertv1.Header{{Name: "h", Value: []byte{0}}, {Name: "h", Value: []byte("x")}}},
		{Id: "b", Value: []byte("f")},
		{Id: "c", Value: []byte("xy"), Source: &culvertv1.Position{Connector: "kinesis", Partition: "shard-1", Offset: 9, Sequence: "123"}},
	}
	frame(&full, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Records: recs, DeadlineUnixMs: 1767225600000, Attempt: 2}}})
	frame(&full, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: 99}}})
	frame(&full, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 2}}})
	frame(&full, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{Reason: "bye"}}})
	// The same batch after a Hello offering the unchanged capability, so
	// that culvert_pass answers with Output.unchanged.
	var unchanged bytes.Buffer
	hu := proto.Clone(h).(*culvertv1.HostMessage)
	hu.GetHello().Capabilities = []string{"log-frames", "unchanged"}
	frame(&unchanged, hu)
	frame(&unchanged, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Records: recs, Attempt: 1}}})
	out := [][]byte{hello.Bytes(), full.Bytes(), []byte("hello\n"), unchanged.Bytes()}
	// Bare frame bodies too: the fuzz target also decodes its input as one
	// body, in a buffer of exactly its size.
	for _, m := range []*culvertv1.HostMessage{h, hu, {Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Records: recs, Attempt: 1}}}} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// TestCLibFuzzer runs the libFuzzer target (test/fuzz_culvert.c) for a
// bounded time from the seeds: any sanitizer report or crash fails.
func TestCLibFuzzer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	bin := build(t, dir, "clang", "fuzz", []string{"-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-I."}, "test/fuzz_culvert.c")
	corpus := filepath.Join(dir, "corpus")
	if err := os.Mkdir(corpus, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range seeds(t) {
		if err := os.WriteFile(filepath.Join(corpus, string(rune('a'+i))), s, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := sdktest.RunTool(t, dir, 2*time.Minute, bin, "-max_total_time=8", "-runs=2000000", "-rss_limit_mb=1024", corpus)
	t.Log(out[max(0, len(out)-500):])
}

// cachedBuild builds sources with gcc, the strict warnings, the
// sanitizers and extra flags once per version of its sources and flags,
// into the temporary directory, so that the tests and the fuzzing engine's
// worker processes share one build instead of compiling each.
func cachedBuild(name string, extra []string, sources ...string) (string, error) {
	args := append(append(append([]string{}, strict...), sanitize...), extra...)
	h := sha256.New()
	h.Write([]byte(strings.Join(args, " ")))
	for _, f := range append([]string{"culvert.c", "culvert.h"}, sources...) {
		b, err := os.ReadFile(filepath.Join(sdkDir, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	bin := filepath.Join(os.TempDir(), fmt.Sprintf("culvert-c-%s-%x", name, h.Sum(nil)[:8]))
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	args = append(append(args, "-o", tmp), sources...)
	cmd := exec.Command("gcc", args...)
	cmd.Dir = sdkDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return bin, os.Rename(tmp, bin)
}

// conformanceBinary is the conformance example built with the sanitizers.
func conformanceBinary() (string, error) {
	return cachedBuild("conformance", nil, "culvert.c", "examples/conformance/main.c")
}

var harness sdktest.Harness

// FuzzCServe feeds arbitrary host streams to the SDK's protocol loop
// (test/fuzz_culvert.c, the libFuzzer target, driven by its own main) in
// one long-lived process built with AddressSanitizer and UBSan: any
// sanitizer report or crash kills the process and fails the input.
// TestCLibFuzzer runs the same target coverage-guided.
func FuzzCServe(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		bin, err := cachedBuild("fuzz", []string{"-DCULVERT_FUZZ_MAIN"}, "test/fuzz_culvert.c")
		if err != nil {
			t.Fatal(err)
		}
		harness.Check(t, data, bin)
	})
}
