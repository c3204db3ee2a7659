package runner

import "github.com/culvert-dev/culvert/pipelines"

// injectedSubject is the subject template an injected sink (Options.Sinks)
// publishes with: the output's own subject or topic, so that a test sees
// the subjects production would use. Outputs without one (files, stdout,
// Kinesis) have "".
func injectedSubject(out *pipelines.Output) string {
	switch {
	case out.NATS != nil:
		return out.NATS.Subject
	case out.JetStream != nil:
		return out.JetStream.Subject
	case out.Kafka != nil:
		return out.Kafka.Topic
	}
	return ""
}
