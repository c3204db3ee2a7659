// Command sdkhop measures the framed hop through a passthrough function
// written with each SDK (Go, Python, Node, C), in the same run, so that
// the other languages are reported as ratios to the Go SDK.
//
//	go run ./bench/sdkhop [-records 200000] [-batch 1000] [-value 100] [-runs 3] [-langs go,go-emit,python,node,c]
//
// Every SDK's passthrough answers with its form of the protocol's
// "unchanged" capability (culvert.Pass in Go): the records are not sent
// back. "go-emit" is the Go passthrough returning each record with
// culvert.Emit instead, which sends it back.
//
// Run it from the repository root after `make deps` (it needs
// /usr/bin/python3 with python3-protobuf, node with sdk/node/node_modules,
// and cc). It prints records/s and ns/record (median of -runs) per
// language, each with its throughput relative to the Go SDK's. Every
// figure is the wall time from the first batch sent to the last result
// read by the host, after the handshake, with values of -value bytes,
// keys and ids; runs are interleaved across the SDKs, and the last column
// shows the slowest and fastest run, so that noise is visible.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sandbox/process"
)

type lang struct {
	name string
	path string
	args []string
}

func main() {
	records := flag.Int("records", 200_000, "records per measurement")
	batch := flag.Int("batch", 1000, "records per batch")
	valueSize := flag.Int("value", 100, "value size in bytes")
	runs := flag.Int("runs", 3, "measurements per language; the median is printed")
	inflight := flag.Int("inflight", 2, "batches outstanding per instance")
	langs := flag.String("langs", "go,go-emit,python,node,c", "SDKs to measure, in this order")
	flag.Parse()
	if err := run(os.Stdout, *records, *batch, *valueSize, *runs, *inflight, strings.Split(*langs, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "sdkhop:", err)
		os.Exit(1)
	}
}

// run measures each SDK of names and writes the table to w.
func run(w io.Writer, records, batch, valueSize, runs, inflight int, names []string) error {
	if batch < 1 {
		return fmt.Errorf("-batch %d: want at least 1", batch)
	}
	n := records / batch * batch
	if n == 0 {
		return fmt.Errorf("-records %d is less than one batch of %d", records, batch)
	}
	if runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", runs)
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sdkhop")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ls []lang
	for _, n := range names {
		l, err := prepare(strings.TrimSpace(n), root, dir)
		if err != nil {
			return err
		}
		ls = append(ls, l)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "sdk\tbatch\trecords\trec/s\tns/rec\tvs go\tslowest..fastest rec/s\t\n")
	// Runs are interleaved (each round measures every SDK once) so that a
	// change in the machine's load touches all of them alike.
	ds := make([][]time.Duration, len(ls))
	for range runs {
		for i, l := range ls {
			d, err := framedRun(l, n, batch, valueSize, inflight)
			if err != nil {
				return fmt.Errorf("%s: %w", l.name, err)
			}
			ds[i] = append(ds[i], d)
		}
	}
	var base float64
	for i, l := range ls {
		slices.Sort(ds[i])
		d := ds[i][len(ds[i])/2]
		rate := float64(n) / d.Seconds()
		if l.name == "go" {
			base = rate
		}
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", rate/base)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.0f\t%s\t%.0f..%.0f\t\n", l.name, batch, n, rate, float64(d.Nanoseconds())/float64(n), ratio,
			float64(n)/ds[i][len(ds[i])-1].Seconds(), float64(n)/ds[i][0].Seconds())
	}
	return tw.Flush()
}

