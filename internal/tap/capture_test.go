package tap

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors/embedded"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// collect runs a capture to its end (or the timeout) and returns what it
// emitted.
func collect(t *testing.T, src string, o Options, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	s, err := ParseSource(src, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if o.Logger == nil {
		o.Logger = quiet()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var out []*culvertv1.Record
	err = Capture(ctx, s, o, func(r *culvertv1.Record) error {
		mu.Lock()
		out = append(out, r)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatalf("capture %s: %v", src, err)
	}
	if ctx.Err() != nil && o.Count == 0 && !o.Follow {
		t.Fatalf("capture %s did not stop by itself within %s (%d records)", src, timeout, len(out))
	}
	return out
}

func values(recs []*culvertv1.Record) string {
	var vs []string
	for _, r := range recs {
		vs = append(vs, string(r.Value))
	}
	return strings.Join(vs, ",")
}

func startNATS(t *testing.T) (*embedded.Server, *nats.Conn) {
	t.Helper()
	srv := natstest.Server(t)
	return srv, natstest.Connect(t, srv)
}

func TestCaptureNATS(t *testing.T) {
	srv, nc := startNATS(t)
	s, _ := ParseSource("nats://sensors.>", time.Now())
	got := make(chan *culvertv1.Record, 10)
	done := make(chan error, 1)
	go func() {
		done <- Capture(context.Background(), s, Options{NATSURL: srv.ClientURL(), Count: 3, Logger: quiet()}, func(r *culvertv1.Record) error {
			got <- r
			return nil
		})
	}()
	// Publish until the subscription is up, then three more.
	deadline := time.Now().Add(5 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		m := nats.NewMsg("sensors.warmup")
		m.Data = []byte("warmup")
		nc.PublishMsg(m)
		nc.Flush()
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 3 {
		m := nats.NewMsg(fmt.Sprintf("sensors.t%d", i))
		m.Data = []byte(fmt.Sprintf("v%d", i))
		m.Header.Set("unit", "C")
		nc.PublishMsg(m)
	}
	nc.Flush()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("capture did not stop at its count")
	}
	close(got)
	var recs []*culvertv1.Record
	for r := range got {
		recs = append(recs, r)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	for _, r := range recs {
		if r.Source.GetConnector() != KindNATS || !strings.HasPrefix(r.Source.GetSubject(), "sensors.") || r.Id == "" {
			t.Errorf("record %v", r)
		}
	}
}

// TestCaptureJetStreamLeavesDurablesAlone taps a stream that a durable
// consumer is half way through, and checks the durable is exactly as it
// was and that no consumer is left behind.
func TestCaptureJetStreamLeavesDurablesAlone(t *testing.T) {
	srv, nc := startNATS(t)
	ctx := context.Background()
	js, _ := jetstream.New(nc)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		subj := "orders.created"
		if i%2 == 0 {
			subj = "orders.paid"
		}
		if _, err := js.Publish(ctx, subj, []byte(fmt.Sprintf("o%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	durable, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "billing", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := durable.Fetch(4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if n < 3 {
			// Three acked, one delivered and pending. DoubleAck waits for
			// the server to confirm, so the "before" snapshot below sees
			// the acks rather than racing them.
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
		n++
	}
	before, err := durable.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{NATSURL: srv.ClientURL()}

	for _, tc := range []struct{ src, want string }{
		{"jetstream://ORDERS", "o1,o2,o3,o4,o5,o6,o7,o8,o9,o10"},
		{"jetstream://ORDERS?from=4&to=6", "o4,o5,o6"},
		{"jetstream://ORDERS?subject=orders.paid&from=5", "o6,o8,o10"},
		{"jetstream://ORDERS?from=11", ""},
	} {
		got := collect(t, tc.src, o, 15*time.Second)
		if values(got) != tc.want {
			t.Errorf("%s: got %s, want %s", tc.src, values(got), tc.want)
		}
		for _, r := range got {
			if r.Source.GetStream() != "ORDERS" || r.Source.GetOffset() == 0 || !strings.HasPrefix(r.Id, "js:ORDERS:") {
				t.Errorf("%s: position %v id %s", tc.src, r.Source, r.Id)
			}
		}
	}
	// From a time: everything published after the midpoint.
	time.Sleep(10 * time.Millisecond)
	mid := time.Now()
	time.Sleep(10 * time.Millisecond)
	js.Publish(ctx, "orders.created", []byte("late"))
	got := collect(t, "jetstream://ORDERS?from="+mid.UTC().Format(time.RFC3339Nano), o, 15*time.Second)
	if values(got) != "late" {
		t.Errorf("from time: got %s", values(got))
	}

	after, err := durable.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Delivered.Stream != before.Delivered.Stream || after.Delivered.Consumer != before.Delivered.Consumer ||
		after.AckFloor.Stream != before.AckFloor.Stream || after.AckFloor.Consumer != before.AckFloor.Consumer ||
		after.NumAckPending != before.NumAckPending || after.NumPending != before.NumPending+1 {
		t.Errorf("durable changed: before delivered %+v ack floor %+v pending %d; after %+v %+v %d",
			before.Delivered, before.AckFloor, before.NumAckPending, after.Delivered, after.AckFloor, after.NumAckPending)
	}
	// The ordered consumers are ephemeral: once the taps end only the
	// durable is left (the server removes them on delete or inactivity).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var names []string
		l := stream.ListConsumers(ctx)
		for ci := range l.Info() {
			names = append(names, ci.Name)
		}
		if len(names) == 1 && names[0] == "billing" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumers left on the stream: %v", names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCaptureKafkaLeavesGroupOffsetsAlone taps some partitions of a topic
// that a consumer group has committed offsets on, and checks with kadm
// that the group's offsets are unchanged and no group was created.
func TestCaptureKafkaLeavesGroupOffsetsAlone(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 1})
	c.CreateTopic(t, "events", 3)
	var recs []*kgo.Record
	for p := int32(0); p < 3; p++ {
		for i := 0; i < 4; i++ {
			recs = append(recs, &kgo.Record{Topic: "events", Partition: p, Key: []byte("k"), Value: []byte(fmt.Sprintf("p%d-%d", p, i)),
				Headers: []kgo.RecordHeader{{Key: "source", Value: []byte("test")}}})
		}
	}
	c.Produce(t, recs, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	// An independent client, Debian's kcat (librdkafka), adds one more.
	if kcat, err := exec.LookPath("kcat"); err == nil {
		cmd := exec.Command(kcat, "-P", "-b", c.Brokers[0], "-t", "events", "-p", "1", "-k", "kc")
		cmd.Stdin = strings.NewReader("from-kcat\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcat: %v\n%s", err, out)
		}
	} else {
		t.Fatal("kcat not installed: .ci/deps.d/20-kafka.sh installs it")
	}
	adm := kadm.NewClient(c.Client(t))
	ctx := context.Background()
	commit := kadm.Offsets{}
	commit.AddOffset("events", 0, 2, -1)
	commit.AddOffset("events", 2, 1, -1)
	if err := adm.CommitAllOffsets(ctx, "billing", commit); err != nil {
		t.Fatal(err)
	}
	before, err := adm.FetchOffsets(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	groupsBefore, _ := adm.ListGroups(ctx)

	brokers := strings.Join(c.Brokers, ",")
	for _, tc := range []struct{ src, want string }{
		{"kafka://" + brokers + "/events?partitions=0,2", "p0-0,p0-1,p0-2,p0-3,p2-0,p2-1,p2-2,p2-3"},
		{"kafka://" + brokers + "/events?partitions=1&from=2", "p1-2,p1-3,from-kcat"},
		{"kafka://" + brokers + "/events?from=0:3,2:2&to=0:3,2:2", "p0-3,p2-2"},
		{"kafka://" + brokers + "/events?from=latest&to=end", ""},
	} {
		got := collect(t, tc.src, Options{}, 20*time.Second)
		vs := strings.Split(values(got), ",")
		sort.Strings(vs)
		want := strings.Split(tc.want, ",")
		sort.Strings(want)
		if strings.Join(vs, ",") != strings.Join(want, ",") {
			t.Errorf("%s: got %v, want %v", tc.src, vs, want)
		}
		for _, r := range got {
			if r.Source.GetConnector() != "kafka" || r.Source.GetSubject() != "events" || r.Id == "" {
				t.Errorf("%s: position %v id %s", tc.src, r.Source, r.Id)
			}
		}
	}
	got := collect(t, "kafka://"+brokers+"/events", Options{Count: 5}, 20*time.Second)
	if len(got) != 5 {
		t.Errorf("count 5: got %d records", len(got))
	}

	after, err := adm.FetchOffsets(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []int32{0, 1, 2} {
		b, _ := before.Lookup("events", p)
		a, _ := after.Lookup("events", p)
		if a.At != b.At {
			t.Errorf("partition %d: group offset %d before the taps, %d after", p, b.At, a.At)
		}
	}
	groupsAfter, _ := adm.ListGroups(ctx)
	if len(groupsAfter.Groups()) != len(groupsBefore.Groups()) {
		t.Errorf("groups before %v, after %v", groupsBefore.Groups(), groupsAfter.Groups())
	}
}

func TestCaptureKinesis(t *testing.T) {
	endpoint := kinesistest.Start(t)
	kinesistest.CreateStream(t, endpoint, "clicks", 2)
	kinesistest.WaitActive(t, endpoint, "clicks")
	cl := kinesistest.Client(endpoint)
	ctx := context.Background()
	var entries []string
	for i := range 6 {
		v := fmt.Sprintf("c%d", i)
		out, err := cl.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("clicks"), PartitionKey: aws.String(fmt.Sprintf("user-%d", i)), Data: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, aws.ToString(out.ShardId)+"|"+aws.ToString(out.SequenceNumber)+"|"+v)
	}
	o := Options{KinesisEndpoint: endpoint, KinesisRegion: kinesistest.Region}
	t.Setenv("AWS_ACCESS_KEY_ID", kinesistest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", kinesistest.SecretKey)
	got := collect(t, "kinesis://clicks", o, 30*time.Second)
	if len(got) != 6 {
		t.Fatalf("got %d records (%s)", len(got), values(got))
	}
	for _, r := range got {
		if r.Source.GetConnector() != "kinesis" || r.Source.GetSequence() == "" || !strings.HasPrefix(string(r.Key), "user-") {
			t.Errorf("record %v", r)
		}
	}
	// From one record's sequence number on its shard.
	parts := strings.Split(entries[0], "|")
	got = collect(t, "kinesis://clicks?shards="+parts[0]+"&from="+parts[1], o, 30*time.Second)
	if len(got) == 0 || string(got[0].Value) != parts[2] {
		t.Errorf("from sequence: got %s, want %s first", values(got), parts[2])
	}
	for _, r := range got {
		if r.Source.GetPartition() != parts[0] {
			t.Errorf("record from shard %s", r.Source.GetPartition())
		}
	}
}

// TestCaptureJetStreamFollow follows a stream live from now and stops at
// its count; a to= time in the past ends a stored read early.
func TestCaptureJetStreamFollow(t *testing.T) {
	srv, nc := startNATS(t)
	ctx := context.Background()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LIVE", Subjects: []string{"live.>"}}); err != nil {
		t.Fatal(err)
	}
	js.Publish(ctx, "live.old", []byte("old"))
	got, done := liveCapture(t, "jetstream://LIVE?from=latest", Options{NATSURL: srv.ClientURL(), Count: 2})
	vs := followWhile(t, got, done, 100*time.Millisecond, func(i int) {
		js.Publish(ctx, "live.new", []byte(fmt.Sprintf("new%d", i)))
	})
	if len(vs) != 2 || slices.Contains(vs, "old") {
		t.Errorf("from=latest with count 2: got %v, want two new records", vs)
	}
	cut := time.Now()
	time.Sleep(20 * time.Millisecond)
	js.Publish(ctx, "live.after", []byte("after-cut"))
	recs := collect(t, "jetstream://LIVE?to="+cut.UTC().Format(time.RFC3339Nano), Options{NATSURL: srv.ClientURL()}, 15*time.Second)
	for _, r := range recs {
		if string(r.Value) == "after-cut" {
			t.Errorf("to=%s delivered a later record", cut)
		}
	}
	if len(recs) == 0 || string(recs[0].Value) != "old" {
		t.Errorf("to=time: got %s", values(recs))
	}
}

// liveCapture starts a capture in the background and returns its records
// as they come and its result.
// followWhile calls produce every interval (with 0, 1, ...) until the
// live capture behind got and done ends by itself, and returns what it
// captured; it fails t if the capture fails or has not ended within 20s.
func followWhile(t *testing.T, got <-chan string, done <-chan error, every time.Duration, produce func(i int)) []string {
	t.Helper()
	tick := time.NewTicker(every)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			var vs []string
			for v := range got {
				vs = append(vs, v)
			}
			return vs
		case <-tick.C:
			produce(i)
		case <-deadline:
			t.Fatal("the live capture did not stop at its count")
		}
	}
}

func liveCapture(t *testing.T, src string, o Options) (<-chan string, <-chan error) {
	t.Helper()
	s, err := ParseSource(src, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if o.Logger == nil {
		o.Logger = quiet()
	}
	got := make(chan string, 100)
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	go func() {
		done <- Capture(ctx, s, o, func(r *culvertv1.Record) error {
			got <- string(r.Value)
			return nil
		})
		close(got)
	}()
	return got, done
}

// TestCaptureKafkaTimesAndFollow taps a topic from and to a time (the
// records' timestamps), up to a per-partition end that names only some
// partitions, and live from the end until a count.
func TestCaptureKafkaTimesAndFollow(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 1})
	c.CreateTopic(t, "clicks", 2)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	var recs []*kgo.Record
	for i := range 4 {
		for p := int32(0); p < 2; p++ {
			recs = append(recs, &kgo.Record{Topic: "clicks", Partition: p, Timestamp: base.Add(time.Duration(i) * 10 * time.Second),
				Value: []byte(fmt.Sprintf("p%d-%d", p, i))})
		}
	}
	c.Produce(t, recs, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	at := func(d time.Duration) string { return base.Add(d).UTC().Format(time.RFC3339) }
	brokers := strings.Join(c.Brokers, ",")
	for _, tc := range []struct{ src, want string }{
		{"kafka://" + brokers + "/clicks?from=" + at(5*time.Second), "p0-1,p0-2,p0-3,p1-1,p1-2,p1-3"},
		{"kafka://" + brokers + "/clicks?partitions=1&to=" + at(15*time.Second), "p1-0,p1-1"},
		{"kafka://" + brokers + "/clicks?from=" + at(5*time.Second) + "&to=" + at(25*time.Second), "p0-1,p0-2,p1-1,p1-2"},
		{"kafka://" + brokers + "/clicks?from=" + at(time.Hour), ""},
		// to= names partition 0 only: partition 1 ends at its end.
		{"kafka://" + brokers + "/clicks?to=0:1", "p0-0,p0-1,p1-0,p1-1,p1-2,p1-3"},
	} {
		got := collect(t, tc.src, Options{}, 20*time.Second)
		vs := strings.Split(values(got), ",")
		sort.Strings(vs)
		if strings.Join(vs, ",") != tc.want {
			t.Errorf("%s: got %v, want %s", tc.src, vs, tc.want)
		}
	}

	// Following from the end: only what is produced after the tap started.
	got, done := liveCapture(t, "kafka://"+brokers+"/clicks?from=latest", Options{Count: 3})
	cl := c.Client(t)
	vs := followWhile(t, got, done, 100*time.Millisecond, func(i int) {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "clicks", Value: []byte(fmt.Sprintf("live-%d", i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	})
	if len(vs) != 3 {
		t.Fatalf("follow: got %v, want 3 records", vs)
	}
	for _, v := range vs {
		if !strings.HasPrefix(v, "live-") {
			t.Errorf("follow from latest delivered stored record %s", v)
		}
	}
}

// TestCaptureKinesisPositions taps a shard up to a sequence number and
// the stream up to an arrival time, and follows it live from now.
func TestCaptureKinesisPositions(t *testing.T) {
	endpoint := kinesistest.Start(t)
	kinesistest.CreateStream(t, endpoint, "views", 2)
	kinesistest.WaitActive(t, endpoint, "views")
	t.Setenv("AWS_ACCESS_KEY_ID", kinesistest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", kinesistest.SecretKey)
	cl := kinesistest.Client(endpoint)
	ctx := context.Background()
	put := func(v string) (shard, seq string) {
		out, err := cl.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("views"), PartitionKey: aws.String("same-key"), Data: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.ShardId), aws.ToString(out.SequenceNumber)
	}
	// One partition key: every record lands on the same shard, in order.
	shard, _ := put("v0")
	_, seq1 := put("v1")
	put("v2")
	time.Sleep(100 * time.Millisecond)
	cut := time.Now()
	time.Sleep(100 * time.Millisecond)
	put("v3")
	// Then records with other keys until one lands on the other shard
	// (kinesalite answers an AT_TIMESTAMP iterator only on a shard that
	// holds a record after the time).
	afterCut := []string{"v3"}
	var other string
	for i := 0; other == ""; i++ {
		v := fmt.Sprintf("x%d", i)
		afterCut = append(afterCut, v)
		out, err := cl.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("views"), PartitionKey: aws.String(v), Data: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(out.ShardId) != shard {
			other = aws.ToString(out.SequenceNumber)
		} else if i > 50 {
			t.Fatal("every key went to one shard")
		}
	}
	sort.Strings(afterCut)
	o := Options{KinesisEndpoint: endpoint, KinesisRegion: kinesistest.Region}
	sorted := func(recs []*culvertv1.Record) string {
		vs := strings.Split(values(recs), ",")
		sort.Strings(vs)
		return strings.Join(vs, ",")
	}
	for _, tc := range []struct{ src, want string }{
		{"kinesis://views?shards=" + shard + "&to=" + seq1, "v0,v1"},
		{"kinesis://views?shards=" + shard + "&from=" + seq1 + "&to=" + seq1, "v1"},
		{"kinesis://views?to=" + cut.UTC().Format(time.RFC3339Nano), "v0,v1,v2"},
		{"kinesis://views?from=" + cut.UTC().Format(time.RFC3339Nano), strings.Join(afterCut, ",")},
		{"kinesis://views?from=latest&to=end", ""},
		// A to= sequence of another shard: the tap ends once caught up.
		{"kinesis://views?shards=" + shard + "&from=" + seq1 + "&to=" + other, "*"},
	} {
		if got := sorted(collect(t, tc.src, o, 30*time.Second)); tc.want != "*" && got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.src, got, tc.want)
		}
	}

	o.Count = 2
	got, done := liveCapture(t, "kinesis://views?from=latest", o)
	vs := followWhile(t, got, done, 300*time.Millisecond, func(i int) { put(fmt.Sprintf("live-%d", i)) })
	if len(vs) != 2 || !strings.HasPrefix(vs[0], "live-") || !strings.HasPrefix(vs[1], "live-") {
		t.Fatalf("follow from latest: got %v", vs)
	}
}
