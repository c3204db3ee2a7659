package pipelines

import (
	"strings"
	"testing"
	"time"
)

// fixedScale is what the instances shorthand resolves to.
func fixedScale(n int) Scale {
	return Scale{Min: &n, Max: n, IdleTimeout: Duration(5 * time.Minute)}
}

func intp(n int) *int { return &n }

// TestScaleDefaults: the instances shorthand, and every default of a scale
// block.
func TestScaleDefaults(t *testing.T) {
	tests := []struct {
		fn        string
		want      Scale
		instances int
	}{
		{"{command: ./f}", fixedScale(1), 1},
		{"{command: ./f, instances: 3}", fixedScale(3), 3},
		{"{command: ./f, scale: {min: 0}}", Scale{Min: intp(0), Max: 1, IdleTimeout: Duration(5 * time.Minute)}, 1},
		{"{command: ./f, scale: {max: 4}}", Scale{Min: intp(1), Max: 4, IdleTimeout: Duration(5 * time.Minute)}, 4},
		{"{command: ./f, scale: {min: 3}}", Scale{Min: intp(3), Max: 3, IdleTimeout: Duration(5 * time.Minute)}, 3},
		{"{command: ./f, scale: {min: 0, max: 8, idle_timeout: 2s}}", Scale{Min: intp(0), Max: 8, IdleTimeout: Duration(2 * time.Second)}, 8},
	}
	for _, tc := range tests {
		t.Run(tc.fn, func(t *testing.T) {
			p := mustParse(t, `
version: 1
name: p
inputs: {in: {stdin: {}}}
functions:
  f: `+tc.fn+`
routes: [{name: r, chain: f, outputs: [out]}]
outputs: {out: {stdout: {}}}
`)
			f := p.Functions["f"]
			same(t, "scale", f.Scale, tc.want)
			if f.Instances != tc.instances {
				t.Errorf("instances %d, want %d", f.Instances, tc.instances)
			}
		})
	}
}

// TestScaleErrors: bad scale blocks name the file, line and field.
func TestScaleErrors(t *testing.T) {
	tests := []struct{ fn, want string }{
		{"{command: ./f, instances: 2, scale: {max: 3}}", "p.yaml:6:32: functions.f.instances: instances is shorthand for scale"},
		{"{command: ./f, scale: {min: 4, max: 2}}", "p.yaml:6:34: functions.f.scale.min: min 4 exceeds max 2"},
		{"{command: ./f, scale: {min: -1}}", "functions.f.scale.min: must be at least 0, got -1"},
		{"{command: ./f, scale: {max: 0}}", "functions.f.scale.max: must be at least 1, got 0"},
		{"{command: ./f, scale: {idle_timeout: 0s}}", "functions.f.scale.idle_timeout: must be positive"},
		{"{command: ./f, retry: {batch_failure: halve}}", "functions.f.retry.batch_failure"},
		{"{command: ./f, retry: {lanes: 0}}", "functions.f.retry.lanes: must be at least 1"},
	}
	for _, tc := range tests {
		t.Run(tc.fn, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(`
version: 1
name: p
inputs: {in: {stdin: {}}}
functions:
  f: `+tc.fn+`
routes: [{name: r, chain: f, outputs: [out]}]
outputs: {out: {stdout: {}}}
`), func(string) (string, bool) { return "", false })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestDeliveryDefaults: the byte bound and the nack threshold's window.
func TestDeliveryDefaults(t *testing.T) {
	p := mustParse(t, `
version: 1
name: p
inputs: {in: {stdin: {}}}
routes: [{name: r, outputs: [out]}]
outputs: {out: {stdout: {}}}
delivery: {max_in_flight_bytes: 1000, nack_threshold: {failures: 5}}
`)
	same(t, "delivery", p.Delivery, Delivery{MaxInFlight: 1024, ShutdownGrace: Duration(30 * time.Second), MaxInFlightBytes: 1000,
		NackThreshold: &NackThreshold{Failures: 5, Window: Duration(time.Minute)}})
}
