package kafka

import "testing"

func TestWatermark(t *testing.T) {
	type step struct {
		add    []int64 // offsets handed
		settle []int64 // then settled, in this order
		want   int64   // commit offset afterwards; -1: nothing to commit
		ok     []bool  // settle results, when given
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing settled", []step{{add: []int64{0, 1, 2}, want: -1}}},
		{"in order", []step{{add: []int64{0, 1, 2}, settle: []int64{0, 1, 2}, want: 3}}},
		{"later first holds the mark", []step{
			{add: []int64{0, 1, 2}, settle: []int64{2, 1}, want: -1},
			{settle: []int64{0}, want: 3},
		}},
		{"gap in the middle", []step{
			{add: []int64{5, 6, 7, 8}, settle: []int64{5, 7, 8}, want: 6},
			{settle: []int64{6}, want: 9},
		}},
		{"offset gaps (compaction, txn markers)", []step{
			{add: []int64{10, 13, 20}, settle: []int64{10, 13}, want: 14},
			{settle: []int64{20}, want: 21},
		}},
		{"double settle and unknown offsets refused", []step{
			{add: []int64{0, 1}, settle: []int64{0, 0, 7, 1}, ok: []bool{true, false, false, true}, want: 2},
		}},
		{"adds after a full drain", []step{
			{add: []int64{0, 1}, settle: []int64{1, 0}, want: 2},
			{add: []int64{2, 3}, settle: []int64{3}, want: 2},
			{settle: []int64{2}, want: 4},
		}},
		{"reverse order of many", []step{
			{add: seq(0, 3000), settle: rev(seq(1, 3000)), want: -1},
			{settle: []int64{0}, want: 3000},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWatermark()
			for i, st := range tc.steps {
				for _, o := range st.add {
					w.add(o, 1)
				}
				for j, o := range st.settle {
					got := w.settle(o)
					if st.ok != nil && got != st.ok[j] {
						t.Errorf("step %d: settle(%d) = %v, want %v", i, o, got, st.ok[j])
					}
				}
				off, epoch, ok := w.commit()
				if !ok {
					off = -1
				}
				if off != st.want {
					t.Fatalf("step %d: commit offset %d, want %d", i, off, st.want)
				}
				if ok && epoch != 1 {
					t.Errorf("step %d: epoch %d, want 1", i, epoch)
				}
			}
		})
	}
}

// TestWatermarkNeverSkips settles a long run in a scrambled order and
// checks after every settlement that the mark is exactly the first
// unsettled offset.
func TestWatermarkNeverSkips(t *testing.T) {
	const n = 5000
	w := newWatermark()
	for i := range int64(n) {
		w.add(i*2, 0) // every other offset, as with transaction markers
	}
	settled := make([]bool, n)
	for k := range n {
		i := (k * 7919) % n // a permutation: 7919 is prime, n is not its multiple
		w.settle(int64(i) * 2)
		settled[i] = true
		first := 0
		for first < n && settled[first] {
			first++
		}
		off, _, ok := w.commit()
		switch {
		case first == 0 && ok:
			t.Fatalf("after %d settlements: commit %d with record 0 unsettled", k+1, off)
		case first > 0 && (!ok || off != int64(first-1)*2+1):
			t.Fatalf("after %d settlements: commit %d (ok %v), want %d", k+1, off, ok, int64(first-1)*2+1)
		}
	}
	if w.pending() != 0 {
		t.Errorf("%d pending after settling everything", w.pending())
	}
}

func seq(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func rev(s []int64) []int64 {
	out := make([]int64, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
