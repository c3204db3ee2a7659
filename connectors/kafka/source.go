package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/culvert-dev/culvert/connectors"
	"github.com/culvert-dev/culvert/connectors/kafka/kafkamsg"
)

// ConnectorName is Record.Source.Connector for this source.
const ConnectorName = kafkamsg.ConnectorName

// SourceConfig configures a Source. Zero values take the defaults shown.
type SourceConfig struct {
	Client ClientConfig
	// Topics to consume. Required.
	Topics []string
	// Group is the consumer group. Required.
	Group string
	// Start is where a partition without a committed offset begins:
	// "earliest" (default), "latest", or an RFC 3339 time (the first
	// record at or after it).
	Start string
	// MaxInFlight bounds records handed over and not settled, over all
	// partitions. Default 1024.
	MaxInFlight int
	// MaxInFlightPerPartition bounds them per partition, so one busy
	// partition cannot take every slot. Default MaxInFlight.
	MaxInFlightPerPartition int
	// MaxQueued bounds fetched records waiting in the partitions' queues:
	// polling waits while they hold more than half of this per partition
	// on average, and one poll brings at most this many. A partition held
	// up by its own in-flight bound (MaxInFlightPerPartition) with more
	// than half of this queued, for FetchMaxWait without a break, is
	// paused (no more fetching for it until its queue is down to half). A
	// pause drops what the client had buffered for the partition, so it is
	// kept for a partition that is stuck. Default 4096.
	MaxQueued int
	// CommitInterval between commits of the watermarks. Default 1s.
	CommitInterval time.Duration
	// RevokeGrace bounds how long a rebalance waits for in-flight records
	// of a revoked partition to settle before committing its watermark and
	// abandoning the rest. Keep it below the rebalance timeout (60s).
	// Default 10s.
	RevokeGrace time.Duration
	// SessionTimeout of the group member; default kgo's 45s. The member
	// heartbeats every tenth of it (at most every 3s, kgo's default), so
	// that a late heartbeat cannot end a live member's session, and the
	// members learn of a rebalance, and rejoin, well within it.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long the coordinator waits, in a rebalance,
	// for the members to rejoin and then for the leader's assignment,
	// before it goes on without the late ones. A live member needs up to
	// RevokeGrace (and one commit) in onRevoked before it rejoins; a member
	// that dies in the middle of a rebalance holds the group up for this
	// long. Default RevokeGrace + SessionTimeout when SessionTimeout is
	// set, else kgo's 60s.
	RebalanceTimeout time.Duration
	// FetchMaxWait is the longest a fetch waits for data; default 100ms
	// (a resumed partition is fetched again only after the fetch in flight
	// returns, so this bounds the stall after a pause).
	FetchMaxWait time.Duration
}

