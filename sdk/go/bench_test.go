package culvert_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	culvert "github.com/culvert-dev/culvert/sdk/go"
)

// BenchmarkServePassthrough measures the SDK's cost per record: decoding a
// batch, calling a pass-through Handler per record and encoding the result,
// over in-memory pipes. The host side writes pre-encoded batches and reads
// result frames without decoding them.
func BenchmarkServePassthrough(b *testing.B) {
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("records=%d", size), func(b *testing.B) {
			bt := &culvertv1.Batch{Id: 1, Attempt: 1, DeadlineUnixMs: 1 << 50}
			for i := range size {
				bt.Records = append(bt.Records, &culvertv1.Record{
					Id:          fmt.Sprintf("js:ORDERS:%d", i),
					Key:         []byte("customer-42"),
					Value:       bytes.Repeat([]byte{'x'}, 100),
					ContentType: "application/json",
					Source:      &culvertv1.Position{Connector: "jetstream", Stream: "ORDERS", Subject: "orders.created", Offset: uint64(i)},
				})
			}
			frame, err := framing.Append(nil, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: bt}}, 0)
			if err != nil {
				b.Fatal(err)
			}
			helloFrame, _ := framing.Append(nil, hello(1), 0)

			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			done := make(chan error, 1)
			go func() {
				done <- culvert.Serve(context.Background(), inR, outW, culvert.PerRecord(passThrough))
				outW.Close()
			}()
			r := framing.NewReader(outR, 0)
			inW.Write(helloFrame)
			if _, err := r.Next(); err != nil {
				b.Fatal(err)
			}
			go func() {
				for range b.N {
					if _, err := inW.Write(frame); err != nil {
						return
					}
				}
				inW.Close()
			}()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := r.Next(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms1)
			records := float64(b.N * size)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/records, "ns/record")
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/records, "allocs/record")
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
