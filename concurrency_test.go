package luarate

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// concurrencyModel is the concurrency limiter from its definition: a map of
// lease id to expiry (ms); a lease holds while now < expiry.
type concurrencyModel struct {
	leases map[string]int64
}

func (m *concurrencyModel) live(now int64) (held int64, earliest, latest int64) {
	for _, e := range m.leases {
		if e > now {
			held++
			if earliest == 0 || e < earliest {
				earliest = e
			}
			latest = max(latest, e)
		}
	}
	return held, earliest, latest
}

// decide answers op and applies it; it reports whether anything was written.
func (m *concurrencyModel) decide(op string, maxHeld, lease int64, id string, now int64) (reply, bool) {
	held, earliest, latest := m.live(now)
	reset := func() int64 {
		_, _, latest := m.live(now)
		return max(latest-now, 0)
	}
	free := func() int64 {
		held, _, _ := m.live(now)
		return max(maxHeld-held, 0)
	}
	_ = latest
	mine, holds := m.leases[id]
	holds = holds && mine > now && op != "peek"
	switch {
	case op == "peek" && held < maxHeld:
		return reply{1, maxHeld, free(), reset(), 0, 0}, false
	case op == "peek" || (op == "acquire" && !holds && held >= maxHeld):
		return reply{0, maxHeld, 0, reset(), earliest - now, 0}, false
	case (op == "release" || op == "extend") && !holds:
		return reply{0, maxHeld, free(), reset(), 0, 0}, false
	}
	for k, e := range m.leases { // writes drop what expired
		if e <= now {
			delete(m.leases, k)
		}
	}
	granted := int64(0) // a slot taken by a new lease, or given back
	if op == "release" {
		delete(m.leases, id)
		granted = 1
	} else {
		if op == "acquire" && !holds {
			granted = 1
		}
		m.leases[id] = max(mine, now+lease)
	}
	return reply{1, maxHeld, free(), reset(), 0, 0, granted}, true
}

// TestConcurrencyDifferential runs random acquire/release/extend/peek
// sequences (a few ids, time forward, still and back) through the script and
// the model: every reply must agree, calls that write nothing must leave the
// key as it was, and a write sets the key's TTL to reset_after.
func TestConcurrencyDifferential(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		sequences := 100 * fuzzScale()
		if b.mini != nil {
			sequences = 12 * fuzzScale()
		}
		base := time.Now().UnixNano()
		if *seedFlag != 0 {
			base, sequences = *seedFlag, 1
		}
		for i := range int64(sequences) {
			if !runConcurrencySequence(t, b, base+i, 30) {
				return
			}
		}
	})
}

