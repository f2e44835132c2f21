package luarate

import (
	"context"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// hostileNumbers are ARGV values no script may take for a number: each must
// get one "ERR luarate:" line naming the argument, and change nothing.
var hostileNumbers = []string{"", "-1", "-0", "+1", " 1", "1 ", "1.5", "0.5", "1e3", "0x10", "NaN", "nan", "inf", "-inf",
	"Infinity", "99999999999999999999", "9223372036854775808", "1\x00", "\x00", "１", "1,000", "١"}

// snapshot is everything stored under the backend's prefix: key -> type,
// value and whether it expires. Equal snapshots mean nothing changed.
func (b backend) snapshot(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	c := b.client
	keys, err := c.Do(ctx, c.B().Keys().Pattern(b.prefix+"*").Build()).AsStrSlice()
	require.NoError(t, err)
	out := map[string]string{}
	for _, k := range keys {
		typ, err := c.Do(ctx, c.B().Type().Key(k).Build()).ToString()
		require.NoError(t, err)
		var cmd rueidis.Completed
		switch typ {
		case "string":
			cmd = c.B().Get().Key(k).Build()
		case "hash":
			cmd = c.B().Hgetall().Key(k).Build()
		case "list":
			cmd = c.B().Lrange().Key(k).Start(0).Stop(-1).Build()
		case "set":
			cmd = c.B().Smembers().Key(k).Build()
		case "zset":
			cmd = c.B().Zrange().Key(k).Min("0").Max("-1").Withscores().Build()
		default:
			t.Fatalf("key %q of type %s", k, typ)
		}
		msg, err := c.Do(ctx, cmd).ToMessage()
		require.NoError(t, err)
		value := msg.String()
		if typ == "hash" || typ == "set" { // unordered replies
			parts, _ := msg.AsStrSlice()
			sort.Strings(parts)
			value = strings.Join(parts, ",")
		}
		ttl, err := c.Do(ctx, c.B().Pttl().Key(k).Build()).AsInt64()
		require.NoError(t, err)
		out[k] = typ + " " + value + " expires=" + itoa(min(ttl, 0)+1)
	}
	return out
}

// plant stores a value of the given Redis type at key, one no script writes.
func (b backend) plant(t *testing.T, key, typ string) {
	t.Helper()
	c, ctx := b.client, context.Background()
	var cmd rueidis.Completed
	switch typ {
	case "string":
		cmd = c.B().Set().Key(key).Value("garbage 1 2").Build()
	case "hash":
		cmd = c.B().Hset().Key(key).FieldValue().FieldValue("tokens", "5").FieldValue("ts", "1").Build()
	case "list":
		cmd = c.B().Rpush().Key(key).Element("1", "2").Build()
	case "set":
		cmd = c.B().Sadd().Key(key).Member("1").Build()
	case "zset":
		cmd = c.B().Zadd().Key(key).ScoreMember().ScoreMember(1, "1").Build()
	}
	require.NoError(t, c.Do(ctx, cmd).Error())
	require.NoError(t, c.Do(ctx, c.B().Pexpire().Key(key).Milliseconds(60_000).Build()).Error())
}

// requireLuarateError checks the reply of a refused call: no reply, and one
// line of "ERR luarate: ..." text.
func requireLuarateError(t *testing.T, reply []int64, errText, what string) {
	t.Helper()
	require.Nil(t, reply, what)
	require.True(t, strings.HasPrefix(errText, "ERR luarate: "), "%s: got %q", what, errText)
	require.NotContains(t, errText, "\n", what)
	require.NotContains(t, errText, " failed: ", "%s: a runtime error, not a validation: %q", what, errText)
}

// TestHostileScriptInput sends hostile raw EVALs to every script, as another
// language might, on top of existing state: each is refused with one
// "ERR luarate:" line and the stored state does not change.
func TestHostileScriptInput(t *testing.T) {
	const now = "1700000000250"
	// a limit of 10 an hour (so the state planted first cannot expire on
	// real Redis's own clock while the test compares it), cost, now_ms
	valid := v3argv([]string{"10 3600000 0"}, "1", now, "")
	eachBackend(t, func(t *testing.T, b backend) {
		for _, s := range Scripts() {
			if s.Name == "concurrency" {
				continue // other ARGV: TestConcurrencyHostileInput
			}
			t.Run(s.Name, func(t *testing.T) {
				keys := []string{"{h}:" + s.Name + ":a", "{h}:" + s.Name + ":b"}
				// existing state: one admitted request on each key
				reply, errText := b.eval(t, s.Name, keys[:1], valid...)
				require.Empty(t, errText)
				require.Equal(t, int64(1), reply[0])
				reply, errText = b.eval(t, s.Name, keys, v3argv([]string{"10 3600000 0", "100 7200000 0"}, "1", now, "")...)
				require.Empty(t, errText)
				require.Equal(t, int64(1), reply[0])
				before := b.snapshot(t)

				// each number of the limit, then cost and now_ms
				fields := []string{"10", "3600000", "0", "1000"} // rate period_ms burst lockout_ms
				for i := range fields {
					for _, bad := range hostileNumbers {
						f := append([]string(nil), fields...)
						f[i] = bad
						lim := strings.Join(f[:max(i+1, 3)], " ")
						reply, errText := b.eval(t, s.Name, keys[:1], v3argv([]string{lim}, "1", now, "")...)
						requireLuarateError(t, reply, errText, "limit "+strings.ToValidUTF8(lim, "?"))
						require.Contains(t, errText, "ARGV[1] ", "the error names the argument")
					}
				}
				for i, name := range []string{"cost", "now_ms"} {
					for _, bad := range hostileNumbers {
						if bad == "" && name == "now_ms" {
							continue // an empty now_ms means "use Redis TIME"
						}
						argv := append([]string(nil), valid...)
						argv[1+i] = bad
						reply, errText := b.eval(t, s.Name, keys[:1], argv...)
						requireLuarateError(t, reply, errText, name+"="+strings.ToValidUTF8(bad, "?"))
						require.Contains(t, errText, "ARGV["+itoa(int64(2+i))+"] "+name, "the error names the argument")
					}
				}
				for _, bad := range []string{"x", "Take", "take ", " take", "atmost\x00", "refund1", "-1", "0", "1", "NaN"} {
					reply, errText := b.eval(t, s.Name, keys[:1], append(valid, bad)...)
					requireLuarateError(t, reply, errText, "mode="+strings.ToValidUTF8(bad, "?"))
					require.Contains(t, errText, "ARGV[4] mode", "the error names the argument")
					for _, argv := range [][]string{
						append(valid, bad, "1000"),
						append(valid, "take", "1"), // one ARGV too many
					} {
						reply, errText := b.eval(t, s.Name, keys[:1], argv...)
						requireLuarateError(t, reply, errText, "mode="+strings.ToValidUTF8(bad, "?"))
					}
				}
				for _, c := range []struct {
					what string
					keys []string
					argv []string
				}{
					{"no keys", nil, valid},
					{"no ARGV", keys[:1], nil},
					{"ARGV for one key, two keys", keys, valid},
					{"ARGV for two keys, one key", keys[:1], []string{"10 1000 0", "100 3600000 0", "1", now}},
					{"one ARGV too many", keys[:1], append(valid, "take", "1")},
					{"limit as three ARGV (v2)", keys[:1], []string{"10", "3600000", "0", "1", now}},
					{"empty cost", keys[:1], []string{"10 3600000 0", "", now}},
					{"cost above capacity", keys[:1], []string{"10 1000 0", "11", now}},
					{"second limit's rate bad", keys, []string{"10 1000 0", "-5 3600000 0", "1", now}},
					{"now_ms beyond 4e12", keys[:1], []string{"10 1000 0", "1", "4000000000001"}},
					{"rate beyond 1e9", keys[:1], []string{"1000000001 1000 0", "1", now}},
					{"period_ms beyond 1e12", keys[:1], []string{"10 1000000000001 0", "1", now}},
					{"lockout_ms beyond 1e12", keys[:1], []string{"10 1000 0 1000000000001", "1", now}},
					{"period_ms 0", keys[:1], []string{"10 0 0", "1", now}},
					{"rate 0", keys[:1], []string{"0 1000 0", "1", now}},
					{"one key twice", []string{keys[0], keys[0]}, []string{"2 1000 0", "100 3600000 0", "1", now}},
				} {
					reply, errText := b.eval(t, s.Name, c.keys, c.argv...)
					requireLuarateError(t, reply, errText, c.what)
				}
				require.Equal(t, before, b.snapshot(t), "state changed")

				// odd but valid raw keys are keys like any other
				for _, k := range []string{"{h}:" + strings.Repeat("\xff", 1<<20), "{h}:\x00\r\n", "{h}:ключ🙂"} {
					reply, errText := b.eval(t, s.Name, []string{k}, valid...)
					require.Empty(t, errText)
					require.Equal(t, int64(1), reply[0])
					require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+k).Build()).Error())
				}

				// a key holding what the script did not write, of every type
				for _, typ := range []string{"string", "hash", "list", "set", "zset"} {
					k := "{h}:" + s.Name + ":planted-" + typ
					b.plant(t, b.prefix+k, typ)
					before := b.snapshot(t)
					for _, cost := range []string{"1", "0"} {
						reply, errText := b.eval(t, s.Name, []string{k}, v3argv([]string{"10 1000 0"}, cost, now, "")...)
						requireLuarateError(t, reply, errText, typ+" in the key, cost "+cost)
						require.Contains(t, errText, "KEYS[1]", "the error names the key")
						// in a multi-limit call, the valid first key is not charged either
						reply, errText = b.eval(t, s.Name, []string{keys[0], k}, v3argv([]string{"10 1000 0", "10 3600000 0"}, cost, now, "")...)
						requireLuarateError(t, reply, errText, typ+" in the second key")
					}
					require.Equal(t, before, b.snapshot(t), "%s key: state changed", typ)
					require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+k).Build()).Error())
				}
			})
		}
	})
}

