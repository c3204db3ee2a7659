package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/culvert-dev/culvert/proto/conformance/convention"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Rule is one checked requirement of SPEC.md.
type Rule struct {
	// ID names the rule on the command line and in reports.
	ID string
	// Section is the SPEC.md section the rule checks.
	Section string
	// Title says what a conformant function does.
	Title string
	// Convention is true when the rule needs the function to honour the
	// conformance convention (SPEC.md appendix A).
	Convention bool
	// Check drives one fresh function process and returns why it failed.
	Check func(t *T) error
	// Transform says what the rule cannot check in transform mode
	// (Options.Samples), and is shown with its result there; empty when
	// the rule checks the same with samples in place of its own values.
	Transform string
}

// transformNotes are the rules' Transform texts.
var transformNotes = map[string]string{
	"binary-values": "values are the samples, so values with NUL, invalid UTF-8 and every byte value are not checked; " +
		"records whose keys and header values carry them must be answered without a failure",
	"headers":                "a record with the 300 headers must be answered without a failure; whether they are kept is the function's choice and not checked",
	"frame-limit":            "a batch of samples fills the larger of the Batch and the expected BatchResult frame to just under 4 MiB",
	"frame-limit-negotiated": "a batch of samples fills the larger of the Batch and the expected BatchResult frame to just under 6 MiB",
	"slow-reader":            "needs answers to the samples of at least 256 KiB over three batches to fill the pipe; skipped, with the sizes, when they are smaller",
}

// Rules returns the rules table, in the order the kit runs it.
func Rules() []Rule {
	rules := []Rule{
		{"handshake", "5.2, 4.2", "answers Hello{versions [1]} with Ready{version 1} and nothing before it", false, checkHandshake, ""},
		{"version-negotiation", "10", "offered [1 2 7], chooses 1, the only version it speaks", false, checkVersionNegotiation, ""},
		{"version-refusal", "10, 5.2", "offered only [2], refuses with InitError{retryable false} naming both sides' versions, then writes nothing and exits", false, checkVersionRefusal, ""},
		{"capabilities", "10, 4.2", "ignores unknown capabilities; Ready.capabilities is a subset of those offered", false, checkCapabilities, ""},
		{"unknown-fields", "3.2, 10", "ignores unknown fields in Hello, Batch and Record", false, checkUnknownFields, ""},
		{"unchanged", "10, 4.3, 6", "offered the unchanged capability, sends Output.unchanged only if Ready accepted it, and never beside a record; the answers mean the same either way", false, checkUnchanged, ""},
		{"batch-result", "4.3, 5.4", "answers a Batch with one BatchResult of the same id and one RecordResult per record, in order", false, checkEcho, ""},
		{"empty-batch", "4.3", "answers a Batch with no records with an empty BatchResult", false, checkEmptyBatch, ""},
		{"binary-values", "4.5", "passes values, keys and header values with NUL, invalid UTF-8 and every byte value through unchanged", false, checkBinary, ""},
		{"frame-limit", "3", "reads and writes frames just under the default 4 MiB limit", false, checkFrameLimit, ""},
		{"frame-limit-negotiated", "3, 4.2", "accepts frames up to Hello.max_frame_bytes when it raises the limit (6 MiB)", false, checkFrameLimitNegotiated, ""},
		{"frame-limit-enforced", "3, 4.2", "with Hello.max_frame_bytes 64 KiB, refuses a longer frame as a protocol violation: answers nothing and exits with a failure status", false, checkFrameLimitEnforced, ""},
		{"length-encoding", "3", "accepts frame lengths in non-minimal varints of up to 5 bytes", false, checkLengthEncoding, ""},
		{"headers", "4.5", "keeps 300 headers with repeated names, case variants and empty values, in order", false, checkHeaders, ""},
		{"partial-failure", "4.3, 9", "fails single records (retryable or not) while the others of the batch succeed", true, checkPartialFailure, ""},
		{"multiple-outputs", "4.3, 6", "emits several outputs for one input, in order", true, checkMultipleOutputs, ""},
		{"zero-outputs", "4.3", "consumes a record with no output and no failure", true, checkZeroOutputs, ""},
		{"pipelining", "5.3, 5.4, 7", "with max_inflight_batches 4, answers queued batches in order with ids 1, 2, 3...", false, checkPipelining, ""},
		{"keep-alive", "5.5, 4.4", "echoes each KeepAlive nonce, in order with batch results", false, checkKeepAlive, ""},
		{"no-unsolicited-frames", "4.1", "writes nothing that does not answer a host frame", false, checkNoUnsolicited, ""},
		{"stdout-protected", "2, 3.1, 15", "text printed with the language's own stdout API goes to stderr, never into the frames", true, checkStdoutProtected, ""},
		{"slow-reader", "3.2, 2", "writes complete frames, in order, when the host reads stdout slowly", false, checkSlowReader, ""},
		{"host-garbage", "3, 3.1, 3.2", "when the host's stream breaks the framing rules, answers nothing more and exits with a failure status, never resynchronising", false, checkHostGarbage, ""},
		{"truncated-frame", "3.2", "treats end of input inside a frame as the host's failure: writes nothing more and exits", false, checkTruncatedFrame, ""},
		{"shutdown", "5.6", "after Shutdown and end of input, writes nothing more and exits 0 before the deadline", false, checkShutdown, ""},
		{"eof", "5.7", "at end of input without Shutdown, exits promptly with status 0", false, checkEOF, ""},
	}
	for i := range rules {
		rules[i].Transform = transformNotes[rules[i].ID]
	}
	return rules
}

