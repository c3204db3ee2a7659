package leases

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// KV keeps leases in a NATS JetStream key-value bucket, one key per shard
// (<prefix>.<shard id>), so workers in many processes share them. Update
// is the bucket's compare-and-set on the key's last revision.
type KV struct {
	kv     jetstream.KeyValue
	prefix string
}

// DefaultBucket is the bucket used when none is configured.
const DefaultBucket = "culvert-kinesis-leases"

// NewKV opens (creating it if missing, file storage) bucket and keeps the
// leases of one application and stream under prefix (KV key tokens:
// letters, digits, '-', '_', '=' and '.' as separator).
func NewKV(ctx context.Context, js jetstream.JetStream, bucket, prefix string) (*KV, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	if prefix == "" || strings.HasSuffix(prefix, ".") || strings.HasPrefix(prefix, ".") {
		return nil, fmt.Errorf("lease bucket %s: invalid key prefix %q", bucket, prefix)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Culvert Kinesis shard leases and checkpoints",
			History:     1,
			Storage:     jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lease bucket %s: %w", bucket, err)
	}
	return &KV{kv: kv, prefix: prefix + "."}, nil
}

// KeyToken turns s (an application or stream name) into a valid KV key
// token: characters other than letters, digits, '-', '_' and '=' become
// '_'.
func KeyToken(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=':
			return r
		}
		return '_'
	}, s)
}

// List implements Store.
func (k *KV) List(ctx context.Context) ([]Lease, error) {
	w, err := k.kv.Watch(ctx, k.prefix+"*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	defer w.Stop()
	var out []Lease
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("listing leases: watcher closed")
			}
			if e == nil { // initial values done
				return out, nil
			}
			shard := strings.TrimPrefix(e.Key(), k.prefix)
			l, err := decode(shard, e.Value())
			if err != nil {
				return nil, err
			}
			l.Revision = e.Revision()
			out = append(out, l)
		case <-ctx.Done():
			return nil, fmt.Errorf("listing leases: %w", ctx.Err())
		}
	}
}

// Watch implements Watcher.
func (k *KV) Watch(ctx context.Context) (<-chan Lease, error) {
	w, err := k.kv.Watch(ctx, k.prefix+"*", jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watching leases: %w", err)
	}
	out := make(chan Lease, 16)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				l, err := decode(strings.TrimPrefix(e.Key(), k.prefix), e.Value())
				if err != nil {
					continue // not a lease this store wrote; List reports it
				}
				l.Revision = e.Revision()
				select {
				case out <- l:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Create implements Store.
func (k *KV) Create(ctx context.Context, l Lease) (Lease, error) {
	rev, err := k.kv.Create(ctx, k.prefix+l.Shard, encode(l))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return Lease{}, fmt.Errorf("shard %s: %w", l.Shard, ErrExists)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("creating lease of shard %s: %w", l.Shard, err)
	}
	l.Revision = rev
	return l, nil
}

// Update implements Store.
func (k *KV) Update(ctx context.Context, l Lease) (Lease, error) {
	rev, err := k.kv.Update(ctx, k.prefix+l.Shard, encode(l), l.Revision)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return Lease{}, fmt.Errorf("shard %s at revision %d: %w", l.Shard, l.Revision, ErrConflict)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("updating lease of shard %s: %w", l.Shard, err)
	}
	l.Revision = rev
	return l, nil
}

// Close implements Store.
func (k *KV) Close() error { return nil }

var _ Watcher = (*KV)(nil)
