// Package execenv encodes a record's metadata as environment variables for
// exec mode (proto/SPEC.md, "exec mode"): one process per record, whose
// stdin is the value and whose environment says what the record is.
//
// The host's exec driver calls Encode; functions written in any language read
// the variables. The package owns the naming rule that keeps header names
// from colliding with each other or with anything else (httpoxy: no
// variable it makes starts with HTTP_ or names a proxy), and the rules that
// keep values legal in an environment (no NUL, bounded size). It never
// passes secrets, and it never reads the process environment.
package execenv

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Variable names. Every name starts with "CULVERT_".
const (
	Function    = "CULVERT_FUNCTION"
	Pipeline    = "CULVERT_PIPELINE"
	RecordID    = "CULVERT_RECORD_ID"
	Key         = "CULVERT_KEY"     // the key, when it is text
	KeyB64      = "CULVERT_KEY_B64" // the key in base64, when it is not
	ContentType = "CULVERT_CONTENT_TYPE"
	EventTime   = "CULVERT_EVENT_TIME" // RFC 3339, UTC, nanoseconds as needed
	Connector   = "CULVERT_CONNECTOR"
	Stream      = "CULVERT_STREAM"
	Subject     = "CULVERT_SUBJECT"
	Partition   = "CULVERT_PARTITION"
	Offset      = "CULVERT_OFFSET" // decimal
	Sequence    = "CULVERT_SEQUENCE"
	// Headers holds every header, in order, as a JSON array of
	// [name, base64(value)] pairs.
	Headers = "CULVERT_HEADERS"
	// HeaderPrefix starts the variable holding the first value of a header
	// whose value is text (HeaderVarName).
	HeaderPrefix = "CULVERT_HEADER_"
	// HeaderB64Prefix starts the variable holding the first value of a
	// header, in base64, when it is not text (HeaderB64VarName). Neither
	// prefix is a prefix of the other, so the two families never collide.
	HeaderB64Prefix = "CULVERT_HEADERB64_"
)

// Size limits, chosen well below Linux's 128 KiB per variable
// (MAX_ARG_STRLEN).
const (
	// MaxValue bounds every value but Headers: a value of MaxValue bytes or
	// more (before base64) is not passed.
	MaxValue = 32 << 10
	// MaxHeaders bounds the Headers variable: when its JSON would be
	// MaxHeaders bytes or more, it is not passed.
	MaxHeaders = 96 << 10
)

// Encode returns the variables, as "NAME=value", that describe rec to an
// exec-mode process of the given function and pipeline, in this order:
// CULVERT_FUNCTION, CULVERT_PIPELINE, CULVERT_RECORD_ID, CULVERT_KEY or
// CULVERT_KEY_B64, CULVERT_CONTENT_TYPE, CULVERT_EVENT_TIME,
// CULVERT_CONNECTOR, CULVERT_STREAM, CULVERT_SUBJECT, CULVERT_PARTITION,
// CULVERT_OFFSET, CULVERT_SEQUENCE, one variable per distinct header name in
// order of first appearance, then CULVERT_HEADERS.
//
// A variable is left out when its value would be empty (offset: 0), would
// contain NUL, or would be MaxValue bytes or longer. Binary values (the key,
// header values) are passed as they are when they are valid UTF-8 without
// NUL, and in standard base64 with padding in the _B64 form otherwise. A
// header that repeats is passed with its first value; CULVERT_HEADERS has
// them all.
func Encode(rec *culvertv1.Record, function, pipeline string) []string {
	env := make([]string, 0, 12+len(rec.GetHeaders()))
	text := func(name, v string) {
		if v != "" && len(v) < MaxValue && !strings.ContainsRune(v, 0) {
			env = append(env, name+"="+v)
		}
	}
	text(Function, function)
	text(Pipeline, pipeline)
	text(RecordID, rec.GetId())
	env = appendBinary(env, Key, KeyB64, rec.GetKey())
	text(ContentType, rec.GetContentType())
	if t := rec.GetEventTime(); t != nil {
		text(EventTime, t.AsTime().UTC().Format(time.RFC3339Nano))
	}
	src := rec.GetSource()
	text(Connector, src.GetConnector())
	text(Stream, src.GetStream())
	text(Subject, src.GetSubject())
	text(Partition, src.GetPartition())
	if o := src.GetOffset(); o != 0 {
		text(Offset, strconv.FormatUint(o, 10))
	}
	text(Sequence, src.GetSequence())

	hs := rec.GetHeaders()
	if len(hs) == 0 {
		return env
	}
	seen := make(map[string]bool, len(hs))
	pairs := make([][2]string, len(hs))
	for i, h := range hs {
		pairs[i] = [2]string{h.GetName(), base64.StdEncoding.EncodeToString(h.GetValue())}
		if seen[h.GetName()] {
			continue
		}
		seen[h.GetName()] = true
		env = appendBinary(env, HeaderVarName(h.GetName()), HeaderB64VarName(h.GetName()), h.GetValue())
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(pairs); err == nil {
		if all := strings.TrimSuffix(sb.String(), "\n"); len(all) < MaxHeaders {
			env = append(env, Headers+"="+all)
		}
	}
	return env
}

// appendBinary adds v as text under name, or in base64 under b64Name.
func appendBinary(env []string, name, b64Name string, v []byte) []string {
	switch {
	case len(v) == 0 || len(v) >= MaxValue:
		return env
	case utf8.Valid(v) && !strings.ContainsRune(string(v), 0):
		return append(env, name+"="+string(v))
	default:
		return append(env, b64Name+"="+base64.StdEncoding.EncodeToString(v))
	}
}

// HeaderVarName is the variable holding the first value of header name when
// that value is text: "CULVERT_HEADER_" followed by the name encoded so that
// distinct names never share a variable. ASCII letters and digits are kept
// as they are (case included), "_" becomes "__", and every other byte
// becomes "_" and its two upper-case hex digits:
//
//	Content-Type -> CULVERT_HEADER_Content_2DType
//	X_Trace      -> CULVERT_HEADER_X__Trace
//	Proxy        -> CULVERT_HEADER_Proxy
//	café         -> CULVERT_HEADER_caf_C3_A9
func HeaderVarName(name string) string { return HeaderPrefix + encodeName(name) }

// HeaderB64VarName is the variable holding the first value of header name,
// in base64, when that value is not text: "CULVERT_HEADERB64_" followed by
// the name encoded as for HeaderVarName.
func HeaderB64VarName(name string) string { return HeaderB64Prefix + encodeName(name) }

func encodeName(name string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(name) + len(name)/2)
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
			b.WriteByte(c)
		case c == '_':
			b.WriteString("__")
		default:
			b.WriteByte('_')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}
