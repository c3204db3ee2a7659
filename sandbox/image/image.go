// Package image turns an OCI image into a function's root filesystem.
//
// It reads an image from an OCI image layout directory or from a
// `docker save` tarball (with go-containerregistry), flattens its layers
// (whiteouts and opaque directories applied), and unpacks the result once
// into a content-addressed cache. Every later start of the same image reuses
// the unpacked directory.
//
// Unpacking treats the image as hostile:
//   - every entry is written through an os.Root, so no `../` name, absolute
//     path or symlink in the image can make the unpacker read or write
//     outside the image's directory;
//   - setuid, setgid and sticky bits are dropped, and no extended attribute
//     (file capabilities included) is ever applied;
//   - device nodes and FIFOs are skipped and listed in Image.Skipped;
//   - every layer's content is hashed as it is read and compared with the
//     diff ID its image config declares, and the config with the image ID,
//     so a cache entry holds exactly the content its name says, whoever
//     unpacked it first;
//   - the total size and number of entries are bounded.
//
// Symlinks are kept as the image has them: inside the sandbox the image is
// the root, so an absolute target such as /etc/shadow names the image's own
// file. Host-side code must not follow links inside a cached root; the
// sandbox runtime mounts into it only through securejoin.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Defaults for the bounds a Cache enforces.
const (
	DefaultMaxBytes   = 4 << 30 // 4 GiB unpacked
	DefaultMaxEntries = 1 << 20 // files, directories and links
)

// Ref names an image: a path to an OCI layout directory or a docker-save
// tarball, and, when the path holds several images, which one.
type Ref struct {
	// Path of the layout directory or the tarball.
	Path string
	// Name selects one image: an OCI layout's
	// org.opencontainers.image.ref.name annotation (full, or just its tag),
	// or a docker tarball's repo:tag. Empty: the path must hold one image.
	Name string
}

func (r Ref) String() string {
	if r.Name == "" {
		return r.Path
	}
	return r.Path + ":" + r.Name
}

// ParseRef reads "PATH" or "PATH:NAME". A path that exists as given wins, so
// a path that contains a colon still works.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, errors.New("image reference is empty")
	}
	if _, err := os.Stat(s); err == nil {
		return Ref{Path: s}, nil
	}
	slash := strings.LastIndex(s, "/")
	if i := strings.Index(s[slash+1:], ":"); i >= 0 {
		i += slash + 1
		if i == 0 || i == len(s)-1 {
			return Ref{}, fmt.Errorf("image reference %q: want PATH or PATH:NAME", s)
		}
		return Ref{Path: s[:i], Name: s[i+1:]}, nil
	}
	return Ref{Path: s}, nil
}

// Config is the part of the image config a function's start uses.
type Config struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Image is an unpacked image in the cache.
type Image struct {
	// ID is the image ID: the sha256 digest of its config, which names
	// every layer's content by digest.
	ID string `json:"id"`
	// Root is the directory holding the image's files, to be mounted
	// read-only as the function's root.
	Root string `json:"-"`
	// Config is the image's run configuration.
	Config Config `json:"config"`
	// Skipped lists entries not unpacked (device nodes, FIFOs), as
	// "path (kind)".
	Skipped []string `json:"skipped,omitempty"`
	// Bytes and Entries count what was unpacked.
	Bytes   int64 `json:"bytes"`
	Entries int   `json:"entries"`
}

// Cache unpacks images into Dir, one directory per image ID.
type Cache struct {
	// Dir holds the cache; created (mode 0711) when missing. The mode lets
	// a sandbox's mapped user reach a root inside without listing others.
	Dir string
	// MaxBytes and MaxEntries bound one unpack; zero takes the defaults.
	MaxBytes   int64
	MaxEntries int
	Logger     *slog.Logger
}

const metaFile = "image.json"

