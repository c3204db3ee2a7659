package culvert_test

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The worked examples of proto/SPEC.md are generated here from the Go code
// and the framing package, and checked against the document, so that the
// spec cannot drift from the code. After a deliberate change, rewrite them
// with:
//
//	go test ./sdk/go -run TestSpec -update
var update = flag.Bool("update", false, "rewrite the dumps in proto/SPEC.md")

const specPath = "../../proto/SPEC.md"

// specFrames are the frames of SPEC.md's worked examples, by marker name.
func specFrames() []struct {
	name string
	msg  proto.Message
} {
	hello := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{
		Versions: []uint32{1}, MaxFrameBytes: 4194304, MaxBatchRecords: 100, MaxInflightBatches: 2, KeepAliveMs: 0,
		Context: &culvertv1.InitContext{Pipeline: "quickstart", Function: "enrich", Instance: 0, Instances: 1, Route: "orders"},
	}}}
	ready := &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Ready{Ready: &culvertv1.Ready{Version: 1, Agent: "example/1"}}}
	batch := &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: &culvertv1.Batch{
		Id: 1, DeadlineUnixMs: 1767225600000, Attempt: 1,
		Records: []*culvertv1.Record{{
			Id: "js:ORDERS:1", Key: []byte("k1"), Value: []byte(`{"n":1}`), ContentType: "application/json",
			Headers: []*culvertv1.Header{{Name: "type", Value: []byte("created")}},
		}},
	}}}
	result := &culvertv1.FunctionMessage{Msg: &culvertv1.FunctionMessage_Result{Result: &culvertv1.BatchResult{
		BatchId: 1,
		Results: []*culvertv1.RecordResult{{Outputs: []*culvertv1.Output{{Record: &culvertv1.Record{Value: []byte(`{"n":1,"ok":true}`)}, Output: ""}}}},
	}}}
	return []struct {
		name string
		msg  proto.Message
	}{{"hello", hello}, {"ready", ready}, {"batch", batch}, {"result", result}}
}

func TestSpecDumps(t *testing.T) {
	raw, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	for _, f := range specFrames() {
		frame, err := framing.Append(nil, f.msg, 0)
		if err != nil {
			t.Fatal(err)
		}
		body := dump(frame, f.msg.ProtoReflect().Descriptor())
		want := "```text\n" + body + "```\n"
		begin, end := "<!-- BEGIN dump:"+f.name+" -->\n", "<!-- END dump:"+f.name+" -->"
		i, j := strings.Index(doc, begin), strings.Index(doc, end)
		if i < 0 || j < i {
			t.Fatalf("SPEC.md has no %q ... %q block", strings.TrimSpace(begin), end)
		}
		i += len(begin)
		if got := doc[i:j]; got != want {
			if *update {
				doc = doc[:i] + want + doc[j:]
				continue
			}
			t.Errorf("SPEC.md dump %q is out of date; run go test ./sdk/go -run TestSpec -update\ngot:\n%s\nwant:\n%s", f.name, got, want)
		}
		// The bytes a reader would copy from the document decode back.
		var b []byte
		for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n")[2:] {
			for _, h := range strings.Fields(strings.Split(line, "|")[1]) {
				v, err := strconv.ParseUint(h, 16, 8)
				if err != nil {
					t.Fatalf("dump %q: bad hex %q", f.name, h)
				}
				b = append(b, byte(v))
			}
		}
		if string(b) != string(frame) {
			t.Errorf("dump %q: its hex column is not the frame", f.name)
		}
	}
	if *update && doc != string(raw) {
		if err := os.WriteFile(specPath, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSpecCoversProto checks that SPEC.md has a section "#### `Message`" for
// every message of culvert.v1 with a table row "| `field` |" for each of its
// fields.
func TestSpecCoversProto(t *testing.T) {
	raw, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	heading := regexp.MustCompile("(?m)^#{2,4} ")
	files := []protoreflect.FileDescriptor{culvertv1.File_culvert_v1_record_proto, culvertv1.File_culvert_v1_function_proto}
	for _, fd := range files {
		for i := range fd.Messages().Len() {
			md := fd.Messages().Get(i)
			h := "#### `" + string(md.Name()) + "`"
			k := strings.Index(doc, h+"\n")
			if k < 0 {
				t.Errorf("SPEC.md has no section %q", h)
				continue
			}
			section := doc[k+len(h):]
			if loc := heading.FindStringIndex(section); loc != nil {
				section = section[:loc[0]]
			}
			for j := range md.Fields().Len() {
				f := md.Fields().Get(j)
				row := fmt.Sprintf("| `%s` | %d |", f.Name(), f.Number())
				if !strings.Contains(section, row) {
					t.Errorf("SPEC.md section %s has no row starting %q", h, row)
				}
			}
		}
	}
}

// dump annotates a frame byte by byte: offset (decimal), hex, meaning.
func dump(frame []byte, md protoreflect.MessageDescriptor) string {
	d := &dumper{}
	n, l := protowire.ConsumeVarint(frame)
	d.line(0, frame[:l], 0, fmt.Sprintf("frame length = %d: the body follows", n))
	d.message(frame[l:], l, md, 0)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%4s | %-*s | %s\n", "off", hexWidth, "hex", "meaning")
	fmt.Fprintf(&sb, "%s-|-%s-|-%s\n", strings.Repeat("-", 4), strings.Repeat("-", hexWidth), strings.Repeat("-", 40))
	for _, l := range d.lines {
		sb.WriteString(strings.TrimRight(l, " "))
		sb.WriteByte('\n')
	}
	return sb.String()
}

const (
	chunk    = 10 // bytes of string data per line
	hexWidth = 3*chunk - 1
)

type dumper struct{ lines []string }

func (d *dumper) line(off int, b []byte, depth int, text string) {
	hex := make([]string, len(b))
	for i, c := range b {
		hex[i] = fmt.Sprintf("%02x", c)
	}
	d.lines = append(d.lines, fmt.Sprintf("%4d | %-*s | %s%s", off, hexWidth, strings.Join(hex, " "), strings.Repeat("  ", depth), text))
}

// message annotates the fields of b, a message of type md at offset base.
func (d *dumper) message(b []byte, base int, md protoreflect.MessageDescriptor, depth int) {
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		fd := md.Fields().ByNumber(num)
		name := fmt.Sprintf("%s.%s (field %d", md.Name(), fd.Name(), num)
		switch typ {
		case protowire.VarintType:
			v, vl := protowire.ConsumeVarint(b[off+tl:])
			d.line(base+off, b[off:off+tl+vl], depth, fmt.Sprintf("%s, varint) = %s", name, scalar(fd, v)))
			off += tl + vl
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b[off+tl:])
			head := b[off : off+tl+n-len(v)]
			data := off + len(head)
			switch {
			case fd.Kind() == protoreflect.MessageKind:
				d.line(base+off, head, depth, fmt.Sprintf("%s, LEN) = %s of %d bytes:", name, fd.Message().Name(), len(v)))
				d.message(v, base+data, fd.Message(), depth+1)
			case fd.IsList(): // packed varints
				var vals []string
				for p := v; len(p) > 0; {
					x, l := protowire.ConsumeVarint(p)
					vals = append(vals, scalar(fd, x))
					p = p[l:]
				}
				d.line(base+off, b[off:data+len(v)], depth, fmt.Sprintf("%s, LEN, packed) = [%s]", name, strings.Join(vals, ", ")))
			case len(head)+len(v) <= chunk:
				d.line(base+off, b[off:data+len(v)], depth, fmt.Sprintf("%s, LEN) = %s", name, text(v)))
			default:
				d.line(base+off, head, depth, fmt.Sprintf("%s, LEN) = %d bytes:", name, len(v)))
				for p := 0; p < len(v); p += chunk {
					c := v[p:min(p+chunk, len(v))]
					d.line(base+data+p, c, depth+1, text(c))
				}
			}
			off = data + len(v)
		default:
			panic(fmt.Sprintf("wire type %d not handled", typ))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, v uint64) string {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.FormatBool(v != 0)
	case protoreflect.Int64Kind:
		s := strconv.FormatInt(int64(v), 10)
		if strings.HasSuffix(string(fd.Name()), "_unix_ms") {
			s += " (" + time.UnixMilli(int64(v)).UTC().Format(time.RFC3339) + ")"
		}
		return s
	default:
		return strconv.FormatUint(v, 10)
	}
}

// text renders bytes: printable ASCII between single quotes, else Go-quoted.
func text(b []byte) string {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return strconv.Quote(string(b))
		}
	}
	return "'" + string(b) + "'"
}

