package pipetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/router"
	"github.com/culvert-dev/culvert/sandbox"
)

// Options configure a test run.
type Options struct {
	// Runtime starts the functions that run unconfined (as for `culvert
	// run`). Required.
	Runtime sandbox.Runtime
	// Confine, if set, gives the confinement hook for a loaded pipeline,
	// as `culvert run` builds it (runner.Sandboxing.Confine), so that
	// functions run sandboxed as in production.
	Confine func(p *pipelines.Pipeline) func(fn *pipelines.Function) (engine.Confinement, error)
	// MockCommand is the command line (absolute path first) of a process
	// that serves mocks with ServeMock, e.g. culvert's hidden
	// "mock-function" subcommand. Required only by cases with mocks.
	MockCommand []string
	// Update rewrites golden files with what the pipeline produced.
	Update bool
	// Run, if set, selects the cases whose names it matches.
	Run *regexp.Regexp
	// Timeout bounds one case; default 60s.
	Timeout time.Duration
	// Verbose prints the pipeline's log for passing cases too.
	Verbose bool
	// Out receives the report; default os.Stdout.
	Out io.Writer
	// LogLevel of the pipeline's log kept per case; default info.
	LogLevel slog.Level
}

// Summary counts the cases of one file.
type Summary struct {
	Passed, Failed, Skipped int
	Updated                 []string // golden files rewritten
}

// Load reads and decodes a test file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("test file: %w", err)
	}
	return Parse(path, data)
}

// Checker is the router's own validation of CEL and templates, so tests
// load pipelines exactly as `culvert run` does.
func Checker() pipelines.Checker {
	return pipelines.Checker{
		CEL: router.CheckCEL,
		Template: func(s string) error {
			_, err := router.ParseTemplate(s)
			return err
		},
		SubjectPattern: router.CheckSubjectPattern,
	}
}

// RunFile runs every selected case of f and writes the report. The error
// is for problems that stop the whole file (the pipeline does not load);
// failed cases are counted in the Summary.
func RunFile(ctx context.Context, f *File, o Options) (Summary, error) {
	var sum Summary
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if _, err := pipelines.LoadWith(f.Pipeline, nil, Checker()); err != nil {
		return sum, err
	}
	types, err := loadProtos(ctx, filepath.Dir(f.Path), f.Protos)
	if err != nil {
		return sum, fmt.Errorf("%s: protos: %w", f.Path, err)
	}
	for _, c := range f.Cases {
		if o.Run != nil && !o.Run.MatchString(c.Name) {
			sum.Skipped++
			continue
		}
		if ctx.Err() != nil {
			return sum, ctx.Err()
		}
		fmt.Fprintf(o.Out, "=== RUN   %s\n", c.Name)
		start := time.Now()
		res := runCase(ctx, f, c, types, o)
		el := time.Since(start).Seconds()
		sum.Updated = append(sum.Updated, res.updated...)
		if len(res.problems) == 0 {
			sum.Passed++
			fmt.Fprintf(o.Out, "--- PASS: %s (%.2fs)\n", c.Name, el)
			if o.Verbose && res.log != "" {
				fmt.Fprint(o.Out, indent(res.log, "    log: "))
			}
			continue
		}
		sum.Failed++
		fmt.Fprintf(o.Out, "--- FAIL: %s (%.2fs)\n", c.Name, el)
		for _, p := range res.problems {
			fmt.Fprint(o.Out, indent(p, "    "))
		}
		if res.log != "" {
			fmt.Fprintln(o.Out, "    pipeline log:")
			fmt.Fprint(o.Out, indent(res.log, "        "))
		}
	}
	for _, u := range sum.Updated {
		fmt.Fprintf(o.Out, "updated %s\n", u)
	}
	return sum, nil
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}

type caseResult struct {
	problems []string
	log      string
	updated  []string
}

// Outcome is what one run of a pipeline produced.
type Outcome struct {
	// Outputs holds each output's records, ordered by the input record
	// they derive from, then by arrival.
	Outputs map[string][]memory.Published
	// Origins holds, parallel to Outputs, the index in the input records
	// of the record each output derives from (-1: unknown, e.g. a function
	// gave it an id of its own).
	Origins map[string][]int
	// GivenBack are the input records that failed without a dead-letter
	// output.
	GivenBack []*culvertv1.Record
	Stats     engine.Stats
}

