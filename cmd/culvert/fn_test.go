package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestFnConform runs `culvert fn conform` against example functions and
// checks what it prints and its exit status.
func TestFnConform(t *testing.T) {
	passthrough := filepath.Join(binDir, "passthrough")
	enrich := filepath.Join(binDir, "enrich")
	samples, err := filepath.Abs(filepath.Join("..", "..", "examples", "functions", "enrich", "samples.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdout   []string
		stderrIn string
	}{
		{"conformant", []string{"fn", "conform", "--rules", "handshake,empty-batch,eof", "--", passthrough}, 0,
			[]string{"PASS  handshake", "PASS  empty-batch", "PASS  eof", "3 rules: 3 passed, 0 failed, 0 skipped: conformant"}, ""},
		{"convention skipped", []string{"fn", "conform", "--no-convention", "--rules", "zero-outputs,eof", "--", passthrough}, 0,
			[]string{"SKIP  zero-outputs", "needs the conformance convention", "1 passed, 0 failed, 1 skipped"}, ""},
		{"ignored convention fails", []string{"fn", "conform", "--rules", "partial-failure", "--", passthrough}, 1,
			[]string{"FAIL  partial-failure", "did not fail; does the function honour the conformance convention", "NOT conformant"}, "1 of 1 rules failed"},
		{"no command", []string{"fn", "conform"}, 2, nil, "give the function's command after --"},
		{"unknown rule", []string{"fn", "conform", "--rules", "nope", "--", passthrough}, 2, nil, `unknown rule "nope"`},
		{"list", []string{"fn", "conform", "--list"}, 0, []string{"handshake", "slow-reader", "(convention)"}, ""},
		{"transform mode", []string{"fn", "conform", "--samples", samples, "--rules", "batch-result,binary-values,partial-failure", "--", enrich}, 0,
			[]string{"PASS  batch-result", "PASS  binary-values", "transform mode: values are the samples", "PASS  partial-failure",
				"3 passed, 0 failed, 0 skipped: conformant (transform mode: checked against sample inputs, not an echo)"}, ""},
		{"enrich is not an echo", []string{"fn", "conform", "--rules", "batch-result", "--", enrich}, 1,
			[]string{"FAIL  batch-result", "value changed", "enriched"}, "1 of 1 rules failed"},
		{"no samples file", []string{"fn", "conform", "--samples", filepath.Join(t.TempDir(), "none.jsonl"), "--", enrich}, 2, nil, "--samples"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", baseEnv(), 60*time.Second, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
				}
			}
			if !strings.Contains(r.stderr, tc.stderrIn) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderrIn, r.stderr)
			}
		})
	}
}

func TestFnConformJSON(t *testing.T) {
	r := runCLI(t, "", baseEnv(), 60*time.Second, "fn", "conform", "--json", "--rules", "handshake", "--", filepath.Join(binDir, "passthrough"))
	var rep struct {
		Results []struct{ Rule, Status string }
		Passed  int
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 {
		t.Fatalf("exit %d, %v:\n%s", r.code, err, r.stdout)
	}
	if rep.Passed != 1 || len(rep.Results) != 1 || rep.Results[0].Rule != "handshake" || rep.Results[0].Status != "pass" {
		t.Fatalf("got %+v", rep)
	}
}

// TestFnInit checks the command line of `culvert fn init`; what it
// generates is tested by internal/scaffold.
func TestFnInit(t *testing.T) {
	dir := t.TempDir()
	r := runCLI(t, dir, baseEnv(), 30*time.Second, "fn", "init", "--lang", "shell", "hello")
	if r.code != 0 || !strings.Contains(r.stdout, filepath.Join("hello", "hello.sh")) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if st, err := os.Stat(filepath.Join(dir, "hello", "hello.sh")); err != nil || st.Mode()&0o100 == 0 {
		t.Fatalf("hello.sh: %v %v", st, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fn", "init", "hello"}, "--lang is required"},
		{[]string{"fn", "init", "--lang", "cobol", "x"}, `unknown language "cobol"`},
		{[]string{"fn", "init", "--lang", "shell", "hello"}, "is not empty"},
	} {
		r := runCLI(t, dir, baseEnv(), 30*time.Second, tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestFnInitLanguages runs `culvert fn init --lang L` for every language
// and checks what the command line adds to scaffold.Generate: the files
// listed, and for Go the replace directive towards a Culvert checkout,
// given with --culvert-src or found from the current directory, and the
// note printed when there is none.
func TestFnInitLanguages(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		lang  string
		files []string
	}{
		{"go", []string{"main.go", "main_test.go", "go.mod"}},
		{"python", []string{"main.py", "test_main.py", "culvert/__init__.py"}},
		{"node", []string{"index.js", "test.js", "culvert-sdk/culvert.js", "package.json"}},
		{"c", []string{"main.c", "Makefile", "culvert.c", "culvert.h"}},
		{"shell", []string{"fn-shell.sh", "test.sh"}},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			dir := t.TempDir()
			name := "fn-" + tc.lang
			r := runCLI(t, dir, baseEnv(), 30*time.Second, "fn", "init", "--lang", tc.lang, name)
			if r.code != 0 {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			for _, f := range append([]string{"README.md", "pipeline.yaml"}, tc.files...) {
				if _, err := os.Stat(filepath.Join(dir, name, f)); err != nil {
					t.Errorf("%s: %v", f, err)
				}
				if !strings.Contains(r.stdout, filepath.Join(name, f)) {
					t.Errorf("stdout does not list %s:\n%s", f, r.stdout)
				}
			}
			note := strings.Contains(r.stdout, "go mod edit -replace")
			if note != (tc.lang == "go") {
				t.Errorf("the note about a local checkout: printed %v, want %v\n%s", note, tc.lang == "go", r.stdout)
			}
		})
	}
	t.Run("go replace", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			dir  string // where culvert runs
			args []string
		}{
			{"--culvert-src", t.TempDir(), []string{"--culvert-src", root}},
			{"found from the current directory", filepath.Join(root, "cmd", "culvert"), []string{"--dir", filepath.Join(t.TempDir(), "f")}},
		} {
			r := runCLI(t, tc.dir, baseEnv(), 30*time.Second, append([]string{"fn", "init", "--lang", "go"}, append(tc.args, "f")...)...)
			if r.code != 0 || strings.Contains(r.stdout, "go mod edit -replace") {
				t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", tc.name, r.code, r.stdout, r.stderr)
			}
			dir := filepath.Join(tc.dir, "f")
			if i := slices.Index(tc.args, "--dir"); i >= 0 {
				dir = tc.args[i+1]
			}
			mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err != nil {
				t.Fatal(err)
			}
			if want := "replace github.com/culvert-dev/culvert => " + root; !strings.Contains(string(mod), want) {
				t.Errorf("%s: go.mod lacks %q:\n%s", tc.name, want, mod)
			}
		}
	})
}
