package luarate

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// The differential tests run random sequences through each script (on
// miniredis and real Redis, explicit time) and through its reference model,
// and require every reply field to agree. A failure prints the sequence's
// seed; replay exactly that sequence with
//
//	go test -run 'TestDifferential/<script>/<backend>' -seed <seed> -v
//
// By default each script replays 100 sequences of 25 steps on real Redis and
// 12 on miniredis; LUARATE_FUZZ=k runs k times as many.
var seedFlag = flag.Int64("seed", 0, "replay one differential sequence or property run by its seed")

func fuzzScale() int {
	if k, err := strconv.Atoi(os.Getenv("LUARATE_FUZZ")); err == nil && k > 0 {
		return k
	}
	return 1
}

func algorithmOf(script string) Algorithm {
	for a, name := range scriptNames {
		if name == script {
			return Algorithm(a)
		}
	}
	panic("no algorithm for " + script)
}

// spec is the limit with lockout_ms as the scripts read it; an explicit
// lockout of 0 is the same limit, sent through the scripts' general path.
func (p params) spec(lockout int64, explicit bool) string {
	lim := Limit{Rate: int(p.rate), Period: time.Duration(p.period) * time.Millisecond, Burst: int(p.burst), Lockout: time.Duration(lockout) * time.Millisecond}
	if lockout == 0 && explicit {
		return spec(lim) + " 0"
	}
	return spec(lim)
}

