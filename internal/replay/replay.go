// Package replay owns sending recorded records through a pipeline: pacing
// them (as fast as possible, at a fixed rate, or at their original
// inter-arrival times, scaled), feeding them to one input of the pipeline
// through an in-memory source, and counting what came out of each output.
// Outputs are the pipeline's real ones, or in-memory sinks for a dry run.
//
// It reads nothing itself: records come from a Next (a tap file reader, a
// live capture); and it never changes the pipeline file.
package replay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/memory"
	"github.com/culvert-dev/culvert/internal/engine"
	"github.com/culvert-dev/culvert/internal/runner"
	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Pace says how fast records are sent.
type Pace struct {
	// Rate, when positive, sends at most this many records per second.
	Rate float64
	// Original keeps the records' original spacing (their event times),
	// divided by Speed (2: twice as fast; 0 means 1).
	Original bool
	Speed    float64
}

// Paced wraps next so that records come out at the pace p. Waits end
// early when ctx is done.
func Paced(next memory.Next, p Pace) memory.Next {
	if p.Rate <= 0 && !p.Original {
		return next
	}
	speed := p.Speed
	if speed <= 0 {
		speed = 1
	}
	var start time.Time
	var first time.Time // event time of the first record with one
	n := 0
	return func(ctx context.Context) (*culvertv1.Record, error) {
		rec, err := next(ctx)
		if err != nil {
			return rec, err
		}
		now := time.Now()
		if n == 0 {
			start = now
		}
		n++
		var due time.Time
		switch {
		case p.Original:
			if rec.EventTime == nil {
				return rec, nil // nothing to keep: send at once
			}
			et := rec.EventTime.AsTime()
			if first.IsZero() {
				first, start = et, now
			}
			due = start.Add(time.Duration(float64(et.Sub(first)) / speed))
		default:
			due = start.Add(time.Duration(float64(n-1) / p.Rate * float64(time.Second)))
		}
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-t.C:
			}
		}
		return rec, nil
	}
}

// Options configure a replay.
type Options struct {
	Pipeline *pipelines.Pipeline
	// Input is the input the records arrive at; "" when the pipeline has
	// only one.
	Input string
	// Next yields the records; io.EOF ends the replay.
	Next memory.Next
	// DryRun replaces every output by an in-memory sink; OnOutput then
	// sees each record.
	DryRun   bool
	OnOutput func(output string, p memory.Published)
	// OnInput is called as each record enters the pipeline.
	OnInput func(*culvertv1.Record)
	// Runner holds the rest (runtime, confinement, NATS URL...); its
	// Pipeline, Sources, Sinks and WrapSink are set by Run.
	Runner runner.Options
	Logger *slog.Logger
}

// Summary is what a replay did.
type Summary struct {
	In        int64
	Out       map[string]int64 // confirmed records per output
	Failed    map[string]int64 // publishes that failed per output
	DeadOut   map[string]bool  // outputs that are some route's dead_letter
	Dead      int64            // records dead-lettered
	GivenBack []*culvertv1.Record
	Elapsed   time.Duration
}

