// Package luarate is rate limiting done inside Redis.
//
// Every algorithm is one standalone, versioned Lua script (see Scripts) that
// reads and updates its state atomically on the Redis server, so any number
// of app servers share one exact limit with no races, and a Python, Node or
// Ruby service that runs the same script gets the same limits. This package
// is a thin client on rueidis: a decision is one EVALSHA, and decisions that
// queue up behind a call in flight go together as one batch call
// (WithBatching), each decided exactly as alone.
//
// A Limit is Rate per Period with a Burst capacity, counted by an Algorithm
// (FixedWindow, SlidingWindowLog, SlidingWindowCounter, TokenBucket,
// LeakyBucket, GCRA, LeakyQueue; see Algorithm for how to choose). Allow consumes one unit, AllowN n units,
// Peek reads without consuming, and AllowMulti checks several limits of one
// key (10/s and 1000/h) all-or-nothing; ParseLimits reads limits such as
// "10/second;1000/day". Wait blocks until admitted, for every algorithm (with
// LeakyQueue, until the request's turn in the queue). Acquire limits requests in flight instead: at
// most max leases of a key at once, each released or expiring. Being limited
// is a Result, not an error; errors mean bad input (ErrInvalidLimit,
// ErrInvalidRequest), a Redis that made no decision (ErrUnavailable), a Redis
// user lacking a permission (ErrNoPermission), or Redis refusing the call.
//
// For abuse protection, a Limit can carry a Lockout (deny everything for a
// while once the limit is hit), Refund gives units back (count only failed
// logins), Penalize takes extra ones, and AllowAtMost takes as many as fit.
// All of them run inside the same scripts, atomically, in one round trip.
//
// Time comes from the Redis server's clock, so app servers with skewed clocks
// agree; WithClock passes the caller's instead (tests, replay).
//
// While Redis is down, the insurance package keeps limiting on this
// process's share instead of failing open or closed:
//
//	limiter := luarate.New(client, insurance.With(insurance.Config{Instances: 4}))
//	defer limiter.Close()
//
// Every error wrapping ErrUnavailable is then decided by the same scripts on
// an in-process Redis, against each limit divided by Instances (the replicas
// sharing the limits); Config.Retry (1s by default) says how long decisions
// stay there before Redis is tried again, and Result.Insured marks them.
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

// ErrInvalidRequest is wrapped by errors about a call's key (empty, or over
// MaxKeyLen bytes) or cost.
var ErrInvalidRequest = errors.New("invalid request")

// MaxKeyLen is the longest key a call takes, in bytes. Redis keeps every key
// for up to its period, so a key made of unhashed client input (a URL, a
// token) would let each request store whatever the client sent; hash such
// input first, as httplimit's Header and APIKey do.
const MaxKeyLen = 1024

// checkKey refuses a key that is empty or longer than MaxKeyLen.
func checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("luarate: %w: key must not be empty", ErrInvalidRequest)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("luarate: %w: key is %d bytes, at most %d: hash longer identifiers", ErrInvalidRequest, len(key), MaxKeyLen)
	}
	return nil
}

// ErrUnavailable is wrapped, together with the client's own error, by errors
// that mean no decision came back: Redis could not be reached, did not
// answer before the context's deadline, or is down, loading or busy. Decide
// there whether to fail open or closed. A call whose deadline passed may
// still have been run by Redis, and counted, after the client gave up.
var ErrUnavailable = errors.New("redis unavailable")

// ErrNoPermission is wrapped, together with Redis's own error, by errors
// that mean the Redis user lacks a permission the scripts need: a setup
// error to fix, not an outage.
var ErrNoPermission = errors.New("redis user lacks a permission the scripts need")