// prepare builds what a language needs and says how to start its
// passthrough example.
func prepare(name, root, dir string) (lang, error) {
	switch name {
	case "go", "go-emit":
		if err := command(root, "go", "build", "-o", dir, "./examples/functions/passthrough"); err != nil {
			return lang{}, fmt.Errorf("building the Go passthrough: %w", err)
		}
		if name == "go-emit" { // culvert.Emit: each record is sent back
			return lang{name: name, path: filepath.Join(dir, "passthrough"), args: []string{"--emit"}}, nil
		}
		return lang{name: name, path: filepath.Join(dir, "passthrough")}, nil
	case "python":
		return lang{name: name, path: "/usr/bin/python3", args: []string{filepath.Join(root, "sdk/python/examples/passthrough/main.py")}}, nil
	case "node":
		node, err := exec.LookPath("node")
		if err != nil {
			return lang{}, err
		}
		return lang{name: name, path: node, args: []string{filepath.Join(root, "sdk/node/examples/passthrough/index.js")}}, nil
	case "c":
		out := filepath.Join(dir, "passthrough-c")
		if err := command(root, "cc", "-O2", "-Wall", "-Wextra", "-Werror", "-Isdk/c", "-o", out,
			"sdk/c/culvert.c", "sdk/c/examples/passthrough/main.c"); err != nil {
			return lang{}, fmt.Errorf("building the C passthrough: %w", err)
		}
		return lang{name: name, path: out}, nil
	}
	return lang{}, fmt.Errorf("unknown SDK %q (want go, go-emit, python, node or c)", name)
}

func command(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run sdkhop inside the culvert repository")
	}
	return filepath.Dir(mod), nil
}

func batchOf(size, valueSize int) []*culvertv1.Record {
	recs := make([]*culvertv1.Record, size)
	for i := range recs {
		recs[i] = &culvertv1.Record{Id: "js:BENCH:" + strconv.Itoa(i), Key: []byte("key-" + strconv.Itoa(i%16)),
			Value: []byte(strings.Repeat("x", valueSize))}
	}
	return recs
}

// framedRun pushes n records through one instance of l, after its
// handshake, and checks that every record came back.
func framedRun(l lang, n, batch, valueSize, inflight int) (time.Duration, error) {
	var logs lockedBuffer // the host's log, with the function's stderr: shown on failure
	var mu sync.Mutex
	inst, err := fnhost.Start(context.Background(), fnhost.Config{
		Pipeline: "bench", Function: "passthrough", Mode: fnhost.Framed, Path: l.path, Args: l.args,
		Env:      []string{"PATH=" + os.Getenv("PATH")},
		MaxBatch: batch, MaxInflight: inflight, Timeout: time.Minute, HandshakeTimeout: 30 * time.Second,
		Runtime: process.Runtime{}, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		return 0, fmt.Errorf("%w (log: %s)", err, logs.String())
	}
	defer inst.Close(context.Background())
	recs := batchOf(batch, valueSize)
	var wg sync.WaitGroup
	var failed error
	start := time.Now()
	for sent := 0; sent < n; sent += batch {
		wg.Add(1)
		c := &fnhost.Call{Records: recs, Attempt: 1, Done: func(res []fnhost.Result, err error) {
			defer wg.Done()
			bad := err
			if bad == nil && len(res) != len(recs) {
				bad = fmt.Errorf("%d results for %d records", len(res), len(recs))
			}
			for i := 0; bad == nil && i < len(res); i++ {
				if res[i].Failure != nil || len(res[i].Outputs) != 1 || len(res[i].Outputs[0].Record.GetValue()) != valueSize {
					bad = fmt.Errorf("record %d did not pass through: %+v", i, res[i])
				}
			}
			if bad != nil {
				mu.Lock()
				failed = bad
				mu.Unlock()
			}
		}}
		if err := inst.Submit(context.Background(), c); err != nil {
			return 0, fmt.Errorf("%w (log: %s)", err, logs.String())
		}
	}
	wg.Wait()
	d := time.Since(start)
	if failed != nil {
		return 0, fmt.Errorf("%w (log: %s)", failed, logs.String())
	}
	return d, nil
}

// lockedBuffer is a bytes.Buffer that the host's goroutines may log to
// concurrently.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
