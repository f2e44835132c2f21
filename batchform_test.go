package luarate

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// batchRequest is one request of a batch: its keys, cost, mode and limits.
type batchRequest struct {
	keys   []string
	cost   string
	mode   string
	limits []string
}

// batchReplies runs the batch form and returns each request's reply as a
// string: the seven integers (also where the reply refers to an earlier
// request's), or its error text without "ERR ".
func batchReplies(t *testing.T, b backend, script, now string, reqs []batchRequest) ([]string, string) {
	t.Helper()
	var keys []string
	argv := []string{"batch", now}
	for _, q := range reqs {
		head := itoa(int64(len(q.keys))) + " " + q.cost
		if q.mode != "" {
			head += " " + q.mode
		}
		argv = append(append(argv, head), q.limits...)
		for _, k := range q.keys {
			keys = append(keys, b.prefix+k)
		}
	}
	return execBatch(t, b, script, keys, argv)
}

// execBatch runs a batch call and returns its replies as batchReplies does.
func execBatch(t *testing.T, b backend, script string, keys, argv []string) ([]string, string) {
	t.Helper()
	res := scripts[script].lua.Exec(context.Background(), b.client, keys, argv)
	if err := res.Error(); err != nil {
		return nil, strings.TrimPrefix(err.Error(), "ERR ")
	}
	arr, err := res.ToArray()
	require.NoError(t, err)
	var out []string
	for i := 0; i < len(arr); {
		if err := arr[i].Error(); err != nil {
			out = append(out, strings.TrimPrefix(err.Error(), "ERR "))
			i++
			continue
		}
		if first, err := arr[i].AsInt64(); err == nil && first < 0 {
			require.LessOrEqual(t, -first, int64(len(out)), "a reference to a later request")
			require.NotContains(t, out[-first-1], "luarate", "a reference to an error")
			out = append(out, out[-first-1]) // the same reply as request -first's
			i++
			continue
		}
		require.LessOrEqual(t, i+replyLen, len(arr), "a truncated reply")
		ints := make([]int64, replyLen)
		for j := range ints {
			ints[j], err = arr[i+j].AsInt64()
			require.NoError(t, err)
		}
		out = append(out, fmt.Sprint(ints))
		i += replyLen
	}
	return out, ""
}

var (
	requestN = regexp.MustCompile(`^luarate: request \d+: `)
	argIndex = regexp.MustCompile(`(KEYS|ARGV)\[\d+\]`)
)

// requirePlainReplies requires got, a batch's replies, to be what the plain
// form answers each of reqs alone, in order, at now, and returns the indices
// of the requests that failed. A failed request's error in the batch names
// it ("request j: ") and the batch's own KEYS and ARGV indices, which are
// set aside in the comparison.
func requirePlainReplies(t *testing.T, b backend, script, now string, reqs []batchRequest, got []string) []int {
	t.Helper()
	require.Len(t, got, len(reqs))
	var failed []int
	for i, q := range reqs {
		reply, errText := b.eval(t, script, q.keys, v3argv(q.limits, q.cost, now, q.mode)...)
		want := fmt.Sprint(reply)
		if errText != "" {
			failed = append(failed, i)
			require.Regexp(t, requestN, got[i], "request %d's error names it", i+1)
			got[i] = argIndex.ReplaceAllString("luarate: "+requestN.ReplaceAllString(got[i], ""), "$1[i]")
			want = argIndex.ReplaceAllString(strings.TrimPrefix(errText, "ERR "), "$1[i]")
		}
		require.Equal(t, want, got[i], "request %d", i+1)
	}
	return failed
}

