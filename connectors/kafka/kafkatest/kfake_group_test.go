package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestKfakeExpiresMembersAwaitingJoin pins down how kfake's classic group
// coordinator differs from Kafka's, with raw group requests and no
// consumer logic in between.
//
// Kafka keeps a member that waits in JoinGroup alive: its session does not
// expire while it awaits the join (the classic coordinator's
// hasSatisfiedHeartbeat is true for members awaiting join or sync), however
// long the other members take to rejoin, up to the rebalance timeout.
// kfake runs the session timer of a member waiting in JoinGroup as if it
// were idle: after the session timeout the member is removed, its
// JoinGroup is never answered, and the rebalance completes without it.
//
// So on kfake, a member that rejoins promptly is dropped when another
// member takes longer than the session timeout to rejoin (a slow revoke
// callback, a heartbeat interval close to the session timeout). The Kafka
// source keeps its heartbeat interval at a tenth of the session timeout,
// so members learn of a rebalance and rejoin well within it (see the
// source's SessionTimeout). When kfake keeps joining members alive, this
// test fails: the JoinGroup of B is answered with both members.
func TestKfakeExpiresMembersAwaitingJoin(t *testing.T) {
	const session = time.Second
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newClient := func() *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	a, b := newClient(), newClient()

	join := func(cl *kgo.Client, member string) (*kmsg.JoinGroupResponse, error) {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = "g"
		req.MemberID = member
		req.ProtocolType = "consumer"
		req.SessionTimeoutMillis = int32(session.Milliseconds())
		req.RebalanceTimeoutMillis = 20_000
		p := kmsg.NewJoinGroupRequestProtocol()
		p.Name = "range"
		meta := kmsg.NewConsumerMemberMetadata()
		meta.Topics = []string{"t"}
		p.Metadata = meta.AppendTo(nil)
		req.Protocols = append(req.Protocols, p)
		return req.RequestWith(ctx, cl)
	}
	// joinNew does the two-step join of a new member (MEMBER_ID_REQUIRED).
	joinNew := func(cl *kgo.Client) string {
		resp, err := join(cl, "")
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(kerr.ErrorForCode(resp.ErrorCode), kerr.MemberIDRequired) {
			t.Fatalf("first join: %v, want MEMBER_ID_REQUIRED", kerr.ErrorForCode(resp.ErrorCode))
		}
		return resp.MemberID
	}
	heartbeat := func(cl *kgo.Client, member string, gen int32) error {
		req := kmsg.NewPtrHeartbeatRequest()
		req.Group, req.MemberID, req.Generation = "g", member, gen
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		return kerr.ErrorForCode(resp.ErrorCode)
	}

	syncGroup := func(cl *kgo.Client, member string, gen int32, members ...string) error {
		req := kmsg.NewPtrSyncGroupRequest()
		req.Group, req.MemberID, req.Generation = "g", member, gen
		for _, m := range members { // the leader's (empty) assignments
			sa := kmsg.NewSyncGroupRequestGroupAssignment()
			sa.MemberID = m
			req.GroupAssignment = append(req.GroupAssignment, sa)
		}
		resp, err := req.RequestWith(ctx, cl)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if err != nil {
			return fmt.Errorf("%s syncs generation %d: %w", member, gen, err)
		}
		return nil
	}
	type result struct {
		resp *kmsg.JoinGroupResponse
		err  error
	}
	joinAsync := func(cl *kgo.Client, member string) chan result {
		done := make(chan result, 1)
		go func() {
			r, err := join(cl, member)
			done <- result{r, err}
		}()
		return done
	}

	// A alone (generation 1), then B joins and A rejoins: generation 2
	// has both, A leads, both synced. The group is stable.
	idA := joinNew(a)
	if r, err := join(a, idA); err != nil || r.ErrorCode != 0 {
		t.Fatalf("A joins: %v %v", err, kerr.ErrorForCode(r.ErrorCode))
	}
	idB := joinNew(b)
	bJoin := joinAsync(b, idB)
	time.Sleep(50 * time.Millisecond)
	ra, err := join(a, idA)
	if err != nil || ra.ErrorCode != 0 || len(ra.Members) != 2 {
		t.Fatalf("A rejoins with B: %v %v, %d members", err, kerr.ErrorForCode(ra.ErrorCode), len(ra.Members))
	}
	if r := <-bJoin; r.err != nil || r.resp.ErrorCode != 0 {
		t.Fatalf("B joins: %v %v", r.err, kerr.ErrorForCode(r.resp.ErrorCode))
	}
	gen := ra.Generation
	bSync := make(chan error, 1)
	go func() { bSync <- syncGroup(b, idB, gen) }()
	if err := syncGroup(a, idA, gen, idA, idB); err != nil {
		t.Fatal(err)
	}
	if err := <-bSync; err != nil {
		t.Fatal(err)
	}

	// A rejoins (a leader's rejoin starts a rebalance) and waits in
	// JoinGroup; B, still heartbeating (REBALANCE_IN_PROGRESS) and so
	// alive, rejoins only after three session timeouts.
	aJoin := joinAsync(a, idA)
	deadline := time.Now().Add(3 * session)
	sawRebalance := false
	for time.Now().Before(deadline) {
		err := heartbeat(b, idB, gen)
		switch {
		case errors.Is(err, kerr.RebalanceInProgress):
			sawRebalance = true
		case err != nil:
			t.Fatalf("B's heartbeat while A waits in JoinGroup: %v", err)
		}
		time.Sleep(session / 10)
	}
	if !sawRebalance {
		t.Fatal("B's heartbeats never saw REBALANCE_IN_PROGRESS after A rejoined")
	}
	rb, err := join(b, idB)
	if err != nil || rb.ErrorCode != 0 {
		t.Fatalf("B rejoins: %v %v", err, kerr.ErrorForCode(rb.ErrorCode))
	}

	// Kafka: the rebalance completes with A and B and A's JoinGroup is
	// answered. kfake: A expired while it waited; B is alone and leads.
	if rb.LeaderID != idB || len(rb.Members) != 1 {
		t.Fatalf("generation %d: leader %s, %d members; kfake used to drop A and make B the only member: has kfake started keeping joining members alive?", rb.Generation, rb.LeaderID, len(rb.Members))
	}
	select {
	case r := <-aJoin:
		t.Fatalf("A's JoinGroup was answered (%v, error code %d): has kfake started keeping joining members alive?", r.err, r.resp.ErrorCode)
	case <-time.After(session):
	}
	if err := heartbeat(a, idA, rb.Generation); !errors.Is(err, kerr.UnknownMemberID) {
		t.Fatalf("A's heartbeat after the rebalance: %v, want UNKNOWN_MEMBER_ID (A was removed while waiting in JoinGroup)", err)
	}
	t.Logf("kfake removed member A after %s waiting in JoinGroup; generation %d has B only, and A's JoinGroup is unanswered", 3*session, rb.Generation)
}
