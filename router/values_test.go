package router

import (
	"errors"
	"reflect"
	"testing"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// TestValueInterfaces exercises the ref.Val plumbing of the lazy values
// directly (CEL reaches most of it only through conversions).
func TestValueInterfaces(t *testing.T) {
	env, err := newCELEnv()
	if err != nil {
		t.Fatal(err)
	}
	a := newActivation(env.CELTypeAdapter(), &culvertv1.Position{})
	record := rec("s", "X-A", "1", "x-a", "2", "Ünï", "u")
	record.ContentType = "application/json"
	record.Value = []byte(`{"o": {"k": "v"}, "l": [1, "two"]}`)
	a.reset(record)

	hv, _ := a.ResolveName("headers")
	h := hv.(traits.Mapper)
	native, err := h.ConvertToNative(reflect.TypeFor[map[string]string]())
	if err != nil || !reflect.DeepEqual(native, map[string]string{"x-a": "1", "ünï": "u"}) {
		t.Errorf("headers ConvertToNative = %v, %v", native, err)
	}
	if h.Get(types.String("ünï")) != types.String("u") || h.Contains(types.String("x-a")) != types.True ||
		h.Contains(types.Int(1)) != types.False || !types.IsError(h.Get(types.String("nope"))) {
		t.Error("headers Get/Contains")
	}
	if h.ConvertToType(types.MapType) != h || h.ConvertToType(types.TypeType) != types.MapType || !types.IsError(h.ConvertToType(types.StringType)) {
		t.Error("headers ConvertToType")
	}
	if h.Type() != types.MapType || !reflect.DeepEqual(h.Value(), map[string]string{"x-a": "1", "ünï": "u"}) {
		t.Errorf("headers Value = %v", h.Value())
	}
	vv, _ := a.ResolveName("header_values")
	if got := vv.(traits.Mapper).Get(types.String("x-a")); got.Equal(types.NewStringList(types.DefaultTypeAdapter, []string{"1", "2"})) != types.True {
		t.Errorf("header_values[x-a] = %v", got)
	}
	if vv.(ref.Val).Value() == nil {
		t.Error("header_values Value")
	}
	checkIterator(t, h.Iterator(), 2)

	jv, _ := a.ResolveName("json")
	o := jv.(*jsonObject).Get(types.String("o")).(*jsonObject)
	if o.Contains(types.String("k")) != types.True || o.Contains(types.Int(1)) != types.False || !types.IsError(o.Get(types.String("x"))) {
		t.Error("object Get/Contains")
	}
	if n, err := o.ConvertToNative(reflect.TypeFor[map[string]any]()); err != nil || !reflect.DeepEqual(n, map[string]any{"k": "v"}) {
		t.Errorf("object ConvertToNative = %v, %v", n, err)
	}
	if o.ConvertToType(types.MapType) != o || o.ConvertToType(types.TypeType) != types.MapType || !types.IsError(o.ConvertToType(types.IntType)) {
		t.Error("object ConvertToType")
	}
	if !reflect.DeepEqual(o.Value(), map[string]any{"k": "v"}) {
		t.Errorf("object Value = %v", o.Value())
	}
	checkIterator(t, o.Iterator(), 1)

	l := jv.(*jsonObject).Get(types.String("l")).(*jsonArray)
	if n, err := l.ConvertToNative(reflect.TypeFor[[]any]()); err != nil || !reflect.DeepEqual(n, []any{1.0, "two"}) {
		t.Errorf("array ConvertToNative = %v, %v", n, err)
	}
	if l.ConvertToType(types.ListType) != l || l.ConvertToType(types.TypeType) != types.ListType || !types.IsError(l.ConvertToType(types.IntType)) {
		t.Error("array ConvertToType")
	}
	if l.Contains(types.String("two")) != types.True || l.Get(types.Double(1)) != types.String("two") || !types.IsError(l.Get(types.String("x"))) || !types.IsError(l.Get(types.Int(-1))) {
		t.Error("array Contains/Get")
	}
	if !reflect.DeepEqual(l.Value(), []any{1.0, "two"}) {
		t.Errorf("array Value = %v", l.Value())
	}
	checkIterator(t, l.Iterator(), 2)
	a.reset(nil)
}

func checkIterator(t *testing.T, it traits.Iterator, n int) {
	t.Helper()
	got := 0
	for it.HasNext() == types.True {
		if it.Next() == nil {
			t.Fatal("nil element")
		}
		got++
	}
	if got != n || it.Next() != nil {
		t.Errorf("iterated %d, want %d", got, n)
	}
	if _, err := it.ConvertToNative(reflect.TypeFor[int]()); err == nil {
		t.Error("iterator ConvertToNative")
	}
	if !types.IsError(it.ConvertToType(types.IntType)) || !types.IsError(it.Equal(it)) || it.Type() != types.IteratorType || it.Value() != nil {
		t.Error("iterator ref.Val methods")
	}
}

func TestMatchErrorUnwrap(t *testing.T) {
	inner := errors.New("boom")
	err := error(&MatchError{Route: "r", RecordID: "id", Expr: "x", Err: inner})
	if !errors.Is(err, inner) || err.Error() != `route "r": record "id": cel "x": boom` {
		t.Errorf("%v", err)
	}
}
