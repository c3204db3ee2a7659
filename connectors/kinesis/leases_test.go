package kinesis

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// event is one Handle or Revoked seen by a logHandler.
type event struct {
	rec     *culvertv1.Record
	revoked []string
}

// logHandler acks at once and logs what it saw, for order checks.
type logHandler struct {
	name string
	mu   sync.Mutex
	log  []event
	stop bool // when set, Handle no longer acks (a dead worker)
}

func (h *logHandler) Handle(ctx context.Context, m connectors.Message) error {
	h.mu.Lock()
	h.log = append(h.log, event{rec: m.Record})
	stop := h.stop
	h.mu.Unlock()
	if stop {
		return nil
	}
	return m.Settler.Ack(ctx)
}

func (h *logHandler) Revoked(ps []string) {
	h.mu.Lock()
	h.log = append(h.log, event{revoked: ps})
	h.mu.Unlock()
}

func (h *logHandler) events() []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]event(nil), h.log...)
}

// seqLess compares Kinesis sequence numbers (decimal strings).
func seqLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// checkShardOrder fails t if a handler saw a shard's records out of
// sequence order, except right after it took the shard again (after a
// revocation, reading restarts at the checkpoint).
func checkShardOrder(t *testing.T, hs ...*logHandler) {
	t.Helper()
	for _, h := range hs {
		last := map[string]string{}
		for _, e := range h.events() {
			for _, p := range e.revoked {
				delete(last, p)
			}
			if e.rec == nil {
				continue
			}
			p, seq := e.rec.GetSource().GetPartition(), e.rec.GetSource().GetSequence()
			if prev, ok := last[p]; ok && !seqLess(prev, seq) {
				t.Errorf("%s: shard %s: sequence %s after %s", h.name, p, seq, prev)
			}
			last[p] = seq
		}
	}
}

