//go:build linux

package container

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/cgroups"
	devconfig "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// Defaults for a function instance's limits when the pipeline sets none.
var DefaultLimits = sandbox.Limits{MemoryBytes: 256 << 20, Pids: 128, CPU: 1}

// DefaultTenantLimits bound all instances of one tenant together.
var DefaultTenantLimits = sandbox.Limits{MemoryBytes: 2 << 30, Pids: 2048, CPU: 0}

// The four device nodes a function sees.
var devicePaths = []string{"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"}

// runc's masked and read-only /proc paths (its default spec).
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts",
	}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

const roBind = unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV

// containerConfig builds the libcontainer configuration of one instance.
func (r *Runtime) containerConfig(id string, t *tenant, pr *preparedRoot, iso sandbox.Isolation, netnsPath string) (*configs.Config, error) {
	lim := iso.Limits
	if lim.MemoryBytes == 0 {
		lim.MemoryBytes = DefaultLimits.MemoryBytes
	}
	if lim.Pids == 0 {
		lim.Pids = DefaultLimits.Pids
	}
	if lim.CPU == 0 {
		lim.CPU = DefaultLimits.CPU
	}
	var nodes []*devconfig.Device
	var rules []*devconfig.Rule
	for _, d := range specconv.AllowedDevices {
		if slices.Contains(devicePaths, d.Path) {
			nodes = append(nodes, d)
			rules = append(rules, &d.Rule)
		}
	}
	res := &cgroups.Resources{
		Memory:    lim.MemoryBytes,
		PidsLimit: &lim.Pids,
		Devices:   rules,
	}
	if lim.CPU > 0 {
		res.CpuPeriod = 100_000
		res.CpuQuota = int64(math.Ceil(lim.CPU * 100_000))
	}
	ns := configs.Namespaces{
		{Type: configs.NEWNS}, {Type: configs.NEWUTS}, {Type: configs.NEWIPC},
		{Type: configs.NEWPID}, {Type: configs.NEWUSER}, {Type: configs.NEWCGROUP},
	}
	var networks []*configs.Network
	switch iso.Network.Mode {
	case "", "none":
		ns = append(ns, configs.Namespace{Type: configs.NEWNET})
		networks = []*configs.Network{{Type: "loopback"}}
	case "egress":
		if netnsPath == "" {
			return nil, fmt.Errorf("network egress: no network namespace was prepared")
		}
		ns = append(ns, configs.Namespace{Type: configs.NEWNET, Path: netnsPath})
	default:
		return nil, fmt.Errorf("network mode %q is not supported", iso.Network.Mode)
	}
	mounts := []*configs.Mount{
		{Source: "proc", Destination: "/proc", Device: "proc", Flags: unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV},
		// Read-only once runc has bound the four device nodes into it.
		{Source: "tmpfs", Destination: "/dev", Device: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_STRICTATIME | unix.MS_NOEXEC | unix.MS_RDONLY, Data: "mode=755,size=64k"},
	}
	// The tmpfs goes first, so that binds of host paths under /tmp land on
	// it rather than under it.
	if iso.Root.TmpfsBytes > 0 {
		mounts = append(mounts, &configs.Mount{
			Source: "tmpfs", Destination: "/tmp", Device: "tmpfs",
			Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC,
			Data:  fmt.Sprintf("mode=1777,size=%d", iso.Root.TmpfsBytes),
		})
	}
	for _, b := range pr.binds {
		mounts = append(mounts, &configs.Mount{Source: b.src, Destination: b.dst, Device: "bind", Flags: roBind})
	}
	if iso.Network.Mode == "egress" && iso.Network.DNS != "" {
		conf, err := r.resolvConf(iso.Network.DNS)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, &configs.Mount{Source: conf, Destination: "/etc/resolv.conf", Device: "bind", Flags: roBind})
	}
	sc, err := SeccompConfig()
	if err != nil {
		return nil, err
	}
	c := &configs.Config{
		Rootfs:          pr.dir,
		Readonlyfs:      true,
		NoNewPrivileges: true,
		Capabilities:    &configs.Capabilities{},
		Namespaces:      ns,
		Networks:        networks,
		Mounts:          mounts,
		Devices:         nodes,
		MaskPaths:       maskedPaths,
		ReadonlyPaths:   readonlyPaths,
		Hostname:        "culvert",
		UIDMappings:     []configs.IDMap{{ContainerID: 0, HostID: int64(t.hostID), Size: RangeSize}},
		GIDMappings:     []configs.IDMap{{ContainerID: 0, HostID: int64(t.hostID), Size: RangeSize}},
		Cgroups: &cgroups.Cgroup{
			Path:      filepath.Join("/", r.opts.CgroupParent, t.cgroup, id),
			Resources: res,
		},
		Rlimits: []configs.Rlimit{
			{Type: unix.RLIMIT_NOFILE, Hard: 4096, Soft: 4096},
			{Type: unix.RLIMIT_CORE, Hard: 0, Soft: 0},
			{Type: unix.RLIMIT_NPROC, Hard: uint64(t.limits.Pids), Soft: uint64(t.limits.Pids)},
		},
		Seccomp: sc,
	}
	return c, nil
}

