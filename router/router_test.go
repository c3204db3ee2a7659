package router

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// rec builds a record on subject with alternating header names and values.
func rec(subject string, headers ...string) *culvertv1.Record {
	r := &culvertv1.Record{
		Id:     "nats:ORDERS:42",
		Source: &culvertv1.Position{Connector: "jetstream", Stream: "ORDERS", Subject: subject, Partition: "3", Offset: 42},
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: headers[i], Value: []byte(headers[i+1])})
	}
	return r
}

func tagsRec() *culvertv1.Record { return jsonRec("application/json", `{"tags": ["a", "b", "c"]}`) }

func jsonRec(ct, value string) *culvertv1.Record {
	r := rec("orders.created")
	r.ContentType = ct
	r.Value = []byte(value)
	return r
}

func match(t *testing.T, r *Router, record *culvertv1.Record) []int {
	t.Helper()
	got, err := r.Match(record, nil)
	if err != nil {
		t.Fatalf("Match: %v", err)
	}
	return got
}

func mustNew(t testing.TB, specs ...Spec) *Router {
	t.Helper()
	r, err := New(specs)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestMatchSubjects(t *testing.T) {
	r := mustNew(t,
		Spec{Name: "any"},
		Spec{Name: "orders", Subjects: []string{"orders.>"}},
		Spec{Name: "created", Subjects: []string{"*.created", "audit.>"}},
		Spec{Name: "exact", Subjects: []string{"orders.created"}},
	)
	tests := []struct {
		subject string
		want    []int
	}{
		{"orders.created", []int{0, 1, 2, 3}},
		{"orders.deleted", []int{0, 1}},
		{"users.created", []int{0, 2}},
		{"audit.x.y", []int{0, 2}},
		{"orders", []int{0}},
		{"", []int{0}},
	}
	for _, tt := range tests {
		if got := match(t, r, rec(tt.subject)); !slices.Equal(got, tt.want) {
			t.Errorf("subject %q: got %v, want %v", tt.subject, got, tt.want)
		}
	}
	// A record without a source has the empty subject.
	if got := match(t, r, &culvertv1.Record{}); !slices.Equal(got, []int{0}) {
		t.Errorf("no source: got %v", got)
	}
	if got := match(t, r, nil); !slices.Equal(got, []int{0}) {
		t.Errorf("nil record: got %v", got)
	}
}

func TestMatchHeaders(t *testing.T) {
	r := mustNew(t,
		Spec{Name: "type", Headers: map[string]string{"X-Type": "order"}},
		Spec{Name: "both", Headers: map[string]string{"x-type": "order", "x-region": "eu"}},
		Spec{Name: "empty-value", Headers: map[string]string{"x-flag": ""}},
	)
	tests := []struct {
		name    string
		headers []string
		want    []int
	}{
		{"none", nil, nil},
		{"exact", []string{"X-Type", "order"}, []int{0}},
		{"name case-insensitive", []string{"X-TYPE", "order"}, []int{0}},
		{"value case-sensitive", []string{"x-type", "Order"}, nil},
		{"both", []string{"x-type", "order", "X-Region", "eu"}, []int{0, 1}},
		{"one of two", []string{"x-region", "eu"}, nil},
		{"repeated name, later matches", []string{"x-type", "user", "X-Type", "order"}, []int{0}},
		{"empty value present", []string{"x-flag", ""}, []int{2}},
		{"prefix is not equal", []string{"x-type", "orders"}, nil},
	}
	for _, tt := range tests {
		if got := match(t, r, rec("s", tt.headers...)); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestMatchCEL(t *testing.T) {
	base := func() *culvertv1.Record {
		r := rec("orders.eu.created", "X-Type", "order", "x-tag", "a", "X-TAG", "b")
		r.Key = []byte("cust-7")
		r.Value = []byte(`{"total": 12.5, "items": [{"sku": "A"}], "customer": {"tier": "gold"}, "n": 3}`)
		r.ContentType = "application/json"
		r.EventTime = timestamppb.New(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
		return r
	}
	tests := []struct {
		name string
		expr string
		rec  func() *culvertv1.Record
		want bool
		err  string // substring of a runtime error
	}{
		{"id", `id.startsWith("nats:")`, base, true, ""},
		{"key bytes", `key == b"cust-7"`, base, true, ""},
		{"key_string", `key_string.startsWith("cust-")`, base, true, ""},
		{"value bytes", `size(value) > 10`, base, true, ""},
		{"content_type", `content_type == "application/json"`, base, true, ""},
		{"header lower-cased", `headers["x-type"] == "order"`, base, true, ""},
		{"header select", `headers.x_missing == "order"`, base, false, "no such key"},
		{"header in", `"x-type" in headers && !("X-Type" in headers)`, base, true, ""},
		{"header first value", `headers["x-tag"] == "a"`, base, true, ""},
		{"header_values", `header_values["x-tag"] == ["a", "b"]`, base, true, ""},
		{"header size", `size(headers) == 2 && size(header_values) == 2`, base, true, ""},
		{"header exists", `headers.exists(k, k == "x-tag")`, base, true, ""},
		{"header all keys lower", `headers.all(k, k == k.lowerAscii())`, base, true, ""},
		{"header equality", `headers == {"x-type": "order", "x-tag": "a"}`, base, true, ""},
		{"has header", `has(headers.nope)`, base, false, ""},
		{"source", `source.subject == "orders.eu.created" && source.stream == "ORDERS" && source.connector == "jetstream" && source.partition == "3"`, base, true, ""},
		{"source offset uint", `source.offset == 42u && source.offset > 41`, base, true, ""},
		{"no source", `source.subject == ""`, func() *culvertv1.Record { return &culvertv1.Record{} }, true, ""},
		{"event_time", `event_time > timestamp("2024-01-01T00:00:00Z") && event_time.getFullYear() == 2024`, base, true, ""},
		{"no event_time is epoch", `event_time == timestamp(0)`, func() *culvertv1.Record { return &culvertv1.Record{} }, true, ""},
		{"json field", `json.total > 10`, base, true, ""},
		{"json int compare", `json.n == 3`, base, true, ""},
		{"json nested", `json.customer.tier == "gold" && json.items[0].sku == "A"`, base, true, ""},
		{"json exists", `json.items.exists(i, i.sku == "A")`, base, true, ""},
		{"json has", `has(json.customer) && !has(json.nope)`, base, true, ""},
		{"json optional", `json.?nope.orValue("x") == "x"`, base, true, ""},
		{"json missing field", `json.nope == 1`, base, false, "no such key"},
		{"json cloudevents", `json.type == "x"`, func() *culvertv1.Record {
			return jsonRec("application/cloudevents+json; charset=utf-8", `{"type":"x"}`)
		}, true, ""},
		{"json text/json", `json.type == "x"`, func() *culvertv1.Record { return jsonRec("Text/JSON", `{"type":"x"}`) }, true, ""},
		{"json sniffed object", `json.type == "x"`, func() *culvertv1.Record { return jsonRec("", ` {"type":"x"}`) }, true, ""},
		{"json sniffed array", `json[1] == 2`, func() *culvertv1.Record { return jsonRec("", `[1,2]`) }, true, ""},
		{"json top-level scalar", `json == 5`, func() *culvertv1.Record { return jsonRec("application/json", `5`) }, true, ""},
		{"json not sniffed scalar", `json == null`, func() *culvertv1.Record { return jsonRec("", `5`) }, true, ""},
		{"json not sniffed invalid", `json == null`, func() *culvertv1.Record { return jsonRec("", `{nope`) }, true, ""},
		{"json other content type", `json == null`, func() *culvertv1.Record { return jsonRec("text/plain", `{"type":"x"}`) }, true, ""},
		{"json guard", `json != null && json.type == "x"`, func() *culvertv1.Record { return jsonRec("text/plain", "hello") }, false, ""},
		{"json invalid declared", `json.type == "x"`, func() *culvertv1.Record { return jsonRec("application/json", "hello") }, false, "not valid JSON"},
		{"json unguarded on text", `json.type == "x"`, func() *culvertv1.Record { return jsonRec("text/plain", "hello") }, false, "json is null"},
		{"json array size and index", `size(json.items) == 1 && json.items[0].sku == "A" && json.items[0u].sku == "A"`, base, true, ""},
		{"json array out of range", `json.items[3].sku == "A"`, base, false, "index out of bounds"},
		{"json array in", `"b" in json.tags && !("z" in json.tags)`, tagsRec, true, ""},
		{"json array map", `json.tags.map(t, t.upperAscii()) == ["A", "B", "C"]`, tagsRec, true, ""},
		{"json array filter", `json.tags.filter(t, t > "a").size() == 2`, tagsRec, true, ""},
		{"json array concat", `json.tags + ["d"] == ["a", "b", "c", "d"]`, tagsRec, true, ""},
		{"json array join", `json.tags.join("-") == "a-b-c"`, tagsRec, true, ""},
		{"json array sort", `sets.contains(json.tags, ["c"]) && lists.range(size(json.tags)) == [0, 1, 2]`, tagsRec, true, ""},
		{"json array equal", `json.tags == ["a", "b", "c"] && ["a", "b", "c"] == json.tags`, tagsRec, true, ""},
		{"json object equal", `json.customer == {"tier": "gold"} && {"tier": "gold"} == json.customer`, base, true, ""},
		{"json object size", `size(json.customer) == 1 && size(json) == 4`, base, true, ""},
		{"json object keys", `json.customer.all(k, k == "tier")`, base, true, ""},
		{"json duplicate key last wins", `json.a == 2 && size(json) == 1`, func() *culvertv1.Record { return jsonRec("application/json", `{"a":1,"a":2}`) }, true, ""},
		{"json escaped key and value", `json["a\"b"] == "x\ny" && json["é"] == "\u00e9"`, func() *culvertv1.Record { return jsonRec("application/json", `{"a\"b": "x\ny", "\u00e9": "\u00e9"}`) }, true, ""},
		{"json types", `json.t == true && json.f == false && json.z == null && json.s == "s" && json.d == -1.5e2 && type(json.d) == double`, func() *culvertv1.Record {
			return jsonRec("application/json", `{"t": true, "f": false, "z": null, "s": "s", "d": -1.5e2}`)
		}, true, ""},
		{"json number overflow", `json.big > 1.0`, func() *culvertv1.Record { return jsonRec("application/json", `{"big": 1e999}`) }, false, "cannot be represented"},
		{"json nested arrays", `json[1][0] == 2 && size(json[1]) == 2`, func() *culvertv1.Record { return jsonRec("application/json", ` [[1], [2, [3]]] `) }, true, ""},
		{"json string top-level", `json == "hi"`, func() *culvertv1.Record { return jsonRec("application/json", `"hi"`) }, true, ""},
		{"json empty value declared", `json == null`, func() *culvertv1.Record { return jsonRec("application/json", ``) }, false, "not valid JSON"},
		{"value as string", `string(value).contains("hello")`, func() *culvertv1.Record { return jsonRec("text/plain", "oh hello") }, true, ""},
		{"strings ext", `source.subject.split(".")[1] == "eu" && "%s-%d".format(["a", 1]) == "a-1"`, base, true, ""},
		{"base64", `base64.encode(key) == "Y3VzdC03"`, base, true, ""},
		{"math ext", `math.greatest(1, 2) == 2`, base, true, ""},
		{"matches", `source.subject.matches("^orders\\.[a-z]+\\.created$")`, base, true, ""},
		{"constant", `1 + 1 == 2`, base, true, ""},
		{"false", `false`, base, false, ""},
		{"short-circuit avoids error", `false && json.nope == 1`, base, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckCEL(tt.expr); err != nil {
				t.Fatalf("CheckCEL: %v", err)
			}
			r := mustNew(t, Spec{Name: "r", CEL: tt.expr})
			record := tt.rec()
			got, err := r.Match(record, nil)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Match: %v", err)
				}
			} else {
				var me *MatchError
				if !errors.As(err, &me) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Match error = %v, want *MatchError containing %q", err, tt.err)
				}
				if me.Route != "r" || me.Index != 0 || me.RecordID != record.GetId() || me.Expr != tt.expr {
					t.Errorf("MatchError fields = %+v", me)
				}
				if !strings.Contains(err.Error(), `route "r"`) || !strings.Contains(err.Error(), record.GetId()) {
					t.Errorf("error does not name route and record: %v", err)
				}
			}
			if (len(got) == 1) != tt.want {
				t.Errorf("matched = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchFanOut(t *testing.T) {
	r := mustNew(t,
		Spec{Name: "all-orders", Subjects: []string{"orders.>"}},
		Spec{Name: "eu", Subjects: []string{"orders.eu.*"}, Headers: map[string]string{"x-type": "order"}},
		Spec{Name: "big", Subjects: []string{"orders.>"}, CEL: `json.total > 100`},
		Spec{Name: "users", Subjects: []string{"users.>"}},
		Spec{Name: "broken", CEL: `json.missing == 1`},
		Spec{Name: "gold", CEL: `json.tier == "gold"`},
	)
	if r.Len() != 6 || r.Name(2) != "big" {
		t.Fatalf("Len = %d, Name(2) = %q", r.Len(), r.Name(2))
	}
	record := rec("orders.eu.created", "X-Type", "order")
	record.ContentType = "application/json"
	record.Value = []byte(`{"total": 250, "tier": "gold"}`)
	dst := make([]int, 0, 8)
	dst = append(dst, 99) // Match appends
	got, err := r.Match(record, dst)
	if want := []int{99, 0, 1, 2, 5}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	var me *MatchError
	if !errors.As(err, &me) || me.Route != "broken" || me.Index != 4 {
		t.Errorf("err = %v, want MatchError for route broken", err)
	}

	// Two failing routes: both reported.
	r2 := mustNew(t, Spec{Name: "a", CEL: `json.x == 1`}, Spec{Name: "b", CEL: `json.y == 1`}, Spec{Name: "c"})
	got, err = r2.Match(record, nil)
	if !slices.Equal(got, []int{2}) || err == nil || !strings.Contains(err.Error(), `route "a"`) || !strings.Contains(err.Error(), `route "b"`) {
		t.Errorf("got %v, %v", got, err)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want []string
	}{
		{"bad subject", Spec{Name: "r1", Subjects: []string{"ok", "a.>.b"}}, []string{`route "r1"`, "match.subjects[1]", `"a.>.b"`, "last token"}},
		{"unnamed", Spec{Subjects: []string{""}}, []string{"route #2", "match.subjects[0]", "empty"}},
		{"empty header name", Spec{Name: "h", Headers: map[string]string{" ": "x"}}, []string{`route "h"`, "match.headers", "empty header name"}},
		{"cel syntax", Spec{Name: "c", CEL: `json.x ==`}, []string{`route "c"`, "match.cel", `json.x ==`, "cel:1:"}},
		{"cel unknown var", Spec{Name: "c", CEL: `subject == "x"`}, []string{"undeclared reference to 'subject'", "variables: id, key"}},
		{"cel not bool", Spec{Name: "c", CEL: `id + "x"`}, []string{"result has type string, want bool"}},
		{"cel dyn", Spec{Name: "c", CEL: `json.active`}, []string{"want bool", `json.active == true`}},
		{"cel bad field", Spec{Name: "c", CEL: `source.subjet == "x"`}, []string{"undefined field 'subjet'"}},
		{"cel wrong types", Spec{Name: "c", CEL: `id == 1`}, []string{"no matching overload"}},
		{"cel blank", Spec{Name: "c", CEL: "  "}, []string{"expression is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New([]Spec{{Name: "fine"}, tt.spec})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// All problems are reported at once.
	_, err := New([]Spec{{Name: "a", Subjects: []string{"a..b"}}, {Name: "b", CEL: "1"}})
	if err == nil || !strings.Contains(err.Error(), `route "a"`) || !strings.Contains(err.Error(), `route "b"`) {
		t.Errorf("err = %v", err)
	}
}

func TestCheckCEL(t *testing.T) {
	for _, ok := range []string{`true`, `json.a == 1`, `headers["x"] == "y" || key_string == ""`, `has(json.a) && json.a.b in ["x"]`} {
		if err := CheckCEL(ok); err != nil {
			t.Errorf("CheckCEL(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{``, `1`, `json`, `nope`, `json.encode(1) == ""`, `(`} {
		if err := CheckCEL(bad); err == nil {
			t.Errorf("CheckCEL(%q) = nil, want error", bad)
		}
	}
}

func TestMatchReferencedVars(t *testing.T) {
	env, err := newCELEnv()
	if err != nil {
		t.Fatal(err)
	}
	for expr, want := range map[string]varSet{
		`true`:                               0,
		`json.a == 1 && headers["x"] == "y"`: 1<<varJSON | 1<<varHeaders,
		`source.subject == "a"`:              1 << varSource,
	} {
		_, got, err := compileCEL(env, expr)
		if err != nil || got != want {
			t.Errorf("%s: vars = %b, %v; want %b", expr, got, err, want)
		}
	}
}

func TestMatchParsesJSONOnce(t *testing.T) {
	r := mustNew(t, Spec{CEL: `json.a == 1`}, Spec{CEL: `json.b == 2`}, Spec{CEL: `json.a + json.b == 3.0`})
	record := jsonRec("application/json", `{"a": 1, "b": 2}`)
	got := match(t, r, record)
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("got %v", got)
	}
	// Count parses through the activation directly.
	env, _ := newCELEnv()
	a := newActivation(env.CELTypeAdapter(), &culvertv1.Position{})
	a.reset(record)
	v1, _ := a.ResolveName("json")
	v2, _ := a.ResolveName("json")
	if v1 != v2 {
		t.Error("json resolved twice")
	}
	if a.have != 1<<varJSON {
		t.Errorf("have = %b", a.have)
	}
	a.reset(nil)
	if a.have != 0 || a.vals[varJSON] != nil || a.rec != nil {
		t.Error("reset did not clear the activation")
	}
}

func TestMatchNoAllocs(t *testing.T) {
	r := mustNew(t,
		Spec{Name: "a", Subjects: []string{"orders.*.created", "x.>"}},
		Spec{Name: "b", Subjects: []string{"orders.>"}, Headers: map[string]string{"X-Type": "order", "x-region": "eu"}},
		Spec{Name: "c", Subjects: []string{"users.>"}, CEL: `json.a == 1`},
	)
	record := rec("orders.eu.created", "x-type", "order", "X-Region", "eu")
	dst := make([]int, 0, 4)
	n := testing.AllocsPerRun(100, func() {
		var err error
		dst, err = r.Match(record, dst[:0])
		if err != nil || len(dst) != 2 {
			t.Fatalf("%v %v", dst, err)
		}
	})
	if n != 0 {
		t.Errorf("allocs = %v, want 0", n)
	}
}

func TestMatchConcurrent(t *testing.T) {
	r := mustNew(t,
		Spec{Name: "a", Subjects: []string{"orders.>"}, CEL: `int(json.n) % 2 == 0`},
		Spec{Name: "b", CEL: `headers["x-i"] == string(int(json.n))`},
	)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				n := g*1000 + i
				record := rec("orders.x", "x-i", fmt.Sprint(n))
				record.ContentType = "application/json"
				record.Value = fmt.Appendf(nil, `{"n": %d}`, n)
				got, err := r.Match(record, nil)
				want := []int{1}
				if n%2 == 0 {
					want = []int{0, 1}
				}
				if err != nil || !slices.Equal(got, want) {
					t.Errorf("n=%d: got %v, %v; want %v", n, got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
