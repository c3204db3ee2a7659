package engine

// Engine tests on real connectors (connectors/file: a reader source, writer
// sinks) and real function processes (sandbox/process): shell tools and
// testdata/testfn, a Go function built in TestMain. The file source ends at
// end of input, so Run drains and returns by itself.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/internal/testbin"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/file"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// bins holds testdata/testfn, built by TestMain.
var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, "github.com/culvert-dev/culvert/internal/engine/testdata/testfn")
}

func testfnPath() string { return filepath.Join(bins, "testfn") }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// settlement is how a source record was settled.
type settlement struct {
	acks, naks int
	at         time.Time
	delay      time.Duration // of the last nak
}

// settleLog records the settlements of a watched source, by record id.
type settleLog struct {
	mu sync.Mutex
	m  map[string]*settlement
}

func (l *settleLog) note(id string, ack bool, delay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.m[id]
	if s == nil {
		s = &settlement{}
		l.m[id] = s
	}
	if ack {
		s.acks++
	} else {
		s.naks++
		s.delay = delay
	}
	s.at = time.Now()
}

func (l *settleLog) get(id string) settlement {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.m[id]; s != nil {
		return *s
	}
	return settlement{}
}

// watchedSource is a real file source whose settlers are observed.
type watchedSource struct {
	connectors.Source
	log *settleLog
}

func (s watchedSource) Run(ctx context.Context, h connectors.Handler) error {
	return s.Source.Run(ctx, watchHandler{h, s.log})
}

type watchHandler struct {
	connectors.Handler
	log *settleLog
}

func (h watchHandler) Handle(ctx context.Context, m connectors.Message) error {
	m.Settler = watchSettler{m.Settler, m.Record.GetId(), h.log}
	return h.Handler.Handle(ctx, m)
}

type watchSettler struct {
	connectors.Settler
	id  string
	log *settleLog
}

func (s watchSettler) Ack(ctx context.Context) error {
	s.log.note(s.id, true, 0)
	return s.Settler.Ack(ctx)
}

func (s watchSettler) Nak(ctx context.Context, d time.Duration) error {
	s.log.note(s.id, false, d)
	return s.Settler.Nak(ctx, d)
}

// rec builds an input record; headers are name, value pairs.
func rec(id, value string, headers ...string) *culvertv1.Record {
	r := &culvertv1.Record{Id: id, Value: []byte(value)}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: headers[i], Value: []byte(headers[i+1])})
	}
	return r
}

