package httplimit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/luarate/luarate/insurance"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"data":"ok"}`)
})

// get sends one request from remote (an "ip:port") through h.
func get(h http.Handler, remote string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/api/data", nil)
	r.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// recorder collects what the observer sees.
type recorder struct {
	mu sync.Mutex
	ds []httplimit.Decision
}

func (o *recorder) observe(d httplimit.Decision) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ds = append(o.ds, d)
}

func (o *recorder) last(t *testing.T) httplimit.Decision {
	o.mu.Lock()
	defer o.mu.Unlock()
	require.NotEmpty(t, o.ds)
	return o.ds[len(o.ds)-1]
}

func TestHeadersOnAllowedAndDenied(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		var obs recorder
		limit := luarate.PerMinute(luarate.GCRA, 3) // one every 20s, burst 3
		h := middleware(fixedLimiter(client, prefix, &now), limit, httplimit.WithObserver(obs.observe),
			httplimit.WithClock(func() time.Time { return now }))(ok)

		for i, want := range []string{"2", "1", "0"} {
			w := get(h, "192.0.2.1:1234")
			require.Equal(t, 200, w.Code, "request %d", i+1)
			assert.Equal(t, `{"data":"ok"}`, w.Body.String())
			assert.Equal(t, "3", w.Header().Get("X-RateLimit-Limit"))
			assert.Equal(t, want, w.Header().Get("X-RateLimit-Remaining"))
			assert.Equal(t, []string{"1700000020", "1700000040", "1700000060"}[i], w.Header().Get("X-RateLimit-Reset"), "a Unix time")
			assert.Empty(t, w.Header().Get("Retry-After"))
			assert.Empty(t, w.Header().Get("RateLimit"), "IETF fields only with WithIETFHeaders")
		}
		d := obs.last(t)
		assert.Equal(t, "ip:192.0.2.1", d.Key)
		assert.Equal(t, []luarate.Limit{limit}, d.Limits)
		assert.Equal(t, 1, d.Cost)
		assert.Regexp(t, `^mw\d+$`, d.Scope)
		assert.Equal(t, httplimit.Allowed, d.Outcome)
		assert.NoError(t, d.Err)
		assert.Positive(t, d.Latency)

		now = now.Add(5 * time.Second)
		w := get(h, "192.0.2.1:1234")
		require.Equal(t, http.StatusTooManyRequests, w.Code)
		assert.Equal(t, "3", w.Header().Get("X-RateLimit-Limit"))
		assert.Equal(t, "0", w.Header().Get("X-RateLimit-Remaining"))
		assert.Equal(t, "1700000060", w.Header().Get("X-RateLimit-Reset"))
		assert.Equal(t, "15", w.Header().Get("Retry-After"))
		assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
		assert.JSONEq(t, `{"error":"rate limit exceeded","retry_after":15,"retry_after_ms":15000}`, w.Body.String())
		d = obs.last(t)
		assert.Equal(t, httplimit.Denied, d.Outcome)
		assert.Equal(t, 15*time.Second, d.Result.RetryAfter)

		// another client has its own budget
		w = get(h, "192.0.2.2:1234")
		assert.Equal(t, 200, w.Code)
		assert.Equal(t, "2", w.Header().Get("X-RateLimit-Remaining"))
	})
}

