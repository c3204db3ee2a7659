// Command broken is a framed-mode function written straight from
// proto/SPEC.md, without the SDK, that can break any one rule of the
// conformance kit on purpose. With no defect it passes every rule,
// honouring the conformance convention (SPEC.md appendix A); with a defect
// switched on, the kit's rule of the same name fails. The tests of
// proto/conformance use it to show that every rule can fail.
//
// Defects are named after the rules they break and are chosen with
// --break=a,b or the environment variable CULVERT_BREAK=a,b:
//
//	handshake               answers Hello with Ready{version 0}
//	version-negotiation     chooses the highest version offered, spoken or not
//	version-refusal         answers Ready{version 1} even when 1 is not offered
//	capabilities            claims the capability "log-frames", never offered
//	unknown-fields          exits when a message carries a field it does not know
//	unchanged               answers echoes with Output.unchanged when offered, without accepting it
//	batch-result            answers the records of a batch in reverse order
//	empty-batch             answers a batch with no records with one result
//	binary-values           treats values as C strings of UTF-8: cut at NUL, invalid bytes replaced
//	frame-limit             refuses frames over 1 MiB
//	frame-limit-negotiated  ignores Hello.max_frame_bytes
//	frame-limit-enforced    accepts frames over Hello.max_frame_bytes when it lowers the limit
//	length-encoding         refuses frame lengths in a non-minimal varint
//	headers                 keeps only the first header of each name
//	partial-failure         one failing record fails its whole batch
//	multiple-outputs        emits one output where asked for several
//	zero-outputs            emits an empty record where asked for none
//	pipelining              answers queued batches newest first
//	keep-alive              echoes keep-alives with the nonce plus one
//	no-unsolicited-frames   sends its own KeepAlive after 100 ms idle
//	stdout-protected        writes frames to fd 1 and leaves fd 1 to everyone
//	slow-reader             writes frames on a non-blocking stdout, once, dropping short writes
//	host-garbage            keeps running after bytes that are not a frame
//	truncated-frame         keeps running after end of input inside a frame
//	shutdown                exits 3 on Shutdown
//	eof                     keeps running at end of input
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/culvert-dev/culvert/proto/conformance/convention"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

// defects lists what --break accepts.
var defects = []string{
	"handshake", "version-negotiation", "version-refusal", "capabilities", "unknown-fields", "unchanged",
	"batch-result", "empty-batch", "binary-values", "frame-limit", "frame-limit-negotiated",
	"frame-limit-enforced", "length-encoding", "headers", "partial-failure", "multiple-outputs", "zero-outputs", "pipelining",
	"keep-alive", "no-unsolicited-frames", "stdout-protected", "slow-reader", "host-garbage",
	"truncated-frame", "shutdown", "eof",
}

func main() {
	spec := flag.String("break", os.Getenv("CULVERT_BREAK"), "comma-separated defects to switch on: "+strings.Join(defects, ", "))
	flag.Parse()
	f := &function{broken: map[string]bool{}}
	for _, d := range strings.Split(*spec, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if !slices.Contains(defects, d) {
			fmt.Fprintf(os.Stderr, "broken: unknown defect %q; known: %s\n", d, strings.Join(defects, ", "))
			os.Exit(2)
		}
		f.broken[d] = true
	}
	in, out, err := openStdio(f.broken["stdout-protected"], f.broken["slow-reader"])
	if err != nil {
		fmt.Fprintln(os.Stderr, "broken:", err)
		os.Exit(1)
	}
	f.out = out
	code := f.serve(in)
	os.Exit(code)
}

type function struct {
	broken map[string]bool
	out    frameWriter
	w      *framing.Writer
	// unchangedOffered: Hello offered the "unchanged" capability.
	unchangedOffered bool
}

// frameWriter is where frames go: a private descriptor, or (broken) fd 1.
type frameWriter interface{ Write([]byte) (int, error) }

type inbound struct {
	body []byte
	err  error
}