// ndjson is recs in the file connector's ndjson format.
func ndjson(t *testing.T, recs []*culvertv1.Record) string {
	t.Helper()
	var b strings.Builder
	for _, r := range recs {
		j, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// parseNDJSON reads what an ndjson sink wrote.
func parseNDJSON(t *testing.T, s string) []*culvertv1.Record {
	t.Helper()
	var out []*culvertv1.Record
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		r := new(culvertv1.Record)
		if err := protojson.Unmarshal(sc.Bytes(), r); err != nil {
			t.Fatalf("sink output %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func values(recs []*culvertv1.Record) []string {
	var v []string
	for _, r := range recs {
		v = append(v, strings.TrimRight(string(r.Value), "\n"))
	}
	slices.Sort(v)
	return v
}

func header(r *culvertv1.Record, name string) string {
	for _, h := range r.Headers {
		if h.Name == name {
			return string(h.Value)
		}
	}
	return ""
}

// parse loads a pipeline with the router's checks; $TESTFN is replaced.
func parse(t *testing.T, yaml string) *pipelines.Pipeline {
	t.Helper()
	yaml = strings.ReplaceAll(yaml, "$TESTFN", testfnPath())
	chk := pipelines.Checker{CEL: router.CheckCEL, SubjectPattern: router.CheckSubjectPattern,
		Template: func(s string) error { _, err := router.ParseTemplate(s); return err }}
	p, err := pipelines.ParseWith(filepath.Join(t.TempDir(), "pipeline.yaml"), []byte(yaml), func(string) (string, bool) { return "", false }, chk)
	if err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	return p
}

// setup is what an engine test runs on.
type setup struct {
	yaml  string
	input []*culvertv1.Record
	// subjects of outputs (file sinks have none; the engine renders them
	// all the same).
	subjects map[string]string
	// wrap, if set, wraps the sink of an output.
	wrap func(name string, s connectors.Sink, settled *settleLog) connectors.Sink
}

// result of one engine run.
type result struct {
	stats   Stats
	outputs map[string][]*culvertv1.Record
	settled *settleLog
	logs    string
}

// runEngine runs the pipeline on the input until the input ends and the
// engine drains.
func runEngine(t *testing.T, s setup) result {
	t.Helper()
	p := parse(t, s.yaml)
	logs := &testbin.Buffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	settled := &settleLog{m: map[string]*settlement{}}
	sources := map[string]connectors.Source{}
	for name := range p.Inputs {
		src, err := file.NewSource(file.SourceConfig{Reader: strings.NewReader(ndjson(t, s.input)), Format: file.FormatNDJSON}, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		sources[name] = watchedSource{src, settled}
	}
	bufs := map[string]*testbin.Buffer{}
	sinks := map[string]connectors.Sink{}
	for name := range p.Outputs {
		bufs[name] = &testbin.Buffer{}
		sink, err := file.NewSink(file.SinkConfig{Writer: bufs[name], Format: file.FormatNDJSON}, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sink.Close() })
		sinks[name] = sink
		if s.wrap != nil {
			sinks[name] = s.wrap(name, sink, settled)
		}
	}
	e, err := New(Options{
		Pipeline: p, Sources: sources, Sinks: sinks, Subjects: s.subjects,
		Runtime: process.Runtime{}, Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		t.Fatalf("Run did not end with its input within 30s; stats %+v\n%s", e.Stats(), logs.String())
	}
	r := result{stats: e.Stats(), outputs: map[string][]*culvertv1.Record{}, settled: settled, logs: logs.String()}
	for name, b := range bufs {
		r.outputs[name] = parseNDJSON(t, b.String())
	}
	return r
}

// checkSettled: every input was settled once, by ack (or nak when nak).
func checkSettled(t *testing.T, r result, input []*culvertv1.Record, nak bool) {
	t.Helper()
	for _, in := range input {
		s := r.settled.get(in.Id)
		want := settlement{acks: 1}
		if nak {
			want = settlement{naks: 1}
		}
		if s.acks != want.acks || s.naks != want.naks {
			t.Errorf("record %s: %d acks, %d naks; want %d, %d", in.Id, s.acks, s.naks, want.acks, want.naks)
		}
	}
}

const outputsYAML = `
outputs:
  a: { file: { path: a.ndjson } }
  b: { file: { path: b.ndjson } }
  c: { file: { path: c.ndjson } }
  rest: { file: { path: rest.ndjson } }
  dlq: { file: { path: dlq.ndjson } }
`

// TestUnmatched: records no route matches go to the unmatched output, or
// are dropped and acked.
func TestUnmatched(t *testing.T) {
	input := []*culvertv1.Record{rec("1", "one", "route", "yes"), rec("2", "two"), rec("3", "three", "route", "no"), rec("4", "four")}
	tests := []struct {
		unmatched string
		a, rest   []string
		dropped   int64
	}{
		{"{ action: output, output: rest }", []string{"ONE"}, []string{"four", "three", "two"}, 0},
		{"{ action: drop }", []string{"ONE"}, nil, 3},
		{"{}", []string{"ONE"}, nil, 3}, // drop is the default
	}
	for _, tc := range tests {
		t.Run(tc.unmatched, func(t *testing.T) {
			t.Parallel()
			r := runEngine(t, setup{input: input, yaml: `
version: 1
name: unmatched
inputs: { in: { stdin: {} } }
functions:
  upper: { command: tr, args: [a-z, A-Z], mode: exec }
routes:
  - name: main
    match: { headers: { route: "yes" } }
    chain: [upper]
    outputs: [a]
unmatched: ` + tc.unmatched + outputsYAML})
			if got := values(r.outputs["a"]); !slices.Equal(got, tc.a) {
				t.Errorf("route output %q, want %q", got, tc.a)
			}
			if got := values(r.outputs["rest"]); !slices.Equal(got, tc.rest) {
				t.Errorf("unmatched output %q, want %q", got, tc.rest)
			}
			for _, o := range r.outputs["rest"] {
				if strings.Contains(o.Id, "/") || len(o.Headers) != len(input[o.Id[0]-'1'].Headers) {
					t.Errorf("unmatched record %s was changed: %v", o.Id, o)
				}
			}
			if r.stats.Dropped != tc.dropped || r.stats.Acked != 4 || r.stats.Naked != 0 || r.stats.In != 4 {
				t.Errorf("stats %+v, want %d dropped and 4 acked", r.stats, tc.dropped)
			}
			checkSettled(t, r, input, false)
		})
	}
}

// TestEmptyChain: a route without functions publishes the records as they
// came, to every output of the route.
func TestEmptyChain(t *testing.T) {
	input := []*culvertv1.Record{
		rec("x1", "plain"),
		{Id: "x2", Key: []byte("k"), Value: []byte("{\"a\":1}"), ContentType: "application/json", Headers: []*culvertv1.Header{{Name: "h", Value: []byte("v")}}},
	}
	r := runEngine(t, setup{input: input, yaml: `
version: 1
name: empty
inputs: { in: { stdin: {} } }
routes:
  - name: main
    outputs: [a, b]
` + outputsYAML})
	for _, name := range []string{"a", "b"} {
		got := r.outputs[name]
		if len(got) != len(input) {
			t.Fatalf("output %s has %d records, want %d", name, len(got), len(input))
		}
		for i, in := range input {
			o := got[i]
			if o.Id != in.Id || string(o.Value) != string(in.Value) || string(o.Key) != string(in.Key) ||
				o.ContentType != in.ContentType || len(o.Headers) != len(in.Headers) || o.GetSource().GetConnector() != "stdin" {
				t.Errorf("output %s record %d = %v, want %v unchanged", name, i, o, in)
			}
		}
	}
	if r.stats.Published != 4 || r.stats.Acked != 2 {
		t.Errorf("stats %+v", r.stats)
	}
	checkSettled(t, r, input, false)
}

// slowSink delays the confirmation of every record, and checks that the
// source record is not settled before it confirms.
type slowSink struct {
	connectors.Sink
	delay   time.Duration
	settled *settleLog

	mu        sync.Mutex
	confirmed map[string]time.Time // by source record id
	early     []string
}

func (s *slowSink) Publish(ctx context.Context, subject string, r *culvertv1.Record, done func(error)) {
	src, _, _ := strings.Cut(r.Id, "/")
	s.Sink.Publish(ctx, subject, r, func(err error) {
		go func() {
			time.Sleep(s.delay)
			s.mu.Lock()
			if st := s.settled.get(src); st.acks+st.naks > 0 {
				s.early = append(s.early, src)
			}
			s.confirmed[src] = time.Now()
			s.mu.Unlock()
			done(err)
		}()
	})
}

// TestFanOutSettlement: a record matched by two routes is acked once, and
// only after both routes' outputs confirmed it, however slow one of them.
func TestFanOutSettlement(t *testing.T) {
	var input []*culvertv1.Record
	for i := range 10 {
		input = append(input, rec(fmt.Sprint("r", i), fmt.Sprint("value ", i)))
	}
	tests := []struct {
		name string
		slow string // the output whose sink is slow
	}{
		{"first route slow", "a"},
		{"second route slow", "b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var slow *slowSink
			r := runEngine(t, setup{input: input, yaml: `
version: 1
name: fanout
inputs: { in: { stdin: {} } }
functions:
  cat: { command: cat, mode: lines, batch: { size: 4, max_wait: 1ms } }
  mark: { command: sed, args: [-u, "s/^/marked /"], mode: lines, batch: { size: 4, max_wait: 1ms } }
routes:
  - { name: one, chain: [cat], outputs: [a] }
  - { name: two, chain: [mark], outputs: [b] }
` + outputsYAML, wrap: func(name string, s connectors.Sink, settled *settleLog) connectors.Sink {
				if name != tc.slow {
					return s
				}
				slow = &slowSink{Sink: s, delay: 300 * time.Millisecond, settled: settled, confirmed: map[string]time.Time{}}
				return slow
			}})
			if got := values(r.outputs["a"]); len(got) != 10 || got[0] != "value 0" {
				t.Errorf("output a: %q", got)
			}
			if got := values(r.outputs["b"]); len(got) != 10 || got[0] != "marked value 0" {
				t.Errorf("output b: %q", got)
			}
			checkSettled(t, r, input, false)
			slow.mu.Lock()
			defer slow.mu.Unlock()
			if len(slow.early) > 0 {
				t.Errorf("records settled before the slow output confirmed them: %v", slow.early)
			}
			for _, in := range input {
				c, ok := slow.confirmed[in.Id]
				if s := r.settled.get(in.Id); !ok || s.at.Before(c) {
					t.Errorf("record %s: acked at %v, slow output confirmed at %v", in.Id, s.at, c)
				}
			}
			if r.stats.Acked != 10 || r.stats.Published != 20 {
				t.Errorf("stats %+v", r.stats)
			}
		})
	}
}

// TestNamedOutputs: an output a function aims at a named output (culvert.To)
// goes to that output only; one aimed at an output the route does not have
// dead-letters the record.
func TestNamedOutputs(t *testing.T) {
	input := []*culvertv1.Record{rec("1", "to:a"), rec("2", "to:b"), rec("3", "plain"), rec("4", "to:nowhere"), rec("5", "to:c")}
	r := runEngine(t, setup{input: input, yaml: `
version: 1
name: named
inputs: { in: { stdin: {} } }
functions:
  to: { command: $TESTFN, args: [to], batch: { size: 10, max_wait: 1ms } }
routes:
  - name: main
    chain: [to]
    outputs: [a, b]
    dead_letter: dlq
` + outputsYAML})
	want := map[string][]string{
		"a":   {"plain", "to:a"},
		"b":   {"plain", "to:b"},
		"c":   nil, // declared, but not an output of the route
		"dlq": {"to:c", "to:nowhere"},
	}
	for name, w := range want {
		if got := values(r.outputs[name]); !slices.Equal(got, w) {
			t.Errorf("output %s: %q, want %q", name, got, w)
		}
	}
	for _, d := range r.outputs["dlq"] {
		name := strings.TrimPrefix(string(d.Value), "to:")
		if header(d, "culvert-error-class") != "function_error" || header(d, "culvert-error-function") != "to" ||
			!strings.Contains(header(d, "culvert-error-message"), fmt.Sprintf("%q, which is not an output of route main", name)) {
			t.Errorf("dead letter %s headers %v", d.Id, d.Headers)
		}
	}
	if r.stats.DeadLettered != 2 || r.stats.Acked != 5 || r.stats.Naked != 0 {
		t.Errorf("stats %+v", r.stats)
	}
	checkSettled(t, r, input, false)
}

// TestSubjectFailure: a subject template that renders an invalid subject
// for a record dead-letters that record with class "subject"; the others
// are published.
func TestSubjectFailure(t *testing.T) {
	input := []*culvertv1.Record{rec("ok", "fine", "missing", "tenant"), rec("bad", "no header")}
	for _, chain := range []string{"[]", "[cat]"} {
		t.Run("chain "+chain, func(t *testing.T) {
			t.Parallel()
			r := runEngine(t, setup{input: input, subjects: map[string]string{"a": `{{ header "missing" }}.x`}, yaml: `
version: 1
name: subjects
inputs: { in: { stdin: {} } }
functions:
  cat: { command: cat, mode: exec }
routes:
  - name: main
    chain: ` + chain + `
    outputs: [a]
    dead_letter: dlq
` + outputsYAML})
			if got := values(r.outputs["a"]); !slices.Equal(got, []string{"fine"}) {
				t.Errorf("output a: %q", got)
			}
			dlq := r.outputs["dlq"]
			if len(dlq) != 1 || string(dlq[0].Value) != "no header" {
				t.Fatalf("dead letters %v", dlq)
			}
			if c := header(dlq[0], "culvert-error-class"); c != "subject" {
				t.Errorf("dead letter class %q, want subject; headers %v", c, dlq[0].Headers)
			}
			if src := header(dlq[0], "culvert-error-source-record"); src != "bad" {
				t.Errorf("dead letter source record %q", src)
			}
			if r.stats.DeadLettered != 1 || r.stats.Acked != 2 || r.stats.Naked != 0 {
				t.Errorf("stats %+v", r.stats)
			}
			checkSettled(t, r, input, false)
		})
	}
}

// TestFailureWithoutDeadLetter: a record that fails for good on a route
// without dead_letter is given back (Nak), never acked.
func TestFailureWithoutDeadLetter(t *testing.T) {
	input := []*culvertv1.Record{rec("1", "a"), rec("2", "b")}
	tests := []struct {
		name        string
		script      string
		maxAttempts int
		failed      int64
	}{
		{"permanent", "exit 1", 3, 2},
		{"retryable until max_attempts", "exit 75", 2, 4},
		{"subject", "", 1, 0}, // no function: the subject fails
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			chain, subjects := "[fail]", map[string]string(nil)
			if tc.script == "" {
				chain, subjects = "[]", map[string]string{"a": `{{ header "missing" }}.x`}
			}
			r := runEngine(t, setup{input: input, subjects: subjects, yaml: fmt.Sprintf(`
version: 1
name: nodlq
inputs: { in: { stdin: {} } }
functions:
  fail:
    command: sh
    args: [-c, "cat >/dev/null; %s"]
    mode: exec
    retry: { max_attempts: %d, backoff: 5ms, max_backoff: 10ms }
routes:
  - name: main
    chain: %s
    outputs: [a]
`, tc.script, tc.maxAttempts, chain) + outputsYAML})
			if len(r.outputs["a"]) != 0 {
				t.Errorf("outputs %v", r.outputs["a"])
			}
			if r.stats.Naked != 2 || r.stats.Acked != 0 || r.stats.Failed != tc.failed || r.stats.DeadLettered != 0 {
				t.Errorf("stats %+v, want 2 naked, %d failed", r.stats, tc.failed)
			}
			checkSettled(t, r, input, true)
		})
	}
}

// TestRetryThenSuccess: a retryable failure that succeeds on the second
// attempt yields exactly one output and one counted failure.
func TestRetryThenSuccess(t *testing.T) {
	marks := t.TempDir()
	input := []*culvertv1.Record{rec("1", "once")}
	r := runEngine(t, setup{input: input, yaml: fmt.Sprintf(`
version: 1
name: retry
inputs: { in: { stdin: {} } }
functions:
  flaky:
    command: sh
    # The first attempt leaves a marker and asks for a retry (EX_TEMPFAIL).
    args: [-c, 'v=$$(cat); if [ -e "$$MARKS/$$v" ]; then printf "ok %%s" "$$v"; else touch "$$MARKS/$$v"; exit 75; fi']
    env: { MARKS: %q }
    mode: exec
    retry: { max_attempts: 3, backoff: 10ms, max_backoff: 20ms }
routes:
  - name: main
    chain: [flaky]
    outputs: [a]
    dead_letter: dlq
`, marks) + outputsYAML})
	if got := values(r.outputs["a"]); !slices.Equal(got, []string{"ok once"}) {
		t.Errorf("outputs %q, want one \"ok once\"", got)
	}
	if len(r.outputs["dlq"]) != 0 {
		t.Errorf("dead letters %v", r.outputs["dlq"])
	}
	if r.stats.Failed != 1 || r.stats.Published != 1 || r.stats.Acked != 1 || r.stats.DeadLettered != 0 {
		t.Errorf("stats %+v, want 1 failed, 1 published, 1 acked", r.stats)
	}
	if !strings.Contains(r.logs, "retrying record") {
		t.Errorf("log lacks the retry:\n%s", r.logs)
	}
	checkSettled(t, r, input, false)
}
