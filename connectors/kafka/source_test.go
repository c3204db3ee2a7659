package kafka_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// handler hands every message to on and records revocations.
type handler struct {
	on      func(m connectors.Message)
	mu      sync.Mutex
	revoked []string
}

func (h *handler) Handle(_ context.Context, m connectors.Message) error { h.on(m); return nil }
func (h *handler) Revoked(p []string) {
	h.mu.Lock()
	h.revoked = append(h.revoked, p...)
	h.mu.Unlock()
}

func (h *handler) revokedList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.revoked...)
}

// batchHandler is handler as a kafka.BatchHandler: the lanes hand it
// their records in batches.
type batchHandler struct{ *handler }

func (h batchHandler) HandleBatch(_ context.Context, ms []connectors.Message) (int, error) {
	for _, m := range ms {
		h.on(m)
	}
	return len(ms), nil
}

// wrap is h as it is, or as a kafka.BatchHandler.
func wrap(batch bool, h *handler) connectors.Handler {
	if batch {
		return batchHandler{h}
	}
	return h
}

// bothPaths runs test with records handed one at a time (a Handler) and
// in batches (a kafka.BatchHandler, as the engine is).
func bothPaths(t *testing.T, test func(t *testing.T, batch bool)) {
	t.Run("one at a time", func(t *testing.T) { test(t, false) })
	t.Run("batches", func(t *testing.T) { test(t, true) })
}

func run(t *testing.T, src connectors.Source, h connectors.Handler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func newSource(t *testing.T, c *kafkatest.Cluster, cfg kafka.SourceConfig) *kafka.Source {
	t.Helper()
	cfg.Client.Brokers = c.Brokers
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 6 * time.Second
	}
	if cfg.FetchMaxWait == 0 {
		cfg.FetchMaxWait = 100 * time.Millisecond
	}
	src, err := kafka.NewSource(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// produceTo writes n records to each partition, values "p<partition>-<i>".
func produceTo(t *testing.T, c *kafkatest.Cluster, topic string, partitions, n int) {
	var recs []*kgo.Record
	for p := range partitions {
		for i := range n {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: int32(p), Value: []byte("p" + strconv.Itoa(p) + "-" + strconv.Itoa(i))})
		}
	}
	c.Produce(t, recs, kgo.RecordPartitioner(kgo.ManualPartitioner()))
}

func committed(t *testing.T, c *kafkatest.Cluster, group, topic string, partition int32) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(c.Client(t)).FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("fetch offsets of %s: %v", group, err)
	}
	o, ok := offs.Lookup(topic, partition)
	if !ok {
		return -1
	}
	return o.At
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCommitWaitsForEarlierRecord: a later record of a partition completes
// before an earlier one. The committed offset must stay at the earlier
// record until it completes, then jump past both.
func TestCommitWaitsForEarlierRecord(t *testing.T) { bothPaths(t, testCommitWaitsForEarlierRecord) }

func testCommitWaitsForEarlierRecord(t *testing.T, batch bool) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "ooo", 1)
	produceTo(t, c, "ooo", 1, 4)
	src := newSource(t, c, kafka.SourceConfig{Topics: []string{"ooo"}, Group: "g-ooo", CommitInterval: 20 * time.Millisecond})
	var mu sync.Mutex
	held := map[uint64]connectors.Settler{}
	run(t, src, wrap(batch, &handler{on: func(m connectors.Message) {
		mu.Lock()
		held[m.Record.GetSource().GetOffset()] = m.Settler
		mu.Unlock()
	}}))
	waitFor(t, "four records", func() bool { mu.Lock(); defer mu.Unlock(); return len(held) == 4 })
	ack := func(off uint64) {
		mu.Lock()
		s := held[off]
		mu.Unlock()
		if err := s.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ack(0)
	waitFor(t, "commit 1", func() bool { return committed(t, c, "g-ooo", "ooo", 0) == 1 })
	ack(3)
	ack(2)
	time.Sleep(300 * time.Millisecond) // several commit intervals
	if got := committed(t, c, "g-ooo", "ooo", 0); got != 1 {
		t.Fatalf("committed %d while record 1 is unfinished, want 1", got)
	}
	ack(1)
	waitFor(t, "commit 4", func() bool { return committed(t, c, "g-ooo", "ooo", 0) == 4 })
}

// TestNakHoldsCommit: a nak'd record is handed again after its delay by
// the source itself, later records keep flowing, and the commit waits for
// it.
func TestNakHoldsCommit(t *testing.T) { bothPaths(t, testNakHoldsCommit) }

