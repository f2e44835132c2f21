package luarate

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// ownServer starts a redis-server only this test uses, so it may flush,
// restart or pause it. It skips loudly without redis-server, fails under CI.
func ownServer(t *testing.T, config ...string) (*redistest.Server, rueidis.Client) {
	t.Helper()
	s, err := redistest.Start(config...)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs real Redis: %v", err)
		}
		t.Skipf("SKIPPED: no real Redis: %v", err)
	}
	t.Cleanup(s.Stop)
	return s, redistest.Client(t, s.Addr)
}

func scriptLoaded(t *testing.T, addr, sha string) bool {
	t.Helper()
	got, err := redistest.Command(addr, "SCRIPT", "EXISTS", sha)
	require.NoError(t, err)
	return got == "1"
}

// TestScriptFlushAndRestart: the script cache emptied by SCRIPT FLUSH or by a
// restart in the middle of traffic is refilled by the next call (EVALSHA gets
// NOSCRIPT, rueidis sends EVAL), and the calls succeed.
func TestScriptFlushAndRestart(t *testing.T) {
	s, client := ownServer(t)
	l := New(client)
	ctx := context.Background()
	algos := Algorithms()

	// traffic on every algorithm while another connection flushes the cache
	var wg sync.WaitGroup
	var calls, failures atomic.Int64
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a := algos[i%len(algos)]
				if _, err := l.Allow(ctx, "flush"+strconv.Itoa(i%50), PerSecond(a, 1000)); err != nil {
					failures.Add(1)
					t.Errorf("%s during SCRIPT FLUSH: %v", a, err)
					return
				}
				calls.Add(1)
			}
		}()
	}
	for flushes := 0; flushes < 20; flushes++ {
		for c := calls.Load(); calls.Load() < c+200 && failures.Load() == 0; {
			time.Sleep(time.Millisecond)
		}
		_, err := redistest.Command(s.Addr, "SCRIPT", "FLUSH")
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls across 20 SCRIPT FLUSHes, %d failed", calls.Load(), failures.Load())

	// a restart (SIGKILL, then start on the same port): the client reconnects
	// and reloads the scripts
	require.NoError(t, s.Restart())
	for _, a := range algos {
		sha := scripts[a.String()].SHA1
		require.False(t, scriptLoaded(t, s.Addr, sha), "%s survived a restart?", a)
		var err error
		for attempt := 0; attempt < 5; attempt++ { // the first calls may meet the dead connection
			if _, err = l.Allow(ctx, "restart", PerSecond(a, 10)); err == nil {
				break
			}
			require.ErrorIs(t, err, ErrUnavailable)
			t.Logf("%s: call %d after the restart: %v", a, attempt+1, err)
		}
		require.NoError(t, err, a.String())
		require.True(t, scriptLoaded(t, s.Addr, sha), "%s was not reloaded", a)
	}
}

// TestRedisDownOrSlow: with Redis stopped, paused or never answering, a call
// returns within its context's deadline with an error wrapping ErrUnavailable.
// The bound checked on the time taken is loose on purpose: it catches a call
// that hangs, not a slow machine.
func TestRedisDownOrSlow(t *testing.T) {
	const deadline = 300 * time.Millisecond
	const hang = 10 * time.Second
	call := func(t *testing.T, l *Limiter) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		began := time.Now()
		_, err := l.Allow(ctx, "k", PerSecond(GCRA, 10))
		return time.Since(began), err
	}

	t.Run("stopped", func(t *testing.T) {
		s, client := ownServer(t)
		l := New(client)
		_, err := call(t, l)
		require.NoError(t, err)
		s.Stop()
		took, err := call(t, l)
		require.ErrorIs(t, err, ErrUnavailable)
		require.Less(t, took, hang)
		t.Logf("stopped server: %v after %v", err, took)
	})

	t.Run("paused", func(t *testing.T) {
		s, client := ownServer(t)
		l := New(client)
		_, err := call(t, l)
		require.NoError(t, err)
		require.NoError(t, s.Pause())
		took, err := call(t, l)
		require.NoError(t, s.Resume())
		require.ErrorIs(t, err, ErrUnavailable)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, took, hang)
		t.Logf("paused server: %v after %v", err, took)
		_, err = call(t, l)
		require.NoError(t, err, "after resuming")
	})

	t.Run("busy with a long script", func(t *testing.T) {
		s, client := ownServer(t, "--busy-reply-threshold", "50")
		l := New(client)
		other := redistest.Client(t, s.Addr) // a connection of its own
		busy := make(chan error, 1)
		go func() {
			// spins for two full seconds of server time, then returns
			busy <- other.Do(context.Background(), other.B().Eval().Script(
				"local function us() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end "+
					"local start = us() while us() - start < 2000000 do end return 1").Numkeys(0).Build()).Error()
		}()
		var err error
		for i := 0; i < 300; i++ { // until the script is past the busy threshold
			if _, err = call(t, l); err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		require.ErrorIs(t, err, ErrUnavailable)
		require.Contains(t, err.Error(), "BUSY")
		t.Logf("busy server: %v", err)
		require.NoError(t, <-busy)
	})

	t.Run("never answers", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		go func() { // accept and then say nothing, ever
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()
		began := time.Now()
		client, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{ln.Addr().String()}, DisableCache: true, ForceSingleClient: true,
			ConnWriteTimeout: deadline, Dialer: net.Dialer{Timeout: deadline},
		})
		if err != nil {
			// the connection handshake already found nobody answering
			require.Less(t, time.Since(began), hang)
			t.Logf("silent listener: NewClient fails after %v: %v", time.Since(began), err)
			return
		}
		defer client.Close()
		took, err := call(t, New(client))
		require.ErrorIs(t, err, ErrUnavailable)
		require.Less(t, took, hang)
		t.Logf("silent listener: %v after %v", err, took)
	})
}

