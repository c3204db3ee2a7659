package runner

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/pipelines"
)

// kinesisUsesNATS reports whether a Kinesis input keeps its leases and
// checkpoints in NATS JetStream KV.
func kinesisUsesNATS(c *pipelines.KinesisInput) bool { return false }

func newKinesisSource(ctx context.Context, nc *nats.Conn, p *pipelines.Pipeline, name string, c *pipelines.KinesisInput, o Options, log *slog.Logger) (connectors.Source, error) {
	return nil, errors.New("kinesis: not wired yet")
}

func newKinesisSink(ctx context.Context, p *pipelines.Pipeline, name string, c *pipelines.KinesisOutput, o Options, log *slog.Logger) (connectors.Sink, string, error) {
	return nil, "", errors.New("kinesis: not wired yet")
}
