// Package tap owns tap files, the captures that `culvert tap` writes and
// that `culvert replay`, `culvert test` and `culvert diff` read, and the
// capture readers that take records from a live source (NATS subject,
// JetStream stream, Kafka topic, Kinesis stream) without changing anything
// at that source: no durable consumer, no consumer group, no lease, no
// checkpoint.
//
// A tap file is a sequence of culvert.v1.Record messages, each preceded by
// its varint length (protodelim, the "delimited" format of the file
// connector), or, with the ndjson format, one protojson Record per line.
// Every field is kept: id, key, value, content type, headers in order,
// event time and the source position.
package tap

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Formats of a tap file.
const (
	FormatDelimited = "delimited"
	FormatNDJSON    = "ndjson"
)

// MaxRecordSize bounds one record in a tap file.
const MaxRecordSize = 16 << 20

// FormatFor returns the format a path implies: ndjson for .ndjson, .jsonl
// and .json, delimited otherwise.
func FormatFor(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ndjson", ".jsonl", ".json":
		return FormatNDJSON
	}
	return FormatDelimited
}

// CheckFormat validates a format name; "" is delimited.
func CheckFormat(f string) (string, error) {
	switch f {
	case "":
		return FormatDelimited, nil
	case FormatDelimited, FormatNDJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown tap format %q (want delimited or ndjson)", f)
}

// Writer writes records to a tap file.
type Writer struct {
	w      *bufio.Writer
	format string
	n      int
}

// NewWriter writes format ("" is delimited) to w. Call Flush at the end.
func NewWriter(w io.Writer, format string) (*Writer, error) {
	f, err := CheckFormat(format)
	if err != nil {
		return nil, err
	}
	return &Writer{w: bufio.NewWriterSize(w, 64<<10), format: f}, nil
}

var ndjsonOpts = protojson.MarshalOptions{}

// Write appends rec.
func (w *Writer) Write(rec *culvertv1.Record) error {
	w.n++
	if w.format == FormatNDJSON {
		b, err := ndjsonOpts.Marshal(rec)
		if err != nil {
			return fmt.Errorf("tap: record %d (%s): %w", w.n, rec.GetId(), err)
		}
		// protojson varies its insignificant spaces from build to build;
		// compacting keeps tap and golden files byte-stable.
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			return fmt.Errorf("tap: record %d (%s): %w", w.n, rec.GetId(), err)
		}
		c.WriteByte('\n')
		_, err = w.w.Write(c.Bytes())
		return err
	}
	if _, err := protodelim.MarshalTo(w.w, rec); err != nil {
		return fmt.Errorf("tap: record %d (%s): %w", w.n, rec.GetId(), err)
	}
	return nil
}

// Count is the number of records written.
func (w *Writer) Count() int { return w.n }

// Flush writes buffered records to the underlying writer.
func (w *Writer) Flush() error { return w.w.Flush() }

// Reader reads records from a tap file.
type Reader struct {
	name   string
	br     *bufio.Reader
	format string
	n      int
	line   int
}

// NewReader reads format from r. With format "", the format is detected:
// a first byte '{' starts NDJSON (a delimited record of exactly 123 bytes
// would too; name such files .tap or pass the format). name is used in
// errors.
func NewReader(r io.Reader, name, format string) (*Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if format == "" {
		format = FormatDelimited
		if b, err := br.Peek(1); err == nil && b[0] == '{' {
			format = FormatNDJSON
		}
	}
	f, err := CheckFormat(format)
	if err != nil {
		return nil, err
	}
	return &Reader{name: name, br: br, format: f}, nil
}

// Next returns the next record, or io.EOF after the last one. Any other
// error names the file and the record (delimited) or line (ndjson).
func (r *Reader) Next() (*culvertv1.Record, error) {
	rec := new(culvertv1.Record)
	if r.format == FormatNDJSON {
		for {
			line, err := r.br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				var long []byte
				long = append(long, line...)
				for errors.Is(err, bufio.ErrBufferFull) && len(long) <= MaxRecordSize {
					line, err = r.br.ReadSlice('\n')
					long = append(long, line...)
				}
				line = long
			}
			if len(line) == 0 && err != nil {
				if errors.Is(err, io.EOF) {
					return nil, io.EOF
				}
				return nil, fmt.Errorf("%s: line %d: %w", r.name, r.line+1, err)
			}
			r.line++
			if len(line) > MaxRecordSize {
				return nil, fmt.Errorf("%s: line %d: longer than %d bytes", r.name, r.line, MaxRecordSize)
			}
			t := bytes.TrimSpace(line)
			if len(t) == 0 {
				if err != nil {
					return nil, io.EOF
				}
				continue
			}
			if uerr := protojson.Unmarshal(t, rec); uerr != nil {
				return nil, fmt.Errorf("%s: line %d: not a culvert.v1.Record in JSON: %w", r.name, r.line, uerr)
			}
			r.n++
			return rec, nil
		}
	}
	err := protodelim.UnmarshalOptions{MaxSize: MaxRecordSize}.UnmarshalFrom(r.br, rec)
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("truncated: %w", err)
		}
		return nil, fmt.Errorf("%s: record %d: %w", r.name, r.n+1, err)
	}
	r.n++
	return rec, nil
}

// Format is the format being read.
func (r *Reader) Format() string { return r.format }

// ReadFile reads every record of the tap file at path. format "" detects
// it from the extension (FormatFor) or, for other names, the content.
func ReadFile(path, format string) ([]*culvertv1.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	defer f.Close()
	if format == "" && FormatFor(path) == FormatNDJSON {
		format = FormatNDJSON
	}
	r, err := NewReader(f, path, format)
	if err != nil {
		return nil, err
	}
	var out []*culvertv1.Record
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
}

// WriteFile writes recs to path (created or truncated) in format ("": from
// the extension).
func WriteFile(path, format string, recs []*culvertv1.Record) error {
	if format == "" {
		format = FormatFor(path)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	w, err := NewWriter(f, format)
	if err != nil {
		f.Close()
		return err
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("tap: %s: %w", path, err)
	}
	return f.Close()
}