// seccompConfig turns the profile table into libcontainer's form.
// SeccompConfig is the profile in libcontainer's form (bench/coldstart hands
// the same profile to runc and crun).
func SeccompConfig() (*configs.Seccomp, error) {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	s := &configs.Seccomp{
		DefaultAction:   configs.Errno,
		DefaultErrnoRet: &eperm,
		// Only the native ABI: a call through another one (int 0x80, x32)
		// hits libseccomp's bad-architecture action and kills the thread.
		// Listing the compat ABIs too made libseccomp's compile in every
		// cold start 10-30x slower (measured: ~6 ms vs ~130 ms).
		Architectures: nil,
	}
	for _, name := range Allowed {
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: name, Action: configs.Allow})
	}
	s.Syscalls = append(s.Syscalls,
		&configs.Syscall{Name: "clone3", Action: configs.Errno, ErrnoRet: &enosys},
		&configs.Syscall{Name: "clone", Action: configs.Allow, Args: []*configs.Arg{
			{Index: 0, Value: cloneNamespaceFlags, ValueTwo: 0, Op: configs.MaskEqualTo},
		}},
		&configs.Syscall{Name: "socket", Action: configs.Allow, Args: []*configs.Arg{{Index: 0, Value: afUnix, Op: configs.EqualTo}}},
		&configs.Syscall{Name: "socket", Action: configs.Allow, Args: []*configs.Arg{
			{Index: 0, Value: afNetlink, Op: configs.EqualTo}, {Index: 2, Value: netlinkRoute, Op: configs.EqualTo},
		}},
	)
	for _, fam := range []uint64{afInet, afInet6} {
		for _, typ := range []uint64{sockStream, sockDgram} {
			s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "socket", Action: configs.Allow, Args: []*configs.Arg{
				{Index: 0, Value: fam, Op: configs.EqualTo},
				{Index: 1, Value: sockTypeMask, ValueTwo: typ, Op: configs.MaskEqualTo},
			}})
		}
	}
	return s, nil
}

// resolvConf writes (once) a resolv.conf naming the one resolver an
// egress instance may query. resolv.conf cannot name a port, so the
// resolver must listen on 53.
func (r *Runtime) resolvConf(dns string) (string, error) {
	ap, err := netip.ParseAddrPort(dns)
	if err != nil {
		return "", fmt.Errorf("dns %q: %w", dns, err)
	}
	if ap.Port() != 53 {
		return "", fmt.Errorf("dns %s: resolv.conf cannot name port %d; the resolver must listen on port 53", dns, ap.Port())
	}
	dir := filepath.Join(r.opts.StateDir, "resolv")
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", err
	}
	path := filepath.Join(dir, ap.Addr().String()+".conf")
	if err := os.WriteFile(path+".tmp", []byte("nameserver "+ap.Addr().String()+"\n"), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(path+".tmp", path)
}