// T is what a rule's check works with: it starts processes and stops them
// when the check returns.
type T struct {
	ctx   context.Context
	o     *Options
	procs []*proc
	// refs are the reference answers in transform mode.
	refs *references
	// sampleOf maps the id of a record built by payload to its sample.
	sampleOf map[string]int
}

func (t *T) cleanup() {
	for _, p := range t.procs {
		p.stop()
	}
}

func (t *T) timeout() time.Duration { return t.o.timeout() }

func (t *T) start(so startOpts) (*proc, error) {
	p, err := t.o.start(t.ctx, so)
	if err != nil {
		return nil, err
	}
	t.procs = append(t.procs, p)
	return p, nil
}

// hello is the Hello the kit sends unless a rule says otherwise.
func hello() *culvertv1.Hello {
	return &culvertv1.Hello{
		Versions:           []uint32{1},
		MaxFrameBytes:      framing.DefaultMaxFrame,
		MaxInflightBatches: 1,
		Context: &culvertv1.InitContext{
			Pipeline: "conformance", Function: "under-test", Instances: 1, Route: "conformance",
		},
	}
}

func helloMsg(h *culvertv1.Hello) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: h}}
}

// ready starts a process, sends h (the default Hello when nil) and checks
// that the first frame is a valid Ready.
func (t *T) ready(h *culvertv1.Hello, so startOpts) (*proc, error) {
	if h == nil {
		h = hello()
	}
	if so.maxFrame == 0 && h.MaxFrameBytes > 0 {
		so.maxFrame = int(h.MaxFrameBytes)
	}
	p, err := t.start(so)
	if err != nil {
		return nil, err
	}
	if err := p.send(helloMsg(h)); err != nil {
		return nil, err
	}
	m, err := p.recv(t.ctx, t.timeout())
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	r := m.GetReady()
	if r == nil {
		return nil, fmt.Errorf("handshake: first frame is %s, want Ready", describe(m))
	}
	if !slices.Contains(h.Versions, r.GetVersion()) {
		return nil, fmt.Errorf("handshake: Ready.version %d was not offered (offered %v)", r.GetVersion(), h.Versions)
	}
	return p, nil
}

func (t *T) batchMsg(id uint64, recs ...*culvertv1.Record) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{
		Id: id, Records: recs, Attempt: 1,
		DeadlineUnixMs: time.Now().Add(t.timeout()).UnixMilli(),
	}}}
}

// result waits for the BatchResult of batch id and checks its shape.
func (t *T) result(p *proc, id uint64, n int) ([]*culvertv1.RecordResult, error) {
	m, err := p.recv(t.ctx, t.timeout())
	if err != nil {
		return nil, fmt.Errorf("waiting for the result of batch %d: %w", id, err)
	}
	return checkResult(m, id, n)
}

func checkResult(m *culvertv1.FunctionMessage, id uint64, n int) ([]*culvertv1.RecordResult, error) {
	r := m.GetResult()
	if r == nil {
		return nil, fmt.Errorf("got %s, want the BatchResult of batch %d", describe(m), id)
	}
	if r.GetBatchId() != id {
		return nil, fmt.Errorf("BatchResult.batch_id is %d, want %d, the oldest outstanding batch (SPEC.md 5.4)", r.GetBatchId(), id)
	}
	if len(r.GetResults()) != n {
		return nil, fmt.Errorf("BatchResult of batch %d has %d results for %d records (SPEC.md 4.3)", id, len(r.GetResults()), n)
	}
	for i, rr := range r.GetResults() {
		if rr.GetFailure() != nil && len(rr.GetOutputs()) > 0 {
			return nil, fmt.Errorf("result %d of batch %d has both a failure and %d outputs (SPEC.md 4.3)", i, id, len(rr.GetOutputs()))
		}
	}
	return r.GetResults(), nil
}

// roundTrip sends one batch and returns its checked results.
func (t *T) roundTrip(p *proc, id uint64, recs ...*culvertv1.Record) ([]*culvertv1.RecordResult, error) {
	if err := p.send(t.batchMsg(id, recs...)); err != nil {
		return nil, err
	}
	return t.result(p, id, len(recs))
}

func rec(id string, value []byte, headers ...string) *culvertv1.Record {
	r := &culvertv1.Record{Id: id, Value: value}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, &culvertv1.Header{Name: headers[i], Value: []byte(headers[i+1])})
	}
	return r
}

func directive(id string, value []byte, d string) *culvertv1.Record {
	return rec(id, value, convention.Header, d)
}