func TestIETFHeaders(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		h := middleware(l, luarate.PerSecond(luarate.FixedWindow, 2), httplimit.WithIETFHeaders(""))(ok)
		now = now.Add(400 * time.Millisecond) // 600ms left in the window
		w := get(h, "192.0.2.1:1")
		assert.Equal(t, `"default";q=2;w=1`, w.Header().Get("RateLimit-Policy"))
		assert.Equal(t, `"default";r=1;t=1`, w.Header().Get("RateLimit"))
		get(h, "192.0.2.1:1")
		w = get(h, "192.0.2.1:1")
		require.Equal(t, 429, w.Code)
		assert.Equal(t, `"default";r=0;t=1`, w.Header().Get("RateLimit"))
		assert.Equal(t, "1", w.Header().Get("Retry-After"))

		// a burst above the rate is a vendor parameter; t is the retry wait when denied
		burst := luarate.Limit{Algorithm: luarate.TokenBucket, Rate: 1, Period: 10 * time.Second, Burst: 3}
		h = middleware(l, burst, httplimit.WithIETFHeaders(`per "key"`))(ok)
		for range 3 {
			w = get(h, "192.0.2.9:1")
		}
		assert.Equal(t, `"per \"key\"";q=1;w=10;luarate-burst=3`, w.Header().Get("RateLimit-Policy"))
		assert.Equal(t, `"per \"key\"";r=0;t=10`, w.Header().Get("RateLimit"), "t: the next unit, not the time until full")
		w = get(h, "192.0.2.9:1")
		assert.Equal(t, `"per \"key\"";r=0;t=10`, w.Header().Get("RateLimit"))
		assert.Equal(t, "10", w.Header().Get("Retry-After"))

		// a period that is not whole seconds keeps its w, rounded up: a stricter policy
		h = middleware(l, luarate.Limit{Algorithm: luarate.GCRA, Rate: 5, Period: 1500 * time.Millisecond}, httplimit.WithIETFHeaders("p"))(ok)
		assert.Equal(t, `"p";q=5;w=2`, get(h, "192.0.2.1:1").Header().Get("RateLimit-Policy"))
	})
}

func TestPerRouteDynamicAndExempt(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		byKey := httplimit.WithKey(httplimit.First(httplimit.Header("X-API-Key"), httplimit.IP()))
		free, premium := luarate.PerMinute(luarate.GCRA, 2), luarate.PerMinute(luarate.GCRA, 5)
		tiers := httplimit.WithLimitFunc(func(r *http.Request) ([]luarate.Limit, error) {
			if r.Header.Get("X-API-Key") == "premium" {
				return []luarate.Limit{premium}, nil
			}
			return []luarate.Limit{free}, nil
		})
		health := httplimit.WithExempt(func(r *http.Request) bool { return r.Header.Get("X-Health") == "1" })
		data := middleware(l, free, byKey, tiers, health, httplimit.WithScope("data"))(ok)
		search := middleware(l, luarate.PerMinute(luarate.GCRA, 1), byKey, httplimit.WithScope("search"))(ok)

		count := func(h http.Handler, header ...string) (allowed int) {
			for range 8 {
				if get(h, "192.0.2.1:1", header...).Code == 200 {
					allowed++
				}
			}
			return allowed
		}
		// exempt requests pass untouched and count nothing
		w := get(data, "192.0.2.1:1", "X-Health", "1")
		assert.Equal(t, 200, w.Code)
		assert.Empty(t, w.Header().Get("X-RateLimit-Limit"))
		assert.Equal(t, 2, count(data), "free tier by IP")
		assert.Equal(t, 1, count(search), "the search route has its own, stricter counter")
		assert.Equal(t, 5, count(data, "X-API-Key", "premium"), "premium key")
		assert.Equal(t, 2, count(data, "X-API-Key", "other"), "another key, free tier, own counter")
		assert.Equal(t, 8, count(data, "X-Health", "1"))
	})
}

func TestDenyHandlerReplaced(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		h := middleware(fixedLimiter(client, prefix, &now), luarate.PerHour(luarate.TokenBucket, 1),
			httplimit.WithDenyHandler(func(w http.ResponseWriter, r *http.Request, res luarate.Result) {
				w.WriteHeader(http.StatusTeapot)
				io.WriteString(w, "wait "+res.RetryAfter.String())
			}))(ok)
		get(h, "192.0.2.1:1")
		w := get(h, "192.0.2.1:1")
		assert.Equal(t, http.StatusTeapot, w.Code)
		assert.Equal(t, "wait 1h0m0s", w.Body.String())
		assert.Equal(t, "3600", w.Header().Get("Retry-After"), "headers are set before the handler runs")
	})
}

