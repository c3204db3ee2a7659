package kafka_test

import (
	"context"
	"strconv"
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

// BenchmarkSource measures the source alone: b.N records preloaded into a
// 3-partition topic, consumed by a fresh group, every record acked at once.
// BenchmarkRawConsume is the plain franz-go group consumer on the same
// records, for the ratio.
func BenchmarkSource(b *testing.B) {
	c, topic := preloaded(b)
	b.ResetTimer()
	src, err := kafka.NewSource(kafka.SourceConfig{Client: kafka.ClientConfig{Brokers: c.Brokers}, Topics: []string{topic}, Group: "bench-src"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_ = src.Run(ctx, &handler{on: func(m connectors.Message) {
			_ = m.Settler.Ack(ctx)
			if n.Add(1) == int64(b.N) {
				close(done)
			}
		}})
	}()
	<-done
	b.StopTimer()
	cancel()
	_ = src.Close()
}

func BenchmarkRawConsume(b *testing.B) {
	c, topic := preloaded(b)
	b.ResetTimer()
	cl := c.Client(b, kgo.ConsumerGroup("bench-raw"), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit(), kgo.Balancers(kgo.CooperativeStickyBalancer()), kgo.BlockRebalanceOnPoll())
	for seen := 0; seen < b.N; {
		cl.PollFetches(context.Background()).EachRecord(func(*kgo.Record) { seen++ })
		cl.AllowRebalance()
	}
}

// BenchmarkSink measures publishing b.N records and waiting for every done.
func BenchmarkSink(b *testing.B) {
	c := kafkatest.Start(b, kafkatest.Options{})
	c.CreateTopic(b, "sink", 3)
	s, err := kafka.NewSink(kafka.SinkConfig{Client: kafka.ClientConfig{Brokers: c.Brokers}, Encoding: "value"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := []byte(strings.Repeat("x", 100))
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := range b.N {
		wg.Add(1)
		s.Publish(context.Background(), "sink", &culvertv1.Record{Key: []byte("k" + strconv.Itoa(i%1000)), Value: val}, func(error) { wg.Done() })
	}
	wg.Wait()
}

func preloaded(b *testing.B) (*kafkatest.Cluster, string) {
	c := kafkatest.Start(b, kafkatest.Options{})
	topic := "bench"
	c.CreateTopic(b, topic, 3)
	val := []byte(strings.Repeat("x", 100))
	cl := c.Client(b, kgo.ProducerLinger(5*time.Millisecond))
	var wg sync.WaitGroup
	for i := range b.N {
		wg.Add(1)
		cl.Produce(context.Background(), &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(i%1000)), Value: val}, func(*kgo.Record, error) { wg.Done() })
	}
	wg.Wait()
	return c, topic
}
