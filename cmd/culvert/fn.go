package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/culvert-dev/culvert/internal/scaffold"
	"github.com/culvert-dev/culvert/proto/conformance"
	"github.com/spf13/cobra"
)

func newFnCmd(g *globals) *cobra.Command {
	fn := &cobra.Command{
		Use:   "fn",
		Short: "Work on functions: check them against the protocol, start new ones",
	}
	fn.AddCommand(newFnConformCmd(g), newFnInitCmd(g))
	return fn
}

func newFnConformCmd(_ *globals) *cobra.Command {
	var (
		rules        []string
		asJSON       bool
		noConvention bool
		timeout      time.Duration
		env          []string
		list         bool
		parallel     int
		samplesFile  string
	)
	cmd := &cobra.Command{
		Use:   "conform [--rules a,b] [--json] -- CMD [ARGS...]",
		Short: "Drive a framed-mode function through every rule of proto/SPEC.md and report pass or fail per rule",
		Long: `conform starts the function (one fresh process per rule) and checks it against
each rule of proto/SPEC.md: handshake and version negotiation, empty batches,
binary values, frames near the size limit, many headers, partial failures,
multiple and zero outputs, keep-alives, stdout protection, a slow reader,
shutdown and end of input. It prints one line per rule, with the reason of
each failure, and exits 1 when any rule fails.

Rules marked as needing the conformance convention (SPEC.md appendix A) ask
the function, through a record header, to fail a record, emit N outputs, drop
one or print to stdout; the function sees CULVERT_CONFORMANCE=1. Use
--no-convention for a function that does not honour it: those rules are
skipped.

Every other rule expects records back unchanged (an echo). For a function
that transforms its input, give --samples FILE, one value a line that the
function accepts: the kit first sends each sample alone (twice, to see that
answers are repeatable) and then, in every rule, sends samples and compares
each answer with the answer to the same sample alone. Rules that cannot be
checked in full this way say what they leave out in the report.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if list {
				return nil
			}
			if cmd.ArgsLenAtDash() != 0 || len(args) == 0 {
				return usageError{errors.New("give the function's command after --, e.g. culvert fn conform -- ./bin/passthrough")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if list {
				for _, r := range conformance.Rules() {
					conv := ""
					if r.Convention {
						conv = " (convention)"
					}
					fmt.Fprintf(out, "%-24s SPEC.md %-10s %s%s\n", r.ID, r.Section, r.Title, conv)
				}
				return nil
			}
			var ids []string
			for _, r := range rules {
				for _, id := range strings.Split(r, ",") {
					if id = strings.TrimSpace(id); id != "" {
						ids = append(ids, id)
					}
				}
			}
			var samples [][]byte
			if samplesFile != "" {
				f, err := os.Open(samplesFile)
				if err != nil {
					return usageError{fmt.Errorf("--samples: %w", err)}
				}
				samples, err = conformance.ReadSamples(f)
				f.Close()
				if err != nil {
					return usageError{fmt.Errorf("--samples %s: %w", samplesFile, err)}
				}
			}
			rep, err := conformance.Run(cmd.Context(), conformance.Options{
				Command: args, Env: env, Rules: ids, NoConvention: noConvention, Timeout: timeout, Parallel: parallel,
				Samples: samples,
			})
			if rep == nil {
				return usageError{err}
			}
			runErr := err // interrupted: print what ran, then say so
			if asJSON {
				err = rep.WriteJSON(out)
			} else {
				err = rep.WriteText(out)
			}
			if err != nil {
				return err
			}
			if runErr != nil {
				return fmt.Errorf("stopped after %d rules: %w", len(rep.Results), runErr)
			}
			if !rep.OK() {
				return validationError{fmt.Errorf("%d of %d rules failed", rep.Failed, len(rep.Results))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&rules, "rules", nil, "run only these rules (comma-separated IDs; see --list)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&noConvention, "no-convention", false, "skip the rules that need the conformance convention (SPEC.md appendix A)")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for each expected frame or exit")
	f.StringArrayVar(&env, "env", nil, "NAME=value added to the function's environment (repeatable)")
	f.IntVar(&parallel, "parallel", 1, "run this many rules at once, each against its own process")
	f.BoolVar(&list, "list", false, "list the rules and exit")
	f.StringVar(&samplesFile, "samples", "", "transform mode: a file of values the function accepts, one a line; answers are compared with the answer to each value alone instead of with the input")
	return cmd
}

func newFnInitCmd(_ *globals) *cobra.Command {
	var lang, dir, culvertSrc string
	cmd := &cobra.Command{
		Use:   "init --lang go|python|node|c|shell NAME",
		Short: "Start a new function: its code, a test and a pipeline snippet, passing culvert fn conform as generated",
		Long: `init creates the directory NAME (or --dir) with a function that passes records
through, a test, a pipeline snippet that runs it, and a README saying how to
build, test and check it. Go, Python, Node and C functions use the framed
protocol through the SDK of their language (the Python, Node and C SDK
sources are copied into the directory) and honour the conformance
convention, so that culvert fn conform passes every rule as generated. A
shell function is an exec-mode script.

For Go, go.mod points at a local Culvert checkout (--culvert-src, or the
checkout containing the current directory) with a replace directive.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if lang == "" {
				return usageError{fmt.Errorf("--lang is required: one of %s", strings.Join(scaffold.Languages(), ", "))}
			}
			if dir == "" {
				dir = name
			}
			src := culvertSrc
			if lang == "go" && src == "" {
				if wd, err := os.Getwd(); err == nil {
					src = scaffold.FindCulvertSrc(wd)
				}
			}
			files, err := scaffold.Generate(scaffold.Options{Lang: lang, Name: name, Dir: dir, CulvertSrc: src})
			if err != nil {
				return usageError{err}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "created %s (%s):\n", dir, lang)
			for _, f := range files {
				fmt.Fprintf(out, "  %s\n", filepath.Join(dir, f))
			}
			fmt.Fprintf(out, "next: see %s\n", filepath.Join(dir, "README.md"))
			if lang == "go" && src == "" {
				fmt.Fprintln(out, "note: go.mod requires github.com/culvert-dev/culvert; to use a local checkout: go mod edit -replace github.com/culvert-dev/culvert=/path/to/culvert")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&lang, "lang", "", "language: "+strings.Join(scaffold.Languages(), ", "))
	f.StringVar(&dir, "dir", "", "directory to create (default: NAME)")
	f.StringVar(&culvertSrc, "culvert-src", "", "Go: a Culvert checkout for go.mod's replace directive (default: the one containing the current directory, if any)")
	return cmd
}
