// Package pipediff owns comparing two versions of a pipeline on the same
// records: it runs each version once over the records, with in-memory
// connectors and real functions, groups every output record under the
// input record it derives from, and reports, record by record, the outputs
// that differ. It changes neither pipeline and talks to no broker.
package pipediff

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/internal/pipetest"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Report is the comparison of two runs.
type Report struct {
	Old, New string // pipeline files
	Records  int
	// Diffs lists the input records whose outputs differ, in input order.
	Diffs []RecordDiff
	// Unattributed holds output records that could not be traced to an
	// input (a function set its own id), compared as a whole per output.
	Unattributed []OutputDiff
}

// RecordDiff is one input record whose outputs differ.
type RecordDiff struct {
	Index  int // from 0
	Record *culvertv1.Record
	// GivenBack is set when the record was given back (failed without a
	// dead-letter output) by one version only: "old" or "new".
	GivenBack string
	Outputs   []OutputDiff
}

// OutputDiff is what one output received, in each version.
type OutputDiff struct {
	Output   string
	Old, New []string // rendered records (pipetest.RenderRecord, without ids)
}

// Options configure a comparison.
type Options struct {
	// Input the records arrive at; "" when each pipeline has one input.
	Input string
	// Runner says how functions run (Runtime, confinement); Logger too.
	Runner runner.Options
	// NewRunner, if set, is Runner for the new version (its confinement
	// hook is built from that pipeline).
	NewRunner *runner.Options
}

// Diff runs old and new over recs and compares what came out.
func Diff(ctx context.Context, oldP, newP *pipelines.Pipeline, recs []*culvertv1.Record, o Options) (*Report, error) {
	run := func(p *pipelines.Pipeline, ro runner.Options) (*pipetest.Outcome, error) {
		input := o.Input
		if input == "" {
			if len(p.Inputs) != 1 {
				return nil, fmt.Errorf("pipeline %s has %d inputs: say which one the records go to (--to-input)", p.File, len(p.Inputs))
			}
			for name := range p.Inputs {
				input = name
			}
		}
		cp := make([]*culvertv1.Record, len(recs))
		for i, r := range recs {
			cp[i] = proto.Clone(r).(*culvertv1.Record)
			if cp[i].Id == "" {
				cp[i].Id = fmt.Sprintf("record:%d", i+1)
			}
		}
		out, err := pipetest.RunPipeline(ctx, p, input, cp, ro)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.File, err)
		}
		return out, nil
	}
	a, err := run(oldP, o.Runner)
	if err != nil {
		return nil, err
	}
	nr := o.Runner
	if o.NewRunner != nil {
		nr = *o.NewRunner
	}
	b, err := run(newP, nr)
	if err != nil {
		return nil, err
	}
	rep := &Report{Old: oldP.File, New: newP.File, Records: len(recs)}
	type key struct {
		rec    int
		output string
	}
	oldBy, newBy := map[key][]string{}, map[key][]string{}
	outputs := map[string]bool{}
	group := func(out *pipetest.Outcome, by map[key][]string) error {
		for name, ps := range out.Outputs {
			outputs[name] = true
			for i, p := range ps {
				line, err := pipetest.RenderRecord(p, false)
				if err != nil {
					return err
				}
				k := key{out.Origins[name][i], name}
				by[k] = append(by[k], line)
			}
		}
		return nil
	}
	if err := group(a, oldBy); err != nil {
		return nil, err
	}
	if err := group(b, newBy); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	gbOld, gbNew := givenBack(a), givenBack(b)
	for i, r := range recs {
		d := RecordDiff{Index: i, Record: r}
		id := idOf(r, i)
		switch {
		case gbOld[id] && !gbNew[id]:
			d.GivenBack = "old"
		case gbNew[id] && !gbOld[id]:
			d.GivenBack = "new"
		}
		for _, n := range names {
			k := key{i, n}
			if !cmp.Equal(oldBy[k], newBy[k]) {
				d.Outputs = append(d.Outputs, OutputDiff{Output: n, Old: oldBy[k], New: newBy[k]})
			}
		}
		if len(d.Outputs) > 0 || d.GivenBack != "" {
			rep.Diffs = append(rep.Diffs, d)
		}
	}
	for _, n := range names {
		k := key{-1, n}
		if !cmp.Equal(oldBy[k], newBy[k]) {
			rep.Unattributed = append(rep.Unattributed, OutputDiff{Output: n, Old: oldBy[k], New: newBy[k]})
		}
	}
	return rep, nil
}

func idOf(r *culvertv1.Record, i int) string {
	if r.Id != "" {
		return r.Id
	}
	return fmt.Sprintf("record:%d", i+1)
}

func givenBack(o *pipetest.Outcome) map[string]bool {
	m := map[string]bool{}
	for _, r := range o.GivenBack {
		m[r.Id] = true
	}
	return m
}

// Same reports whether the two versions produced the same outputs.
func (r *Report) Same() bool { return len(r.Diffs) == 0 && len(r.Unattributed) == 0 }

// Write prints the report: per differing record, each output's records
// in the old version (-) and the new one (+).
func (r *Report) Write(w io.Writer) {
	fmt.Fprintf(w, "--- %s\n+++ %s\n", r.Old, r.New)
	for _, d := range r.Diffs {
		src := d.Record.GetSource()
		where := ""
		if src.GetSubject() != "" {
			where = " subject " + src.GetSubject()
		}
		if src.GetPartition() != "" {
			where += " partition " + src.GetPartition()
		}
		fmt.Fprintf(w, "record %d (%s%s):\n", d.Index+1, idOf(d.Record, d.Index), where)
		if d.GivenBack != "" {
			fmt.Fprintf(w, "  given back (failed without a dead-letter output) by the %s version only\n", d.GivenBack)
		}
		for _, o := range d.Outputs {
			writeOutput(w, o)
		}
	}
	if len(r.Unattributed) > 0 {
		fmt.Fprintln(w, "records not traceable to an input (a function set their ids):")
		for _, o := range r.Unattributed {
			writeOutput(w, o)
		}
	}
	fmt.Fprintf(w, "%d of %d records differ\n", len(r.Diffs), r.Records)
}

func writeOutput(w io.Writer, o OutputDiff) {
	fmt.Fprintf(w, "  output %q:\n", o.Output)
	// Lines present in both, in order, are shown as context.
	common := map[string]int{}
	for _, l := range o.New {
		common[l]++
	}
	for _, l := range o.Old {
		if common[l] > 0 {
			common[l]--
			fmt.Fprintf(w, "      %s\n", l)
			continue
		}
		fmt.Fprintf(w, "    - %s\n", l)
	}
	common = map[string]int{}
	for _, l := range o.Old {
		common[l]++
	}
	for _, l := range o.New {
		if common[l] > 0 {
			common[l]--
			continue
		}
		fmt.Fprintf(w, "    + %s\n", l)
	}
	if len(o.Old) == 0 && len(o.New) == 0 {
		fmt.Fprintln(w, "    (nothing in either)")
	}
}
