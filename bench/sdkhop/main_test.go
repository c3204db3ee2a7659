package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// TestEverySDKIsMeasured runs the benchmark briefly (two batches of 1000
// per SDK, one run) and checks that it reports every language beside the
// Go SDK. framedRun fails unless every record comes back unchanged in
// size, so a passthrough that breaks, or an SDK that cannot start, fails
// this test.
func TestEverySDKIsMeasured(t *testing.T) {
	langs := []string{"go", "python", "node", "c"}
	var out bytes.Buffer
	if err := run(&out, 2000, 1000, 100, 1, 2, langs); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n")[1:] {
		f := strings.Fields(line)
		rows[f[0]] = f
	}
	for _, l := range langs {
		f, ok := rows[l]
		if !ok {
			t.Fatalf("no row for %s:\n%s", l, out.String())
		}
		// sdk batch records rec/s ns/rec vs-go slowest..fastest
		if len(f) != 7 || f[1] != "1000" || f[2] != "2000" {
			t.Fatalf("row %q: want batch 1000 and 2000 records", f)
		}
		if rate, err := strconv.ParseFloat(f[3], 64); err != nil || rate <= 0 {
			t.Errorf("%s: rec/s %q", l, f[3])
		}
		if ratio, err := strconv.ParseFloat(f[5], 64); err != nil || ratio <= 0 || l == "go" && f[5] != "1.00" {
			t.Errorf("%s: vs go %q", l, f[5])
		}
	}
}

func TestRunErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records int
		runs    int
		langs   []string
		want    string
	}{
		{"unknown sdk", 1000, 1, []string{"cobol"}, `unknown SDK "cobol"`},
		{"less than a batch", 10, 1, []string{"c"}, "less than one batch"},
		{"no runs", 1000, 0, []string{"c"}, "-runs 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(&bytes.Buffer{}, tc.records, 1000, 10, tc.runs, 1, tc.langs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
