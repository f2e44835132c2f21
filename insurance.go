package luarate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// Insurance configures WithInsurance.
type Insurance struct {
	// Instances is how many processes share the limits, usually the number
	// of replicas of the service. While Redis is unavailable, each process
	// enforces 1/Instances of every limit on its own. It must be at least 1.
	Instances int
	// Retry is how long decisions stay on the insurance after Redis failed
	// before the next request tries Redis again (one request at a time; the
	// others keep deciding on the insurance meanwhile). The default value is
	// 1s.
	Retry time.Duration
	// Logger gets one line per switch: a warning when decisions move to the
	// insurance, an info line when they move back to Redis. The default
	// value is slog.Default().
	Logger *slog.Logger
}

// DefaultInsuranceRetry is Insurance.Retry's default.
const DefaultInsuranceRetry = time.Second

// WithInsurance keeps limiting when Redis is unavailable, instead of failing
// open (admitting everything) or closed (admitting nothing). The same Lua
// scripts then run on an embedded, in-process Redis (miniredis, with no
// network listener) against each limit's share for this process:
// Rate and Burst divided by Instances, rounded down, at least 1.
//
// How the share works per algorithm: window algorithms (FixedWindow,
// SlidingWindowLog, SlidingWindowCounter) admit Rate/Instances per window;
// bucket algorithms (TokenBucket, LeakyBucket, GCRA) get a bucket of
// Burst/Instances refilled at Rate/Instances, so a drained bucket still takes
// as long to refill as the real one. Every limit of an AllowMulti call is
// scaled on its own and the call stays all-or-nothing. Result.Limit (and so
// X-RateLimit-Limit) reports the share, which is the limit actually applied,
// and Result.Insured is true.
//
// Every error that wraps ErrUnavailable (Redis refused the connection, did
// not answer before the context's deadline, is loading...) switches the
// Limiter to the insurance: that call and all calls for the next Retry are
// decided in the process, with no wait for Redis. Then the next call tries
// Redis again; when Redis answers, decisions go back to it. Both switches are
// logged once. A context cancelled by the caller switches nothing and returns
// its error. Give calls a context with a deadline: a Redis that hangs holds the
// call that tries it until then (only that one, after the first).
//
// The trade-offs, stated plainly:
//   - Each process limits alone, so the effective limit during an outage is
//     share x live processes: right when Instances processes are up and
//     traffic is spread evenly, too loose when more are up, too tight when
//     fewer are or one client's traffic lands on one process. A share
//     rounded up to 1 (Rate < Instances) admits up to Instances times Rate.
//   - What Redis counted before the outage is not seen by the insurance, and
//     what the insurance counted is forgotten when Redis is back: an outage
//     can give a client up to one extra share on each side of it.
//   - Reset during the outage clears the key in the insurance only and
//     returns nil; the key in Redis, if it survives the outage, is not reset.
//   - An Allow whose cost exceeds this process's share of a limit cannot be
//     decided alone: it gets the ErrUnavailable error, as without insurance.
//     AllowAtMost, Penalize and Refund take or give back at most the share.
//     So does a call whose scaled limit a script refuses (only extreme
//     limits, near Validate's bounds, can get there by rounding).
//   - The insurance uses the decision clock (WithClock's, else this
//     machine's), not the Redis server's.
//
// The embedded server is started at the first failure and kept until Close.
// Its keys expire as the decision clock advances (it is moved forward at most
// once per second of that clock), so a long outage keeps memory bounded as
// real Redis does, and the insurance is emptied when Redis is back.
//
// WithInsurance panics if Instances is less than 1 or Retry is negative: a
// misconfigured fallback should fail at start, not in the middle of an outage.
func WithInsurance(ins Insurance) Option {
	if ins.Instances < 1 {
		panic(fmt.Sprintf("luarate: WithInsurance: Instances must be at least 1, got %d", ins.Instances))
	}
	if ins.Retry < 0 {
		panic(fmt.Sprintf("luarate: WithInsurance: Retry must not be negative, got %v", ins.Retry))
	}
	if ins.Retry == 0 {
		ins.Retry = DefaultInsuranceRetry
	}
	if ins.Logger == nil {
		ins.Logger = slog.Default()
	}
	return func(l *Limiter) {
		l.insurance = &insurance{config: ins, wall: time.Now}
	}
}