// TestHostileGoInput goes through the Go API: bad limits and requests are
// refused before any round trip, odd but valid keys (1 MB, binary, braces)
// work, and none of it disturbs existing state.
func TestHostileGoInput(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, algo := range Algorithms() {
			t.Run(algo.String(), func(t *testing.T) {
				c := &clock{ms: 1_700_000_000_250}
				l := b.limiter(c)
				ctx := context.Background()
				ok := PerHour(algo, 10) // long TTLs: the state must not expire during the test
				_, err := l.Allow(ctx, "existing", ok)
				require.NoError(t, err)
				before := b.snapshot(t)

				for _, tc := range []struct {
					what string
					call func() error
					want error
				}{
					{"empty key", func() error { _, err := l.Allow(ctx, "", ok); return err }, ErrInvalidRequest},
					{"no limits", func() error { _, err := l.AllowMulti(ctx, "k", 1); return err }, ErrInvalidRequest},
					{"negative n", func() error { _, err := l.AllowN(ctx, "k", ok, -1); return err }, ErrInvalidRequest},
					{"n above capacity", func() error { _, err := l.AllowN(ctx, "k", ok, 11); return err }, ErrInvalidRequest},
					{"huge n", func() error { _, err := l.AllowN(ctx, "k", ok, 1<<62); return err }, ErrInvalidRequest},
					{"zero algorithm", func() error { _, err := l.Allow(ctx, "k", Limit{Rate: 1, Period: time.Second}); return err }, ErrInvalidLimit},
					{"unknown algorithm", func() error {
						_, err := l.Allow(ctx, "k", Limit{Algorithm: 99, Rate: 1, Period: time.Second})
						return err
					}, ErrInvalidLimit},
					{"negative rate", func() error { _, err := l.Allow(ctx, "k", PerSecond(algo, -1)); return err }, ErrInvalidLimit},
					{"huge rate", func() error { _, err := l.Allow(ctx, "k", PerSecond(algo, 1<<40)); return err }, ErrInvalidLimit},
					{"zero period", func() error { _, err := l.Allow(ctx, "k", Limit{Algorithm: algo, Rate: 1}); return err }, ErrInvalidLimit},
					{"negative period", func() error {
						_, err := l.Allow(ctx, "k", Limit{Algorithm: algo, Rate: 1, Period: -time.Second})
						return err
					}, ErrInvalidLimit},
					{"fractional ms period", func() error {
						_, err := l.Allow(ctx, "k", Limit{Algorithm: algo, Rate: 1, Period: 1500 * time.Microsecond})
						return err
					}, ErrInvalidLimit},
					{"huge period", func() error {
						_, err := l.Allow(ctx, "k", Limit{Algorithm: algo, Rate: 1, Period: 1 << 62})
						return err
					}, ErrInvalidLimit},
					{"negative burst", func() error {
						_, err := l.Allow(ctx, "k", Limit{Algorithm: algo, Rate: 1, Period: time.Second, Burst: -1})
						return err
					}, ErrInvalidLimit},
					{"reset with bad limit", func() error { return l.Reset(ctx, "k", PerSecond(algo, 0)) }, ErrInvalidLimit},
					{"two limits, one period", func() error { _, err := l.AllowMulti(ctx, "k", 1, ok, ok); return err }, ErrInvalidRequest},
				} {
					err := tc.call()
					require.ErrorIs(t, err, tc.want, tc.what)
					require.False(t, strings.ContainsAny(err.Error(), "\n"), tc.what)
				}
				require.Equal(t, before, b.snapshot(t), "state changed")

				// odd but valid keys: decided like any other, state with a TTL
				for _, key := range []string{strings.Repeat("{", MaxKeyLen), "\x00\xff\n\r{}", "}{", "%7B", "ключ🙂"} { // the longest key, each brace escaped to 3 bytes
					for i := 0; i < 11; i++ {
						res, err := l.Allow(ctx, key, ok)
						require.NoError(t, err)
						require.Equal(t, i < 10, res.Allowed, "request %d", i+1)
					}
					require.NoError(t, l.Reset(ctx, key, ok))
				}
				require.Equal(t, before, b.snapshot(t), "state of other keys changed")
			})
		}
	})
}

