package ctest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
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

// TestCEndToEnd runs the conformance example, built with the sanitizers
// (the build FuzzCFunction uses), through the real host.
func TestCEndToEnd(t *testing.T) {
	bin, err := cachedFuzzBinary()
	if err != nil {
		t.Fatal(err)
	}
	sdktest.EndToEnd(t, bin)
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
	return [][]byte{hello.Bytes(), full.Bytes(), []byte("hello\n")}
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

// cachedFuzzBinary builds the conformance example with the sanitizers
// once per version of its sources, into the temporary directory, so that
// the tests and the fuzzing engine's worker processes share one build.
func cachedFuzzBinary() (string, error) {
	args := append(append([]string{}, strict...), sanitize...)
	h := sha256.New()
	h.Write([]byte(strings.Join(args, " ")))
	for _, f := range []string{"culvert.c", "culvert.h", "examples/conformance/main.c"} {
		b, err := os.ReadFile(filepath.Join(sdkDir, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	bin := filepath.Join(os.TempDir(), fmt.Sprintf("culvert-c-fuzz-%x", h.Sum(nil)[:8]))
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	args = append(args, "-o", tmp, "culvert.c", "examples/conformance/main.c")
	cmd := exec.Command("gcc", args...)
	cmd.Dir = sdkDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return bin, os.Rename(tmp, bin)
}

var (
	fuzzOnce sync.Once
	fuzzBin  string
	fuzzErr  error
)

// FuzzCFunction feeds a Hello and then arbitrary bytes, as the host's
// stream, to the conformance example built with the sanitizers. The
// function may refuse the input (exit 1), but must not crash, trip a
// sanitizer, or write anything but well-formed frames.
func FuzzCFunction(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	hello := seeds(f)[0]
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOnce.Do(func() { fuzzBin, fuzzErr = cachedFuzzBinary() })
		if fuzzErr != nil {
			t.Fatal(fuzzErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, fuzzBin)
		cmd.Env = []string{"CULVERT_CONFORMANCE=1", "ASAN_OPTIONS=detect_leaks=1:exitcode=86", "UBSAN_OPTIONS=exitcode=87"}
		cmd.Stdin = io.MultiReader(bytes.NewReader(hello), bytes.NewReader(data))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
			t.Fatalf("input %q: %v\nstderr:\n%s", data, err, stderr.String())
		}
		if s := stderr.String(); strings.Contains(s, "Sanitizer") || strings.Contains(s, "runtime error") {
			t.Fatalf("input %q: sanitizer report:\n%s", data, s)
		}
		r := framing.NewReader(&stdout, framing.DefaultMaxFrame)
		for {
			b, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("input %q: the function wrote a bad frame: %v", data, err)
			}
			var m culvertv1.FunctionMessage
			if err := m.UnmarshalVT(b); err != nil || m.Msg == nil {
				t.Fatalf("input %q: undecodable FunctionMessage (%v): %x", data, err, b)
			}
		}
	})
}