func (f *function) serve(in io.Reader) int {
	maxFrame := framing.DefaultMaxFrame
	if f.broken["frame-limit"] {
		maxFrame = 1 << 20
	}
	if f.broken["length-encoding"] {
		in = &minimalLengths{r: in}
	}
	r := framing.NewReader(in, maxFrame)
	f.w = framing.NewWriter(f.out, 64<<20)
	// Frames are read by their own goroutine so that the pipelining defect
	// can see what is queued. Each body is copied: the reader reuses its
	// buffer.
	frames := make(chan inbound, 16)
	next := make(chan int) // the new frame limit, after Hello
	go func() {
		for {
			b, err := r.Next()
			frames <- inbound{bytes.Clone(b), err}
			if err != nil {
				return
			}
			if n, ok := <-next; ok && n > 0 {
				r.SetMax(n)
			}
		}
	}()
	first := true
	var idle <-chan time.Time
	for {
		if f.broken["no-unsolicited-frames"] {
			idle = time.After(100 * time.Millisecond)
		}
		var fr inbound
		select {
		case fr = <-frames:
		case <-idle:
			f.write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{}}})
			continue
		}
		if errors.Is(fr.err, io.EOF) {
			if f.broken["eof"] {
				time.Sleep(time.Hour) // ignore the end of input
			}
			return 0
		}
		if fr.err != nil {
			var v *framing.ViolationError
			if errors.As(fr.err, &v) && f.broken["host-garbage"] || errors.Is(fr.err, io.ErrUnexpectedEOF) && f.broken["truncated-frame"] {
				time.Sleep(time.Hour) // wait for frames that will never make sense
			}
			fmt.Fprintln(os.Stderr, "broken: reading frames:", fr.err)
			return 1
		}
		var m culvertv1.HostMessage
		if err := proto.Unmarshal(fr.body, &m); err != nil {
			fmt.Fprintln(os.Stderr, "broken: undecodable frame:", err)
			return 1
		}
		if f.broken["unknown-fields"] && hasUnknown(&m) {
			fmt.Fprintln(os.Stderr, "broken: a message has fields this function does not know")
			return 1
		}
		if first {
			first = false
			h := m.GetHello()
			if h == nil {
				fmt.Fprintln(os.Stderr, "broken: first frame is not Hello")
				return 1
			}
			n := int(h.GetMaxFrameBytes())
			if f.broken["frame-limit-negotiated"] || f.broken["frame-limit"] {
				n = 0
			}
			if f.broken["frame-limit-enforced"] && n < framing.DefaultMaxFrame {
				n = 0
			}
			if !f.handshake(h) {
				close(next)
				return 1
			}
			next <- n
			continue
		}
		next <- 0
		switch x := m.Msg.(type) {
		case *culvertv1.HostMessage_Batch:
			batches := []*culvertv1.Batch{x.Batch}
			if f.broken["pipelining"] {
				batches = f.queued(batches, frames, next)
			}
			for _, b := range batches {
				f.batch(b)
			}
		case *culvertv1.HostMessage_KeepAlive:
			n := x.KeepAlive.GetNonce()
			if f.broken["keep-alive"] {
				n++
			}
			f.write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_KeepAlive{KeepAlive: &culvertv1.KeepAlive{Nonce: n}}})
		case *culvertv1.HostMessage_Shutdown:
			if f.broken["shutdown"] {
				return 3
			}
			return 0
		default:
			fmt.Fprintln(os.Stderr, "broken: unexpected frame")
			return 1
		}
	}
}

// queued collects the batches already waiting behind the first, newest
// first: the pipelining defect.
func (f *function) queued(batches []*culvertv1.Batch, frames chan inbound, next chan int) []*culvertv1.Batch {
	for {
		select {
		case fr := <-frames:
			var m culvertv1.HostMessage
			if fr.err != nil || proto.Unmarshal(fr.body, &m) != nil || m.GetBatch() == nil {
				frames <- fr // not a batch: leave it (order no longer matters here)
				slices.Reverse(batches)
				return batches
			}
			next <- 0
			batches = append(batches, m.GetBatch())
		case <-time.After(50 * time.Millisecond):
			slices.Reverse(batches)
			return batches
		}
	}
}

func hasUnknown(m proto.Message) bool {
	found := false
	var walk func(m proto.Message)
	walk = func(m proto.Message) {
		r := m.ProtoReflect()
		if len(r.GetUnknown()) > 0 {
			found = true
		}
		switch x := m.(type) {
		case *culvertv1.HostMessage:
			if h := x.GetHello(); h != nil {
				walk(h)
			}
			if b := x.GetBatch(); b != nil {
				walk(b)
			}
		case *culvertv1.Batch:
			for _, rec := range x.GetRecords() {
				walk(rec)
			}
		}
	}
	walk(m)
	return found
}

