package cloudevents_test

import (
	"context"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	ce "github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sdk/go/cloudevents"
)

// sdkEvents are built with the CloudEvents Go SDK: extensions of several
// types, data of several content types, with and without optional
// attributes.
func sdkEvents(t *testing.T) map[string]ce.Event {
	t.Helper()
	when := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	mk := func(id string, f func(e *ce.Event)) ce.Event {
		e := ce.New(ce.CloudEventsVersionV1)
		e.SetID(id)
		e.SetSource("https://shop.example/orders")
		e.SetType("com.example.order.created")
		f(&e)
		if err := e.Validate(); err != nil {
			t.Fatalf("event %s: %v", id, err)
		}
		return e
	}
	set := func(e *ce.Event, ct string, data []byte) {
		e.SetDataContentType(ct)
		e.DataEncoded = data
	}
	return map[string]ce.Event{
		"json-with-everything": mk("e1", func(e *ce.Event) {
			e.SetSubject("order/42")
			e.SetDataSchema("https://shop.example/schemas/order.json")
			e.SetTime(when)
			e.SetExtension("partitionkey", "customer-7")
			e.SetExtension("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			e.SetExtension("priority", int32(5))
			e.SetExtension("urgent", true)
			e.SetExtension("origin", types.URI{URL: mustURL(t, "https://edge.example/eu").URL})
			e.SetExtension("expires", types.Timestamp{Time: when.Add(time.Hour)})
			set(e, "application/json", []byte(`{"order":42,"items":["a","b"],"total":9.5}`))
		}),
		"text": mk("e2", func(e *ce.Event) {
			set(e, "text/plain; charset=utf-8", []byte("héllo, wörld\nsecond line"))
		}),
		"binary": mk("e3", func(e *ce.Event) {
			e.SetTime(when)
			set(e, "application/octet-stream", []byte{0, 0xff, 0xfe, 'a', 0, 0x80})
			e.DataBase64 = true // how SDK users carry bytes in the JSON format
		}),
		"xml": mk("e4", func(e *ce.Event) {
			set(e, "application/xml", []byte(`<order id="42"><total>9.5</total></order>`))
		}),
		"cloudevents-json-suffix": mk("e5", func(e *ce.Event) {
			set(e, "application/vnd.shop+json", []byte(`[1,2,3]`))
		}),
		"no-data": mk("e6", func(e *ce.Event) {
			e.SetSubject("ping")
		}),
	}
}

func mustURL(t *testing.T, s string) *types.URIRef {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return &types.URIRef{URL: *u}
}

// fromSDK reads an SDK event through the SDK's accessors, formatting
// extensions with the SDK's canonical string forms.
func fromSDK(t *testing.T, e ce.Event) cloudevents.Event {
	t.Helper()
	ev := cloudevents.Event{
		ID: e.ID(), Source: e.Source(), SpecVersion: e.SpecVersion(), Type: e.Type(),
		Subject: e.Subject(), DataSchema: e.DataSchema(), DataContentType: e.DataContentType(),
		Time: e.Time(), Data: e.Data(),
	}
	for k, v := range e.Extensions() {
		s, err := types.Format(v)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Extensions == nil {
			ev.Extensions = map[string]string{}
		}
		ev.Extensions[k] = s
	}
	return ev
}

// toSDK builds an SDK event from ours, and has the SDK validate it.
func toSDK(t *testing.T, ev cloudevents.Event) ce.Event {
	t.Helper()
	e := ce.New(ev.SpecVersion)
	e.SetID(ev.ID)
	e.SetSource(ev.Source)
	e.SetType(ev.Type)
	if ev.Subject != "" {
		e.SetSubject(ev.Subject)
	}
	if ev.DataSchema != "" {
		e.SetDataSchema(ev.DataSchema)
	}
	if !ev.Time.IsZero() {
		e.SetTime(ev.Time)
	}
	if ev.DataContentType != "" {
		e.SetDataContentType(ev.DataContentType)
	}
	for k, v := range ev.Extensions {
		e.SetExtension(k, v)
	}
	e.DataEncoded = ev.Data
	if err := e.Validate(); err != nil {
		t.Fatalf("the SDK rejects the converted event: %v", err)
	}
	return e
}

// sdkJSON is the SDK's own JSON encoding of an event, decoded into a map,
// with extensions as strings (the binary mapping does not carry their
// types) and JSON data decoded, for comparisons.
func sdkJSON(t *testing.T, e ce.Event) map[string]any {
	t.Helper()
	for k, v := range e.Extensions() {
		s, _ := types.Format(v)
		e.SetExtension(k, s)
	}
	// Bytes that are not JSON, or not text, go in data_base64 (the SDK
	// otherwise writes any non-JSON data as a string, losing invalid UTF-8).
	if d := e.Data(); d != nil && !jsonType(e.DataContentType()) && !((textType(e.DataContentType()) || strings.HasSuffix(mediaType(e.DataContentType()), "+json")) && utf8.Valid(d)) {
		e.DataBase64 = true
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mediaType(ct string) string {
	mt, _, _ := mime.ParseMediaType(ct)
	return mt
}

func jsonType(ct string) bool {
	mt := mediaType(ct)
	return ct == "" || mt == "application/json" || mt == "text/json"
}

func textType(ct string) bool {
	mt := mediaType(ct)
	return strings.HasPrefix(mt, "text/") || mt == "application/xml" || strings.HasSuffix(mt, "+xml")
}

// TestBinaryRoundTrip: SDK event -> Record -> SDK event is lossless (but for
// extension types), and the Record has exactly the attributes the SDK's
// own binary-mode HTTP encoding produces, with ce_ for ce- (SPEC.md 14).
func TestBinaryRoundTrip(t *testing.T) {
	for name, e := range sdkEvents(t) {
		t.Run(name, func(t *testing.T) {
			rec, err := cloudevents.ToRecord(fromSDK(t, e))
			if err != nil {
				t.Fatal(err)
			}
			checkAgainstHTTPBinary(t, e, rec)
			back, err := cloudevents.FromRecord(roundTripProto(t, rec))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sdkJSON(t, e), sdkJSON(t, toSDK(t, back))); diff != "" {
				t.Fatalf("event changed through a Record (-sent +got):\n%s", diff)
			}
		})
	}
}

// roundTripProto passes a record through its wire form, as it would travel.
func roundTripProto(t *testing.T, r *culvertv1.Record) *culvertv1.Record {
	t.Helper()
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	out := &culvertv1.Record{}
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkAgainstHTTPBinary has the SDK write e as a binary-mode HTTP request
// and compares its ce- headers, Content-Type and body with rec.
func checkAgainstHTTPBinary(t *testing.T, e ce.Event, rec *culvertv1.Record) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1/", nil)
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for k, vs := range req.Header {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "ce-") {
			want[strings.TrimPrefix(lk, "ce-")] = vs[0]
		}
	}
	got := map[string]string{"id": rec.Id}
	for _, h := range rec.Headers {
		got[strings.TrimPrefix(h.Name, "ce_")] = string(h.Value)
	}
	if len(rec.Key) > 0 {
		got["partitionkey"] = string(rec.Key)
	}
	if rec.EventTime != nil {
		got["time"] = rec.EventTime.AsTime().Format(time.RFC3339Nano)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("attributes differ from the SDK's binary HTTP encoding (-SDK +record):\n%s", diff)
	}
	if ct := req.Header.Get("Content-Type"); ct != rec.ContentType {
		t.Errorf("content type: SDK %q, record %q", ct, rec.ContentType)
	}
	var body []byte
	if req.Body != nil {
		body = make([]byte, req.ContentLength)
		if _, err := req.Body.Read(body); err != nil && req.ContentLength > 0 {
			t.Fatal(err)
		}
	}
	if string(body) != string(rec.Value) {
		t.Errorf("data: SDK %q, record value %q", body, rec.Value)
	}
}

// TestRecordRoundTrip: records written by hand from SPEC.md's table become
// events the SDK accepts, with the attributes the table says, and come back
// unchanged.
func TestRecordRoundTrip(t *testing.T) {
	h := func(kv ...string) []*culvertv1.Header {
		var hs []*culvertv1.Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, &culvertv1.Header{Name: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	when := time.Date(2026, 3, 4, 5, 6, 7, 800, time.UTC)
	for _, tc := range []struct {
		name string
		rec  *culvertv1.Record
		want map[string]any // the SDK's JSON of the event
	}{
		{"full", &culvertv1.Record{
			Id: "nats:ORDERS:7", Key: []byte("customer-7"), Value: []byte(`{"n":7}`), ContentType: "application/json",
			EventTime: timestamppb.New(when),
			Headers: h("ce_specversion", "1.0", "ce_source", "/orders", "ce_type", "order.created",
				"ce_subject", "7", "ce_dataschema", "https://s.example/o", "ce_region", "eu", "ce_retries", "3"),
		}, map[string]any{
			"specversion": "1.0", "id": "nats:ORDERS:7", "source": "/orders", "type": "order.created",
			"subject": "7", "dataschema": "https://s.example/o", "time": "2026-03-04T05:06:07.0000008Z",
			"datacontenttype": "application/json", "data": map[string]any{"n": 7.0},
			"partitionkey": "customer-7", "region": "eu", "retries": "3",
		}},
		{"binary-data", &culvertv1.Record{
			Id: "k:t:0:1", Value: []byte{0, 1, 0xff}, ContentType: "application/octet-stream",
			Headers: h("ce_specversion", "1.0", "ce_source", "urn:x", "ce_type", "blob"),
		}, map[string]any{
			"specversion": "1.0", "id": "k:t:0:1", "source": "urn:x", "type": "blob",
			"datacontenttype": "application/octet-stream", "data_base64": "AAH/",
		}},
		{"text-no-time", &culvertv1.Record{
			Id: "x", Value: []byte("plain words"), ContentType: "text/plain",
			Headers: h("ce_specversion", "1.0", "ce_source", "s", "ce_type", "t"),
		}, map[string]any{
			"specversion": "1.0", "id": "x", "source": "s", "type": "t",
			"datacontenttype": "text/plain", "data": "plain words",
		}},
		{"no-data", &culvertv1.Record{
			Id: "x", Headers: h("ce_specversion", "1.0", "ce_source", "s", "ce_type", "t"),
		}, map[string]any{"specversion": "1.0", "id": "x", "source": "s", "type": "t"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := cloudevents.FromRecord(tc.rec)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, sdkJSON(t, toSDK(t, ev))); diff != "" {
				t.Fatalf("event (-want +got):\n%s", diff)
			}
			back, err := cloudevents.ToRecord(ev)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.rec, back, protocmp.Transform()); diff != "" {
				t.Fatalf("record changed through an event (-sent +got):\n%s", diff)
			}
		})
	}
}

// TestStructured: the SDK's JSON format in a record's value is read as the
// same event, and our JSON format is read by the SDK as the same event.
func TestStructured(t *testing.T) {
	for name, e := range sdkEvents(t) {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			rec := &culvertv1.Record{Id: "transport-id", Value: b, ContentType: "application/cloudevents+json; charset=utf-8"}
			ours, err := cloudevents.FromRecord(rec)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sdkJSON(t, e), sdkJSON(t, toSDK(t, ours))); diff != "" {
				t.Fatalf("SDK JSON -> our event (-SDK +ours):\n%s", diff)
			}
			out, err := cloudevents.ToStructuredRecord(fromSDK(t, e))
			if err != nil {
				t.Fatal(err)
			}
			if out.ContentType != cloudevents.StructuredContentType || out.Id != e.ID() {
				t.Fatalf("structured record: content type %q, id %q", out.ContentType, out.Id)
			}
			var back ce.Event
			if err := json.Unmarshal(out.Value, &back); err != nil {
				t.Fatalf("the SDK cannot read our JSON format: %v\n%s", err, out.Value)
			}
			if diff := cmp.Diff(sdkJSON(t, e), sdkJSON(t, back)); diff != "" {
				t.Fatalf("our JSON -> SDK event (-sent +got):\n%s", diff)
			}
		})
	}
}

