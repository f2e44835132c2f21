package luarate

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/stretchr/testify/require"
)

// abuseLimit is 10 per minute (a bucket of 10 for the smooth algorithms).
func abuseLimit(algo Algorithm) Limit { return PerMinute(algo, 10) }

func TestAllowAtMost(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				l := b.limiter(&clock{ms: 1_700_000_040_000}) // a whole minute: windows start here
				limit := abuseLimit(algo)

				res, err := l.AllowAtMost(ctx, "batch", limit, 4)
				require.NoError(t, err)
				require.True(t, res.Allowed)
				require.Equal(t, int64(4), res.Granted)
				require.Equal(t, int64(6), res.Remaining)

				res, err = l.AllowAtMost(ctx, "batch", limit, 8)
				require.NoError(t, err)
				require.True(t, res.Allowed, "a partial grant is allowed")
				require.Equal(t, int64(6), res.Granted, "only what fits")
				require.Equal(t, int64(0), res.Remaining)
				require.Zero(t, res.RetryAfter)

				res, err = l.AllowAtMost(ctx, "batch", limit, 3)
				require.NoError(t, err)
				require.False(t, res.Allowed, "nothing fits")
				require.Equal(t, int64(0), res.Granted)
				switch algo {
				case FixedWindow, SlidingWindowLog:
					require.Equal(t, time.Minute, res.RetryAfter, "one unit fits when the window moves on")
				case SlidingWindowCounter:
					require.Equal(t, 66*time.Second, res.RetryAfter, "10 weigh 10*(1-x) at x into the next window: room for 1 at x = 0.1")
				default:
					require.Equal(t, 6*time.Second, res.RetryAfter, "one unit refills in Period/Rate")
				}

				res, err = l.AllowAtMost(ctx, "batch", limit, 0)
				require.NoError(t, err)
				require.Equal(t, int64(0), res.Granted, "n = 0 is a peek")
				require.Equal(t, int64(0), res.Remaining)
			})
		}
	})
}

func TestRefund(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				clk := &clock{ms: 1_700_000_000_000}
				l := b.limiter(clk)
				limit := abuseLimit(algo)

				if algo == LeakyQueue {
					_, err := l.Refund(ctx, "fresh", limit, 3)
					require.ErrorIs(t, err, ErrInvalidRequest, "admitted requests hold their departure slots")
					for _, k := range b.keys(t) {
						require.NotContains(t, k, ":"+scripts[algo.String()].keyTag+":", "refused before any round trip")
					}
					return
				}
				// nothing taken, nothing to give back: no key is written
				res, err := l.Refund(ctx, "fresh", limit, 3)
				require.NoError(t, err)
				require.Equal(t, int64(0), res.Granted)
				require.Equal(t, int64(10), res.Remaining)
				for _, k := range b.keys(t) {
					require.NotContains(t, k, "{fresh}:"+scripts[algo.String()].keyTag, "a refund of nothing writes nothing")
				}

				res, err = l.AllowN(ctx, "k", limit, 3)
				require.NoError(t, err)
				require.Equal(t, int64(3), res.Granted)
				require.Equal(t, int64(7), res.Remaining)

				res, err = l.Refund(ctx, "k", limit, 2)
				require.NoError(t, err)
				require.Equal(t, int64(2), res.Granted)
				require.Equal(t, int64(9), res.Remaining)
				require.True(t, res.Allowed, "reported as Peek would")

				res, err = l.Refund(ctx, "k", limit, 5)
				require.NoError(t, err)
				require.Equal(t, int64(1), res.Granted, "never beyond full")
				require.Equal(t, int64(10), res.Remaining)

				// and the key really is full again: the whole capacity fits
				res, err = l.AllowN(ctx, "k", limit, 10)
				require.NoError(t, err)
				require.True(t, res.Allowed)
			})
		}
	})
}

func TestPenalize(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				l := b.limiter(&clock{ms: 1_700_000_000_000})
				limit := abuseLimit(algo)
				_, err := l.AllowN(ctx, "k", limit, 7)
				require.NoError(t, err)
				res, err := l.Penalize(ctx, "k", limit, 10)
				require.NoError(t, err)
				require.True(t, res.Allowed)
				require.Equal(t, int64(3), res.Granted, "never below empty")
				require.Equal(t, int64(0), res.Remaining)
				res, err = l.Penalize(ctx, "k", limit, 1)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, int64(0), res.Granted)

				// n above the capacity (10): what fits, never an error
				res, err = l.Penalize(ctx, "new", limit, 25)
				require.NoError(t, err)
				require.Equal(t, int64(10), res.Granted, "empty, no further")
				res, err = l.AllowAtMost(ctx, "new too", limit, 25)
				require.NoError(t, err)
				require.True(t, res.Allowed)
				require.Equal(t, int64(10), res.Granted)
				if algo != LeakyQueue { // (it takes no refunds)
					res, err = l.Refund(ctx, "new", limit, 25)
					require.NoError(t, err)
					require.Equal(t, int64(10), res.Granted, "back to full, no further")
				}
			})
		}
	})
}

