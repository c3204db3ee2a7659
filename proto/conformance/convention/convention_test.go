package convention

import (
	"context"
	"strings"
	"testing"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Directive
		wantErr string
	}{
		{"echo", Directive{Kind: Echo}, ""},
		{"drop", Directive{Kind: Drop}, ""},
		{"fail", Directive{Kind: Fail}, ""},
		{"retry", Directive{Kind: Retry}, ""},
		{"emit=0", Directive{Kind: Emit}, ""},
		{"emit=3", Directive{Kind: Emit, N: 3}, ""},
		{"emit=1000", Directive{Kind: Emit, N: 1000}, ""},
		{"emit=1001", Directive{}, "from 0 to 1000"},
		{"emit=03", Directive{}, "leading zeros"},
		{"emit=+3", Directive{}, "from 0 to 1000"},
		{"emit=-1", Directive{}, "from 0 to 1000"},
		{"emit=", Directive{}, "unknown directive"},
		{"emit=x", Directive{}, "from 0 to 1000"},
		{"stdout=hello world", Directive{Kind: Stdout, Text: "hello world"}, ""},
		{"stdout=", Directive{Kind: Stdout}, ""},
		{"stdout=a\nb", Directive{}, "printable ASCII"},
		{"FAIL", Directive{}, "unknown directive"},
		{" fail", Directive{}, "unknown directive"},
		{"", Directive{}, "unknown directive"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if s := got.String(); s != tc.in {
				t.Fatalf("String() = %q, want %q", s, tc.in)
			}
		})
	}
}

func TestWrap(t *testing.T) {
	inner := func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		rec.Value = append(rec.Value, '!')
		return culvert.Emit(rec), nil
	}
	mk := func(d string) *culvert.Record {
		r := &culvert.Record{Id: "r", Value: []byte("v")}
		if d != "" {
			r.Headers = []*culvert.Header{{Name: Header, Value: []byte(d)}}
		}
		return r
	}
	t.Run("disabled", func(t *testing.T) {
		t.Setenv(EnvVar, "")
		outs, err := Wrap(inner)(context.Background(), mk("fail"))
		if err != nil || len(outs) != 1 || string(outs[0].Record.Value) != "v!" {
			t.Fatalf("got %v %v, want the handler's output", outs, err)
		}
	})
	t.Setenv(EnvVar, "1")
	h := Wrap(inner)
	for _, tc := range []struct {
		d         string
		outs      int
		value     string
		err       bool
		retryable bool
	}{
		{"", 1, "v!", false, false},
		{"echo", 1, "v", false, false},
		{"emit=4", 4, "v", false, false},
		{"drop", 0, "", false, false},
		{"fail", 0, "", true, false},
		{"retry", 0, "", true, true},
		{"nonsense", 0, "", true, false},
	} {
		t.Run("directive "+tc.d, func(t *testing.T) {
			outs, err := h(context.Background(), mk(tc.d))
			if (err != nil) != tc.err || culvert.IsRetryable(err) != tc.retryable {
				t.Fatalf("err = %v, want error %v retryable %v", err, tc.err, tc.retryable)
			}
			if len(outs) != tc.outs {
				t.Fatalf("%d outputs, want %d", len(outs), tc.outs)
			}
			for _, o := range outs {
				if string(o.Record.Value) != tc.value {
					t.Fatalf("value %q, want %q", o.Record.Value, tc.value)
				}
			}
		})
	}
}

// FuzzParse checks that Parse never panics, and that whatever it accepts
// renders back to the same bytes.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"echo", "drop", "fail", "retry", "emit=0", "emit=17", "emit=1000", "emit=01", "stdout=x y", "stdout=\xff", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(b)
		if err != nil {
			return
		}
		if d.String() != string(b) {
			t.Fatalf("Parse(%q) = %+v, renders as %q", b, d, d.String())
		}
		if d.Kind == Emit && (d.N < 0 || d.N > MaxEmit) {
			t.Fatalf("Parse(%q): N = %d", b, d.N)
		}
	})
}
