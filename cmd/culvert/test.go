package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/culvert-dev/culvert/internal/pipetest"
	"github.com/culvert-dev/culvert/pipelines"
)

func newTestCmd(g *globals) *cobra.Command {
	var update, verbose bool
	var run, cases, sandboxState string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "test PIPELINE.yaml...",
		Short: "Run a pipeline's test cases (PIPELINE.test.yaml) with in-memory connectors and real functions",
		Long: `Run the test cases declared beside each pipeline, in PIPELINE.test.yaml
(or the file given with --cases). Each case feeds its records (inline or
from a tap file) to the pipeline with its connectors swapped for in-memory
ones, runs the functions for real, and matches what reached every output.
The report looks like go test's; the exit status is 1 when a case fails.
--update rewrites golden files with what the pipeline produced.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			var re *regexp.Regexp
			if run != "" {
				var err error
				if re, err = regexp.Compile(run); err != nil {
					return usageError{fmt.Errorf("--run: %w", err)}
				}
			}
			if cases != "" && len(args) > 1 {
				return usageError{errors.New("--cases takes one pipeline")}
			}
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level: %w", err)}
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the culvert binary for mocks: %w", err)
			}
			out := cmd.OutOrStdout()
			failed, total := 0, 0
			for _, arg := range args {
				path := cases
				if path == "" {
					path = arg
					if !strings.HasSuffix(strings.TrimSuffix(arg, ".yaml"), ".test") && !strings.HasSuffix(strings.TrimSuffix(arg, ".yml"), ".test") {
						path = pipetest.TestFileFor(arg)
					}
				}
				f, err := pipetest.Load(path)
				if err == nil && cases != "" {
					f.Pipeline = arg
				}
				if err != nil {
					var errs pipelines.Errors
					if errors.As(err, &errs) {
						for _, e := range errs {
							fmt.Fprintln(cmd.ErrOrStderr(), e)
						}
						return validationError{fmt.Errorf("%s is invalid (%d errors)", path, len(errs))}
					}
					return err
				}
				// Functions run sandboxed as with culvert run; a host that
				// cannot sandbox them is reported, never worked around.
				p, err := loadPipeline(f.Pipeline)
				if err != nil {
					return reportPipelineErrors(cmd, f.Pipeline, err)
				}
				sbx, closeSandbox, err := newSandboxing(p, sandboxFlags{State: sandboxState}, log)
				if err != nil {
					return err
				}
				start := time.Now()
				sum, err := pipetest.RunFile(cmd.Context(), f, pipetest.Options{
					Runtime: sbx.Plain, Confine: sbx.Confine, MockCommand: []string{exe, "mock-function"},
					Update: update, Run: re, Timeout: timeout, Verbose: verbose, Out: out, LogLevel: level,
				})
				closeSandbox()
				if err != nil {
					var errs pipelines.Errors
					if errors.As(err, &errs) {
						for _, e := range errs {
							fmt.Fprintln(cmd.ErrOrStderr(), e)
						}
						return validationError{fmt.Errorf("%s is invalid (%d errors)", f.Pipeline, len(errs))}
					}
					return err
				}
				failed += sum.Failed
				total += sum.Failed + sum.Passed
				status := "ok  "
				if sum.Failed > 0 {
					status = "FAIL"
				}
				fmt.Fprintf(out, "%s\t%s\t%.2fs\t%d passed, %d failed\n", status, path, time.Since(start).Seconds(), sum.Passed, sum.Failed)
			}
			if failed > 0 {
				return validationError{fmt.Errorf("%d of %d test cases failed", failed, total)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&update, "update", false, "rewrite golden files with what the pipeline produced")
	cmd.Flags().StringVar(&run, "run", "", "run only the cases whose names match this regular expression")
	cmd.Flags().StringVar(&cases, "cases", "", "test file to use instead of PIPELINE.test.yaml")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "time limit for one case")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the pipeline's log for passing cases too")
	cmd.Flags().StringVar(&sandboxState, "sandbox-state", "/run/culvert", "sandbox state, as for culvert run")
	return cmd
}

// newMockFunctionCmd is the process behind a mocked function in `culvert
// test`: it speaks the framed protocol on stdin/stdout, with the case's
// rules in $CULVERT_MOCK.
func newMockFunctionCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "mock-function",
		Hidden: true,
		Args:   usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return pipetest.ServeMock(cmd.Context(), os.Stdin, os.Stdout)
		},
	}
}
