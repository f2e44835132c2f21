package insurance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2/server"
	"github.com/luarate/luarate"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// logBuffer collects log lines from any goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines counts the log lines containing s.
func (b *logBuffer) lines(s string) int { return strings.Count(b.String(), s) }

const (
	logDown = "Redis unavailable, deciding on the in-process insurance"
	logUp   = "Redis is back, deciding in Redis again"
)

// wallClock is a settable clock for the insurance's Retry.
type wallClock struct {
	mu sync.Mutex
	t  time.Time
}

func (w *wallClock) now() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.t
}

func (w *wallClock) add(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t = w.t.Add(d)
}

// insured is a Limiter with its insurance, for tests that look inside it.
type insured struct {
	*luarate.Limiter
	ins *insurance
}

// insuredLimiter returns a Limiter on client with insurance for instances
// processes, whose keys start with prefix, whose scripts see c and whose
// Retry runs on the returned wall clock.
func insuredLimiter(t *testing.T, client rueidis.Client, prefix string, c *clock, instances int, opts ...luarate.Option) (*insured, *wallClock, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	ins := newInsurance(Config{Instances: instances, Retry: DefaultRetry, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	wall := &wallClock{t: time.Unix(1_000_000, 0)}
	ins.wall = wall.now
	opts = append([]luarate.Option{luarate.WithPrefix(prefix), luarate.WithClock(c.now), luarate.WithFallback(ins)}, opts...)
	l := &insured{Limiter: luarate.New(client, opts...), ins: ins}
	t.Cleanup(l.Close)
	return l, wall, logs
}

// embeddedKeys returns the keys held by l's insurance server (none if it was
// never started).
func embeddedKeys(l *insured) []string {
	l.ins.mu.Lock()
	defer l.ins.mu.Unlock()
	var keys []string
	for _, e := range l.ins.shards {
		keys = append(keys, e.mini.Keys()...)
	}
	return keys
}

func uniquePrefix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b) + ":"
}

// clock is a settable time for WithClock.
type clock struct{ ms atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ms.Store(1_700_000_000_000)
	return c
}

func (c *clock) now() time.Time      { return time.UnixMilli(c.ms.Load()) }
func (c *clock) add(d time.Duration) { c.ms.Add(d.Milliseconds()) }

// ownServer starts a redis-server only this test uses, so it may kill and
// restart it. It skips loudly without redis-server, fails under CI.
func ownServer(t *testing.T) (*redistest.Server, rueidis.Client) {
	t.Helper()
	s, err := redistest.Start()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs real Redis: %v", err)
		}
		t.Skipf("SKIPPED: no real Redis: %v", err)
	}
	t.Cleanup(s.Stop)
	return s, redistest.Client(t, s.Addr)
}