// TestBatchForm: a batch gives each request the reply the plain form gives
// the same requests one by one, in order, at the same now_ms, and leaves the
// same state; a bad request fails alone with its own error while the others
// decide; a batch of a bad shape is refused whole and changes nothing.
func TestBatchForm(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		for _, script := range limiterNames() {
			t.Run(script, func(t *testing.T) {
				atmost, refund := "atmost", "refund"
				if script == "leaky_queue" {
					refund = "" // it takes no refunds
				}
				reqs := func(tag string) []batchRequest {
					k := func(n string) string { return "{" + tag + "}:" + script + ":" + n }
					base := []batchRequest{
						// one key, common calls in a row: the batch holds its
						// state between them and writes it once
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}},
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}},
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}}, // denied: 1 left
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}}, // the same denial, not decided again
						{[]string{k("f")}, "1", "", []string{"5 60000 0"}},
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}},     // the state changed: decided anew
						{[]string{k("f")}, "2", "", []string{"6 60000 0"}},     // another limit: decided anew
						{[]string{k("f")}, "1", atmost, []string{"5 60000 0"}}, // the general path, from Redis
						{[]string{k("f")}, "2", "", []string{"5 60000 0"}},
						{[]string{k("a")}, "3", "", []string{"5 60000 0"}},
						{[]string{k("b"), k("c")}, "2", atmost, []string{"4 100000 0", "10 3600000 0"}},
						{[]string{k("a")}, "99", "", []string{"5 60000 0"}}, // above capacity: fails alone
						{[]string{k("a")}, "3", "", []string{"5 60000 0"}},  // denied: 2 left
						{[]string{k("d")}, "1", "", []string{"5 60000 0 1000"}},
						{[]string{k("b"), k("b")}, "1", "", []string{"4 100000 0", "10 60000 0"}}, // one key twice
						{[]string{k("a")}, "1", refund, []string{"5 60000 0"}},
						{[]string{k("e")}, "1", "", []string{"5 60000 x"}}, // bad limit
						{[]string{k("a")}, "0", "", []string{"5 60000 0"}},
					}
					if script == "sliding_window_log" {
						return base // at most 16 limits in one of its batches
					}
					return append(base, []batchRequest{
						// keys without state, at the usual cost: the second and
						// third get what the first got, without deciding it anew
						{[]string{k("g")}, "1", "", []string{"5 60000 0"}},
						{[]string{k("h")}, "1", "", []string{"5 60000 0"}},
						{[]string{k("i")}, "1", "", []string{"5 60000 0"}},
						{[]string{k("g")}, "1", "", []string{"5 60000 0"}}, // g has state now
						{[]string{k("a")}, "1", "", []string{"5 60000 0"}}, // a has state
						{[]string{k("j")}, "2", "", []string{"5 60000 0"}}, // another cost
						{[]string{k("c")}, "1", "", []string{"6 60000 0"}}, // another limit
					}...)
				}
				got, errText := batchReplies(t, b, script, now, reqs("batch"))
				require.Empty(t, errText)
				failed := requirePlainReplies(t, b, script, now, reqs("plain"), got)
				require.Len(t, failed, 3, "the bad requests failed, the others decided")
				for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
					require.Equal(t, b.value(t, "{plain}:"+script+":"+n), b.value(t, "{batch}:"+script+":"+n), "state of %s", n)
				}

				// bad shapes: refused whole, nothing written
				before := b.snapshot(t)
				for _, argv := range [][]string{
					{"batch"},
					{"batch", now},
					{"batch", now, "1 1"},                      // no limit
					{"batch", now, "2 1", "5 60000 0"},         // fewer limits than nkeys
					{"batch", now, "1 1", "5 60000 0", "1 1"},  // a request without its limit
					{"batch", now, "0 1", "5 60000 0"},         // no keys
					{"batch", now, "17 1", "5 60000 0"},        // too many keys
					{"batch", now, "1 1 steal", "5 60000 0"},   // bad mode
					{"batch", now, "1 -1", "5 60000 0"},        // bad cost
					{"batch", "x", "1 1", "5 60000 0"},         // bad now_ms
					{"batch", now, "1 1", "5 60000 0", "1 1 "}, // bad header
				} {
					res := scripts[script].lua.Exec(context.Background(), b.client, []string{b.prefix + "{batch}:" + script + ":a"}, argv)
					require.Error(t, res.Error(), "%q", argv)
					require.Contains(t, res.Error().Error(), "luarate: ", "%q", argv)
				}
				// a batch whose keys do not add up to KEYS
				res := scripts[script].lua.Exec(context.Background(), b.client, []string{b.prefix + "{batch}:" + script + ":a", b.prefix + "{batch}:" + script + ":b"},
					[]string{"batch", now, "1 1", "5 60000 0"})
				require.ErrorContains(t, res.Error(), "luarate: ")
				// 33 keys, one over the cap: 16 requests of two limits, then one of one
				keys33, args33 := []string{}, []string{"batch", now}
				for i := range 16 {
					keys33 = append(keys33, b.prefix+"{batch}:"+script+":x"+itoa(int64(i)), b.prefix+"{batch}:"+script+":y"+itoa(int64(i)))
					args33 = append(args33, "2 1", "5 60000 0", "6 3600000 0")
				}
				keys33 = append(keys33, b.prefix+"{batch}:"+script+":z")
				args33 = append(args33, "1 1", "5 60000 0")
				res = scripts[script].lua.Exec(context.Background(), b.client, keys33, args33)
				require.ErrorContains(t, res.Error(), "luarate: a batch needs 1 to 32 requests whose nkeys add up to #KEYS (at most 32)")
				require.Equal(t, before, b.snapshot(t), "a refused batch changed state")
			})
		}
	})
}

