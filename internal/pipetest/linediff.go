package pipetest

import (
	"fmt"
	"strings"
)

// maxLCS bounds the lines compared line by line once the common head and
// tail are set aside; beyond it every remaining line is shown as changed.
const maxLCS = 4000

// LineDiff shows how got differs from want, line by line: each removed
// line as "-N: text" (N its line in want) and each added one as "+N: text"
// (N its line in got), in order. Lines both have are left out. It returns
// "" when they are equal.
func LineDiff(want, got string) string {
	a, b := splitLines(want), splitLines(got)
	// Set the common head and tail aside.
	head := 0
	for head < len(a) && head < len(b) && a[head] == b[head] {
		head++
	}
	tail := 0
	for tail < len(a)-head && tail < len(b)-head && a[len(a)-1-tail] == b[len(b)-1-tail] {
		tail++
	}
	am, bm := a[head:len(a)-tail], b[head:len(b)-tail]
	var out strings.Builder
	del := func(i int) { fmt.Fprintf(&out, "-%d: %s\n", head+i+1, am[i]) }
	add := func(j int) { fmt.Fprintf(&out, "+%d: %s\n", head+j+1, bm[j]) }
	if len(am) > maxLCS || len(bm) > maxLCS {
		for i := range am {
			del(i)
		}
		for j := range bm {
			add(j)
		}
		return out.String()
	}
	// lcs[i][j]: the longest common subsequence of am[i:] and bm[j:].
	lcs := make([][]int32, len(am)+1)
	for i := range lcs {
		lcs[i] = make([]int32, len(bm)+1)
	}
	for i := len(am) - 1; i >= 0; i-- {
		for j := len(bm) - 1; j >= 0; j-- {
			if am[i] == bm[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(am) || j < len(bm) {
		switch {
		case i < len(am) && j < len(bm) && am[i] == bm[j]:
			i++
			j++
		case i < len(am) && (j == len(bm) || lcs[i+1][j] >= lcs[i][j+1]):
			// A removed line goes before the line that replaces it.
			del(i)
			i++
		default:
			add(j)
			j++
		}
	}
	return out.String()
}

// splitLines splits s into lines; a final newline ends the last line
// rather than starting an empty one.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}
