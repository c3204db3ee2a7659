package router

import (
	"strings"
	"testing"
)

func TestMatchSubject(t *testing.T) {
	tests := []struct {
		pattern, subject string
		want             bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"a.b.c", "a.b.c", true},
		{"a.b.c", "a.b.d", false},
		{"a.b", "a.bc", false},
		{"a.bc", "a.b", false},
		{"*", "a", true},
		{"*", "a.b", false},
		{"*", "", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"*.b", "a.b", true},
		{"*.b", "a.c", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"*.*", "a.b", true},
		{"*.*", "a", false},
		{">", "a", true},
		{">", "a.b.c", true},
		{">", "", false},
		{"a.>", "a", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "b.c", false},
		{"a.*.>", "a.b", false},
		{"a.*.>", "a.b.c", true},
		{"*.>", "a.b", true},
		// Subjects are not validated: wildcards match empty tokens.
		{"a.*", "a.", true},
		{"a.>", "a..b", true},
		{"a.b", "a..b", false},
		// Invalid patterns match nothing, not even themselves.
		{"", "", false},
		{"", "a", false},
		{"a..b", "a..b", false},
		{".a", ".a", false},
		{"a.", "a.", false},
		{"a.>.b", "a.x.b", false},
		{"a*", "a*", false},
		{"a.b>", "a.b>", false},
		{"a b", "a b", false},
		{">.a", "x.a", false},
		{"a.*", "a", false},
	}
	for _, tt := range tests {
		if got := MatchSubject(tt.pattern, tt.subject); got != tt.want {
			t.Errorf("MatchSubject(%q, %q) = %v, want %v", tt.pattern, tt.subject, got, tt.want)
		}
		p, err := compileSubjectPattern(tt.pattern)
		if err != nil {
			if tt.want {
				t.Errorf("compile %q: %v", tt.pattern, err)
			}
			continue
		}
		if got := p.match(tt.subject); got != tt.want {
			t.Errorf("compiled %q match %q = %v, want %v", tt.pattern, tt.subject, got, tt.want)
		}
	}
}

func TestCheckSubjectPattern(t *testing.T) {
	tests := []struct {
		pattern string
		err     string // substring; "" for valid
	}{
		{"a", ""},
		{"a.b.c", ""},
		{"*", ""},
		{">", ""},
		{"a.*.c", ""},
		{"a.>", ""},
		{"*.*.>", ""},
		{"orders-v1.EU_west.1", ""},
		{"", "empty"},
		{".", "empty token"},
		{"a.", "empty token"},
		{".a", "empty token"},
		{"a..b", "empty token"},
		{"a.>.b", "'>' must be the last token"},
		{">.>", "'>' must be the last token"},
		{"a*", "must be a whole token"},
		{"a.*b", "must be a whole token"},
		{"a.b>", "must be a whole token"},
		{"a b", "whitespace"},
		{"a.\tb", "whitespace"},
	}
	for _, tt := range tests {
		err := CheckSubjectPattern(tt.pattern)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("CheckSubjectPattern(%q) = %v, want nil", tt.pattern, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("CheckSubjectPattern(%q) = %v, want error containing %q", tt.pattern, err, tt.err)
		}
	}
	if err := CheckSubjectPattern("a.>.b"); err == nil || !strings.Contains(err.Error(), `"a.>.b"`) {
		t.Errorf("error does not name the pattern: %v", err)
	}
}

func TestMatchSubjectAllocs(t *testing.T) {
	p, err := compileSubjectPattern("orders.*.>")
	if err != nil {
		t.Fatal(err)
	}
	n := testing.AllocsPerRun(100, func() {
		if !MatchSubject("orders.*.>", "orders.eu.created.v1") || !p.match("orders.eu.created.v1") {
			t.Fatal("no match")
		}
	})
	if n != 0 {
		t.Errorf("allocs = %v, want 0", n)
	}
}
