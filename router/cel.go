package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// CEL variables, in the order of their bit in a varSet.
const (
	varID = iota
	varKey
	varKeyString
	varValue
	varContentType
	varHeaders
	varHeaderValues
	varSource
	varEventTime
	varJSON
	numVars
)

// varSet is a set of CEL variables, one bit per var* constant.
type varSet uint16

// varIndex maps a CEL variable name to its var* constant, or -1.
func varIndex(name string) int {
	switch name {
	case "id":
		return varID
	case "key":
		return varKey
	case "key_string":
		return varKeyString
	case "value":
		return varValue
	case "content_type":
		return varContentType
	case "headers":
		return varHeaders
	case "header_values":
		return varHeaderValues
	case "source":
		return varSource
	case "event_time":
		return varEventTime
	case "json":
		return varJSON
	}
	return -1
}

const celVariables = "id, key, key_string, value, content_type, headers, header_values, source, event_time, json"

// newCELEnv builds the CEL environment shared by every expression.
func newCELEnv() (*cel.Env, error) {
	env, err := cel.NewEnv(
		cel.Types(&culvertv1.Position{}),
		cel.Variable("id", cel.StringType),
		cel.Variable("key", cel.BytesType),
		cel.Variable("key_string", cel.StringType),
		cel.Variable("value", cel.BytesType),
		cel.Variable("content_type", cel.StringType),
		cel.Variable("headers", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("header_values", cel.MapType(cel.StringType, cel.ListType(cel.StringType))),
		cel.Variable("source", cel.ObjectType("culvert.v1.Position")),
		cel.Variable("event_time", cel.TimestampType),
		cel.Variable("json", cel.DynType),
		cel.OptionalTypes(),
		cel.CrossTypeNumericComparisons(true),
		cel.DefaultUTCTimeZone(true),
		ext.Strings(),
		// Version 0 has only base64.*: later versions add json.* functions,
		// which would clash with the json variable.
		ext.Encoders(ext.EncodersVersion(0)),
		ext.Math(),
		ext.Lists(),
		ext.Sets(),
	)
	if err != nil {
		return nil, fmt.Errorf("cel environment: %w", err)
	}
	return env, nil
}

// CheckCEL compiles expr and checks that it evaluates to a bool. The error
// says where the problem is and, for unknown names, which variables exist.
func CheckCEL(expr string) error {
	env, err := newCELEnv()
	if err != nil {
		return err
	}
	_, _, err = compileCEL(env, expr)
	return err
}

// compileCEL compiles, type-checks and plans expr, returning the program and
// the variables it reads.
func compileCEL(env *cel.Env, expr string) (cel.Program, varSet, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, 0, errors.New("cel: expression is empty")
	}
	src := common.NewStringSource(expr, "cel")
	ast, iss := env.CompileSource(src)
	if iss.Err() != nil {
		return nil, 0, celIssuesError(expr, src, iss)
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		hint := ""
		if t.IsExactType(cel.DynType) {
			hint = ` (the type is only known at run time: compare explicitly, e.g. "json.active == true")`
		}
		return nil, 0, fmt.Errorf("cel %q: result has type %s, want bool%s", expr, t, hint)
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, 0, fmt.Errorf("cel %q: %w", expr, err)
	}
	var vars varSet
	for _, r := range ast.NativeRep().ReferenceMap() {
		if len(r.OverloadIDs) == 0 {
			if i := varIndex(r.Name); i >= 0 {
				vars |= 1 << i
			}
		}
	}
	return prg, vars, nil
}

func celIssuesError(expr string, src common.Source, iss *cel.Issues) error {
	var b strings.Builder
	undeclared := false
	for i, e := range iss.Errors() {
		if i > 0 {
			b.WriteByte('\n')
		}
		msg := strings.TrimPrefix(e.ToDisplayString(src), "ERROR: ")
		b.WriteString(strings.ReplaceAll(msg, " (in container '')", ""))
		undeclared = undeclared || strings.Contains(e.Message, "undeclared reference")
	}
	if undeclared {
		b.WriteString("\nvariables: " + celVariables)
	}
	return fmt.Errorf("cel %q: %s", expr, b.String())
}

// activation resolves CEL variables lazily from one record, caching each
// value for the remaining routes. It is pooled by the Router and reused.
type activation struct {
	rec      *culvertv1.Record
	adapter  types.Adapter
	emptyPos *culvertv1.Position
	have     varSet
	vals     [numVars]ref.Val
	headers  headerMap
	values   headerMap
	jsonObj  jsonObject // the top-level json object, to avoid allocating
}