// Limiter makes rate-limit decisions in Redis. It is safe for concurrent use.
type Limiter struct {
	client   rueidis.Client
	prefix   string
	now      func() time.Time
	denies   *denyCache // nil unless WithDenyCache
	fallback Fallback   // nil unless WithFallback
	batching bool       // WithBatching; default true
	batch    *batcher   // nil when batching is off
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

// clock is the time the Limiter decides with: WithClock's, else the local
// clock (monotonic, so only differences of it are used).
func (l *Limiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

// New returns a Limiter that runs the scripts on client. For miniredis, build
// the client with DisableCache and ForceSingleClient. New panics if client is
// nil: that is a setup error (usually rueidis.NewClient's error ignored), and
// it should fail at start rather than at the first request.
func New(client rueidis.Client, opts ...Option) *Limiter {
	if client == nil {
		panic("luarate.New: client is nil; pass the client rueidis.NewClient returned, after checking its error")
	}
	l := &Limiter{client: client, prefix: "rl:", batching: true}
	for _, o := range opts {
		o(l)
	}
	if l.batching {
		l.batch = newBatcher(client)
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
	return l.decide(ctx, key, n, OpTake, limits)
}

// AllowAtMost takes as many of n units as fit, from 0 to n, and reports how
// many in Result.Granted: for a batch endpoint or a message fan-out that can
// do part of the work now and the rest later. Allowed is true when Granted >
// 0. When nothing fits it is a denial like AllowN's (RetryAfter is the wait
// until one unit fits), and it starts the limit's Lockout. An n above the
// limit's capacity asks for the capacity: no more can ever fit.
//
// With 10 per minute and 7 already taken, AllowAtMost(ctx, key, limit, 5)
// returns Allowed true, Granted 3, Remaining 0; the next one returns Allowed
// false, Granted 0.
func (l *Limiter) AllowAtMost(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	return l.decide(ctx, key, min(n, limit.Capacity()), OpAtMost, []Limit{limit})
}

// Penalize takes up to n extra units from key, never going below empty: a
// suspicious request (a wrong CAPTCHA, a honeypot field filled in) can cost
// 10 instead of 1. It is AllowAtMost under another name, so Granted is what
// was taken; on a key with nothing left it takes nothing and, with a Lockout,
// starts the lock. An n above the limit's capacity takes at most the
// capacity (a penalty of 10 on a limit of 5 empties it).
func (l *Limiter) Penalize(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	return l.AllowAtMost(ctx, key, limit, n)
}

// Refund gives n units back to key, never beyond full (an n above the
// limit's capacity gives back at most the capacity), and reports how many
// went back in Result.Granted; the other fields are what Peek would report
// after the refund. It admits nothing and writes only when there is something
// to give back.
//
// Use it to count only some outcomes, such as failed logins: take one unit
// when a login is attempted (denied: answer 429), and refund it when the
// password was right, so only failures use up the limit and trigger its
// Lockout. Refund does not lift a lock; Reset does. Why:
// https://github.com/luarate/luarate/blob/main/docs/guide.md#abuse-protection
//
// Refund drops the key's entries in this Limiter's deny cache. For
// SlidingWindowLog it removes the newest n entries in the window, as if those
// requests were never made; for the buckets and GCRA the level goes back up by
// n (Granted rounds a partial unit up).
//
// LeakyQueue takes no refunds (ErrInvalidRequest): an admitted request holds
// its departure slot, and giving it back would let a newcomer leave in a slot
// already promised to a request queued behind it.
func (l *Limiter) Refund(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	if limit.Algorithm == LeakyQueue {
		return Result{}, fmt.Errorf("luarate: %w: leaky_queue takes no refunds: admitted requests hold their departure slots", ErrInvalidRequest)
	}
	return l.decide(ctx, key, min(n, limit.Capacity()), OpRefund, []Limit{limit})
}

// modeNames are the scripts' ARGV mode of each Op.
var modeNames = [...]string{OpTake: "take", OpAtMost: "atmost", OpRefund: "refund"}

// decide runs one script call in any mode: every public decision goes
// through it.
func (l *Limiter) decide(ctx context.Context, key string, n int, m Op, limits []Limit) (Result, error) {
	// sent is read before the request's now_ms, so the script decides no
	// earlier than sent: a denial is never remembered for longer than it holds.
	var sent time.Time
	var gen uint64
	cached := l.denies != nil && m == OpTake && !anyLockout(limits)
	if cached {
		sent = l.clock()
		gen = l.denies.generation()
	}
	script, keys, args, err := l.command(key, n, m, limits)
	if err != nil {
		return Result{}, err
	}
	if cached && n > 0 {
		if res, ok := l.denies.lookup(keys[0], limits, n, sent); ok {
			return res, nil
		}
	}
	var res Result
	if l.fallback != nil {
		// a copy: the caller's limits do not escape to the heap on every call
		call := Call{Key: key, N: n, Op: m, Limits: append([]Limit(nil), limits...), Now: l.clock()}
		res, err = l.fallback.Decide(ctx, call, func(ctx context.Context) (Result, error) {
			return l.inRedis(ctx, script, keys, args)
		})
	} else {
		res, err = l.inRedis(ctx, script, keys, args)
	}
	if err == nil && cached && n > 0 && !res.Allowed && !res.Insured {
		l.denies.remember(keys[0], limits, n, sent, gen, res)
	}
	if m == OpRefund && l.denies != nil {
		// capacity came back: denials remembered before now no longer hold
		l.denies.forget(keys[0])
	}
	return res, err
}

// inRedis makes a decision in Redis: batched with others of its lane when
// batching is on (see WithBatching). Its errors are wrapped by redisError.
func (l *Limiter) inRedis(ctx context.Context, script *loadedScript, keys, args []string) (Result, error) {
	var res Result
	var err error
	if l.batch != nil {
		res, err = l.batch.do(ctx, script, keys, args)
	} else {
		res, err = evalOne(ctx, l.client, script, keys, args)
	}
	if err != nil {
		return Result{}, redisError(script.Name+" script", err)
	}
	return res, nil
}

// Reset forgets key's state under limit: the key is back to full.
func (l *Limiter) Reset(ctx context.Context, key string, limit Limit) error {
	_, keys, _, err := l.command(key, 0, OpTake, []Limit{limit})
	if err != nil {
		return err
	}
	if l.fallback != nil {
		call := Call{Key: key, Op: OpTake, Limits: []Limit{limit}, Now: l.clock()}
		err = l.fallback.Reset(ctx, call, func(ctx context.Context) error { return l.del(ctx, keys) })
	} else {
		err = l.del(ctx, keys)
	}
	if l.denies != nil {
		// after the DEL: a denial decided before it and remembered after
		// this is dropped by the cache's generation
		l.denies.forget(keys[0])
	}
	return err
}

// anyLockout reports whether a limit has a Lockout. The deny cache skips
// those: a lock that ends while the request still would not fit is started
// again by the next denial in Redis, which a cached answer would not make.
func anyLockout(limits []Limit) bool {
	for _, lim := range limits {
		if lim.Lockout > 0 {
			return true
		}
	}
	return false
}

// del deletes keys in Redis, for Reset. Its errors are wrapped by redisError.
func (l *Limiter) del(ctx context.Context, keys []string) error {
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
	if noPermission(err) {
		return fmt.Errorf("%s: %w (see docs/operations.md for the ACL the scripts need): %w", what, ErrNoPermission, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// noPermission reports whether Redis refused a command for lack of an ACL
// permission: NOPERM, or "can't run this command" as Redis 7.0 says it when
// a script's command is refused.
func noPermission(err error) bool {
	redisErr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return false
	}
	msg := redisErr.Error()
	return strings.HasPrefix(msg, "NOPERM") || strings.Contains(msg, "can't run this command")
}

// unavailableCodes are the Redis errors that mean Redis did not decide: it
// is out of memory, a replica, without enough replicas, loading, busy with a
// script, or a cluster failing over or migrating a slot.
var unavailableCodes = []string{"OOM", "READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING", "BUSY", "CLUSTERDOWN", "TRYAGAIN"}

func unavailable(err error) bool {
	if rueidis.IsRedisNil(err) || errors.Is(err, ErrInvalidResponse) {
		return false
	}
	redisErr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true // no reply: refused, closed, timed out, cancelled
	}
	for _, code := range unavailableCodes {
		if strings.HasPrefix(redisErr.Error(), code+" ") {
			return true
		}
	}
	return false
}

// command validates a call and returns its script, Redis keys and ARGV.
// Keys are prefix{key}:<script tag>:<period ms>, e.g. "rl:{user42}:g3:1000";
// the {key} hash tag puts every limit of one key in one Cluster slot. ARGV is
// one "rate period_ms burst" per limit (with " lockout_ms" when it has a
// Lockout), then n, then now_ms with WithClock (else empty when the mode
// follows), then the mode when it is not take. A lone take of one unit on
// the server clock sends no n: the scripts' default, and one argument less
// for Redis to parse.
//
// It is on every decision's path, so it allocates twice for usual keys,
// however many limits there are: every key and argument is a substring of one
// string, and keys and args share one slice.
func (l *Limiter) command(key string, n int, m Op, limits []Limit) (*loadedScript, []string, []string, error) {
	if err := checkKey(key); err != nil {
		return nil, nil, nil, err
	}
	if len(limits) == 0 {
		return nil, nil, nil, fmt.Errorf("luarate: %w: need at least one limit", ErrInvalidRequest)
	}
	if len(limits) > maxLimits {
		return nil, nil, nil, fmt.Errorf("luarate: %w: at most %d limits per call, got %d", ErrInvalidRequest, maxLimits, len(limits))
	}
	for i, lim := range limits {
		if err := lim.Validate(); err != nil {
			return nil, nil, nil, err
		}
		if lim.Algorithm != limits[0].Algorithm {
			return nil, nil, nil, fmt.Errorf("luarate: %w: all limits of one call must share an algorithm, got %s and %s", ErrInvalidRequest, limits[0].Algorithm, lim.Algorithm)
		}
		for _, prev := range limits[:i] {
			if prev.Period == lim.Period {
				return nil, nil, nil, fmt.Errorf("luarate: %w: two limits with period %v; give each limit its own period", ErrInvalidRequest, lim.Period)
			}
		}
	}
	for _, lim := range limits {
		if n < 0 || n > lim.Capacity() {
			return nil, nil, nil, fmt.Errorf("luarate: %w: n must be from 0 to the capacity %d, got %d", ErrInvalidRequest, lim.Capacity(), n)
		}
		if lim.Algorithm == SlidingWindowLog && n*len(limits) > maxLogCost {
			return nil, nil, nil, fmt.Errorf("luarate: %w: sliding_window_log adds at most %d entries per call (n times the limits), got %d", ErrInvalidRequest, maxLogCost, n*len(limits))
		}
	}
	script := scripts[limits[0].Algorithm.String()]
	escaped := escapeBraces(key)

	// One buffer holds every key, then every argument; ends[i] is where the
	// i-th of them stops.
	withMode := m != OpTake
	nargs := len(limits)
	switch {
	case withMode:
		nargs += 3
	case l.now != nil:
		nargs += 2
	case n != 1:
		nargs++
	}
	parts := make([]string, len(limits)+nargs)
	var ends [2*maxLimits + 3]int
	end := ends[:0]
	var stack [256]byte // grows onto the heap only for long keys
	buf := stack[:0]
	for _, lim := range limits {
		buf = append(buf, l.prefix...)
		buf = append(buf, '{')
		buf = append(buf, escaped...)
		buf = append(buf, "}:"...)
		buf = append(buf, script.keyTag...)
		buf = append(buf, ':')
		buf = strconv.AppendInt(buf, int64(lim.Period/time.Millisecond), 10)
		end = append(end, len(buf))
	}
	for _, lim := range limits {
		buf = appendLimit(buf, lim)
		end = append(end, len(buf))
	}
	if nargs > len(limits) {
		buf = strconv.AppendInt(buf, int64(n), 10)
		end = append(end, len(buf))
	}
	if l.now != nil {
		buf = strconv.AppendInt(buf, l.now().UnixMilli(), 10)
		end = append(end, len(buf))
	} else if withMode {
		end = append(end, len(buf)) // empty now_ms: Redis TIME
	}
	if withMode {
		buf = append(buf, modeNames[m]...)
		end = append(end, len(buf))
	}
	all := string(buf)
	start := 0
	for i, e := range end {
		parts[i] = all[start:e]
		start = e
	}
	return script, parts[:len(limits):len(limits)], parts[len(limits):], nil
}

// appendLimit appends lim as the scripts read it: "rate period_ms burst", and
// " lockout_ms" when it has a Lockout.
func appendLimit(buf []byte, lim Limit) []byte {
	buf = strconv.AppendInt(buf, int64(lim.Rate), 10)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, int64(lim.Period/time.Millisecond), 10)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, int64(lim.Burst), 10)
	if lim.Lockout > 0 {
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, int64(lim.Lockout/time.Millisecond), 10)
	}
	return buf
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