func (c *SourceConfig) defaults() error {
	if len(c.Topics) == 0 || c.Group == "" {
		return fmt.Errorf("topics %q, group %q: both are required", c.Topics, c.Group)
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.MaxInFlightPerPartition <= 0 || c.MaxInFlightPerPartition > c.MaxInFlight {
		c.MaxInFlightPerPartition = c.MaxInFlight
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 4096
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = time.Second
	}
	if c.RevokeGrace <= 0 {
		c.RevokeGrace = 10 * time.Second
	}
	if c.RebalanceTimeout <= 0 && c.SessionTimeout > 0 {
		c.RebalanceTimeout = c.RevokeGrace + c.SessionTimeout
	}
	if c.FetchMaxWait <= 0 {
		c.FetchMaxWait = 100 * time.Millisecond
	}
	return nil
}

// heartbeatInterval is the group heartbeat interval for a session
// timeout: a tenth of it, at most kgo's default 3s, at least 100ms.
//
// kgo's default interval (3s) with a short session (the crash tests use
// 3s) let a heartbeat that came a little late end a live member's
// session, and a member learnt of a rebalance up to a whole session after
// it began; on kfake, which expires members waiting in JoinGroup as if
// idle (TestKfakeExpiresMembersAwaitingJoin), the member that had rejoined
// first was then dropped while it waited for the slow one. Kafka's own
// guidance is an interval of at most a third of the session timeout.
func heartbeatInterval(session time.Duration) time.Duration {
	return min(max(session/10, 100*time.Millisecond), 3*time.Second)
}

// groupTiming is the group-membership timing both sources use: the
// session timeout with a heartbeat at a tenth of it (heartbeatInterval),
// and the rebalance timeout. Zero leaves kgo's default.
func groupTiming(session, rebalance time.Duration) []kgo.Opt {
	var opts []kgo.Opt
	if session > 0 {
		opts = append(opts, kgo.SessionTimeout(session), kgo.HeartbeatInterval(heartbeatInterval(session)))
	}
	if rebalance > 0 {
		opts = append(opts, kgo.RebalanceTimeout(rebalance))
	}
	return opts
}

// ParseStart parses a start position: "earliest" (or ""), "latest", or an
// RFC 3339 time.
func ParseStart(s string) (kgo.Offset, error) {
	switch s {
	case "", "earliest":
		return kgo.NewOffset().AtStart(), nil
	case "latest":
		return kgo.NewOffset().AtEnd(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return kgo.Offset{}, fmt.Errorf("start %q: want earliest, latest or an RFC 3339 time such as 2026-01-02T15:04:05Z", s)
	}
	return kgo.NewOffset().AfterMilli(t.UnixMilli()), nil
}

// tp is a topic partition.
type tp struct {
	topic     string
	partition int32
}

func (t tp) String() string { return t.topic + "/" + strconv.FormatInt(int64(t.partition), 10) }

// Source consumes topics in a consumer group. Each assigned partition is a
// lane: its records are handed to the Handler in offset order by one
// goroutine, and its offset is committed only up to the highest record
// such that every record before it was settled (see watermark). A nak'd
// record is handed again by its lane after the delay, while later records
// keep flowing; the commit waits for it.
//
// Partition names given to Handler.Revoked are "<topic>/<partition>".
type Source struct {
	cfg SourceConfig
	log *slog.Logger
	cl  *kgo.Client
	sem *slots // in-flight records, all partitions

	queued   atomic.Int64  // fetched records in lane queues, all partitions
	pollKick chan struct{} // cap 1: queued dropped below the poll limit

	closed atomic.Bool
	mu     sync.Mutex // guards lanes, run
	lanes  map[tp]*lane
	run    *runState

	// commitMu serialises commits with revocations, so a periodic commit
	// gathered before a revocation cannot land after the revocation's own
	// commit and rewind it.
	commitMu   sync.Mutex
	stopCommit chan struct{}
	commitDone chan struct{}
}

type runState struct {
	ctx    context.Context
	cancel context.CancelFunc
	h      connectors.Handler
	wg     sync.WaitGroup
}

var _ connectors.Source = (*Source)(nil)

// BatchHandler is a connectors.Handler that also takes several messages of
// one partition at once, in offset order: a lane then hands it up to
// laneBatch records a call instead of one, which costs one in-flight
// reservation, one lock of the lane and one call for them all. The engine's
// handler is one.
type BatchHandler interface {
	connectors.Handler
	// HandleBatch takes ownership of ms[:n] and returns n: all of them,
	// unless ctx is done first (then err is ctx's error, and the messages
	// from ms[n] on are not taken; the source hands them again). It must
	// not keep ms itself, which the source reuses.
	HandleBatch(ctx context.Context, ms []connectors.Message) (n int, err error)
}

// laneBatch bounds the records a lane hands to a BatchHandler at once.
const laneBatch = 256

// slots counts the records handed over and not settled, over all
// partitions, up to limit. Lanes that find none free wait in turn, first
// come first served, as they did on the channel this replaces: a lane
// that keeps finding slots must not starve the others (a partition holding
// every slot counts as stuck and is paused). Taking without waiters and
// giving back are atomics; the mutex guards the waiters.
type slots struct {
	used  atomic.Int64
	limit int64
	nwait atomic.Int64 // len(waiters), readable without mu
	mu    sync.Mutex
	wait  []*slotWaiter
}

// slotWaiter is a lane waiting for slots: it is woken with got slots.
type slotWaiter struct {
	want, got int
	ready     chan struct{} // cap 1
}

// tryTake takes up to n free slots, and at least least, and returns how
// many it took (0: fewer than least were free).
func (s *slots) tryTake(n, least int) int {
	for {
		u := s.used.Load()
		k := min(int64(n), s.limit-u)
		if k < int64(least) || k <= 0 {
			return 0
		}
		if s.used.CompareAndSwap(u, u+k) {
			return int(k)
		}
	}
}

// grantMin is the fewest slots a waiting lane is woken for (fewer if it
// wants fewer, or the limit is small): waking a lane per settled record
// would cost a goroutine switch per record.
func (s *slots) grantMin(want int) int {
	return max(min(want, 32, int(s.limit/8)), 1)
}

// take takes between 1 and n slots, as many as are free, waiting in turn
// while none is; it returns 0 once ctx is done or stop is closed.
func (s *slots) take(ctx context.Context, stop <-chan struct{}, n int) int {
	if s.nwait.Load() == 0 {
		if k := s.tryTake(n, 1); k > 0 {
			return k
		}
	}
	s.mu.Lock()
	// Counted as a waiter before looking again: a release from now on
	// either leaves the slots it freed to this look or sees the waiter.
	s.nwait.Add(1)
	if len(s.wait) == 0 {
		if k := s.tryTake(n, 1); k > 0 {
			s.nwait.Add(-1)
			s.mu.Unlock()
			return k
		}
	}
	w := &slotWaiter{want: n, ready: make(chan struct{}, 1)}
	s.wait = append(s.wait, w)
	s.mu.Unlock()
	select {
	case <-w.ready:
		return w.got
	case <-ctx.Done():
	case <-stop:
	}
	s.mu.Lock()
	if i := slices.Index(s.wait, w); i >= 0 {
		s.wait = slices.Delete(s.wait, i, i+1)
		s.nwait.Add(-1)
		s.grantLocked() // those behind it may be served now
		s.mu.Unlock()
		return 0
	}
	s.mu.Unlock()
	// Granted meanwhile: give them back.
	s.release(w.got)
	return 0
}

func (s *slots) release(n int) {
	s.used.Add(-int64(n))
	if s.nwait.Load() == 0 {
		return
	}
	s.mu.Lock()
	s.grantLocked()
	s.mu.Unlock()
}

// grantLocked wakes the waiters, in turn, that the free slots serve.
func (s *slots) grantLocked() {
	for len(s.wait) > 0 {
		w := s.wait[0]
		k := s.tryTake(w.want, s.grantMin(w.want))
		if k == 0 {
			return
		}
		w.got = k
		s.wait[0] = nil
		s.wait = s.wait[1:]
		s.nwait.Add(-1)
		w.ready <- struct{}{}
	}
}

// NewSource makes the client and joins the group. Partitions are assigned,
// and fetched into a bounded buffer, from then on; records are handed over
// once Run runs.
func NewSource(cfg SourceConfig, logger *slog.Logger) (*Source, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("kafka source: %w", err)
	}
	start, err := ParseStart(cfg.Start)
	if err != nil {
		return nil, fmt.Errorf("kafka source: group %q: %w", cfg.Group, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Source{
		cfg:        cfg,
		log:        logger.With("connector", ConnectorName, "group", cfg.Group),
		sem:        &slots{limit: int64(cfg.MaxInFlight)},
		lanes:      map[tp]*lane{},
		pollKick:   make(chan struct{}, 1),
		stopCommit: make(chan struct{}),
		commitDone: make(chan struct{}),
	}
	opts, err := cfg.Client.opts(s.log)
	if err != nil {
		return nil, fmt.Errorf("kafka source: group %q: %w", cfg.Group, err)
	}
	opts = append(opts,
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(start),
		kgo.FetchMaxWait(cfg.FetchMaxWait),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
	)
	opts = append(opts, groupTiming(cfg.SessionTimeout, cfg.RebalanceTimeout)...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka source: group %q: %w", cfg.Group, err)
	}
	s.cl = cl
	go s.committer()
	return s, nil
}

// Run hands records to h until ctx is cancelled or Close is called (then
// it returns nil). Run may be called again after it returned.
func (s *Source) Run(ctx context.Context, h connectors.Handler) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fmt.Errorf("kafka source: group %q: %w", s.cfg.Group, connectors.ErrClosed)
	}
	if s.run != nil {
		s.mu.Unlock()
		return fmt.Errorf("kafka source: group %q: already running", s.cfg.Group)
	}
	ctx, cancel := context.WithCancel(ctx)
	rs := &runState{ctx: ctx, cancel: cancel, h: h}
	s.run = rs
	for _, l := range s.lanes {
		s.startLane(rs, l)
	}
	s.mu.Unlock()
	defer func() {
		cancel()
		rs.wg.Wait()
		s.mu.Lock()
		s.run = nil
		s.mu.Unlock()
	}()
	s.log.Info("consuming", "topics", s.cfg.Topics)

	for {
		for s.queued.Load() >= s.pollLimit() {
			select {
			case <-s.pollKick:
			case <-ctx.Done():
				return nil
			}
		}
		fetches := s.cl.PollRecords(ctx, s.cfg.MaxQueued)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			s.cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			s.log.Warn("fetch error; the client retries", "topic", topic, "partition", partition, "error", err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			t := tp{p.Topic, p.Partition}
			s.mu.Lock()
			l := s.lanes[t]
			s.mu.Unlock()
			if l == nil {
				// Not ours (any more): not handed, never committed.
				s.log.Debug("records of an unassigned partition dropped", "partition", t.String(), "count", len(p.Records))
				return
			}
			l.push(p.Records)
		})
		// Records are in their lanes: a rebalance may run now.
		s.cl.AllowRebalance()
	}
}