// TestBatch1Form: the batch1 form, usual requests without headers, gives
// each request the reply the plain form gives it alone, in order, leaves the
// same state, fails a bad limit alone, and refuses a bad shape whole.
func TestBatch1Form(t *testing.T) {
	const now = "1700000000250"
	eachBackend(t, func(t *testing.T, b backend) {
		for _, script := range limiterNames() {
			t.Run(script, func(t *testing.T) {
				names := []string{"a", "a", "b", "a", "c", "d", "a", "e", "f", "g"}
				limits := []string{"2 60000 0", "2 60000 0", "2 60000 0", "2 60000 0", "2 60000 0",
					"2 60000 0 1000", "2 60000 0", "2 60000 x", "2 60000 0", "3 60000 0"}
				keys, argv := []string(nil), []string{"batch1", now}
				var plain []batchRequest
				for i, n := range names {
					keys = append(keys, b.prefix+"{batch1}:"+script+":"+n)
					argv = append(argv, limits[i])
					plain = append(plain, batchRequest{[]string{"{plain}:" + script + ":" + n}, "1", "", []string{limits[i]}})
				}
				got, errText := execBatch(t, b, script, keys, argv)
				require.Empty(t, errText)
				require.Equal(t, []int{7}, requirePlainReplies(t, b, script, now, plain, got), "only the bad limit fails")
				for _, n := range names {
					require.Equal(t, b.value(t, "{plain}:"+script+":"+n), b.value(t, "{batch1}:"+script+":"+n), "state of %s", n)
				}

				before := b.snapshot(t)
				many := make([]string, 33)
				for i := range many {
					many[i] = b.prefix + "{batch1}:" + script + ":" + itoa(int64(i))
				}
				for _, c := range []struct{ keys, argv []string }{
					{keys[:1], []string{"batch1"}},
					{keys[:1], []string{"batch1", now}},                                                  // no limit
					{keys[:1], []string{"batch1", now, "2 60000 0", "2 60000 0"}},                        // a limit without its key
					{keys[:2], []string{"batch1", now, "2 60000 0"}},                                     // a key without its limit
					{many, append([]string{"batch1", now}, slices.Repeat([]string{"2 60000 0"}, 33)...)}, // 33 requests
					{keys[:1], []string{"batch1", "x", "2 60000 0"}},                                     // bad now_ms
				} {
					res := scripts[script].lua.Exec(context.Background(), b.client, c.keys, c.argv)
					require.ErrorContains(t, res.Error(), "luarate: ", "%d keys, %q", len(c.keys), c.argv)
				}
				require.Equal(t, before, b.snapshot(t), "a refused batch changed state")
			})
		}
	})
}

