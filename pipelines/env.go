package pipelines

import (
	"fmt"
	"strings"
)

// interpolate expands environment variables in a scalar: ${VAR} is the
// value of VAR, which must be set (possibly empty); ${VAR:-default} is the
// value of VAR, or default when VAR is unset or empty; $$ is a literal $.
// A $ followed by a letter or '_' is an error (it looks like a forgotten
// brace); any other $ is kept as is.
//
// It returns the expanded string and whether any variable was substituted.
func interpolate(s string, lookup func(string) (string, bool)) (string, bool, error) {
	if !strings.Contains(s, "$") {
		return s, false, nil
	}
	var b strings.Builder
	subst := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", false, fmt.Errorf("unterminated ${ in %q; close it with }, or write $$ for a literal $", s)
			}
			expr := s[i+2 : i+2+end]
			val, err := expand(expr, lookup)
			if err != nil {
				return "", false, err
			}
			b.WriteString(val)
			subst = true
			i += 2 + end
		case isNameStart(next):
			j := i + 1
			for j < len(s) && isNameChar(s[j]) {
				j++
			}
			name := s[i+1 : j]
			return "", false, fmt.Errorf("$%s is not expanded: write ${%s} for the variable, or $$%s for a literal $", name, name, name)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), subst, nil
}

// expand evaluates the inside of ${...}.
func expand(expr string, lookup func(string) (string, bool)) (string, error) {
	name, def, hasDef := strings.Cut(expr, ":-")
	ref := printable("${" + expr + "}")
	if !validVarName(name) {
		if name == "" {
			return "", fmt.Errorf("empty variable name in %s", ref)
		}
		return "", fmt.Errorf("invalid variable name in %s: use ${VAR} or ${VAR:-default}, VAR made of letters, digits and _", ref)
	}
	if strings.Contains(def, "${") {
		return "", fmt.Errorf("nested ${ in the default of %s is not supported", ref)
	}
	val, ok := lookup(name)
	switch {
	case hasDef && val == "":
		return def, nil
	case !ok:
		return "", fmt.Errorf("environment variable %s is not set; set it, or give a default with ${%s:-default}", name, name)
	}
	return val, nil
}

func validVarName(s string) bool {
	if s == "" || !isNameStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

func isNameStart(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func isNameChar(c byte) bool { return isNameStart(c) || '0' <= c && c <= '9' }
