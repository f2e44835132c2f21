package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/luarate/luarate"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

type config struct {
	addr       string
	duration   time.Duration
	rounds     int
	goroutines int
	keys       int
	svg        string
}

// The limit every limiter enforces: bursts of 100, then 100 per period
// (a second in the timed runs). The hot key is then almost always denied, the
// 10k keys almost always admitted.
const rate = 100

// instrPeriod is the period of the instruction counts: under callgrind a call
// takes milliseconds, and with a 1 s period the share of the hot key's calls
// that refill, and so write, would depend on each contender's own speed. With
// 100 s, every contender's hot key is denied after its burst, the same calls
// for all.
const instrPeriod = 100 * time.Second

// A contender makes one decision per call.
type contender struct {
	name string
	algo string // luarate's algorithm; "" for the yardsticks
	// unbatched is luarate with WithBatching(false): one script call per
	// decision, the plain form whose per-call cost the instruction targets
	// are about.
	unbatched bool
	allow     func(ctx context.Context, key string) error
	// memKey makes the contender write state for key and returns the Redis
	// key it wrote ("" when it writes nothing).
	memKey func(ctx context.Context, key string) (string, error)
	// fill takes half the burst on key, so that it holds state with room
	// left (nil: the contender keeps no state).
	fill func(ctx context.Context, key string) error
}

const (
	noop      = "no-op EVALSHA (rueidis)"
	redisRate = "redis_rate v10 (go-redis)"
	unbatched = " unbatched"
)

func contenders(rc rueidis.Client, gr *redis.Client, prefix string, period time.Duration) []contender {
	noopScript := rueidis.NewLuaScript("return 1")
	rr := redis_rate.NewLimiter(gr)
	rrLimit := redis_rate.Limit{Rate: rate, Burst: rate, Period: period}
	out := []contender{
		{name: noop,
			allow: func(ctx context.Context, key string) error {
				return noopScript.Exec(ctx, rc, []string{key}, nil).Error()
			},
			memKey: func(context.Context, string) (string, error) { return "", nil }},
		{name: redisRate,
			allow: func(ctx context.Context, key string) error {
				_, err := rr.Allow(ctx, prefix+key, rrLimit)
				return err
			},
			memKey: func(ctx context.Context, key string) (string, error) {
				_, err := rr.Allow(ctx, key, rrLimit)
				return "rate:" + key, err
			},
			fill: func(ctx context.Context, key string) error {
				_, err := rr.AllowN(ctx, prefix+key, rrLimit, rate/2)
				return err
			}},
	}
	lim := luarate.New(rc, luarate.WithPrefix(prefix))
	single := luarate.New(rc, luarate.WithPrefix(prefix), luarate.WithBatching(false))
	for _, a := range luarate.Algorithms() {
		limit := luarate.Limit{Algorithm: a, Rate: rate, Period: period}
		if err := limit.Validate(); err != nil {
			fmt.Printf("skipping %s: %v\n", a, err)
			continue
		}
		mem := luarate.New(rc) // the default "rl:" prefix, as users have it
		out = append(out, contender{name: "luarate " + a.String(), algo: a.String(),
			allow: func(ctx context.Context, key string) error {
				_, err := lim.Allow(ctx, key, limit)
				return err
			},
			memKey: func(ctx context.Context, key string) (string, error) {
				if _, err := mem.Allow(ctx, key, limit); err != nil {
					return "", err
				}
				return findKey(ctx, rc, "rl:{"+key+"}:*")
			},
			fill: func(ctx context.Context, key string) error {
				_, err := single.AllowN(ctx, key, limit, rate/2)
				return err
			}})
		out = append(out, contender{name: "luarate " + a.String() + unbatched, algo: a.String(), unbatched: true,
			allow: func(ctx context.Context, key string) error {
				_, err := single.Allow(ctx, key, limit)
				return err
			}})
	}
	return out
}

// findKey returns the one key matching pattern.
func findKey(ctx context.Context, c rueidis.Client, pattern string) (string, error) {
	keys, err := c.Do(ctx, c.B().Keys().Pattern(pattern).Build()).AsStrSlice()
	if err != nil || len(keys) != 1 {
		return "", fmt.Errorf("expected one key %s, got %q (%v)", pattern, keys, err)
	}
	return keys[0], nil
}

func randomPrefix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "bench" + hex.EncodeToString(b) + ":"
}

// workload is a set of keys the goroutines spread their calls over.
type workload struct {
	name string
	keys []string
}

// key is the workload's i-th key of a run: a prime stride, so a run's first
// len(keys) calls meet every key once.
func (w workload) key(i int) string { return w.keys[(i*7919)%len(w.keys)] }

func workloads(n int) []workload {
	many := make([]string, n)
	for i := range many {
		many[i] = "user" + strconv.Itoa(i)
	}
	return []workload{
		{name: "1 hot key", keys: []string{"hot"}},
		{name: strconv.Itoa(n/1000) + "k keys", keys: many},
	}
}

// commandStats reads calls and usec of the script commands (EVALSHA, EVAL)
// from INFO commandstats.
func commandStats(ctx context.Context, c rueidis.Client) (calls, usec int64, err error) {
	info, err := c.Do(ctx, c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				calls += n
			case "usec":
				usec += n
			}
		}
	}
	return calls, usec, nil
}

// redisCPU is the CPU time the Redis process has used (INFO cpu: user + sys).
func redisCPU(ctx context.Context, c rueidis.Client) (time.Duration, error) {
	info, err := c.Do(ctx, c.B().Info().Section("cpu").Build()).ToString()
	if err != nil {
		return 0, err
	}
	var sec float64
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("INFO cpu %s: %w", k, err)
			}
			sec += f
		}
	}
	return time.Duration(sec * float64(time.Second)), nil
}

// clientCPU is the CPU time this process has used (user + sys).
func clientCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func resetStats(ctx context.Context, c rueidis.Client) error {
	return c.Do(ctx, c.B().ConfigResetstat().Build()).Error()
}
