package luarate

import (
	"math/big"
	"slices"
	"sort"
)

// Reference models: each algorithm written from its textbook definition in
// plain Go, independent of the Lua (exact rationals where the scripts use
// integer units, a plain list where the script uses a sorted set). The
// differential tests hold the scripts to them.

// params is one limit as the scripts take it; burst 0 means rate.
type params struct{ rate, period, burst int64 }

func (p params) capacity() int64 {
	if p.burst == 0 {
		return p.rate
	}
	return p.burst
}

// reply is a script reply: {allowed, limit, remaining, reset_after_ms,
// retry_after_ms, delay_ms, granted}.
type reply [7]int64

// limitModel is one limit's state. decide answers a take of cost at now (ms)
// and returns how to apply it; it applies nothing itself. refund gives up to
// cost back at now and applies it at once, returning the units given back;
// locked says whether the key holds a lock, which keeps a state the script
// would otherwise delete.
type limitModel interface {
	decide(cost, now int64) (reply, func())
	refund(cost, now int64, locked bool) int64
}

func newModel(algo Algorithm, p params) limitModel {
	switch algo {
	case FixedWindow:
		return &fixedWindowModel{p: p}
	case TokenBucket:
		return &tokenBucketModel{p: p}
	case GCRA:
		return &gcraModel{p: p}
	case SlidingWindowLog:
		return &slidingLogModel{p: p}
	case SlidingWindowCounter:
		return &slidingCounterModel{p: p}
	case LeakyBucket:
		return &leakyBucketModel{p: p}
	case LeakyQueue:
		return &leakyQueueModel{p: p}
	}
	panic("no model for " + algo.String())
}

// multiModel is N limits checked all-or-nothing; the reply is the tightest:
// the denying limit with the longest retry, else the fewest remaining.
// lockout[i] (ms, 0 = none) locks limit i until locks[i] once a take is
// denied by it.
type multiModel struct {
	algo    Algorithm
	params  []params
	limits  []limitModel
	lockout []int64
	locks   []int64
}

func newMultiModel(algo Algorithm, ps []params) *multiModel {
	m := &multiModel{algo: algo, params: ps, lockout: make([]int64, len(ps)), locks: make([]int64, len(ps))}
	for _, p := range ps {
		m.limits = append(m.limits, newModel(algo, p))
	}
	return m
}

// reset forgets limit i's state and lock, as a deleted or expired key does.
func (m *multiModel) reset(i int) {
	m.limits[i] = newModel(m.algo, m.params[i])
	m.locks[i] = 0
}

// withLock turns a limit's reply r into what a lock until lock gives at now:
// denied for the rest of the lock, or longer if r would still be denied then.
// A locked request takes nothing, so the reset is the peek's.
func withLock(l limitModel, r reply, lock, now int64) reply {
	if lock <= now {
		return r
	}
	wait := lock - now
	retry := wait
	if r[0] == 0 {
		retry = max(r[4], wait)
	}
	p, _ := l.decide(0, now)
	return reply{0, r[1], 0, max(p[3], wait), retry, 0, 0}
}

// peek is limit i's reply to a peek, lock included.
func (m *multiModel) peek(i int, now int64) reply {
	r, _ := m.limits[i].decide(0, now)
	return withLock(m.limits[i], r, m.locks[i], now)
}

// decide is a take of cost: the reply and each limit's own reply.
func (m *multiModel) decide(cost, now int64) (reply, []reply) {
	best, each, _ := m.decideMode("take", cost, now)
	return best, each
}

