package httplimit_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A client inventing a new X-API-Key per request is limited as its IP by
// the recommended chain; with Refuse it is turned away.
func TestAPIKeyRandomKeysLimitedAsIP(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		var seen []string
		valid := func(_ *http.Request, key string) bool {
			seen = append(seen, key)
			return key == "good"
		}
		var obs recorder
		h := middleware(l, luarate.PerMinute(luarate.GCRA, 3), httplimit.WithObserver(obs.observe),
			httplimit.WithKey(httplimit.First(httplimit.APIKey("X-API-Key", valid), httplimit.IP())))(ok)
		var codes []int
		for i := range 12 {
			codes = append(codes, get(h, "192.0.2.1:1", "X-API-Key", fmt.Sprintf("random-%d", i)).Code)
		}
		assert.Equal(t, []int{200, 200, 200, 429, 429, 429, 429, 429, 429, 429, 429, 429}, codes)
		assert.Equal(t, "ip:192.0.2.1", obs.last(t).Key)
		assert.Equal(t, "random-0", seen[0], "verify gets the header's value")

		assert.Equal(t, 200, get(h, "192.0.2.1:1", "X-API-Key", "good").Code, "a verified key has its own budget")
		assert.Regexp(t, `^x-api-key:[0-9a-f]{32}$`, obs.last(t).Key)

		strict := middleware(l, luarate.PerMinute(luarate.GCRA, 3), httplimit.WithObserver(obs.observe),
			httplimit.WithKey(httplimit.First(httplimit.APIKey("X-API-Key", valid), httplimit.Refuse())))(ok)
		w := get(strict, "192.0.2.1:1", "X-API-Key", "random")
		assert.Equal(t, http.StatusUnauthorized, w.Code)
		assert.JSONEq(t, `{"error":"a valid API key is required"}`, w.Body.String())
		assert.Equal(t, httplimit.Refused, obs.last(t).Outcome)
		assert.ErrorIs(t, obs.last(t).Err, httplimit.ErrRefused)
		assert.Equal(t, 200, get(strict, "192.0.2.1:1", "X-API-Key", "good").Code)
	})
}

// Two limits in one middleware are decided together: a request the minute
// limit refuses is not charged to the second limit either, and the headers
// describe whichever limit is tightest.
func TestSeveralLimitsAtomic(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_699_999_980_000) // a minute boundary
		l := fixedLimiter(client, prefix, &now)
		limits := luarate.MustParseLimits("2/second;5/minute", luarate.FixedWindow)
		var obs recorder
		h := middlewareN(l, limits, httplimit.WithObserver(obs.observe), httplimit.WithIETFHeaders())(ok)
		var trace []string
		for range 4 {
			for range 3 {
				w := get(h, "192.0.2.1:1")
				trace = append(trace, fmt.Sprintf("%d:%s/%s", w.Code, w.Header().Get("X-RateLimit-Remaining"), w.Header().Get("X-RateLimit-Limit")))
			}
			now = now.Add(time.Second)
		}
		assert.Equal(t, []string{
			"200:1/2", "200:0/2", "429:0/2", // the second's limit is the tighter
			"200:1/2", "200:0/2", "429:0/2",
			"200:0/5", "429:0/5", "429:0/5", // now the minute's
			"429:0/5", "429:0/5", "429:0/5",
		}, trace)
		assert.Equal(t, limits, obs.last(t).Limits)
		w := get(h, "192.0.2.1:1")
		assert.Equal(t, `"2/1s";q=2;w=1,"5/1m";q=5;w=60`, w.Header().Get("RateLimit-Policy"), "every policy")
		assert.Equal(t, `"5/1m";r=0;t=56`, w.Header().Get("RateLimit"), "the tightest one")
		assert.Equal(t, "56", w.Header().Get("Retry-After"))

		// the minute's denials charged the second's counter nothing
		now = now.Add(56 * time.Second)
		assert.Equal(t, 200, get(h, "192.0.2.1:1").Code)
		assert.Equal(t, 200, get(h, "192.0.2.1:1").Code)
		assert.Equal(t, 429, get(h, "192.0.2.1:1").Code)
	})
}

// The IETF fields against the examples of draft-ietf-httpapi-ratelimit-headers-11.
func TestIETFDraftExamples(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		policy := func(limits string, names ...string) string {
			h := middlewareN(l, luarate.MustParseLimits(limits, luarate.FixedWindow), httplimit.WithIETFHeaders(names...))(ok)
			return get(h, "192.0.2.1:1").Header().Get("RateLimit-Policy")
		}
		// section 3
		assert.Equal(t, `"burst";q=100;w=60,"daily";q=1000;w=86400`, policy("100/minute;1000/day", "burst", "daily"))
		// section 3.2
		assert.Equal(t, `"default";q=100;w=10`, policy("100/10s"))
		assert.Equal(t, `"permin";q=50;w=60,"perhr";q=1000;w=3600`, policy("50 per minute, 1000 per hour", "permin", "perhr"))

		// sections 4 and 4.2: 50 units left, an effective window of 30 seconds
		cost := func(r *http.Request) int { n, _ := strconv.Atoi(r.Header.Get("Cost")); return n }
		h := middleware(l, luarate.PerMinute(luarate.FixedWindow, 100), httplimit.WithIETFHeaders(), httplimit.WithCost(cost))(ok)
		now = time.UnixMilli(1_699_999_980_000).Add(30 * time.Second) // half a minute
		w := get(h, "192.0.2.1:1", "Cost", "50")
		assert.Equal(t, `"default";r=50;t=30`, w.Header().Get("RateLimit"))

		// t is when quota comes back: a 2 per minute GCRA says t=30 with
		// one left, with none left, and when denied (= Retry-After)
		h = middleware(l, luarate.PerMinute(luarate.GCRA, 2), httplimit.WithIETFHeaders())(ok)
		var ts []string
		for range 3 {
			w = get(h, "192.0.2.7:1")
			ts = append(ts, w.Header().Get("RateLimit"))
		}
		assert.Equal(t, []string{`"default";r=1;t=30`, `"default";r=0;t=30`, `"default";r=0;t=30`}, ts)
		assert.Equal(t, "30", w.Header().Get("Retry-After"))

		// r never exceeds q, even when the burst does
		h = middleware(l, luarate.Limit{Algorithm: luarate.TokenBucket, Rate: 1, Period: 10 * time.Second, Burst: 3}, httplimit.WithIETFHeaders())(ok)
		w = get(h, "192.0.2.1:1")
		assert.Equal(t, "2", w.Header().Get("X-RateLimit-Remaining"))
		assert.Equal(t, `"default";r=1;t=10`, w.Header().Get("RateLimit"))
		assert.Equal(t, `"default";q=1;w=10;luarate-burst=3`, w.Header().Get("RateLimit-Policy"))
	})
}

