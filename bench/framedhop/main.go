// Command framedhop measures the framed hop: records through one
// passthrough function (sdk/go) in framed mode, at several batch sizes,
// beside a raw `cat` pipe moving the same bytes in the same run.
//
//	go run ./bench/framedhop [-records 1000000] [-value 100] [-batches 1,100,1000] [-runs 3] [-cpu] [-cpuprofile file]
//
// It prints a table of records/s and ns/record (median of -runs), and each
// figure's ratio to the cat pipe. With -cpu it adds the CPU time (user and
// system) per record of the host side (this process) and of the function
// process, medians too.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"github.com/culvert-dev/culvert/sandbox/process"
)

func main() {
	records := flag.Int("records", 1_000_000, "records per measurement at the largest batch size (scaled down for small batches)")
	valueSize := flag.Int("value", 100, "value size in bytes")
	batchList := flag.String("batches", "1,100,1000", "batch sizes")
	runs := flag.Int("runs", 3, "measurements per figure; the median is printed")
	inflight := flag.Int("inflight", 2, "batches outstanding per instance")
	cpu := flag.Bool("cpu", false, "also print CPU ns/record of the host and of the function process")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the host side to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "framedhop:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "framedhop:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*records, *valueSize, *batchList, *runs, *inflight, *cpu); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "framedhop:", err)
		os.Exit(1)
	}
}

func run(records, valueSize int, batchList string, runs, inflight int, cpu bool) error {
	dir, err := os.MkdirTemp("", "framedhop")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir, "github.com/culvert-dev/culvert/examples/functions/passthrough")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the passthrough function: %w", err)
	}
	var batches []int
	for _, s := range strings.Split(batchList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("bad batch size %q", s)
		}
		batches = append(batches, n)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "batch\trecords\tframed rec/s\tframed ns/rec\tcat rec/s\tcat ns/rec\tframed/cat time\t"
	if cpu {
		head += "host cpu ns/rec\tfn cpu ns/rec\t"
	}
	fmt.Fprintln(tw, head)
	for _, b := range batches {
		n := records
		if b < 100 {
			n = min(records, 100_000)
		}
		n = n / b * b
		var hop, cat, hostCPU, fnCPU []time.Duration
		for range runs {
			self0, children0 := cpuTimes()
			d, err := framedRun(filepath.Join(dir, "passthrough"), n, b, valueSize, inflight)
			if err != nil {
				return err
			}
			self1, children1 := cpuTimes()
			hop = append(hop, d)
			hostCPU = append(hostCPU, self1-self0)
			fnCPU = append(fnCPU, children1-children0)
			c, err := catRun(n, b, valueSize)
			if err != nil {
				return err
			}
			cat = append(cat, c)
		}
		h, c := median(hop), median(cat)
		fmt.Fprintf(tw, "%d\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.2f\t", b, n,
			float64(n)/h.Seconds(), float64(h.Nanoseconds())/float64(n),
			float64(n)/c.Seconds(), float64(c.Nanoseconds())/float64(n), h.Seconds()/c.Seconds())
		if cpu {
			fmt.Fprintf(tw, "%.0f\t%.0f\t", float64(median(hostCPU).Nanoseconds())/float64(n), float64(median(fnCPU).Nanoseconds())/float64(n))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// cpuTimes returns the user and system CPU time of this process and of its
// waited-for children so far.
func cpuTimes() (self, children time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) == nil {
		children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return self, children
}

func batchOf(size, valueSize int) []*culvertv1.Record {
	recs := make([]*culvertv1.Record, size)
	for i := range recs {
		recs[i] = &culvertv1.Record{Id: "js:BENCH:" + strconv.Itoa(i), Key: []byte("key-" + strconv.Itoa(i%16)),
			Value: []byte(strings.Repeat("x", valueSize))}
	}
	return recs
}

// framedRun pushes n records through a passthrough instance.
func framedRun(path string, n, batch, valueSize, inflight int) (time.Duration, error) {
	inst, err := fnhost.Start(context.Background(), fnhost.Config{
		Pipeline: "bench", Function: "passthrough", Mode: fnhost.Framed, Path: path,
		MaxBatch: batch, MaxInflight: inflight, Timeout: time.Minute,
		Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return 0, err
	}
	defer inst.Close(context.Background())
	recs := batchOf(batch, valueSize)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	start := time.Now()
	for sent := 0; sent < n; sent += batch {
		wg.Add(1)
		c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) {
			defer wg.Done()
			if err != nil || len(res) != len(recs) {
				mu.Lock()
				failed = fmt.Errorf("batch failed: %v", err)
				mu.Unlock()
			}
		}}
		if err := inst.Submit(context.Background(), c); err != nil {
			return 0, err
		}
	}
	wg.Wait()
	return time.Since(start), failed
}

// catRun moves the bytes of the same frames through `cat` and back.
func catRun(n, batch, valueSize int) (time.Duration, error) {
	frame, err := framing.Append(nil, &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{Id: 1, Records: batchOf(batch, valueSize)}}}, 64<<20)
	if err != nil {
		return 0, err
	}
	cmd := exec.Command("cat")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	total := int64(len(frame)) * int64(n/batch)
	start := time.Now()
	go func() {
		for i := 0; i < n/batch; i++ {
			if _, err := in.Write(frame); err != nil {
				break
			}
		}
		in.Close()
	}()
	got, err := io.Copy(io.Discard, out)
	d := time.Since(start)
	_ = cmd.Wait()
	if err != nil || got != total {
		return 0, fmt.Errorf("cat moved %d of %d bytes: %v", got, total, err)
	}
	return d, nil
}
