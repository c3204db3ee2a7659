package sandbox

import (
	"slices"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	tests := []struct {
		name        string
		base, extra []string
		want        []string
	}{
		{name: "none", want: []string{}},
		{name: "base only", base: []string{"A=1", "B=2"}, want: []string{"A=1", "B=2"}},
		{name: "added", base: []string{"A=1"}, extra: []string{"B=2"}, want: []string{"A=1", "B=2"}},
		{name: "replaced", base: []string{"A=1", "B=2", "A=3"}, extra: []string{"A=x=y"}, want: []string{"B=2", "A=x=y"}},
		{name: "prefix is another name", base: []string{"AB=1"}, extra: []string{"A=2"}, want: []string{"AB=1", "A=2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MergeEnv(tt.base, tt.extra); !slices.Equal(got, tt.want) {
				t.Errorf("MergeEnv(%q, %q) = %q, want %q", tt.base, tt.extra, got, tt.want)
			}
		})
	}
}
