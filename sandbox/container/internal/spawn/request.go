//go:build linux

package spawn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// Env is the variable that makes a start of this binary a shim, and
// EnvValue its value: "REQUEST_FD,STATUS_FD,LIFE_FD" (LIFE_FD may be
// left out: the shim then does not watch a life pipe). ServerEnvValue
// makes it the fork server: "server,SOCKET_FD,LIFE_FD".
const (
	Env            = "_CULVERT_SPAWN"
	EnvValue       = "3,4,5"
	ServerEnvValue = "server,3,4"
)

// The shim's descriptors, as the runtime passes them (os/exec ExtraFiles).
const (
	RequestFd = 3
	StatusFd  = 4
	LifeFd    = 5
)

const (
	version    = 1
	maxRequest = 16 << 20
	headerLen  = 12
)

// Record tags (see the package doc).
const (
	tagRoot       = 1
	tagHostname   = 2
	tagCloneFlags = 3
	tagNetns      = 4
	tagUIDMap     = 5
	tagGIDMap     = 6
	tagMount      = 7
	tagDevice     = 8
	tagMask       = 9
	tagROPath     = 10
	tagRlimit     = 11
	tagArg        = 12
	tagEnv        = 13
	tagCwd        = 14
	tagSeccomp    = 15
	tagFlags      = 16
	tagCgroup     = 17
	tagOptCgroup  = 18
)

// Flags of a request.
const (
	FlagReadonlyRoot = 1
	FlagNoNewPrivs   = 2
	FlagLoopback     = 4
)

// Mount is one mount of the init, in order.
type Mount struct {
	Flags                    uint64
	Source, Dest, Type, Data string
}

// Rlimit is one resource limit.
type Rlimit struct {
	Resource   uint32
	Soft, Hard uint64
}

// Request is everything the shim and the init need for one start.
type Request struct {
	Root, Hostname, Netns string
	CloneFlags            uint64
	UIDMap, GIDMap        string
	Mounts                []Mount
	Devices               []string
	MaskPaths, ROPaths    []string
	Rlimits               []Rlimit
	Args, Env             []string
	Cwd                   string
	Seccomp               []byte // BPF, 8 bytes per instruction
	Flags                 uint32
	// Cgroups are the instance's cgroup directories, one per hierarchy:
	// the shim writes the init's pid to each cgroup.procs before the init
	// runs the function.
	Cgroups []string
	// OptCgroups are cgroup directories the shim moves the init into if
	// it can (named hierarchies, which the cgroup manager joins the same
	// way).
	OptCgroups []string
}

// FromConfig builds the request for cfg, a container description that
// libcontainer could run as well, with the function's argv, environment
// and working directory and the compiled seccomp program. It refuses the
// parts of a config the init does not implement, so that a config that
// grows a feature cannot lose it silently on this path.
func FromConfig(cfg *configs.Config, args, env []string, cwd string, bpf []byte) (*Request, error) {
	if len(args) == 0 {
		return nil, errors.New("spawn: no command")
	}
	if cfg.Capabilities != nil && (len(cfg.Capabilities.Bounding) > 0 || len(cfg.Capabilities.Effective) > 0 ||
		len(cfg.Capabilities.Permitted) > 0 || len(cfg.Capabilities.Inheritable) > 0 || len(cfg.Capabilities.Ambient) > 0) {
		return nil, errors.New("spawn: capabilities other than none are not supported")
	}
	if cfg.Seccomp != nil && len(bpf) == 0 {
		return nil, errors.New("spawn: the config has a seccomp profile but no program was given")
	}
	if len(cfg.UIDMappings) != 1 || len(cfg.GIDMappings) != 1 {
		return nil, errors.New("spawn: exactly one uid and one gid mapping are supported")
	}
	r := &Request{
		Root: cfg.Rootfs, Hostname: cfg.Hostname, Args: args, Env: env, Cwd: cwd, Seccomp: bpf,
		MaskPaths: cfg.MaskPaths, ROPaths: cfg.ReadonlyPaths,
	}
	idmap := func(m configs.IDMap) string {
		return fmt.Sprintf("%d %d %d\n", m.ContainerID, m.HostID, m.Size)
	}
	r.UIDMap, r.GIDMap = idmap(cfg.UIDMappings[0]), idmap(cfg.GIDMappings[0])
	newNet := false
	for _, ns := range cfg.Namespaces {
		if ns.Path != "" {
			if ns.Type != configs.NEWNET {
				return nil, fmt.Errorf("spawn: joining a %s namespace is not supported", ns.Type)
			}
			r.Netns = ns.Path
			continue
		}
		r.CloneFlags |= uint64(ns.Syscall())
		newNet = newNet || ns.Type == configs.NEWNET
	}
	if r.CloneFlags&unix.CLONE_NEWUSER == 0 || r.CloneFlags&unix.CLONE_NEWNS == 0 || r.CloneFlags&unix.CLONE_NEWPID == 0 {
		return nil, errors.New("spawn: user, mount and pid namespaces are required")
	}
	for _, n := range cfg.Networks {
		if n.Type != "loopback" {
			return nil, fmt.Errorf("spawn: network type %q is not supported", n.Type)
		}
		if newNet {
			r.Flags |= FlagLoopback
		}
	}
	if cfg.Readonlyfs {
		r.Flags |= FlagReadonlyRoot
	}
	if cfg.NoNewPrivileges {
		r.Flags |= FlagNoNewPrivs
	}
	for _, m := range cfg.Mounts {
		if m.PropagationFlags != nil || m.IsIDMapped() || m.RecAttr != nil {
			return nil, fmt.Errorf("spawn: mount %s: only plain mounts and binds are supported", m.Destination)
		}
		r.Mounts = append(r.Mounts, Mount{Flags: uint64(m.Flags), Source: m.Source, Dest: m.Destination, Type: m.Device, Data: m.Data})
	}
	for _, d := range cfg.Devices {
		r.Devices = append(r.Devices, d.Path)
	}
	for _, l := range cfg.Rlimits {
		r.Rlimits = append(r.Rlimits, Rlimit{Resource: uint32(l.Type), Soft: l.Soft, Hard: l.Hard})
	}
	return r, nil
}

