package main

// End-to-end tests of culvert test, tap, replay and diff: the built binary
// against an embedded NATS server and kfake started here, on 127.0.0.1.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/natstest"
	"github.com/culvert-dev/culvert/internal/tap"
)

func TestTestCommandExamples(t *testing.T) {
	for _, ex := range []string{"order-events", "pii-redaction", "payments-fanout"} {
		t.Run(ex, func(t *testing.T) {
			r := runCLI(t, "", nil, 180*time.Second, "test", filepath.Join("../../examples", ex, "pipeline.yaml"))
			if r.code != 0 || !strings.Contains(r.stdout, "ok  \t") || strings.Contains(r.stdout, "--- FAIL") {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// TestTestCommandFailure: a failing case exits 1 with a readable diff.
func TestTestCommandFailure(t *testing.T) {
	r := runCLI(t, "../../internal/pipetest/testdata/failing", nil, 180*time.Second, "test", "pipeline.yaml")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"--- PASS: passes",
		"--- FAIL: wrong-value-and-subject",
		`pipeline.test.yaml:10:13: output "out" record 1 (id wrong-value-and-subject:1/upper.0):`,
		`json: $.TAGS[0]: got "X", want "Y"`,
		`subject: got "out.in.a", want "out.in.b"`,
		`output "copies" got 1 record, none expected`,
		"FAIL\tpipeline.test.yaml",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "4 of 5 test cases failed") {
		t.Errorf("stderr: %s", r.stderr)
	}
}

// TestTestCommandBadFile: a broken test file is reported with file:line:col
// and field path, and nothing runs.
func TestTestCommandBadFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("version: 1\nname: p\ninputs: {in: {nats: {subjects: [a]}}}\nroutes: [{name: r, outputs: [o]}]\noutputs: {o: {nats: {subject: b}}}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "p.test.yaml"), []byte("version: 1\ncases:\n  - name: x\n    records: [{valeu: a}]\n    expect: {o: {count: -1}}\n"), 0o644)
	r := runCLI(t, dir, nil, 30*time.Second, "test", "p.yaml")
	if r.code != 1 {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{
		`p.test.yaml:4:16: cases[0].records[0]: unknown field "valeu"; did you mean value?`,
		`p.test.yaml:5:25: cases[0].expect.o.count: must be at least 0, got -1`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

// TestTapReplayDiffJetStream taps a JetStream stream with the CLI, replays
// the tap file as a dry run and to the real outputs, and diffs two
// pipeline versions on it.
func TestTapReplayDiffJetStream(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SHOP_EVENTS", Subjects: []string{"shop.events.>"}}); err != nil {
		t.Fatal(err)
	}
	events := []string{
		`{"type":"order.created","id":1,"country":"FR","items":[{"qty":1,"price":3}]}`,
		`{"type":"order.cancelled","id":2,"country":"US","items":[]}`,
		`{"type":"order.created","id":3,"country":"BR","items":[]}`,
		`{"type":"page.viewed","id":4}`,
	}
	for i, e := range events {
		m := nats.NewMsg(fmt.Sprintf("shop.events.ch%d", i))
		m.Data = []byte(e)
		m.Header.Set("tenant", "acme")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	tapFile := filepath.Join(dir, "events.tap")
	r := runCLI(t, "", nil, 30*time.Second, "tap", "jetstream://SHOP_EVENTS?from=first", "-o", tapFile, "--nats-url", srv.ClientURL())
	if r.code != 0 || !strings.Contains(r.stderr, "tap: 4 records from jetstream://SHOP_EVENTS") {
		t.Fatalf("tap: exit %d\n%s", r.code, r.stderr)
	}
	recs, err := tap.ReadFile(tapFile, "")
	if err != nil || len(recs) != 4 {
		t.Fatalf("tap file: %d records, %v", len(recs), err)
	}
	if recs[2].Source.GetOffset() != 3 || recs[2].Source.GetSubject() != "shop.events.ch2" || len(recs[2].Headers) != 1 {
		t.Errorf("record 3 lost metadata: %v", recs[2])
	}
	// NDJSON to stdout, with a count.
	r = runCLI(t, "", nil, 30*time.Second, "tap", "jetstream://SHOP_EVENTS?from=2", "--count", "2", "--format", "ndjson", "--nats-url", srv.ClientURL())
	if r.code != 0 || strings.Count(r.stdout, "\n") != 2 || !strings.Contains(r.stdout, `"id":"js:SHOP_EVENTS:2"`) {
		t.Fatalf("tap ndjson: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "tap: 2 records") {
		t.Errorf("no plain-text summary off a terminal: %s", r.stderr)
	}

	pipeline := "../../examples/order-events/pipeline.yaml"
	r = runCLI(t, "", nil, 180*time.Second, "replay", pipeline, "--input", tapFile, "--dry-run", "--rate", "100")
	if r.code != 0 || strings.Count(r.stdout, `"output":"fulfilment"`) != 2 || strings.Count(r.stdout, `"output":"refunds"`) != 1 || strings.Count(r.stdout, `"output":"unrouted"`) != 1 {
		t.Fatalf("replay --dry-run: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "replay: 4 records in, 0 dead-lettered, 0 given back") {
		t.Errorf("summary: %s", r.stderr)
	}

	// To the real outputs: streams on the same server.
	r = runCLI(t, "", nil, 180*time.Second, "replay", pipeline, "--input", tapFile, "--nats-url", srv.ClientURL())
	if r.code != 0 {
		t.Fatalf("replay: exit %d\n%s", r.code, r.stderr)
	}
	for stream, want := range map[string]uint64{"FULFILMENT": 2, "REFUNDS": 1, "UNROUTED": 1} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		info, _ := s.Info(ctx)
		if info.State.Msgs != want {
			t.Errorf("stream %s holds %d, want %d", stream, info.State.Msgs, want)
		}
	}

	// Live from a position, as a dry run.
	r = runCLI(t, "", nil, 180*time.Second, "replay", pipeline, "--from", "jetstream://SHOP_EVENTS?from=4", "--dry-run", "--nats-url", srv.ClientURL())
	if r.code != 0 || strings.Count(r.stdout, `"output":"unrouted"`) != 1 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("replay --from: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	r = runCLI(t, "", nil, 180*time.Second, "diff", pipeline, "../../internal/pipediff/testdata/v2/pipeline.yaml", "--input", tapFile)
	if r.code != 1 || !strings.Contains(r.stdout, "2 of 4 records differ") ||
		!strings.Contains(r.stdout, "record 2 (js:SHOP_EVENTS:2 subject shop.events.ch1)") ||
		!strings.Contains(r.stdout, `\"region\":\"latam\"`) {
		t.Fatalf("diff: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, "", nil, 180*time.Second, "diff", pipeline, pipeline, "--input", tapFile)
	if r.code != 0 || !strings.Contains(r.stdout, "0 of 4 records differ") {
		t.Fatalf("diff with itself: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestTapKafkaKeepsGroupOffsets taps a Kafka topic with the CLI while a
// consumer group has committed offsets on it; kadm shows them unchanged.
func TestTapKafkaKeepsGroupOffsets(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 1})
	c.CreateTopic(t, "payments", 2)
	var recs []*kgo.Record
	for i := range 6 {
		recs = append(recs, &kgo.Record{Topic: "payments", Partition: int32(i % 2), Value: []byte(fmt.Sprintf("v%d", i))})
	}
	c.Produce(t, recs, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	adm := kadm.NewClient(c.Client(t))
	ctx := context.Background()
	offs := kadm.Offsets{}
	offs.AddOffset("payments", 0, 1, -1)
	offs.AddOffset("payments", 1, 2, -1)
	if err := adm.CommitAllOffsets(ctx, "settlement", offs); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "payments.tap")
	r := runCLI(t, "", nil, 30*time.Second, "tap", "kafka://"+strings.Join(c.Brokers, ",")+"/payments?partitions=1&from=first", "-o", out)
	if r.code != 0 || !strings.Contains(r.stderr, "tap: 3 records") {
		t.Fatalf("tap: exit %d\n%s", r.code, r.stderr)
	}
	after, err := adm.FetchOffsets(ctx, "settlement")
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[int32]int64{0: 1, 1: 2} {
		if o, _ := after.Lookup("payments", p); o.At != want {
			t.Errorf("partition %d: group offset %d after the tap, want %d", p, o.At, want)
		}
	}
}

// TestTapKinesis taps a kinesalite stream with the CLI, by time.
func TestTapKinesis(t *testing.T) {
	endpoint := kinesistest.Start(t)
	kinesistest.CreateStream(t, endpoint, "clicks", 2)
	kinesistest.WaitActive(t, endpoint, "clicks")
	cl := kinesistest.Client(endpoint)
	start := time.Now().Add(-time.Minute)
	for i := range 5 {
		if _, err := cl.PutRecord(context.Background(), &kinesis.PutRecordInput{
			StreamName: aws.String("clicks"), PartitionKey: aws.String(fmt.Sprintf("u%d", i)), Data: []byte(fmt.Sprintf("click-%d", i)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	env := append(baseEnv(), "AWS_ACCESS_KEY_ID="+kinesistest.AccessKey, "AWS_SECRET_ACCESS_KEY="+kinesistest.SecretKey)
	out := filepath.Join(t.TempDir(), "clicks.ndjson")
	r := runCLI(t, "", env, 60*time.Second, "tap", "kinesis://clicks?from="+start.UTC().Format(time.RFC3339), "-o", out,
		"--kinesis-endpoint", endpoint, "--region", kinesistest.Region)
	if r.code != 0 || !strings.Contains(r.stderr, "tap: 5 records") {
		t.Fatalf("tap: exit %d\n%s", r.code, r.stderr)
	}
	recs, err := tap.ReadFile(out, "")
	if err != nil || len(recs) != 5 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	for _, rec := range recs {
		if rec.Source.GetConnector() != "kinesis" || rec.Source.GetSequence() == "" || !strings.HasPrefix(string(rec.Key), "u") {
			t.Errorf("record %v", rec)
		}
	}
}

// TestReplayDryRunToFileWithOriginalSpacing replays the order-events tap
// file as a dry run into a file, keeping the records' original spacing
// (1.4 s of event times) scaled to half speed, and checks the summary.
func TestReplayDryRunToFileWithOriginalSpacing(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out.ndjson")
	start := time.Now()
	r := runCLI(t, "", nil, 180*time.Second, "replay", "../../examples/order-events/pipeline.yaml",
		"--input", "../../examples/order-events/events.ndjson", "--dry-run", "-o", out, "--original", "--speed", "0.5")
	el := time.Since(start)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("--dry-run -o wrote to stdout too: %s", r.stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], `{"output":"`) || strings.Count(string(b), `"output":"fulfilment"`) != 3 {
		t.Errorf("dry-run file:\n%s", b)
	}
	// 1.4 s between the first and the last event time, at half speed
	// (unpaced, the whole command takes under a second here).
	if el < 2800*time.Millisecond {
		t.Errorf("replay took %s, want at least 2.8s (original spacing, speed 0.5)", el)
	}
	for _, want := range []string{"replay: 5 records in, 0 dead-lettered, 0 given back", "fulfilment", "refunds", "unrouted"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stderr)
		}
	}
	r = runCLI(t, "", nil, 30*time.Second, "replay", "../../examples/order-events/pipeline.yaml",
		"--input", "../../examples/order-events/events.ndjson", "--dry-run", "--original", "--rate", "5")
	if r.code != 2 || !strings.Contains(r.stderr, "--rate and --original exclude each other") {
		t.Errorf("--rate with --original: exit %d\n%s", r.code, r.stderr)
	}
}

// TestTestCommandRunsFunctionsSandboxed: under culvert test a function
// runs confined as under culvert run, so a host file beside the pipeline
// is out of its reach. The case expects the read to fail and the record
// to be dead-lettered; run unconfined, the file would reach "out" instead.
func TestTestCommandRunsFunctionsSandboxed(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "host-secret.txt")
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writePipeline(t, dir, `version: 1
name: confined
inputs: { in: { nats: { subjects: ["in.>"] } } }
functions:
  peek: { command: cat, args: [`+secret+`], mode: exec, retry: { max_attempts: 1 } }
routes:
  - { name: main, chain: peek, outputs: [out], dead_letter: dlq }
outputs:
  out: { nats: { subject: out } }
  dlq: { nats: { subject: dlq } }
`)
	if err := os.WriteFile(filepath.Join(dir, "pipeline.test.yaml"), []byte(`version: 1
cases:
  - name: host-file-is-out-of-reach
    records: [{ subject: in.a, value: x }]
    expect:
      dlq:
        - { value: x, error: { function: peek, message: "host-secret.txt|exit|status" } }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, dir, nil, 180*time.Second, "test", "pipeline.yaml", "-v")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: host-file-is-out-of-reach") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	// The same function with sandbox: none reads the file: the case fails.
	b, _ := os.ReadFile(filepath.Join(dir, "pipeline.yaml"))
	os.WriteFile(filepath.Join(dir, "pipeline.yaml"), []byte(strings.Replace(string(b), "mode: exec,", "mode: exec, sandbox: none,", 1)), 0o644)
	r = runCLI(t, dir, nil, 180*time.Second, "test", "pipeline.yaml")
	if r.code != 1 || !strings.Contains(r.stdout, `output "out" got 1 record, none expected`) || !strings.Contains(r.stdout, "host secret") {
		t.Fatalf("unconfined: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestTestCommandUpdate: culvert test --update recreates a missing golden
// file exactly as committed, and a changed golden file fails with a diff.
func TestTestCommandUpdate(t *testing.T) {
	dir := t.TempDir()
	src := "../../examples/pii-redaction"
	if err := os.MkdirAll(filepath.Join(dir, "testdata"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pipeline.yaml", "pipeline.test.yaml", "tickets.ndjson"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	golden := filepath.Join("testdata", "tickets.analytics.golden.ndjson")
	want, err := os.ReadFile(filepath.Join(src, golden))
	if err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, dir, nil, 180*time.Second, "test", "pipeline.yaml")
	if r.code != 1 || !strings.Contains(r.stdout, "run with --update to create it") {
		t.Fatalf("missing golden file: exit %d\n%s", r.code, r.stdout)
	}
	r = runCLI(t, dir, nil, 180*time.Second, "test", "pipeline.yaml", "--update")
	if r.code != 0 || !strings.Contains(r.stdout, "updated "+golden) {
		t.Fatalf("--update: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, golden)); string(got) != string(want) {
		t.Errorf("--update wrote\n%s\nwant (as committed)\n%s", got, want)
	}
	os.WriteFile(filepath.Join(dir, golden), []byte(strings.Replace(string(want), "[email]", "[mail]", 1)), 0o644)
	r = runCLI(t, dir, nil, 180*time.Second, "test", "pipeline.yaml")
	if r.code != 1 || !strings.Contains(r.stdout, "differs from golden file") || !strings.Contains(r.stdout, "[mail]") {
		t.Fatalf("changed golden file: exit %d\n%s", r.code, r.stdout)
	}
}

// TestTapNATSForDuration taps a core NATS subject with the CLI until --for
// ends it; the file keeps subjects and headers.
func TestTapNATSForDuration(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv)
	out := filepath.Join(t.TempDir(), "sensors.ndjson")
	start := time.Now()
	p := startCLI(t, "", nil, nil, "tap", "nats://sensors.>", "--for", "2s", "-o", out, "--nats-url", srv.ClientURL())
	for i := 0; !p.exited(); i++ {
		m := nats.NewMsg(fmt.Sprintf("sensors.t%d", i%3))
		m.Data = []byte(fmt.Sprintf("%d", i))
		m.Header.Set("unit", "C")
		nc.PublishMsg(m)
		time.Sleep(20 * time.Millisecond)
		if time.Since(start) > 30*time.Second {
			break
		}
	}
	code := p.wait(t, 10*time.Second)
	if el := time.Since(start); code != 0 || el < 2*time.Second || el > 20*time.Second {
		t.Fatalf("tap --for 2s: exit %d after %s\n%s", code, el, p.stderr.String())
	}
	recs, err := tap.ReadFile(out, "")
	if err != nil || len(recs) == 0 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	if !strings.Contains(p.stderr.String(), fmt.Sprintf("tap: %d records from nats://sensors.>", len(recs))) {
		t.Errorf("summary: %s", p.stderr.String())
	}
	for _, rec := range recs {
		if !strings.HasPrefix(rec.Source.GetSubject(), "sensors.t") || len(rec.Headers) == 0 || rec.Headers[0].Name != "unit" {
			t.Errorf("record lost metadata: %v", rec)
			break
		}
	}
}

// TestTapFollowUntilInterrupt follows a JetStream stream past its end,
// shows plain progress lines off a terminal, and on Ctrl-C exits 0 with
// every record in the file.
func TestTapFollowUntilInterrupt(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "METRICS", Subjects: []string{"metrics.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		js.Publish(ctx, "metrics.cpu", []byte(fmt.Sprintf("stored-%d", i)))
	}
	out := filepath.Join(t.TempDir(), "metrics.tap")
	p := startCLI(t, "", nil, nil, "tap", "jetstream://METRICS", "--follow", "-o", out, "--nats-url", srv.ClientURL())
	for i := range 2 {
		js.Publish(ctx, "metrics.cpu", []byte(fmt.Sprintf("live-%d", i)))
	}
	waitFor(t, 15*time.Second, "a progress line with 5 records", func() bool {
		return strings.Contains(p.stderr.String(), "tap: 5 records, ") || p.exited()
	})
	if p.exited() {
		t.Fatalf("--follow ended by itself\n%s", p.stderr.String())
	}
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 15*time.Second); code != 0 || !strings.Contains(p.stderr.String(), "tap: 5 records from jetstream://METRICS") {
		t.Fatalf("after Ctrl-C: exit %d\n%s", code, p.stderr.String())
	}
	recs, err := tap.ReadFile(out, "")
	if err != nil || len(recs) != 5 || string(recs[4].Value) != "live-1" {
		t.Fatalf("tap file: %d records, %v", len(recs), err)
	}
}