func TestBadKeyOrLimitIs500(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		now := time.UnixMilli(1_700_000_000_000)
		l := fixedLimiter(client, prefix, &now)
		var obs recorder
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		type userKey struct{}
		noUser := middleware(l, luarate.PerSecond(luarate.GCRA, 1),
			httplimit.WithKey(httplimit.ContextValue(userKey{})), httplimit.WithObserver(obs.observe), httplimit.WithLogger(logger))(ok)
		w := get(noUser, "192.0.2.1:1")
		assert.Equal(t, 500, w.Code)
		assert.ErrorIs(t, obs.last(t).Err, httplimit.ErrNoKey)
		assert.Equal(t, httplimit.Error, obs.last(t).Outcome)
		assert.Contains(t, logs.String(), "outcome=error")

		badLimit := middleware(l, luarate.Limit{Algorithm: luarate.GCRA, Rate: 0, Period: time.Second},
			httplimit.WithObserver(obs.observe), httplimit.WithLogger(logger))(ok)
		assert.Equal(t, 500, get(badLimit, "192.0.2.1:1").Code, "a bad limit is never silently unlimited, even failing open")
		assert.ErrorIs(t, obs.last(t).Err, luarate.ErrInvalidLimit)
	})
}

// A Redis that answers, but refuses the scripts, is a setup error, not an
// outage: 500 under either policy, never served unlimited. A key holding a
// value the scripts did not write (on both backends), and a Redis user
// without EVALSHA (on real Redis).
func TestSetupErrorsAre500(t *testing.T) {
	check := func(t *testing.T, l *luarate.Limiter, want string, extra ...httplimit.Option) {
		t.Helper()
		for _, opts := range [][]httplimit.Option{nil, {httplimit.WithFailClosed()}} {
			var obs recorder
			var logs logBuffer
			opts = append(opts, httplimit.WithScope("setup"), httplimit.WithObserver(obs.observe),
				httplimit.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			h := middleware(l, luarate.PerSecond(luarate.GCRA, 10), append(opts, extra...)...)(ok)
			w := get(h, "192.0.2.1:1")
			assert.Equal(t, 500, w.Code, "a setup error is never served unlimited, nor taken for an outage")
			assert.JSONEq(t, `{"error":"rate limiting is misconfigured"}`, w.Body.String())
			d := obs.last(t)
			assert.Equal(t, httplimit.Error, d.Outcome)
			assert.NotErrorIs(t, d.Err, httplimit.ErrUnavailable)
			assert.ErrorContains(t, d.Err, want)
			assert.Contains(t, logs.String(), "outcome=error")
		}
	}
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		l := luarate.New(client, luarate.WithPrefix(prefix))
		h := middleware(l, luarate.PerSecond(luarate.GCRA, 10), httplimit.WithScope("setup"))(ok)
		require.Equal(t, 200, get(h, "192.0.2.1:1").Code)
		ctx := context.Background()
		keys, err := client.Do(ctx, client.B().Keys().Pattern(prefix+"*").Build()).AsStrSlice()
		require.NoError(t, err)
		require.Len(t, keys, 1)
		require.NoError(t, client.Do(ctx, client.B().Set().Key(keys[0]).Value("another app's value").Px(time.Minute).Build()).Error())
		check(t, l, "did not write")
		longKey := httplimit.WithKey(func(r *http.Request) (string, error) { return "path:" + strings.Repeat("p", luarate.MaxKeyLen), nil })
		check(t, l, "bytes, at most 1024", longKey) // the scope adds to the key
	})
	t.Run("no permission", func(t *testing.T) {
		if realAddr == "" {
			t.Skip("SKIPPED: no real Redis (install redis-server)")
		}
		s, err := redistest.Start()
		require.NoError(t, err)
		t.Cleanup(s.Stop)
		_, err = redistest.Command(s.Addr, "ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "+@all", "-evalsha", "-eval")
		require.NoError(t, err)
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Addr}, Username: "noscripts", Password: "pw",
			DisableCache: true, ForceSingleClient: true})
		require.NoError(t, err)
		t.Cleanup(c.Close)
		check(t, luarate.New(c), luarate.ErrNoPermission.Error())
	})
}

