package pipetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/culvert-dev/culvert/pipelines"
)

// TestFileFor is the test file of a pipeline file: pipeline.yaml ->
// pipeline.test.yaml.
func TestFileFor(pipeline string) string {
	ext := filepath.Ext(pipeline)
	return strings.TrimSuffix(pipeline, ext) + ".test" + ext
}

// maxNodes bounds how many YAML nodes one test file may expand to through
// aliases.
const maxNodes = 100_000

// Parse decodes a test file strictly: every problem is reported, with its
// file:line:col and field path, as pipelines.Errors.
func Parse(path string, data []byte) (*File, error) {
	d := &decoder{file: path}
	root, err := d.parse(data)
	if err != nil {
		return nil, err
	}
	f := &File{Path: path}
	d.file_(root, f)
	if len(d.errs) > 0 {
		sort.SliceStable(d.errs, func(i, j int) bool {
			a, b := d.errs[i].Pos, d.errs[j].Pos
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Column < b.Column
		})
		if len(d.errs) > 100 {
			d.errs = d.errs[:100]
		}
		return nil, d.errs
	}
	if f.Pipeline == "" {
		f.Pipeline = pipelineFor(path)
	} else if !filepath.IsAbs(f.Pipeline) {
		f.Pipeline = filepath.Join(filepath.Dir(path), f.Pipeline)
	}
	return f, nil
}

// pipelineFor is the inverse of TestFileFor.
func pipelineFor(test string) string {
	ext := filepath.Ext(test)
	return strings.TrimSuffix(strings.TrimSuffix(test, ext), ".test") + ext
}

type decoder struct {
	file  string
	errs  pipelines.Errors
	nodes int
}

func (d *decoder) at(n *yaml.Node) pipelines.Pos {
	return pipelines.Pos{File: d.file, Line: max(n.Line, 1), Column: max(n.Column, 1)}
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &pipelines.Error{Pos: d.at(n), Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) parse(data []byte) (root *yaml.Node, err error) {
	fail := func(line int, msg string) error {
		return pipelines.Errors{{Pos: pipelines.Pos{File: d.file, Line: max(line, 1), Column: 1}, Msg: msg}}
	}
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, fail(1, fmt.Sprintf("invalid YAML: %v", r))
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fail(1, "the file is empty; a test file needs version and cases")
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 1
		if m := regexp.MustCompile(`^line (\d+): `).FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = msg[len(m[0]):]
		}
		return nil, fail(line, "invalid YAML: "+msg)
	}
	if len(doc.Content) == 0 {
		return nil, fail(1, "the file is empty; a test file needs version and cases")
	}
	return doc.Content[0], nil
}

// resolve follows aliases, bounding the expansion.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	d.nodes++
	if d.nodes > maxNodes {
		return nil
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.ShortTag() == "!!null" {
		return "null"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return strconv.Quote(v)
}

// fields returns the entries of a mapping by key, reporting a node that is
// not a mapping, unknown keys (with the closest known one) and duplicates.
func (d *decoder) fields(n *yaml.Node, path string, known ...string) (map[string]*yaml.Node, map[string]*yaml.Node) {
	vals, keys := map[string]*yaml.Node{}, map[string]*yaml.Node{}
	if n = d.resolve(n); n == nil {
		return vals, keys
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return vals, keys
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "expected a name as key, got %s", describe(k))
			continue
		}
		if known != nil && !slices.Contains(known, k.Value) {
			msg := fmt.Sprintf("unknown field %q", k.Value)
			if s := suggest(k.Value, known); s != "" {
				msg += "; did you mean " + s + "?"
			} else {
				msg += "; expected one of " + strings.Join(known, ", ")
			}
			d.errorf(k, path, "%s", msg)
			continue
		}
		if first, dup := keys[k.Value]; dup {
			d.errorf(k, path, "duplicate key %q; first defined at line %d", k.Value, first.Line)
			continue
		}
		keys[k.Value], vals[k.Value] = k, v
	}
	return vals, keys
}

// order returns the keys of a mapping in file order.
func order(keys map[string]*yaml.Node) []string {
	out := make([]string, 0, len(keys))
	for k := range keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := keys[out[i]], keys[out[j]]
		return a.Line < b.Line || a.Line == b.Line && a.Column < b.Column
	})
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func (d *decoder) str(n *yaml.Node, path string) string {
	if n = d.resolve(n); n == nil {
		return ""
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		d.errorf(n, path, "expected a string, got %s", describe(n))
		return ""
	}
	return n.Value
}

func (d *decoder) strp(n *yaml.Node, path string) *string {
	s := d.str(n, path)
	return &s
}

