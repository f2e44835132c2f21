package luarate

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBatching: a lone caller's decisions go out one script call each, at
// once; 64 callers at once share script calls, and each gets its own answer.
func TestBatching(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		limit := PerMinute(GCRA, 100)
		cc := b.countingClient(t)
		l := New(cc, WithPrefix(b.prefix), WithClock((&clock{ms: 1_700_000_000_000}).now))
		for i := range 20 {
			res, err := l.Allow(ctx, "lone", limit)
			require.NoError(t, err)
			require.Equal(t, int64(99-i), res.Remaining)
		}
		require.Equal(t, int64(20), cc.calls.Load(), "a lone caller's decisions go alone")

		cc.calls.Store(0)
		const callers, each = 64, 20
		var wg sync.WaitGroup
		for g := range callers {
			wg.Go(func() {
				key := "caller" + strconv.Itoa(g)
				for i := range each {
					res, err := l.Allow(ctx, key, limit)
					if err != nil || !res.Allowed || res.Remaining != int64(99-i) {
						t.Errorf("%s, call %d: %+v, %v; want allowed with %d remaining", key, i+1, res, err, 99-i)
						return
					}
				}
			})
		}
		wg.Wait()
		calls := cc.calls.Load()
		t.Logf("%d decisions in %d script calls", callers*each, calls)
		require.Less(t, calls, int64(callers*each), "callers at once share script calls")
	})
}