// TestErrorsAreTyped: an error Redis answers about the request itself is not
// ErrUnavailable, so a fail-open policy cannot hide it.
func TestErrorsAreTyped(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		before1970 := New(b.client, WithPrefix(b.prefix), WithClock(func() time.Time { return time.UnixMilli(-1) }))
		_, err := before1970.Allow(context.Background(), "k", PerSecond(GCRA, 10))
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrUnavailable)
		require.Contains(t, err.Error(), "luarate: ARGV[3] now_ms must be")
	})
}

// TestClockJumps drives every algorithm with a clock that leaps backwards and
// forwards: the caller's clock (WithClock) on both servers, and the server's
// own TIME on miniredis, whose clock a test can set. Going back never mints
// capacity: over the whole run no more is admitted than the capacity plus the
// refill of the time the clock really advanced (its maximum). No call
// errors, and a jump far ahead refills fully.
func TestClockJumps(t *testing.T) {
	steps := []time.Duration{0, time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 700 * time.Millisecond}
	skews := []time.Duration{-time.Hour, -5 * time.Second, -999 * time.Millisecond, -time.Millisecond, 0, 0, 3 * time.Second}
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			for _, serverClock := range []bool{false, true} {
				if serverClock && b.mini == nil {
					continue // a real server's clock is not ours to move
				}
				name := algo.String() + "/WithClock"
				if serverClock {
					name = algo.String() + "/server TIME"
				}
				t.Run(name, func(t *testing.T) {
					lim := Limit{Algorithm: algo, Rate: 5, Period: time.Second}
					rng := rand.New(rand.NewSource(int64(algo)))
					c := &clock{}
					l := b.limiter(c)
					if serverClock {
						l = New(b.client, WithPrefix(b.prefix+"server:"))
					}
					setNow := func(ms int64) {
						c.ms = ms
						if serverClock {
							b.mini.SetTime(time.UnixMilli(ms))
						}
					}
					// real time moves forward; the clock the scripts see is real
					// time plus a skew that now and then leaps back or ahead
					real, skew := int64(1_700_000_000_000), int64(0)
					ctx := context.Background()
					start, high := real, real
					var admitted, denied int64
					for i := 0; i < 400; i++ {
						real += steps[rng.Intn(len(steps))].Milliseconds()
						if rng.Intn(8) == 0 {
							skew = skews[rng.Intn(len(skews))].Milliseconds()
						}
						now := real + skew
						if i%97 == 50 {
							now = 0 // back to 1970
						}
						setNow(now)
						high = max(high, now)
						n := 1 + rng.Intn(3)
						res, err := l.AllowN(ctx, "jumpy", lim, n)
						require.NoError(t, err, "step %d at %d", i, now)
						if res.Allowed {
							admitted += int64(n)
						} else {
							denied += int64(n)
						}
						periods := (high - start + 999) / 1000
						require.LessOrEqual(t, admitted, int64(lim.Capacity())+int64(lim.Rate)*periods,
							"step %d: %d admitted while the clock advanced %dms", i, admitted, high-start)
					}
					setNow(high + 2*time.Hour.Milliseconds())
					res, err := l.Peek(ctx, "jumpy", lim)
					require.NoError(t, err)
					require.Equal(t, int64(lim.Capacity()), res.Remaining, "a jump far ahead refills")
					res, err = l.AllowN(ctx, "jumpy", lim, lim.Capacity())
					require.NoError(t, err)
					require.True(t, res.Allowed)
					require.NotZero(t, denied, "the run never reached the limit: it tests nothing")
					t.Logf("%d admitted, %d denied, clock advanced %dms (bound %d)", admitted, denied, high-start,
						int64(lim.Capacity())+int64(lim.Rate)*((high-start+999)/1000))
				})
			}
		}
	})
}

