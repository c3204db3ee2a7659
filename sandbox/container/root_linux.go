//go:build linux

package container

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/internal/deps"
	"github.com/culvert-dev/culvert/sandbox"
)

// bind is one read-only bind mount: host src at dst inside the root.
type bind struct{ src, dst string }

// preparedRoot is a skeleton directory (mount points only, owned by the
// runtime) and the binds that fill it.
type preparedRoot struct {
	dir   string
	binds []bind
}

// prepareRoot returns the root for spec, building its skeleton once per
// distinct (root dir, binds, command).
func (r *Runtime) prepareRoot(spec sandbox.Spec) (*preparedRoot, error) {
	root := spec.Isolation.Root
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%q\x00%v\x00%v", root.Dir, root.Binds, spec.Path, root.TmpfsBytes > 0, spec.Isolation.Network.DNS != "")
	key := hex.EncodeToString(h.Sum(nil))[:24]

	r.mu.Lock()
	defer r.mu.Unlock()
	if pr := r.roots[key]; pr != nil {
		return pr, nil
	}
	pr, err := r.buildRoot(key, spec)
	if err != nil {
		return nil, err
	}
	r.roots[key] = pr
	return pr, nil
}

func (r *Runtime) buildRoot(key string, spec sandbox.Spec) (*preparedRoot, error) {
	root := spec.Isolation.Root
	var binds []bind
	var links [][2]string // skeleton symlinks: name, target
	if root.Dir != "" {
		dir, err := filepath.Abs(root.Dir)
		if err != nil {
			return nil, err
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("root %s: %w", dir, err)
		}
		for _, e := range entries {
			name := e.Name()
			if name == "proc" || name == "dev" || (name == "tmp" && root.TmpfsBytes > 0) {
				continue // the runtime mounts its own
			}
			src := filepath.Join(dir, name)
			switch t := e.Type(); {
			case t&os.ModeSymlink != 0:
				// Kept as a link in the skeleton: it resolves inside the
				// container, never on the host.
				target, err := os.Readlink(src)
				if err != nil {
					return nil, err
				}
				links = append(links, [2]string{name, target})
			case t.IsDir() || t.IsRegular():
				binds = append(binds, bind{src: src, dst: "/" + name})
			default:
				// Device nodes, fifos and sockets in a function's files are
				// not carried into its root.
			}
		}
		// A bound program brings what it loads, as in a root built from
		// the command: an interpreter bound beside the function's own
		// files needs its ELF interpreter and libraries too.
		var res deps.Resolver
		files, err := res.Closure(root.Binds...)
		if err != nil {
			return nil, fmt.Errorf("finding what %s needs: %w", strings.Join(root.Binds, ", "), err)
		}
		for _, f := range files {
			binds = append(binds, bind{src: f, dst: f})
		}
	} else {
		var res deps.Resolver
		files, err := res.Closure(append([]string{spec.Path}, root.Binds...)...)
		if err != nil {
			return nil, fmt.Errorf("finding what %s needs: %w", spec.Path, err)
		}
		for _, f := range files {
			binds = append(binds, bind{src: f, dst: f})
		}
	}
	binds = dropCovered(binds)

	// Each culvert process builds its own skeletons (the name carries its
	// pid and runtime tag): another process's may be the root of its live
	// containers, and unlinking a mount point detaches the mounts on it in
	// every namespace.
	skel := filepath.Join(r.opts.StateDir, "roots", fmt.Sprintf("%s-%d-%s", key, os.Getpid(), r.tag))
	tmp, err := os.MkdirTemp(filepath.Join(r.opts.StateDir, "roots"), key+".tmp")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) // nothing left behind if the rename did not happen
	for _, d := range []string{"proc", "dev", "tmp"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, l := range links {
		if err := os.Symlink(l[1], filepath.Join(tmp, l[0])); err != nil {
			return nil, err
		}
	}
	for _, b := range binds {
		if err := mountPoint(tmp, b); err != nil {
			return nil, err
		}
	}
	if spec.Isolation.Network.DNS != "" {
		// The mount point of the generated /etc/resolv.conf.
		if err := os.MkdirAll(filepath.Join(tmp, "etc"), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		if f, err := os.OpenFile(filepath.Join(tmp, "etc", "resolv.conf"), os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			_ = f.Close()
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, skel); err != nil {
		return nil, err
	}
	return &preparedRoot{dir: skel, binds: binds}, nil
}

// staleRoot matches the skeletons buildRoot names: key, pid, runtime tag.
var staleRoot = regexp.MustCompile(`^[0-9a-f]{24}-([0-9]+)-[0-9a-f]{8}$`)

// removeStaleRoots removes the skeletons of culvert processes that have
// exited. Those of live processes (and of older versions, named by key
// alone) stay.
func removeStaleRoots(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleRoot.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// mountPoint creates the empty file or directory b is mounted on.
func mountPoint(skel string, b bind) error {
	fi, err := os.Stat(b.src)
	if err != nil {
		return fmt.Errorf("bind %s: %w", b.src, err)
	}
	dst := filepath.Join(skel, filepath.Clean("/"+b.dst))
	if !strings.HasPrefix(dst, skel+"/") {
		return fmt.Errorf("bind %s: destination %s is outside the root", b.src, b.dst)
	}
	if lfi, err := os.Lstat(dst); err == nil {
		if lfi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("bind %s: destination %s is a symlink in the root", b.src, b.dst)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("bind %s: %w", b.src, err)
	}
	if fi.IsDir() {
		return os.Mkdir(dst, 0o755)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return fmt.Errorf("bind %s: %w", b.src, err)
	}
	return f.Close()
}

// dropCovered removes binds whose destination lies inside a directory
// that another bind already brings in, and sorts parents first.
func dropCovered(binds []bind) []bind {
	slices.SortFunc(binds, func(a, b bind) int { return strings.Compare(a.dst, b.dst) })
	binds = slices.CompactFunc(binds, func(a, b bind) bool { return a.dst == b.dst })
	var out []bind
	for _, b := range binds {
		covered := false
		for _, o := range out {
			rel, ok := strings.CutPrefix(b.dst, strings.TrimSuffix(o.dst, "/")+"/")
			if ok && b.src == filepath.Join(o.src, rel) {
				covered = true // the same host file, already in o
				break
			}
		}
		if !covered {
			out = append(out, b)
		}
	}
	return out
}
