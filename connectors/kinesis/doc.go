// Package kinesis is the Amazon Kinesis Data Streams connector: a Source
// that reads a stream with shard leases, so several Culvert processes share
// it the way Kinesis Client Library workers do, and a Sink that puts
// records with PutRecords. It owns the shard reading (discovery, resharding
// order, GetRecords polling and backoff), the contiguous checkpoint of each
// shard, the lease balancing rules and the PutRecords batching and retries.
// Leases and checkpoints are kept by a leases.Store (subpackage leases).
//
// Enhanced fan-out (SubscribeToShard) is not implemented.
package kinesis
