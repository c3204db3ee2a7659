package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/culvert-dev/culvert/sandbox"
)

// Options say what to test and how.
type Options struct {
	// Command is the function's executable and its arguments.
	Command []string
	// Dir is its working directory; empty means the kit's.
	Dir string
	// Env is added to the kit's environment for the function, as
	// "NAME=value" entries.
	Env []string
	// Rules names the rules to run, by ID; empty means all.
	Rules []string
	// NoConvention skips the rules that need the conformance convention
	// (SPEC.md appendix A), for functions that do not honour it, and does
	// not set CULVERT_CONFORMANCE=1.
	NoConvention bool
	// Parallel is how many rules run at once, each with its own process;
	// 0 or 1 runs them one after another. The report keeps table order.
	Parallel int
	// Timeout is how long the kit waits for any one expected frame or exit;
	// 0 means 10 s, the protocol's handshake timeout (SPEC.md 8).
	Timeout time.Duration
	// Samples switches the kit to transform mode, for a function that does
	// not echo its input: record values the function accepts (answers
	// without a failure), which the kit sends where a rule would send its
	// own values. The kit first sends each sample alone, twice, and keeps
	// the answer as the reference; the rules then check protocol properties
	// and compare each answer with the reference instead of with the
	// input. Empty means echo mode.
	Samples [][]byte
	// Runtime, when set, starts the function instead of a plain child
	// process, e.g. sandbox/container to check a function inside the
	// sandbox it will run in. The function then gets Env (and
	// CULVERT_CONFORMANCE) only, Command[0] is a path inside its root, and
	// Isolation says how to confine it. Its tenant is "conformance".
	Runtime   sandbox.Runtime
	Isolation sandbox.Isolation
}

func (o *Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return 10 * time.Second
	}
	return o.Timeout
}

// Status is the outcome of one rule.
type Status string

// The outcomes.
const (
	Pass Status = "pass"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Result is the outcome of one rule.
type Result struct {
	Rule    string `json:"rule"`
	Section string `json:"section"`
	Title   string `json:"title"`
	Status  Status `json:"status"`
	Reason  string `json:"reason,omitempty"`
	// Note says, in transform mode, what the rule does not check.
	Note     string        `json:"note,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of a run.
type Report struct {
	Command []string `json:"command"`
	// Mode is "echo", or "transform" when Options.Samples was given.
	Mode    string   `json:"mode"`
	Results []Result `json:"results"`
	Passed  int      `json:"passed"`
	Failed  int      `json:"failed"`
	Skipped int      `json:"skipped"`
}

// OK reports whether no rule failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Find returns the result of one rule.
func (r *Report) Find(id string) (Result, bool) {
	for _, res := range r.Results {
		if res.Rule == id {
			return res, true
		}
	}
	return Result{}, false
}

// Run runs the selected rules in table order, each against a fresh process,
// and returns the report. It fails only when the options are unusable
// (no command, an unknown rule); a function that cannot even be started
// fails every rule.
func Run(ctx context.Context, o Options) (*Report, error) {
	if len(o.Command) == 0 {
		return nil, fmt.Errorf("conformance: no function command given")
	}
	rules := Rules()
	for _, id := range o.Rules {
		if !slices.ContainsFunc(rules, func(r Rule) bool { return r.ID == id }) {
			return nil, fmt.Errorf("conformance: unknown rule %q; the rules are: %s", id, strings.Join(IDs(), ", "))
		}
	}
	var selected []Rule
	for _, r := range rules {
		if len(o.Rules) == 0 || slices.Contains(o.Rules, r.ID) {
			selected = append(selected, r)
		}
	}
	var refs *references
	var refErr error
	if len(o.Samples) > 0 {
		refs, refErr = takeReferences(ctx, &o)
	}
	results := make([]Result, len(selected))
	sem := make(chan struct{}, max(o.Parallel, 1))
	var wg sync.WaitGroup
	for i, r := range selected {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = runOne(ctx, &o, r, refs, refErr)
		}()
	}
	wg.Wait()
	rep := &Report{Command: o.Command, Mode: "echo"}
	if len(o.Samples) > 0 {
		rep.Mode = "transform"
	}
	for _, res := range results {
		if res.Rule == "" {
			continue // not run: ctx ended
		}
		switch res.Status {
		case Pass:
			rep.Passed++
		case Fail:
			rep.Failed++
		case Skip:
			rep.Skipped++
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, ctx.Err()
}

func runOne(ctx context.Context, o *Options, r Rule, refs *references, refErr error) Result {
	res := Result{Rule: r.ID, Section: r.Section, Title: r.Title}
	if len(o.Samples) > 0 {
		res.Note = r.Transform
		if refs != nil && !refs.deterministic {
			res.Note = strings.TrimSpace(res.Note + " " + refs.why)
		}
	}
	start := time.Now()
	var skip *skipError
	switch {
	case r.Convention && o.NoConvention:
		res.Status, res.Reason = Skip, "needs the conformance convention (SPEC.md appendix A)"
	case refErr != nil:
		res.Status, res.Reason = Fail, refErr.Error()
	default:
		err := runRule(ctx, o, r, refs)
		switch {
		case errors.As(err, &skip):
			res.Status, res.Reason = Skip, skip.why
		case err != nil:
			res.Status, res.Reason = Fail, err.Error()
		default:
			res.Status = Pass
		}
	}
	res.Duration = time.Since(start)
	return res
}

// skipError is returned by a check that finds, once running, that it
// cannot apply to the function (e.g. outputs too small to fill a pipe).
type skipError struct{ why string }

func (e *skipError) Error() string { return "skipped: " + e.why }

func runRule(ctx context.Context, o *Options, r Rule, refs *references) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := &T{ctx: ctx, o: o, refs: refs, sampleOf: map[string]int{}}
	defer t.cleanup()
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("kit error: %v", v)
		}
	}()
	return r.Check(t)
}

// IDs lists the rule IDs in table order.
func IDs() []string {
	var ids []string
	for _, r := range Rules() {
		ids = append(ids, r.ID)
	}
	return ids
}

// WriteText writes one line per rule and a summary.
func (r *Report) WriteText(w io.Writer) error {
	width, swidth := 0, 0
	for _, res := range r.Results {
		width, swidth = max(width, len(res.Rule)), max(swidth, len(res.Section))
	}
	for _, res := range r.Results {
		line := fmt.Sprintf("%-4s  %-*s  SPEC.md %-*s  %s (%v)", strings.ToUpper(string(res.Status)), width, res.Rule, swidth, res.Section, res.Title, res.Duration.Round(time.Millisecond))
		if res.Reason != "" {
			line += "\n      " + strings.ReplaceAll(res.Reason, "\n", "\n      ")
		}
		if res.Note != "" {
			line += "\n      transform mode: " + res.Note
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	verdict := "conformant"
	switch {
	case !r.OK():
		verdict = "NOT conformant"
	case r.Skipped > 0:
		verdict = "conformant in the rules that ran"
	}
	if r.Mode == "transform" {
		verdict += " (transform mode: checked against sample inputs, not an echo)"
	}
	_, err := fmt.Fprintf(w, "%d rules: %d passed, %d failed, %d skipped: %s\n", len(r.Results), r.Passed, r.Failed, r.Skipped, verdict)
	return err
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
