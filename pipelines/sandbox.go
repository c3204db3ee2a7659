package pipelines

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Sandbox says how a function's instances are confined. On a function it
// applies to that function; at the top of the pipeline it sets the
// defaults for every function and the tenant they run as. The scalar
// `sandbox: none` runs without a sandbox.
type Sandbox struct {
	// Files is a directory holding the function's own files, mounted
	// read-only as its root.
	Files string `yaml:"files,omitempty" doc:"Directory holding the function's own files (relative to the pipeline file); mounted read-only as its root. The command is then a path inside it."`
	// Image is an OCI image (an OCI layout directory or a docker save
	// tarball) unpacked read-only as the root.
	Image string `yaml:"image,omitempty" doc:"OCI image for the root: an OCI layout directory or a docker-save tarball (relative to the pipeline file). The command is then a path inside it."`
	// Binds are host paths mounted read-only at the same path inside.
	Binds []string `yaml:"binds,omitempty" doc:"Host paths (absolute) mounted read-only at the same path inside, e.g. an interpreter and its libraries."`
	// Tmpfs is the size of a writable tmpfs at /tmp; empty: none.
	Tmpfs string `yaml:"tmpfs,omitempty" doc:"Size of a writable tmpfs at /tmp, e.g. 16MiB; the only place a function can write. Default: none."`
	// Memory, Pids and CPU limit each instance.
	Memory string `yaml:"memory,omitempty" doc:"Memory limit of each instance, e.g. 256MiB (default 256MiB). Exceeding it is an out-of-memory kill."`
	Pids   int    `yaml:"pids,omitempty" min:"1" doc:"Most processes and threads in each instance (default 128)."`
	CPU    string `yaml:"cpu,omitempty" doc:"CPU quota of each instance in cores, e.g. 0.5 (default 1)."`
	// Network is none (only loopback) or egress.
	Network string `yaml:"network,omitempty" enum:"none,egress" doc:"none (default): only its own loopback; egress: outbound TCP to allow only."`
	// Allow lists egress destinations: CIDR:PORT or CIDR:FROM-TO.
	Allow []string `yaml:"allow,omitempty" doc:"Egress destinations, CIDR:PORT or CIDR:FROM-TO, e.g. 10.1.0.0/16:443."`
	// DNS is the one resolver (ip:port) egress may query.
	DNS string `yaml:"dns,omitempty" doc:"The one DNS resolver (ip:port) an egress function may query."`
	// Tenant owns the instances: tenants get separate host uids and
	// cgroup parents. Default: the pipeline's name.
	Tenant string `yaml:"tenant,omitempty" check:"name" doc:"Tenant the instances run as (default: the pipeline name). Each tenant has its own host uid range and cgroup parent."`
	// TenantMemory, TenantPids and TenantCPU bound the tenant's instances
	// together (pipeline level only).
	TenantMemory string `yaml:"tenant_memory,omitempty" doc:"Pipeline level: memory limit of all the tenant's instances together (default 2GiB)."`
	TenantPids   int    `yaml:"tenant_pids,omitempty" min:"1" doc:"Pipeline level: most processes of all the tenant's instances together (default 2048)."`
	TenantCPU    string `yaml:"tenant_cpu,omitempty" doc:"Pipeline level: CPU quota of all the tenant's instances together, in cores (default: no quota)."`

	// None is set by `sandbox: none`.
	None bool `yaml:"-"`
	// Parsed values, set by validation.
	TmpfsBytes        int64      `yaml:"-"`
	MemoryBytes       int64      `yaml:"-"`
	CPUCores          float64    `yaml:"-"`
	AllowEndpoints    []Endpoint `yaml:"-"`
	TenantMemoryBytes int64      `yaml:"-"`
	TenantCPUCores    float64    `yaml:"-"`
	// Pos is where the block is, for messages.
	Pos Pos `yaml:"-"`
}

// Endpoint is one parsed egress destination.
type Endpoint struct {
	Prefix   netip.Prefix
	FromPort uint16
	ToPort   uint16
}

