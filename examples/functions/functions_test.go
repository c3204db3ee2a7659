package functions_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"github.com/culvert-dev/culvert/proto/framing"
	"google.golang.org/protobuf/proto"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// build compiles the examples once per test binary.
func build(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "culvert-examples")
		if buildErr != nil {
			return
		}
		out, err := exec.Command(gobin, "build", "-o", binDir+string(filepath.Separator), "./passthrough", "./enrich", "./faulty").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type frameOrErr struct {
	m   *culvertv1.FunctionMessage
	err error
}

// run starts an example, writes frames to it, and returns its frames as they
// come, its stderr, and a wait function.
func run(t *testing.T, name string, args []string, send ...proto.Message) (<-chan frameOrErr, *bytes.Buffer, func() int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(build(t), name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	go func() {
		w := framing.NewWriter(stdin, 0)
		for _, m := range send {
			if w.Write(m) != nil {
				return
			}
		}
	}()
	frames := make(chan frameOrErr, 16)
	go func() {
		defer close(frames)
		r := framing.NewReader(stdout, 0)
		for {
			b, err := r.Next()
			if err != nil {
				frames <- frameOrErr{err: err}
				return
			}
			m := &culvertv1.FunctionMessage{}
			if err := proto.Unmarshal(b, m); err != nil {
				frames <- frameOrErr{err: err}
				return
			}
			frames <- frameOrErr{m: m}
		}
	}()
	wait := func() int {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit", name)
		}
		return cmd.ProcessState.ExitCode()
	}
	return frames, &stderr, wait
}

func next(t *testing.T, frames <-chan frameOrErr, d time.Duration) (*culvertv1.FunctionMessage, error, bool) {
	t.Helper()
	select {
	case f, ok := <-frames:
		if !ok {
			return nil, io.EOF, true
		}
		return f.m, f.err, true
	case <-time.After(d):
		return nil, nil, false
	}
}

func hello() proto.Message {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Hello{Hello: &culvertv1.Hello{Versions: []uint32{1}}}}
}

func batch(values ...string) proto.Message {
	b := &culvertv1.Batch{Id: 1, Attempt: 1, DeadlineUnixMs: time.Now().Add(time.Minute).UnixMilli()}
	for _, v := range values {
		b.Records = append(b.Records, &culvertv1.Record{Id: "r", Value: []byte(v)})
	}
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Batch{Batch: b}}
}

func shutdown() proto.Message {
	return &culvertv1.HostMessage{Msg: &culvertv1.HostMessage_Shutdown{Shutdown: &culvertv1.Shutdown{DeadlineUnixMs: time.Now().Add(time.Minute).UnixMilli()}}}
}

// summary renders a BatchResult as "value|value|failure: msg".
func summary(m *culvertv1.FunctionMessage) string {
	var parts []string
	for _, rr := range m.GetResult().GetResults() {
		if rr.Failure != nil {
			parts = append(parts, "failure: "+rr.Failure.Message)
		}
		for _, o := range rr.Outputs {
			parts = append(parts, string(o.Record.Value))
		}
	}
	return strings.Join(parts, "|")
}

func TestWellBehaved(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		in   []string
		want string
	}{
		{"passthrough", nil, []string{"a", "b"}, "a|b"},
		{"enrich", nil, []string{`{"amount":1.5}`, "[]"}, `{"amount":1.5,"amount_cents":150,"enriched":true}|failure: value is not a JSON object`},
		{"faulty", []string{"fail-one"}, []string{"ok", "bad one", "fine"}, "ok|failure: bad record|fine"},
		{"faulty", nil, []string{"crash", "hang"}, "crash|hang"},
	} {
		t.Run(tc.name+strings.Join(tc.args, ""), func(t *testing.T) {
			frames, stderr, wait := run(t, tc.name, tc.args, hello(), batch(tc.in...), shutdown())
			for i, want := range []string{"ready", tc.want} {
				m, err, ok := next(t, frames, 10*time.Second)
				if !ok || err != nil {
					t.Fatalf("frame %d: %v (timed out: %v); stderr: %s", i, err, !ok, stderr)
				}
				if got := summary(m); i == 0 && m.GetReady() == nil || i == 1 && got != want {
					t.Fatalf("frame %d: got %v, want %s", i, m, want)
				}
			}
			if code := wait(); code != 0 {
				t.Fatalf("exit status %d; stderr: %s", code, stderr)
			}
		})
	}
}

func TestFaults(t *testing.T) {
	t.Run("garbage", func(t *testing.T) {
		frames, _, _ := run(t, "faulty", []string{"garbage"}, hello(), batch("a"))
		if m, err, _ := next(t, frames, 10*time.Second); err != nil || m.GetReady() == nil {
			t.Fatalf("handshake: %v %v", m, err)
		}
		_, err, _ := next(t, frames, 10*time.Second)
		var v *framing.ViolationError
		if !errors.As(err, &v) || !bytes.HasPrefix(v.Bytes, []byte("hello from a bad function")) {
			t.Fatalf("got %v, want a violation showing the stray text", err)
		}
	})
	t.Run("exit-mid-batch", func(t *testing.T) {
		frames, stderr, wait := run(t, "faulty", []string{"exit-mid-batch"}, hello(), batch("a", "crash"))
		next(t, frames, 10*time.Second)
		if _, err, _ := next(t, frames, 10*time.Second); err != io.EOF {
			t.Fatalf("got %v, want EOF", err)
		}
		if code := wait(); code != 3 || !strings.Contains(stderr.String(), "crashing on record r") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("hang", func(t *testing.T) {
		frames, _, _ := run(t, "faulty", []string{"hang"}, hello(), batch("hang"))
		next(t, frames, 10*time.Second)
		if m, err, ok := next(t, frames, 300*time.Millisecond); ok {
			t.Fatalf("got %v %v, want nothing", m, err)
		}
	})
	t.Run("init-error", func(t *testing.T) {
		t.Setenv("CULVERT_FAULT", "init-error")
		frames, stderr, wait := run(t, "faulty", nil, hello())
		m, err, _ := next(t, frames, 10*time.Second)
		if err != nil || m.GetInitError().GetMessage() != "faulty: init-error requested" || m.GetInitError().GetRetryable() {
			t.Fatalf("got %v %v", m, err)
		}
		if code := wait(); code != 1 {
			t.Fatalf("exit %d; stderr %q", code, stderr)
		}
	})
}
