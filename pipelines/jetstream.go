package pipelines

import "time"

// JetStreamGroup shares a durable consumer among several processes through
// the server's priority groups (nats-server 2.11 or later).
type JetStreamGroup struct {
	// Policy: pinned, the server's pinned-client policy: one process at a
	// time gets the consumer's messages; another takes over once the
	// holder has not pulled for TTL.
	Policy string `yaml:"policy" required:"true" enum:"pinned" doc:"pinned: the server hands the consumer's messages to one process at a time (the pinned client), and pins another once the holder has not pulled for ttl; keeps per-key order across processes."`
	// Name of the priority group; default culvert.
	Name string `yaml:"name,omitempty" check:"nats-name" doc:"Priority group name, shared by every process reading the durable; default culvert."`
	// TTL after the holder's last pull at which the server pins another
	// process; default 10s.
	TTL Duration `yaml:"ttl,omitempty" doc:"The pin moves to another process once the holder has not pulled for this long (the consumer's PinnedTTL); default 10s, at least 3s. ack_wait must be at most two thirds of it, and defaults to half of it."`
}

const (
	defaultGroupName = "culvert"
	defaultPinnedTTL = 10 * time.Second
	minPinnedTTL     = 3 * time.Second
)

// applyJetStreamGroupDefaults fills a group's name and ttl and, when the
// input has a group and no ack_wait, makes ack_wait half the ttl: the dead
// holder's un-acked messages are then due for redelivery before another
// process is pinned, and go to it ahead of newer ones.
func applyJetStreamGroupDefaults(js *JetStreamInput) {
	g := js.Group
	if g == nil {
		return
	}
	setStr(&g.Name, defaultGroupName)
	setDur(&g.TTL, defaultPinnedTTL)
	setDur(&js.AckWait, g.TTL.Std()/2)
}

// validateJetStream checks what the struct tags cannot: a pinned group's
// ttl is at least 3s and ack_wait at most two thirds of it. The holder
// renews its pull requests every third of the ttl, so it is unpinned no
// sooner than two thirds of the ttl after it died; what it had not acked
// must be due for redelivery by then.
func (d *decoder) validateJetStream(p *Pipeline) {
	for _, name := range sortedKeys(p.Inputs) {
		js := p.Inputs[name].JetStream
		if js == nil || js.Group == nil {
			continue
		}
		path := joinPath("inputs", name) + ".jetstream"
		ttl := orDefault(js.Group.TTL, defaultPinnedTTL)
		if ttl.Std() < minPinnedTTL {
			d.errorf(d.posOf(path+".group.ttl"), path+".group.ttl", "group ttl %s is below the least, %s (the holder renews its pull requests every third of it, and a pull request lives at least 1s)", ttl, minPinnedTTL)
			continue
		}
		ack := orDefault(js.AckWait, ttl.Std()/2)
		if 3*ack > 2*ttl {
			at := path + ".group.ttl"
			if js.Group.TTL == 0 {
				at = path + ".ack_wait"
			}
			d.errorf(d.posOf(at), at, "ack_wait %s must be at most two thirds of group ttl %s: the records the pinned process had not acked when it died must be due for redelivery before another process is pinned, or newer records of their keys overtake them", ack, ttl)
		}
	}
}
