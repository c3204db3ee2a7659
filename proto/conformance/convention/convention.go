// Package convention implements the conformance convention of
// proto/SPEC.md, appendix A: how a function under test by the conformance
// kit (proto/conformance) is asked to fail a record, emit several outputs,
// emit none, or print to stdout. It owns the header's grammar (Parse) and a
// Go handler wrapper (Wrap) for functions written with sdk/go. It never
// changes what a function does outside conformance runs: directives are
// honoured only when the environment variable CULVERT_CONFORMANCE is "1".
package convention

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

// Header is the record header that carries a directive.
const Header = "culvert-conformance"

// EnvVar is set to "1" in the environment of a function run by the kit.
const EnvVar = "CULVERT_CONFORMANCE"

// MaxEmit is the largest N of an "emit=N" directive.
const MaxEmit = 1000

// Kind is what a directive asks for.
type Kind int

// The directives of appendix A. Echo is what a record without the header
// gets.
const (
	Echo   Kind = iota // one output: the input record, unchanged
	Emit               // "emit=N": N outputs, each a copy of the input record
	Drop               // "drop": no output, no failure
	Fail               // "fail": a failure, retryable false
	Retry              // "retry": a failure, retryable true
	Stdout             // "stdout=TEXT": print TEXT and a newline with the language's usual stdout API, then echo
)

// Directive is one parsed header value.
type Directive struct {
	Kind Kind
	// N is the number of outputs of Emit.
	N int
	// Text is what Stdout prints.
	Text string
}

// Parse parses a header value. The grammar is exact: lower case, no spaces,
// "emit=" followed by a decimal from 0 to MaxEmit without sign or leading
// zeros, "stdout=" followed by printable ASCII (0x20 to 0x7E).
func Parse(v []byte) (Directive, error) {
	switch s := string(v); {
	case s == "echo":
		return Directive{Kind: Echo}, nil
	case s == "drop":
		return Directive{Kind: Drop}, nil
	case s == "fail":
		return Directive{Kind: Fail}, nil
	case s == "retry":
		return Directive{Kind: Retry}, nil
	case len(s) > 5 && s[:5] == "emit=":
		d := s[5:]
		if len(d) > 1 && d[0] == '0' || len(d) > 4 {
			return Directive{}, fmt.Errorf("%s: %q: N must be a decimal from 0 to %d without leading zeros", Header, s, MaxEmit)
		}
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 || n > MaxEmit || d[0] == '+' || d[0] == '-' {
			return Directive{}, fmt.Errorf("%s: %q: N must be a decimal from 0 to %d", Header, s, MaxEmit)
		}
		return Directive{Kind: Emit, N: n}, nil
	case len(s) >= 7 && s[:7] == "stdout=":
		t := s[7:]
		for i := 0; i < len(t); i++ {
			if t[i] < 0x20 || t[i] > 0x7e {
				return Directive{}, fmt.Errorf("%s: %q: the text must be printable ASCII", Header, s)
			}
		}
		return Directive{Kind: Stdout, Text: t}, nil
	}
	return Directive{}, fmt.Errorf("%s: unknown directive %q (echo, emit=N, drop, fail, retry, stdout=TEXT)", Header, v)
}

// String renders d as its header value.
func (d Directive) String() string {
	switch d.Kind {
	case Echo:
		return "echo"
	case Emit:
		return "emit=" + strconv.Itoa(d.N)
	case Drop:
		return "drop"
	case Fail:
		return "fail"
	case Retry:
		return "retry"
	case Stdout:
		return "stdout=" + d.Text
	}
	return fmt.Sprintf("Kind(%d)", int(d.Kind))
}

// Of returns the directive of a record: the first culvert-conformance
// header, or Echo when there is none. Header names compare exactly.
func Of(rec *culvert.Record) (Directive, error) {
	for _, h := range rec.GetHeaders() {
		if h.GetName() == Header {
			return Parse(h.GetValue())
		}
	}
	return Directive{Kind: Echo}, nil
}

// Enabled reports whether the process runs under the kit.
func Enabled() bool { return os.Getenv(EnvVar) == "1" }

// Wrap returns h itself unless Enabled, and otherwise a handler that
// answers records carrying a directive as appendix A says and passes the
// others to h. Functions that want to pass the whole kit wrap their
// handler: culvert.Run(convention.Wrap(handle)).
func Wrap(h culvert.Handler) culvert.Handler {
	if !Enabled() {
		return h
	}
	return func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		has := false
		for _, hd := range rec.GetHeaders() {
			if hd.GetName() == Header {
				has = true
				break
			}
		}
		if !has {
			return h(ctx, rec)
		}
		d, err := Of(rec)
		if err != nil {
			return nil, err
		}
		return Apply(d, rec)
	}
}

// ErrRequested is the failure of "fail" and "retry".
var ErrRequested = errors.New("failure requested by the culvert-conformance header")

// Apply answers rec as directive d asks, with the Go SDK's types.
func Apply(d Directive, rec *culvert.Record) ([]culvert.Output, error) {
	switch d.Kind {
	case Drop:
		return nil, nil
	case Fail:
		return nil, ErrRequested
	case Retry:
		return nil, culvert.Retryable(ErrRequested)
	case Emit:
		outs := make([]culvert.Output, d.N)
		for i := range outs {
			outs[i].Record = Copy(rec)
		}
		return outs, nil
	case Stdout:
		fmt.Println(d.Text)
	}
	return culvert.Emit(rec), nil
}

// Copy returns a deep copy of rec's value, key and headers.
func Copy(rec *culvert.Record) *culvert.Record {
	c := &culvert.Record{
		Id:          rec.GetId(),
		Key:         bytes.Clone(rec.GetKey()),
		Value:       bytes.Clone(rec.GetValue()),
		ContentType: rec.GetContentType(),
		EventTime:   rec.GetEventTime(),
	}
	for _, h := range rec.GetHeaders() {
		c.Headers = append(c.Headers, &culvert.Header{Name: h.GetName(), Value: bytes.Clone(h.GetValue())})
	}
	return c
}
