package luarate

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/stretchr/testify/require"
)

// TestNoWritePastMaxmemory: Redis refuses a script's memory-growing command
// with OOM only while the script has changed nothing, so a script that
// first frees (prunes a log, deletes a lock) and then grows would grow past
// maxmemory. On a full server under noeviction, every script's admission on
// a key holding state that call would prune must be refused with OOM and
// leave the key byte for byte as it was.
func TestNoWritePastMaxmemory(t *testing.T) {
	addr := startACLServer(t, "unused", []string{"~x"}) // a server of the test's own
	start := time.UnixMilli(1_700_000_000_000)
	l := New(redistest.Client(t, addr), WithClock(func() time.Time { return start }))
	ctx := context.Background()
	c := redistest.Client(t, addr)
	const key = "rl:{oom}"
	for _, a := range Algorithms() {
		lim := Limit{Algorithm: a, Rate: 100, Period: time.Hour}
		// state for the next call to prune or replace: a full hour of admissions
		for range 100 {
			_, err := l.Allow(ctx, "oom", lim)
			require.NoError(t, err, a)
		}
		keys, err := c.Do(ctx, c.B().Keys().Pattern(key+":*").Build()).AsStrSlice()
		require.NoError(t, err)
		require.Len(t, keys, 1, a)
		before, err := c.Do(ctx, c.B().Dump().Key(keys[0]).Build()).ToString()
		require.NoError(t, err)

		used := usedMemory(t, addr)
		_, err = redistest.Command(addr, "CONFIG", "SET", "maxmemory-policy", "noeviction")
		require.NoError(t, err)
		_, err = redistest.Command(addr, "CONFIG", "SET", "maxmemory", strconv.FormatInt(used/2, 10))
		require.NoError(t, err)

		// two hours later every entry has left the window: the admission
		// would first prune them all, then add
		later := New(redistest.Client(t, addr), WithClock(func() time.Time { return start.Add(2 * lim.Period) }))
		_, err = later.Allow(ctx, "oom", lim)
		require.Error(t, err, a)
		require.True(t, errors.Is(err, ErrUnavailable), "%s: %v", a, err)
		require.True(t, strings.Contains(err.Error(), "OOM"), "%s: %v", a, err)
		after, err := c.Do(ctx, c.B().Dump().Key(keys[0]).Build()).ToString()
		require.NoError(t, err)
		require.Equal(t, before, after, "%s: a refused call changed the state", a)

		_, err = redistest.Command(addr, "CONFIG", "SET", "maxmemory", "0")
		require.NoError(t, err)
		require.NoError(t, l.Reset(ctx, "oom", lim))
	}
}

func usedMemory(t *testing.T, addr string) int64 {
	t.Helper()
	info, err := redistest.Command(addr, "INFO", "memory")
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatal("no used_memory in INFO")
	return 0
}
