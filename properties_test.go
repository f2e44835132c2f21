package luarate

import (
	"context"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// propertyLimits are the limits every algorithm is held to its promises on:
// rates that do not divide their period, 1 per day, 100000 per second, a
// 1 ms period and a period of about 31 years.
func propertyLimits(algo Algorithm) []Limit {
	limits := []Limit{
		{Algorithm: algo, Rate: 7, Period: 3 * time.Second},
		{Algorithm: algo, Rate: 1, Period: 24 * time.Hour},
		{Algorithm: algo, Rate: 100_000, Period: time.Second},
		{Algorithm: algo, Rate: 3, Period: time.Millisecond},
		{Algorithm: algo, Rate: 5, Period: 1_000_000_000_000 * time.Millisecond},
	}
	if !algo.windowed() {
		limits = append(limits, Limit{Algorithm: algo, Rate: 10, Period: time.Second, Burst: 25})
	}
	if algo == SlidingWindowLog {
		limits[2].Rate = maxLogRate // one entry per unit: its largest rate
	}
	return limits
}

// fullAfter is how long a key takes to be back to full after any traffic.
func fullAfter(l Limit) int64 {
	ms := l.Period.Milliseconds()
	switch l.Algorithm {
	case FixedWindow, SlidingWindowLog:
		return ms
	case SlidingWindowCounter:
		return 2 * ms // the current window still weighs on the next one
	case GCRA:
		t := (ms*1000 + int64(l.Rate) - 1) / int64(l.Rate) // emission interval, us, rounded up
		return (int64(l.Capacity())*t + 999) / 1000
	}
	return (int64(l.Capacity())*ms + int64(l.Rate) - 1) / int64(l.Rate)
}

type admission struct{ at, cost int64 }

// checkPromise verifies what the algorithm promises about admitted cost over
// time, for admissions in time order.
func checkPromise(t *testing.T, l Limit, adm []admission) {
	t.Helper()
	rate, p, capa := int64(l.Rate), l.Period.Milliseconds(), int64(l.Capacity())
	inWindow := func(from, to int64) (sum int64) { // admitted cost in [from, to]
		for _, a := range adm {
			if a.at >= from && a.at <= to {
				sum += a.cost
			}
		}
		return sum
	}
	for i, a := range adm {
		start := a.at - a.at%p
		switch l.Algorithm {
		case FixedWindow:
			require.LessOrEqual(t, inWindow(start, start+p-1), rate, "window at %d", start)
		case SlidingWindowLog:
			require.LessOrEqual(t, inWindow(a.at-p+1, a.at), rate, "period ending at %d", a.at)
		case SlidingWindowCounter:
			require.LessOrEqual(t, inWindow(start, start+p-1), rate, "window at %d", start)
			// any span of p: rate plus the previous window weighted by the
			// elapsed part of this one (the documented worst case, < 2 rate)
			prev := inWindow(start-p, start-1)
			require.LessOrEqual(t, inWindow(a.at-p+1, a.at)*p, rate*p+prev*(a.at-start), "period ending at %d", a.at)
		default: // bucket algorithms: Burst at once, then Rate per Period
			for _, b := range adm[i:] {
				require.LessOrEqual(t, inWindow(a.at, b.at)*p, capa*p+rate*(b.at-a.at), "from %d to %d", a.at, b.at)
			}
		}
	}
}

func TestProperties(t *testing.T) {
	steps := 40 * fuzzScale()
	for _, algo := range Algorithms() {
		t.Run(algo.String(), func(t *testing.T) {
			t.Parallel()
			eachBackend(t, func(t *testing.T, b backend) {
				seed := time.Now().UnixNano()
				if *seedFlag != 0 {
					seed = *seedFlag // replay: go test -run 'TestProperties/<algorithm>/<backend>' -seed <seed>
				}
				r := rand.New(rand.NewSource(seed))
				defer func() {
					if t.Failed() {
						t.Logf("seed %d", seed)
					}
				}()
				for li, lim := range propertyLimits(algo) {
					propertyRun(t, b, r, lim, "k"+itoa(int64(li)), steps)
				}
			})
		})
	}
}

// scriptClock drives one limit's script on the test's own clock. Keys never
// expire on the wall clock (see evalAndPersist); they expire in script time
// once their TTL, the reply's reset_after, has passed.
type scriptClock struct {
	t        *testing.T
	b        backend
	lim      Limit
	key      string
	now      int64
	expireAt int64
}

func (s *scriptClock) allowN(n int) Result { return s.call(n, "take") }

// call runs the script in mode (take or atmost) for n units.
func (s *scriptClock) call(n int, mode string) Result {
	s.t.Helper()
	if s.expireAt != 0 && s.now >= s.expireAt {
		require.NoError(s.t, s.b.client.Do(context.Background(), s.b.client.B().Del().Key(s.b.prefix+s.key).Build()).Error())
		s.expireAt = 0
	}
	args := v3argv([]string{spec(s.lim)}, itoa(int64(n)), itoa(s.now), mode)
	got, _, errText := evalAndPersist(s.t, s.b, s.lim.Algorithm.String(), []string{s.key}, args)
	require.Empty(s.t, errText)
	require.Len(s.t, got, replyLen)
	for _, v := range got {
		require.GreaterOrEqual(s.t, v, int64(0), "reply %v has a negative field", got)
	}
	require.LessOrEqual(s.t, got[0], int64(1))
	if got[0] == 1 && n > 0 {
		s.expireAt = s.now + got[3]
	}
	require.LessOrEqual(s.t, got[6], int64(n), "granted more than asked")
	return Result{Allowed: got[0] == 1, Limit: got[1], Remaining: got[2], ResetAfter: time.Duration(got[3]) * time.Millisecond,
		RetryAfter: time.Duration(got[4]) * time.Millisecond, Delay: time.Duration(got[5]) * time.Millisecond, Granted: got[6]}
}

func propertyRun(t *testing.T, b backend, r *rand.Rand, lim Limit, key string, steps int) {
	require.NoError(t, b.client.Do(context.Background(), b.client.B().ScriptLoad().Script(scripts[lim.Algorithm.String()].Source).Build()).Error())
	s := &scriptClock{t: t, b: b, lim: lim, key: key, now: 1_700_000_000_000 + r.Int63n(1e9)}
	defer b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+key).Build())
	p, capa := lim.Period.Milliseconds(), lim.Capacity()
	maxCost := capa
	if lim.Algorithm == SlidingWindowLog {
		maxCost = min(capa, maxLogCost) // one entry per unit
	}
	const horizon = 1_900_000_000_000 // with 2e12 ms of silence, now_ms stays under 4e12
	var adm []admission
	do := func(n int) Result {
		t.Helper()
		res := s.allowN(n)
		require.Equal(t, int64(capa), res.Limit)
		require.LessOrEqual(t, res.Remaining, res.Limit)
		if res.Allowed {
			require.Zero(t, res.RetryAfter)
			if n > 0 {
				adm = append(adm, admission{s.now, int64(n)})
			}
		} else {
			require.Positive(t, res.RetryAfter)
		}
		return res
	}
	full := func(res Result) bool {
		return res.Remaining == res.Limit && (res.ResetAfter == 0 || lim.Algorithm == FixedWindow)
	}
	for range steps {
		switch k := r.Intn(10); {
		case k < 3:
		case k < 7:
			s.now += r.Int63n(min(max(p/10, 2), 1e9))
		default:
			s.now += r.Int63n(min(2*p, 1e9))
		}
		s.now = min(s.now, horizon) // (long runs, LUARATE_FUZZ: time stops there)
		n := 1
		if r.Intn(3) == 0 {
			n = 1 + r.Intn(maxCost)
		}
		if r.Intn(4) == 0 {
			// a partial grant: what it grants counts like any admission, and
			// when it grants nothing, retry_after is exact for one unit
			res := s.call(n, "atmost")
			require.Equal(t, res.Granted > 0, res.Allowed)
			if res.Granted > 0 {
				require.Zero(t, res.RetryAfter)
				adm = append(adm, admission{s.now, res.Granted})
			} else if wait := res.RetryAfter.Milliseconds(); s.now+wait < horizon {
				require.Positive(t, wait)
				s.now += wait - 1
				require.False(t, do(1).Allowed, "%v: atmost: one unit admitted 1 ms before retry_after %d", lim, wait)
				s.now++
				require.True(t, do(1).Allowed, "%v: atmost: one unit denied at retry_after %d", lim, wait)
			}
			continue
		}
		res := do(n)
		require.Equal(t, b2i(res.Allowed)*int64(n), res.Granted)
		if wait := res.RetryAfter.Milliseconds(); !res.Allowed && s.now+wait < horizon && r.Intn(2) == 0 {
			// retry_after is exact: 1 ms early is too early, on time is admitted
			s.now += wait - 1
			require.False(t, do(n).Allowed, "%v: admitted 1 ms before retry_after %d", lim, wait)
			s.now++
			require.True(t, do(n).Allowed, "%v: denied at retry_after %d", lim, wait)
		}
		if r.Intn(8) == 0 {
			// reset_after is exact: full then, not 1 ms before
			if wait := do(0).ResetAfter.Milliseconds(); wait > 0 && s.now+wait < horizon && lim.Algorithm != FixedWindow {
				s.now += wait - 1
				require.False(t, full(do(0)), "%v: full 1 ms before reset_after %d", lim, wait)
				s.now++
				require.True(t, full(do(0)), "%v: not full at reset_after %d", lim, wait)
			}
		}
	}
	checkPromise(t, lim, adm)

	// after the algorithm's full period of silence the key is back to full
	s.now += fullAfter(lim)
	require.True(t, full(do(0)), "%v: not full after %d ms of silence", lim, fullAfter(lim))
}

