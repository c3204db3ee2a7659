// Package deps finds the host files a command needs to run inside a root
// that holds nothing else: the command itself, for a script the
// interpreter named by its shebang line, and for every ELF program its
// program interpreter (PT_INTERP) and the shared libraries it needs
// (DT_NEEDED), resolved the way ld.so resolves them without a cache.
//
// It only reads files; it never runs them.
package deps

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultLibDirs are the directories searched after DT_RPATH/DT_RUNPATH,
// in ld.so's order for x86-64 and arm64 Debian, then the generic ones.
// The same directories are ld.so's built-in search path inside the
// sandbox, where there is no ld.so.cache, so a library found here is found
// there at the same path.
var DefaultLibDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// maxFiles bounds the closure; no real program needs this many.
const maxFiles = 4096

// Resolver finds dependencies on the host.
type Resolver struct {
	// LibDirs are searched for libraries; nil: DefaultLibDirs plus the
	// directories listed in /etc/ld.so.conf.
	LibDirs []string
	// PathDirs are searched for a shebang's "env NAME" interpreter; nil:
	// $PATH.
	PathDirs []string
}

// Closure returns every host file that roots (executables, scripts or
// libraries) need, including roots themselves, sorted and without
// duplicates. Paths are absolute and are the paths the program will open
// (symlinks are kept as the names they are found under).
func (r *Resolver) Closure(roots ...string) ([]string, error) {
	if r.LibDirs == nil {
		dirs := slices.Clone(DefaultLibDirs)
		if extra, err := LdSoConf("/etc/ld.so.conf"); err == nil {
			dirs = append(dirs, extra...)
		}
		r.LibDirs = dirs
	}
	if r.PathDirs == nil {
		r.PathDirs = filepath.SplitList(os.Getenv("PATH"))
	}
	seen := map[string]bool{}
	queue := slices.Clone(roots)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%s: not an absolute path", p)
		}
		seen[p] = true
		if len(seen) > maxFiles {
			return nil, fmt.Errorf("more than %d files needed by %s", maxFiles, strings.Join(roots, ", "))
		}
		more, err := r.needs(p)
		if err != nil {
			return nil, err
		}
		queue = append(queue, more...)
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// needs returns what file p needs directly.
func (r *Resolver) needs(p string) ([]string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil // directories and the like are bound as they are
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return nil, nil // too short to be a program: a data file
	}
	switch {
	case string(magic[:2]) == "#!":
		line, err := bufio.NewReader(io.NewSectionReader(f, 0, 512)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		interp, arg, err := Shebang(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out := []string{interp}
		if filepath.Base(interp) == "env" && arg != "" && !strings.HasPrefix(arg, "-") {
			name := strings.Fields(arg)[0]
			found, err := r.lookPath(name)
			if err != nil {
				return nil, fmt.Errorf("%s: interpreter %q: %w", p, name, err)
			}
			out = append(out, found)
		}
		return out, nil
	case bytes.Equal(magic[:], []byte(elf.ELFMAG)):
		return r.elfNeeds(p, f)
	}
	return nil, nil
}

func (r *Resolver) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range r.PathDirs {
		if d == "" {
			continue
		}
		c := filepath.Join(d, name)
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", errors.New("not found on PATH")
}

func (r *Resolver) elfNeeds(p string, f *os.File) ([]string, error) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: reading ELF: %w", p, err)
	}
	var out []string
	for _, prog := range ef.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(prog.Open(), 4096))
		if err != nil {
			return nil, fmt.Errorf("%s: PT_INTERP: %w", p, err)
		}
		out = append(out, string(bytes.TrimRight(b, "\x00")))
	}
	libs, err := ef.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: DT_NEEDED: %w", p, err)
	}
	if len(libs) == 0 {
		return out, nil
	}
	var search []string
	origin := filepath.Dir(p)
	for _, tag := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		vals, _ := ef.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
				if filepath.IsAbs(d) {
					search = append(search, d)
				}
			}
		}
	}
	search = append(search, r.LibDirs...)
	class := ef.Class
	for _, lib := range libs {
		found := ""
		if strings.Contains(lib, "/") {
			found = lib
		} else {
			for _, d := range search {
				c := filepath.Join(d, lib)
				if sameClass(c, class) {
					found = c
					break
				}
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%s: shared library %s not found in %s", p, lib, strings.Join(search, ":"))
		}
		out = append(out, found)
	}
	return out, nil
}

// sameClass reports whether path is an ELF file of the given class (a
// 32-bit library does not satisfy a 64-bit program).
func sameClass(path string, class elf.Class) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Class == class
}

// Shebang parses a script's first line ("#!/bin/sh -e") into the
// interpreter's absolute path and its optional single argument, as the
// kernel does: everything after the first run of blanks is one argument.
func Shebang(line string) (interp, arg string, err error) {
	line, ok := strings.CutPrefix(line, "#!")
	if !ok {
		return "", "", errors.New("no #! line")
	}
	line = strings.TrimRight(line, "\r\n")
	if i := strings.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	line = strings.Trim(line, " \t")
	interp = line
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		interp, arg = line[:i], line[i:]
	}
	arg = strings.Trim(arg, " \t")
	if interp == "" {
		return "", "", errors.New("#! line names no interpreter")
	}
	if !filepath.IsAbs(interp) {
		return "", "", fmt.Errorf("#! interpreter %q is not an absolute path", interp)
	}
	return filepath.Clean(interp), arg, nil
}

// LdSoConf returns the library directories listed in an ld.so.conf file
// and the files its include lines name (glob patterns, relative to the
// including file's directory when not absolute).
func LdSoConf(path string) ([]string, error) {
	return ldSoConf(path, 0)
}

func ldSoConf(path string, depth int) ([]string, error) {
	if depth > 8 {
		return nil, fmt.Errorf("%s: includes nested too deep", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dirs, includes := ParseLdSoConf(b)
	for _, inc := range includes {
		if !filepath.IsAbs(inc) {
			inc = filepath.Join(filepath.Dir(path), inc)
		}
		matches, _ := filepath.Glob(inc)
		for _, m := range matches {
			more, err := ldSoConf(m, depth+1)
			if err != nil {
				continue
			}
			dirs = append(dirs, more...)
		}
	}
	return dirs, nil
}

// ParseLdSoConf splits the text of an ld.so.conf file into directories and
// include patterns. Comments (#) and blank lines are skipped; "hwcap"
// lines are ignored, as ld.so does.
func ParseLdSoConf(b []byte) (dirs, includes []string) {
	for line := range strings.Lines(string(b)) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "include":
			includes = append(includes, fields[1:]...)
		case "hwcap":
		default:
			for _, f := range fields {
				for _, d := range strings.Split(f, ":") {
					if filepath.IsAbs(d) {
						dirs = append(dirs, filepath.Clean(d))
					}
				}
			}
		}
	}
	return dirs, includes
}
