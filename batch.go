package luarate

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Coalesced batches. Each script call costs Redis a fixed price (parsing the
// call, TIME, the reply) on top of the decision itself, so when decisions
// queue up, sending many of them as one call is most of what Redis can save.
// A call goes out at once, alone, when no call of its lane (one script; in
// Redis Cluster one script and one hash slot) is in flight, so a lone caller
// waits for nothing. While fewer than maxInFlight are in flight, a call goes
// at once too, but first yields so that the goroutines about to call join it
// (gather). Calls that arrive while maxInFlight are in flight wait for one to
// return. Either way they go together as one script call in the scripts'
// batch form, which decides each alone, in arrival order, exactly as the
// plain form would. A bad request in a batch fails alone; a Redis that
// does not answer fails the whole batch.

// Batch bounds, the scripts' own caps for one batch call: requests and keys,
// and for sliding_window_log, whose work grows with the units it adds, at
// most maxLogBatchKeys limits and maxLogCost units (cost * keys) in all.
const (
	maxInFlight     = 4  // calls of one lane at once: one is decided while others travel
	maxBatch        = 32 // requests per batch call
	maxBatchKeys    = 32 // keys per batch call
	maxLogBatchKeys = 16
)

// WithBatching turns coalesced batches on or off. The default value is on:
// it changes no decision, only how many script calls carry them.
func WithBatching(on bool) Option {
	return func(l *Limiter) { l.batching = on }
}

// lane is what may share one batch call: one script, and in Redis Cluster
// one hash slot.
type lane struct {
	script *loadedScript
	slot   uint16
}

// batcher queues the calls of each lane while one of that lane is in flight.
type batcher struct {
	client  rueidis.Client
	cluster bool
	mu      sync.Mutex
	lanes   map[lane]*laneState
}

type laneState struct {
	inFlight int       // calls of the lane in flight
	queue    []*waiter // calls to send when it returns
}

// waiter is one decision waiting for a batch call.
type waiter struct {
	ctx        context.Context
	keys, args []string
	gone       atomic.Bool // its caller stopped waiting: leave it out if not sent yet
	done       chan struct{}
	res        Result
	err        error
}

func newBatcher(client rueidis.Client) *batcher {
	return &batcher{client: client, cluster: client.Mode() == rueidis.ClientModeCluster, lanes: map[lane]*laneState{}}
}

// do decides one call: at once when its lane is idle, else in the next batch.
func (b *batcher) do(ctx context.Context, script *loadedScript, keys, args []string) (Result, error) {
	ln := lane{script: script}
	if b.cluster {
		ln.slot = keySlot(keys[0])
	}
	b.mu.Lock()
	st := b.lanes[ln]
	if st == nil {
		st = &laneState{}
		b.lanes[ln] = st
	}
	if st.inFlight == 0 {
		st.inFlight++
		b.mu.Unlock()
		res, err := evalOne(ctx, b.client, script, keys, args)
		b.next(ln, st)
		return res, err
	}
	w := &waiter{ctx: ctx, keys: keys, args: args, done: make(chan struct{})}
	st.queue = append(st.queue, w)
	lead := st.inFlight < maxInFlight && len(st.queue) == 1
	if lead {
		st.inFlight++
	}
	b.mu.Unlock()
	if lead {
		b.gather(st)
		b.next(ln, st)
	}
	select {
	case <-w.done:
		return w.res, w.err
	case <-ctx.Done():
		w.gone.Store(true) // if already sent, its decision stands unseen: the safe side
		return Result{}, ctx.Err()
	}
}

// maxYields bounds how often a call that found a free slot yields for others
// to join it.
const maxYields = 3

// gather yields while callers keep joining the queue of st, at most
// maxYields times: a call that found a slot free goes at once, but together
// with the goroutines that are about to call (typically the callers a
// returning batch just answered), instead of alone ahead of them.
func (b *batcher) gather(st *laneState) {
	n := 1
	for range maxYields {
		runtime.Gosched()
		b.mu.Lock()
		joined := len(st.queue) > n
		n = len(st.queue)
		b.mu.Unlock()
		if !joined {
			return
		}
	}
}

// next sends what queued while a call of the lane was in flight, on a
// goroutine of its own so the caller that finished gets its answer now, or
// marks the lane idle.
func (b *batcher) next(ln lane, st *laneState) {
	b.mu.Lock()
	if len(st.queue) == 0 {
		st.inFlight--
		b.mu.Unlock()
		return
	}
	keyCap, unitCap := maxBatchKeys, 0 // 0: no cap on units
	if ln.script.Name == SlidingWindowLog.String() {
		keyCap, unitCap = maxLogBatchKeys, maxLogCost
	}
	n, nkeys, units := 0, 0, 0
	for n < len(st.queue) && n < maxBatch {
		w := st.queue[n]
		u := w.units()
		if nkeys+len(w.keys) > keyCap || (unitCap > 0 && units+u > unitCap) {
			break
		}
		nkeys += len(w.keys)
		units += u
		n++
	}
	if n == 0 {
		n = 1 // a request over the caps alone: the script names its fault
	}
	batch := st.queue[:n:n]
	st.queue = append([]*waiter(nil), st.queue[n:]...)
	b.mu.Unlock()
	go func() {
		b.send(ln.script, batch)
		b.next(ln, st)
	}()
}

// send decides batch and hands each waiter its answer. Runs of waiters with
// the same now_ms go as one call each.
func (b *batcher) send(script *loadedScript, batch []*waiter) {
	live := batch[:0:0]
	for _, w := range batch {
		if !w.gone.Load() {
			live = append(live, w)
		}
	}
	for len(live) > 0 {
		now := nowArg(live[0])
		n := 1
		for n < len(live) && nowArg(live[n]) == now {
			n++
		}
		run := live[:n]
		live = live[n:]
		if len(run) == 1 {
			w := run[0]
			w.res, w.err = evalOne(w.ctx, b.client, script, w.keys, w.args)
			close(w.done)
			continue
		}
		b.sendRun(script, now, run)
	}
}

// sendRun sends waiters that share now as one batch call.
func (b *batcher) sendRun(script *loadedScript, now string, run []*waiter) {
	keys, args := batchCall(now, run)
	ctx, cancel := batchContext(run)
	defer cancel()
	arr, err := retry(ctx, func() ([]rueidis.RedisMessage, error) {
		return script.lua.Exec(ctx, b.client, keys, args).ToArray()
	})
	i := 0
	for j, w := range run {
		switch {
		case err != nil:
			w.err = err
		case i >= len(arr):
			w.err = ErrInvalidResponse
		case arr[i].Error() != nil:
			w.err = arr[i].Error()
			i++
		default:
			var n int
			w.res, n, w.err = batchReply(run[:j], arr[i:])
			i += n
		}
		close(w.done)
	}
}

// batchCall returns the KEYS and ARGV of one batch call deciding run at
// now: the batch1 form, one limit per request and no headers, when every
// request is usual, else the batch form.
func batchCall(now string, run []*waiter) (keys, args []string) {
	form := "batch1"
	for _, w := range run {
		if !w.usual() {
			form = "batch"
			break
		}
	}
	args = []string{form, now}
	var sb strings.Builder
	for _, w := range run {
		nk := len(w.keys)
		keys = append(keys, w.keys...)
		if form == "batch1" {
			args = append(args, w.args[0])
			continue
		}
		cost, m := "1", ""
		if len(w.args) > nk {
			cost = w.args[nk]
		}
		if len(w.args) > nk+2 {
			m = w.args[nk+2]
		}
		sb.Reset()
		sb.WriteString(itoa(int64(nk)))
		sb.WriteByte(' ')
		sb.WriteString(cost)
		if m != "" {
			sb.WriteByte(' ')
			sb.WriteString(m)
		}
		args = append(args, sb.String())
		args = append(args, w.args[:nk]...)
	}
	return keys, args
}

// batchReply reads the reply at the head of arr for the request after
// earlier, and how many elements it took: its 7 integers, or -j, the same
// reply as request j's (one of earlier, which have their results already).
func batchReply(earlier []*waiter, arr []rueidis.RedisMessage) (Result, int, error) {
	first, err := arr[0].AsInt64()
	switch {
	case err == nil && first < 0:
		if -first > int64(len(earlier)) || earlier[-first-1].err != nil {
			return Result{}, 1, ErrInvalidResponse
		}
		return earlier[-first-1].res, 1, nil
	case err != nil || len(arr) < replyLen:
		return Result{}, replyLen, ErrInvalidResponse
	}
	res, err := parseInts(arr[:replyLen])
	return res, replyLen, err
}

// usual reports whether w is the usual request, one key taken at cost 1
// (on the server clock or its own), which the batch1 form sends as its limit
// alone.
func (w *waiter) usual() bool {
	return len(w.keys) == 1 && (len(w.args) == 1 || len(w.args) == 3 && w.args[1] == "1")
}

// units is what a waiter adds to a batch: its cost times its keys.
func (w *waiter) units() int {
	cost := 1
	if nk := len(w.keys); len(w.args) > nk {
		cost, _ = strconv.Atoi(w.args[nk])
	}
	return cost * len(w.keys)
}

// nowArg is a waiter's now_ms argument: "" for the server clock.
func nowArg(w *waiter) string {
	if i := len(w.keys) + 1; i < len(w.args) {
		return w.args[i]
	}
	return ""
}

// batchContext is the context of a batch call: cancelled by none of its
// callers, with the latest of their deadlines (none if one has none).
func batchContext(run []*waiter) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, w := range run {
		d, ok := w.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.WithoutCancel(w.ctx))
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(run[0].ctx), latest)
}

