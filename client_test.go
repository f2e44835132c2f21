package luarate

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

func TestAllowBurstThenDeny(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				clk := &clock{ms: 1_700_000_000_000} // a whole second: windows start here
				l := b.limiter(clk)
				limit := PerSecond(algo, 5)
				for i := 1; i <= 5; i++ {
					res, err := l.Allow(ctx, "burst", limit)
					require.NoError(t, err)
					require.Equal(t, Result{Allowed: true, Limit: 5, Remaining: int64(5 - i),
						ResetAfter: time.Duration(i) * 200 * time.Millisecond, RetryAfter: 0, Granted: 1}.normalized(algo), res, "request %d", i)
				}
				res, err := l.Allow(ctx, "burst", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, int64(0), res.Remaining)
				switch algo {
				case FixedWindow, SlidingWindowLog:
					require.Equal(t, time.Second, res.RetryAfter, "a window waits for its end, the log for its oldest entry")
				case SlidingWindowCounter:
					// 5 in the previous window weigh 5*(1-x) at x into the next: room for 1 at x = 0.2
					require.Equal(t, 1200*time.Millisecond, res.RetryAfter)
				default:
					require.Equal(t, 200*time.Millisecond, res.RetryAfter, "a smooth limiter waits one interval")
				}

				// waiting exactly RetryAfter is enough
				clk.add(res.RetryAfter)
				res, err = l.Allow(ctx, "burst", limit)
				require.NoError(t, err)
				require.True(t, res.Allowed)

				// other keys are independent
				res, err = l.Allow(ctx, "someone-else", limit)
				require.NoError(t, err)
				require.Equal(t, int64(4), res.Remaining)
			})
		}
	})
}

// normalized fills in what window algorithms report differently: their reset
// is when the window (or the newest log entry) stops counting, not a refill.
func (r Result) normalized(algo Algorithm) Result {
	switch algo {
	case FixedWindow, SlidingWindowLog:
		r.ResetAfter = time.Second
	case SlidingWindowCounter:
		r.ResetAfter = 2 * time.Second // the current window still weighs on the next
	case LeakyQueue:
		// an admitted request leaves one interval (5 per second: 200 ms)
		// before the queue is empty
		r.Delay = r.ResetAfter - 200*time.Millisecond
	}
	return r
}

func TestPeekAndReset(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				l := b.limiter(&clock{ms: 1_700_000_000_000})
				limit := PerMinute(algo, 10)

				res, err := l.Peek(ctx, "k", limit)
				require.NoError(t, err)
				// full: nothing to wait for, so reset_after is 0 for every script
				full := Result{Allowed: true, Limit: 10, Remaining: 10}
				require.Equal(t, full, res)
				require.Empty(t, b.keys(t), "a peek writes nothing")

				_, err = l.AllowN(ctx, "k", limit, 7)
				require.NoError(t, err)
				res, err = l.Peek(ctx, "k", limit)
				require.NoError(t, err)
				require.Equal(t, int64(3), res.Remaining)
				res2, err := l.Peek(ctx, "k", limit)
				require.NoError(t, err)
				require.Equal(t, res, res2, "peeking twice changes nothing")

				require.NoError(t, l.Reset(ctx, "k", limit))
				res, err = l.Peek(ctx, "k", limit)
				require.NoError(t, err)
				require.Equal(t, full, res, "full again after a reset")
				require.Empty(t, b.keys(t))
			})
		}
	})
}

func TestEveryWrittenKeyHasATTL(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				b.prefix += algo.String() + ":"
				l := b.limiter(&clock{ms: 1_700_000_000_250})
				res, err := l.AllowN(ctx, "ttl", PerHour(algo, 100), 3)
				require.NoError(t, err)
				keys := b.keys(t)
				require.Len(t, keys, 1)
				pttl := b.pttl(t, keys[0])
				// the TTL is the time the state matters: until full again, or
				// until the window ends
				require.LessOrEqual(t, pttl, res.ResetAfter+time.Duration(ttlSlack(algo.String()))*time.Millisecond)
				require.Greater(t, pttl, res.ResetAfter-time.Second)
			})
		}
	})
}

