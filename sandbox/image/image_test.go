package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var quiet = slog.New(slog.DiscardHandler)

// ent is one tar entry of a test layer.
type ent struct {
	name string
	typ  byte
	mode int64
	body string
	link string
}

func file(name, body string) ent      { return ent{name: name, typ: tar.TypeReg, mode: 0o644, body: body} }
func dir(name string) ent             { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) ent { return ent{name: name, typ: tar.TypeSymlink, link: target} }

func tarOf(t testing.TB, ents []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t testing.TB, ents ...ent) v1.Layer {
	t.Helper()
	b := tarOf(t, ents)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func imageOf(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes images into a new OCI layout, each annotated with its
// ref name.
func writeLayout(t testing.TB, images map[string]v1.Image) string {
	t.Helper()
	p, err := layout.Write(filepath.Join(t.TempDir(), "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for n, img := range images {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: n})); err != nil {
			t.Fatal(err)
		}
	}
	return string(p)
}

func writeTarball(t testing.TB, images map[string]v1.Image) string {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for n, img := range images {
		tag, err := name.NewTag(n)
		if err != nil {
			t.Fatal(err)
		}
		refs[tag] = img
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	if err := tarball.MultiRefWriteToFile(p, refs); err != nil {
		t.Fatal(err)
	}
	return p
}

// sample is a two-layer image with a whiteout, an opaque directory, links,
// and a setuid binary.
func sample(t testing.TB) v1.Image {
	lower := layerOf(t,
		dir("bin"), ent{name: "bin/fn", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\n"},
		dir("etc"), file("etc/old", "gone"), file("etc/keep", "kept"),
		dir("data"), file("data/a", "lower a"), file("data/b", "lower b"),
		file("secret", "private"), // mode 0600 below
	)
	upper := layerOf(t,
		file("etc/.wh.old", ""),
		dir("data"), file("data/.wh..wh..opq", ""), file("data/c", "upper c"),
		symlink("bin/abs", "/etc/keep"), symlink("bin/rel", "../etc/keep"),
		ent{name: "bin/hard", typ: tar.TypeLink, link: "etc/keep"},
		ent{name: "secret", typ: tar.TypeReg, mode: 0o600, body: "private"},
	)
	return imageOf(t, v1.Config{Entrypoint: []string{"/bin/fn"}, Cmd: []string{"--flag"}, Env: []string{"A=1"}, WorkingDir: "/data"}, lower, upper)
}

func TestUnpackFormats(t *testing.T) {
	for _, tc := range []struct {
		name string
		ref  func(t *testing.T) Ref
	}{
		{"oci-layout", func(t *testing.T) Ref { return Ref{Path: writeLayout(t, map[string]v1.Image{"fn:1": sample(t)})} }},
		{"oci-layout-named", func(t *testing.T) Ref {
			return Ref{Path: writeLayout(t, map[string]v1.Image{"fn:1": sample(t), "other:2": imageOf(t, v1.Config{}, layerOf(t, file("x", "y")))}), Name: "1"}
		}},
		{"docker-tarball", func(t *testing.T) Ref {
			return Ref{Path: writeTarball(t, map[string]v1.Image{"culvert.test/fn:1": sample(t)})}
		}},
		{"docker-tarball-named", func(t *testing.T) Ref {
			return Ref{Path: writeTarball(t, map[string]v1.Image{"culvert.test/fn:1": sample(t), "culvert.test/other:2": imageOf(t, v1.Config{}, layerOf(t, file("x", "y")))}), Name: "culvert.test/fn:1"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cache{Dir: filepath.Join(t.TempDir(), "cache"), Logger: quiet}
			im, err := c.Unpack(context.Background(), tc.ref(t))
			if err != nil {
				t.Fatal(err)
			}
			checkSample(t, im)
			// A second unpack is a cache hit: same directory, no new
			// entries, no leftovers.
			again, err := c.Unpack(context.Background(), tc.ref(t))
			if err != nil {
				t.Fatal(err)
			}
			if again.Root != im.Root || again.ID != im.ID {
				t.Errorf("second unpack: %s %s, want %s %s", again.ID, again.Root, im.ID, im.Root)
			}
			entries, _ := os.ReadDir(c.Dir)
			if len(entries) != 1 {
				t.Errorf("cache holds %d entries, want 1: %v", len(entries), entries)
			}
		})
	}
}

func checkSample(t *testing.T, im *Image) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(im.Root, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	for p, want := range map[string]string{"etc/keep": "kept", "data/c": "upper c", "bin/hard": "kept", "bin/rel": "kept", "secret": "private"} {
		if got := read(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, p := range []string{"etc/old", "data/a", "data/b", "etc/.wh.old", "data/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(im.Root, p)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v), want it removed by a whiteout", p, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(im.Root, "bin/abs")); err != nil || target != "/etc/keep" {
		t.Errorf("bin/abs -> %q (%v), want the image's own /etc/keep kept as written", target, err)
	}
	fi, err := os.Stat(filepath.Join(im.Root, "bin/fn"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/fn mode %v, want 0755 with no setuid", fi.Mode())
	}
	if fi, err := os.Stat(filepath.Join(im.Root, "secret")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("secret mode %v (%v), want 0644 (readable by the sandbox's mapped user)", fi.Mode(), err)
	}
	want := Config{Entrypoint: []string{"/bin/fn"}, Cmd: []string{"--flag"}, Env: []string{"A=1"}, WorkingDir: "/data"}
	if !slices.Equal(im.Config.Entrypoint, want.Entrypoint) || !slices.Equal(im.Config.Cmd, want.Cmd) || !slices.Equal(im.Config.Env, want.Env) || im.Config.WorkingDir != want.WorkingDir {
		t.Errorf("config %+v, want %+v", im.Config, want)
	}
	if !strings.HasPrefix(im.ID, "sha256:") {
		t.Errorf("ID %q", im.ID)
	}
}

// tamperedLayer declares a diff ID that its content does not have.
type tamperedLayer struct {
	v1.Layer
	claim v1.Hash
}

func (l tamperedLayer) DiffID() (v1.Hash, error) { return l.claim, nil }

// TestHostileImages unpacks images built to escape or to smuggle in
// privileges. Each must either fail or unpack harmlessly, and nothing may
// appear outside the cache.
func TestHostileImages(t *testing.T) {
	claimed := layerOf(t, file("innocent", "the content the config names"))
	claim, _ := claimed.DiffID()
	for _, tc := range []struct {
		name    string
		layers  func(outside string) []v1.Layer
		wantErr string
		check   func(t *testing.T, im *Image)
	}{
		{name: "dot-dot path", wantErr: "unsafe tar path", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, file("../../../../"+outside+"/pwned", "x"))}
		}},
		{name: "absolute path stays inside", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, file(outside+"/pwned", "x"))}
		}, check: func(t *testing.T, im *Image) {
			if _, err := os.Stat(filepath.Join(im.Root, "tmp")); err != nil && !strings.Contains(im.Root, "tmp") {
				t.Errorf("absolute entry not placed inside the root: %v", err)
			}
		}},
		{name: "hard link through a symlink to the host", wantErr: "escapes", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, symlink("evil", outside), ent{name: "h", typ: tar.TypeLink, link: "evil/secret"})}
		}},
		{name: "write through a symlink in one layer", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, symlink("evil", outside), file("evil/pwned", "x"))}
		}, check: func(t *testing.T, im *Image) {
			if _, err := os.Lstat(filepath.Join(im.Root, "evil/pwned")); err == nil {
				t.Error("evil/pwned written")
			}
		}},
		{name: "upper file over a lower symlink to the host", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, symlink("evil", outside)), layerOf(t, dir("evil"), file("evil/pwned", "x"))}
		}, check: func(t *testing.T, im *Image) {
			fi, err := os.Lstat(filepath.Join(im.Root, "evil"))
			if err != nil || !fi.IsDir() {
				t.Errorf("evil: %v %v, want the upper layer's directory", fi, err)
			}
		}},
		{name: "relative symlink out of the root", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, symlink("up", "../../../../../../"+outside), file("ok", "x"))}
		}, check: func(t *testing.T, im *Image) {
			if _, err := os.Lstat(filepath.Join(im.Root, "up")); err == nil {
				t.Error("escaping relative symlink was kept")
			}
		}},
		{name: "hard link to a host file", wantErr: "", layers: func(outside string) []v1.Layer {
			return []v1.Layer{layerOf(t, ent{name: "h", typ: tar.TypeLink, link: outside + "/secret"})}
		}},
		{name: "setuid and setgid dropped", layers: func(string) []v1.Layer {
			return []v1.Layer{layerOf(t, ent{name: "su", typ: tar.TypeReg, mode: 0o6755, body: "x"}, ent{name: "d", typ: tar.TypeDir, mode: 0o3777})}
		}, check: func(t *testing.T, im *Image) {
			for _, p := range []string{"su", "d"} {
				fi, err := os.Stat(filepath.Join(im.Root, p))
				if err != nil || fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 || fi.Mode().Perm()&0o022 != 0 {
					t.Errorf("%s: mode %v (%v)", p, fi.Mode(), err)
				}
			}
		}},
		{name: "device nodes and fifos skipped", layers: func(string) []v1.Layer {
			return []v1.Layer{layerOf(t, dir("dev"), ent{name: "dev/sda", typ: tar.TypeBlock, mode: 0o666}, ent{name: "dev/mem", typ: tar.TypeChar, mode: 0o666}, ent{name: "p", typ: tar.TypeFifo, mode: 0o666})}
		}, check: func(t *testing.T, im *Image) {
			for _, p := range []string{"dev/sda", "dev/mem", "p"} {
				if _, err := os.Lstat(filepath.Join(im.Root, p)); err == nil {
					t.Errorf("%s was created", p)
				}
			}
			if len(im.Skipped) != 3 {
				t.Errorf("skipped %v, want 3 entries", im.Skipped)
			}
		}},
		{name: "content differs from the diff ID", wantErr: "does not match the diff ID", layers: func(string) []v1.Layer {
			return []v1.Layer{tamperedLayer{Layer: layerOf(t, file("innocent", "something else")), claim: claim}}
		}},
		{name: "too large", wantErr: "more than 1024 bytes", layers: func(string) []v1.Layer {
			return []v1.Layer{layerOf(t, file("big", strings.Repeat("x", 2000)))}
		}},
		{name: "too many entries", wantErr: "more than 50 entries", layers: func(string) []v1.Layer {
			var ents []ent
			for i := range 60 {
				ents = append(ents, file("f"+strings.Repeat("x", i), ""))
			}
			return []v1.Layer{layerOf(t, ents...)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			c := &Cache{Dir: filepath.Join(base, "cache"), MaxBytes: 1024, MaxEntries: 50, Logger: quiet}
			im, err := c.unpack(context.Background(), imageOf(t, v1.Config{}, tc.layers(outside)...))
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			case tc.wantErr == "" && tc.check != nil && err != nil:
				t.Errorf("unexpected error %v", err)
			case err == nil && tc.check != nil:
				tc.check(t, im)
			}
			got, _ := os.ReadDir(outside)
			if len(got) != 1 || got[0].Name() != "secret" {
				t.Errorf("the host directory changed: %v", got)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "host secret" {
				t.Errorf("the host file changed: %q", b)
			}
			if err != nil {
				leftovers, _ := os.ReadDir(c.Dir)
				if len(leftovers) != 0 {
					t.Errorf("a failed unpack left %v in the cache", leftovers)
				}
			}
		})
	}
}

