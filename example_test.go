package luarate_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

// The quick start: 10 requests per second per user, checked in Redis.
// (Here an embedded miniredis and a fixed clock keep the output stable; with a
// real Redis, drop WithClock and the server's clock is used.)
func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{mr.Addr()},
		DisableCache:      true, // miniredis has no client-side caching
		ForceSingleClient: true, // miniredis answers CLUSTER SLOTS; it is one node
	})
	if err != nil {
		panic(err)
	}
	defer client.Close()

	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))
	limit := luarate.PerSecond(luarate.GCRA, 10)

	ctx := context.Background()
	for i := 1; i <= 12; i++ {
		res, err := limiter.Allow(ctx, "user42", limit)
		if err != nil {
			panic(err)
		}
		if i >= 9 {
			fmt.Printf("request %d: allowed=%v remaining=%d retry_after=%v\n", i, res.Allowed, res.Remaining, res.RetryAfter)
		}
	}
	// Output:
	// request 9: allowed=true remaining=1 retry_after=0s
	// request 10: allowed=true remaining=0 retry_after=0s
	// request 11: allowed=false remaining=0 retry_after=100ms
	// request 12: allowed=false remaining=0 retry_after=100ms
}

// Several limits of one identity in one atomic call: the request counts
// against both, or against neither.
func ExampleLimiter_AllowMulti() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))

	perSecond := luarate.PerSecond(luarate.TokenBucket, 10)
	perHour := luarate.PerHour(luarate.TokenBucket, 12)
	// The third call is denied by the hourly limit (2 left, 5 asked), so the
	// per-second bucket, though it would refill soon, is not charged either.
	for i := 1; i <= 3; i++ {
		res, _ := limiter.AllowMulti(context.Background(), "tenant7", 5, perSecond, perHour)
		fmt.Printf("5 more: allowed=%v limit=%d remaining=%d\n", res.Allowed, res.Limit, res.Remaining)
	}
	// Output:
	// 5 more: allowed=true limit=10 remaining=5
	// 5 more: allowed=true limit=10 remaining=0
	// 5 more: allowed=false limit=12 remaining=2
}

// SetHeaders writes the X-RateLimit-* headers, and Retry-After when denied.
func ExampleResult_SetHeaders() {
	res := luarate.Result{Allowed: false, Limit: 10, Remaining: 0, ResetAfter: 1500 * time.Millisecond, RetryAfter: 100 * time.Millisecond}
	w := httptest.NewRecorder()
	res.SetHeaders(w.Header())
	for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"} {
		fmt.Printf("%s: %s\n", h, w.Header().Get(h))
	}
	// Output:
	// X-RateLimit-Limit: 10
	// X-RateLimit-Remaining: 0
	// X-RateLimit-Reset: 2
	// Retry-After: 1
}

// With a deny cache, a key that keeps calling while denied is answered from
// memory until its retry time: here 3 of the 5 calls never reach Redis.
func ExampleWithDenyCache() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client,
		luarate.WithDenyCache(10_000), // remember denials of up to 10k keys
		luarate.WithClock(func() time.Time { return now }))

	limit := luarate.PerMinute(luarate.GCRA, 1)
	for i := 1; i <= 5; i++ {
		before := mr.CommandCount()
		res, _ := limiter.Allow(context.Background(), "abuser", limit)
		fmt.Printf("allowed=%v retry_after=%v asked Redis=%v\n", res.Allowed, res.RetryAfter, mr.CommandCount() > before)
		now = now.Add(10 * time.Second)
	}
	// Output:
	// allowed=true retry_after=0s asked Redis=true
	// allowed=false retry_after=50s asked Redis=true
	// allowed=false retry_after=40s asked Redis=false
	// allowed=false retry_after=30s asked Redis=false
	// allowed=false retry_after=20s asked Redis=false
}

