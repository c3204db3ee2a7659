// Command kinesishop measures Kinesis -> passthrough function -> Kinesis
// through a whole Culvert pipeline, beside the raw AWS SDK rate measured in
// the same run: per shard, a reader doing GetRecords and a writer putting
// each batch it read to another stream with PutRecords (500 records per
// call, failed entries retried), the two overlapping.
//
//	go run ./bench/kinesishop [-records 20000] [-value 100] [-keys 1000] [-shards 4] [-runs 3] [-batch 500] [-instances 2] [-fetch 1000] [-linger 2ms]
//
// Both sides run against one kinesalite (npm, started on 127.0.0.1 by
// internal/kinesistest; install it with .ci/deps), preloaded once; every
// measurement writes to a fresh output stream, and the Culvert side uses a
// fresh lease file, so it includes taking the leases. Both sides ask
// GetRecords for -fetch records at a time, and both measurements end when
// the last record is confirmed by PutRecords. Neither side waits
// between GetRecords calls (the source's fetch_interval is set to 1ms; its
// default of 200ms respects the API's 5 calls per shard per second). The
// Culvert side ends when the engine has acked every source record (all its
// outputs confirmed by PutRecords). It prints records/s (median of -runs)
// and the ratio of Culvert's rate to the raw rate.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox/process"
)

func main() {
	records := flag.Int("records", 20_000, "records in the input stream")
	valueSize := flag.Int("value", 100, "value size in bytes")
	keys := flag.Int("keys", 1000, "distinct partition keys")
	shards := flag.Int("shards", 4, "shards of every stream")
	runs := flag.Int("runs", 3, "measurements per side; the median is printed")
	batch := flag.Int("batch", 500, "function batch size")
	instances := flag.Int("instances", 2, "function instances")
	fetch := flag.Int("fetch", 1000, "GetRecords limit on both sides")
	linger := flag.Duration("linger", 2*time.Millisecond, "the Kinesis output's linger (2ms is its default)")
	flag.Parse()
	if err := run(*records, *valueSize, *keys, *shards, *runs, *batch, *instances, *fetch, *linger); err != nil {
		fmt.Fprintln(os.Stderr, "kinesishop:", err)
		os.Exit(1)
	}
}

func run(records, valueSize, keys, shards, runs, batch, instances, fetch int, linger time.Duration) error {
	dir, err := os.MkdirTemp("", "kinesishop")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir, "github.com/culvert-dev/culvert/examples/functions/passthrough")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the passthrough function: %w", err)
	}
	srv, err := kinesistest.Launch(kinesistest.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	ep := srv.Endpoint()
	c := kinesistest.Client(ep)
	if err := createStream(c, "in", shards); err != nil {
		return err
	}
	if err := preload(c, records, valueSize, keys); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "preloaded %d records of %d bytes (%d keys) into %d shards of kinesalite at %s\n", records, valueSize, keys, shards, ep)

	var raw, cul []float64
	for i := range runs {
		r, err := rawHop(c, records, shards, i, fetch)
		if err != nil {
			return fmt.Errorf("raw run %d: %w", i, err)
		}
		raw = append(raw, r)
		k, err := culvertHop(dir, ep, c, records, shards, i, batch, instances, fetch, linger)
		if err != nil {
			return fmt.Errorf("culvert run %d: %w", i, err)
		}
		cul = append(cul, k)
		fmt.Fprintf(os.Stderr, "run %d: raw %.0f records/s, culvert %.0f records/s\n", i+1, r, k)
	}
	mr, mc := median(raw), median(cul)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "path\trecords\tvalue B\tshards\trecords/s (median of %d)\tratio to raw\t\n", runs)
	fmt.Fprintf(tw, "raw SDK GetRecords+PutRecords\t%d\t%d\t%d\t%.0f\t1.00\t\n", records, valueSize, shards, mr)
	fmt.Fprintf(tw, "culvert kinesis -> passthrough (framed, batch %d, %d instances, linger %s) -> kinesis\t%d\t%d\t%d\t%.0f\t%.2f\t\n", batch, instances, linger, records, valueSize, shards, mc, mc/mr)
	return tw.Flush()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func createStream(c *kinesis.Client, name string, shards int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(int32(shards))}); err != nil {
		return err
	}
	for {
		out, err := c.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(name)})
		if err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s not active: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// putAll puts entries in calls of at most 500, retrying failed entries.
func putAll(ctx context.Context, c *kinesis.Client, stream string, entries []types.PutRecordsRequestEntry) error {
	for len(entries) > 0 {
		n := min(len(entries), 500)
		out, err := c.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries[:n]})
		if err != nil {
			return err
		}
		var retry []types.PutRecordsRequestEntry
		for i, r := range out.Records {
			if r.ErrorCode != nil {
				retry = append(retry, entries[i])
			}
		}
		entries = append(retry, entries[n:]...)
	}
	return nil
}

