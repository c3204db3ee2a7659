package kinesis

import "testing"

func TestTrackerCheckpoint(t *testing.T) {
	seqs := []string{"100", "205", "310", "415", "520"}
	tests := []struct {
		name     string
		complete []int // indexes completed, in this order
		want     string
		open     int
	}{
		{"nothing done", nil, "", 5},
		{"first done", []int{0}, "100", 4},
		{"gap holds the mark", []int{0, 2, 3}, "100", 2},
		{"gap filled", []int{0, 2, 3, 1}, "415", 1},
		{"all in reverse", []int{4, 3, 2, 1, 0}, "520", 0},
		{"only later ones", []int{1, 2, 3, 4}, "", 1},
		{"repeats ignored", []int{1, 1, 0, 0}, "205", 3},
		{"unknown index ignored", []int{7, 0}, "100", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr tracker
			for _, s := range seqs {
				tr.add(s)
			}
			for _, i := range tt.complete {
				tr.done(uint64(i))
			}
			mark, open := tr.checkpoint()
			if mark != tt.want || open != tt.open {
				t.Fatalf("checkpoint = %q, %d open; want %q, %d", mark, open, tt.want, tt.open)
			}
		})
	}
}

// TestTrackerInterleaved adds and completes in waves, as a live shard does.
func TestTrackerInterleaved(t *testing.T) {
	var tr tracker
	a := tr.add("1")
	b := tr.add("2")
	tr.done(b)
	c := tr.add("3")
	if m, _ := tr.checkpoint(); m != "" {
		t.Fatalf("mark %q before the first record is done", m)
	}
	tr.done(a)
	if m, _ := tr.checkpoint(); m != "2" {
		t.Fatalf("mark %q, want 2", m)
	}
	d := tr.add("4")
	tr.done(d)
	if m, _ := tr.checkpoint(); m != "2" {
		t.Fatalf("mark %q passed unfinished record 3", m)
	}
	tr.done(c)
	if m, open := tr.checkpoint(); m != "4" || open != 0 {
		t.Fatalf("mark %q, %d open; want 4, 0", m, open)
	}
}