// Close stops the Limiter's embedded insurance server, if WithInsurance
// started one. It does not close the rueidis client given to New, which the
// caller owns. After Close, an outage gets ErrUnavailable errors as without
// insurance. Close is safe to call more than once, and on any Limiter.
func (l *Limiter) Close() {
	if l.insurance != nil {
		l.insurance.close()
	}
}

// sweepEvery is how much the decision clock must advance before the
// insurance's keys are aged. Aging costs O(keys log keys) in miniredis, so it
// is not done per decision; a key outlives its TTL by at most this much, and
// the scripts never rely on expiry to be right, only to free memory.
const sweepEvery = time.Second

// embeddedTimeout bounds one decision on the in-process server, which should
// take microseconds; the caller's context may already be spent by the failed
// call to Redis, so it is not used.
const embeddedTimeout = time.Second

// errClosed is the insurance's error after Limiter.Close.
var errClosed = errors.New("luarate: insurance: limiter closed")

// insurance is WithInsurance's state. on, gen and decided are read without
// the lock on every call; the rest is guarded by mu.
type insurance struct {
	config Insurance
	wall   func() time.Time // the clock of Retry; tests replace it

	on      atomic.Bool   // decisions go to the embedded server
	gen     atomic.Uint64 // incremented at each switch, under mu
	decided atomic.Int64  // decisions on the insurance in this outage

	mu      sync.Mutex
	probeAt time.Time  // with on: when the next call may try Redis
	since   time.Time  // with on: when the outage began
	shards  []embedded // nil until the first failure
	swept   time.Time  // decision time the embedded keys were last aged to
	closed  bool
}

// embedded is one in-process server of the insurance. miniredis runs one
// script at a time (each in a fresh Lua interpreter, about 0.3ms), so the
// insurance has one per CPU, and a key's hash tag picks its server: the
// keys of one call share a tag, so they always meet on one server.
type embedded struct {
	mini   *miniredis.Miniredis
	client rueidis.Client
}

// exec runs script in Redis, or on the insurance while Redis is unavailable.
// insured says which answered. Errors from Redis are wrapped by redisError.
func (l *Limiter) exec(ctx context.Context, script *loadedScript, keys, args []string) (reply rueidis.RedisMessage, insured bool, err error) {
	if l.insurance == nil {
		reply, err = l.eval(ctx, script, keys, args)
		return reply, false, err
	}
	what := script.Name + " script"
	call := func() error {
		reply, err = l.eval(ctx, script, keys, args)
		return err
	}
	fallback, redisErr := l.insurance.viaRedis(ctx, what, call)
	if !fallback {
		return reply, false, redisErr
	}
	reply, err = l.insurance.exec(ctx, l.clock(), script, keys, args)
	if err != nil {
		return reply, false, insuranceError(what, err, redisErr)
	}
	return reply, true, nil
}

// delInsured deletes keys in Redis and in the insurance, for Reset. Under the
// insurance a failing Redis is not an error: see WithInsurance.
func (l *Limiter) delInsured(ctx context.Context, keys []string) error {
	if l.insurance == nil {
		return l.del(ctx, keys)
	}
	if err := l.insurance.del(ctx, keys); err != nil {
		return insuranceError("luarate: reset", err, nil)
	}
	call := func() error { return l.del(ctx, keys) }
	if fallback, err := l.insurance.viaRedis(ctx, "luarate: reset", call); !fallback {
		return err
	}
	return nil // Redis is unavailable: the key was reset in the insurance
}

// viaRedis runs call against Redis unless decisions are on the insurance, and
// switches on what Redis answered. call's errors are wrapped by redisError.
// fallback says the insurance must decide: Redis was skipped (err is nil) or
// unavailable (err wraps ErrUnavailable). A context that ended before the
// call, or that the caller cancelled, says nothing about Redis: it switches
// nothing and its error is returned.
func (ins *insurance) viaRedis(ctx context.Context, what string, call func() error) (fallback bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, redisError(what, err)
	}
	gen, tryRedis := ins.route()
	if !tryRedis {
		return true, nil
	}
	err = call()
	if !errors.Is(err, ErrUnavailable) {
		ins.up(gen)
		return false, err
	}
	if errors.Is(err, context.Canceled) {
		return false, err
	}
	ins.down(gen, err)
	return true, err
}

