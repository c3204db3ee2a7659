package leases

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/culvert-dev/culvert/internal/natstest"
)

// stores returns one fresh store of each kind, against a real embedded
// NATS server for KV.
func stores(t *testing.T) map[string]func(t *testing.T, prefix string) Store {
	return map[string]func(t *testing.T, prefix string) Store{
		"file": func(t *testing.T, prefix string) Store {
			s, err := NewFile(filepath.Join(t.TempDir(), "sub", prefix+".json"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"kv": func(t *testing.T, prefix string) Store {
			nc := natstest.Connect(t, natstest.Server(t))
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := NewKV(ctx, js, "", prefix)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

func TestStoreCompareAndSet(t *testing.T) {
	for name, mk := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s := mk(t, "app.stream")
			defer s.Close()
			if ls, err := s.List(ctx); err != nil || len(ls) != 0 {
				t.Fatalf("empty store: %v, %v", ls, err)
			}
			a, err := s.Create(ctx, Lease{Shard: "shardId-000000000000"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(ctx, Lease{Shard: "shardId-000000000000", Owner: "x"}); !errors.Is(err, ErrExists) {
				t.Fatalf("second create: %v, want ErrExists", err)
			}
			steps := []struct {
				name    string
				from    *Lease // revision to write at
				owner   string
				wantErr error
			}{
				{"take", &a, "w1", nil},
				{"stale revision", &a, "w2", ErrConflict},
			}
			var cur Lease
			for _, st := range steps {
				l := *st.from
				l.Owner, l.Checkpoint = st.owner, "100"
				got, err := s.Update(ctx, l)
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("%s: err %v, want %v", st.name, err, st.wantErr)
				}
				if err == nil {
					if got.Revision == l.Revision {
						t.Fatalf("%s: revision unchanged", st.name)
					}
					cur = got
				}
			}
			cur.Checkpoint = ShardEnd
			if _, err := s.Update(ctx, cur); err != nil {
				t.Fatalf("update at current revision: %v", err)
			}
			if _, err := s.Create(ctx, Lease{Shard: "shardId-000000000001", Checkpoint: "7"}); err != nil {
				t.Fatal(err)
			}
			ls, err := s.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Lease{}
			for _, l := range ls {
				got[l.Shard] = l
			}
			if l := got["shardId-000000000000"]; l.Owner != "w1" || l.Checkpoint != ShardEnd || l.Revision == 0 {
				t.Errorf("listed lease 0: %+v", l)
			}
			if l := got["shardId-000000000001"]; l.Owner != "" || l.Checkpoint != "7" {
				t.Errorf("listed lease 1: %+v", l)
			}
			if len(got) != 2 {
				t.Errorf("listed %d leases, want 2", len(got))
			}
		})
	}
}

// TestStoreRace: many writers take the same lease at the same revision;
// exactly one wins.
func TestStoreRace(t *testing.T) {
	for name, mk := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s := mk(t, "race.s")
			l, err := s.Create(ctx, Lease{Shard: "shardId-1"})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			wins := 0
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					m := l
					m.Owner = string(rune('a' + i))
					if _, err := s.Update(ctx, m); err == nil {
						mu.Lock()
						wins++
						mu.Unlock()
					} else if !errors.Is(err, ErrConflict) {
						t.Errorf("update: %v", err)
					}
				}()
			}
			wg.Wait()
			if wins != 1 {
				t.Fatalf("%d writers won the same revision, want 1", wins)
			}
		})
	}
}

func TestKeyToken(t *testing.T) {
	for in, want := range map[string]string{"culvert-p-in": "culvert-p-in", "a.b c/d": "a_b_c_d", "x=y_z": "x=y_z"} {
		if got := KeyToken(in); got != want {
			t.Errorf("KeyToken(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"owner":"w1","checkpoint":"123"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decode("s", b)
		if err != nil {
			return
		}
		back, err := decode("s", encode(l))
		if err != nil || back != l {
			t.Fatalf("round trip %+v -> %+v, %v", l, back, err)
		}
	})
}