// checkEchoed checks that rr is the echo of in: one output, same value, key
// and headers, in order.
func checkEchoed(rr *culvertv1.RecordResult, in *culvertv1.Record) error {
	if f := rr.GetFailure(); f != nil {
		return fmt.Errorf("record %s failed (%q), want it echoed", in.Id, f.GetMessage())
	}
	if len(rr.GetOutputs()) != 1 {
		return fmt.Errorf("record %s has %d outputs, want 1 (the echo)", in.Id, len(rr.GetOutputs()))
	}
	return sameRecord(rr.GetOutputs()[0].GetRecord(), in)
}

func sameRecord(out, in *culvertv1.Record) error {
	if !bytes.Equal(out.GetValue(), in.GetValue()) {
		return fmt.Errorf("record %s: value changed: sent %s, got %s", in.Id, short(in.GetValue()), short(out.GetValue()))
	}
	if len(out.GetKey()) > 0 && !bytes.Equal(out.GetKey(), in.GetKey()) {
		return fmt.Errorf("record %s: key changed: sent %s, got %s", in.Id, short(in.GetKey()), short(out.GetKey()))
	}
	if out.GetContentType() != "" && out.GetContentType() != in.GetContentType() {
		return fmt.Errorf("record %s: content type changed: sent %q, got %q", in.Id, in.GetContentType(), out.GetContentType())
	}
	oh, ih := out.GetHeaders(), in.GetHeaders()
	for i := range max(len(oh), len(ih)) {
		if i >= len(oh) || i >= len(ih) {
			return fmt.Errorf("record %s: sent %d headers, got %d back", in.Id, len(ih), len(oh))
		}
		if oh[i].GetName() != ih[i].GetName() || !bytes.Equal(oh[i].GetValue(), ih[i].GetValue()) {
			return fmt.Errorf("record %s: header %d: sent %q: %s, got %q: %s", in.Id, i, ih[i].GetName(), short(ih[i].GetValue()), oh[i].GetName(), short(oh[i].GetValue()))
		}
	}
	return nil
}

// short quotes b, abbreviated.
func short(b []byte) string {
	if len(b) > 48 {
		return fmt.Sprintf("%s… (%d bytes)", framing.Quote(b[:48]), len(b))
	}
	return framing.Quote(b)
}

func checkHandshake(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	return t.answer(p, 1, t.payload("r1", 0, []byte("x")))
}

// answer sends one batch of recs and checks each answer.
func (t *T) answer(p *proc, id uint64, recs ...*culvertv1.Record) error {
	res, err := t.roundTrip(p, id, recs...)
	if err != nil {
		return err
	}
	for i, rr := range res {
		if err := t.expect(rr, recs[i]); err != nil {
			return fmt.Errorf("batch %d: %w", id, err)
		}
	}
	return nil
}

func checkVersionNegotiation(t *T) error {
	h := hello()
	h.Versions = []uint32{1, 2, 7}
	p, m, err := t.offer(h)
	if err != nil {
		return err
	}
	if m.GetReady() == nil {
		return fmt.Errorf("offered versions [1 2 7], got %s, want Ready{version 1}", describe(m))
	}
	if v := m.GetReady().GetVersion(); v != 1 {
		return fmt.Errorf("offered versions [1 2 7], chose %d; SPEC.md defines version 1 only", v)
	}
	return t.answer(p, 1, t.payload("r1", 0, []byte("x")))
}

func checkVersionRefusal(t *T) error {
	h := hello()
	h.Versions = []uint32{2}
	p, m, err := t.offer(h)
	if err != nil {
		return err
	}
	ie := m.GetInitError()
	if ie == nil {
		return fmt.Errorf("offered only version 2, got %s, want InitError", describe(m))
	}
	if ie.GetRetryable() {
		return errors.New("InitError for unsupported versions is retryable; it must not be (SPEC.md 10)")
	}
	if msg := ie.GetMessage(); !strings.Contains(msg, "2") || !strings.Contains(msg, "1") {
		return fmt.Errorf("InitError message %q does not name both sides' versions (offered [2], speaks [1])", msg)
	}
	p.closeStdin()
	if err := p.expectEOF(t.ctx, t.timeout()); err != nil {
		return fmt.Errorf("after InitError: %w", err)
	}
	if _, err := p.wait(t.timeout()); err != nil {
		return fmt.Errorf("after InitError: %w", err)
	}
	return nil
}

func checkCapabilities(t *T) error {
	h := hello()
	h.Capabilities = []string{"conformance-unknown-capability", "cancel"}
	p, m, err := t.offer(h)
	if err != nil {
		return err
	}
	if m.GetReady() == nil {
		return fmt.Errorf("offered unknown capabilities, got %s, want Ready", describe(m))
	}
	for _, c := range m.GetReady().GetCapabilities() {
		if !slices.Contains(h.Capabilities, c) {
			return fmt.Errorf("Ready.capabilities names %q, which was not offered (offered %v)", c, h.Capabilities)
		}
	}
	return t.answer(p, 1, t.payload("r1", 0, []byte("x")))
}

