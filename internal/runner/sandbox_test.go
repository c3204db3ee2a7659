package runner

import (
	"errors"
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox"
	"github.com/culvert-dev/culvert/sandbox/process"
)

// fakeIsolating stands in only as a marker of which runtime Confine
// picked; nothing is started.
type fakeIsolating struct{ process.Runtime }

func (fakeIsolating) Name() string { return "isolating" }

func TestConfine(t *testing.T) {
	const base = "version: 1\nname: shop\ninputs: {in: {stdin: }}\noutputs: {o: {stdout: }}\nroutes: [{name: r, chain: [a, b], outputs: [o]}]\n"
	tests := []struct {
		name, yaml  string
		unavailable bool
		wantErr     string
		runtimes    map[string]string // function -> runtime name
	}{
		{name: "default sandboxed", yaml: "functions: {a: {command: /bin/true}, b: {command: /bin/true}}\n",
			runtimes: map[string]string{"a": "isolating", "b": "isolating"}},
		{name: "one none", yaml: "functions: {a: {command: /bin/true, sandbox: none}, b: {command: /bin/true}}\n",
			runtimes: map[string]string{"a": "process", "b": "isolating"}},
		{name: "refused when the host cannot sandbox", yaml: "functions: {a: {command: /bin/true, sandbox: none}, b: {command: /bin/true}}\n",
			unavailable: true, wantErr: `function "b"): no user namespaces here`},
		{name: "all none runs anywhere", yaml: "sandbox: none\nfunctions: {a: {command: /bin/true}, b: {command: /bin/true}}\n",
			unavailable: true, runtimes: map[string]string{"a": "process", "b": "process"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := pipelines.Parse("/x/p.yaml", []byte(base+tt.yaml), nil)
			if err != nil {
				t.Fatal(err)
			}
			s := Sandboxing{Isolating: fakeIsolating{}, Plain: process.Runtime{}}
			if tt.unavailable {
				s.Isolating, s.Unavailable = nil, errors.New("no user namespaces here")
			}
			err = CheckSandbox(p, s)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "p.yaml:") {
					t.Fatalf("CheckSandbox = %v, want %q with the file position", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			confine := s.Confine(p)
			for fn, want := range tt.runtimes {
				c, err := confine(p.Functions[fn])
				if err != nil {
					t.Fatal(err)
				}
				if c.Runtime.Name() != want || c.Tenant != "shop" {
					t.Errorf("%s: runtime %s tenant %q, want %s and shop", fn, c.Runtime.Name(), c.Tenant, want)
				}
				if want == "isolating" && (c.Isolation.Network.Mode != "none" || c.Path != "") {
					t.Errorf("%s: isolation %+v path %q", fn, c.Isolation, c.Path)
				}
			}
		})
	}
	var _ sandbox.Runtime = fakeIsolating{}
}

func TestInsidePath(t *testing.T) {
	for in, want := range map[string]string{"fn": "/fn", "./bin/fn": "/bin/fn", "/usr/bin/jq": "/usr/bin/jq", "../../etc/x": "/etc/x"} {
		if got := insidePath(in, nil); got != want {
			t.Errorf("insidePath(%q) = %q, want %q", in, got, want)
		}
	}
	if got := insidePath("", []string{"/entry", "-x"}); got != "/entry" {
		t.Errorf("entrypoint: %q", got)
	}
}
