package shell_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// want is the expected outcome of one record: its output values, or a
// failure (with retryable) when fail is set.
type want struct {
	outs      []string
	fail      bool
	retryable bool
}

func out(v ...string) want { return want{outs: v} }

var none = want{}

// start loads the example's pipeline file, so that the test runs exactly
// the function it configures, and starts that function through Culvert's
// host in the configured mode, as a plain process.
func start(t *testing.T, example, function string) (fnhost.Instance, *pipelines.Function) {
	t.Helper()
	p, err := pipelines.Load(filepath.Join(example, "pipeline.yaml"), nil)
	if err != nil {
		t.Fatalf("%s/pipeline.yaml: %v", example, err)
	}
	var fn *pipelines.Function
	for name, f := range p.Functions {
		if name == function {
			fn = f
		}
	}
	if fn == nil {
		t.Fatalf("%s/pipeline.yaml has no function %q", example, function)
	}
	path := fn.Command
	if strings.Contains(path, "/") {
		path = filepath.Join(fn.Dir, path)
	} else if path, err = exec.LookPath(fn.Command); err != nil {
		t.Fatalf("%s needs %s, installed by .ci/deps.d: %v", example, fn.Command, err)
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range fn.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	inst, err := fnhost.Start(context.Background(), fnhost.Config{
		Pipeline: p.Name, Function: fn.Name, Route: "test", Instances: 1,
		Mode: fnhost.Mode(fn.Mode), Path: path, Args: fn.Args, Env: env, Dir: fn.Dir,
		Timeout: 10 * time.Second, Runtime: process.Runtime{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		inst.Close(ctx)
	})
	return inst, fn
}

// call submits recs as one batch and waits for the results.
func call(t *testing.T, inst fnhost.Instance, recs []*culvertv1.Record) []fnhost.Result {
	t.Helper()
	type done struct {
		res []fnhost.Result
		err error
	}
	ch := make(chan done, 1)
	c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) { ch <- done{res, err} }}
	if err := inst.Submit(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-ch:
		if d.err != nil {
			t.Fatal(d.err)
		}
		return d.res
	case <-time.After(30 * time.Second):
		t.Fatal("no result within 30s")
	}
	return nil
}

func check(t *testing.T, recs []*culvertv1.Record, res []fnhost.Result, wants []want) {
	t.Helper()
	if len(res) != len(wants) {
		t.Fatalf("%d results for %d records", len(res), len(wants))
	}
	for i, w := range wants {
		r := res[i]
		if w.fail {
			if r.Failure == nil || r.Failure.Retryable != w.retryable {
				t.Errorf("record %d (%q): got %+v, want a failure with retryable %v", i, recs[i].Value, r, w.retryable)
			}
			continue
		}
		if r.Failure != nil {
			t.Errorf("record %d (%q): failed: %s", i, recs[i].Value, r.Failure.Message)
			continue
		}
		var got []string
		for _, o := range r.Outputs {
			got = append(got, string(o.Record.Value))
		}
		if strings.Join(got, "\x00") != strings.Join(w.outs, "\x00") || len(got) != len(w.outs) {
			t.Errorf("record %d (%q): outputs %q, want %q", i, recs[i].Value, got, w.outs)
		}
	}
}

func values(vs ...string) []*culvertv1.Record {
	recs := make([]*culvertv1.Record, len(vs))
	for i, v := range vs {
		recs[i] = &culvertv1.Record{Id: "in:" + string(rune('a'+i)), Value: []byte(v)}
	}
	return recs
}

func TestLines(t *testing.T) {
	for _, tc := range []struct {
		example, function string
		in                []string
		want              []want
	}{
		{"jq", "price", []string{
			`{"sku":"a","qty":2,"price":1.5}`,
			`{"sku":"b","qty":0,"price":9}`,
			`not json at all`,
			`{"sku":"c","qty":3,"price":"free"}`,
			`[1,2]`,
			`{"sku":"d","qty":1,"price":10,"note":"tab\there"}`,
		}, []want{
			out(`{"sku":"a","qty":2,"price":1.5,"total":3}`),
			none,
			none,
			none,
			none,
			out(`{"sku":"d","qty":1,"price":10,"note":"tab\there","total":10}`),
		}},
		{"awk", "logfmt", []string{
			"INFO server started on :8080",
			"DEBUG cache warm",
			"",
			`ERROR disk "data" full`,
			"WARN  path C:\\tmp\tis odd",
		}, []want{
			out(`{"level":"info","msg":"server started on :8080"}`),
			none,
			none,
			out(`{"level":"error","msg":"disk \"data\" full"}`),
			out(`{"level":"warn","msg":"path C:\\tmp\tis odd"}`),
		}},
		{"script", "mask", []string{
			"ann@example.com",
			"not an address",
			"",
			"b@x@y.z",
			"C@host.io",
			"x\ty@z.a",
			"q@nodot",
		}, []want{
			out("a***@example.com"),
			none,
			none,
			none,
			out("C***@host.io"),
			none,
			none,
		}},
	} {
		t.Run(tc.example, func(t *testing.T) {
			inst, fn := start(t, tc.example, tc.function)
			if fn.Mode != "lines" {
				t.Fatalf("mode %q, want lines", fn.Mode)
			}
			recs := values(tc.in...)
			check(t, recs, call(t, inst, recs), tc.want)
			// The instance stays in step: a second batch is answered too.
			recs = values(tc.in[0])
			check(t, recs, call(t, inst, recs), tc.want[:1])
		})
	}
}