// checkUnchanged offers the "unchanged" capability and checks how the
// function answers: Output.unchanged only once accepted, never with a
// record, and each answer, with Output.unchanged read as the input record,
// what the rules without the capability expect.
func checkUnchanged(t *T) error {
	h := hello()
	h.Capabilities = []string{"unchanged"}
	p, m, err := t.offer(h)
	if err != nil {
		return err
	}
	if m.GetReady() == nil {
		return fmt.Errorf("offered the unchanged capability, got %s, want Ready", describe(m))
	}
	accepted := slices.Contains(m.GetReady().GetCapabilities(), "unchanged")
	recs := []*culvertv1.Record{t.payload("u1", 0, []byte("x")), t.payload("u2", 1, []byte("y")), t.payload("u3", 2, []byte{0, 0xff})}
	res, err := t.roundTrip(p, 1, recs...)
	if err != nil {
		return err
	}
	for i, rr := range res {
		resolved := &culvertv1.RecordResult{Failure: rr.GetFailure()}
		for j, o := range rr.GetOutputs() {
			switch {
			case !o.GetUnchanged():
				resolved.Outputs = append(resolved.Outputs, o)
				continue
			case !accepted:
				return fmt.Errorf("record %s: output %d sets unchanged, but Ready did not accept the capability (SPEC.md 10)", recs[i].Id, j)
			case o.GetRecord() != nil:
				return fmt.Errorf("record %s: output %d sets unchanged and a record (SPEC.md 4.3)", recs[i].Id, j)
			}
			resolved.Outputs = append(resolved.Outputs, &culvertv1.Output{Record: recs[i], Output: o.GetOutput()})
		}
		if err := t.expect(resolved, recs[i]); err != nil {
			return fmt.Errorf("batch 1: %w", err)
		}
	}
	return nil
}

// offer starts the function, sends it h and returns its first frame.
func (t *T) offer(h *culvertv1.Hello) (*proc, *culvertv1.FunctionMessage, error) {
	p, err := t.start(startOpts{})
	if err != nil {
		return nil, nil, err
	}
	p.send(helloMsg(h))
	m, err := p.recv(t.ctx, t.timeout())
	if err != nil {
		return nil, nil, err
	}
	return p, m, nil
}

// withUnknown appends an unknown field (number 900, a string) to body.
func withUnknown(body []byte) []byte {
	body = protowire.AppendTag(body, 900, protowire.BytesType)
	return protowire.AppendString(body, "from a future version")
}

func checkUnknownFields(t *T) error {
	h, err := proto.Marshal(hello())
	if err != nil {
		return err
	}
	r := t.payload("r1", 0, []byte("payload"))
	rb, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	b, err := proto.Marshal(t.batchMsg(1).GetBatch())
	if err != nil {
		return err
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType) // Batch.records
	b = protowire.AppendBytes(b, withUnknown(rb))
	p, err := t.start(startOpts{})
	if err != nil {
		return err
	}
	p.sendBody(protowire.AppendBytes(protowire.AppendTag(nil, 16, protowire.BytesType), withUnknown(h)))
	m, err := p.recv(t.ctx, t.timeout())
	if err != nil {
		return fmt.Errorf("Hello with an unknown field: %w", err)
	}
	if m.GetReady() == nil {
		return fmt.Errorf("Hello with an unknown field: got %s, want Ready", describe(m))
	}
	p.sendBody(protowire.AppendBytes(protowire.AppendTag(nil, 17, protowire.BytesType), withUnknown(b)))
	res, err := t.result(p, 1, 1)
	if err != nil {
		return fmt.Errorf("Batch and Record with unknown fields: %w", err)
	}
	if t.transform() {
		return t.expect(res[0], r)
	}
	if f := res[0].GetFailure(); f != nil {
		return fmt.Errorf("record with an unknown field failed: %q", f.GetMessage())
	}
	if len(res[0].GetOutputs()) != 1 || !bytes.Equal(res[0].GetOutputs()[0].GetRecord().GetValue(), r.Value) {
		return errors.New("record with an unknown field was not echoed unchanged")
	}
	return nil
}

func checkEcho(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	for id := uint64(1); id <= 3; id++ {
		var recs []*culvertv1.Record
		for i := range int(id) * 2 {
			if t.transform() {
				recs = append(recs, t.payload(fmt.Sprintf("b%d-r%d", id, i), i+int(id), nil))
				continue
			}
			r := rec(fmt.Sprintf("b%d-r%d", id, i), fmt.Appendf(nil, `{"batch":%d,"n":%d}`, id, i), "type", "created")
			r.Key = fmt.Appendf(nil, "k%d", i)
			r.ContentType = "application/json"
			recs = append(recs, r)
		}
		if err := t.answer(p, id, recs...); err != nil {
			return err
		}
	}
	return nil
}