func TestShare(t *testing.T) {
	const tb, fw = luarate.TokenBucket, luarate.FixedWindow
	lim := func(algo luarate.Algorithm, rate int, period time.Duration, burst int) luarate.Limit {
		return luarate.Limit{Algorithm: algo, Rate: rate, Period: period, Burst: burst}
	}
	cases := []struct {
		name      string
		call      luarate.Call
		instances int
		want      []luarate.Limit
		n         int
		err       string
	}{
		{"window, burst 0 stays 0", luarate.Call{N: 1, Limits: []luarate.Limit{lim(fw, 100, time.Second, 0)}}, 4,
			[]luarate.Limit{lim(fw, 25, time.Second, 0)}, 1, ""},
		{"burst equal to rate stays equal", luarate.Call{N: 1, Limits: []luarate.Limit{lim(fw, 10, time.Second, 10)}}, 3,
			[]luarate.Limit{lim(fw, 3, time.Second, 3)}, 1, ""},
		{"bucket: rate and burst each divided", luarate.Call{N: 5, Limits: []luarate.Limit{lim(tb, 10, time.Second, 50)}}, 4,
			[]luarate.Limit{lim(tb, 2, time.Second, 12)}, 5, ""},
		{"rounded down, at least 1", luarate.Call{N: 1, Limits: []luarate.Limit{lim(fw, 3, time.Minute, 0)}}, 4,
			[]luarate.Limit{lim(fw, 1, time.Minute, 0)}, 1, ""},
		{"several limits", luarate.Call{N: 1, Limits: []luarate.Limit{lim(tb, 10, time.Second, 0), lim(tb, 1000, time.Hour, 0)}}, 4,
			[]luarate.Limit{lim(tb, 2, time.Second, 0), lim(tb, 250, time.Hour, 0)}, 1, ""},
		{"one instance: unchanged", luarate.Call{N: 50, Limits: []luarate.Limit{lim(tb, 10, time.Second, 50)}}, 1,
			[]luarate.Limit{lim(tb, 10, time.Second, 50)}, 50, ""},
		{"take is all or nothing", luarate.Call{N: 30, Limits: []luarate.Limit{lim(fw, 100, time.Second, 0)}}, 4,
			nil, 0, "cost 30 exceeds this process's share 25 of limit 1"},
		{"cost above the share of the second limit", luarate.Call{N: 3, Limits: []luarate.Limit{lim(tb, 100, time.Second, 0), lim(tb, 8, time.Minute, 0)}}, 4,
			nil, 0, "share 2 of limit 2"},
		{"atmost: a cost above the share is cut to it", luarate.Call{N: 30, Op: luarate.OpAtMost, Limits: []luarate.Limit{lim(fw, 100, time.Second, 0)}}, 4,
			[]luarate.Limit{lim(fw, 25, time.Second, 0)}, 25, ""},
		{"refund: cut to the share, lockout kept", luarate.Call{N: 30, Op: luarate.OpRefund, Limits: []luarate.Limit{{Algorithm: tb, Rate: 8, Period: time.Minute, Lockout: 5 * time.Second}}}, 4,
			[]luarate.Limit{{Algorithm: tb, Rate: 2, Period: time.Minute, Lockout: 5 * time.Second}}, 2, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			orig := append([]luarate.Limit(nil), tc.call.Limits...)
			got, n, err := share(tc.call, tc.instances)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.n, n)
			require.Equal(t, orig, tc.call.Limits, "the caller's limits must not change")
		})
	}
}

func TestWithValidates(t *testing.T) {
	require.PanicsWithValue(t, "insurance.With: Instances must be at least 1, got 0", func() { With(Config{}) })
	require.PanicsWithValue(t, "insurance.With: Instances must be at least 1, got -2", func() { With(Config{Instances: -2}) })
	require.PanicsWithValue(t, "insurance.With: Retry must not be negative, got -1s", func() { With(Config{Instances: 2, Retry: -time.Second}) })
	cfg := Config{Instances: 2}.checked()
	require.Equal(t, DefaultRetry, cfg.Retry)
	require.NotNil(t, cfg.Logger)
	_, client := redistest.Mini(t)
	l := luarate.New(client, With(cfg))
	l.Close()
	l.Close() // twice is fine
}