// TestSpecRecordSize checks the sizes SPEC.md section 16.1 gives for a
// record of the sizes it names: measured with proto.Size for protobuf, and
// computed by the Cap'n Proto layout rules the section states.
func TestSpecRecordSize(t *testing.T) {
	raw, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(string(raw)), " ")
	re := regexp.MustCompile("A `Record` with an (\\d+)-byte id, a (\\d+)-byte key, a (\\d+)-byte value, a (\\d+)-byte content type " +
		"and one header \\(a (\\d+)-byte name, a (\\d+)-byte value\\) is (\\d+) bytes in protobuf .*? In Cap'n Proto it is about (\\d+) bytes unpacked")
	m := re.FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("SPEC.md section 16.1 no longer states the record size as %s", re)
	}
	n := make([]int, len(m)-1)
	for i := range n {
		n[i], _ = strconv.Atoi(m[i+1])
	}
	id, key, value, ct, hname, hvalue, pb, capnp := n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]
	rec := &culvertv1.Record{
		Id: strings.Repeat("i", id), Key: []byte(strings.Repeat("k", key)), Value: []byte(strings.Repeat("v", value)),
		ContentType: strings.Repeat("c", ct),
		Headers:     []*culvertv1.Header{{Name: strings.Repeat("n", hname), Value: []byte(strings.Repeat("h", hvalue))}},
	}
	if got := proto.Size(rec); got != pb {
		t.Errorf("SPEC.md says %d bytes in protobuf; proto.Size is %d", pb, got)
	}
	words := func(b int) int { return (b + 7) / 8 * 8 }
	// Segment table and root pointer, seven pointers, the padded fields
	// (texts with their NUL), and the header list: tag word, a struct of
	// two pointers, its name (text) and value (data).
	layout := 8 + 8 + 7*8 + words(id+1) + words(key) + words(value) + words(ct+1) + 8 + 2*8 + words(hname+1) + words(hvalue)
	if layout != capnp {
		t.Errorf("SPEC.md says about %d bytes in Cap'n Proto; its layout rules give %d", capnp, layout)
	}
}
