package pipelines

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KafkaInput consumes Kafka topics in a consumer group.
type KafkaInput struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers" required:"true" doc:"Seed brokers, host:port."`
	// Topics to consume.
	Topics []string `yaml:"topics" required:"true" doc:"Topics to consume."`
	// Group is the consumer group; default culvert-<pipeline>-<input>.
	Group string `yaml:"group,omitempty" doc:"Consumer group; default culvert-<pipeline>-<input>."`
	// Start is where a new group begins on a partition: earliest
	// (default), latest, or an RFC 3339 time.
	Start string `yaml:"start,omitempty" doc:"Where a partition without a committed offset begins: earliest (default), latest, or an RFC 3339 time (the first record at or after it)."`
	// MaxInFlight bounds records handed over and not yet committed-ready,
	// over all partitions; default 1024.
	MaxInFlight int `yaml:"max_in_flight,omitempty" min:"1" doc:"Bound on records being processed, over all partitions; default 1024."`
	// MaxInFlightPerPartition bounds them per partition; default
	// max_in_flight.
	MaxInFlightPerPartition int `yaml:"max_in_flight_per_partition,omitempty" min:"1" doc:"Bound on records being processed per partition; default max_in_flight."`
	// CommitInterval between offset commits; default 1s.
	CommitInterval Duration `yaml:"commit_interval,omitempty" doc:"Time between offset commits; default 1s."`
	// RevokeGrace bounds the wait for in-flight records of a revoked
	// partition; default 10s.
	RevokeGrace Duration `yaml:"revoke_grace,omitempty" doc:"How long a rebalance waits for in-flight records of a revoked partition before committing what finished; default 10s."`
	// SessionTimeout of the group member; default 45s.
	SessionTimeout Duration `yaml:"session_timeout,omitempty" doc:"Group session timeout; default 45s."`
	// RebalanceTimeout bounds how long a rebalance waits for the members
	// to rejoin; default revoke_grace + session_timeout when
	// session_timeout is set, else 60s.
	RebalanceTimeout Duration `yaml:"rebalance_timeout,omitempty" doc:"How long a rebalance waits for the members to rejoin and for the assignment before going on without the late ones; default revoke_grace + session_timeout when session_timeout is set, else 60s."`
	// ClientID sent to the brokers; default culvert.
	ClientID string `yaml:"client_id,omitempty" doc:"Client id sent to the brokers; default culvert."`
	// TLS encrypts the connections when set (tls: {} uses the system roots).
	TLS *KafkaTLS `yaml:"tls,omitempty" doc:"TLS for the broker connections; tls: {} uses the system CAs."`
	// SASL authenticates the connections when set.
	SASL *KafkaSASL `yaml:"sasl,omitempty" doc:"SASL authentication."`
	// TransactionalID makes the input exactly-once towards the kafka
	// outputs that name it in their transaction field.
	TransactionalID string `yaml:"transactional_id,omitempty" doc:"Exactly-once: consume in Kafka transactions under this transactional id (unique per running instance); kafka outputs naming this input in transaction join them, and the offsets commit with their records."`
}

// KafkaOutput produces to a Kafka topic.
type KafkaOutput struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers" required:"true" doc:"Seed brokers, host:port."`
	// Topic template, as for NATSOutput's subject.
	// (Checked in validateKafka: Kafka topic rules, not NATS subject rules.)
	Topic string `yaml:"topic" required:"true" doc:"Topic, a Go template over the record, e.g. enriched-{{ .Source.Subject }}."`
	// Encoding: record (default: the protobuf Record as the value) or value
	// (the record's value, its key, headers and event time as Kafka's).
	Encoding string `yaml:"encoding,omitempty" enum:"record,value" doc:"record (default): the protobuf Record as the value; value: the record's value, with key, headers and event time as the Kafka key, headers and timestamp."`
	// MaxPending bounds unconfirmed records; default 10000.
	MaxPending int `yaml:"max_pending,omitempty" min:"1" doc:"Bound on records produced and not yet confirmed; default 10000."`
	// Linger lets a batch wait for more records; default 0.
	Linger Duration `yaml:"linger,omitempty" doc:"How long a partition's batch may wait for more records; default 0."`
	// ClientID sent to the brokers; default culvert.
	ClientID string `yaml:"client_id,omitempty" doc:"Client id sent to the brokers; default culvert."`
	// TLS encrypts the connections when set.
	TLS *KafkaTLS `yaml:"tls,omitempty" doc:"TLS for the broker connections; tls: {} uses the system CAs."`
	// SASL authenticates the connections when set.
	SASL *KafkaSASL `yaml:"sasl,omitempty" doc:"SASL authentication."`
	// Transaction names a kafka input with a transactional_id whose
	// transactions this output's records join (exactly-once).
	Transaction string `yaml:"transaction,omitempty" doc:"Name of a kafka input with transactional_id: this output produces inside that input's transactions (exactly-once; readers use read_committed). Its brokers must be the input's."`
}

