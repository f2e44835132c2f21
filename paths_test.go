package luarate

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// TestFastPathMatchesGeneralPath runs the same random sequence of common
// calls (one key, take or peek, Redis's clock, cost missing or given) twice:
// in the plain form, which the scripts decide on their fast path, and with an
// explicit lockout of 0 ("rate period burst 0"), which sends the same call
// down the general path. Replies and stored state (value and TTL) must be
// identical after every step.
//
// On miniredis TIME is frozen between steps, so every step is compared. On
// real Redis the two calls of a step run in one MULTI between two TIMEs, and
// a step is compared when both TIMEs fall in one millisecond (scripts that
// keep microseconds are compared on miniredis only: two calls never share a
// microsecond of Redis's clock).
func TestFastPathMatchesGeneralPath(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, script := range limiterNames() {
			t.Run(script, func(t *testing.T) {
				if b.mini == nil && microsecondState[script] {
					t.Skip("state in microseconds: compared on miniredis, whose TIME the test freezes")
				}
				seed := time.Now().UnixNano()
				if *seedFlag != 0 {
					seed = *seedFlag
				}
				r := rand.New(rand.NewSource(seed))
				compared := 0
				for seq := 0; seq < 20; seq++ {
					p := randomParams(r, algorithmOf(script), 1)[0]
					lim := Limit{Algorithm: algorithmOf(script), Rate: int(p.rate), Period: time.Duration(p.period) * time.Millisecond, Burst: int(p.burst)}
					fast, general := "{fp}:"+script+":"+itoa(int64(seq))+":fast", "{fp}:"+script+":"+itoa(int64(seq))+":general"
					now := time.UnixMilli(1_700_000_000_000 + r.Int63n(1e9))
					for step := 0; step < 15; step++ {
						if b.mini != nil {
							d := time.Duration(r.Int63n(min(2*p.period, 3e9))) * time.Millisecond / 3 // TIME stays far below 4e12 ms
							now = now.Add(d)
							b.mini.SetTime(now)
							b.mini.FastForward(d)
						}
						var tail []string // cost: missing, 1, 0 (peek), or more
						switch k := r.Intn(6); {
						case k < 2:
						case k < 3:
							tail = []string{"1"}
						case k < 4:
							tail = []string{"0"}
						default:
							most := int64(lim.Capacity())
							if script == "sliding_window_log" {
								most = min(most, maxLogCost) // entries one call may add
							}
							tail = []string{itoa(1 + r.Int63n(most))}
						}
						what := script + " seed " + itoa(seed) + " limit " + spec(lim) + " cost " + strings.Join(tail, "")
						got, ok := bothPaths(t, b, script, fast, general, spec(lim), tail)
						if !ok {
							// the step straddled a millisecond: start both keys over
							require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+fast, b.prefix+general).Build()).Error())
							continue
						}
						require.Equal(t, got[0], got[1], "%s: fast path and general path disagree", what)
						compared++
					}
					require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+fast, b.prefix+general).Build()).Error())
				}
				require.Greater(t, compared, 100, "too few steps compared")
			})
		}
	})
}

// microsecondState are the scripts whose state keeps Redis's clock to the
// microsecond: two calls, one per path, never see the same one on real Redis.
var microsecondState = map[string]bool{"gcra": true, "sliding_window_log": true}

// bothPaths runs one call on key fast in the plain form and on key general
// with " 0" appended to its limit, and returns for each the reply, the stored
// value and its TTL as one string. ok is false on real Redis when Redis's
// clock moved to another millisecond between them.
func bothPaths(t *testing.T, b backend, script, fast, general, lim string, tail []string) (got [2]string, ok bool) {
	t.Helper()
	c, ctx := b.client, context.Background()
	sha := scripts[script].SHA1
	require.NoError(t, c.Do(ctx, c.B().ScriptLoad().Script(scripts[script].Source).Build()).Error())
	keys := [2]string{b.prefix + fast, b.prefix + general}
	specs := [2]string{lim, lim + " 0"}
	if b.mini != nil {
		for i := range keys {
			reply, errText := b.eval(t, script, []string{keys[i][len(b.prefix):]}, append([]string{specs[i]}, tail...)...)
			require.Empty(t, errText, "%s %v: key held %q", keys[i], append([]string{specs[i]}, tail...), b.value(t, keys[i][len(b.prefix):]))
			got[i] = stateOf(t, b, keys[i], reply)
		}
		return got, true
	}
	cmds := []rueidis.Completed{c.B().Multi().Build(), c.B().Time().Build()}
	for i := range keys {
		cmds = append(cmds, c.B().Evalsha().Sha1(sha).Numkeys(1).Key(keys[i]).Arg(append([]string{specs[i]}, tail...)...).Build(),
			c.B().Get().Key(keys[i]).Build(), c.B().Pttl().Key(keys[i]).Build())
	}
	cmds = append(cmds, c.B().Time().Build(), c.B().Exec().Build())
	res := c.DoMulti(ctx, cmds...)
	out, err := res[len(res)-1].ToArray()
	require.NoError(t, err)
	for i := range keys {
		reply, err := out[1+3*i].AsIntSlice()
		require.NoError(t, err, script)
		v, err := out[2+3*i].ToString()
		if rueidis.IsRedisNil(err) {
			v = "(none)"
		}
		ttl, err := out[3+3*i].AsInt64()
		require.NoError(t, err)
		got[i] = fmt.Sprint(reply, " ", v, " ttl ", ttl)
	}
	return got, micros(t, out[0])/1000 == micros(t, out[len(out)-1])/1000
}

// stateOf is a reply with its key's value and TTL in ms, as one string.
func stateOf(t *testing.T, b backend, key string, reply []int64) string {
	t.Helper()
	c, ctx := b.client, context.Background()
	v, err := c.Do(ctx, c.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		v = "(none)"
	}
	ttl, err := c.Do(ctx, c.B().Pttl().Key(key).Build()).AsInt64()
	require.NoError(t, err)
	return fmt.Sprint(reply, " ", v, " ttl ", ttl)
}