// Run replays until Next ends and every record is settled, or ctx is
// done.
func Run(ctx context.Context, o Options) (*Summary, error) {
	p := o.Pipeline
	input := o.Input
	if input == "" {
		if len(p.Inputs) != 1 {
			return nil, fmt.Errorf("pipeline %s has %d inputs (%s): say which one to replay into", p.File, len(p.Inputs), strings.Join(sortedKeys(p.Inputs), ", "))
		}
		input = sortedKeys(p.Inputs)[0]
	}
	if p.Inputs[input] == nil {
		return nil, fmt.Errorf("pipeline %s has no input %q (inputs: %s)", p.File, input, strings.Join(sortedKeys(p.Inputs), ", "))
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	sum := &Summary{Out: map[string]int64{}, Failed: map[string]int64{}, DeadOut: map[string]bool{}}
	for _, r := range p.Routes {
		if r.DeadLetter != "" {
			sum.DeadOut[r.DeadLetter] = true
		}
	}
	var in atomic.Int64
	next := func(ctx context.Context) (*culvertv1.Record, error) {
		rec, err := o.Next(ctx)
		if err == nil {
			in.Add(1)
			if o.OnInput != nil {
				o.OnInput(rec)
			}
		}
		return rec, err
	}
	// The other inputs get nothing: a replay feeds one input.
	sources := map[string]connectors.Source{}
	var main *memory.Source
	for name := range p.Inputs {
		n := memory.Slice(nil)
		if name == input {
			n = next
		}
		src, err := memory.NewSource(memory.SourceConfig{Name: name, Next: n, MaxInFlight: p.Delivery.MaxInFlight}, log)
		if err != nil {
			return nil, err
		}
		if name == input {
			main = src
		}
		sources[name] = src
	}
	ro := o.Runner
	ro.Pipeline, ro.Sources, ro.Logger = p, sources, log
	if ro.Stdin == nil {
		ro.Stdin = strings.NewReader("")
	}
	if o.DryRun {
		ro.Sinks = map[string]connectors.Sink{}
		for name := range p.Outputs {
			cfg := memory.SinkConfig{Name: name, Discard: true}
			if o.OnOutput != nil {
				cfg.OnPublish = func(pub memory.Published) { o.OnOutput(name, pub) }
			}
			ro.Sinks[name] = memory.NewSink(cfg)
		}
	}
	var mu sync.Mutex
	ro.WrapSink = func(name string, s connectors.Sink) connectors.Sink {
		return &counting{Sink: s, ok: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				sum.Failed[name]++
			} else {
				sum.Out[name]++
			}
		}}
	}
	var eng *engine.Engine
	ro.Engine = func(e *engine.Engine) { eng = e }
	start := time.Now()
	err := runner.Run(ctx, ro)
	sum.Elapsed = time.Since(start)
	sum.In = in.Load()
	if eng != nil {
		sum.Dead = eng.Stats().DeadLettered
	}
	if main != nil {
		sum.GivenBack = main.GivenBack()
	}
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("replay interrupted: %w", ctx.Err())
	}
	return sum, err
}

// counting reports each confirmation of the sink it wraps.
type counting struct {
	connectors.Sink
	ok func(error)
}

func (c *counting) Publish(ctx context.Context, subject string, rec *culvertv1.Record, done func(error)) {
	c.Sink.Publish(ctx, subject, rec, func(err error) {
		c.ok(err)
		done(err)
	})
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WriteSummary prints s as a small table.
func WriteSummary(w io.Writer, s *Summary) {
	rate := 0.0
	if s.Elapsed > 0 {
		rate = float64(s.In) / s.Elapsed.Seconds()
	}
	fmt.Fprintf(w, "replay: %d records in, %d dead-lettered, %d given back, %s (%.0f records/s)\n",
		s.In, s.Dead, len(s.GivenBack), s.Elapsed.Round(time.Millisecond), rate)
	names := sortedKeys(s.Out)
	for n := range s.Failed {
		if _, ok := s.Out[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		fmt.Fprintln(w, "  no output received anything")
		return
	}
	width := len("output")
	for _, n := range names {
		width = max(width, len(n))
	}
	fmt.Fprintf(w, "  %-*s  %8s  %s\n", width, "output", "records", "")
	for _, n := range names {
		note := ""
		if s.DeadOut[n] {
			note = "dead letters"
		}
		if f := s.Failed[n]; f > 0 {
			note = strings.TrimSpace(note + fmt.Sprintf(" %d failed to publish", f))
		}
		fmt.Fprintf(w, "  %-*s  %8d  %s\n", width, n, s.Out[n], note)
	}
	for _, r := range s.GivenBack {
		fmt.Fprintf(w, "  given back: %s\n", r.GetId())
	}
}
