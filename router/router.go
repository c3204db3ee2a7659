package router

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Spec is the match part of one route. Every condition given must hold; an
// empty Spec matches every record.
type Spec struct {
	// Name identifies the route in errors.
	Name string
	// Subjects are subject patterns ('*' one token, '>' one or more trailing
	// tokens); the record's source subject must match at least one. Empty
	// means any subject.
	Subjects []string
	// Headers must all be present on the record with exactly these values.
	// Names are compared case-insensitively, values exactly; when a name
	// repeats on the record, any occurrence may match.
	Headers map[string]string
	// CEL is an expression over the record that must evaluate to true. Empty
	// means no expression.
	CEL string
}

// Router matches records against compiled route specs. It is safe for
// concurrent use and must not be copied.
type Router struct {
	routes []route
	// acts pools CEL activations; nil New func when no route uses CEL.
	acts sync.Pool
}

type route struct {
	name     string
	subjects []subjectPattern
	headers  []headerCond
	expr     string
	prog     cel.Program // nil without CEL
	vars     varSet      // variables the expression reads
}

type headerCond struct {
	name  string // lower-cased
	value string
}

// New compiles specs into a Router. Route i of the Router is specs[i]. The
// error lists every invalid condition, each naming its route and field.
func New(specs []Spec) (*Router, error) {
	r := &Router{routes: make([]route, len(specs))}
	var env *cel.Env
	var errs []error
	for i, s := range specs {
		rt := &r.routes[i]
		rt.name = s.Name
		label := routeLabel(i, s.Name)
		for j, p := range s.Subjects {
			sp, err := compileSubjectPattern(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: match.subjects[%d]: %w", label, j, err))
				continue
			}
			rt.subjects = append(rt.subjects, sp)
		}
		for name, value := range s.Headers {
			if strings.TrimSpace(name) == "" {
				errs = append(errs, fmt.Errorf("%s: match.headers: empty header name", label))
				continue
			}
			rt.headers = append(rt.headers, headerCond{name: strings.ToLower(name), value: value})
		}
		// Deterministic order; map iteration is random.
		slices.SortFunc(rt.headers, func(a, b headerCond) int {
			return strings.Compare(a.name+"\x00"+a.value, b.name+"\x00"+b.value)
		})
		if s.CEL == "" {
			continue
		}
		if env == nil {
			var err error
			if env, err = newCELEnv(); err != nil {
				return nil, err
			}
		}
		prog, vars, err := compileCEL(env, s.CEL)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: match.cel: %w", label, err))
			continue
		}
		rt.expr, rt.prog, rt.vars = s.CEL, prog, vars
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if env != nil {
		adapter := env.CELTypeAdapter()
		emptyPos := &culvertv1.Position{}
		r.acts.New = func() any { return newActivation(adapter, emptyPos) }
	}
	return r, nil
}

func routeLabel(i int, name string) string {
	if name == "" {
		return fmt.Sprintf("route #%d", i+1)
	}
	return fmt.Sprintf("route %q", name)
}

// Len returns the number of routes.
func (r *Router) Len() int { return len(r.routes) }

// Name returns the name of route i.
func (r *Router) Name(i int) string { return r.routes[i].name }

// MatchError reports a route whose CEL expression failed on a record (for
// example a missing JSON field). The route does not match that record.
type MatchError struct {
	Route    string // route name
	Index    int    // route index
	RecordID string
	Expr     string
	Err      error
}

func (e *MatchError) Error() string {
	return fmt.Sprintf("%s: record %q: cel %q: %v", routeLabel(e.Index, e.Route), e.RecordID, e.Expr, e.Err)
}

func (e *MatchError) Unwrap() error { return e.Err }

// Match appends to dst the index of every route that matches rec, in spec
// order, and returns the extended slice. Subject and header conditions are
// checked first, so a route's CEL expression runs only when they hold.
//
// When a CEL expression fails at run time, that route does not match, the
// other routes are still evaluated, and the error (a *MatchError, or several
// joined with errors.Join) is returned alongside the matches. Match does not
// allocate unless an expression does.
func (r *Router) Match(rec *culvertv1.Record, dst []int) ([]int, error) {
	var (
		act  *activation
		errs []error
	)
	subject := rec.GetSource().GetSubject()
	for i := range r.routes {
		rt := &r.routes[i]
		if !rt.matchSubject(subject) || !rt.matchHeaders(rec.GetHeaders()) {
			continue
		}
		if rt.prog == nil {
			dst = append(dst, i)
			continue
		}
		var in any = interpreter.EmptyActivation()
		if rt.vars != 0 {
			if act == nil {
				act = r.acts.Get().(*activation)
				act.reset(rec)
			}
			in = act
		}
		out, _, err := rt.prog.Eval(in)
		switch {
		case err != nil:
			if rt.vars&(1<<varJSON) != 0 && act.have&(1<<varJSON) != 0 && act.vals[varJSON] == types.NullValue {
				err = fmt.Errorf("%w (json is null: the value is not JSON; guard with `json != null && ...`)", err)
			}
			errs = append(errs, &MatchError{Route: rt.name, Index: i, RecordID: rec.GetId(), Expr: rt.expr, Err: err})
		case out == types.True:
			dst = append(dst, i)
		}
	}
	if act != nil {
		act.reset(nil)
		r.acts.Put(act)
	}
	switch len(errs) {
	case 0:
		return dst, nil
	case 1:
		return dst, errs[0]
	}
	return dst, errors.Join(errs...)
}

func (rt *route) matchSubject(subject string) bool {
	if len(rt.subjects) == 0 {
		return true
	}
	for i := range rt.subjects {
		if rt.subjects[i].match(subject) {
			return true
		}
	}
	return false
}

func (rt *route) matchHeaders(hs []*culvertv1.Header) bool {
next:
	for _, c := range rt.headers {
		for _, h := range hs {
			if string(h.GetValue()) == c.value && lowerEq(h.GetName(), c.name) {
				continue next
			}
		}
		return false
	}
	return true
}
