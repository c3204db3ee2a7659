package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// unpacker writes a flattened image into a directory through an os.Root.
type unpacker struct {
	max        int64
	maxEntries int

	bytes   int64
	entries int
	skipped []string
	// dirModes holds each directory's mode, applied once every entry is
	// written (so a read-only directory still receives its files). The
	// flattened stream lists upper layers first: the first header for a
	// directory wins, and a directory first made only as a parent takes
	// the mode of a later (lower-layer) header.
	dirModes map[string]fs.FileMode
	// links are hard links whose target comes from a lower layer, which
	// the flattened stream lists later: made once everything else is.
	links [][2]string
}

func (u *unpacker) extract(ctx context.Context, img *verifiedImage, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	u.dirModes = map[string]fs.FileMode{}

	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the image's layers: %w", err)
		}
		if err := u.entry(root, h, tr); err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
	}
	// The flattening goroutine reports a layer it refused (an unsafe path)
	// only after the tar trailer, so read the stream to its real end.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("reading the image's layers: %w", err)
	}
	if err := img.errs.first(); err != nil {
		return err
	}
	for _, l := range u.links {
		if err := root.Link(l[0], l[1]); err != nil {
			return fmt.Errorf("entry %q: %w", l[1], err)
		}
	}
	for name, mode := range u.dirModes {
		if err := root.Chmod(name, mode); err != nil {
			return fmt.Errorf("entry %q: %w", name, err)
		}
	}
	return nil
}

// clean turns an archive name into a path relative to the root, or "" for
// the root itself.
func clean(name string) (string, error) {
	n := path.Clean("/" + strings.ReplaceAll(name, "\\", "/"))
	if n == "/" {
		return "", nil
	}
	n = n[1:]
	if !fs.ValidPath(n) {
		return "", errors.New("not a valid path")
	}
	return n, nil
}

// sanitize keeps the permission bits only (no setuid, setgid or sticky), and
// makes everything readable: the root is mounted read-only and its owner is
// not the sandbox's mapped user.
func sanitize(mode int64, dir bool) fs.FileMode {
	perm := fs.FileMode(mode) & 0o755
	if dir {
		return perm | 0o555
	}
	if perm&0o111 != 0 {
		perm |= 0o111
	}
	return perm | 0o444
}

func (u *unpacker) count(n int64) error {
	u.entries++
	if u.entries > u.maxEntries {
		return fmt.Errorf("the image has more than %d entries", u.maxEntries)
	}
	u.bytes += n
	if u.bytes > u.max {
		return fmt.Errorf("the image unpacks to more than %d bytes", u.max)
	}
	return nil
}

func (u *unpacker) entry(root *os.Root, h *tar.Header, r io.Reader) error {
	name, err := clean(h.Name)
	if err != nil {
		return err
	}
	if h.Typeflag != tar.TypeDir && name != "" {
		// An upper layer's entry (or a directory made as its parent)
		// already stands here: the lower entry is hidden, as in overlayfs.
		if _, err := root.Lstat(name); err == nil {
			return nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := u.count(0); err != nil {
			return err
		}
		if name == "" {
			return nil
		}
		if err := root.MkdirAll(name, 0o755); err != nil {
			return err
		}
		if _, ok := u.dirModes[name]; !ok {
			u.dirModes[name] = sanitize(h.Mode, true)
		}
		return nil
	case tar.TypeReg:
		if err := u.count(h.Size); err != nil {
			return err
		}
		if err := u.parent(root, name); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.CopyN(f, r, h.Size); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return root.Chmod(name, sanitize(h.Mode, false))
	case tar.TypeSymlink:
		if err := u.count(0); err != nil {
			return err
		}
		if err := u.parent(root, name); err != nil {
			return err
		}
		return root.Symlink(h.Linkname, name)
	case tar.TypeLink:
		if err := u.count(0); err != nil {
			return err
		}
		target, err := clean(h.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("hard link to %q: not a file in the image", h.Linkname)
		}
		if err := u.parent(root, name); err != nil {
			return err
		}
		if _, err := root.Lstat(target); errors.Is(err, fs.ErrNotExist) {
			u.links = append(u.links, [2]string{target, name})
			return nil
		}
		return root.Link(target, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]string{tar.TypeChar: "character device", tar.TypeBlock: "block device", tar.TypeFifo: "fifo"}[h.Typeflag]
		u.skipped = append(u.skipped, "/"+name+" ("+kind+")")
		return nil
	default:
		// PAX and GNU extension headers are consumed by archive/tar;
		// anything else has no meaning in a root filesystem.
		u.skipped = append(u.skipped, fmt.Sprintf("/%s (tar type %q)", name, h.Typeflag))
		return nil
	}
}

// parent creates the directories above name that an upper layer's entry
// needs before a lower layer's header for them arrives.
func (u *unpacker) parent(root *os.Root, name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	return root.MkdirAll(dir, 0o755)
}
