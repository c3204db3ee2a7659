package main

import (
	"errors"
	"fmt"

	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/router"
	"github.com/spf13/cobra"
)

func newValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check pipeline files and print every error with its file, line and field",
		Args:  usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := 0
			for _, path := range args {
				p, err := loadPipeline(path)
				if err == nil {
					err = checkSandbox(p) // a pipeline this host cannot sandbox would not run
				}
				if err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
					continue
				}
				bad++
				var errs pipelines.Errors
				if errors.As(err, &errs) {
					for _, e := range errs {
						fmt.Fprintln(cmd.ErrOrStderr(), e)
					}
					continue
				}
				fmt.Fprintln(cmd.ErrOrStderr(), err)
			}
			if bad > 0 {
				return validationError{fmt.Errorf("%d of %d pipeline files are invalid", bad, len(args))}
			}
			return nil
		},
	}
}

// checker validates expressions and templates with the router's own
// compilers, so validation and run agree.
func checker() pipelines.Checker {
	return pipelines.Checker{
		CEL: router.CheckCEL,
		Template: func(s string) error {
			_, err := router.ParseTemplate(s)
			return err
		},
		SubjectPattern: router.CheckSubjectPattern,
	}
}

func loadPipeline(path string) (*pipelines.Pipeline, error) {
	return pipelines.LoadWith(path, nil, checker())
}