// TestRaceOneInstant: 64 goroutines on several connections hammer one key at one
// instant; exactly the capacity is admitted, never more. With two limits the
// call is all-or-nothing: both limits are charged for exactly the admissions.
func TestRaceOneInstant(t *testing.T) {
	clients := make([]rueidis.Client, 4)
	for i := range clients {
		clients[i] = realClient(t)
	}
	for _, algo := range Algorithms() {
		t.Run(algo.String(), func(t *testing.T) {
			ctx := context.Background()
			c := &clock{ms: 1_700_000_000_000} // a window start: no previous window weighs
			prefix := uniquePrefix()
			small := Limit{Algorithm: algo, Rate: 37, Period: time.Hour}
			big := Limit{Algorithm: algo, Rate: 50, Period: time.Second}
			for _, limits := range [][]Limit{{small}, {big, small}} {
				var admitted, denied int64
				var mu sync.Mutex
				var wg sync.WaitGroup
				for g := range 64 {
					l := New(clients[g%len(clients)], WithPrefix(prefix+itoa(int64(len(limits)))+":"), WithClock(c.now))
					wg.Go(func() {
						for range 4 {
							res, err := l.AllowMulti(ctx, "hot", 1, limits...)
							if err != nil {
								t.Error(err)
								return
							}
							mu.Lock()
							if res.Allowed {
								admitted++
							} else {
								denied++
							}
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				require.Equal(t, int64(small.Rate), admitted, "%d limits", len(limits))
				require.Equal(t, int64(64*4-small.Rate), denied)
				l := New(clients[0], WithPrefix(prefix+itoa(int64(len(limits)))+":"), WithClock(c.now))
				for _, lim := range limits {
					peek, err := l.Peek(ctx, "hot", lim)
					require.NoError(t, err)
					require.Equal(t, int64(lim.Capacity()-small.Rate), peek.Remaining, "%v charged for exactly the admissions", lim)
					require.NoError(t, l.Reset(ctx, "hot", lim))
				}
			}
		})
	}
}

func TestValidateNewAlgorithms(t *testing.T) {
	for _, tc := range []struct {
		limit Limit
		ok    bool
	}{
		{Limit{Algorithm: SlidingWindowLog, Rate: 10, Period: time.Second}, true},
		{Limit{Algorithm: SlidingWindowLog, Rate: 10, Period: time.Second, Burst: 10}, true},
		{Limit{Algorithm: SlidingWindowLog, Rate: 10, Period: time.Second, Burst: 20}, false},
		{Limit{Algorithm: SlidingWindowLog, Rate: maxLogRate, Period: time.Second}, true},
		{Limit{Algorithm: SlidingWindowLog, Rate: maxLogRate + 1, Period: time.Second}, false},
		{Limit{Algorithm: SlidingWindowCounter, Rate: 10, Period: time.Second, Burst: 5}, false},
		{Limit{Algorithm: SlidingWindowCounter, Rate: 1_000_000_000, Period: 10_000_000 * time.Millisecond}, false},
		{Limit{Algorithm: SlidingWindowCounter, Rate: 1_000_000_000, Period: 9_000_000 * time.Millisecond}, true},
		{Limit{Algorithm: LeakyBucket, Rate: 10, Period: time.Second, Burst: 25}, true},
		{Limit{Algorithm: LeakyBucket, Rate: 1, Period: 1_000_000_000_000 * time.Millisecond, Burst: 10_000}, false},
	} {
		err := tc.limit.Validate()
		if tc.ok {
			require.NoError(t, err, "%+v", tc.limit)
		} else {
			require.ErrorIs(t, err, ErrInvalidLimit, "%+v", tc.limit)
		}
	}
}

// TestServerClockEveryAlgorithm: without WithClock the scripts read Redis TIME (microseconds
// for the log) and still give consistent replies.
func TestServerClockEveryAlgorithm(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		l := New(b.client, WithPrefix(b.prefix))
		for _, algo := range Algorithms() {
			lim := Limit{Algorithm: algo, Rate: 5, Period: time.Hour}
			first, err := l.Allow(ctx, "srv", lim)
			require.NoError(t, err)
			require.True(t, first.Allowed, "%s", algo)
			require.Equal(t, int64(4), first.Remaining, "%s", algo)
			second, err := l.AllowN(ctx, "srv", lim, 5)
			require.NoError(t, err)
			require.False(t, second.Allowed, "%s", algo)
			require.Positive(t, second.RetryAfter, "%s", algo)
			require.LessOrEqual(t, second.RetryAfter, 2*time.Hour, "%s", algo)
			require.NoError(t, l.Reset(ctx, "srv", lim))
		}
	})
}