// RunPipeline runs p once over recs arriving at input, with every output
// captured in memory. Other inputs get no records. ro carries how
// functions run (Runtime, and confinement as for `culvert run`); its
// pipeline, connectors and hooks are set here. It returns when every
// record is settled (or ctx is done).
func RunPipeline(ctx context.Context, p *pipelines.Pipeline, input string, recs []*culvertv1.Record, ro runner.Options) (*Outcome, error) {
	log := ro.Logger
	if log == nil {
		log = slog.Default()
	}
	in := p.Inputs[input]
	if in == nil {
		return nil, fmt.Errorf("pipeline %s has no input %q (inputs: %s)", p.File, input, strings.Join(names(p.Inputs), ", "))
	}
	kind := connectorKind(in)
	order := map[string]int{}
	for i, r := range recs {
		if r.Source == nil {
			r.Source = &culvertv1.Position{}
		}
		if r.Source.Connector == "" {
			r.Source.Connector = kind
		}
		if r.Source.Offset == 0 && r.Source.Sequence == "" {
			r.Source.Offset = uint64(i + 1)
		}
		if r.Id == "" {
			r.Id = fmt.Sprintf("%s:%d", input, i+1)
		}
		if _, dup := order[r.Id]; !dup {
			order[r.Id] = i
		}
	}
	sources := map[string]connectors.Source{}
	var main *memory.Source
	for name := range p.Inputs {
		next := memory.Slice(nil)
		if name == input {
			next = memory.Slice(recs)
		}
		src, err := memory.NewSource(memory.SourceConfig{Name: name, Next: next, MaxInFlight: p.Delivery.MaxInFlight}, log)
		if err != nil {
			return nil, err
		}
		if name == input {
			main = src
		}
		sources[name] = src
	}
	sinks := map[string]connectors.Sink{}
	mem := map[string]*memory.Sink{}
	for name := range p.Outputs {
		s := memory.NewSink(memory.SinkConfig{Name: name})
		sinks[name], mem[name] = s, s
	}
	var eng *engine.Engine
	ro.Pipeline, ro.Logger = p, log
	ro.Stdin, ro.Stdout = strings.NewReader(""), io.Discard
	ro.Sources, ro.Sinks = sources, sinks
	ro.Engine = func(e *engine.Engine) { eng = e }
	err := runner.Run(ctx, ro)
	out := &Outcome{Outputs: map[string][]memory.Published{}, Origins: map[string][]int{}, GivenBack: main.GivenBack()}
	if eng != nil {
		out.Stats = eng.Stats()
	}
	for name, s := range mem {
		out.Outputs[name], out.Origins[name] = sortByInput(s.Records(), order)
	}
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("stopped before every record was settled: %w", ctx.Err())
	}
	return out, err
}

