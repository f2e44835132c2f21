package insurance_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/luarate/luarate/insurance"
	"github.com/redis/rueidis"
)

// With insurance, a Redis outage is decided in the process, against this
// instance's share of the limit (here 20/s for 4 instances: 5/s each),
// instead of failing open or closed. The switch is logged once; when Redis
// answers again (tried once per second), decisions go back to it.
func ExampleWith() {
	mr, _ := miniredis.Run()
	client, _ := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	defer client.Close()
	// log to stdout, without the time and the error text (they vary)
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "error" {
				return slog.Attr{}
			}
			return a
		}}))
	now := time.UnixMilli(1_700_000_000_000)
	limiter := luarate.New(client,
		insurance.With(insurance.Config{Instances: 4, Logger: logger}),
		luarate.WithClock(func() time.Time { return now }))
	defer limiter.Close() // stops the embedded servers

	limit := luarate.PerSecond(luarate.GCRA, 20)
	ctx := context.Background()
	res, _ := limiter.Allow(ctx, "user42", limit)
	fmt.Printf("up:   allowed=%v limit=%d remaining=%d insured=%v\n", res.Allowed, res.Limit, res.Remaining, res.Insured)

	mr.Close() // Redis goes away
	for i := 0; i < 6; i++ {
		res, err := limiter.Allow(ctx, "user42", limit)
		fmt.Printf("down: allowed=%v limit=%d remaining=%d insured=%v err=%v\n", res.Allowed, res.Limit, res.Remaining, res.Insured, err)
	}
	// Output:
	// up:   allowed=true limit=20 remaining=19 insured=false
	// level=WARN msg="luarate: Redis unavailable, deciding on the in-process insurance" instances=4 retry=1s
	// down: allowed=true limit=5 remaining=4 insured=true err=<nil>
	// down: allowed=true limit=5 remaining=3 insured=true err=<nil>
	// down: allowed=true limit=5 remaining=2 insured=true err=<nil>
	// down: allowed=true limit=5 remaining=1 insured=true err=<nil>
	// down: allowed=true limit=5 remaining=0 insured=true err=<nil>
	// down: allowed=false limit=5 remaining=0 insured=true err=<nil>
}
