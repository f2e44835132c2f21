package luarate

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// countingClient counts the commands a Limiter sends.
type countingClient struct {
	rueidis.Client
	calls atomic.Int64
}

func (c *countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.calls.Add(1)
	return c.Client.Do(ctx, cmd)
}

// countingClient returns a counting client on b with every script already
// loaded, so that each decision is exactly one call (no NOSCRIPT retry).
func (b backend) countingClient(t *testing.T) *countingClient {
	for _, s := range scripts {
		require.NoError(t, b.client.Do(context.Background(), b.client.B().ScriptLoad().Script(s.Source).Build()).Error())
	}
	return &countingClient{Client: b.client}
}

// cachedLimiter returns a Limiter with a deny cache of size on b, and the
// counter of its round trips.
func (b backend) cachedLimiter(t *testing.T, c *clock, size int) (*Limiter, *countingClient) {
	cc := b.countingClient(t)
	return New(cc, WithPrefix(b.prefix), WithClock(c.now), WithDenyCache(size)), cc
}

func TestDenyCacheAnswersDenialsUntilRetry(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, a := range Algorithms() {
			t.Run(a.String(), func(t *testing.T) {
				c := &clock{ms: 1_700_000_000_000}
				l, calls := b.cachedLimiter(t, c, 10)
				ctx := context.Background()
				limit := Limit{Algorithm: a, Rate: 2, Period: time.Second}
				for range 2 {
					res, err := l.Allow(ctx, a.String(), limit)
					require.NoError(t, err)
					require.True(t, res.Allowed)
				}
				denied, err := l.Allow(ctx, a.String(), limit)
				require.NoError(t, err)
				require.False(t, denied.Allowed)
				require.Greater(t, denied.RetryAfter, 10*time.Millisecond)
				require.EqualValues(t, 3, calls.calls.Load())

				c.add(5 * time.Millisecond)
				res, err := l.Allow(ctx, a.String(), limit)
				require.NoError(t, err)
				require.EqualValues(t, 3, calls.calls.Load(), "a covered denial costs no round trip")
				require.False(t, res.Allowed)
				require.Equal(t, denied.RetryAfter-5*time.Millisecond, res.RetryAfter)
				require.Equal(t, denied.Limit, res.Limit)

				res, err = l.AllowN(ctx, a.String(), limit, 2)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.EqualValues(t, 4, calls.calls.Load(), "a larger cost asks Redis: its RetryAfter is its own")
				require.GreaterOrEqual(t, res.RetryAfter, denied.RetryAfter-5*time.Millisecond)

				_, err = l.Peek(ctx, a.String(), limit)
				require.NoError(t, err)
				require.EqualValues(t, 5, calls.calls.Load(), "peeks always ask Redis")

				_, err = l.Allow(ctx, a.String(), Limit{Algorithm: a, Rate: 3, Period: 2 * time.Second})
				require.NoError(t, err)
				require.EqualValues(t, 6, calls.calls.Load(), "another limit of the key is not covered")

				c.add(denied.RetryAfter)
				res, err = l.Allow(ctx, a.String(), limit)
				require.NoError(t, err)
				require.True(t, res.Allowed, "after the retry time Redis decides again")
				require.EqualValues(t, 7, calls.calls.Load())
			})
		}
	})
}

func TestDenyCacheSmallerCostAsksRedis(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, a := range Algorithms() {
			t.Run(a.String(), func(t *testing.T) {
				c := &clock{ms: 1_700_000_000_000}
				l, calls := b.cachedLimiter(t, c, 10)
				ctx := context.Background()
				limit := Limit{Algorithm: a, Rate: 5, Period: time.Minute}
				res, err := l.AllowN(ctx, "k", limit, 3)
				require.NoError(t, err)
				require.True(t, res.Allowed)
				res, err = l.AllowN(ctx, "k", limit, 3)
				require.NoError(t, err)
				require.False(t, res.Allowed, "3 of 5 used, 3 more do not fit")
				res, err = l.AllowN(ctx, "k", limit, 2)
				require.NoError(t, err)
				require.True(t, res.Allowed, "a cost of 2 still fits: the denial of 3 must not answer it")
				require.EqualValues(t, 3, calls.calls.Load())
			})
		}
	})
}

