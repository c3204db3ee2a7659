package file_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/file"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

const inFlight = 16

type harness struct{ format string }

func (h harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{Finite: true, InFlight: inFlight, ValueOnly: h.format == file.FormatLines}
}

func (h harness) New(t *testing.T) connectortest.Env {
	dir := t.TempDir()
	return &env{format: h.format, in: filepath.Join(dir, "in"), out: filepath.Join(dir, "out")}
}

type env struct {
	format  string
	in, out string
}

func (e *env) Subjects() []string { return []string{""} }

// write appends recs to path in format, as an independent writer would.
func write(t *testing.T, path, format string, recs []*culvertv1.Record) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for _, r := range recs {
		switch format {
		case file.FormatLines:
			w.Write(r.Value)
			w.WriteByte('\n')
		case file.FormatDelimited:
			if _, err := protodelim.MarshalTo(w, r); err != nil {
				t.Fatal(err)
			}
		default:
			b, err := protojson.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.WriteByte('\n')
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// read parses everything in path.
func read(t *testing.T, path, format string) []*culvertv1.Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*culvertv1.Record
	if format == file.FormatDelimited {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			rec := new(culvertv1.Record)
			if err := protodelim.UnmarshalFrom(r, rec); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("read %s: %v", path, err)
				}
				return out
			}
			out = append(out, rec)
		}
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		rec := new(culvertv1.Record)
		if format == file.FormatLines {
			rec.Value = []byte(line)
		} else if err := protojson.Unmarshal([]byte(line), rec); err != nil {
			t.Fatalf("read %s: %q: %v", path, line, err)
		}
		out = append(out, rec)
	}
	return out
}

