package kinesis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kinesis/leases"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
)

// Start positions for shards without a checkpoint.
const (
	TrimHorizon = "trim_horizon"
	Latest      = "latest"
	AtTimestamp = "at_timestamp"
)

// SourceConfig configures a Source. Zero values take the defaults shown.
type SourceConfig struct {
	// Stream name. Required.
	Stream string
	// Store keeps leases and checkpoints. Required.
	Store leases.Store
	// WorkerID names this process in leases; default host-pid-random.
	WorkerID string
	// StartPosition for shards with no checkpoint: trim_horizon (default),
	// latest, at_timestamp (with StartTimestamp). Child shards of a
	// finished parent always start at their beginning.
	StartPosition  string
	StartTimestamp time.Time
	// MaxInFlight bounds records handed over and not settled, over all
	// shards; default 1024.
	MaxInFlight int
	// FetchLimit is GetRecords' Limit; default 1000 (API maximum 10000).
	FetchLimit int
	// FetchInterval is the least time between two GetRecords of one shard;
	// default 200ms (the API allows 5 per shard per second).
	FetchInterval time.Duration
	// IdleInterval is the wait after a GetRecords that returned nothing;
	// default 1s.
	IdleInterval time.Duration
	// ListInterval between ListShards calls that find new shards after a
	// split or merge; default 10s.
	ListInterval time.Duration
	// LeaseDuration: a lease whose revision did not change for this long
	// is expired and may be taken; default 10s. Leases are renewed, and
	// checkpoints written, every LeaseDuration/3.
	LeaseDuration time.Duration
	// CheckpointInterval between checkpoint writes of a shard whose mark
	// moved; default 1s (and at least once per renewal).
	CheckpointInterval time.Duration
	// NoSteal disables taking live leases from workers that hold more than
	// their share; free and expired leases are always taken.
	NoSteal bool
	// MaxBackoff caps the wait between retries after errors; default 10s.
	MaxBackoff time.Duration
	// CallTimeout bounds one Kinesis API call, so a connection that hangs
	// is retried; default 30s.
	CallTimeout time.Duration
}

