package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStopOnSignals(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sigs     []os.Signal
		canceled bool
		code     int // -1: no exit
	}{
		{"none", nil, false, -1},
		{"one interrupt", []os.Signal{os.Interrupt}, true, -1},
		{"two interrupts", []os.Signal{os.Interrupt, os.Interrupt}, true, 130},
		{"term then interrupt", []os.Signal{syscall.SIGTERM, os.Interrupt}, true, 130},
		{"two terms", []os.Signal{syscall.SIGTERM, syscall.SIGTERM}, true, 143},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sigs := make(chan os.Signal, len(tc.sigs))
			for _, s := range tc.sigs {
				sigs <- s
			}
			canceled := make(chan struct{})
			exited := make(chan int, 1)
			var stderr bytes.Buffer
			go stopOnSignals(func() { close(canceled) }, sigs, &stderr, func(code int) { exited <- code })
			select {
			case <-canceled:
				if !tc.canceled {
					t.Fatal("canceled without a signal")
				}
			case <-time.After(200 * time.Millisecond):
				if tc.canceled {
					t.Fatal("not canceled after the first signal")
				}
			}
			select {
			case code := <-exited:
				if code != tc.code {
					t.Fatalf("exit %d, want %d", code, tc.code)
				}
				if !strings.Contains(stderr.String(), "again while stopping: exiting now") {
					t.Errorf("stderr %q does not say why it exits", stderr.String())
				}
			case <-time.After(200 * time.Millisecond):
				if tc.code != -1 {
					t.Fatalf("no exit, want %d", tc.code)
				}
			}
		})
	}
}

// hungPipeline holds its one record in a function that takes far longer
// than the test, with a drain grace as long.
const hungPipeline = `
version: 1
name: hung
inputs:
  in: { stdin: { format: lines } }
functions:
  hang:
    command: sh
    args: ["-c", "touch %s; exec sleep 60"]
    mode: exec
    sandbox: none
    timeout: 60s
routes:
  - name: main
    chain: [hang]
    outputs: [out]
outputs:
  out: { stdout: { format: lines } }
delivery: { shutdown_grace: 60s }
`

// TestSecondSignalExitsNow: the first SIGINT starts the drain, which waits
// for the hung function; a second one ends culvert at once with status 130.
func TestSecondSignalExitsNow(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	path := writePipeline(t, dir, fmt.Sprintf(hungPipeline, started))
	p := startCLI(t, dir, nil, nil, "run", path)
	if _, err := p.stdin.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the function to start", func() bool {
		_, err := os.Stat(started)
		return err == nil
	})
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	time.Sleep(500 * time.Millisecond)
	if p.exited() {
		t.Fatalf("exited on the first SIGINT with the function still running; stderr:\n%s", p.stderr.String())
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(t, 10*time.Second); code != 130 {
		t.Fatalf("exit %d after a second SIGINT, want 130; stderr:\n%s", code, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "interrupt again while stopping") {
		t.Errorf("stderr does not say why it exited:\n%s", p.stderr.String())
	}
}