func TestCostAndRefund(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		cost := httplimit.WithCost(func(r *http.Request) int { n, _ := strconv.Atoi(r.URL.Query().Get("n")); return n })
		status := func(w http.ResponseWriter, r *http.Request) {
			code, _ := strconv.Atoi(r.URL.Query().Get("status"))
			if code != 0 {
				w.WriteHeader(code)
			}
			io.WriteString(w, "done")
		}
		refundNotFound := httplimit.WithRefundWhen(func(r *http.Request, status int) bool { return status == http.StatusNotFound })
		var obs recorder
		h := middlewareN(l, luarate.MustParseLimits("10/minute;20/hour", luarate.SlidingWindowLog), cost, refundNotFound,
			httplimit.WithObserver(obs.observe))(http.HandlerFunc(status))
		send := func(query string) *http.Request {
			r, _ := http.NewRequest("GET", "/?"+query, nil)
			r.RemoteAddr = "192.0.2.1:1"
			return r
		}
		serve := func(query string) (int, string) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, send(query))
			return w.Code, w.Header().Get("X-RateLimit-Remaining")
		}
		code, rem := serve("n=3")
		assert.Equal(t, 200, code)
		assert.Equal(t, "7", rem, "a request of cost 3")
		assert.Equal(t, 3, obs.last(t).Cost)
		for range 5 {
			code, _ = serve("n=3&status=404") // each refunded after the handler
			assert.Equal(t, 404, code)
		}
		code, rem = serve("n=1&status=201")
		assert.Equal(t, 201, code)
		assert.Equal(t, "6", rem, "the five 404s gave their cost back")
		code, _ = serve("n=0")
		assert.Equal(t, 200, code, "cost 0 only reads")
		code, _ = serve("n=11")
		assert.Equal(t, 500, code, "a cost above the capacity is a setup error")
		assert.ErrorIs(t, obs.last(t).Err, luarate.ErrInvalidRequest)
		assert.Equal(t, httplimit.Error, obs.last(t).Outcome)

		// LeakyQueue takes no refunds: the request stays counted, the failure is logged
		var logs logBuffer
		q := middleware(l, luarate.Limit{Algorithm: luarate.LeakyQueue, Rate: 2, Period: time.Minute}, refundNotFound,
			httplimit.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))(http.HandlerFunc(status))
		w := httptest.NewRecorder()
		q.ServeHTTP(w, send("status=404"))
		assert.Equal(t, 404, w.Code)
		assert.Contains(t, logs.String(), "refund failed")
		w = httptest.NewRecorder()
		q.ServeHTTP(w, send(""))
		assert.Equal(t, "0", w.Header().Get("X-RateLimit-Remaining"))
	})
}

func TestHeaderNamesAndResetDelta(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_500)
		l := fixedLimiter(client, prefix, &now)
		limit := luarate.PerMinute(luarate.GCRA, 3)
		clock := httplimit.WithClock(func() time.Time { return now })

		w := get(middleware(l, limit, clock)(ok), "192.0.2.1:1")
		assert.Equal(t, "1700000021", w.Header().Get("X-RateLimit-Reset"), "Unix seconds, rounded up")
		w = get(middleware(l, limit, httplimit.WithResetDelta())(ok), "192.0.2.2:1")
		assert.Equal(t, "20", w.Header().Get("X-RateLimit-Reset"), "seconds from now")

		renamed := middleware(l, limit, clock, httplimit.WithHeaderNames("RateLimit-Limit", "", "RateLimit-Reset"))(ok)
		w = get(renamed, "192.0.2.3:1")
		assert.Equal(t, "3", w.Header().Get("RateLimit-Limit"))
		assert.Equal(t, "1700000021", w.Header().Get("RateLimit-Reset"))
		assert.Empty(t, w.Header().Get("X-RateLimit-Remaining"))
		assert.Empty(t, w.Header().Get("X-RateLimit-Limit"))

		off := middleware(l, luarate.PerMinute(luarate.GCRA, 1), httplimit.WithHeaderNames("", "", ""))(ok)
		get(off, "192.0.2.4:1")
		w = get(off, "192.0.2.4:1")
		require.Equal(t, 429, w.Code)
		for name := range w.Header() {
			assert.NotContains(t, name, "Ratelimit", "no X-RateLimit-* at all")
		}
		assert.Equal(t, "60", w.Header().Get("Retry-After"), "Retry-After stays: it is HTTP's own")
	})
}