func preload(c *kinesis.Client, n, size, keys int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	value := make([]byte, size)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	entries := make([]types.PutRecordsRequestEntry, n)
	for i := range entries {
		entries[i] = types.PutRecordsRequestEntry{Data: value, PartitionKey: aws.String("k" + strconv.Itoa(i%keys))}
	}
	return putAll(ctx, c, "in", entries)
}

// rawHop reads every shard of "in" from its start and puts each
// GetRecords batch to a fresh stream, until n records were put.
func rawHop(c *kinesis.Client, n, shards, run, limit int) (float64, error) {
	out := "raw-out-" + strconv.Itoa(run)
	if err := createStream(c, out, shards); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ls, err := c.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String("in")})
	if err != nil {
		return 0, err
	}
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(ls.Shards))
	start := time.Now()
	for _, sh := range ls.Shards {
		// Per shard, a reader and a writer overlap: GetRecords of the next
		// batch runs while the previous one is being put.
		batches := make(chan []types.PutRecordsRequestEntry, 4)
		wg.Add(2)
		go func() {
			defer wg.Done()
			defer close(batches)
			it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String("in"), ShardId: sh.ShardId, ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
			if err != nil {
				errs <- err
				return
			}
			iter := it.ShardIterator
			for iter != nil && ctx.Err() == nil {
				got, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(int32(limit))})
				if err != nil {
					errs <- err
					return
				}
				iter = got.NextShardIterator
				if len(got.Records) == 0 {
					continue
				}
				entries := make([]types.PutRecordsRequestEntry, len(got.Records))
				for i, r := range got.Records {
					entries[i] = types.PutRecordsRequestEntry{Data: r.Data, PartitionKey: r.PartitionKey}
				}
				batches <- entries
			}
		}()
		go func() {
			defer wg.Done()
			for entries := range batches {
				if err := putAll(ctx, c, out, entries); err != nil {
					errs <- err
					cancel()
					for range batches {
					}
					return
				}
				done.Add(int64(len(entries)))
			}
		}()
	}
	// Like the Culvert side, the measurement ends when every record is
	// confirmed by PutRecords.
	for done.Load() < int64(n) && ctx.Err() == nil {
		time.Sleep(2 * time.Millisecond)
	}
	el := time.Since(start)
	cancel()
	wg.Wait()
	close(errs)
	if got := done.Load(); got != int64(n) {
		return 0, fmt.Errorf("raw hop moved %d records, want %d: %v", got, n, <-errs)
	}
	return float64(n) / el.Seconds(), nil
}

func culvertHop(dir, ep string, c *kinesis.Client, n, shards, run, batch, instances, fetch int, linger time.Duration) (float64, error) {
	out := "culvert-out-" + strconv.Itoa(run)
	if err := createStream(c, out, shards); err != nil {
		return 0, err
	}
	conn := fmt.Sprintf("endpoint: %s, region: %s, access_key_id: %s, secret_access_key: %s", ep, kinesistest.Region, kinesistest.AccessKey, kinesistest.SecretKey)
	yaml := fmt.Sprintf(`version: 1
name: kinesishop
inputs:
  in:
    kinesis: { stream: in, %s, application: hop-%d, leases: { path: %s }, fetch_interval: 1ms, idle_interval: 50ms, fetch_limit: %d, max_in_flight: 20000 }
functions:
  pass: { command: %s, mode: framed, instances: %d, batch: { size: %d, max_wait: 1ms } }
routes:
  - name: hop
    chain: [pass]
    outputs: [out]
outputs:
  out: { kinesis: { stream: %s, %s, encoding: value, linger: %s } }
delivery: { max_in_flight: 20000 }
`, conn, run, filepath.Join(dir, "leases-"+strconv.Itoa(run)+".json"), fetch, filepath.Join(dir, "passthrough"), instances, batch, out, conn, linger)
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
		errCh <- runner.Run(ctx, runner.Options{Pipeline: p, Runtime: process.Runtime{}, DataDir: filepath.Join(dir, "data"),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Engine: func(e *engine.Engine) { engCh <- e }})
	}()
	var eng *engine.Engine
	select {
	case eng = <-engCh:
	case err := <-errCh:
		return 0, fmt.Errorf("pipeline stopped: %w", err)
	}
	for eng.Stats().Acked < int64(n) {
		select {
		case err := <-errCh:
			return 0, fmt.Errorf("pipeline stopped early: %w (stats %+v)", err, eng.Stats())
		case <-time.After(2 * time.Millisecond):
		}
	}
	el := time.Since(start)
	cancel()
	if err := <-errCh; err != nil && !errors.Is(err, context.Canceled) {
		return 0, err
	}
	return float64(n) / el.Seconds(), nil
}