func TestConcurrentUnpack(t *testing.T) {
	ref := Ref{Path: writeTarball(t, map[string]v1.Image{"culvert.test/fn:1": sample(t)})}
	c := &Cache{Dir: filepath.Join(t.TempDir(), "cache"), Logger: quiet}
	var wg sync.WaitGroup
	roots := make([]string, 4)
	errs := make([]error, 4)
	for i := range roots {
		wg.Go(func() {
			im, err := c.Unpack(context.Background(), ref)
			errs[i] = err
			if err == nil {
				roots[i] = im.Root
			}
		})
	}
	wg.Wait()
	for i := range roots {
		if errs[i] != nil || roots[i] != roots[0] {
			t.Errorf("unpack %d: %q %v, want %q", i, roots[i], errs[i], roots[0])
		}
	}
	entries, _ := os.ReadDir(c.Dir)
	if len(entries) != 1 {
		t.Errorf("cache holds %v, want one entry", entries)
	}
}

func TestOpenErrors(t *testing.T) {
	two := writeLayout(t, map[string]v1.Image{"a:1": sample(t), "b:1": sample(t)})
	for _, tc := range []struct {
		ref  Ref
		want string
	}{
		{Ref{Path: "/nonexistent/image.tar"}, "no such file"},
		{Ref{Path: two}, "name one (PATH:NAME) of"},
		{Ref{Path: two, Name: "c:1"}, `no image named "c:1"`},
	} {
		if _, err := Open(tc.ref); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%v) = %v, want an error containing %q", tc.ref, err, tc.want)
		}
	}
}

func TestParseRef(t *testing.T) {
	existing := filepath.Join(t.TempDir(), "with:colon.tar")
	if err := os.WriteFile(existing, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want Ref
		err  bool
	}{
		{"./fn.tar", Ref{Path: "./fn.tar"}, false},
		{"./oci:fn:1", Ref{Path: "./oci", Name: "fn:1"}, false},
		{"/images/oci:latest", Ref{Path: "/images/oci", Name: "latest"}, false},
		{existing, Ref{Path: existing}, false},
		{"", Ref{}, true},
		{"./oci:", Ref{}, true},
	} {
		got, err := ParseRef(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}
