package luarate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
)

// realAddr is the real Redis every behaviour test also runs against; empty
// when there is none (then those tests skip loudly, and fail under CI).
var (
	realAddr    string
	realStarted bool // we started it, so we may inspect every key in it
)

func TestMain(m *testing.M) {
	addr, stop, err := redistest.Real()
	switch {
	case err == nil:
		realAddr, realStarted = addr, os.Getenv("REDIS_ADDR") == ""
	case os.Getenv("CI") != "":
		fmt.Fprintln(os.Stderr, "CI needs real Redis tests, but:", err)
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "WARNING: real-Redis tests will SKIP:", err)
	}
	code := m.Run()
	if realStarted {
		if err := checkEveryKeyExpires(realAddr); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			code = 1
		}
	}
	if stop != nil {
		stop()
	}
	os.Exit(code)
}

// checkEveryKeyExpires is the memory promise: no key a script wrote outlives
// its state. Tests that plant keys of their own delete them.
func checkEveryKeyExpires(addr string) error {
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

// backend is one Redis a test runs against.
type backend struct {
	name   string
	client rueidis.Client
	mini   *miniredis.Miniredis // nil for real Redis
	prefix string               // unique per test: keys of tests never meet
}

// eachBackend runs f against miniredis and against real Redis.
func eachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	t.Run("miniredis", func(t *testing.T) {
		m, c := redistest.Mini(t)
		f(t, backend{name: "miniredis", client: c, mini: m, prefix: uniquePrefix()})
	})
	t.Run("redis", func(t *testing.T) {
		f(t, backend{name: "redis", client: realClient(t), prefix: uniquePrefix()})
	})
}

func realClient(t testing.TB) rueidis.Client {
	t.Helper()
	if realAddr == "" {
		t.Skip("SKIPPED: no real Redis (install redis-server or set REDIS_ADDR)")
	}
	return redistest.Client(t, realAddr)
}

func uniquePrefix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b) + ":"
}

// clock is a settable time for WithClock.
type clock struct{ ms int64 }

func (c *clock) now() time.Time      { return time.UnixMilli(c.ms) }
func (c *clock) add(d time.Duration) { c.ms += d.Milliseconds() }

// limiter returns a Limiter on b whose scripts see the clock's time.
func (b backend) limiter(c *clock) *Limiter {
	return New(b.client, WithPrefix(b.prefix), WithClock(c.now))
}

// eval runs the named script by EVALSHA (EVAL on NOSCRIPT) with raw keys and
// args, as another language would, and returns the reply or the error text.
func (b backend) eval(t *testing.T, script string, keys []string, args ...string) ([]int64, string) {
	t.Helper()
	s, ok := scripts[script]
	if !ok {
		t.Fatalf("no script %q", script)
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = b.prefix + k
	}
	res := s.lua.Exec(context.Background(), b.client, full, args)
	if err := res.Error(); err != nil {
		// rueidis drops the "ERR " code that Redis sends; put it back so the
		// text is what redis-cli and other clients see.
		if _, isRedis := rueidis.IsRedisErr(err); isRedis && !strings.HasPrefix(err.Error(), "ERR ") {
			return nil, "ERR " + err.Error()
		}
		return nil, err.Error()
	}
	vals, err := res.AsIntSlice()
	if err != nil {
		t.Fatalf("%s reply is not integers: %v", script, err)
	}
	return vals, ""
}
