package scaffold

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/pipelines"
)

func TestFindPythonErrors(t *testing.T) {
	dir := t.TempDir()
	notPython := filepath.Join(dir, "ruby")
	if err := os.WriteFile(notPython, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, python, packages, want string
	}{
		{"no python", filepath.Join(dir, "missing"), PythonPackages, "Debian's python3"},
		{"not python3.N", notPython, PythonPackages, "not python3.N"},
		{"no protobuf", "/usr/bin/python3", dir, "apt-get install python3-protobuf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := findPython(tc.python, tc.packages)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestElfClosure: the closure of /bin/sh holds its program interpreter and
// libc, under the names the loader looks up; a file that is not ELF adds
// nothing.
func TestElfClosure(t *testing.T) {
	exe := "/bin/sh"
	got, err := elfClosure(exe, "/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(got, func(p string) bool { return strings.HasSuffix(p, "/libc.so.6") }) {
		t.Fatalf("closure of %s: %v, want libc.so.6 among them", exe, got)
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Fatalf("closure %v is not sorted and unique", got)
	}
	if got, _ := elfClosure("/etc/hostname"); len(got) != 0 {
		t.Fatalf("closure of a text file: %v", got)
	}
}

// TestSnippetWithoutInterpreter: where the interpreter is not found, the
// snippet still loads, is sandboxed, names the usual paths and says that
// they were not found, and why.
func TestSnippetWithoutInterpreter(t *testing.T) {
	for _, lang := range []string{"python", "node"} {
		t.Run(lang, func(t *testing.T) {
			b, err := render(templates, "templates/"+lang+"/pipeline.yaml.tmpl", data{
				Name: "fn", Interp: defaultInterpreter(lang), InterpErr: "no interpreter here",
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"NOT found", "(no interpreter here)", "files: ./", "- " + defaultInterpreter(lang).Command} {
				if !strings.Contains(string(b), want) {
					t.Errorf("snippet lacks %q:\n%s", want, b)
				}
			}
			path := filepath.Join(t.TempDir(), "pipeline.yaml")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			p, err := pipelines.Load(path, nil)
			if err != nil {
				t.Fatalf("%v\n%s", err, b)
			}
			if sb := p.SandboxFor(p.Functions["fn"]); sb.None || len(sb.Binds) != len(defaultInterpreter(lang).Binds) {
				t.Fatalf("sandbox %+v, want the default binds", sb)
			}
		})
	}
}
