package router

import (
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func benchRecord() *culvertv1.Record {
	r := rec("orders.eu.created", "Content-Encoding", "identity", "X-Type", "order", "x-region", "eu", "traceparent", "00-abc-def-01")
	r.Key = []byte("cust-7")
	r.ContentType = "application/json"
	r.Value = []byte(`{"id":"o-1001","total":250.5,"currency":"EUR","customer":{"id":"c-7","tier":"gold"},"items":[{"sku":"A-1","qty":2},{"sku":"B-2","qty":1}]}`)
	return r
}

func BenchmarkMatch(b *testing.B) {
	cases := []struct {
		name  string
		specs []Spec
	}{
		{"subjects", []Spec{
			{Name: "a", Subjects: []string{"users.>"}},
			{Name: "b", Subjects: []string{"orders.*.created", "orders.*.updated"}},
			{Name: "c", Subjects: []string{"orders.>"}},
			{Name: "d", Subjects: []string{"orders.eu.created"}},
		}},
		{"headers", []Spec{
			{Name: "a", Headers: map[string]string{"x-type": "user"}},
			{Name: "b", Subjects: []string{"orders.>"}, Headers: map[string]string{"X-Type": "order", "X-Region": "eu"}},
		}},
		{"cel-headers", []Spec{
			{Name: "a", CEL: `headers["x-type"] == "order" && source.subject.startsWith("orders.")`},
		}},
		{"cel-json", []Spec{
			{Name: "a", CEL: `json.total > 100.0`},
		}},
		{"cel-json-3-routes", []Spec{
			{Name: "a", CEL: `json.total > 100.0`},
			{Name: "b", CEL: `json.customer.tier == "gold"`},
			{Name: "c", CEL: `json.items.exists(i, i.sku == "B-2")`},
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			r := mustNew(b, c.specs...)
			record := benchRecord()
			dst := make([]int, 0, 8)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				dst, err = r.Match(record, dst[:0])
				if err != nil || len(dst) == 0 {
					b.Fatal(dst, err)
				}
			}
		})
	}
}

func BenchmarkMatchSubject(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if !MatchSubject("orders.*.>", "orders.eu.created.v1") {
			b.Fatal("no match")
		}
	}
}

func BenchmarkTemplate(b *testing.B) {
	for _, c := range []struct{ name, tmpl string }{
		{"constant", "out.orders"},
		{"field", "out.{{ .Source.Subject }}"},
		{"fast-funcs", `out.{{ header "x-region" }}.{{ token 2 .Source.Subject }}`},
		{"text-template", `out.{{ .Source.Subject | replace "." "_" | upper }}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			t, err := ParseTemplate(c.tmpl)
			if err != nil {
				b.Fatal(err)
			}
			record := benchRecord()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := t.Execute(record); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