// insuranceError is the error of a call neither Redis nor the insurance could
// decide. It wraps ErrUnavailable, and Redis' error when Redis was tried.
func insuranceError(what string, err, redisErr error) error {
	if redisErr != nil {
		return fmt.Errorf("%w; the insurance could not decide either: %w", redisErr, err)
	}
	return fmt.Errorf("%s: %w (on the insurance since an earlier failure): %w", what, ErrUnavailable, err)
}

// route says whether this call should try Redis, and returns the switch
// generation the call belongs to. While on the insurance, one call per Retry
// tries Redis.
func (ins *insurance) route() (gen uint64, tryRedis bool) {
	if !ins.on.Load() {
		return ins.gen.Load(), true
	}
	ins.mu.Lock()
	defer ins.mu.Unlock()
	gen = ins.gen.Load()
	if !ins.on.Load() || ins.closed {
		return gen, true // closed: Redis alone decides, as without insurance
	}
	now := ins.wall()
	if now.Before(ins.probeAt) {
		return gen, false
	}
	ins.probeAt = now.Add(ins.config.Retry)
	return gen, true
}

// down records that a call routed in generation gen found Redis unavailable.
// A failure reported after the switch it belongs to is old news and ignored.
func (ins *insurance) down(gen uint64, err error) {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if gen != ins.gen.Load() {
		return
	}
	now := ins.wall()
	ins.probeAt = now.Add(ins.config.Retry)
	if ins.on.Load() {
		return // a failed probe, or one of several calls failing at once
	}
	ins.since = now
	ins.decided.Store(0)
	ins.gen.Add(1)
	ins.on.Store(true)
	ins.config.Logger.LogAttrs(context.Background(), slog.LevelWarn,
		"luarate: Redis unavailable, deciding on the in-process insurance",
		slog.Int("instances", ins.config.Instances), slog.Duration("retry", ins.config.Retry),
		slog.Any("error", err))
}

// up records that a call routed in generation gen got an answer from Redis.
// Only a call routed during the current outage (the probe) ends it, not a
// slow call sent before Redis failed.
func (ins *insurance) up(gen uint64) {
	if !ins.on.Load() {
		return
	}
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if !ins.on.Load() || gen != ins.gen.Load() {
		return
	}
	ins.gen.Add(1)
	ins.on.Store(false)
	if !ins.closed {
		for _, e := range ins.shards {
			e.mini.FlushAll() // forget the outage: Redis is the truth again
		}
	}
	ins.config.Logger.LogAttrs(context.Background(), slog.LevelInfo,
		"luarate: Redis is back, deciding in Redis again",
		slog.Duration("outage", ins.wall().Sub(ins.since)),
		slog.Int64("insured_decisions", ins.decided.Load()))
}

// exec runs script on the embedded server with every limit scaled to this
// process's share, at decision time now.
func (ins *insurance) exec(ctx context.Context, now time.Time, script *loadedScript, keys, args []string) (rueidis.RedisMessage, error) {
	scaled, err := shareArgs(args, len(keys), ins.config.Instances)
	if err != nil {
		return rueidis.RedisMessage{}, err
	}
	client, err := ins.server(now, keys[0])
	if err != nil {
		return rueidis.RedisMessage{}, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), embeddedTimeout)
	defer cancel()
	reply, err := script.lua.Exec(ctx, client, keys, scaled).ToMessage()
	if err == nil {
		ins.decided.Add(1)
	}
	return reply, err
}

// del deletes keys on the embedded server, if it was started.
func (ins *insurance) del(ctx context.Context, keys []string) error {
	ins.mu.Lock()
	started := ins.shards != nil && !ins.closed
	ins.mu.Unlock()
	if !started {
		return nil // nothing stored there (or closed: only Redis counts)
	}
	client, err := ins.server(time.Time{}, keys[0])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), embeddedTimeout)
	defer cancel()
	return client.Do(ctx, client.B().Del().Key(keys...).Build()).Error()
}