// sandbox decodes a sandbox block: `none`, or a mapping.
func (d *decoder) sandbox(n *yaml.Node, v reflect.Value, c ctx) bool {
	sb := v.Addr().Interface().(*Sandbox)
	sb.Pos = d.at(n)
	if n.Kind == yaml.ScalarNode {
		text, tag, _, ok := d.scalar(n, c)
		if !ok {
			return false
		}
		if text != "none" {
			d.errorf(d.at(n), c.path, "expected `none` or a mapping, got %s", describe(n, text, tag))
			return false
		}
		sb.None = true
		return true
	}
	return d.structure(n, v, c)
}

// applySandboxDefaults leaves the blocks as written: SandboxFor merges
// them when the pipeline runs, so that a loaded pipeline still shows what
// its file says.
func applySandboxDefaults(p *Pipeline) {}

// SandboxFor returns fn's effective sandbox: its own block over the
// pipeline's, with the tenant defaulting to the pipeline's name and the
// network to none. None is set when the function runs unconfined: it says
// `sandbox: none`, or the pipeline does and the function has no block of
// its own.
func (p *Pipeline) SandboxFor(fn *Function) Sandbox {
	var top Sandbox
	if p.Sandbox != nil {
		top = *p.Sandbox
	}
	setStr(&top.Tenant, p.Name)
	if fn.Sandbox == nil {
		sb := top
		sb.Files, sb.Image, sb.Binds = "", "", nil // a root belongs to one function
		setStr(&sb.Network, "none")
		return sb
	}
	sb := *fn.Sandbox
	if sb.None {
		sb.Tenant = top.Tenant
		return sb
	}
	if sb.Files != "" && !filepath.IsAbs(sb.Files) && fn.Dir != "" {
		sb.Files = filepath.Join(fn.Dir, sb.Files)
	}
	if sb.Image != "" && !filepath.IsAbs(sb.Image) && fn.Dir != "" && !strings.Contains(sb.Image, ":") {
		sb.Image = filepath.Join(fn.Dir, sb.Image)
	}
	sb.Tenant, sb.TenantMemoryBytes, sb.TenantPids, sb.TenantCPUCores = top.Tenant, top.TenantMemoryBytes, top.TenantPids, top.TenantCPUCores
	if !top.None {
		if sb.TmpfsBytes == 0 {
			sb.TmpfsBytes, sb.Tmpfs = top.TmpfsBytes, top.Tmpfs
		}
		if sb.MemoryBytes == 0 {
			sb.MemoryBytes, sb.Memory = top.MemoryBytes, top.Memory
		}
		setInt(&sb.Pids, top.Pids)
		if sb.CPUCores == 0 {
			sb.CPUCores, sb.CPU = top.CPUCores, top.CPU
		}
		if sb.Network == "" {
			sb.Network, sb.AllowEndpoints, sb.Allow, sb.DNS = top.Network, top.AllowEndpoints, top.Allow, top.DNS
		}
	}
	setStr(&sb.Network, "none")
	return sb
}

func (d *decoder) validateSandbox(p *Pipeline) {
	if p.Sandbox != nil {
		d.checkSandbox(p.Sandbox, "sandbox", true)
	}
	for _, name := range sortedKeys(p.Functions) {
		fn := p.Functions[name]
		if fn.Sandbox != nil {
			d.checkSandbox(fn.Sandbox, joinPath(joinPath("functions", name), "sandbox"), false)
		}
	}
}

