package pipelines

import "time"

// Pipeline is one decoded and validated pipeline file.
//
// Every struct here is decoded strictly: unknown fields are errors. The
// `yaml` tag gives the field name in the file; `doc` feeds the JSON Schema.
// The other tags drive both the decoder and the schema:
//
//	required:"true"  the field must be present and not empty
//	enum:"a,b"       a string field takes one of these values
//	min:"1"          an integer field is at least this
//	keys:"..."       map keys are checked as: name ([A-Za-z0-9_-]+), env
//	                 (environment variable names), header (header names)
//	check:"..."      a string (or each string of a list) is checked as: name,
//	                 subject-pattern, subject-template, cel, nats-name, nats-url
//	oneof:"connector" exactly one of the struct's fields so tagged is set
//
// Every Duration given in a file must be positive, and every count at least
// 1: zero always means "not set", and Load replaces it by the default written
// in the field's comment.
type Pipeline struct {
	// Format version of the file. Must be 1.
	Version int `yaml:"version" required:"true" const:"1" doc:"Format version of this file; must be 1."`
	// Name of the pipeline: used for durable consumer names, logs and the
	// InitContext sent to functions.
	Name string `yaml:"name" required:"true" check:"name" doc:"Pipeline name ([A-Za-z0-9_-]+): used in durable consumer names, logs and the InitContext sent to functions."`
	// Broker is the NATS server shared by nats and jetstream connectors.
	// When URL is empty, Culvert starts an embedded server.
	Broker Broker `yaml:"broker,omitempty" doc:"NATS server shared by the nats and jetstream connectors."`
	// Inputs by name. At least one.
	Inputs map[string]*Input `yaml:"inputs" required:"true" keys:"name" doc:"Sources of records, by name. At least one."`
	// Functions by name.
	Functions map[string]*Function `yaml:"functions,omitempty" keys:"name" doc:"Functions that routes chain, by name."`
	// Routes, evaluated for every record; each one that matches gets it.
	Routes []*Route `yaml:"routes" required:"true" doc:"Routes, evaluated for every record; every route that matches gets the record."`
	// Unmatched says what happens to a record that no route matches.
	Unmatched Unmatched `yaml:"unmatched,omitempty" doc:"What happens to a record that no route matches."`
	// Outputs by name.
	Outputs map[string]*Output `yaml:"outputs" required:"true" keys:"name" doc:"Sinks for records, by name. At least one."`
	// Delivery holds pipeline-wide delivery settings.
	Delivery Delivery `yaml:"delivery,omitempty" doc:"Pipeline-wide delivery settings."`
	// Sandbox sets every function's sandbox defaults and the tenant
	// (see sandbox.go); `sandbox: none` runs them all unconfined.
	Sandbox *Sandbox `yaml:"sandbox,omitempty" doc:"Sandbox defaults for every function, and the tenant; none runs every function unconfined."`

	// File is the path the pipeline was loaded from (not decoded).
	File string `yaml:"-"`
}

// Broker configures the NATS connection used by nats/jetstream connectors.
type Broker struct {
	// URL of a NATS server, e.g. nats://127.0.0.1:4222. Empty: embedded.
	// Several URLs may be given separated by commas.
	URL string `yaml:"url,omitempty" check:"nats-url" doc:"NATS URL (nats://, tls://, ws://, wss://; several separated by commas); empty starts an embedded server with JetStream."`
	// Credentials file (.creds) for the connection, optional.
	Credentials string `yaml:"credentials,omitempty" doc:"Credentials file (.creds) for the connection."`
	// Token for token authentication, optional. Not together with Credentials.
	Token string `yaml:"token,omitempty" doc:"Token for token authentication; not together with credentials."`
}

