package httplimit_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/redis/rueidis"
)

// Limit an API to 3 requests per minute per API key, or per client IP for
// callers without a key. (An embedded miniredis and a fixed clock keep the
// output stable; in production pass your Redis client and drop WithClock.)
func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		panic(err) // Redis unreachable at start; a server would log.Fatal
	}
	defer client.Close()
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return time.UnixMilli(1_700_000_000_000) }))

	limit := httplimit.Middleware(limiter, luarate.PerMinute(luarate.GCRA, 3),
		httplimit.WithKey(httplimit.First(httplimit.Header("X-API-Key"), httplimit.IP())),
		httplimit.WithIETFHeaders("per-client"))
	mux := http.NewServeMux()
	mux.Handle("GET /api/data", limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"data":"hello"}`)
	})))

	for i := 1; i <= 4; i++ {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/api/data", nil)
		r.Header.Set("X-API-Key", "key-1")
		mux.ServeHTTP(w, r)
		h := w.Header()
		fmt.Printf("%d %s remaining=%s reset=%s retry-after=%q %s\n", i, w.Result().Status,
			h.Get("X-RateLimit-Remaining"), h.Get("X-RateLimit-Reset"), h.Get("Retry-After"), h.Get("RateLimit"))
		if i == 4 {
			fmt.Print(w.Body.String())
		}
	}
	// Output:
	// 1 200 OK remaining=2 reset=20 retry-after="" "per-client";r=2;t=20
	// 2 200 OK remaining=1 reset=40 retry-after="" "per-client";r=1;t=40
	// 3 200 OK remaining=0 reset=60 retry-after="" "per-client";r=0;t=60
	// 4 429 Too Many Requests remaining=0 reset=60 retry-after="20" "per-client";r=0;t=20
	// {"error":"rate limit exceeded","retry_after":20,"retry_after_ms":20000}
}
