package runner_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/embedded"
	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/testbin"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox/process"
)

const reloadPipeline = `
version: 1
name: reload
sandbox: none
inputs:
  in: { jetstream: { stream: IN, subjects: ["in.>"], max_in_flight: 64 } }
functions:
  mark: { command: sed, args: ["-u", "s/^/%s /"], mode: lines }
routes:
  - { name: main, chain: [mark], outputs: [out] }
outputs:
  out: { jetstream: { subject: out.x, stream: OUT, subjects: ["out.>"] } }
delivery: { shutdown_grace: 5s }
`

// TestReloadOnChange: a pipeline file changed while records flow is
// reloaded (the watcher notices it); an invalid version is refused and the
// running one goes on; every record comes out, the later ones through the
// new version, and none is lost.
func TestReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	logs := &testbin.Buffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := embedded.Start(ctx, embedded.Options{DataDir: filepath.Join(dir, "data"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())

	path := filepath.Join(dir, "pipeline.yaml")
	write := func(s string) {
		t.Helper()
		// Replace the file in one step, as editors do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf(reloadPipeline, "v1"))
	load := func() (*pipelines.Pipeline, error) { return pipelines.Load(path, nil) }
	p, err := load()
	if err != nil {
		t.Fatal(err)
	}
	engines := make(chan *engine.Engine, 10)
	done := make(chan error, 1)
	go func() {
		done <- runner.Reloading(ctx, p, load, runner.Watch(ctx, path, 20*time.Millisecond), func(ctx context.Context, p *pipelines.Pipeline) error {
			return runner.Run(ctx, runner.Options{Pipeline: p, NATSURL: srv.ClientURL(), Runtime: process.Runtime{}, Logger: log,
				Engine: func(e *engine.Engine) { engines <- e }})
		}, log)
	}()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.>"}}); err != nil {
		t.Fatal(err)
	}
	const n = 600
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := js.Publish(ctx, "in.x", fmt.Appendf(nil, "r%d", i)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitOut := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if s, err := js.Stream(ctx, "OUT"); err == nil {
				if info, err := s.Info(ctx); err == nil && int(info.State.Msgs) >= want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d outputs after 30s\n%s", want, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	publish(0, 200)
	// An invalid version is refused while records flow.
	write("version: 1\nname: reload\nroutes: [}\n")
	publish(200, 300)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "reload refused") {
		if time.Now().After(deadline) {
			t.Fatal("the invalid version was not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitOut(300)
	// A valid change is taken up.
	write(fmt.Sprintf(reloadPipeline, "v2"))
	go publish(300, n)
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "pipeline reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitOut(n)

	// Every input has an output; the last ones went through v2.
	cons, err := js.OrderedConsumer(ctx, "OUT", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for range n {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		v, rec, _ := strings.Cut(string(decodeValue(t, m)), " ")
		got[rec] = v
	}
	for i := range n {
		if got[fmt.Sprint("r", i)] == "" {
			t.Errorf("record r%d has no output", i)
		}
	}
	if got["r0"] != "v1" || got[fmt.Sprint("r", n-1)] != "v2" {
		t.Errorf("r0 went through %q, r%d through %q; want v1 and v2", got["r0"], n-1, got[fmt.Sprint("r", n-1)])
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Reloading: %v", err)
	}
	if len(engines) != 2 {
		t.Errorf("%d generations ran, want 2", len(engines))
	}
}

func decodeValue(t *testing.T, m jetstream.Msg) []byte {
	t.Helper()
	rec, err := natsmsg.Decode(m.Headers(), m.Data())
	if err != nil {
		t.Fatal(err)
	}
	return rec.Value
}