// stoppedRedis is a backend whose server is gone.
type stoppedRedis struct {
	name string
	stop func(t *testing.T) rueidis.Client // starts a server, connects, stops the server
}

func stoppedBackends(t *testing.T) []stoppedRedis {
	return []stoppedRedis{
		{"miniredis", func(t *testing.T) rueidis.Client {
			m, c := redistest.Mini(t)
			m.Close()
			return c
		}},
		{"redis", func(t *testing.T) rueidis.Client {
			if realAddr == "" {
				t.Skip("SKIPPED: no real Redis (install redis-server)")
			}
			s, err := redistest.Start()
			require.NoError(t, err)
			c := redistest.Client(t, s.Addr)
			require.NoError(t, c.Do(context.Background(), c.B().Ping().Build()).Error())
			s.Stop()
			return c
		}},
	}
}

func TestRedisStoppedFailOpenAndClosed(t *testing.T) {
	for _, b := range stoppedBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			l := luarate.New(b.stop(t))
			limit := luarate.PerSecond(luarate.GCRA, 10)

			var obs recorder
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			open := middleware(l, limit, httplimit.WithObserver(obs.observe), httplimit.WithLogger(logger),
				httplimit.WithTimeout(2*time.Second))(ok)
			w := get(open, "192.0.2.1:1")
			assert.Equal(t, 200, w.Code, "fail open is the default")
			assert.Equal(t, `{"data":"ok"}`, w.Body.String())
			assert.Empty(t, w.Header().Get("X-RateLimit-Remaining"), "no decision, no made-up headers")
			d := obs.last(t)
			assert.Equal(t, httplimit.FailedOpen, d.Outcome)
			assert.ErrorIs(t, d.Err, httplimit.ErrUnavailable)
			assert.Equal(t, "ip:192.0.2.1", d.Key)
			assert.Contains(t, logs.String(), "level=ERROR")
			assert.Contains(t, logs.String(), "outcome=failed_open")

			closed := middleware(l, limit, httplimit.WithFailClosed(), httplimit.WithObserver(obs.observe),
				httplimit.WithLogger(logger), httplimit.WithTimeout(2*time.Second))(ok)
			w = get(closed, "192.0.2.1:1")
			assert.Equal(t, http.StatusServiceUnavailable, w.Code)
			assert.Equal(t, "1", w.Header().Get("Retry-After"))
			assert.JSONEq(t, `{"error":"rate limiter unavailable, retry later","retry_after":1}`, w.Body.String())
			assert.Equal(t, httplimit.FailedClosed, obs.last(t).Outcome)
		})
	}
}

// With a Limiter that has insurance, a stopped Redis is neither fail open
// nor fail closed: requests get this instance's share of the limit (10/2 = 5)
// with honest headers, and the observer sees each decision as insured.
func TestRedisStoppedInsurance(t *testing.T) {
	for _, b := range stoppedBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			var logs bytes.Buffer
			now := time.UnixMilli(1_700_000_000_000)
			l := luarate.New(b.stop(t), luarate.WithClock(func() time.Time { return now }),
				insurance.With(insurance.Config{Instances: 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))}))
			defer l.Close()
			var obs recorder
			h := middleware(l, luarate.PerSecond(luarate.GCRA, 10), httplimit.WithObserver(obs.observe),
				httplimit.WithFailClosed(), httplimit.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
				httplimit.WithTimeout(2*time.Second))(ok)
			for i := 1; i <= 6; i++ {
				w := get(h, "192.0.2.1:1")
				d := obs.last(t)
				require.NoError(t, d.Err)
				assert.True(t, d.Result.Insured)
				assert.Equal(t, "5", w.Header().Get("X-RateLimit-Limit"), "the share applied")
				if i <= 5 {
					assert.Equal(t, 200, w.Code, "request %d", i)
					assert.Equal(t, httplimit.Allowed, d.Outcome)
					assert.Equal(t, strconv.Itoa(5-i), w.Header().Get("X-RateLimit-Remaining"))
				} else {
					assert.Equal(t, 429, w.Code)
					assert.Equal(t, httplimit.Denied, d.Outcome)
					assert.Equal(t, "1", w.Header().Get("Retry-After"))
				}
			}
			assert.Equal(t, 1, strings.Count(logs.String(), "deciding on the in-process insurance"), logs.String())
			assert.NotContains(t, logs.String(), "level=ERROR", "an insured decision is not a failure")

			// after Close the insurance cannot decide: the middleware's own policy applies
			l.Close()
			assert.Equal(t, 503, get(h, "192.0.2.1:1").Code)
			assert.Equal(t, httplimit.FailedClosed, obs.last(t).Outcome)
		})
	}
}