// Encode returns the request in the version 1 format.
func (r *Request) Encode() ([]byte, error) {
	b := make([]byte, headerLen, 4096)
	var err error
	str := func(tag uint16, s string) {
		if err == nil && strings.IndexByte(s, 0) >= 0 {
			err = fmt.Errorf("spawn: %q holds a NUL byte", s)
		}
		b = rec(b, tag, []byte(s))
	}
	opt := func(tag uint16, s string) {
		if s != "" {
			str(tag, s)
		}
	}
	str(tagRoot, r.Root)
	opt(tagHostname, r.Hostname)
	b = rec(b, tagCloneFlags, binary.LittleEndian.AppendUint64(nil, r.CloneFlags))
	opt(tagNetns, r.Netns)
	str(tagUIDMap, r.UIDMap)
	str(tagGIDMap, r.GIDMap)
	for _, m := range r.Mounts {
		p := binary.LittleEndian.AppendUint64(nil, m.Flags)
		for _, s := range []string{m.Source, m.Dest, m.Type, m.Data} {
			if strings.IndexByte(s, 0) >= 0 {
				return nil, fmt.Errorf("spawn: mount %q holds a NUL byte", m.Dest)
			}
			p = append(append(p, s...), 0)
		}
		b = rec(b, tagMount, p)
	}
	for _, s := range r.Devices {
		str(tagDevice, s)
	}
	for _, s := range r.MaskPaths {
		str(tagMask, s)
	}
	for _, s := range r.ROPaths {
		str(tagROPath, s)
	}
	for _, l := range r.Rlimits {
		p := binary.LittleEndian.AppendUint32(nil, l.Resource)
		p = binary.LittleEndian.AppendUint64(p, l.Soft)
		b = rec(b, tagRlimit, binary.LittleEndian.AppendUint64(p, l.Hard))
	}
	for _, s := range r.Args {
		str(tagArg, s)
	}
	for _, s := range r.Env {
		str(tagEnv, s)
	}
	opt(tagCwd, r.Cwd)
	for _, s := range r.Cgroups {
		if !strings.HasPrefix(s, "/") {
			return nil, fmt.Errorf("spawn: cgroup %q is not an absolute path", s)
		}
		str(tagCgroup, s)
	}
	for _, s := range r.OptCgroups {
		if !strings.HasPrefix(s, "/") {
			return nil, fmt.Errorf("spawn: cgroup %q is not an absolute path", s)
		}
		str(tagOptCgroup, s)
	}
	if len(r.Seccomp) > 0 {
		if len(r.Seccomp)%8 != 0 || len(r.Seccomp)/8 > 4096 {
			return nil, fmt.Errorf("spawn: seccomp program of %d bytes is not a BPF program", len(r.Seccomp))
		}
		b = rec(b, tagSeccomp, r.Seccomp)
	}
	b = rec(b, tagFlags, binary.LittleEndian.AppendUint32(nil, r.Flags))
	if err != nil {
		return nil, err
	}
	if len(b)-headerLen > maxRequest {
		return nil, fmt.Errorf("spawn: request of %d bytes exceeds %d", len(b)-headerLen, maxRequest)
	}
	copy(b, "CVSP")
	b[4] = version
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-headerLen))
	return b, nil
}

