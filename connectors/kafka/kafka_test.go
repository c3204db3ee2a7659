package kafka_test

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/kafka"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CULVERT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// harness runs the conformance suite on one kfake cluster: three brokers,
// every Env with its own two 3-partition input topics, output topic and
// group.
type harness struct {
	c   *kafkatest.Cluster
	seq atomic.Int64
}

func (h *harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{Redelivery: true, NakDelay: true, Partitions: true, ConcurrentSubjects: true, InFlight: 16}
}

func (h *harness) New(t *testing.T) connectortest.Env {
	n := h.seq.Add(1)
	e := &env{h: h, tag: fmt.Sprintf("ct%d", n)}
	e.topics = []string{e.tag + "-a", e.tag + "-b"}
	for _, tp := range e.topics {
		h.c.CreateTopic(t, tp, 3)
	}
	return e
}

type env struct {
	h      *harness
	tag    string
	topics []string
}

func (e *env) Subjects() []string { return e.topics }

func (e *env) Produce(t *testing.T, topic string, recs []*culvertv1.Record) {
	krs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		kr := &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value}
		if r.ContentType != "" {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: "Content-Type", Value: []byte(r.ContentType)})
		}
		for _, h := range r.Headers {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: h.Name, Value: h.Value})
		}
		krs[i] = kr
	}
	e.h.c.Produce(t, krs)
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	src, err := kafka.NewSource(kafka.SourceConfig{
		Client:         kafka.ClientConfig{Brokers: e.h.c.Brokers},
		Topics:         e.topics,
		Group:          e.tag + "-group",
		MaxInFlight:    16,
		CommitInterval: 100 * time.Millisecond,
		SessionTimeout: 6 * time.Second,
		FetchMaxWait:   100 * time.Millisecond,
	}, testLogger(t))
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func (e *env) OutputSubject(t *testing.T) string {
	topic := e.tag + "-out"
	e.h.c.CreateTopic(t, topic, 3)
	return topic
}

func (e *env) NewSink(t *testing.T) connectors.Sink {
	s, err := kafka.NewSink(kafka.SinkConfig{Client: kafka.ClientConfig{Brokers: e.h.c.Brokers}}, testLogger(t))
	if err != nil {
		t.Fatalf("NewSink: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Consume reads the topic with a plain client and decodes the record
// encoding by hand (proto.Unmarshal of the value).
func (e *env) Consume(t *testing.T, topic string, n int, timeout time.Duration) []*culvertv1.Record {
	krs := e.h.c.Read(t, topic, n, timeout)
	out := make([]*culvertv1.Record, 0, len(krs))
	for _, kr := range krs {
		if len(kr.Headers) == 0 || kr.Headers[0].Key != "Content-Type" || string(kr.Headers[0].Value) != connectors.RecordContentType {
			t.Fatalf("record at %s/%d@%d lacks the record content type: %v", kr.Topic, kr.Partition, kr.Offset, kr.Headers)
		}
		rec := new(culvertv1.Record)
		if err := proto.Unmarshal(kr.Value, rec); err != nil {
			t.Fatalf("decode %s/%d@%d: %v", kr.Topic, kr.Partition, kr.Offset, err)
		}
		if string(kr.Key) != string(rec.Key) {
			t.Errorf("Kafka key %q, record key %q", kr.Key, rec.Key)
		}
		out = append(out, rec)
	}
	return out
}

func TestConformance(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	connectortest.Run(t, "kafka", &harness{c: c})
}
