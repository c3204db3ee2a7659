package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

// Transform mode (Options.Samples) checks a function that does not echo
// its input. Where a rule in echo mode sends a value of its own and expects
// it back unchanged, in transform mode it sends a sample and expects the
// answer the function gave to that sample alone: the reference, taken once
// per run before the rules.

// references are the function's answers to each sample sent alone.
type references struct {
	answers []*culvertv1.RecordResult // by sample index
	// deterministic is false when a sample sent twice was answered
	// differently; answers are then not compared, and why says so.
	deterministic bool
	why           string
}

// sampleKey is the key of every sample record, so that answers depend on
// nothing but the value and can be compared with the reference.
var sampleKey = []byte("conformance-key")

func sampleRecord(id string, value []byte) *culvertv1.Record {
	return &culvertv1.Record{Id: id, Key: sampleKey, Value: value}
}

// takeReferences starts the function once, sends each sample alone in its
// own batch, twice, and keeps the answers. A sample that fails is an error:
// samples must be values the function accepts.
func takeReferences(ctx context.Context, o *Options) (*references, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := &T{ctx: ctx, o: o, sampleOf: map[string]int{}}
	defer t.cleanup()
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return nil, fmt.Errorf("sample inputs: %w", err)
	}
	refs := &references{deterministic: true}
	id := uint64(0)
	for try := range 2 {
		for i, v := range o.Samples {
			id++
			in := sampleRecord(fmt.Sprintf("sample-%d-try-%d", i, try), v)
			res, err := t.roundTrip(p, id, in)
			if err != nil {
				return nil, fmt.Errorf("sample inputs: sample %d: %w", i, err)
			}
			rr := res[0]
			if f := rr.GetFailure(); f != nil {
				return nil, fmt.Errorf("sample inputs: sample %d (%s) failed (%q); give samples the function accepts", i, short(v), f.GetMessage())
			}
			if try == 0 {
				refs.answers = append(refs.answers, rr)
				continue
			}
			if err := sameAnswer(rr, refs.answers[i]); err != nil && refs.deterministic {
				refs.deterministic = false
				refs.why = fmt.Sprintf("Sample %d was answered differently when sent twice (%v), so answers are checked for shape only, not compared with the reference.", i, err)
			}
		}
	}
	return refs, nil
}

// sameAnswer compares two answers to the same input: the same number of
// outputs, each with the same value, key, content type, event time,
// headers and output name. Ids are not compared: the host derives them
// from the input's id (SPEC.md 6).
func sameAnswer(got, want *culvertv1.RecordResult) error {
	if (got.GetFailure() == nil) != (want.GetFailure() == nil) {
		return fmt.Errorf("failure %q, want %q", got.GetFailure().GetMessage(), want.GetFailure().GetMessage())
	}
	if len(got.GetOutputs()) != len(want.GetOutputs()) {
		return fmt.Errorf("%d outputs, want %d", len(got.GetOutputs()), len(want.GetOutputs()))
	}
	for i, g := range got.GetOutputs() {
		w := want.GetOutputs()[i]
		if g.GetOutput() != w.GetOutput() {
			return fmt.Errorf("output %d goes to %q, want %q", i, g.GetOutput(), w.GetOutput())
		}
		gr, wr := proto.Clone(g.GetRecord()).(*culvertv1.Record), proto.Clone(w.GetRecord()).(*culvertv1.Record)
		if gr == nil || wr == nil {
			if (gr == nil) != (wr == nil) {
				return fmt.Errorf("output %d has no record", i)
			}
			continue
		}
		// Unknown fields of the input may travel with an output that is the
		// modified input; they are not part of the answer.
		gr.Id, wr.Id = "", ""
		gr.ProtoReflect().SetUnknown(nil)
		wr.ProtoReflect().SetUnknown(nil)
		if !bytes.Equal(gr.GetValue(), wr.GetValue()) {
			return fmt.Errorf("output %d has value %s, want %s", i, short(gr.GetValue()), short(wr.GetValue()))
		}
		if !proto.Equal(gr, wr) {
			return fmt.Errorf("output %d differs in key, content type, event time or headers", i)
		}
	}
	return nil
}

// transform reports whether the kit runs in transform mode.
func (t *T) transform() bool { return len(t.o.Samples) > 0 }

// payload returns the n-th plain record of a rule: in echo mode a record
// with the value echo, in transform mode sample n (modulo the number of
// samples), remembered so that its answer can be compared.
func (t *T) payload(id string, n int, echo []byte) *culvertv1.Record {
	if !t.transform() {
		return rec(id, echo)
	}
	i := n % len(t.o.Samples)
	t.sampleOf[id] = i
	return sampleRecord(id, t.o.Samples[i])
}

// expect checks the answer rr to in. Echo mode: in comes back unchanged.
// Transform mode: in is answered without a failure and, when in is a
// sample record sent by payload, unchanged since, and the function is
// deterministic, with the reference answer.
func (t *T) expect(rr *culvertv1.RecordResult, in *culvertv1.Record) error {
	if !t.transform() {
		return checkEchoed(rr, in)
	}
	if f := rr.GetFailure(); f != nil {
		return fmt.Errorf("record %s failed (%q); the same value sent alone was accepted", in.Id, f.GetMessage())
	}
	i, ok := t.sampleOf[in.Id]
	if !ok || t.refs == nil || !t.refs.deterministic {
		return nil
	}
	if !bytes.Equal(in.Value, t.o.Samples[i]) || !bytes.Equal(in.Key, sampleKey) || len(in.Headers) > 0 {
		return nil // changed by the rule: no reference for it
	}
	if err := sameAnswer(rr, t.refs.answers[i]); err != nil {
		return fmt.Errorf("record %s (sample %d) answered unlike the same sample sent alone: %w", in.Id, i, err)
	}
	return nil
}

// answerSize is the size of the reference answers to samples, for sizing
// batches; 0 when there are none.
func (t *T) answerSize(i int) int {
	if t.refs == nil {
		return 0
	}
	return proto.Size(t.refs.answers[i%len(t.refs.answers)])
}

var errNoSamples = errors.New("no samples")

// fill returns records of samples whose Batch frame is at most inMax bytes
// and whose expected BatchResult frame is at most outMax bytes, cycling
// through the samples, at least one record.
func (t *T) fill(prefix string, inMax, outMax int) ([]*culvertv1.Record, error) {
	if !t.transform() {
		return nil, errNoSamples
	}
	var recs []*culvertv1.Record
	in, out := 64, 64 // envelope and batch fields
	for n := 0; ; n++ {
		r := t.payload(fmt.Sprintf("%s-%d", prefix, n), n, nil)
		di := proto.Size(r) + 6
		do := t.answerSize(n) + len(r.Id) + 16
		if len(recs) > 0 && (in+di > inMax || out+do > outMax) {
			delete(t.sampleOf, r.Id)
			return recs, nil
		}
		recs = append(recs, r)
		in, out = in+di, out+do
	}
}

// ReadSamples reads sample values for transform mode, one per line (JSON
// Lines, or any text without newlines in its values). Empty lines are
// skipped; no sample at all is an error.
func ReadSamples(r io.Reader) ([][]byte, error) {
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, framing.DefaultMaxFrame)
	for sc.Scan() {
		if line := bytes.TrimRight(sc.Bytes(), "\r"); len(bytes.TrimSpace(line)) > 0 {
			out = append(out, bytes.Clone(line))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading samples: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("reading samples: no sample (one value a line)")
	}
	return out, nil
}