// pollLimit is the number of queued records above which Run stops
// polling: half of MaxQueued per assigned partition.
func (s *Source) pollLimit() int64 {
	s.mu.Lock()
	n := len(s.lanes)
	s.mu.Unlock()
	return int64(max(n, 1) * s.cfg.MaxQueued / 2)
}

// dequeued accounts for n records leaving the lane queues.
func (s *Source) dequeued(n int) {
	if n == 0 {
		return
	}
	s.queued.Add(-int64(n))
	select {
	case s.pollKick <- struct{}{}:
	default:
	}
}

// startLane starts l's goroutine under rs. Called with s.mu held.
func (s *Source) startLane(rs *runState, l *lane) {
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		l.loop(rs.ctx, rs.h)
	}()
}

func (s *Source) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	if s.closed.Load() {
		return
	}
	var names []string
	s.mu.Lock()
	for topic, parts := range assigned {
		for _, p := range parts {
			t := tp{topic, p}
			if old := s.lanes[t]; old != nil {
				old.kill()
			}
			l := newLane(s, t)
			s.lanes[t] = l
			if s.run != nil {
				s.startLane(s.run, l)
			}
			names = append(names, t.String())
		}
	}
	s.mu.Unlock()
	slices.Sort(names)
	s.log.Info("partitions assigned", "partitions", names)
}