func TestDeniedRequestsDoNotExtendTheTTL(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				b.prefix += algo.String() + ":"
				clk := &clock{ms: 1_700_000_000_000}
				l := b.limiter(clk)
				limit := PerMinute(algo, 2) // a TTL that real Redis cannot reach mid-test
				_, err := l.AllowN(ctx, "hammer", limit, 2)
				require.NoError(t, err)
				before := b.snapshot(t)
				for i := 0; i < 20; i++ {
					clk.add(10 * time.Millisecond)
					res, err := l.Allow(ctx, "hammer", limit)
					require.NoError(t, err)
					require.False(t, res.Allowed, "denied at +%dms", 10*(i+1))
				}
				require.Equal(t, before, b.snapshot(t), "denials wrote nothing")
			})
		}
	})
}

func TestServerClock(t *testing.T) {
	// Without WithClock the scripts read Redis TIME.
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				if b.mini != nil {
					b.mini.SetTime(time.UnixMilli(1_700_000_000_000))
				}
				l := New(b.client, WithPrefix(b.prefix))
				limit := PerHour(algo, 3)
				for i := 0; i < 3; i++ {
					res, err := l.Allow(ctx, "srv", limit)
					require.NoError(t, err)
					require.True(t, res.Allowed)
				}
				res, err := l.Allow(ctx, "srv", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Greater(t, res.RetryAfter, time.Duration(0))
				if b.mini != nil {
					// move TIME and expiry together (see REDIS-NOTES)
					later := time.Duration(fullAfter(limit)) * time.Millisecond
					b.mini.SetTime(time.UnixMilli(1_700_000_000_000).Add(later))
					b.mini.FastForward(later)
					res, err = l.Allow(ctx, "srv", limit)
					require.NoError(t, err)
					require.True(t, res.Allowed, "%v later", later)
				}
			})
		}
	})
}

func TestClockGoingBackwardsNeverMintsCapacity(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				clk := &clock{ms: 1_700_000_010_000}
				l := b.limiter(clk)
				limit := PerSecond(algo, 4)
				admitted := 0
				// jump back and forth within ±5s while never letting the
				// latest time seen advance: nothing may refill
				for _, step := range []int64{0, -5000, -3000, -1000, -4000, -2000, 0, -2500} {
					clk.ms = 1_700_000_010_000 + step
					for i := 0; i < 6; i++ {
						res, err := l.Allow(ctx, "back", limit)
						require.NoError(t, err)
						if res.Allowed {
							admitted++
						}
						require.GreaterOrEqual(t, res.Remaining, int64(0))
					}
				}
				require.Equal(t, 4, admitted)
			})
		}
	})
}

func TestKeysWithBraces(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := b.limiter(&clock{ms: 1_700_000_000_000})
		limits := []Limit{PerSecond(GCRA, 2), PerMinute(GCRA, 3)}
		for _, key := range []string{"}", "{", "a}b{c", "{}", "%7B", "ключ:{x}", "user:42"} {
			res, err := l.AllowMulti(ctx, key, 2, limits...)
			require.NoError(t, err, key)
			require.True(t, res.Allowed, key)
		}
		// "{" and "%7B" must not share state: each got its own 2 of 3 per minute
		require.Len(t, b.keys(t), 14)
		for _, k := range b.keys(t) {
			require.Equal(t, 1, countRune(k, '{'), k)
			require.Equal(t, 1, countRune(k, '}'), k)
		}
	})
}

