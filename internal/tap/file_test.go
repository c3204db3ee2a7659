package tap

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func sample() []*culvertv1.Record {
	return []*culvertv1.Record{
		{
			Id: "kafka:orders:2:7", Key: []byte{0, 1, 0xff}, Value: []byte(`{"n":1}`), ContentType: "application/json",
			Headers:   []*culvertv1.Header{{Name: "b", Value: []byte("1")}, {Name: "a", Value: []byte("2")}, {Name: "b", Value: []byte("3")}},
			EventTime: &timestamppb.Timestamp{Seconds: 1795695230, Nanos: 829425432},
			Source:    &culvertv1.Position{Connector: "kafka", Stream: "orders", Subject: "orders", Partition: "2", Offset: 7},
		},
		{Id: "kinesis:s:shardId-000000000001:4960", Value: []byte("plain"), Source: &culvertv1.Position{Connector: "kinesis", Stream: "s", Partition: "shardId-000000000001", Sequence: "49600000000000000000000000000000000000000000000000000001"}},
		{},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct{ name, file, format string }{
		{"delimited", "cap.tap", ""},
		{"ndjson by extension", "cap.ndjson", ""},
		{"ndjson by flag", "cap.bin", FormatNDJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tc.file)
			if err := WriteFile(path, tc.format, sample()); err != nil {
				t.Fatal(err)
			}
			got, err := ReadFile(path, tc.format)
			if err != nil {
				t.Fatal(err)
			}
			want := sample()
			if len(got) != len(want) {
				t.Fatalf("%d records, want %d", len(got), len(want))
			}
			for i := range want {
				if !proto.Equal(got[i], want[i]) {
					t.Errorf("record %d: got %v\nwant %v", i, got[i], want[i])
				}
			}
		})
	}
}

func TestDetectFormat(t *testing.T) {
	var b bytes.Buffer
	w, _ := NewWriter(&b, FormatNDJSON)
	w.Write(sample()[1])
	w.Flush()
	if strings.Count(b.String(), "\n") != 1 || strings.Contains(b.String(), " ") {
		t.Errorf("ndjson line not compact: %q", b.String())
	}
	r, err := NewReader(bytes.NewReader(b.Bytes()), "x", "")
	if err != nil || r.Format() != FormatNDJSON {
		t.Fatalf("detected %v %v", r, err)
	}
}

func TestBadFiles(t *testing.T) {
	var good bytes.Buffer
	w, _ := NewWriter(&good, "")
	for _, r := range sample() {
		w.Write(r)
	}
	w.Flush()
	for _, tc := range []struct {
		name, format string
		data         []byte
		n            int // records read before the error
		want         string
	}{
		{"truncated", FormatDelimited, good.Bytes()[:good.Len()-5], 1, "x: record 2: truncated"},
		{"oversized length", FormatDelimited, []byte{0xff, 0xff, 0xff, 0xff, 0x7f}, 0, "x: record 1:"},
		{"ndjson not a record", FormatNDJSON, []byte("{\"id\":\"a\"}\n\n{\"temperature\":1}\n"), 1, "x: line 3: not a culvert.v1.Record"},
		{"ndjson text", FormatNDJSON, []byte("hello\n"), 0, "x: line 1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(tc.data), "x", tc.format)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for {
				_, err = r.Next()
				if err != nil {
					break
				}
				n++
			}
			if errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tc.want) || n != tc.n {
				t.Errorf("after %d records: %v; want %d records then %q", n, err, tc.n, tc.want)
			}
		})
	}
	if _, err := CheckFormat("csv"); err == nil {
		t.Error("csv accepted")
	}
}

// FuzzReader feeds arbitrary bytes to the reader in both formats: it must
// end with io.EOF or an error naming the file, never panic or loop, and
// every record it returns must survive a write and a second read.
func FuzzReader(f *testing.F) {
	var b bytes.Buffer
	w, _ := NewWriter(&b, "")
	for _, r := range sample() {
		w.Write(r)
	}
	w.Flush()
	f.Add(b.Bytes())
	f.Add([]byte("{\"id\":\"x\",\"value\":\"aGk=\"}\n"))
	f.Add([]byte{0x05, 0x0a, 0x01, 'a'})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []string{"", FormatDelimited, FormatNDJSON} {
			r, err := NewReader(bytes.NewReader(data), "fuzz", format)
			if err != nil {
				t.Fatal(err)
			}
			var recs []*culvertv1.Record
			for i := 0; ; i++ {
				rec, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					if !strings.HasPrefix(err.Error(), "fuzz: ") {
						t.Fatalf("error without the file name: %v", err)
					}
					break
				}
				if i > len(data) {
					t.Fatalf("%d records from %d bytes", i, len(data))
				}
				recs = append(recs, rec)
			}
			var out bytes.Buffer
			w, _ := NewWriter(&out, r.Format())
			for _, rec := range recs {
				if err := w.Write(rec); err != nil {
					t.Fatal(err)
				}
			}
			w.Flush()
			back, _ := NewReader(bytes.NewReader(out.Bytes()), "again", r.Format())
			for i, want := range recs {
				got, err := back.Next()
				if err != nil || !proto.Equal(got, want) {
					t.Fatalf("record %d did not survive a round trip: %v %v", i, got, err)
				}
			}
		}
	})
}
