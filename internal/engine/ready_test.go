package engine

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestReadyQueue: whatever the order of pushes (in order, requeued,
// released from a lane) and pops, items come out lowest seq first.
func TestReadyQueue(t *testing.T) {
	tests := []struct {
		name string
		ops  []int // >0: push that seq; 0: pop
	}{
		{"in order", []int{1, 2, 3, 0, 0, 4, 0, 0}},
		{"requeued ahead", []int{5, 6, 0, 1, 2, 0, 0, 0}},
		{"interleaved", []int{1, 4, 2, 0, 5, 3, 0, 0, 0, 0}},
		{"empty then again", []int{3, 0, 1, 0, 7, 8, 0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkReady(t, tc.ops) })
	}
	// Long random runs cross the compaction of the FIFO.
	r := rand.New(rand.NewPCG(1, 2))
	var ops []int
	seq := 0
	for range 20000 {
		switch n := r.IntN(10); {
		case n < 5:
			seq++
			ops = append(ops, seq)
		case n < 6 && seq > 10:
			ops = append(ops, 1+r.IntN(seq)) // an earlier seq, requeued
		default:
			ops = append(ops, 0)
		}
	}
	checkReady(t, ops)
}

func checkReady(t *testing.T, ops []int) {
	t.Helper()
	var q readyQueue
	var want []int
	for i, op := range ops {
		if op > 0 {
			q.push(&item{seq: uint64(op)})
			want = append(want, op)
			slices.Sort(want)
			continue
		}
		if len(want) == 0 {
			continue
		}
		if got := q.peek().seq; got != uint64(want[0]) {
			t.Fatalf("op %d: peek %d, want %d", i, got, want[0])
		}
		if got := q.pop().seq; got != uint64(want[0]) {
			t.Fatalf("op %d: pop %d, want %d", i, got, want[0])
		}
		want = want[1:]
		if q.Len() != len(want) {
			t.Fatalf("op %d: Len %d, want %d", i, q.Len(), len(want))
		}
	}
	if got := len(q.all()); got != len(want) {
		t.Fatalf("all: %d items, want %d", got, len(want))
	}
}