func newActivation(adapter types.Adapter, emptyPos *culvertv1.Position) *activation {
	a := &activation{adapter: adapter, emptyPos: emptyPos}
	a.headers = headerMap{act: a}
	a.values = headerMap{act: a, all: true}
	return a
}

// reset points the activation at rec, or releases the record when nil.
func (a *activation) reset(rec *culvertv1.Record) {
	a.rec = rec
	if a.have != 0 {
		if a.have&(1<<varJSON) != 0 {
			a.jsonObj = jsonObject{}
		}
		a.have = 0
		clear(a.vals[:])
	}
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	i := varIndex(name)
	if i < 0 {
		return nil, false
	}
	if a.have&(1<<i) == 0 {
		a.vals[i] = a.resolve(i)
		a.have |= 1 << i
	}
	return a.vals[i], true
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) resolve(i int) ref.Val {
	rec := a.rec
	switch i {
	case varID:
		return types.String(rec.GetId())
	case varKey:
		return types.Bytes(rec.GetKey())
	case varKeyString:
		return types.String(rec.GetKey())
	case varValue:
		return types.Bytes(rec.GetValue())
	case varContentType:
		return types.String(rec.GetContentType())
	case varHeaders:
		return &a.headers
	case varHeaderValues:
		return &a.values
	case varSource:
		pos := rec.GetSource()
		if pos == nil {
			pos = a.emptyPos
		}
		return a.adapter.NativeToValue(pos)
	case varEventTime:
		if ts := rec.GetEventTime(); ts != nil {
			return types.Timestamp{Time: ts.AsTime()}
		}
		return types.Timestamp{Time: time.Unix(0, 0).UTC()}
	case varJSON:
		return a.parseJSON()
	}
	return types.NewErr("unknown variable %d", i)
}

// parseJSON returns the record value as a CEL value: read in place when
// the content type is JSON (an error if it is not valid JSON), or when it is
// empty and the value is a valid JSON object or array; null otherwise.
func (a *activation) parseJSON() ref.Val {
	ct := a.rec.GetContentType()
	value := a.rec.GetValue()
	declared := isJSONContentType(ct)
	if !declared && (ct != "" || !looksLikeJSONContainer(value)) {
		return types.NullValue
	}
	if !json.Valid(value) {
		if !declared {
			return types.NullValue
		}
		var v any
		err := json.Unmarshal(value, &v)
		return types.NewErr("json: value with content type %q is not valid JSON: %v", ct, err)
	}
	d := bytes.TrimRight(value[skipWS(value, 0):], " \t\r\n")
	if d[0] == '{' {
		a.jsonObj = jsonObject{data: d, adapter: a.adapter}
		return &a.jsonObj
	}
	return jsonValue(a.adapter, d)
}

// isJSONContentType reports whether ct is application/json, any */json or
// any *+json media type, ignoring parameters and case.
func isJSONContentType(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	slash := strings.IndexByte(ct, '/')
	if slash <= 0 {
		return false
	}
	sub := ct[slash+1:]
	return strings.EqualFold(sub, "json") ||
		(len(sub) > 5 && strings.EqualFold(sub[len(sub)-5:], "+json"))
}

// looksLikeJSONContainer reports whether v starts like a JSON object or array.
func looksLikeJSONContainer(v []byte) bool {
	for _, c := range v {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		}
		return false
	}
	return false
}

// lowerEq reports whether strings.ToLower(name) == lower, without
// allocating for ASCII names.
func lowerEq(name, lower string) bool {
	if len(name) != len(lower) {
		// Non-ASCII case mappings may change the length.
		return hasNonASCII(name) && strings.ToLower(name) == lower
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 0x80 {
			return strings.ToLower(name) == lower
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// sameName reports whether two header names are equal after lower-casing.
func sameName(a, b string) bool {
	if hasNonASCII(a) || hasNonASCII(b) {
		return strings.ToLower(a) == strings.ToLower(b)
	}
	return len(a) == len(b) && strings.EqualFold(a, b)
}

func hasNonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return true
		}
	}
	return false
}

// headerMap is the CEL value of `headers` (lower-cased name -> first value)
// and, with all set, of `header_values` (name -> every value). It reads the
// record's headers in place: lookups scan the (short) header list instead of
// building a map per record.
type headerMap struct {
	act *activation
	all bool
}

var (
	_ traits.Mapper   = (*headerMap)(nil)
	_ traits.Iterator = (*headerKeys)(nil)
)