func TestDenyCacheResetClearsIt(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, a := range Algorithms() {
			t.Run(a.String(), func(t *testing.T) {
				c := &clock{ms: 1_700_000_000_000}
				l, _ := b.cachedLimiter(t, c, 10)
				ctx := context.Background()
				second := Limit{Algorithm: a, Rate: 1, Period: time.Second}
				minute := Limit{Algorithm: a, Rate: 1, Period: time.Minute}
				for _, limits := range [][]Limit{{second}, {second, minute}} {
					res, err := l.AllowMulti(ctx, "k", 1, limits...)
					require.NoError(t, err)
					require.True(t, res.Allowed)
					res, err = l.AllowMulti(ctx, "k", 1, limits...)
					require.NoError(t, err)
					require.False(t, res.Allowed)
					// reset the last limit only: the cached multi-limit denial must go too
					for _, lim := range limits {
						require.NoError(t, l.Reset(ctx, "k", lim))
					}
					res, err = l.AllowMulti(ctx, "k", 1, limits...)
					require.NoError(t, err)
					require.True(t, res.Allowed, "after Reset the key is full again")
					for _, lim := range limits {
						require.NoError(t, l.Reset(ctx, "k", lim))
					}
				}
				// a multi-limit denial does not answer a call with fewer limits
				_, err := l.AllowMulti(ctx, "m", 1, minute, second)
				require.NoError(t, err)
				c.add(2 * time.Second) // the sliding counter needs two periods to forget
				res, err := l.AllowMulti(ctx, "m", 1, minute, second)
				require.NoError(t, err)
				require.False(t, res.Allowed, "the minute limit denies")
				res, err = l.Allow(ctx, "m", second)
				require.NoError(t, err)
				require.True(t, res.Allowed, "the second limit alone admits")
			})
		}
	})
}

func TestDenyCacheIsBounded(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := &clock{ms: 1_700_000_000_000}
		l, calls := b.cachedLimiter(t, c, 2)
		ctx := context.Background()
		limit := Limit{Algorithm: GCRA, Rate: 1, Period: time.Minute}
		for _, k := range []string{"a", "b", "c", "a", "b", "c"} {
			_, err := l.Allow(ctx, k, limit)
			require.NoError(t, err)
		}
		require.EqualValues(t, 6, calls.calls.Load())
		require.Equal(t, 2, l.denies.order.Len())
		_, err := l.Allow(ctx, "c", limit) // kept: among the two most recent
		require.NoError(t, err)
		require.EqualValues(t, 6, calls.calls.Load())
		_, err = l.Allow(ctx, "a", limit) // evicted by "c"
		require.NoError(t, err)
		require.EqualValues(t, 7, calls.calls.Load())
	})
}

// TestDenyCacheDecidesTheSame replays one random stream of requests through a
// Limiter with and one without the cache: every decision must match.
func TestDenyCacheDecidesTheSame(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, a := range Algorithms() {
			t.Run(a.String(), func(t *testing.T) {
				c := &clock{ms: 1_700_000_000_000}
				cached, _ := b.cachedLimiter(t, c, 3)
				plainBackend := b
				plainBackend.prefix += "plain:"
				plain := plainBackend.limiter(c)
				ctx := context.Background()
				rng := rand.New(rand.NewPCG(1, uint64(a)))
				// long periods and steps of the test's clock: real Redis expires
				// keys on its own clock, and a stalled run must not see one limiter's
				// state vanish while the other is answered from its cache
				limits := []Limit{{Algorithm: a, Rate: 4, Period: 20 * time.Second}, {Algorithm: a, Rate: 10, Period: 100 * time.Second}}
				for i := range 600 {
					key := "k" + strconv.Itoa(rng.IntN(5))
					n := rng.IntN(4) // 0 = peek
					ls := limits[:1+rng.IntN(2)]
					want, err := plain.AllowMulti(ctx, key, n, ls...)
					require.NoError(t, err)
					got, err := cached.AllowMulti(ctx, key, n, ls...)
					require.NoError(t, err)
					require.Equal(t, want.Allowed, got.Allowed, "request %d", i)
					if !want.Allowed {
						require.LessOrEqual(t, got.RetryAfter, want.RetryAfter, "request %d", i)
					}
					c.add(time.Duration(rng.IntN(15)) * 100 * time.Millisecond)
				}
			})
		}
	})
}

