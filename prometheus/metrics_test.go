package luarateprom_test

import (
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
	closed := httplimit.Middleware(luarate.New(client), limits, httplimit.WithScope("closed"), httplimit.WithFailClosed(), httplimit.WithObserver(metrics.Observe), quiet)(ok)
	assert.Equal(t, 503, get(closed))

	now := time.UnixMilli(1_700_000_000_000)
	insured := luarate.New(client, luarate.WithClock(func() time.Time { return now }),
		insurance.With(insurance.Config{Instances: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer insured.Close()
	h := httplimit.Middleware(insured, limits, httplimit.WithScope("insured"), httplimit.WithObserver(metrics.Observe), quiet)(ok)
	assert.Equal(t, []int{200, 200, 429}, []int{get(h), get(h), get(h)})

	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP luarate_http_redis_errors_total Decisions Redis could not make (unreachable, failing or too slow), by route.
# TYPE luarate_http_redis_errors_total counter
luarate_http_redis_errors_total{route="closed"} 1
luarate_http_redis_errors_total{route="open"} 1
# HELP luarate_http_insured_decisions_total Decisions made by the Limiter's in-process insurance while Redis was unavailable, by route and outcome.
# TYPE luarate_http_insured_decisions_total counter
luarate_http_insured_decisions_total{outcome="allowed",route="insured"} 2
luarate_http_insured_decisions_total{outcome="denied",route="insured"} 1
`), "luarate_http_insured_decisions_total", "luarate_http_redis_errors_total"), "no Redis error counted for insured decisions")
}
