//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package culvert_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	culvert "github.com/culvert-dev/culvert/sdk/go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

const childEnv = "CULVERT_SDK_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "stdio" {
		stdioChild()
	}
	os.Exit(m.Run())
}

// stdioChild is a function that writes to stdout in every way it can while
// handling a record, and reads stdin.
func stdioChild() {
	culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		fmt.Println("fmt.Println from the handler")
		fmt.Fprintln(os.Stdout, "os.Stdout from the handler")
		unix.Write(1, []byte("raw write to fd 1\n"))
		// A child that inherits fds 0, 1 and 2 as they are, as a C library
		// calling fork and exec would.
		pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "echo child wrote to fd 1; cat"},
			&syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
		if err != nil {
			return nil, err
		}
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			return nil, err
		}
		stolen, err := io.ReadAll(os.Stdin) // must see /dev/null, not the host's frames
		if err != nil {
			return nil, err
		}
		rec.Value = fmt.Appendf(rec.Value, " (read %d bytes from stdin)", len(stolen))
		return culvert.Emit(rec), nil
	})
}

// TestStdoutProtection runs stdioChild as a real process and checks that
// everything it printed went to stderr while the frames stayed intact, and
// that stdin gave nothing away.
func TestStdoutProtection(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=stdio")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	var in bytes.Buffer
	w := framing.NewWriter(&in, 0)
	for _, m := range []proto.Message{hello(1), batch(1, "v"), batch(2, "w"), shutdown()} {
		if err := w.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	cmd.Stdin = &in
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v; stderr:\n%s", err, stderr.String())
	}
	r := framing.NewReader(bytes.NewReader(stdout), 0)
	var got []string
	for {
		b, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stdout is not clean frames: %v; stderr:\n%s", err, stderr.String())
		}
		m := &culvertv1.FunctionMessage{}
		if err := proto.Unmarshal(b, m); err != nil {
			t.Fatal(err)
		}
		switch x := m.Msg.(type) {
		case *culvertv1.FunctionMessage_Ready:
			got = append(got, "ready")
		case *culvertv1.FunctionMessage_Result:
			for _, rr := range x.Result.Results {
				for _, o := range rr.Outputs {
					got = append(got, string(o.Record.Value))
				}
				if rr.Failure != nil {
					got = append(got, "failure: "+rr.Failure.Message)
				}
			}
		default:
			got = append(got, fmt.Sprintf("unexpected %v", m))
		}
	}
	want := []string{"ready", "v (read 0 bytes from stdin)", "w (read 0 bytes from stdin)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("frames %q, want %q", got, want)
	}
	for _, s := range []string{"fmt.Println from the handler", "os.Stdout from the handler", "raw write to fd 1", "child wrote to fd 1"} {
		if n := strings.Count(stderr.String(), s); n != 2 {
			t.Errorf("stderr has %q %d times, want 2; stderr:\n%s", s, n, stderr.String())
		}
	}
}