// randomParams draws n limits that Validate accepts, with distinct periods:
// rates and periods that do not divide, tiny and huge periods.
func randomParams(r *rand.Rand, algo Algorithm, n int) []params {
	periods := []int64{1, 3, 7, 1000, 3000, 60_000, 86_400_000, 1_000_000_000_000}
	rates := []int64{1, 2, 3, 7, 10, 100_000}
	var out []params
	for len(out) < n {
		p := params{rate: rates[r.Intn(len(rates))], period: periods[r.Intn(len(periods))]}
		if r.Intn(3) == 0 {
			p.rate = 1 + r.Int63n(30)
		}
		if r.Intn(3) == 0 {
			p.period = 1 + r.Int63n(100_000)
		}
		if algo == SlidingWindowLog && p.rate > 1000 {
			p.rate = 1 + r.Int63n(1000) // one entry per unit: keep the sets small
		}
		switch r.Intn(3) {
		case 1:
			p.burst = p.rate
		case 2:
			p.burst = 1 + r.Int63n(3*p.rate)
		}
		lim := Limit{Algorithm: algo, Rate: int(p.rate), Period: time.Duration(p.period) * time.Millisecond, Burst: int(p.burst)}
		ok := lim.Validate() == nil
		for _, q := range out {
			ok = ok && q.period != p.period
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

func TestDifferential(t *testing.T) {
	// real Redis is the referee and fast; miniredis compiles the Lua on every
	// call, so it replays fewer sequences
	steps := 25
	for _, algo := range Algorithms() {
		t.Run(algo.String(), func(t *testing.T) {
			t.Parallel()
			eachBackend(t, func(t *testing.T, b backend) {
				if *seedFlag != 0 {
					runSequence(t, b, algo, *seedFlag, steps, true)
					return
				}
				sequences := 100 * fuzzScale()
				if b.mini != nil {
					sequences = 12 * fuzzScale()
				}
				base := time.Now().UnixNano()
				for i := range int64(sequences) {
					if !runSequence(t, b, algo, base+i, steps, false) {
						return
					}
				}
			})
		})
	}
}

// runSequence replays one random sequence; it reports false after a failure.
func runSequence(t *testing.T, b backend, algo Algorithm, seed int64, steps int, verbose bool) bool {
	t.Helper()
	script := algo.String()
	ctx := context.Background()
	r := rand.New(rand.NewSource(seed))
	ps := randomParams(r, algo, 1+r.Intn(3))
	capa := ps[0].capacity()
	for _, p := range ps {
		capa = min(capa, p.capacity())
	}
	if script == "sliding_window_log" {
		capa = min(capa, maxLogCost/int64(len(ps))) // entries one call may add
	}
	// half the sequences lock their limits once denied, for 1 ms to 31 years
	lockouts := make([]int64, len(ps))
	if r.Intn(2) == 0 {
		choices := []int64{0, 1, 7, 1000, 60_000, 1_000_000_000, 1_000_000_000_000}
		for i := range lockouts {
			lockouts[i] = choices[r.Intn(len(choices))]
			if r.Intn(3) == 0 {
				lockouts[i] = 1 + r.Int63n(100_000)
			}
		}
	}
	newModels := func() *multiModel {
		m := newMultiModel(algo, ps)
		copy(m.lockout, lockouts)
		return m
	}
	model := newModels()
	keys := make([]string, len(ps))
	specs := make([]string, len(ps))
	explicit := r.Intn(4) == 0 // "rate period burst 0": the general path
	for i, p := range ps {
		keys[i] = fmt.Sprintf("d%d:{s}:%d", seed, i)
		specs[i] = p.spec(lockouts[i], explicit)
	}
	now := int64(1_700_000_000_000) + r.Int63n(1e9)
	if r.Intn(8) == 0 {
		now = r.Int63n(2000) // near the epoch: windows reaching before 0
	}
	full := make([]string, len(keys))
	for i := range keys {
		full[i] = b.prefix + keys[i]
	}
	if err := b.client.Do(ctx, b.client.B().ScriptLoad().Script(scripts[script].Source).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	defer b.client.Do(ctx, b.client.B().Del().Key(full...).Build())
	expireAt := make([]int64, len(ps)) // script time each key's TTL ends; 0 = no key
	var history []string
	fail := func(format string, args ...any) bool {
		t.Errorf("%s seed %d (replay: go test -run 'TestDifferential/%s/%s' -seed %d -v)\nlimits %v lockouts %v\n%s\n%s",
			script, seed, script, b.name, seed, ps, lockouts, strings.Join(history, "\n"), fmt.Sprintf(format, args...))
		return false
	}
	var last reply
	for step := 0; step < steps; step++ {
		// time moves: not at all, a little, to the exact retry instant, a lot, or back
		switch k := r.Intn(20); {
		case k < 4:
		case k < 8:
			now += 1 + r.Int63n(10)
		case k < 11:
			now += 1 + r.Int63n(min(ps[r.Intn(len(ps))].period, 1e9))
		case k < 14 && last[4] > 0:
			now += last[4] - r.Int63n(2) // the retry instant, or 1 ms before it
		case k < 15:
			now += r.Int63n(1e11)
		case k < 18:
			now -= 1 + r.Int63n(min(ps[r.Intn(len(ps))].period, 1e6))
		default:
			history = append(history, "reset")
			if err := b.client.Do(ctx, b.client.B().Del().Key(full...).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			model = newModels()
			clear(expireAt)
			continue
		}
		now = max(0, min(now, 4e12))

		// emulate expiry in script time: a key whose TTL ended must hold
		// nothing that still matters
		for i, at := range expireAt {
			if at != 0 && now >= at {
				got := model.peek(i, now)
				want, _ := newModel(algo, ps[i]).decide(0, now)
				if got != want {
					return fail("key %d expired at %d but its state still matters at %d: %v, empty gives %v", i, at, now, got, want)
				}
				if err := b.client.Do(ctx, b.client.B().Del().Key(b.prefix+keys[i]).Build()).Error(); err != nil {
					t.Fatal(err)
				}
				model.reset(i)
				expireAt[i] = 0
			}
		}

		cost := int64(1)
		switch k := r.Intn(10); {
		case k < 1:
			cost = 0
		case k < 5:
		case k < 6:
			cost = capa
		default:
			cost = 1 + r.Int63n(capa)
		}
		// mode: mostly take (with the mode argument left out, empty or
		// spelled out), else atmost or refund; lockouts when the sequence has them
		mode := "take"
		switch k := r.Intn(10); {
		case k < 2:
			mode = "atmost"
		case k < 4 && algo != LeakyQueue: // it takes no refunds
			mode = "refund"
		}
		var args []string
		switch {
		case mode != "take" || r.Intn(3) == 0:
			args = v3argv(specs, itoa(cost), itoa(now), mode)
		case r.Intn(2) == 0:
			args = append(v3argv(specs, itoa(cost), itoa(now), ""), "")
		default:
			args = v3argv(specs, itoa(cost), itoa(now), "")
		}
		befores := make([]string, len(keys))
		for i := range keys {
			befores[i] = snapshot(t, b, keys[i:i+1])
		}
		want, each, wrote := model.decideMode(mode, cost, now)
		got, ttls, errText := evalAndPersist(t, b, script, keys, args)
		history = append(history, fmt.Sprintf("  %s %d now %d -> %v", mode, cost, now, got))
		if verbose {
			t.Log(history[len(history)-1])
		}
		if errText != "" {
			return fail("script error: %s", errText)
		}
		if len(got) != len(want) || reply(got) != want {
			return fail("script %v, model %v", got, want)
		}
		last = want
		for i, ttl := range ttls {
			switch {
			case !wrote[i]:
				// a denial, a peek or a refund of nothing: the state must not change
				if after := snapshot(t, b, keys[i:i+1]); after != befores[i] || ttl >= 0 {
					return fail("key %d: a call that should write nothing changed the state (PTTL %d):\n%s\n%s", i, ttl, befores[i], after)
				}
			case ttl == -2:
				// deleted: only a refund back to full does that (no key
				// expires inside MULTI/EXEC, and no script's PEXPIRE deletes
				// at once: see ttlSlack)
				if mode != "refund" {
					return fail("key %d deleted by a %s", i, mode)
				}
				fresh, _ := newModel(algo, ps[i]).decide(0, now)
				if got := model.peek(i, now); got != fresh {
					return fail("key %d deleted, but its state still matters at %d: %v, empty gives %v", i, now, got, fresh)
				}
				model.reset(i)
				expireAt[i] = 0
			default:
				// every written key's TTL is its limit's reset_after
				exp := each[i][3] + ttlSlack(script)
				if ttl > exp || ttl < exp-200 || (b.mini != nil && ttl != exp) {
					return fail("key %d has PTTL %d, want its reset_after %d + %d", i, ttl, each[i][3], ttlSlack(script))
				}
				expireAt[i] = now + each[i][3]
			}
		}
	}
	return true
}

// evalAndPersist runs the script, reads the keys' TTLs and removes them in
// one MULTI/EXEC, so no key expires on the wall clock while the test runs its
// own clock: the test emulates expiry in script time instead.
//
// One thing still ends a TTL on the wall clock: a real Redis stalled for
// over a millisecond inside a script's PEXPIRE (the host took the CPU) deletes
// the key at once, as its short TTL really ran out. The call is then run
// again on the state from before it, which the same transaction DUMPed. A key
// gone in a transaction that took under 1 ms is not retried: that is the
// script's doing (see ttlSlack).
func evalAndPersist(t *testing.T, b backend, script string, keys, args []string) (got, ttls []int64, errText string) {
	t.Helper()
	ctx := context.Background()
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = b.prefix + k
	}
	n := len(full)
	sha := scripts[script].SHA1
	for try := 1; ; try++ {
		cmds := rueidis.Commands{b.client.B().Multi().Build()}
		for _, k := range full {
			cmds = append(cmds, b.client.B().Dump().Key(k).Build())
		}
		cmds = append(cmds, b.client.B().Time().Build(), b.client.B().Evalsha().Sha1(sha).Numkeys(int64(n)).Key(full...).Arg(args...).Build())
		for _, k := range full {
			cmds = append(cmds, b.client.B().Pttl().Key(k).Build())
		}
		for _, k := range full {
			cmds = append(cmds, b.client.B().Persist().Key(k).Build())
		}
		cmds = append(cmds, b.client.B().Time().Build(), b.client.B().Exec().Build())
		var res []rueidis.RedisResult
		err := b.client.Dedicated(func(c rueidis.DedicatedClient) error {
			res = c.DoMulti(ctx, cmds...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		replies, err := res[len(res)-1].ToArray()
		if err != nil {
			t.Fatalf("MULTI/EXEC: %v", err)
		}
		if err := replies[n+1].Error(); err != nil {
			return nil, nil, err.Error()
		}
		if got, err = replies[n+1].AsIntSlice(); err != nil {
			t.Fatalf("%s reply is not integers: %v", script, err)
		}
		ttls = ttls[:0]
		gone := false
		for _, r := range replies[n+2 : 2*n+2] {
			ttl, err := r.AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			ttls, gone = append(ttls, ttl), gone || ttl == -2
		}
		if !gone || b.mini != nil || try == 3 || micros(t, replies[3*n+2])-micros(t, replies[n]) < 1000 {
			return got, ttls, ""
		}
		for i, k := range full { // a stall: back to the state before the call, and again
			var restore rueidis.Completed
			if before, err := replies[i].ToString(); err == nil {
				restore = b.client.B().Restore().Key(k).Ttl(0).SerializedValue(before).Replace().Build()
			} else {
				restore = b.client.B().Del().Key(k).Build() // there was none
			}
			if err := b.client.Do(ctx, restore).Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// micros reads a TIME reply as Unix microseconds.
func micros(t *testing.T, m rueidis.RedisMessage) int64 {
	t.Helper()
	parts, err := m.AsIntSlice()
	if err != nil || len(parts) != 2 {
		t.Fatalf("TIME: %v %v", parts, err)
	}
	return parts[0]*1_000_000 + parts[1]
}

// snapshot is everything stored under keys, TTLs included.
func snapshot(t *testing.T, b backend, keys []string) string {
	t.Helper()
	ctx := context.Background()
	var sb strings.Builder
	for _, k := range keys {
		k = b.prefix + k
		typ, err := b.client.Do(ctx, b.client.B().Type().Key(k).Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		var val any
		switch typ {
		case "string":
			val, err = b.client.Do(ctx, b.client.B().Get().Key(k).Build()).ToString()
		case "zset":
			val, err = b.client.Do(ctx, b.client.B().Zrange().Key(k).Min("0").Max("-1").Withscores().Build()).AsStrSlice()
		}
		if err != nil {
			t.Fatal(err)
		}
		ttl, _ := b.client.Do(ctx, b.client.B().Pttl().Key(k).Build()).AsInt64()
		fmt.Fprintf(&sb, "%s %s pttl=%d %v\n", k, typ, ttl, val)
	}
	return sb.String()
}