func rec(b []byte, tag uint16, p []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, tag)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

// Decode parses a request as the shim does, with the same checks (for
// tests: the shim has its own decoder in C).
func Decode(b []byte) (*Request, error) {
	if len(b) < headerLen || string(b[:4]) != "CVSP" || b[4] != version || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, errors.New("spawn: not a version 1 request")
	}
	n := binary.LittleEndian.Uint32(b[8:])
	if n > maxRequest || uint64(n) != uint64(len(b)-headerLen) {
		return nil, fmt.Errorf("spawn: body length %d, have %d bytes", n, len(b)-headerLen)
	}
	r := &Request{}
	p := b[headerLen:]
	for len(p) > 0 {
		if len(p) < 6 {
			return nil, errors.New("spawn: truncated record header")
		}
		tag := binary.LittleEndian.Uint16(p)
		l := binary.LittleEndian.Uint32(p[2:])
		p = p[6:]
		if uint64(l) > uint64(len(p)) {
			return nil, fmt.Errorf("spawn: record %d of %d bytes past the end", tag, l)
		}
		v := p[:l]
		p = p[l:]
		s := func() (string, error) {
			for _, c := range v {
				if c == 0 {
					return "", fmt.Errorf("spawn: record %d: NUL in a string", tag)
				}
			}
			return string(v), nil
		}
		var err error
		var x string
		switch tag {
		case tagRoot, tagHostname, tagNetns, tagUIDMap, tagGIDMap, tagCwd, tagDevice, tagMask, tagROPath, tagArg, tagEnv, tagCgroup, tagOptCgroup:
			if x, err = s(); err != nil {
				return nil, err
			}
		}
		switch tag {
		case tagRoot:
			r.Root = x
		case tagHostname:
			r.Hostname = x
		case tagNetns:
			r.Netns = x
		case tagUIDMap:
			r.UIDMap = x
		case tagGIDMap:
			r.GIDMap = x
		case tagCwd:
			r.Cwd = x
		case tagDevice:
			r.Devices = append(r.Devices, x)
		case tagMask:
			r.MaskPaths = append(r.MaskPaths, x)
		case tagROPath:
			r.ROPaths = append(r.ROPaths, x)
		case tagArg:
			r.Args = append(r.Args, x)
		case tagEnv:
			r.Env = append(r.Env, x)
		case tagCgroup:
			if !strings.HasPrefix(x, "/") {
				return nil, fmt.Errorf("spawn: cgroup %q is not an absolute path", x)
			}
			r.Cgroups = append(r.Cgroups, x)
		case tagOptCgroup:
			if !strings.HasPrefix(x, "/") {
				return nil, fmt.Errorf("spawn: cgroup %q is not an absolute path", x)
			}
			r.OptCgroups = append(r.OptCgroups, x)
		case tagCloneFlags:
			if l != 8 {
				return nil, errors.New("spawn: clone flags record is not 8 bytes")
			}
			r.CloneFlags = binary.LittleEndian.Uint64(v)
		case tagFlags:
			if l != 4 {
				return nil, errors.New("spawn: flags record is not 4 bytes")
			}
			r.Flags = binary.LittleEndian.Uint32(v)
		case tagRlimit:
			if l != 20 {
				return nil, errors.New("spawn: rlimit record is not 20 bytes")
			}
			r.Rlimits = append(r.Rlimits, Rlimit{binary.LittleEndian.Uint32(v), binary.LittleEndian.Uint64(v[4:]), binary.LittleEndian.Uint64(v[12:])})
		case tagSeccomp:
			if l == 0 || l%8 != 0 || l/8 > 4096 {
				return nil, fmt.Errorf("spawn: seccomp program of %d bytes", l)
			}
			r.Seccomp = append([]byte(nil), v...)
		case tagMount:
			if l < 8 {
				return nil, errors.New("spawn: short mount record")
			}
			rest, ok := strings.CutSuffix(string(v[8:]), "\x00")
			f := strings.Split(rest, "\x00")
			if !ok || len(f) != 4 {
				return nil, errors.New("spawn: mount record does not hold four NUL-terminated strings")
			}
			if !strings.HasPrefix(f[1], "/") {
				return nil, fmt.Errorf("spawn: mount destination %q is not absolute", f[1])
			}
			r.Mounts = append(r.Mounts, Mount{Flags: binary.LittleEndian.Uint64(v), Source: f[0], Dest: f[1], Type: f[2], Data: f[3]})
		default:
			return nil, fmt.Errorf("spawn: unknown record %d", tag)
		}
	}
	if !strings.HasPrefix(r.Root, "/") || len(r.Args) == 0 || r.UIDMap == "" || r.GIDMap == "" {
		return nil, errors.New("spawn: root, command or id maps missing")
	}
	return r, nil
}

