// Package luarate is rate limiting done inside Redis.
//
// Every algorithm is one standalone, versioned Lua script (see Scripts) that
// reads and updates its state atomically on the Redis server, so any number
// of app servers share one exact limit with no races, and a Python, Node or
// Ruby service that runs the same script gets the same limits. This package
// is a thin client on rueidis: one EVALSHA per decision.
//
// A Limit is Rate per Period with a Burst capacity, counted by an Algorithm
// (FixedWindow, SlidingWindowLog, SlidingWindowCounter, TokenBucket,
// LeakyBucket, GCRA; see Algorithm for how to choose). Allow consumes one unit, AllowN n units,
// Peek reads without consuming, and AllowMulti checks several limits of one
// key (10/s and 1000/h) all-or-nothing. Being limited is a Result, not an
// error; errors mean bad input or an unreachable Redis.
//
// Time comes from the Redis server's clock, so app servers with skewed clocks
// agree; WithClock passes the caller's instead (tests, replay).
package luarate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrInvalidRequest is wrapped by errors about a call's key or cost.
var ErrInvalidRequest = errors.New("invalid request")

// ErrUnavailable is wrapped, together with the client's own error, by errors
// that mean Redis did not decide: it could not be reached, did not answer
// before the context's deadline, or is down, loading or busy. Decide there
// whether to fail open or closed.
var ErrUnavailable = errors.New("redis unavailable")

// Limiter makes rate-limit decisions in Redis. It is safe for concurrent use.
type Limiter struct {
	client rueidis.Client
	prefix string
	now    func() time.Time
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithPrefix sets the prefix of every key the Limiter writes. The default
// value is "rl:". Braces in it are escaped, so it never changes the hash slot.
func WithPrefix(prefix string) Option {
	return func(l *Limiter) { l.prefix = escapeBraces(prefix) }
}

// WithClock makes the scripts use now() instead of the Redis server's clock.
// All processes sharing a key must then agree on the time. For tests and
// replaying traffic; the default is the server clock.
func WithClock(now func() time.Time) Option {
	return func(l *Limiter) { l.now = now }
}

// New returns a Limiter that runs the scripts on client. For miniredis, build
// the client with DisableCache and ForceSingleClient.
func New(client rueidis.Client, opts ...Option) *Limiter {
	l := &Limiter{client: client, prefix: "rl:"}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Allow takes one unit from key under limit.
func (l *Limiter) Allow(ctx context.Context, key string, limit Limit) (Result, error) {
	return l.AllowN(ctx, key, limit, 1)
}

// AllowN takes n units from key under limit if all n fit, else none. n is
// from 0 to the limit's capacity; 0 is the same as Peek.
func (l *Limiter) AllowN(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	return l.AllowMulti(ctx, key, n, limit)
}

// Peek reports key's state under limit without consuming or writing anything.
func (l *Limiter) Peek(ctx context.Context, key string, limit Limit) (Result, error) {
	return l.AllowN(ctx, key, limit, 0)
}

// AllowMulti takes n units from key under every limit at once, or from none
// if any would deny: for example 10 per second and 1000 per hour in one round
// trip. The limits must share one Algorithm and have distinct Periods. The
// Result reports the tightest limit: the denying one with the longest
// RetryAfter, else the one with the fewest Remaining.
func (l *Limiter) AllowMulti(ctx context.Context, key string, n int, limits ...Limit) (Result, error) {
	script, keys, err := l.keys(key, limits)
	if err != nil {
		return Result{}, err
	}
	for _, lim := range limits {
		if n < 0 || n > lim.Capacity() {
			return Result{}, fmt.Errorf("luarate: %w: n must be from 0 to the capacity %d, got %d", ErrInvalidRequest, lim.Capacity(), n)
		}
	}
	args := make([]string, 0, 3*len(limits)+2)
	for _, lim := range limits {
		args = append(args,
			strconv.Itoa(lim.Rate),
			strconv.FormatInt(int64(lim.Period/time.Millisecond), 10),
			strconv.Itoa(lim.Burst))
	}
	args = append(args, strconv.Itoa(n))
	if l.now != nil {
		args = append(args, strconv.FormatInt(l.now().UnixMilli(), 10))
	}
	reply, err := script.lua.Exec(ctx, l.client, keys, args).ToMessage()
	if err != nil {
		return Result{}, redisError(script.Name+" script", err)
	}
	return parseResult(reply)
}

// Reset forgets key's state under limit: the key is back to full.
func (l *Limiter) Reset(ctx context.Context, key string, limit Limit) error {
	_, keys, err := l.keys(key, []Limit{limit})
	if err != nil {
		return err
	}
	if err := l.client.Do(ctx, l.client.B().Del().Key(keys...).Build()).Error(); err != nil {
		return redisError("luarate: reset", err)
	}
	return nil
}

// redisError wraps an error of the Redis client, adding ErrUnavailable when
// Redis made no decision rather than refusing the call.
func redisError(what string, err error) error {
	if unavailable(err) {
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func unavailable(err error) bool {
	if rueidis.IsRedisNil(err) {
		return false
	}
	redisErr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true // no reply: refused, closed, timed out, cancelled
	}
	for _, code := range []string{"LOADING", "BUSY", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "READONLY"} {
		if strings.HasPrefix(redisErr.Error(), code+" ") {
			return true
		}
	}
	return false
}

// keys validates the limits and returns their script and Redis keys:
// prefix{key}:<script tag>:<period ms>, e.g. "rl:{user42}:g1:1000". The
// {key} hash tag puts every limit of one key in one Cluster slot.
func (l *Limiter) keys(key string, limits []Limit) (*loadedScript, []string, error) {
	if key == "" {
		return nil, nil, fmt.Errorf("luarate: %w: key must not be empty", ErrInvalidRequest)
	}
	if len(limits) == 0 {
		return nil, nil, fmt.Errorf("luarate: %w: need at least one limit", ErrInvalidRequest)
	}
	tag := "{" + escapeBraces(key) + "}:"
	var script *loadedScript
	keys := make([]string, len(limits))
	for i, lim := range limits {
		if err := lim.Validate(); err != nil {
			return nil, nil, err
		}
		if lim.Algorithm != limits[0].Algorithm {
			return nil, nil, fmt.Errorf("luarate: %w: all limits of one call must share an algorithm, got %s and %s", ErrInvalidRequest, limits[0].Algorithm, lim.Algorithm)
		}
		for _, prev := range limits[:i] {
			if prev.Period == lim.Period {
				return nil, nil, fmt.Errorf("luarate: %w: two limits with period %v; give each limit its own period", ErrInvalidRequest, lim.Period)
			}
		}
		script = scripts[lim.Algorithm.String()]
		keys[i] = l.prefix + tag + script.keyTag + ":" + strconv.FormatInt(int64(lim.Period/time.Millisecond), 10)
	}
	return script, keys, nil
}

// escapeBraces makes s safe inside a {hash tag}: it escapes '%', '{' and '}'
// as %25, %7B and %7D, so distinct keys stay distinct and a key such as "}"
// cannot end the tag early.
func escapeBraces(s string) string {
	if !strings.ContainsAny(s, "{}%") {
		return s
	}
	return strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D").Replace(s)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
