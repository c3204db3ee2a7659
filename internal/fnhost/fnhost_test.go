package fnhost_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/internal/testbin"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// bins holds the example functions, built once for the package's tests.
var bins string

func TestMain(m *testing.M) {
	if mode := os.Getenv(peerEnv); mode != "" {
		os.Exit(peer(mode))
	}
	testbin.Main(m, &bins, testbin.Examples)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func config(mode fnhost.Mode, path string, args ...string) fnhost.Config {
	return fnhost.Config{
		Pipeline: "test", Function: "fn", Route: "r", Mode: mode,
		Path: path, Args: args, Env: []string{"PATH=" + os.Getenv("PATH")},
		MaxBatch: 1000, Timeout: 10 * time.Second, HandshakeTimeout: 5 * time.Second,
		Runtime: process.Runtime{}, Logger: quiet(),
	}
}

func records(vals ...string) []*culvertv1.Record {
	out := make([]*culvertv1.Record, len(vals))
	for i, v := range vals {
		out[i] = &culvertv1.Record{Id: fmt.Sprintf("r%d", i), Key: []byte("k"), Value: []byte(v),
			Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}},
			Source:  &culvertv1.Position{Connector: "test", Subject: "in.x", Offset: uint64(i)}}
	}
	return out
}

// call submits one batch and waits for its answer.
func call(t *testing.T, inst fnhost.Instance, recs []*culvertv1.Record) ([]fnhost.Result, error) {
	t.Helper()
	type answer struct {
		res []fnhost.Result
		err error
	}
	ch := make(chan answer, 1)
	c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) { ch <- answer{res, err} }}
	if err := inst.Submit(context.Background(), c); err != nil {
		return nil, err
	}
	select {
	case a := <-ch:
		return a.res, a.err
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30s")
		return nil, nil
	}
}

func start(t *testing.T, cfg fnhost.Config) fnhost.Instance {
	t.Helper()
	inst, err := fnhost.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = inst.Close(ctx)
	})
	return inst
}

func values(res []fnhost.Result) []string {
	var out []string
	for _, r := range res {
		if r.Failure != nil {
			out = append(out, "FAIL:"+r.Failure.Message)
			continue
		}
		var vs []string
		for _, o := range r.Outputs {
			vs = append(vs, string(o.Record.Value))
		}
		out = append(out, strings.Join(vs, ","))
	}
	return out
}

func TestFramedPassthrough(t *testing.T) {
	inst := start(t, config(fnhost.Framed, filepath.Join(bins, "passthrough")))
	for _, n := range []int{0, 1, 7, 1000} {
		vals := make([]string, n)
		for i := range vals {
			vals[i] = fmt.Sprintf("value-%d", i)
		}
		res, err := call(t, inst, records(vals...))
		if err != nil {
			t.Fatalf("batch of %d: %v", n, err)
		}
		if got := values(res); strings.Join(got, "|") != strings.Join(vals, "|") {
			t.Fatalf("batch of %d: got %v", n, got)
		}
		for i, r := range res {
			o := r.Outputs[0].Record
			if o.Source.GetOffset() != uint64(i) || string(o.Key) != "k" {
				t.Fatalf("output %d lost its source or key: %v", i, o)
			}
		}
	}
}

func TestFramedPipelinedBatches(t *testing.T) {
	cfg := config(fnhost.Framed, filepath.Join(bins, "passthrough"))
	cfg.MaxInflight = 4
	inst := start(t, cfg)
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	for b := range 50 {
		wg.Add(1)
		recs := records(fmt.Sprintf("b%d", b))
		c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				order = append(order, err.Error())
				return
			}
			order = append(order, values(res)[0])
		}}
		if err := inst.Submit(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for i, v := range order {
		if v != fmt.Sprintf("b%d", i) {
			t.Fatalf("answer %d is %q: answers must come in submission order", i, v)
		}
	}
}

func TestFramedFailures(t *testing.T) {
	faulty := filepath.Join(bins, "faulty")
	tests := []struct {
		fault   string
		values  []string
		timeout time.Duration
		class   fnhost.Class
		want    []string // substrings of the error
	}{
		{"garbage", []string{"a"}, 0, fnhost.ClassProtocol, []string{"hello from a bad function", "did the function print to stdout?"}},
		{"exit-mid-batch", []string{"a", "crash", "c"}, 0, fnhost.ClassCrash, []string{"exit status 3"}},
		{"hang", []string{"a", "hang"}, 300 * time.Millisecond, fnhost.ClassTimeout, []string{"not answered within 300ms", "first record r0"}},
	}
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			cfg := config(fnhost.Framed, faulty)
			cfg.Env = append(cfg.Env, "CULVERT_FAULT="+tc.fault)
			if tc.timeout > 0 {
				cfg.Timeout = tc.timeout
			}
			inst := start(t, cfg)
			_, err := call(t, inst, records(tc.values...))
			var ie *fnhost.InstanceError
			if !errors.As(err, &ie) || ie.Class != tc.class {
				t.Fatalf("got %v, want a %s", err, tc.class)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			select {
			case <-inst.Dead():
			case <-time.After(5 * time.Second):
				t.Fatal("instance not dead after a failure")
			}
			if err := inst.Submit(context.Background(), &fnhost.Call{Done: func([]fnhost.Result, error) {}}); !errors.Is(err, fnhost.ErrDead) {
				t.Fatalf("submit to a dead instance: %v", err)
			}
		})
	}
}

