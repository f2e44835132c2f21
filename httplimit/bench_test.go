package httplimit_test

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/luarate/luarate/internal/redistest"
)

// BenchmarkMiddleware compares one decision through the middleware (key
// function, headers, observer) with a bare Limiter.Allow, on real Redis, 32
// parallel clients spread over 1000 keys. NoLimit is the same request through
// httptest without the middleware: the test harness's own cost.
func BenchmarkMiddleware(b *testing.B) {
	if realAddr == "" {
		b.Skip("needs a real Redis")
	}
	client := redistest.Client(b, realAddr)
	l := luarate.New(client, luarate.WithPrefix(uniquePrefix()))
	limit := luarate.PerSecond(luarate.GCRA, 1_000_000)
	limits := []luarate.Limit{limit}

	ip := func(i int64) string { return "10.0." + strconv.Itoa(int(i%1000/250)) + "." + strconv.Itoa(int(i%250)) }
	b.Run("Allow", func(b *testing.B) {
		var n atomic.Int64
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := l.Allow(context.Background(), "ip:"+ip(n.Add(1)), limit); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("Middleware", func(b *testing.B) {
		var decisions atomic.Int64
		h := httplimit.Middleware(l, limits, httplimit.WithObserver(func(httplimit.Decision) { decisions.Add(1) }),
			httplimit.WithIETFHeaders(""))(ok)
		serve(b, h, ip)
	})
	b.Run("MiddlewareNoTimeout", func(b *testing.B) {
		serve(b, httplimit.Middleware(l, limits, httplimit.WithTimeout(0))(ok), ip)
	})
	b.Run("NoLimit", func(b *testing.B) { serve(b, ok, ip) })
}

func serve(b *testing.B, h http.Handler, ip func(int64) string) {
	var n atomic.Int64
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if w := get(h, ip(n.Add(1))+":1000"); w.Code != 200 {
				b.Errorf("status %d", w.Code)
				return
			}
		}
	})
}
