package jetstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	gojs "github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/jetstream"
	"github.com/culvert-dev/culvert/internal/natstest"
)

// delivery is one message handed to one of the sources of a group test.
type delivery struct {
	src int
	seq uint64
	n   int // delivery count
	at  time.Time
}

// groupLog collects the deliveries of several sources in the order they
// were handed over.
type groupLog struct {
	mu   sync.Mutex
	all  []delivery
	hold map[int]bool // sources whose handler keeps messages without settling them
}

func (g *groupLog) handler(t *testing.T, src int) handlerFunc {
	return func(ctx context.Context, m connectors.Message) error {
		for _, h := range m.Record.Headers {
			if strings.EqualFold(h.Name, "Nats-Pin-Id") {
				t.Errorf("record %s carries the broker's %s header", m.Record.Id, h.Name)
			}
		}
		g.mu.Lock()
		g.all = append(g.all, delivery{src, m.Record.Source.Offset, m.Delivery, time.Now()})
		hold := g.hold[src]
		g.mu.Unlock()
		if hold {
			return nil
		}
		return m.Settler.Ack(ctx)
	}
}

func (g *groupLog) since(i int) []delivery {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]delivery(nil), g.all[i:]...)
}

func (g *groupLog) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.all)
}

func (g *groupLog) setHold(src int) {
	g.mu.Lock()
	g.hold[src] = true
	g.mu.Unlock()
}