// Failure is a step of the shim or the init that failed.
type Failure struct {
	Step  string
	Errno syscall.Errno
}

func (f *Failure) Error() string { return f.Step + ": " + f.Errno.Error() }

func (f *Failure) Unwrap() error { return f.Errno }

// ReadShimPid reads the shim's first message: its own pid.
func ReadShimPid(st io.Reader) (int, error) {
	var m [5]byte
	if _, err := io.ReadFull(st, m[:]); err != nil {
		return 0, fmt.Errorf("spawn: the shim did not start (no pid on the status pipe): %w", err)
	}
	if m[0] != 'S' {
		return 0, fmt.Errorf("spawn: status: unknown message %q, want the shim's pid", m[0])
	}
	pid := binary.LittleEndian.Uint32(m[1:])
	if pid == 0 || pid > 1<<22 {
		return 0, fmt.Errorf("spawn: status: shim pid %d", pid)
	}
	return int(pid), nil
}

// ReadPid reads the status pipe up to the init's pid: the pid, or the
// failure of a step before it.
func ReadPid(st io.Reader) (int, error) {
	var k [1]byte
	if _, err := io.ReadFull(st, k[:]); err != nil {
		return 0, fmt.Errorf("spawn: the shim ended before reporting the init's pid: %w", err)
	}
	switch k[0] {
	case 'P':
		var p [4]byte
		if _, err := io.ReadFull(st, p[:]); err != nil {
			return 0, fmt.Errorf("spawn: status: %w", err)
		}
		return int(binary.LittleEndian.Uint32(p[:])), nil
	case 'E':
		return 0, readFailure(st)
	}
	return 0, fmt.Errorf("spawn: status: unknown message %q", k[0])
}

// Result is what the status pipe said of a start after the init's pid.
type Result struct {
	// ProcAhead: the init attached a /proc it had mounted before its
	// start (with its masks and read-only paths), rather than mounting
	// one on the start's path.
	ProcAhead bool
	// DevAhead: the init attached a /dev its shim had made before the
	// start (the tmpfs with the four device nodes, read-only).
	DevAhead bool
}

// ReadResult reads the rest of the status pipe: at EOF (the function was
// exec'd) what it said of the start, or the failure of a step.
func ReadResult(st io.Reader) (Result, error) {
	var res Result
	for {
		var k [1]byte
		n, err := st.Read(k[:])
		if n == 0 && errors.Is(err, io.EOF) {
			return res, nil
		}
		if n == 0 {
			return res, fmt.Errorf("spawn: status: %w", err)
		}
		switch k[0] {
		case 'A':
			res.ProcAhead = true
		case 'D':
			res.DevAhead = true
		case 'E':
			return res, readFailure(st)
		default:
			return res, fmt.Errorf("spawn: status: unknown message %q", k[0])
		}
	}
}

func readFailure(st io.Reader) error {
	var h [8]byte
	if _, err := io.ReadFull(st, h[:]); err != nil {
		return fmt.Errorf("spawn: status: %w", err)
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n > 1024 {
		return fmt.Errorf("spawn: status: step name of %d bytes", n)
	}
	step := make([]byte, n)
	if _, err := io.ReadFull(st, step); err != nil {
		return fmt.Errorf("spawn: status: %w", err)
	}
	return &Failure{Step: string(step), Errno: syscall.Errno(binary.LittleEndian.Uint32(h[:4]))}
}