// Unpack returns the unpacked image ref names, unpacking it first if the
// cache does not hold it yet. Concurrent calls for one image, from this or
// other processes, are safe: each unpacks into a private directory and the
// first to finish publishes it with an atomic rename.
func (c *Cache) Unpack(ctx context.Context, ref Ref) (*Image, error) {
	img, err := Open(ref)
	if err != nil {
		return nil, err
	}
	im, err := c.unpack(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return im, nil
}

// Open reads the image ref names, without unpacking it.
func Open(ref Ref) (v1.Image, error) {
	fi, err := os.Stat(ref.Path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	if fi.IsDir() {
		img, err := fromLayout(ref)
		if err != nil {
			return nil, fmt.Errorf("image %s (OCI layout): %w", ref, err)
		}
		return img, nil
	}
	var tag *name.Tag
	if ref.Name != "" {
		t, err := name.NewTag(ref.Name, name.WeakValidation)
		if err != nil {
			return nil, fmt.Errorf("image %s: name %q is not a repo:tag: %w", ref, ref.Name, err)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(ref.Path, tag)
	if err != nil {
		return nil, fmt.Errorf("image %s (docker-save tarball): %w", ref, err)
	}
	return img, nil
}

const refNameAnnotation = "org.opencontainers.image.ref.name"

func fromLayout(ref Ref) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(ref.Path)
	if err != nil {
		return nil, err
	}
	return pick(idx, ref.Name, 0)
}

// pick chooses the image named name (any when empty) from idx, descending
// into nested indexes and preferring this machine's platform.
func pick(idx v1.ImageIndex, want string, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, errors.New("image indexes nested too deeply")
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var matches []v1.Descriptor
	var names []string
	for _, d := range m.Manifests {
		n := d.Annotations[refNameAnnotation]
		if n != "" {
			names = append(names, n)
		}
		if want == "" || n == want || (n != "" && tagOf(n) == want) {
			matches = append(matches, d)
		}
	}
	if want != "" && len(matches) == 0 && depth == 0 {
		return nil, fmt.Errorf("no image named %q; the layout names %s", want, listOr(names, "none"))
	}
	// Several platforms of one image: take this machine's.
	if len(matches) > 1 {
		var same []v1.Descriptor
		for _, d := range matches {
			if d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH) {
				same = append(same, d)
			}
		}
		matches = same
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("no image for linux/%s", runtime.GOARCH)
	case 1:
	default:
		return nil, fmt.Errorf("the layout holds %d images; name one (PATH:NAME) of %s", len(matches), listOr(names, "(unnamed)"))
	}
	d := matches[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return pick(child, "", depth+1)
	}
	return idx.Image(d.Digest)
}

func tagOf(n string) string {
	if i := strings.LastIndex(n, ":"); i > strings.LastIndex(n, "/") {
		return n[i+1:]
	}
	return n
}

func listOr(names []string, none string) string {
	if len(names) == 0 {
		return none
	}
	return strings.Join(names, ", ")
}

func (c *Cache) unpack(ctx context.Context, img v1.Image) (*Image, error) {
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the image config: %w", err)
	}
	sum := sha256.Sum256(raw)
	id := "sha256:" + hex.EncodeToString(sum[:])
	cfg, err := v1.ParseConfigFile(strings.NewReader(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("parsing the image config: %w", err)
	}
	if err := os.MkdirAll(c.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	final := filepath.Join(c.Dir, "sha256-"+hex.EncodeToString(sum[:]))
	if im, err := load(final); err == nil {
		return im, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("image cache entry %s: %w", final, err)
	}

	tmp, err := os.MkdirTemp(c.Dir, ".unpack-")
	if err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil {
		return nil, err
	}
	rootDir := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		return nil, err
	}
	u := &unpacker{max: c.MaxBytes, maxEntries: c.MaxEntries}
	if u.max <= 0 {
		u.max = DefaultMaxBytes
	}
	if u.maxEntries <= 0 {
		u.maxEntries = DefaultMaxEntries
	}
	checked, err := verified(img, cfg)
	if err != nil {
		return nil, err
	}
	if err := u.extract(ctx, checked, rootDir); err != nil {
		return nil, err
	}
	im := &Image{
		ID: id, Skipped: u.skipped, Bytes: u.bytes, Entries: u.entries,
		Config: Config{
			Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, Env: cfg.Config.Env,
			WorkingDir: cfg.Config.WorkingDir, User: cfg.Config.User,
		},
	}
	meta, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, metaFile), meta, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Someone else published it first: theirs is the same content.
		if existing, lerr := load(final); lerr == nil {
			return existing, nil
		}
		return nil, fmt.Errorf("publishing the unpacked image: %w", err)
	}
	im.Root = filepath.Join(final, "rootfs")
	if len(im.Skipped) > 0 {
		log.Warn("image entries not unpacked", "image", id, "skipped", im.Skipped)
	}
	log.Info("image unpacked", "image", id, "root", im.Root, "bytes", im.Bytes, "entries", im.Entries)
	return im, nil
}

// load reads a published cache entry.
func load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, err
	}
	var im Image
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, fmt.Errorf("reading %s: %w", metaFile, err)
	}
	im.Root = filepath.Join(dir, "rootfs")
	return &im, nil
}
