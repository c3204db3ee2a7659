package router

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Template renders an output subject from a record. Templates use Go
// text/template syntax over a read-only view of the record:
//
//	.ID .Key .Value .ContentType
//	.Source.Connector .Source.Stream .Source.Subject .Source.Partition
//	.Source.Offset .Source.Sequence
//
// and these functions besides the text/template built-ins:
//
//	header "name"     first value of a header (name case-insensitive), or ""
//	lower S, upper S  case mapping
//	replace OLD NEW S every OLD in S replaced by NEW
//	token N S         token N (0-based) of the '.'-separated S
//
// A Template is safe for concurrent use and must not be copied.
type Template struct {
	src   string
	konst bool      // no actions: src is the subject
	segs  []segment // fast path; nil when text/template must run
	tmpl  *template.Template
	// states pools text/template clones whose functions are bound to a
	// per-clone record; nil New when konst or segs is set.
	states sync.Pool
}

// String returns the template source.
func (t *Template) String() string { return t.src }

// IsConstant reports whether the template has no actions.
func (t *Template) IsConstant() bool { return t.konst }

const templateFields = ".ID, .Key, .Value, .ContentType, .Source.Connector, .Source.Stream, .Source.Subject, .Source.Partition, .Source.Offset, .Source.Sequence"

// ParseTemplate parses and validates a subject template. Unknown fields and
// functions, wrong argument counts and literal text that can never be part
// of a valid subject (whitespace, empty tokens) are reported here; it runs
// the template once against a sample record to find errors that
// text/template reports only at execution.
func ParseTemplate(s string) (*Template, error) {
	if !strings.Contains(s, "{{") {
		if err := checkSubject(s); err != nil {
			return nil, fmt.Errorf("subject template %q: %w", s, err)
		}
		return &Template{src: s, konst: true}, nil
	}
	t := &Template{src: s}
	tmpl, err := template.New("subject").
		Option("missingkey=error").
		Funcs(templateFuncs(&templateState{})).
		Parse(s)
	if err != nil {
		return nil, fmt.Errorf("subject template %q: %w", s, err)
	}
	for _, tt := range tmpl.Templates() {
		if tt.Tree == nil {
			continue
		}
		if err := checkText(tt.Tree.Root, tt == tmpl); err != nil {
			return nil, fmt.Errorf("subject template %q: %w", s, err)
		}
	}
	t.tmpl = tmpl
	t.states.New = func() any {
		st := &templateState{}
		c, err := tmpl.Clone()
		if err != nil { // only after Execute of an html/template
			panic(err)
		}
		st.t = c.Funcs(templateFuncs(st))
		return st
	}
	// Trial run: catches unknown fields and wrong argument types, which
	// text/template only detects when executing.
	st := t.states.Get().(*templateState)
	st.trial = true
	_, err = t.execSlow(st, sampleRecord())
	st.trial = false
	t.states.Put(st)
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "can't evaluate field") {
			msg += "; fields: " + templateFields
		}
		return nil, fmt.Errorf("subject template %q: %s", s, msg)
	}
	if len(tmpl.Templates()) == 1 {
		t.segs = compileSegments(tmpl.Tree.Root)
	}
	return t, nil
}

// Execute renders the subject for rec. The result is a valid NATS subject
// (not empty, no whitespace, no empty or wildcard tokens), or an error that
// names the template and the record id.
func (t *Template) Execute(rec *culvertv1.Record) (string, error) {
	if t.konst {
		return t.src, nil
	}
	if t.segs != nil {
		return t.execFast(rec)
	}
	st := t.states.Get().(*templateState)
	s, err := t.execSlow(st, rec)
	t.states.Put(st)
	return s, err
}

func (t *Template) execSlow(st *templateState, rec *culvertv1.Record) (string, error) {
	st.view.rec = rec
	st.buf.Reset()
	err := st.t.Execute(&st.buf, &st.view)
	st.view.rec = nil
	if err != nil {
		return "", fmt.Errorf("subject template %q: record %q: %w", t.src, rec.GetId(), err)
	}
	if st.trial {
		return "", nil
	}
	if err := checkSubjectBytes(st.buf.Bytes()); err != nil {
		return "", fmt.Errorf("subject template %q: record %q: rendered %q: %w", t.src, rec.GetId(), st.buf.String(), err)
	}
	return st.buf.String(), nil
}

// templateState is one pooled text/template clone and the record its
// functions read.
type templateState struct {
	t     *template.Template
	view  recordView
	trial bool // sample run at parse time: no data-dependent errors
	buf   bytes.Buffer
}

func templateFuncs(st *templateState) template.FuncMap {
	return template.FuncMap{
		"header": func(name string) string { return headerValue(st.view.rec, strings.ToLower(name)) },
		"lower":  strings.ToLower,
		"upper":  strings.ToUpper,
		"replace": func(old, new, s string) string {
			return strings.ReplaceAll(s, old, new)
		},
		"token": func(n int, s string) (string, error) {
			tok, err := subjectToken(n, s)
			if err != nil && st.trial && n >= 0 {
				return "", nil
			}
			return tok, err
		},
	}
}

