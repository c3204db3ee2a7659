package sdktest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Harness is a long-lived fuzzing helper process of an SDK: it reads
// inputs framed as a 4-byte big-endian length and the bytes, runs the
// SDK's protocol loop over each in-process, and answers one line per
// input, "ok" or "bug: ..." (sdk/python/tests/fuzz_harness.py,
// sdk/node/fuzz/harness.js). One process serves every input of a fuzz
// worker, so that fuzzing runs at the SDK's speed, not at process start-up
// speed.
type Harness struct {
	once sync.Once
	err  error
	mu   sync.Mutex
	in   io.WriteCloser
	out  *bufio.Reader
}

// Check sends data to the harness started by command (once) and fails t
// unless the SDK coped with it.
func (h *Harness) Check(t *testing.T, data []byte, command ...string) {
	t.Helper()
	h.once.Do(func() {
		cmd := exec.Command(command[0], command[1:]...)
		in, err := cmd.StdinPipe()
		if err != nil {
			h.err = err
			return
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			h.err = err
			return
		}
		if err := cmd.Start(); err != nil {
			h.err = fmt.Errorf("starting the fuzzing harness %v: %w", command, err)
			return
		}
		h.in, h.out = in, bufio.NewReader(out)
		// The process ends when the test binary exits and stdin closes.
	})
	if h.err != nil {
		t.Fatal(h.err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(data)))
	if _, err := h.in.Write(append(n[:], data...)); err != nil {
		t.Fatalf("writing to the fuzzing harness: %v", err)
	}
	line, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("the fuzzing harness died on input %q: %v", data, err)
	}
	if line != "ok\n" {
		t.Fatalf("input %q: %s", data, strings.ReplaceAll(line, `\n`, "\n"))
	}
}
