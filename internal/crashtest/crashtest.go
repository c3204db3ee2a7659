// Package crashtest is the harness of Culvert's crash and scale-out proofs:
// it runs broker processes that outlive Culvert (a kfake cluster from
// connectors/kafka/kafkatest/kfake, kinesalite via internal/kinesistest, a NATS server), runs the
// real culvert binary, kills it with SIGKILL and restarts it, and audits the
// outputs against the inputs: lost records, duplicates, and per-key order.
// It is test support only; the tests themselves are this package's
// *_test.go files.
package crashtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EnvInt is the positive integer in the environment variable name, or def.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// Proc is one running process that a test may kill at any moment.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan error
}

// Start runs bin with args, appending its stdout and stderr to log, and
// kills it (SIGKILL) at the end of the test if it still runs.
func Start(t testing.TB, log io.Writer, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "NATS_URL=")
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	p := &Proc{Name: filepath.Base(bin), cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.Kill() })
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Kill sends SIGKILL and waits for the process to be gone. Idempotent.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait()
}

func (p *Proc) wait() error {
	if err, ok := <-p.done; ok {
		close(p.done)
		return err
	}
	return nil
}

// Stop sends SIGTERM and waits up to grace for a clean exit; it returns the
// exit error, or an error after killing a process that did not stop.
func (p *Proc) Stop(grace time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err, ok := <-p.done:
		if ok {
			close(p.done)
		}
		return err
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM", p.Name, grace)
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case err, ok := <-p.done:
		if ok {
			p.done <- err
		}
		return true
	default:
		return false
	}
}

// Kfake is a kfake cluster in its own process (the command
// connectors/kafka/kafkatest/kfake), persisted to a directory, on fixed
// loopback ports so that a restart keeps its address.
type Kfake struct {
	t       testing.TB
	bin     string
	args    []string
	log     io.Writer
	proc    *Proc
	Brokers []string
}

// StartKfake runs bin (a kafkatest/kfake binary) with its data in dir and
// the topics created with the given partitions. Its groups accept session
// timeouts down to 1s, so that tests can lose a member quickly.
func StartKfake(t testing.TB, bin, dir string, log io.Writer, partitions int, topics ...string) *Kfake {
	t.Helper()
	ports := FreePorts(t, 3)
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	k := &Kfake{t: t, bin: bin, log: log, args: []string{
		"-brokers", strconv.Itoa(len(ports)), "-ports", strings.Join(ps, ","),
		"-data-dir", filepath.Join(dir, "kfake"), "-min-session-timeout", "1s",
	}}
	for _, tp := range topics {
		k.args = append(k.args, "-topic", tp+":"+strconv.Itoa(partitions))
	}
	k.start()
	return k
}

func (k *Kfake) start() {
	k.t.Helper()
	pr, pw := io.Pipe()
	k.proc = Start(k.t, io.MultiWriter(pw, k.log), k.bin, k.args...)
	found := make(chan []string, 1)
	go func() {
		// One "listening HOST:PORT" line per broker, then "ready".
		var brokers []string
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "listening "); ok {
				brokers = append(brokers, a)
			}
			if line == "ready" {
				select {
				case found <- brokers:
				default:
				}
				brokers = nil
			}
		}
	}()
	select {
	case k.Brokers = <-found:
	case <-time.After(20 * time.Second):
		k.t.Fatal("kfake did not say it was ready within 20s")
	}
}

// Restart kills the cluster process with SIGKILL and starts it again on the
// same ports with the same data.
func (k *Kfake) Restart() {
	k.t.Helper()
	k.proc.Kill()
	k.start()
}

// NATS starts a NATS server with JetStream in the test process (so it
// outlives every culvert process the test kills) with its store under dir,
// and returns its URL.
func NATS(t testing.TB, dir string) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// WaitFor polls cond every 20ms until it holds, and fails the test with
// what(), the log's tail, after no progress (progress() unchanged) for
// stall.
func WaitFor(ctx context.Context, t testing.TB, stall time.Duration, logPath string, progress func() int, cond func() bool) {
	t.Helper()
	last, at := progress(), time.Now()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("gave up: %v (progress %d)\n%s", ctx.Err(), progress(), Tail(logPath, 4000))
		}
		if p := progress(); p != last {
			last, at = p, time.Now()
		}
		if time.Since(at) > stall {
			t.Fatalf("no progress for %s (at %d)\n%s", stall, last, Tail(logPath, 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Tail is the last n bytes of the file at path.
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// NATSProc is Debian's nats-server in its own process with JetStream, its
// store in a directory and a fixed loopback port, so that a test can kill
// and restart it mid-stream.
type NATSProc struct {
	t    testing.TB
	args []string
	log  io.Writer
	proc *Proc
	URL  string
}

// StartNATSProc runs nats-server (from PATH) with its store under dir.
func StartNATSProc(t testing.TB, dir string, log io.Writer) *NATSProc {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("nats-server is not installed (run .ci/deps): %v", err)
	}
	port := FreePorts(t, 1)[0]
	n := &NATSProc{t: t, log: log, URL: fmt.Sprintf("nats://127.0.0.1:%d", port),
		args: []string{bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "nats-server")}}
	n.start()
	return n
}

func (n *NATSProc) start() {
	n.t.Helper()
	n.proc = Start(n.t, n.log, n.args[0], n.args[1:]...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(n.URL, "nats://"), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) || n.proc.Exited() {
			n.t.Fatalf("nats-server did not listen on %s: %v", n.URL, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart kills the server with SIGKILL and starts it again on the same
// port and store.
func (n *NATSProc) Restart() {
	n.t.Helper()
	n.proc.Kill()
	n.start()
}
