// Package testbin builds the binaries that tests run as real processes
// (example functions, the culvert command) once per test binary, into a
// temporary directory. It is for tests only.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Examples are the packages of the example functions.
const Examples = "github.com/culvert-dev/culvert/examples/functions/..."

// Main builds pkgs into a temporary directory, runs the tests with dir set
// to it, removes it, and exits. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testbin.Main(m, &bins, testbin.Examples) }
func Main(m *testing.M, dir *string, pkgs ...string) {
	d, err := os.MkdirTemp("", "culvert-testbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbin:", err)
		os.Exit(1)
	}
	cmd := exec.Command("go", append([]string{"build", "-o", d + "/"}, pkgs...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "testbin: building", pkgs, ":", err)
		os.RemoveAll(d)
		os.Exit(1)
	}
	*dir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}