func TestNotAnEvent(t *testing.T) {
	base := func() *culvertv1.Record {
		return &culvertv1.Record{Id: "r1", Headers: []*culvertv1.Header{
			{Name: "ce_specversion", Value: []byte("1.0")}, {Name: "ce_source", Value: []byte("s")}, {Name: "ce_type", Value: []byte("t")},
		}}
	}
	for _, tc := range []struct {
		name   string
		change func(r *culvertv1.Record)
		want   string
	}{
		{"no type", func(r *culvertv1.Record) { r.Headers = r.Headers[:2] }, `record "r1" is not a CloudEvent: it lacks header ce_type`},
		{"no id", func(r *culvertv1.Record) { r.Id = "" }, "lacks the record id"},
		{"version 0.3", func(r *culvertv1.Record) { r.Headers[0].Value = []byte("0.3") }, `specversion "0.3"`},
		{"key not UTF-8", func(r *culvertv1.Record) { r.Key = []byte{0xff} }, "key is not valid UTF-8"},
		{"repeated attribute", func(r *culvertv1.Record) {
			r.Headers = append(r.Headers, &culvertv1.Header{Name: "ce_source", Value: []byte("again")})
		}, `"ce_source" appears more than once`},
		{"bad name", func(r *culvertv1.Record) {
			r.Headers = append(r.Headers, &culvertv1.Header{Name: "ce_Trace-Id", Value: []byte("x")})
		}, "only a-z and 0-9"},
		{"structured garbage", func(r *culvertv1.Record) {
			r.ContentType, r.Value = cloudevents.StructuredContentType, []byte("{")
		}, "structured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			tc.change(r)
			_, err := cloudevents.FromRecord(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Headers without the ce_ prefix are transport headers, not attributes.
	r := base()
	r.Headers = append(r.Headers, &culvertv1.Header{Name: "traceparent", Value: []byte("x")})
	ev, err := cloudevents.FromRecord(r)
	if err != nil || len(ev.Extensions) != 0 {
		t.Fatalf("got %+v, %v; want no extensions", ev, err)
	}
}

// FuzzFromRecord: whatever record FromRecord accepts converts back to a
// record that gives the same event.
func FuzzFromRecord(f *testing.F) {
	for _, r := range []*culvertv1.Record{
		{Id: "x", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain", Headers: []*culvertv1.Header{
			{Name: "ce_specversion", Value: []byte("1.0")}, {Name: "ce_source", Value: []byte("s")}, {Name: "ce_type", Value: []byte("t")}, {Name: "ce_ext", Value: []byte("1")}}},
		{Id: "y", ContentType: "application/cloudevents+json", Value: []byte(`{"specversion":"1.0","id":"a","source":"b","type":"c","data":{"x":1},"n":3}`)},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &culvertv1.Record{}
		if proto.Unmarshal(b, r) != nil {
			return
		}
		ev, err := cloudevents.FromRecord(r)
		if err != nil {
			return
		}
		for _, to := range []func(cloudevents.Event) (*culvertv1.Record, error){cloudevents.ToRecord, cloudevents.ToStructuredRecord} {
			r2, err := to(ev)
			if err != nil {
				t.Fatalf("FromRecord accepted %v as %+v, which does not convert back: %v", r, ev, err)
			}
			ev2, err := cloudevents.FromRecord(r2)
			if err != nil {
				t.Fatalf("%v does not convert again: %v", r2, err)
			}
			if !equivalent(ev, ev2) {
				t.Fatalf("event changed: %+v then %+v", ev, ev2)
			}
		}
	})
}

// equivalent compares events, treating JSON data by value.
func equivalent(a, b cloudevents.Event) bool {
	da, db := a.Data, b.Data
	a.Data, b.Data = nil, nil
	if !cmp.Equal(a, b) {
		return false
	}
	if string(da) == string(db) {
		return true
	}
	var x, y any
	return json.Unmarshal(da, &x) == nil && json.Unmarshal(db, &y) == nil && cmp.Equal(x, y)
}
