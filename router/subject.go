package router

import (
	"errors"
	"fmt"
	"strings"
)

// Subject patterns use NATS wildcards: a token is the text between '.'
// separators; '*' matches exactly one token and '>' matches one or more
// trailing tokens. A subject is split on '.' without validation (a Kafka
// topic may contain empty tokens, which only wildcards match); the empty
// subject has no tokens and matches no pattern.

// CheckSubjectPattern reports whether p is a valid subject pattern: it is not
// empty, has no empty tokens and no whitespace, '*' and '>' appear only as
// whole tokens, and '>' only as the last token.
func CheckSubjectPattern(p string) error {
	if p == "" {
		return errors.New("subject pattern is empty")
	}
	for i, n := 0, 0; ; n++ {
		tok, rest, more := strings.Cut(p[i:], ".")
		if err := checkPatternToken(tok, more); err != nil {
			return fmt.Errorf("subject pattern %q: token %d %q: %w", p, n+1, tok, err)
		}
		if !more {
			return nil
		}
		i = len(p) - len(rest)
	}
}

// checkPatternToken validates one token; more reports whether tokens follow.
func checkPatternToken(tok string, more bool) error {
	switch {
	case tok == "":
		return errors.New("empty token (leading, trailing or doubled '.')")
	case tok == ">":
		if more {
			return errors.New("'>' must be the last token")
		}
		return nil
	case tok == "*":
		return nil
	}
	for i := 0; i < len(tok); i++ {
		switch tok[i] {
		case '*', '>':
			return fmt.Errorf("wildcard %q must be a whole token", tok[i])
		case ' ', '\t', '\n', '\r', '\v', '\f':
			return errors.New("contains whitespace")
		}
	}
	return nil
}

// MatchSubject reports whether subject matches pattern. An invalid pattern
// (see [CheckSubjectPattern]) matches nothing. It does not allocate; when
// the same pattern is matched repeatedly, [New] precompiles it instead.
func MatchSubject(pattern, subject string) bool {
	if pattern == "" || subject == "" {
		return false
	}
	pi, si := 0, 0
	subjLeft := true // a subject token remains at si
	for {
		end := strings.IndexByte(pattern[pi:], '.')
		var tok string
		more := end >= 0
		if more {
			tok = pattern[pi : pi+end]
			pi += end + 1
		} else {
			tok = pattern[pi:]
		}
		if checkPatternToken(tok, more) != nil || !subjLeft {
			return false
		}
		if tok == ">" {
			return true
		}
		var st string
		st, si, subjLeft = nextToken(subject, si)
		if tok != "*" && tok != st {
			return false
		}
		if !more {
			return !subjLeft
		}
	}
}

// nextToken returns the token of s starting at i, the start of the next
// token, and whether there is one.
func nextToken(s string, i int) (tok string, next int, more bool) {
	end := strings.IndexByte(s[i:], '.')
	if end < 0 {
		return s[i:], len(s), false
	}
	return s[i : i+end], i + end + 1, true
}

// subjectPattern is a compiled, validated subject pattern.
type subjectPattern struct {
	src     string
	tokens  []string // nil for a literal pattern
	literal bool
}

func compileSubjectPattern(p string) (subjectPattern, error) {
	if err := CheckSubjectPattern(p); err != nil {
		return subjectPattern{}, err
	}
	if !strings.ContainsAny(p, "*>") {
		return subjectPattern{src: p, literal: true}, nil
	}
	return subjectPattern{src: p, tokens: strings.Split(p, ".")}, nil
}

// match reports whether subject matches the pattern; it does not allocate.
func (p *subjectPattern) match(subject string) bool {
	if p.literal {
		return subject == p.src
	}
	if subject == "" {
		return false
	}
	si, left := 0, true
	for _, tok := range p.tokens {
		if !left {
			return false
		}
		if tok == ">" {
			return true
		}
		var st string
		st, si, left = nextToken(subject, si)
		if tok != "*" && tok != st {
			return false
		}
	}
	return !left
}
