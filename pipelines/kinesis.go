package pipelines

// KinesisInput consumes a Kinesis stream.
type KinesisInput struct {
	// Stream name.
	Stream string `yaml:"stream" required:"true" doc:"Stream name."`
}

// KinesisOutput puts records to a Kinesis stream.
type KinesisOutput struct {
	// Stream name.
	Stream string `yaml:"stream" required:"true" doc:"Stream name."`
}

func applyKinesisDefaults(p *Pipeline) {}

func (d *decoder) validateKinesis(p *Pipeline) {}