// waitLen waits until the log holds n deliveries.
func (g *groupLog) waitLen(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for g.len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d deliveries after %s, want %d", g.len(), within, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sources returns the set of sources that got the deliveries.
func sources(ds []delivery) map[int]int {
	m := map[int]int{}
	for _, d := range ds {
		m[d.src]++
	}
	return m
}

// TestPinnedGroup: three sources read one durable through a pinned
// priority group. Only one of them (the pinned client) gets messages; when
// it dies with messages un-acked, exactly one other is pinned after the
// ttl and gets the dead holder's un-acked messages first, in stream order,
// then the newer ones; when the holder closes, it unpins, and the pin moves
// at once.
func TestPinnedGroup(t *testing.T) {
	s := natstest.Server(t)
	pub := natstest.Connect(t, s)
	js, err := gojs.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const ttl, ackWait = 3 * time.Second, time.Second
	cfg := jetstream.SourceConfig{
		Stream: "G", Subjects: []string{"g.>"}, Durable: "shared", MaxInFlight: 50, FetchBatch: 10,
		AckWait: ackWait, Group: "culvert", PinnedTTL: ttl,
	}
	publish := func(n int) {
		t.Helper()
		for i := range n {
			if _, err := js.Publish(ctx, "g.x", []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	log := &groupLog{hold: map[int]bool{}}
	var conns []*nats.Conn
	var srcs []connectors.Source
	for i := range 3 {
		nc := natstest.Connect(t, s)
		src, err := jetstream.NewSource(ctx, nc, cfg, natstest.Logger(t, slog.LevelInfo))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		conns, srcs = append(conns, nc), append(srcs, src)
		rctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		go src.Run(rctx, log.handler(t, i)) //nolint:errcheck // the killed one's Run fails with its connection
	}
	cons, err := js.Consumer(ctx, "G", "shared")
	if err != nil {
		t.Fatal(err)
	}
	pin := func() string {
		t.Helper()
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Config.PriorityGroups) != 1 || info.Config.PriorityPolicy != gojs.PriorityPolicyPinned || info.Config.PinnedTTL != ttl {
			t.Fatalf("consumer config: policy %v groups %v ttl %s", info.Config.PriorityPolicy, info.Config.PriorityGroups, info.Config.PinnedTTL)
		}
		for _, g := range info.PriorityGroups {
			if g.Group == "culvert" {
				return g.PinnedClientID
			}
		}
		return ""
	}

	// 1. One holder gets everything.
	publish(200)
	log.waitLen(t, 200, 10*time.Second)
	first := log.since(0)
	holders := sources(first)
	if len(holders) != 1 {
		t.Fatalf("deliveries by source %v: want one pinned source", holders)
	}
	holder := first[0].src
	pin1 := pin()
	if pin1 == "" {
		t.Fatal("no pinned client after the first deliveries")
	}

	// 2. The holder stops acking and dies (its connection drops) with
	// messages un-acked.
	log.setHold(holder)
	mark := log.len()
	publish(100)
	log.waitLen(t, mark+cfg.MaxInFlight, 10*time.Second)
	conns[holder].Close()
	killed := time.Now()
	held := log.since(mark)
	var lastHeld uint64
	for _, d := range held {
		if d.src != holder {
			t.Fatalf("source %d got seq %d while %d held the pin", d.src, d.seq, holder)
		}
		lastHeld = max(lastHeld, d.seq)
	}
	mark += len(held)
	log.waitLen(t, mark+100, 20*time.Second)
	after := log.since(mark)
	took := after[0].at.Sub(killed)
	next := sources(after)
	if len(next) != 1 || next[holder] != 0 {
		t.Fatalf("after the holder %d died, deliveries by source %v: want one other source", holder, next)
	}
	// The dead holder's un-acked messages come first, then the newer ones
	// in stream order. (The server queues the un-acked ones for
	// redelivery as their ack_wait runs out, one check at a time, so they
	// need not come back in stream order among themselves.)
	inversions := 0
	var prev uint64
	for i, d := range after {
		if d.seq < prev {
			inversions++
			if d.seq > lastHeld {
				t.Errorf("delivery %d after the takeover: new seq %d after %d", i, d.seq, prev)
			}
		}
		prev = d.seq
		if redelivered := d.seq <= lastHeld; redelivered != (i < len(held)) {
			t.Errorf("delivery %d after the takeover: seq %d (the dead holder had %d, up to seq %d): its un-acked messages must come first", i, d.seq, len(held), lastHeld)
		}
	}
	t.Logf("took over %s after the holder died (ttl %s, ack_wait %s); %d redelivered first, %d out of stream order among them", took.Round(10*time.Millisecond), ttl, ackWait, len(held), inversions)
	if took < ttl-500*time.Millisecond {
		t.Errorf("another source took over %s after the holder died: before the pin's ttl (%s)", took, ttl)
	}
	holder2 := after[0].src
	pin2 := pin()
	if pin2 == "" || pin2 == pin1 {
		t.Fatalf("pin after the takeover %q (before %q)", pin2, pin1)
	}

	// 3. The new holder closes: it unpins, and the pin does not outlive it.
	if err := srcs[holder2].Close(); err != nil {
		t.Fatal(err)
	}
	if p := pin(); p == pin2 {
		t.Fatalf("source %d closed and is still pinned (%s)", holder2, p)
	}
	mark = log.len()
	publish(50)
	log.waitLen(t, mark+50, 10*time.Second)
	last := sources(log.since(mark))
	if len(last) != 1 || last[holder] != 0 || last[holder2] != 0 {
		t.Fatalf("after source %d closed, deliveries by source %v: want the third source only", holder2, last)
	}
}

// A pinned group's ttl is at least 3s and ack_wait at most two thirds of it.
func TestPinnedGroupConfig(t *testing.T) {
	s := natstest.Server(t)
	nc := natstest.Connect(t, s)
	tests := []struct {
		name    string
		ackWait time.Duration
		ttl     time.Duration
		wantErr string
	}{
		{"ack_wait over two thirds of the ttl", 4 * time.Second, 5 * time.Second, "at most two thirds"},
		{"default ttl under the default ack_wait", 0, 0, "at most two thirds"},
		{"ttl under 3s", 500 * time.Millisecond, 2 * time.Second, "at least 3s"},
		{"ack_wait two thirds of the ttl", 2 * time.Second, 3 * time.Second, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := jetstream.SourceConfig{Stream: "C", Subjects: []string{"c.>"}, Durable: fmt.Sprint("d", i), AckWait: tt.ackWait, Group: "g", PinnedTTL: tt.ttl}
			src, err := jetstream.NewSource(context.Background(), nc, cfg, nil)
			if src != nil {
				src.Close()
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("NewSource: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("NewSource: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestPartitionedDurables: the stream splits its subjects into two
// partitions by key (a subject transform with partition(2, 1)); one durable
// per partition, each filtered to its partition and each a pinned group,
// read by two sources. Each source gets only its partition, every key lands
// in one partition, and each key's records come in publish order. This is
// the layout that spreads a stream over processes with per-key order.
func TestPartitionedDurables(t *testing.T) {
	s := natstest.Server(t)
	pub := natstest.Connect(t, s)
	js, err := gojs.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, gojs.StreamConfig{
		Name: "P", Subjects: []string{"orders.*"},
		SubjectTransform: &gojs.SubjectTransformConfig{Source: "orders.*", Destination: "orders.{{partition(2,1)}}.{{wildcard(1)}}"},
	}); err != nil {
		t.Fatal(err)
	}
	const keys, per = 20, 30
	for i := range per {
		for k := range keys {
			if _, err := js.Publish(ctx, fmt.Sprintf("orders.k%d", k), []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	type got struct {
		part string
		n    int
	}
	var mu sync.Mutex
	seen := map[string][]got{} // key -> deliveries
	total := 0
	for p := range 2 {
		part := fmt.Sprint(p)
		cfg := jetstream.SourceConfig{
			Stream: "P", Durable: "part-" + part, FilterSubjects: []string{"orders." + part + ".*"},
			MaxInFlight: 16, FetchBatch: 8, AckWait: 2 * time.Second, Group: "culvert", PinnedTTL: 3 * time.Second,
		}
		src, err := jetstream.NewSource(ctx, natstest.Connect(t, s), cfg, natstest.Logger(t, slog.LevelWarn))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		stop := run(t, src, func(ctx context.Context, m connectors.Message) error {
			subj := strings.Split(m.Record.Source.Subject, ".") // orders.<partition>.<key>
			var n int
			fmt.Sscan(string(m.Record.Value), &n)
			mu.Lock()
			seen[subj[2]] = append(seen[subj[2]], got{subj[1] + "/" + part, n})
			total++
			mu.Unlock()
			return m.Settler.Ack(ctx)
		})
		t.Cleanup(stop)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := total
		mu.Unlock()
		if n == keys*per {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d records after 10s", n, keys*per)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	parts := map[string]int{}
	for k, ds := range seen {
		for i, d := range ds {
			if d.part != ds[0].part {
				t.Errorf("key %s in %s and %s (subject partition/source partition)", k, ds[0].part, d.part)
			}
			if d.n != i {
				t.Errorf("key %s: record %d came as the %dth", k, d.n, i)
			}
		}
		if p, src, _ := strings.Cut(ds[0].part, "/"); p != src {
			t.Errorf("key %s: subject partition %s read by the durable of partition %s", k, p, src)
		}
		parts[ds[0].part]++
	}
	if len(seen) != keys || len(parts) != 2 {
		t.Fatalf("%d keys over partitions %v, want %d keys over 2", len(seen), parts, keys)
	}
	t.Logf("keys per partition: %v", parts)
}
