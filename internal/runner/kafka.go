package runner

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka"
	"github.com/culvert-dev/culvert/pipelines"
)

// kafkaClient maps the pipeline's connection settings.
func kafkaClient(brokers []string, clientID string, t *pipelines.KafkaTLS, s *pipelines.KafkaSASL) kafka.ClientConfig {
	c := kafka.ClientConfig{Brokers: brokers, ClientID: clientID}
	if t != nil {
		c.TLS = &kafka.TLSConfig{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName}
	}
	if s != nil {
		c.SASL = &kafka.SASLConfig{Mechanism: s.Mechanism, Username: s.Username, Password: s.Password}
	}
	return c
}

func newKafkaSource(_ context.Context, p *pipelines.Pipeline, name string, c *pipelines.KafkaInput, _ Options, log *slog.Logger) (connectors.Source, error) {
	if c.TransactionalID != "" {
		src, _, err := kafka.NewTxn(kafka.TxnConfig{
			Client:           kafkaClient(c.Brokers, c.ClientID, c.TLS, c.SASL),
			Topics:           c.Topics,
			Group:            c.Group,
			TransactionalID:  c.TransactionalID,
			Start:            c.Start,
			SessionTimeout:   c.SessionTimeout.Std(),
			RebalanceTimeout: c.RebalanceTimeout.Std(),
		}, log.With("input", name))
		return src, err
	}
	inFlight := c.MaxInFlight
	if inFlight == 0 {
		inFlight = p.Delivery.MaxInFlight
	}
	return kafka.NewSource(kafka.SourceConfig{
		Client:                  kafkaClient(c.Brokers, c.ClientID, c.TLS, c.SASL),
		Topics:                  c.Topics,
		Group:                   c.Group,
		Start:                   c.Start,
		MaxInFlight:             inFlight,
		MaxInFlightPerPartition: c.MaxInFlightPerPartition,
		CommitInterval:          c.CommitInterval.Std(),
		RevokeGrace:             c.RevokeGrace.Std(),
		SessionTimeout:          c.SessionTimeout.Std(),
		RebalanceTimeout:        c.RebalanceTimeout.Std(),
	}, log.With("input", name))
}

func newKafkaSink(_ context.Context, _ *pipelines.Pipeline, name string, c *pipelines.KafkaOutput, o Options, log *slog.Logger) (connectors.Sink, string, error) {
	if c.Transaction != "" {
		src, ok := o.built[c.Transaction].(*kafka.TxnSource)
		if !ok {
			return nil, "", fmt.Errorf("transaction: input %q is not a transactional kafka input", c.Transaction)
		}
		s, err := src.Sink(c.Encoding)
		return s, c.Topic, err
	}
	s, err := kafka.NewSink(kafka.SinkConfig{
		Client:     kafkaClient(c.Brokers, c.ClientID, c.TLS, c.SASL),
		Encoding:   c.Encoding,
		MaxPending: c.MaxPending,
		Linger:     c.Linger.Std(),
	}, log.With("output", name))
	if err != nil {
		return nil, "", err
	}
	return s, c.Topic, nil
}
