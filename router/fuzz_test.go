package router

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Seed corpora live in testdata/fuzz/<FuzzName>.

func FuzzCheckSubjectPattern(f *testing.F) {
	for _, s := range []string{"a", "a.b", "*", ">", "a.*.>", "a..b", ".", "a.>.b", "a*", " ", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := CheckSubjectPattern(p)
		cp, cerr := compileSubjectPattern(p)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("Check = %v, compile = %v", err, cerr)
		}
		if err != nil {
			if MatchSubject(p, p) {
				t.Fatalf("invalid pattern %q matches itself", p)
			}
			return
		}
		if !strings.ContainsAny(p, "*>") {
			// A literal subject always matches itself.
			if !MatchSubject(p, p) || !cp.match(p) {
				t.Fatalf("literal %q does not match itself", p)
			}
		}
		if !MatchSubject(">", p) && p != "" {
			t.Fatalf("'>' does not match %q", p)
		}
		// Replacing every token with '*' matches; '>' matches any prefix.
		toks := strings.Split(p, ".")
		stars := strings.Repeat("*.", len(toks))
		if !strings.ContainsAny(p, "*>") && !MatchSubject(stars[:len(stars)-1], p) {
			t.Fatalf("%q does not match %q", stars, p)
		}
	})
}

func FuzzMatchSubject(f *testing.F) {
	for _, s := range [][2]string{
		{"a.b", "a.b"}, {"a.*", "a.b"}, {"a.>", "a.b.c"}, {">", "x"}, {"*.*", "a"},
		{"a.>", "a."}, {"a..b", "a..b"}, {"*", ""}, {"a", "a.b"}, {"a.*.c", "a..c"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, subject string) {
		got := MatchSubject(pattern, subject)
		cp, err := compileSubjectPattern(pattern)
		if err != nil {
			if got {
				t.Fatalf("invalid pattern %q matched %q", pattern, subject)
			}
			return
		}
		if c := cp.match(subject); c != got {
			t.Fatalf("MatchSubject(%q, %q) = %v, compiled = %v", pattern, subject, got, c)
		}
		if !strings.ContainsAny(pattern, "*>") && got != (pattern == subject) {
			t.Fatalf("literal %q vs %q: %v", pattern, subject, got)
		}
		if got && strings.Count(subject, ".") < strings.Count(pattern, ".") {
			t.Fatalf("%q matched %q with fewer tokens", pattern, subject)
		}
	})
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"out", "out.{{ .Source.Subject }}", `{{ header "x" }}.{{ token 1 .Source.Subject }}`,
		`{{ .Key | upper }}`, "{{ .Nope }}", "{{", "a..{{.ID}}", `{{ replace "." "_" .ID }}`,
		`{{ if .Key }}k{{ else }}n{{ end }}`, `{{ token 9999999999 .ID }}`, `{{ printf "%v" .Source.Offset }}`,
	} {
		f.Add(s, "orders.eu.created", "cust-7")
	}
	f.Fuzz(func(t *testing.T, s, subject, key string) {
		tmpl, err := ParseTemplate(s)
		if err != nil {
			return
		}
		if len(tmpl.src) > 1000 || strings.Contains(s, "range") || strings.Contains(s, "template") {
			return // avoid unbounded loops and recursion
		}
		r := &culvertv1.Record{
			Id:      "fuzz:1",
			Key:     []byte(key),
			Headers: []*culvertv1.Header{{Name: "X", Value: []byte(key)}},
			Source:  &culvertv1.Position{Subject: subject, Offset: 7},
		}
		out, err := tmpl.Execute(r)
		if err == nil {
			if cerr := checkSubject(out); cerr != nil {
				t.Fatalf("Execute(%q) = %q, invalid: %v", s, out, cerr)
			}
		} else if !strings.Contains(err.Error(), `record "fuzz:1"`) {
			t.Fatalf("error does not name the record: %v", err)
		}
		if tmpl.segs != nil {
			st := tmpl.states.Get().(*templateState)
			slow, serr := tmpl.execSlow(st, r)
			if (err == nil) != (serr == nil) || slow != out {
				t.Fatalf("%q: fast = %q, %v; slow = %q, %v", s, out, err, slow, serr)
			}
		}
	})
}

// FuzzJSON checks that reading JSON in place agrees with encoding/json.
func FuzzJSON(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"b":[true,null,"x"],"c":{"d":"\u00e9"}}`, `[]`, `{}`, `[[1],[2,[3]]]`, `{"a":1,"a":2}`,
		`{"a\"b":"x\ny"}`, `"s"`, `-1.5e2`, `{"k":"\xff"}`, ` { "sp" : [ 1 , 2 ] } `, `{"":0}`,
	} {
		f.Add(s, "a")
	}
	env, err := newCELEnv()
	if err != nil {
		f.Fatal(err)
	}
	adapter := env.CELTypeAdapter()
	r := mustNew(f,
		Spec{CEL: `json != null && json.a == 1`},
		Spec{CEL: `json[key_string] == "x" || json[0] == 1`},
		Spec{CEL: `json.exists(k, k == "a") || size(json) > 2 || json == {"a": [1]}`},
		Spec{CEL: `json.b.all(x, x != null) && "x" in json.b`},
	)
	f.Fuzz(func(t *testing.T, doc, key string) {
		d := []byte(doc)
		for _, ct := range []string{"application/json", ""} {
			// Must not panic; errors are expected.
			_, _ = r.Match(&culvertv1.Record{Key: []byte(key), Value: d, ContentType: ct}, nil)
		}
		if !json.Valid(d) {
			return
		}
		var native any
		if json.Unmarshal(d, &native) != nil {
			return // e.g. numbers out of range: reported lazily instead
		}
		d = bytes.TrimSpace(d)
		lazy := jsonValue(adapter, d)
		checkJSONEqual(t, adapter, lazy, native)
		if o, ok := lazy.(*jsonObject); ok {
			_, want := native.(map[string]any)[key]
			if _, found := o.Find(types.String(key)); found != want {
				t.Fatalf("Find(%q) = %v, want %v", key, found, want)
			}
		}
	})
}

// checkJSONEqual compares a lazily read value with encoding/json's result,
// through the lazy accessors only.
func checkJSONEqual(t *testing.T, adapter types.Adapter, lazy ref.Val, native any) {
	t.Helper()
	switch n := native.(type) {
	case map[string]any:
		o, ok := lazy.(*jsonObject)
		if !ok {
			t.Fatalf("got %T, want object", lazy)
		}
		for k, v := range n {
			got, found := o.Find(types.String(k))
			if !found {
				t.Fatalf("key %q not found in %s", k, o.data)
			}
			checkJSONEqual(t, adapter, got, v)
		}
		if o.Size() != types.Int(len(n)) {
			t.Fatalf("size %v, want %d", o.Size(), len(n))
		}
	case []any:
		a, ok := lazy.(*jsonArray)
		if !ok {
			t.Fatalf("got %T, want array", lazy)
		}
		if a.Size() != types.Int(len(n)) {
			t.Fatalf("size %v, want %d in %s", a.Size(), len(n), a.data)
		}
		for i, v := range n {
			checkJSONEqual(t, adapter, a.Get(types.Int(i)), v)
		}
		i := 0
		for it := a.Iterator(); it.HasNext() == types.True; i++ {
			checkJSONEqual(t, adapter, it.Next(), n[i])
		}
	default:
		if want := adapter.NativeToValue(n); lazy.Equal(want) != types.True {
			t.Fatalf("got %v, want %v", lazy, want)
		}
	}
}
