//go:build linux

package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into ns. The thread is locked
// to a goroutine of its own, so the caller's thread never changes
// namespace; if switching back fails, the thread dies with that goroutine.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("read current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// newNetns creates a network namespace, bind-mounts it at path (which must
// not exist) and runs inside on the creating thread, still in the new
// namespace: sockets inside opens belong to it. The caller removes path
// (removeNetns) if newNetns fails after creating it.
func newNetns(path string, inside func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("read current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount network namespace at %s: %w", path, err)
		} else {
			errc <- inside()
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// removeNetns unmounts and removes a namespace file. The namespace itself
// goes once no process and no other mount holds it.
func removeNetns(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		err = nil // not mounted (a file left before its mount)
	}
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("remove network namespace %s: %w", path, err)
	}
	return nil
}

// makeShared turns dir into a shared mount point, binding it onto itself
// first if it is not one, as ip-netns does for /run/netns: namespace
// mounts made later then propagate to mount namespaces created since, and
// their removal does too, so a namespace is not kept alive by a stale copy.
// It reports whether it made the bind mount.
func makeShared(dir string) (bound bool, err error) {
	err = unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err = unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return false, fmt.Errorf("bind-mount %s onto itself: %w", dir, err)
		}
		bound = true
		err = unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return bound, fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return bound, nil
}

// sysctl reads or writes (if value is not empty) a /proc/sys file in ns.
func sysctl(ns netns.NsHandle, name, value string) (old string, err error) {
	path := "/proc/sys/" + name
	err = inNetns(ns, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		old = string(b)
		if value != "" {
			return os.WriteFile(path, []byte(value), 0o644)
		}
		return nil
	})
	if err != nil {
		return old, fmt.Errorf("sysctl %s: %w", name, err)
	}
	return old, nil
}
