package pipetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/sandbox/process"
)

// TestMain doubles as the mock function: the runner starts this test
// binary with $CULVERT_MOCK set for mocked functions.
func TestMain(m *testing.M) {
	if os.Getenv(MockEnv) != "" {
		if err := ServeMock(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func options(t *testing.T, out *bytes.Buffer) Options {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{Runtime: process.Runtime{}, MockCommand: []string{exe}, Out: out}
}

// TestExamples runs the test files of the example pipelines.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*/pipeline.test.yaml")
	if len(files) < 3 {
		t.Fatalf("found %d example test files, want at least 3", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			f, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			sum, err := RunFile(context.Background(), f, options(t, &out))
			t.Log("\n" + out.String())
			if err != nil {
				t.Fatal(err)
			}
			if sum.Failed != 0 || sum.Passed != len(f.Cases) {
				t.Errorf("%d passed, %d failed of %d cases", sum.Passed, sum.Failed, len(f.Cases))
			}
		})
	}
}

// normalise removes what varies from run to run in a report: durations
// and temporary paths.
func normalise(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "DIR")
	s = regexp.MustCompile(`\(\d+\.\d\ds\)`).ReplaceAllString(s, "(TIME)")
	var keep []string
	skip := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, "    pipeline log:"):
			skip = true
			continue
		case skip && strings.HasPrefix(line, "        "):
			continue
		}
		skip = false
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// TestFailingCaseReport runs cases that fail on purpose and compares the
// report with testdata/failing.report.
func TestFailingCaseReport(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, "testdata/failing", dir)
	f, err := Load(filepath.Join(dir, "pipeline.test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sum, err := RunFile(context.Background(), f, options(t, &out))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Passed != 1 || sum.Failed != 4 {
		t.Errorf("%d passed, %d failed; want 1 and 4\n%s", sum.Passed, sum.Failed, out.String())
	}
	got := normalise(out.String(), dir)
	golden(t, "testdata/failing.report", got)
}

// golden compares got with the file, or rewrites it with -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(path, []byte(got), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Errorf("report differs from %s (UPDATE_GOLDEN=1 rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGoldenUpdate creates a golden file with Update, passes against it,
// and fails with a line diff once the pipeline's output changes.
func TestGoldenUpdate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pipe := func(suffix string) string {
		return `version: 1
name: golden
inputs: { in: { nats: { subjects: ["in.>"] } } }
functions:
  tag: { command: sed, args: ["-u", "s/$/` + suffix + `/"], mode: lines }
routes:
  - { name: all, chain: tag, outputs: [out] }
outputs: { out: { nats: { subject: "out.{{ .Source.Subject }}" } } }
`
	}
	write("pipeline.yaml", pipe("!"))
	write("pipeline.test.yaml", `version: 1
cases:
  - name: tagged
    records: [{ subject: in.a, value: one }, { subject: in.b, value: two, key: k2 }]
    expect:
      out: { golden: out.golden.ndjson }
`)
	f, err := Load(filepath.Join(dir, "pipeline.test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	o := options(t, &out)
	o.Update = true
	if sum, err := RunFile(context.Background(), f, o); err != nil || sum.Passed != 1 || len(sum.Updated) != 1 {
		t.Fatalf("update run: %+v %v\n%s", sum, err, out.String())
	}
	b, _ := os.ReadFile(filepath.Join(dir, "out.golden.ndjson"))
	if n := strings.Count(string(b), "\n"); n != 2 || !strings.Contains(string(b), `"subject":"out.in.a"`) {
		t.Fatalf("golden file:\n%s", b)
	}
	out.Reset()
	if sum, _ := RunFile(context.Background(), f, options(t, &out)); sum.Passed != 1 {
		t.Fatalf("second run failed:\n%s", out.String())
	}
	write("pipeline.yaml", pipe("?"))
	out.Reset()
	sum, _ := RunFile(context.Background(), f, options(t, &out))
	// A line diff: each changed record as it was (-) and as it is (+).
	if sum.Failed != 1 || !strings.Contains(out.String(), "differs from golden file out.golden.ndjson") ||
		!regexp.MustCompile(`(?m)^ +-1: \{.*"value":"one!"\}\n +-2: \{.*"value":"two!"\}\n +\+1: \{.*"value":"one\?"\}\n +\+2: \{.*"value":"two\?"\}$`).MatchString(out.String()) {
		t.Fatalf("changed pipeline: %+v\n%s", sum, out.String())
	}
}

// TestMocks runs mocks that emit to named outputs, drop, pass through, and
// fail (retryable or not), in a chain with a real function after them.
func TestMocks(t *testing.T) {
	f, err := Load("testdata/mocks/pipeline.test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sum, err := RunFile(context.Background(), f, options(t, &out))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 0 || sum.Passed != 2 {
		t.Errorf("%+v\n%s", sum, out.String())
	}
}