// TestInsuranceOutage: with the main Redis (a miniredis here) closed, every
// algorithm keeps deciding, on the insurance, against a quarter of the limit:
// exact counts at explicit times, no error. Until Retry has passed Redis is
// not tried again; then the next call finds it back and decisions return to
// it. Each switch is logged once.
func TestInsuranceOutage(t *testing.T) {
	for _, algo := range luarate.Algorithms() {
		t.Run(algo.String(), func(t *testing.T) {
			main, client := redistest.Mini(t)
			c := newClock()
			l, wall, logs := insuredLimiter(t, client, uniquePrefix(), c, 4)
			limit := luarate.PerSecond(algo, 20) // a share of 5 per process
			ctx := context.Background()

			res, err := l.Allow(ctx, "before", limit)
			require.NoError(t, err)
			require.False(t, res.Insured)
			require.EqualValues(t, 20, res.Limit)
			require.Nil(t, embeddedKeys(l), "the insurance starts at the first failure, not before")

			main.Close()
			for round := 0; round < 2; round++ {
				for i := 1; i <= 7; i++ {
					res, err := l.Allow(ctx, "k", limit)
					require.NoError(t, err, "round %d call %d", round, i)
					require.True(t, res.Insured)
					require.EqualValues(t, 5, res.Limit, "the share is the limit reported")
					require.Equal(t, i <= 5, res.Allowed, "round %d call %d", round, i)
					if !res.Allowed {
						require.Positive(t, res.RetryAfter)
					}
				}
				c.add(2 * time.Second) // two periods: full again under every algorithm
			}
			require.Equal(t, 1, logs.lines(logDown), logs.String())

			// back, but Retry has not passed: still the insurance, Redis untouched
			require.NoError(t, main.Restart())
			before := main.CommandCount()
			res, err = l.Allow(ctx, "k", limit)
			require.NoError(t, err)
			require.True(t, res.Insured)
			require.Equal(t, before, main.CommandCount(), "Redis was tried during the cool-down")

			probes := 0
			for res.Insured && probes < 3 { // the first probe may meet the dead connection
				wall.add(DefaultRetry)
				probes++
				res, err = l.Allow(ctx, "k", limit)
				require.NoError(t, err)
			}
			require.False(t, res.Insured, "Redis is back")
			require.True(t, res.Allowed)
			require.EqualValues(t, 20, res.Limit)
			require.Empty(t, embeddedKeys(l), "the insurance forgets the outage")
			require.Equal(t, 1, logs.lines(logDown), logs.String())
			require.Equal(t, 1, logs.lines(logUp), logs.String())
			require.Contains(t, logs.String(), "insured_decisions="+strconv.Itoa(14+probes))
		})
	}
}

// TestInsuranceProbe: while Redis stays unavailable (answering LOADING
// here), one call per Retry tries it; the others do not, and nothing is
// logged again.
func TestInsuranceProbe(t *testing.T) {
	main, client := redistest.Mini(t)
	c := newClock()
	l, wall, logs := insuredLimiter(t, client, uniquePrefix(), c, 2)
	var tries atomic.Int64
	main.Server().SetPreHook(func(p *server.Peer, cmd string, _ ...string) bool {
		if cmd != "EVALSHA" && cmd != "EVAL" {
			return false
		}
		tries.Add(1)
		p.WriteError("LOADING Redis is loading the dataset in memory")
		return true
	})
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		if i%10 == 9 {
			wall.add(DefaultRetry)
		}
		res, err := l.Allow(ctx, "k", luarate.PerSecond(luarate.GCRA, 1000))
		require.NoError(t, err)
		require.True(t, res.Insured)
	}
	require.EqualValues(t, 6, tries.Load(), "the first failure plus one probe per Retry")
	require.Equal(t, 1, logs.lines(logDown))
	require.Zero(t, logs.lines(logUp))
	require.Contains(t, logs.String(), "LOADING")
}

