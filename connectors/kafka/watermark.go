package kafka

import "sort"

// watermark tracks the records of one partition handed to the engine, in
// offset order, and says up to where the partition may be committed: the
// offset after the highest record such that it and every record handed
// before it are settled. It never skips an unsettled record, whatever
// order the settlements come in. Offsets may have gaps (compaction,
// transaction markers); only handed offsets count.
//
// Not safe for concurrent use: the lane guards it.
type watermark struct {
	offs  []int64 // handed offsets, ascending, from head on
	done  []bool
	epoch []int32
	head  int
	// next is the offset to commit (the last contiguous settled offset
	// + 1) and its leader epoch; next < 0 while nothing was settled yet.
	next      int64
	nextEpoch int32
}

func newWatermark() *watermark { return &watermark{next: -1} }

// add appends a handed record. Offsets must grow.
func (w *watermark) add(offset int64, epoch int32) {
	if w.head > 0 && w.head == len(w.offs) {
		w.offs, w.done, w.epoch, w.head = w.offs[:0], w.done[:0], w.epoch[:0], 0
	}
	w.offs = append(w.offs, offset)
	w.done = append(w.done, false)
	w.epoch = append(w.epoch, epoch)
}

// settle marks offset settled and advances the mark over every settled
// record at the head. It reports whether offset was pending (a second
// settlement, or an offset never added, returns false).
func (w *watermark) settle(offset int64) bool {
	live := w.offs[w.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i] >= offset })
	if i == len(live) || live[i] != offset || w.done[w.head+i] {
		return false
	}
	w.done[w.head+i] = true
	for w.head < len(w.offs) && w.done[w.head] {
		w.next = w.offs[w.head] + 1
		w.nextEpoch = w.epoch[w.head]
		w.head++
	}
	// Compact once the settled prefix dominates, so memory follows the
	// records in flight, not the records ever handed.
	if w.head > 1024 && w.head*2 > len(w.offs) {
		n := copy(w.offs, w.offs[w.head:])
		copy(w.done, w.done[w.head:])
		copy(w.epoch, w.epoch[w.head:])
		w.offs, w.done, w.epoch, w.head = w.offs[:n], w.done[:n], w.epoch[:n], 0
	}
	return true
}

// commit returns the offset to commit and its epoch; ok is false while no
// record was settled.
func (w *watermark) commit() (offset int64, epoch int32, ok bool) {
	return w.next, w.nextEpoch, w.next >= 0
}

// pending counts handed records not yet passed by the mark (settled ones
// behind an unsettled one included).
func (w *watermark) pending() int { return len(w.offs) - w.head }