func headerValue(rec *culvertv1.Record, lower string) string {
	for _, h := range rec.GetHeaders() {
		if lowerEq(h.GetName(), lower) {
			return string(h.GetValue())
		}
	}
	return ""
}

func appendHeaderValue(dst []byte, rec *culvertv1.Record, lower string) []byte {
	for _, h := range rec.GetHeaders() {
		if lowerEq(h.GetName(), lower) {
			return append(dst, h.GetValue()...)
		}
	}
	return dst
}

// subjectToken returns token n (0-based) of the '.'-separated s.
func subjectToken(n int, s string) (string, error) {
	if n < 0 {
		return "", fmt.Errorf("token %d: index must not be negative", n)
	}
	rest := s
	for i := 0; ; i++ {
		tok, after, more := strings.Cut(rest, ".")
		if i == n {
			return tok, nil
		}
		if !more {
			return "", fmt.Errorf("token %d of %q: it has only %d tokens", n, s, i+1)
		}
		rest = after
	}
}

// recordView is what templates see as dot.
type recordView struct{ rec *culvertv1.Record }

func (v *recordView) ID() string          { return v.rec.GetId() }
func (v *recordView) Key() string         { return string(v.rec.GetKey()) }
func (v *recordView) Value() string       { return string(v.rec.GetValue()) }
func (v *recordView) ContentType() string { return v.rec.GetContentType() }
func (v *recordView) Source() sourceView  { return sourceView{v.rec.GetSource()} }

// sourceView is .Source in templates.
type sourceView struct{ p *culvertv1.Position }

func (s sourceView) Connector() string { return s.p.GetConnector() }
func (s sourceView) Stream() string    { return s.p.GetStream() }
func (s sourceView) Subject() string   { return s.p.GetSubject() }
func (s sourceView) Partition() string { return s.p.GetPartition() }
func (s sourceView) Offset() uint64    { return s.p.GetOffset() }
func (s sourceView) Sequence() string  { return s.p.GetSequence() }

func sampleRecord() *culvertv1.Record {
	return &culvertv1.Record{
		Id:          "sample:1",
		Key:         []byte("key"),
		Value:       []byte("value"),
		ContentType: "application/json",
		Headers:     []*culvertv1.Header{{Name: "X-Sample", Value: []byte("sample")}},
		Source: &culvertv1.Position{
			Connector: "nats",
			Stream:    "STREAM",
			Subject:   "sample.subject",
			Partition: "0",
			Offset:    1,
			Sequence:  "1",
		},
	}
}

// checkSubject reports why s is not a subject one can publish to.
func checkSubject(s string) error { return checkSubjectBytes([]byte(s)) }

func checkSubjectBytes(s []byte) error {
	if len(s) == 0 {
		return errors.New("empty subject")
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			switch s[i] {
			case ' ', '\t', '\n', '\r', '\v', '\f':
				return fmt.Errorf("whitespace at byte %d", i)
			case '.':
			default:
				continue
			}
		}
		switch tok := s[start:i]; {
		case len(tok) == 0:
			return fmt.Errorf("empty token at byte %d", start)
		case len(tok) == 1 && (tok[0] == '*' || tok[0] == '>'):
			return fmt.Errorf("wildcard token %q at byte %d", string(tok), start)
		}
		start = i + 1
	}
	return nil
}

// checkText rejects literal text that always makes an invalid subject.
func checkText(root *parse.ListNode, top bool) error {
	var walk func(n parse.Node) error
	walk = func(n parse.Node) error {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return nil
			}
			for _, c := range n.Nodes {
				if err := walk(c); err != nil {
					return err
				}
			}
		case *parse.TextNode:
			if i := bytes.IndexAny(n.Text, " \t\n\r\v\f"); i >= 0 {
				return fmt.Errorf("text %q contains whitespace", n.Text)
			}
			if bytes.Contains(n.Text, []byte("..")) {
				return fmt.Errorf("text %q contains an empty token", n.Text)
			}
		case *parse.IfNode:
			return walkBranch(walk, &n.BranchNode)
		case *parse.RangeNode:
			return walkBranch(walk, &n.BranchNode)
		case *parse.WithNode:
			return walkBranch(walk, &n.BranchNode)
		}
		return nil
	}
	if err := walk(root); err != nil {
		return err
	}
	if !top || root == nil || len(root.Nodes) == 0 {
		return nil
	}
	if tn, ok := root.Nodes[0].(*parse.TextNode); ok && bytes.HasPrefix(tn.Text, []byte(".")) {
		return errors.New("subject starts with '.'")
	}
	if tn, ok := root.Nodes[len(root.Nodes)-1].(*parse.TextNode); ok && bytes.HasSuffix(tn.Text, []byte(".")) {
		return errors.New("subject ends with '.'")
	}
	return nil
}

