package pipetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/pipelines"
)

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"empty", "", []string{"t.test.yaml:1:1: the file is empty"}},
		{"syntax", "version: 1\ncases: [\n", []string{"t.test.yaml:2:1: invalid YAML"}},
		{"not a mapping", "- 1\n", []string{"t.test.yaml:1:1: expected a mapping"}},
		{"missing", "protos: []\n", []string{`t.test.yaml:1:1: missing required field "version"`, `missing required field "cases"`}},
		{"version", "version: 2\ncases: []\n", []string{"t.test.yaml:1:10: version: must be 1"}},
		{"unknown top field", "version: 1\ncase: []\n", []string{`t.test.yaml:2:1: unknown field "case"; did you mean cases?`}},
		{"case fields", `version: 1
cases:
  - name: "bad name!"
    expect: {}
`, []string{
			`t.test.yaml:3:11: cases[0].name: invalid case name "bad name!"`,
			"t.test.yaml:3:5: cases[0]: a case needs input records",
		}},
		{"duplicate case", `version: 1
cases:
  - {name: a, records: [{value: x}], expect: {o: [{value: x}]}}
  - {name: a, records: [{value: x}], expect: {o: [{value: x}]}}
`, []string{`t.test.yaml:4:5: cases[1].name: duplicate case name "a"; first used at line 3`}},
		{"record fields", `version: 1
cases:
  - name: a
    records:
      - {value: x, json: {a: 1}}
      - {headers: {"bad name": v}}
      - {key: [1]}
    expect: {o: {count: 1}}
`, []string{
			"t.test.yaml:5:9: cases[0].records[0]: give only one of value, json and proto",
			`t.test.yaml:6:20: cases[0].records[1].headers.bad name: invalid header name "bad name"`,
			"t.test.yaml:7:15: cases[0].records[2].key: expected a string, got a list",
		}},
		{"matchers", `version: 1
cases:
  - name: a
    records: [{value: x}]
    expect:
      o:
        - {regex: "(", error: {attempts: 0}}
        - {proto: {message: x}}
      p: {golden: g, records: []}
      q: {}
`, []string{
			"t.test.yaml:7:19: cases[0].expect.o[0].regex: invalid regular expression",
			"t.test.yaml:7:42: cases[0].expect.o[0].error.attempts: must be at least 1, got 0",
			`t.test.yaml:8:19: cases[0].expect.o[1].proto: missing required field "fields"`,
			"t.test.yaml:9:11: cases[0].expect.p.golden: give either golden or records, not both",
			"t.test.yaml:10:10: cases[0].expect.q: give count, records or golden",
		}},
		{"mocks", `version: 1
cases:
  - name: a
    records: [{value: x}]
    mocks:
      f:
        - {emit: [{value: y, to: out}], fail: boom}
        - {retryable: true, drop: true}
        - {fail: ""}
        - {when: {proto: {message: m, fields: {}}}, passthrough: true}
    expect: {o: {count: 0}}
`, []string{
			"t.test.yaml:7:11: cases[0].mocks.f[0]: a mock rule takes exactly one of emit, passthrough, drop and fail",
			"t.test.yaml:8:12: cases[0].mocks.f[1].retryable: only with fail",
			"t.test.yaml:9:18: cases[0].mocks.f[2].fail: must not be empty",
			"t.test.yaml:10:18: cases[0].mocks.f[3].when.proto: proto matchers are not available in mocks",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.test.yaml", []byte(tc.src))
			var errs pipelines.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %v, want pipelines.Errors", err)
			}
			got := errs.Error()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	f, err := Parse("dir/p.test.yaml", []byte(`version: 1
protos: [a.proto]
cases:
  - name: full
    input: in
    records:
      - {id: r1, key: k, value: v, headers: [{name: h, value: "1"}, {name: h, value: "2"}], subject: s.a, partition: "3"}
      - {json: {a: [1, true, null, "x"]}, content_type: application/vnd.x+json}
    tap: t.tap
    mocks:
      geo:
        - {when: {json: {country: FR}}, emit: [{json: {region: eu}, to: eu-out}]}
        - {when: {regex: "^x"}, fail: nope, retryable: true}
        - {passthrough: true}
    expect:
      out: [{value: v, key: k, subject: s.a, headers: {h: "1"}, content_type: text/plain}]
      dlq: {count: 1, records: [{error: {class: function, function: geo, route: r, message: "no.*", attempts: 3}}]}
      gold: {golden: testdata/g.ndjson}
    ignore: [audit]
    given_back: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Pipeline != "dir/p.yaml" || len(f.Protos) != 1 || len(f.Cases) != 1 {
		t.Fatalf("%+v", f)
	}
	c := f.Cases[0]
	if c.Input != "in" || len(c.Records) != 2 || c.Tap != "t.tap" || len(c.Mocks["geo"].Rules) != 3 || c.GivenBack != 2 || c.Ignore[0] != "audit" {
		t.Errorf("case %+v", c)
	}
	if h := c.Records[0].Headers; len(h) != 2 || h[1].Value != "2" {
		t.Errorf("headers %v", h)
	}
	if r := c.Mocks["geo"].Rules[1]; r.Fail != "nope" || !r.Retryable {
		t.Errorf("rule %+v", r)
	}
	if e := c.Expect["dlq"]; *e.Count != 1 || e.Records[0].Error.Attempts != 3 {
		t.Errorf("dlq %+v", e)
	}
	if c.Expect["gold"].Golden != "testdata/g.ndjson" {
		t.Errorf("golden %+v", c.Expect["gold"])
	}
	if TestFileFor("x/pipeline.yaml") != "x/pipeline.test.yaml" {
		t.Error(TestFileFor("x/pipeline.yaml"))
	}
}

// FuzzParse: the decoder never panics, and every error it reports carries
// a position in the file.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"version: 1\ncases:\n  - name: a\n    records: [{value: x}]\n    expect: {o: [{json: {a: 1}}]}\n",
		"version: 1\ncases: [{name: a, tap: t, mocks: {f: [{fail: x}]}, expect: {o: {count: 1}}}]\n",
		"a: &x [*x]\n",
		"version: 1\ncases: &c [{name: a, records: *c, expect: {}}]\n",
		"{",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		_, err := Parse("f.test.yaml", []byte(src))
		if err == nil {
			return
		}
		var errs pipelines.Errors
		if !errors.As(err, &errs) {
			t.Fatalf("error is not pipelines.Errors: %v", err)
		}
		for _, e := range errs {
			if e.Pos.File != "f.test.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 {
				t.Fatalf("error without a position: %#v", e)
			}
		}
	})
}
