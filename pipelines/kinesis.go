package pipelines

import (
	"net/url"
	"time"
)

// KinesisInput consumes a Kinesis stream with shard leases, so several
// Culvert processes can share it.
type KinesisInput struct {
	// Stream name.
	Stream string `yaml:"stream" required:"true" doc:"Stream name."`
	// Connection settings.
	Endpoint        string `yaml:"endpoint,omitempty" doc:"Service URL, e.g. http://127.0.0.1:4567 for an emulator; default AWS's for the region."`
	Region          string `yaml:"region,omitempty" doc:"AWS region; default from the environment (AWS_REGION) or the profile."`
	AccessKeyID     string `yaml:"access_key_id,omitempty" doc:"Static credentials, with secret_access_key (use ${VAR}); default the AWS SDK's chain (environment, shared files, SSO, instance role)."`
	SecretAccessKey string `yaml:"secret_access_key,omitempty" doc:"Secret of access_key_id; write ${VAR} to take it from the environment."`
	SessionToken    string `yaml:"session_token,omitempty" doc:"Session token for temporary static credentials."`
	Profile         string `yaml:"profile,omitempty" doc:"Shared-config profile for the default credential chain."`
	// Application names the group of workers sharing the stream's leases;
	// default culvert-<pipeline>-<input>.
	Application string `yaml:"application,omitempty" doc:"Name shared by the processes that split the stream's shards between them (their lease namespace); default culvert-<pipeline>-<input>."`
	// Leases says where leases and checkpoints live.
	Leases KinesisLeases `yaml:"leases,omitempty" doc:"Where shard leases and checkpoints are kept."`
	// Start for shards with no checkpoint: trim_horizon (default), latest,
	// or an RFC 3339 time.
	Start string `yaml:"start,omitempty" doc:"Where a shard without a checkpoint begins: trim_horizon (default), latest, or an RFC 3339 time (AT_TIMESTAMP)."`
	// MaxInFlight bounds records handed over and not settled; default
	// delivery.max_in_flight.
	MaxInFlight int `yaml:"max_in_flight,omitempty" min:"1" doc:"Bound on records being processed, over all shards; default delivery.max_in_flight."`
	// LeaseDuration after which a lease that was not renewed may be taken;
	// default 10s.
	LeaseDuration Duration `yaml:"lease_duration,omitempty" doc:"A lease not renewed for this long is taken by another process; default 10s. Renewals and checkpoints every third of it."`
	// FetchInterval is the least time between two GetRecords of a shard;
	// default 200ms.
	FetchInterval Duration `yaml:"fetch_interval,omitempty" doc:"Least time between two GetRecords calls on one shard; default 200ms (the API allows 5 per second per shard)."`
	// FetchLimit is GetRecords' Limit; default 1000.
	FetchLimit int `yaml:"fetch_limit,omitempty" min:"1" doc:"Records asked for by one GetRecords call; default 1000 (the API allows up to 10000)."`
	// IdleInterval after an empty GetRecords; default 1s.
	IdleInterval Duration `yaml:"idle_interval,omitempty" doc:"Wait after a GetRecords that returned nothing; default 1s."`
	// ListInterval between shard listings; default 10s.
	ListInterval Duration `yaml:"list_interval,omitempty" doc:"Time between ListShards calls that find shards made by splits and merges; default 10s."`
	// CheckpointInterval between checkpoint writes; default 1s.
	CheckpointInterval Duration `yaml:"checkpoint_interval,omitempty" doc:"Time between checkpoint writes of a shard; default 1s."`
	// Balance: steal (default) takes one live lease per round from a
	// process holding more than its share; none only takes free and
	// expired leases.
	Balance string `yaml:"balance,omitempty" enum:"steal,none" doc:"steal (default): take one live lease at a time from a process that holds more than its share, as the KCL does; none: take only free and expired leases."`
}

// KinesisLeases configures the lease store of a Kinesis input.
type KinesisLeases struct {
	// Store: file (default) or nats.
	Store string `yaml:"store,omitempty" enum:"file,nats" doc:"file (default): a JSON file for one process; nats: a JetStream key-value bucket on the pipeline's broker, for many processes."`
	// Path of the file store; default
	// <data dir>/kinesis/<application>.<stream>.json.
	Path string `yaml:"path,omitempty" doc:"File store only: the lease file; default kinesis/<application>.<stream>.json under --data-dir (without it, ~/.local/share/culvert/kinesis)."`
	// Bucket of the nats store; default culvert-kinesis-leases.
	Bucket string `yaml:"bucket,omitempty" check:"nats-name" doc:"nats store only: the key-value bucket; default culvert-kinesis-leases."`
}

