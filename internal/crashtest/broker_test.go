package crashtest

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
)

// TestBrokerRestartKafka kills the kfake process with SIGKILL mid-stream
// and restarts it on the same ports and data directory while culvert keeps
// running: culvert reconnects by itself, the group's partitions come back,
// and records after the committed offsets are delivered again. 0 lost,
// duplicates only after the committed offsets at the restart, per-key
// order kept outside that window.
func TestBrokerRestartKafka(t *testing.T) {
	n := records()
	const partitions = 4
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	kf, out, ins, pipeline := kafkaSetup(ctx, t, r, n, partitions, 3*time.Second)
	stored := func() int { return out.Stored(ctx) }
	c := r.culvert(t, pipeline)
	target := killTarget(0, n, 1)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= target })
	kf.Restart()
	// culvert keeps running through the restart: records it finished
	// after the restart and before its partitions came back are delivered
	// again too, so the duplicate bound is every output in the window.
	kill := Kill{Stored: math.MaxInt}
	for p, off := range committed(ctx, t, kf.Brokers, "crash", partitions) {
		kill.Windows = append(kill.Windows, Window{Kill: 1, Part: p, From: off})
	}
	t.Logf("kfake restarted with %d outputs stored; committed %v", stored(), kill.Windows)
	ends := partitionEnds(ins)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= n && kafkaDone(ctx, kf.Brokers, ends) })
	if c.Exited() {
		t.Error("culvert exited while the broker restarted")
	}
	if err := c.Stop(30 * time.Second); err != nil {
		t.Errorf("culvert after SIGTERM: %v", err)
	}
	rep := Audit(ins, out.Read(ctx, t), []Kill{kill})
	t.Logf("kafka broker restart: %s", rep)
	rep.Check(t)
	if t.Failed() {
		t.Log(r.tail())
	}
}

// TestBrokerRestartNATS kills Debian's nats-server (a separate process
// holding both the input stream and the output stream) with SIGKILL
// mid-stream and restarts it on the same port and store while culvert
// keeps running. Culvert reconnects; un-acked records are redelivered. 0
// lost, duplicates only after the consumer's ack floor at the restart.
// Order: nats-server 2.9 does not sort what it redelivers, so records
// after the ack floor may come late; anything else out of order fails.
func TestBrokerRestartNATS(t *testing.T) {
	n := records()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	srv := StartNATSProc(t, r.dir, r.log)
	out := NewOutStream(ctx, t, srv.URL, "OUT", "out.>")
	nc, err := nats.Connect(srv.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN", Subjects: []string{"in.>"}}); err != nil {
		t.Fatal(err)
	}
	ins := make(map[string]Input, n)
	for i := range n {
		in := Input{Key: fmt.Sprint("k", i%keys), N: i / keys, Part: "IN"}
		m := nats.NewMsg("in.x")
		m.Header.Set(natsmsg.HeaderKey, in.Key)
		m.Data = fmt.Appendf(nil, "%s %d", in.Key, in.N)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		in.Off = int64(ack.Sequence)
		ins[fmt.Sprint("js:IN:", ack.Sequence)] = in
	}
	pipeline := filepath.Join(r.dir, "pipeline.yaml")
	if err := os.WriteFile(pipeline, fmt.Appendf(nil, jetstreamPipeline, srv.URL, 2*time.Second, kafkaWindow, filepath.Join(bins, "passthrough"), kafkaWindow), 0o644); err != nil {
		t.Fatal(err)
	}
	consumer := func() *jetstream.ConsumerInfo {
		c, err := js.Consumer(ctx, "IN", "culvert-crash-in")
		if err != nil {
			return nil
		}
		info, err := c.Info(ctx)
		if err != nil {
			return nil
		}
		return info
	}
	stored := func() int { return out.Stored(ctx) }
	c := r.culvert(t, pipeline)
	target := killTarget(0, n, 1)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= target })
	srv.Restart()
	var info *jetstream.ConsumerInfo
	WaitFor(ctx, t, 30*time.Second, r.log.Name(), func() int { return 0 }, func() bool { info = consumer(); return info != nil })
	kill := Kill{Stored: math.MaxInt, Windows: []Window{{Kill: 1, Part: "IN", From: int64(info.AckFloor.Stream) + 1}}}
	t.Logf("nats-server restarted with %d outputs stored; ack floor %d", stored(), info.AckFloor.Stream)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool {
		info := consumer()
		return stored() >= n && info != nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if c.Exited() {
		t.Error("culvert exited while the broker restarted")
	}
	if err := c.Stop(30 * time.Second); err != nil {
		t.Errorf("culvert after SIGTERM: %v", err)
	}
	rep := Audit(ins, out.Read(ctx, t), []Kill{kill})
	t.Logf("nats-server restart: %s", rep)
	rep.Check(t)
	if t.Failed() {
		t.Log(r.tail())
	}
}
