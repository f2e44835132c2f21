package luarate_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

// The same traffic under the window algorithms: 10 per second, 10 requests
// just before a window boundary and 10 just after it.
func ExampleAlgorithm() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	var now time.Time
	limiter := luarate.New(client, luarate.WithClock(func() time.Time { return now }))

	ctx := context.Background()
	for _, algo := range []luarate.Algorithm{luarate.FixedWindow, luarate.SlidingWindowCounter, luarate.SlidingWindowLog} {
		admitted := 0
		for _, at := range []int64{900, 1100} { // ms; a window starts at 1000
			now = time.UnixMilli(1_700_000_000_000 + at)
			for range 10 {
				if res, _ := limiter.Allow(ctx, "user42", luarate.PerSecond(algo, 10)); res.Allowed {
					admitted++
				}
			}
		}
		fmt.Printf("%s: %d of 20 admitted within 200ms\n", algo, admitted)
	}
	// Output:
	// fixed_window: 20 of 20 admitted within 200ms
	// sliding_window_counter: 11 of 20 admitted within 200ms
	// sliding_window_log: 10 of 20 admitted within 200ms
}
