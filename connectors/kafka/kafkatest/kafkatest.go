// Package kafkatest starts real Kafka protocol servers for tests: franz-go's
// kfake, three brokers on 127.0.0.1, optionally persisted to a directory so
// a test can stop and restart the whole cluster on the same ports. It also
// holds the plain-client helpers (create a topic, produce, read a topic
// back) that tests use as an independent path next to the connector.
//
// It owns test plumbing only; nothing outside _test files and benchmarks
// imports it.
package kafkatest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Cluster is a running kfake cluster.
type Cluster struct {
	mu      sync.Mutex
	c       *kfake.Cluster
	ports   []int
	dir     string
	opts    []kfake.Opt
	Brokers []string
}

// Options of Start.
type Options struct {
	// Brokers in the cluster; default 3.
	Brokers int
	// Persist keeps the cluster's state in a temporary directory, so
	// Restart brings it back with its topics, records and group offsets.
	Persist bool
	// Extra kfake options (SASL, TLS, ...).
	Extra []kfake.Opt
}

// Start starts a cluster on 127.0.0.1 and closes it at the end of the test.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	n := o.Brokers
	if n <= 0 {
		n = 3
	}
	c := &Cluster{opts: o.Extra}
	if o.Persist {
		c.dir = t.TempDir()
		c.ports = freePorts(t, n)
	}
	if err := c.start(n); err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func (c *Cluster) start(n int) error {
	opts := append([]kfake.Opt{kfake.NumBrokers(n)}, c.opts...)
	if c.dir != "" {
		opts = append(opts, kfake.DataDir(c.dir), kfake.Ports(c.ports...))
	}
	kc, err := kfake.NewCluster(opts...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.c = kc
	c.Brokers = kc.ListenAddrs()
	c.mu.Unlock()
	return nil
}

// Kfake is the running kfake cluster, for tests that watch or steer its
// requests (ControlKey).
func (c *Cluster) Kfake() *kfake.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c
}

// Stop stops the cluster (its state stays on disk when Persist).
func (c *Cluster) Stop() {
	c.mu.Lock()
	kc := c.c
	c.c = nil
	c.mu.Unlock()
	if kc != nil {
		kc.Close()
	}
}

// Restart stops the cluster and starts it again on the same ports from its
// data directory, after down. It requires Persist.
func (c *Cluster) Restart(t testing.TB, down time.Duration) {
	t.Helper()
	if c.dir == "" {
		t.Fatalf("kafkatest: Restart needs Options.Persist")
	}
	c.Stop()
	time.Sleep(down)
	var err error
	for range 50 { // the ports may linger for a moment
		if err = c.start(len(c.ports)); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("restart kfake: %v", err)
}

// Close stops the cluster. Idempotent.
func (c *Cluster) Close() { c.Stop() }

// Client returns a plain client of the cluster, closed at the end of the
// test.
func (c *Cluster) Client(t testing.TB, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.Brokers...)}, opts...)...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// CreateTopic creates topic with partitions partitions.
func (c *Cluster) CreateTopic(t testing.TB, topic string, partitions int32, opts ...kgo.Opt) {
	t.Helper()
	cl := c.Client(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %q: %v", topic, err)
	}
}

// Produce writes recs synchronously with a plain client.
func (c *Cluster) Produce(t testing.TB, recs []*kgo.Record, opts ...kgo.Opt) {
	t.Helper()
	cl := c.Client(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce %d records: %v", len(recs), err)
	}
}

// Read reads topic from the start, with a plain client outside any group,
// until it has n records or timeout passes; it returns what it has.
func (c *Cluster) Read(t testing.TB, topic string, n int, timeout time.Duration, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl := c.Client(t, append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200 * time.Millisecond)}, opts...)...)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		f := cl.PollFetches(ctx)
		f.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