// Input is a source of records. Exactly one connector field is set.
type Input struct {
	NATS      *NATSInput      `yaml:"nats,omitempty" oneof:"connector" doc:"Subscribe to NATS core subjects (at-most-once at the broker)."`
	JetStream *JetStreamInput `yaml:"jetstream,omitempty" oneof:"connector" doc:"Durable JetStream pull consumer with explicit acks."`
	File      *FileInput      `yaml:"file,omitempty" oneof:"connector" doc:"Read records from a file."`
	Stdin     *StdinInput     `yaml:"stdin,omitempty" oneof:"connector" doc:"Read records from standard input. At most one input may use it."`
	Kafka     *KafkaInput     `yaml:"kafka,omitempty" oneof:"connector" doc:"Kafka consumer group (see kafka.go)."`
	Kinesis   *KinesisInput   `yaml:"kinesis,omitempty" oneof:"connector" doc:"Kinesis stream consumer with shard leases (see kinesis.go)."`

	// Name is the input's key in the inputs map.
	Name string `yaml:"-"`
	// Pos is the position of the input's key.
	Pos Pos `yaml:"-"`
}

// NATSInput subscribes to NATS core subjects (at-most-once at the broker).
type NATSInput struct {
	// Subjects to subscribe to; NATS wildcards * and > allowed.
	Subjects []string `yaml:"subjects" required:"true" check:"subject-pattern" doc:"Subjects to subscribe to; NATS wildcards * and > allowed."`
	// QueueGroup shares the subjects among subscribers, optional.
	QueueGroup string `yaml:"queue_group,omitempty" check:"nats-name" doc:"Queue group: subscribers in one group share the messages."`
}

// JetStreamInput is a durable pull consumer with explicit acks.
type JetStreamInput struct {
	// Stream name; created with Subjects if it does not exist.
	Stream string `yaml:"stream" required:"true" check:"nats-name" doc:"Stream name; created with subjects if it does not exist."`
	// Subjects of the stream, used when creating it.
	Subjects []string `yaml:"subjects,omitempty" check:"subject-pattern" doc:"Subjects of the stream, used when Culvert creates it."`
	// Durable consumer name; default "culvert-<pipeline>-<input>".
	Durable string `yaml:"durable,omitempty" check:"nats-name" doc:"Durable consumer name; default culvert-<pipeline>-<input>."`
	// FilterSubjects narrows the consumer, optional.
	FilterSubjects []string `yaml:"filter_subjects,omitempty" check:"subject-pattern" doc:"Subjects the consumer is narrowed to."`
	// DeliverPolicy: all (default), new, last.
	DeliverPolicy string `yaml:"deliver_policy,omitempty" enum:"all,new,last" doc:"Where a new consumer starts: all (default), new, last."`
	// MaxInFlight bounds un-acked messages (the consumer's MaxAckPending);
	// default 1024.
	MaxInFlight int `yaml:"max_in_flight,omitempty" min:"1" doc:"Bound on un-acked messages (the consumer's MaxAckPending); default 1024."`
	// AckWait before the server redelivers; default 30s.
	AckWait Duration `yaml:"ack_wait,omitempty" doc:"Time before the server redelivers an un-acked message; default 30s, or half the group ttl with a group."`
	// FetchBatch is how many messages one pull requests; default 256.
	FetchBatch int `yaml:"fetch_batch,omitempty" min:"1" doc:"Messages requested by one pull; default 256."`
	// Group shares the durable among several processes (see jetstream.go).
	Group *JetStreamGroup `yaml:"group,omitempty" doc:"Share the durable among several processes through a server priority group (nats-server 2.11+), keeping per-key order."`
}

// FileInput reads records from a file.
type FileInput struct {
	// Path of the file, relative to the working directory.
	Path string `yaml:"path" required:"true" doc:"Path of the file to read."`
	// Format: ndjson (default: one JSON record per line, protojson of Record,
	// or any JSON value which becomes the record value) or delimited
	// (varint length-delimited Record messages).
	Format string `yaml:"format,omitempty" enum:"ndjson,delimited" doc:"ndjson (default): one JSON record per line; delimited: varint length-delimited Record messages."`
}

// StdinInput reads records from standard input.
type StdinInput struct {
	// Format: lines (default: each line is a record value), ndjson, delimited.
	Format string `yaml:"format,omitempty" enum:"lines,ndjson,delimited" doc:"lines (default): each line is a record value; ndjson; delimited."`
}