// TestMemorySoak writes many distinct keys with short periods through every
// algorithm, checks that each has a TTL that lasts at least until the reply's
// reset_after (the state matters until then), and that the keys and the
// memory they took are gone once the periods pass. Bounded: the period is
// 5 s. How long the writes take does not matter: each key is held to the time
// its own call was made.
func TestMemorySoak(t *testing.T) {
	s, client := ownServer(t)
	ctx := context.Background()
	info := func() (used int64, keys int64) {
		mem, err := redistest.Command(s.Addr, "INFO", "memory")
		require.NoError(t, err)
		for _, line := range strings.Split(mem, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				used, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		keys, err = client.Do(ctx, client.B().Dbsize().Build()).AsInt64()
		require.NoError(t, err)
		return used, keys
	}
	baseMem, baseKeys := info()
	require.Zero(t, baseKeys)

	const perAlgo = 20_000
	l := New(client)
	type write struct {
		key     string
		matters time.Time // until when the key's state still counts, at the least
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		writes []write
	)
	for _, algo := range Algorithms() {
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lim := Limit{Algorithm: algo, Rate: 1, Period: 5 * time.Second}
				var mine []write
				defer func() {
					mu.Lock()
					writes = append(writes, mine...)
					mu.Unlock()
				}()
				for i := w; i < perAlgo; i += 4 {
					key := "soak:" + strconv.Itoa(i)
					sent := time.Now().Round(0) // wall time, as Redis expires keys by it (see checked)
					res, err := l.Allow(ctx, key, lim)
					if err == nil && !res.Allowed {
						err = fmt.Errorf("%s: the first request on %s denied", algo, key)
					}
					if err != nil {
						t.Error(err)
						return
					}
					_, keys, _, err := l.command(key, 0, OpTake, []Limit{lim})
					if err != nil {
						t.Error(err)
						return
					}
					// Redis counts expiry in whole ms: a key lives through the ms its TTL ends in
					mine = append(mine, write{keys[0], sent.Add(res.ResetAfter - time.Millisecond)})
				}
			}()
		}
	}
	wg.Wait()
	peakMem, peakKeys := info()

	// a key that is gone, or whose TTL ends, before its state stops mattering
	// forgets admissions that still count: over-admission. The PTTLs go in
	// small pipelines, so each one's time is known to within a few ms.
	live := 0
	for from := 0; from < len(writes); from += 200 {
		chunk := writes[from:min(from+200, len(writes))]
		ttls := make(rueidis.Commands, len(chunk))
		for i, w := range chunk {
			ttls[i] = client.B().Pttl().Key(w.key).Build()
		}
		replies := client.DoMulti(ctx, ttls...)
		// every PTTL above ran before this. Wall time without the monotonic
		// reading, as sent: Redis counts TTLs on the wall clock, and when the
		// host's two clocks moved apart, a monotonic comparison saw keys end
		// 25 ms early that by the wall clock lived past their period.
		checked := time.Now().Round(0)
		for i, r := range replies {
			ttl, err := r.AsInt64()
			require.NoError(t, err)
			if ttl == -1 {
				t.Fatalf("key %q has no TTL", chunk[i].key)
			}
			ends := checked // gone: it expired before its PTTL ran
			if ttl >= 0 {
				ends, live = checked.Add(time.Duration(ttl)*time.Millisecond), live+1
			}
			if ends.Before(chunk[i].matters) {
				t.Fatalf("key %q expired before its period: gone by %v, its state matters until %v",
					chunk[i].key, ends.Format(time.StampMicro), chunk[i].matters.Format(time.StampMicro))
			}
		}
	}

	written := time.Now()
	deadline := written.Add(20 * time.Second)
	var endMem, endKeys int64
	for {
		endMem, endKeys = info()
		if endKeys == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("baseline %d B, %d keys; after %d decisions %d B (%d B/key), %d keys (%d alive at the TTL check); %v later %d B, %d keys",
		baseMem, baseKeys, perAlgo*len(Algorithms()), peakMem, (peakMem-baseMem)/max(peakKeys, 1), peakKeys, live,
		time.Since(written).Round(100*time.Millisecond), endMem, endKeys)
	require.Len(t, writes, perAlgo*len(Algorithms()))
	require.Zero(t, endKeys, "keys left after their TTL")
	require.Less(t, endMem-baseMem, (peakMem-baseMem)/20, "memory did not return near the baseline")
}