func TestFramedCrashReportsStderr(t *testing.T) {
	cfg := config(fnhost.Framed, filepath.Join(bins, "faulty"))
	cfg.Env = append(cfg.Env, "CULVERT_FAULT=exit-mid-batch")
	inst := start(t, cfg)
	_, err := call(t, inst, records("crash"))
	var ie *fnhost.InstanceError
	if !errors.As(err, &ie) || ie.Stderr == "" || ie.Exit == nil || ie.Exit.Code != 3 {
		t.Fatalf("crash report lacks exit status or stderr: %#v", err)
	}
}

func TestFramedRecordFailure(t *testing.T) {
	cfg := config(fnhost.Framed, filepath.Join(bins, "faulty"))
	cfg.Env = append(cfg.Env, "CULVERT_FAULT=fail-one")
	inst := start(t, cfg)
	res, err := call(t, inst, records("a", "bad", "c"))
	if err != nil {
		t.Fatal(err)
	}
	got := values(res)
	if got[0] != "a" || !strings.HasPrefix(got[1], "FAIL:") || got[2] != "c" {
		t.Fatalf("got %v", got)
	}
	if res[1].Failure.Retryable {
		t.Fatal("a permanent failure came back retryable")
	}
}

func TestFramedInitError(t *testing.T) {
	cfg := config(fnhost.Framed, filepath.Join(bins, "faulty"))
	cfg.Env = append(cfg.Env, "CULVERT_FAULT=init-error")
	_, err := fnhost.Start(context.Background(), cfg)
	var ie *fnhost.InstanceError
	if !errors.As(err, &ie) || ie.Class != fnhost.ClassInit {
		t.Fatalf("got %v, want an init error", err)
	}
}

func TestFramedHandshakeTimeout(t *testing.T) {
	cfg := config(fnhost.Framed, "/bin/sleep", "30")
	cfg.HandshakeTimeout = 200 * time.Millisecond
	_, err := fnhost.Start(context.Background(), cfg)
	var ie *fnhost.InstanceError
	if !errors.As(err, &ie) || ie.Class != fnhost.ClassTimeout {
		t.Fatalf("got %v, want a handshake timeout", err)
	}
}

func TestFramedNotAFunction(t *testing.T) {
	// cat echoes the Hello back: a HostMessage is not a valid answer.
	cfg := config(fnhost.Framed, "/bin/echo", "I am not a function")
	_, err := fnhost.Start(context.Background(), cfg)
	var ie *fnhost.InstanceError
	if !errors.As(err, &ie) || ie.Class != fnhost.ClassProtocol || !strings.Contains(err.Error(), "I am not a function") {
		t.Fatalf("got %v, want a protocol violation quoting the output", err)
	}
}