// TestInsuranceSwitchGenerations: a slow call sent before Redis failed that
// then succeeds does not end the outage, and a failure reported after the
// outage ended does not start a new one; the probe does.
func TestInsuranceSwitchGenerations(t *testing.T) {
	logs := &logBuffer{}
	ins := newInsurance(Config{Instances: 2, Retry: DefaultRetry, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	wall := &wallClock{t: time.Unix(1_000_000, 0)}
	ins.wall = wall.now

	slow, try := ins.route()
	require.True(t, try)
	failing, _ := ins.route()
	ins.down(failing, errors.New("refused"))
	require.True(t, ins.on.Load())
	ins.up(slow) // answered, but was sent before the failure
	require.True(t, ins.on.Load(), "a stale success ended the outage")

	_, try = ins.route()
	require.False(t, try, "tried Redis during the cool-down")
	wall.add(DefaultRetry)
	probe, try := ins.route()
	require.True(t, try)
	_, try = ins.route()
	require.False(t, try, "two probes at once")
	ins.up(probe)
	require.False(t, ins.on.Load())
	ins.down(probe, errors.New("late failure of an old call"))
	require.False(t, ins.on.Load(), "a stale failure started an outage")
	require.Equal(t, 1, logs.lines(logDown))
	require.Equal(t, 1, logs.lines(logUp))
}

// TestInsuranceMultiAndReset: AllowMulti on the insurance scales each limit
// and stays all-or-nothing; Reset during the outage clears the insured state
// and returns nil; a cost above the share is an luarate.ErrUnavailable error.
func TestInsuranceMultiAndReset(t *testing.T) {
	main, client := redistest.Mini(t)
	c := newClock()
	l, _, _ := insuredLimiter(t, client, uniquePrefix(), c, 4)
	perSecond, perMinute := luarate.PerSecond(luarate.TokenBucket, 40), luarate.PerMinute(luarate.TokenBucket, 48) // shares 10 and 12
	main.Close()
	ctx := context.Background()

	var got []string
	for i := 0; i < 3; i++ {
		res, err := l.AllowMulti(ctx, "tenant", 5, perSecond, perMinute)
		require.NoError(t, err)
		require.True(t, res.Insured)
		got = append(got, strconv.FormatBool(res.Allowed)+"/"+strconv.FormatInt(res.Limit, 10)+"/"+strconv.FormatInt(res.Remaining, 10))
	}
	// 5+5 fill the per-second share of 10; the third is denied by both
	// limits, and the reply reports the longer wait: the per-minute share
	// (12, 2 left).
	require.Equal(t, []string{"true/10/5", "true/10/0", "false/12/2"}, got)
	c.add(time.Second)
	res, err := l.AllowMulti(ctx, "tenant", 5, perSecond, perMinute)
	require.NoError(t, err)
	require.False(t, res.Allowed, "the per-minute share has 2 left")
	require.EqualValues(t, 12, res.Limit)

	require.NoError(t, l.Reset(ctx, "tenant", perMinute), "Reset during an outage")
	res, err = l.AllowMulti(ctx, "tenant", 5, perSecond, perMinute)
	require.NoError(t, err)
	require.True(t, res.Allowed, "Reset cleared the insured per-minute state")

	_, err = l.AllowN(ctx, "big", perSecond, 11) // fits the limit, not the share
	require.ErrorIs(t, err, luarate.ErrUnavailable)
	require.ErrorContains(t, err, "exceeds this process's share 10")
}

// TestInsuranceMemoryBounded: miniredis expires nothing by itself, so the
// insurance ages its keys by the decision clock: a long outage over many keys
// holds only the keys still alive, as real Redis would.
func TestInsuranceMemoryBounded(t *testing.T) {
	main, client := redistest.Mini(t)
	c := newClock()
	l, _, _ := insuredLimiter(t, client, uniquePrefix(), c, 2)
	main.Close()
	ctx := context.Background()
	for minute := 0; minute < 10; minute++ {
		for i := 0; i < 200; i++ {
			res, err := l.Allow(ctx, "client"+strconv.Itoa(minute*200+i), luarate.PerSecond(luarate.GCRA, 10))
			require.NoError(t, err)
			require.True(t, res.Insured)
			require.True(t, res.Allowed)
		}
		require.LessOrEqual(t, len(embeddedKeys(l)), 400, "minute %d: keys pile up", minute)
		c.add(time.Minute)
	}
	// luarate.GCRA state lives at most a period (1s) past the last call, plus one
	// sweep interval
	c.add(time.Second + sweepEvery)
	_, err := l.Allow(ctx, "last", luarate.PerSecond(luarate.GCRA, 10))
	require.NoError(t, err)
	require.Len(t, embeddedKeys(l), 1)
}

// TestInsuranceCancelled: a context the caller cancelled says nothing about
// Redis: the call returns its error and the Limiter does not switch.
func TestInsuranceCancelled(t *testing.T) {
	_, client := redistest.Mini(t)
	c := newClock()
	l, _, logs := insuredLimiter(t, client, uniquePrefix(), c, 2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := l.Allow(ctx, "k", luarate.PerSecond(luarate.GCRA, 10))
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, l.ins.on.Load())
	require.Zero(t, logs.lines(logDown))
}

// TestInsuranceExpiredContext: a context whose deadline passed before the
// call says nothing about Redis, so it switches nothing.
func TestInsuranceExpiredContext(t *testing.T) {
	_, client := redistest.Mini(t)
	c := newClock()
	l, _, logs := insuredLimiter(t, client, uniquePrefix(), c, 2)
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, err := l.Allow(ctx, "k", luarate.PerSecond(luarate.GCRA, 10))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, l.Reset(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10)))
	require.ErrorIs(t, l.Reset(ctx, "k", luarate.PerSecond(luarate.GCRA, 10)), context.DeadlineExceeded)
	require.False(t, l.ins.on.Load(), "other callers keep deciding in Redis")
	require.Zero(t, logs.lines(logDown))
	res, err := l.Allow(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10))
	require.NoError(t, err)
	require.False(t, res.Insured)
}

