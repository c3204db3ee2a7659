package pipetest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// protoTypes finds message types among the test file's .proto files.
type protoTypes struct {
	files linker.Files
}

// loadProtos compiles the .proto files (paths relative to dir) with their
// imports resolved from dir and the well-known types.
func loadProtos(ctx context.Context, dir string, paths []string) (*protoTypes, error) {
	if len(paths) == 0 {
		return &protoTypes{}, nil
	}
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: []string{dir}})}
	files, err := c.Compile(ctx, paths...)
	if err != nil {
		return nil, fmt.Errorf("compiling %s (relative to %s): %w", strings.Join(paths, ", "), dir, err)
	}
	return &protoTypes{files: files}, nil
}

func (p *protoTypes) message(name string) (protoreflect.MessageDescriptor, error) {
	if p != nil && p.files != nil {
		d, err := p.files.AsResolver().FindDescriptorByName(protoreflect.FullName(name))
		if err == nil {
			if md, ok := d.(protoreflect.MessageDescriptor); ok {
				return md, nil
			}
			return nil, fmt.Errorf("%s is not a message", name)
		}
	}
	return nil, fmt.Errorf("unknown protobuf message %q: list its .proto file under protos", name)
}

// encodeProto builds the message from fields (protojson form).
func (p *protoTypes) encodeProto(spec *ProtoSpec) ([]byte, error) {
	md, err := p.message(spec.Message)
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec.Fields)
	if err != nil {
		return nil, err
	}
	msg := dynamicpb.NewMessage(md)
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, msg); err != nil {
		return nil, fmt.Errorf("fields of %s: %w", spec.Message, err)
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(msg)
}

// decodeProto returns the value decoded as message name, in JSON form with
// the .proto field names.
func (p *protoTypes) decodeProto(name string, value []byte) (any, error) {
	md, err := p.message(name)
	if err != nil {
		return nil, err
	}
	msg := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(value, msg); err != nil {
		return nil, fmt.Errorf("value is not a %s: %w", name, err)
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(msg)
	if err != nil {
		return nil, err
	}
	var v any
	err = json.Unmarshal(js, &v)
	return v, err
}

// build makes a record from its spec. n numbers it within its case, from 1.
func build(spec *RecordSpec, types *protoTypes) (*culvertv1.Record, error) {
	r := &culvertv1.Record{Id: spec.ID, ContentType: spec.ContentType}
	if spec.Key != nil {
		r.Key = []byte(*spec.Key)
	}
	switch {
	case spec.Value != nil:
		r.Value = []byte(*spec.Value)
	case spec.JSON != nil:
		b, err := json.Marshal(spec.JSON)
		if err != nil {
			return nil, fmt.Errorf("%s: json: %w", spec.Pos, err)
		}
		r.Value = b
		if r.ContentType == "" {
			r.ContentType = "application/json"
		}
	case spec.Proto != nil:
		b, err := types.encodeProto(spec.Proto)
		if err != nil {
			return nil, fmt.Errorf("%s: proto: %w", spec.Pos, err)
		}
		r.Value = b
		if r.ContentType == "" {
			r.ContentType = "application/x-protobuf; messageType=" + spec.Proto.Message
		}
	}
	for _, h := range spec.Headers {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: h.Name, Value: []byte(h.Value)})
	}
	if spec.Subject != "" || spec.Partition != "" {
		r.Source = &culvertv1.Position{Subject: spec.Subject, Partition: spec.Partition}
	}
	return r, nil
}

// ---- matching ----

// problem is one way a record differs from its matcher.
type problem struct{ field, msg string }

