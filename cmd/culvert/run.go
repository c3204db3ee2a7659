package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/spf13/cobra"
)

func newRunCmd(g *globals) *cobra.Command {
	var natsURL, dataDir, listen, sandboxState string
	var watch, ipForward bool
	cmd := &cobra.Command{
		Use:   "run PIPELINE.yaml",
		Short: "Run a pipeline until interrupted (SIGINT/SIGTERM drain in-flight work, then exit 0)",
		Long: `Run a pipeline until interrupted.

With no NATS URL in the pipeline (broker.url), on the command line (--nats-url)
or in $NATS_URL, culvert starts an embedded NATS server with JetStream that
listens on --listen and keeps its store in --data-dir.

SIGHUP, or with --watch a change of the file, reloads the pipeline: the
running version drains as on SIGTERM, then the new one starts; an invalid
file is reported and the running version kept.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			p, err := loadPipeline(args[0])
			if err != nil {
				var errs pipelines.Errors
				if errors.As(err, &errs) {
					for _, e := range errs {
						fmt.Fprintln(cmd.ErrOrStderr(), e)
					}
					return validationError{fmt.Errorf("%s is invalid (%d errors)", args[0], len(errs))}
				}
				return err
			}
			if natsURL == "" {
				natsURL = os.Getenv("NATS_URL")
			}
			// SIGHUP, or a change of the file with --watch, reloads the
			// pipeline: the running version drains, the new one starts.
			reload := make(chan struct{}, 1)
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			var changed <-chan struct{}
			if watch {
				changed = runner.Watch(cmd.Context(), args[0], time.Second)
			}
			go func() {
				for {
					select {
					case <-hup:
					case <-changed:
					case <-cmd.Context().Done():
						return
					}
					select {
					case reload <- struct{}{}:
					default:
					}
				}
			}()
			load := func() (*pipelines.Pipeline, error) { return loadPipeline(args[0]) }
			return runner.Reloading(cmd.Context(), p, load, reload, func(ctx context.Context, p *pipelines.Pipeline) error {
				// Functions run sandboxed unless they say `sandbox: none`; a
				// host that cannot sandbox is refused, never worked around.
				sbx, closeSandbox, err := newSandboxing(p, sandboxFlags{State: sandboxState, IPForward: ipForward}, log)
				if err != nil {
					return err
				}
				defer closeSandbox()
				return runner.Run(ctx, runner.Options{
					Pipeline: p, NATSURL: natsURL, DataDir: dataDir, Listen: listen,
					Runtime: sbx.Plain, Confine: sbx.Confine(p), Logger: log,
					Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(),
				})
			}, log)
		},
	}
	cmd.Flags().StringVar(&natsURL, "nats-url", "", "NATS server URL (overrides broker.url; default $NATS_URL, else embedded)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "embedded server's JetStream store (default $XDG_DATA_HOME/culvert/nats)")
	cmd.Flags().StringVar(&sandboxState, "sandbox-state", "/run/culvert", "sandbox state: containers and root skeletons (must be traversable by the tenants' host uids)")
	cmd.Flags().BoolVar(&ipForward, "enable-ip-forward", false, "let egress functions turn on net.ipv4.ip_forward in the host namespace (egress needs it; the old value is restored on exit)")
	cmd.Flags().BoolVar(&watch, "watch", false, "reload the pipeline when its file changes (as SIGHUP does): the running version drains, then the new one starts")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:4222", "embedded server's client address (port 0: any free port)")
	return cmd
}