func (m *headerMap) hdrs() []*culvertv1.Header { return m.act.rec.GetHeaders() }

// Find implements traits.Mapper.
func (m *headerMap) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		if types.IsUnknownOrError(key) {
			return key, false
		}
		return nil, false
	}
	hs := m.hdrs()
	for i, h := range hs {
		if !lowerEq(h.GetName(), string(k)) {
			continue
		}
		if !m.all {
			return types.String(h.GetValue()), true
		}
		var vals []string
		for _, h2 := range hs[i:] {
			if lowerEq(h2.GetName(), string(k)) {
				vals = append(vals, string(h2.GetValue()))
			}
		}
		return types.NewStringList(m.act.adapter, vals), true
	}
	return nil, false
}

// Get implements traits.Indexer.
func (m *headerMap) Get(key ref.Val) ref.Val {
	v, found := m.Find(key)
	if found {
		return v
	}
	if v != nil {
		return v
	}
	return types.NewErr("no such key: %v", key)
}

// Contains implements traits.Container.
func (m *headerMap) Contains(key ref.Val) ref.Val {
	v, found := m.Find(key)
	if !found && v != nil {
		return v
	}
	return types.Bool(found)
}

// Size implements traits.Sizer: the number of distinct names.
func (m *headerMap) Size() ref.Val {
	hs := m.hdrs()
	n := 0
	for i := range hs {
		if firstOfName(hs, i) {
			n++
		}
	}
	return types.Int(n)
}

// firstOfName reports whether hs[i] is the first header with its name.
func firstOfName(hs []*culvertv1.Header, i int) bool {
	for _, h := range hs[:i] {
		if sameName(h.GetName(), hs[i].GetName()) {
			return false
		}
	}
	return true
}

// Iterator implements traits.Iterable over the distinct lower-cased names.
func (m *headerMap) Iterator() traits.Iterator { return &headerKeys{hs: m.hdrs()} }

// materialize builds an ordinary CEL map with the same entries.
func (m *headerMap) materialize() traits.Mapper {
	hs := m.hdrs()
	if !m.all {
		out := make(map[string]string, len(hs))
		for _, h := range hs {
			k := strings.ToLower(h.GetName())
			if _, dup := out[k]; !dup {
				out[k] = string(h.GetValue())
			}
		}
		return types.NewStringStringMap(m.act.adapter, out)
	}
	out := make(map[string]any, len(hs))
	for _, h := range hs {
		k := strings.ToLower(h.GetName())
		l, _ := out[k].([]string)
		out[k] = append(l, string(h.GetValue()))
	}
	return types.NewStringInterfaceMap(m.act.adapter, out)
}

// ConvertToNative implements ref.Val.
func (m *headerMap) ConvertToNative(t reflect.Type) (any, error) {
	return m.materialize().ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (m *headerMap) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return m
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", types.MapType, t)
}

// Equal implements ref.Val.
func (m *headerMap) Equal(other ref.Val) ref.Val { return m.materialize().Equal(other) }

// Type implements ref.Val.
func (m *headerMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val.
func (m *headerMap) Value() any { return m.materialize().Value() }

// headerKeys iterates over the distinct lower-cased header names.
type headerKeys struct {
	hs []*culvertv1.Header
	i  int
}

func (it *headerKeys) skip() {
	for it.i < len(it.hs) && !firstOfName(it.hs, it.i) {
		it.i++
	}
}

// HasNext implements traits.Iterator.
func (it *headerKeys) HasNext() ref.Val {
	it.skip()
	return types.Bool(it.i < len(it.hs))
}

// Next implements traits.Iterator.
func (it *headerKeys) Next() ref.Val {
	it.skip()
	if it.i >= len(it.hs) {
		return nil
	}
	k := strings.ToLower(it.hs[it.i].GetName())
	it.i++
	return types.String(k)
}

// ConvertToNative implements ref.Val.
func (it *headerKeys) ConvertToNative(reflect.Type) (any, error) {
	return nil, errors.New("type conversion on iterators not supported")
}

// ConvertToType implements ref.Val.
func (it *headerKeys) ConvertToType(ref.Type) ref.Val {
	return types.NewErr("no such overload")
}

// Equal implements ref.Val.
func (it *headerKeys) Equal(ref.Val) ref.Val { return types.NewErr("no such overload") }

// Type implements ref.Val.
func (it *headerKeys) Type() ref.Type { return types.IteratorType }

// Value implements ref.Val.
func (it *headerKeys) Value() any { return nil }