// Output is a sink. Exactly one connector field is set.
type Output struct {
	NATS      *NATSOutput      `yaml:"nats,omitempty" oneof:"connector" doc:"Publish to NATS core."`
	JetStream *JetStreamOutput `yaml:"jetstream,omitempty" oneof:"connector" doc:"Publish to JetStream with publish acks."`
	File      *FileOutput      `yaml:"file,omitempty" oneof:"connector" doc:"Append records to a file."`
	Stdout    *StdoutOutput    `yaml:"stdout,omitempty" oneof:"connector" doc:"Write records to standard output."`
	Kafka     *KafkaOutput     `yaml:"kafka,omitempty" oneof:"connector" doc:"Kafka idempotent producer."`
	Kinesis   *KinesisOutput   `yaml:"kinesis,omitempty" oneof:"connector" doc:"Kinesis PutRecords producer."`

	// Name is the output's key in the outputs map.
	Name string `yaml:"-"`
	// Pos is the position of the output's key.
	Pos Pos `yaml:"-"`
}

// NATSOutput publishes to NATS core.
type NATSOutput struct {
	// Subject template, e.g. "enriched.{{ .Source.Subject }}".
	Subject string `yaml:"subject" required:"true" check:"subject-template" doc:"Subject, a Go template over the record, e.g. enriched.{{ .Source.Subject }}."`
	// Encoding of the message body: record (default: the protobuf Record) or
	// value (the record's value bytes, headers as NATS headers).
	Encoding string `yaml:"encoding,omitempty" enum:"record,value" doc:"record (default): the protobuf Record; value: the record's value, headers as NATS headers."`
}

// JetStreamOutput publishes with publish acks.
type JetStreamOutput struct {
	// Subject template, as for NATSOutput.
	Subject string `yaml:"subject" required:"true" check:"subject-template" doc:"Subject, a Go template over the record."`
	// Stream to create for the subjects if missing, optional.
	Stream string `yaml:"stream,omitempty" check:"nats-name" doc:"Stream to create for subjects if it is missing."`
	// Subjects of Stream; only with Stream.
	Subjects []string `yaml:"subjects,omitempty" check:"subject-pattern" doc:"Subjects of stream, used when Culvert creates it; only with stream."`
	// Encoding: record (default) or value, as for NATSOutput.
	Encoding string `yaml:"encoding,omitempty" enum:"record,value" doc:"record (default): the protobuf Record; value: the record's value, headers as NATS headers."`
}

// FileOutput appends records to a file.
type FileOutput struct {
	// Path of the file, created if missing.
	Path string `yaml:"path" required:"true" doc:"Path of the file to append to."`
	// Format: ndjson (default) or delimited.
	Format string `yaml:"format,omitempty" enum:"ndjson,delimited" doc:"ndjson (default) or delimited."`
}

// StdoutOutput writes records to standard output.
type StdoutOutput struct {
	// Format: ndjson (default), lines (each record's value on a line),
	// delimited.
	Format string `yaml:"format,omitempty" enum:"ndjson,lines,delimited" doc:"ndjson (default), lines (each record's value on a line) or delimited."`
}

// Function is an executable run as one or more instances.
type Function struct {
	// Command to run: a path (relative to the pipeline file) or a name
	// looked up on PATH.
	Command string   `yaml:"command" required:"true" doc:"Command to run: a path relative to the pipeline file, or a name looked up on PATH."`
	Args    []string `yaml:"args,omitempty" doc:"Arguments passed to the command."`
	// Env adds variables to the function's environment.
	Env map[string]string `yaml:"env,omitempty" keys:"env" doc:"Environment variables for the function."`
	// Mode: framed (default), lines, exec.
	Mode string `yaml:"mode,omitempty" enum:"framed,lines,exec" doc:"framed (default): the framed protocol; lines: a line in, a line out; exec: one process per record."`
	// Batch settings (framed mode; lines mode pipelines single lines).
	Batch Batch `yaml:"batch,omitempty" doc:"How records are grouped for one call."`
	// Timeout for one batch (framed, lines) or one process (exec); default 30s.
	Timeout Duration `yaml:"timeout,omitempty" doc:"Timeout for one batch (framed, lines) or one process (exec); default 30s."`
	// Instances is the number of processes (exec: concurrent processes);
	// default 1.
	Instances int `yaml:"instances,omitempty" min:"1" doc:"Number of processes (exec: concurrent processes); default 1."`
	// Dispatch: key (default), partition, any.
	Dispatch string `yaml:"dispatch,omitempty" enum:"key,partition,any" doc:"How records are spread over instances: key (default), partition or any."`
	// Restart policy for crashed instances.
	Restart Restart `yaml:"restart,omitempty" doc:"How crashed instances come back."`
	// Retry policy for failed records.
	Retry Retry `yaml:"retry,omitempty" doc:"How failed records are tried again."`
	// Scale bounds the pool of warm instances (see scale.go).
	Scale Scale `yaml:"scale,omitempty" doc:"Pool of warm instances: min, max, idle timeout."`
	// Sandbox confines each instance (see sandbox.go).
	Sandbox *Sandbox `yaml:"sandbox,omitempty" doc:"How each instance is confined."`

	// Name is the function's key in the functions map.
	Name string `yaml:"-"`
	// Pos is the position of the function's key.
	Pos Pos `yaml:"-"`
	// Dir is the directory of the pipeline file, for relative commands.
	// Absolute when the file name could be made absolute; empty when the
	// pipeline was parsed without a file name.
	Dir string `yaml:"-"`
}

