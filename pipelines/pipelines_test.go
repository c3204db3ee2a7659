package pipelines

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"text/template"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden .err files of testdata/broken")

// testEnv is the environment the test files see.
func testEnv(name string) (string, bool) {
	v, ok := map[string]string{
		"MAX_IN_FLIGHT":   "512",
		"REGION":          "eu-west-1",
		"NOT_A_NUMBER":    "ten",
		"TIMEOUT_SECONDS": "30",
		"EMPTY":           "",
	}[name]
	return v, ok
}

// testChecker stands in for the router's checks, with the router's error
// layout: templates are Go templates, and CEL expressions fail on
// unbalanced parentheses, a trailing operator or the name "record".
func testChecker() Checker {
	return Checker{
		CEL: func(expr string) error {
			depth := 0
			for _, r := range expr {
				switch r {
				case '(':
					depth++
				case ')':
					depth--
				}
			}
			trimmed := strings.TrimSpace(expr)
			excerpt := "\n | " + expr + "\n | " + strings.Repeat(".", len(expr)) + "^"
			switch {
			case depth != 0:
				return fmt.Errorf("cel %q: cel:1:%d: Syntax error: missing ')' at '<EOF>'%s", expr, len(expr)+1, excerpt)
			case strings.HasSuffix(trimmed, "&&"), strings.HasSuffix(trimmed, "||"), strings.HasSuffix(trimmed, "=="):
				return fmt.Errorf("cel %q: cel:1:%d: Syntax error: mismatched input '<EOF>'%s", expr, len(expr)+1, excerpt)
			case strings.Contains(expr, "record."):
				return fmt.Errorf("cel %q: cel:1:%d: undeclared reference to 'record'\n | %s\nvariables: id, key, value, content_type, headers, json", expr, strings.Index(expr, "record.")+1, expr)
			}
			return nil
		},
		Template: func(s string) error {
			if _, err := template.New("subject").Option("missingkey=error").Parse(s); err != nil {
				return fmt.Errorf("subject template %q: %w", s, err)
			}
			return nil
		},
	}
}

