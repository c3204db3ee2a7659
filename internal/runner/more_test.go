package runner_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
)

// testfn is internal/engine/testdata/testfn, built by TestMain.
func testfn() string { return filepath.Join(bins, "testfn") }

const dispatchPipeline = `
version: 1
name: dispatch
inputs:
  in: { jetstream: { stream: IN, subjects: ["in.>"] } }
functions:
  which:
    command: %s
    args: [instance]
    instances: 3
    dispatch: %s
    batch: { size: 7, max_wait: 1ms }
routes:
  - name: main
    chain: [which]
    outputs: [out]
outputs:
  out: { jetstream: { subject: "out.{{ .Source.Subject }}", stream: OUT, subjects: ["out.>"] } }
`

// TestDispatch sends records through a function with three instances that
// writes its InitContext instance number into each value, and checks where
// each record went: by key, every record of one key (or, without a key, of
// one subject) reaches the same instance, in order; with any, the instances
// take turns. The JetStream source sets no partition (Position.partition is
// empty), so dispatch by partition puts every record on one instance.
func TestDispatch(t *testing.T) {
	fn := testfn()
	const n = 300
	tests := []struct {
		name     string
		dispatch string
		key      func(i int) string // "" for none
		subject  func(i int) string
		group    func(i int) string // records that must share an instance
		check    func(t *testing.T, perInstance map[int]int)
	}{
		{"key", "key", func(i int) string { return fmt.Sprint("k", i%12) }, func(int) string { return "in.x" },
			func(i int) string { return fmt.Sprint("k", i%12) }, spread(2)},
		{"key falls back to subject", "key", func(int) string { return "" }, func(i int) string { return fmt.Sprint("in.s", i%12) },
			func(i int) string { return fmt.Sprint("subject in.s", i%12) }, spread(2)},
		{"any", "any", func(i int) string { return fmt.Sprint("k", i%12) }, func(int) string { return "in.x" }, nil,
			func(t *testing.T, per map[int]int) {
				for i := range 3 {
					if per[i] != n/3 {
						t.Errorf("any: instances got %v records, want %d each (round robin)", per, n/3)
						return
					}
				}
			}},
		{"partition", "partition", func(i int) string { return fmt.Sprint("k", i%12) }, func(int) string { return "in.x" },
			func(int) string { return "" }, func(t *testing.T, per map[int]int) {
				if len(per) != 1 || per[0] != n {
					t.Errorf("partition: instances got %v records; the JetStream source has one (empty) partition", per)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startPipeline(t, fmt.Sprintf(dispatchPipeline, fn, tc.dispatch))
			msgs := make([]*nats.Msg, n)
			for i := range msgs {
				m := nats.NewMsg(tc.subject(i))
				m.Data = fmt.Appendf(nil, "%d", i)
				if k := tc.key(i); k != "" {
					m.Header.Set(natsmsg.HeaderKey, k)
				}
				msgs[i] = m
			}
			h.publish(msgs)
			out := h.collect("OUT", "out.>", n, 60*time.Second)
			h.settled(n, 30*time.Second)

			perInstance := map[int]int{}
			groupInstance := map[string]int{}
			last := map[string]int{}
			seen := map[int]bool{}
			for _, rec := range out {
				inst, v, ok := strings.Cut(string(rec.Value), " ")
				instance, err1 := strconv.Atoi(inst)
				i, err2 := strconv.Atoi(v)
				if !ok || err1 != nil || err2 != nil || instance < 0 || instance > 2 {
					t.Fatalf("output %q is not \"<instance> <n>\"", rec.Value)
				}
				if seen[i] {
					t.Fatalf("record %d came out twice", i)
				}
				seen[i] = true
				perInstance[instance]++
				if tc.group == nil {
					continue
				}
				g := tc.group(i)
				if prev, ok := groupInstance[g]; ok && prev != instance {
					t.Errorf("group %q reached instances %d and %d (record %d)", g, prev, instance, i)
				}
				groupInstance[g] = instance
				if p, ok := last[g]; ok && i < p {
					t.Errorf("group %q: record %d came after %d", g, i, p)
				}
				last[g] = i
			}
			t.Logf("%s: records per instance %v", tc.name, perInstance)
			tc.check(t, perInstance)
		})
	}
}

// spread wants the records on at least min instances.
func spread(min int) func(t *testing.T, per map[int]int) {
	return func(t *testing.T, per map[int]int) {
		if len(per) < min {
			t.Errorf("records reached %d instances (%v), want at least %d", len(per), per, min)
		}
	}
}