func testNakHoldsCommit(t *testing.T, batch bool) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "nak", 1)
	produceTo(t, c, "nak", 1, 3)
	src := newSource(t, c, kafka.SourceConfig{Topics: []string{"nak"}, Group: "g-nak", CommitInterval: 20 * time.Millisecond})
	var mu sync.Mutex
	var order []string
	var naked connectors.Settler
	var nakDelivery int
	run(t, src, wrap(batch, &handler{on: func(m connectors.Message) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, string(m.Record.GetValue()))
		if m.Record.GetSource().GetOffset() == 0 && naked == nil {
			naked = m.Settler
			_ = m.Settler.Nak(context.Background(), 200*time.Millisecond)
			return
		}
		if m.Record.GetSource().GetOffset() == 0 {
			nakDelivery = m.Delivery
		}
		_ = m.Settler.Ack(context.Background())
	}}))
	waitFor(t, "the redelivery", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 4 })
	mu.Lock()
	want := []string{"p0-0", "p0-1", "p0-2", "p0-0"}
	for i := range want {
		if order[i] != want[i] {
			t.Errorf("deliveries %q, want %q", order, want)
			break
		}
	}
	if nakDelivery != 2 {
		t.Errorf("redelivery reports Delivery %d, want 2", nakDelivery)
	}
	mu.Unlock()
	waitFor(t, "commit 3", func() bool { return committed(t, c, "g-nak", "nak", 0) == 3 })
}

// TestRevocation: member A holds one record of every partition unsettled;
// member B joins and the cooperative rebalance moves a partition to it.
// A's revocation waits RevokeGrace, commits up to the held record and
// abandons it; B must then get that very record (nothing skipped), A's
// late settlement of it is ignored, and A's handler is told.
func TestRevocation(t *testing.T) { bothPaths(t, testRevocation) }