// Batch bounds how records are grouped for one call.
type Batch struct {
	Size    int      `yaml:"size,omitempty" min:"1" doc:"Most records in one call; default 100."` // default 100
	MaxWait Duration `yaml:"max_wait,omitempty" doc:"Longest wait to fill a batch; default 5ms."` // default 5ms
}

// Restart says how crashed instances come back.
type Restart struct {
	// Policy: always (default) or never.
	Policy string `yaml:"policy,omitempty" enum:"always,never" doc:"always (default) or never."`
	// Backoff between restarts, doubling up to MaxBackoff.
	Backoff    Duration `yaml:"backoff,omitempty" doc:"First delay between restarts, doubling up to max_backoff; default 100ms."` // default 100ms
	MaxBackoff Duration `yaml:"max_backoff,omitempty" doc:"Longest delay between restarts; default 10s."`                         // default 10s
}

// Retry says how failed records are tried again.
type Retry struct {
	MaxAttempts int      `yaml:"max_attempts,omitempty" min:"1" doc:"Attempts per record, the first included; default 3 (1: no retry)."` // default 3 (1 = no retry)
	Backoff     Duration `yaml:"backoff,omitempty" doc:"First delay between attempts, doubling up to max_backoff; default 100ms."`       // default 100ms
	MaxBackoff  Duration `yaml:"max_backoff,omitempty" doc:"Longest delay between attempts; default 5s."`                                // default 5s
	// MaxRecordAge gives up on a failing record (dead letter) once this long
	// has passed since it entered the pipeline; unset: no limit.
	MaxRecordAge Duration `yaml:"max_record_age,omitempty" doc:"A failing record older than this (since the pipeline first received it) is given up instead of retried; default: no limit."`
	// BatchFailure says what a batch whose every record failed becomes:
	// each (default: every record is retried alone, counting an attempt) or
	// bisect (the batch is halved and each half resent, without counting an
	// attempt, until the failing record is alone; Lambda's
	// BisectBatchOnFunctionError).
	BatchFailure string `yaml:"batch_failure,omitempty" enum:"each,bisect" doc:"A batch whose every record failed: each (default) retries every record alone; bisect halves it, without counting an attempt, until the failing record is alone."`
	// Lanes splits each instance's records by key hash into this many
	// ordered lanes: a record waiting for a retry holds back the later
	// records of its lane. Unset: one lane per key (only the same key
	// waits); 1: the whole instance (or partition) waits, as Lambda's
	// ParallelizationFactor 1.
	Lanes int `yaml:"lanes,omitempty" min:"1" doc:"Ordered lanes per instance (by key hash): a record waiting for a retry holds back later records of its lane. Default: one lane per key; 1: the whole instance or partition waits."`
}