// KafkaTLS configures TLS to the brokers. Paths are relative to the
// working directory.
type KafkaTLS struct {
	CAFile     string `yaml:"ca_file,omitempty" doc:"PEM file of the CAs that sign the broker certificates; default the system CAs."`
	CertFile   string `yaml:"cert_file,omitempty" doc:"Client certificate (PEM) for mutual TLS; with key_file."`
	KeyFile    string `yaml:"key_file,omitempty" doc:"Client key (PEM) for mutual TLS; with cert_file."`
	ServerName string `yaml:"server_name,omitempty" doc:"Name checked in the broker certificates, when it differs from the broker host."`
}

// KafkaSASL configures SASL authentication. Use ${VAR} for the password.
type KafkaSASL struct {
	Mechanism string `yaml:"mechanism" required:"true" enum:"PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" doc:"PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."`
	Username  string `yaml:"username" required:"true" doc:"User name."`
	Password  string `yaml:"password" required:"true" doc:"Password; write ${VAR} to take it from the environment."`
}

func applyKafkaDefaults(p *Pipeline) {
	applyDeliveryDefaults(p)
	for name, in := range p.Inputs {
		if k := in.Kafka; k != nil {
			setStr(&k.Group, "culvert-"+p.Name+"-"+name)
			setStr(&k.Start, "earliest")
		}
	}
	for _, out := range p.Outputs {
		if k := out.Kafka; k != nil {
			setStr(&k.Encoding, defaultEncoding)
		}
	}
}

func (d *decoder) validateKafka(p *Pipeline) {
	for _, name := range sortedKeys(p.Inputs) {
		k := p.Inputs[name].Kafka
		if k == nil {
			continue
		}
		path := joinPath("inputs", name) + ".kafka"
		d.kafkaBrokers(path, k.Brokers)
		d.kafkaTLS(path, k.TLS)
		for i, t := range k.Topics {
			if msg := kafkaTopicProblem(t); msg != "" {
				at := indexPath(path+".topics", i)
				d.errorf(d.posOf(at), at, "%s", msg)
			}
		}
		switch k.Start {
		case "", "earliest", "latest":
		default:
			if _, err := time.Parse(time.RFC3339Nano, k.Start); err != nil {
				d.errorf(d.posOf(path+".start"), path+".start", "start %q: want earliest, latest or an RFC 3339 time such as 2026-01-02T15:04:05Z", k.Start)
			}
		}
		if k.MaxInFlight != 0 && k.MaxInFlightPerPartition > k.MaxInFlight {
			d.errorf(d.posOf(path+".max_in_flight_per_partition"), path+".max_in_flight_per_partition", "max_in_flight_per_partition %d exceeds max_in_flight %d", k.MaxInFlightPerPartition, k.MaxInFlight)
		}
	}
	for _, name := range sortedKeys(p.Outputs) {
		k := p.Outputs[name].Kafka
		if k == nil {
			continue
		}
		path := joinPath("outputs", name) + ".kafka"
		d.kafkaBrokers(path, k.Brokers)
		d.kafkaTLS(path, k.TLS)
		if k.Transaction != "" {
			d.kafkaTransaction(p, path, k)
		}
		switch {
		case k.Topic == "":
		case strings.Contains(k.Topic, "{{"):
			if d.chk.Template != nil {
				if err := d.chk.Template(k.Topic); err != nil {
					d.errorf(d.posOf(path+".topic"), path+".topic", "invalid topic template: %s", unecho(oneLine(err), k.Topic))
				}
			}
		default:
			if msg := kafkaTopicProblem(k.Topic); msg != "" {
				d.errorf(d.posOf(path+".topic"), path+".topic", "%s", msg)
			}
		}
	}
	d.validateDelivery(p)
}

func (d *decoder) kafkaTransaction(p *Pipeline, path string, k *KafkaOutput) {
	at := path + ".transaction"
	in, ok := p.Inputs[k.Transaction]
	switch {
	case !ok:
		ref(d, "input", k.Transaction, p.Inputs, at)
	case in.Kafka == nil || in.Kafka.TransactionalID == "" && txnInput(p) != k.Transaction:
		d.errorf(d.posOf(at), at, "input %q is not a kafka input with transactional_id; only such an input's transactions can be joined", k.Transaction)
	case !sameBrokers(in.Kafka.Brokers, k.Brokers):
		d.errorf(d.posOf(at), at, "a transaction spans one cluster: brokers %q differ from those of input %q (%q)", k.Brokers, k.Transaction, in.Kafka.Brokers)
	}
}

func sameBrokers(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func (d *decoder) kafkaBrokers(path string, brokers []string) {
	for i, b := range brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			at := indexPath(path+".brokers", i)
			d.errorf(d.posOf(at), at, "broker %q: want host:port, e.g. 127.0.0.1:9092", b)
		}
	}
}

func (d *decoder) kafkaTLS(path string, t *KafkaTLS) {
	if t != nil && (t.CertFile == "") != (t.KeyFile == "") {
		d.errorf(d.posOf(path+".tls"), path+".tls", "cert_file and key_file go together; set both or neither")
	}
}

// kafkaTopicProblem explains why name is not a legal Kafka topic, or
// returns "".
func kafkaTopicProblem(name string) string {
	if name == "" || name == "." || name == ".." || len(name) > 249 {
		return "invalid topic " + strconv.Quote(name) + ": a topic is 1 to 249 characters, not . or .."
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return "invalid topic " + strconv.Quote(name) + ": a topic is letters, digits, '.', '_' and '-'"
		}
	}
	return ""
}