// A client that hangs up before Redis answers is not a Redis failure: under
// either policy the handler does not run for it, it is logged at Debug, not
// Error, and the observer sees Outcome Canceled.
func TestClientGoneIsNotAFailure(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		l := luarate.New(client, luarate.WithPrefix(prefix))
		for _, opts := range [][]httplimit.Option{nil, {httplimit.WithFailClosed()}} {
			var obs recorder
			var logs logBuffer
			ran := false
			h := middleware(l, luarate.PerSecond(luarate.GCRA, 10), append(opts, httplimit.WithObserver(obs.observe),
				httplimit.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))...)(
				http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true }))
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			r := httptest.NewRequestWithContext(ctx, "GET", "/api/data", nil)
			r.RemoteAddr = "192.0.2.1:1"
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			assert.False(t, ran, "no handler runs for a request that is gone")
			assert.Equal(t, http.StatusServiceUnavailable, w.Code)
			d := obs.last(t)
			assert.Equal(t, httplimit.Canceled, d.Outcome)
			assert.ErrorIs(t, d.Err, context.Canceled)
			assert.ErrorIs(t, d.Err, httplimit.ErrUnavailable)
			assert.Contains(t, logs.String(), "level=DEBUG")
			assert.Contains(t, logs.String(), "outcome=canceled")
			assert.NotContains(t, logs.String(), "level=ERROR")

			// the middleware's own timeout, with the client still there, stays a failure
			h = middleware(l, luarate.PerSecond(luarate.GCRA, 10), append(opts, httplimit.WithObserver(obs.observe),
				httplimit.WithTimeout(time.Nanosecond), httplimit.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))...)(ok)
			get(h, "192.0.2.1:1")
			assert.Contains(t, []httplimit.Outcome{httplimit.FailedOpen, httplimit.FailedClosed}, obs.last(t).Outcome)
		}
	})
}

func TestDecisionTimeout(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		var obs recorder
		h := middleware(luarate.New(client, luarate.WithPrefix(prefix)), luarate.PerSecond(luarate.GCRA, 10),
			httplimit.WithTimeout(time.Nanosecond), httplimit.WithFailClosed(), httplimit.WithObserver(obs.observe),
			httplimit.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))(ok)
		assert.Equal(t, 503, get(h, "192.0.2.1:1").Code)
		assert.ErrorIs(t, obs.last(t).Err, context.DeadlineExceeded)
	})
}