func testRevocation(t *testing.T, batch bool) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "rv", 3)
	produceTo(t, c, "rv", 3, 20)
	const heldAt = 5
	var amu sync.Mutex
	aHeld := map[string]connectors.Settler{}
	ha := &handler{on: func(m connectors.Message) {
		if m.Record.GetSource().GetOffset() == heldAt {
			amu.Lock()
			aHeld[m.Record.GetSource().GetPartition()] = m.Settler
			amu.Unlock()
			return
		}
		_ = m.Settler.Ack(context.Background())
	}}
	cfg := kafka.SourceConfig{Topics: []string{"rv"}, Group: "g-rv", CommitInterval: 20 * time.Millisecond, RevokeGrace: 300 * time.Millisecond}
	a := newSource(t, c, cfg)
	run(t, a, wrap(batch, ha))
	waitFor(t, "A holding one record per partition", func() bool { amu.Lock(); defer amu.Unlock(); return len(aHeld) == 3 })
	for p := range int32(3) {
		waitFor(t, "A's commit at the held record", func() bool { return committed(t, c, "g-rv", "rv", p) == heldAt })
	}

	var bmu sync.Mutex
	bFirst := map[string]uint64{}
	hb := &handler{on: func(m connectors.Message) {
		bmu.Lock()
		if _, ok := bFirst[m.Record.GetSource().GetPartition()]; !ok {
			bFirst[m.Record.GetSource().GetPartition()] = m.Record.GetSource().GetOffset()
		}
		bmu.Unlock()
		_ = m.Settler.Ack(context.Background())
	}}
	b := newSource(t, c, cfg)
	run(t, b, wrap(batch, hb))
	waitFor(t, "A told of a revocation", func() bool { return len(ha.revokedList()) > 0 })
	waitFor(t, "B consuming", func() bool { bmu.Lock(); defer bmu.Unlock(); return len(bFirst) > 0 })
	revoked := ha.revokedList()
	bmu.Lock()
	for p, first := range bFirst {
		if first != heldAt {
			t.Errorf("B started partition %s at offset %d, want %d (the record A abandoned)", p, first, heldAt)
		}
		if !contains(revoked, "rv/"+p) {
			t.Errorf("B got partition %s, but A was told of %q", p, revoked)
		}
	}
	bmu.Unlock()
	// A's late settlement of an abandoned record is ignored.
	for _, name := range revoked {
		p := name[len("rv/"):]
		amu.Lock()
		s := aHeld[p]
		amu.Unlock()
		if err := s.Ack(context.Background()); err != nil {
			t.Errorf("late ack on revoked partition %s: %v, want nil (ignored)", p, err)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestStartPositions: a new group starts at the earliest record, at the
// end, or at the first record at or after a time.
func TestStartPositions(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{})
	c.CreateTopic(t, "sp", 1)
	old := time.Now().Add(-time.Hour)
	cut := time.Now().Add(-30 * time.Minute)
	var recs []*kgo.Record
	for i := range 3 {
		recs = append(recs, &kgo.Record{Topic: "sp", Value: []byte("old" + strconv.Itoa(i)), Timestamp: old})
	}
	for i := range 3 {
		recs = append(recs, &kgo.Record{Topic: "sp", Value: []byte("new" + strconv.Itoa(i)), Timestamp: time.Now()})
	}
	c.Produce(t, recs)
	tests := []struct {
		start string
		first string
	}{
		{"earliest", "old0"},
		{cut.Format(time.RFC3339Nano), "new0"},
		{"latest", "late"},
	}
	for _, tc := range tests {
		t.Run(tc.start, func(t *testing.T) {
			src := newSource(t, c, kafka.SourceConfig{Topics: []string{"sp"}, Group: "g-sp-" + strconv.Itoa(len(tc.first)) + tc.first, Start: tc.start})
			got := make(chan string, 100)
			run(t, src, &handler{on: func(m connectors.Message) {
				got <- string(m.Record.GetValue())
				_ = m.Settler.Ack(context.Background())
			}})
			var tick <-chan time.Time
			if tc.start == "latest" {
				// The source's end position is resolved when it joins, at a
				// moment the test does not see: produce until one arrives.
				tk := time.NewTicker(500 * time.Millisecond)
				defer tk.Stop()
				tick = tk.C
			}
			timeout := time.After(15 * time.Second)
			for {
				select {
				case <-tick:
					c.Produce(t, []*kgo.Record{{Topic: "sp", Value: []byte("late")}})
					continue
				case v := <-got:
					if v != tc.first {
						t.Errorf("first record %q, want %q", v, tc.first)
					}
				case <-timeout:
					t.Fatalf("nothing delivered")
				}
				break
			}
		})
	}
	if _, err := kafka.ParseStart("yesterday"); err == nil {
		t.Errorf("ParseStart(yesterday): no error")
	}
}

// TestTLSAndSASL runs a sink and a source through TLS (a CA made by the
// test) and through each SASL mechanism against kfake, and checks that a
// wrong password gets nothing through.
func TestTLSAndSASL(t *testing.T) {
	caFile, serverCfg := testCA(t)
	tests := []struct {
		name   string
		extra  []kfake.Opt
		client kafka.ClientConfig
	}{
		{"tls", []kfake.Opt{kfake.TLS(serverCfg)}, kafka.ClientConfig{TLS: &kafka.TLSConfig{CAFile: caFile}}},
		{"plain", []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("PLAIN", "alice", "s3cret")},
			kafka.ClientConfig{SASL: &kafka.SASLConfig{Mechanism: "PLAIN", Username: "alice", Password: "s3cret"}}},
		{"scram-sha-256", []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "bob", "pw256")},
			kafka.ClientConfig{SASL: &kafka.SASLConfig{Mechanism: "SCRAM-SHA-256", Username: "bob", Password: "pw256"}}},
		{"scram-sha-512 over tls", []kfake.Opt{kfake.TLS(serverCfg), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "carol", "pw512")},
			kafka.ClientConfig{TLS: &kafka.TLSConfig{CAFile: caFile}, SASL: &kafka.SASLConfig{Mechanism: "SCRAM-SHA-512", Username: "carol", Password: "pw512"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := kafkatest.Start(t, kafkatest.Options{Brokers: 1, Extra: append(tc.extra, kfake.SeedTopics(1, "secure"))})
			cc := tc.client
			cc.Brokers = c.Brokers
			sink, err := kafka.NewSink(kafka.SinkConfig{Client: cc}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			errs := make(chan error, 5)
			for i := range 5 {
				sink.Publish(context.Background(), "secure", &culvertv1.Record{Value: []byte("s" + strconv.Itoa(i))}, func(err error) { errs <- err })
			}
			for range 5 {
				select {
				case err := <-errs:
					if err != nil {
						t.Fatalf("publish: %v", err)
					}
				case <-time.After(15 * time.Second):
					t.Fatal("publish not confirmed")
				}
			}
			src, err := kafka.NewSource(kafka.SourceConfig{Client: cc, Topics: []string{"secure"}, Group: "g", SessionTimeout: 6 * time.Second}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			got := make(chan string, 5)
			run(t, src, &handler{on: func(m connectors.Message) {
				got <- string(m.Record.GetValue())
				_ = m.Settler.Ack(context.Background())
			}})
			for i := range 5 {
				select {
				case v := <-got:
					if v != "s"+strconv.Itoa(i) {
						t.Errorf("got %q, want s%d", v, i)
					}
				case <-time.After(15 * time.Second):
					t.Fatal("record not consumed")
				}
			}
			if cc.SASL != nil {
				bad := cc
				bad.SASL = &kafka.SASLConfig{Mechanism: cc.SASL.Mechanism, Username: cc.SASL.Username, Password: "wrong"}
				bs, err := kafka.NewSink(kafka.SinkConfig{Client: bad, CloseTimeout: time.Second}, testLogger(t))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				res := make(chan error, 1)
				bs.Publish(ctx, "secure", &culvertv1.Record{Value: []byte("x")}, func(err error) { res <- err })
				if err := <-res; err == nil {
					t.Errorf("publish with a wrong password was confirmed")
				}
				_ = bs.Close()
			}
		})
	}
	if _, err := kafka.NewSink(kafka.SinkConfig{Client: kafka.ClientConfig{Brokers: []string{"127.0.0.1:1"}, SASL: &kafka.SASLConfig{Mechanism: "GSSAPI"}}}, nil); err == nil {
		t.Errorf("unknown SASL mechanism accepted")
	}
	if _, err := kafka.NewSink(kafka.SinkConfig{Client: kafka.ClientConfig{Brokers: []string{"127.0.0.1:1"}, TLS: &kafka.TLSConfig{CAFile: "/nonexistent"}}}, nil); err == nil {
		t.Errorf("missing CA file accepted")
	}
}

