package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/culvert-dev/culvert/internal/tap"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

func newTapCmd(g *globals) *cobra.Command {
	var out, format, natsURL, kinEndpoint, kinRegion string
	var count int
	var follow bool
	var limit time.Duration
	cmd := &cobra.Command{
		Use:   "tap SOURCE",
		Short: "Capture records with all their metadata to a tap file, without touching the source's consumers or offsets",
		Long: `Capture records from a source to a tap file: a length-delimited stream of
culvert.v1.Record (default) or NDJSON (--format ndjson, or a .ndjson name).
Every record keeps its id, key, value, headers, event time and position.

SOURCE is one of:

  nats://SUBJECT                                   live only
  jetstream://STREAM[?subject=FILTER&from=P&to=P]   an ephemeral ordered consumer
  kafka://BROKER[,BROKER]/TOPIC[?partitions=0,2&from=P&to=P]
                                                   partitions read directly, no group
  kinesis://STREAM[?shards=ID,ID&from=P&to=P]       GetRecords, no lease, no checkpoint

A position P is first, latest, a sequence number (Kafka: an offset for every
partition, or PART:OFFSET,PART:OFFSET), an RFC 3339 time, or a duration
meaning that long ago (15m). to= also takes end: the last record present
when the tap starts. Stored sources stop at end unless --follow; the tap
also stops after --count records or --for a duration, and on Ctrl-C.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := stderrLogger(g)
			if err != nil {
				return err
			}
			src, err := tap.ParseSource(args[0], time.Now())
			if err != nil {
				return usageError{err}
			}
			if format == "" && out != "-" {
				format = tap.FormatFor(out)
			}
			if format, err = tap.CheckFormat(format); err != nil {
				return usageError{err}
			}
			var w io.Writer = cmd.OutOrStdout()
			if out == "-" {
				if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) && format == tap.FormatDelimited {
					return usageError{errors.New("not writing binary records to a terminal: use -o FILE or --format ndjson")}
				}
			} else {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			tw, err := tap.NewWriter(w, format)
			if err != nil {
				return usageError{err}
			}
			if natsURL == "" {
				natsURL = os.Getenv("NATS_URL")
			}
			ctx := cmd.Context()
			if limit > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, limit)
				defer cancel()
			}
			prog := newProgress(cmd.ErrOrStderr(), "tap", 0)
			start := time.Now()
			err = tap.Capture(ctx, src, tap.Options{
				NATSURL: natsURL, KinesisEndpoint: kinEndpoint, KinesisRegion: kinRegion,
				Follow: follow || src.Kind == tap.KindNATS, Count: count, Logger: log,
			}, func(r *culvertv1.Record) error {
				if err := tw.Write(r); err != nil {
					return err
				}
				prog.add(1)
				return nil
			})
			prog.finish()
			if ferr := tw.Flush(); ferr != nil && err == nil {
				err = fmt.Errorf("writing %s: %w", out, ferr)
			}
			if err != nil {
				return fmt.Errorf("tap %s: %w", args[0], err)
			}
			dest := out
			if out == "-" {
				dest = "stdout"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "tap: %d records from %s to %s (%s) in %s\n", tw.Count(), args[0], dest, format, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "-", "tap file to write (- is stdout)")
	cmd.Flags().StringVar(&format, "format", "", "delimited (default) or ndjson; default from the file name")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many records (0: no limit)")
	cmd.Flags().DurationVar(&limit, "for", 0, "stop after this long (0: no limit)")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep reading live records after the end position")
	cmd.Flags().StringVar(&natsURL, "nats-url", "", "NATS server for nats:// and jetstream:// (default $NATS_URL, else nats://127.0.0.1:4222)")
	cmd.Flags().StringVar(&kinEndpoint, "kinesis-endpoint", "", "Kinesis endpoint URL (default: AWS)")
	cmd.Flags().StringVar(&kinRegion, "region", "", "AWS region for kinesis:// (default: the SDK's, e.g. $AWS_REGION)")
	return cmd
}

// progress shows a count and a rate: a progress bar on a terminal, a line
// every two seconds otherwise.
type progress struct {
	bar   *progressbar.ProgressBar
	n     atomic.Int64
	done  chan struct{}
	wg    sync.WaitGroup
	w     io.Writer
	what  string
	start time.Time
}

// progressEvery is how often the plain-text progress prints a line.
const progressEvery = 2 * time.Second

// newProgress starts a progress display on w for total records (0:
// unknown).
func newProgress(w io.Writer, what string, total int64) *progress {
	return newProgressEvery(w, what, total, progressEvery)
}

// newProgressEvery is newProgress with the plain-text line printed every
// interval.
func newProgressEvery(w io.Writer, what string, total int64, every time.Duration) *progress {
	p := &progress{w: w, what: what, start: time.Now(), done: make(chan struct{})}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		max := total
		if max <= 0 {
			max = -1
		}
		p.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("records"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish(),
			progressbar.OptionSpinnerType(14), progressbar.OptionSetElapsedTime(true))
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
				n := p.n.Load()
				fmt.Fprintf(w, "%s: %d records, %.0f/s\n", what, n, float64(n)/time.Since(p.start).Seconds())
			}
		}
	}()
	return p
}

func (p *progress) add(n int) {
	p.n.Add(int64(n))
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		return
	}
	close(p.done)
	p.wg.Wait()
}
