package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"unicode/utf8"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// The `json` CEL variable is evaluated lazily over the record's raw bytes.
// The value is validated once (json.Valid, which does not allocate); after
// that, selecting a field scans the enclosing object without building Go
// maps, and only the scalars an expression actually reads are decoded.
// Objects and arrays are wrappers over their byte range. Operations that
// need the whole value (equality, conversion, iterating an object, size of
// an object, list concatenation) decode that value with encoding/json, so
// the results match json.Unmarshal into `any` converted to CEL: objects are
// map(string, dyn) with the last duplicate key winning, numbers are doubles.

// jsonValue converts one valid, trimmed JSON value to CEL.
func jsonValue(adapter types.Adapter, d []byte) ref.Val {
	if len(d) == 0 {
		return types.NewErr("json: empty value")
	}
	switch d[0] {
	case '{':
		return &jsonObject{data: d, adapter: adapter}
	case '[':
		return &jsonArray{data: d, adapter: adapter, n: -1}
	case '"':
		return types.String(jsonString(d))
	case 't':
		return types.True
	case 'f':
		return types.False
	case 'n':
		return types.NullValue
	}
	f, err := strconv.ParseFloat(string(d), 64)
	if err != nil || math.IsInf(f, 0) {
		return types.NewErr("json: number %s cannot be represented as a double", d)
	}
	return types.Double(f)
}

// jsonString decodes a valid quoted JSON string as encoding/json does
// (escapes resolved, invalid UTF-8 replaced by U+FFFD).
func jsonString(d []byte) string {
	raw := d[1 : len(d)-1]
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw)
	}
	var s string
	_ = json.Unmarshal(d, &s) // d is valid JSON
	return s
}

// jsonKeyEquals reports whether the raw (unquoted) key equals k once decoded.
func jsonKeyEquals(raw []byte, k string) bool {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw) == k
	}
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	return jsonString(q) == k
}

