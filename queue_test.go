package luarate

import (
	"context"
	"errors"
	"math/big"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLeakyQueueDepartures holds the queue to its promises over random
// traffic (clock forward, still and back) for every property limit: the
// admitted leave in order of arrival and never faster than Rate (between two
// departures d_i <= d_j, the cost that left from d_i on, before d_j, is less
// than Rate per Period over d_j - d_i + 1 ms: delays round up to whole ms),
// no delay is negative, a delay never exceeds the queue, (Burst - cost) *
// Period/Rate rounded up, and a denied request changes nothing.
func TestLeakyQueueDepartures(t *testing.T) {
	t.Parallel()
	steps := 60 * fuzzScale()
	eachBackend(t, func(t *testing.T, b backend) {
		seed := time.Now().UnixNano()
		r := rand.New(rand.NewSource(seed))
		defer func() {
			if t.Failed() {
				t.Logf("seed %d", seed)
			}
		}()
		for li, lim := range propertyLimits(LeakyQueue) {
			key := "q" + itoa(int64(li))
			require.NoError(t, b.client.Do(context.Background(), b.client.B().ScriptLoad().Script(scripts["leaky_queue"].Source).Build()).Error())
			s := &scriptClock{t: t, b: b, lim: lim, key: key, now: 1_700_000_000_000 + r.Int63n(1e9)}
			p, rate, capa := lim.Period.Milliseconds(), int64(lim.Rate), int64(lim.Capacity())
			type departure struct{ at, cost int64 }
			var deps []departure
			latest := s.now // the latest time seen: delays are bounded only when the clock did not go back
			for range steps {
				switch k := r.Intn(10); {
				case k < 3:
				case k < 7:
					s.now += r.Int63n(min(max(p*capa/rate/4, 2), 1e9))
				case k < 9:
					s.now += r.Int63n(min(max(p/rate, 2), 1e9))
				default:
					s.now -= r.Int63n(min(p, 1e6))
				}
				n := int64(1)
				if r.Intn(3) == 0 {
					n = 1 + r.Int63n(capa)
				}
				before := snapshot(t, b, []string{key})
				res := s.allowN(int(n))
				require.GreaterOrEqual(t, res.Delay, time.Duration(0))
				if !res.Allowed {
					require.Zero(t, res.Delay, "a denied request has no delay")
					require.Equal(t, before, snapshot(t, b, []string{key}), "a denied request changed the state")
					continue
				}
				delay := res.Delay.Milliseconds()
				if s.now >= latest {
					latest = s.now
					// (capa - n) places of T = p/rate ms each, rounded up
					require.LessOrEqual(t, delay*rate, (capa-n)*p+rate-1, "%v: delay %d for cost %d", lim, delay, n)
				}
				deps = append(deps, departure{s.now + delay, n})
			}
			for i := range deps {
				var cost int64
				for j := i + 1; j < len(deps); j++ {
					cost += deps[j-1].cost
					require.GreaterOrEqual(t, deps[j].at, deps[i].at, "%v: departure %d before %d", lim, j, i)
					span := new(big.Int).Mul(big.NewInt(deps[j].at-deps[i].at+1), big.NewInt(rate))
					sent := new(big.Int).Mul(big.NewInt(cost), big.NewInt(p))
					require.Negative(t, sent.Cmp(span), "%v: cost %d left from %d to before %d: faster than the rate", lim, cost, deps[i].at, deps[j].at)
				}
			}
			require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+key).Build()).Error())
		}
	})
}