func checkEmptyBatch(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	if _, err := t.roundTrip(p, 1); err != nil {
		return err
	}
	in := t.payload("after-empty", 0, []byte("x"))
	res, err := t.roundTrip(p, 2, in)
	if err != nil {
		return fmt.Errorf("after an empty batch: %w", err)
	}
	return t.expect(res[0], in)
}

func checkBinary(t *T) error {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	recs := []*culvertv1.Record{
		rec("nul", []byte("a\x00b\x00")),
		rec("invalid-utf8", []byte{0xff, 0xfe, 0xc3, 0x28, 0x80, 0xed, 0xa0, 0x80}),
		rec("all-bytes", all),
		rec("empty", nil),
		rec("only-nul", []byte{0}),
		rec("newlines", []byte("line1\nline2\r\n\n")),
	}
	k := rec("binary-key-and-header", []byte("v"), "bin", "\x00\xff\xfe")
	k.Key = []byte{0, 0xff, 0x80, 0}
	recs = append(recs, k)
	if t.transform() {
		// The samples' values, with keys and header values of every kind.
		for i, r := range recs {
			s := t.payload(r.Id, i, nil)
			r.Key = append(append(append([]byte{}, r.Key...), r.Value...), byte(i))
			r.Value = s.Value
			r.Headers = append(r.Headers, &culvertv1.Header{Name: "bin", Value: r.Key})
		}
	}
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	res, err := t.roundTrip(p, 1, recs...)
	if err != nil {
		return err
	}
	for i, rr := range res {
		if t.transform() {
			if err := t.expect(rr, recs[i]); err != nil {
				return fmt.Errorf("with a binary key and header value: %w", err)
			}
			continue
		}
		if recs[i].Id == "empty" && len(rr.GetOutputs()) == 1 && len(rr.GetOutputs()[0].GetRecord().GetValue()) == 0 && rr.GetFailure() == nil {
			continue
		}
		if err := checkEchoed(rr, recs[i]); err != nil {
			return err
		}
	}
	return nil
}

// bigRecord returns a record whose Batch frame is about size bytes.
func bigRecord(id string, size int) *culvertv1.Record {
	v := make([]byte, size)
	for i := range v {
		v[i] = byte(i*7 + i>>11)
	}
	return rec(id, v)
}

func checkFrameLimit(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	if t.transform() {
		return t.fillFrame(p, 1, framing.DefaultMaxFrame)
	}
	// The result echoes the record with a few bytes more framing than the
	// batch: leave room for both under 4 MiB.
	in := bigRecord("near-limit", framing.DefaultMaxFrame-256)
	res, err := t.roundTrip(p, 1, in)
	if err != nil {
		return fmt.Errorf("record of %d bytes: %w", len(in.Value), err)
	}
	return checkEchoed(res[0], in)
}

func checkFrameLimitNegotiated(t *T) error {
	h := hello()
	h.MaxFrameBytes = 6 << 20
	p, err := t.ready(h, startOpts{})
	if err != nil {
		return err
	}
	if t.transform() {
		return t.fillFrame(p, 1, int(h.MaxFrameBytes))
	}
	in := bigRecord("above-default", 5<<20)
	res, err := t.roundTrip(p, 1, in)
	if err != nil {
		return fmt.Errorf("record of %d bytes with max_frame_bytes %d: %w", len(in.Value), h.MaxFrameBytes, err)
	}
	return checkEchoed(res[0], in)
}

func checkHeaders(t *T) error {
	r := rec("many-headers", []byte("v"))
	for i := range 300 {
		var name, value string
		switch i % 5 {
		case 0:
			name, value = "x-repeat", strconv.Itoa(i)
		case 1:
			name, value = "X-Id", "upper"
		case 2:
			name, value = "x-id", "lower"
		case 3:
			name, value = fmt.Sprintf("h%03d", i), ""
		default:
			name, value = "café", "ünïcode "+strconv.Itoa(i)
		}
		r.Headers = append(r.Headers, &culvertv1.Header{Name: name, Value: []byte(value)})
	}
	if t.transform() {
		r.Key, r.Value = sampleKey, t.payload(r.Id, 0, nil).Value
	}
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	res, err := t.roundTrip(p, 1, r)
	if err != nil {
		return err
	}
	return t.expect(res[0], r)
}

func checkPartialFailure(t *T) error {
	recs := []*culvertv1.Record{
		t.payload("ok-1", 0, []byte("one")),
		directive("fail", []byte("two"), "fail"),
		t.payload("ok-2", 1, []byte("three")),
		directive("retry", []byte("four"), "retry"),
		t.payload("ok-3", 2, []byte("five")),
	}
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	res, err := t.roundTrip(p, 1, recs...)
	if err != nil {
		return err
	}
	for i, want := range []string{"ok", "permanent", "ok", "retryable", "ok"} {
		rr, in := res[i], recs[i]
		if want == "ok" {
			if err := t.expect(rr, in); err != nil {
				return fmt.Errorf("beside failing records: %w", err)
			}
			continue
		}
		f := rr.GetFailure()
		switch {
		case f == nil:
			return fmt.Errorf("record %s (header %s: %s) did not fail; does the function honour the conformance convention (SPEC.md appendix A)?", in.Id, convention.Header, in.Headers[0].Value)
		case f.GetMessage() == "":
			return fmt.Errorf("record %s failed with an empty message", in.Id)
		case f.GetRetryable() != (want == "retryable"):
			return fmt.Errorf("record %s failed with retryable %v, want %v", in.Id, f.GetRetryable(), want == "retryable")
		}
	}
	// The instance keeps working after reporting failures.
	in := t.payload("after", 3, []byte("six"))
	res, err = t.roundTrip(p, 2, in)
	if err != nil {
		return fmt.Errorf("after a batch with failures: %w", err)
	}
	return t.expect(res[0], in)
}

