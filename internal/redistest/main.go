package redistest

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/redis/rueidis"
)

// Main runs a package's tests with a real Redis and returns the exit code
// for TestMain: it sets *addr to REDIS_ADDR or to a server it starts, and
// *started to whether it started it. Without either it warns that the
// real-Redis tests will skip, or fails under CI, where they must run.
//
// After the tests, on a server it started, it checks the memory promise: no
// key outlives its state, so every key left must carry a TTL. Tests that
// plant keys of their own delete them.
func Main(m *testing.M, addr *string, started *bool) int {
	a, stop, err := Real()
	switch {
	case err == nil:
		*addr, *started = a, os.Getenv("REDIS_ADDR") == ""
	case os.Getenv("CI") != "":
		fmt.Fprintln(os.Stderr, "CI needs real Redis tests, but:", err)
		return 1
	default:
		fmt.Fprintln(os.Stderr, "WARNING: real-Redis tests will SKIP:", err)
	}
	code := m.Run()
	if *started {
		if err := everyKeyExpires(*addr); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			code = 1
		}
	}
	if stop != nil {
		stop()
	}
	return code
}

func everyKeyExpires(addr string) error {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	keys, err := c.Do(ctx, c.B().Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil {
		return err
	}
	var noTTL []string
	for _, k := range keys {
		if ttl, _ := c.Do(ctx, c.B().Pttl().Key(k).Build()).AsInt64(); ttl == -1 {
			noTTL = append(noTTL, k)
		}
	}
	if len(noTTL) > 0 {
		return fmt.Errorf("%d of %d keys left without a TTL: %q", len(noTTL), len(keys), noTTL[:min(len(noTTL), 5)])
	}
	return nil
}
