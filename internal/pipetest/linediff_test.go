package pipetest

import "testing"

func TestLineDiff(t *testing.T) {
	for _, tc := range []struct{ name, want, got, diff string }{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"empty both", "", "", ""},
		{"changed line", "a\nb\nc\n", "a\nB\nc\n", "-2: b\n+2: B\n"},
		{"added at end", "a\n", "a\nb\n", "+2: b\n"},
		{"removed in middle", "a\nb\nc\nd\n", "a\nc\nd\n", "-2: b\n"},
		{"golden missing a record", "", "x\n", "+1: x\n"},
		{"reordered", "a\nb\nc\n", "c\na\nb\n", "+1: c\n-3: c\n"},
		{"two changes apart", "a\nb\nc\nd\ne\n", "a\nB\nc\nD\ne\n", "-2: b\n+2: B\n-4: d\n+4: D\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LineDiff(tc.want, tc.got); got != tc.diff {
				t.Errorf("LineDiff(%q, %q):\n%s\nwant:\n%s", tc.want, tc.got, got, tc.diff)
			}
		})
	}
}