func checkMultipleOutputs(t *T) error {
	recs := []*culvertv1.Record{
		directive("three", []byte("3"), "emit=3"),
		t.payload("one", 0, []byte("1")),
		directive("seventeen", []byte("17"), "emit=17"),
	}
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	res, err := t.roundTrip(p, 1, recs...)
	if err != nil {
		return err
	}
	for i, want := range []int{3, 1, 17} {
		rr := res[i]
		if i == 1 && t.transform() {
			if err := t.expect(rr, recs[i]); err != nil {
				return fmt.Errorf("beside records with several outputs: %w", err)
			}
			continue
		}
		if rr.GetFailure() != nil {
			return fmt.Errorf("record %s failed: %q", recs[i].Id, rr.GetFailure().GetMessage())
		}
		if len(rr.GetOutputs()) != want {
			return fmt.Errorf("record %s (%s) has %d outputs, want %d", recs[i].Id, directiveOf(recs[i]), len(rr.GetOutputs()), want)
		}
		for j, o := range rr.GetOutputs() {
			if !bytes.Equal(o.GetRecord().GetValue(), recs[i].Value) {
				return fmt.Errorf("record %s output %d has value %s, want %s", recs[i].Id, j, short(o.GetRecord().GetValue()), short(recs[i].Value))
			}
		}
	}
	return nil
}

func directiveOf(r *culvertv1.Record) string {
	for _, h := range r.Headers {
		if h.Name == convention.Header {
			return convention.Header + ": " + string(h.Value)
		}
	}
	return "no directive"
}

func checkZeroOutputs(t *T) error {
	recs := []*culvertv1.Record{
		directive("drop", []byte("gone"), "drop"),
		t.payload("kept", 0, []byte("kept")),
		directive("emit-0", []byte("gone too"), "emit=0"),
	}
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	res, err := t.roundTrip(p, 1, recs...)
	if err != nil {
		return err
	}
	for _, i := range []int{0, 2} {
		rr := res[i]
		if rr.GetFailure() != nil {
			return fmt.Errorf("record %s (%s) failed: %q, want no output and no failure", recs[i].Id, directiveOf(recs[i]), rr.GetFailure().GetMessage())
		}
		if n := len(rr.GetOutputs()); n != 0 {
			return fmt.Errorf("record %s (%s) has %d outputs, want none", recs[i].Id, directiveOf(recs[i]), n)
		}
	}
	return t.expect(res[1], recs[1])
}

func checkPipelining(t *T) error {
	h := hello()
	h.MaxInflightBatches = 4
	p, err := t.ready(h, startOpts{})
	if err != nil {
		return err
	}
	id := uint64(0)
	for round := range 5 {
		sent := map[uint64][]*culvertv1.Record{}
		for range 4 {
			id++
			var recs []*culvertv1.Record
			for i := range int(id%3) + 1 {
				recs = append(recs, t.payload(fmt.Sprintf("b%d-%d", id, i), int(id)+i, fmt.Appendf(nil, "batch %d record %d", id, i)))
			}
			sent[id] = recs
			if err := p.send(t.batchMsg(id, recs...)); err != nil {
				return err
			}
		}
		for want := id - 3; want <= id; want++ {
			res, err := t.result(p, want, len(sent[want]))
			if err != nil {
				return fmt.Errorf("round %d, 4 batches outstanding: %w", round+1, err)
			}
			for i, rr := range res {
				if err := t.expect(rr, sent[want][i]); err != nil {
					return fmt.Errorf("batch %d: %w", want, err)
				}
			}
		}
	}
	return nil
}

func keepAlive(nonce uint64) *culvertv1.HostMessage {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: nonce}}}
}

func (t *T) expectKeepAlive(p *proc, nonce uint64) error {
	m, err := p.recv(t.ctx, t.timeout())
	if err != nil {
		return fmt.Errorf("waiting for the echo of KeepAlive %d: %w", nonce, err)
	}
	ka := m.GetKeepAlive()
	if ka == nil {
		return fmt.Errorf("got %s, want the echo of KeepAlive{nonce %d}", describe(m), nonce)
	}
	if ka.GetNonce() != nonce {
		return fmt.Errorf("KeepAlive echoed with nonce %d, want %d", ka.GetNonce(), nonce)
	}
	return nil
}

