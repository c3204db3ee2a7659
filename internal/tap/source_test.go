package tap

import (
	"strings"
	"testing"
	"time"
)

func TestParseSource(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want string // Kind Target Brokers Filter Partitions From.Kind/Seq/Time To...
		err  string
	}{
		{in: "nats://orders.>", want: "nats orders.> [] [] / /"},
		{in: "jetstream://ORDERS?from=42&to=end", want: "jetstream ORDERS [] [] seq/42 end/"},
		{in: "jetstream://ORDERS?subject=orders.paid&from=15m", want: "jetstream ORDERS [] [] time/2026-11-26T11:45:00Z /"},
		{in: "kafka://127.0.0.1:9092,127.0.0.1:9093/events?partitions=0,2&from=first&to=100", want: "kafka events [127.0.0.1:9092 127.0.0.1:9093] [0 2] first/ seq/100"},
		{in: "kafka://b:9092/events?from=0:10,2:5", want: "kafka events [b:9092] [] seq/map[0:10 2:5] /"},
		{in: "kinesis://clicks?from=2026-11-26T10:00:00Z&to=2026-11-26T11:00:00Z", want: "kinesis clicks [] [] time/2026-11-26T10:00:00Z time/2026-11-26T11:00:00Z"},
		{in: "kinesis://clicks?shards=shardId-000000000001&from=49600000000000000000000000000000000000000000000000000001", want: "kinesis clicks [] [shardId-000000000001] seq/49600000000000000000000000000000000000000000000000000001 /"},
		{in: "orders", err: "want nats://SUBJECT"},
		{in: "redis://x", err: "unknown kind"},
		{in: "nats://x?from=1", err: "unknown parameter"},
		{in: "jetstream://S?from=end", err: "end is only an end position"},
		{in: "jetstream://S?to=first", err: "first is not an end position"},
		{in: "jetstream://S?from=yesterday", err: "is not first, latest"},
		{in: "kafka://events", err: "want kafka://BROKER"},
		{in: "kafka://b/events?partitions=x", err: "not a partition number"},
		{in: "kafka://b/events?from=0:x", err: "want PARTITION:OFFSET"},
		{in: "kinesis://s?from=123", err: "belongs to one shard"},
		{in: "kinesis://s?to=123", err: "belongs to one shard"},
		{in: "jetstream://?from=1", err: "missing or malformed"},
		{in: "jetstream://S?from=99999999999999999999999", err: "out of range"},
	} {
		s, err := ParseSource(tc.in, now)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		pos := func(p Position) string {
			switch {
			case p.PerPartition != nil:
				return p.Kind + "/" + strings.TrimPrefix(strings.ReplaceAll(fmtMap(p.PerPartition), " ", " "), "")
			case p.Kind == PosTime:
				return p.Kind + "/" + p.Time.UTC().Format(time.RFC3339)
			}
			return p.Kind + "/" + p.Seq
		}
		got := strings.Join([]string{s.Kind, s.Target, fmtList(s.Brokers), fmtList(s.Partitions), pos(s.From), pos(s.To)}, " ")
		if got != tc.want && !(s.Filter != "" && got == tc.want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func fmtList(l []string) string { return "[" + strings.Join(l, " ") + "]" }

func fmtMap(m map[string]int64) string {
	var parts []string
	for _, k := range []string{"0", "1", "2", "3"} {
		if v, ok := m[k]; ok {
			parts = append(parts, k+":"+itoa(v))
		}
	}
	return "map[" + strings.Join(parts, " ") + "]"
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for v > 0 {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
	}
	return string(b)
}

// FuzzParseSource: any string either parses into a source with a kind and
// a target, or fails with an error naming it; never a panic.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"nats://a.>", "jetstream://S?from=1&to=end&subject=a.b", "kafka://b:1,c:2/t?partitions=0,1&from=0:1,1:2", "kinesis://s?shards=a&from=123", "kafka://b/t?from=1h"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		src, err := ParseSource(s, now)
		if err != nil {
			if !strings.Contains(err.Error(), "source ") {
				t.Fatalf("error does not name the source: %v", err)
			}
			return
		}
		if src.Kind == "" || src.Target == "" {
			t.Fatalf("%q parsed to %+v", s, src)
		}
	})
}
