// Command kafkahop measures Kafka -> passthrough function -> Kafka through a
// whole Culvert pipeline, beside the raw franz-go rate measured in the same
// run: one consumer group reading the same input and producing every record
// to another topic with the same producer settings (idempotent, acks=all),
// waiting for every produce acknowledgement.
//
//	go run ./bench/kafkahop [-records 200000] [-value 100] [-keys 1000] [-runs 3] [-batch 1000] [-instances 1]
//
// Both sides run against one in-process kfake cluster (3 brokers, 3
// partitions) on 127.0.0.1, preloaded once; every measurement uses a fresh
// consumer group and output topic, and includes joining the group. The
// Culvert side ends when the engine has acked every source record (all its
// outputs confirmed by the broker). It prints records/s (median of -runs)
// and the ratio of Culvert's rate to the raw rate, and the CPU time per
// record (this process, kfake included, plus the function processes) with
// its ratio: on a loaded machine the CPU cost is the steadier figure. The
// function processes' share is printed on its own. An unmeasured raw pass
// runs first: the first pass over the input costs any client more.
//
// -nofunction adds a run with an empty chain (connectors and engine only).
// -floor adds the floor of any function over standard input and output:
// the raw loop with every record's key and value sent through a `cat`
// process and read back (length-prefixed, no protobuf, no engine) before
// it is produced. Where that row is below a ratio, no stdio function
// protocol can reach it on this machine.
// -function runs a prebuilt function instead of building the passthrough
// example, and -fnenv sets its environment (e.g. GOGC=400). -cpuprofile and
// -memprofile profile this process during the first run of the side named
// by -profile (raw, culvert or bare).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
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
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox/process"
)

func main() {
	records := flag.Int("records", 200_000, "records in the input topic")
	valueSize := flag.Int("value", 100, "value size in bytes")
	keys := flag.Int("keys", 1000, "distinct keys")
	runs := flag.Int("runs", 3, "measurements per side; the median is printed")
	batch := flag.Int("batch", 1000, "function batch size")
	instances := flag.Int("instances", 1, "function instances (on two cores a second Go function process costs more CPU per record than it brings)")
	noFn := flag.Bool("nofunction", false, "also measure the pipeline with an empty chain (connectors and engine only)")
	floor := flag.Bool("floor", false, "also measure the raw loop with every record sent through a cat process and back (the floor of a stdio function)")
	fnEnv := flag.String("fnenv", "", "environment of the function processes, as KEY=VALUE[,KEY=VALUE...] (e.g. GOGC=400)")
	fnBin := flag.String("function", "", "the function to run instead of examples/functions/passthrough (built afresh); it must pass every record through unchanged")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (kfake included) during the first measured run of -profile's side to this file")
	memProfile := flag.String("memprofile", "", "write allocation profiles of this process taken before and after the first measured run of -profile's side to this file and this file + \".base\" (go tool pprof -sample_index=alloc_space -base FILE.base FILE)")
	profSide := flag.String("profile", "culvert", "the side -cpuprofile covers: raw, culvert (with the function), bare (empty chain) or floor (raw through cat)")
	flag.Parse()
	prof := &profiler{side: *profSide, mem: *memProfile}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kafkahop:", err)
			os.Exit(1)
		}
		defer f.Close()
		prof.f = f
	}
	if err := run(*records, *valueSize, *keys, *runs, *batch, *instances, *noFn, *floor, fnSpec{*fnBin, *fnEnv}, prof); err != nil {
		fmt.Fprintln(os.Stderr, "kafkahop:", err)
		os.Exit(1)
	}
}

// profiler profiles the first measurement of one side.
type profiler struct {
	side string
	f    *os.File // nil: done, or no profile asked for
	mem  string   // "": done, or no profile asked for
}