// TestLockout: 5 per 15 minutes, locked for an hour once denied.
func TestLockout(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				ctx := context.Background()
				start := int64(1_700_000_100_000) // a whole 15 minutes
				clk := &clock{ms: start}
				l := b.limiter(clk)
				limit := Limit{Algorithm: algo, Rate: 5, Period: 15 * time.Minute, Lockout: time.Hour}
				for i := 0; i < 5; i++ {
					res, err := l.Allow(ctx, "user", limit)
					require.NoError(t, err)
					require.True(t, res.Allowed)
				}
				res, err := l.Allow(ctx, "user", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, time.Hour, res.RetryAfter, "the denial that starts the lock reports it")
				require.Equal(t, time.Hour, res.ResetAfter)
				require.Equal(t, int64(0), res.Remaining)
				if b.mini == nil {
					key := b.prefix + "{user}:" + scripts[algo.String()].keyTag + ":900000"
					require.InDelta(t, float64(time.Hour), float64(b.pttl(t, key)), float64(5*time.Second), "the key's TTL covers the lock")
				}

				// 40 minutes on, the limit itself has long refilled: still locked,
				// and hammering does not extend the lock
				clk.add(40 * time.Minute)
				for i := 0; i < 3; i++ {
					res, err = l.Allow(ctx, "user", limit)
					require.NoError(t, err)
					require.False(t, res.Allowed)
					require.Equal(t, 20*time.Minute, res.RetryAfter)
				}
				res, err = l.AllowAtMost(ctx, "user", limit, 2)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, 20*time.Minute, res.RetryAfter)
				res, err = l.Peek(ctx, "user", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed, "a peek reports the lock")
				require.Equal(t, 20*time.Minute, res.RetryAfter)

				// a refund gives units back but does not lift the lock
				if algo != LeakyQueue { // takes no refunds
					res, err = l.Refund(ctx, "user", limit, 5)
					require.NoError(t, err)
					require.False(t, res.Allowed)
					require.Equal(t, 20*time.Minute, res.RetryAfter)
				}

				// the boundary: 1 ms before the lock ends, and the instant it ends
				clk.ms = start + time.Hour.Milliseconds() - 1
				res, err = l.Allow(ctx, "user", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, time.Millisecond, res.RetryAfter)
				clk.ms++
				res, err = l.Allow(ctx, "user", limit)
				require.NoError(t, err)
				require.True(t, res.Allowed, "admitted the instant the lock ends")

				// Reset lifts a lock at once
				for i := 0; i < 5; i++ {
					_, err = l.Allow(ctx, "user", limit)
					require.NoError(t, err)
				}
				res, err = l.Peek(ctx, "user", limit)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, time.Hour, res.RetryAfter, "denied again: locked again")
				require.NoError(t, l.Reset(ctx, "user", limit))
				res, err = l.Allow(ctx, "user", limit)
				require.NoError(t, err)
				require.True(t, res.Allowed)
			})
		}
	})
}

// TestPenalizeStartsTheLock: a penalty on an exhausted key locks it.
func TestPenalizeStartsTheLock(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := b.limiter(&clock{ms: 1_700_000_000_000})
		limit := Limit{Algorithm: GCRA, Rate: 3, Period: time.Minute, Lockout: 10 * time.Minute}
		res, err := l.Penalize(ctx, "bot", limit, 3)
		require.NoError(t, err)
		require.Equal(t, int64(3), res.Granted)
		res, err = l.Penalize(ctx, "bot", limit, 3)
		require.NoError(t, err)
		require.Equal(t, int64(0), res.Granted)
		require.Equal(t, 10*time.Minute, res.RetryAfter)
	})
}

