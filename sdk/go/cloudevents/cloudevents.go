// Package cloudevents maps CloudEvents 1.0 onto Culvert records and back,
// as proto/SPEC.md section 14 defines: in binary form, attributes travel as
// "ce_<name>" headers and the data is the value, with id, time,
// datacontenttype and the partitionkey extension in Record's own fields; in
// structured form, the whole event is the value, in the CloudEvents JSON
// format (content type application/cloudevents+json).
//
// It is written from the two specifications alone and has no dependency on
// a CloudEvents library; its tests check it against the CloudEvents Go SDK.
// A function converts with FromRecord and ToRecord:
//
//	ev, err := cloudevents.FromRecord(rec)  // binary or structured
//	ev.Extensions["checked"] = "true"
//	out, err := cloudevents.ToRecord(ev)    // binary
package cloudevents

import (
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// SpecVersion is the only CloudEvents version this package maps.
const SpecVersion = "1.0"

// HeaderPrefix starts the name of every attribute header.
const HeaderPrefix = "ce_"

// StructuredContentType marks a record whose value is a whole event in the
// CloudEvents JSON format.
const StructuredContentType = "application/cloudevents+json"

// Event is one CloudEvent. Optional attributes are empty (Time: zero) when
// absent. Extension values are in their canonical string form (SPEC.md 14):
// a Boolean as true or false, an Integer in decimal, a Timestamp in RFC
// 3339, Binary in base64.
type Event struct {
	ID              string
	Source          string
	SpecVersion     string
	Type            string
	Subject         string
	DataSchema      string
	DataContentType string
	Time            time.Time
	Extensions      map[string]string
	// Data is the event's data, as bytes; nil means the event has none.
	Data []byte
}

// context attributes: their names cannot be used by extensions.
var reserved = []string{"id", "source", "specversion", "type", "subject", "dataschema", "time", "datacontenttype", "data", "data_base64"}

// Validate checks the rules of CloudEvents 1.0 that this mapping relies on.
func (e *Event) Validate() error {
	var errs []error
	if e.SpecVersion != SpecVersion {
		errs = append(errs, fmt.Errorf("specversion %q: only %q is supported", e.SpecVersion, SpecVersion))
	}
	for _, a := range []struct{ name, v string }{{"id", e.ID}, {"source", e.Source}, {"type", e.Type}} {
		if a.v == "" {
			errs = append(errs, fmt.Errorf("required attribute %s is empty", a.name))
		}
	}
	for name := range e.Extensions {
		if err := checkName(name); err != nil {
			errs = append(errs, err)
		} else if slices.Contains(reserved, name) {
			errs = append(errs, fmt.Errorf("extension %q has the name of a context attribute", name))
		}
	}
	return errors.Join(errs...)
}

// checkName enforces CloudEvents' attribute names: a-z and 0-9 only.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty attribute name")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return fmt.Errorf("attribute name %q: CloudEvents allows only a-z and 0-9", name)
		}
	}
	return nil
}

// ToRecord returns the binary form of e: id, time, datacontenttype and the
// partitionkey extension in their Record fields, the other attributes as
// ce_ headers (required ones first, then subject, dataschema and the
// extensions by name), and the data as the value.
func ToRecord(e Event) (*culvertv1.Record, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevents: event %q: %w", e.ID, err)
	}
	r := &culvertv1.Record{Id: e.ID, Value: e.Data, ContentType: e.DataContentType}
	if !e.Time.IsZero() {
		r.EventTime = timestamppb.New(e.Time)
	}
	add := func(name, v string) {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: HeaderPrefix + name, Value: []byte(v)})
	}
	add("specversion", e.SpecVersion)
	add("source", e.Source)
	add("type", e.Type)
	if e.Subject != "" {
		add("subject", e.Subject)
	}
	if e.DataSchema != "" {
		add("dataschema", e.DataSchema)
	}
	names := make([]string, 0, len(e.Extensions))
	for n := range e.Extensions {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if n == "partitionkey" {
			r.Key = []byte(e.Extensions[n])
			continue
		}
		add(n, e.Extensions[n])
	}
	return r, nil
}

