package pipelines

import (
	"reflect"
	"testing"
	"time"
)

func TestJetStreamGroupDefaults(t *testing.T) {
	p := mustParse(t, `
version: 1
name: p
inputs:
  plain: {jetstream: {stream: IN}}
  pinned: {jetstream: {stream: IN, group: {policy: pinned}}}
  tuned: {jetstream: {stream: IN, ack_wait: 2s, group: {policy: pinned, name: orders, ttl: 5s}}}
routes: [{name: r, outputs: [o]}]
outputs:
  o: {jetstream: {subject: out.x}}
`)
	tests := []struct {
		name    string
		in      string
		ackWait time.Duration
		group   *JetStreamGroup
	}{
		{"no group: ack_wait 30s", "plain", 30 * time.Second, nil},
		{"pinned: ttl 10s, ack_wait half of it", "pinned", 5 * time.Second, &JetStreamGroup{Policy: "pinned", Name: "culvert", TTL: Duration(10 * time.Second)}},
		{"as written", "tuned", 2 * time.Second, &JetStreamGroup{Policy: "pinned", Name: "orders", TTL: Duration(5 * time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js := p.Inputs[tt.in].JetStream
			if js.AckWait.Std() != tt.ackWait {
				t.Errorf("ack_wait %s, want %s", js.AckWait, tt.ackWait)
			}
			if !reflect.DeepEqual(js.Group, tt.group) {
				t.Errorf("group %+v, want %+v", js.Group, tt.group)
			}
		})
	}
}