// checkSandbox parses the sizes and endpoints of one block.
func (d *decoder) checkSandbox(sb *Sandbox, path string, top bool) {
	if sb.None {
		return
	}
	size := func(field, text string, dst *int64) {
		if text == "" {
			return
		}
		n, err := ParseSize(text)
		if err != nil {
			d.errorf(d.posOf(path+"."+field), path+"."+field, "%v", err)
			return
		}
		*dst = n
	}
	cores := func(field, text string, dst *float64) {
		if text == "" {
			return
		}
		f, err := strconv.ParseFloat(text, 64)
		if err != nil || f <= 0 || f > 1024 {
			d.errorf(d.posOf(path+"."+field), path+"."+field, "%q is not a number of CPU cores such as 0.5 or 2", text)
			return
		}
		*dst = f
	}
	size("tmpfs", sb.Tmpfs, &sb.TmpfsBytes)
	size("memory", sb.Memory, &sb.MemoryBytes)
	cores("cpu", sb.CPU, &sb.CPUCores)
	if sb.MemoryBytes != 0 && sb.MemoryBytes < 4<<20 {
		d.errorf(d.posOf(path+".memory"), path+".memory", "%s is too little memory to start a process; give at least 4MiB", sb.Memory)
	}
	if top {
		size("tenant_memory", sb.TenantMemory, &sb.TenantMemoryBytes)
		cores("tenant_cpu", sb.TenantCPU, &sb.TenantCPUCores)
		for _, f := range []string{"files", "image", "binds"} {
			if _, ok := d.pos[path+"."+f]; ok {
				d.errorf(d.posOf(path+"."+f), path+"."+f, "a root belongs to one function: set %s on the function's sandbox", f)
			}
		}
	} else {
		for _, f := range []string{"tenant", "tenant_memory", "tenant_pids", "tenant_cpu"} {
			if _, ok := d.pos[path+"."+f]; ok {
				d.errorf(d.posOf(path+"."+f), path+"."+f, "%s is set once for the whole pipeline, in the top-level sandbox block", f)
			}
		}
	}
	if sb.Files != "" && sb.Image != "" {
		d.errorf(d.posOf(path+".image"), path+".image", "set files or image, not both")
	}
	for i, b := range sb.Binds {
		if !filepath.IsAbs(b) || filepath.Clean(b) == "/" {
			p := indexPath(path+".binds", i)
			d.errorf(d.posOf(p), p, "bind %q must be an absolute host path other than /", b)
		}
	}
	sb.AllowEndpoints = nil
	for i, a := range sb.Allow {
		e, err := ParseEndpoint(a)
		if err != nil {
			p := indexPath(path+".allow", i)
			d.errorf(d.posOf(p), p, "%v", err)
			continue
		}
		sb.AllowEndpoints = append(sb.AllowEndpoints, e)
	}
	if len(sb.Allow) > 0 && sb.Network != "egress" && sb.Network != "" {
		d.errorf(d.posOf(path+".allow"), path+".allow", "allow needs network: egress")
	}
	if sb.DNS != "" {
		if _, err := netip.ParseAddrPort(sb.DNS); err != nil {
			d.errorf(d.posOf(path+".dns"), path+".dns", "dns %q is not ip:port", sb.DNS)
		}
	}
}

// ParseSize parses a size such as 512, 64k, 16MiB, 1G or 2GiB into bytes.
// Decimal (k, M, G) and binary (Ki, Mi, Gi) units are told apart; a
// trailing B is optional.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "B")
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult := map[string]float64{
		"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
		"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
	}[unit]
	f, err := strconv.ParseFloat(num, 64)
	if mult == 0 || err != nil || f < 0 || f*mult > 1<<50 {
		return 0, fmt.Errorf("%q is not a size such as 64MiB, 512k or 1G", s)
	}
	return int64(f * mult), nil
}

// ParseEndpoint parses CIDR:PORT or CIDR:FROM-TO ([v6 CIDR]:PORT for IPv6).
func ParseEndpoint(s string) (Endpoint, error) {
	bad := fmt.Errorf("allow %q is not CIDR:PORT or CIDR:FROM-TO, e.g. 10.0.0.0/8:443", s)
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return Endpoint{}, bad
	}
	cidr, ports := strings.TrimSuffix(strings.TrimPrefix(s[:i], "["), "]"), s[i+1:]
	if !strings.Contains(cidr, "/") {
		if a, err := netip.ParseAddr(cidr); err == nil {
			cidr = netip.PrefixFrom(a, a.BitLen()).String()
		}
	}
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Endpoint{}, bad
	}
	from, to, ok := strings.Cut(ports, "-")
	if !ok {
		to = from
	}
	lo, err1 := strconv.ParseUint(from, 10, 16)
	hi, err2 := strconv.ParseUint(to, 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || hi < lo {
		return Endpoint{}, bad
	}
	return Endpoint{Prefix: pfx.Masked(), FromPort: uint16(lo), ToPort: uint16(hi)}, nil
}
