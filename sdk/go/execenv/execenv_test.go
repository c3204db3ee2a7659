package execenv_test

import (
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/sdk/go/execenv"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestHeaderVarName(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"Content-Type", "CULVERT_HEADER_Content_2DType"},
		{"content-type", "CULVERT_HEADER_content_2Dtype"},
		{"X_Trace", "CULVERT_HEADER_X__Trace"},
		{"X-Trace", "CULVERT_HEADER_X_2DTrace"},
		{"Proxy", "CULVERT_HEADER_Proxy"},
		{"café", "CULVERT_HEADER_caf_C3_A9"},
		{"a b=c", "CULVERT_HEADER_a_20b_3Dc"},
		{"_", "CULVERT_HEADER___"},
		{"", "CULVERT_HEADER_"},
	} {
		if got := execenv.HeaderVarName(tc.name); got != tc.want {
			t.Errorf("HeaderVarName(%q) = %q, want %q", tc.name, got, tc.want)
		}
		if got, want := execenv.HeaderB64VarName(tc.name), strings.Replace(tc.want, "HEADER_", "HEADERB64_", 1); got != want {
			t.Errorf("HeaderB64VarName(%q) = %q, want %q", tc.name, got, want)
		}
	}
}

func TestEncode(t *testing.T) {
	long := strings.Repeat("x", execenv.MaxValue)
	for _, tc := range []struct {
		name string
		rec  *culvertv1.Record
		want []string
	}{
		{
			name: "empty record",
			rec:  &culvertv1.Record{},
			want: []string{"CULVERT_FUNCTION=fn", "CULVERT_PIPELINE=pl"},
		},
		{
			name: "everything",
			rec: &culvertv1.Record{
				Id: "js:ORDERS:7", Key: []byte("k1"), Value: []byte("not in env"), ContentType: "application/json",
				EventTime: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 6000, time.FixedZone("x", 3600))),
				Source:    &culvertv1.Position{Connector: "jetstream", Stream: "ORDERS", Subject: "orders.new", Partition: "0", Offset: 7},
				Headers: []*culvertv1.Header{
					{Name: "Content-Type", Value: []byte("text/plain")},
					{Name: "X-Bin", Value: []byte{0, 1, 0xff}},
					{Name: "Content-Type", Value: []byte("repeated")},
				},
			},
			want: []string{
				"CULVERT_FUNCTION=fn", "CULVERT_PIPELINE=pl", "CULVERT_RECORD_ID=js:ORDERS:7", "CULVERT_KEY=k1",
				"CULVERT_CONTENT_TYPE=application/json", "CULVERT_EVENT_TIME=2026-01-02T02:04:05.000006Z",
				"CULVERT_CONNECTOR=jetstream", "CULVERT_STREAM=ORDERS", "CULVERT_SUBJECT=orders.new",
				"CULVERT_PARTITION=0", "CULVERT_OFFSET=7",
				"CULVERT_HEADER_Content_2DType=text/plain",
				"CULVERT_HEADERB64_X_2DBin=AAH/",
				`CULVERT_HEADERS=[["Content-Type","dGV4dC9wbGFpbg=="],["X-Bin","AAH/"],["Content-Type","cmVwZWF0ZWQ="]]`,
			},
		},
		{
			name: "binary key, NUL and oversize values",
			rec: &culvertv1.Record{
				Id: "a\x00b", Key: []byte{0xc3, 0x28}, ContentType: long,
				Source:  &culvertv1.Position{Sequence: "49590338271490256608559692538361571095921575989136588898"},
				Headers: []*culvertv1.Header{{Name: "big", Value: []byte(long)}, {Name: "nul", Value: []byte("a\x00")}},
			},
			want: []string{
				"CULVERT_FUNCTION=fn", "CULVERT_PIPELINE=pl", "CULVERT_KEY_B64=wyg=",
				"CULVERT_SEQUENCE=49590338271490256608559692538361571095921575989136588898",
				"CULVERT_HEADERB64_nul=YQA=",
				`CULVERT_HEADERS=[["big","` + base64.StdEncoding.EncodeToString([]byte(long)) + `"],["nul","YQA="]]`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, execenv.Encode(tc.rec, "fn", "pl")); diff != "" {
				t.Errorf("Encode (-want +got):\n%s", diff)
			}
		})
	}
}

