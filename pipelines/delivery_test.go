package pipelines

import "testing"

// TestExactlyOnceDefaults: delivery: exactly-once on a route expands to the
// Kafka connector's transactional pair, and leaves explicit settings and
// other routes' outputs alone.
func TestExactlyOnceDefaults(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		txnID   string
		joins   map[string]string // output -> transaction
		eoRoute map[string]bool
	}{
		{
			name: "defaults",
			src: `
version: 1
name: shop
inputs:
  orders: {kafka: {brokers: ["127.0.0.1:9092"], topics: [orders]}}
routes:
  - {name: eo, delivery: exactly-once, outputs: [enriched], dead_letter: dlq}
  - {name: plain, outputs: [audit, archive]}
outputs:
  enriched: {kafka: {brokers: ["127.0.0.1:9092"], topic: enriched}}
  dlq: {kafka: {brokers: ["127.0.0.1:9092"], topic: dead}}
  audit: {kafka: {brokers: ["127.0.0.1:9092"], topic: audit}}
  archive: {file: {path: archive.ndjson}}
`,
			txnID:   "culvert-shop-orders",
			joins:   map[string]string{"enriched": "orders", "dlq": "orders", "audit": ""},
			eoRoute: map[string]bool{"eo": true, "plain": false},
		},
		{
			name: "explicit settings kept",
			src: `
version: 1
name: shop
inputs:
  orders: {kafka: {brokers: ["127.0.0.1:9092"], topics: [orders], transactional_id: "shop-${REGION}"}}
routes:
  - {name: eo, delivery: exactly-once, outputs: [enriched]}
outputs:
  enriched: {kafka: {brokers: ["127.0.0.1:9092"], topic: enriched, transaction: orders}}
`,
			txnID:   "shop-eu-west-1",
			joins:   map[string]string{"enriched": "orders"},
			eoRoute: map[string]bool{"eo": true},
		},
		{
			name: "at-least-once adds nothing",
			src: `
version: 1
name: shop
inputs:
  orders: {kafka: {brokers: ["127.0.0.1:9092"], topics: [orders]}}
routes:
  - {name: plain, delivery: at-least-once, outputs: [enriched]}
outputs:
  enriched: {kafka: {brokers: ["127.0.0.1:9092"], topic: enriched}}
`,
			txnID:   "",
			joins:   map[string]string{"enriched": ""},
			eoRoute: map[string]bool{"plain": false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.src)
			if got := p.Inputs["orders"].Kafka.TransactionalID; got != tt.txnID {
				t.Errorf("transactional_id = %q, want %q", got, tt.txnID)
			}
			for out, want := range tt.joins {
				if got := p.Outputs[out].Kafka.Transaction; got != want {
					t.Errorf("outputs.%s.kafka.transaction = %q, want %q", out, got, want)
				}
			}
			for _, r := range p.Routes {
				if got, want := r.ExactlyOnce(), tt.eoRoute[r.Name]; got != want {
					t.Errorf("route %s: ExactlyOnce() = %v, want %v", r.Name, got, want)
				}
			}
		})
	}
}
