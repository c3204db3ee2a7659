package runner

import (
	"context"
	"errors"
	"log/slog"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/pipelines"
)

func newKafkaSource(ctx context.Context, p *pipelines.Pipeline, name string, c *pipelines.KafkaInput, o Options, log *slog.Logger) (connectors.Source, error) {
	return nil, errors.New("kafka: not wired yet")
}

func newKafkaSink(ctx context.Context, p *pipelines.Pipeline, name string, c *pipelines.KafkaOutput, o Options, log *slog.Logger) (connectors.Sink, string, error) {
	return nil, "", errors.New("kafka: not wired yet")
}
