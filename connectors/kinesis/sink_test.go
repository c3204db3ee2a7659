package kinesis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	"github.com/culvert-dev/culvert/internal/kinesistest"
	"github.com/culvert-dev/culvert/internal/natstest"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// throttlingProxy forwards every request to a real kinesalite, but in the
// first failCalls PutRecords calls it withholds every third entry from
// the server and answers for it ProvisionedThroughputExceededException, as
// Kinesis does for a hot shard: a partial failure inside a successful call.
//
// It also answers the first failGets GetRecords calls with the error
// Kinesis gives a shard read more than five times a second.
type throttlingProxy struct {
	target    string
	failCalls int32
	failGets  int32
	calls     atomic.Int32
	gets      atomic.Int32
	failed    atomic.Int32
}

func (p *throttlingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".GetRecords") && p.gets.Add(1) <= p.failGets {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected)"}`))
		return
	}
	var req struct {
		Records    []json.RawMessage
		StreamName string
	}
	inject := strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutRecords") && p.calls.Add(1) <= p.failCalls
	var dropped []bool
	if inject {
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		var kept []json.RawMessage
		for i, rec := range req.Records {
			drop := i%3 == 1
			dropped = append(dropped, drop)
			if !drop {
				kept = append(kept, rec)
			}
		}
		body, _ = json.Marshal(map[string]any{"StreamName": req.StreamName, "Records": kept})
	}
	out, err := http.NewRequest(r.Method, p.target+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	out.Header = r.Header.Clone()
	out.Header.Del("Content-Length")
	resp, err := http.DefaultClient.Do(out)
	if err != nil {
		http.Error(w, err.Error(), 502)
		return
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if inject && resp.StatusCode == 200 {
		var res struct {
			FailedRecordCount int
			Records           []map[string]any
		}
		if err := json.Unmarshal(rb, &res); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		var all []map[string]any
		k := 0
		for _, d := range dropped {
			if d {
				all = append(all, map[string]any{"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard (injected)"})
				p.failed.Add(1)
				res.FailedRecordCount++
				continue
			}
			all = append(all, res.Records[k])
			k++
		}
		rb, _ = json.Marshal(map[string]any{"FailedRecordCount": res.FailedRecordCount, "Records": all})
	}
	for k, v := range resp.Header {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(rb)
}

// TestSinkRetriesOnlyFailedEntries: with every third entry of the first
// calls throttled, each record still ends up in the stream exactly once
// (the entries that succeeded are not sent again) and every done is nil.
func TestSinkRetriesOnlyFailedEntries(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "thr", 2)
	proxy := &throttlingProxy{target: ep, failCalls: 3}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	sink, err := NewSink(kinesistest.Client(srv.URL), SinkConfig{Stream: "thr", BatchRecords: 100, MaxBackoff: 50 * time.Millisecond},
		natstest.Logger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	var mu sync.Mutex
	dones := make([]int, n)
	var errs []error
	for i := range n {
		r := &culvertv1.Record{Id: fmt.Sprint(i), Key: []byte(fmt.Sprintf("k%d", i%5)), Value: []byte(fmt.Sprintf("v/%d", i))}
		sink.Publish(context.Background(), "", r, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			dones[i]++
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	_ = sink.Close()
	if proxy.failed.Load() == 0 {
		t.Fatal("the proxy failed no entry: the test tested nothing")
	}
	mu.Lock()
	for i, d := range dones {
		if d != 1 {
			t.Errorf("record %d: done called %d times", i, d)
		}
	}
	if len(errs) > 0 {
		t.Errorf("done errors: %v", errs)
	}
	mu.Unlock()
	count := map[string]int{}
	for _, r := range readAll(t, kinesistest.Client(ep), "thr", n, 10*time.Second) {
		count[string(r.GetValue())]++
	}
	time.Sleep(200 * time.Millisecond)
	if got := readAll(t, kinesistest.Client(ep), "thr", n, 10*time.Second); len(got) != n {
		t.Errorf("%d records in the stream, want %d (no entry sent twice)", len(got), n)
	}
	for i := range n {
		if c := count[fmt.Sprintf("v/%d", i)]; c != 1 {
			t.Errorf("record %d is in the stream %d times", i, c)
		}
	}
	t.Logf("%d entries throttled and retried", proxy.failed.Load())
}

// TestSinkRejects: records the API cannot take fail their own done with an
// error naming the record and stream; the others go through.
func TestSinkRejects(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "rej", 1)
	sink, err := NewSink(kinesistest.Client(ep), SinkConfig{Stream: "rej"}, natstest.Logger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tests := []struct {
		name    string
		stream  string
		rec     *culvertv1.Record
		wantErr string // "" for success
	}{
		{"fits", "", &culvertv1.Record{Id: "ok", Value: []byte("v")}, ""},
		{"too large", "", &culvertv1.Record{Id: "big", Value: bytes.Repeat([]byte("x"), MaxRecordBytes)}, `record "big" to stream rej`},
		{"long key hashed", "", &culvertv1.Record{Id: "lk", Key: bytes.Repeat([]byte("k"), 300), Value: []byte("v")}, ""},
		{"no such stream", "missing", &culvertv1.Record{Id: "lost", Value: []byte("v")}, `record "lost" to stream missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan error, 1)
			sink.Publish(context.Background(), tt.stream, tt.rec, func(err error) { got <- err })
			select {
			case err := <-got:
				if tt.wantErr == "" && err != nil {
					t.Fatalf("done(%v), want nil", err)
				}
				if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
					t.Fatalf("done(%v), want an error containing %q", err, tt.wantErr)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("done not called")
			}
		})
	}
	if err := sink.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSourceBacksOffThrottledReads: GetRecords answered with
// ProvisionedThroughputExceededException is retried with backoff; every
// record still arrives, in shard order.
func TestSourceBacksOffThrottledReads(t *testing.T) {
	ep := kinesistest.Start(t)
	kinesistest.CreateStream(t, ep, "thr-in", 2)
	put(t, kinesistest.Client(ep), "thr-in", keyed("t", 0, 100, 6))
	proxy := &throttlingProxy{target: ep, failGets: 6}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	store, err := leases.NewFile(t.TempDir() + "/leases.json")
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(kinesistest.Client(srv.URL), testSourceConfig("thr-in", store), natstest.Logger(t, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	h := &logHandler{name: "throttled"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done; _ = src.Close() })
	waitUntil(t, "every record despite throttling", 20*time.Second, allSeen("t", 100, h))
	if got := proxy.gets.Load(); got <= proxy.failGets {
		t.Fatalf("only %d GetRecords calls: the throttled ones were not retried", got)
	}
	checkShardOrder(t, h)
}