func countRune(s string, r rune) (n int) {
	for _, c := range s {
		if c == r {
			n++
		}
	}
	return n
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		limit Limit
		want  string
	}{
		{Limit{Rate: 1, Period: time.Second}, "unknown algorithm 0"},
		{Limit{Algorithm: 99, Rate: 1, Period: time.Second}, "unknown algorithm 99"},
		{Limit{Algorithm: GCRA, Rate: 0, Period: time.Second}, "rate must be from 1 to 1000000000, got 0"},
		{Limit{Algorithm: GCRA, Rate: -3, Period: time.Second}, "rate must be from 1"},
		{Limit{Algorithm: GCRA, Rate: 1, Period: 0}, "period must be a whole number of milliseconds"},
		{Limit{Algorithm: GCRA, Rate: 1, Period: 1500 * time.Microsecond}, "period must be a whole number of milliseconds"},
		{Limit{Algorithm: GCRA, Rate: 1, Period: time.Second, Burst: -1}, "burst must be from 0"},
		{Limit{Algorithm: FixedWindow, Rate: 10, Period: time.Second, Burst: 20}, "fixed_window has no separate burst"},
		{Limit{Algorithm: GCRA, Rate: 2000, Period: time.Millisecond}, "at most 1000 per millisecond"},
		{Limit{Algorithm: GCRA, Rate: 1, Period: 1000 * 24 * time.Hour, Burst: 1_000_000}, "burst * period / rate"},
		{Limit{Algorithm: TokenBucket, Rate: 7, Period: 1_000_000_000 * time.Millisecond, Burst: 100_000_000}, "burst * period / gcd"},
	} {
		err := tc.limit.Validate()
		require.ErrorIs(t, err, ErrInvalidLimit, "%+v", tc.limit)
		require.ErrorContains(t, err, tc.want)
	}
	for _, ok := range []Limit{
		PerSecond(GCRA, 10), PerHour(TokenBucket, 1), {Algorithm: FixedWindow, Rate: 5, Period: time.Minute, Burst: 5},
		{Algorithm: TokenBucket, Rate: 1_000_000_000, Period: 24 * time.Hour}, {Algorithm: GCRA, Rate: 100_000, Period: time.Second},
		{Algorithm: GCRA, Rate: 7, Period: 3 * time.Second}, {Algorithm: TokenBucket, Rate: 1, Period: 24 * time.Hour, Burst: 50},
	} {
		require.NoError(t, ok.Validate(), "%+v", ok)
	}
}

func TestBadRequests(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := b.limiter(&clock{ms: 1_700_000_000_000})
		limit := PerSecond(TokenBucket, 10)
		_, err := l.AllowN(ctx, "k", limit, 4)
		require.NoError(t, err)
		before := b.rawValue(t, b.keys(t)[0])
		tooLong := strings.Repeat("k", MaxKeyLen+1)
		var many []Limit // periods 1s, 2s, ...: one more than a call may carry
		for i := 1; i <= maxLimits+1; i++ {
			many = append(many, Limit{Algorithm: GCRA, Rate: 10, Period: time.Duration(i) * time.Second})
		}

		for _, tc := range []struct {
			call func() error
			is   error
			want string
		}{
			{func() error { _, err := l.Allow(ctx, "", limit); return err }, ErrInvalidRequest, "key must not be empty"},
			{func() error { _, err := l.AllowN(ctx, "k", limit, -1); return err }, ErrInvalidRequest, "n must be from 0 to the capacity 10, got -1"},
			{func() error { _, err := l.AllowN(ctx, "k", limit, 11); return err }, ErrInvalidRequest, "got 11"},
			{func() error { _, err := l.Allow(ctx, "k", Limit{Algorithm: GCRA}); return err }, ErrInvalidLimit, "rate must be"},
			{func() error { _, err := l.AllowMulti(ctx, "k", 1); return err }, ErrInvalidRequest, "luarate: invalid request: need at least one limit"},
			{func() error { _, err := l.AllowMulti(ctx, "k", 1, many...); return err }, ErrInvalidRequest, "luarate: invalid request: at most 16 limits per call, got 17"},
			{func() error {
				_, err := l.AllowMulti(ctx, "k", 1, PerSecond(GCRA, 1), PerSecond(TokenBucket, 1))
				return err
			}, ErrInvalidRequest, "must share an algorithm"},
			{func() error { _, err := l.AllowMulti(ctx, "k", 1, limit, PerSecond(TokenBucket, 20)); return err }, ErrInvalidRequest, "two limits with period 1s"},
			{func() error { return l.Reset(ctx, "", limit) }, ErrInvalidRequest, "key must not be empty"},
			{func() error { _, err := l.Allow(ctx, tooLong, limit); return err }, ErrInvalidRequest, "key is 1025 bytes, at most 1024: hash longer identifiers"},
			{func() error { return l.Reset(ctx, tooLong, limit) }, ErrInvalidRequest, "key is 1025 bytes"},
			{func() error { _, _, err := l.Acquire(ctx, tooLong, 1, time.Second); return err }, ErrInvalidRequest, "key is 1025 bytes"},
		} {
			err := tc.call()
			require.ErrorIs(t, err, tc.is)
			require.ErrorContains(t, err, tc.want)
		}
		require.Equal(t, before, b.rawValue(t, b.keys(t)[0]), "bad requests changed nothing")

		res, err := l.AllowMulti(ctx, "k16", 1, many[:maxLimits]...)
		require.NoError(t, err, "16 limits are fine")
		require.True(t, res.Allowed)
		res, err = l.Allow(ctx, tooLong[1:], limit)
		require.NoError(t, err, "a key of MaxKeyLen bytes is fine")
		require.True(t, res.Allowed)
	})
}

