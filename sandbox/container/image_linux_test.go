//go:build linux

package container

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/image"
)

// TestHostileImage runs the hostile function from an image (a docker-save
// tarball, unpacked by sandbox/image) whose layers carry a setuid binary,
// device nodes, symlinks out of the image and a file written through one.
// Nothing of it may reach the host or gain a privilege.
func TestHostileImage(t *testing.T) {
	r := newRuntime(t, false)
	fn, err := os.ReadFile(hostileBin)
	if err != nil {
		t.Fatal(err)
	}
	type ent struct {
		name, link string
		typ        byte
		mode       int64
		body       []byte
	}
	layer := func(ents ...ent) v1.Layer {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range ents {
			h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Devmajor: 1, Devminor: 1}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write(e.body); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	hostDir := t.TempDir()
	img, err := mutate.AppendLayers(empty.Image,
		layer(
			ent{name: "fn", typ: tar.TypeReg, mode: 0o755, body: fn},
			ent{name: "suid", typ: tar.TypeReg, mode: 0o4755, body: fn},
			ent{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			ent{name: "etc/shadow", typ: tar.TypeReg, mode: 0o600, body: []byte("the image's own shadow\n")},
			ent{name: "dev/", typ: tar.TypeDir, mode: 0o755},
			ent{name: "dev/mem", typ: tar.TypeChar, mode: 0o666},
			ent{name: "devnode", typ: tar.TypeBlock, mode: 0o666},
		),
		layer(
			ent{name: "link", typ: tar.TypeSymlink, link: "/etc/shadow"},
			ent{name: "hostlink", typ: tar.TypeSymlink, link: hostDir + "/secret"},
			ent{name: "uplink", typ: tar.TypeSymlink, link: "../../../../../../etc/passwd"},
			ent{name: "out", typ: tar.TypeSymlink, link: hostDir},
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("culvert.test/hostile:1")
	tarPath := filepath.Join(t.TempDir(), "hostile.tar")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		t.Fatal(err)
	}
	cache := &image.Cache{Dir: filepath.Join(t.TempDir(), "images"), Logger: slog.New(slog.DiscardHandler)}
	_ = os.Chmod(filepath.Dir(cache.Dir), 0o711)
	im, err := cache.Unpack(context.Background(), image.Ref{Path: tarPath})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(im.Root, "suid")); err != nil || fi.Mode()&os.ModeSetuid != 0 {
		t.Fatalf("suid in the unpacked root: %v %v, want no setuid bit", fi.Mode(), err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, "secret"), []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		args []string
		want string
	}{
		// The hostile program calls every successful read an escape; 23
		// bytes is the image's own /etc/shadow, which is what it may read.
		{[]string{"symlink-out", "/link"}, `^ESCAPED read 23 bytes through the link$`},
		{[]string{"symlink-out", "/hostlink"}, `^DENIED ENOENT$`},
		{[]string{"symlink-out", "/uplink"}, `^DENIED ENOENT$`},
		{[]string{"write", "/out/pwned"}, `^DENIED (ENOENT|EROFS)$`},
		{[]string{"open-dev", "/dev/mem"}, `^DENIED (ENOENT|EACCES|EPERM)$`},
		{[]string{"open-dev", "/devnode"}, `^DENIED ENOENT$`},
		{[]string{"setuid-root", "/suid", "euid"}, `^OK OK euid=0$`}, // root only inside its own user namespace
		{[]string{"write", "/fn"}, `^DENIED EROFS$`},
	}
	for _, tt := range tests {
		spec := sandbox.Spec{Path: "/fn", Args: tt.args, Tenant: "img"}
		spec.Isolation.Root.Dir = im.Root
		out, stderr, ex := run(t, r, spec, "", 10*time.Second)
		if got := strings.TrimSpace(out); !regexp.MustCompile(tt.want).MatchString(got) {
			t.Errorf("%v: got %q (exit %v, stderr %q), want %s", tt.args, got, ex, stderr, tt.want)
		}
	}
	entries, _ := os.ReadDir(hostDir)
	if len(entries) != 1 {
		t.Errorf("the host directory the image links to changed: %v", entries)
	}
}
