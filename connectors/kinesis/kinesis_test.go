package kinesis

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/connectortest"
	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// testSourceConfig is a source configuration with short intervals, so
// tests see lease moves and checkpoints in well under a second.
func testSourceConfig(stream string, store leases.Store) SourceConfig {
	return SourceConfig{
		Stream: stream, Store: store, MaxInFlight: 16,
		FetchInterval: 5 * time.Millisecond, IdleInterval: 30 * time.Millisecond,
		ListInterval: 300 * time.Millisecond, LeaseDuration: 1500 * time.Millisecond,
		CheckpointInterval: 30 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}
}

type harness struct {
	endpoint string
	prefix   string
	n        atomic.Int64
	// store makes the lease store of one Env.
	store func(t *testing.T, stream string) leases.Store
}

func (h *harness) Capabilities() connectortest.Capabilities {
	return connectortest.Capabilities{Redelivery: true, NakDelay: true, Partitions: true, InFlight: 16}
}

func (h *harness) New(t *testing.T) connectortest.Env {
	stream := fmt.Sprintf("%s-%d", h.prefix, h.n.Add(1))
	kinesistest.CreateStream(t, h.endpoint, stream, 2)
	return &env{h: h, stream: stream, store: h.store(t, stream), client: kinesistest.Client(h.endpoint)}
}

type env struct {
	h      *harness
	stream string
	out    string
	store  leases.Store
	client *kinesis.Client
}

func (e *env) Subjects() []string { return []string{e.stream} }

func (e *env) Produce(t *testing.T, subject string, recs []*culvertv1.Record) {
	t.Helper()
	put(t, e.client, subject, recs)
}

// put writes recs in order with the record encoding and the key as the
// partition key, through the plain SDK.
func put(t testing.TB, c *kinesis.Client, stream string, recs []*culvertv1.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(recs) > 0 {
		n := min(len(recs), 500)
		entries := make([]types.PutRecordsRequestEntry, n)
		for i, r := range recs[:n] {
			data, err := EncodeRecord(r)
			if err != nil {
				t.Fatal(err)
			}
			pk := string(r.GetKey())
			if pk == "" {
				pk = fmt.Sprint(i)
			}
			entries[i] = types.PutRecordsRequestEntry{Data: data, PartitionKey: aws.String(pk)}
		}
		out, err := c.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
		if err != nil {
			t.Fatalf("put records: %v", err)
		}
		if aws.ToInt32(out.FailedRecordCount) != 0 {
			t.Fatalf("put records: %d failed", aws.ToInt32(out.FailedRecordCount))
		}
		recs = recs[n:]
	}
}

func (e *env) NewSource(t *testing.T) connectors.Source {
	src, err := NewSource(e.client, testSourceConfig(e.stream, e.store), natstest.Logger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func (e *env) OutputSubject(t *testing.T) string {
	if e.out == "" {
		e.out = e.stream + "-out"
		kinesistest.CreateStream(t, e.h.endpoint, e.out, 2)
	}
	return e.out
}

func (e *env) NewSink(t *testing.T) connectors.Sink {
	s, err := NewSink(e.client, SinkConfig{Stream: e.out}, natstest.Logger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func (e *env) Consume(t *testing.T, subject string, n int, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	return readAll(t, e.client, subject, n, timeout)
}

// readAll reads every shard of stream from its start with the plain SDK
// until n records arrived; records come shard after shard, each in order.
func readAll(t testing.TB, c *kinesis.Client, stream string, n int, timeout time.Duration) []*culvertv1.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	shards, err := c.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatalf("list shards: %v", err)
	}
	ids := []string{}
	for _, s := range shards.Shards {
		ids = append(ids, aws.ToString(s.ShardId))
	}
	sort.Strings(ids)
	iters := map[string]*string{}
	got := map[string][]*culvertv1.Record{}
	total := 0
	for total < n {
		for _, id := range ids {
			if iters[id] == nil {
				it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(id), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
				if err != nil {
					t.Fatalf("consume %s: %v (%d of %d records)", stream, err, total, n)
				}
				iters[id] = it.ShardIterator
			}
			out, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iters[id]})
			if err != nil {
				t.Fatalf("consume %s: %v (%d of %d records)", stream, err, total, n)
			}
			iters[id] = out.NextShardIterator
			for _, r := range out.Records {
				rec, err := decodeRecord(r.Data, aws.ToString(r.PartitionKey), time.Time{})
				if err != nil {
					t.Errorf("record %s: %v", aws.ToString(r.SequenceNumber), err)
				}
				got[id] = append(got[id], rec)
				total++
			}
		}
		if total < n {
			select {
			case <-ctx.Done():
				t.Fatalf("consume %s: %d of %d records within %s", stream, total, n, timeout)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	var out []*culvertv1.Record
	for _, id := range ids {
		out = append(out, got[id]...)
	}
	return out
}

func TestConformance(t *testing.T) {
	ep := kinesistest.Start(t)
	connectortest.Run(t, "kinesis-file", &harness{endpoint: ep, prefix: "file", store: func(t *testing.T, stream string) leases.Store {
		s, err := leases.NewFile(filepath.Join(t.TempDir(), stream+".json"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}})
	ns := natstest.Server(t)
	connectortest.Run(t, "kinesis-kv", &harness{endpoint: ep, prefix: "kv", store: func(t *testing.T, stream string) leases.Store {
		js, err := jetstream.New(natstest.Connect(t, ns))
		if err != nil {
			t.Fatal(err)
		}
		s, err := leases.NewKV(context.Background(), js, "", "ct."+stream)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}})
}
