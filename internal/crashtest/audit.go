package crashtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Input is one record the test put on the source.
type Input struct {
	Key  string // the record key, e.g. k7
	N    int    // its place among the records of its key: 0, 1, 2, ...
	Part string // partition or shard
	Off  int64  // offset in Part (for Kinesis: the index of the record in its shard)
}

// Output is one record read back from the output stream, in stored order.
type Output struct {
	Src string // id of the input it came from (the output id up to "/")
	Key string
	N   int
}

// Window is a crash's re-processing window on one partition: at the kill,
// the committed position was From (the first offset not committed), so the
// restarted process (or the partition's next owner) may deliver again
// every record at From or later.
type Window struct {
	Kill int
	Part string
	From int64
}

// Kill is what a test recorded at one kill: the committed positions, and
// how many outputs were stored at that moment.
type Kill struct {
	Windows []Window
	Stored  int // outputs in the output stream when the process was dead
}

// Report is the result of Audit.
type Report struct {
	Records    int // inputs
	Kills      int
	Outputs    int
	Lost       int      // inputs without an output
	Duplicates int      // outputs beyond the first of an input
	Exposed    int      // bound on duplicates: outputs stored at a kill whose input was at or after its partition's committed position
	Stray      int      // duplicates of inputs before every kill's committed position: must be 0
	Violations int      // per-key order violations outside any crash window
	Late       int      // first outputs after a later record of their key, within a crash window
	Unknown    int      // outputs naming no input
	Examples   []string // the first order violations, for the failure message
}

func (r Report) String() string {
	return fmt.Sprintf("records %d, kills %d, outputs %d, lost %d, duplicates %d (bound %d, outside a crash window %d), order violations %d, late within a crash window %d, unknown %d",
		r.Records, r.Kills, r.Outputs, r.Lost, r.Duplicates, r.Exposed, r.Stray, r.Violations, r.Late, r.Unknown)
}

// Audit accounts for every input in outs.
//
// Order: for each key, take the outputs in stored order, keep only the
// first output of each input, and the N of those must increase. A record
// whose first output comes after a later record of its key is a violation
// unless it lies in a crash window (offset at or after its partition's
// committed position at some kill): such a record was handed to the dead
// process, and the one that redelivers it may do so after later records
// already came out; it is counted as Late. A redelivery never starts before
// the committed position: every duplicate must lie in a crash window.
func Audit(ins map[string]Input, outs []Output, kills []Kill) Report {
	r := Report{Records: len(ins), Kills: len(kills), Outputs: len(outs)}
	inWindow := func(in Input) bool {
		for _, k := range kills {
			for _, w := range k.Windows {
				if w.Part == in.Part && in.Off >= w.From {
					return true
				}
			}
		}
		return false
	}
	// Exposed: for each kill, distinct inputs with an output stored by then
	// that lie at or after the committed position of that kill.
	for _, k := range kills {
		from := map[string]int64{}
		for _, w := range k.Windows {
			from[w.Part] = w.From
		}
		seen := map[string]bool{}
		for _, o := range outs[:min(k.Stored, len(outs))] {
			in, ok := ins[o.Src]
			if !ok || seen[o.Src] {
				continue
			}
			seen[o.Src] = true
			if f, ok := from[in.Part]; ok && in.Off >= f {
				r.Exposed++
			}
		}
	}
	count := map[string]int{}
	last := map[string]int{}
	for _, o := range outs {
		in, ok := ins[o.Src]
		if !ok {
			r.Unknown++
			continue
		}
		count[o.Src]++
		if count[o.Src] > 1 {
			r.Duplicates++
			if !inWindow(in) {
				r.Stray++
			}
			continue
		}
		if p, ok := last[in.Key]; ok && in.N <= p {
			if inWindow(in) {
				r.Late++
				continue
			}
			r.Violations++
			if len(r.Examples) < 5 {
				r.Examples = append(r.Examples, fmt.Sprintf("key %s: record %d (%s) came after record %d", in.Key, in.N, o.Src, p))
			}
			continue
		}
		last[in.Key] = in.N
	}
	for id := range ins {
		if count[id] == 0 {
			r.Lost++
		}
	}
	return r
}

// Check fails the test unless the report shows no loss, no stray
// duplicates, duplicates within the bound, and no order violations.
func (r Report) Check(t testing.TB) {
	t.Helper()
	if r.Lost != 0 {
		t.Errorf("%d of %d records lost", r.Lost, r.Records)
	}
	if r.Stray != 0 {
		t.Errorf("%d duplicates of records before the committed position of every kill", r.Stray)
	}
	if r.Duplicates > r.Exposed {
		t.Errorf("%d duplicates, more than the %d records exposed at the kills", r.Duplicates, r.Exposed)
	}
	if r.Violations != 0 {
		t.Errorf("%d per-key order violations outside crash windows, e.g. %v", r.Violations, r.Examples)
	}
	if r.Unknown != 0 {
		t.Errorf("%d outputs name no input", r.Unknown)
	}
}

// OutStream is the JetStream stream the crash pipelines write to, on a NATS
// server that outlives culvert. It keeps repeats (a 100ms duplicate
// window), so re-processing is seen and counted.
type OutStream struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	nc     *nats.Conn
}

// NewOutStream creates stream name for subjects on the server at url.
func NewOutStream(ctx context.Context, t testing.TB, url, name string, subjects ...string) *OutStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: subjects, Duplicates: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &OutStream{js: js, stream: s, nc: nc}
}

// Stored is the number of messages in the stream.
func (o *OutStream) Stored(ctx context.Context) int {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return 0
	}
	return int(info.State.Msgs)
}

// Read reads every output back in stored order. Values are "<key> <n>..."
// (what the crash pipelines' functions leave of an input "<key> <n>").
func (o *OutStream) Read(ctx context.Context, t testing.TB) []Output {
	t.Helper()
	recs := o.Records(ctx, t)
	outs := make([]Output, 0, len(recs))
	for _, rec := range recs {
		src, _, _ := strings.Cut(rec.Id, "/")
		o := Output{Src: src}
		if _, err := fmt.Sscanf(string(rec.Value), "%s %d", &o.Key, &o.N); err != nil {
			t.Fatalf("output %q of %s: %v", rec.Value, rec.Id, err)
		}
		outs = append(outs, o)
	}
	return outs
}

// Records reads every record of the stream back in stored order.
func (o *OutStream) Records(ctx context.Context, t testing.TB) []*culvertv1.Record {
	t.Helper()
	total := o.Stored(ctx)
	cc, err := o.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	it, err := cc.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	recs := make([]*culvertv1.Record, 0, total)
	for range total {
		m, err := it.Next()
		if err != nil {
			t.Fatalf("reading outputs: %v", err)
		}
		rec := new(culvertv1.Record)
		if err := proto.Unmarshal(m.Data(), rec); err != nil {
			t.Fatalf("output %d: %v", len(recs), err)
		}
		recs = append(recs, rec)
	}
	return recs
}