// check returns how rec differs from m (nothing when it matches).
func (m *Matcher) check(subject string, rec *culvertv1.Record, types *protoTypes) []problem {
	var out []problem
	add := func(field, format string, args ...any) {
		out = append(out, problem{field, fmt.Sprintf(format, args...)})
	}
	if m.Value != nil && string(rec.Value) != *m.Value {
		add("value", "got %s, want %s", quote(rec.Value), strconv.Quote(*m.Value))
	}
	if m.JSON != nil {
		var got any
		if err := json.Unmarshal(rec.Value, &got); err != nil {
			add("json", "value is not JSON (%v): %s", err, quote(rec.Value))
		} else {
			for _, d := range subset("$", m.JSON, got) {
				add("json", "%s", d)
			}
		}
	}
	if m.Regex != "" {
		if re, err := regexp.Compile(m.Regex); err == nil && !re.Match(rec.Value) {
			add("regex", "%s does not match %s", quote(rec.Value), m.Regex)
		}
	}
	if m.Proto != nil {
		got, err := types.decodeProto(m.Proto.Message, rec.Value)
		if err != nil {
			add("proto", "%v", err)
		} else {
			for _, d := range subset(m.Proto.Message, m.Proto.Fields, got) {
				add("proto", "%s", d)
			}
		}
	}
	if m.Key != nil && string(rec.Key) != *m.Key {
		add("key", "got %s, want %s", quote(rec.Key), strconv.Quote(*m.Key))
	}
	for _, h := range m.Headers {
		vals := headerValues(rec, h.Name)
		if len(vals) == 0 {
			add("headers", "%s: missing, want %q", h.Name, h.Value)
		} else if !contains(vals, h.Value) {
			add("headers", "%s: got %q, want %q", h.Name, vals, h.Value)
		}
	}
	if m.Subject != nil && subject != *m.Subject {
		add("subject", "got %q, want %q", subject, *m.Subject)
	}
	if m.ContentType != nil && rec.ContentType != *m.ContentType {
		add("content_type", "got %q, want %q", rec.ContentType, *m.ContentType)
	}
	if e := m.Error; e != nil {
		one := func(name, want string) {
			if want == "" {
				return
			}
			got := headerValues(rec, "culvert-error-"+name)
			if len(got) == 0 {
				add("error."+name, "no culvert-error-%s header: not a dead-lettered record", name)
			} else if got[0] != want {
				add("error."+name, "got %q, want %q", got[0], want)
			}
		}
		one("class", e.Class)
		one("function", e.Function)
		one("route", e.Route)
		if e.Attempts > 0 {
			one("attempts", strconv.Itoa(e.Attempts))
		}
		if e.Message != "" {
			got := headerValues(rec, "culvert-error-message")
			if re, err := regexp.Compile(e.Message); err == nil && (len(got) == 0 || !re.MatchString(got[0])) {
				add("error.message", "got %q, want a match for %s", got, e.Message)
			}
		}
	}
	return out
}

func headerValues(rec *culvertv1.Record, name string) []string {
	var out []string
	for _, h := range rec.Headers {
		if strings.EqualFold(h.Name, name) {
			out = append(out, string(h.Value))
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// quote shows a value for a diff: as a string when it is text, else hex.
func quote(b []byte) string {
	s := string(b)
	if strconv.CanBackquote(s) || isPrintable(s) {
		if len(s) > 300 {
			return strconv.Quote(s[:300]) + "..."
		}
		return strconv.Quote(s)
	}
	if len(b) > 64 {
		return fmt.Sprintf("%x... (%d bytes)", b[:64], len(b))
	}
	return fmt.Sprintf("%x (%d bytes)", b, len(b))
}

func isPrintable(s string) bool {
	for _, r := range s {
		if r == '\uFFFD' || r < ' ' && r != '\n' && r != '\t' {
			return false
		}
	}
	return true
}

// subset reports where got does not contain want: objects may have more
// keys than want, lists must have want's length, scalars must be equal.
func subset(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want an object", path, show(got))}
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			p := path + "." + k
			gv, ok := g[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s: missing, want %s", p, show(w[k])))
				continue
			}
			out = append(out, subset(p, w[k], gv)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want a list", path, show(got))}
		}
		if len(g) != len(w) {
			return []string{fmt.Sprintf("%s: got %d items %s, want %d %s", path, len(g), show(got), len(w), show(want))}
		}
		var out []string
		for i := range w {
			out = append(out, subset(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	}
	if !scalarEqual(want, got) {
		return []string{fmt.Sprintf("%s: got %s, want %s", path, show(got), show(want))}
	}
	return nil
}

// scalarEqual compares JSON scalars; a wanted string also equals a number
// or boolean written the same way (protojson writes 64-bit integers as
// strings).
func scalarEqual(want, got any) bool {
	if want == got {
		return true
	}
	if ws, ok := want.(string); ok {
		return ws == fmt.Sprint(got)
	}
	if gs, ok := got.(string); ok {
		return gs == show(want)
	}
	return false
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// describeRecord is a one-line summary of a record for reports.
func describeRecord(subject string, rec *culvertv1.Record) string {
	var b strings.Builder
	b.WriteString(quote(rec.Value))
	if len(rec.Key) > 0 {
		fmt.Fprintf(&b, " key=%s", quote(rec.Key))
	}
	if subject != "" {
		fmt.Fprintf(&b, " subject=%s", subject)
	}
	for _, h := range rec.Headers {
		if h.Name == "culvert-error-time" || h.Name == "culvert-error-source" {
			continue
		}
		fmt.Fprintf(&b, " %s=%s", h.Name, quote(h.Value))
	}
	return b.String()
}