// evalOne runs one decision in the plain form.
func evalOne(ctx context.Context, client rueidis.Client, script *loadedScript, keys, args []string) (Result, error) {
	msg, err := retry(ctx, func() (rueidis.RedisMessage, error) {
		return script.lua.Exec(ctx, client, keys, args).ToMessage()
	})
	if err != nil {
		return Result{}, err
	}
	return parseResult(msg)
}

// retryBackoff is the first wait before a call refused with TRYAGAIN or
// CLUSTERDOWN is sent again; it doubles per try, within the context's
// deadline and at most retryTries times.
const (
	retryBackoff = 10 * time.Millisecond
	retryTries   = 6
)

// retry runs call again while Redis answers TRYAGAIN (a slot is migrating) or
// CLUSTERDOWN (the cluster is failing over): a script refused with these did
// not run, so sending it again cannot count a decision twice.
func retry[T any](ctx context.Context, call func() (T, error)) (T, error) {
	wait := retryBackoff
	for try := 1; ; try++ {
		v, err := call()
		if err == nil || try == retryTries || !retryable(err) {
			return v, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		wait *= 2
	}
}

func retryable(err error) bool {
	redisErr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return false
	}
	msg := redisErr.Error()
	return strings.HasPrefix(msg, "TRYAGAIN") || strings.HasPrefix(msg, "CLUSTERDOWN")
}

// keySlot is the Redis Cluster hash slot of key: CRC16 of its {hash tag}.
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}
