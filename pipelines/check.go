package pipelines

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Checker holds the checks that need other packages: the router's CEL
// compiler and subject templates. A nil function skips its check. Parse and
// Load use the zero Checker; the engine passes the router's functions to
// ParseWith or LoadWith. Each function returns nil for a valid input, or an
// error whose text is shown to the user after "invalid CEL expression: " and
// the like, at the position of the value.
type Checker struct {
	// CEL checks a match.cel expression.
	CEL func(expr string) error
	// Template checks an output subject template.
	Template func(tmpl string) error
	// SubjectPattern checks a subject pattern (input subjects, match
	// subjects, stream subjects) after the built-in NATS syntax check passed.
	SubjectPattern func(pattern string) error
}

// validName reports whether s is a name: [A-Za-z0-9_-]+.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// check runs the check named by f's check tag on a non-empty value. It
// returns an error message, or "", and the byte offset in s the message is
// about, or -1.
func (d *decoder) check(f *field, s string) (string, int) {
	if f.check == "cel" && d.chk.CEL != nil {
		if err := d.chk.CEL(s); err != nil {
			msg, off := celMessage(err, s)
			return "invalid CEL expression: " + msg, off
		}
	}
	return d.checkString(f, s), -1
}

// checkString runs the checks other than CEL.
func (d *decoder) checkString(f *field, s string) string {
	switch f.check {
	case "name":
		if !validName(s) {
			return fmt.Sprintf("invalid name %q: use only letters, digits, '_' and '-'", s)
		}
	case "subject-pattern":
		if err := checkSubject(s, true); err != nil {
			return err.Error()
		}
		if d.chk.SubjectPattern != nil {
			if err := d.chk.SubjectPattern(s); err != nil {
				return "invalid subject pattern: " + unecho(oneLine(err), s)
			}
		}
	case "subject-template":
		if !strings.Contains(s, "{{") {
			if err := checkSubject(s, false); err != nil {
				return err.Error()
			}
		}
		if d.chk.Template != nil {
			if err := d.chk.Template(s); err != nil {
				return "invalid subject template: " + unecho(oneLine(err), s)
			}
		}
	case "cel":
	case "nats-name":
		if strings.ContainsFunc(s, func(r rune) bool {
			return unicode.IsSpace(r) || strings.ContainsRune(".*>/\\", r) || r < ' '
		}) {
			return fmt.Sprintf("invalid %s %q: it must not contain whitespace, '.', '*', '>', '/' or '\\'", f.name, s)
		}
	case "nats-url":
		return checkURLs(s)
	case "":
	default:
		panic("pipelines: unknown check tag " + f.check)
	}
	return ""
}

// checkSubject checks NATS subject syntax: tokens separated by '.', none
// empty, no whitespace; with wildcards, '*' is a whole token and '>' a whole
// last token.
func checkSubject(s string, wildcards bool) error {
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || r < ' ' }) {
		return fmt.Errorf("subject %q contains whitespace", s)
	}
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		switch {
		case t == "":
			return fmt.Errorf("subject %q has an empty token: no leading, trailing or double '.'", s)
		case !wildcards && (t == "*" || t == ">"):
			return fmt.Errorf("subject %q has the wildcard %s; an output subject must be literal", s, t)
		case t == ">" && i != len(tokens)-1:
			return fmt.Errorf("subject %q has '>' before its last token; '>' may only be the last token", s)
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return fmt.Errorf("subject %q has %q: a wildcard must be a whole token", s, t)
		}
	}
	return nil
}

// checkURLs checks a comma-separated list of NATS server URLs.
func checkURLs(s string) string {
	for _, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		switch {
		case raw == "":
			return fmt.Sprintf("empty URL in %q", s)
		case err != nil:
			return fmt.Sprintf("invalid NATS URL %q: %v", raw, unwrapURLError(err))
		case !contains([]string{"nats", "tls", "ws", "wss"}, u.Scheme):
			return fmt.Sprintf("invalid NATS URL %q: the scheme must be nats://, tls://, ws:// or wss://", raw)
		case u.Host == "":
			return fmt.Sprintf("invalid NATS URL %q: no host", raw)
		}
	}
	return ""
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// oneLine flattens a checker error to one line, dropping the source
// excerpts (" | a ==", " | ...^") that CEL puts under its messages.
func oneLine(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "|") {
			continue
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "rejected"
	}
	return strings.Join(parts, "; ")
}

// unecho drops from a checker message a leading echo of the value, such as
// `subject template "a.{{": `: the error already points at the value.
func unecho(msg, value string) string {
	q := strconv.Quote(value) + ": "
	if i := strings.Index(msg, q); i >= 0 && i <= 20 {
		return msg[i+len(q):]
	}
	return msg
}

// celMessage flattens a CEL error to one line. CEL errors read
// `cel "expr": cel:1:5: Syntax error: ...` (the router's) or
// "ERROR: <input>:1:5: Syntax error: ..." (cel-go's), followed by an
// excerpt. The echo and location are dropped, and when the error is on the
// first line of expr, the offset of its column is returned so that the
// error can point into the file.
func celMessage(err error, expr string) (string, int) {
	msg := unecho(oneLine(err), expr)
	m := regexp.MustCompile(`^(?:ERROR: )?(?:<input>|cel):(\d+):(\d+): `).FindStringSubmatch(msg)
	if m == nil {
		return msg, -1
	}
	msg = strings.TrimPrefix(msg, m[0])
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	first, _, _ := strings.Cut(expr, "\n")
	if line != 1 || col < 1 || col > utf8.RuneCountInString(first)+1 {
		return msg, -1
	}
	return msg, len(string([]rune(first)[:col-1]))
}

// suggest returns the candidate closest to s, or "" when none is close: the
// same when case, '_' and '-' are ignored, or within a small edit distance.
func suggest(s string, candidates []string) string {
	norm := func(x string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(x))
	}
	for _, c := range candidates {
		if norm(c) == norm(s) {
			return c
		}
	}
	best, bestDist := "", 0
	for _, c := range candidates {
		limit := max(1, min(len(c), len(s))/3)
		if dist := levenshtein(strings.ToLower(s), c); dist <= limit && (best == "" || dist < bestDist) {
			best, bestDist = c, dist
		}
	}
	return best
}

// levenshtein is the edit distance between a and b, in bytes.
func levenshtein(a, b string) int {
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
