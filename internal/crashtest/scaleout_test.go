package crashtest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
	"github.com/culvert-dev/culvert/internal/testbin"
)

// scaleOut runs three culvert processes on one pipeline file, kills one
// with SIGKILL once about a third of the outputs are stored, and lets the
// two others finish. victim picks the process to kill from what each has
// logged so far (nil: any). windows reads the committed positions right
// after the kill; finished says whether every record is committed. It
// returns the kill and how long after it the survivors had committed
// everything the dead one left (the takeover, bounded by the session,
// lease or pin timeout plus the time to process the rest).
func scaleOut(ctx context.Context, t *testing.T, r *run, pipeline string, n int, out *OutStream, ready func(), victim func(logs []*testbin.Buffer) int, windows func() []Window, finished func() bool) (Kill, time.Duration) {
	t.Helper()
	stored := func() int { return out.Stored(ctx) }
	var procs []*Proc
	var logs []*testbin.Buffer
	for range 3 {
		buf := &testbin.Buffer{}
		procs = append(procs, Start(t, io.MultiWriter(r.log, buf), filepath.Join(bins, "culvert"), "run", pipeline))
		logs = append(logs, buf)
	}
	if ready != nil {
		ready()
	}
	target := n/4 + rand.IntN(n/6+1)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= target })
	v := rand.IntN(len(procs))
	if victim != nil {
		v = victim(logs)
	}
	procs[v].Kill()
	killed := time.Now()
	time.Sleep(200 * time.Millisecond)
	kill := Kill{Stored: stored(), Windows: windows()}
	t.Logf("SIGKILL to process %d (pid %d) with %d outputs stored; windows %v", v, procs[v].Pid(), kill.Stored, kill.Windows)
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= n && finished() })
	took := time.Since(killed)
	for i, p := range procs {
		if i == v {
			continue
		}
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("culvert %d after SIGTERM: %v", i, err)
		}
	}
	return kill, took
}

// TestScaleOutKafka: three culvert processes in one consumer group on a
// 6-partition topic; one is killed with SIGKILL mid-stream. The group's
// session timeout (3s) ends its membership, its partitions move to the two
// others, which resume at the committed offsets: 0 lost, per-key order
// holds (keys map to partitions), and duplicates come only from the dead
// member's uncommitted records. The survivors must stay in the group
// throughout: a survivor whose session ended (a late heartbeat, or, on
// kfake, a wait in JoinGroup longer than the session) fails the test, as
// that is what used to stall the takeover.
func TestScaleOutKafka(t *testing.T) {
	n := records()
	const partitions = 6
	const session = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	kf, out, ins, pipeline := kafkaSetup(ctx, t, r, n, partitions, session)
	ends := partitionEnds(ins)
	kill, took := scaleOut(ctx, t, r, pipeline, n, out, nil, nil,
		func() []Window {
			var ws []Window
			for p, off := range committed(ctx, t, kf.Brokers, "crash", partitions) {
				ws = append(ws, Window{Kill: 1, Part: p, From: off})
			}
			return ws
		},
		func() bool { return kafkaDone(ctx, kf.Brokers, ends) })
	rep := Audit(ins, out.Read(ctx, t), []Kill{kill})
	t.Logf("kafka scale-out, 3 processes, 1 killed: %s; everything committed %s after the kill (session timeout %s)", rep, took.Round(100*time.Millisecond), session)
	rep.Check(t)
	if n := strings.Count(Tail(r.log.Name(), 1<<30), "partitions lost (group session ended)"); n > 0 {
		t.Errorf("a surviving process lost its group session %d times: only the killed one may leave the group", n)
	}
	if took > session+20*time.Second {
		t.Errorf("the survivors needed %s after the kill to commit everything; the session timeout is %s", took, session)
	}
	if t.Failed() {
		t.Log(r.tail())
	}
}

// TestScaleOutKinesis: three culvert processes share a 6-shard stream
// through shard leases in a JetStream KV bucket (lease_duration 3s); one
// is killed with SIGKILL mid-stream. Its leases expire, the two others
// take them and resume after the checkpoints: 0 lost, per-key order holds
// (keys map to shards), duplicates only after the checkpoints. The records
// are put once all three processes hold leases.
func TestScaleOutKinesis(t *testing.T) {
	n := records()
	const lease = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	g := kinesisSetup(ctx, t, r, 0, 6, "nats", lease)
	// The records go on the stream once the three processes hold every
	// lease between them: a lease taken from a live process (the balancing at
	// start) repeats the records after its checkpoint too, and this test is
	// about the kill.
	ready := func() {
		balanced := func() bool {
			ls, err := g.store.List(ctx)
			if err != nil || len(ls) != 6 {
				return false
			}
			per := map[string]int{}
			for _, l := range ls {
				per[l.Owner]++
			}
			return len(per) == 3 && per[""] == 0
		}
		WaitFor(ctx, t, 60*time.Second, r.log.Name(), func() int { return 0 }, balanced)
		// The store shows a lease taken as soon as the taker wrote it; the
		// worker it was taken from reads on until its next lease round
		// finds the conflict. Records put before then would be read by
		// both.
		WaitFor(ctx, t, 60*time.Second, r.log.Name(), func() int { return 0 }, func() bool {
			return leaseHandoversSeen(Tail(r.log.Name(), 1<<30))
		})
		g.put(ctx, t, n)
	}
	kill, took := scaleOut(ctx, t, r, g.pipeline, n, g.out, ready, nil,
		func() []Window {
			ws, owners := g.windows(ctx, t, 1)
			t.Logf("lease owners at the kill: %v", owners)
			return ws
		},
		func() bool { return g.done(ctx) })
	rep := Audit(g.ins, g.out.Read(ctx, t), []Kill{kill})
	t.Logf("kinesis scale-out, 3 processes, 1 killed: %s; every shard checkpointed to its end %s after the kill (lease duration %s)", rep, took.Round(100*time.Millisecond), lease)
	rep.Check(t)
	if took > lease+20*time.Second {
		t.Errorf("the survivors needed %s after the kill to checkpoint everything; the lease duration is %s", took, lease)
	}
	if t.Failed() {
		t.Log(r.tail())
	}
}