func (d *decoder) integer(n *yaml.Node, path string, min int) int {
	if n = d.resolve(n); n == nil {
		return 0
	}
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || err != nil {
		d.errorf(n, path, "expected an integer, got %s", describe(n))
		return 0
	}
	if v < min {
		d.errorf(n, path, "must be at least %d, got %d", min, v)
	}
	return v
}

func (d *decoder) boolean(n *yaml.Node, path string) bool {
	if n = d.resolve(n); n == nil {
		return false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		d.errorf(n, path, "expected true or false, got %s", describe(n))
		return false
	}
	return n.Value == "true"
}

func (d *decoder) list(n *yaml.Node, path string) []*yaml.Node {
	if n = d.resolve(n); n == nil {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list, got %s", describe(n))
		return nil
	}
	return n.Content
}

func (d *decoder) strings(n *yaml.Node, path string) []string {
	var out []string
	for i, it := range d.list(n, path) {
		out = append(out, d.str(it, index(path, i)))
	}
	return out
}

// any decodes a YAML value into JSON-compatible Go values.
func (d *decoder) any(n *yaml.Node, path string) any {
	if n = d.resolve(n); n == nil {
		d.errorf(&yaml.Node{}, path, "the value expands to too many nodes through aliases")
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		vals, keys := d.fields(n, path)
		m := make(map[string]any, len(vals))
		for _, k := range order(keys) {
			m[k] = d.any(vals[k], join(path, k))
		}
		return m
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, it := range n.Content {
			out = append(out, d.any(it, index(path, i)))
		}
		return out
	}
	var v any
	if err := n.Decode(&v); err != nil {
		d.errorf(n, path, "%v", err)
		return nil
	}
	switch x := v.(type) {
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case float64, string, bool, nil:
		return x
	}
	return n.Value // timestamps and other tags: as written
}

func (d *decoder) required(n *yaml.Node, keys map[string]*yaml.Node, path string, names ...string) {
	for _, name := range names {
		if keys[name] == nil {
			d.errorf(n, path, "missing required field %q", name)
		}
	}
}

func (d *decoder) file_(n *yaml.Node, f *File) {
	vals, keys := d.fields(n, "", "version", "pipeline", "protos", "cases")
	d.required(n, keys, "", "version", "cases")
	if v := vals["version"]; v != nil && d.integer(v, "version", 1) != 1 {
		d.errorf(v, "version", "must be 1")
	}
	if v := vals["pipeline"]; v != nil {
		f.Pipeline = d.str(v, "pipeline")
	}
	if v := vals["protos"]; v != nil {
		f.Protos = d.strings(v, "protos")
	}
	names := map[string]int{}
	for i, cn := range d.list(vals["cases"], "cases") {
		c := d.testCase(cn, index("cases", i))
		if c.Name != "" {
			if line, dup := names[c.Name]; dup {
				d.errorf(cn, index("cases", i)+".name", "duplicate case name %q; first used at line %d", c.Name, line)
			}
			names[c.Name] = c.Pos.Line
		}
		f.Cases = append(f.Cases, c)
	}
	if vals["cases"] != nil && len(f.Cases) == 0 && len(d.errs) == 0 {
		d.errorf(vals["cases"], "cases", "must not be empty")
	}
}

var caseName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func (d *decoder) testCase(n *yaml.Node, path string) *Case {
	c := &Case{Pos: d.at(n), Mocks: map[string]*Mock{}, Expect: map[string]*Expect{}}
	vals, keys := d.fields(n, path, "name", "input", "records", "tap", "mocks", "expect", "ignore", "given_back")
	d.required(n, keys, path, "name", "expect")
	if v := vals["name"]; v != nil {
		c.Name = d.str(v, join(path, "name"))
		if c.Name != "" && !caseName.MatchString(c.Name) {
			d.errorf(v, join(path, "name"), "invalid case name %q: use letters, digits, '_', '.' and '-' (it is used with --run)", c.Name)
		}
	}
	if v := vals["input"]; v != nil {
		c.Input = d.str(v, join(path, "input"))
	}
	for i, rn := range d.list(vals["records"], join(path, "records")) {
		c.Records = append(c.Records, d.record(rn, index(join(path, "records"), i), false))
	}
	if v := vals["tap"]; v != nil {
		c.Tap = d.str(v, join(path, "tap"))
	}
	if keys["records"] == nil && keys["tap"] == nil {
		d.errorf(n, path, "a case needs input records: records, tap, or both")
	}
	if v := vals["mocks"]; v != nil {
		mv, mk := d.fields(v, join(path, "mocks"))
		for _, fn := range order(mk) {
			c.Mocks[fn] = d.mock(mv[fn], join(join(path, "mocks"), fn))
		}
	}
	if v := vals["expect"]; v != nil {
		ev, ek := d.fields(v, join(path, "expect"))
		for _, out := range order(ek) {
			c.Expect[out] = d.expect(ev[out], join(join(path, "expect"), out))
		}
	}
	if v := vals["ignore"]; v != nil {
		c.Ignore = d.strings(v, join(path, "ignore"))
	}
	if v := vals["given_back"]; v != nil {
		c.GivenBack = d.integer(v, join(path, "given_back"), 0)
	}
	return c
}

