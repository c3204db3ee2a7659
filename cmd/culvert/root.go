package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type globals struct {
	logLevel  string
	logFormat string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "culvert",
		Short:         "Run your own code on event streams",
		Long:          "Culvert consumes records from NATS, routes them through chains of functions written in any language, and publishes the results.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		_, err := g.logger(io.Discard) // check --log-level and --log-format for every command
		return err
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(newRunCmd(g), newValidateCmd(g), newPublishCmd(g), newSubscribeCmd(g), newFnCmd(g))
	root.AddCommand(newTestCmd(g), newMockFunctionCmd(), newTapCmd(g), newReplayCmd(g), newDiffCmd(g))
	return root
}

func (g *globals) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usageError{errors.New("--log-level: " + err.Error())}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(g.logFormat) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, usageError{errors.New("--log-format must be text or json")}
	}
}

// usageError exits with status 2.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// validationError exits with status 1 after the errors were printed.
type validationError struct{ error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command") {
		return 2 // cobra reports unknown subcommands before any of ours runs
	}
	return 1
}

func stderrLogger(g *globals) (*slog.Logger, error) { return g.logger(os.Stderr) }

// usageArgs makes an argument check's failure a usage error (exit 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