// value is key's value under the backend's prefix, or "(none)".
func (b backend) value(t *testing.T, key string) string {
	t.Helper()
	v, err := b.client.Do(context.Background(), b.client.B().Get().Key(b.prefix+key).Build()).ToString()
	if err != nil {
		return "(none)"
	}
	return v
}

// TestBatchReplyReferences: the client resolves -j to request j's result,
// and refuses a reference to itself or a later request, or to an error.
func TestBatchReplyReferences(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		arr, err := b.client.Do(context.Background(), b.client.B().Eval().
			Script("return {1, 10, 9, 100, 0, 0, 1, -1, -3, -2}").Numkeys(0).Build()).ToArray()
		require.NoError(t, err)
		first, n, err := batchReply(nil, arr)
		require.NoError(t, err)
		require.Equal(t, replyLen, n)
		require.Equal(t, Result{Allowed: true, Limit: 10, Remaining: 9, ResetAfter: 100 * time.Millisecond, Granted: 1}, first)
		earlier := []*waiter{{res: first}}
		got, n, err := batchReply(earlier, arr[7:])
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, first, got, "-1: request 1's reply")
		earlier = append(earlier, &waiter{err: ErrInvalidRequest})
		_, n, err = batchReply(earlier, arr[8:])
		require.ErrorIs(t, err, ErrInvalidResponse, "-3: a request not decided yet")
		require.Equal(t, 1, n)
		_, _, err = batchReply(earlier, arr[9:])
		require.ErrorIs(t, err, ErrInvalidResponse, "-2: a request that failed")
	})
}

// TestBatchCall: a run of usual requests (one key taken at cost 1, on the
// server clock or the caller's) goes in the batch1 form, a limit each; any
// other request in the run makes it the batch form, a header per request.
func TestBatchCall(t *testing.T) {
	limit := Limit{Algorithm: GCRA, Rate: 10, Period: time.Second}
	call := func(l *Limiter, key string, n int, m Op, limits ...Limit) *waiter {
		_, keys, args, err := l.command(key, n, m, limits)
		require.NoError(t, err)
		return &waiter{keys: keys, args: args}
	}
	server := &Limiter{prefix: "rl:"}
	clock := &Limiter{prefix: "rl:", now: func() time.Time { return time.UnixMilli(1700000000250) }}
	for _, c := range []struct {
		name       string
		now        string
		run        []*waiter
		keys, args []string
	}{
		{"usual", "", []*waiter{call(server, "a", 1, OpTake, limit), call(server, "b", 1, OpTake, limit)},
			[]string{"rl:{a}:g3:1000", "rl:{b}:g3:1000"}, []string{"batch1", "", "10 1000 0", "10 1000 0"}},
		{"usual, the caller's clock", "1700000000250", []*waiter{call(clock, "a", 1, OpTake, limit), call(clock, "b", 1, OpTake, limit)},
			[]string{"rl:{a}:g3:1000", "rl:{b}:g3:1000"}, []string{"batch1", "1700000000250", "10 1000 0", "10 1000 0"}},
		{"another cost", "", []*waiter{call(server, "a", 1, OpTake, limit), call(server, "b", 2, OpTake, limit)},
			[]string{"rl:{a}:g3:1000", "rl:{b}:g3:1000"}, []string{"batch", "", "1 1", "10 1000 0", "1 2", "10 1000 0"}},
		{"a refund", "", []*waiter{call(server, "a", 1, OpRefund, limit), call(server, "b", 1, OpTake, limit)},
			[]string{"rl:{a}:g3:1000", "rl:{b}:g3:1000"}, []string{"batch", "", "1 1 refund", "10 1000 0", "1 1", "10 1000 0"}},
		{"two limits", "", []*waiter{call(server, "a", 1, OpTake, limit, Limit{Algorithm: GCRA, Rate: 100, Period: time.Minute})},
			[]string{"rl:{a}:g3:1000", "rl:{a}:g3:60000"}, []string{"batch", "", "2 1", "10 1000 0", "100 60000 0"}},
	} {
		keys, args := batchCall(c.now, c.run)
		require.Equal(t, c.keys, keys, c.name)
		require.Equal(t, c.args, args, c.name)
	}
}
