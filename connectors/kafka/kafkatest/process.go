package kafkatest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a kfake cluster running as a separate process (command
// kafkatest/kfake), persisted to a directory, on fixed ports, so a test can
// kill it (SIGKILL) or stop it (SIGTERM) and start it again.
type Process struct {
	bin, dir string
	ports    []int
	sync     bool
	topics   []string
	cmd      *exec.Cmd
	Brokers  []string
}

// ProcessOptions configure StartProcess.
type ProcessOptions struct {
	// Brokers in the cluster; default 3.
	Brokers int
	// Sync fsyncs every write, so a SIGKILL loses nothing acknowledged.
	Sync bool
	// Topics to create at the first start: name -> partitions.
	Topics map[string]int32
}

// StartProcess builds the kfake command (into a temporary directory) and
// starts it; the process is killed at the end of the test.
func StartProcess(t testing.TB, o ProcessOptions) *Process {
	t.Helper()
	n := o.Brokers
	if n <= 0 {
		n = 3
	}
	p := &Process{dir: t.TempDir(), ports: freePorts(t, n), sync: o.Sync}
	for name, parts := range o.Topics {
		p.topics = append(p.topics, name+":"+strconv.Itoa(int(parts)))
	}
	p.bin = filepath.Join(t.TempDir(), "kfake")
	build := exec.Command("go", "build", "-o", p.bin, "github.com/culvert-dev/culvert/connectors/kafka/kafkatest/kfake")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building kfake: %v\n%s", err, out)
	}
	p.Start(t)
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// Start starts the process (again), on the same ports and data directory.
func (p *Process) Start(t testing.TB) {
	t.Helper()
	ports := make([]string, len(p.ports))
	for i, n := range p.ports {
		ports[i] = strconv.Itoa(n)
	}
	args := []string{"-brokers", strconv.Itoa(len(p.ports)), "-ports", strings.Join(ports, ","), "-data-dir", filepath.Join(p.dir, "data")}
	if p.sync {
		args = append(args, "-sync")
	}
	for _, tp := range p.topics {
		args = append(args, "-topic", tp)
	}
	var lastErr error
	for range 50 { // the ports of a killed process may linger a moment
		cmd := exec.Command(p.bin, args...)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting kfake: %v", err)
		}
		var brokers []string
		sc := bufio.NewScanner(out)
		ready := false
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "listening "); ok {
				brokers = append(brokers, a)
			}
			if line == "ready" {
				ready = true
				break
			}
		}
		if ready {
			p.cmd, p.Brokers = cmd, brokers
			return
		}
		lastErr = cmd.Wait()
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("kfake did not start: %v", lastErr)
}

// Stop sends SIGTERM (the cluster saves its state) and waits.
func (p *Process) Stop(t testing.TB) { p.signal(t, syscall.SIGTERM) }

// Kill sends SIGKILL and waits. Idempotent.
func (p *Process) Kill(t testing.TB) { p.signal(t, syscall.SIGKILL) }

func (p *Process) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	_ = p.cmd.Wait()
	p.cmd = nil
}
