package main

import (
	"context"
	"testing"

	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	culvert "github.com/culvert-dev/culvert/sdk/go"
)

func TestEnrich(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
		retry         bool
		headers       []*culvertv1.Header
	}{
		{in: `{"id":1}`, want: `{"enriched":true,"id":1}`},
		{in: `{"amount":19.99,"note":"x"}`, want: `{"amount":19.99,"amount_cents":1999,"enriched":true,"note":"x"}`},
		{in: `{"amount":-0.005}`, want: `{"amount":-0.005,"amount_cents":-1,"enriched":true}`},
		{in: `{"amount":"12"}`, err: `"amount" is a string, not a number`},
		{in: `{"amount":1e300}`, err: `"amount" 1e300 is out of range`},
		{in: `[1,2]`, err: "value is not a JSON object"},
		{in: `null`, err: "value is not a JSON object"},
		{in: `{} {}`, err: "value is not a JSON object"},
		{in: `not json`, err: "value is not a JSON object"},
		{in: `{}`, err: "asked to fail with a retryable error (header fail=retry)", retry: true,
			headers: []*culvertv1.Header{{Name: "fail", Value: []byte("retry")}}},
	} {
		rec := &culvert.Record{Id: "r", Key: []byte("k"), Value: []byte(tc.in), ContentType: "text/plain",
			Headers: append(tc.headers, &culvertv1.Header{Name: "h", Value: []byte("v")})}
		outs, err := enrich(context.Background(), rec)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err || culvert.IsRetryable(err) != tc.retry {
				t.Errorf("%s: got %v (retryable %v), want %q (retryable %v)", tc.in, err, culvert.IsRetryable(err), tc.err, tc.retry)
			}
			continue
		}
		if err != nil || len(outs) != 1 {
			t.Fatalf("%s: %v %v", tc.in, outs, err)
		}
		o := outs[0].Record
		if string(o.Value) != tc.want || o.ContentType != "application/json" || string(o.Key) != "k" || len(o.Headers) != 1 || outs[0].To != "" {
			t.Errorf("%s: got %v", tc.in, o)
		}
	}
}