func TestKeyOfAnotherTypeIsLeftUntouched(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		for _, algo := range Algorithms() {
			l := b.limiter(&clock{ms: 1_700_000_000_000})
			limit := PerSecond(algo, 10)
			_, keys, _, err := l.command("typed", 0, OpTake, []Limit{limit})
			require.NoError(t, err)
			key := keys[0]

			require.NoError(t, b.client.Do(ctx, b.client.B().Hset().Key(key).FieldValue().FieldValue("a", "1").Build()).Error())
			_, err = l.Allow(ctx, "typed", limit)
			require.ErrorContains(t, err, "luarate: KEYS[1] holds a value that is not a ")
			require.ErrorContains(t, err, "; use another key")
			got, _ := b.client.Do(ctx, b.client.B().Hgetall().Key(key).Build()).AsStrMap()
			require.Equal(t, map[string]string{"a": "1"}, got)

			require.NoError(t, b.client.Do(ctx, b.client.B().Set().Key(key).Value("not ours").Build()).Error())
			_, err = l.Allow(ctx, "typed", limit)
			require.ErrorContains(t, err, "luarate: KEYS[1] holds a ")
			require.Equal(t, "not ours", b.rawValue(t, key))
			require.NoError(t, b.client.Do(ctx, b.client.B().Del().Key(key).Build()).Error())
		}
	})
}

// TestRaceNeverOverAdmits: 64 goroutines on 4 connections race for one key
// of each algorithm on real Redis, with the clock frozen: exactly the
// capacity is admitted, with batching on (the default) and off.
func TestRaceNeverOverAdmits(t *testing.T) {
	if realAddr == "" {
		t.Skip("SKIPPED: no real Redis")
	}
	for _, batching := range []bool{true, false} {
		for _, algo := range Algorithms() {
			t.Run(fmt.Sprintf("batching=%v/%s", batching, algo), func(t *testing.T) {
				// several connections (one rueidis client each) and 64 goroutines
				// on one key; the clock is frozen, so exactly the capacity fits
				prefix := uniquePrefix()
				clk := &clock{ms: 1_700_000_000_000}
				var limiters []*Limiter
				for i := 0; i < 4; i++ {
					limiters = append(limiters, New(redistest.Client(t, realAddr), WithPrefix(prefix), WithClock(clk.now), WithBatching(batching)))
				}
				limit := PerMinute(algo, 100)
				var admitted, denied atomic.Int64
				var wg sync.WaitGroup
				for g := 0; g < 64; g++ {
					wg.Add(1)
					go func(l *Limiter) {
						defer wg.Done()
						for i := 0; i < 10; i++ {
							res, err := l.Allow(context.Background(), "hot", limit)
							if err != nil {
								t.Error(err)
								return
							}
							if res.Allowed {
								admitted.Add(1)
							} else {
								denied.Add(1)
							}
						}
					}(limiters[g%len(limiters)])
				}
				wg.Wait()
				require.Equal(t, int64(100), admitted.Load())
				require.Equal(t, int64(540), denied.Load())
			})
		}
	}
}

