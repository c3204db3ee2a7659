package pipelines

import "time"

// Defaults, applied by Load and Parse to every field left unset. types.go
// documents each one on its field.
const (
	defaultMode              = "framed"
	defaultBatchSize         = 100
	defaultBatchMaxWait      = 5 * time.Millisecond
	defaultTimeout           = 30 * time.Second
	defaultInstances         = 1
	defaultDispatch          = "key"
	defaultRestartPolicy     = "always"
	defaultRestartBackoff    = 100 * time.Millisecond
	defaultRestartMaxBackoff = 10 * time.Second
	defaultRetryMaxAttempts  = 3
	defaultRetryBackoff      = 100 * time.Millisecond
	defaultRetryMaxBackoff   = 5 * time.Second

	defaultDeliverPolicy   = "all"
	defaultJSMaxInFlight   = 1024
	defaultAckWait         = 30 * time.Second
	defaultFetchBatch      = 256
	defaultEncoding        = "record"
	defaultFileFormat      = "ndjson"
	defaultStdinFormat     = "lines"
	defaultStdoutFormat    = "ndjson"
	defaultUnmatchedAction = "drop"

	defaultMaxInFlight   = 1024
	defaultShutdownGrace = 30 * time.Second

	defaultMaxInFlightBytes = 64 << 20
	defaultNackWindow       = time.Minute
	defaultBatchFailure     = "each"
)

// applyDefaults fills every unset field of a valid pipeline.
func applyDefaults(p *Pipeline) {
	for name, in := range p.Inputs {
		switch {
		case in.JetStream != nil:
			js := in.JetStream
			setStr(&js.Durable, "culvert-"+p.Name+"-"+name)
			setStr(&js.DeliverPolicy, defaultDeliverPolicy)
			setInt(&js.MaxInFlight, defaultJSMaxInFlight)
			applyJetStreamGroupDefaults(js)
			setDur(&js.AckWait, defaultAckWait)
			setInt(&js.FetchBatch, defaultFetchBatch)
		case in.File != nil:
			setStr(&in.File.Format, defaultFileFormat)
		case in.Stdin != nil:
			setStr(&in.Stdin.Format, defaultStdinFormat)
		}
	}
	for _, f := range p.Functions {
		setStr(&f.Mode, defaultMode)
		setInt(&f.Batch.Size, defaultBatchSize)
		setDur(&f.Batch.MaxWait, defaultBatchMaxWait)
		setDur(&f.Timeout, defaultTimeout)
		setInt(&f.Instances, defaultInstances)
		setStr(&f.Dispatch, defaultDispatch)
		setStr(&f.Restart.Policy, defaultRestartPolicy)
		setDur(&f.Restart.Backoff, defaultRestartBackoff)
		setDur(&f.Restart.MaxBackoff, defaultRestartMaxBackoff)
		setInt(&f.Retry.MaxAttempts, defaultRetryMaxAttempts)
		setDur(&f.Retry.Backoff, defaultRetryBackoff)
		setDur(&f.Retry.MaxBackoff, defaultRetryMaxBackoff)
		setStr(&f.Retry.BatchFailure, defaultBatchFailure)
	}
	for _, out := range p.Outputs {
		switch {
		case out.NATS != nil:
			setStr(&out.NATS.Encoding, defaultEncoding)
		case out.JetStream != nil:
			setStr(&out.JetStream.Encoding, defaultEncoding)
		case out.File != nil:
			setStr(&out.File.Format, defaultFileFormat)
		case out.Stdout != nil:
			setStr(&out.Stdout.Format, defaultStdoutFormat)
		}
	}
	applyKafkaDefaults(p)
	applyKinesisDefaults(p)
	applySandboxDefaults(p)
	applyScaleDefaults(p)
	setStr(&p.Unmatched.Action, defaultUnmatchedAction)
	setInt(&p.Delivery.MaxInFlight, defaultMaxInFlight)
	setDur(&p.Delivery.ShutdownGrace, defaultShutdownGrace)
	setInt(&p.Delivery.MaxInFlightBytes, defaultMaxInFlightBytes)
	if t := p.Delivery.NackThreshold; t != nil {
		setDur(&t.Window, defaultNackWindow)
	}
}

func setStr(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

func setInt(i *int, def int) {
	if *i == 0 {
		*i = def
	}
}

func setDur(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}
