package httplimit_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
)

// Two routes with the same algorithm and period but different rates keep
// their own counters unless told to share: /b's requests never use up /a's.
func TestRoutesHaveTheirOwnCounters(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		a := middleware(l, luarate.PerMinute(luarate.FixedWindow, 10))(ok)
		b := middleware(l, luarate.PerMinute(luarate.FixedWindow, 3))(ok)
		count := func(h http.Handler, n int) (allowed int) {
			for range n {
				if get(h, "192.0.2.1:1").Code == 200 {
					allowed++
				}
			}
			return allowed
		}
		assert.Equal(t, 3, count(b, 5), "/b: 3 per minute")
		assert.Equal(t, 10, count(a, 12), "/a: 10 per minute, whatever /b did")
	})
}

// WithScope with one name shares the counter: a global budget over routes.
func TestWithScopeShares(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		limit := luarate.PerMinute(luarate.FixedWindow, 4)
		a := middleware(l, limit, httplimit.WithScope("api"))(ok)
		b := middleware(l, limit, httplimit.WithScope("api"))(ok)
		other := middleware(l, limit, httplimit.WithScope("admin"))(ok)
		var codes []int
		for _, h := range []http.Handler{a, b, a, b, a, b, other} {
			codes = append(codes, get(h, "192.0.2.1:1").Code)
		}
		assert.Equal(t, []int{200, 200, 200, 200, 429, 429, 200}, codes)
	})
}
