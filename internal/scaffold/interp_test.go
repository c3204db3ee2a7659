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

// TestFindInterpreter: what the scaffold binds for Python and Node holds
// the interpreter, the libraries it loads with their program interpreter,
// and for Python its standard library and the packages directory, each
// once, with nothing inside the packages directory listed on its own.
func TestFindInterpreter(t *testing.T) {
	for _, lang := range []string{"python", "node"} {
		t.Run(lang, func(t *testing.T) {
			in, err := FindInterpreter(lang)
			if err != nil {
				t.Skipf("no %s interpreter here: %v", lang, err)
			}
			want := []string{in.Command}
			if lang == "python" {
				want = append(want, PythonPackages)
			}
			for _, w := range want {
				if !slices.Contains(in.Binds, w) {
					t.Errorf("binds %v lack %s", in.Binds, w)
				}
			}
			for _, suffix := range []string{"/libc.so.6", "/ld-linux-x86-64.so.2"} {
				if !slices.ContainsFunc(in.Binds, func(p string) bool { return strings.HasSuffix(p, suffix) }) {
					t.Errorf("binds %v lack a %s", in.Binds, suffix)
				}
			}
			if len(slices.Compact(slices.Sorted(slices.Values(in.Binds)))) != len(in.Binds) {
				t.Errorf("binds %v repeat a path", in.Binds)
			}
			for _, b := range in.Binds {
				if strings.HasPrefix(b, PythonPackages+"/") {
					t.Errorf("bind %s is inside %s, which is bound whole", b, PythonPackages)
				}
			}
		})
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