// TestWait: Wait returns at the request's turn; a cancelled context ends the
// wait with its error (the place stays taken); a full queue with a deadline
// before its retry time returns at once; a context that already ended takes
// nothing.
func TestWait(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		c := &clock{ms: 1_700_000_000_000}
		l := b.limiter(c)
		limit := Limit{Algorithm: LeakyQueue, Rate: 10, Period: time.Second, Burst: 3} // one every 100 ms

		start := time.Now()
		res, err := l.Wait(ctx, "w", limit)
		require.NoError(t, err)
		require.Equal(t, Result{Allowed: true, Limit: 3, Remaining: 2, ResetAfter: 100 * time.Millisecond, Granted: 1}, res)
		res, err = l.Wait(ctx, "w", limit)
		require.NoError(t, err)
		require.Equal(t, 100*time.Millisecond, res.Delay)
		require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "Wait slept the delay")

		// the third place waits 200 ms; the context ends after 120 (time
		// enough for the Redis call on a loaded machine). The error says
		// Wait returned when the context ended, not after the delay.
		cctx, cancel := context.WithTimeout(ctx, 120*time.Millisecond)
		defer cancel()
		res, err = l.Wait(cctx, "w", limit)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.True(t, res.Allowed, "the place was taken before the context ended")
		require.Equal(t, 200*time.Millisecond, res.Delay)
		peek, err := l.Peek(ctx, "w", limit)
		require.NoError(t, err)
		require.Zero(t, peek.Remaining, "the cancelled request's place is not given back")

		// a full queue: Wait would wait for a place, but not past the deadline
		soon, cancelSoon := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancelSoon()
		res, err = l.Wait(soon, "w", limit)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.False(t, res.Allowed)
		require.Equal(t, 100*time.Millisecond, res.RetryAfter)

		done, cancelNow := context.WithCancel(ctx)
		cancelNow()
		c.add(time.Hour)
		_, err = l.Wait(done, "w", limit)
		require.True(t, errors.Is(err, context.Canceled))
		peek, err = l.Peek(ctx, "w", limit)
		require.NoError(t, err)
		require.Equal(t, int64(3), peek.Remaining, "nothing taken by an ended context")

		// other algorithms have no delay: Wait is Allow
		res, err = l.Wait(ctx, "w", PerSecond(GCRA, 1))
		require.NoError(t, err)
		require.Equal(t, Result{Allowed: true, Limit: 1, Remaining: 0, ResetAfter: time.Second, Granted: 1}, res)
	})
}

// TestWaitBlocks: for every algorithm, Wait sleeps a denied try's
// RetryAfter and tries again until admitted, one Redis call per try. The
// scripts' clock stands still until the first denial and then jumps an hour,
// so exactly two tries are needed whatever the machine's speed; the real
// sleep in between is the first try's RetryAfter.
func TestWaitBlocks(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		for _, algo := range Algorithms() {
			base := time.UnixMilli(1_700_000_000_000) // a window boundary
			var calls atomic.Int64
			frozen := int64(2) // the AllowN that empties the limit and Wait's first try
			l := New(b.client, WithPrefix(b.prefix), WithClock(func() time.Time {
				if calls.Add(1) > frozen {
					return base.Add(time.Hour)
				}
				return base
			}))
			limit := Limit{Algorithm: algo, Rate: 2, Period: 100 * time.Millisecond}
			key := "block-" + algo.String()
			res, err := l.AllowN(ctx, key, limit, 2)
			require.NoError(t, err)
			require.True(t, res.Allowed, algo)

			start := time.Now()
			res, err = l.Wait(ctx, key, limit)
			require.NoError(t, err, algo)
			require.True(t, res.Allowed, algo)
			require.Equal(t, int64(3), calls.Load(), "%s: one denied try, one admitted: no busy loop", algo)
			require.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond, "%s: slept the denied try's RetryAfter", algo)

			// a limit that comes back in an hour: a 10s deadline returns at once
			hourly := Limit{Algorithm: algo, Rate: 1, Period: time.Hour}
			frozen = 1 << 62
			_, err = l.Allow(ctx, key+"-h", hourly)
			require.NoError(t, err)
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err = l.Wait(dctx, key+"-h", hourly)
			require.ErrorIs(t, err, context.DeadlineExceeded, algo)
			require.NoError(t, dctx.Err(), "%s: returned before the deadline, without sleeping", algo)
			require.False(t, res.Allowed)
			require.Positive(t, res.RetryAfter)
			cancel()

			// a cancel during the sleep ends it with ctx's error
			cctx, cancel := context.WithCancel(ctx)
			go func() { time.Sleep(20 * time.Millisecond); cancel() }()
			_, err = l.Wait(cctx, key+"-h", hourly)
			require.ErrorIs(t, err, context.Canceled, algo)

			_, err = l.WaitN(ctx, key, limit, 3)
			require.ErrorIs(t, err, ErrInvalidRequest, "%s: more than the capacity can never be admitted", algo)
		}
	})
}

