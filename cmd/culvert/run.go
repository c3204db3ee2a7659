package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	"github.com/spf13/cobra"
)

func newRunCmd(g *globals) *cobra.Command {
	var natsURL, dataDir, listen, sandboxState string
	cmd := &cobra.Command{
		Use:   "run PIPELINE.yaml",
		Short: "Run a pipeline until interrupted (SIGINT/SIGTERM drain in-flight work, then exit 0)",
		Long: `Run a pipeline until interrupted.

With no NATS URL in the pipeline (broker.url), on the command line (--nats-url)
or in $NATS_URL, culvert starts an embedded NATS server with JetStream that
listens on --listen and keeps its store in --data-dir.`,
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
			// Functions run sandboxed unless they say `sandbox: none`; a
			// host that cannot sandbox is refused, never worked around.
			sbx, closeSandbox, err := newSandboxing(p, sandboxState, log)
			if err != nil {
				return err
			}
			defer closeSandbox()
			return runner.Run(cmd.Context(), runner.Options{
				Pipeline: p, NATSURL: natsURL, DataDir: dataDir, Listen: listen,
				Runtime: sbx.Plain, Confine: sbx.Confine(p), Logger: log,
				Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(),
			})
		},
	}
	cmd.Flags().StringVar(&natsURL, "nats-url", "", "NATS server URL (overrides broker.url; default $NATS_URL, else embedded)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "embedded server's JetStream store (default $XDG_DATA_HOME/culvert/nats)")
	cmd.Flags().StringVar(&sandboxState, "sandbox-state", "/run/culvert", "sandbox state: containers and root skeletons (must be traversable by the tenants' host uids)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:4222", "embedded server's client address (port 0: any free port)")
	return cmd
}
