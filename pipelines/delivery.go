package pipelines

import (
	"reflect"
	"strings"
)

// A route's delivery: exactly-once is not a second implementation. It is
// the Kafka connector's transactional pair (an input with transactional_id,
// kafka outputs with transaction: <input>), which validateDelivery checks
// the route can use and applyDeliveryDefaults fills in.

const (
	// DeliveryAtLeastOnce is a route's default guarantee.
	DeliveryAtLeastOnce = "at-least-once"
	// DeliveryExactlyOnce runs a Kafka -> Kafka route in Kafka transactions.
	DeliveryExactlyOnce = "exactly-once"
)

// ExactlyOnce reports whether the route asks for exactly-once delivery.
func (r *Route) ExactlyOnce() bool { return r.Delivery == DeliveryExactlyOnce }

// exactlyOnce reports whether any route of p asks for exactly-once.
func exactlyOnce(p *Pipeline) bool {
	for _, r := range p.Routes {
		if r != nil && r.ExactlyOnce() {
			return true
		}
	}
	return false
}

// txnInput returns the kafka input whose transactions exactly-once routes
// use: the pipeline's only input, when it is kafka. It returns "" when no
// route is exactly-once or validation refuses the inputs.
func txnInput(p *Pipeline) string {
	if !exactlyOnce(p) || len(p.Inputs) != 1 {
		return ""
	}
	for name, in := range p.Inputs {
		if in != nil && in.Kafka != nil {
			return name
		}
	}
	return ""
}

// applyDeliveryDefaults gives the input of exactly-once routes a
// transactional_id and makes their kafka outputs and dead letters join its
// transactions, where the file left these unset.
func applyDeliveryDefaults(p *Pipeline) {
	name := txnInput(p)
	if name == "" {
		return
	}
	setStr(&p.Inputs[name].Kafka.TransactionalID, "culvert-"+p.Name+"-"+name)
	for _, r := range p.Routes {
		if r == nil || !r.ExactlyOnce() {
			continue
		}
		for _, o := range routeOutputs(r) {
			if out := p.Outputs[o]; out != nil && out.Kafka != nil {
				setStr(&out.Kafka.Transaction, name)
			}
		}
	}
}

// routeOutputs lists the outputs a route writes: its outputs, then its
// dead letter.
func routeOutputs(r *Route) []string {
	outs := append([]string(nil), r.Outputs...)
	if r.DeadLetter != "" {
		outs = append(outs, r.DeadLetter)
	}
	return outs
}

// validateDelivery checks that every exactly-once route can run in the
// transactions of one kafka input. Each problem is reported at the route's
// delivery field and names the input or output that cannot take part.
func (d *decoder) validateDelivery(p *Pipeline) {
	if !exactlyOnce(p) {
		return
	}
	if !d.bad["inputs"] {
		d.transactionalInput(p)
	}
	in := txnInput(p)
	for i, r := range p.Routes {
		if r == nil || !r.ExactlyOnce() {
			continue
		}
		at := indexPath("routes", i) + ".delivery"
		d.exactlyOnceInputs(p, at)
		if in == "" || d.bad["outputs"] {
			continue
		}
		brokers := p.Inputs[in].Kafka.Brokers
		for j, name := range routeOutputs(r) {
			out := p.Outputs[name]
			if out == nil {
				continue // reported by ref
			}
			what := "output"
			if j == len(r.Outputs) {
				what = "dead_letter output"
			}
			switch k := out.Kafka; {
			case k == nil:
				conn := connectorOf(reflect.ValueOf(out).Elem())
				if conn == "" {
					continue // reported by connector
				}
				d.errorf(d.posOf(at), at, "exactly-once: %s %q is %s, and only kafka outputs can be written inside a Kafka transaction; make it a kafka output on brokers %q, or make the route at-least-once", what, name, conn, brokers)
			case k.Transaction != "":
				// Checked by kafkaTransaction: an existing input with
				// transactional_id on the same brokers.
			case !sameBrokers(k.Brokers, brokers):
				d.errorf(d.posOf(at), at, "exactly-once: %s %q is on brokers %q, input %q on %q; a Kafka transaction spans one cluster", what, name, k.Brokers, in, brokers)
			}
		}
	}
}

// exactlyOnceInputs reports, at at, each input that cannot feed an
// exactly-once route. Routes do not name their inputs, so every input of
// the pipeline counts.
func (d *decoder) exactlyOnceInputs(p *Pipeline, at string) {
	if d.bad["inputs"] {
		return
	}
	var kafka []string
	for _, name := range sortedKeys(p.Inputs) {
		in := p.Inputs[name]
		if in == nil {
			continue
		}
		var why string
		switch {
		case in.Kafka != nil:
			kafka = append(kafka, name)
			continue
		case in.NATS != nil:
			why = "NATS core has no acks or offsets, so nothing can be committed with a transaction"
		case in.JetStream != nil:
			why = "a JetStream ack cannot be part of a Kafka transaction, so a crash between the two repeats the record"
		case in.Kinesis != nil:
			why = "a Kinesis checkpoint cannot be part of a Kafka transaction, so a crash between the two repeats the record"
		case in.File != nil, in.Stdin != nil:
			why = "a file or stdin has no position that can be committed with a transaction"
		default:
			continue // no connector: reported by connector
		}
		conn := connectorOf(reflect.ValueOf(in).Elem())
		d.errorf(d.posOf(at), at, "exactly-once needs every input of the pipeline to be kafka (routes take records from all of them), and input %q is %s: %s", name, conn, why)
	}
	if len(kafka) > 1 {
		d.errorf(d.posOf(at), at, "exactly-once needs a single kafka input, and the pipeline has %d (%s): each input has its own transaction session and an output joins only one; use one input with several topics, or one pipeline per input", len(kafka), strings.Join(kafka, ", "))
	}
}

// transactionalInput reports the settings of a transactional kafka input
// that its transactions override: offsets commit with each transaction, and
// the records of a transaction are its polled batch.
func (d *decoder) transactionalInput(p *Pipeline) {
	name := txnInput(p)
	if name == "" {
		return
	}
	k := p.Inputs[name].Kafka
	path := joinPath("inputs", name) + ".kafka"
	for _, f := range []struct {
		field string
		set   bool
	}{
		{"commit_interval", k.CommitInterval != 0},
		{"revoke_grace", k.RevokeGrace != 0},
		{"max_in_flight", k.MaxInFlight != 0},
		{"max_in_flight_per_partition", k.MaxInFlightPerPartition != 0},
	} {
		if f.set {
			at := path + "." + f.field
			d.errorf(d.posOf(at), at, "%s does not apply to an input of an exactly-once route: its offsets commit with each transaction (one polled batch); remove it (delivery.max_in_flight bounds the records in flight)", f.field)
		}
	}
}

// connectorOf names the connector field set in v, an Input or Output.
func connectorOf(v reflect.Value) string {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("oneof") != "connector" || v.Field(i).IsNil() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		return name
	}
	return ""
}
