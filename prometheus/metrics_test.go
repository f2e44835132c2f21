package luarateprom_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/luarate/luarate/insurance"
	"github.com/luarate/luarate/internal/redistest"
	luarateprom "github.com/luarate/luarate/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

func get(h http.Handler) int {
	r := httptest.NewRequest("GET", "/", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

// Redis errors and insured decisions, against a Redis that is gone; the
// route falls back to the middleware's scope outside a ServeMux route.
func TestRedisErrorsAndInsurance(t *testing.T) {
	m, client := redistest.Mini(t)
	m.Close()
	reg := prometheus.NewRegistry()
	metrics, err := luarateprom.New(reg)
	require.NoError(t, err)
	quiet := httplimit.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	limits := []luarate.Limit{luarate.PerMinute(luarate.GCRA, 2)}

	open := httplimit.Middleware(luarate.New(client), limits, httplimit.WithScope("open"), httplimit.WithObserver(metrics.Observe), quiet)(ok)
	assert.Equal(t, 200, get(open))
	gone, cancel := context.WithCancel(context.Background())
	cancel() // a client that went away: no Redis error
	open.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(gone, "GET", "/", nil))
	closed := httplimit.Middleware(luarate.New(client), limits, httplimit.WithScope("closed"), httplimit.WithFailClosed(), httplimit.WithObserver(metrics.Observe), quiet)(ok)
	assert.Equal(t, 503, get(closed))

	now := time.UnixMilli(1_700_000_000_000)
	insured := luarate.New(client, luarate.WithClock(func() time.Time { return now }),
		insurance.With(insurance.Config{Instances: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer insured.Close()
	h := httplimit.Middleware(insured, limits, httplimit.WithScope("insured"), httplimit.WithObserver(metrics.Observe), quiet)(ok)
	assert.Equal(t, []int{200, 200, 429}, []int{get(h), get(h), get(h)})

	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP luarate_http_decisions_total Rate-limit decisions of the HTTP middleware, by route and outcome (allowed, denied, failed_open, failed_closed, refused, canceled, error).
# TYPE luarate_http_decisions_total counter
luarate_http_decisions_total{outcome="allowed",route="insured"} 2
luarate_http_decisions_total{outcome="canceled",route="open"} 1
luarate_http_decisions_total{outcome="denied",route="insured"} 1
luarate_http_decisions_total{outcome="failed_closed",route="closed"} 1
luarate_http_decisions_total{outcome="failed_open",route="open"} 1
# HELP luarate_http_redis_errors_total Decisions Redis did not make (unreachable, failing or too slow; not a request whose client went away first), by route.
# TYPE luarate_http_redis_errors_total counter
luarate_http_redis_errors_total{route="closed"} 1
luarate_http_redis_errors_total{route="open"} 1
# HELP luarate_http_insured_decisions_total Decisions made by the Limiter's in-process insurance while Redis was unavailable, by route and outcome.
# TYPE luarate_http_insured_decisions_total counter
luarate_http_insured_decisions_total{outcome="allowed",route="insured"} 2
luarate_http_insured_decisions_total{outcome="denied",route="insured"} 1
`), "luarate_http_decisions_total", "luarate_http_insured_decisions_total", "luarate_http_redis_errors_total"),
		"no Redis error counted for insured decisions, nor for a client that went away")
}

// A New that fails leaves nothing registered; a second New on one registry
// fails.
func TestNewFailsWhole(t *testing.T) {
	reg := &countingRegisterer{Registerer: prometheus.NewRegistry(), refuseAt: 3}
	_, err := luarateprom.New(reg)
	require.ErrorContains(t, err, "refused")
	require.Zero(t, reg.live, "the collectors registered before the refusal were unregistered")

	reg.refuseAt = 0
	_, err = luarateprom.New(reg)
	require.NoError(t, err)
	_, err = luarateprom.New(reg)
	var dup prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &dup, "one New per registry")
}

// countingRegisterer counts the collectors registered through it, and
// refuses the refuseAt-th registration (0: none).
type countingRegisterer struct {
	prometheus.Registerer
	refuseAt, calls, live int
}

func (r *countingRegisterer) Register(c prometheus.Collector) error {
	r.calls++
	if r.calls == r.refuseAt {
		return errors.New("refused")
	}
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.live++
	return nil
}

func (r *countingRegisterer) Unregister(c prometheus.Collector) bool {
	ok := r.Registerer.Unregister(c)
	if ok {
		r.live--
	}
	return ok
}
