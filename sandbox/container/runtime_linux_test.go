//go:build linux

package container

import (
	"strings"
	"testing"
	"time"
)

func TestHello(t *testing.T) {
	r := newRuntime(t, false)
	out, stderr, ex := run(t, r, hostile("whoami"), "", 10*time.Second)
	if !ex.Success() || !strings.HasPrefix(out, "OK uid=0 gid=0 pid=1") {
		t.Fatalf("exit %v, stdout %q, stderr %q", ex, out, stderr)
	}
}