// The middleware behind a real HTTP server and client, under a mux.
func TestRealServer(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		l := luarate.New(client, luarate.WithPrefix(prefix)) // the server's clock
		mux := http.NewServeMux()
		mux.Handle("GET /api/data", middleware(l, luarate.PerMinute(luarate.GCRA, 5), httplimit.WithIETFHeaders("per-ip"))(ok))
		srv := httptest.NewServer(mux)
		defer srv.Close()

		var codes []int
		var last *http.Response
		for range 7 {
			resp, err := http.Get(srv.URL + "/api/data")
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
			if resp.StatusCode == 429 {
				var v struct {
					Error      string `json:"error"`
					RetryAfter int    `json:"retry_after"`
				}
				require.NoError(t, json.Unmarshal(body, &v), string(body))
				assert.Equal(t, "rate limit exceeded", v.Error)
				assert.Equal(t, resp.Header.Get("Retry-After"), strconv.Itoa(v.RetryAfter))
			}
			last = resp
		}
		assert.Equal(t, []int{200, 200, 200, 200, 200, 429, 429}, codes)
		assert.Equal(t, "5", last.Header.Get("X-RateLimit-Limit"))
		assert.Equal(t, "0", last.Header.Get("X-RateLimit-Remaining"))
		assert.Equal(t, `"per-ip";q=5;w=60`, last.Header.Get("RateLimit-Policy"))
		assert.True(t, strings.HasPrefix(last.Header.Get("RateLimit"), `"per-ip";r=0;t=`))
	})
}

// A Redis that hangs (busy for a second) is cut off by the decision timeout
// and the request is served: fail open.
func TestHungRedisTimesOut(t *testing.T) {
	if realAddr == "" {
		t.Skip("SKIPPED: no real Redis (install redis-server)")
	}
	s, err := redistest.Start("--enable-debug-command", "local")
	require.NoError(t, err)
	defer s.Stop()
	client := redistest.Client(t, s.Addr)
	sleeper := redistest.Client(t, s.Addr)
	ctx := context.Background()
	require.NoError(t, client.Do(ctx, client.B().Ping().Build()).Error())

	busy := make(chan error, 1)
	go func() { busy <- sleeper.Do(ctx, sleeper.B().Arbitrary("DEBUG", "SLEEP").Args("1").Build()).Error() }()
	// wait until the server is inside DEBUG SLEEP: a PING with a short deadline fails
	for {
		pctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err := client.Do(pctx, client.B().Ping().Build()).Error()
		cancel()
		if err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	var obs recorder
	h := middleware(luarate.New(client), luarate.PerSecond(luarate.GCRA, 10),
		httplimit.WithTimeout(50*time.Millisecond), httplimit.WithObserver(obs.observe),
		httplimit.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))(ok)
	w := get(h, "192.0.2.1:1")
	assert.Equal(t, 200, w.Code)
	d := obs.last(t)
	assert.Equal(t, httplimit.FailedOpen, d.Outcome)
	assert.ErrorIs(t, d.Err, context.DeadlineExceeded)
	require.NoError(t, <-busy)
}

// 64 clients at once through a real HTTP server: exactly the limit gets
// through, the rest get 429.
func TestRaceExactlyTheLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, client rueidis.Client, prefix string) {
		const limit, workers, each = 50, 64, 4
		h := middleware(luarate.New(client, luarate.WithPrefix(prefix)), luarate.PerHour(luarate.GCRA, limit),
			httplimit.WithTimeout(10*time.Second))(ok)
		srv := httptest.NewServer(h)
		defer srv.Close()
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
		defer hc.CloseIdleConnections()

		var mu sync.Mutex
		codes := map[int]int{}
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					resp, err := hc.Get(srv.URL)
					if !assert.NoError(t, err) {
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					codes[resp.StatusCode]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		assert.Equal(t, map[int]int{200: limit, 429: workers*each - limit}, codes)
	})
}

// middleware is httplimit.Middleware with a decision timeout of 10s unless
// the test sets its own: the 100ms default is for production, and a test
// about limits must not fail open because a loaded CI machine was slow.
func middleware(l *luarate.Limiter, limit luarate.Limit, opts ...httplimit.Option) func(http.Handler) http.Handler {
	return middlewareN(l, []luarate.Limit{limit}, opts...)
}

// middlewareN is middleware with several limits.
func middlewareN(l *luarate.Limiter, limits []luarate.Limit, opts ...httplimit.Option) func(http.Handler) http.Handler {
	return httplimit.Middleware(l, limits, append([]httplimit.Option{httplimit.WithTimeout(10 * time.Second)}, opts...)...)
}