func runConcurrencySequence(t *testing.T, b backend, seed int64, steps int) bool {
	t.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewSource(seed))
	key := fmt.Sprintf("c%d", seed)
	full := b.prefix + key
	require.NoError(t, b.client.Do(ctx, b.client.B().ScriptLoad().Script(scripts["concurrency"].Source).Build()).Error())
	defer b.client.Do(ctx, b.client.B().Del().Key(full).Build())
	maxHeld := 1 + r.Int63n(4)
	leases := []int64{1, 7, 1000, 30_000, 1 + r.Int63n(5000)}
	lease := leases[r.Intn(len(leases))]
	if b.mini == nil {
		// real Redis expires keys on its own clock: a 1 ms TTL set by the
		// script can run out before the same transaction persists the key
		// when a loaded machine stalls Redis, though the test's clock did
		// not move. Seconds keep the same schedules in the test's time.
		lease *= 1000
	}
	ids := []string{"a", "b", "c", "d", "e", "f"}
	model := &concurrencyModel{leases: map[string]int64{}}
	now := int64(1_700_000_000_000) + r.Int63n(1e9)
	var expireAt int64
	var history []string
	fail := func(format string, args ...any) bool {
		t.Errorf("concurrency seed %d (replay: go test -run 'TestConcurrencyDifferential/%s' -seed %d -v)\nmax %d lease %d\n%s\n%s",
			seed, b.name, seed, maxHeld, lease, strings.Join(history, "\n"), fmt.Sprintf(format, args...))
		return false
	}
	for range steps {
		switch k := r.Intn(10); {
		case k < 3:
		case k < 7:
			now += r.Int63n(lease + 2)
		case k < 8:
			now += r.Int63n(3 * lease)
		default:
			now -= r.Int63n(lease + 1)
		}
		if expireAt != 0 && now >= expireAt { // the key's TTL ended in script time
			if held, _, _ := model.live(now); held != 0 {
				return fail("key expired at %d but %d leases still hold at %d", expireAt, held, now)
			}
			require.NoError(t, b.client.Do(ctx, b.client.B().Del().Key(full).Build()).Error())
			model = &concurrencyModel{leases: map[string]int64{}}
			expireAt = 0
		}
		op := []string{"acquire", "acquire", "acquire", "release", "release", "extend", "peek"}[r.Intn(7)]
		id := ids[r.Intn(len(ids))]
		if op == "peek" && r.Intn(2) == 0 {
			id = ""
		}
		m := maxHeld
		if r.Intn(10) == 0 {
			m = 1 + r.Int63n(4) // the caller changed max
		}
		want, wrote := model.decide(op, m, lease, id, now)
		before := snapshot(t, b, []string{key})
		got, ttls, errText := evalAndPersist(t, b, "concurrency", []string{key}, []string{op, itoa(m), itoa(lease), id, itoa(now)})
		history = append(history, fmt.Sprintf("  %s %q max %d at %d -> %v", op, id, m, now, got))
		if errText != "" {
			return fail("script error: %s", errText)
		}
		if len(got) != len(want) || reply(got) != want {
			return fail("script %v, model %v", got, want)
		}
		if !wrote {
			if after := snapshot(t, b, []string{key}); after != before || ttls[0] >= 0 {
				return fail("a call that writes nothing changed the key (TTL %d):\n%s\n%s", ttls[0], before, after)
			}
			continue
		}
		switch {
		case want[3] == 0 && ttls[0] != -2:
			return fail("no lease holds, but the key exists (PTTL %d)", ttls[0])
		case want[3] > 0 && (ttls[0] > want[3]+ttlSlack("concurrency") || ttls[0] < want[3]-200 || (b.mini != nil && ttls[0] != want[3]+ttlSlack("concurrency"))):
			return fail("PTTL %d, want reset_after %d + %d", ttls[0], want[3], ttlSlack("concurrency"))
		case want[3] > 0:
			expireAt = now + want[3]
		default:
			expireAt = 0
		}
	}
	return true
}