// TestNoInsuranceStillUnavailable: without insurance an outage is the
// caller's luarate.ErrUnavailable error, as before.
func TestNoInsuranceStillUnavailable(t *testing.T) {
	main, client := redistest.Mini(t)
	l := luarate.New(client)
	main.Close()
	res, err := l.Allow(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10))
	require.ErrorIs(t, err, luarate.ErrUnavailable)
	require.False(t, res.Insured)
	require.Error(t, l.Reset(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10)))
}

// TestInsuranceClosed: after Close an outage is an luarate.ErrUnavailable error again.
func TestInsuranceClosed(t *testing.T) {
	main, client := redistest.Mini(t)
	c := newClock()
	l, _, _ := insuredLimiter(t, client, uniquePrefix(), c, 2)
	main.Close()
	_, err := l.Allow(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10))
	require.NoError(t, err)
	l.Close()
	_, err = l.Allow(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10))
	require.ErrorIs(t, err, luarate.ErrUnavailable)
	require.ErrorContains(t, err, "limiter closed")
	require.ErrorIs(t, l.Reset(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10)), luarate.ErrUnavailable,
		"a reset that reached neither Redis nor the insurance says so")

	// Redis back: a closed Limiter decides and resets in Redis as any other
	// (once the client has reconnected: a call that meets the dead
	// connection fails, as the fault table says)
	require.NoError(t, main.Restart())
	require.Eventually(t, func() bool {
		return client.Do(context.Background(), client.B().Ping().Build()).Error() == nil
	}, 10*time.Second, 10*time.Millisecond, "the client reconnects")
	res, err := l.Allow(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10))
	require.NoError(t, err)
	require.False(t, res.Insured)
	require.NotEmpty(t, main.Keys())
	require.NoError(t, l.Reset(context.Background(), "k", luarate.PerSecond(luarate.GCRA, 10)))
	require.Empty(t, main.Keys(), "the reset reached Redis")
}