func (c *SourceConfig) defaults() error {
	if c.Stream == "" {
		return errors.New("kinesis source: no stream")
	}
	if c.Store == nil {
		return errors.New("kinesis source: no lease store")
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	switch c.StartPosition {
	case "":
		c.StartPosition = TrimHorizon
	case TrimHorizon, Latest:
	case AtTimestamp:
		if c.StartTimestamp.IsZero() {
			return errors.New("kinesis source: start position at_timestamp needs a timestamp")
		}
	default:
		return fmt.Errorf("kinesis source: unknown start position %q (trim_horizon, latest, at_timestamp)", c.StartPosition)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.FetchLimit <= 0 {
		c.FetchLimit = 1000
	}
	c.FetchLimit = min(c.FetchLimit, 10000)
	def(&c.FetchInterval, 200*time.Millisecond)
	def(&c.IdleInterval, time.Second)
	def(&c.ListInterval, 10*time.Second)
	def(&c.LeaseDuration, 10*time.Second)
	def(&c.CheckpointInterval, time.Second)
	def(&c.MaxBackoff, 10*time.Second)
	def(&c.CallTimeout, 30*time.Second)
	return nil
}

// Source reads a Kinesis stream with shard leases: each shard is read by
// the one worker that holds its lease, in order, and checkpointed up to
// its highest contiguous completed record. Records carry their shard id as
// Source.Partition.
type Source struct {
	cfg    SourceConfig
	client *kinesis.Client
	log    *slog.Logger
	sem    chan struct{}

	closedFlag atomic.Bool // settlements fail from Close on

	mu      sync.Mutex
	closed  bool
	running bool
	stopRun context.CancelFunc
	runDone chan struct{}
	shards  map[string]shardInfo // from ListShards
	seen    map[string]seenLease // leases as last listed
	owned   map[string]*shardWorker
	workers sync.WaitGroup // shard readers
}

type shardInfo struct {
	parents []string
}

// seenLease is a lease as last listed, and when its revision last changed
// on this worker's clock (the expiry rule).
type seenLease struct {
	leases.Lease
	since time.Time
}

// NewSource returns a source for cfg.Stream. Nothing is read before Run.
func NewSource(client *kinesis.Client, cfg SourceConfig, log *slog.Logger) (*Source, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Source{
		cfg: cfg, client: client,
		log:    log.With("connector", "kinesis", "stream", cfg.Stream, "worker", cfg.WorkerID),
		sem:    make(chan struct{}, cfg.MaxInFlight),
		shards: map[string]shardInfo{},
		seen:   map[string]seenLease{},
		owned:  map[string]*shardWorker{},
	}, nil
}

// WorkerID is the name this source holds leases under.
func (s *Source) WorkerID() string { return s.cfg.WorkerID }

// Owned returns the shards this source holds leases for.
func (s *Source) Owned() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.owned))
	for id := range s.owned {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Run discovers shards, takes and renews leases, reads the shards it holds
// and writes their checkpoints until ctx is cancelled. Leases stay held
// (and checkpoints keep moving with settlements) until Close releases them.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return connectors.ErrClosed
	}
	if s.running || s.runDone != nil {
		s.mu.Unlock()
		return errors.New("kinesis source: Run may be called once (its leases are held until Close)")
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s.running, s.stopRun, s.runDone = true, cancel, done
	s.mu.Unlock()
	defer func() {
		cancel()
		s.mu.Lock()
		for _, w := range s.owned {
			w.stopReading()
		}
		s.mu.Unlock()
		s.workers.Wait()
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
		close(done)
	}()

	tick := min(s.cfg.LeaseDuration/3, s.cfg.CheckpointInterval)
	var lastList, lastRenew time.Time
	var written <-chan leases.Lease
	if wt, ok := s.cfg.Store.(leases.Watcher); ok {
		var err error
		if written, err = wt.Watch(ctx); err != nil {
			s.log.Warn("kinesis: cannot watch the leases; a lease taken by another worker is noticed at the next lease round", "error", err)
		}
	}
	bo := backoff{max: s.cfg.MaxBackoff}
	for {
		now := time.Now()
		var err error
		if now.Sub(lastList) >= s.cfg.ListInterval {
			if err = s.listShards(ctx); err == nil {
				lastList = now
			}
		}
		// Leases are renewed and checkpoints written even when Kinesis
		// cannot be reached, so an outage of the stream alone moves no
		// lease.
		renew := now.Sub(lastRenew) >= s.cfg.LeaseDuration/3
		if serr := s.syncLeases(ctx, h, renew); serr != nil {
			err = errors.Join(err, serr)
		} else if renew {
			lastRenew = now
		}
		wait := tick
		if err != nil && ctx.Err() == nil {
			wait = bo.next()
			s.log.Warn("kinesis: lease round failed, retrying", "error", err, "retry_in", wait)
		} else if err == nil {
			if bo.n > 0 {
				s.log.Info("kinesis: lease round succeeded again")
			}
			bo.reset()
		}
		timer := time.NewTimer(wait)
	waiting:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil
			case <-timer.C:
				break waiting
			case l, ok := <-written:
				if !ok {
					written = nil // the watch failed: lease rounds still find conflicts
					continue
				}
				s.noticeWrite(h, l)
			}
		}
	}
}

// noticeWrite drops the shard of a lease this worker holds that another
// worker has just written (taken): the lease round would find the same
// conflict, up to a tick later. It runs on Run's goroutine, like the lease
// rounds, so this worker's own writes are never mistaken for another's.
func (s *Source) noticeWrite(h connectors.Handler, l leases.Lease) {
	s.mu.Lock()
	w := s.owned[l.Shard]
	taken := w != nil && l.Owner != s.cfg.WorkerID && l.Revision > w.lease.Revision
	s.mu.Unlock()
	if taken {
		s.lose(h, w, "the lease was taken by another worker")
	}
}