// onRevoked runs inside a rebalance: the revoked partitions stop handing
// records at once, their in-flight records get up to RevokeGrace to
// settle, then their watermarks are committed and the lanes dropped.
func (s *Source) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if s.closed.Load() || len(revoked) == 0 {
		return
	}
	lanes := s.lanesOf(revoked)
	if len(lanes) == 0 {
		return
	}
	for _, l := range lanes {
		l.revoke()
	}
	deadline := time.Now().Add(s.cfg.RevokeGrace)
	for time.Now().Before(deadline) && !s.closed.Load() {
		busy := 0
		for _, l := range lanes {
			busy += l.inFlight()
		}
		if busy == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.commitMu.Lock()
	_, err := s.commitLanes(ctx, lanes)
	s.removeLanes(lanes)
	s.commitMu.Unlock()
	names, abandoned := laneNames(lanes)
	if err != nil {
		s.log.Warn("commit on revocation failed; the new owner resumes from the previous commit", "partitions", names, "error", err)
	}
	s.log.Info("partitions revoked", "partitions", names, "abandoned_in_flight", abandoned)
	s.tellRevoked(names)
}

// onLost: the group session is gone (fenced, broker restarted), so commits
// would fail. The lanes are dropped without committing; their records come
// back from the last commit.
func (s *Source) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if s.closed.Load() || len(lost) == 0 {
		return
	}
	lanes := s.lanesOf(lost)
	s.commitMu.Lock()
	s.removeLanes(lanes)
	s.commitMu.Unlock()
	names, abandoned := laneNames(lanes)
	s.log.Warn("partitions lost (group session ended); records after the last commit will be delivered again", "partitions", names, "abandoned_in_flight", abandoned)
	s.tellRevoked(names)
}