func (p *profiler) around(side string, f func() (float64, error)) (float64, error) {
	if side != p.side {
		return f()
	}
	if p.mem != "" {
		if err := writeAllocs(p.mem + ".base"); err != nil {
			return 0, err
		}
		defer func() {
			if err := writeAllocs(p.mem); err != nil {
				fmt.Fprintln(os.Stderr, "kafkahop:", err)
			}
			p.mem = ""
		}()
	}
	if p.f != nil {
		if err := pprof.StartCPUProfile(p.f); err != nil {
			return 0, err
		}
		defer func() { pprof.StopCPUProfile(); p.f = nil }()
	}
	return f()
}

func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// measure runs f and returns its rate and the CPU time per record of this
// process and of the function processes (children reaped meanwhile).
func measure(n int, f func() (float64, error)) (rate, cpu, fnCPU float64, err error) {
	c0, k0 := cpuNow(), cpuChildren()
	rate, err = f()
	cpu = float64((cpuNow() - c0).Nanoseconds()) / float64(n)
	fnCPU = float64((cpuChildren() - k0).Nanoseconds()) / float64(n)
	return rate, cpu, fnCPU, err
}

// fnSpec is the function the Culvert side runs: its binary ("": build
// examples/functions/passthrough) and its env (KEY=VALUE,...).
type fnSpec struct{ bin, env string }

