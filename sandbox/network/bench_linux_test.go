//go:build linux

package network

import (
	"context"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// BenchmarkPrepare measures what Prepare adds to an instance's start,
// against the bare cost of creating a network namespace in the same run:
//
//	go test -run '^$' -bench BenchmarkPrepare -benchtime 200x -count 3 ./sandbox/network/
//
// unshare: unshare(CLONE_NEWNET) and switch back, the baseline.
// none, egress: Prepare alone (Close is outside the timer).
// egress+close: Prepare and Close.
// BenchmarkPrepareWarm/egress-warm (same command): Prepare with a warm
// namespace ready (Config.Warm), i.e. only the policy is installed; the
// pool refills outside the timer.
func BenchmarkPrepare(b *testing.B) {
	requireRoot(b)
	b.Run("unshare", func(b *testing.B) {
		runtime.LockOSThread() // this goroutine ends with the benchmark
		orig, err := netns.Get()
		if err != nil {
			b.Fatal(err)
		}
		defer orig.Close()
		for b.Loop() {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				b.Fatal(err)
			}
			if err := netns.Set(orig); err != nil {
				b.Fatal(err)
			}
		}
		runtime.UnlockOSThread()
	})
	w := newWorld(b, "cvtbench", "10.213.80.0/22")
	egress := sandbox.Network{Mode: ModeEgress, DNS: "198.18.0.2:5353",
		Allow: []sandbox.Endpoint{ep("198.18.0.2:8080-8081"), ep("10.0.0.0/8:443")}}
	for _, bc := range []struct {
		name  string
		n     sandbox.Network
		close bool
	}{
		{"none", sandbox.Network{}, false},
		{"egress", egress, false},
		{"egress+close", egress, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				a, err := w.m.Prepare(context.Background(), "t", "bench", bc.n)
				if err != nil {
					b.Fatal(err)
				}
				if !bc.close {
					b.StopTimer()
				}
				if err := a.Close(); err != nil {
					b.Fatal(err)
				}
				if !bc.close {
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkPrepareWarm: see BenchmarkPrepare. egress-warm-300-open is the
// same with 300 other egress instances open, for how the host side's
// shared table scales.
func BenchmarkPrepareWarm(b *testing.B) {
	requireRoot(b)
	w := newWorld(b, "cvtbenw", "10.213.96.0/20", warm(4))
	egress := sandbox.Network{Mode: ModeEgress, DNS: "198.18.0.2:5353",
		Allow: []sandbox.Endpoint{ep("198.18.0.2:8080-8081"), ep("10.0.0.0/8:443")}}
	run := func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			waitWarm(b, w.m)
			b.StartTimer()
			a, err := w.m.Prepare(context.Background(), "t", "bench", egress)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := a.Close(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("egress-warm", run)
	b.Run("egress-warm-300-open", func(b *testing.B) {
		b.StopTimer()
		for range 300 {
			a, err := w.m.Prepare(context.Background(), "t", "open", egress)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { a.Close() })
		}
		b.StartTimer()
		run(b)
	})
}