func (s *Source) tellRevoked(names []string) {
	s.mu.Lock()
	rs := s.run
	s.mu.Unlock()
	if rs != nil && len(names) > 0 {
		rs.h.Revoked(names)
	}
}

func (s *Source) lanesOf(m map[string][]int32) []*lane {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*lane
	for topic, parts := range m {
		for _, p := range parts {
			if l := s.lanes[tp{topic, p}]; l != nil {
				out = append(out, l)
			}
		}
	}
	return out
}

func (s *Source) removeLanes(lanes []*lane) {
	s.mu.Lock()
	for _, l := range lanes {
		if s.lanes[l.tp] == l {
			delete(s.lanes, l.tp)
		}
	}
	s.mu.Unlock()
	for _, l := range lanes {
		l.kill()
	}
}

func laneNames(lanes []*lane) ([]string, int) {
	names := make([]string, 0, len(lanes))
	n := 0
	for _, l := range lanes {
		names = append(names, l.tp.String())
		n += l.inFlight()
	}
	slices.Sort(names)
	return names, n
}

// commitTimeout bounds one commit round trip.
const commitTimeout = 10 * time.Second

// commitLanes commits the watermarks of lanes that moved since their last
// commit. Called with commitMu held.
func (s *Source) commitLanes(ctx context.Context, lanes []*lane) (int, error) {
	offsets := map[string]map[int32]kgo.EpochOffset{}
	type mark struct {
		l   *lane
		off int64
	}
	var marks []mark
	for _, l := range lanes {
		off, epoch, ok := l.toCommit()
		if !ok {
			continue
		}
		if offsets[l.tp.topic] == nil {
			offsets[l.tp.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[l.tp.topic][l.tp.partition] = kgo.EpochOffset{Epoch: epoch, Offset: off}
		marks = append(marks, mark{l, off})
	}
	if len(marks) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	var cerr error
	s.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					cerr = errors.Join(cerr, fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, err))
				}
			}
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	for _, m := range marks {
		m.l.committed(m.off)
	}
	return len(marks), nil
}

// committer commits every CommitInterval until Close.
func (s *Source) committer() {
	defer close(s.commitDone)
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-s.stopCommit:
			return
		case <-t.C:
		}
		s.commitMu.Lock()
		s.mu.Lock()
		lanes := make([]*lane, 0, len(s.lanes))
		for _, l := range s.lanes {
			lanes = append(lanes, l)
		}
		s.mu.Unlock()
		n, err := s.commitLanes(context.Background(), lanes)
		s.commitMu.Unlock()
		switch {
		case err != nil && !failing:
			failing = true
			s.log.Warn("offset commit failed; retrying every commit interval (records after the last commit would be delivered again)", "error", err)
		case err == nil && n > 0 && failing:
			failing = false
			s.log.Info("offset commits succeed again")
		}
	}
}

// Close stops Run, commits what was settled, and leaves the group. Records
// handed over and not settled are not committed: the next member of the
// group gets them. Settlements after Close return ErrClosed. Close is
// idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	if !s.closed.CompareAndSwap(false, true) {
		s.mu.Unlock()
		return nil
	}
	if s.run != nil {
		s.run.cancel()
	}
	lanes := make([]*lane, 0, len(s.lanes))
	for _, l := range s.lanes {
		lanes = append(lanes, l)
	}
	s.mu.Unlock()
	close(s.stopCommit)
	<-s.commitDone
	s.commitMu.Lock()
	_, err := s.commitLanes(context.Background(), lanes)
	s.removeLanes(lanes)
	s.commitMu.Unlock()
	if err != nil {
		s.log.Warn("final offset commit failed; records after the previous commit will be delivered again", "error", err)
	}
	// A poll of a Run still winding down may hold the rebalance block.
	s.cl.CloseAllowingRebalance()
	return nil
}

