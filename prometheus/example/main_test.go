package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var realAddr string

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &realAddr, new(bool))) }

// Seven requests to a 5 per minute route, then a scrape of /metrics: five
// allowed, two denied, seven latencies, on miniredis and on real Redis.
func TestScrapeAfterDecisions(t *testing.T) {
	for name, client := range map[string]func(t *testing.T) rueidis.Client{
		"miniredis": func(t *testing.T) rueidis.Client { _, c := redistest.Mini(t); return c },
		"redis": func(t *testing.T) rueidis.Client {
			if realAddr == "" {
				t.Skip("SKIPPED: no real Redis (install redis-server or set REDIS_ADDR)")
			}
			return redistest.Client(t, realAddr)
		},
	} {
		t.Run(name, func(t *testing.T) {
			// a generous decision timeout: a slow CI machine must not fail open
			h, err := newServer(luarate.New(client(t), luarate.WithPrefix(fmt.Sprintf("prom%d:", time.Now().UnixNano()))), prometheus.NewRegistry(),
				httplimit.WithTimeout(10*time.Second))
			require.NoError(t, err)
			srv := httptest.NewServer(h)
			defer srv.Close()
			var codes []int
			for range 7 {
				resp, err := http.Get(srv.URL + "/api/hello")
				require.NoError(t, err)
				resp.Body.Close()
				codes = append(codes, resp.StatusCode)
			}
			assert.Equal(t, []int{200, 200, 200, 200, 200, 429, 429}, codes)

			resp, err := http.Get(srv.URL + "/metrics")
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			text := string(body)
			assert.Contains(t, text, `luarate_http_decisions_total{outcome="allowed",route="GET /api/hello"} 5`)
			assert.Contains(t, text, `luarate_http_decisions_total{outcome="denied",route="GET /api/hello"} 2`)
			assert.Contains(t, text, `luarate_http_decision_duration_seconds_count{route="GET /api/hello"} 7`)
		})
	}
}
