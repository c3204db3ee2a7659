package pipelines

import (
	"reflect"
	"testing"
	"time"
)

func TestKinesisDefaults(t *testing.T) {
	p := mustParse(t, `
version: 1
name: p
inputs:
  k: {kinesis: {stream: orders, region: eu-west-1}}
  shared: {kinesis: {stream: orders, leases: {store: nats, bucket: leases}, start: "2026-01-02T15:04:05Z", lease_duration: 20s}}
routes: [{name: r, outputs: [o]}]
outputs:
  o: {kinesis: {stream: "out-{{ .Source.Partition }}", partition_key: "{{ .Key }}"}}
`)
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"input defaults", *p.Inputs["k"].Kinesis, KinesisInput{Stream: "orders", Region: "eu-west-1", Application: "culvert-p-k",
			Start: "trim_horizon", Balance: "steal", Leases: KinesisLeases{Store: "file"}}},
		{"input as written", *p.Inputs["shared"].Kinesis, KinesisInput{Stream: "orders", Application: "culvert-p-shared",
			Start: "2026-01-02T15:04:05Z", Balance: "steal", LeaseDuration: Duration(20 * time.Second), Leases: KinesisLeases{Store: "nats", Bucket: "leases"}}},
		{"output defaults", *p.Outputs["o"].Kinesis, KinesisOutput{Stream: "out-{{ .Source.Partition }}", PartitionKey: "{{ .Key }}", Encoding: "record"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %+v\nwant %+v", tt.got, tt.want)
			}
		})
	}
}
