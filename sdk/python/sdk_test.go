package python_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/sdk/internal/sdktest"
)

// python is the interpreter the SDK supports: Debian's, which has
// python3-protobuf (the python3 first on PATH may be another install).
const python = "/usr/bin/python3"

// TestPythonUnit runs the SDK's own tests with unittest.
func TestPythonUnit(t *testing.T) {
	out := sdktest.RunTool(t, ".", 2*time.Minute, python, "-m", "unittest", "discover", "-s", "tests", "-v")
	t.Log(out)
}

// TestPythonEndToEnd runs the conformance example through the real host.
func TestPythonEndToEnd(t *testing.T) {
	sdktest.EndToEnd(t, python, abs(t, "examples/conformance/main.py"))
}

func abs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