// leaseHandoversSeen reports whether every lease taken from a worker
// (logged "took shard lease ... from=<worker>") has been noticed by that
// worker (logged "lost shard lease" for the shard), in a log that all the
// processes of a run share.
func leaseHandoversSeen(log string) bool {
	taken := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		shard, from := logField(line, "shard"), logField(line, "from")
		switch {
		case strings.Contains(line, `msg="kinesis: took shard lease"`) && from != "" && from != `""`:
			taken[from+" "+shard]++
		case strings.Contains(line, `msg="kinesis: lost shard lease"`):
			taken[logField(line, "worker")+" "+shard]--
		}
	}
	for _, n := range taken {
		if n > 0 {
			return false
		}
	}
	return true
}

// logField is the value of key=value in one slog text line ("" if absent).
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// jetstreamPipeline reads the stream IN through a durable pull consumer
// with the two-function chain of the other crash pipelines.
const jetstreamPipeline = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    jetstream: { stream: IN, subjects: ["in.>"], ack_wait: %s, max_in_flight: %d, fetch_batch: 64 }
` + crashChain

// jetstreamGroupPipeline is jetstreamPipeline with the consumer shared by
// a pinned-client priority group.
const jetstreamGroupPipeline = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    jetstream: { stream: IN, subjects: ["in.>"], ack_wait: %s, max_in_flight: %d, fetch_batch: 64, group: { policy: pinned, ttl: %s } }
` + crashChain

// TestScaleOutJetStream: three culvert processes read one durable JetStream
// consumer through a pinned-client priority group (group: {policy: pinned,
// ttl: 5s}, ack_wait 2s): the server hands the messages to one process at a
// time. The pinned process is killed with SIGKILL mid-stream. Once it has
// not pulled for the ttl, the server pins one of the two others, which gets
// the dead holder's un-acked messages (due for redelivery after ack_wait)
// ahead of newer ones: 0 lost, duplicates only after the consumer's ack
// floor at the kill, and per-key order holds outside that crash window.
func TestScaleOutJetStream(t *testing.T) {
	n := records()
	const ackWait, ttl = 2 * time.Second, 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	url := NATS(t, r.dir)
	out := NewOutStream(ctx, t, url, "OUT", "out.>")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
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
	if err := os.WriteFile(pipeline, fmt.Appendf(nil, jetstreamGroupPipeline, url, ackWait, kafkaWindow, ttl, filepath.Join(bins, "passthrough"), kafkaWindow), 0o644); err != nil {
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
	// The victim is the pinned process: the one that logged the pin id
	// the consumer reports.
	pinned := func(logs []*testbin.Buffer) int {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if info := consumer(); info != nil {
				for _, g := range info.PriorityGroups {
					if g.PinnedClientID == "" {
						continue
					}
					for i, l := range logs {
						if strings.Contains(l.String(), "pin_id="+g.PinnedClientID) {
							return i
						}
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("no process logged the consumer's pin id")
		return 0
	}
	kill, took := scaleOut(ctx, t, r, pipeline, n, out, nil, pinned,
		func() []Window {
			info := consumer()
			if info == nil {
				t.Fatal("no consumer culvert-crash-in after the kill")
			}
			return []Window{{Kill: 1, Part: "IN", From: int64(info.AckFloor.Stream) + 1}}
		},
		func() bool {
			info := consumer()
			return info != nil && info.NumPending == 0 && info.NumAckPending == 0
		})
	rep := Audit(ins, out.Read(ctx, t), []Kill{kill})
	t.Logf("jetstream scale-out, 3 processes, pinned group, the pinned one killed: %s; consumer drained %s after the kill (ttl %s, ack_wait %s)", rep, took.Round(100*time.Millisecond), ttl, ackWait)
	rep.Check(t)
	if took > ttl+20*time.Second {
		t.Errorf("the survivors needed %s after the kill to drain the consumer; the pin's ttl is %s", took, ttl)
	}
	if t.Failed() {
		t.Log(r.tail())
	}
}