func TestRefundDropsTheDenyCache(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		clk := &clock{ms: 1_700_000_000_000}
		l := New(b.client, WithPrefix(b.prefix), WithClock(clk.now), WithDenyCache(100))
		limit := PerHour(FixedWindow, 2)
		for i := 0; i < 2; i++ {
			_, err := l.Allow(ctx, "k", limit)
			require.NoError(t, err)
		}
		res, err := l.Allow(ctx, "k", limit)
		require.NoError(t, err)
		require.False(t, res.Allowed)
		// the denial is cached now; an AtMost still asks Redis (and is denied)
		res, err = l.AllowAtMost(ctx, "k", limit, 1)
		require.NoError(t, err)
		require.False(t, res.Allowed)
		res, err = l.Refund(ctx, "k", limit, 1)
		require.NoError(t, err)
		require.Equal(t, int64(1), res.Granted)
		res, err = l.Allow(ctx, "k", limit)
		require.NoError(t, err)
		require.True(t, res.Allowed, "the refunded unit is used, not a cached denial")
	})
}

func TestAbuseBadInput(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := b.limiter(&clock{ms: 1_700_000_000_000})
		ok := PerHour(TokenBucket, 10)
		_, err := l.Allow(ctx, "existing", ok)
		require.NoError(t, err)
		before := b.snapshot(t)
		for _, tc := range []struct {
			what string
			call func() error
			want error
		}{
			{"atmost negative n", func() error { _, err := l.AllowAtMost(ctx, "k", ok, -1); return err }, ErrInvalidRequest},
			{"refund negative n", func() error { _, err := l.Refund(ctx, "existing", ok, -1); return err }, ErrInvalidRequest},
			{"penalize negative n", func() error { _, err := l.Penalize(ctx, "existing", ok, -3); return err }, ErrInvalidRequest},
			{"negative lockout", func() error {
				_, err := l.Allow(ctx, "existing", Limit{Algorithm: GCRA, Rate: 1, Period: time.Second, Lockout: -time.Second})
				return err
			}, ErrInvalidLimit},
			{"fractional ms lockout", func() error {
				_, err := l.Allow(ctx, "existing", Limit{Algorithm: GCRA, Rate: 1, Period: time.Second, Lockout: 1500 * time.Microsecond})
				return err
			}, ErrInvalidLimit},
			{"huge lockout", func() error {
				_, err := l.Allow(ctx, "existing", Limit{Algorithm: GCRA, Rate: 1, Period: time.Second, Lockout: 1 << 62})
				return err
			}, ErrInvalidLimit},
		} {
			require.ErrorIs(t, tc.call(), tc.want, tc.what)
		}
		require.Equal(t, before, b.snapshot(t), "state changed")
	})
}

// TestAbuseScriptBadInput: bad mode and lockout_ms through raw ARGV.
func TestAbuseScriptBadInput(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() { // concurrency: TestConcurrencyHostileInput
			name := algo.String()
			s := scripts[name]
			t.Run(name, func(t *testing.T) {
				keys := []string{"{a}:" + s.Name + ":1", "{a}:" + s.Name + ":2"}
				lims := []string{"10 3600000 0", "100 7200000 0"}
				_, errText := b.eval(t, s.Name, keys, v3argv(lims, "3", now, "")...)
				require.Empty(t, errText)
				before := b.snapshot(t)
				for _, c := range []struct {
					argv []string
					want string
				}{
					{v3argv(lims, "1", now, "steal"), `ERR luarate: ARGV[5] mode must be take, atmost or refund, got "steal"`},
					{v3argv(lims, "1", now, "TAKE"), `ERR luarate: ARGV[5] mode must be take, atmost or refund, got "TAKE"`},
					{v3argv([]string{"10 3600000 0 1000", "100 7200000 0 -1"}, "1", now, "refund"), `ERR luarate: ARGV[2] must be a limit "rate period_ms burst" or "rate period_ms burst lockout_ms" in plain digits, got "100 7200000 0 -1"`},
					{v3argv([]string{"10 3600000 0 1e3", "100 7200000 0 0"}, "1", now, "take"), `ERR luarate: ARGV[1] must be a limit "rate period_ms burst" or "rate period_ms burst lockout_ms" in plain digits, got "10 3600000 0 1e3"`},
					{v3argv([]string{"10 3600000 0 1000000000001", "100 7200000 0 0"}, "1", now, "take"), `ERR luarate: ARGV[1] lockout_ms must be from 0 to 1000000000000, got 1000000000001`},
					{append(v3argv(lims, "1", now, "take"), "1000"), "ERR luarate: expected 2 to 5 ARGV (a limit per key, then [cost [now_ms [mode]]]), got 6"},
					{v3argv(lims, "11", now, "refund"), "ERR luarate: cost 11 exceeds the capacity of limit 1 (burst 10)"},
				} {
					reply, errText := b.eval(t, s.Name, keys, c.argv...)
					requireLuarateError(t, reply, errText, s.Name)
					if s.Name == "leaky_queue" { // knows the refund mode (the shared entry does), takes no refunds
						if slices.Contains(c.argv, "refund") {
							c.want = "ERR luarate: ARGV[5] mode refund is not offered by leaky_queue: admitted requests hold their departure slots"
						}
					}
					if algorithmOf(s.Name).windowed() && strings.HasSuffix(c.want, "(burst 10)") {
						c.want = strings.TrimSuffix(c.want, "(burst 10)") + "(rate 10)"
					}
					require.Equal(t, c.want, errText, s.Name)
				}
				require.Equal(t, before, b.snapshot(t), "%s: state changed", s.Name)
			})
		}
	})
}

