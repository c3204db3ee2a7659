//go:build linux

package container

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReadPreamble: the launcher's preamble decoder never panics, reads
// exactly one preamble (the rest of stdin is the function's), and what it
// accepts as K=V entries encodes back to the same bytes.
func FuzzReadPreamble(f *testing.F) {
	for _, env := range [][]string{nil, {"A=1"}, {"A=1", "B=x=y z", "C="}} {
		b, err := preamble(env)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(b, "rest"...))
	}
	f.Add([]byte{0, 0, 0, 3, 'A', '=', '1'})       // no final NUL
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 'A'})     // over the bound
	f.Add([]byte{0, 0, 0, 8, 'A', '=', 0, 0, 'B'}) // short
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		env, err := readPreamble(r)
		if err != nil {
			return
		}
		used := len(in) - r.Len()
		for _, kv := range env {
			if strings.IndexByte(kv, 0) >= 0 {
				t.Fatalf("entry %q holds a NUL", kv)
			}
			if !strings.Contains(kv, "=") {
				return // not K=V: the exec gets it as it is
			}
		}
		b, err := preamble(env)
		if err != nil {
			t.Fatalf("re-encoding %q: %v", env, err)
		}
		if !bytes.Equal(b, in[:used]) && len(env) > 0 {
			t.Fatalf("read %q from %q, which encodes as %q", env, in[:used], b)
		}
	})
}
