package embedded_test

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/connectors/embedded"
	"github.com/culvert-dev/culvert/internal/natstest"
)

func TestStartPublishShutdown(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Logger: natstest.Logger(t, slog.LevelInfo)})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() != "127.0.0.1" || u.Port() == "" || u.Port() == "0" || u.Port() == "-1" {
		t.Fatalf("ClientURL %q: want 127.0.0.1 and the real port", s.ClientURL())
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatalf("JetStream not enabled: %v", err)
	}
	if _, err := js.Publish(ctx, "t.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
		t.Errorf("JetStream store not under DataDir: %v", err)
	}
	nc.Close()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}

	// The stream survives a restart on the same DataDir.
	s2, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Logger: natstest.Logger(t, slog.LevelWarn)})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Shutdown(context.Background())
	nc2, err := nats.Connect(s2.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	st, err := js2.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("stream has %d messages after restart, want 1", n)
	}
}

func TestStartPortInUse(t *testing.T) {
	s := natstest.Server(t)
	u, _ := url.Parse(s.ClientURL())
	var port int
	for _, c := range u.Port() {
		port = port*10 + int(c-'0')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err := embedded.Start(ctx, embedded.Options{DataDir: t.TempDir(), Port: port, Logger: natstest.Logger(t, slog.LevelError+4)})
	if err == nil {
		t.Fatal("Start on a used port succeeded")
	}
	if time.Since(t0) > 5*time.Second {
		t.Errorf("Start took %s to fail", time.Since(t0))
	}
}

func TestStartCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err := embedded.Start(ctx, embedded.Options{DataDir: t.TempDir(), Logger: natstest.Logger(t, slog.LevelWarn)})
	if err == nil {
		// A server can be ready before the first check; that is fine too.
		t.Log("server was ready before the cancelled context was noticed")
		s.Shutdown(context.Background())
	}
}

func TestDefaultDataDir(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/x")
	d, err := embedded.DefaultDataDir()
	if err != nil || d != "/x/culvert/nats" {
		t.Fatalf("DefaultDataDir = %q, %v", d, err)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/h")
	d, err = embedded.DefaultDataDir()
	if err != nil || d != "/h/.local/share/culvert/nats" {
		t.Fatalf("DefaultDataDir = %q, %v", d, err)
	}
}