func run(records, valueSize, keys, runs, batch, instances int, noFn, floor bool, spec fnSpec, prof *profiler) error {
	fn := spec.bin
	dir, err := os.MkdirTemp("", "kafkahop")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if fn == "" {
		fn = filepath.Join(dir, "passthrough")
		build := exec.Command("go", "build", "-o", dir, "github.com/culvert-dev/culvert/examples/functions/passthrough")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building the passthrough function: %w", err)
		}
	} else if fn, err = filepath.Abs(fn); err != nil {
		return err
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(3, "in"), kfake.DefaultNumPartitions(3), kfake.AllowAutoTopicCreation())
	if err != nil {
		return err
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	if err := preload(brokers, records, valueSize, keys); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "preloaded %d records of %d bytes (%d keys) into 3 partitions on 3 kfake brokers\n", records, valueSize, keys)
	// The first pass over the input costs kfake and the Go runtime more
	// (heap growth) than later ones, whoever makes it: an unmeasured raw
	// pass takes it, so that every measured run finds the same state.
	if _, err := rawHop(brokers, records, -1); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	var raw, cul, bare, piped []float64
	var rawCPU, culCPU, bareCPU, fnCPU, pipedCPU, catCPU []float64
	for i := range runs {
		r, rc, _, err := measure(records, func() (float64, error) {
			return prof.around("raw", func() (float64, error) { return rawHop(brokers, records, i) })
		})
		if err != nil {
			return fmt.Errorf("raw run %d: %w", i, err)
		}
		raw, rawCPU = append(raw, r), append(rawCPU, rc)
		k, kc, fc, err := measure(records, func() (float64, error) {
			return prof.around("culvert", func() (float64, error) {
				return culvertHop(dir, fnSpec{fn, spec.env}, brokers, records, i, batch, instances, true)
			})
		})
		if err != nil {
			return fmt.Errorf("culvert run %d: %w", i, err)
		}
		cul, culCPU, fnCPU = append(cul, k), append(culCPU, kc), append(fnCPU, fc)
		fmt.Fprintf(os.Stderr, "run %d: raw %.0f records/s, culvert %.0f records/s\n", i+1, r, k)
		if noFn {
			b, bc, _, err := measure(records, func() (float64, error) {
				return prof.around("bare", func() (float64, error) {
					return culvertHop(dir, fnSpec{fn, spec.env}, brokers, records, i, batch, instances, false)
				})
			})
			if err != nil {
				return fmt.Errorf("culvert run %d without function: %w", i, err)
			}
			bare, bareCPU = append(bare, b), append(bareCPU, bc)
			fmt.Fprintf(os.Stderr, "run %d: culvert without function %.0f records/s\n", i+1, b)
		}
		if floor {
			f, fc, cc, err := measure(records, func() (float64, error) {
				return prof.around("floor", func() (float64, error) { return catHop(brokers, records, i) })
			})
			if err != nil {
				return fmt.Errorf("raw run %d through cat: %w", i, err)
			}
			piped, pipedCPU, catCPU = append(piped, f), append(pipedCPU, fc), append(catCPU, cc)
			fmt.Fprintf(os.Stderr, "run %d: raw through cat %.0f records/s\n", i+1, f)
		}
	}
	mr, mc := median(raw), median(cul)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	mrc, mcc := median(rawCPU), median(culCPU)
	// Each run's culvert measurement follows its raw one, so the ratio
	// within a run is less exposed to load swings than the ratio of
	// medians; both are printed.
	pairs := make([]float64, len(raw))
	for i := range raw {
		pairs[i] = cul[i] / raw[i]
	}
	summary := []string{fmt.Sprintf("median of the per-run ratios culvert/raw: %.2f (runs: %s)", median(pairs), fmtRatios(pairs))}
	fmt.Fprintf(tw, "path\trecords\tvalue B\trecords/s (median of %d)\tratio to raw\tCPU ns/record\tCPU ratio to raw\tof which functions\t\n", runs)
	fmt.Fprintf(tw, "raw franz-go consume+produce\t%d\t%d\t%.0f\t1.00\t%.0f\t1.00\t\t\n", records, valueSize, mr, mrc)
	fmt.Fprintf(tw, "culvert kafka -> passthrough (framed, batch %d, %d instances) -> kafka\t%d\t%d\t%.0f\t%.2f\t%.0f\t%.2f\t%.0f\t\n", batch, instances, records, valueSize, mc, mc/mr, mcc, mcc/mrc, median(fnCPU))
	if noFn {
		mb, mbc := median(bare), median(bareCPU)
		fmt.Fprintf(tw, "culvert kafka -> (empty chain) -> kafka\t%d\t%d\t%.0f\t%.2f\t%.0f\t%.2f\t\t\n", records, valueSize, mb, mb/mr, mbc, mbc/mrc)
	}
	if floor {
		mp, mpc := median(piped), median(pipedCPU)
		fmt.Fprintf(tw, "floor: raw franz-go, records through cat and back\t%d\t%d\t%.0f\t%.2f\t%.0f\t%.2f\t%.0f\t\n", records, valueSize, mp, mp/mr, mpc, mpc/mrc, median(catCPU))
		pp := make([]float64, len(raw))
		for i := range raw {
			pp[i] = piped[i] / raw[i]
		}
		summary = append(summary, fmt.Sprintf("median of the per-run ratios floor/raw: %.2f (runs: %s)", median(pp), fmtRatios(pp)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range summary {
		fmt.Println(line)
	}
	return nil
}

// cpuNow is the CPU time (user + system) of this process and of its
// reaped children (the function processes, once a pipeline stopped). Both
// sides share the in-process kfake brokers, whose work is counted in both.
func cpuNow() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

// cpuChildren is the CPU time of the reaped children: the function
// processes of the pipelines that stopped.
func cpuChildren() time.Duration {
	var kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	return time.Duration(kids.Utime.Nano() + kids.Stime.Nano())
}

// envYAML turns KEY=VALUE,KEY=VALUE into the body of a YAML flow map.
func envYAML(env string) string {
	var parts []string
	for kv := range strings.SplitSeq(env, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			parts = append(parts, strconv.Quote(k)+": "+strconv.Quote(v))
		}
	}
	return strings.Join(parts, ", ")
}

func fmtRatios(v []float64) string {
	parts := make([]string, len(v))
	for i, r := range v {
		parts[i] = fmt.Sprintf("%.2f", r)
	}
	return strings.Join(parts, " ")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func preload(brokers []string, n, size, keys int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	val := []byte(strings.Repeat("x", size))
	var failed atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		cl.Produce(context.Background(), &kgo.Record{Topic: "in", Key: []byte("key-" + strconv.Itoa(i%keys)), Value: val}, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Store(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	return nil
}

func createTopic(brokers []string, topic string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, 3, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	return err
}

// newProducer creates topic out and returns the raw sides' producer: the
// settings of Culvert's Kafka sink (idempotent, acks=all, at most 10,000
// records buffered).
func newProducer(brokers []string, out string) (*kgo.Client, error) {
	if err := createTopic(brokers, out); err != nil {
		return nil, err
	}
	return kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.MaxBufferedRecords(10000))
}

// acks counts the raw sides' produce acknowledgements: done is closed at
// the n-th, and the last error is kept.
type acks struct {
	n      int64
	count  atomic.Int64
	failed atomic.Value
	done   chan struct{}
}

func newAcks(n int) *acks { return &acks{n: int64(n), done: make(chan struct{})} }

// promise is the produce promise.
func (a *acks) promise(_ *kgo.Record, err error) {
	if err != nil {
		a.failed.Store(err)
	}
	if a.count.Add(1) == a.n {
		close(a.done)
	}
}

// err is the last produce error, if any.
func (a *acks) err() error {
	err, _ := a.failed.Load().(error)
	return err
}

// rate commits cons's offsets, once every record is acknowledged, and
// returns the records per second since start, or the last produce error.
func (a *acks) rate(ctx context.Context, cons *kgo.Client, start time.Time) (float64, error) {
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		return 0, err
	}
	el := time.Since(start)
	if err := a.err(); err != nil {
		return 0, err
	}
	return float64(a.n) / el.Seconds(), nil
}

// newConsumer is the raw sides' consumer: a new group reading "in" from
// the start with cooperative-sticky balancing, committing by hand.
func newConsumer(brokers []string, group string) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics("in"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit(), kgo.Balancers(kgo.CooperativeStickyBalancer()))
}

// rawHop consumes "in" in a fresh group and produces each record to a
// fresh topic, marking offsets after each acknowledgement and committing
// them at the end: the work a consume-transform-produce loop must do at
// least, with no function in between.
func rawHop(brokers []string, n, run int) (float64, error) {
	out := "raw-out-" + strconv.Itoa(run) // run -1: the warm-up
	prod, err := newProducer(brokers, out)
	if err != nil {
		return 0, err
	}
	defer prod.Close()
	start := time.Now()
	cons, err := newConsumer(brokers, "raw-"+strconv.Itoa(run))
	if err != nil {
		return 0, err
	}
	defer cons.Close()
	a := newAcks(n)
	ctx := context.Background()
	for seen := 0; seen < n; {
		fs := cons.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			seen++
			prod.Produce(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: r.Value, Headers: r.Headers}, a.promise)
		})
	}
	<-a.done
	return a.rate(ctx, cons, start)
}

