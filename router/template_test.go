package router

import (
	"strings"
	"sync"
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func templateRec() *culvertv1.Record {
	r := rec("orders.eu.created", "X-Tenant", "acme", "x-tenant", "other", "X-Mixed", "MiXed")
	r.Key = []byte("cust-7")
	r.Value = []byte("v1")
	r.ContentType = "application/json"
	r.Source.Sequence = "4950"
	return r
}

func TestTemplateExecute(t *testing.T) {
	tests := []struct {
		tmpl string
		want string
		fast bool // expected to bypass text/template
	}{
		{"out.orders", "out.orders", false},
		{"out.{{ .Source.Subject }}", "out.orders.eu.created", true},
		{"{{.ID}}", "nats:ORDERS:42", true},
		{"k.{{ .Key }}.{{ .Value }}", "k.cust-7.v1", true},
		{"ct.{{ .ContentType }}", "ct.application/json", true},
		{"{{ .Source.Connector }}.{{ .Source.Stream }}.{{ .Source.Partition }}.{{ .Source.Offset }}.{{ .Source.Sequence }}", "jetstream.ORDERS.3.42.4950", true},
		{`t.{{ header "x-tenant" }}`, "t.acme", true},
		{`t.{{ header "X-TENANT" }}`, "t.acme", true},
		{`t.{{ token 1 .Source.Subject }}`, "t.eu", true},
		{`t.{{ token 0 .ID }}`, "t.nats:ORDERS:42", true},
		{`t.{{ header "x-mixed" | lower }}`, "t.mixed", false},
		{`t.{{ upper .Key }}`, "t.CUST-7", false},
		{`t.{{ replace "." "_" .Source.Subject }}`, "t.orders_eu_created", false},
		{`t.{{ .Source.Subject | replace "." "_" }}`, "t.orders_eu_created", false},
		{`t.{{ .Source.Subject | token 2 }}`, "t.created", false},
		{`{{ if eq .ContentType "application/json" }}json{{ else }}raw{{ end }}.{{ .Key }}`, "json.cust-7", false},
		{`{{ printf "%s-%d" .Key .Source.Offset }}`, "cust-7-42", false},
		{`{{ with $s := .Source }}{{ $s.Stream }}{{ end }}`, "ORDERS", false},
	}
	for _, tt := range tests {
		tmpl, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.tmpl, err)
			continue
		}
		if tmpl.String() != tt.tmpl || tmpl.IsConstant() != !strings.Contains(tt.tmpl, "{{") {
			t.Errorf("%q: String/IsConstant wrong", tt.tmpl)
		}
		if got := tmpl.segs != nil; got != tt.fast {
			t.Errorf("%q: fast path = %v, want %v", tt.tmpl, got, tt.fast)
		}
		got, err := tmpl.Execute(templateRec())
		if err != nil || got != tt.want {
			t.Errorf("%q: Execute = %q, %v; want %q", tt.tmpl, got, err, tt.want)
		}
		if tmpl.segs != nil {
			// The text/template path must agree with the fast path.
			st := tmpl.states.Get().(*templateState)
			slow, err := tmpl.execSlow(st, templateRec())
			if err != nil || slow != got {
				t.Errorf("%q: slow path = %q, %v; fast = %q", tt.tmpl, slow, err, got)
			}
		}
	}
}

