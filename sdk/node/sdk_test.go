package node_test

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
)

func node(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed (.ci/deps.d/50-sdks.sh installs it): %v", err)
	}
	return p
}

// TestNodeUnit runs the SDK's own tests with node --test.
func TestNodeUnit(t *testing.T) {
	out := sdktest.RunTool(t, ".", 3*time.Minute, node(t), "--test", "test/")
	t.Log(out)
}

// TestNodeEndToEnd runs the conformance example through the real host.
func TestNodeEndToEnd(t *testing.T) {
	p, err := filepath.Abs("examples/conformance/index.js")
	if err != nil {
		t.Fatal(err)
	}
	sdktest.EndToEnd(t, node(t), p)
}