// catHop is rawHop with a `cat` process between the consumer and the
// producer: each polled batch of records is written to cat's standard
// input as length-prefixed keys and values (through a 1 MiB buffer,
// flushed after each poll), and a reader produces each record as it comes
// back on cat's standard output. It is what a function
// over standard input and output costs at the least: two pipe copies each
// way and a process that moves the bytes, with no framing, encoding or
// bookkeeping.
func catHop(brokers []string, n, run int) (float64, error) {
	out := "cat-out-" + strconv.Itoa(run)
	prod, err := newProducer(brokers, out)
	if err != nil {
		return 0, err
	}
	defer prod.Close()
	start := time.Now()
	cat := exec.Command("cat")
	stdin, err := cat.StdinPipe()
	if err != nil {
		return 0, err
	}
	stdout, err := cat.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cat.Start(); err != nil {
		return 0, fmt.Errorf("starting cat: %w", err)
	}
	// Pipes of 1 MiB, as the host grows a function's to its frames: fewer
	// wake-ups than the default 64 KiB (best effort: pipe-max-size).
	for _, p := range []any{stdin, stdout} {
		if f, ok := p.(interface{ Fd() uintptr }); ok {
			_, _ = unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
		}
	}
	defer func() { _ = stdin.Close(); _ = cat.Wait() }()
	cons, err := newConsumer(brokers, "cat-"+strconv.Itoa(run))
	if err != nil {
		return 0, err
	}
	defer cons.Close()
	a := newAcks(n)
	ctx := context.Background()
	readErr := make(chan error, 1)
	go func() {
		// A record is its key's and its value's lengths (4 bytes each),
		// then both: one read of the lengths, one allocation and one read
		// for the bytes.
		r := bufio.NewReaderSize(stdout, 1<<20)
		var hdr [8]byte
		for range n {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				readErr <- fmt.Errorf("reading cat's output: %w", err)
				_ = cat.Process.Kill() // the writer then fails instead of filling the pipes
				return
			}
			kl, vl := binary.LittleEndian.Uint32(hdr[:4]), binary.LittleEndian.Uint32(hdr[4:])
			b := make([]byte, kl+vl)
			if _, err := io.ReadFull(r, b); err != nil {
				readErr <- fmt.Errorf("reading cat's output: %w", err)
				_ = cat.Process.Kill() // the writer then fails instead of filling the pipes
				return
			}
			key, val := b[:kl:kl], b[kl:]
			prod.Produce(ctx, &kgo.Record{Topic: out, Key: key, Value: val}, a.promise)
		}
	}()
	w := bufio.NewWriterSize(stdin, 1<<20)
	var hdr [8]byte
	for seen := 0; seen < n; {
		fs := cons.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			seen++
			binary.LittleEndian.PutUint32(hdr[:4], uint32(len(r.Key)))
			binary.LittleEndian.PutUint32(hdr[4:], uint32(len(r.Value)))
			w.Write(hdr[:])
			w.Write(r.Key)
			w.Write(r.Value)
		})
		if err := w.Flush(); err != nil {
			return 0, fmt.Errorf("writing to cat: %w", err)
		}
	}
	select {
	case <-a.done:
	case err := <-readErr:
		return 0, err
	}
	return a.rate(ctx, cons, start)
}