// TestHostileRedisCLI runs the scripts the way the README shows, with
// redis-cli --eval, and hostile arguments: one "ERR luarate:" line each, and
// neither the key's state nor a key of another type is changed.
func TestHostileRedisCLI(t *testing.T) {
	s, _ := ownServer(t)
	host, port, _ := strings.Cut(s.Addr, ":")
	cli := func(args ...string) string {
		out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port, "--no-raw"}, args...)...).CombinedOutput()
		if err != nil {
			// redis-cli exits non-zero on an error reply in some versions
			_, isExit := err.(*exec.ExitError)
			require.True(t, isExit, "%s: %v", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, algo := range Algorithms() { // concurrency: TestConcurrencyHostileInput
		name := algo.String()
		script := "scripts/" + name + ".lua"
		require.Equal(t, "OK", cli("FLUSHALL"))
		// state to protect: k admitted once (a minute from now it still matters), h a hash
		require.Contains(t, cli("--eval", script, "k", ",", "10 60000 0", "1"), "1) (integer) 1", name)
		require.Equal(t, "(integer) 1", cli("HSET", "h", "f", "v"))
		state := cli("DUMP", "k") + cli("DUMP", "h")
		for _, args := range [][]string{
			{"k", ",", "10 60000 0", "NaN"},
			{"k", ",", "10 60000 0", "1.5"},
			{"k", ",", "-10 60000 0", "1"},
			{"k", ",", "10 inf 0", "1"},
			{"k", ",", "10 60000 0 -5", "1"},
			{"k", ",", "10 60000 0", "11"},
			{"k", ",", "10", "60000", "0", "1"}, // the v2 layout
			{"k", ",", "10 60000"},
			{"k", "k", ",", "10 60000 0", "10 60000 0", "1"},
			{",", "10 60000 0", "1"},
			{"h", ",", "10 60000 0", "1"},
		} {
			what := name + " " + strings.Join(args, " ")
			text := cli(append([]string{"--eval", script}, args...)...)
			require.True(t, strings.HasPrefix(text, "(error) ERR luarate: "), "%s: %q", what, text)
			require.NotContains(t, text, "\n", what)
		}
		require.Equal(t, state, cli("DUMP", "k")+cli("DUMP", "h"), "%s: a refused call changed stored state", name)
		require.Equal(t, "(integer) 2", cli("DBSIZE"), "%s: a refused call wrote a key", name)
	}
}