// TestConcurrencyHammer: 64 goroutines on 4 connections acquire and release
// one key's 5 slots; the test counts the holders itself (after a grant,
// before a release) and that count never exceeds 5. Every lease is released,
// so the key is gone at the end.
func TestConcurrencyHammer(t *testing.T) {
	clients := []*Limiter{}
	prefix := uniquePrefix()
	for range 4 {
		clients = append(clients, New(realClient(t), WithPrefix(prefix)))
	}
	ctx := context.Background()
	const maxHeld = 5
	var holding, peak, granted, denied atomic.Int64
	var wg sync.WaitGroup
	for g := range 64 {
		l := clients[g%len(clients)]
		wg.Go(func() {
			for i := range 20 {
				lease, res, err := l.Acquire(ctx, "hot", maxHeld, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if !res.Allowed {
					denied.Add(1)
					if res.RetryAfter <= 0 || res.Remaining != 0 || lease != nil {
						t.Errorf("denied with %+v, lease %v", res, lease)
					}
					continue
				}
				granted.Add(1)
				n := holding.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				if i%2 == 0 {
					time.Sleep(100 * time.Microsecond) // hold it a moment
				}
				holding.Add(-1)
				if err := lease.Release(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("granted %d, denied %d, at most %d held at once", granted.Load(), denied.Load(), peak.Load())
	require.LessOrEqual(t, peak.Load(), int64(maxHeld), "more than max held at once")
	require.Positive(t, granted.Load())
	require.Equal(t, int64(64*20), granted.Load()+denied.Load())
	res, err := clients[0].PeekConcurrency(ctx, "hot", maxHeld)
	require.NoError(t, err)
	require.Equal(t, Result{Allowed: true, Limit: maxHeld, Remaining: maxHeld}, res, "every lease was released")
	n, err := clients[0].client.Do(ctx, clients[0].client.B().Exists().Key(prefix+"{hot}:c1").Build()).AsInt64()
	require.NoError(t, err)
	require.Zero(t, n, "an empty limiter has no key")
}

// TestConcurrencyAtOneInstant: 64 goroutines acquire at one explicit instant;
// exactly max get a lease. Nobody releases: at the lease's expiry, and not 1
// ms before, the slots are free again.
func TestConcurrencyAtOneInstant(t *testing.T) {
	prefix := uniquePrefix()
	c := &clock{ms: 1_700_000_000_000}
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return c.now() }
	set := func(ms int64) { mu.Lock(); c.ms = ms; mu.Unlock() }
	var limiters []*Limiter
	for range 4 {
		limiters = append(limiters, New(realClient(t), WithPrefix(prefix), WithClock(now)))
	}
	ctx := context.Background()
	var granted atomic.Int64
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			_, res, err := limiters[g%4].Acquire(ctx, "crash", 7, 2*time.Second)
			if err != nil {
				t.Error(err)
			} else if res.Allowed {
				granted.Add(1)
			} else if res.RetryAfter != 2*time.Second {
				t.Errorf("denied with RetryAfter %v, want the leases' expiry in 2s", res.RetryAfter)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(7), granted.Load(), "exactly max leases")
	set(1_700_000_001_999)
	lease, res, err := limiters[0].Acquire(ctx, "crash", 7, 2*time.Second)
	require.NoError(t, err)
	require.Nil(t, lease)
	require.Equal(t, Result{Limit: 7, ResetAfter: time.Millisecond, RetryAfter: time.Millisecond}, res)
	set(1_700_000_002_000)
	lease, res, err = limiters[1].Acquire(ctx, "crash", 7, 2*time.Second)
	require.NoError(t, err)
	require.NotNil(t, lease)
	require.Equal(t, Result{Allowed: true, Limit: 7, Remaining: 6, ResetAfter: 2 * time.Second, Granted: 1}, res, "the 7 unreleased leases freed themselves")
	require.NoError(t, lease.Release(ctx))
}

// TestLeaseRelease: release frees exactly its own slot; a double release and
// a release after expiry return nil and change nothing for other holders.
func TestLeaseRelease(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		c := &clock{ms: 1_700_000_000_000}
		l := b.limiter(c)
		a, res, err := l.Acquire(ctx, "k", 2, time.Second)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		require.Len(t, a.ID(), 32)
		c.add(100 * time.Millisecond)
		bb, res, err := l.Acquire(ctx, "k", 2, time.Second)
		require.NoError(t, err)
		require.Equal(t, Result{Allowed: true, Limit: 2, Remaining: 0, ResetAfter: time.Second, Granted: 1}, res)
		require.NotEqual(t, a.ID(), bb.ID())
		none, res, err := l.Acquire(ctx, "k", 2, time.Second)
		require.NoError(t, err)
		require.Nil(t, none)
		require.Equal(t, Result{Limit: 2, ResetAfter: time.Second, RetryAfter: 900 * time.Millisecond}, res)
		require.NoError(t, none.Release(ctx), "a nil lease releases nothing")

		require.NoError(t, a.Release(ctx))
		before := b.snapshot(t)
		require.NoError(t, a.Release(ctx), "double release")
		require.Equal(t, before, b.snapshot(t), "a double release changes nothing")
		peek, err := l.PeekConcurrency(ctx, "k", 2)
		require.NoError(t, err)
		require.Equal(t, Result{Allowed: true, Limit: 2, Remaining: 1, ResetAfter: time.Second}, peek)

		// b expires at +1100; a third lease taken at +600 holds until +1600
		c.add(500 * time.Millisecond)
		third, _, err := l.Acquire(ctx, "k", 2, time.Second)
		require.NoError(t, err)
		require.NotNil(t, third)
		c.add(600 * time.Millisecond)
		ok, err := bb.Extend(ctx)
		require.NoError(t, err)
		require.False(t, ok, "an expired lease is not extended")
		require.NoError(t, bb.Release(ctx), "release after expiry")
		peek, err = l.PeekConcurrency(ctx, "k", 2)
		require.NoError(t, err)
		require.Equal(t, Result{Allowed: true, Limit: 2, Remaining: 1, ResetAfter: 400 * time.Millisecond}, peek, "the third lease still holds")
		ok, err = third.Extend(ctx)
		require.NoError(t, err)
		require.True(t, ok)
		peek, err = l.PeekConcurrency(ctx, "k", 2)
		require.NoError(t, err)
		require.Equal(t, time.Second, peek.ResetAfter, "extended to a second from now")
		require.NoError(t, third.Release(ctx))
		require.Empty(t, b.keys(t), "no lease holds: no key")
	})
}

// TestConcurrencyServerClock: without WithClock the script reads Redis TIME.
func TestConcurrencyServerClock(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := New(b.client, WithPrefix(b.prefix))
		lease, res, err := l.Acquire(ctx, "srv", 1, time.Minute)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		require.Equal(t, time.Minute, res.ResetAfter)
		keys := b.keys(t)
		require.Len(t, keys, 1)
		require.LessOrEqual(t, b.pttl(t, keys[0]), time.Minute+time.Duration(ttlSlack("concurrency"))*time.Millisecond)
		require.Greater(t, b.pttl(t, keys[0]), 58*time.Second)
		_, res, err = l.Acquire(ctx, "srv", 1, time.Minute)
		require.NoError(t, err)
		require.False(t, res.Allowed)
		require.Positive(t, res.RetryAfter)
		require.LessOrEqual(t, res.RetryAfter, time.Minute)
		require.NoError(t, lease.Release(ctx))
		require.Empty(t, b.keys(t))
	})
}

// TestConcurrencyBadGoInput: bad arguments are refused before any round trip.
func TestConcurrencyBadGoInput(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		l := b.limiter(&clock{ms: 1_700_000_000_000})
		ctx := context.Background()
		for _, tc := range []struct {
			what  string
			key   string
			max   int
			lease time.Duration
			want  error
		}{
			{"empty key", "", 1, time.Second, ErrInvalidRequest},
			{"key too long", strings.Repeat("k", MaxKeyLen+1), 1, time.Second, ErrInvalidRequest},
			{"max 0", "k", 0, time.Second, ErrInvalidLimit},
			{"negative max", "k", -1, time.Second, ErrInvalidLimit},
			{"huge max", "k", 1_000_001, time.Second, ErrInvalidLimit},
			{"zero lease", "k", 1, 0, ErrInvalidLimit},
			{"negative lease", "k", 1, -time.Second, ErrInvalidLimit},
			{"fractional ms lease", "k", 1, 1500 * time.Microsecond, ErrInvalidLimit},
			{"huge lease", "k", 1, 1 << 62, ErrInvalidLimit},
		} {
			lease, _, err := l.Acquire(ctx, tc.key, tc.max, tc.lease)
			require.ErrorIs(t, err, tc.want, tc.what)
			require.Nil(t, lease)
			require.NotContains(t, err.Error(), "\n")
		}
		_, err := l.PeekConcurrency(ctx, "k", 0)
		require.ErrorIs(t, err, ErrInvalidLimit)
		require.Empty(t, b.keys(t))
		// odd but valid keys
		for _, key := range []string{strings.Repeat("{", MaxKeyLen), "\x00\xff\n\r{}", "}{", "ключ🙂"} { // the longest key, each brace escaped to 3 bytes
			lease, res, err := l.Acquire(ctx, key, 1, time.Hour)
			require.NoError(t, err)
			require.True(t, res.Allowed)
			_, res, err = l.Acquire(ctx, key, 1, time.Hour)
			require.NoError(t, err)
			require.False(t, res.Allowed)
			require.NoError(t, lease.Release(ctx))
		}
		require.Empty(t, b.keys(t))
	})
}

