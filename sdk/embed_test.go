package sdk_test

import (
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/sdk"
)

func TestSources(t *testing.T) {
	tests := []struct {
		lang string
		want []string
	}{
		{"python", []string{"culvert/__init__.py", "culvert/_framing.py", "culvert/v1/__init__.py", "culvert/v1/function_pb2.py", "culvert/v1/record_pb2.py"}},
		{"node", []string{"culvert.js", "gen/culvert/v1/function_pb.d.ts", "gen/culvert/v1/function_pb.js", "gen/culvert/v1/record_pb.d.ts", "gen/culvert/v1/record_pb.js", "package-lock.json", "package.json"}},
		{"c", []string{"culvert.c", "culvert.h"}},
	}
	for _, tt := range tests {
		t.Run(tt.lang, func(t *testing.T) {
			fsys, err := sdk.Sources(tt.lang)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					got = append(got, p)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("files:\n got %q\nwant %q", got, tt.want)
			}
			for _, p := range got {
				if strings.Contains(p, "test") || strings.Contains(p, "node_modules") {
					t.Errorf("%s should not be embedded", p)
				}
				if b, err := fs.ReadFile(fsys, p); err != nil || len(b) == 0 {
					t.Errorf("%s: %d bytes, %v", p, len(b), err)
				}
			}
		})
	}
	if _, err := sdk.Sources("cobol"); err == nil {
		t.Error("Sources(cobol) succeeded")
	}
}
