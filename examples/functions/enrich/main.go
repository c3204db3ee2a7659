// Command enrich is an example Culvert function. For each record whose value
// is a JSON object it adds "enriched": true and, when the object has a
// numeric "amount", "amount_cents": the amount times 100, rounded half away
// from zero. The output keeps the key and headers of the input and has
// content type application/json.
//
// Failures:
//   - a value that is not a JSON object fails permanently with "value is not
//     a JSON object";
//   - an "amount" that is not a number fails permanently;
//   - a record with the header fail=retry fails with a retryable error, so
//     that tests can exercise retries.
//
// It honours the conformance convention (SPEC.md appendix A) and is checked
// by the conformance kit in transform mode, with the values of samples.jsonl:
//
//	culvert fn conform --samples examples/functions/enrich/samples.jsonl -- ./bin/enrich
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/culvert-dev/culvert/proto/conformance/convention"
	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func main() {
	culvert.Run(convention.Wrap(enrich), culvert.WithAgent("enrich/1"))
}

func enrich(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
	for _, h := range rec.Headers {
		if h.Name == "fail" && string(h.Value) == "retry" {
			return nil, culvert.Retryable(errors.New("asked to fail with a retryable error (header fail=retry)"))
		}
	}
	var obj map[string]any
	d := json.NewDecoder(bytes.NewReader(rec.Value))
	d.UseNumber() // numbers pass through exactly as written
	if err := d.Decode(&obj); err != nil || obj == nil || d.More() {
		return nil, errors.New("value is not a JSON object")
	}
	obj["enriched"] = true
	if a, ok := obj["amount"]; ok {
		n, ok := a.(json.Number)
		if !ok {
			return nil, fmt.Errorf(`"amount" is %s, not a number`, kind(a))
		}
		f, err := n.Float64()
		cents := math.Round(f * 100)
		if err != nil || math.Abs(cents) > 1<<53 {
			return nil, fmt.Errorf(`"amount" %s is out of range`, n)
		}
		obj["amount_cents"] = int64(cents)
	}
	v, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	rec.Value = v
	rec.ContentType = "application/json"
	return culvert.Emit(rec), nil
}

func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	default:
		return "an object"
	}
}