func TestScripts(t *testing.T) {
	list := Scripts()
	require.NotEmpty(t, list)
	for i, s := range list {
		sum := sha1.Sum([]byte(s.Source))
		require.Equal(t, hex.EncodeToString(sum[:]), s.SHA1)
		require.GreaterOrEqual(t, s.Version, 1)
		if i > 0 {
			require.Less(t, list[i-1].Name, s.Name)
		}
	}
	for a := Algorithm(1); int(a) < len(scriptNames); a++ {
		require.Contains(t, scripts, a.String(), "algorithm %d has no script", a)
	}
	require.Equal(t, "Algorithm(42)", Algorithm(42).String())
}

// TestScriptsArePinned fails on any edit to a script: a changed SHA1 forces a
// deliberate decision — bump the version if the state layout changed, then
// update the pin.
func TestScriptsArePinned(t *testing.T) {
	pinned := map[string]string{
		"concurrency v3":            "4261641b185ba61c4d22fae2df1a9b0002bd39a0",
		"fixed_window v3":           "d3d3c7a4890c747d996dcfa66306a18874bd4715",
		"gcra v3":                   "e122c11ff7b028377a4b0160197b714b9155a134",
		"leaky_bucket v3":           "4cca0d31a4378d57d8527569ad83e276f30e2679",
		"leaky_queue v3":            "c57d1c76a5a0d1800ce4e46feff78e3b2c16a343",
		"sliding_window_counter v3": "1625a8adbd7affc8d693e6c428077b46fd3a6a4d",
		"sliding_window_log v3":     "567e7da9fe383743274d3cdd0bb976823780f314",
		"token_bucket v3":           "6c9f27f07bd3a2f4633a5f1f0da67391df956538",
	}
	got := map[string]string{}
	for _, s := range Scripts() {
		got[s.Name+" v"+itoa(int64(s.Version))] = s.SHA1
	}
	require.Equal(t, pinned, got)
}

func TestInvalidResponse(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		for _, script := range []string{"return 1", "return {1, 2, 3}", "return {1, 10, 5, 0, 0, 'x'}", "return {2, 10, 5, 0, 0, 0}", "return {1, 10, -1, 0, 0, 0}"} {
			msg, err := b.client.Do(ctx, b.client.B().Eval().Script(script).Numkeys(0).Build()).ToMessage()
			require.NoError(t, err)
			_, err = parseResult(msg)
			require.True(t, errors.Is(err, ErrInvalidResponse), script)
		}
	})
}

// keys lists the keys under the backend's prefix.
func (b backend) keys(t *testing.T) []string {
	t.Helper()
	keys, err := b.client.Do(context.Background(), b.client.B().Keys().Pattern(b.prefix+"*").Build()).AsStrSlice()
	require.NoError(t, err)
	return keys
}

func (b backend) pttl(t *testing.T, key string) time.Duration {
	t.Helper()
	ms, err := b.client.Do(context.Background(), b.client.B().Pttl().Key(key).Build()).AsInt64()
	require.NoError(t, err)
	return time.Duration(ms) * time.Millisecond
}

func (b backend) rawValue(t *testing.T, key string) string {
	t.Helper()
	v, err := b.client.Do(context.Background(), b.client.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return ""
	}
	require.NoError(t, err)
	return v
}

// TestNewNilClient: a nil client (rueidis.NewClient's error ignored) fails at
// New, saying what is wrong, not with a nil dereference at the first Allow.
func TestNewNilClient(t *testing.T) {
	require.PanicsWithValue(t, "luarate.New: client is nil; pass the client rueidis.NewClient returned, after checking its error", func() { New(nil) })
}
