package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"time"

	"github.com/culvert-dev/culvert/pipelines"
)

// Generation runs one version of a pipeline until ctx is done, then drains
// and returns (as Run does).
type Generation func(ctx context.Context, p *pipelines.Pipeline) error

// Reloading runs p, and on every value from reload loads the pipeline
// again: when the new version is valid, the running generation drains as
// on SIGTERM (in-flight records finish and are acked within the shutdown
// grace; the rest stay un-acked and are redelivered) and the new one
// starts. An invalid version is reported and the running one kept. So a
// reload loses nothing, and repeats at most what was in flight and not
// finished within the grace. It returns when ctx is done or a generation
// fails.
func Reloading(ctx context.Context, p *pipelines.Pipeline, load func() (*pipelines.Pipeline, error), reload <-chan struct{}, run Generation, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	for gen := 1; ; gen++ {
		genCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- run(genCtx, p) }()
	wait:
		for {
			select {
			case err := <-done:
				cancel()
				return err
			case <-reload:
				np, err := load()
				if err != nil {
					log.Error("reload refused: the pipeline file is invalid; the running version goes on", "pipeline", p.Name, "file", p.File, "error", err)
					continue
				}
				log.Info("reloading the pipeline: draining the running version", "pipeline", p.Name, "file", p.File, "generation", gen)
				cancel()
				if err := <-done; err != nil {
					return err
				}
				if ctx.Err() != nil {
					return nil
				}
				log.Info("pipeline reloaded", "pipeline", np.Name, "file", np.File, "generation", gen+1)
				p = np
				break wait
			}
		}
	}
}

// Watch sends on the returned channel whenever the content of path changes,
// checked every interval, until ctx is done. A file that cannot be read is
// not a change (an editor may be replacing it).
func Watch(ctx context.Context, path string, interval time.Duration) <-chan struct{} {
	ch := make(chan struct{}, 1)
	sum := func() []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		s := sha256.Sum256(b)
		return s[:]
	}
	last := sum()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			s := sum()
			if s == nil || bytes.Equal(s, last) {
				continue
			}
			last = s
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch
}