// TestRaceAbuse: 64 goroutines on 4 connections against real Redis,
// with the clock frozen so nothing refills.
func TestRaceAbuse(t *testing.T) {
	if realAddr == "" {
		t.Skip("SKIPPED: no real Redis")
	}
	run := func(t *testing.T, f func(l *Limiter)) {
		prefix := uniquePrefix()
		clk := &clock{ms: 1_700_000_000_000}
		var limiters []*Limiter
		for i := 0; i < 4; i++ {
			limiters = append(limiters, New(redistest.Client(t, realAddr), WithPrefix(prefix), WithClock(clk.now)))
		}
		var wg sync.WaitGroup
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func(l *Limiter) {
				defer wg.Done()
				f(l)
			}(limiters[g%len(limiters)])
		}
		wg.Wait()
	}
	ctx := context.Background()
	for _, algo := range Algorithms() {
		t.Run(algo.String(), func(t *testing.T) {
			limit := PerHour(algo, 50)
			// refunds runs a refund subtest, not made at all for leaky_queue,
			// which takes no refunds
			refunds := func(name string, f func(t *testing.T)) {
				if algo != LeakyQueue {
					t.Run(name, f)
				}
			}

			refunds("no refund past full", func(t *testing.T) {
				var given atomic.Int64
				var once sync.Once
				var setup sync.WaitGroup
				setup.Add(1)
				run(t, func(l *Limiter) {
					once.Do(func() {
						defer setup.Done()
						if res, err := l.AllowN(ctx, "k", limit, 20); err != nil || !res.Allowed {
							t.Error("taking 20:", res, err)
						}
					})
					setup.Wait()
					for i := 0; i < 3; i++ {
						res, err := l.Refund(ctx, "k", limit, 1)
						if err != nil {
							t.Error(err)
							return
						}
						given.Add(res.Granted)
					}
				})
				require.Equal(t, int64(20), given.Load(), "exactly what was taken comes back")
			})

			refunds("refunds racing takes", func(t *testing.T) {
				var taken, refunded atomic.Int64
				var l0 atomic.Pointer[Limiter]
				run(t, func(l *Limiter) {
					l0.Store(l)
					for i := 0; i < 10; i++ {
						res, err := l.Allow(ctx, "k", limit)
						if err != nil {
							t.Error(err)
							return
						}
						taken.Add(res.Granted)
						if res.Allowed && i%2 == 0 {
							res, err = l.Refund(ctx, "k", limit, 1)
							if err != nil {
								t.Error(err)
								return
							}
							refunded.Add(res.Granted)
						}
					}
				})
				res, err := l0.Load().Peek(ctx, "k", limit)
				require.NoError(t, err)
				net := taken.Load() - refunded.Load()
				require.Equal(t, int64(50)-res.Remaining, net, "the key holds exactly what was taken and not given back")
				require.LessOrEqual(t, net, int64(50), "never over-admits")
				require.Greater(t, refunded.Load(), int64(0))
			})

			t.Run("lockout admits exactly the limit", func(t *testing.T) {
				locked := Limit{Algorithm: algo, Rate: 50, Period: time.Hour, Lockout: 24 * time.Hour}
				var admitted atomic.Int64
				var l0 atomic.Pointer[Limiter]
				run(t, func(l *Limiter) {
					l0.Store(l)
					for i := 0; i < 10; i++ {
						res, err := l.Allow(ctx, "k", locked)
						if err != nil {
							t.Error(err)
							return
						}
						admitted.Add(res.Granted)
						if !res.Allowed && res.RetryAfter != 24*time.Hour {
							t.Errorf("denied with RetryAfter %v, want the whole lock", res.RetryAfter)
						}
					}
				})
				require.Equal(t, int64(50), admitted.Load())
				res, err := l0.Load().Peek(ctx, "k", locked)
				require.NoError(t, err)
				require.False(t, res.Allowed)
				require.Equal(t, 24*time.Hour, res.RetryAfter, "locked once, never extended")
			})
		})
	}
}
