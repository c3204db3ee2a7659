package kinesis

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func TestCodec(t *testing.T) {
	arrival := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	full := &culvertv1.Record{Id: "r1", Key: []byte("k"), Value: []byte("v"), ContentType: "text/plain",
		Headers: []*culvertv1.Header{{Name: "A", Value: []byte("1")}, {Name: "A", Value: []byte("2")}}}
	enc, err := EncodeRecord(full)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		data    []byte
		pk      string
		wantVal string
		wantKey string
		wantHdr int
		wantErr bool
	}{
		{"plain text", []byte("hello"), "pk", "hello", "pk", 0, false},
		{"empty", nil, "pk", "", "pk", 0, false},
		{"record", enc, "ignored", "v", "k", 2, false},
		{"marked garbage", append(append([]byte{}, recordMagic...), 0xff, 0xff), "pk", string(append(append([]byte{}, recordMagic...), 0xff, 0xff)), "pk", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := decodeRecord(tt.data, tt.pk, arrival)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if string(r.GetValue()) != tt.wantVal || string(r.GetKey()) != tt.wantKey || len(r.GetHeaders()) != tt.wantHdr {
				t.Fatalf("got value %q key %q %d headers", r.GetValue(), r.GetKey(), len(r.GetHeaders()))
			}
			if !r.GetEventTime().AsTime().Equal(arrival) {
				t.Fatalf("event time %v, want arrival %v", r.GetEventTime().AsTime(), arrival)
			}
		})
	}
	v, _ := encodeRecord(full, true)
	if !bytes.Equal(v, full.Value) {
		t.Fatalf("value encoding wrote %q", v)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	enc, _ := EncodeRecord(&culvertv1.Record{Id: "x", Key: []byte("k"), Value: []byte("v")})
	f.Add(enc, "pk")
	f.Add([]byte("plain"), "")
	f.Add(append(append([]byte{}, recordMagic...), 0x0a), "k")
	f.Fuzz(func(t *testing.T, data []byte, pk string) {
		r, err := decodeRecord(data, pk, time.Unix(1, 0))
		if r == nil {
			t.Fatal("nil record")
		}
		if err != nil || !bytes.HasPrefix(data, recordMagic) {
			// Not a record (or a broken one): the data is the value, whole.
			if !bytes.Equal(r.GetValue(), data) {
				t.Fatalf("value %q, want the data %q", r.GetValue(), data)
			}
			return
		}
		again, err := EncodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := decodeRecord(again, pk, time.Unix(1, 0))
		if err != nil || !proto.Equal(r, r2) {
			t.Fatalf("re-encoded record differs: %v", err)
		}
	})
}
