package kinesis

import "sync"

// tracker finds the highest contiguous completed sequence number of one
// shard. Records are added in shard order and completed in any order; the
// checkpoint is the sequence number of the last record before the first
// unfinished one, so it never passes a record that is not done.
type tracker struct {
	mu      sync.Mutex
	base    uint64  // index of pending[0]
	pending []entry // added, not yet below the watermark
	mark    string  // highest contiguous completed sequence number
	open    int     // added and not completed
}

type entry struct {
	seq  string
	done bool
}

// add registers the next record of the shard and returns its index.
func (t *tracker) add(seq string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending = append(t.pending, entry{seq: seq})
	t.open++
	return t.base + uint64(len(t.pending)-1)
}

// done marks the record at idx completed. Unknown or repeated indexes are
// ignored.
func (t *tracker) done(idx uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if idx < t.base || idx >= t.base+uint64(len(t.pending)) {
		return
	}
	e := &t.pending[idx-t.base]
	if e.done {
		return
	}
	e.done = true
	t.open--
	n := 0
	for n < len(t.pending) && t.pending[n].done {
		n++
	}
	if n == 0 {
		return
	}
	t.mark = t.pending[n-1].seq
	t.base += uint64(n)
	// Drop the completed prefix, reusing the array while it is small
	// relative to what remains.
	rest := len(t.pending) - n
	if rest == 0 {
		t.pending = t.pending[:0]
	} else if n >= rest {
		copy(t.pending, t.pending[n:])
		t.pending = t.pending[:rest]
	} else {
		t.pending = t.pending[n:]
	}
}

// checkpoint returns the highest contiguous completed sequence number ("" if
// none yet) and how many added records are not completed.
func (t *tracker) checkpoint() (mark string, open int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mark, t.open
}