var recordFields = []string{"id", "key", "value", "json", "proto", "headers", "content_type", "subject", "partition"}

func (d *decoder) record(n *yaml.Node, path string, output bool) *RecordSpec {
	r := &RecordSpec{Pos: d.at(n)}
	known := recordFields
	if output {
		known = append(slices.Clip(known), "to")
	}
	vals, keys := d.fields(n, path, known...)
	if v := vals["id"]; v != nil {
		r.ID = d.str(v, join(path, "id"))
	}
	if v := vals["key"]; v != nil {
		r.Key = d.strp(v, join(path, "key"))
	}
	bodies := 0
	if v := vals["value"]; v != nil {
		r.Value = d.strp(v, join(path, "value"))
		bodies++
	}
	if v := vals["json"]; v != nil {
		r.JSON = d.any(v, join(path, "json"))
		bodies++
	}
	if v := vals["proto"]; v != nil {
		r.Proto = d.proto(v, join(path, "proto"))
		bodies++
	}
	if bodies > 1 {
		d.errorf(n, path, "give only one of value, json and proto")
	}
	if v := vals["headers"]; v != nil {
		r.Headers = d.headers(v, join(path, "headers"))
	}
	if v := vals["content_type"]; v != nil {
		r.ContentType = d.str(v, join(path, "content_type"))
	}
	if v := vals["subject"]; v != nil {
		r.Subject = d.str(v, join(path, "subject"))
	}
	if v := vals["partition"]; v != nil {
		r.Partition = d.str(v, join(path, "partition"))
	}
	if v := vals["to"]; v != nil {
		r.To = d.str(v, join(path, "to"))
	}
	_ = keys
	return r
}

// headers takes a mapping (name: value, in file order) or a list of
// {name, value} (repeated names).
func (d *decoder) headers(n *yaml.Node, path string) []Header {
	r := d.resolve(n)
	if r == nil {
		return nil
	}
	var out []Header
	if r.Kind == yaml.SequenceNode {
		for i, it := range r.Content {
			p := index(path, i)
			hv, hk := d.fields(it, p, "name", "value")
			d.required(it, hk, p, "name", "value")
			out = append(out, Header{Name: d.headerName(hv["name"], hk["name"], p+".name"), Value: d.str(hv["value"], p+".value")})
		}
		return out
	}
	vals, keys := d.fields(r, path)
	for _, k := range order(keys) {
		out = append(out, Header{Name: d.headerName(keys[k], keys[k], join(path, k)), Value: d.str(vals[k], join(path, k))})
	}
	return out
}

func (d *decoder) headerName(n, at *yaml.Node, path string) string {
	if n == nil {
		return ""
	}
	name := d.str(n, path)
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r == ':' || r <= ' ' || r == 0x7f }) {
		d.errorf(at, path, "invalid header name %q: it must be non-empty, without ':', spaces or control characters", name)
	}
	return name
}

func (d *decoder) proto(n *yaml.Node, path string) *ProtoSpec {
	vals, keys := d.fields(n, path, "message", "fields")
	d.required(n, keys, path, "message", "fields")
	p := &ProtoSpec{}
	if v := vals["message"]; v != nil {
		p.Message = d.str(v, join(path, "message"))
	}
	if v := vals["fields"]; v != nil {
		p.Fields = d.any(v, join(path, "fields"))
		if _, ok := p.Fields.(map[string]any); !ok {
			d.errorf(v, join(path, "fields"), "expected a mapping of field names to values")
		}
	}
	return p
}