func names[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func connectorKind(in *pipelines.Input) string {
	switch {
	case in.NATS != nil:
		return "nats"
	case in.JetStream != nil:
		return "jetstream"
	case in.Kafka != nil:
		return "kafka"
	case in.Kinesis != nil:
		return "kinesis"
	case in.File != nil:
		return "file"
	case in.Stdin != nil:
		return "stdin"
	}
	return memory.Connector
}

// sortByInput orders records by the input they derive from: an output's id
// is "<input id>/<function>.<n>" unless a function set its own, and a
// dead-lettered record names its input in culvert-error-source-record.
func sortByInput(ps []memory.Published, order map[string]int) ([]memory.Published, []int) {
	idx := func(p memory.Published) int {
		if v := headerValues(p.Record, "culvert-error-source-record"); len(v) > 0 {
			if i, ok := order[v[0]]; ok {
				return i
			}
		}
		id := p.Record.Id
		if i, ok := order[id]; ok {
			return i
		}
		for j := 0; j < len(id); j++ {
			if id[j] == '/' {
				if i, ok := order[id[:j]]; ok {
					return i
				}
			}
		}
		return len(order)
	}
	sort.SliceStable(ps, func(a, b int) bool { return idx(ps[a]) < idx(ps[b]) })
	origins := make([]int, len(ps))
	for i, p := range ps {
		if origins[i] = idx(p); origins[i] == len(order) {
			origins[i] = -1
		}
	}
	return ps, origins
}

func runCase(ctx context.Context, f *File, c *Case, types *protoTypes, o Options) (res caseResult) {
	fail := func(format string, args ...any) caseResult {
		res.problems = append(res.problems, fmt.Sprintf(format, args...))
		return res
	}
	// A fresh pipeline per case: mocks change its functions.
	p, err := pipelines.LoadWith(f.Pipeline, nil, Checker())
	if err != nil {
		return fail("%v", err)
	}
	input := c.Input
	if input == "" {
		if len(p.Inputs) != 1 {
			return fail("%s: the pipeline has %d inputs (%s): say which one with input", c.Pos, len(p.Inputs), strings.Join(names(p.Inputs), ", "))
		}
		input = names(p.Inputs)[0]
	}
	if p.Inputs[input] == nil {
		return fail("%s: input %q is not declared in %s (inputs: %s)", c.Pos, input, p.File, strings.Join(names(p.Inputs), ", "))
	}
	for out, e := range c.Expect {
		if p.Outputs[out] == nil {
			return fail("%s: expect: output %q is not declared in %s (outputs: %s)", e.Pos, out, p.File, strings.Join(names(p.Outputs), ", "))
		}
	}
	for _, out := range c.Ignore {
		if p.Outputs[out] == nil {
			return fail("%s: ignore: output %q is not declared in %s", c.Pos, out, p.File)
		}
	}
	if err := applyMocks(p, c, types, o.MockCommand); err != nil {
		return fail("%v", err)
	}
	var recs []*culvertv1.Record
	for _, spec := range c.Records {
		r, err := build(spec, types)
		if err != nil {
			return fail("%v", err)
		}
		recs = append(recs, r)
	}
	if c.Tap != "" {
		path := c.Tap
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(f.Path), path)
		}
		tr, err := tap.ReadFile(path, "")
		if err != nil {
			return fail("%s: tap: %v", c.Pos, err)
		}
		recs = append(recs, tr...)
	}
	for i, r := range recs {
		if r.Id == "" {
			r.Id = fmt.Sprintf("%s:%d", c.Name, i+1)
		}
	}

	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf}, &slog.HandlerOptions{Level: o.LogLevel}))
	cctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ro := runner.Options{Runtime: o.Runtime, Logger: log}
	if o.Confine != nil {
		ro.Confine = o.Confine(p)
	}
	outcome, err := RunPipeline(cctx, p, input, recs, ro)
	defer func() { res.log = logBuf.String() }()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fail("%s: the case did not finish within %s", c.Pos, o.Timeout)
		}
		return fail("%s: running %s: %v", c.Pos, p.File, err)
	}
	res.problems = append(res.problems, compare(f, c, outcome, types, o.Update, &res.updated)...)
	return res
}

// syncWriter serialises writes to a buffer shared by goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// compare checks the outcome against the case's expectations.
func compare(f *File, c *Case, out *Outcome, types *protoTypes, update bool, updated *[]string) []string {
	var problems []string
	for _, name := range names(out.Outputs) {
		got := out.Outputs[name]
		e, ok := c.Expect[name]
		if !ok {
			if contains(c.Ignore, name) || len(got) == 0 {
				continue
			}
			var b strings.Builder
			fmt.Fprintf(&b, "%s: output %q got %s, none expected (list it under expect, or under ignore):\n", c.Pos, name, plural(len(got), "record"))
			for i, p := range got {
				fmt.Fprintf(&b, "    + %d: %s\n", i+1, describeRecord(p.Subject, p.Record))
			}
			problems = append(problems, b.String())
			continue
		}
		problems = append(problems, checkOutput(f, name, e, got, types, update, updated)...)
	}
	if len(out.GivenBack) != c.GivenBack {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %s given back (failed without a dead-letter output), want %d", c.Pos, plural(len(out.GivenBack), "input record"), c.GivenBack)
		for _, r := range out.GivenBack {
			fmt.Fprintf(&b, "\n    %s: %s", r.Id, describeRecord("", r))
		}
		problems = append(problems, b.String())
	}
	return problems
}