// seen returns the values seen by the handlers, with counts.
func seen(hs ...*logHandler) map[string]int {
	out := map[string]int{}
	for _, h := range hs {
		for _, e := range h.events() {
			if e.rec != nil {
				out[string(e.rec.GetValue())]++
			}
		}
	}
	return out
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// keyed returns n records with values tag/i over keys k0..k(keys-1).
func keyed(tag string, from, n, keys int) []*culvertv1.Record {
	out := make([]*culvertv1.Record, n)
	for i := range out {
		j := from + i
		out[i] = &culvertv1.Record{Key: []byte("k" + strconv.Itoa(j%keys)), Value: []byte(fmt.Sprintf("%s/%d", tag, j))}
	}
	return out
}

func allSeen(tag string, n int, hs ...*logHandler) func() bool {
	return func() bool {
		s := seen(hs...)
		for i := range n {
			if s[fmt.Sprintf("%s/%d", tag, i)] == 0 {
				return false
			}
		}
		return true
	}
}

// TestLeasesBalanceAndFailover runs three sources of one application on a
// six-shard stream with leases in JetStream KV: the shards spread over
// them; one source then stops without releasing its leases, and the other
// two take its shards after the lease duration. Nothing is lost and every
// source reads each shard in order.
func TestLeasesBalanceAndFailover(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "bal", 6)
	client := kinesistest.Client(ep)
	ns := natstest.Server(t)
	log := natstest.Logger(t, slog.LevelInfo)

	type worker struct {
		src    *Source
		h      *logHandler
		cancel context.CancelFunc
		done   chan error
	}
	var ws []*worker
	for i := range 3 {
		js, err := jetstream.New(natstest.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		store, err := leases.NewKV(context.Background(), js, "", "app.bal")
		if err != nil {
			t.Fatal(err)
		}
		cfg := testSourceConfig("bal", store)
		cfg.WorkerID = fmt.Sprintf("w%d", i)
		src, err := NewSource(client, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		w := &worker{src: src, h: &logHandler{name: cfg.WorkerID}, cancel: cancel, done: make(chan error, 1)}
		go func() { w.done <- src.Run(ctx, w.h) }()
		t.Cleanup(func() { cancel(); <-w.done; _ = src.Close() })
		ws = append(ws, w)
	}
	put(t, client, "bal", keyed("a", 0, 300, 24))

	waitUntil(t, "two shards per worker", 15*time.Second, func() bool {
		for _, w := range ws {
			if len(w.src.Owned()) != 2 {
				return false
			}
		}
		return true
	})
	waitUntil(t, "the first batch", 10*time.Second, allSeen("a", 300, ws[0].h, ws[1].h, ws[2].h))

	// w1 dies: it stops reading and renewing, and never releases.
	dead := ws[1]
	deadShards := dead.src.Owned()
	dead.h.mu.Lock()
	dead.h.stop = true
	dead.h.mu.Unlock()
	dead.cancel()
	if err := <-dead.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	dead.done <- nil
	put(t, client, "bal", keyed("b", 0, 300, 24))

	waitUntil(t, "the dead worker's shards taken over", 15*time.Second, func() bool {
		return len(ws[0].src.Owned())+len(ws[2].src.Owned()) == 6
	})
	live := []*logHandler{ws[0].h, ws[2].h}
	waitUntil(t, "the second batch on the live workers", 10*time.Second, allSeen("b", 300, live...))
	for _, s := range deadShards {
		if !contains(ws[0].src.Owned(), s) && !contains(ws[2].src.Owned(), s) {
			t.Errorf("shard %s of the dead worker was not taken over", s)
		}
	}
	if !allSeen("a", 300, ws[0].h, ws[1].h, ws[2].h)() {
		t.Errorf("records of the first batch lost")
	}
	checkShardOrder(t, ws[0].h, ws[1].h, ws[2].h)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestResharding splits the stream's shard while a source reads it, then
// merges the two children: every record arrives, and the records of each
// key arrive in the order they were put (children wait for their parents).
func TestResharding(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "rs", 1)
	client := kinesistest.Client(ep)
	store, err := leases.NewFile(t.TempDir() + "/leases.json")
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(client, testSourceConfig("rs", store), natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	h := &logHandler{name: "rs"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done; _ = src.Close() })
	const keys = 16
	put(t, client, "rs", keyed("r", 0, 150, keys))
	time.Sleep(100 * time.Millisecond) // reading is under way

	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if _, err := client.SplitShard(rctx, &kinesis.SplitShardInput{StreamName: aws.String("rs"),
		ShardToSplit: aws.String("shardId-000000000000"), NewStartingHashKey: aws.String("170141183460469231731687303715884105728")}); err != nil {
		t.Fatalf("split: %v", err)
	}
	kinesistest.WaitActive(t, ep, "rs")
	put(t, client, "rs", keyed("r", 150, 150, keys))
	time.Sleep(100 * time.Millisecond)
	if _, err := client.MergeShards(rctx, &kinesis.MergeShardsInput{StreamName: aws.String("rs"),
		ShardToMerge: aws.String("shardId-000000000001"), AdjacentShardToMerge: aws.String("shardId-000000000002")}); err != nil {
		t.Fatalf("merge: %v", err)
	}
	kinesistest.WaitActive(t, ep, "rs")
	put(t, client, "rs", keyed("r", 300, 150, keys))

	waitUntil(t, "every record across the split and the merge", 20*time.Second, allSeen("r", 450, h))
	waitUntil(t, "the merged shard to be read", 10*time.Second, func() bool {
		return contains(src.Owned(), "shardId-000000000003")
	})
	last := map[string]int{}
	shards := map[string]bool{}
	for _, e := range h.events() {
		if e.rec == nil {
			continue
		}
		shards[e.rec.GetSource().GetPartition()] = true
		k := string(e.rec.GetKey())
		i, _ := strconv.Atoi(strings.TrimPrefix(string(e.rec.GetValue()), "r/"))
		if p, ok := last[k]; ok && i <= p {
			t.Errorf("key %s: record %d after %d", k, i, p)
		}
		last[k] = i
	}
	if len(shards) != 4 {
		t.Errorf("records came from shards %v, want the parent, two children and the merged one", shards)
	}
	ls, _ := store.List(context.Background())
	for _, l := range ls {
		if l.Shard != "shardId-000000000003" && l.Checkpoint != leases.ShardEnd {
			t.Errorf("closed shard %s checkpointed at %q, want %s", l.Shard, l.Checkpoint, leases.ShardEnd)
		}
	}
}

// TestServerRestart restarts kinesalite (on-disk store) while a source
// reads and a sink writes: both reconnect, and nothing is lost.
func TestServerRestart(t *testing.T) {
	srv := kinesistest.StartWith(t, kinesistest.Options{Path: t.TempDir()})
	ep := srv.Endpoint()
	kinesistest.CreateStream(t, ep, "in", 2)
	kinesistest.CreateStream(t, ep, "out", 2)
	client := kinesistest.Client(ep)
	store, err := leases.NewFile(t.TempDir() + "/leases.json")
	if err != nil {
		t.Fatal(err)
	}
	log := natstest.Logger(t, slog.LevelInfo)
	src, err := NewSource(client, testSourceConfig("in", store), log)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := NewSink(client, SinkConfig{Stream: "out", MaxBackoff: 300 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	h := &logHandler{name: "restart"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done; _ = src.Close() })

	put(t, client, "in", keyed("x", 0, 100, 8))
	var mu sync.Mutex
	var errs []error
	confirmed := 0
	publish := func(from, n int) {
		for _, r := range keyed("y", from, n, 8) {
			sink.Publish(context.Background(), "", r, func(err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				}
				confirmed++
			})
		}
	}
	publish(0, 100)
	waitUntil(t, "the source to read the first records", 10*time.Second, func() bool { return len(seen(h)) > 0 })
	srv.Restart()
	publish(100, 100)
	put(t, client, "in", keyed("x", 100, 100, 8))

	waitUntil(t, "every input record after the restart", 20*time.Second, allSeen("x", 200, h))
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer fcancel()
	if err := sink.Flush(fctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	_ = sink.Close()
	mu.Lock()
	if confirmed != 200 || len(errs) > 0 {
		t.Errorf("%d of 200 published records confirmed, errors %v", confirmed, errs)
	}
	mu.Unlock()
	got := map[string]bool{}
	for _, r := range readAll(t, client, "out", 200, 10*time.Second) {
		got[string(r.GetValue())] = true
	}
	for i := range 200 {
		if !got[fmt.Sprintf("y/%d", i)] {
			t.Errorf("record y/%d confirmed but not in the stream", i)
		}
	}
	checkShardOrder(t, h)
}

// TestLatestSurvivesLeaseMove: with start position latest, a shard whose
// lease moves before its first checkpoint is read by the next holder from
// when the lease was created, not from a later "latest": records put in
// between are not skipped. Records put before the lease existed are.
func TestLatestSurvivesLeaseMove(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "lat", 1)
	client := kinesistest.Client(ep)
	put(t, client, "lat", keyed("old", 0, 5, 3))
	time.Sleep(1100 * time.Millisecond) // arrival times are in whole seconds in kinesalite
	store, err := leases.NewFile(t.TempDir() + "/leases.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testSourceConfig("lat", store)
	cfg.StartPosition = Latest
	log := natstest.Logger(t, slog.LevelInfo)

	// The first worker takes the lease and stops before any record.
	a, err := NewSource(client, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ha := &logHandler{name: "a"}
	go func() { done <- a.Run(ctx, ha) }()
	waitUntil(t, "the first worker to hold the shard", 10*time.Second, func() bool { return len(a.Owned()) == 1 })
	cancel()
	<-done
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	put(t, client, "lat", keyed("new", 0, 5, 3))
	time.Sleep(1100 * time.Millisecond)

	b, err := NewSource(client, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	hb := &logHandler{name: "b"}
	go func() { done <- b.Run(ctx, hb) }()
	t.Cleanup(func() { cancel(); <-done; _ = b.Close() })
	waitUntil(t, "the records put while the lease moved", 10*time.Second, allSeen("new", 5, hb))
	if s := seen(ha, hb); s["old/0"] > 0 {
		t.Errorf("a record put before the lease existed was read with start position latest: %v", s)
	}
}

// TestStartPositions: a new application starts each shard at its start
// position. kinesalite answers AT_TIMESTAMP only once a record at or after
// the time exists (AWS answers at once), so that case puts its new records
// before the source starts.
func TestStartPositions(t *testing.T) {
	ep := kinesistest.Start(t)
	client := kinesistest.Client(ep)
	tests := []struct {
		name      string
		pos       string
		wantOld   bool
		stampMid  bool // AT_TIMESTAMP between the old and the new records
		newBefore bool // put the new records before the source starts
	}{
		{"trim_horizon", TrimHorizon, true, false, false},
		{"latest", Latest, false, false, false},
		{"at_timestamp", AtTimestamp, false, true, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := fmt.Sprintf("start-%d", i)
			kinesistest.CreateStream(t, ep, stream, 2)
			put(t, client, stream, keyed("old", 0, 6, 3))
			time.Sleep(1100 * time.Millisecond)
			mid := time.Now()
			time.Sleep(1100 * time.Millisecond)
			if tt.newBefore {
				put(t, client, stream, keyed("new", 0, 6, 3))
			}
			store, err := leases.NewFile(t.TempDir() + "/leases.json")
			if err != nil {
				t.Fatal(err)
			}
			cfg := testSourceConfig(stream, store)
			cfg.StartPosition = tt.pos
			if tt.stampMid {
				cfg.StartTimestamp = mid
			}
			src, err := NewSource(client, cfg, natstest.Logger(t, slog.LevelWarn))
			if err != nil {
				t.Fatal(err)
			}
			h := &logHandler{name: tt.name}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx, h) }()
			t.Cleanup(func() { cancel(); <-done; _ = src.Close() })
			waitUntil(t, "both shards held", 10*time.Second, func() bool { return len(src.Owned()) == 2 })
			if !tt.newBefore {
				time.Sleep(300 * time.Millisecond) // iterators are taken
				put(t, client, stream, keyed("new", 0, 6, 3))
			}
			waitUntil(t, "the new records", 10*time.Second, allSeen("new", 6, h))
			if tt.wantOld {
				waitUntil(t, "the old records", 10*time.Second, allSeen("old", 6, h))
			} else {
				time.Sleep(200 * time.Millisecond)
				if s := seen(h); s["old/0"]+s["old/1"]+s["old/2"] > 0 {
					t.Errorf("records from before the start position were read: %v", s)
				}
			}
		})
	}
}

// TestTakenLeaseNoticedAtOnce: with leases in JetStream KV, a worker whose
// lease another worker takes (here, to balance) stops reading that shard
// as soon as the write reaches it through the bucket's watch, not at its
// next lease round (ten seconds apart here), so the records put right after
// the handover are read by the new holder only.
func TestTakenLeaseNoticedAtOnce(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "hand", 2)
	client := kinesistest.Client(ep)
	ns := natstest.Server(t)
	log := natstest.Logger(t, slog.LevelInfo)

	start := func(id string) (*Source, *logHandler) {
		js, err := jetstream.New(natstest.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		store, err := leases.NewKV(context.Background(), js, "", "app.hand")
		if err != nil {
			t.Fatal(err)
		}
		cfg := testSourceConfig("hand", store)
		cfg.WorkerID = id
		// Lease rounds ten seconds apart: only the watch can explain a
		// quicker handover.
		cfg.LeaseDuration, cfg.CheckpointInterval = 30*time.Second, 10*time.Second
		src, err := NewSource(client, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		h := &logHandler{name: id}
		go func() { done <- src.Run(ctx, h) }()
		t.Cleanup(func() { cancel(); <-done; _ = src.Close() })
		return src, h
	}
	a, ha := start("a")
	waitUntil(t, "a to hold both shards", 10*time.Second, func() bool { return len(a.Owned()) == 2 })
	// a's first lease round is behind it; its next is ten seconds away.
	b, hb := start("b")
	waitUntil(t, "b to take one shard from a", 10*time.Second, func() bool { return len(b.Owned()) == 1 })
	took := time.Now()
	waitUntil(t, "a to drop the shard b took", 10*time.Second, func() bool { return len(a.Owned()) == 1 })
	if d := time.Since(took); d > 3*time.Second {
		t.Errorf("a dropped the taken shard %s after b took it: that is its lease round, not the watch", d)
	}
	if got, want := a.Owned(), b.Owned(); contains(got, want[0]) {
		t.Fatalf("both workers hold %s", want[0])
	}
	revoked := false
	for _, e := range ha.events() {
		if len(e.revoked) == 1 && e.revoked[0] == b.Owned()[0] {
			revoked = true
		}
	}
	if !revoked {
		t.Errorf("a's handler was not told that %s was revoked: %+v", b.Owned()[0], ha.events())
	}

	put(t, client, "hand", keyed("x", 0, 200, 20))
	waitUntil(t, "every record", 10*time.Second, allSeen("x", 200, ha, hb))
	for v, n := range seen(ha, hb) {
		if n > 1 {
			t.Errorf("record %s read %d times after the handover", v, n)
		}
	}
	checkShardOrder(t, ha, hb)
}
