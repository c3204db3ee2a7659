// Package scaffold writes the starting files of a new function for
// `culvert fn init`: the function, a test, a pipeline snippet that runs it,
// and a README, from templates embedded in the binary. For Python, Node and
// C it also copies that SDK's sources (package sdk) into the new directory,
// so the function builds with nothing but the language's toolchain and
// Debian packages. Functions in framed mode honour the conformance
// convention (proto/SPEC.md appendix A), so that they pass
// `culvert fn conform` as generated.
//
// It only writes files; building and testing them is the caller's job.
package scaffold

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/culvert-dev/culvert/sdk"
)

//go:embed all:templates
var templates embed.FS

// Languages lists what Generate accepts.
func Languages() []string { return []string{"go", "python", "node", "c", "shell"} }

// Options say what to generate.
type Options struct {
	// Lang is one of Languages.
	Lang string
	// Name names the function: lower-case letters, digits, '-' and '_',
	// starting with a letter.
	Name string
	// Dir is the directory to create; it must not exist, or be empty.
	Dir string
	// CulvertSrc (Go only) is a local checkout of Culvert that go.mod
	// points at with a replace directive; empty leaves go.mod requiring the
	// published module.
	CulvertSrc string
}

var validName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// data is what templates see.
type data struct {
	Name       string
	CulvertSrc string
	NodeDeps   string
	// Interp is the interpreter a Python or Node function runs with, found
	// on this host, for the pipeline snippet's sandbox; InterpErr says why
	// it was not found (the snippet then names the usual paths and says so).
	Interp    Interpreter
	InterpErr string
}

// Generate writes the scaffold and returns the paths written, relative to
// o.Dir, in order.
func Generate(o Options) ([]string, error) {
	if !slices.Contains(Languages(), o.Lang) {
		return nil, fmt.Errorf("unknown language %q: choose one of %s", o.Lang, strings.Join(Languages(), ", "))
	}
	if !validName.MatchString(o.Name) {
		return nil, fmt.Errorf("function name %q: use lower-case letters, digits, '-' and '_', starting with a letter", o.Name)
	}
	if o.Dir == "" {
		return nil, errors.New("no directory given")
	}
	if entries, err := os.ReadDir(o.Dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%s exists and is not empty", o.Dir)
	}
	d := data{Name: o.Name}
	if o.Lang == "python" || o.Lang == "node" {
		in, err := FindInterpreter(o.Lang)
		if err != nil {
			in, d.InterpErr = defaultInterpreter(o.Lang), err.Error()
		}
		d.Interp = in
	}
	if o.CulvertSrc != "" {
		abs, err := filepath.Abs(o.CulvertSrc)
		if err != nil {
			return nil, err
		}
		d.CulvertSrc = filepath.ToSlash(abs)
	}
	files := map[string][]byte{}
	root := "templates/" + o.Lang
	err := fs.WalkDir(templates, root, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel := strings.TrimSuffix(strings.TrimPrefix(p, root+"/"), ".tmpl")
		rel = strings.ReplaceAll(rel, "__name__", o.Name)
		if o.Lang == "node" && rel == "package.json" {
			deps, err := nodeDeps()
			if err != nil {
				return err
			}
			d.NodeDeps = deps
		}
		b, err := render(templates, p, d)
		if err != nil {
			return err
		}
		files[rel] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := addSDK(o.Lang, files); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for rel := range files {
		written = append(written, rel)
	}
	slices.Sort(written)
	for _, rel := range written {
		dst := filepath.Join(o.Dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(rel, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(dst, files[rel], mode); err != nil {
			return nil, err
		}
	}
	return written, nil
}

func render(fsys fs.FS, p string, d data) ([]byte, error) {
	src, err := fs.ReadFile(fsys, p)
	if err != nil {
		return nil, err
	}
	t, err := template.New(path.Base(p)).Delims("<%", "%>").Option("missingkey=error").Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", p, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("template %s: %w", p, err)
	}
	return b.Bytes(), nil
}

// sdkDir is where each SDK's sources go in a new function.
var sdkDir = map[string]string{"python": ".", "node": "culvert-sdk", "c": "."}

// addSDK copies the embedded SDK sources of lang into files. Node's
// package.json and lock file are left out: the function has its own.
func addSDK(lang string, files map[string][]byte) error {
	dir, ok := sdkDir[lang]
	if !ok {
		return nil
	}
	src, err := sdk.Sources(lang)
	if err != nil {
		return err
	}
	return fs.WalkDir(src, ".", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		if lang == "node" && (p == "package.json" || p == "package-lock.json") {
			return nil
		}
		b, err := fs.ReadFile(src, p)
		if err != nil {
			return err
		}
		files[path.Join(dir, p)] = b
		return nil
	})
}

// nodeDeps returns the Node SDK's runtime dependencies, as JSON, so that a
// new function pins the same versions.
func nodeDeps() (string, error) {
	src, err := sdk.Sources("node")
	if err != nil {
		return "", err
	}
	b, err := fs.ReadFile(src, "package.json")
	if err != nil {
		return "", err
	}
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		return "", fmt.Errorf("the Node SDK's package.json: %w", err)
	}
	out, err := json.MarshalIndent(pkg.Dependencies, "  ", "  ")
	return string(out), err
}

// FindCulvertSrc looks for a Culvert checkout in dir and its parents: a
// go.mod whose module is github.com/culvert-dev/culvert. It returns "" when
// there is none.
func FindCulvertSrc(dir string) string {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module github.com/culvert-dev/culvert\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
