// Package kinesistest starts a real Kinesis emulator (npm kinesalite 3.3.x)
// bound to 127.0.0.1 for tests anywhere in the module, and gives them an
// AWS SDK client for it. kinesalite's own CLI listens on all interfaces, so
// it is started from node/serve.js, which binds loopback. It is test support
// only and never mocks the server.
//
// The node packages come from .ci/deps (.ci/deps.d/21-kinesis.sh), which
// installs them under internal/kinesistest/node/node_modules.
package kinesistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Region and the dummy credentials every client of the emulator uses.
const (
	Region    = "us-east-1"
	AccessKey = "culvert-test"
	SecretKey = "culvert-test-secret"
)

// Options for StartWith.
type Options struct {
	// Path keeps the emulator's data on disk there (it survives Restart).
	// Empty: in memory.
	Path string
	// Port to listen on; 0 picks a free one.
	Port int
}

// Server is one running kinesalite process.
type Server struct {
	t    testing.TB
	opts Options

	mu       sync.Mutex
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	exited   chan struct{}
	endpoint string
}

// Start runs kinesalite in memory on a random loopback port until the test
// ends and returns its endpoint, e.g. http://127.0.0.1:41234.
func Start(t testing.TB) string {
	t.Helper()
	return StartWith(t, Options{}).Endpoint()
}

// StartWith runs kinesalite with opts until the test ends.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{t: t, opts: opts}
	if err := s.start(); err != nil {
		t.Fatalf("kinesistest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Launch runs kinesalite with opts outside a test (benchmarks, tools); the
// caller stops it with Stop.
func Launch(opts Options) (*Server, error) {
	s := &Server{opts: opts}
	if err := s.start(); err != nil {
		return nil, fmt.Errorf("kinesistest: %w", err)
	}
	return s, nil
}

// Endpoint is the server's URL. It keeps its port across Restart.
func (s *Server) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endpoint
}

// Stop kills the server process and waits for it. Idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited, stdin := s.cmd, s.exited, s.stdin
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = stdin.Close()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

// Restart stops the server and starts it again on the same port (and the
// same Path, so an on-disk store keeps its streams and records).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("kinesistest: restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the port may linger briefly
	}
}

// nodeDir is internal/kinesistest/node, found from this source file so any
// package's test can use it.
func nodeDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the kinesistest package")
	}
	dir := filepath.Join(filepath.Dir(file), "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "kinesalite")); err != nil {
		return "", fmt.Errorf("kinesalite is not installed in %s (run .ci/deps): %w", dir, err)
	}
	return dir, nil
}

func (s *Server) start() error {
	dir, err := nodeDir()
	if err != nil {
		return err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("node is not installed (run .ci/deps): %w", err)
	}
	cmd := exec.Command(node, "serve.js", fmt.Sprint(s.opts.Port), s.opts.Path)
	cmd.Dir = dir
	cmd.SysProcAttr = sysProcAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = io.MultiWriter(&lockedWriter{w: &stderr}, os.Stderr)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting kinesalite: %w", err)
	}
	exited := make(chan struct{})
	portc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "PORT "); ok {
				select {
				case portc <- p:
				default:
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case p := <-portc:
		s.mu.Lock()
		s.cmd, s.stdin, s.exited = cmd, stdin, exited
		s.endpoint = "http://127.0.0.1:" + p
		if s.opts.Port == 0 {
			fmt.Sscan(p, &s.opts.Port) // keep the port across Restart
		}
		s.mu.Unlock()
		return nil
	case <-exited:
		return fmt.Errorf("kinesalite exited before listening: %s", stderr.String())
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		return errors.New("kinesalite did not listen within 20s")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// Client returns an SDK client for endpoint with the dummy credentials and
// the SDK's standard retries (node closes idle keep-alive connections
// after 5s, which a client can meet as a reset).
func Client(endpoint string) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:       Region,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
}

// CreateStream creates stream with shards shards and waits until it is
// ACTIVE.
func CreateStream(t testing.TB, endpoint, stream string, shards int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c := Client(endpoint)
	if _, err := c.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(stream), ShardCount: aws.Int32(int32(shards))}); err != nil {
		t.Fatalf("kinesistest: create stream %s: %v", stream, err)
	}
	WaitActive(t, endpoint, stream)
}

// WaitActive waits until stream is ACTIVE (after a create, split or merge).
func WaitActive(t testing.TB, endpoint, stream string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c := Client(endpoint)
	for {
		out, err := c.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
		if err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kinesistest: stream %s not active: %v", stream, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
