package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/culvert-dev/culvert/internal/pipediff"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
)

func newDiffCmd(g *globals) *cobra.Command {
	var input, format, toInput, sandboxState string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "diff OLD.yaml NEW.yaml --input TAPFILE",
		Short: "Replay the same records through two versions of a pipeline and report the outputs that differ, record by record",
		Long: `Replay the records of a tap file through two versions of a pipeline, each
with in-memory connectors and its functions running for real, and report
the input records whose outputs differ: for each, every output's records in
the old version (-) and the new one (+). Exit status: 0 when the outputs
are the same, 1 when they differ, 2 on usage errors.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			if !verbose {
				log = slog.New(slog.NewTextHandler(io.Discard, nil))
			}
			if input == "" {
				return usageError{errors.New("--input TAPFILE is required")}
			}
			oldP, err := loadPipeline(args[0])
			if err != nil {
				return reportPipelineErrors(cmd, args[0], err)
			}
			newP, err := loadPipeline(args[1])
			if err != nil {
				return reportPipelineErrors(cmd, args[1], err)
			}
			recs, err := tap.ReadFile(input, format)
			if err != nil {
				return err
			}
			// Both versions run sandboxed as with culvert run.
			oldSbx, closeOld, err := newSandboxing(oldP, sandboxFlags{State: sandboxState}, log)
			if err != nil {
				return err
			}
			defer closeOld()
			newSbx, closeNew, err := newSandboxing(newP, sandboxFlags{State: sandboxState}, log)
			if err != nil {
				return err
			}
			defer closeNew()
			rep, err := pipediff.Diff(cmd.Context(), oldP, newP, recs, pipediff.Options{
				Input:     toInput,
				Runner:    runner.Options{Runtime: oldSbx.Plain, Confine: oldSbx.Confine(oldP), Logger: log},
				NewRunner: &runner.Options{Runtime: newSbx.Plain, Confine: newSbx.Confine(newP), Logger: log},
			})
			if err != nil {
				return err
			}
			rep.Write(cmd.OutOrStdout())
			if !rep.Same() {
				return validationError{fmt.Errorf("%d of %d records differ", len(rep.Diffs), rep.Records)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&input, "input", "", "tap file whose records both versions process")
	cmd.Flags().StringVar(&format, "format", "", "tap file format: delimited or ndjson (default: from the name, else detected)")
	cmd.Flags().StringVar(&toInput, "to-input", "", "pipeline input the records enter (default: the only input)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the pipelines' logs")
	cmd.Flags().StringVar(&sandboxState, "sandbox-state", "/run/culvert", "sandbox state, as for culvert run")
	return cmd
}