var validName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// fixed are the names that are not header variables.
var fixed = []string{execenv.Function, execenv.Pipeline, execenv.RecordID, execenv.Key, execenv.KeyB64,
	execenv.ContentType, execenv.EventTime, execenv.Connector, execenv.Stream, execenv.Subject,
	execenv.Partition, execenv.Offset, execenv.Sequence, execenv.Headers}

var proxyNames = []string{"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY", "NO_PROXY", "GRPC_PROXY", "SOCKS_PROXY", "SOCKS5_PROXY"}

// checkName fails unless name is a safe environment variable name.
func checkName(t *testing.T, name string) {
	t.Helper()
	if !validName.MatchString(name) {
		t.Fatalf("%q is not a valid environment variable name", name)
	}
	if !strings.HasPrefix(name, "CULVERT_") || strings.HasPrefix(strings.ToUpper(name), "HTTP_") {
		t.Fatalf("%q is outside the CULVERT_ namespace", name)
	}
	for _, p := range proxyNames {
		if strings.EqualFold(name, p) {
			t.Fatalf("%q names a proxy", name)
		}
	}
}

// decodeName inverts the encoding of HeaderVarName, or fails.
func decodeName(t *testing.T, enc string) string {
	t.Helper()
	var b []byte
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c != '_' {
			b = append(b, c)
			continue
		}
		switch {
		case i+1 < len(enc) && enc[i+1] == '_':
			b = append(b, '_')
			i++
		case i+2 < len(enc):
			v, err := hexByte(enc[i+1 : i+3])
			if err != "" {
				t.Fatalf("%q: %s", enc, err)
			}
			b = append(b, v)
			i += 2
		default:
			t.Fatalf("%q: dangling escape", enc)
		}
	}
	return string(b)
}

func hexByte(s string) (byte, string) {
	var v byte
	for _, c := range []byte(s) {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | (c - '0')
		case 'A' <= c && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, "not upper-case hex: " + s
		}
	}
	return v, ""
}

func FuzzHeaderVarName(f *testing.F) {
	for _, s := range [][2]string{
		{"Content-Type", "Content_Type"}, {"X-Foo", "X_Foo"}, {"x-foo", "X-FOO"}, {"B64\xab", "AB"},
		{"_2D", "-"}, {"", "_"}, {"Proxy", "proxy"}, {"S", "ERS"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		na, nb := execenv.HeaderVarName(a), execenv.HeaderVarName(b)
		ba, bb := execenv.HeaderB64VarName(a), execenv.HeaderB64VarName(b)
		for _, n := range []string{na, nb, ba, bb} {
			checkName(t, n)
			for _, fx := range fixed {
				if n == fx {
					t.Fatalf("header variable %q is a fixed name", n)
				}
			}
		}
		if got := decodeName(t, strings.TrimPrefix(na, execenv.HeaderPrefix)); got != a {
			t.Fatalf("%q encodes to %q, which decodes to %q", a, na, got)
		}
		if a != b && (na == nb || ba == bb) {
			t.Fatalf("%q and %q share a variable: %q / %q", a, b, na, ba)
		}
		if na == bb || ba == nb {
			t.Fatalf("text and base64 variables collide for %q and %q", a, b)
		}
	})
}

func FuzzEncode(f *testing.F) {
	f.Add("js:1", []byte("k"), "text/plain", "Content-Type", []byte("v"), "X", []byte{0})
	f.Fuzz(func(t *testing.T, id string, key []byte, ct, h1 string, v1 []byte, h2 string, v2 []byte) {
		rec := &culvertv1.Record{Id: id, Key: key, ContentType: ct, Headers: []*culvertv1.Header{{Name: h1, Value: v1}, {Name: h2, Value: v2}}}
		seen := map[string]bool{}
		for _, kv := range execenv.Encode(rec, "f", "p") {
			name, value, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("%q has no =", kv)
			}
			checkName(t, name)
			if seen[name] {
				t.Fatalf("%q set twice", name)
			}
			seen[name] = true
			if strings.ContainsRune(value, 0) || len(kv) >= 128<<10 {
				t.Fatalf("%s: value with NUL or too long (%d bytes)", name, len(kv))
			}
			if name == execenv.Headers {
				var pairs [][2]string
				if err := json.Unmarshal([]byte(value), &pairs); err != nil || len(pairs) != 2 {
					t.Fatalf("CULVERT_HEADERS %q: %v", value, err)
				}
			}
		}
	})
}
