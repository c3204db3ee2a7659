package pipelines

// KafkaInput consumes a Kafka topic in a consumer group.
type KafkaInput struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers" required:"true" doc:"Seed brokers, host:port."`
	// Topics to consume.
	Topics []string `yaml:"topics" required:"true" doc:"Topics to consume."`
}

// KafkaOutput produces to a Kafka topic.
type KafkaOutput struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers" required:"true" doc:"Seed brokers, host:port."`
	// Topic template, as for NATSOutput's subject.
	Topic string `yaml:"topic" required:"true" check:"subject-template" doc:"Topic, a Go template over the record."`
}

func applyKafkaDefaults(p *Pipeline) {}

func (d *decoder) validateKafka(p *Pipeline) {}
