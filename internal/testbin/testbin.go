// Package testbin serves tests that run real processes: it builds their
// binaries (example functions, the culvert command) once per test binary,
// into a temporary directory, and collects what they write. It is for tests
// only.
package testbin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"
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

// Buffer is a bytes.Buffer safe for concurrent writers, for collecting the
// output or logs of processes that a test then asserts on.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
