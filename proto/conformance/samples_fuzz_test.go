package conformance

import (
	"bytes"
	"testing"
)

// FuzzReadSamples: the samples file parser never panics, and every sample
// it returns is one non-blank line without its line ending.
func FuzzReadSamples(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n{\"b\":2}\r\n\n  \n"))
	f.Add([]byte(""))
	f.Add([]byte("\x00\xff\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		samples, err := ReadSamples(bytes.NewReader(in))
		if err != nil {
			return
		}
		if len(samples) == 0 {
			t.Fatal("no error and no sample")
		}
		for _, s := range samples {
			if bytes.ContainsAny(s, "\n") || len(bytes.TrimSpace(s)) == 0 || bytes.HasSuffix(s, []byte("\r")) {
				t.Fatalf("sample %q is not one non-blank line", s)
			}
		}
	})
}
