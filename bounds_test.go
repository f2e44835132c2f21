package luarate

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRepliesNeverOverflow: limits past Validate's bounds are refused, and
// the largest it accepts, driven from full to denied by the script on both
// backends, give ResetAfter and RetryAfter that are positive, fit a
// time.Duration and are at most the documented bound.
func TestRepliesNeverOverflow(t *testing.T) {
	const full = maxFullMS * time.Millisecond // the longest refill the buckets and GCRA allow
	for _, lim := range []Limit{
		{Algorithm: TokenBucket, Rate: 1, Period: 1_000_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: LeakyBucket, Rate: 1, Period: 1_000_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: LeakyQueue, Rate: 1, Period: 1_000_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: GCRA, Rate: 1, Period: 1_000_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: TokenBucket, Rate: 1, Period: 400_000_000_001 * time.Millisecond, Burst: 10},
		{Algorithm: SlidingWindowLog, Rate: maxLogRate + 1, Period: time.Second},
	} {
		require.ErrorIs(t, lim.Validate(), ErrInvalidLimit, "%+v", lim)
	}
	largest := []Limit{
		{Algorithm: TokenBucket, Rate: 1, Period: 400_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: LeakyBucket, Rate: 1, Period: 400_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: LeakyQueue, Rate: 1, Period: 400_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: GCRA, Rate: 1, Period: 400_000_000_000 * time.Millisecond, Burst: 10},
		{Algorithm: TokenBucket, Rate: 1_000_000_000, Period: 1_000_000_000_000 * time.Millisecond, Burst: 1_000_000_000},
		{Algorithm: FixedWindow, Rate: 1_000_000_000, Period: 1_000_000_000_000 * time.Millisecond},
		{Algorithm: SlidingWindowCounter, Rate: 9000, Period: 1_000_000_000_000 * time.Millisecond},
		{Algorithm: SlidingWindowLog, Rate: maxLogRate, Period: 1_000_000_000_000 * time.Millisecond},
	}
	eachBackend(t, func(t *testing.T, b backend) {
		c := &clock{ms: 1_700_000_000_000}
		l := b.limiter(c)
		ctx := context.Background()
		for i, lim := range largest {
			t.Run(fmt.Sprint(lim.Algorithm, i), func(t *testing.T) {
				require.NoError(t, lim.Validate(), "%+v", lim)
				key := fmt.Sprint("largest", i)
				n := lim.Capacity() // all at once, then one more
				if lim.Algorithm == SlidingWindowLog {
					n = maxLogCost // entries one call may add
				}
				var res Result
				var err error
				for range 2 + lim.Capacity()/n { // at most 33 calls
					if res, err = l.AllowN(ctx, key, lim, n); err != nil || !res.Allowed {
						break
					}
				}
				require.NoError(t, err, "%+v", lim)
				if lim.Capacity() < 100 || lim.Algorithm == FixedWindow {
					require.False(t, res.Allowed, "%+v: never denied", lim)
					require.Positive(t, res.RetryAfter, "%+v", lim)
				}
				require.Positive(t, res.ResetAfter, "%+v", lim)
				require.LessOrEqual(t, res.ResetAfter, max(full, lim.Period), "%+v", lim)
				require.LessOrEqual(t, res.RetryAfter, max(full, lim.Period), "%+v", lim)
			})
		}
	})
}

// TestParseResultBounds: a reply field past what a time.Duration in ms or a
// rate holds is refused, not wrapped.
func TestParseResultBounds(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		for _, script := range []string{
			"return {1, 10, 5, 9223372036855, 0, 0, 1}",
			"return {0, 10, 5, 0, 9223372036855, 0, 0}",
			"return {1, 10, 5, 0, 0, 9223372036855, 1}",
			"return {1, 1000000001, 5, 0, 0, 0, 1}",
			"return {1, 10, 1000000001, 0, 0, 0, 1}",
			"return {1, 10, 5, 0, 0, 0, 1000000001}",
		} {
			msg, err := b.client.Do(ctx, b.client.B().Eval().Script(script).Numkeys(0).Build()).ToMessage()
			require.NoError(t, err)
			_, err = parseResult(msg)
			require.True(t, errors.Is(err, ErrInvalidResponse), script)
		}
		msg, err := b.client.Do(ctx, b.client.B().Eval().Script("return {1, 1000000000, 1000000000, 9223372036854, 9223372036854, 9223372036854, 1000000000}").Numkeys(0).Build()).ToMessage()
		require.NoError(t, err)
		res, err := parseResult(msg)
		require.NoError(t, err, "the largest values are accepted")
		require.Equal(t, 9223372036854*time.Millisecond, res.ResetAfter)
	})
}
