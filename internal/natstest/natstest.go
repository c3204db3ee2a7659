// Package natstest starts a real embedded nats-server with JetStream for
// tests (connectors, the tap, replay and CLI tests), and connects clients to it.
// It is test support only and never mocks the server.
package natstest

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors/embedded"
)

// Logger returns a slog.Logger writing to t.Log at level. Logs after the
// test's cleanups ran are dropped (t.Log would panic).
func Logger(t testing.TB, level slog.Level) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// Server starts an embedded server on 127.0.0.1, a random port and a
// temporary store, shut down when the test ends.
func Server(t testing.TB) *embedded.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := embedded.Start(ctx, embedded.Options{
		DataDir: t.TempDir(),
		Host:    "127.0.0.1",
		Port:    -1,
		Logger:  Logger(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

// Connect opens a client connection to s, closed when the test ends.
func Connect(t testing.TB, s *embedded.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.Name(t.Name()), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("connect to %s: %v", s.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}