// testCA writes a fresh CA to a file and returns it with a server TLS
// config whose certificate (for 127.0.0.1) the CA signed.
func testCA(t *testing.T) (string, *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "culvert test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}}
}

// TestHeartbeatsWithinSession: with a short session timeout, every member
// of the group heartbeats well within it (the source sets the heartbeat
// interval to a tenth of the session), so a live member's session never
// ends for want of a heartbeat. The gaps are measured at the broker, from
// the moment both members hold their partitions. With kgo's default 3s
// interval a 1s session was refused by kgo, and a 3s one let a late
// heartbeat end a live member's session (docs/delivery.md, scale-out).
func TestHeartbeatsWithinSession(t *testing.T) {
	const session = time.Second
	c := kafkatest.Start(t, kafkatest.Options{Extra: []kfake.Opt{kfake.GroupMinSessionTimeout(100 * time.Millisecond)}})
	c.CreateTopic(t, "hb", 4)
	kc := c.Kfake()
	var mu sync.Mutex
	last := map[string]time.Time{}
	gaps := map[string]time.Duration{}
	kc.ControlKey(int16(kmsg.Heartbeat), func(req kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		hb := req.(*kmsg.HeartbeatRequest)
		now := time.Now()
		mu.Lock()
		if l, ok := last[hb.MemberID]; ok {
			gaps[hb.MemberID] = max(gaps[hb.MemberID], now.Sub(l))
		}
		last[hb.MemberID] = now
		mu.Unlock()
		return nil, nil, false // the cluster handles it as usual
	})
	hs := []*handler{{on: func(connectors.Message) {}}, {on: func(connectors.Message) {}}}
	for _, h := range hs {
		src := newSource(t, c, kafka.SourceConfig{Topics: []string{"hb"}, Group: "hb", SessionTimeout: session})
		run(t, src, h)
	}
	// Both members in the group, stable, two partitions each (whether the
	// first took all four and gave up two, or both joined together).
	adm := kadm.NewClient(c.Client(t))
	waitFor(t, "both members with their partitions", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		gs, err := adm.DescribeGroups(ctx, "hb")
		g, ok := gs["hb"]
		if err != nil || !ok || g.Err != nil || g.State != "Stable" || len(g.Members) != 2 {
			return false
		}
		for _, m := range g.Members {
			a, ok := m.Assigned.AsConsumer()
			if !ok || len(a.Topics) != 1 || len(a.Topics[0].Partitions) != 2 {
				return false
			}
		}
		return true
	})
	time.Sleep(session)
	mu.Lock()
	clear(last)
	clear(gaps)
	mu.Unlock()
	time.Sleep(3 * session)
	mu.Lock()
	defer mu.Unlock()
	if len(gaps) != 2 {
		t.Fatalf("heartbeats from %d members, want 2 (%v)", len(gaps), gaps)
	}
	for m, g := range gaps {
		if g >= session*3/4 {
			t.Errorf("member %s went %s between heartbeats; the session timeout is %s", m, g, session)
		}
	}
	t.Logf("longest gap between heartbeats per member: %v (session %s)", gaps, session)
	for _, h := range hs {
		if r := h.revokedList(); len(r) > 2 {
			t.Errorf("partitions revoked after the group settled: %v", r)
		}
	}
}
