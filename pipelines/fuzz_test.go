package pipelines

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse checks that Parse never panics, returns either a pipeline or
// Errors, and that every error has a position and fits on one line.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/valid/*.yaml", "testdata/broken/*.yaml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		p, err := ParseWith("f.yaml", data, testEnv, testChecker())
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("slow: %v for %d bytes", d, len(data))
		}
		if err == nil {
			if p == nil {
				t.Fatal("no pipeline and no error")
			}
			return
		}
		if p != nil {
			t.Fatal("a pipeline with an error")
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %T is not Errors: %v", err, err)
		}
		for i, e := range errs {
			if e.Pos.File != "f.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 {
				t.Errorf("bad position in %q", e)
			}
			if strings.ContainsAny(e.Error(), "\n\r") {
				t.Errorf("error spans lines: %q", e)
			}
			if i > 0 && (e.Pos.Line < errs[i-1].Pos.Line || e.Pos.Line == errs[i-1].Pos.Line && e.Pos.Column < errs[i-1].Pos.Column) {
				t.Errorf("errors not sorted: %q after %q", e, errs[i-1])
			}
		}
	})
}
