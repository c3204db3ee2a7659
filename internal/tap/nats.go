package tap

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func connectNATS(o Options) (*nats.Conn, error) {
	url := o.NATSURL
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, nats.Name("culvert tap"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	return nc, nil
}

func decodeNATS(h nats.Header, data []byte) *culvertv1.Record {
	rec, err := natsmsg.Decode(h, data)
	if err != nil {
		rec = natsmsg.DecodeRaw(h, data)
	}
	// The message's buffers belong to the client: keep our own copy.
	rec.Value = append([]byte(nil), rec.Value...)
	return rec
}

// captureNATS subscribes to a subject: core NATS keeps nothing, so the
// capture starts now and runs until Count or ctx.
func captureNATS(ctx context.Context, src *Source, o Options, emit Emit) error {
	nc, err := connectNATS(o)
	if err != nil {
		return err
	}
	defer nc.Close()
	msgs := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(src.Target, msgs)
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", src.Target, err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("subscribing to %s: %w", src.Target, err)
	}
	o.Logger.Info("tap: subscribed", "subject", src.Target)
	var n uint64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-msgs:
			n++
			rec := decodeNATS(m.Header, m.Data)
			rec.Source = &culvertv1.Position{Connector: KindNATS, Subject: m.Subject}
			if rec.Id == "" {
				rec.Id = "nats:tap:" + strconv.FormatUint(n, 10)
			}
			if err := emit(rec); err != nil {
				return err
			}
		}
	}
}

// captureJetStream reads a stream through an ordered consumer: ephemeral,
// in memory on the server, deleted when the tap ends. Durable consumers
// and their acknowledgements are never touched.
func captureJetStream(ctx context.Context, src *Source, o Options, emit Emit) error {
	nc, err := connectNATS(o)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, src.Target)
	if err != nil {
		return fmt.Errorf("stream %s: %w", src.Target, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", src.Target, err)
	}
	// A tap that dies leaves its ephemeral consumer behind only this long.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: 10 * time.Second}
	if src.Filter != "" {
		cfg.FilterSubjects = []string{src.Filter}
	}
	switch src.From.Kind {
	case PosLatest:
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	case PosSeq:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = src.From.seq()
	case PosTime:
		t := src.From.Time
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &t
	}
	// The end: the stream's last sequence now, unless following or told.
	var endSeq uint64
	follow := o.Follow || src.From.Kind == PosLatest && src.To.Kind == ""
	switch {
	case src.To.Kind == PosSeq:
		endSeq = src.To.seq()
	case !follow || src.To.Kind == PosEnd:
		endSeq = info.State.LastSeq
		if endSeq == 0 || cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && cfg.OptStartSeq > endSeq {
			o.Logger.Info("tap: nothing to read", "stream", src.Target, "last_seq", endSeq)
			return nil
		}
	}
	if follow && src.To.Kind == PosTime {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, src.To.Time)
		defer cancel()
	}
	cons, err := js.OrderedConsumer(ctx, src.Target, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", src.Target, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("reading %s: %w", src.Target, err)
	}
	defer func() {
		it.Stop()
		// Remove the ephemeral consumer now rather than at its inactivity
		// threshold.
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = stream.DeleteConsumer(dctx, ci.Name)
		}
	}()
	o.Logger.Info("tap: reading stream", "stream", src.Target, "from", src.From.Kind, "end_seq", endSeq)
	for {
		nctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// Idle: with an end, stop once nothing matching is pending
			// (the stream's tail may be filtered out or deleted).
			if endSeq > 0 {
				if ci, ierr := cons.Info(ctx); ierr == nil && ci.NumPending == 0 {
					return nil
				}
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading %s: %w", src.Target, err)
		}
		if done, err := jsEmit(src, m, endSeq, emit); done || err != nil {
			return err
		}
	}
}

// jsEmit emits one stream message; done reports the end position reached.
func jsEmit(src *Source, m jetstream.Msg, endSeq uint64, emit Emit) (bool, error) {
	md, err := m.Metadata()
	if err != nil {
		return false, err
	}
	rec := decodeNATS(m.Headers(), m.Data())
	rec.Source = &culvertv1.Position{Connector: KindJetStream, Stream: src.Target, Subject: m.Subject(), Offset: md.Sequence.Stream}
	if rec.Id == "" {
		rec.Id = "js:" + src.Target + ":" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	if src.To.Kind == PosTime && md.Timestamp.After(src.To.Time) {
		return true, nil
	}
	if endSeq > 0 && md.Sequence.Stream > endSeq {
		return true, nil
	}
	if err := emit(rec); err != nil {
		return true, err
	}
	return endSeq > 0 && md.Sequence.Stream >= endSeq, nil
}