// TestInsuranceClosedBeforeOutage: an outage that starts after Close moves
// no decision to the insurance, so neither switch is logged, and a reset
// that reached no Redis is an error.
func TestInsuranceClosedBeforeOutage(t *testing.T) {
	main, client := redistest.Mini(t)
	l, _, logs := insuredLimiter(t, client, uniquePrefix(), newClock(), 2)
	ctx, limit := context.Background(), luarate.PerSecond(luarate.GCRA, 10)
	_, err := l.Allow(ctx, "k", limit)
	require.NoError(t, err)
	l.Close()
	main.Close()
	_, err = l.Allow(ctx, "k", limit)
	require.ErrorIs(t, err, luarate.ErrUnavailable)
	require.ErrorIs(t, l.Reset(ctx, "k", limit), luarate.ErrUnavailable)
	require.NoError(t, main.Restart())
	var res luarate.Result
	require.Eventually(t, func() bool { // (a call that meets a dead connection fails, as the fault table says)
		res, err = l.Allow(ctx, "k", limit)
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "decided in Redis again")
	require.False(t, res.Insured)
	require.Zero(t, logs.lines(logDown), logs.String())
	require.Zero(t, logs.lines(logUp), logs.String())
}

// TestInsuranceRealRedis stops a real redis-server in the middle of
// concurrent traffic: no call sees an error, decisions continue on the
// insurance with a third of the limit (exact counts at a fixed time), and
// once the server is restarted and Retry has passed they go back to Redis;
// both switches are logged once.
func TestInsuranceRealRedis(t *testing.T) {
	s, client := ownServer(t)
	c := newClock()
	l, wall, logs := insuredLimiter(t, client, uniquePrefix(), c, 3)
	limit := luarate.PerMinute(luarate.GCRA, 30) // a share of 10 per process

	var wg sync.WaitGroup
	var calls, insured atomic.Int64
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100_000; i++ { // bounded; stopped long before
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				res, err := l.Allow(ctx, "traffic"+strconv.Itoa(w)+":"+strconv.Itoa(i%20), limit)
				cancel()
				if err != nil {
					t.Errorf("call during the outage: %v", err)
					return
				}
				calls.Add(1)
				if res.Insured {
					insured.Add(1)
				}
			}
		}()
	}
	waitCalls := func(n int64) {
		for deadline := time.Now().Add(10 * time.Second); calls.Load() < n && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	waitCalls(500)
	s.Kill()
	before := calls.Load()
	waitCalls(before + 2000)
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d on the insurance", calls.Load(), insured.Load())
	require.Positive(t, insured.Load())
	require.True(t, l.ins.on.Load())

	// a fresh key during the outage: exactly the share of 10, from many goroutines
	var allowed, denied atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				res, err := l.Allow(context.Background(), "fresh", limit)
				if err != nil || !res.Insured || res.Limit != 10 {
					t.Errorf("outage decision: %+v, %v", res, err)
					return
				}
				if res.Allowed {
					allowed.Add(1)
				} else {
					denied.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.EqualValues(t, 10, allowed.Load())
	require.EqualValues(t, 30, denied.Load())

	require.NoError(t, s.Restart())
	wall.add(DefaultRetry)
	var res luarate.Result
	var err error
	for attempt := 0; attempt < 5; attempt++ { // the first calls may meet the dead connection
		res, err = l.Allow(context.Background(), "fresh", limit)
		require.NoError(t, err)
		if !res.Insured {
			break
		}
		wall.add(DefaultRetry)
	}
	require.False(t, res.Insured, "decisions did not go back to Redis")
	require.True(t, res.Allowed, "the restarted Redis has no state for the key")
	require.EqualValues(t, 30, res.Limit)
	require.Empty(t, embeddedKeys(l))
	require.Equal(t, 1, logs.lines(logDown), logs.String())
	require.Equal(t, 1, logs.lines(logUp), logs.String())
	t.Log(strings.TrimSpace(logs.String()))
}

// TestInsuranceDenialsNotCached: a denial by the insurance is about this
// process's share during the outage, so WithDenyCache does not keep it: once
// Redis is back, the key is asked in Redis.
func TestInsuranceDenialsNotCached(t *testing.T) {
	main, client := redistest.Mini(t)
	c := newClock()
	l, wall, _ := insuredLimiter(t, client, uniquePrefix(), c, 2, luarate.WithDenyCache(100))
	limit := luarate.PerMinute(luarate.GCRA, 2) // a share of 1
	ctx := context.Background()
	main.Close()
	for i, want := range []bool{true, false} {
		res, err := l.Allow(ctx, "k", limit)
		require.NoError(t, err)
		require.True(t, res.Insured)
		require.Equal(t, want, res.Allowed, "call %d", i+1)
	}
	require.NoError(t, main.Restart())
	var res luarate.Result
	for probes := 0; probes < 3 && (probes == 0 || res.Insured); probes++ {
		wall.add(DefaultRetry)
		var err error
		res, err = l.Allow(ctx, "k", limit)
		require.NoError(t, err)
	}
	require.False(t, res.Insured)
	require.True(t, res.Allowed, "answered from the insurance's denial")
}

// TestInsuranceHandBack kills a real redis-server under 64 goroutines spread
// over 4 instances and restarts it: no call decides on insurance state the
// switch back to Redis already cleared, so over the outage each instance
// admits at most its share on the insurance, however many calls were on
// their way to it when Redis came back.
func TestInsuranceHandBack(t *testing.T) {
	s, client := ownServer(t)
	c := newClock() // fixed: nothing refills during the test
	wall := &wallClock{t: time.Unix(1_000_000, 0)}
	limit := luarate.PerHour(luarate.FixedWindow, 40) // a share of 10 per instance
	const instances, perInstance = 4, 16
	type instance struct {
		*insured
		logs            *logBuffer
		calls, admitted atomic.Int64 // admitted: by the insurance
		lastInsured     atomic.Bool
	}
	var inst [instances]*instance
	for i := range inst {
		l, _, logs := insuredLimiter(t, client, "handback:", c, instances)
		l.ins.wall = wall.now // all on one Retry clock, moved by hand
		inst[i] = &instance{insured: l, logs: logs}
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, in := range inst {
		for range perInstance {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20_000 { // bounded; stopped long before
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					res, err := in.Allow(ctx, "hot", limit)
					cancel()
					if err != nil {
						t.Errorf("call: %v", err)
						return
					}
					in.calls.Add(1)
					in.lastInsured.Store(res.Insured)
					if res.Insured && res.Allowed {
						in.admitted.Add(1)
					}
				}
			}()
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	every := func(f func(in *instance) bool) func() bool {
		return func() bool {
			for _, in := range inst {
				if !f(in) {
					return false
				}
			}
			return true
		}
	}
	waitFor("traffic", every(func(in *instance) bool { return in.calls.Load() > 100 }))
	s.Kill()
	var mark [instances]int64
	waitFor("the insurance", every(func(in *instance) bool { return in.ins.on.Load() }))
	for i, in := range inst {
		mark[i] = in.calls.Load()
	}
	waitFor("insured traffic", func() bool {
		for i, in := range inst {
			if in.calls.Load() < mark[i]+200 {
				return false
			}
		}
		return true
	})
	require.NoError(t, s.Restart())
	require.Eventually(t, func() bool {
		return client.Do(context.Background(), client.B().Ping().Build()).Error() == nil
	}, 10*time.Second, time.Millisecond, "the client reconnects")
	wall.add(DefaultRetry) // the next call of each instance tries Redis
	waitFor("the switch back", every(func(in *instance) bool { return !in.ins.on.Load() }))
	for i, in := range inst {
		mark[i] = in.calls.Load()
	}
	waitFor("traffic on Redis", func() bool {
		for i, in := range inst {
			if in.calls.Load() < mark[i]+200 || in.lastInsured.Load() {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()

	for i, in := range inst {
		outages := int64(in.logs.lines(logDown))
		t.Logf("instance %d: %d calls, %d admitted by the insurance in %d outage(s)", i, in.calls.Load(), in.admitted.Load(), outages)
		require.Equal(t, int64(1), outages, in.logs.String())
		require.LessOrEqual(t, in.admitted.Load(), 10*outages, "instance %d admitted more than its share on the insurance", i)
	}
}