func walkBranch(walk func(parse.Node) error, b *parse.BranchNode) error {
	if err := walk(b.List); err != nil {
		return err
	}
	if b.ElseList != nil {
		return walk(b.ElseList)
	}
	return nil
}

// segment is one piece of a template rendered without text/template.
type segment struct {
	kind  segKind
	text  string // literal text, or header name (lower-cased)
	token int    // for segToken: token index; field in field
	field segKind
}

type segKind uint8

const (
	segText segKind = iota
	segID
	segKey
	segValue
	segContentType
	segConnector
	segStream
	segSubject
	segPartition
	segOffset
	segSequence
	segHeader // header "name"
	segToken  // token N <field>
)

// compileSegments returns the fast-path form of a template made only of
// text, field references, header "literal" and token N <field>; nil
// otherwise.
func compileSegments(root *parse.ListNode) []segment {
	var segs []segment
	for _, n := range root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			segs = append(segs, segment{kind: segText, text: string(n.Text)})
		case *parse.ActionNode:
			if len(n.Pipe.Decl) != 0 || len(n.Pipe.Cmds) != 1 {
				return nil
			}
			seg, ok := compileCommand(n.Pipe.Cmds[0].Args)
			if !ok {
				return nil
			}
			segs = append(segs, seg)
		default:
			return nil
		}
	}
	return segs
}

func compileCommand(args []parse.Node) (segment, bool) {
	if len(args) == 1 {
		if f, ok := fieldKind(args[0]); ok {
			return segment{kind: f}, true
		}
		return segment{}, false
	}
	id, ok := args[0].(*parse.IdentifierNode)
	if !ok {
		return segment{}, false
	}
	switch {
	case id.Ident == "header" && len(args) == 2:
		if s, ok := args[1].(*parse.StringNode); ok {
			return segment{kind: segHeader, text: strings.ToLower(s.Text)}, true
		}
	case id.Ident == "token" && len(args) == 3:
		num, ok := args[1].(*parse.NumberNode)
		f, fok := fieldKind(args[2])
		if ok && fok && num.IsInt && num.Int64 >= 0 && num.Int64 <= 1<<20 && f != segOffset {
			return segment{kind: segToken, token: int(num.Int64), field: f}, true
		}
	}
	return segment{}, false
}

func fieldKind(n parse.Node) (segKind, bool) {
	f, ok := n.(*parse.FieldNode)
	if !ok {
		return 0, false
	}
	switch strings.Join(f.Ident, ".") {
	case "ID":
		return segID, true
	case "Key":
		return segKey, true
	case "Value":
		return segValue, true
	case "ContentType":
		return segContentType, true
	case "Source.Connector":
		return segConnector, true
	case "Source.Stream":
		return segStream, true
	case "Source.Subject":
		return segSubject, true
	case "Source.Partition":
		return segPartition, true
	case "Source.Offset":
		return segOffset, true
	case "Source.Sequence":
		return segSequence, true
	}
	return 0, false
}

// fieldString returns a string field of rec; Key and Value are handled by
// the caller to avoid copying.
func fieldString(rec *culvertv1.Record, k segKind) string {
	switch k {
	case segID:
		return rec.GetId()
	case segContentType:
		return rec.GetContentType()
	case segConnector:
		return rec.GetSource().GetConnector()
	case segStream:
		return rec.GetSource().GetStream()
	case segSubject:
		return rec.GetSource().GetSubject()
	case segPartition:
		return rec.GetSource().GetPartition()
	case segSequence:
		return rec.GetSource().GetSequence()
	}
	return ""
}

func (t *Template) execFast(rec *culvertv1.Record) (string, error) {
	var arr [256]byte
	b := arr[:0]
	for i := range t.segs {
		sg := &t.segs[i]
		switch sg.kind {
		case segText:
			b = append(b, sg.text...)
		case segKey:
			b = append(b, rec.GetKey()...)
		case segValue:
			b = append(b, rec.GetValue()...)
		case segOffset:
			b = strconv.AppendUint(b, rec.GetSource().GetOffset(), 10)
		case segHeader:
			b = appendHeaderValue(b, rec, sg.text)
		case segToken:
			var s string
			switch sg.field {
			case segKey:
				s = string(rec.GetKey())
			case segValue:
				s = string(rec.GetValue())
			default:
				s = fieldString(rec, sg.field)
			}
			tok, err := subjectToken(sg.token, s)
			if err != nil {
				return "", fmt.Errorf("subject template %q: record %q: %w", t.src, rec.GetId(), err)
			}
			b = append(b, tok...)
		default:
			b = append(b, fieldString(rec, sg.kind)...)
		}
	}
	if err := checkSubjectBytes(b); err != nil {
		return "", fmt.Errorf("subject template %q: record %q: rendered %q: %w", t.src, rec.GetId(), string(b), err)
	}
	return string(b), nil
}