func TestBroken(t *testing.T) {
	files, err := filepath.Glob("testdata/broken/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 25 {
		t.Fatalf("only %d broken files", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			p, err := LoadWith(file, testEnv, testChecker())
			if err == nil {
				t.Fatalf("loaded without error: %+v", p)
			}
			if p != nil {
				t.Errorf("got a pipeline with the error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			for _, e := range errs {
				if e.Pos.File != file || e.Pos.Line < 1 || e.Pos.Column < 1 {
					t.Errorf("bad position %+v in %q", e.Pos, e)
				}
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestValidFull(t *testing.T) {
	p, err := Load("testdata/valid/full.yaml", testEnv)
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("testdata/valid")
	file := "testdata/valid/full.yaml"
	at := func(line, col int) Pos { return Pos{File: file, Line: line, Column: col} }

	check := func(what string, got, want any) {
		t.Helper()
		same(t, what, got, want)
	}
	check("File", p.File, file)
	check("Version", p.Version, 1)
	check("Name", p.Name, "orders")
	check("Broker", p.Broker, Broker{URL: "nats://127.0.0.1:4222"})

	check("Inputs", p.Inputs, map[string]*Input{"orders": {
		JetStream: &JetStreamInput{
			Stream:        "ORDERS",
			Subjects:      []string{"orders.>"},
			Durable:       "culvert-orders-orders",
			DeliverPolicy: "all",
			MaxInFlight:   512,
			AckWait:       Duration(time.Minute),
			FetchBatch:    256,
		},
		Name: "orders",
		Pos:  at(10, 3),
	}})

	restart := Restart{Policy: "always", Backoff: Duration(100 * time.Millisecond), MaxBackoff: Duration(10 * time.Second)}
	retry := Retry{MaxAttempts: 3, Backoff: Duration(100 * time.Millisecond), MaxBackoff: Duration(5 * time.Second), BatchFailure: "each"}
	batch := Batch{Size: 100, MaxWait: Duration(5 * time.Millisecond)}
	check("Functions", p.Functions, map[string]*Function{
		"enrich": {
			Command:   "./functions/enrich",
			Args:      []string{"--region", "eu-west-1"},
			Env:       map[string]string{"LOG_LEVEL": "debug", "PRICE_FACTOR": "2"},
			Mode:      "framed",
			Batch:     Batch{Size: 50, MaxWait: Duration(20 * time.Millisecond)},
			Timeout:   Duration(30 * time.Second),
			Instances: 4,
			Dispatch:  "key",
			Restart:   restart,
			Retry:     Retry{MaxAttempts: 5, Backoff: Duration(200 * time.Millisecond), MaxBackoff: Duration(2 * time.Second), BatchFailure: "each"},
			Scale:     fixedScale(4),
			Name:      "enrich",
			Pos:       at(18, 3),
			Dir:       dir,
		},
		"upper": {
			Command:   "tr",
			Args:      []string{"a-z", "A-Z"},
			Mode:      "lines",
			Batch:     batch,
			Timeout:   Duration(30 * time.Second),
			Instances: 1,
			Dispatch:  "any",
			Restart:   restart,
			Retry:     retry,
			Scale:     fixedScale(1),
			Name:      "upper",
			Pos:       at(33, 3),
			Dir:       dir,
		},
		"notify": {
			Command:   "/usr/local/bin/notify",
			Mode:      "exec",
			Batch:     batch,
			Timeout:   Duration(10 * time.Second),
			Instances: 2,
			Dispatch:  "key",
			Restart:   Restart{Policy: "never", Backoff: restart.Backoff, MaxBackoff: restart.MaxBackoff},
			Retry:     retry,
			Scale:     fixedScale(2),
			Name:      "notify",
			Pos:       at(38, 3),
			Dir:       dir,
		},
	})

	check("Routes", p.Routes, []*Route{
		{
			Name: "new-orders",
			Match: Match{
				Subjects: []string{"orders.new", "orders.*.created"},
				Headers:  map[string]string{"x-tenant": "acme", "x-version": "2"},
				CEL:      `content_type == "application/json"`,
			},
			Chain:      Chain{"enrich", "upper"},
			Outputs:    []string{"enriched", "archive"},
			DeadLetter: "dlq",
			Pos:        at(47, 5),
		},
		{
			Name:    "notify",
			Match:   Match{Subjects: []string{"orders.>"}},
			Chain:   Chain{"notify"},
			Outputs: []string{"archive"},
			Pos:     at(57, 5),
		},
	})
	check("Unmatched", p.Unmatched, Unmatched{Action: "output", Output: "dlq"})
	check("Outputs", p.Outputs, map[string]*Output{
		"enriched": {
			JetStream: &JetStreamOutput{Subject: "enriched.{{ .Source.Subject }}", Stream: "ENRICHED", Subjects: []string{"enriched.>"}, Encoding: "record"},
			Name:      "enriched",
			Pos:       at(68, 3),
		},
		"archive": {
			File: &FileOutput{Path: "/var/lib/culvert/archive.ndjson", Format: "ndjson"},
			Name: "archive",
			Pos:  at(73, 3),
		},
		"dlq": {
			NATS: &NATSOutput{Subject: "orders.dead", Encoding: "value"},
			Name: "dlq",
			Pos:  at(76, 3),
		},
	})
	check("Delivery", p.Delivery, Delivery{MaxInFlight: 2048, ShutdownGrace: Duration(time.Minute), MaxInFlightBytes: 64 << 20})

	// The environment wins over defaults.
	env := func(k string) (string, bool) {
		if k == "NATS_URL" {
			return "nats://nats.internal:4222", true
		}
		return testEnv(k)
	}
	p, err = Load(file, env)
	if err != nil {
		t.Fatal(err)
	}
	check("Broker.URL from env", p.Broker.URL, "nats://nats.internal:4222")
}

// TestValidMinimal checks every default on the smallest pipeline.
func TestValidMinimal(t *testing.T) {
	file := "testdata/valid/minimal.yaml"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(file, data, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	want := &Pipeline{
		Version: 1,
		Name:    "echo",
		Inputs: map[string]*Input{"in": {
			Stdin: &StdinInput{Format: "lines"},
			Name:  "in",
			Pos:   Pos{file, 4, 3},
		}},
		Routes: []*Route{{Name: "all", Outputs: []string{"out"}, Pos: Pos{file, 7, 5}}},
		Outputs: map[string]*Output{"out": {
			Stdout: &StdoutOutput{Format: "ndjson"},
			Name:   "out",
			Pos:    Pos{file, 10, 3},
		}},
		Unmatched: Unmatched{Action: "drop"},
		Delivery:  Delivery{MaxInFlight: 1024, ShutdownGrace: Duration(30 * time.Second), MaxInFlightBytes: 64 << 20},
		File:      file,
	}
	same(t, "pipeline", p, want)
}

// same reports got and want, as JSON, when they differ.
func same(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("%s differs\ngot:\n%s\nwant:\n%s", what, g, w)
	}
}

// TestValidFiles loads every valid file, with and without the checker.
func TestValidFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/valid/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if _, err := LoadWith(file, testEnv, testChecker()); err != nil {
			t.Errorf("%s:\n%v", file, err)
		}
		if _, err := Load(file, testEnv); err != nil {
			t.Errorf("%s:\n%v", file, err)
		}
	}
}

func TestFunctionDefaults(t *testing.T) {
	p := mustParse(t, `
version: 1
name: p
inputs: {in: {stdin: {}}}
functions:
  f: {command: ./f}
routes: [{name: r, chain: f, outputs: [out]}]
outputs: {out: {stdout: {}}}
`)
	got := *p.Functions["f"]
	want := Function{
		Command:   "./f",
		Mode:      "framed",
		Batch:     Batch{Size: 100, MaxWait: Duration(5 * time.Millisecond)},
		Timeout:   Duration(30 * time.Second),
		Instances: 1,
		Dispatch:  "key",
		Restart:   Restart{Policy: "always", Backoff: Duration(100 * time.Millisecond), MaxBackoff: Duration(10 * time.Second)},
		Retry:     Retry{MaxAttempts: 3, Backoff: Duration(100 * time.Millisecond), MaxBackoff: Duration(5 * time.Second), BatchFailure: "each"},
		Scale:     fixedScale(1),
		Name:      "f",
		Pos:       Pos{"p.yaml", 6, 3},
		Dir:       got.Dir,
	}
	same(t, "function", got, want)
}

func TestConnectorDefaults(t *testing.T) {
	p := mustParse(t, `
version: 1
name: p
inputs:
  js: {jetstream: {stream: S}}
  f: {file: {path: in.ndjson}}
routes: [{name: r, outputs: [n, j, f]}]
outputs:
  n: {nats: {subject: a}}
  j: {jetstream: {subject: b}}
  f: {file: {path: out.ndjson}}
`)
	if got, want := *p.Inputs["js"].JetStream, (JetStreamInput{Stream: "S", Durable: "culvert-p-js", DeliverPolicy: "all", MaxInFlight: 1024, AckWait: Duration(30 * time.Second), FetchBatch: 256}); !reflect.DeepEqual(got, want) {
		t.Errorf("jetstream input = %+v, want %+v", got, want)
	}
	if got := p.Inputs["f"].File.Format; got != "ndjson" {
		t.Errorf("file input format = %q", got)
	}
	if got := p.Outputs["n"].NATS.Encoding; got != "record" {
		t.Errorf("nats encoding = %q", got)
	}
	if got := p.Outputs["j"].JetStream.Encoding; got != "record" {
		t.Errorf("jetstream encoding = %q", got)
	}
	if got := p.Outputs["f"].File.Format; got != "ndjson" {
		t.Errorf("file output format = %q", got)
	}
}

func mustParse(t *testing.T, src string) *Pipeline {
	t.Helper()
	p, err := ParseWith("p.yaml", []byte(src), testEnv, testChecker())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestChain(t *testing.T) {
	tests := []struct {
		yaml string
		want Chain
	}{
		{`chain: a`, Chain{"a"}},
		{`chain: a|b`, Chain{"a", "b"}},
		{`chain: " a |  b | c "`, Chain{"a", "b", "c"}},
		{`chain: [a, b]`, Chain{"a", "b"}},
		{`chain: []`, Chain{}},
		{`chain: ""`, nil},
		{`chain:`, nil},
		{``, nil},
		{`chain: ${CHAIN:-a | b}`, Chain{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.yaml, func(t *testing.T) {
			p := mustParse(t, `
version: 1
name: p
inputs: {in: {stdin: {}}}
functions: {a: {command: a}, b: {command: b}, c: {command: c}}
routes:
  - name: r
    outputs: [out]
    `+tt.yaml+`
outputs: {out: {stdout: {}}}
`)
			if got := p.Routes[0].Chain; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("chain = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestInterpolate(t *testing.T) {
	env := func(k string) (string, bool) {
		v, ok := map[string]string{"A": "alpha", "EMPTY": "", "N": "12"}[k]
		return v, ok
	}
	tests := []struct {
		in, want string
		subst    bool
		err      string
	}{
		{in: "plain", want: "plain"},
		{in: "${A}", want: "alpha", subst: true},
		{in: "x-${A}-y", want: "x-alpha-y", subst: true},
		{in: "${A}${N}", want: "alpha12", subst: true},
		{in: "${EMPTY}", want: "", subst: true},
		{in: "${EMPTY:-d}", want: "d", subst: true},
		{in: "${UNSET:-d e f}", want: "d e f", subst: true},
		{in: "${UNSET:-}", want: "", subst: true},
		{in: "${A:-d}", want: "alpha", subst: true},
		{in: "$$", want: "$"},
		{in: "$${A}", want: "${A}"},
		{in: "cost: 5$", want: "cost: 5$"},
		{in: "^a$|b", want: "^a$|b"},
		{in: "$1", want: "$1"},
		{in: "${UNSET}", err: "environment variable UNSET is not set; set it, or give a default with ${UNSET:-default}"},
		{in: "${A", err: `unterminated ${ in "${A"; close it with }, or write $$ for a literal $`},
		{in: "${}", err: "empty variable name in ${}"},
		{in: "${:-x}", err: "empty variable name in ${:-x}"},
		{in: "${A B}", err: "invalid variable name in ${A B}: use ${VAR} or ${VAR:-default}, VAR made of letters, digits and _"},
		{in: "${A:?x}", err: "invalid variable name in ${A:?x}: use ${VAR} or ${VAR:-default}, VAR made of letters, digits and _"},
		{in: "${A:-${B}}", err: "nested ${ in the default of ${A:-${B} is not supported"},
		{in: "$HOME/x", err: "$HOME is not expanded: write ${HOME} for the variable, or $$HOME for a literal $"},
	}
	for _, tt := range tests {
		got, subst, err := interpolate(tt.in, env)
		switch {
		case tt.err != "":
			if err == nil || err.Error() != tt.err {
				t.Errorf("interpolate(%q) error = %v, want %q", tt.in, err, tt.err)
			}
		case err != nil:
			t.Errorf("interpolate(%q): %v", tt.in, err)
		case got != tt.want || subst != tt.subst:
			t.Errorf("interpolate(%q) = %q, %v; want %q, %v", tt.in, got, subst, tt.want, tt.subst)
		}
	}
}

func TestCheckSubject(t *testing.T) {
	tests := []struct {
		s         string
		wildcards bool
		ok        bool
	}{
		{"orders", true, true},
		{"orders.new", true, true},
		{"orders.*", true, true},
		{"*.*.x", true, true},
		{">", true, true},
		{"orders.>", true, true},
		{"orders-v2.a_b.C9", true, true},
		{"", true, false},
		{".orders", true, false},
		{"orders.", true, false},
		{"orders..new", true, false},
		{"orders.>.new", true, false},
		{"ord*", true, false},
		{"orders.x>", true, false},
		{"orders new", true, false},
		{"orders\tnew", true, false},
		{"orders.new", false, true},
		{"orders.*", false, false},
		{"orders.>", false, false},
	}
	for _, tt := range tests {
		if err := checkSubject(tt.s, tt.wildcards); (err == nil) != tt.ok {
			t.Errorf("checkSubject(%q, %v) = %v, want ok %v", tt.s, tt.wildcards, err, tt.ok)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"size", "max_wait"}
	for in, want := range map[string]string{
		"max_wai":  "max_wait",
		"maxWait":  "max_wait",
		"max-wait": "max_wait",
		"MAX_WAIT": "max_wait",
		"sise":     "size",
		"color":    "",
		"s":        "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	errs := Errors{
		{Pos: Pos{"p.yaml", 3, 5}, Path: "routes[1].chain[0]", Msg: `unknown function "x"`},
		{Pos: Pos{"p.yaml", 1, 1}, Msg: `missing required field "version"`},
		{Pos: Pos{"", 2, 7}, Path: "name", Msg: "bad"},
	}
	want := `p.yaml:3:5: routes[1].chain[0]: unknown function "x"
p.yaml:1:1: missing required field "version"
2:7: name: bad`
	if got := errs.Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	var e *Error
	if !errors.As(error(errs), &e) || e != errs[0] {
		t.Errorf("errors.As did not find the first *Error")
	}
}

// TestParseWithoutChecker checks that Parse skips the checker's checks but
// still checks subject syntax.
func TestParseWithoutChecker(t *testing.T) {
	src := `
version: 1
name: p
inputs: {in: {nats: {subjects: [a.b]}}}
routes:
  - name: r
    match: {cel: "((("}
    outputs: [out]
outputs: {out: {nats: {subject: "x.{{ .Broken"}}}
`
	if _, err := Parse("p.yaml", []byte(src), testEnv); err != nil {
		t.Errorf("Parse: %v", err)
	}
	if _, err := ParseWith("p.yaml", []byte(src), testEnv, testChecker()); err == nil {
		t.Errorf("ParseWith: no error")
	}
	bad := strings.Replace(src, "[a.b]", "[a..b]", 1)
	if _, err := Parse("p.yaml", []byte(bad), testEnv); err == nil || !strings.Contains(err.Error(), "p.yaml:4:") {
		t.Errorf("Parse with a bad subject: %v", err)
	}
}

func TestCheckerPattern(t *testing.T) {
	chk := Checker{SubjectPattern: func(s string) error {
		if strings.HasPrefix(s, "_INBOX") {
			return errors.New("reserved subject")
		}
		return nil
	}}
	_, err := ParseWith("p.yaml", []byte(`
version: 1
name: p
inputs: {in: {nats: {subjects: [a, _INBOX.x]}}}
routes: [{name: r, outputs: [out]}]
outputs: {out: {stdout: {}}}
`), testEnv, chk)
	want := "p.yaml:4:36: inputs.in.nats.subjects[1]: invalid subject pattern: reserved subject"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml", nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func TestParseNoFileName(t *testing.T) {
	p, err := Parse("", []byte(`
version: 1
name: p
inputs: {in: {stdin: {}}}
functions: {f: {command: ./f}}
routes: [{name: r, chain: f, outputs: [out]}]
outputs: {out: {stdout: {}}}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Functions["f"].Dir != "" {
		t.Errorf("Dir = %q, want empty", p.Functions["f"].Dir)
	}
	_, err = Parse("", []byte("version: 2\n"), nil)
	if err == nil || !strings.HasPrefix(err.Error(), "1:1: ") {
		t.Errorf("error without file name: %v", err)
	}
}

func TestValidAnchors(t *testing.T) {
	p, err := LoadWith("testdata/valid/anchors.yaml", testEnv, testChecker())
	if err != nil {
		t.Fatal(err)
	}
	for name, cmd := range map[string]string{"base": "./bin/base", "left": "./bin/left", "right": "./bin/base"} {
		f := p.Functions[name]
		if f.Command != cmd || f.Timeout != Duration(2*time.Second) || f.Batch != (Batch{Size: 10, MaxWait: Duration(time.Millisecond)}) {
			t.Errorf("function %s = %+v", name, f)
		}
	}
	same(t, "right args", p.Functions["right"].Args, []string{"--price=$5"})
	same(t, "nats input", *p.Inputs["events"].NATS, NATSInput{Subjects: []string{"events.*.>", "audit"}, QueueGroup: "culvert"})
	same(t, "file input", *p.Inputs["replay"].File, FileInput{Path: "./replay.bin", Format: "delimited"})
	same(t, "chain", p.Routes[0].Chain, Chain{"left", "right"})
	same(t, "headers", p.Routes[1].Match.Headers, map[string]string{"content-type": "application/json"})
	same(t, "stdout", *p.Outputs["print"].Stdout, StdoutOutput{Format: "lines"})
}

// TestReadmeExample keeps the example of README.md valid.
func TestReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Example\n\n```yaml\n")
	if !ok {
		t.Fatal("no example in README.md")
	}
	example, _, _ := strings.Cut(rest, "```")
	p, err := ParseWith("README.md", []byte(example), testEnv, testChecker())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Routes) != 2 || p.Routes[0].Chain[1] != "upper" || p.Unmatched.Output != "dlq" {
		t.Errorf("unexpected pipeline: %+v", p)
	}
}

// TestExamples loads the pipelines under examples/, without environment
// and without the router's checks, which the router's tests cover.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Skip("no examples")
	}
	for _, file := range files {
		if strings.HasSuffix(file, ".test.yaml") {
			continue // test cases of a pipeline (culvert test), not a pipeline
		}
		if _, err := Load(file, func(string) (string, bool) { return "", false }); err != nil {
			t.Errorf("%s:\n%v", file, err)
		}
	}
}
