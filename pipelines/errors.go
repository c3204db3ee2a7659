package pipelines

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// String formats p as file:line:col, or line:col without a file.
func (p Pos) String() string {
	s := strconv.Itoa(p.Line) + ":" + strconv.Itoa(p.Column)
	if p.File != "" {
		s = p.File + ":" + s
	}
	return s
}

// Error is one problem in a pipeline file.
type Error struct {
	// Pos is where the problem is. Line is always >= 1.
	Pos Pos
	// Path is the field path, e.g. routes[1].chain[0] or
	// functions.enrich.batch.size; empty for the file as a whole.
	Path string
	// Msg says what is wrong, and when possible how to fix it.
	Msg string
}

// Error formats e as file:line:col: path: msg.
func (e *Error) Error() string {
	if e.Path == "" {
		return e.Pos.String() + ": " + e.Msg
	}
	return e.Pos.String() + ": " + e.Path + ": " + e.Msg
}

// Errors are all the problems found in a pipeline file, sorted by position.
// Load and Parse return it as their error; use errors.As to get it.
type Errors []*Error

// Error formats the errors one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the errors, so errors.As finds an *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sorted returns es sorted by position, without the exact duplicates that
// aliases and merge keys can produce. Errors at one position keep their
// order.
func (es Errors) sorted() Errors {
	out := make(Errors, 0, len(es))
	seen := make(map[Error]bool, len(es))
	for _, e := range es {
		if !seen[*e] {
			seen[*e] = true
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b *Error) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Column, b.Pos.Column),
		)
	})
	return out
}
