package tap

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kinesisconn "github.com/culvert-dev/culvert/connectors/kinesis"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// kinesisPoll is the pause between GetRecords rounds that found nothing;
// Kinesis allows five GetRecords calls per second per shard.
const kinesisPoll = 250 * time.Millisecond

// captureKinesis reads shards with GetShardIterator and GetRecords: no
// lease table, no checkpoint, no registered consumer, so the stream's
// applications are unaffected.
func captureKinesis(ctx context.Context, src *Source, o Options, emit Emit) error {
	cl, err := kinesisconn.NewClient(ctx, kinesisconn.ClientConfig{Endpoint: o.KinesisEndpoint, Region: o.KinesisRegion})
	if err != nil {
		return err
	}
	stream := src.Target
	var shards []string
	var next *string
	for {
		in := &kinesis.ListShardsInput{}
		if next != nil {
			in.NextToken = next
		} else {
			in.StreamName = aws.String(stream)
		}
		out, err := cl.ListShards(ctx, in)
		if err != nil {
			return fmt.Errorf("kinesis stream %s: listing shards: %w", stream, err)
		}
		for _, s := range out.Shards {
			shards = append(shards, aws.ToString(s.ShardId))
		}
		if next = out.NextToken; next == nil {
			break
		}
	}
	if len(src.Partitions) > 0 {
		for _, want := range src.Partitions {
			if !slices.Contains(shards, want) {
				return fmt.Errorf("kinesis stream %s has no shard %s (shards: %v)", stream, want, shards)
			}
		}
		shards = src.Partitions
	}
	follow := o.Follow || src.From.Kind == PosLatest && src.To.Kind == ""
	if follow && src.To.Kind == PosTime {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, src.To.Time)
		defer cancel()
	}
	iters := map[string]*string{}
	for _, id := range shards {
		in := &kinesis.GetShardIteratorInput{StreamName: aws.String(stream), ShardId: aws.String(id), ShardIteratorType: types.ShardIteratorTypeTrimHorizon}
		switch src.From.Kind {
		case PosLatest:
			in.ShardIteratorType = types.ShardIteratorTypeLatest
		case PosSeq:
			in.ShardIteratorType = types.ShardIteratorTypeAtSequenceNumber
			in.StartingSequenceNumber = aws.String(src.From.Seq)
		case PosTime:
			in.ShardIteratorType = types.ShardIteratorTypeAtTimestamp
			in.Timestamp = aws.Time(src.From.Time)
		}
		out, err := cl.GetShardIterator(ctx, in)
		if err != nil {
			return fmt.Errorf("kinesis stream %s shard %s: iterator: %w", stream, id, err)
		}
		iters[id] = out.ShardIterator
	}
	o.Logger.Info("tap: reading stream", "stream", stream, "shards", shards, "from", src.From.Kind)
	for len(iters) > 0 {
		got := 0
		for _, id := range shards {
			it, ok := iters[id]
			if !ok {
				continue
			}
			out, err := cl.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: it, Limit: aws.Int32(1000)})
			if err != nil {
				return fmt.Errorf("kinesis stream %s shard %s: %w", stream, id, err)
			}
			got += len(out.Records)
			stop := false
			for _, r := range out.Records {
				seq := aws.ToString(r.SequenceNumber)
				if src.To.Kind == PosSeq && seqLess(src.To.Seq, seq) {
					stop = true
					break
				}
				rec := decodeKinesis(r.Data, aws.ToString(r.PartitionKey), aws.ToTime(r.ApproximateArrivalTimestamp))
				rec.Source = &culvertv1.Position{Connector: KindKinesis, Stream: stream, Subject: stream, Partition: id, Sequence: seq}
				if rec.Id == "" {
					rec.Id = "kinesis:" + stream + ":" + id + ":" + seq
				}
				if src.To.Kind == PosTime && aws.ToTime(r.ApproximateArrivalTimestamp).After(src.To.Time) {
					stop = true
					break
				}
				if err := emit(rec); err != nil {
					return err
				}
				if src.To.Kind == PosSeq && src.To.Seq == seq {
					stop = true
					break
				}
			}
			// Caught up with the shard: that is its end unless following
			// (a to= sequence not reached by then is not in this shard).
			caughtUp := len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0
			if stop || out.NextShardIterator == nil || caughtUp && !follow {
				delete(iters, id)
				continue
			}
			iters[id] = out.NextShardIterator
		}
		if got == 0 && len(iters) > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(kinesisPoll):
			}
		}
	}
	return nil
}

// seqLess compares decimal sequence numbers of any length.
func seqLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// decodeKinesis takes data written by Culvert's Kinesis sink in its record
// encoding (a marker, then a protobuf Record) as that Record, and any other
// data as the value with the partition key as the key.
func decodeKinesis(data []byte, partitionKey string, arrival time.Time) *culvertv1.Record {
	// The marker is what EncodeRecord writes for an empty Record.
	marker, _ := kinesisconn.EncodeRecord(&culvertv1.Record{})
	if len(marker) > 0 && bytes.HasPrefix(data, marker) {
		rec := new(culvertv1.Record)
		if proto.Unmarshal(data[len(marker):], rec) == nil {
			if rec.EventTime == nil && !arrival.IsZero() {
				rec.EventTime = timestamppb.New(arrival)
			}
			return rec
		}
	}
	rec := &culvertv1.Record{Value: data}
	if partitionKey != "" {
		rec.Key = []byte(partitionKey)
	}
	if !arrival.IsZero() {
		rec.EventTime = timestamppb.New(arrival)
	}
	return rec
}
