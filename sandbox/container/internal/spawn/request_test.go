//go:build linux

package spawn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

func testConfig() *configs.Config {
	return &configs.Config{
		Rootfs:          "/run/culvert/roots/x",
		Hostname:        "culvert",
		Readonlyfs:      true,
		NoNewPrivileges: true,
		Capabilities:    &configs.Capabilities{},
		Namespaces: configs.Namespaces{
			{Type: configs.NEWNS}, {Type: configs.NEWUTS}, {Type: configs.NEWIPC}, {Type: configs.NEWPID},
			{Type: configs.NEWUSER}, {Type: configs.NEWCGROUP}, {Type: configs.NEWNET},
		},
		Networks:      []*configs.Network{{Type: "loopback"}},
		Mounts:        []*configs.Mount{{Source: "proc", Destination: "/proc", Device: "proc", Flags: unix.MS_NOSUID}, {Source: "/bin/sh", Destination: "/bin/sh", Device: "bind", Flags: unix.MS_BIND | unix.MS_RDONLY}},
		MaskPaths:     []string{"/proc/kcore"},
		ReadonlyPaths: []string{"/proc/sys"},
		UIDMappings:   []configs.IDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GIDMappings:   []configs.IDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		Rlimits:       []configs.Rlimit{{Type: unix.RLIMIT_NOFILE, Soft: 4096, Hard: 4096}},
		Seccomp:       &configs.Seccomp{},
	}
}

func TestFromConfigRoundTrip(t *testing.T) {
	bpf := bytes.Repeat([]byte{6, 0, 0, 0, 0, 0, 0xff, 0x7f}, 3)
	tests := []struct {
		name   string
		mutate func(*configs.Config)
		check  func(t *testing.T, r *Request)
	}{
		{name: "network none", check: func(t *testing.T, r *Request) {
			if r.Flags != FlagReadonlyRoot|FlagNoNewPrivs|FlagLoopback || r.CloneFlags&unix.CLONE_NEWNET == 0 || r.Netns != "" {
				t.Errorf("flags %b, clone flags %#x, netns %q", r.Flags, r.CloneFlags, r.Netns)
			}
		}},
		{name: "egress joins a namespace", mutate: func(c *configs.Config) {
			c.Namespaces[6].Path = "/run/netns/x"
			c.Networks = nil
		}, check: func(t *testing.T, r *Request) {
			if r.Flags&FlagLoopback != 0 || r.CloneFlags&unix.CLONE_NEWNET != 0 || r.Netns != "/run/netns/x" {
				t.Errorf("flags %b, clone flags %#x, netns %q", r.Flags, r.CloneFlags, r.Netns)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.mutate != nil {
				tt.mutate(cfg)
			}
			req, err := FromConfig(cfg, []string{"/fn", "a b"}, []string{"PATH=/bin", "X="}, "/", bpf)
			if err != nil {
				t.Fatal(err)
			}
			b, err := req.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, req) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, req)
			}
			if got.UIDMap != "0 100000 65536\n" || len(got.Mounts) != 2 || got.Mounts[1].Type != "bind" {
				t.Errorf("uid map %q, mounts %+v", got.UIDMap, got.Mounts)
			}
			tt.check(t, got)
		})
	}
}

func TestFromConfigRefuses(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(*configs.Config)
		want   string
	}{
		{"capabilities", func(c *configs.Config) { c.Capabilities.Bounding = []string{"CAP_NET_RAW"} }, "capabilities"},
		{"joins a pid namespace", func(c *configs.Config) { c.Namespaces[3].Path = "/proc/1/ns/pid" }, "joining"},
		{"no user namespace", func(c *configs.Config) { c.Namespaces = c.Namespaces[:4] }, "required"},
		{"two uid maps", func(c *configs.Config) { c.UIDMappings = append(c.UIDMappings, c.UIDMappings[0]) }, "mapping"},
		{"veth", func(c *configs.Config) { c.Networks = []*configs.Network{{Type: "veth"}} }, "veth"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.mutate(cfg)
			if _, err := FromConfig(cfg, []string{"/fn"}, nil, "/", []byte{0, 0, 0, 0, 0, 0, 0, 0}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error about %s", err, tt.want)
			}
		})
	}
	if _, err := FromConfig(testConfig(), []string{"/fn"}, nil, "/", nil); err == nil {
		t.Error("a seccomp profile without a program was accepted")
	}
}

func TestEncodeRefusesNUL(t *testing.T) {
	r := &Request{Root: "/r", UIDMap: "0 1 1\n", GIDMap: "0 1 1\n", Args: []string{"/fn"}, Env: []string{"A=1\x00B=2"}}
	if _, err := r.Encode(); err == nil {
		t.Error("an env entry with a NUL was encoded")
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := (&Request{Root: "/r", UIDMap: "0 1 1\n", GIDMap: "0 1 1\n", Args: []string{"/fn"}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	body := func(b []byte) []byte {
		h := append([]byte("CVSP\x01\x00\x00\x00"), binary.LittleEndian.AppendUint32(nil, uint32(len(b)))...)
		return append(h, b...)
	}
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("XXXX"), good[4:]...)},
		{"length mismatch", good[:len(good)-1]},
		{"unknown record", body([]byte{99, 0, 0, 0, 0, 0})},
		{"short mount", body([]byte{7, 0, 4, 0, 0, 0, 1, 2, 3, 4})},
		{"mount with three strings", body(append([]byte{7, 0, 14, 0, 0, 0}, append(make([]byte, 8), "a\x00/b\x00c\x00"...)...))},
		{"seccomp not a program", body([]byte{15, 0, 3, 0, 0, 0, 1, 2, 3})},
		{"no root", body(nil)},
	} {
		if _, err := Decode(tt.b); err == nil {
			t.Errorf("%s: decoded", tt.name)
		}
	}
}

