package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// FuzzUnpack unpacks arbitrary bytes as an image's only layer. Whatever the
// bytes, unpacking must not panic, and nothing may appear beside the cache.
func FuzzUnpack(f *testing.F) {
	f.Add(tarOf(f, []ent{file("a", "b"), dir("d"), symlink("d/l", "/etc/passwd")}))
	f.Add(tarOf(f, []ent{file("../x", "b")}))
	f.Add(tarOf(f, []ent{symlink("e", "/"), file("e/x", "b"), {name: "h", typ: tar.TypeLink, link: "e/x"}}))
	f.Add(tarOf(f, []ent{{name: "dev", typ: tar.TypeChar}, {name: "s", typ: tar.TypeReg, mode: 0o4777}}))
	f.Add([]byte("not a tar at all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		base := t.TempDir()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			return
		}
		c := &Cache{Dir: filepath.Join(base, "cache"), MaxBytes: 1 << 20, MaxEntries: 1000, Logger: quiet}
		_, _ = c.unpack(context.Background(), imageOf(t, v1.Config{}, layer))
		entries, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "cache" {
				t.Fatalf("unpacking wrote %q beside the cache", e.Name())
			}
		}
	})
}