// TestConcurrencyHostileInput sends hostile raw EVALs on top of existing
// leases: each is refused with one "ERR luarate:" line naming the argument,
// and nothing stored changes; a key of another type, or a sorted set the
// script did not write, is refused and left alone.
func TestConcurrencyHostileInput(t *testing.T) {
	const now = "1700000000250"
	valid := []string{"acquire", "3", "3600000", "lease-1", now}
	eachBackend(t, func(t *testing.T, b backend) {
		key := []string{"{h}:c"}
		reply, errText := b.eval(t, "concurrency", key, valid...)
		require.Empty(t, errText)
		require.Equal(t, int64(1), reply[0])
		before := b.snapshot(t)
		names := []string{"op", "max", "lease_ms", "lease_id", "now_ms"}
		for i := range valid {
			bads := append([]string{}, hostileNumbers...)
			switch i {
			case 0:
				bads = []string{"", "ACQUIRE", "acquire ", "take", "acquire\x00", "0"}
			case 3:
				bads = []string{"", " ", "a b", "a\x00", "ключ", "{x}", strings.Repeat("x", 65), "a\n"}
			}
			for _, bad := range bads {
				if i == 4 && bad == "" {
					continue // an empty now_ms means "use Redis TIME"
				}
				argv := append([]string(nil), valid...)
				argv[i] = bad
				for _, op := range []string{"acquire", "release", "extend"} {
					if i != 0 {
						argv[0] = op
					}
					reply, errText := b.eval(t, "concurrency", key, argv...)
					requireLuarateError(t, reply, errText, names[i]+"="+strings.ToValidUTF8(bad, "?"))
					require.Contains(t, errText, names[i], "the error names the argument")
				}
			}
		}
		for _, c := range []struct {
			what string
			keys []string
			argv []string
		}{
			{"no keys", nil, valid},
			{"two keys", []string{"{h}:c", "{h}:d"}, valid},
			{"no ARGV", key, nil},
			{"3 ARGV", key, valid[:3]},
			{"6 ARGV", key, append(append([]string(nil), valid...), "1")},
			{"max 0", key, []string{"acquire", "0", "1000", "x", now}},
			{"max beyond 1e6", key, []string{"acquire", "1000001", "1000", "x", now}},
			{"lease_ms 0", key, []string{"acquire", "3", "0", "x", now}},
			{"lease_ms beyond 1e12", key, []string{"acquire", "3", "1000000000001", "x", now}},
			{"now_ms beyond 4e12", key, []string{"acquire", "3", "1000", "x", "4000000000001"}},
		} {
			reply, errText := b.eval(t, "concurrency", c.keys, c.argv...)
			requireLuarateError(t, reply, errText, c.what)
		}
		require.Equal(t, before, b.snapshot(t), "state changed")

		for _, typ := range []string{"string", "hash", "list", "set", "zset"} {
			k := "{h}:planted-" + typ
			b.plant(t, b.prefix+k, typ)
			before := b.snapshot(t)
			for _, op := range []string{"acquire", "release", "extend", "peek"} {
				reply, errText := b.eval(t, "concurrency", []string{k}, op, "10", "1000", "1", now)
				requireLuarateError(t, reply, errText, typ+" in the key, "+op)
				require.Contains(t, errText, "KEYS[1]", "the error names the key")
			}
			require.Equal(t, before, b.snapshot(t), "%s key: state changed", typ)
			require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+k).Build()).Error())
		}
	})
}