// server returns a client of the embedded server for key, starting the
// servers on first use, and ages their keys to the decision time now (the
// zero time ages nothing).
func (ins *insurance) server(now time.Time, key string) (rueidis.Client, error) {
	ins.mu.Lock()
	if ins.closed {
		ins.mu.Unlock()
		return nil, errClosed
	}
	if ins.shards == nil {
		shards, err := startEmbedded(runtime.GOMAXPROCS(0))
		if err != nil {
			ins.mu.Unlock()
			return nil, err
		}
		ins.shards, ins.swept = shards, now
	}
	shards := ins.shards
	var age time.Duration
	if d := now.Sub(ins.swept); !now.IsZero() && d >= sweepEvery {
		age, ins.swept = d, now
	}
	ins.mu.Unlock()
	if age > 0 {
		for _, e := range shards {
			e.mini.FastForward(age) // expire what expired by now
		}
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(hashTag(key)))
	return shards[h.Sum32()%uint32(len(shards))].client, nil
}

// startEmbedded starts n in-process servers, reached through in-memory pipes
// (no listener, no port).
func startEmbedded(n int) ([]embedded, error) {
	shards := make([]embedded, 0, n)
	for range n {
		mini := miniredis.NewMiniRedis()
		client, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{"luarate-insurance"}, // never dialed: see DialCtxFn
			DialCtxFn: func(context.Context, string, *net.Dialer, *tls.Config) (net.Conn, error) {
				return mini.Dial()
			},
			DisableCache:      true, // miniredis has no CLIENT TRACKING
			ForceSingleClient: true, // miniredis answers CLUSTER SLOTS
		})
		if err != nil {
			mini.Close()
			closeEmbedded(shards)
			return nil, fmt.Errorf("luarate: insurance: start the embedded server: %w", err)
		}
		shards = append(shards, embedded{mini: mini, client: client})
	}
	return shards, nil
}

func closeEmbedded(shards []embedded) {
	for _, e := range shards {
		e.client.Close()
		e.mini.Close()
	}
}

func (ins *insurance) close() {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if !ins.closed {
		ins.closed = true
		closeEmbedded(ins.shards)
	}
}

// shareArgs returns a copy of a script's ARGV (rate, period_ms, burst per
// limit, then cost, now_ms, mode, lockouts) with each limit's rate and burst
// divided by instances, rounded down, at least 1. A burst of 0 (= rate) stays
// 0, and a burst equal to the rate stays equal to it, as window scripts need.
func shareArgs(args []string, nlimits, instances int) ([]string, error) {
	if instances == 1 {
		return args, nil
	}
	if len(args) <= 3*nlimits {
		return nil, fmt.Errorf("luarate: insurance: %d ARGV for %d limits", len(args), nlimits)
	}
	cost, err := strconv.Atoi(args[3*nlimits])
	if err != nil {
		return nil, fmt.Errorf("luarate: insurance: cost %q: %w", args[3*nlimits], err)
	}
	// atmost (AllowAtMost, Penalize) and refund take or give back what fits,
	// so a cost above the share is cut to it; take is all or nothing.
	partial := len(args) > 3*nlimits+2 && (args[3*nlimits+2] == "atmost" || args[3*nlimits+2] == "refund")
	out := append([]string(nil), args...)
	for i := 0; i < nlimits; i++ {
		rate, err := strconv.Atoi(args[3*i])
		if err != nil {
			return nil, fmt.Errorf("luarate: insurance: rate %q: %w", args[3*i], err)
		}
		burst, err := strconv.Atoi(args[3*i+2])
		if err != nil {
			return nil, fmt.Errorf("luarate: insurance: burst %q: %w", args[3*i+2], err)
		}
		rate = share(rate, instances)
		capacity := rate
		if burst != 0 {
			burst = share(burst, instances)
			capacity = burst
		}
		if cost > capacity {
			if !partial {
				return nil, fmt.Errorf("luarate: insurance: cost %d exceeds this process's share %d of limit %d (1/%d of it)", cost, capacity, i+1, instances)
			}
			cost = capacity // atmost and refund: the share is all there is to take or give back
			out[3*nlimits] = strconv.Itoa(cost)
		}
		out[3*i] = strconv.Itoa(rate)
		out[3*i+2] = strconv.Itoa(burst)
	}
	return out, nil
}

// share is one process's part of n: n/instances rounded down, at least 1.
func share(n, instances int) int {
	return max(n/instances, 1)
}
