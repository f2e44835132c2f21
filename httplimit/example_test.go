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

// Limit an API to 3 requests per minute and 10 per hour, both at once, per
// verified API key, and per client IP for callers without a valid key: a
// made-up key buys nothing. (An embedded miniredis and a fixed clock keep the
// output stable; in production pass your Redis client and drop both
// WithClock options.)
func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		panic(err) // Redis unreachable at start; a server would log.Fatal
	}
	defer client.Close()
	now := func() time.Time { return time.Unix(1_700_000_000, 0) }
	limiter := luarate.New(client, luarate.WithClock(now))

	limits, err := luarate.ParseLimits("3/minute;10/hour", luarate.GCRA)
	if err != nil {
		panic(err) // a typo in the limits: the error names the bad part
	}
	validKeys := map[string]bool{"key-1": true} // your key store
	limit := httplimit.Middleware(limiter, limits,
		httplimit.WithKey(httplimit.First(
			httplimit.APIKey("X-API-Key", func(_ *http.Request, key string) bool { return validKeys[key] }),
			httplimit.IP())),
		httplimit.WithIETFHeaders("per-minute", "per-hour"),
		httplimit.WithClock(now))
	mux := http.NewServeMux()
	mux.Handle("GET /api/data", limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"data":"hello"}`)
	})))

	send := func(apiKey string) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/api/data", nil) // from 192.0.2.1
		r.Header.Set("X-API-Key", apiKey)
		mux.ServeHTTP(w, r)
		h := w.Header()
		fmt.Printf("%-9s %d remaining=%s reset=%s retry-after=%q %s\n", apiKey, w.Code,
			h.Get("X-RateLimit-Remaining"), h.Get("X-RateLimit-Reset"), h.Get("Retry-After"), h.Get("RateLimit"))
	}
	for range 4 {
		send("key-1")
	}
	for i := range 4 {
		send(fmt.Sprintf("made-up-%d", i)) // limited as 192.0.2.1
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "/api/data", nil))
	fmt.Println(w.Header().Get("RateLimit-Policy"))
	fmt.Print(w.Body.String())
	// Output:
	// key-1     200 remaining=2 reset=1700000020 retry-after="" "per-minute";r=2;t=20
	// key-1     200 remaining=1 reset=1700000040 retry-after="" "per-minute";r=1;t=20
	// key-1     200 remaining=0 reset=1700000060 retry-after="" "per-minute";r=0;t=20
	// key-1     429 remaining=0 reset=1700000060 retry-after="20" "per-minute";r=0;t=20
	// made-up-0 200 remaining=2 reset=1700000020 retry-after="" "per-minute";r=2;t=20
	// made-up-1 200 remaining=1 reset=1700000040 retry-after="" "per-minute";r=1;t=20
	// made-up-2 200 remaining=0 reset=1700000060 retry-after="" "per-minute";r=0;t=20
	// made-up-3 429 remaining=0 reset=1700000060 retry-after="20" "per-minute";r=0;t=20
	// "per-minute";q=3;w=60,"per-hour";q=10;w=3600
	// {"error":"rate limit exceeded","retry_after":20,"retry_after_ms":20000}
}
