package runner_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkatest"
	"github.com/culvert-dev/culvert/internal/kinesistest"
)

// kinesisConn is the connection part of a kinesis input or output for the
// emulator at ep.
func kinesisConn(ep string) string {
	return fmt.Sprintf("endpoint: %s, region: %s, access_key_id: %s, secret_access_key: %s",
		ep, kinesistest.Region, kinesistest.AccessKey, kinesistest.SecretKey)
}

// orderJSON is the i-th test order.
func orderJSON(i int) string { return fmt.Sprintf(`{"seq":%d,"amount":%d.25}`, i, i) }

type enrichedOrder struct {
	Seq         int  `json:"seq"`
	Enriched    bool `json:"enriched"`
	AmountCents int  `json:"amount_cents"`
}

// checkEnriched checks that every order 0..n-1 came out once, enriched,
// and in order per key (keys must be "k<seq%keys>").
func checkEnriched(t *testing.T, keys []string, values [][]byte, n, nkeys int) {
	t.Helper()
	if len(values) != n {
		t.Fatalf("%d records out, want %d", len(values), n)
	}
	seen := map[int]bool{}
	last := map[string]int{}
	for i, v := range values {
		var o enrichedOrder
		if err := json.Unmarshal(v, &o); err != nil {
			t.Fatalf("output %q: %v", v, err)
		}
		if !o.Enriched || o.AmountCents != o.Seq*100+25 {
			t.Errorf("record %d not enriched: %s", o.Seq, v)
		}
		if seen[o.Seq] {
			t.Errorf("record %d came out twice", o.Seq)
		}
		seen[o.Seq] = true
		if want := fmt.Sprintf("k%d", o.Seq%nkeys); keys[i] != want {
			t.Errorf("record %d has key %q, want %q", o.Seq, keys[i], want)
		}
		if p, ok := last[keys[i]]; ok && o.Seq <= p {
			t.Errorf("key %s: record %d after %d", keys[i], o.Seq, p)
		}
		last[keys[i]] = o.Seq
	}
}

// TestKinesisToKafka: orders put to a two-shard Kinesis stream go through
// a framed function into a three-partition Kafka topic, once each, in
// order per key. The leases live in the embedded NATS server's KV.
func TestKinesisToKafka(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "orders", 2)
	c := kafkatest.Start(t, kafkatest.Options{Brokers: 3})
	c.CreateTopic(t, "enriched", 3)
	const n, nkeys = 300, 7
	kc := kinesistest.Client(ep)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	entries := make([]types.PutRecordsRequestEntry, n)
	for i := range entries {
		entries[i] = types.PutRecordsRequestEntry{Data: []byte(orderJSON(i)), PartitionKey: aws.String(fmt.Sprintf("k%d", i%nkeys))}
	}
	if out, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("orders"), Records: entries}); err != nil || aws.ToInt32(out.FailedRecordCount) > 0 {
		t.Fatalf("put: %v", err)
	}

	h := startAny(t, `
version: 1
name: kin2kafka
inputs:
  orders:
    kinesis: { stream: orders, `+kinesisConn(ep)+`, leases: { store: nats }, fetch_interval: 10ms, idle_interval: 50ms, checkpoint_interval: 50ms }
functions:
  enrich: { command: $BINS/enrich, instances: 2, dispatch: partition }
routes:
  - name: main
    chain: [enrich]
    outputs: [enriched]
outputs:
  enriched: { kafka: { brokers: `+brokersYAML(c)+`, topic: enriched, encoding: value } }
`)
	h.settled(n, 60*time.Second)
	recs := c.Read(t, "enriched", n, 30*time.Second)
	keys := make([]string, len(recs))
	values := make([][]byte, len(recs))
	for i, r := range recs {
		keys[i], values[i] = string(r.Key), r.Value
	}
	checkEnriched(t, keys, values, n, nkeys)

	// The leases and checkpoints are in the embedded server's KV bucket.
	kv, err := h.js.KeyValue(context.Background(), "culvert-kinesis-leases")
	if err != nil {
		t.Fatalf("lease bucket: %v", err)
	}
	// A listing is a consumer over the bucket's stream and may end before
	// a key written a moment ago: look again for a while before failing.
	var keysInKV []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		keysInKV, err = kv.Keys(context.Background())
		if err == nil && len(keysInKV) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || len(keysInKV) != 2 {
		t.Fatalf("lease keys %v (%v), want one per shard", keysInKV, err)
	}
}

// TestNATSToKinesisAWSCLI: orders published to JetStream go through a
// framed function into a two-shard Kinesis stream (value encoding, the
// record key as partition key); Debian's awscli, an independent client,
// reads them back.
func TestNATSToKinesisAWSCLI(t *testing.T) {
	awscli := "/usr/bin/aws" // Debian's v2; another aws may come first on PATH
	if _, err := exec.LookPath(awscli); err != nil {
		t.Fatalf("awscli not installed (.ci/deps.d/21-kinesis.sh installs it): %v", err)
	}
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "enriched", 2)
	const n, nkeys = 200, 5
	h := startAny(t, `
version: 1
name: nats2kin
inputs:
  orders:
    jetstream: { stream: ORDERS, subjects: ["orders.>"] }
functions:
  enrich: { command: $BINS/enrich, instances: 2 }
routes:
  - name: main
    chain: [enrich]
    outputs: [out]
outputs:
  out: { kinesis: { stream: enriched, `+kinesisConn(ep)+`, encoding: value } }
`)
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		msgs[i] = &nats.Msg{Subject: "orders.new", Data: []byte(orderJSON(i)), Header: nats.Header{"Culvert-Key": {fmt.Sprintf("k%d", i%nkeys)}}}
	}
	h.publish(msgs)
	h.settled(n, 60*time.Second)

	aws := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(awscli, append([]string{"--endpoint-url", ep, "--region", kinesistest.Region, "--output", "json", "kinesis"}, args...)...)
		cmd.Env = append(cmd.Environ(), "AWS_ACCESS_KEY_ID="+kinesistest.AccessKey, "AWS_SECRET_ACCESS_KEY="+kinesistest.SecretKey, "AWS_PAGER=")
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("aws kinesis %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	var shards struct{ Shards []struct{ ShardId string } }
	if err := json.Unmarshal(aws("list-shards", "--stream-name", "enriched"), &shards); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var values [][]byte
	for _, sh := range shards.Shards {
		var it struct{ ShardIterator string }
		if err := json.Unmarshal(aws("get-shard-iterator", "--stream-name", "enriched", "--shard-id", sh.ShardId, "--shard-iterator-type", "TRIM_HORIZON"), &it); err != nil {
			t.Fatal(err)
		}
		var got struct {
			Records []struct {
				Data         string
				PartitionKey string
			}
		}
		if err := json.Unmarshal(aws("get-records", "--shard-iterator", it.ShardIterator, "--limit", "10000"), &got); err != nil {
			t.Fatal(err)
		}
		for _, r := range got.Records {
			v, err := base64.StdEncoding.DecodeString(r.Data)
			if err != nil {
				t.Fatalf("awscli data %q: %v", r.Data, err)
			}
			keys, values = append(keys, r.PartitionKey), append(values, v)
		}
	}
	checkEnriched(t, keys, values, n, nkeys)
}
