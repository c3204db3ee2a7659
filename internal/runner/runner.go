// Package runner turns a loaded pipeline into running parts: it connects to
// NATS (or starts the embedded server), builds each input's source and each
// output's sink from the pipeline's connector blocks, runs the engine, and
// tears everything down in reverse order.
//
// It owns the mapping from configuration to connectors and nothing else;
// the engine does the work.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/embedded"
	"github.com/culvert-dev/culvert/connectors/file"
	"github.com/culvert-dev/culvert/connectors/jetstream"
	natsconn "github.com/culvert-dev/culvert/connectors/nats"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/sandbox"
)

// Options configure a run.
type Options struct {
	Pipeline *pipelines.Pipeline
	// NATSURL overrides the pipeline's broker.url; empty keeps it.
	NATSURL string
	// DataDir holds the embedded server's store; default
	// embedded.DefaultDataDir().
	DataDir string
	// Listen is the embedded server's client address host:port; default
	// 127.0.0.1:4222. Port 0 picks a free one.
	Listen  string
	Runtime sandbox.Runtime
	// Confine, if set, chooses each function's runtime and isolation (see
	// Sandboxing.Confine); otherwise every function runs on Runtime.
	Confine func(fn *pipelines.Function) (engine.Confinement, error)
	Logger  *slog.Logger
	Stdin   io.Reader
	Stdout  io.Writer
	// Ready, if set, is called once everything is running, with the NATS
	// URL in use ("" when the pipeline uses no NATS).
	Ready func(natsURL string)
	// Engine, if set, is called with the engine before it runs (tests use
	// it to read Stats).
	Engine func(*engine.Engine)
	// Sources and Sinks, if set, replace the connectors of the inputs and
	// outputs they name (`culvert test`, `replay --dry-run`): those are
	// not built from the pipeline, and no broker is contacted for them.
	// The runner closes them like its own. An injected sink receives the
	// subjects rendered from the output's subject or topic template.
	Sources map[string]connectors.Source
	Sinks   map[string]connectors.Sink
	// WrapSink, if set, wraps every output's sink, built or injected
	// (`culvert replay` counts what each output confirmed).
	WrapSink func(output string, s connectors.Sink) connectors.Sink

	// built holds the inputs' sources once made, for sinks that join one
	// (a kafka output in a kafka input's transactions).
	built map[string]connectors.Source
}