// FromRecord returns the event a record carries: structured when its
// content type is application/cloudevents+json, binary otherwise. A binary
// record is an event when it has an id and the headers ce_specversion,
// ce_source and ce_type; nothing missing is invented. Headers without the
// ce_ prefix are not attributes and are left out; ce_id, ce_time,
// ce_datacontenttype and ce_partitionkey are ignored, since the record's
// fields are authoritative.
func FromRecord(r *culvertv1.Record) (Event, error) {
	if isStructured(r.GetContentType()) {
		e, err := UnmarshalJSON(r.GetValue())
		if err != nil {
			return Event{}, fmt.Errorf("cloudevents: record %q (structured): %w", r.GetId(), err)
		}
		return e, nil
	}
	e := Event{ID: r.GetId(), DataContentType: r.GetContentType()}
	if len(r.GetValue()) > 0 {
		e.Data = r.GetValue()
	}
	if t := r.GetEventTime(); t != nil {
		e.Time = t.AsTime()
	}
	if k := r.GetKey(); len(k) > 0 {
		if !utf8.Valid(k) {
			return Event{}, fmt.Errorf("cloudevents: record %q: its key is not valid UTF-8, so it has no partitionkey form", r.GetId())
		}
		e.Extensions = map[string]string{"partitionkey": string(k)}
	}
	seen := map[string]bool{}
	for _, h := range r.GetHeaders() {
		name, ok := strings.CutPrefix(h.GetName(), HeaderPrefix)
		if !ok {
			continue
		}
		if err := checkName(name); err != nil {
			return Event{}, fmt.Errorf("cloudevents: record %q: header %q: %w", r.GetId(), h.GetName(), err)
		}
		if seen[name] {
			return Event{}, fmt.Errorf("cloudevents: record %q: header %q appears more than once", r.GetId(), h.GetName())
		}
		seen[name] = true
		if !utf8.Valid(h.GetValue()) {
			return Event{}, fmt.Errorf("cloudevents: record %q: header %q is not valid UTF-8", r.GetId(), h.GetName())
		}
		v := string(h.GetValue())
		switch name {
		case "id", "time", "datacontenttype", "partitionkey":
			// the record's fields are authoritative
		case "specversion":
			e.SpecVersion = v
		case "source":
			e.Source = v
		case "type":
			e.Type = v
		case "subject":
			e.Subject = v
		case "dataschema":
			e.DataSchema = v
		case "data", "data_base64":
			return Event{}, fmt.Errorf("cloudevents: record %q: header %q: the data is the value, not a header", r.GetId(), h.GetName())
		default:
			if e.Extensions == nil {
				e.Extensions = map[string]string{}
			}
			e.Extensions[name] = v
		}
	}
	var missing []string
	for _, a := range []struct{ name, v string }{{"the record id", e.ID}, {"header ce_specversion", e.SpecVersion}, {"header ce_source", e.Source}, {"header ce_type", e.Type}} {
		if a.v == "" {
			missing = append(missing, a.name)
		}
	}
	if len(missing) > 0 {
		return Event{}, fmt.Errorf("cloudevents: record %q is not a CloudEvent: it lacks %s", r.GetId(), strings.Join(missing, ", "))
	}
	if err := e.Validate(); err != nil {
		return Event{}, fmt.Errorf("cloudevents: record %q: %w", r.GetId(), err)
	}
	return e, nil
}

// ToStructuredRecord returns the structured form of e: the event in the
// JSON format as the value, content type application/cloudevents+json, and
// the record's id, key and event time set from the event as in the binary
// form, so that routing and dispatch see them.
func ToStructuredRecord(e Event) (*culvertv1.Record, error) {
	b, err := MarshalJSON(e)
	if err != nil {
		return nil, err
	}
	r := &culvertv1.Record{Id: e.ID, Value: b, ContentType: StructuredContentType}
	if !e.Time.IsZero() {
		r.EventTime = timestamppb.New(e.Time)
	}
	if k, ok := e.Extensions["partitionkey"]; ok {
		r.Key = []byte(k)
	}
	return r, nil
}

func isStructured(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == StructuredContentType
}