func TestStatus(t *testing.T) {
	fail := func(errno uint32, step string) []byte {
		b := append([]byte{'E'}, binary.LittleEndian.AppendUint32(nil, errno)...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(step)))
		return append(b, step...)
	}
	pid := append([]byte{'P'}, binary.LittleEndian.AppendUint32(nil, 4242)...)
	for _, tt := range []struct {
		name    string
		in      []byte
		pid     int
		pidErr  string
		result  string
		errnoIs syscall.Errno
		ahead   bool
		// devAhead: the result says /dev was made ahead.
		devAhead bool
	}{
		{name: "exec'd", in: pid, pid: 4242},
		{name: "exec'd, /proc made ahead", in: slices.Concat(pid, []byte{'A'}), pid: 4242, ahead: true},
		{name: "exec'd, /proc and /dev made ahead", in: slices.Concat(pid, []byte("AD")), pid: 4242, ahead: true, devAhead: true},
		{name: "failed after /proc made ahead", in: slices.Concat(pid, []byte{'A'}, fail(uint32(syscall.EACCES), "execve")), pid: 4242, result: "execve: permission denied", errnoIs: syscall.EACCES},
		{name: "unknown message", in: slices.Concat(pid, []byte{'Z'}), pid: 4242, result: "spawn: status: unknown message 'Z'"},
		{name: "failed step", in: slices.Concat(pid, fail(uint32(syscall.ENOENT), "bind /x")), pid: 4242, result: "bind /x: no such file or directory", errnoIs: syscall.ENOENT},
		{name: "shim failed", in: fail(uint32(syscall.EPERM), "clone"), pidErr: "clone: operation not permitted"},
		{name: "nothing", in: nil, pidErr: "before reporting"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rd := bytes.NewReader(tt.in)
			p, err := ReadPid(rd)
			if tt.pidErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.pidErr) {
					t.Fatalf("ReadPid: %v, want %q", err, tt.pidErr)
				}
				return
			}
			if err != nil || p != tt.pid {
				t.Fatalf("ReadPid: %d, %v", p, err)
			}
			res, err := ReadResult(rd)
			if tt.result == "" {
				if err != nil || res.ProcAhead != tt.ahead || res.DevAhead != tt.devAhead {
					t.Fatalf("ReadResult: %+v, %v; want ProcAhead %v, DevAhead %v", res, err, tt.ahead, tt.devAhead)
				}
				return
			}
			if err == nil || err.Error() != tt.result || (tt.errnoIs != 0 && !errors.Is(err, tt.errnoIs)) {
				t.Fatalf("ReadResult: %v, want %q", err, tt.result)
			}
		})
	}
}

// FuzzDecode: Decode never panics, and what it accepts encodes back to
// the same bytes.
func FuzzDecode(f *testing.F) {
	good, err := (&Request{Root: "/r", Hostname: "h", UIDMap: "0 1 1\n", GIDMap: "0 1 1\n", Args: []string{"/fn", "x"}, Env: []string{"A=1"},
		Mounts: []Mount{{Flags: 1, Source: "proc", Dest: "/proc", Type: "proc"}}, Rlimits: []Rlimit{{7, 1, 2}}, Seccomp: make([]byte, 8),
		Cgroups: []string{"/sys/fs/cgroup/memory/x", "/sys/fs/cgroup/pids/x"}, OptCgroups: []string{"/sys/fs/cgroup/unified/x"}}).Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("CVSP\x01\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		r2, err := Decode(again)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("re-encoded request decodes to %+v (%v), want %+v", r2, err, r)
		}
	})
}

// FuzzStatus: the status pipe's decoders never panic, and a shim pid
// they accept is in range.
func FuzzStatus(f *testing.F) {
	f.Add([]byte("S\x10\x00\x00\x00P\x11\x00\x00\x00"))
	f.Add([]byte("S\x10\x00\x00\x00E\x02\x00\x00\x00\x04\x00\x00\x00step"))
	f.Add([]byte("S\x00\x00\x00\x00"))
	f.Add([]byte("S\x10\x00\x00\x00P\x11\x00\x00\x00AD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := bytes.NewReader(b)
		pid, err := ReadShimPid(rd)
		if err != nil {
			return
		}
		if pid <= 0 || pid > 1<<22 {
			t.Fatalf("shim pid %d accepted", pid)
		}
		if _, err := ReadPid(rd); err == nil {
			_, _ = ReadResult(rd)
		}
	})
}

func TestReadShimPid(t *testing.T) {
	for _, tt := range []struct {
		in   string
		pid  int
		fail string
	}{
		{"S\x10\x27\x00\x00", 10000, ""},
		{"", 0, "the shim did not start"},
		{"P\x10\x27\x00\x00", 0, "unknown message 'P'"},
		{"S\x00\x00\x00\x00", 0, "shim pid 0"},
		{"S\x10", 0, "the shim did not start"},
	} {
		pid, err := ReadShimPid(strings.NewReader(tt.in))
		if pid != tt.pid || (err == nil) != (tt.fail == "") || err != nil && !strings.Contains(err.Error(), tt.fail) {
			t.Errorf("%q: %d, %v; want %d, %q", tt.in, pid, err, tt.pid, tt.fail)
		}
	}
}