func checkKeepAlive(t *T) error {
	h := hello()
	h.KeepAliveMs = 100
	h.MaxInflightBatches = 2
	p, err := t.ready(h, startOpts{})
	if err != nil {
		return err
	}
	// Idle pings, including nonces that need every varint byte.
	for _, n := range []uint64{0x5eed, 0, 1 << 63} {
		p.send(keepAlive(n))
		if err := t.expectKeepAlive(p, n); err != nil {
			return err
		}
	}
	// A ping between two batches is answered between their results.
	a, b := t.payload("before-ping", 0, []byte("a")), t.payload("after-ping", 1, []byte("b"))
	p.send(t.batchMsg(1, a))
	p.send(keepAlive(77))
	p.send(t.batchMsg(2, b))
	if _, err := t.result(p, 1, 1); err != nil {
		return fmt.Errorf("batch 1, KeepAlive 77, batch 2 sent together: %w", err)
	}
	if err := t.expectKeepAlive(p, 77); err != nil {
		return fmt.Errorf("batch 1, KeepAlive 77, batch 2 sent together: %w", err)
	}
	res, err := t.result(p, 2, 1)
	if err != nil {
		return fmt.Errorf("batch 1, KeepAlive 77, batch 2 sent together: %w", err)
	}
	return t.expect(res[0], b)
}

func checkNoUnsolicited(t *T) error {
	h := hello()
	h.KeepAliveMs = 50
	p, err := t.ready(h, startOpts{})
	if err != nil {
		return err
	}
	if err := p.quiet(t.ctx, 400*time.Millisecond); err != nil {
		return fmt.Errorf("idle after Ready: %w", err)
	}
	if err := t.answer(p, 1, t.payload("r1", 0, []byte("x"))); err != nil {
		return err
	}
	if err := p.quiet(t.ctx, 400*time.Millisecond); err != nil {
		return fmt.Errorf("idle after a BatchResult: %w", err)
	}
	return nil
}

func checkStdoutProtected(t *T) error {
	marker := fmt.Sprintf("conformance-marker-%d", time.Now().UnixNano())
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	in := directive("print", []byte("printed"), "stdout="+marker)
	next := t.payload("next", 0, []byte("next"))
	res, err := t.roundTrip(p, 1, in, next)
	if err != nil {
		return err
	}
	if err := checkEchoed(res[0], in); err != nil {
		return err
	}
	if err := t.expect(res[1], next); err != nil {
		return err
	}
	// A second batch shows that no stray bytes sit between frames.
	if err := t.answer(p, 2, t.payload("after", 1, []byte("after"))); err != nil {
		return fmt.Errorf("after printing: %w", err)
	}
	deadline := time.Now().Add(t.timeout())
	for !bytes.Contains(p.stderr.Bytes(), []byte(marker)) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the text printed to stdout (%q) did not reach stderr; does the function honour the conformance convention (SPEC.md appendix A)?", marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// slowReader hands out at most 1 KiB per read, after a pause.
type slowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s *slowReader) Read(b []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(b[:min(len(b), 1024)])
}

func checkSlowReader(t *T) error {
	h := hello()
	h.MaxInflightBatches = 3
	p, err := t.ready(h, startOpts{wrap: func(r io.Reader) io.Reader {
		return &slowReader{r: r, pause: 200 * time.Microsecond}
	}})
	if err != nil {
		return err
	}
	sent := map[uint64][]*culvertv1.Record{}
	answers := 0
	for id := uint64(1); id <= 3; id++ {
		if t.transform() {
			recs, err := t.fill(fmt.Sprintf("b%d", id), 1<<20, 384<<10)
			if err != nil {
				return err
			}
			for _, r := range recs {
				answers += t.answerSize(t.sampleOf[r.Id])
			}
			sent[id] = recs
			continue
		}
		for i := range 4 {
			sent[id] = append(sent[id], bigRecord(fmt.Sprintf("b%d-%d", id, i), 96<<10+i))
		}
	}
	if t.transform() && answers < 256<<10 {
		return &skipError{fmt.Sprintf("the answers to the samples come to %d bytes over three batches of up to 1 MiB each, too few to fill the pipe (256 KiB needed): give larger samples, or samples with larger answers", answers)}
	}
	for id := uint64(1); id <= 3; id++ {
		p.send(t.batchMsg(id, sent[id]...))
	}
	// Read nothing for a while: the function's writes block on a full pipe.
	time.Sleep(300 * time.Millisecond)
	for id := uint64(1); id <= 3; id++ {
		res, err := t.result(p, id, len(sent[id]))
		if err != nil {
			return err
		}
		for i, rr := range res {
			if err := t.expect(rr, sent[id][i]); err != nil {
				return fmt.Errorf("batch %d: %w", id, err)
			}
		}
	}
	return nil
}

// fillFrame sends one batch of samples that brings the Batch frame or the
// expected BatchResult frame, whichever is larger, to just under limit,
// and checks every answer.
func (t *T) fillFrame(p *proc, id uint64, limit int) error {
	recs, err := t.fill("fill", limit-4096, limit-4096)
	if err != nil {
		return err
	}
	in := proto.Size(t.batchMsg(id, recs...))
	if err := t.answer(p, id, recs...); err != nil {
		return fmt.Errorf("batch of %d samples in a %d-byte frame: %w", len(recs), in, err)
	}
	return nil
}

