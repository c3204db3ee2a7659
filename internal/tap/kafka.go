package tap

import (
	"context"
	"fmt"
	"sort"
	"strconv"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/culvert-dev/culvert/connectors/kafka/kafkamsg"
)

// captureKafka reads partitions directly (ConsumePartitions), with no
// consumer group: nothing is joined, nothing is committed, and the groups
// of the topic keep their offsets.
func captureKafka(ctx context.Context, src *Source, o Options, emit Emit) error {
	admCl, err := kgo.NewClient(kgo.SeedBrokers(src.Brokers...))
	if err != nil {
		return fmt.Errorf("kafka %v: %w", src.Brokers, err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	topic := src.Target
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka topic %s: end offsets: %w", topic, err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("kafka topic %s: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka topic %s: start offsets: %w", topic, err)
	}
	var afterTime kadm.ListedOffsets
	if src.From.Kind == PosTime {
		if afterTime, err = adm.ListOffsetsAfterMilli(ctx, src.From.Time.UnixMilli(), topic); err != nil {
			return fmt.Errorf("kafka topic %s: offsets after %s: %w", topic, src.From.Time, err)
		}
	}
	all := map[int32]bool{}
	ends.Each(func(l kadm.ListedOffset) { all[l.Partition] = true })
	if len(all) == 0 {
		return fmt.Errorf("kafka topic %s does not exist or has no partitions", topic)
	}
	var parts []int32
	switch {
	case len(src.Partitions) > 0:
		for _, p := range src.Partitions {
			n, _ := strconv.ParseInt(p, 10, 32)
			if !all[int32(n)] {
				return fmt.Errorf("kafka topic %s has no partition %d", topic, n)
			}
			parts = append(parts, int32(n))
		}
	case src.From.PerPartition != nil:
		for p := range src.From.PerPartition {
			n, _ := strconv.ParseInt(p, 10, 32)
			if !all[int32(n)] {
				return fmt.Errorf("kafka topic %s has no partition %d", topic, n)
			}
			parts = append(parts, int32(n))
		}
	default:
		for p := range all {
			parts = append(parts, p)
		}
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })

	follow := o.Follow || src.From.Kind == PosLatest && src.To.Kind == ""
	if follow && src.To.Kind == PosTime {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, src.To.Time)
		defer cancel()
	}
	offsets := map[int32]kgo.Offset{}
	start := map[int32]int64{} // resolved first offset to read
	end := map[int32]int64{}   // stop before this offset; -1: never
	for _, p := range parts {
		lo, _ := starts.Lookup(topic, p)
		hi, _ := ends.Lookup(topic, p)
		s := lo.Offset
		switch src.From.Kind {
		case PosLatest:
			s = hi.Offset
		case PosSeq:
			if src.From.PerPartition != nil {
				s = src.From.PerPartition[strconv.Itoa(int(p))]
			} else {
				s = int64(src.From.seq())
			}
		case PosTime:
			at, _ := afterTime.Lookup(topic, p)
			s = at.Offset
			if s < 0 {
				s = hi.Offset
			}
		}
		s = max(s, lo.Offset)
		start[p] = s
		offsets[p] = kgo.NewOffset().At(s)
		end[p] = -1
		toPart, named := src.To.PerPartition[strconv.Itoa(int(p))]
		switch {
		case src.To.Kind == PosSeq && named:
			end[p] = toPart + 1
		case src.To.Kind == PosSeq && src.To.PerPartition == nil:
			end[p] = int64(src.To.seq()) + 1
		case !follow || src.To.Kind == PosEnd:
			// Also a partition that a per-partition to= does not name:
			// it ends where stored sources end.
			end[p] = hi.Offset
		}
	}
	done := map[int32]bool{}
	for _, p := range parts {
		if end[p] >= 0 && start[p] >= end[p] {
			done[p] = true
		}
	}
	if len(done) == len(parts) {
		o.Logger.Info("tap: nothing to read", "topic", topic, "partitions", parts)
		return nil
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(src.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
	)
	if err != nil {
		return fmt.Errorf("kafka %v: %w", src.Brokers, err)
	}
	defer cl.Close()
	o.Logger.Info("tap: reading topic", "topic", topic, "partitions", parts, "from", src.From.Kind)
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if ferr == nil {
				ferr = fmt.Errorf("kafka topic %s partition %d: %w", t, p, err)
			}
		})
		if ferr != nil {
			return ferr
		}
		var eerr error
		fs.EachRecord(func(r *kgo.Record) {
			p := r.Partition
			if eerr != nil || done[p] {
				return
			}
			if end[p] >= 0 && r.Offset >= end[p] {
				done[p] = true
				return
			}
			rec, err := kafkamsg.Decode(r)
			if err != nil {
				rec = kafkamsg.DecodeRaw(r)
			}
			if pastTime(src.To, rec) {
				done[p] = true
				return
			}
			if err := emit(rec); err != nil {
				eerr = err
				return
			}
			if end[p] >= 0 && r.Offset+1 >= end[p] {
				done[p] = true
			}
		})
		if eerr != nil {
			return eerr
		}
		if len(done) == len(parts) {
			return nil
		}
	}
}
