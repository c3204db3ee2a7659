package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/culvert-dev/culvert/internal/fnhost"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// item is one record on its way through a route's chain. It holds one
// reference of its tracker until it is forwarded, published or failed.
type item struct {
	rec     *culvertv1.Record
	tr      *tracker
	attempt int  // failed attempts at the current stage
	solo    bool // send in a batch of its own (isolating a poison record)
	born    time.Time
	// hash is the stage's keyHash of rec once hashed is set (dispatch and
	// the lane need it both).
	hash   uint64
	hashed bool
	// keyless: rec has no key, noted by dispatch, which has rec at hand,
	// so that the worker need not look at rec again (laneOf).
	keyless bool

	// Set by the worker that owns it at this stage.
	seq  uint64 // arrival order at the worker, from 1 (0: not yet seen)
	lane uint64 // the ordered lane it belongs to

	self [1]*item // it, for a queue send of one item without an allocation
}

// route is a chain of stages and the outputs its results go to.
type route struct {
	e       *Engine
	name    string
	log     *slog.Logger
	stages  []*stage
	outputs []*output
	dlq     *output
}

// enter starts it on the chain.
func (rt *route) enter(it *item) {
	if len(rt.stages) == 0 {
		rt.deliver(it, []fnhost.Output{{Record: it.rec}}, nil)
		return
	}
	rt.stages[0].dispatch(it)
}

// enterBatch starts its, in order, on the chain.
func (rt *route) enterBatch(its []*item) {
	if len(rt.stages) == 0 {
		for _, it := range its {
			rt.enter(it)
		}
		return
	}
	rt.stages[0].dispatchBatch(its)
}

// deliver forwards the outputs produced for it by stage st (nil: no stage)
// to the next stage or to the route's outputs, then releases it.
func (rt *route) deliver(it *item, outs []fnhost.Output, st *stage) {
	last := st == nil || st.index == len(rt.stages)-1
	for _, o := range outs {
		if o.To == "" {
			continue
		}
		if !last {
			rt.fail(it, st, failure{class: fnhost.ClassFunction, msg: fmt.Sprintf("output aimed at %q, but function %s is not the last of route %s's chain", o.To, st.fn.Name, rt.name)})
			return
		}
		if rt.output(o.To) == nil {
			rt.fail(it, st, failure{class: fnhost.ClassFunction, msg: fmt.Sprintf("output aimed at %q, which is not an output of route %s", o.To, rt.name)})
			return
		}
	}
	for _, o := range outs {
		if !last {
			it.tr.add(1)
			rt.stages[st.index+1].dispatch(&item{rec: o.Record, tr: it.tr, born: it.born})
			continue
		}
		for _, out := range rt.outputs {
			if o.To != "" && o.To != out.name {
				continue
			}
			it.tr.add(1)
			if err := rt.e.publish(out, o.Record, it.tr); err != nil {
				// A subject that cannot be rendered is the record's fault.
				rt.fail(&item{rec: o.Record, tr: it.tr, born: it.born}, st, failure{class: "subject", msg: err.Error()})
			}
		}
	}
	it.tr.release(nil)
}

func (rt *route) output(name string) *output {
	for _, o := range rt.outputs {
		if o.name == name {
			return o
		}
	}
	return nil
}

type failure struct {
	class     fnhost.Class
	msg       string
	retryable bool
}

// fail gives up on it: to the dead-letter output when the route has one,
// otherwise the source record is given back to the broker.
func (rt *route) fail(it *item, st *stage, f failure) {
	e := rt.e
	fnName := ""
	if st != nil {
		fnName = st.fn.Name
	}
	if err := e.failedForGood(); err != nil {
		// The nack threshold tripped: the pipeline is stopping, and the
		// record is given back instead of dead-lettered.
		rt.log.Error("record failed for good after the nack threshold tripped; the source record will be redelivered",
			"record", it.rec.Id, "function", fnName, "class", string(f.class), "attempts", it.attempt, "error", f.msg)
		it.tr.release(err)
		return
	}
	if rt.dlq == nil {
		if st != nil {
			it.tr.wantDelay(backoff(time.Duration(st.fn.Retry.Backoff), time.Duration(st.fn.Retry.MaxBackoff), max(it.tr.msg.Delivery, 1)))
		}
		rt.log.Error("record failed for good and the route has no dead_letter output; the source record will be redelivered",
			"record", it.rec.Id, "function", fnName, "class", string(f.class), "attempts", it.attempt, "error", f.msg)
		it.tr.release(errors.New(f.msg))
		return
	}
	e.stats.deadLettered.Add(1)
	rt.log.Warn("record dead-lettered", "record", it.rec.Id, "function", fnName, "class", string(f.class), "attempts", it.attempt, "error", f.msg, "output", rt.dlq.name)
	rec := proto.Clone(it.rec).(*culvertv1.Record)
	src := it.tr.msg.Record.GetSource()
	rec.Headers = append(rec.Headers,
		hdr("culvert-error-class", string(f.class)),
		hdr("culvert-error-message", f.msg),
		hdr("culvert-error-function", fnName),
		hdr("culvert-error-route", rt.name),
		hdr("culvert-error-attempts", strconv.Itoa(it.attempt)),
		hdr("culvert-error-source-record", it.tr.msg.Record.GetId()),
		hdr("culvert-error-source", fmt.Sprintf("%s:%s:%s:%s:%d", src.GetConnector(), src.GetStream(), src.GetSubject(), src.GetPartition(), src.GetOffset())),
		hdr("culvert-error-time", time.Now().UTC().Format(time.RFC3339Nano)),
		hdr("culvert-error-record", it.rec.GetId()),
	)
	if rec.Source == nil {
		rec.Source = src
	}
	if rec.EventTime == nil {
		rec.EventTime = timestamppb.Now()
	}
	// The item's reference passes to the dead-letter publish.
	if err := e.publish(rt.dlq, rec, it.tr); err != nil {
		rt.log.Error("cannot dead-letter record; the source record will be redelivered", "record", rec.Id, "error", err)
		it.tr.release(err)
	}
}

func hdr(name, value string) *culvertv1.Header {
	return &culvertv1.Header{Name: name, Value: []byte(value)}
}

// backoff is exponential with full jitter in [d/2, d].
func backoff(base, ceiling time.Duration, attempt int) time.Duration {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if ceiling <= 0 {
		ceiling = 5 * time.Second
	}
	d := ceiling
	if n := attempt - 1; n < 63 && base <= ceiling>>n {
		d = base << n
	}
	return d/2 + rand.N(d/2+1)
}
