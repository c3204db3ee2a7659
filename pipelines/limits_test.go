package pipelines

import (
	"fmt"
	"strings"
	"testing"
)

// TestAliasExpansionBounded checks that aliases cannot make a small file
// decode to an unbounded number of values.
func TestAliasExpansionBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nname: p\ninputs: {in: {stdin: }}\noutputs: {o: {stdout: }}\n")
	b.WriteString("functions: {f: {command: f, args: &args [")
	for i := range 5000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("a")
	}
	b.WriteString("]}}\nroutes:\n  - &r {name: r, outputs: [o], chain: [f]}\n")
	for range 5000 {
		b.WriteString("  - {<<: *r, match: {subjects: *args}}\n")
	}
	_, err := Parse("bomb.yaml", []byte(b.String()), nil)
	if err == nil || !strings.Contains(err.Error(), "the file expands to more than 200000 values through aliases") {
		t.Fatalf("got %.300v", err)
	}
	if errs := err.(Errors); len(errs) > maxErrors+1 {
		t.Errorf("%d errors", len(errs))
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nname: p\ninputs: {in: {stdin: }}\noutputs: {o: {stdout: }}\nroutes: [{name: r, outputs: [o]}]\n")
	for i := range 300 {
		fmt.Fprintf(&b, "unknown%d: x\n", i)
	}
	_, err := Parse("many.yaml", []byte(b.String()), nil)
	errs, _ := err.(Errors)
	if len(errs) != maxErrors+1 {
		t.Fatalf("got %d errors", len(errs))
	}
	if got, want := errs[maxErrors-1].Msg, `unknown field "unknown99"; expected one of version, name, broker, inputs, functions, routes, unmatched, outputs, delivery, sandbox`; got != want {
		t.Errorf("last shown error = %q, want %q", got, want)
	}
	if got, want := errs[maxErrors].Error(), "many.yaml:105:1: too many errors: 200 more not shown"; got != want {
		t.Errorf("last error = %q, want %q", got, want)
	}
}
