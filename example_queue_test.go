package luarate_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

// Shaping instead of denying: a LeakyQueue lets requests leave one every
// Period/Rate (here 100 ms) and queues up to Burst of them; Wait sleeps each
// one's Delay. A request that does not fit in the queue waits for a place,
// unless ctx's deadline comes first: then Wait says so at once.
func ExampleLimiter_Wait() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))
	limit := luarate.Limit{Algorithm: luarate.LeakyQueue, Rate: 10, Period: time.Second, Burst: 3}

	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		res, err := limiter.Wait(ctx, "export-job", limit)
		if err != nil {
			panic(err)
		}
		fmt.Printf("request %d: went after %v\n", i, res.Delay)
		now = now.Add(time.Millisecond) // the next arrives 1ms later
	}
	soon, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	res, err := limiter.Wait(soon, "export-job", limit)
	if errors.Is(err, context.DeadlineExceeded) && !res.Allowed {
		fmt.Printf("request 4: queue full for %v, longer than the deadline\n", res.RetryAfter)
	}
	// Output:
	// request 1: went after 0s
	// request 2: went after 99ms
	// request 3: went after 198ms
	// request 4: queue full for 97ms, longer than the deadline
}

// At most 2 requests of one tenant in flight. A lease that is never released
// (its holder crashed) frees its slot when it expires.
func ExampleLimiter_Acquire() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))

	ctx := context.Background()
	first, res, _ := limiter.Acquire(ctx, "tenant7", 2, 30*time.Second)
	fmt.Printf("first: allowed=%v remaining=%d\n", res.Allowed, res.Remaining)
	_, res, _ = limiter.Acquire(ctx, "tenant7", 2, 30*time.Second) // never released
	fmt.Printf("second: allowed=%v remaining=%d\n", res.Allowed, res.Remaining)
	_, res, _ = limiter.Acquire(ctx, "tenant7", 2, 30*time.Second)
	fmt.Printf("third: allowed=%v retry_after=%v\n", res.Allowed, res.RetryAfter)

	if err := first.Release(ctx); err != nil {
		panic(err)
	}
	_ = first.Release(ctx) // a second release is harmless
	third, res, _ := limiter.Acquire(ctx, "tenant7", 2, 30*time.Second)
	fmt.Printf("after a release: allowed=%v remaining=%d\n", res.Allowed, res.Remaining)
	defer third.Release(ctx)

	now = now.Add(30 * time.Second) // the leases still held have expired
	res, _ = limiter.PeekConcurrency(ctx, "tenant7", 2)
	fmt.Printf("30s later: free=%d\n", res.Remaining)
	// Output:
	// first: allowed=true remaining=1
	// second: allowed=true remaining=0
	// third: allowed=false retry_after=30s
	// after a release: allowed=true remaining=0
	// 30s later: free=2
}
