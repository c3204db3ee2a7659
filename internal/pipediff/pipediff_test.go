package pipediff

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

func load(t *testing.T, path string) *pipelines.Pipeline {
	t.Helper()
	p, err := pipelines.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDiffExample compares the order-events example with a version that
// maps Brazil to its own region and puts refunds on a subject per channel;
// the report must name exactly those records (testdata/diff.golden).
func TestDiffExample(t *testing.T) {
	recs, err := tap.ReadFile("../../examples/order-events/events.ndjson", "")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Runner: runner.Options{Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	oldP := load(t, "../../examples/order-events/pipeline.yaml")
	rep, err := Diff(context.Background(), oldP, load(t, "testdata/v2/pipeline.yaml"), recs, o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Same() || len(rep.Diffs) != 2 || rep.Diffs[0].Index != 2 || rep.Diffs[1].Index != 4 {
		t.Errorf("diffs at %+v", rep.Diffs)
	}
	var b bytes.Buffer
	rep.Write(&b)
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile("testdata/diff.golden", b.Bytes(), 0o644)
	}
	want, err := os.ReadFile("testdata/diff.golden")
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("report differs from testdata/diff.golden (UPDATE_GOLDEN=1 rewrites it):\n%s", b.String())
	}

	// A pipeline compared with itself has no differences.
	same, err := Diff(context.Background(), oldP, load(t, "../../examples/order-events/pipeline.yaml"), recs, o)
	if err != nil {
		t.Fatal(err)
	}
	if !same.Same() {
		var b bytes.Buffer
		same.Write(&b)
		t.Errorf("a pipeline differs from itself:\n%s", b.String())
	}
}

// TestDiffGivenBack: a record the new version fails without a dead-letter
// output is reported as given back by the new version only, along with
// the output it no longer reaches.
func TestDiffGivenBack(t *testing.T) {
	dir := t.TempDir()
	pipe := func(name, chain string) *pipelines.Pipeline {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(`version: 1
name: p
inputs: { in: { nats: { subjects: ["in.>"] } } }
functions:
  ok: { command: cat, mode: exec, sandbox: none }
  broken: { command: "false", mode: exec, sandbox: none, retry: { max_attempts: 1 } }
routes:
  - { name: checked, match: { subjects: [in.checked] }, chain: `+chain+`, outputs: [out] }
  - { name: other, match: { subjects: [in.other] }, outputs: [out] }
outputs: { out: { nats: { subject: "out.{{ .Source.Subject }}" } } }
`), 0o644); err != nil {
			t.Fatal(err)
		}
		return load(t, path)
	}
	recs := []*culvertv1.Record{
		{Id: "a", Value: []byte("1"), Source: &culvertv1.Position{Subject: "in.other"}},
		{Id: "b", Value: []byte("2"), Source: &culvertv1.Position{Subject: "in.checked"}},
	}
	o := Options{Runner: runner.Options{Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	rep, err := Diff(context.Background(), pipe("old.yaml", "ok"), pipe("new.yaml", "broken"), recs, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Diffs) != 1 || rep.Diffs[0].Index != 1 || rep.Diffs[0].GivenBack != "new" {
		t.Fatalf("diffs %+v", rep.Diffs)
	}
	var b bytes.Buffer
	rep.Write(&b)
	for _, want := range []string{
		"record 2 (b subject in.checked):\n  given back (failed without a dead-letter output) by the new version only\n  output \"out\":\n    - {\"subject\":\"out.in.checked\"",
		"1 of 2 records differ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
