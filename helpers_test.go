package luarate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
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

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &realAddr, &realStarted)) }

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

// spec is lim as the scripts read it: "rate period_ms burst", and
// " lockout_ms" when it has a Lockout (the client's own encoding).
func spec(lim Limit) string { return string(appendLimit(nil, lim)) }

// v3argv is the ARGV of a plain v3 call: one limit per key ("rate period_ms
// burst" or "rate period_ms burst lockout_ms"), then cost, now_ms and mode as
// given; trailing empty ones are left out, as a caller would.
func v3argv(limits []string, cost, now, mode string) []string {
	argv := append([]string(nil), limits...)
	tail := []string{cost, now, mode}
	for len(tail) > 0 && tail[len(tail)-1] == "" {
		tail = tail[:len(tail)-1]
	}
	return slices.Clip(append(argv, tail...)) // callers append to it
}

// limiterNames are the names of the limiter scripts (all but concurrency).
func limiterNames() []string {
	var out []string
	for _, a := range Algorithms() {
		out = append(out, a.String())
	}
	return out
}

// ttlSlack is how many ms longer than reset_after a script's TTL is: the
// sorted-set scripts add 1, so that Redis 7.0's PEXPIRE never deletes a key
// at once (see sliding_window_log.lua, State).
func ttlSlack(script string) int64 {
	if script == "sliding_window_log" || script == "concurrency" {
		return 1
	}
	return 0
}
