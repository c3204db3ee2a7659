package runner

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/embedded"
	"github.com/culvert-dev/culvert/connectors/kinesis"
	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	"github.com/culvert-dev/culvert/pipelines"
)

// kinesisUsesNATS reports whether a Kinesis input keeps its leases and
// checkpoints in NATS JetStream KV.
func kinesisUsesNATS(c *pipelines.KinesisInput) bool {
	return c != nil && c.Leases.Store == "nats"
}

func newKinesisSource(ctx context.Context, nc *nats.Conn, p *pipelines.Pipeline, name string, c *pipelines.KinesisInput, o Options, log *slog.Logger) (connectors.Source, error) {
	client, err := kinesis.NewClient(ctx, kinesis.ClientConfig{
		Endpoint: c.Endpoint, Region: c.Region, Profile: c.Profile,
		AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken,
	})
	if err != nil {
		return nil, err
	}
	var store leases.Store
	switch c.Leases.Store {
	case "nats":
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("kinesis leases: %w", err)
		}
		store, err = leases.NewKV(ctx, js, c.Leases.Bucket, leases.KeyToken(c.Application)+"."+leases.KeyToken(c.Stream))
		if err != nil {
			return nil, fmt.Errorf("kinesis leases: %w", err)
		}
	default:
		path := c.Leases.Path
		if path == "" {
			// Under --data-dir when given, else beside the default NATS
			// store (~/.local/share/culvert/kinesis).
			dir := filepath.Join(o.DataDir, "kinesis")
			if o.DataDir == "" {
				d, err := embedded.DefaultDataDir()
				if err != nil {
					return nil, err
				}
				dir = filepath.Join(filepath.Dir(d), "kinesis")
			}
			path = filepath.Join(dir, c.Application+"."+c.Stream+".json")
		}
		store, err = leases.NewFile(path)
		if err != nil {
			return nil, err
		}
	}
	cfg := kinesis.SourceConfig{
		Stream: c.Stream, Store: store, WorkerID: "", MaxInFlight: c.MaxInFlight,
		LeaseDuration: c.LeaseDuration.Std(), FetchInterval: c.FetchInterval.Std(), FetchLimit: c.FetchLimit, IdleInterval: c.IdleInterval.Std(),
		ListInterval: c.ListInterval.Std(), CheckpointInterval: c.CheckpointInterval.Std(), NoSteal: c.Balance == "none",
		StartPosition: c.Start,
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = p.Delivery.MaxInFlight
	}
	if t, err := time.Parse(time.RFC3339Nano, c.Start); err == nil {
		cfg.StartPosition, cfg.StartTimestamp = kinesis.AtTimestamp, t
	}
	return kinesis.NewSource(client, cfg, log.With("input", name))
}

func newKinesisSink(ctx context.Context, p *pipelines.Pipeline, name string, c *pipelines.KinesisOutput, o Options, log *slog.Logger) (connectors.Sink, string, error) {
	client, err := kinesis.NewClient(ctx, kinesis.ClientConfig{
		Endpoint: c.Endpoint, Region: c.Region, Profile: c.Profile,
		AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken,
	})
	if err != nil {
		return nil, "", err
	}
	s, err := kinesis.NewSink(client, kinesis.SinkConfig{
		Encoding: c.Encoding, PartitionKey: c.PartitionKey, MaxPending: c.MaxPending, Linger: c.Linger.Std(),
	}, log.With("output", name))
	if err != nil {
		return nil, "", err
	}
	return s, c.Stream, nil
}
