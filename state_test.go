package luarate

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writingCall is ARGV that makes the named script write its state: one
// admitted request of a limit of 10 an hour (or an hour's lease).
func writingCall(script, now string) []string {
	if script == "concurrency" {
		return []string{"acquire", "3", "3600000", "lease-1", now}
	}
	return v3argv([]string{"10 3600000 0"}, "1", now, "")
}

// readingCall is ARGV that only reads: a peek.
func readingCall(script, now string) []string {
	if script == "concurrency" {
		return []string{"peek", "3", "3600000", "", now}
	}
	return v3argv([]string{"10 3600000 0"}, "0", now, "")
}

// dump is DUMP of key on real Redis (exact bytes, type and encoding
// included), or "" on miniredis, which has no DUMP; the snapshot covers both.
func (b backend) dump(t *testing.T, key string) string {
	t.Helper()
	if b.mini != nil {
		return ""
	}
	v, err := b.client.Do(context.Background(), b.client.B().Dump().Key(key).Build()).ToString()
	require.NoError(t, err)
	return v
}

// TestTypedState runs every script over every other script's state, a plain
// string, a number, a look-alike of its own state and keys of every other
// Redis type: each call, writing or only reading, is refused with one
// "ERR luarate:" line naming KEYS[1], and the key stays byte for byte as it
// was (DUMP before and after on real Redis).
func TestTypedState(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		held := b.foreignKeys(t, now)
		before := b.snapshot(t)
		dumps := map[string]string{}
		for _, k := range held {
			dumps[k] = b.dump(t, k)
		}
		for _, s := range Scripts() {
			for what, k := range held {
				if what == s.Name {
					continue
				}
				for _, argv := range [][]string{writingCall(s.Name, now), readingCall(s.Name, now)} {
					reply, errText := b.eval(t, s.Name, []string{strings.TrimPrefix(k, b.prefix)}, argv...)
					call := s.Name + " " + strings.Join(argv, ",") + " over " + what
					requireLuarateError(t, reply, errText, call)
					require.Contains(t, errText, "KEYS[1] holds a value", call)
					require.Equal(t, dumps[k], b.dump(t, k), "%s changed the key", call)
				}
			}
		}
		require.Equal(t, before, b.snapshot(t), "a refused call changed stored state")
	})
}

// foreignKeys writes every script's state, plain strings and numbers, a
// look-alike of a state, and keys of every other Redis type, each in a key
// of its own in hash slot {ts}, and returns what each holds -> its key.
func (b backend) foreignKeys(t *testing.T, now string) map[string]string {
	t.Helper()
	c, ctx := b.client, context.Background()
	held := map[string]string{}
	for _, s := range Scripts() {
		k := b.prefix + "{ts}:by-" + s.Name
		_, errText := b.eval(t, s.Name, []string{"{ts}:by-" + s.Name}, writingCall(s.Name, now)...)
		require.Empty(t, errText, s.Name)
		held[s.Name] = k
	}
	for what, value := range map[string]string{"a string": "hello", "a number": "42", "an empty string": "",
		"gcra v2's state": "1700000000250000", "a v3 state with a tail": "gcra3 1700000000350000 0 0",
		// look-alikes of each string state with a number no script writes
		"fw3 with 20 digits": "fw3 1 99999999999999999999", "tb3 with 20 digits": "tb3 99999999999999999999 1",
		"gcra3 with 20 digits": "gcra3 99999999999999999999", "lb3 with 20 digits": "lb3 1 99999999999999999999",
		"lq3 with 20 digits": "lq3 99999999999999999999 1", "swc3 with 20 digits": "swc3 1 1 99999999999999999999"} {
		k := b.prefix + "{ts}:" + what
		require.NoError(t, c.Do(ctx, c.B().Set().Key(k).Value(value).Px(time.Hour).Build()).Error())
		held[what] = k
	}
	for _, typ := range []string{"hash", "list", "set", "zset"} {
		k := b.prefix + "{ts}:a " + typ
		b.plant(t, k, typ)
		held["a "+typ] = k
	}
	return held
}

// TestTypedStateInBatch: in the batch form too, a request over a key the
// script did not write fails alone, whatever its cost, and the key stays
// byte for byte as it was, while the new keys around it, of the same limit,
// are admitted. (A batch reads all its keys at once with MGET, which answers
// nil alike for a key that does not exist and for one of another type.)
func TestTypedStateInBatch(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		held := b.foreignKeys(t, now)
		dumps := map[string]string{}
		for _, k := range held {
			dumps[k] = b.dump(t, k)
		}
		for _, name := range limiterNames() {
			for what, k := range held {
				if what == name {
					continue
				}
				fresh := func(n string) batchRequest {
					return batchRequest{[]string{"{ts}:new-" + name + "-" + n}, "1", "", []string{"10 3600000 0"}}
				}
				over := func(cost string) batchRequest {
					return batchRequest{[]string{strings.TrimPrefix(k, b.prefix)}, cost, "", []string{"10 3600000 0"}}
				}
				// the key of another kind comes before any request of its
				// batch reads keys itself
				for _, batch := range [][]batchRequest{
					{over("0"), fresh("1"), over("1"), fresh("2")}, // a peek; then as the new key before it
					{over("10"), fresh("3")},                       // another cost
					{over("1"), fresh("4")},                        // the usual cost, no new key before it
				} {
					got, errText := batchReplies(t, b, name, now, batch)
					call := fmt.Sprintf("%s batch over %s, %v", name, what, batch)
					require.Empty(t, errText, call)
					require.Len(t, got, len(batch), call)
					for i, q := range batch {
						if strings.HasPrefix(q.keys[0], "{ts}:new-") {
							require.True(t, strings.HasPrefix(got[i], "[1 "), "%s, request %d: %s", call, i+1, got[i])
						} else {
							require.Contains(t, got[i], "holds a value", "%s, request %d", call, i+1)
						}
					}
				}
				require.Equal(t, dumps[k], b.dump(t, k), "%s batches over %s changed the key", name, what)
				for _, n := range []string{"1", "2", "3", "4"} {
					require.NoError(t, b.client.Do(context.Background(), b.client.B().Del().Key(b.prefix+"{ts}:new-"+name+"-"+n).Build()).Error())
				}
			}
		}
	})
}

// TestTypedStateInMultiLimitCall: a foreign value in the second key of a
// call refuses the whole call, so the first, valid key is not charged.
func TestTypedStateInMultiLimitCall(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		c, ctx := b.client, context.Background()
		for _, name := range limiterNames() {
			for _, other := range Scripts() {
				if other.Name == name {
					continue
				}
				k := "{tm}:" + name + ":by-" + other.Name
				_, errText := b.eval(t, other.Name, []string{k}, writingCall(other.Name, now)...)
				require.Empty(t, errText)
				first := "{tm}:" + name + ":first"
				before := b.snapshot(t)
				reply, errText := b.eval(t, name, []string{first, k}, v3argv([]string{"10 60000 0", "10 3600000 0"}, "1", now, "")...)
				requireLuarateError(t, reply, errText, name+" over "+other.Name)
				require.Contains(t, errText, "KEYS[2]", name)
				require.Equal(t, before, b.snapshot(t), "%s over %s: state changed", name, other.Name)
				require.NoError(t, c.Do(ctx, c.B().Del().Key(b.prefix+k).Build()).Error())
			}
		}
	})
}
