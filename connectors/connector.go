// Package connectors defines how records enter and leave Culvert: the Source
// and Sink interfaces every broker connector implements, and the rules of
// settlement (ack, nak) that make delivery at-least-once.
//
// The package owns the contract only. Each broker lives in a subpackage
// (nats, jetstream, file, ...), and connectortest holds the conformance
// suite that every implementation must pass. A connector never looks at
// routes or functions: data flows connector -> router -> chain -> connector.
//
// # Contract
//
// A Source delivers Messages to a Handler, one at a time per partition and in
// partition order. Handle may block: that is back-pressure, and the source
// must stop fetching while it does. Every delivered Message is settled exactly
// once, by Ack (all outputs confirmed) or Nak (give it back for redelivery
// after a delay). A Message that is never settled stays un-acked at the
// broker and is redelivered after the broker's own timeout; it is never lost.
//
// A Sink publishes records asynchronously. Publish calls done exactly once,
// with nil only after the broker has confirmed the record (a JetStream
// publish ack, a flushed file write). The engine acks a source message only
// after every done of every output derived from it reported nil.
package connectors

import (
	"context"
	"errors"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Message is one record delivered by a Source, with its settlement.
type Message struct {
	// Record as read, with Record.Source filled in.
	Record *culvertv1.Record
	// Settler acks or naks the message at the source. Never nil.
	Settler Settler
	// Delivery counts deliveries of this message by the broker, from 1, when
	// the broker tracks it (JetStream); 0 when unknown.
	Delivery int
}

// Settler settles one Message. Exactly one of Ack or Nak is called, once.
type Settler interface {
	// Ack tells the source the message is fully processed.
	Ack(ctx context.Context) error
	// Nak gives the message back for redelivery after delay. Sources that
	// cannot redeliver one message (NATS core) log and drop the settlement;
	// those that commit offsets (Kafka) never commit past it.
	Nak(ctx context.Context, delay time.Duration) error
}

// Handler receives messages from a Source.
type Handler interface {
	// Handle takes ownership of m. It may block for back-pressure; it returns
	// an error only when ctx is done.
	Handle(ctx context.Context, m Message) error
	// Revoked tells the handler that the source lost these partitions
	// (rebalance, lease lost): in-flight work for them may be abandoned, and
	// their settlements will be ignored by the source.
	Revoked(partitions []string)
}

// Source is a stream of records.
type Source interface {
	// Run delivers messages to h until ctx is cancelled or the source fails.
	// It returns nil after a cancellation: fetching stops at once, and
	// messages already handed over may still be settled until Close.
	Run(ctx context.Context, h Handler) error
	// Close releases the source. Settlements after Close are errors.
	Close() error
}

// Sink publishes records.
type Sink interface {
	// Publish sends rec to subject (a topic, a subject, or "" for sinks
	// without one). It may block for back-pressure. done is called exactly
	// once, from any goroutine, with nil once the broker confirmed rec.
	Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error))
	// Flush waits until every done of the records published so far has been
	// called, or ctx is done.
	Flush(ctx context.Context) error
	// Close flushes and releases the sink.
	Close() error
}

// ErrClosed is returned by operations on a closed connector.
var ErrClosed = errors.New("connector closed")

// ErrSettled is returned by a Settler that was already settled (or that the
// source settled itself because Handle returned an error).
var ErrSettled = errors.New("message already settled")

// RecordContentType is the content type of a message whose body is a whole
// Record serialized as protobuf (the "record" encoding of sinks). A source
// that sees it decodes the body as a Record instead of taking it as a value.
// Every broker uses the same value (NATS Content-Type header, Kafka header).
const RecordContentType = "application/vnd.culvert.record.v1+proto"