// exampleLimiter is a Limiter on an embedded Redis whose clock the example
// moves by hand.
func exampleLimiter() (*luarate.Limiter, *time.Time, func()) {
	mr, _ := miniredis.Run()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))
	return limiter, &now, func() { client.Close(); mr.Close() }
}

// Brute-force protection for a login: take one unit per attempt, give it back
// when the password was right, so only failures count; the sixth failure in
// 15 minutes locks the account for an hour, however the window refills.
func ExampleLimiter_Refund() {
	limiter, now, done := exampleLimiter()
	defer done()
	ctx := context.Background()
	failures := luarate.Limit{Algorithm: luarate.SlidingWindowLog, Rate: 5, Period: 15 * time.Minute, Lockout: time.Hour}

	login := func(passwordOK bool) string {
		res, err := limiter.Allow(ctx, "alice", failures)
		if err != nil {
			panic(err)
		}
		if !res.Allowed {
			return fmt.Sprintf("429, retry in %v", res.RetryAfter)
		}
		if passwordOK {
			if _, err := limiter.Refund(ctx, "alice", failures, 1); err != nil {
				panic(err)
			}
			return "200"
		}
		return fmt.Sprintf("401, %d failures left", res.Remaining)
	}
	fmt.Println(login(true), "|", login(true), "|", login(false))
	for i := 0; i < 4; i++ {
		login(false)
	}
	fmt.Println("sixth failure:", login(false))
	*now = now.Add(30 * time.Minute)
	fmt.Println("30 min later, right password:", login(true))
	*now = now.Add(30 * time.Minute)
	fmt.Println("when the lock ends:", login(true))
	// Output:
	// 200 | 200 | 401, 4 failures left
	// sixth failure: 429, retry in 1h0m0s
	// 30 min later, right password: 429, retry in 30m0s
	// when the lock ends: 200
}

// A batch endpoint takes what the limit allows now and defers the rest.
func ExampleLimiter_AllowAtMost() {
	limiter, _, done := exampleLimiter()
	defer done()
	ctx := context.Background()
	limit := luarate.PerMinute(luarate.TokenBucket, 100)

	for _, batch := range []int{60, 60, 60} {
		res, err := limiter.AllowAtMost(ctx, "tenant7", limit, batch)
		if err != nil {
			panic(err)
		}
		fmt.Printf("asked %d: granted %d, remaining %d, allowed=%v, retry_after=%v\n", batch, res.Granted, res.Remaining, res.Allowed, res.RetryAfter)
	}
	// Output:
	// asked 60: granted 60, remaining 40, allowed=true, retry_after=0s
	// asked 60: granted 40, remaining 0, allowed=true, retry_after=0s
	// asked 60: granted 0, remaining 0, allowed=false, retry_after=600ms
}

// A suspicious request costs more: Penalize takes up to n extra units, never
// below empty, and on an exhausted key starts the limit's Lockout.
func ExampleLimiter_Penalize() {
	limiter, _, done := exampleLimiter()
	defer done()
	ctx := context.Background()
	limit := luarate.Limit{Algorithm: luarate.GCRA, Rate: 20, Period: time.Minute, Lockout: 10 * time.Minute}

	res, _ := limiter.Allow(ctx, "ip:203.0.113.9", limit)
	fmt.Println("normal request, remaining", res.Remaining)
	res, _ = limiter.Penalize(ctx, "ip:203.0.113.9", limit, 10) // the honeypot field was filled in
	fmt.Println("penalized", res.Granted, "remaining", res.Remaining)
	res, _ = limiter.Penalize(ctx, "ip:203.0.113.9", limit, 10)
	fmt.Println("penalized", res.Granted, "remaining", res.Remaining)
	res, _ = limiter.Penalize(ctx, "ip:203.0.113.9", limit, 10)
	fmt.Println("nothing left to take: allowed", res.Allowed, "retry in", res.RetryAfter)
	// Output:
	// normal request, remaining 19
	// penalized 10 remaining 9
	// penalized 9 remaining 0
	// nothing left to take: allowed false retry in 10m0s
}