// Run runs the pipeline until ctx is done, then drains and stops.
func Run(ctx context.Context, o Options) (err error) {
	p := o.Pipeline
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	var nc *nats.Conn
	url := ""
	if usesNATS(p, o) {
		url = o.NATSURL
		if url == "" {
			url = p.Broker.URL
		}
		if url == "" {
			srv, err := startEmbedded(ctx, o, log)
			if err != nil {
				return err
			}
			cleanups = append(cleanups, func() {
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := srv.Shutdown(sctx); err != nil {
					log.Warn("embedded NATS server shutdown", "error", err)
				}
			})
			url = srv.ClientURL()
		}
		opts := []nats.Option{nats.Name("culvert " + p.Name), nats.MaxReconnects(-1)}
		if p.Broker.Credentials != "" {
			opts = append(opts, nats.UserCredentials(p.Broker.Credentials))
		}
		if p.Broker.Token != "" {
			opts = append(opts, nats.Token(p.Broker.Token))
		}
		nc, err = nats.Connect(url, opts...)
		if err != nil {
			return fmt.Errorf("connecting to NATS at %s: %w", url, err)
		}
		cleanups = append(cleanups, func() {
			if err := nc.Drain(); err != nil {
				nc.Close()
			}
		})
	}

	sources := map[string]connectors.Source{}
	for name, in := range p.Inputs {
		src, ok := o.Sources[name]
		var err error
		if !ok {
			src, err = newSource(ctx, nc, p, name, in, o, log)
		}
		if err != nil {
			return fmt.Errorf("%s: input %q: %w", in.Pos, name, err)
		}
		sources[name] = src
		cleanups = append(cleanups, func() { _ = src.Close() })
	}
	o.built = sources
	sinks := map[string]connectors.Sink{}
	subjects := map[string]string{}
	for name, out := range p.Outputs {
		sink, ok := o.Sinks[name]
		subject := injectedSubject(out)
		var err error
		if !ok {
			sink, subject, err = newSink(ctx, nc, p, name, out, o, log)
		}
		if err != nil {
			return fmt.Errorf("%s: output %q: %w", out.Pos, name, err)
		}
		if o.WrapSink != nil {
			sink = o.WrapSink(name, sink)
		}
		sinks[name] = sink
		subjects[name] = subject
		cleanups = append(cleanups, func() { _ = sink.Close() })
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range []string{"HOME", "LANG", "TZ", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	eng, err := engine.New(engine.Options{
		Pipeline: p, Sources: sources, Sinks: sinks, Subjects: subjects,
		Runtime: o.Runtime, Confine: o.Confine, Env: env, Logger: log,
	})
	if err != nil {
		return err
	}
	if o.Engine != nil {
		o.Engine(eng)
	}
	if o.Ready != nil {
		o.Ready(url)
	}
	return eng.Run(ctx)
}

func usesNATS(p *pipelines.Pipeline, o Options) bool {
	for name, in := range p.Inputs {
		if _, injected := o.Sources[name]; injected {
			continue
		}
		if in.NATS != nil || in.JetStream != nil || kinesisUsesNATS(in.Kinesis) {
			return true
		}
	}
	for name, out := range p.Outputs {
		if _, injected := o.Sinks[name]; injected {
			continue
		}
		if out.NATS != nil || out.JetStream != nil {
			return true
		}
	}
	return false
}

func startEmbedded(ctx context.Context, o Options, log *slog.Logger) (*embedded.Server, error) {
	dir := o.DataDir
	if dir == "" {
		d, err := embedded.DefaultDataDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	host, port, err := splitListen(o.Listen)
	if err != nil {
		return nil, err
	}
	// The server's notices (banner, limits) are noise next to the
	// pipeline's logs: they show at --log-level debug only.
	srvLog := slog.New(minLevel{log.Handler(), slog.LevelWarn})
	if log.Enabled(ctx, slog.LevelDebug) {
		srvLog = log
	}
	srv, err := embedded.Start(ctx, embedded.Options{DataDir: dir, Host: host, Port: port, Logger: srvLog.With("component", "nats-server")})
	if err != nil {
		return nil, fmt.Errorf("starting the embedded NATS server (data dir %s): %w", dir, err)
	}
	log.Info("embedded NATS server with JetStream started", "url", srv.ClientURL(), "data_dir", dir)
	if err := os.WriteFile(filepath.Join(dir, "culvert.url"), []byte(srv.ClientURL()+"\n"), 0o644); err != nil {
		log.Warn("cannot record the server URL in the data dir", "error", err)
	}
	return srv, nil
}

func newSource(ctx context.Context, nc *nats.Conn, p *pipelines.Pipeline, name string, in *pipelines.Input, o Options, log *slog.Logger) (connectors.Source, error) {
	switch {
	case in.Kafka != nil:
		return newKafkaSource(ctx, p, name, in.Kafka, o, log)
	case in.Kinesis != nil:
		return newKinesisSource(ctx, nc, p, name, in.Kinesis, o, log)
	case in.JetStream != nil:
		c := in.JetStream
		cfg := jetstream.SourceConfig{
			Stream: c.Stream, Subjects: c.Subjects, Durable: c.Durable, FilterSubjects: c.FilterSubjects,
			DeliverPolicy: c.DeliverPolicy, MaxInFlight: c.MaxInFlight, AckWait: time.Duration(c.AckWait), FetchBatch: c.FetchBatch,
		}
		if g := c.Group; g != nil {
			cfg.Group, cfg.PinnedTTL = g.Name, g.TTL.Std()
		}
		return jetstream.NewSource(ctx, nc, cfg, log)
	case in.NATS != nil:
		return natsconn.NewSource(nc, natsconn.SourceConfig{Subjects: in.NATS.Subjects, QueueGroup: in.NATS.QueueGroup, MaxInFlight: p.Delivery.MaxInFlight}, log)
	case in.File != nil:
		return file.NewSource(file.SourceConfig{Path: in.File.Path, Format: in.File.Format, MaxInFlight: p.Delivery.MaxInFlight}, log)
	case in.Stdin != nil:
		return file.NewSource(file.SourceConfig{Reader: o.Stdin, Format: in.Stdin.Format, MaxInFlight: p.Delivery.MaxInFlight}, log)
	}
	return nil, errors.New("no connector configured")
}

func newSink(ctx context.Context, nc *nats.Conn, p *pipelines.Pipeline, name string, out *pipelines.Output, o Options, log *slog.Logger) (connectors.Sink, string, error) {
	switch {
	case out.Kafka != nil:
		return newKafkaSink(ctx, p, name, out.Kafka, o, log)
	case out.Kinesis != nil:
		return newKinesisSink(ctx, p, name, out.Kinesis, o, log)
	case out.JetStream != nil:
		c := out.JetStream
		s, err := jetstream.NewSink(ctx, nc, jetstream.SinkConfig{Encoding: c.Encoding, Stream: c.Stream, Subjects: c.Subjects}, log)
		return s, c.Subject, err
	case out.NATS != nil:
		s, err := natsconn.NewSink(nc, natsconn.SinkConfig{Encoding: out.NATS.Encoding}, log)
		return s, out.NATS.Subject, err
	case out.File != nil:
		s, err := file.NewSink(file.SinkConfig{Path: out.File.Path, Format: out.File.Format}, log)
		return s, "", err
	case out.Stdout != nil:
		s, err := file.NewSink(file.SinkConfig{Writer: o.Stdout, Format: out.Stdout.Format}, log)
		return s, "", err
	}
	return nil, "", errors.New("no connector configured")
}

// minLevel drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(a), m.min}
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.Handler.WithGroup(g), m.min} }