// decideMode answers a call in mode take, atmost or refund, applies it, and
// returns the reply, each limit's own reply and which limits' keys it wrote.
func (m *multiModel) decideMode(mode string, cost, now int64) (reply, []reply, []bool) {
	n := len(m.limits)
	wrote := make([]bool, n)
	given := make([]int64, n)
	take := cost
	switch {
	case mode == "refund":
		take = 0
		for i, l := range m.limits {
			given[i] = l.refund(cost, now, m.locks[i] > now)
			wrote[i] = given[i] > 0
		}
	case mode == "atmost" && cost > 0:
		for i := range m.limits {
			if m.locks[i] > now {
				take = 0
			} else {
				r, _ := m.limits[i].decide(0, now)
				take = min(take, r[2])
			}
		}
		if take <= 0 {
			take = 1 // grants nothing: the denied take of one unit
		}
	}
	var best reply
	each := make([]reply, n)
	commits := make([]func(), n)
	for i, l := range m.limits {
		r, commit := l.decide(take, now)
		if r[0] == 0 && take > 0 && m.lockout[i] > 0 && m.locks[i] <= now {
			m.locks[i] = now + m.lockout[i]
			wrote[i] = true
			// the script writes the state as of now along with the lock (the
			// log only adds the lock): what a peek would commit
			if _, c := l.decide(0, now); c != nil && m.algo != SlidingWindowLog {
				c()
			}
		}
		r = withLock(l, r, m.locks[i], now)
		if mode == "refund" {
			r[6] = given[i]
		}
		each[i], commits[i] = r, commit
		if i == 0 ||
			(r[0] == 0 && (best[0] == 1 || r[4] > best[4])) ||
			(r[0] == best[0] && r[0] == 1 && r[2] < best[2]) {
			best = r
		}
	}
	if best[0] == 1 && m.algo == LeakyQueue {
		for _, r := range each { // the request waits for its slot in every queue
			best[5] = max(best[5], r[5])
		}
	}
	if best[0] == 1 && take > 0 {
		for i, c := range commits {
			c()
			wrote[i] = true
		}
	}
	for i := range wrote {
		if wrote[i] && m.locks[i] <= now {
			m.locks[i] = 0 // a write drops a lock that has ended
		}
	}
	return best, each, wrote
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ceilDiv and floorDiv for b > 0 and any a.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

func ratFloor(r *big.Rat) int64 {
	q := new(big.Int).Div(r.Num(), r.Denom()) // Euclidean: floor for a positive denominator
	return q.Int64()
}

func ratCeil(r *big.Rat) int64 { return -ratFloor(new(big.Rat).Neg(r)) }

// ---- fixed window: count per epoch-aligned window of period ms.

type fixedWindowModel struct {
	p            params
	count, start int64
	seen         bool
}

func (m *fixedWindowModel) decide(cost, now int64) (reply, func()) {
	count, start := int64(0), now-now%m.p.period
	if m.seen && m.start >= start { // a later window if the clock went back
		count, start = m.count, m.start
	}
	rest := start + m.p.period - now
	// a window that counts nothing is full: nothing to wait for (v3)
	reset := func(count int64) int64 { return rest * b2i(count > 0) }
	if count+cost <= m.p.rate {
		return reply{1, m.p.rate, m.p.rate - count - cost, reset(count + cost), 0, 0, cost},
			func() { m.count, m.start, m.seen = count+cost, start, true }
	}
	return reply{0, m.p.rate, max(m.p.rate-count, 0), reset(count), rest, 0, 0}, nil
}

// ---- token bucket: a real-valued token count, refilled at rate/period per ms.

type tokenBucketModel struct {
	p       params
	tokens  *big.Rat // nil = full
	updated int64
}

func (m *tokenBucketModel) decide(cost, now int64) (reply, func()) {
	capa := big.NewRat(m.p.capacity(), 1)
	perMS := big.NewRat(m.p.rate, m.p.period)
	tokens, updated := capa, now
	if m.tokens != nil {
		tokens, updated = m.tokens, m.updated
		if now > updated {
			tokens = new(big.Rat).Add(tokens, new(big.Rat).Mul(big.NewRat(now-updated, 1), perMS))
			if tokens.Cmp(capa) > 0 {
				tokens = capa
			}
			updated = now
		}
	}
	lag := updated - now
	msFromTo := func(from, to *big.Rat) int64 { // ms of refill from one level to another
		d := new(big.Rat).Sub(to, from)
		return lag + ratCeil(d.Quo(d, perMS))
	}
	c := big.NewRat(cost, 1)
	if tokens.Cmp(c) >= 0 {
		left := new(big.Rat).Sub(tokens, c)
		return reply{1, m.p.capacity(), ratFloor(left), msFromTo(left, capa), 0, 0, cost},
			func() { m.tokens, m.updated = left, updated }
	}
	return reply{0, m.p.capacity(), ratFloor(tokens), msFromTo(tokens, capa), msFromTo(tokens, c), 0, 0}, nil
}

// ---- GCRA: virtual scheduling with emission interval T (us, rounded up)
// and tolerance tau = burst*T.

type gcraModel struct {
	p   params
	tat int64 // us; 0 = never seen
}

func (m *gcraModel) decide(cost, now int64) (reply, func()) {
	t := ceilDiv(m.p.period*1000, m.p.rate)
	tau := m.p.capacity() * t
	nowUS := now * 1000
	tat := max(m.tat, nowUS)
	newTAT := tat + cost*t
	if newTAT-tau <= nowUS {
		return reply{1, m.p.capacity(), floorDiv(nowUS-(newTAT-tau), t), ceilDiv(newTAT-nowUS, 1000), 0, 0, cost},
			func() { m.tat = newTAT }
	}
	return reply{0, m.p.capacity(), max(floorDiv(nowUS+tau-tat, t), 0), ceilDiv(tat-nowUS, 1000),
		ceilDiv(newTAT-tau-nowUS, 1000), 0, 0}, nil
}

// ---- sliding window log: the list of admitted units' times (us); one at e
// counts while now < e + period.

type slidingLogModel struct {
	p   params
	log []int64
}

func (m *slidingLogModel) decide(cost, now int64) (reply, func()) {
	span, nowUS := m.p.period*1000, now*1000
	var in, out []int64 // in the window, and left it
	for _, e := range m.log {
		if e > nowUS-span {
			in = append(in, e)
		} else {
			out = append(out, e)
		}
	}
	sort.Slice(in, func(i, j int) bool { return in[i] < in[j] })
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	count := int64(len(in))
	var reset int64 // until the newest entry leaves
	if count > 0 {
		reset = ceilDiv(in[count-1]+span-nowUS, 1000)
	}
	if count+cost <= m.p.rate {
		at := nowUS
		if count > 0 {
			at = max(at, in[count-1]) // never before an entry already logged
		}
		if cost > 0 {
			reset = ceilDiv(at+span-nowUS, 1000)
		}
		return reply{1, m.p.rate, m.p.rate - count - cost, reset, 0, 0, cost}, func() {
			// v3's work per call is bounded: an admission of cost removes at
			// most cost of the entries that left the window, oldest first; the
			// rest count again if the clock goes back before them
			m.log = append(out[min(cost, int64(len(out))):], in...)
			for range cost {
				m.log = append(m.log, at)
			}
		}
	}
	blocking := in[count+cost-m.p.rate-1]
	return reply{0, m.p.rate, max(m.p.rate-count, 0), reset, ceilDiv(blocking+span-nowUS, 1000), 0, 0}, nil
}

// ---- sliding window counter: estimate = current + previous * (period -
// elapsed) / period over epoch-aligned windows, as an exact rational.

type slidingCounterModel struct {
	p                params
	cur, start, prev int64
	seen             bool
}

func (m *slidingCounterModel) decide(cost, now int64) (reply, func()) {
	p := m.p.period
	start, at := now-now%p, now
	var cur, prev int64
	if m.seen {
		switch {
		case m.start >= start: // this window, or a later one if the clock went back
			cur, prev = m.cur, m.prev
			if m.start > start {
				start, at = m.start, m.start
			}
		case m.start+p == start:
			prev = m.cur
		}
	}
	// estimate at instant t >= at (windows roll over as time passes)
	estimate := func(t int64) *big.Rat {
		c, pr, s := cur, prev, start
		if t >= s+2*p {
			return new(big.Rat)
		}
		if t >= s+p {
			c, pr, s = 0, c, s+p
		}
		e := big.NewRat(pr*(s+p-t), p)
		return e.Add(e, big.NewRat(c, 1))
	}
	fits := func(t int64) bool {
		e := estimate(t)
		return e.Add(e, big.NewRat(cost, 1)).Cmp(big.NewRat(m.p.rate, 1)) <= 0
	}
	// back to full when both windows are forgotten
	resetFor := func(c int64) int64 {
		switch {
		case c > 0:
			return start + 2*p - now
		case prev > 0:
			return start + p - now
		}
		return 0
	}
	if fits(at) {
		return reply{1, m.p.rate, m.p.rate - cost - ratCeil(estimate(at)), resetFor(cur + cost), 0, 0, cost},
			func() { m.cur, m.start, m.prev, m.seen = cur+cost, start, prev, true }
	}
	// the first whole ms at which it fits: the estimate never grows with time
	lo, hi := at, start+2*p
	for lo < hi {
		mid := lo + (hi-lo)/2
		if fits(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return reply{0, m.p.rate, max(m.p.rate-ratCeil(estimate(at)), 0), resetFor(cur), lo - now, 0, 0}, nil
}

// ---- leaky bucket (meter): a real-valued level draining at rate/period per ms.

type leakyBucketModel struct {
	p       params
	level   *big.Rat // nil = empty
	updated int64
}

func (m *leakyBucketModel) decide(cost, now int64) (reply, func()) {
	capa := big.NewRat(m.p.capacity(), 1)
	perMS := big.NewRat(m.p.rate, m.p.period)
	level, updated := new(big.Rat), now
	if m.level != nil {
		level, updated = m.level, m.updated
		if now > updated {
			level = new(big.Rat).Sub(level, new(big.Rat).Mul(big.NewRat(now-updated, 1), perMS))
			if level.Sign() < 0 {
				level = new(big.Rat)
			}
			updated = now
		}
	}
	lag := updated - now
	drainMS := func(amount *big.Rat) int64 { // ms to drain amount
		return lag + ratCeil(new(big.Rat).Quo(amount, perMS))
	}
	after := new(big.Rat).Add(level, big.NewRat(cost, 1))
	if after.Cmp(capa) <= 0 {
		return reply{1, m.p.capacity(), ratFloor(new(big.Rat).Sub(capa, after)), drainMS(after), 0, 0, cost},
			func() { m.level, m.updated = after, updated }
	}
	return reply{0, m.p.capacity(), ratFloor(new(big.Rat).Sub(capa, level)), drainMS(level),
		drainMS(new(big.Rat).Sub(after, capa)), 0, 0}, nil
}

// ---- refunds: give back up to cost, never beyond full.

func (m *fixedWindowModel) refund(cost, now int64, locked bool) int64 {
	count, start := int64(0), now-now%m.p.period
	if m.seen && m.start >= start {
		count, start = m.count, m.start
	}
	given := min(cost, count)
	if given > 0 {
		// an empty window needs no state: the script deletes the key
		m.count, m.start, m.seen = count-given, start, count > given || locked
	}
	return given
}

func (m *tokenBucketModel) refund(cost, now int64, locked bool) int64 {
	if cost == 0 {
		return 0 // nothing to give: the script writes nothing
	}
	if m.tokens == nil {
		return 0
	}
	capa := big.NewRat(m.p.capacity(), 1)
	tokens, updated := m.tokens, m.updated
	if now > updated {
		tokens = new(big.Rat).Add(tokens, new(big.Rat).Mul(big.NewRat(now-updated, 1), big.NewRat(m.p.rate, m.p.period)))
		if tokens.Cmp(capa) > 0 {
			tokens = capa
		}
		updated = now
	}
	back := new(big.Rat).Sub(capa, tokens)
	if back.Sign() <= 0 {
		return 0
	}
	if back.Cmp(big.NewRat(cost, 1)) > 0 {
		back = big.NewRat(cost, 1)
	}
	m.tokens, m.updated = new(big.Rat).Add(tokens, back), updated
	if m.tokens.Cmp(capa) == 0 && updated <= now && !locked {
		m.tokens = nil // full: the script deletes the key
	}
	return ratCeil(back)
}

func (m *gcraModel) refund(cost, now int64, locked bool) int64 {
	t := ceilDiv(m.p.period*1000, m.p.rate)
	nowUS := now * 1000
	tat := max(m.tat, nowUS)
	if tat <= nowUS {
		return 0
	}
	back := max(tat-cost*t, nowUS)
	m.tat = back
	if back == nowUS && !locked {
		m.tat = 0 // full: the script deletes the key
	}
	return ceilDiv(tat-back, t)
}

func (m *slidingLogModel) refund(cost, now int64, locked bool) int64 {
	span, nowUS := m.p.period*1000, now*1000
	var in []int64
	for _, e := range m.log {
		if e > nowUS-span {
			in = append(in, e)
		}
	}
	sort.Slice(in, func(i, j int) bool { return in[i] < in[j] })
	given := min(cost, int64(len(in)))
	if given > 0 {
		// the newest entries go; older ones stay (the clock may go back)
		log := slices.Clone(m.log)
		slices.Sort(log)
		m.log = log[:int64(len(log))-given]
	}
	return given
}

func (m *slidingCounterModel) refund(cost, now int64, locked bool) int64 {
	p := m.p.period
	start := now - now%p
	var cur, prev int64
	if m.seen {
		switch {
		case m.start >= start:
			cur, prev = m.cur, m.prev
			start = m.start
		case m.start+p == start:
			prev = m.cur
		}
	}
	fromCur := min(cost, cur)
	fromPrev := min(cost-fromCur, prev)
	if fromCur+fromPrev > 0 {
		// both windows empty need no state: the script deletes the key
		m.cur, m.start, m.prev = cur-fromCur, start, prev-fromPrev
		m.seen = m.cur+m.prev > 0 || locked
	}
	return fromCur + fromPrev
}

func (m *leakyBucketModel) refund(cost, now int64, locked bool) int64 {
	if cost == 0 {
		return 0 // nothing to give: the script writes nothing
	}
	if m.level == nil {
		return 0
	}
	level, updated := m.level, m.updated
	if now > updated {
		level = new(big.Rat).Sub(level, new(big.Rat).Mul(big.NewRat(now-updated, 1), big.NewRat(m.p.rate, m.p.period)))
		if level.Sign() < 0 {
			level = new(big.Rat)
		}
		updated = now
	}
	if level.Sign() <= 0 {
		return 0
	}
	out := level
	if out.Cmp(big.NewRat(cost, 1)) > 0 {
		out = big.NewRat(cost, 1)
	}
	m.level, m.updated = new(big.Rat).Sub(level, out), updated
	if m.level.Sign() == 0 && updated <= now && !locked {
		m.level = nil // empty: the script deletes the key
	}
	return ratCeil(out)
}

// ---- leaky queue (shaping): a schedule of departures. Admitted places leave
// one every T = period/rate ms, in order of arrival; next is the exact time
// the queue is empty (the next free departure). A request waits for the
// places ahead of it; it fits if those plus its cost are at most burst.

// refund is not offered by leaky_queue (admitted requests hold their slots):
// the differential test never asks for it.
func (m *leakyQueueModel) refund(int64, int64, bool) int64 { panic("leaky_queue takes no refunds") }

type leakyQueueModel struct {
	p       params
	next    *big.Rat // nil = never seen (empty)
	updated int64    // the latest time a request was admitted: the queue is measured from there
}

func (m *leakyQueueModel) decide(cost, now int64) (reply, func()) {
	t := big.NewRat(m.p.period, m.p.rate)
	from := now // the queue does not drain before the latest admission
	next := big.NewRat(now, 1)
	if m.next != nil {
		from = max(now, m.updated)
		next = m.next
	}
	start := new(big.Rat).Set(next) // when the first place of this request leaves
	if start.Cmp(big.NewRat(from, 1)) < 0 {
		start = big.NewRat(from, 1)
	}
	ahead := new(big.Rat).Quo(new(big.Rat).Sub(start, big.NewRat(from, 1)), t) // places queued
	free := new(big.Rat).Sub(big.NewRat(m.p.capacity(), 1), ahead)
	if free.Sign() < 0 {
		free = new(big.Rat)
	}
	msUntil := func(at *big.Rat) int64 { return ratCeil(new(big.Rat).Sub(at, big.NewRat(now, 1))) }
	c := big.NewRat(cost, 1)
	if c.Cmp(free) <= 0 {
		end := new(big.Rat).Add(start, new(big.Rat).Mul(c, t))
		return reply{1, m.p.capacity(), ratFloor(new(big.Rat).Sub(free, c)), msUntil(end), 0, msUntil(start), cost},
			func() { m.next, m.updated = end, from }
	}
	// it fits once the queue has shrunk to burst - cost places
	fitsAt := new(big.Rat).Sub(start, new(big.Rat).Mul(new(big.Rat).Sub(big.NewRat(m.p.capacity(), 1), c), t))
	return reply{0, m.p.capacity(), ratFloor(free), msUntil(start), msUntil(fitsAt), 0}, nil
}
