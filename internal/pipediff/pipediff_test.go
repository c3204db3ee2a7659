package pipediff

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
	"github.com/culvert-dev/culvert/pipelines"
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
