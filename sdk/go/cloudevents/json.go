package cloudevents

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// isJSON reports whether data of a datacontenttype is written as a JSON
// value in the JSON format: absent (the format's default),
// application/json or text/json. Types with a +json suffix are written as
// strings, as the CloudEvents Go SDK writes and reads them (its reader
// refuses a JSON value there); UnmarshalJSON accepts both.
func isJSON(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "text/json"
}

// isJSONSuffix reports a +json media type.
func isJSONSuffix(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && strings.HasSuffix(mt, "+json")
}

// MarshalJSON encodes e in the CloudEvents JSON format. Data that is JSON
// (by its content type) and valid goes in "data" as it is; other data that
// is valid UTF-8 and textual goes in "data" as a string; anything else goes
// in "data_base64". Extensions are strings.
func MarshalJSON(e Event) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevents: event %q: %w", e.ID, err)
	}
	var b bytes.Buffer
	b.WriteByte('{')
	field := func(name string, raw []byte) {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		n, _ := json.Marshal(name)
		b.Write(n)
		b.WriteByte(':')
		b.Write(raw)
	}
	str := func(name, v string) {
		raw, _ := json.Marshal(v)
		field(name, raw)
	}
	str("specversion", e.SpecVersion)
	str("id", e.ID)
	str("source", e.Source)
	str("type", e.Type)
	if e.Subject != "" {
		str("subject", e.Subject)
	}
	if e.DataSchema != "" {
		str("dataschema", e.DataSchema)
	}
	if e.DataContentType != "" {
		str("datacontenttype", e.DataContentType)
	}
	if !e.Time.IsZero() {
		str("time", e.Time.UTC().Format(time.RFC3339Nano))
	}
	names := make([]string, 0, len(e.Extensions))
	for n := range e.Extensions {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		str(n, e.Extensions[n])
	}
	switch {
	case e.Data == nil:
	case isJSON(e.DataContentType) && json.Valid(e.Data):
		var c bytes.Buffer
		if err := json.Compact(&c, e.Data); err != nil {
			return nil, err
		}
		field("data", c.Bytes())
	case !isJSON(e.DataContentType) && (textual(e.DataContentType) || isJSONSuffix(e.DataContentType)) && utf8.Valid(e.Data):
		str("data", string(e.Data))
	default:
		str("data_base64", base64.StdEncoding.EncodeToString(e.Data))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// textual reports whether a content type is text that a JSON string can
// carry: text/*, or XML.
func textual(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return strings.HasPrefix(mt, "text/") || mt == "application/xml" || strings.HasSuffix(mt, "+xml")
}

// UnmarshalJSON decodes one event in the CloudEvents JSON format. JSON data
// is kept as its JSON text; string data of a non-JSON content type
// (including +json types) becomes the string's bytes, and other JSON values
// of a +json type their JSON text; data_base64 is decoded. Extension values that are
// JSON numbers or booleans become their canonical strings.
func UnmarshalJSON(b []byte) (Event, error) {
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return Event{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if m == nil {
		return Event{}, errors.New("not a JSON object: null")
	}
	var e Event
	str := func(name string) (string, error) {
		raw, ok := m[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("attribute %s: want a string, got %s", name, raw)
		}
		return s, nil
	}
	var errs []error
	for _, a := range []struct {
		name string
		dst  *string
	}{{"specversion", &e.SpecVersion}, {"id", &e.ID}, {"source", &e.Source}, {"type", &e.Type}, {"subject", &e.Subject}, {"dataschema", &e.DataSchema}, {"datacontenttype", &e.DataContentType}} {
		v, err := str(a.name)
		if err != nil {
			errs = append(errs, err)
		}
		*a.dst = v
	}
	if ts, err := str("time"); err != nil {
		errs = append(errs, err)
	} else if ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			errs = append(errs, fmt.Errorf("attribute time: %w", err))
		}
		e.Time = t
	}
	data, hasData := m["data"]
	data64, hasData64 := m["data_base64"]
	switch {
	case hasData && hasData64:
		errs = append(errs, errors.New("both data and data_base64 are present"))
	case hasData64:
		var s string
		if err := json.Unmarshal(data64, &s); err != nil {
			errs = append(errs, fmt.Errorf("data_base64: want a string, got %s", data64))
			break
		}
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("data_base64: %w", err))
		}
		e.Data = d
		if e.Data == nil {
			e.Data = []byte{}
		}
	case hasData && string(data) == "null":
	case hasData:
		var s string
		if !isJSON(e.DataContentType) && json.Unmarshal(data, &s) == nil {
			e.Data = []byte(s)
		} else {
			e.Data = []byte(data)
		}
	}
	for name, raw := range m {
		if slices.Contains(reserved, name) {
			continue
		}
		if err := checkName(name); err != nil {
			errs = append(errs, err)
			continue
		}
		v, err := canonical(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("extension %s: %w", name, err))
			continue
		}
		if e.Extensions == nil {
			e.Extensions = map[string]string{}
		}
		e.Extensions[name] = v
	}
	if err := errors.Join(errs...); err != nil {
		return Event{}, err
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// canonical returns the canonical string of an extension's JSON value.
func canonical(raw json.RawMessage) (string, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case json.Number:
		i, err := strconv.ParseInt(string(x), 10, 32)
		if err != nil {
			return "", fmt.Errorf("%s is not a CloudEvents Integer (32-bit)", x)
		}
		return strconv.FormatInt(i, 10), nil
	}
	return "", fmt.Errorf("value %s is not a string, number or boolean", raw)
}
