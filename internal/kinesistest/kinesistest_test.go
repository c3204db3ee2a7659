package kinesistest

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// TestServerRoundTripAndRestart puts a record, restarts an on-disk server
// and reads the record back from the restarted one.
func TestServerRoundTripAndRestart(t *testing.T) {
	s := StartWith(t, Options{Path: t.TempDir()})
	ep := s.Endpoint()
	CreateStream(t, ep, "rt", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := Client(ep)
	if _, err := c.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("rt"), PartitionKey: aws.String("k"), Data: []byte("hello")}); err != nil {
		t.Fatalf("put: %v", err)
	}
	s.Restart()
	if s.Endpoint() != ep {
		t.Fatalf("endpoint changed across restart: %s -> %s", ep, s.Endpoint())
	}
	it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String("rt"), ShardId: aws.String("shardId-000000000000"), ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatalf("iterator after restart: %v", err)
	}
	out, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(out.Records) != 1 || string(out.Records[0].Data) != "hello" {
		t.Fatalf("got %d records after restart, want the one put before", len(out.Records))
	}
}
