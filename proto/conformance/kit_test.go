package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/proto/conformance"
)

// repoRoot is the module root, two levels up from this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// goExamples builds the Go example functions once per test binary.
func goExamples(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "culvert-conformance")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+string(filepath.Separator),
			"./examples/functions/passthrough", "./examples/functions/faulty", "./examples/functions/broken",
			"./examples/functions/conformance", "./examples/functions/enrich",
			"./proto/conformance/testdata/stateful")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{string(out), err}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func conventionRules() []string {
	var ids []string
	for _, r := range conformance.Rules() {
		if r.Convention {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// TestGoExamples runs the whole kit against the Go functions: broken with
// no defect (written without the SDK) and conformance (the Go SDK's
// per-record and, with --batch, per-batch API) honour the convention and
// must pass every rule; passthrough and faulty (with no fault) do not, and
// must pass every other rule.
func TestGoExamples(t *testing.T) {
	bin := goExamples(t)
	for _, tc := range []struct {
		name         string
		args         []string
		noConvention bool
	}{
		{"broken", nil, false},
		{"conformance", nil, false},
		{"conformance", []string{"--batch"}, false},
		{"passthrough", nil, true},
		{"faulty", nil, true},
	} {
		t.Run(strings.Join(append([]string{tc.name}, tc.args...), " "), func(t *testing.T) {
			rep, err := conformance.Run(context.Background(), conformance.Options{
				Command:      append([]string{filepath.Join(bin, tc.name)}, tc.args...),
				NoConvention: tc.noConvention,
				Parallel:     4,
				Env:          []string{"CULVERT_BREAK=", "CULVERT_FAULT="},
			})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			if !rep.OK() || len(rep.Results) != len(conformance.Rules()) {
				t.Fatalf("want every rule to pass:\n%s", text.String())
			}
			var skipped []string
			for _, r := range rep.Results {
				if r.Status == conformance.Skip {
					skipped = append(skipped, r.Rule)
				}
			}
			want := []string(nil)
			if tc.noConvention {
				want = conventionRules()
			}
			if !slices.Equal(skipped, want) {
				t.Fatalf("skipped %v, want %v:\n%s", skipped, want, text.String())
			}
		})
	}
}

// enrichSamples are the values examples/functions/enrich accepts, from
// its samples.jsonl.
func enrichSamples(t *testing.T) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "examples", "functions", "enrich", "samples.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := conformance.ReadSamples(f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTransformMode runs the whole kit in transform mode against enrich,
// which transforms JSON objects and fails anything else, and against the
// broken function with no defect (an echo is a transformation too). Every
// rule must pass, and the rules that check less than in echo mode must
// say what they leave out.
func TestTransformMode(t *testing.T) {
	bin := goExamples(t)
	samples := enrichSamples(t)
	for _, name := range []string{"enrich", "broken"} {
		t.Run(name, func(t *testing.T) {
			rep, err := conformance.Run(context.Background(), conformance.Options{
				Command: []string{filepath.Join(bin, name)}, Samples: samples, Parallel: 4,
				Env: []string{"CULVERT_BREAK="},
			})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			if !rep.OK() || rep.Skipped != 0 || rep.Mode != "transform" || len(rep.Results) != len(conformance.Rules()) {
				t.Fatalf("want every rule to pass in transform mode:\n%s", text.String())
			}
			for _, r := range conformance.Rules() {
				res, _ := rep.Find(r.ID)
				if res.Note != r.Transform {
					t.Errorf("%s: note %q, want %q", r.ID, res.Note, r.Transform)
				}
			}
			if !strings.Contains(text.String(), "transform mode: values are the samples") {
				t.Errorf("the text report does not show what binary-values leaves out:\n%s", text.String())
			}
			t.Logf("%s:\n%s", name, text.String())
		})
	}
}

// TestTransformModeStateful: a function whose answers depend on more than
// the record. One that answers a sample differently each time it is sent
// (a counter) passes every rule it is run against (all but the
// convention's), each saying that answers were checked for
// shape only and why; one that answers a sample alone the same every time
// but differently when it shares a batch (its position in the batch) fails
// the rules that batch samples, each naming the record and the difference.
func TestTransformModeStateful(t *testing.T) {
	bin := goExamples(t)
	samples := enrichSamples(t)
	for _, tc := range []struct {
		mode   string
		wantOK bool
		reason string // in every failure (wantOK false) or every note (true)
	}{
		{"counter", true, "answered differently when sent twice"},
		{"position", false, "answered unlike the same sample sent alone"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rep, err := conformance.Run(context.Background(), conformance.Options{
				Command: []string{filepath.Join(bin, "stateful"), tc.mode}, Samples: samples, Parallel: 4,
				NoConvention: true, // stateful answers every record the same way
			})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			if rep.OK() != tc.wantOK || len(rep.Results) != len(conformance.Rules()) {
				t.Fatalf("OK %v, want %v:\n%s", rep.OK(), tc.wantOK, text.String())
			}
			for _, r := range rep.Results {
				switch {
				case r.Status == conformance.Skip:
				case tc.wantOK && !strings.Contains(r.Note, tc.reason):
					t.Errorf("%s: note %q does not say %q", r.Rule, r.Note, tc.reason)
				case !tc.wantOK && r.Status == conformance.Fail && !strings.Contains(r.Reason, tc.reason):
					t.Errorf("%s failed for another reason: %s", r.Rule, r.Reason)
				}
			}
			if !tc.wantOK && rep.Failed < 2 {
				t.Errorf("%d rules failed, want every rule that batches samples to:\n%s", rep.Failed, text.String())
			}
			t.Logf("%s:\n%s", tc.mode, text.String())
		})
	}
}

// TestTransformModeSampleErrors: a sample the function fails, and samples
// whose answers are too small for the slow-reader rule, are reported, not
// passed over.
func TestTransformModeSampleErrors(t *testing.T) {
	bin := goExamples(t)
	for _, tc := range []struct {
		name    string
		samples []string
		rule    string
		status  conformance.Status
		reason  string
	}{
		{"rejected sample", []string{`{"ok":1}`, `not json`}, "handshake", conformance.Fail, "give samples the function accepts"},
		// enrich drops the white space: 2 KiB of input, 17 bytes of answer.
		{"small answers", []string{"{" + strings.Repeat(" ", 2048) + "}"}, "slow-reader", conformance.Skip, "too few to fill the pipe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var samples [][]byte
			for _, s := range tc.samples {
				samples = append(samples, []byte(s))
			}
			rep, err := conformance.Run(context.Background(), conformance.Options{
				Command: []string{filepath.Join(bin, "enrich")}, Samples: samples, Rules: []string{tc.rule},
			})
			if err != nil {
				t.Fatal(err)
			}
			res, _ := rep.Find(tc.rule)
			if res.Status != tc.status || !strings.Contains(res.Reason, tc.reason) || (tc.status == conformance.Fail && !strings.Contains(res.Reason, "not json")) {
				t.Fatalf("got %s %q, want %s with %q", res.Status, res.Reason, tc.status, tc.reason)
			}
		})
	}
}

func TestReadSamples(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{"{\"a\":1}\n\n{}\r\nplain text\n", []string{`{"a":1}`, `{}`, "plain text"}, ""},
		{"last line without newline", []string{"last line without newline"}, ""},
		{"\n  \n", nil, "no sample"},
	} {
		got, err := conformance.ReadSamples(strings.NewReader(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		var gs []string
		for _, g := range got {
			gs = append(gs, string(g))
		}
		if err != nil || !slices.Equal(gs, tc.want) {
			t.Errorf("%q: got %q, %v, want %q", tc.in, gs, err, tc.want)
		}
	}
}

// transformBlind are the rules whose broken-function defect transform mode
// cannot see, because what the defect changes is the function's own
// business there: the values (binary-values cuts them at NUL) and the
// headers of its outputs (headers drops repeated ones). Each such rule
// says so in its Transform note.
var transformBlind = []string{"binary-values", "headers"}

// TestEachRuleCanFail switches on, one at a time, the defect of the broken
// function named after each rule, and checks that the rule then fails. Its
// passing with no defect is TestGoExamples/broken.
//
// In transform mode (the same defects, samples in place of the kit's own
// values) every rule must fail too, except those in transformBlind, which
// must pass and carry a note saying what they do not check.
func TestEachRuleCanFail(t *testing.T) {
	bin := goExamples(t)
	samples := enrichSamples(t)
	for _, mode := range []string{"echo", "transform"} {
		for _, r := range conformance.Rules() {
			t.Run(mode+"/"+r.ID, func(t *testing.T) {
				t.Parallel() // most of the time is spent waiting for timeouts
				o := conformance.Options{
					Command: []string{filepath.Join(bin, "broken"), "--break", r.ID},
					Rules:   []string{r.ID},
					Timeout: 2 * time.Second,
				}
				if mode == "transform" {
					o.Samples = samples
				}
				rep, err := conformance.Run(context.Background(), o)
				if err != nil {
					t.Fatal(err)
				}
				res, ok := rep.Find(r.ID)
				if mode == "transform" && slices.Contains(transformBlind, r.ID) {
					if !ok || res.Status != conformance.Pass || res.Note == "" || r.Transform == "" {
						t.Fatalf("with defect %s in transform mode, rule %s: %+v, want a pass with a note saying what is not checked (if the kit now sees this defect, remove it from transformBlind)", r.ID, r.ID, res)
					}
					return
				}
				if !ok || res.Status != conformance.Fail || res.Reason == "" {
					t.Fatalf("with defect %s, rule %s: %+v, want a failure with a reason", r.ID, r.ID, res)
				}
				if mode == "transform" && strings.HasPrefix(res.Reason, "sample inputs:") && r.ID != "handshake" {
					t.Fatalf("with defect %s, rule %s failed only in taking the reference answers: %s", r.ID, r.ID, res.Reason)
				}
				t.Logf("%s: %s", r.ID, res.Reason)
			})
		}
	}
}

func TestStrayStdoutReportsTheBytes(t *testing.T) {
	bin := goExamples(t)
	rep, err := conformance.Run(context.Background(), conformance.Options{
		Command: []string{filepath.Join(bin, "broken"), "--break", "stdout-protected"},
		Rules:   []string{"stdout-protected"},
		Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	res, _ := rep.Find("stdout-protected")
	for _, want := range []string{"protocol violation", "conformance-marker-", "did the function print to stdout?"} {
		if !strings.Contains(res.Reason, want) {
			t.Errorf("reason %q lacks %q", res.Reason, want)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    conformance.Options
		want string
	}{
		{"no command", conformance.Options{}, "no function command"},
		{"unknown rule", conformance.Options{Command: []string{"true"}, Rules: []string{"nope"}}, `unknown rule "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := conformance.Run(context.Background(), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestMissingExecutableFailsEveryRule(t *testing.T) {
	rep, err := conformance.Run(context.Background(), conformance.Options{
		Command: []string{filepath.Join(t.TempDir(), "does-not-exist")},
		Rules:   []string{"handshake", "eof"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 2 || !strings.Contains(rep.Results[0].Reason, "does-not-exist") {
		t.Fatalf("got %+v", rep.Results)
	}
}

// sdkExample is one example function of an SDK in another language.
type sdkExample struct {
	name    string // sdk/<lang>/examples/<name>
	dir     string
	command []string // nil until built
	build   []string // a build command run in dir first, if any
}

// sdkExamples finds the examples under sdk/<lang>/examples/<name>/ by the
// entry point each language uses: main.py (run with /usr/bin/python3,
// Debian's, which has python3-protobuf), index.js (run with node), main.c
// (compiled with cc together with sdk/c/culvert.c). An example named
// conformance is listed twice: as it is (the SDK's per-record API) and with
// --batch (the same answers through the per-batch API).
func sdkExamples(t *testing.T) []sdkExample {
	t.Helper()
	root := repoRoot(t)
	dirs, _ := filepath.Glob(filepath.Join(root, "sdk", "*", "examples", "*"))
	var out []sdkExample
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		lang := filepath.Base(filepath.Dir(filepath.Dir(dir)))
		ex := sdkExample{name: lang + "/" + filepath.Base(dir), dir: dir}
		exists := func(f string) bool {
			_, err := os.Stat(filepath.Join(dir, f))
			return err == nil
		}
		switch {
		case lang == "python" && exists("main.py"):
			ex.command = []string{"/usr/bin/python3", filepath.Join(dir, "main.py")}
		case lang == "node" && exists("index.js"):
			ex.command = []string{"node", filepath.Join(dir, "index.js")}
		case lang == "c" && exists("main.c"):
			exe := filepath.Join(t.TempDir(), "fn")
			ex.build = []string{"cc", "-O2", "-Wall", "-o", exe, "main.c", filepath.Join(root, "sdk", "c", "culvert.c"), "-I", filepath.Join(root, "sdk", "c")}
			ex.command = []string{exe}
		default:
			// An example the kit cannot start would go untested: say so.
			t.Errorf("%s: no entry point the kit knows (python: main.py, node: index.js, c: main.c)", ex.name)
			continue
		}
		out = append(out, ex)
		if filepath.Base(dir) == "conformance" {
			batch := ex
			batch.name += " --batch"
			batch.command = append(slices.Clip(ex.command), "--batch")
			if ex.build != nil { // its own executable: the two build in parallel
				exe := filepath.Join(t.TempDir(), "fn")
				batch.build = slices.Clone(ex.build)
				batch.build[slices.Index(batch.build, "-o")+1] = exe
				batch.command = []string{exe, "--batch"}
			}
			out = append(out, batch)
		}
	}
	return out
}

// TestSDKExamples runs the whole kit against every example function of
// every SDK present. An example named "conformance" honours the
// convention and must pass every rule; the others are echoes and must pass
// every rule that does not need it. A missing interpreter or compiler
// fails the test: CI installs them (.ci/deps.d).
func TestSDKExamples(t *testing.T) {
	exs := sdkExamples(t)
	if len(exs) == 0 {
		t.Log("no SDK examples under sdk/*/examples")
	}
	for _, ex := range exs {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			if ex.build != nil {
				cmd := exec.Command(ex.build[0], ex.build[1:]...)
				cmd.Dir = ex.dir
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("building %s: %v\n%s", ex.name, err, out)
				}
			}
			if _, err := exec.LookPath(ex.command[0]); err != nil {
				t.Fatalf("%s needs %s: %v (installed by .ci/deps.d in CI)", ex.name, ex.command[0], err)
			}
			noConv := filepath.Base(ex.dir) != "conformance"
			rep, err := conformance.Run(context.Background(), conformance.Options{Command: ex.command, Dir: ex.dir, NoConvention: noConv, Parallel: 2, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			if !rep.OK() {
				t.Fatalf("%s is not conformant:\n%s", ex.name, text.String())
			}
			if !noConv && rep.Skipped != 0 {
				t.Fatalf("%s skipped rules:\n%s", ex.name, text.String())
			}
			t.Logf("%s:\n%s", ex.name, text.String())
		})
	}
}