func culvertHop(dir string, fn fnSpec, brokers []string, n, run, batch, instances int, withFn bool) (float64, error) {
	out := "culvert-out-" + strconv.Itoa(run)
	chain := "[pass]"
	if !withFn {
		out += "-bare"
		chain = "[]"
	}
	if err := createTopic(brokers, out); err != nil {
		return 0, err
	}
	bl := "[" + strings.Join(brokers, ", ") + "]"
	yaml := fmt.Sprintf(`version: 1
name: kafkahop
inputs:
  in: { kafka: { brokers: %s, topics: [in], group: %s, max_in_flight: 20000 } }
functions:
  pass: { command: %s, mode: framed, instances: %d, batch: { size: %d, max_wait: 1ms }, env: { %s } }
routes:
  - name: hop
    chain: %s
    outputs: [out]
outputs:
  out: { kafka: { brokers: %s, topic: %s, encoding: value } }
delivery: { max_in_flight: 20000 }
`, bl, out, fn.bin, instances, batch, envYAML(fn.env), chain, bl, out)
	path := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		return 0, err
	}
	p, err := pipelines.Load(path, nil)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engCh := make(chan *engine.Engine, 1)
	errCh := make(chan error, 1)
	start := time.Now()
	go func() {
		errCh <- runner.Run(ctx, runner.Options{Pipeline: p, Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Engine: func(e *engine.Engine) { engCh <- e }})
	}()
	var eng *engine.Engine
	select {
	case eng = <-engCh:
	case err := <-errCh:
		return 0, fmt.Errorf("pipeline stopped: %w", err)
	}
	last := time.Now()
	for eng.Stats().Acked < int64(n) {
		if os.Getenv("KAFKAHOP_TRACE") != "" && time.Since(last) > 100*time.Millisecond {
			last = time.Now()
			st := eng.Stats()
			fmt.Fprintf(os.Stderr, "  %5dms in %d acked %d in-flight %d\n", time.Since(start).Milliseconds(), st.In, st.Acked, st.InFlight)
		}
		select {
		case err := <-errCh:
			return 0, fmt.Errorf("pipeline stopped early: %w (stats %+v)", err, eng.Stats())
		case <-time.After(2 * time.Millisecond):
		}
	}
	el := time.Since(start)
	cancel()
	if err := <-errCh; err != nil {
		return 0, err
	}
	return float64(n) / el.Seconds(), nil
}
