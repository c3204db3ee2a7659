package kafka_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// txnHandler publishes one output per record through the transactional
// sink and settles the record with the output's confirmation; with
// nakFirst the first record it gets is nak'd, which aborts its transaction.
type txnHandler struct {
	t        *testing.T
	sink     connectors.Sink
	nakFirst bool
	naked    atomic.Bool
	stopAt   int64 // after this many records, hold the rest (0: never)
	n        atomic.Int64
	mu       sync.Mutex
	held     []connectors.Settler
}

func (h *txnHandler) Handle(ctx context.Context, m connectors.Message) error {
	v := string(m.Record.GetValue())
	if h.stopAt > 0 && h.n.Add(1) > h.stopAt {
		h.mu.Lock()
		h.held = append(h.held, m.Settler)
		h.mu.Unlock()
		// An output is produced in the open transaction, but the record
		// never completes: the transaction stays open until Close.
		h.sink.Publish(ctx, "tout", &culvertv1.Record{Key: m.Record.GetKey(), Value: []byte("out:" + v)}, func(error) {})
		return nil
	}
	if h.nakFirst && h.naked.CompareAndSwap(false, true) {
		// Its output goes out first, so the abort has something to hide.
		h.sink.Publish(ctx, "tout", &culvertv1.Record{Value: []byte("out:" + v)}, func(error) {
			_ = m.Settler.Nak(ctx, 50*time.Millisecond)
		})
		return nil
	}
	h.sink.Publish(ctx, "tout", &culvertv1.Record{Key: m.Record.GetKey(), Value: []byte("out:" + v)}, func(err error) {
		if err != nil {
			_ = m.Settler.Nak(ctx, 0)
			return
		}
		_ = m.Settler.Ack(ctx)
	})
	return nil
}

func (h *txnHandler) Revoked([]string) {}

func newTxn(t *testing.T, c *kafkatest.Cluster, id string) (*kafka.TxnSource, *kafka.TxnSink) {
	src, sink, err := kafka.NewTxn(kafka.TxnConfig{Client: kafka.ClientConfig{Brokers: c.Brokers}, Topics: []string{"tin"}, Group: "g-txn",
		TransactionalID: id, BatchMax: 40, Encoding: "value", SessionTimeout: 6 * time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src, sink
}

// outputs reads tout to its end with the given isolation and counts values.
func outputs(t *testing.T, c *kafkatest.Cluster, n int, iso kgo.IsolationLevel) map[string]int {
	got := c.Read(t, "tout", n, 3*time.Second, kgo.FetchIsolationLevel(iso))
	count := map[string]int{}
	for _, r := range got {
		count[string(r.Value)]++
	}
	return count
}

// TestExactlyOnce: a Kafka -> Kafka pair in transactions. One record is
// nak'd after its output was produced, which aborts its whole batch; a
// first instance is closed with a transaction open (outputs produced,
// records unfinished); a second instance with the same transactional id
// finishes the topic. A read_committed reader must see every input's
// output exactly once, while a read_uncommitted reader sees the aborted
// outputs too.
func TestExactlyOnce(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "tin", 3)
	c.CreateTopic(t, "tout", 3)
	const perPartition = 100
	produceTo(t, c, "tin", 3, perPartition)
	const total = 3 * perPartition

	// First instance: handles 150 records, then leaves a transaction open.
	src1, sink1 := newTxn(t, c, "culvert-txn-test")
	h1 := &txnHandler{t: t, sink: sink1, nakFirst: true, stopAt: 150}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- src1.Run(ctx1, h1) }()
	waitFor(t, "the first instance to hold records in an open transaction", func() bool {
		h1.mu.Lock()
		defer h1.mu.Unlock()
		return len(h1.held) > 0
	})
	time.Sleep(200 * time.Millisecond) // its outputs reach the broker, uncommitted
	cancel1()
	if err := <-done1; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	_ = src1.Close()
	if !h1.naked.Load() {
		t.Fatalf("the nak'd record was never delivered to the first instance")
	}

	src2, sink2 := newTxn(t, c, "culvert-txn-test")
	h2 := &txnHandler{t: t, sink: sink2}
	run(t, src2, h2)

	deadline := time.Now().Add(30 * time.Second)
	var committed map[string]int
	for {
		committed = outputs(t, c, total, kgo.ReadCommitted())
		if len(committed) == total || time.Now().After(deadline) {
			break
		}
	}
	dups := 0
	for v, k := range committed {
		if !strings.HasPrefix(v, "out:p") {
			t.Errorf("unexpected output %q", v)
		}
		if k > 1 {
			dups++
			t.Errorf("read_committed: %q appears %d times", v, k)
		}
	}
	if len(committed) != total || dups > 0 {
		t.Fatalf("read_committed: %d distinct outputs (want %d), %d duplicated", len(committed), total, dups)
	}
	uncommitted := outputs(t, c, total+1, kgo.ReadUncommitted())
	extra := 0
	for _, k := range uncommitted {
		extra += k - 1
	}
	if extra == 0 {
		t.Errorf("read_uncommitted shows no aborted outputs: the abort paths were not exercised")
	}
	t.Logf("read_committed: %d outputs, each once; read_uncommitted: %d aborted duplicates hidden by the transactions", total, extra)

	// Outside a transaction the sink refuses.
	errc := make(chan error, 1)
	sink2.Publish(context.Background(), "tout", &culvertv1.Record{Value: []byte("stray")}, func(err error) { errc <- err })
	if err := <-errc; err == nil {
		t.Errorf("publish outside a transaction accepted")
	}
}