// listShards refreshes the shard map (all shards, including closed ones
// still in retention, so parents are known).
func (s *Source) listShards(ctx context.Context) error {
	found := map[string]shardInfo{}
	in := &kinesis.ListShardsInput{StreamName: aws.String(s.cfg.Stream)}
	for {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
		out, err := s.client.ListShards(cctx, in)
		cancel()
		if err != nil {
			return fmt.Errorf("listing shards of %s: %w", s.cfg.Stream, err)
		}
		for _, sh := range out.Shards {
			var info shardInfo
			for _, p := range []*string{sh.ParentShardId, sh.AdjacentParentShardId} {
				if p != nil && *p != "" {
					info.parents = append(info.parents, *p)
				}
			}
			found[aws.ToString(sh.ShardId)] = info
		}
		if out.NextToken == nil {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	s.mu.Lock()
	s.shards = found
	s.mu.Unlock()
	return nil
}

// syncLeases is one lease round: read all leases, create missing ones,
// write checkpoints (and renew when renew is set), finish ended shards,
// then take free, expired or (to balance) stolen leases up to this
// worker's share.
func (s *Source) syncLeases(ctx context.Context, h connectors.Handler, renew bool) error {
	ls, err := s.cfg.Store.List(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	s.mu.Lock()
	fresh := map[string]seenLease{}
	for _, l := range ls {
		prev, ok := s.seen[l.Shard]
		since := now
		if ok && prev.Revision == l.Revision {
			since = prev.since
		}
		fresh[l.Shard] = seenLease{Lease: l, since: since}
	}
	s.seen = fresh
	var missing []string
	for id := range s.shards {
		if _, ok := fresh[id]; !ok {
			missing = append(missing, id)
		}
	}
	s.mu.Unlock()

	for _, id := range missing {
		l, err := s.cfg.Store.Create(ctx, leases.Lease{Shard: id})
		if errors.Is(err, leases.ErrExists) {
			continue // another worker was first; seen next round
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.seen[id] = seenLease{Lease: l, since: now}
		s.mu.Unlock()
	}

	// Checkpoints and renewals of what we hold.
	s.mu.Lock()
	owned := make([]*shardWorker, 0, len(s.owned))
	for _, w := range s.owned {
		owned = append(owned, w)
	}
	s.mu.Unlock()
	for _, w := range owned {
		if err := s.writeLease(ctx, h, w, renew, false); err != nil {
			return err
		}
	}
	return s.acquire(ctx, h)
}

// writeLease writes w's checkpoint when it moved (or always when force, a
// renewal). A shard read to its end with nothing open is checkpointed
// ShardEnd and released. release also gives the lease up (Close). A
// conflict means another worker took the lease: w is revoked.
func (s *Source) writeLease(ctx context.Context, h connectors.Handler, w *shardWorker, force, release bool) error {
	mark, open := w.tr.checkpoint()
	finished := w.ended.Load() && open == 0
	s.mu.Lock()
	l := w.lease
	s.mu.Unlock()
	next := l
	if mark != "" {
		next.Checkpoint = mark
	}
	if finished {
		next.Checkpoint = leases.ShardEnd
	}
	if finished || release {
		next.Owner = ""
	}
	due := time.Since(w.written) >= s.cfg.CheckpointInterval
	if next == l && !force && !release {
		return nil
	}
	if next.Checkpoint != l.Checkpoint && !due && !force && !release && !finished {
		return nil
	}
	got, err := s.cfg.Store.Update(ctx, next)
	if errors.Is(err, leases.ErrConflict) {
		s.lose(h, w, "the lease was taken by another worker")
		return nil
	}
	if err != nil {
		return err
	}
	w.written = time.Now()
	s.mu.Lock()
	w.lease = got
	s.seen[got.Shard] = seenLease{Lease: got, since: time.Now()}
	if got.Owner == "" {
		delete(s.owned, w.id)
	}
	s.mu.Unlock()
	if finished {
		s.log.Info("kinesis: shard finished", "shard", w.id)
	}
	if got.Owner == "" {
		w.stopReading()
	}
	return nil
}

// lose drops w after its lease went to another worker.
func (s *Source) lose(h connectors.Handler, w *shardWorker, why string) {
	s.mu.Lock()
	if s.owned[w.id] != w {
		s.mu.Unlock()
		return
	}
	delete(s.owned, w.id)
	s.mu.Unlock()
	w.lost.Store(true)
	w.stopReading()
	s.log.Warn("kinesis: lost shard lease", "shard", w.id, "reason", why)
	if h != nil {
		h.Revoked([]string{w.id})
	}
}

// acquire takes leases up to this worker's share of the shards that may be
// read now (not finished, parents finished).
func (s *Source) acquire(ctx context.Context, h connectors.Handler) error {
	now := time.Now()
	s.mu.Lock()
	me := s.cfg.WorkerID
	finished := func(id string) bool {
		l, ok := s.seen[id]
		if ok {
			return l.Checkpoint == leases.ShardEnd
		}
		_, listed := s.shards[id]
		return !listed // trimmed out of retention: nothing left to read
	}
	expired := func(l seenLease) bool {
		return l.Owner != "" && l.Owner != me && now.Sub(l.since) > s.cfg.LeaseDuration
	}
	var free, dead []leases.Lease
	perOwner := map[string][]leases.Lease{}
	eligible := 0
	for id, info := range s.shards {
		l, ok := s.seen[id]
		if !ok || l.Checkpoint == leases.ShardEnd {
			continue
		}
		ready := true
		for _, p := range info.parents {
			if !finished(p) {
				ready = false
			}
		}
		if !ready {
			continue
		}
		eligible++
		switch {
		case l.Owner == me:
			if s.owned[id] == nil {
				// Ours from an earlier life of this worker id: take it
				// back through a write like any other.
				free = append(free, l.Lease)
			}
		case l.Owner == "":
			free = append(free, l.Lease)
		case expired(l):
			dead = append(dead, l.Lease)
		default:
			perOwner[l.Owner] = append(perOwner[l.Owner], l.Lease)
		}
	}
	held := len(s.owned)
	s.mu.Unlock()

	workers := len(perOwner) + 1
	target := int(math.Ceil(float64(eligible) / float64(workers)))
	candidates := append(free, dead...)
	if len(candidates) == 0 && !s.cfg.NoSteal {
		// Steal one lease from the busiest worker when that evens the
		// shares out (it holds at least two more than we do), as the KCL
		// does: one per round, so shares converge without a stampede.
		var victim string
		for o, ls := range perOwner {
			if len(ls) >= held+2 && (victim == "" || len(ls) > len(perOwner[victim]) || (len(ls) == len(perOwner[victim]) && o < victim)) {
				victim = o
			}
		}
		if victim != "" {
			target = held + 1
			ls := perOwner[victim]
			sort.Slice(ls, func(i, j int) bool { return ls[i].Shard < ls[j].Shard })
			candidates = append(candidates, ls[0])
		}
	}
	sort.SliceStable(candidates, func(i, j int) bool { return candidates[i].Shard < candidates[j].Shard })
	for _, l := range candidates {
		if held >= target {
			break
		}
		prev := l.Owner
		l.Owner = me
		prevSince := l.Since
		if s.cfg.StartPosition == Latest && l.Checkpoint == "" && l.Since == "" {
			// The first holder reads from LATEST; whoever holds the lease
			// after it, before a checkpoint, from this time on.
			l.Since = time.Now().UTC().Format(time.RFC3339Nano)
		}
		got, err := s.cfg.Store.Update(ctx, l)
		if errors.Is(err, leases.ErrConflict) {
			continue // someone else took it first
		}
		if err != nil {
			return err
		}
		held++
		s.log.Info("kinesis: took shard lease", "shard", got.Shard, "from", prev, "checkpoint", got.Checkpoint)
		if !s.startShard(ctx, h, got, prevSince == "" && got.Since != "") {
			return nil
		}
	}
	return nil
}

// startShard starts reading the shard of lease l. It returns false when the
// source is closing.
func (s *Source) startShard(ctx context.Context, h connectors.Handler, l leases.Lease, first bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || ctx.Err() != nil {
		return false
	}
	rctx, cancel := context.WithCancel(ctx)
	w := &shardWorker{
		src: s, id: l.Shard, lease: l, h: h, ctx: rctx, cancel: cancel,
		child:   len(s.shards[l.Shard].parents) > 0,
		written: time.Now(),
		log:     s.log.With("shard", l.Shard),
	}
	w.firstLatest.Store(first)
	s.owned[l.Shard] = w
	s.seen[l.Shard] = seenLease{Lease: l, since: time.Now()}
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		w.read(rctx)
	}()
	return true
}

// Close stops Run, writes the final checkpoints, releases the leases so
// other workers take them at once, and fails later settlements. Unsettled
// records are read again by the next holder of their shard.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.closedFlag.Store(true)
	if s.stopRun != nil {
		s.stopRun()
	}
	runDone := s.runDone
	s.mu.Unlock()
	if runDone != nil {
		<-runDone // Run has stopped every reader
	}
	s.mu.Lock()
	owned := make([]*shardWorker, 0, len(s.owned))
	for _, w := range s.owned {
		owned = append(owned, w)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	for _, w := range owned {
		if w.lost.Load() {
			continue
		}
		if err := s.writeLease(ctx, nil, w, true, true); err != nil {
			errs = append(errs, fmt.Errorf("releasing shard %s: %w", w.id, err))
		}
	}
	return errors.Join(errs...)
}

// shardWorker reads one leased shard.
type shardWorker struct {
	src    *Source
	id     string
	h      connectors.Handler
	cancel context.CancelFunc
	child  bool
	log    *slog.Logger
	tr     tracker

	lease   leases.Lease // guarded by src.mu
	written time.Time    // last lease write (lease goroutine only)

	ctx      context.Context // ends when reading stops
	handleMu sync.Mutex      // one Handle at a time in this shard
	// firstLatest: this worker gave the lease its Since; its first
	// iterator is LATEST, any later one AT_TIMESTAMP Since.
	firstLatest atomic.Bool
	ended       atomic.Bool
	lost        atomic.Bool
	stopOnce    sync.Once
}

func (w *shardWorker) stopReading() { w.stopOnce.Do(w.cancel) }

// read polls GetRecords from the checkpoint and hands records over in
// order until the shard ends, the lease is lost or ctx is done.
func (w *shardWorker) read(ctx context.Context) {
	s := w.src
	bo := backoff{max: s.cfg.MaxBackoff}
	var iter *string
	after := w.lease.Checkpoint // last sequence number handed over
	failing := false
	fail := func(what string, err error) bool {
		wait := bo.next()
		if !failing || bo.n%10 == 0 {
			w.log.Warn("kinesis: "+what+" failed, retrying", "error", err, "retry_in", wait)
		}
		failing = true
		return sleep(ctx, wait)
	}
	var lastFetch time.Time
	for ctx.Err() == nil {
		if iter == nil {
			it, err := w.iterator(ctx, after)
			if err != nil {
				if ctx.Err() != nil || !fail("GetShardIterator", err) {
					return
				}
				continue
			}
			iter = it
		}
		if wait := s.cfg.FetchInterval - time.Since(lastFetch); wait > 0 && !sleep(ctx, wait) {
			return
		}
		lastFetch = time.Now()
		cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
		out, err := s.client.GetRecords(cctx, &kinesis.GetRecordsInput{
			ShardIterator: iter, Limit: aws.Int32(int32(s.cfg.FetchLimit)),
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var expiredIt *types.ExpiredIteratorException
			if errors.As(err, &expiredIt) {
				iter = nil // a fresh one after the last record handed over
				continue
			}
			if !fail("GetRecords", err) {
				return
			}
			iter = nil // the iterator may have expired while we waited
			continue
		}
		if failing {
			w.log.Info("kinesis: reading the shard again")
			failing = false
		}
		bo.reset()
		for i := range out.Records {
			r := &out.Records[i]
			if !w.deliver(ctx, r) {
				return
			}
			after = aws.ToString(r.SequenceNumber)
		}
		if out.NextShardIterator == nil {
			w.ended.Store(true)
			w.log.Info("kinesis: shard read to its end")
			return
		}
		iter = out.NextShardIterator
		if len(out.Records) == 0 && !sleep(ctx, s.cfg.IdleInterval) {
			return
		}
	}
}

// iterator returns an iterator after sequence number after, or at the
// start position when there is none.
func (w *shardWorker) iterator(ctx context.Context, after string) (*string, error) {
	s := w.src
	in := &kinesis.GetShardIteratorInput{StreamName: aws.String(s.cfg.Stream), ShardId: aws.String(w.id)}
	switch {
	case after != "":
		in.ShardIteratorType = types.ShardIteratorTypeAfterSequenceNumber
		in.StartingSequenceNumber = aws.String(after)
	case w.child:
		in.ShardIteratorType = types.ShardIteratorTypeTrimHorizon
	case s.cfg.StartPosition == Latest:
		in.ShardIteratorType = types.ShardIteratorTypeLatest
		s.mu.Lock()
		since := w.lease.Since
		s.mu.Unlock()
		if t, err := time.Parse(time.RFC3339Nano, since); err == nil && !w.firstLatest.Swap(false) {
			// "latest" as of when the shard's lease was created.
			in.ShardIteratorType = types.ShardIteratorTypeAtTimestamp
			in.Timestamp = aws.Time(t)
		}
	case s.cfg.StartPosition == AtTimestamp:
		in.ShardIteratorType = types.ShardIteratorTypeAtTimestamp
		in.Timestamp = aws.Time(s.cfg.StartTimestamp)
	default:
		in.ShardIteratorType = types.ShardIteratorTypeTrimHorizon
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	out, err := s.client.GetShardIterator(cctx, in)
	if err != nil {
		return nil, fmt.Errorf("shard iterator for %s (%s %s): %w", w.id, in.ShardIteratorType, after, err)
	}
	return out.ShardIterator, nil
}

// deliver hands one record over; false when ctx ended first.
func (w *shardWorker) deliver(ctx context.Context, r *types.Record) bool {
	s := w.src
	seq := aws.ToString(r.SequenceNumber)
	rec, err := decodeRecord(r.Data, aws.ToString(r.PartitionKey), aws.ToTime(r.ApproximateArrivalTimestamp))
	if err != nil {
		w.log.Warn("kinesis: record data", "sequence", seq, "error", err)
	}
	if rec.Id == "" {
		rec.Id = "kinesis:" + s.cfg.Stream + ":" + w.id + ":" + seq
	}
	rec.Source = &culvertv1.Position{Connector: "kinesis", Stream: s.cfg.Stream, Subject: s.cfg.Stream, Partition: w.id, Sequence: seq}
	m := &message{w: w, rec: rec, idx: w.tr.add(seq), deliveries: 1}
	return w.hand(ctx, m, 0)
}

// hand takes an in-flight slot and calls Handle under the shard's lock.
func (w *shardWorker) hand(ctx context.Context, m *message, delivery int) bool {
	select {
	case w.src.sem <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	w.handleMu.Lock()
	defer w.handleMu.Unlock()
	if ctx.Err() != nil {
		<-w.src.sem
		return false
	}
	m.state.Store(stateHanded)
	st := &settler{m: m}
	if err := w.h.Handle(ctx, connectors.Message{Record: m.rec, Settler: st, Delivery: delivery}); err != nil {
		// Not taken: settle it ourselves without completing it, so no
		// checkpoint passes it and the next reader gets it again.
		if st.settle() {
			<-w.src.sem
		}
		return false
	}
	return true
}

// message is one record of a shard, across its deliveries.
type message struct {
	w     *shardWorker
	rec   *culvertv1.Record
	idx   uint64
	state atomic.Int32
	// deliveries so far, guarded by w.handleMu; the first one is
	// reported as 0 (unknown: a record read again after a restart cannot
	// tell), redeliveries after Nak from 2.
	deliveries int
}

const (
	stateHanded int32 = iota + 1
	stateSettled
)

// settler settles one delivery of a message.
type settler struct {
	m    *message
	done atomic.Bool
}

// settle marks this delivery settled; false if it already was.
func (st *settler) settle() bool { return st.done.CompareAndSwap(false, true) }

func (st *settler) check() error {
	w := st.m.w
	if w.src.closedFlag.Load() {
		return connectors.ErrClosed
	}
	if !st.settle() {
		return connectors.ErrSettled
	}
	<-w.src.sem
	return nil
}

// Ack completes the record: the shard's checkpoint may pass it.
func (st *settler) Ack(ctx context.Context) error {
	if err := st.check(); err != nil {
		return err
	}
	if !st.m.w.lost.Load() {
		st.m.w.tr.done(st.m.idx)
	}
	return nil
}

// Nak hands the record over again after delay (later records keep
// flowing); the checkpoint does not pass it meanwhile.
func (st *settler) Nak(ctx context.Context, delay time.Duration) error {
	if err := st.check(); err != nil {
		return err
	}
	w := st.m.w
	if w.lost.Load() {
		return nil
	}
	m := st.m
	go func() {
		// Ends with the shard's reading (Run cancelled, lease lost,
		// Close): the record is then read again from the checkpoint.
		if !sleep(w.ctx, delay) {
			return
		}
		w.handleMu.Lock()
		m.deliveries++
		n := m.deliveries
		w.handleMu.Unlock()
		w.hand(w.ctx, m, n)
	}()
	return nil
}

// backoff is capped exponential backoff with jitter.
type backoff struct {
	n   int
	max time.Duration
}

func (b *backoff) next() time.Duration {
	d := 100 * time.Millisecond << min(b.n, 10)
	b.n++
	if d > b.max || d <= 0 {
		d = b.max
	}
	var j [1]byte
	_, _ = rand.Read(j[:])
	return d/2 + time.Duration(int64(d/2)*int64(j[0])/255)
}

func (b *backoff) reset() { b.n = 0 }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