func TestExec(t *testing.T) {
	inst, fn := start(t, "exec", "stamp")
	if fn.Mode != "exec" {
		t.Fatalf("mode %q, want exec", fn.Mode)
	}
	recs := values("hello", "skip", "", "busy", "wörld")
	recs[0].Key = []byte("k1")
	recs[0].Source = &culvertv1.Position{Connector: "nats", Subject: "orders.created"}
	recs[3].Headers = []*culvertv1.Header{{Name: "x-busy", Value: []byte("yes")}}
	check(t, recs, call(t, inst, recs), []want{
		out("hello [subject=orders.created key=k1 id=in:a]"),
		none,
		{fail: true},
		{fail: true, retryable: true},
		out("wörld [subject= key= id=in:e]"),
	})
}

// TestExecJQ runs jq in exec mode: a value spanning several lines is one
// record, and a value that is not JSON (or not an order) fails permanently.
func TestExecJQ(t *testing.T) {
	inst, fn := start(t, "jq-exec", "summarise")
	if fn.Mode != "exec" {
		t.Fatalf("mode %q, want exec", fn.Mode)
	}
	recs := values(
		"{\n  \"id\": \"o1\",\n  \"items\": [{\"qty\": 2}, {\"qty\": 3}]\n}\n",
		`{"id":"o2","items":[]}`,
		"not json",
		`[1,2]`,
		"",
	)
	check(t, recs, call(t, inst, recs), []want{
		out(`{"id":"o1","lines":2,"qty":5}`),
		out(`{"id":"o2","lines":0,"qty":0}`),
		{fail: true},
		{fail: true},
		none,
	})
}

// TestPipelines runs each example's pipeline file end to end with the
// culvert binary, in its default sandbox (built with seccomp, as make
// does; sandboxes need root): lines on stdin, values on stdout.
func TestPipelines(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "culvert")
	build := exec.Command("go", "build", "-tags", "seccomp", "-o", bin, "../../cmd/culvert")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building culvert: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		example string
		in      []string
		want    []string
	}{
		{"jq", []string{`{"sku":"a","qty":2,"price":1.5}`, "junk", `{"sku":"b","qty":1,"price":4}`},
			[]string{`{"sku":"a","qty":2,"price":1.5,"total":3}`, `{"sku":"b","qty":1,"price":4,"total":4}`}},
		{"awk", []string{"INFO started", "DEBUG noise", `ERROR disk "d" full`},
			[]string{`{"level":"info","msg":"started"}`, `{"level":"error","msg":"disk \"d\" full"}`}},
		{"script", []string{"ann@example.com", "junk", "bo@host.io"},
			[]string{"a***@example.com", "b***@host.io"}},
		{"jq-exec", []string{`{"id":"a","items":[{"qty":1}]}`, `{"id":"b","items":[{"qty":2},{"qty":4}]}`},
			[]string{`{"id":"a","lines":1,"qty":1}`, `{"id":"b","lines":2,"qty":6}`}},
		{"exec", []string{"hello", "skip", "world"},
			[]string{"hello [subject= key= id=stdin:1]", "world [subject= key= id=stdin:3]"}},
	} {
		t.Run(tc.example, func(t *testing.T) {
			cmd := exec.Command(bin, "run", filepath.Join(tc.example, "pipeline.yaml"))
			cmd.Stdin = strings.NewReader(strings.Join(tc.in, "\n") + "\n")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.Output(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("culvert run did not finish; stderr:\n%s", stderr.String())
			}
			if err != nil {
				t.Fatalf("culvert run: %v; stderr:\n%s", err, stderr.String())
			}
			got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			sort.Strings(got) // exec mode runs records concurrently
			want := append([]string(nil), tc.want...)
			sort.Strings(want)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("stdout:\n%s\nwant (in any order):\n%s\nstderr:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), stderr.String())
			}
		})
	}
}
