package kafka

import (
	"sync"
	"testing"
	"time"
)

// TestPendingCount: zero is closed at once when nothing is pending, and
// otherwise once the last done returned, also under concurrent use.
func TestPendingCount(t *testing.T) {
	var p pendingCount
	select {
	case <-p.zero():
	default:
		t.Fatal("zero not closed with nothing pending")
	}
	const n = 10000
	for range n {
		p.add()
	}
	z := p.zero()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 4 {
				select {
				case <-z:
					t.Error("zero closed while records were pending")
					return
				default:
				}
				p.done()
			}
		}()
	}
	wg.Wait()
	select {
	case <-z:
	case <-time.After(5 * time.Second):
		t.Fatal("zero not closed after the last done")
	}
}