// KinesisOutput puts records to a Kinesis stream.
type KinesisOutput struct {
	// Stream name, a template over the record as for NATS subjects.
	Stream string `yaml:"stream" required:"true" check:"subject-template" doc:"Stream name, a Go template over the record."`
	// Connection settings, as for KinesisInput.
	Endpoint        string `yaml:"endpoint,omitempty" doc:"Service URL; default AWS's for the region."`
	Region          string `yaml:"region,omitempty" doc:"AWS region; default from the environment or the profile."`
	AccessKeyID     string `yaml:"access_key_id,omitempty" doc:"Static credentials, with secret_access_key; default the AWS SDK's chain."`
	SecretAccessKey string `yaml:"secret_access_key,omitempty" doc:"Secret of access_key_id; write ${VAR} to take it from the environment."`
	SessionToken    string `yaml:"session_token,omitempty" doc:"Session token for temporary static credentials."`
	Profile         string `yaml:"profile,omitempty" doc:"Shared-config profile for the default credential chain."`
	// Encoding: record (default) or value.
	Encoding string `yaml:"encoding,omitempty" enum:"record,value" doc:"record (default): the protobuf Record behind a marker, read back whole by Culvert; value: the record's value only."`
	// PartitionKey template; default the record key, else its id.
	PartitionKey string `yaml:"partition_key,omitempty" check:"subject-template" doc:"Partition key, a Go template over the record; default the record key, else its id."`
	// MaxPending bounds unconfirmed records; default 8192.
	MaxPending int `yaml:"max_pending,omitempty" min:"1" doc:"Bound on records put and not yet confirmed; default 8192."`
	// Linger lets a batch wait for more records; default 2ms.
	Linger Duration `yaml:"linger,omitempty" doc:"How long a PutRecords batch that is not full waits for more records; default 2ms."`
}

func applyKinesisDefaults(p *Pipeline) {
	for name, in := range p.Inputs {
		if k := in.Kinesis; k != nil {
			setStr(&k.Application, "culvert-"+p.Name+"-"+name)
			setStr(&k.Start, "trim_horizon")
			setStr(&k.Leases.Store, "file")
			setStr(&k.Balance, "steal")
		}
	}
	for _, out := range p.Outputs {
		if k := out.Kinesis; k != nil {
			setStr(&k.Encoding, defaultEncoding)
		}
	}
}

func (d *decoder) validateKinesis(p *Pipeline) {
	for _, name := range sortedKeys(p.Inputs) {
		k := p.Inputs[name].Kinesis
		if k == nil {
			continue
		}
		path := joinPath("inputs", name) + ".kinesis"
		d.kinesisStream(path, k.Stream)
		d.kinesisConn(path, k.Endpoint, k.AccessKeyID, k.SecretAccessKey)
		switch k.Start {
		case "", "trim_horizon", "latest":
		default:
			if _, err := time.Parse(time.RFC3339Nano, k.Start); err != nil {
				d.errorf(d.posOf(path+".start"), path+".start", "start %q: want trim_horizon, latest or an RFC 3339 time such as 2026-01-02T15:04:05Z", k.Start)
			}
		}
		if k.Leases.Store == "nats" && k.Leases.Path != "" {
			d.errorf(d.posOf(path+".leases.path"), path+".leases.path", "path is for the file store; the nats store keeps leases in bucket")
		}
		if k.Leases.Store != "nats" && k.Leases.Bucket != "" {
			d.errorf(d.posOf(path+".leases.bucket"), path+".leases.bucket", "bucket is for the nats store (store: nats)")
		}
	}
	for _, name := range sortedKeys(p.Outputs) {
		k := p.Outputs[name].Kinesis
		if k == nil {
			continue
		}
		path := joinPath("outputs", name) + ".kinesis"
		if !containsAction(k.Stream) {
			d.kinesisStream(path, k.Stream)
		}
		d.kinesisConn(path, k.Endpoint, k.AccessKeyID, k.SecretAccessKey)
	}
}

func containsAction(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '{' && s[i+1] == '{' {
			return true
		}
	}
	return false
}

// kinesisStream checks a stream name: 1 to 128 of letters, digits, '_',
// '-' and '.'.
func (d *decoder) kinesisStream(path, s string) {
	ok := len(s) >= 1 && len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
	}
	if !ok && s != "" {
		d.errorf(d.posOf(path+".stream"), path+".stream", "invalid stream name %q: 1 to 128 letters, digits, '_', '-' and '.'", s)
	}
}

func (d *decoder) kinesisConn(path, endpoint, key, secret string) {
	if endpoint != "" {
		if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.errorf(d.posOf(path+".endpoint"), path+".endpoint", "endpoint %q: want an http:// or https:// URL", endpoint)
		}
	}
	if (key == "") != (secret == "") {
		at := path + ".access_key_id"
		if key == "" {
			at = path + ".secret_access_key"
		}
		d.errorf(d.posOf(at), at, "access_key_id and secret_access_key go together; set both or neither")
	}
}
