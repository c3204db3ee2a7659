//go:build linux

package container

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/seccomp"
)

// OptOut tells a user how to run without the sandbox.
const OptOut = "to run this pipeline's functions unconfined anyway, set `sandbox: none` on each function or for the whole pipeline"

// Check reports why this host cannot sandbox, or nil when it can.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the sandbox needs root (culvert runs as uid %d): it maps each tenant to its own host uid range and sets cgroup limits; run culvert as root, or %s", os.Geteuid(), OptOut)
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n == 0 {
			return fmt.Errorf("user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0); enable them, or %s", OptOut)
		}
	} else if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("this kernel has no user namespaces (/proc/sys/user/max_user_namespaces is missing); %s", OptOut)
	}
	if !seccomp.Enabled {
		return fmt.Errorf("this culvert binary was built without seccomp support (build it with cgo, libseccomp-dev and -tags seccomp); %s", OptOut)
	}
	if !cgroups.IsCgroup2UnifiedMode() {
		if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
			return fmt.Errorf("no cgroup memory controller is mounted (cgroup v1 /sys/fs/cgroup/memory, or cgroup v2): %w; %s", err, OptOut)
		}
	} else if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err != nil || !strings.Contains(string(b), "memory") || !strings.Contains(string(b), "pids") {
		return fmt.Errorf("the cgroup v2 hierarchy does not offer the memory and pids controllers; %s", OptOut)
	}
	return nil
}
