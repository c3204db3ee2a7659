package scaffold

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/culvert-dev/culvert/internal/deps"
)

// Interpreter is what a function in an interpreted language needs of the
// host to run in Culvert's sandbox, beside its own files: the interpreter
// (a path that is the same inside the sandbox) and the host paths to bind
// read-only (sandbox.binds in a pipeline). These differ between hosts
// (/usr/lib/python3.11 or python3.12, where node is installed, the
// libraries' directory), so the scaffold resolves them when it is
// generated.
type Interpreter struct {
	// Command is the interpreter's absolute path.
	Command string
	// Binds are the host paths the function needs bound read-only: the
	// interpreter, its standard library and packages, and every shared
	// library that it and the packages' C extensions load, with the
	// dynamic linker. A root made of the function's own files
	// (sandbox.files) gets nothing else from the host, so the list is
	// complete.
	Binds []string
}

// PythonPackages is where Debian installs python3-protobuf, which the
// Python SDK needs.
const PythonPackages = "/usr/lib/python3/dist-packages"

// FindInterpreter resolves the interpreter of lang ("python" or "node") on
// this host. Python is Debian's /usr/bin/python3, with its standard library
// /usr/lib/python3.N and python3-protobuf in PythonPackages; Node is the
// node first on PATH.
func FindInterpreter(lang string) (Interpreter, error) {
	switch lang {
	case "python":
		return findPython("/usr/bin/python3", PythonPackages)
	case "node":
		p, err := exec.LookPath("node")
		if err != nil {
			return Interpreter{}, fmt.Errorf("node is not on PATH: %w", err)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return Interpreter{}, fmt.Errorf("resolving %s: %w", p, err)
		}
		real, err = filepath.Abs(real)
		if err != nil {
			return Interpreter{}, err
		}
		var res deps.Resolver
		binds, err := res.Closure(real)
		if err != nil {
			return Interpreter{}, fmt.Errorf("finding what %s loads: %w", real, err)
		}
		return Interpreter{Command: real, Binds: binds}, nil
	}
	return Interpreter{}, fmt.Errorf("no interpreter for language %q", lang)
}

// defaultInterpreter is what FindInterpreter finds on a Debian host with
// python3.11, python3-protobuf and a node in /usr/bin, for a scaffold
// generated where the interpreter is missing.
func defaultInterpreter(lang string) Interpreter {
	libs := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libm.so.6",
		"/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if lang == "node" {
		return Interpreter{Command: "/usr/bin/node", Binds: append([]string{"/usr/bin/node", "/lib/x86_64-linux-gnu/libdl.so.2", "/lib/x86_64-linux-gnu/libpthread.so.0"}, libs...)}
	}
	return Interpreter{Command: "/usr/bin/python3", Binds: append([]string{
		"/usr/bin/python3", "/usr/lib/python3.11", PythonPackages,
		"/lib/x86_64-linux-gnu/libexpat.so.1", "/lib/x86_64-linux-gnu/libprotobuf.so.32", "/lib/x86_64-linux-gnu/libz.so.1",
	}, libs...)}
}

func findPython(python, packages string) (Interpreter, error) {
	real, err := filepath.EvalSymlinks(python)
	if err != nil {
		return Interpreter{}, fmt.Errorf("%s (Debian's python3) is needed: %w", python, err)
	}
	// /usr/bin/python3 -> python3.11: the standard library is
	// /usr/lib/python3.11.
	version := filepath.Base(real)
	if !strings.HasPrefix(version, "python3.") {
		return Interpreter{}, fmt.Errorf("%s resolves to %s, not python3.N", python, real)
	}
	stdlib := filepath.Join("/usr/lib", version)
	if st, err := os.Stat(stdlib); err != nil || !st.IsDir() {
		return Interpreter{}, fmt.Errorf("the standard library of %s is not at %s", real, stdlib)
	}
	if _, err := os.Stat(filepath.Join(packages, "google", "protobuf")); err != nil {
		return Interpreter{}, fmt.Errorf("python3-protobuf is not installed in %s (apt-get install python3-protobuf): %w", packages, err)
	}
	// The C extensions of python3-protobuf (its "cpp" implementation)
	// load libprotobuf. Those of the standard library (lib-dynload: ssl,
	// sqlite, ...) are left to the function to bind if it uses them.
	exts, err := findExtensions(filepath.Join(packages, "google"))
	if err != nil {
		return Interpreter{}, err
	}
	var res deps.Resolver
	files, err := res.Closure(append([]string{python}, exts...)...)
	if err != nil {
		return Interpreter{}, fmt.Errorf("finding what %s and its packages load: %w", python, err)
	}
	binds := []string{python, stdlib, packages}
	for _, f := range files {
		if f != python && !strings.HasPrefix(f, packages+"/") { // bound with their directories
			binds = append(binds, f)
		}
	}
	return Interpreter{Command: python, Binds: binds}, nil
}

// findExtensions returns the C extensions (*.so) under root.
func findExtensions(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrPermission) {
				return nil
			}
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".so") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("looking for C extensions in %s: %w", root, err)
	}
	return out, nil
}
