package crashtest

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	"github.com/culvert-dev/culvert/internal/kinesistest"
)

// kinesisPipeline reads stream in with shard leases in the given store,
// runs the two-function chain, and writes to the audit stream OUT.
const kinesisPipeline = `
version: 1
name: crash
sandbox: none
broker: { url: "%s" }
inputs:
  in:
    kinesis:
      stream: in
      endpoint: %s
      region: us-east-1
      access_key_id: culvert-test
      secret_access_key: culvert-test-secret
      application: crash
      leases: %s
      lease_duration: %s
      fetch_interval: 100ms
      idle_interval: 100ms
      checkpoint_interval: 100ms
      max_in_flight: %d
` + crashChain

// kinesisRig is a kinesalite stream "in" with records on it, the audit
// stream, and the lease store the culvert processes share.
type kinesisRig struct {
	endpoint string
	url      string
	out      *OutStream
	ins      map[string]Input
	seqIdx   map[string]map[string]int64 // shard -> sequence number -> index in the shard
	last     map[string]string           // shard -> last sequence number
	store    leases.Store
	pipeline string
}

// kinesisSetup starts kinesalite and the audit NATS server, puts n keyed
// records on a stream of the given shards (n 0: the caller puts them later
// with put), and writes the pipeline with the
// lease store kind: "file" (one process) or "nats" (the audit server's KV).
func kinesisSetup(ctx context.Context, t *testing.T, r *run, n, shards int, kind string, lease time.Duration) *kinesisRig {
	t.Helper()
	g := &kinesisRig{endpoint: kinesistest.Start(t), url: NATS(t, r.dir)}
	g.out = NewOutStream(ctx, t, g.url, "OUT", "out.>")
	kinesistest.CreateStream(t, g.endpoint, "in", shards)
	if n > 0 {
		g.put(ctx, t, n)
	}
	storeYAML := fmt.Sprintf("{ store: file, path: %q }", filepath.Join(r.dir, "leases.json"))
	switch kind {
	case "file":
		st, err := leases.NewFile(filepath.Join(r.dir, "leases.json"))
		if err != nil {
			t.Fatal(err)
		}
		g.store = st
	case "nats":
		storeYAML = "{ store: nats, bucket: crash-leases }"
		nc, err := nats.Connect(g.url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		st, err := leases.NewKV(ctx, js, "crash-leases", leases.KeyToken("crash")+"."+leases.KeyToken("in"))
		if err != nil {
			t.Fatal(err)
		}
		g.store = st
	}
	g.pipeline = filepath.Join(r.dir, "pipeline.yaml")
	yaml := fmt.Sprintf(kinesisPipeline, g.url, g.endpoint, storeYAML, lease, kafkaWindow, filepath.Join(bins, "passthrough"), kafkaWindow)
	if err := os.WriteFile(g.pipeline, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *kinesisRig) put(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	c := kinesistest.Client(g.endpoint)
	start := time.Now()
	g.ins = make(map[string]Input, n)
	bySeq := map[string][]string{}
	pending := map[string]Input{} // "shard seq" -> input, before indexes are known
	for lo := 0; lo < n; lo += 500 {
		var entries []types.PutRecordsRequestEntry
		var batch []Input
		for i := lo; i < min(lo+500, n); i++ {
			in := Input{Key: fmt.Sprint("k", i%keys), N: i / keys}
			batch = append(batch, in)
			entries = append(entries, types.PutRecordsRequestEntry{PartitionKey: aws.String(in.Key), Data: fmt.Appendf(nil, "%s %d", in.Key, in.N)})
		}
		// Entries of one key must land in order: send them again only
		// from the first failed one.
		for len(entries) > 0 {
			res, err := c.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("in"), Records: entries})
			if err != nil {
				t.Fatalf("PutRecords: %v", err)
			}
			done := len(entries)
			for j, e := range res.Records {
				if e.ErrorCode != nil {
					done = j
					break
				}
				shard, seq := *e.ShardId, *e.SequenceNumber
				bySeq[shard] = append(bySeq[shard], seq)
				in := batch[j]
				in.Part = shard
				pending[shard+" "+seq] = in
			}
			entries, batch = entries[done:], batch[done:]
		}
	}
	g.seqIdx, g.last = map[string]map[string]int64{}, map[string]string{}
	for shard, seqs := range bySeq {
		slices.SortFunc(seqs, cmpSeq)
		g.seqIdx[shard] = map[string]int64{}
		for i, s := range seqs {
			g.seqIdx[shard][s] = int64(i)
			in := pending[shard+" "+s]
			in.Off = int64(i)
			g.ins[fmt.Sprintf("kinesis:in:%s:%s", shard, s)] = in
		}
		g.last[shard] = seqs[len(seqs)-1]
	}
	t.Logf("%d records on %d shards in %s", n, len(bySeq), time.Since(start).Round(time.Millisecond))
}