// TestDenyCacheFlood is the deny cache's measurement: 90% of requests come
// from 10 keys that are over their limit. With the cache on, Redis must see at
// least 80% fewer calls. Counted in calls (and, on the Redis the tests
// started, in INFO commandstats), never in time.
func TestDenyCacheFlood(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, a := range Algorithms() {
			t.Run(a.String(), func(t *testing.T) {
				var calls [2]int64
				for i, size := range []int{0, 1000} {
					c := &clock{ms: 1_700_000_040_000} // 20 s before a minute boundary
					cc := b.countingClient(t)
					b := b
					b.prefix += strconv.Itoa(size) + ":"
					l := New(cc, WithPrefix(b.prefix), WithClock(c.now), WithDenyCache(size))
					before := evalshaCalls(t, b)
					denied := flood(t, l, a, c)
					calls[i] = cc.calls.Load()
					require.Greater(t, denied, 3400, "the flood keys must be denied")
					if after := evalshaCalls(t, b); after >= 0 {
						require.Equal(t, calls[i], after-before, "Redis saw every call the client sent")
					}
				}
				drop := 1 - float64(calls[1])/float64(calls[0])
				t.Logf("%s: Redis calls %d without the cache, %d with it: %.1f%% fewer", a, calls[0], calls[1], 100*drop)
				require.GreaterOrEqual(t, drop, 0.80)
			})
		}
	})
}

// flood sends 4000 requests 1 ms apart: 9 in 10 from 10 keys over their limit
// of 10 per minute, the rest from distinct keys. It returns the denials.
func flood(t *testing.T, l *Limiter, a Algorithm, c *clock) int {
	ctx := context.Background()
	limit := PerMinute(a, 10)
	denied := 0
	for i := range 4000 {
		key := "abuser" + strconv.Itoa(i%10)
		if i%10 == 0 {
			key = "user" + strconv.Itoa(i)
		}
		res, err := l.Allow(ctx, key, limit)
		require.NoError(t, err)
		if !res.Allowed {
			denied++
		}
		c.add(time.Millisecond)
	}
	return denied
}

// evalshaCalls reads cmdstat_evalsha's calls from the real Redis the tests
// started, or -1 on miniredis or a Redis shared with others.
func evalshaCalls(t *testing.T, b backend) int64 {
	if b.mini != nil || !realStarted {
		return -1
	}
	info, err := b.client.Do(context.Background(), b.client.B().Info().Section("commandstats").Build()).ToString()
	require.NoError(t, err)
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, err := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	return 0
}

// TestDenyCacheSkipsLockouts: a limit with a Lockout is re-locked by the
// next denial once its lock ends while the request still does not fit; a
// cached answer would not re-lock it. GCRA 1 per 10s, locked 1s when denied:
// the denial at 9.95s starts a new lock that still holds at 10.5s.
func TestDenyCacheSkipsLockouts(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		limit := Limit{Algorithm: GCRA, Rate: 1, Period: 10 * time.Second, Lockout: time.Second}
		for _, size := range []int{0, 100} {
			c := &clock{ms: 1_700_000_000_000}
			l, _ := b.cachedLimiter(t, c, size)
			key := "locked" + strconv.Itoa(size)
			steps := []struct {
				at      time.Duration
				allowed bool
			}{{0, true}, {100 * time.Millisecond, false}, {9950 * time.Millisecond, false}, {10500 * time.Millisecond, false}, {10950 * time.Millisecond, true}}
			start := c.ms
			for _, s := range steps {
				c.ms = start + s.at.Milliseconds()
				res, err := l.Allow(ctx, key, limit)
				require.NoError(t, err)
				require.Equal(t, s.allowed, res.Allowed, "cache size %d, at %v", size, s.at)
			}
		}
	})
}

// TestDenyCacheDropsDenialsOvertakenByForget: a denial decided before a
// Reset or Refund of its key, but remembered after it, is stale.
func TestDenyCacheDropsDenialsOvertakenByForget(t *testing.T) {
	c := newDenyCache(10)
	limits := []Limit{PerSecond(GCRA, 1)}
	now := time.Now()
	denied := Result{Limit: 1, RetryAfter: time.Second, ResetAfter: time.Second}

	gen := c.generation() // the request is sent
	c.forget("rl:{k}:g2:1000")
	c.remember("rl:{k}:g2:1000", limits, 1, now, gen, denied) // its denial arrives after the forget
	_, ok := c.lookup("rl:{k}:g2:1000", limits, 1, now)
	require.False(t, ok, "a denial from before the forget must not be answered")

	c.remember("rl:{k}:g2:1000", limits, 1, now, c.generation(), denied)
	_, ok = c.lookup("rl:{k}:g2:1000", limits, 1, now)
	require.True(t, ok)
}
