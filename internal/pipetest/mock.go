package pipetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/proto"

	"github.com/culvert-dev/culvert/pipelines"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	culvert "github.com/culvert-dev/culvert/sdk/go"
)

// MockEnv is the environment variable that carries a mock's rules (JSON)
// to the process serving it.
const MockEnv = "CULVERT_MOCK"

// applyMocks replaces each mocked function of p by a framed-protocol
// process running mock (ServeMock) with the case's rules. The function
// keeps its name, timeout and retry policy, so routing, retries and dead
// letters behave as with the real one; the mock is our own code and runs
// unconfined (sandbox: none).
func applyMocks(p *pipelines.Pipeline, c *Case, types *protoTypes, mock []string) error {
	for name, m := range c.Mocks {
		fn := p.Functions[name]
		if fn == nil {
			return fmt.Errorf("%s: mocks: function %q is not declared in %s (functions: %v)", m.Pos, name, p.File, names(p.Functions))
		}
		if len(mock) == 0 {
			return fmt.Errorf("%s: mocks: no mock command configured", m.Pos)
		}
		for _, r := range m.Rules {
			r.EmitBuilt = nil
			for _, spec := range r.Emit {
				rec, err := build(spec, types)
				if err != nil {
					return err
				}
				b, err := proto.Marshal(rec)
				if err != nil {
					return err
				}
				r.EmitBuilt = append(r.EmitBuilt, mockOutput{Record: b, To: spec.To})
			}
		}
		spec, err := json.Marshal(m.Rules)
		if err != nil {
			return err
		}
		cp := *fn
		cp.Command, cp.Args = mock[0], mock[1:]
		cp.Mode = "framed"
		cp.Env = map[string]string{MockEnv: string(spec)}
		cp.Sandbox = &pipelines.Sandbox{None: true}
		cp.Instances = 1
		p.Functions[name] = &cp
	}
	return nil
}

// ServeMock serves a mock function over the framed protocol on in and out
// until the host shuts it down. The rules come from $CULVERT_MOCK.
func ServeMock(ctx context.Context, in io.Reader, out io.Writer) error {
	var rules []*MockRule
	if err := json.Unmarshal([]byte(os.Getenv(MockEnv)), &rules); err != nil {
		return fmt.Errorf("mock: $%s: %w", MockEnv, err)
	}
	return culvert.Serve(ctx, in, out, culvert.PerRecord(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		return mockOne(rules, rec)
	}))
}

func mockOne(rules []*MockRule, rec *culvertv1.Record) ([]culvert.Output, error) {
	for _, r := range rules {
		if r.When != nil && len(r.When.check(rec.GetSource().GetSubject(), rec, nil)) > 0 {
			continue
		}
		switch {
		case r.Fail != "":
			if r.Retryable {
				return nil, culvert.Retryable(errors.New(r.Fail))
			}
			return nil, errors.New(r.Fail)
		case r.Passthrough:
			return culvert.Emit(rec), nil
		}
		var outs []culvert.Output
		for _, o := range r.EmitBuilt {
			out := new(culvertv1.Record)
			if err := proto.Unmarshal(o.Record, out); err != nil {
				return nil, fmt.Errorf("mock: %w", err)
			}
			outs = append(outs, culvert.Output{Record: out, To: o.To})
		}
		return outs, nil
	}
	return nil, fmt.Errorf("mock: no rule matches record %s", rec.GetId())
}