func TestFramedKeepAliveAndShutdown(t *testing.T) {
	cfg := config(fnhost.Framed, filepath.Join(bins, "passthrough"))
	cfg.KeepAlive = 20 * time.Millisecond
	inst, err := fnhost.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // several keep-alives while idle
	if _, err := call(t, inst, records("x")); err != nil {
		t.Fatalf("after keep-alives: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := inst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var ie *fnhost.InstanceError
	if !errors.As(inst.Err(), &ie) || ie.Class != fnhost.ClassShutdown || !ie.Exit.Success() {
		t.Fatalf("after close: %v", inst.Err())
	}
}

func TestLines(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		in   []string
		want []string
	}{
		{"sed", []string{"sed", "-u", "s/a/A/g"}, []string{"banana", "", "xyz"}, []string{"bAnAnA", "", "xyz"}},
		{"awk filter", []string{"mawk", "-W", "interactive", "{ if ($0 ~ /keep/) print; else print \"\" }"}, []string{"keep 1", "drop", "keep 2"}, []string{"keep 1", "", "keep 2"}},
		{"newline value", []string{"cat"}, []string{"one", "two\nlines", "three"}, []string{"one", "FAIL:value contains a newline, which lines mode cannot carry; use framed or exec mode", "three"}},
	}
	if _, err := exec.LookPath("jq"); err == nil {
		tests = append(tests, struct {
			name string
			cmd  []string
			in   []string
			want []string
		}{"jq", []string{"jq", "-c", "--unbuffered", ".n += 1"}, []string{`{"n":1}`, `{"n":41}`}, []string{`{"n":2}`, `{"n":42}`}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, err := exec.LookPath(tc.cmd[0])
			if err != nil {
				t.Skipf("%s not installed", tc.cmd[0])
			}
			inst := start(t, config(fnhost.Lines, path, tc.cmd[1:]...))
			for range 3 { // the instance stays usable
				res, err := call(t, inst, records(tc.in...))
				if err != nil {
					t.Fatal(err)
				}
				if got := values(res); strings.Join(got, "|") != strings.Join(tc.want, "|") {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestLinesExtraOutput(t *testing.T) {
	inst := start(t, config(fnhost.Lines, "/usr/bin/mawk", "-W", "interactive", "{ print; print }"))
	_, _ = call(t, inst, records("a"))
	select {
	case <-inst.Dead():
	case <-time.After(5 * time.Second):
		t.Fatal("an instance printing two lines per input is still running")
	}
	var ie *fnhost.InstanceError
	if !errors.As(inst.Err(), &ie) || ie.Class != fnhost.ClassProtocol {
		t.Fatalf("got %v, want a protocol violation", inst.Err())
	}
}

func TestExec(t *testing.T) {
	sh := func(script string) fnhost.Config { return config(fnhost.Exec, "/bin/sh", "-c", script) }
	tests := []struct {
		name string
		cfg  fnhost.Config
		in   []string
		want []string
	}{
		{"tr", config(fnhost.Exec, "/usr/bin/tr", "a-z", "A-Z"), []string{"abc", "x"}, []string{"ABC", "X"}},
		{"env", sh(`printf '%s %s %s' "$CULVERT_RECORD_ID" "$CULVERT_SUBJECT" "$CULVERT_FUNCTION"`), []string{"a"}, []string{"r0 in.x fn"}},
		{"filter", sh(`cat >/dev/null`), []string{"a"}, []string{""}},
		{"permanent", sh(`echo boom >&2; exit 2`), []string{"a"}, []string{`FAIL:function fn: crash: record r0: exit status 2; stderr tail: "boom"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inst := start(t, tc.cfg)
			res, err := call(t, inst, records(tc.in...))
			if err != nil {
				t.Fatal(err)
			}
			if got := values(res); strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExecRetryableAndTimeout(t *testing.T) {
	inst := start(t, config(fnhost.Exec, "/bin/sh", "-c", "exit 75"))
	res, err := call(t, inst, records("a"))
	if err != nil || res[0].Failure == nil || !res[0].Failure.Retryable {
		t.Fatalf("exit 75 must be a retryable failure: %v %+v", err, res)
	}
	cfg := config(fnhost.Exec, "/bin/sleep", "30")
	cfg.Timeout = 200 * time.Millisecond
	inst = start(t, cfg)
	res, err = call(t, inst, records("a"))
	if err != nil || res[0].Failure == nil || !res[0].Failure.Retryable || !strings.Contains(res[0].Failure.Message, "timeout") {
		t.Fatalf("a hung process must time out, retryable: %v %+v", err, res)
	}
}

// BenchmarkFramedHop measures records through a passthrough function; see
// also bench/framedhop, which prints a table beside a raw cat pipe.
func BenchmarkFramedHop(b *testing.B) {
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			cfg := config(fnhost.Framed, filepath.Join(bins, "passthrough"))
			cfg.MaxBatch = size
			inst, err := fnhost.Start(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer inst.Close(context.Background())
			recs := make([]*culvertv1.Record, size)
			for i := range recs {
				recs[i] = &culvertv1.Record{Id: fmt.Sprintf("js:B:%d", i), Key: []byte("k"), Value: []byte(strings.Repeat("x", 100))}
			}
			var wg sync.WaitGroup
			b.ResetTimer()
			for b.Loop() {
				wg.Add(1)
				if err := inst.Submit(context.Background(), &fnhost.Call{Records: recs, Attempt: 1, Done: func([]fnhost.Result, error) { wg.Done() }}); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/record")
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// TestDeathBlamesTheBatchItDiedOn: a process answers batch a, then dies on
// batch b while the host's reader is still busy handing on the answer
// before a (as when the next stage's queue is full), and the host's next
// write, of batch c, finds the pipe broken. a's answer is in the pipe: the
// host must take it in before it reaps the process (which closes the
// pipe), so that a succeeds, b is the batch blamed (an attempt), and c a
// bystander.
func TestDeathBlamesTheBatchItDiedOn(t *testing.T) {
	tests := []struct {
		mode fnhost.Mode
		path string
		args []string
		env  string
	}{
		{fnhost.Framed, "faulty", nil, "CULVERT_FAULT=exit-mid-batch"},
		{fnhost.Lines, "sh", []string{"-c", `while IFS= read -r l; do case "$l" in *crash*) echo "crashing on $l" >&2; exit 3;; esac; printf '%s\n' "$l"; done`}, ""},
	}
	for _, tc := range tests {
		t.Run(string(tc.mode), func(t *testing.T) {
			t.Parallel()
			path := tc.path
			if tc.mode == fnhost.Framed {
				path = filepath.Join(bins, tc.path)
			}
			cfg := config(tc.mode, path, tc.args...)
			if tc.env != "" {
				cfg.Env = append(cfg.Env, tc.env)
			}
			logs := &testbin.Buffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			cfg.MaxInflight = 3
			inst := start(t, cfg)

			type answer struct {
				res []fnhost.Result
				err error
			}
			answers := map[string]chan answer{}
			entered, release := make(chan struct{}), make(chan struct{})
			submit := func(name, value string) {
				t.Helper()
				ch := make(chan answer, 1)
				answers[name] = ch
				c := &fnhost.Call{Records: records(value), Attempt: 1, Done: func(res []fnhost.Result, err error) {
					if name == "z" {
						close(entered)
						<-release // the reader is busy handing z's answer on
					}
					ch <- answer{res, err}
				}}
				if err := inst.Submit(context.Background(), c); err != nil {
					t.Fatalf("submit %s: %v", name, err)
				}
			}
			submit("z", "z")
			<-entered // a is sent, and answered, after the reader took z's answer
			submit("a", "a")
			submit("b", "b crash")
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), "crashing on") {
				if time.Now().After(deadline) {
					t.Fatalf("the function did not crash; log:\n%s", logs)
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // the process is gone: writing c breaks the pipe
			submit("c", "c")
			time.Sleep(300 * time.Millisecond) // the host noticed the broken pipe
			close(release)

			get := func(name string) answer {
				select {
				case a := <-answers[name]:
					return a
				case <-time.After(20 * time.Second):
					t.Fatalf("no answer for %s", name)
					return answer{}
				}
			}
			for _, name := range []string{"z", "a"} {
				if a := get(name); a.err != nil || len(a.res) != 1 || a.res[0].Failure != nil {
					t.Errorf("batch %s, answered before the crash: got %+v, %v; want its result", name, a.res, a.err)
				}
			}
			var ie *fnhost.InstanceError
			if a := get("b"); !errors.As(a.err, &ie) || ie.Bystander || ie.Class != fnhost.ClassCrash {
				t.Errorf("batch b, which the process died on: got %v, want the crash, not as a bystander", a.err)
			}
			if a := get("c"); !errors.As(a.err, &ie) || !ie.Bystander {
				t.Errorf("batch c, never processed: got %v, want a bystander", a.err)
			}
		})
	}
}

// specRecorder is a runtime that records the specs it starts.
type specRecorder struct {
	process.Runtime
	mu    sync.Mutex
	specs []sandbox.Spec
}

func (r *specRecorder) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Process, error) {
	r.mu.Lock()
	r.specs = append(r.specs, spec)
	r.mu.Unlock()
	return r.Runtime.Start(ctx, spec)
}

// TestExecSpec: exec mode's starts share one Env (the instance's, without
// CULVERT_ variables) and carry the record's variables as StartEnv, so a
// runtime that creates instances ahead can serve all of them from one
// spec; the function sees the record's variables, not a CULVERT_ variable
// of the configuration.
func TestExecSpec(t *testing.T) {
	rec := &specRecorder{}
	cfg := config(fnhost.Exec, "/bin/sh", "-c", `printf '%s %s %s' "$CULVERT_RECORD_ID" "$CULVERT_FUNCTION" "$A"`)
	cfg.Env = append(cfg.Env, "CULVERT_FUNCTION=spoof", "A=1")
	cfg.Runtime = rec
	inst := start(t, cfg)
	res, err := call(t, inst, records("a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(values(res), "|"), "r0 fn 1|r1 fn 1"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	wantEnv := []string{"PATH=" + os.Getenv("PATH"), "A=1"}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.specs) != 2 {
		t.Fatalf("%d starts, want 2", len(rec.specs))
	}
	for i, s := range rec.specs {
		if !slices.Equal(s.Env, wantEnv) {
			t.Errorf("start %d: Env %q, want %q", i, s.Env, wantEnv)
		}
		if id := fmt.Sprintf("CULVERT_RECORD_ID=r%d", i); !slices.Contains(s.StartEnv, id) {
			t.Errorf("start %d: StartEnv %q lacks %s", i, s.StartEnv, id)
		}
	}
}
