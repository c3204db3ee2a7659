package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/pipetest"
	"github.com/culvert-dev/culvert/internal/replay"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/internal/tap"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func newReplayCmd(g *globals) *cobra.Command {
	var input, from, toInput, out, format, natsURL, kinEndpoint, kinRegion, sandboxState string
	var dryRun, original bool
	var rate, speed float64
	var count int
	cmd := &cobra.Command{
		Use:   "replay PIPELINE.yaml (--input TAPFILE | --from SOURCE)",
		Short: "Send captured (or live-from-position) records through a pipeline, to its outputs or as a dry run",
		Long: `Send records through a pipeline: those of a tap file (--input), or those
read live from a source position (--from, the SOURCE syntax of culvert tap).
They enter the pipeline's input (--to-input when it has several) in place of
its connector; functions run as with culvert run.

Outputs are the pipeline's own (brokers are contacted) unless --dry-run,
which prints every output record (or writes it to --output) instead.
Records go as fast as possible, at --rate records per second, or with their
original spacing (--original, by event time; --speed 2 halves the waits).
A summary ends the run: records in, out per output, dead-lettered, given
back and the time taken.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			if (input == "") == (from == "") {
				return usageError{errors.New("give exactly one of --input TAPFILE and --from SOURCE")}
			}
			if rate > 0 && original {
				return usageError{errors.New("--rate and --original exclude each other")}
			}
			p, err := loadPipeline(args[0])
			if err != nil {
				return reportPipelineErrors(cmd, args[0], err)
			}
			if natsURL == "" {
				natsURL = os.Getenv("NATS_URL")
			}
			ctx := cmd.Context()
			var next memory.Next
			var total int64
			if input != "" {
				f, err := os.Open(input)
				if err != nil {
					return err
				}
				defer f.Close()
				fm := format
				if fm == "" && tap.FormatFor(input) == tap.FormatNDJSON {
					fm = tap.FormatNDJSON
				}
				r, err := tap.NewReader(f, input, fm)
				if err != nil {
					return usageError{err}
				}
				n := 0
				next = func(context.Context) (*culvertv1.Record, error) {
					if count > 0 && n >= count {
						return nil, io.EOF
					}
					n++
					return r.Next()
				}
				total = int64(count)
			} else {
				src, err := tap.ParseSource(from, time.Now())
				if err != nil {
					return usageError{err}
				}
				next = liveNext(ctx, src, tap.Options{NATSURL: natsURL, KinesisEndpoint: kinEndpoint, KinesisRegion: kinRegion, Count: count, Logger: log})
			}
			next = replay.Paced(next, replay.Pace{Rate: rate, Original: original, Speed: speed})

			sbx, closeSandbox, err := newSandboxing(p, sandboxFlags{State: sandboxState}, log)
			if err != nil {
				return err
			}
			defer closeSandbox()
			o := replay.Options{
				Pipeline: p, Input: toInput, Next: next, DryRun: dryRun, Logger: log,
				Runner: runner.Options{Runtime: sbx.Plain, Confine: sbx.Confine(p), NATSURL: natsURL},
			}
			if dryRun {
				var w io.Writer = cmd.OutOrStdout()
				if out != "" {
					f, err := os.Create(out)
					if err != nil {
						return err
					}
					defer f.Close()
					w = f
				}
				o.OnOutput = dryRunPrinter(w)
			}
			prog := newProgress(cmd.ErrOrStderr(), "replay", total)
			o.OnInput = func(*culvertv1.Record) { prog.add(1) }
			sum, err := replay.Run(ctx, o)
			prog.finish()
			if sum != nil {
				replay.WriteSummary(cmd.ErrOrStderr(), sum)
			}
			if err != nil {
				return err
			}
			if len(sum.GivenBack) > 0 {
				return fmt.Errorf("%d records failed without a dead-letter output", len(sum.GivenBack))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&input, "input", "", "tap file to replay")
	cmd.Flags().StringVar(&format, "format", "", "tap file format: delimited or ndjson (default: from the name, else detected)")
	cmd.Flags().StringVar(&from, "from", "", "replay live from a source position instead (SOURCE as for culvert tap)")
	cmd.Flags().StringVar(&toInput, "to-input", "", "pipeline input the records enter (default: its only input)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "do not publish: print every output record instead")
	cmd.Flags().StringVarP(&out, "output", "o", "", "with --dry-run, write the output records to this file (NDJSON) instead of stdout")
	cmd.Flags().Float64Var(&rate, "rate", 0, "records per second (0: as fast as possible)")
	cmd.Flags().BoolVar(&original, "original", false, "keep the records' original spacing (by event time)")
	cmd.Flags().Float64Var(&speed, "speed", 1, "with --original, replay this many times faster")
	cmd.Flags().IntVar(&count, "count", 0, "replay at most this many records (0: all)")
	cmd.Flags().StringVar(&natsURL, "nats-url", "", "NATS server for the pipeline's outputs and --from (default $NATS_URL)")
	cmd.Flags().StringVar(&kinEndpoint, "kinesis-endpoint", "", "Kinesis endpoint URL for --from kinesis://")
	cmd.Flags().StringVar(&kinRegion, "region", "", "AWS region for --from kinesis://")
	cmd.Flags().StringVar(&sandboxState, "sandbox-state", "/run/culvert", "sandbox state, as for culvert run")
	return cmd
}

// liveNext feeds a capture into a replay: the capture runs in its own
// goroutine and hands records over one at a time (back-pressure).
func liveNext(ctx context.Context, src *tap.Source, o tap.Options) memory.Next {
	recs := make(chan *culvertv1.Record)
	errc := make(chan error, 1)
	started := false
	return func(nctx context.Context) (*culvertv1.Record, error) {
		if !started {
			started = true
			go func() {
				errc <- tap.Capture(ctx, src, o, func(r *culvertv1.Record) error {
					select {
					case recs <- r:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				})
				close(recs)
			}()
		}
		select {
		case r, ok := <-recs:
			if !ok {
				if err := <-errc; err != nil {
					return nil, err
				}
				return nil, io.EOF
			}
			return r, nil
		case <-nctx.Done():
			return nil, nctx.Err()
		}
	}
}

// dryRunPrinter writes each output record as a line: {"output": ...} and
// the record as culvert test's golden files show it.
func dryRunPrinter(w io.Writer) func(string, memory.Published) {
	return func(output string, p memory.Published) {
		line, err := pipetest.RenderRecord(p, true)
		if err != nil {
			line = fmt.Sprintf("%q", err.Error())
		}
		fmt.Fprintf(w, "{\"output\":%q,\"record\":%s}\n", output, line)
	}
}

// reportPipelineErrors prints a pipeline's validation errors like
// culvert validate and returns the exit error.
func reportPipelineErrors(cmd *cobra.Command, path string, err error) error {
	var errs pipelines.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(cmd.ErrOrStderr(), e)
		}
		return validationError{fmt.Errorf("%s is invalid (%d errors)", path, len(errs))}
	}
	return err
}