func (e *env) Produce(t *testing.T, _ string, recs []*culvertv1.Record) {
	write(t, e.in, e.format, recs)
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	t.Helper()
	write(t, e.in, e.format, nil) // the input exists, possibly empty
	src, err := file.NewSource(file.SourceConfig{Path: e.in, Format: e.format, MaxInFlight: inFlight}, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func (e *env) OutputSubject(*testing.T) string { return "" }

func (e *env) NewSink(t *testing.T) connectors.Sink {
	t.Helper()
	s, err := file.NewSink(file.SinkConfig{Path: e.out, Format: e.format}, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (e *env) Consume(t *testing.T, _ string, n int, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	got := read(t, e.out, e.format)
	if len(got) < n {
		t.Fatalf("%s holds %d records, want %d", e.out, len(got), n)
	}
	return got[:n]
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestConformance(t *testing.T) {
	for _, f := range []string{file.FormatNDJSON, file.FormatDelimited, file.FormatLines} {
		connectortest.Run(t, f, harness{format: f})
	}
}

// collect runs src to its end and returns what it delivered, acked.
func collect(t *testing.T, src connectors.Source) ([]connectors.Message, error) {
	t.Helper()
	var got []connectors.Message
	err := src.Run(context.Background(), handlerFunc(func(m connectors.Message) {
		if err := m.Settler.Ack(context.Background()); err != nil {
			t.Error(err)
		}
		got = append(got, m)
	}))
	return got, err
}

type handlerFunc func(connectors.Message)

func (f handlerFunc) Handle(_ context.Context, m connectors.Message) error { f(m); return nil }
func (f handlerFunc) Revoked([]string)                                     {}

func TestNDJSONInput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "in.ndjson")
	content := `{"id":"keep","value":"aGk=","headers":[{"name":"b","value":"MQ=="},{"name":"a","value":"Mg=="}]}
{"value":"aGk="}

{"temperature": 21}
{}
[1,2]
not json
{"key":"a2V5","contentType":"text/plain"}
`
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := file.NewSource(file.SourceConfig{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := collect(t, src)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id, value, ct string
		offset        uint64
	}
	var rows []row
	for _, m := range got {
		r := m.Record
		rows = append(rows, row{r.Id, string(r.Value), r.ContentType, r.Source.GetOffset()})
		if r.Source.GetConnector() != "file" {
			t.Errorf("connector %q", r.Source.GetConnector())
		}
	}
	p := "file:" + path + ":"
	want := []row{
		{"keep", "hi", "", 1},
		{p + "2", "hi", "", 2},
		{p + "4", `{"temperature": 21}`, "application/json", 4},
		{p + "5", `{}`, "application/json", 5},
		{p + "6", `[1,2]`, "application/json", 6},
		{p + "7", `not json`, "", 7},
		{p + "8", "", "text/plain", 8},
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("got  %v\nwant %v", rows, want)
	}
	if h := got[0].Record.Headers; len(h) != 2 || h[0].Name != "b" || h[1].Name != "a" {
		t.Errorf("headers %v: order not kept", h)
	}
}

func TestSizeLimits(t *testing.T) {
	dir := t.TempDir()
	lines := filepath.Join(dir, "lines")
	os.WriteFile(lines, []byte("short\n"+strings.Repeat("x", 100)+"\n"), 0o644)
	src, _ := file.NewSource(file.SourceConfig{Path: lines, Format: file.FormatLines, MaxRecordSize: 50}, nil)
	got, err := collect(t, src)
	if err == nil || len(got) != 1 || !strings.Contains(err.Error(), "record 2") {
		t.Errorf("long line: %d records, error %v", len(got), err)
	}

	delim := filepath.Join(dir, "delim")
	write(t, delim, file.FormatDelimited, []*culvertv1.Record{{Value: []byte("a")}, {Value: make([]byte, 100)}})
	src, _ = file.NewSource(file.SourceConfig{Path: delim, Format: file.FormatDelimited, MaxRecordSize: 50}, nil)
	got, err = collect(t, src)
	if err == nil || len(got) != 1 || !strings.Contains(err.Error(), "record 2") {
		t.Errorf("large record: %d records, error %v", len(got), err)
	}
	if len(got) == 1 && got[0].Record.Id != "file:"+delim+":1" {
		t.Errorf("id %q", got[0].Record.Id)
	}

	// A truncated delimited record is an error, not a silent end.
	b, _ := os.ReadFile(delim)
	os.WriteFile(delim, b[:len(b)-10], 0o644)
	src, _ = file.NewSource(file.SourceConfig{Path: delim, Format: file.FormatDelimited}, nil)
	if _, err = collect(t, src); err == nil {
		t.Errorf("truncated file: no error")
	}
}

func TestStdinAndStdout(t *testing.T) {
	src, err := file.NewSource(file.SourceConfig{Reader: strings.NewReader("a\r\nb\n\nc"), Format: file.FormatLines}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := collect(t, src)
	if err != nil {
		t.Fatal(err)
	}
	var ids, vals []string
	for _, m := range got {
		ids = append(ids, m.Record.Id)
		vals = append(vals, string(m.Record.Value))
		if m.Record.Source.GetConnector() != "stdin" {
			t.Errorf("connector %q", m.Record.Source.GetConnector())
		}
	}
	if fmt.Sprint(ids) != "[stdin:1 stdin:2 stdin:3 stdin:4]" || fmt.Sprint(vals) != "[a b  c]" {
		t.Errorf("ids %v values %q", ids, vals)
	}
	if err := src.Run(context.Background(), handlerFunc(func(connectors.Message) {})); err == nil {
		t.Errorf("second Run: no error")
	}

	var out bytes.Buffer
	sink, err := file.NewSink(file.SinkConfig{Writer: &out, Format: file.FormatNDJSON}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &culvertv1.Record{Id: "x", Value: []byte("v"), Headers: []*culvertv1.Header{{Name: "b"}, {Name: "a"}, {Name: "b", Value: []byte("2")}}}
	errc := make(chan error, 1)
	sink.Publish(context.Background(), "ignored", r, func(err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	back := new(culvertv1.Record)
	if err := protojson.Unmarshal(bytes.TrimSpace(out.Bytes()), back); err != nil || !proto.Equal(back, r) {
		t.Errorf("stdout got %q (%v)", out.String(), err)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Errorf("ndjson output is not one line: %q", out.String())
	}
}

func TestSinkWriteError(t *testing.T) {
	sink, err := file.NewSink(file.SinkConfig{Writer: failWriter{}, Format: file.FormatLines}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	errc := make(chan error, 1)
	sink.Publish(context.Background(), "", &culvertv1.Record{Value: []byte("v")}, func(err error) { errc <- err })
	if err := <-errc; err == nil {
		t.Fatal("done(nil) for a write that failed")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestBadConfig(t *testing.T) {
	if _, err := file.NewSource(file.SourceConfig{Path: "x", Format: "csv"}, nil); err == nil {
		t.Error("unknown format: no error")
	}
	if _, err := file.NewSource(file.SourceConfig{}, nil); err == nil {
		t.Error("no input: no error")
	}
	if _, err := file.NewSink(file.SinkConfig{}, nil); err == nil {
		t.Error("no output: no error")
	}
	src, _ := file.NewSource(file.SourceConfig{Path: filepath.Join(t.TempDir(), "missing")}, nil)
	if _, err := collect(t, src); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
