package pipelines

import (
	"strings"
	"testing"
)

const sandboxBase = `version: 1
name: shop
inputs: {in: {stdin: }}
outputs: {o: {stdout: }}
routes: [{name: r, chain: [f, g], outputs: [o]}]
`

func TestSandboxFor(t *testing.T) {
	tests := []struct {
		name, yaml string
		check      func(t *testing.T, f, g Sandbox)
	}{
		{"default: sandboxed, tenant = pipeline", sandboxBase + "functions: {f: {command: a}, g: {command: b}}\n", func(t *testing.T, f, g Sandbox) {
			if f.None || f.Tenant != "shop" || f.Network != "none" {
				t.Errorf("f = %+v", f)
			}
		}},
		{"pipeline none, one function sandboxed", sandboxBase + "sandbox: none\nfunctions: {f: {command: a}, g: {command: b, sandbox: {files: fn, memory: 64MiB}}}\n", func(t *testing.T, f, g Sandbox) {
			if !f.None {
				t.Errorf("f = %+v, want none", f)
			}
			if g.None || g.MemoryBytes != 64<<20 || g.Tenant != "shop" || !strings.HasSuffix(g.Files, "/fn") {
				t.Errorf("g = %+v", g)
			}
		}},
		{"pipeline defaults and a function override", sandboxBase + `sandbox: {tenant: acme, memory: 1GiB, cpu: "0.5", tmpfs: 16MiB, tenant_memory: 4GiB}
functions:
  f: {command: a, sandbox: none}
  g: {command: b, sandbox: {memory: 128M, pids: 10, binds: [/usr/bin/jq], network: egress, allow: ["10.0.0.0/8:443", "192.168.1.1:8000-8100"]}}
`, func(t *testing.T, f, g Sandbox) {
			if !f.None {
				t.Errorf("f = %+v, want none", f)
			}
			if g.Tenant != "acme" || g.MemoryBytes != 128e6 || g.Pids != 10 || g.CPUCores != 0.5 || g.TmpfsBytes != 16<<20 ||
				g.TenantMemoryBytes != 4<<30 || len(g.AllowEndpoints) != 2 || g.AllowEndpoints[1].ToPort != 8100 {
				t.Errorf("g = %+v", g)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("/x/p.yaml", []byte(tt.yaml), nil)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, p.SandboxFor(p.Functions["f"]), p.SandboxFor(p.Functions["g"]))
		})
	}
}

func TestSandboxErrors(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"functions: {f: {command: a, sandbox: nope}, g: {command: b}}\n", `p.yaml:6:38: functions.f.sandbox: expected ` + "`none`" + ` or a mapping, got string "nope"`},
		{"functions: {f: {command: a, sandbox: {memory: lots}}, g: {command: b}}\n", `p.yaml:6:47: functions.f.sandbox.memory: "lots" is not a size`},
		{"functions: {f: {command: a, sandbox: {cpu: x}}, g: {command: b}}\n", `functions.f.sandbox.cpu: "x" is not a number of CPU cores`},
		{"functions: {f: {command: a, sandbox: {binds: [rel]}}, g: {command: b}}\n", `functions.f.sandbox.binds[0]: bind "rel" must be an absolute host path`},
		{"functions: {f: {command: a, sandbox: {network: egress, allow: [10.0.0.0/8]}}, g: {command: b}}\n", `functions.f.sandbox.allow[0]: allow "10.0.0.0/8" is not CIDR:PORT`},
		{"functions: {f: {command: a, sandbox: {files: a, image: b}}, g: {command: b}}\n", `functions.f.sandbox.image: set files or image, not both`},
		{"functions: {f: {command: a, sandbox: {tenant: x}}, g: {command: b}}\n", `functions.f.sandbox.tenant: tenant is set once for the whole pipeline`},
		{"sandbox: {files: x}\nfunctions: {f: {command: a}, g: {command: b}}\n", `p.yaml:6:18: sandbox.files: a root belongs to one function`},
		{"functions: {f: {command: a, sandbox: {network: open}}, g: {command: b}}\n", `functions.f.sandbox.network`},
	}
	for _, tt := range tests {
		_, err := Parse("p.yaml", []byte(sandboxBase+tt.yaml), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "64k": 64e3, "16MiB": 16 << 20, "1G": 1e9, "2GiB": 2 << 30, "1.5Ki": 1536} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "12XB", "1e300"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d; want an error", in, got)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	f.Add("16MiB")
	f.Add("1.5G")
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := ParseSize(s); err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}

func FuzzParseEndpoint(f *testing.F) {
	f.Add("10.0.0.0/8:443")
	f.Add("[fd00::/8]:1-65535")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEndpoint(s)
		if err == nil && (e.FromPort == 0 || e.ToPort < e.FromPort || !e.Prefix.IsValid()) {
			t.Fatalf("ParseEndpoint(%q) = %+v", s, e)
		}
	})
}