func TestParseTemplateErrors(t *testing.T) {
	tests := []struct {
		tmpl string
		err  string
	}{
		{"", "empty subject"},
		{"a..b", "empty token"},
		{"a.b.", "empty token"},
		{"a b", "whitespace"},
		{"a.*", "wildcard"},
		{"a.>", "wildcard"},
		{"{{ .Nope }}", "can't evaluate field Nope"},
		{"{{ .Nope }}", "fields: .ID"},
		{"{{ .Source.Nope }}", "can't evaluate field Nope"},
		{"{{ nope .ID }}", `function "nope" not defined`},
		{"a.{{ .ID ", "unclosed action"},
		{`{{ replace "a" .ID }}`, "wrong number of args"},
		{`{{ token "x" .ID }}`, "token"},
		{`{{ token -1 .ID }}`, "must not be negative"},
		{`{{ token 1 .Source.Offset }}`, "token"},
		{`{{ header 1 }}`, "header"},
		{"a. {{ .ID }}", "whitespace"},
		{"a..{{ .ID }}", "empty token"},
		{".{{ .ID }}", "starts with '.'"},
		{"{{ .ID }}.", "ends with '.'"},
		{"{{ if .ID }}a b{{ end }}", "whitespace"},
	}
	for _, tt := range tests {
		_, err := ParseTemplate(tt.tmpl)
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("ParseTemplate(%q) = %v, want error containing %q", tt.tmpl, err, tt.err)
			continue
		}
		if !strings.Contains(err.Error(), "subject template") {
			t.Errorf("ParseTemplate(%q): error does not name the template: %v", tt.tmpl, err)
		}
	}
}

func TestTemplateExecuteErrors(t *testing.T) {
	tests := []struct {
		tmpl string
		rec  func() *culvertv1.Record
		err  string
	}{
		{"a.{{ .Key }}", func() *culvertv1.Record { r := templateRec(); r.Key = nil; return r }, "empty token"},
		{"{{ .Key }}", func() *culvertv1.Record { r := templateRec(); r.Key = nil; return r }, "empty subject"},
		{"a.{{ .Value }}", func() *culvertv1.Record { r := templateRec(); r.Value = []byte("x y"); return r }, "whitespace"},
		{"a.{{ .Value }}", func() *culvertv1.Record { r := templateRec(); r.Value = []byte("*"); return r }, "wildcard"},
		{`t.{{ header "x-none" }}`, templateRec, "empty token"},
		{`t.{{ header "x-none" | lower }}`, templateRec, "empty token"},
		{`t.{{ token 5 .Source.Subject }}`, templateRec, "only 3 tokens"},
		{`t.{{ .Source.Subject | token 5 }}`, templateRec, "only 3 tokens"},
		{`t.{{ .Source.Subject }}`, func() *culvertv1.Record { return &culvertv1.Record{Id: "x"} }, "empty token"},
	}
	for _, tt := range tests {
		tmpl, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.tmpl, err)
			continue
		}
		r := tt.rec()
		got, err := tmpl.Execute(r)
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%q: Execute = %q, %v; want error containing %q", tt.tmpl, got, err, tt.err)
			continue
		}
		if !strings.Contains(err.Error(), `record "`+r.GetId()+`"`) {
			t.Errorf("%q: error does not name the record: %v", tt.tmpl, err)
		}
	}
}

func TestTemplateAllocs(t *testing.T) {
	r := templateRec()
	for tmpl, want := range map[string]float64{
		"out.orders":                           0,
		"out.{{ .Source.Subject }}":            1, // the result string
		`t.{{ header "x-tenant" }}.{{ .Key }}`: 1,
	} {
		tp, err := ParseTemplate(tmpl)
		if err != nil {
			t.Fatal(err)
		}
		n := testing.AllocsPerRun(100, func() {
			if _, err := tp.Execute(r); err != nil {
				t.Fatal(err)
			}
		})
		if n != want {
			t.Errorf("%q: allocs = %v, want %v", tmpl, n, want)
		}
	}
}

func TestTemplateConcurrent(t *testing.T) {
	tp, err := ParseTemplate(`{{ header "x-n" | upper }}.{{ .Source.Subject | replace "." "_" }}`)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				n := string(rune('a' + (g+i)%26))
				got, err := tp.Execute(rec("s.x", "x-n", n))
				if want := strings.ToUpper(n) + ".s_x"; err != nil || got != want {
					t.Errorf("got %q, %v; want %q", got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