func checkOutput(f *File, name string, e *Expect, got []memory.Published, types *protoTypes, update bool, updated *[]string) []string {
	var problems []string
	if e.Golden != "" {
		path := e.Golden
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(f.Path), path)
		}
		text, err := GoldenText(got)
		if err != nil {
			return []string{fmt.Sprintf("%s: output %q: %v", e.Pos, name, err)}
		}
		if update {
			old, _ := os.ReadFile(path)
			if string(old) != text {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					return []string{fmt.Sprintf("%s: output %q: %v", e.Pos, name, err)}
				}
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					return []string{fmt.Sprintf("%s: output %q: %v", e.Pos, name, err)}
				}
				*updated = append(*updated, path)
			}
		} else {
			want, err := os.ReadFile(path)
			if err != nil {
				return []string{fmt.Sprintf("%s: output %q: golden file: %v (run with --update to create it)", e.Pos, name, err)}
			}
			if string(want) != text {
				diff := strings.TrimSuffix(indent(LineDiff(string(want), text), "    "), "\n")
				problems = append(problems, fmt.Sprintf("%s: output %q differs from golden file %s (-want +got; --update rewrites it):\n%s", e.Pos, name, e.Golden, diff))
			}
		}
	}
	want := len(e.Records)
	if e.Count != nil {
		want = *e.Count
	} else if e.Golden != "" {
		want = len(got)
	}
	if len(got) != want {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: output %q got %s, want %d", e.Pos, name, plural(len(got), "record"), want)
		for i, p := range got {
			fmt.Fprintf(&b, "\n    %d: %s", i+1, describeRecord(p.Subject, p.Record))
		}
		problems = append(problems, b.String())
	}
	for i, m := range e.Records {
		if i >= len(got) {
			break
		}
		ps := m.check(got[i].Subject, got[i].Record, types)
		if len(ps) == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s: output %q record %d (id %s):", m.Pos, name, i+1, got[i].Record.Id)
		for _, p := range ps {
			fmt.Fprintf(&b, "\n    %s: %s", p.field, p.msg)
		}
		fmt.Fprintf(&b, "\n    got: %s", describeRecord(got[i].Subject, got[i].Record))
		problems = append(problems, b.String())
	}
	return problems
}

// GoldenText renders records as golden-file lines (RenderRecord with
// ids), one per record.
func GoldenText(ps []memory.Published) (string, error) {
	var b strings.Builder
	for _, p := range ps {
		line, err := RenderRecord(p, true)
		if err != nil {
			return "", err
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// RenderRecord renders a published record as one compact JSON object,
// readable in a review: {"subject", "id", "key", "headers", "content_type",
// "event_time", "value"}, the key and value as text when they are UTF-8
// and as key_base64 / value_base64 otherwise. What changes from run to run
// (the culvert-error-time header) is left out, and the id too unless
// withID.
func RenderRecord(p memory.Published, withID bool) (string, error) {
	type header struct {
		Name        string `json:"name"`
		Value       string `json:"value,omitempty"`
		ValueBase64 []byte `json:"value_base64,omitempty"`
	}
	type line struct {
		Subject     string   `json:"subject,omitempty"`
		ID          string   `json:"id,omitempty"`
		Key         string   `json:"key,omitempty"`
		KeyBase64   []byte   `json:"key_base64,omitempty"`
		Headers     []header `json:"headers,omitempty"`
		ContentType string   `json:"content_type,omitempty"`
		EventTime   string   `json:"event_time,omitempty"`
		Value       *string  `json:"value,omitempty"`
		ValueBase64 []byte   `json:"value_base64,omitempty"`
	}
	r := p.Record
	l := line{Subject: p.Subject, ContentType: r.ContentType}
	if withID {
		l.ID = r.Id
	}
	if utf8.Valid(r.Key) {
		l.Key = string(r.Key)
	} else {
		l.KeyBase64 = r.Key
	}
	for _, h := range r.Headers {
		if h.Name == "culvert-error-time" {
			continue
		}
		if utf8.Valid(h.Value) {
			l.Headers = append(l.Headers, header{Name: h.Name, Value: string(h.Value)})
		} else {
			l.Headers = append(l.Headers, header{Name: h.Name, ValueBase64: h.Value})
		}
	}
	if r.EventTime != nil {
		l.EventTime = r.EventTime.AsTime().UTC().Format(time.RFC3339Nano)
	}
	if utf8.Valid(r.Value) {
		v := string(r.Value)
		l.Value = &v
	} else {
		l.ValueBase64 = r.Value
	}
	var c bytes.Buffer
	enc := json.NewEncoder(&c)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(l); err != nil {
		return "", err
	}
	return strings.TrimSuffix(c.String(), "\n"), nil
}

// plural says "1 record", "2 records".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
