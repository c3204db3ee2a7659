package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFnConform runs `culvert fn conform` against example functions and
// checks what it prints and its exit status.
func TestFnConform(t *testing.T) {
	passthrough := filepath.Join(binDir, "passthrough")
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
