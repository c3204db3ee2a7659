package pipelines

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
)

// validate runs the checks that span several fields: the version, one
// connector per input and output, references between sections, unique
// route names, the unmatched policy and backoff bounds. Field-level checks
// ran while decoding.
func (d *decoder) validate(p *Pipeline) {
	if d.aborted {
		return
	}
	if _, ok := d.pos["version"]; ok && !d.bad["version"] && p.Version != 1 {
		d.errorf(d.posOf("version"), "version", "unsupported version %d; this Culvert reads version 1", p.Version)
	}
	if p.Broker.Credentials != "" && p.Broker.Token != "" {
		d.errorf(d.posOf("broker.token"), "broker.token", "set credentials or token, not both")
	}

	stdin := ""
	for _, name := range sortedKeys(p.Inputs) {
		in := p.Inputs[name]
		path := joinPath("inputs", name)
		d.connector("input", name, path, in.Pos, reflect.ValueOf(in).Elem())
		if in.Stdin != nil {
			if stdin != "" {
				d.errorf(d.posOf(path+".stdin"), path+".stdin", "only one input can read stdin, and input %q already does", stdin)
			} else {
				stdin = name
			}
		}
	}
	for _, name := range sortedKeys(p.Outputs) {
		out := p.Outputs[name]
		path := joinPath("outputs", name)
		d.connector("output", name, path, out.Pos, reflect.ValueOf(out).Elem())
		if js := out.JetStream; js != nil && js.Stream == "" && len(js.Subjects) > 0 {
			d.errorf(d.posOf(path+".jetstream.subjects"), path+".jetstream.subjects", "subjects is only used with stream; set stream or remove subjects")
		}
	}
	for _, name := range sortedKeys(p.Functions) {
		f := p.Functions[name]
		path := joinPath("functions", name)
		d.backoff(path+".restart", f.Restart.Backoff, f.Restart.MaxBackoff, defaultRestartBackoff, defaultRestartMaxBackoff)
		d.backoff(path+".retry", f.Retry.Backoff, f.Retry.MaxBackoff, defaultRetryBackoff, defaultRetryMaxBackoff)
	}

	routes := make(map[string]int)
	for i, r := range p.Routes {
		path := indexPath("routes", i)
		if r == nil {
			continue
		}
		if first, ok := routes[r.Name]; ok && r.Name != "" {
			d.errorf(d.posOf(path+".name"), path+".name", "duplicate route name %q; routes[%d] (line %d) has it too", r.Name, first, d.posOf(indexPath("routes", first)+".name").Line)
		} else {
			routes[r.Name] = i
		}
		for j, fn := range r.Chain {
			if fn != "" {
				ref(d, "function", fn, p.Functions, indexPath(path+".chain", j))
			}
		}
		seen := make(map[string]bool)
		for j, out := range r.Outputs {
			op := indexPath(path+".outputs", j)
			if seen[out] {
				d.errorf(d.posOf(op), op, "output %q is listed twice", out)
				continue
			}
			seen[out] = true
			ref(d, "output", out, p.Outputs, op)
		}
		if r.DeadLetter != "" {
			ref(d, "output", r.DeadLetter, p.Outputs, path+".dead_letter")
		}
	}

	d.validateKafka(p)
	d.validateKinesis(p)
	d.validateJetStream(p)
	d.validateSandbox(p)
	d.validateScale(p)

	switch u := p.Unmatched; {
	case u.Action == "output" && u.Output == "":
		d.errorf(d.posOf("unmatched.output"), "unmatched", "missing required field \"output\" (action: output sends unmatched records to it)")
	case u.Action == "output":
		ref(d, "output", u.Output, p.Outputs, "unmatched.output")
	case u.Output != "":
		d.errorf(d.posOf("unmatched.output"), "unmatched.output", "output is only used with action: output; add it, or remove output to drop unmatched records")
	}
}

// connector checks that exactly one connector field of v (an Input or
// Output) is set. An unknown field counts as a misspelt connector.
func (d *decoder) connector(kind, name, path string, pos Pos, v reflect.Value) {
	var all, set []string
	for _, f := range d.fieldsOf(v.Type()) {
		if f.oneof != "connector" {
			continue
		}
		all = append(all, f.name)
		if !v.Field(f.index).IsNil() {
			set = append(set, f.name)
		}
	}
	if d.bad[path] {
		return // not even a mapping
	}
	switch len(set) {
	case 0:
		if d.unknown[path] {
			return
		}
		d.errorf(pos, path, "%s %q names no connector; set one of %s", kind, name, strings.Join(all, ", "))
	case 1:
	case 2:
		d.errorf(pos, path, "%s %q names two connectors, %s and %s; keep one", kind, name, set[0], set[1])
	default:
		d.errorf(pos, path, "%s %q names %d connectors, %s; keep one", kind, name, len(set), strings.Join(set, ", "))
	}
}

// ref checks that name is a key of defined.
func ref[T any](d *decoder, kind, name string, defined map[string]T, path string) {
	if _, ok := defined[name]; ok || d.bad[kind+"s"] {
		return // defined, or its section could not be decoded
	}
	msg := fmt.Sprintf("unknown %s %q", kind, name)
	var names []string
	for _, n := range sortedKeys(defined) {
		if validName(n) {
			names = append(names, n)
		}
	}
	switch s := suggest(name, names); {
	case s != "":
		msg += "; did you mean " + s + "?"
	case len(defined) == 0:
		msg += fmt.Sprintf("; no %ss are defined", kind)
	case len(names) <= 10:
		msg += fmt.Sprintf("; defined %ss: %s", kind, strings.Join(names, ", "))
	}
	d.errorf(d.posOf(path), path, "%s", msg)
}

// backoff checks that backoff does not exceed maxBackoff, each taken with its
// default when not set.
func (d *decoder) backoff(path string, backoff, maxBackoff Duration, defBackoff, defMax time.Duration) {
	b, m := orDefault(backoff, defBackoff), orDefault(maxBackoff, defMax)
	if b <= m {
		return
	}
	at := path + ".backoff"
	if backoff == 0 {
		at = path + ".max_backoff"
	}
	d.errorf(d.posOf(at), at, "backoff %s exceeds max_backoff %s", b, m)
}

func orDefault(d Duration, def time.Duration) Duration {
	if d == 0 {
		return Duration(def)
	}
	return d
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