// TestLeakyQueueMultiDepartures: with several queue limits in one call the
// request waits for its slot in every queue, and the departures then respect
// every limit's rate at once (the slowest schedule leads), as the header
// claims. Time only moves forward here.
func TestLeakyQueueMultiDepartures(t *testing.T) {
	t.Parallel()
	sets := [][]Limit{
		{{Algorithm: LeakyQueue, Rate: 10, Period: time.Second, Burst: 5}, {Algorithm: LeakyQueue, Rate: 30, Period: 10 * time.Second, Burst: 4}},
		{{Algorithm: LeakyQueue, Rate: 7, Period: 3 * time.Second, Burst: 2}, {Algorithm: LeakyQueue, Rate: 3, Period: time.Second, Burst: 9}},
		// seconds, not ms: real Redis expires keys on its own clock, and a
		// state whose TTL is a few ms could vanish between two calls of a
		// slow (CI, -race) run, though the test's clock has barely moved
		{{Algorithm: LeakyQueue, Rate: 5, Period: 7 * time.Second}, {Algorithm: LeakyQueue, Rate: 11, Period: 13 * time.Second, Burst: 3},
			{Algorithm: LeakyQueue, Rate: 2, Period: 3 * time.Second, Burst: 6}},
	}
	eachBackend(t, func(t *testing.T, b backend) {
		seed := time.Now().UnixNano()
		r := rand.New(rand.NewSource(seed))
		defer func() {
			if t.Failed() {
				t.Logf("seed %d", seed)
			}
		}()
		ctx := context.Background()
		for si, limits := range sets {
			c := &clock{ms: 1_700_000_000_000}
			l := b.limiter(c)
			capa := limits[0].Capacity()
			longest := time.Duration(0) // the longest interval Period/Rate
			for _, lim := range limits {
				capa = min(capa, lim.Capacity())
				longest = max(longest, lim.Period/time.Duration(lim.Rate))
			}
			type departure struct{ at, cost int64 }
			var deps []departure
			for range 80 * fuzzScale() {
				if r.Intn(3) > 0 {
					c.add(time.Duration(r.Int63n(int64(2*longest)/int64(time.Millisecond)+1)) * time.Millisecond)
				}
				n := 1 + r.Intn(capa)
				res, err := l.AllowMulti(ctx, "multi"+itoa(int64(si)), n, limits...)
				require.NoError(t, err)
				if res.Allowed {
					deps = append(deps, departure{c.ms + res.Delay.Milliseconds(), int64(n)})
				}
			}
			require.NotEmpty(t, deps)
			for _, lim := range limits {
				p, rate := lim.Period.Milliseconds(), int64(lim.Rate)
				for i := range deps {
					var cost int64
					for j := i + 1; j < len(deps); j++ {
						cost += deps[j-1].cost
						require.GreaterOrEqual(t, deps[j].at, deps[i].at, "departure %d before %d", j, i)
						require.Less(t, cost*p, (deps[j].at-deps[i].at+1)*rate,
							"%v: cost %d left from %d to before %d: faster than its rate", lim, cost, deps[i].at, deps[j].at)
					}
				}
			}
			for _, lim := range limits {
				require.NoError(t, l.Reset(ctx, "multi"+itoa(int64(si)), lim))
			}
		}
	})
}
