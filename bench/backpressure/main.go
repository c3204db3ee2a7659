// Command backpressure measures how much memory culvert uses in front of a
// large backlog and a slow function: it puts -records records on a
// JetStream stream (an embedded NATS server in this process), runs the
// culvert binary against it with a framed function that sleeps per batch,
// and samples the culvert process's resident memory while it works.
//
//	go run ./bench/backpressure [-records 1000000] [-value 100] [-duration 15s] [-sleep 20ms] [-inflight 256,1024,16384]
//
// One row per in-flight bound, each on its own durable consumer of the same
// backlog, beside a baseline row in the same run: the same pipeline with an
// empty backlog (a consumer that starts at new records). Peak RSS is the
// process's VmHWM; a bounded pipeline's peak follows the bound, not the
// backlog.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
)

func main() {
	records := flag.Int("records", 1_000_000, "records in the backlog")
	valueSize := flag.Int("value", 100, "value size in bytes")
	duration := flag.Duration("duration", 15*time.Second, "how long each row runs")
	sleep := flag.Duration("sleep", 20*time.Millisecond, "the function's sleep per batch")
	inflight := flag.String("inflight", "256,1024,16384", "in-flight bounds (delivery.max_in_flight and the consumer's max_in_flight), one row each")
	flag.Parse()
	if err := run(*records, *valueSize, *duration, *sleep, *inflight); err != nil {
		fmt.Fprintln(os.Stderr, "backpressure:", err)
		os.Exit(1)
	}
}

type row struct {
	name              string
	backlog, inflight int
	peak, end         int64 // KiB
	processed         int
}

func run(records, valueSize int, duration, sleep time.Duration, inflightList string) error {
	dir, err := os.MkdirTemp("", "culvert-backpressure")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintln(os.Stderr, "building culvert and the sleeping function")
	build := exec.Command("go", "build", "-o", dir+"/", "github.com/culvert-dev/culvert/cmd/culvert", "github.com/culvert-dev/culvert/internal/engine/testdata/testfn")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}

	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "store"), NoLog: true, NoSigs: true,
		JetStreamMaxStore: 8 << 30})
	if err != nil {
		return err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		return errors.New("nats server not ready")
	}
	defer srv.Shutdown()
	url := srv.ClientURL()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(16384))
	if err != nil {
		return err
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.>"}}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "publishing %d records of %d bytes\n", records, valueSize)
	start := time.Now()
	value := []byte(strings.Repeat("v", valueSize))
	pending := make([]jetstream.PubAckFuture, 0, 8192)
	for i := range records {
		m := nats.NewMsg("in.x")
		m.Header.Set(natsmsg.HeaderKey, "k"+strconv.Itoa(i%1000))
		m.Data = value
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		pending = append(pending, f)
		if len(pending) == cap(pending) {
			if err := wait(pending); err != nil {
				return err
			}
			pending = pending[:0]
		}
	}
	if err := wait(pending); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "published in %s\n", time.Since(start).Round(time.Millisecond))

	var bounds []int
	for _, s := range strings.Split(inflightList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-inflight: bad bound %q", s)
		}
		bounds = append(bounds, n)
	}
	rows := []row{{name: "baseline: empty backlog", backlog: 0, inflight: bounds[len(bounds)-1]}}
	for _, b := range bounds {
		rows = append(rows, row{name: "backlog", backlog: records, inflight: b})
	}
	for i := range rows {
		r := &rows[i]
		fmt.Fprintf(os.Stderr, "row %d: %s, in flight %d\n", i+1, r.name, r.inflight)
		if err := measure(ctx, js, dir, url, i, r, duration, sleep); err != nil {
			return err
		}
	}

	fmt.Printf("\nculvert RSS with a slow function (sleeps %s per batch of up to 100), %d-byte values, %s per row\n\n", sleep, valueSize, duration)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "| row\t| backlog\t| max in flight\t| peak RSS MiB\t| RSS at end MiB\t| records processed\t| peak / baseline\t|")
	fmt.Fprintln(tw, "|---\t|---\t|---\t|---\t|---\t|---\t|---\t|")
	base := float64(rows[0].peak)
	for _, r := range rows {
		fmt.Fprintf(tw, "| %s\t| %d\t| %d\t| %.1f\t| %.1f\t| %d\t| %.2f\t|\n", r.name, r.backlog, r.inflight,
			float64(r.peak)/1024, float64(r.end)/1024, r.processed, float64(r.peak)/base)
	}
	tw.Flush()
	fmt.Printf("\ncommand: go run ./bench/backpressure -records %d -value %d -duration %s -sleep %s -inflight %s\n", records, valueSize, duration, sleep, inflightList)
	return nil
}

const pipelineYAML = `
version: 1
name: bp%d
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    jetstream: { stream: IN, deliver_policy: %s, max_in_flight: %d, ack_wait: 5m }
functions:
  slow:
    command: %s
    args: [sleep]
    env: { TESTFN_SLEEP: %s }
    instances: 4
    batch: { size: 100, max_wait: 5ms }
routes:
  - { name: main, chain: [slow], outputs: [out] }
outputs:
  out: { jetstream: { subject: "out.%d", stream: OUT%d, subjects: ["out.%d"] } }
delivery: { max_in_flight: %d, shutdown_grace: 1s }
`

func measure(ctx context.Context, js jetstream.JetStream, dir, url string, i int, r *row, duration, sleep time.Duration) error {
	policy := "all"
	if r.backlog == 0 {
		policy = "new"
	}
	pipeline := filepath.Join(dir, fmt.Sprintf("pipeline%d.yaml", i))
	yaml := fmt.Sprintf(pipelineYAML, i, url, policy, r.inflight, filepath.Join(dir, "testfn"), sleep, i, i, i, r.inflight)
	if err := os.WriteFile(pipeline, []byte(yaml), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("culvert%d.log", i)))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(dir, "culvert"), "run", pipeline)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "NATS_URL=")
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		select {
		case err := <-done:
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("culvert exited early (%v):\n%s", err, b)
		case <-time.After(100 * time.Millisecond):
		}
		if hwm, rss, err := memory(cmd.Process.Pid); err == nil {
			r.peak, r.end = max(r.peak, hwm), rss
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	s, err := js.Stream(ctx, fmt.Sprintf("OUT%d", i))
	if err == nil {
		if info, err := s.Info(ctx); err == nil {
			r.processed = int(info.State.Msgs)
		}
	}
	return nil
}

// memory reads VmHWM (peak) and VmRSS (now) of pid, in KiB.
func memory(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			hwm = n
		case "VmRSS:":
			rss = n
		}
	}
	return hwm, rss, nil
}

func wait(fs []jetstream.PubAckFuture) error {
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-time.After(30 * time.Second):
			return errors.New("publish ack timed out")
		}
	}
	return nil
}