func (d *decoder) matcher(n *yaml.Node, path string) *Matcher {
	m := &Matcher{Pos: d.at(n)}
	vals, _ := d.fields(n, path, "value", "json", "regex", "proto", "key", "headers", "subject", "content_type", "error")
	if v := vals["value"]; v != nil {
		m.Value = d.strp(v, join(path, "value"))
	}
	if v := vals["json"]; v != nil {
		m.JSON = d.any(v, join(path, "json"))
	}
	if v := vals["regex"]; v != nil {
		m.Regex = d.str(v, join(path, "regex"))
		if _, err := regexp.Compile(m.Regex); err != nil {
			d.errorf(v, join(path, "regex"), "invalid regular expression: %v", err)
		}
	}
	if v := vals["proto"]; v != nil {
		m.Proto = d.proto(v, join(path, "proto"))
	}
	if v := vals["key"]; v != nil {
		m.Key = d.strp(v, join(path, "key"))
	}
	if v := vals["headers"]; v != nil {
		m.Headers = d.headers(v, join(path, "headers"))
	}
	if v := vals["subject"]; v != nil {
		m.Subject = d.strp(v, join(path, "subject"))
	}
	if v := vals["content_type"]; v != nil {
		m.ContentType = d.strp(v, join(path, "content_type"))
	}
	if v := vals["error"]; v != nil {
		p := join(path, "error")
		ev, _ := d.fields(v, p, "class", "function", "route", "message", "attempts")
		e := &ErrorMatch{}
		if x := ev["class"]; x != nil {
			e.Class = d.str(x, p+".class")
		}
		if x := ev["function"]; x != nil {
			e.Function = d.str(x, p+".function")
		}
		if x := ev["route"]; x != nil {
			e.Route = d.str(x, p+".route")
		}
		if x := ev["message"]; x != nil {
			e.Message = d.str(x, p+".message")
			if _, err := regexp.Compile(e.Message); err != nil {
				d.errorf(x, p+".message", "invalid regular expression: %v", err)
			}
		}
		if x := ev["attempts"]; x != nil {
			e.Attempts = d.integer(x, p+".attempts", 1)
		}
		m.Error = e
	}
	return m
}

// expect takes a list of matchers, or a mapping with count, records and
// golden.
func (d *decoder) expect(n *yaml.Node, path string) *Expect {
	e := &Expect{Pos: d.at(n)}
	r := d.resolve(n)
	if r == nil {
		return e
	}
	if r.Kind == yaml.SequenceNode {
		for i, it := range r.Content {
			e.Records = append(e.Records, d.matcher(it, index(path, i)))
		}
		return e
	}
	vals, keys := d.fields(r, path, "count", "records", "golden")
	if len(keys) == 0 && r.Kind == yaml.MappingNode {
		d.errorf(r, path, "give count, records or golden (or a list of records)")
	}
	if v := vals["count"]; v != nil {
		c := d.integer(v, join(path, "count"), 0)
		e.Count = &c
	}
	for i, it := range d.list(vals["records"], join(path, "records")) {
		e.Records = append(e.Records, d.matcher(it, index(join(path, "records"), i)))
	}
	if v := vals["golden"]; v != nil {
		e.Golden = d.str(v, join(path, "golden"))
		if keys["records"] != nil {
			d.errorf(keys["golden"], join(path, "golden"), "give either golden or records, not both")
		}
	}
	return e
}

func (d *decoder) mock(n *yaml.Node, path string) *Mock {
	m := &Mock{Pos: d.at(n)}
	for i, rn := range d.list(n, path) {
		p := index(path, i)
		vals, keys := d.fields(rn, p, "when", "emit", "passthrough", "drop", "fail", "retryable")
		rule := &MockRule{}
		actions := 0
		if v := vals["when"]; v != nil {
			rule.When = d.matcher(v, p+".when")
			if rule.When.Proto != nil {
				d.errorf(v, p+".when.proto", "proto matchers are not available in mocks; match on json, value, regex, key or headers")
			}
		}
		if v := vals["emit"]; v != nil {
			actions++
			for j, on := range d.list(v, p+".emit") {
				rule.Emit = append(rule.Emit, d.record(on, index(p+".emit", j), true))
			}
		}
		if v := vals["passthrough"]; v != nil {
			actions++
			rule.Passthrough = d.boolean(v, p+".passthrough")
		}
		if v := vals["drop"]; v != nil {
			actions++
			d.boolean(v, p+".drop")
		}
		if v := vals["fail"]; v != nil {
			actions++
			rule.Fail = d.str(v, p+".fail")
			if rule.Fail == "" {
				d.errorf(v, p+".fail", "must not be empty: it is the failure message")
			}
		}
		if v := vals["retryable"]; v != nil {
			rule.Retryable = d.boolean(v, p+".retryable")
			if keys["fail"] == nil {
				d.errorf(keys["retryable"], p+".retryable", "only with fail")
			}
		}
		if actions != 1 {
			d.errorf(rn, p, "a mock rule takes exactly one of emit, passthrough, drop and fail")
		}
		m.Rules = append(m.Rules, rule)
	}
	return m
}

// suggest returns the candidate closest to s, if close enough.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if dd := distance(s, c); dd < bestD {
			best, bestD = c, dd
		}
	}
	return best
}

func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