func cmpSeq(a, b string) int {
	x, _ := new(big.Int).SetString(a, 10)
	y, _ := new(big.Int).SetString(b, 10)
	return x.Cmp(y)
}

// windows reads the checkpoints from the lease store: each shard's window
// starts after its checkpoint.
func (g *kinesisRig) windows(ctx context.Context, t *testing.T, kill int) ([]Window, map[string]string) {
	t.Helper()
	ls, err := g.store.List(ctx)
	if err != nil {
		t.Fatalf("listing leases: %v", err)
	}
	owners := map[string]string{}
	var ws []Window
	for shard := range g.last {
		w := Window{Kill: kill, Part: shard}
		for _, l := range ls {
			if l.Shard == shard {
				owners[shard] = l.Owner
				if l.Checkpoint != "" {
					idx, ok := g.seqIdx[shard][l.Checkpoint]
					if !ok {
						t.Fatalf("shard %s: checkpoint %q is no sequence number put there", shard, l.Checkpoint)
					}
					w.From = idx + 1
				}
			}
		}
		ws = append(ws, w)
	}
	return ws, owners
}

// done is true once every shard's checkpoint is its last record.
func (g *kinesisRig) done(ctx context.Context) bool {
	ls, err := g.store.List(ctx)
	if err != nil {
		return false
	}
	ok := 0
	for _, l := range ls {
		if last, found := g.last[l.Shard]; found && l.Checkpoint == last {
			ok++
		}
	}
	return ok == len(g.last)
}

// TestKill9Kinesis is TestKill9Kafka for a 4-shard kinesalite stream read
// with the file lease store: culvert is killed with SIGKILL at random
// moments and restarted; the restarted process takes the dead one's leases
// once they expire (lease_duration 2s) and resumes after the checkpoints.
func TestKill9Kinesis(t *testing.T) {
	n, kills := records(), killCount()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := newRun(t)
	g := kinesisSetup(ctx, t, r, n, 4, "file", 2*time.Second)
	start := time.Now()
	stored := func() int { return g.out.Stored(ctx) }

	var ks []Kill
	c := r.culvert(t, g.pipeline)
	for k := range kills {
		target := killTarget(stored(), n, kills-k)
		WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= target })
		c.Kill()
		time.Sleep(200 * time.Millisecond)
		kill := Kill{Stored: stored()}
		kill.Windows, _ = g.windows(ctx, t, k+1)
		ks = append(ks, kill)
		t.Logf("kill %d: SIGKILL with %d outputs stored; windows %v", k+1, kill.Stored, kill.Windows)
		c = r.culvert(t, g.pipeline)
	}
	WaitFor(ctx, t, 60*time.Second, r.log.Name(), stored, func() bool { return stored() >= n && g.done(ctx) })
	if err := c.Stop(30 * time.Second); err != nil {
		t.Errorf("culvert after SIGTERM: %v", err)
	}
	rep := Audit(g.ins, g.out.Read(ctx, t), ks)
	t.Logf("kinesis kill -9: %s; took %s", rep, time.Since(start).Round(time.Second))
	rep.Check(t)
	if t.Failed() {
		t.Log(r.tail())
	}
}
