// Package embedded runs an in-process nats-server with JetStream, for
// pipelines whose broker URL is empty and for tests. It owns the server's
// lifecycle and its logging (routed to slog); it never listens on anything
// but the client port on the configured host: no monitoring, cluster,
// gateway, leaf node, websocket or MQTT listeners, and no signal handlers.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configures Start. Zero values take the defaults.
type Options struct {
	// DataDir holds JetStream's storage. Default: DefaultDataDir().
	DataDir string
	// Host to listen on. Default 127.0.0.1.
	Host string
	// Port for clients. 0 or -1: a random free port.
	Port int
	// Logger receives the server's logs. Default slog.Default().
	// Debug and trace logs are only produced when the logger enables
	// slog.LevelDebug (debug) and LevelTrace (trace).
	Logger *slog.Logger
}

// LevelTrace is the slog level of the server's trace logs.
const LevelTrace = slog.LevelDebug - 4

// DefaultDataDir is $XDG_DATA_HOME/culvert/nats, or
// ~/.local/share/culvert/nats when XDG_DATA_HOME is unset.
func DefaultDataDir() (string, error) {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("embedded nats: default data dir: %w", err)
		}
		base = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(base, "culvert", "nats"), nil
}

// Server is a running embedded nats-server.
type Server struct {
	ns  *server.Server
	log *slog.Logger
}

// Start starts a server and waits until it accepts connections, or ctx is
// done (then the server is shut down again).
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if opts.DataDir == "" {
		d, err := DefaultDataDir()
		if err != nil {
			return nil, err
		}
		opts.DataDir = d
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: data dir: %w", err)
	}
	sopts := &server.Options{
		ServerName: "culvert-embedded",
		Host:       opts.Host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.DataDir,
		NoSigs:     true,
		// HTTPPort, Cluster, Gateway, LeafNode, Websocket and MQTT stay zero:
		// nothing listens but the client port.
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	log := opts.Logger.With("component", "nats-server")
	bg := context.Background()
	adapter := &slogAdapter{log: log, fatal: make(chan string, 1)}
	ns.SetLoggerV2(adapter, log.Enabled(bg, slog.LevelDebug), log.Enabled(bg, LevelTrace), false)
	go ns.Start()

	// Readiness: poll in short steps so a cancelled ctx or a fatal start
	// error (port in use) ends the wait at once.
	deadline := time.Now().Add(startTimeout)
	for !ns.ReadyForConnections(20 * time.Millisecond) {
		var err error
		select {
		case msg := <-adapter.fatal:
			err = errors.New(msg)
		case <-ctx.Done():
			err = ctx.Err()
		default:
			if time.Now().After(deadline) {
				err = fmt.Errorf("not ready after %s", startTimeout)
			}
		}
		if err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("embedded nats: start on %s:%d: %w", opts.Host, opts.Port, err)
		}
	}
	s := &Server{ns: ns, log: log}
	log.Info("embedded nats-server ready", "url", s.ClientURL(), "store_dir", opts.DataDir)
	return s, nil
}

// startTimeout bounds Start when ctx has no earlier deadline.
const startTimeout = 30 * time.Second

// ClientURL is the nats:// URL clients connect to (with the real port when
// Options.Port was random).
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// NATSServer exposes the underlying server, for tests and diagnostics.
func (s *Server) NATSServer() *server.Server { return s.ns }

// Shutdown stops the server: it closes client connections, stops
// JetStream (which flushes and closes its stores) and waits until the
// server has fully shut down or ctx is done. Clients should drain their own
// connections first; the server has nowhere to migrate them to, so lame-duck
// mode would only delay the stop. Shutdown is idempotent. When ctx ends
// first, it returns ctx's error and the shutdown finishes in the background.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded nats: shutdown: %w", ctx.Err())
	}
}

// slogAdapter implements server.Logger on slog.
type slogAdapter struct {
	log   *slog.Logger
	fatal chan string
}

var _ server.Logger = (*slogAdapter)(nil)

func (a *slogAdapter) emit(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !a.log.Enabled(ctx, level) {
		return
	}
	a.log.Log(ctx, level, fmt.Sprintf(format, v...))
}

func (a *slogAdapter) Noticef(format string, v ...any) { a.emit(slog.LevelInfo, format, v) }
func (a *slogAdapter) Warnf(format string, v ...any)   { a.emit(slog.LevelWarn, format, v) }
func (a *slogAdapter) Errorf(format string, v ...any)  { a.emit(slog.LevelError, format, v) }
func (a *slogAdapter) Debugf(format string, v ...any)  { a.emit(slog.LevelDebug, format, v) }
func (a *slogAdapter) Tracef(format string, v ...any)  { a.emit(LevelTrace, format, v) }

// Fatalf logs at error level and, unlike the server's own logger, does not
// exit the process: Start reports the failure instead.
func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.log.Error(msg, "fatal", true)
	select {
	case a.fatal <- msg:
	default:
	}
}
