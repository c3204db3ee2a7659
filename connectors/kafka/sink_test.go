package kafka_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors/kafka"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// TestSinkConfirmsOnlyAfterBroker: records published while the whole
// cluster is down get no done until it is back; then every done is nil and
// every record is in the topic, once, in per-key order.
func TestSinkConfirmsOnlyAfterBroker(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Persist: true})
	c.CreateTopic(t, "down", 3)
	s, err := kafka.NewSink(kafka.SinkConfig{Client: kafka.ClientConfig{Brokers: c.Brokers}, Encoding: "value"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Warm up: metadata known, producer id assigned.
	warm := make(chan error, 1)
	s.Publish(context.Background(), "down", &culvertv1.Record{Key: []byte("w"), Value: []byte("warm")}, func(err error) { warm <- err })
	if err := <-warm; err != nil {
		t.Fatal(err)
	}
	c.Stop()
	const n = 50
	dones := make(chan error, n)
	for i := range n {
		s.Publish(context.Background(), "down", &culvertv1.Record{Key: []byte("k" + strconv.Itoa(i%5)), Value: []byte(strconv.Itoa(i))}, func(err error) { dones <- err })
	}
	select {
	case err := <-dones:
		t.Fatalf("done(%v) while every broker is down", err)
	case <-time.After(time.Second):
	}
	c.Restart(t, 0)
	for range n {
		select {
		case err := <-dones:
			if err != nil {
				t.Fatalf("done: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("records not confirmed after the cluster came back")
		}
	}
	got := c.Read(t, "down", n+1, 10*time.Second)
	seen := map[string]int{}
	last := map[string]int{}
	for _, r := range got {
		seen[string(r.Value)]++
		if string(r.Value) == "warm" {
			continue
		}
		v, _ := strconv.Atoi(string(r.Value))
		if p, ok := last[string(r.Key)]; ok && v < p {
			t.Errorf("key %s: %d after %d", r.Key, v, p)
		}
		last[string(r.Key)] = v
	}
	for i := range n {
		if seen[strconv.Itoa(i)] != 1 {
			t.Errorf("record %d is in the topic %d times, want once", i, seen[strconv.Itoa(i)])
		}
	}
}
