// Package leases keeps Kinesis shard leases and checkpoints for the kinesis
// source: which worker (Culvert process) reads a shard, and up to which
// sequence number its records are fully processed. It owns the Store
// interface and its two implementations: File, for one process, and KV,
// NATS JetStream key-value for many processes sharing a stream.
//
// Both are compare-and-set stores: every Lease carries the revision it was
// read at, and Update succeeds only if the stored lease still has that
// revision (JetStream KV's Update with the last revision). Lease expiry
// needs no synchronised clocks: like the Kinesis Client Library, a worker
// considers a lease expired when its revision has not changed for the
// lease duration on the worker's own clock. The decisions (take, renew,
// steal) are made by the kinesis source; this package only stores.
package leases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ShardEnd is the checkpoint of a shard read to its end (after a split or
// merge) with every record processed: its children may start.
const ShardEnd = "SHARD_END"

// Lease is one shard's lease and checkpoint.
type Lease struct {
	// Shard id, e.g. shardId-000000000001.
	Shard string `json:"-"`
	// Owner is the worker holding the lease; "" when free.
	Owner string `json:"owner,omitempty"`
	// Checkpoint is the highest sequence number processed together with
	// every record before it; "" when nothing is, ShardEnd when finished.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Since is set on leases created for a stream read from "latest": the
	// time (RFC 3339, the creating worker's clock) from which the shard is
	// read while it has no checkpoint, so a lease that moves before its
	// first checkpoint resumes there instead of at a later "latest".
	Since string `json:"since,omitempty"`
	// Revision the lease was read or written at (set by the store).
	Revision uint64 `json:"-"`
}

// Store keeps the leases of one stream for one application (the consumer
// name shared by the workers that split the stream between them).
type Store interface {
	// List returns every lease of the stream.
	List(ctx context.Context) ([]Lease, error)
	// Create stores a new lease; ErrExists if the shard has one.
	Create(ctx context.Context, l Lease) (Lease, error)
	// Update replaces the lease if it is still at l.Revision and returns it
	// with its new revision; ErrConflict if someone else wrote it since.
	Update(ctx context.Context, l Lease) (Lease, error)
	// Close releases the store's resources (not the leases).
	Close() error
}

// Watcher is implemented by stores that can report writes as they happen
// (KV): a worker learns that another took one of its leases at once,
// instead of at its next lease round, and stops reading that shard before
// it processes more of what the new holder will read again.
type Watcher interface {
	// Watch returns the leases written from now on, by any worker, until
	// ctx ends or the watch fails (the channel is then closed).
	Watch(ctx context.Context) (<-chan Lease, error)
}

// ErrConflict is returned by Update when the lease changed since it was read.
var ErrConflict = errors.New("lease changed since it was read")

// ErrExists is returned by Create when the shard already has a lease.
var ErrExists = errors.New("lease exists")

// encode is the stored form of a lease (shared by both stores).
func encode(l Lease) []byte {
	b, _ := json.Marshal(l) // strings only: cannot fail
	return b
}

// decode parses a stored lease of shard.
func decode(shard string, b []byte) (Lease, error) {
	var l Lease
	if err := json.Unmarshal(b, &l); err != nil {
		return Lease{}, fmt.Errorf("lease of shard %s: %w", shard, err)
	}
	l.Shard = shard
	return l, nil
}