func skipWS(d []byte, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index after the string starting at d[i] == '"'.
func skipString(d []byte, i int) int {
	for i++; i < len(d); {
		j := bytes.IndexAny(d[i:], `"\`)
		if j < 0 {
			return len(d)
		}
		i += j
		if d[i] == '"' {
			return i + 1
		}
		i += 2 // backslash and the escaped byte
	}
	return len(d)
}

// skipValue returns the index after the valid JSON value starting at d[i].
func skipValue(d []byte, i int) int {
	switch d[i] {
	case '"':
		return skipString(d, i)
	case '{', '[':
		depth := 0
		for i < len(d) {
			switch d[i] {
			case '"':
				i = skipString(d, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(d)
	}
	for i < len(d) {
		switch d[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// jsonElems walks the members of an object or the elements of an array.
type jsonElems struct {
	d []byte
	i int
}

// next returns the next member (key is the raw key without quotes; nil for
// arrays) and its value.
func (it *jsonElems) next(object bool) (key, val []byte, ok bool) {
	d := it.d
	i := skipWS(d, it.i)
	if i >= len(d) || d[i] == '}' || d[i] == ']' {
		return nil, nil, false
	}
	if d[i] == ',' {
		i = skipWS(d, i+1)
	}
	if object {
		ks := i
		i = skipString(d, i)
		key = d[ks+1 : i-1]
		i = skipWS(d, i) + 1 // ':'
		i = skipWS(d, i)
	}
	vs := i
	i = skipValue(d, i)
	it.i = i
	return key, d[vs:i], true
}

func newJSONElems(d []byte) jsonElems { return jsonElems{d: d, i: 1} }

// decodeJSON decodes a whole valid value into a CEL value.
func decodeJSON(adapter types.Adapter, d []byte) ref.Val {
	var v any
	if err := json.Unmarshal(d, &v); err != nil {
		return types.NewErr("json: %v", err)
	}
	return adapter.NativeToValue(v)
}

// jsonObject is a JSON object read in place.
type jsonObject struct {
	data    []byte
	adapter types.Adapter
	whole   ref.Val // decoded on demand
}

var (
	_ traits.Mapper   = (*jsonObject)(nil)
	_ traits.Lister   = (*jsonArray)(nil)
	_ traits.Foldable = (*jsonArray)(nil)
)

func (o *jsonObject) decoded() ref.Val {
	if o.whole == nil {
		o.whole = decodeJSON(o.adapter, o.data)
	}
	return o.whole
}

// Find implements traits.Mapper. Like encoding/json, the last of duplicate
// keys wins.
func (o *jsonObject) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		if types.IsUnknownOrError(key) {
			return key, false
		}
		return nil, false
	}
	var found []byte
	it := newJSONElems(o.data)
	for {
		raw, val, ok := it.next(true)
		if !ok {
			break
		}
		if jsonKeyEquals(raw, string(k)) {
			found = val
		}
	}
	if found == nil {
		return nil, false
	}
	return jsonValue(o.adapter, found), true
}

// Get implements traits.Indexer.
func (o *jsonObject) Get(key ref.Val) ref.Val {
	v, found := o.Find(key)
	if !found {
		if v != nil {
			return v
		}
		return types.NewErr("no such key: %v", key)
	}
	return v
}

// Contains implements traits.Container.
func (o *jsonObject) Contains(key ref.Val) ref.Val {
	v, found := o.Find(key)
	if !found && v != nil {
		return v
	}
	return types.Bool(found)
}

func (o *jsonObject) mapper() (traits.Mapper, ref.Val) {
	v := o.decoded()
	if m, ok := v.(traits.Mapper); ok {
		return m, nil
	}
	return nil, v
}

// Size implements traits.Sizer.
func (o *jsonObject) Size() ref.Val {
	m, errv := o.mapper()
	if m == nil {
		return errv
	}
	return m.Size()
}

// Iterator implements traits.Iterable.
func (o *jsonObject) Iterator() traits.Iterator {
	if m, _ := o.mapper(); m != nil {
		return m.Iterator()
	}
	return types.NewStringStringMap(o.adapter, nil).Iterator()
}

// ConvertToNative implements ref.Val.
func (o *jsonObject) ConvertToNative(t reflect.Type) (any, error) {
	v := o.decoded()
	if types.IsError(v) {
		return nil, v.(*types.Err)
	}
	return v.ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (o *jsonObject) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return o
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", types.MapType, t)
}

// Equal implements ref.Val.
func (o *jsonObject) Equal(other ref.Val) ref.Val { return o.decoded().Equal(other) }

// Type implements ref.Val.
func (o *jsonObject) Type() ref.Type { return types.MapType }

// Value implements ref.Val.
func (o *jsonObject) Value() any { return o.decoded().Value() }

// jsonArray is a JSON array read in place.
type jsonArray struct {
	data    []byte
	adapter types.Adapter
	n       int     // element count, -1 until counted
	whole   ref.Val // decoded on demand
}

func (a *jsonArray) decoded() ref.Val {
	if a.whole == nil {
		a.whole = decodeJSON(a.adapter, a.data)
	}
	return a.whole
}

func (a *jsonArray) len() int {
	if a.n < 0 {
		n := 0
		it := newJSONElems(a.data)
		for {
			if _, _, ok := it.next(false); !ok {
				break
			}
			n++
		}
		a.n = n
	}
	return a.n
}

// Size implements traits.Sizer.
func (a *jsonArray) Size() ref.Val { return types.Int(a.len()) }

// Get implements traits.Indexer.
func (a *jsonArray) Get(index ref.Val) ref.Val {
	i, err := types.GetOrError(index)
	if err != nil {
		return types.ValOrErr(index, "%v", err)
	}
	it := newJSONElems(a.data)
	for j := 0; i >= 0; j++ {
		_, val, ok := it.next(false)
		if !ok {
			break
		}
		if j == i {
			return jsonValue(a.adapter, val)
		}
	}
	return types.NewErr("index '%d' out of range in list size '%d'", i, a.len())
}

// Fold implements traits.Foldable: comprehensions stream the elements.
func (a *jsonArray) Fold(f traits.Folder) {
	it := newJSONElems(a.data)
	for i := 0; ; i++ {
		_, val, ok := it.next(false)
		if !ok || !f.FoldEntry(types.Int(i), jsonValue(a.adapter, val)) {
			return
		}
	}
}

// Iterator implements traits.Iterable.
func (a *jsonArray) Iterator() traits.Iterator {
	return &jsonArrayIter{a: a, it: newJSONElems(a.data)}
}

func (a *jsonArray) lister() (traits.Lister, ref.Val) {
	v := a.decoded()
	if l, ok := v.(traits.Lister); ok {
		return l, nil
	}
	return nil, v
}

// Add implements traits.Adder.
func (a *jsonArray) Add(other ref.Val) ref.Val {
	l, errv := a.lister()
	if l == nil {
		return errv
	}
	return l.Add(other)
}

// Contains implements traits.Container.
func (a *jsonArray) Contains(v ref.Val) ref.Val {
	l, errv := a.lister()
	if l == nil {
		return errv
	}
	return l.Contains(v)
}

// ConvertToNative implements ref.Val.
func (a *jsonArray) ConvertToNative(t reflect.Type) (any, error) {
	v := a.decoded()
	if types.IsError(v) {
		return nil, v.(*types.Err)
	}
	return v.ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (a *jsonArray) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.ListType:
		return a
	case types.TypeType:
		return types.ListType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", types.ListType, t)
}

// Equal implements ref.Val.
func (a *jsonArray) Equal(other ref.Val) ref.Val { return a.decoded().Equal(other) }

// Type implements ref.Val.
func (a *jsonArray) Type() ref.Type { return types.ListType }

// Value implements ref.Val.
func (a *jsonArray) Value() any { return a.decoded().Value() }

// jsonArrayIter iterates over a jsonArray's elements.
type jsonArrayIter struct {
	a       *jsonArray
	it      jsonElems
	pending []byte
	done    bool
}

// HasNext implements traits.Iterator.
func (it *jsonArrayIter) HasNext() ref.Val {
	if it.pending == nil && !it.done {
		_, val, ok := it.it.next(false)
		it.pending, it.done = val, !ok
	}
	return types.Bool(it.pending != nil)
}

// Next implements traits.Iterator.
func (it *jsonArrayIter) Next() ref.Val {
	if it.HasNext() != types.True {
		return nil
	}
	v := jsonValue(it.a.adapter, it.pending)
	it.pending = nil
	return v
}

// ConvertToNative implements ref.Val.
func (it *jsonArrayIter) ConvertToNative(reflect.Type) (any, error) {
	return nil, errors.New("type conversion on iterators not supported")
}

// ConvertToType implements ref.Val.
func (it *jsonArrayIter) ConvertToType(ref.Type) ref.Val { return types.NewErr("no such overload") }

// Equal implements ref.Val.
func (it *jsonArrayIter) Equal(ref.Val) ref.Val { return types.NewErr("no such overload") }

// Type implements ref.Val.
func (it *jsonArrayIter) Type() ref.Type { return types.IteratorType }

// Value implements ref.Val.
func (it *jsonArrayIter) Value() any { return nil }