func (f *function) handshake(h *culvertv1.Hello) bool {
	ready := &culvertv1.Ready{Version: 1, Agent: "broken/1 (" + strings.Join(keys(f.broken), ",") + ")"}
	switch {
	case f.broken["handshake"]:
		ready.Version = 0
	case f.broken["version-negotiation"]:
		ready.Version = slices.Max(h.GetVersions())
	case f.broken["version-refusal"]:
	case !slices.Contains(h.GetVersions(), 1):
		msg := fmt.Sprintf("unsupported protocol versions %v: broken speaks [1]", h.GetVersions())
		f.write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_InitError{InitError: &culvertv1.InitError{Message: msg}}})
		fmt.Fprintln(os.Stderr, "broken:", msg)
		return false
	}
	if f.broken["capabilities"] {
		ready.Capabilities = []string{"log-frames"}
	}
	f.unchangedOffered = slices.Contains(h.GetCapabilities(), "unchanged")
	f.write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: ready}})
	return true
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func (f *function) batch(b *culvertv1.Batch) {
	res := &culvertv1.BatchResult{BatchId: b.GetId()}
	failAll := false
	for _, rec := range b.GetRecords() {
		rr := f.record(rec)
		if rr.Failure != nil && f.broken["partial-failure"] {
			failAll = true
		}
		res.Results = append(res.Results, rr)
	}
	if failAll {
		for i := range res.Results {
			res.Results[i] = &culvertv1.RecordResult{Failure: &culvertv1.Failure{Message: "a record of this batch failed"}}
		}
	}
	if f.broken["batch-result"] {
		slices.Reverse(res.Results)
	}
	if f.broken["empty-batch"] && len(b.GetRecords()) == 0 {
		res.Results = append(res.Results, &culvertv1.RecordResult{})
	}
	f.write(&culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: res}})
}

func (f *function) record(rec *culvertv1.Record) *culvertv1.RecordResult {
	d, err := convention.Of(rec)
	if err != nil || !convention.Enabled() {
		d = convention.Directive{Kind: convention.Echo}
	}
	out := rec
	if f.broken["binary-values"] {
		v := rec.GetValue()
		if i := bytes.IndexByte(v, 0); i >= 0 {
			v = v[:i]
		}
		out.Value = bytes.ToValidUTF8(v, []byte("\uFFFD"))
	}
	if f.broken["headers"] {
		seen := map[string]bool{}
		out.Headers = slices.DeleteFunc(out.Headers, func(h *culvertv1.Header) bool {
			dup := seen[h.GetName()]
			seen[h.GetName()] = true
			return dup
		})
	}
	one := []*culvertv1.Output{{Record: out}}
	if f.broken["unchanged"] && f.unchangedOffered {
		one = []*culvertv1.Output{{Unchanged: true}} // never accepted in Ready
	}
	switch d.Kind {
	case convention.Fail, convention.Retry:
		return &culvertv1.RecordResult{Failure: &culvertv1.Failure{Message: "failure requested by the culvert-conformance header", Retryable: d.Kind == convention.Retry}}
	case convention.Drop:
		if f.broken["zero-outputs"] {
			return &culvertv1.RecordResult{Outputs: []*culvertv1.Output{{}}}
		}
		return &culvertv1.RecordResult{}
	case convention.Emit:
		n := d.N
		if f.broken["multiple-outputs"] && n > 1 {
			n = 1
		}
		if n == 0 && f.broken["zero-outputs"] {
			return &culvertv1.RecordResult{Outputs: []*culvertv1.Output{{}}}
		}
		outs := make([]*culvertv1.Output, n)
		for i := range outs {
			outs[i] = &culvertv1.Output{Record: out}
		}
		return &culvertv1.RecordResult{Outputs: outs}
	case convention.Stdout:
		fmt.Println(d.Text) // os.Stdout: stderr unless stdout-protected is broken
	}
	return &culvertv1.RecordResult{Outputs: one}
}

func (f *function) write(m *culvertv1.FunctionMessage) {
	if err := f.w.Write(m); err != nil {
		fmt.Fprintln(os.Stderr, "broken: writing a frame:", err)
		os.Exit(1)
	}
}

// minimalLengths passes a stream of frames through, failing at a frame
// length written in more varint bytes than needed: the length-encoding
// defect, as a reader that insists on minimal encodings would behave.
type minimalLengths struct {
	r    io.Reader
	body int    // body bytes left in the current frame
	len  []byte // length bytes read so far
}

func (m *minimalLengths) Read(b []byte) (int, error) {
	n, err := m.r.Read(b)
	for _, c := range b[:n] {
		if m.body > 0 {
			m.body--
			continue
		}
		m.len = append(m.len, c)
		if c >= 0x80 {
			continue
		}
		if len(m.len) > 1 && c == 0 {
			return 0, errors.New("broken: frame length is not a minimal varint")
		}
		v := 0
		for i, x := range m.len {
			v |= int(x&0x7f) << (7 * i)
		}
		m.body, m.len = v, m.len[:0]
	}
	return n, err
}
