package luarate

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMemoryUsage measures, on real Redis, MEMORY USAGE of one key of each
// algorithm after n requests of 10 per second (the log holds one entry per
// request). The README's memory column comes from its output:
//
//	go test -run TestMemoryUsage -v
func TestMemoryUsage(t *testing.T) {
	client := realClient(t)
	ctx := context.Background()
	c := &clock{ms: 1_700_000_000_500}
	prefix := uniquePrefix()
	l := New(client, WithPrefix(prefix), WithClock(c.now))
	usage := func(algo Algorithm, rate, n int) int64 {
		lim := Limit{Algorithm: algo, Rate: rate, Period: time.Second}
		key := "user" + itoa(int64(rate))
		for range n {
			res, err := l.Allow(ctx, key, lim)
			require.NoError(t, err)
			require.True(t, res.Allowed)
		}
		_, keys, _, err := l.command(key, 0, OpTake, []Limit{lim})
		require.NoError(t, err)
		bytes, err := client.Do(ctx, client.B().MemoryUsage().Key(keys[0]).Samples(0).Build()).AsInt64()
		require.NoError(t, err)
		require.NoError(t, l.Reset(ctx, key, lim))
		return bytes
	}
	for _, algo := range Algorithms() {
		line := algo.String() + ":"
		for _, n := range []int{10, 100, 1000} {
			b := usage(algo, n, n)
			line += " " + itoa(b) + " B after " + itoa(int64(n)) + " requests;"
			if algo != SlidingWindowLog {
				require.Less(t, b, int64(150), "%s state is O(1)", algo)
			}
		}
		t.Log(line)
	}
	require.Greater(t, usage(SlidingWindowLog, 1000, 1000), 10*usage(SlidingWindowLog, 10, 10), "the log grows with its rate")

	// the concurrency limiter holds one entry per lease held
	leases := func(n int) int64 {
		key := "leases" + itoa(int64(n))
		var held []*Lease
		for range n {
			lease, res, err := l.Acquire(ctx, key, n, time.Minute)
			require.NoError(t, err)
			require.True(t, res.Allowed)
			held = append(held, lease)
		}
		bytes, err := client.Do(ctx, client.B().MemoryUsage().Key(held[0].key).Samples(0).Build()).AsInt64()
		require.NoError(t, err)
		for _, lease := range held {
			require.NoError(t, lease.Release(ctx))
		}
		return bytes
	}
	line := "concurrency:"
	for _, n := range []int{1, 10, 100, 1000} {
		line += " " + itoa(leases(n)) + " B with " + itoa(int64(n)) + " leases held;"
	}
	t.Log(line)
	require.Greater(t, leases(1000), 10*leases(10), "one entry per lease")
}