// lane is one assigned partition.
type lane struct {
	s    *Source
	tp   tp
	kick chan struct{} // cap 1: something changed
	stop chan struct{} // closed by kill

	mu        sync.Mutex
	queue     []*kgo.Record // fetched, not handed
	retry     []*item       // nak'd, waiting for their delay
	wm        *watermark
	unsettled int
	paused    bool
	// stuckSince: since when the partition has been held up by its own
	// in-flight bound with a long queue, without a break (zero: it is not).
	stuckSince time.Time
	revoking   bool
	dead       bool
	lastSent   int64 // last committed offset, -1 none
}

// item is a record handed at least once.
type item struct {
	r          *kgo.Record
	due        time.Time
	deliveries int
	first      *settler // the settler of the first delivery, allocated with the item (nil: none)
}

func newLane(s *Source, t tp) *lane {
	return &lane{s: s, tp: t, kick: make(chan struct{}, 1), stop: make(chan struct{}), wm: newWatermark(), lastSent: -1}
}

func (l *lane) signal() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// push queues fetched records, pausing the partition when the queue is
// full.
func (l *lane) push(recs []*kgo.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead || l.revoking {
		return
	}
	l.queue = append(l.queue, recs...)
	l.s.queued.Add(int64(len(recs)))
	l.maybePauseLocked()
	l.signal()
}

// maybePauseLocked pauses the partition when it cannot hand records now
// because its own in-flight bound is reached (its records are held up)
// and its queue holds more than the resume mark (MaxQueued/2). A long
// queue alone is no reason: polls bring one broker's fetch at a time, so
// under a steady load the partitions take turns holding nearly all queued
// records while the engine, not a partition, is what is slow, and the poll
// gate already bounds the total. Pausing drops what kgo had buffered for
// the partition, which is fetched and decoded again on resume: pausing on
// queue length alone fetched every record several times. For the same
// reason the partition must have been held up for FetchMaxWait without a
// break: in a pipeline that flows, a partition that took every free slot
// (as one whose records were polled while the others' were not does) is
// held up for moments at a time, and pausing it then only fetched its
// records twice. It returns when to look again (zero: no need).
func (l *lane) maybePauseLocked() time.Time {
	stuck := l.unsettled >= l.s.cfg.MaxInFlightPerPartition
	if !stuck {
		l.stuckSince = time.Time{}
	}
	if l.paused || !stuck || len(l.queue) <= l.s.cfg.MaxQueued/2 {
		return time.Time{}
	}
	now := time.Now()
	if l.stuckSince.IsZero() {
		l.stuckSince = now
	}
	if due := l.stuckSince.Add(l.s.cfg.FetchMaxWait); now.Before(due) {
		return due
	}
	q := len(l.queue)
	l.paused = true
	l.s.cl.PauseFetchPartitions(map[string][]int32{l.tp.topic: {l.tp.partition}})
	l.s.log.Debug("partition paused (back-pressure)", "partition", l.tp.String(), "queued", q, "in_flight", l.unsettled)
	return time.Time{}
}