func checkShutdown(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	if err := t.answer(p, 1, t.payload("r1", 0, []byte("x"))); err != nil {
		return err
	}
	grace := t.timeout()
	p.send(&culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{
		DeadlineUnixMs: time.Now().Add(grace).UnixMilli(), Reason: "conformance test",
	}}})
	p.closeStdin()
	if err := p.expectEOF(t.ctx, grace); err != nil {
		return fmt.Errorf("after Shutdown: %w", err)
	}
	st, err := p.wait(grace)
	if err != nil {
		return fmt.Errorf("after Shutdown: %w", err)
	}
	if !st.Success() {
		return fmt.Errorf("after Shutdown the function exited with %s, want status 0%s", st, p.stderrNote())
	}
	return nil
}

func checkEOF(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	if err := t.answer(p, 1, t.payload("r1", 0, []byte("x"))); err != nil {
		return err
	}
	p.closeStdin()
	if err := p.expectEOF(t.ctx, t.timeout()); err != nil {
		return fmt.Errorf("after end of input: %w", err)
	}
	st, err := p.wait(t.timeout())
	if err != nil {
		return fmt.Errorf("after end of input: %w", err)
	}
	if !st.Success() {
		return fmt.Errorf("after end of input the function exited with %s, want status 0%s", st, p.stderrNote())
	}
	return nil
}

// expectExit checks that the function writes no frame and exits within the
// timeout, with any status.
func (t *T) expectExit(p *proc, what string) error {
	if err := p.expectEOF(t.ctx, t.timeout()); err != nil {
		return fmt.Errorf("after %s: %w", what, err)
	}
	if _, err := p.wait(t.timeout()); err != nil {
		return fmt.Errorf("after %s: %w", what, err)
	}
	return nil
}

func checkHostGarbage(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	if err := t.answer(p, 1, t.payload("r1", 0, []byte("x"))); err != nil {
		return err
	}
	// Text where a frame should start: "h" reads as a length of 104, and
	// "e" is not a frame tag. A valid batch follows, which a function that
	// skips bytes to resynchronise would answer.
	p.sendRaw([]byte("hello from a confused host\n"))
	p.send(t.batchMsg(2, t.payload("r2", 1, []byte("y"))))
	return t.expectRefusal(p, "bytes that are not a frame")
}

// expectRefusal checks what a function does after input it must refuse
// (what names it): it answers nothing more, and once stdin closes it exits
// with a failure status.
func (t *T) expectRefusal(p *proc, what string) error {
	if err := p.quiet(t.ctx, 500*time.Millisecond); err != nil && !strings.Contains(err.Error(), "closed stdout") {
		return fmt.Errorf("after %s: %w", what, err)
	}
	p.closeStdin()
	if err := t.expectExit(p, what); err != nil {
		return err
	}
	if p.state.Success() {
		return fmt.Errorf("after %s the function exited with status 0, want a failure status%s", what, p.stderrNote())
	}
	return nil
}

func checkTruncatedFrame(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	b, err := framing.Append(nil, t.batchMsg(1, rec("r1", []byte("cut short"))), 0)
	if err != nil {
		return err
	}
	p.sendRaw(b[:len(b)/2])
	p.closeStdin()
	return t.expectExit(p, "end of input inside a frame")
}

func checkFrameLimitEnforced(t *T) error {
	h := hello()
	h.MaxFrameBytes = 64 << 10
	p, err := t.ready(h, startOpts{})
	if err != nil {
		return err
	}
	if err := t.answer(p, 1, t.payload("small", 0, []byte("fits"))); err != nil {
		return err
	}
	p.send(t.batchMsg(2, bigRecord("too-big", 100<<10)))
	return t.expectRefusal(p, "a frame over max_frame_bytes")
}

func checkLengthEncoding(t *T) error {
	p, err := t.ready(nil, startOpts{})
	if err != nil {
		return err
	}
	for i, width := range []int{2, 5} {
		id := uint64(i + 1)
		in := t.payload(fmt.Sprintf("len-%d-bytes", width), i, []byte("padded length"))
		body, err := proto.Marshal(t.batchMsg(id, in))
		if err != nil {
			return err
		}
		// The length in width bytes: low groups with the continuation bit,
		// then zero groups, the last without it.
		var frame []byte
		n := len(body)
		for i := range width {
			c := byte(n & 0x7f)
			n >>= 7
			if i < width-1 {
				c |= 0x80
			}
			frame = append(frame, c)
		}
		p.sendRaw(append(frame, body...))
		res, err := t.result(p, id, 1)
		if err != nil {
			return fmt.Errorf("frame length as a %d-byte varint (% x): %w", width, frame, err)
		}
		if err := t.expect(res[0], in); err != nil {
			return err
		}
	}
	return nil
}
