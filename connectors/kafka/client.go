// Package kafka is the Kafka connector: a Source consuming topics in a
// consumer group (cooperative-sticky balancing, manual commits of the
// highest contiguous settled offset of each partition, pause/resume for
// back-pressure) and a Sink producing with an idempotent producer and
// acks=all. It owns client construction (brokers, TLS, SASL, logging),
// partition lanes, the commit watermark and the produce mechanics; the
// Record mapping lives in kafkamsg.
//
// Every kgo client this package makes is built by ClientConfig.opts, so a
// transactional variant (GroupTransactSession) can reuse the same
// connection settings.
package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// ClientConfig is how a client reaches the cluster. Shared by Source and
// Sink.
type ClientConfig struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string
	// ClientID is sent to the brokers; default "culvert".
	ClientID string
	// TLS, when non-nil, encrypts every connection.
	TLS *TLSConfig
	// SASL, when non-nil, authenticates every connection.
	SASL *SASLConfig
	// DialTimeout bounds one connection attempt; default 10s.
	DialTimeout time.Duration
}

// TLSConfig configures TLS. The zero value uses the system roots.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the brokers'
	// certificates; empty: system roots.
	CAFile string
	// CertFile and KeyFile are a client certificate (mutual TLS), optional.
	CertFile, KeyFile string
	// ServerName overrides the name checked in the broker certificates.
	ServerName string
	// InsecureSkipVerify disables certificate checks (tests only).
	InsecureSkipVerify bool
	// Config, when set, is used as it is and the fields above are ignored.
	Config *tls.Config
}

// SASL mechanisms.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// SASLConfig configures SASL authentication.
type SASLConfig struct {
	// Mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string
	Username  string
	Password  string
}

// tlsConfig builds the *tls.Config.
func (t *TLSConfig) tlsConfig() (*tls.Config, error) {
	if t.Config != nil {
		return t.Config.Clone(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in, documented as tests only
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s: no PEM certificate in it", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("tls: cert_file and key_file go together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls cert_file %s / key_file %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// opts returns the kgo options every client of this package starts from.
// log receives the client's own warnings and the connection-state lines.
func (c ClientConfig) opts(log *slog.Logger) ([]kgo.Opt, error) {
	if len(c.Brokers) == 0 {
		return nil, errors.New("no brokers configured")
	}
	id := c.ClientID
	if id == "" {
		id = "culvert"
	}
	dial := c.DialTimeout
	if dial <= 0 {
		dial = 10 * time.Second
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(id),
		kgo.DialTimeout(dial),
		kgo.WithLogger(slogAdapter{log}),
		kgo.WithHooks(newConnLog(log)),
	}
	if c.TLS != nil {
		cfg, err := c.TLS.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if c.SASL != nil {
		s := c.SASL
		switch strings.ToUpper(s.Mechanism) {
		case SASLPlain:
			opts = append(opts, kgo.SASL(plain.Auth{User: s.Username, Pass: s.Password}.AsMechanism()))
		case SASLScramSHA256:
			opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password}.AsSha256Mechanism()))
		case SASLScramSHA512:
			opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password}.AsSha512Mechanism()))
		default:
			return nil, fmt.Errorf("sasl mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.Mechanism)
		}
	}
	return opts, nil
}

// slogAdapter routes kgo's own log lines to slog. kgo's info level is
// chatty (every metadata refresh), so it is logged at debug; this
// package logs assignments, revocations and connection state itself.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Level() kgo.LogLevel {
	if a.log.Enabled(context.Background(), slog.LevelDebug) {
		return kgo.LogLevelDebug
	}
	return kgo.LogLevelWarn
}

func (a slogAdapter) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l := slog.LevelDebug
	switch {
	case level == kgo.LogLevelError:
		l = slog.LevelError
	case level == kgo.LogLevelWarn && !strings.HasPrefix(msg, "unable to open connection to broker"):
		// Dial failures repeat on every retry; connLog reports each
		// broker going down and coming back once.
		l = slog.LevelWarn
	}
	a.log.Log(context.Background(), l, "kafka client: "+msg, keyvals...)
}

// connLog logs connection loss and recovery once per broker state change,
// not once per retry.
type connLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	down map[string]time.Time // broker address -> first failure
}

func newConnLog(log *slog.Logger) *connLog {
	return &connLog{log: log, down: map[string]time.Time{}}
}

var (
	_ kgo.HookBrokerConnect    = (*connLog)(nil)
	_ kgo.HookBrokerDisconnect = (*connLog)(nil)
)

func (c *connLog) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	addr := net.JoinHostPort(meta.Host, fmt.Sprint(meta.Port))
	c.mu.Lock()
	defer c.mu.Unlock()
	since, wasDown := c.down[addr]
	if err != nil {
		if !wasDown {
			c.down[addr] = time.Now()
			c.log.Warn("kafka broker unreachable; retrying with backoff", "broker", addr, "node", meta.NodeID, "error", err)
		}
		return
	}
	if wasDown {
		delete(c.down, addr)
		c.log.Info("kafka broker reachable again", "broker", addr, "node", meta.NodeID, "down_for", time.Since(since).Round(time.Millisecond))
	}
}

func (c *connLog) OnBrokerDisconnect(meta kgo.BrokerMetadata, _ net.Conn) {
	c.log.Debug("kafka broker connection closed", "broker", net.JoinHostPort(meta.Host, fmt.Sprint(meta.Port)), "node", meta.NodeID)
}