// Route matches records and sends them through a chain to outputs.
type Route struct {
	// Name of the route, unique in the file.
	Name string `yaml:"name" required:"true" check:"name" doc:"Route name ([A-Za-z0-9_-]+), unique in the file."`
	// Match selects the records; empty matches all.
	Match Match `yaml:"match,omitempty" doc:"Conditions a record must meet; all given must hold. Empty matches every record."`
	// Chain of function names, as a list or as "f1 | f2 | f3". Empty: the
	// records go to the outputs as they are.
	Chain Chain `yaml:"chain,omitempty" doc:"Functions the record goes through, as a list or as \"f1 | f2 | f3\"; empty sends records to the outputs unchanged."`
	// Outputs receiving the chain's results.
	Outputs []string `yaml:"outputs" required:"true" doc:"Outputs receiving the chain's results."`
	// DeadLetter output for records that failed for good.
	DeadLetter string `yaml:"dead_letter,omitempty" doc:"Output for records that failed for good."`
	// Delivery is the route's guarantee: at-least-once (unset) or
	// exactly-once (Kafka to Kafka in transactions; see delivery.go).
	Delivery string `yaml:"delivery,omitempty" enum:"at-least-once,exactly-once" doc:"at-least-once (default), or exactly-once: Kafka to Kafka in Kafka transactions, so read_committed readers of the outputs see each result once. Needs the pipeline's one input to be kafka and the route's outputs and dead_letter to be kafka outputs on its brokers; the input gets transactional_id culvert-<pipeline>-<input> and the outputs join its transactions unless set."`

	// Pos is the position of the route's list item.
	Pos Pos `yaml:"-"`
}

// Match is a conjunction: every condition given must hold. An empty Match
// matches every record.
type Match struct {
	// Subject patterns with NATS wildcards; any one matching is enough.
	Subjects []string `yaml:"subjects,omitempty" check:"subject-pattern" doc:"Subject patterns with NATS wildcards; any one matching is enough."`
	// Headers that must be present with exactly these values.
	Headers map[string]string `yaml:"headers,omitempty" keys:"header" doc:"Headers that must be present with exactly these values."`
	// CEL expression over the record, returning bool.
	CEL string `yaml:"cel,omitempty" check:"cel" doc:"CEL expression over the record, returning bool."`
}

// Chain is a list of function names. In YAML it may be a sequence or a
// string "f1 | f2".
type Chain []string

// Unmatched is the policy for records that no route matches.
type Unmatched struct {
	// Action: drop (default) or output.
	Action string `yaml:"action,omitempty" enum:"drop,output" doc:"drop (default): ack and forget; output: send to output."`
	// Output receiving unmatched records; required with action output, and
	// only allowed with it.
	Output string `yaml:"output,omitempty" doc:"Output receiving unmatched records; required with action: output."`
}

// Delivery holds pipeline-wide delivery settings.
type Delivery struct {
	// MaxInFlight bounds source records being processed at once; default 1024.
	MaxInFlight int `yaml:"max_in_flight,omitempty" min:"1" doc:"Bound on source records being processed at once; default 1024."`
	// ShutdownGrace bounds the drain on SIGTERM; default 30s.
	ShutdownGrace Duration `yaml:"shutdown_grace,omitempty" doc:"Bound on the drain on SIGTERM; default 30s."`
	// MaxInFlightBytes bounds the value and key bytes of the source records
	// being processed at once; default 64 MiB. One record larger than the
	// bound is let in alone.
	MaxInFlightBytes int `yaml:"max_in_flight_bytes,omitempty" min:"1" doc:"Bound on the key and value bytes of source records being processed at once; default 67108864 (64 MiB). A larger record is let in alone."`
	// NackThreshold stops the pipeline when too many records fail for good
	// in a window, instead of dead-lettering a flood.
	NackThreshold *NackThreshold `yaml:"nack_threshold,omitempty" doc:"Stop the pipeline (exit with an error, records given back) when this many records fail for good within the window."`
}

// NackThreshold is N records failed for good within a sliding window.
type NackThreshold struct {
	Failures int      `yaml:"failures" required:"true" min:"1" doc:"Records failed for good (dead-lettered or given back) that stop the pipeline."`
	Window   Duration `yaml:"window,omitempty" doc:"Window the failures are counted in; default 1m."`
}

// Duration is a time.Duration written as "150ms", "2s", "1m".
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Pos is a position in a pipeline file. Line and Column count from 1.
type Pos struct {
	File   string
	Line   int
	Column int
}