// next appends the next records to hand to its, up to n and within the
// partition's in-flight bound: a due retry first (alone), else records
// from the queue head. With nothing ready it returns the time the earliest
// retry is due, or when to look again whether to pause (zero: none).
func (l *lane) next(its []*item, n int) (_ []*item, wake time.Time, dead bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead || l.revoking {
		return its, time.Time{}, l.dead
	}
	room := l.s.cfg.MaxInFlightPerPartition - l.unsettled
	if room <= 0 {
		// Look again when it may be time to pause.
		return its, l.maybePauseLocked(), false
	}
	l.stuckSince = time.Time{}
	var now time.Time
	if len(l.retry) > 0 {
		now = time.Now()
	}
	for i, r := range l.retry {
		if !r.due.After(now) {
			l.retry = slices.Delete(l.retry, i, i+1)
			return append(its, r), time.Time{}, false
		}
		if wake.IsZero() || r.due.Before(wake) {
			wake = r.due
		}
	}
	if k := min(n, room, len(l.queue)); k > 0 {
		// A first delivery allocates its item and settler together, one
		// array for the batch.
		fs := make([]first, k)
		for i, r := range l.queue[:k] {
			f := &fs[i]
			f.item.r = r
			f.settler.it = &f.item
			f.item.first = &f.settler
			its = append(its, &f.item)
		}
		clear(l.queue[:k])
		l.queue = l.queue[k:]
		l.s.dequeued(k)
		if l.paused && len(l.queue) <= l.s.cfg.MaxQueued/2 {
			l.paused = false
			l.s.cl.ResumeFetchPartitions(map[string][]int32{l.tp.topic: {l.tp.partition}})
			l.s.log.Debug("partition resumed", "partition", l.tp.String(), "queued", len(l.queue))
		}
		return its, time.Time{}, false
	}
	return its, wake, false
}

// first is a record's item with the settler of its first delivery, in one
// allocation; a redelivery gets a settler of its own.
type first struct {
	item    item
	settler settler
}

// loop hands the lane's records to h until ctx is done or the lane is
// dropped: one at a time, or up to laneBatch at a time when h is a
// BatchHandler.
func (l *lane) loop(ctx context.Context, h connectors.Handler) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	bh, _ := h.(BatchHandler)
	n := 1
	if bh != nil {
		n = laneBatch
	}
	its := make([]*item, 0, n)
	msgs := make([]connectors.Message, 0, n)
	sts := make([]*settler, 0, n)
	for {
		var wake time.Time
		var dead bool
		its, wake, dead = l.next(its[:0], n)
		if dead {
			return
		}
		if len(its) == 0 {
			var tc <-chan time.Time
			if !wake.IsZero() {
				if timer == nil {
					timer = time.NewTimer(time.Until(wake))
				} else {
					timer.Reset(time.Until(wake))
				}
				tc = timer.C
			}
			select {
			case <-l.kick:
			case <-tc:
			case <-l.stop:
				return
			case <-ctx.Done():
				return
			}
			continue
		}
		k := l.s.sem.take(ctx, l.stop, len(its))
		if k < len(its) {
			// Not enough slots (none once ctx is done or the lane
			// dropped): the rest wait at the head of the lane.
			l.giveBack(its[k:])
			its = its[:k]
			if k == 0 {
				if ctx.Err() != nil || l.isDead() {
					return
				}
				continue
			}
		}
		var ok bool
		sts, msgs, ok = l.hand(its, sts[:0], msgs[:0])
		if !ok {
			l.s.sem.release(len(its))
			return
		}
		taken := len(msgs)
		var err error
		if bh != nil {
			taken, err = bh.HandleBatch(ctx, msgs)
		} else if err = h.Handle(ctx, msgs[0]); err != nil {
			taken = 0
		}
		clear(msgs)
		if err != nil {
			// Not taken: back to the head of the retries, in order.
			for i := len(its) - 1; i >= taken; i-- {
				if sts[i].claim() {
					l.s.sem.release(1)
					l.mu.Lock()
					l.unsettled--
					l.mu.Unlock()
					l.giveBack(its[i : i+1])
				}
			}
			return
		}
		clear(its)
		clear(sts)
	}
}

func (l *lane) isDead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead
}

// giveBack puts records not handed over back at the head of the lane, due
// at once, in their order.
func (l *lane) giveBack(its []*item) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return // dropped with the lane, as its queue was
	}
	var fresh []*kgo.Record
	var again []*item
	for _, it := range its {
		if it.deliveries == 0 {
			// Never added to the watermark: back at the queue head.
			fresh = append(fresh, it.r)
			continue
		}
		it.due = time.Time{}
		again = append(again, it)
	}
	if len(fresh) > 0 {
		l.queue = slices.Insert(l.queue, 0, fresh...)
		l.s.queued.Add(int64(len(fresh)))
	}
	if len(again) > 0 {
		l.retry = slices.Insert(l.retry, 0, again...)
	}
}

