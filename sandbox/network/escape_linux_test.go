//go:build linux

package network

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/culvert-dev/culvert/sandbox"
)

// probeEnv makes the test binary run probeMain instead of the tests: the
// escape attempts run as a separate process, placed in an instance's
// namespace and, for the real test, in a user namespace of its own where
// it is root, as a function in a container is.
const probeEnv = "CULVERT_NETWORK_PROBE"

func TestMain(m *testing.M) {
	if ops := os.Getenv(probeEnv); ops != "" {
		os.Exit(probeMain(strings.Split(ops, ",")))
	}
	os.Exit(m.Run())
}

// The attempts: each undoes part of the policy from inside. Order matters:
// link-down comes last, so the others run with the link as it was.
// raw-socket and packet-socket need CAP_NET_RAW over the namespace, which
// the container's root lacks too: spoofed packets are impossible even
// without seccomp.
var escapeOps = []string{"nft-delete-table", "nft-flush-ruleset", "add-address", "add-route", "add-link", "sysctl",
	"raw-socket", "packet-socket", "link-down"}

func probeMain(ops []string) int {
	for _, op := range ops {
		err := probeOp(op)
		if err != nil {
			fmt.Printf("%s: %v\n", op, err)
		} else {
			fmt.Printf("%s: ok\n", op)
		}
	}
	return 0
}

func probeOp(op string) error {
	switch op {
	case "nft-delete-table":
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: instTable})
		return c.Flush()
	case "nft-flush-ruleset":
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.FlushRuleset()
		return c.Flush()
	case "add-address", "add-route", "link-down":
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		switch op {
		case "add-address":
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 9), Mask: net.CIDRMask(24, 32)}})
		case "add-route":
			return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(203, 0, 113, 0), Mask: net.CIDRMask(24, 32)}})
		default:
			return netlink.LinkSetDown(l)
		}
	case "raw-socket", "packet-socket":
		domain, typ, proto := unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP
		if op == "packet-socket" {
			domain, typ, proto = unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))
		}
		fd, err := unix.Socket(domain, typ, proto)
		if err != nil {
			return err
		}
		return unix.Close(fd)
	case "add-link":
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "escape0"}, PeerName: "escape1"})
	case "sysctl":
		return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/forwarding", []byte("1"), 0)
	}
	return fmt.Errorf("unknown probe %q", op)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// runProbe runs the escape attempts in ns, as root of a fresh user
// namespace mapped to host uid 100000 when userns is set, else as real
// root, and returns each attempt's outcome.
func runProbe(t *testing.T, ns netns.NsHandle, userns bool) map[string]string {
	t.Helper()
	bin := probeBinary(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), probeEnv+"="+strings.Join(escapeOps, ","))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if userns {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 1}},
		}
	}
	// Forked from a thread inside ns, the probe starts there.
	if err := inNetns(ns, cmd.Start); err != nil {
		t.Fatalf("start probe: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("probe: %v\n%s", err, out.String())
	}
	res := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		op, outcome, _ := strings.Cut(line, ": ")
		res[op] = outcome
	}
	return res
}

// probeBinary copies the test binary where uid 100000 can execute it.
func probeBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "culvert-netprobe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "probe")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestRootInUserNamespaceCannotUndoPolicy: root of a container's user
// namespace has no CAP_NET_ADMIN over the instance's namespace (owned by
// the host's user namespace), so every attempt to change its rules, links,
// addresses, routes or sysctls fails, and the policy still holds. The
// control runs the same attempts as real root and they succeed, which
// shows they are real attempts.
func TestRootInUserNamespaceCannotUndoPolicy(t *testing.T) {
	w := newWorld(t, "cvtusr", "10.213.73.0/24")
	policy := sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}}
	_, sb := w.prepare(t, "p/f#0", policy)

	got := runProbe(t, sb, true)
	for _, op := range escapeOps {
		t.Logf("as root in a user namespace: %s: %s", op, got[op])
		if outcome, ok := got[op]; !ok || outcome == "ok" || !strings.Contains(outcome, "operation not permitted") && !strings.Contains(outcome, "permission denied") {
			t.Errorf("%s as root in a user namespace: %q, want a permission error", op, outcome)
		}
	}
	if err := dialIn(t, sb, "198.18.0.2:8080"); err != nil {
		t.Errorf("after the attempts, the allowed connection fails: %v", err)
	}
	if err := dialIn(t, sb, "198.18.0.3:8080"); err == nil {
		t.Error("after the attempts, a disallowed connection succeeds")
	}

	_, control := w.prepare(t, "p/f#1", policy)
	for op, outcome := range runProbe(t, control, false) {
		if outcome != "ok" {
			t.Errorf("control: %s as real root: %s", op, outcome)
		}
	}
}

// TestEachLayerAlone: the rules inside the instance and those on the host
// side each enforce the policy without the other.
func TestEachLayerAlone(t *testing.T) {
	policy := sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{ep("198.18.0.2:8080")}, DNS: "198.18.0.2:5353"}
	check := func(t *testing.T, w *world, a *Attachment, sb netns.NsHandle) {
		t.Helper()
		if err := dialIn(t, sb, "198.18.0.2:8080"); err != nil {
			t.Errorf("allowed: %v", err)
		}
		if err := lookupIn(t, sb, "198.18.0.2:5353"); err != nil {
			t.Errorf("resolver: %v", err)
		}
		for _, addr := range []string{"198.18.0.2:9090", "198.18.0.3:8080", "198.18.0.1:7001"} {
			if err := dialIn(t, sb, addr); err == nil {
				t.Errorf("connected to %s", addr)
			}
		}
		udpIn(t, sb, "198.18.0.2:5354")
		if n := w.UDPHits("198.18.0.2:5354"); n != 0 {
			t.Errorf("udp echo got %d datagrams", n)
		}
		serveTCP(t, sb, "0.0.0.0:8000")
		for _, from := range []netns.NsHandle{w.host, w.outside} {
			if err := dialIn(t, from, a.Addr.String()+":8000"); err == nil {
				t.Error("connected in to the instance's listener")
			}
		}
	}
	t.Run("host rules alone", func(t *testing.T) {
		w := newWorld(t, "cvtlh", "10.213.74.0/24")
		a, sb := w.prepare(t, "p/f#0", policy)
		c, err := nftables.New(nftables.WithNetNSFd(int(sb)))
		if err != nil {
			t.Fatal(err)
		}
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: instTable})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		check(t, w, a, sb)
	})
	t.Run("instance rules alone", func(t *testing.T) {
		w := newWorld(t, "cvtli", "10.213.75.0/24")
		a, err := w.m.Prepare(context.Background(), "t", "p/f#0", policy)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := netns.GetFromPath(a.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		c := hostConnFor(t, w.host)
		c.DelTable(hostTableRef(w.cfg.Prefix))
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		check(t, w, a, sb)
		a.Close() // its host rules are gone already: errors expected
	})
}