// hand registers its as handed over and appends their settlers and
// Messages to sts and msgs.
func (l *lane) hand(its []*item, sts []*settler, msgs []connectors.Message) ([]*settler, []connectors.Message, bool) {
	var dec kafkamsg.Batch // one allocation for the records of the batch
	dec.Grow(len(its))
	for _, it := range its {
		rec, err := dec.Decode(it.r)
		if err != nil {
			l.s.log.Warn("undecodable record value, delivering it as a raw value", "partition", l.tp.String(), "offset", it.r.Offset, "error", err)
			rec = dec.DecodeRaw(it.r)
		}
		msgs = append(msgs, connectors.Message{Record: rec})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		clear(msgs)
		return sts, msgs[:0], false
	}
	for i, it := range its {
		if it.deliveries == 0 {
			l.wm.add(it.r.Offset, it.r.LeaderEpoch)
		}
		it.deliveries++
		l.unsettled++
		delivery := 0 // unknown: a first fetch may follow a restart
		if it.deliveries > 1 {
			delivery = it.deliveries
		}
		var st *settler
		if it.deliveries == 1 && it.first != nil {
			st = it.first
		} else {
			st = &settler{it: it}
		}
		st.l = l
		sts = append(sts, st)
		msgs[i].Settler, msgs[i].Delivery = st, delivery
	}
	return sts, msgs, true
}

func (l *lane) inFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unsettled
}

func (l *lane) revoke() {
	l.mu.Lock()
	l.revoking = true
	l.s.dequeued(len(l.queue))
	l.queue = nil
	l.mu.Unlock()
	l.signal()
}

// kill drops the lane: its goroutine exits and its settlements are
// ignored from now on.
func (l *lane) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return
	}
	l.dead = true
	l.s.dequeued(len(l.queue))
	l.queue, l.retry = nil, nil
	if l.paused {
		l.paused = false
		l.s.cl.ResumeFetchPartitions(map[string][]int32{l.tp.topic: {l.tp.partition}})
	}
	close(l.stop)
}

// toCommit returns the watermark when it moved past the last commit.
func (l *lane) toCommit() (int64, int32, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return 0, 0, false
	}
	off, epoch, ok := l.wm.commit()
	if !ok || off <= l.lastSent {
		return 0, 0, false
	}
	return off, epoch, true
}

func (l *lane) committed(off int64) {
	l.mu.Lock()
	l.lastSent = max(l.lastSent, off)
	l.mu.Unlock()
}

// settle applies a settlement of it: ack marks it in the watermark, nak
// schedules it again after delay.
func (l *lane) settle(it *item, ack bool, delay time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s.closed.Load() {
		return connectors.ErrClosed
	}
	if l.dead {
		return nil // revoked: ignored, as the contract says
	}
	l.unsettled--
	if ack {
		l.wm.settle(it.r.Offset)
	} else if !l.revoking {
		it.due = time.Now().Add(delay)
		l.retry = append(l.retry, it)
	}
	l.signal()
	return nil
}

type settler struct {
	l    *lane
	it   *item
	done atomic.Bool
}

func (st *settler) claim() bool { return st.done.CompareAndSwap(false, true) }

func (st *settler) settle(ack bool, delay time.Duration) error {
	s := st.l.s
	if s.closed.Load() {
		return st.errorf(connectors.ErrClosed)
	}
	if !st.claim() {
		return st.errorf(connectors.ErrSettled)
	}
	s.sem.release(1)
	if err := st.l.settle(st.it, ack, delay); err != nil {
		return st.errorf(err)
	}
	return nil
}

func (st *settler) errorf(err error) error {
	return fmt.Errorf("kafka source: group %q %s offset %d: %w", st.l.s.cfg.Group, st.l.tp, st.it.r.Offset, err)
}

// Ack marks the record settled; the partition's commit may move past it.
func (st *settler) Ack(context.Context) error { return st.settle(true, 0) }

// Nak hands the record again after delay; the commit waits for it.
func (st *settler) Nak(_ context.Context, delay time.Duration) error {
	return st.settle(false, max(delay, 0))
}
