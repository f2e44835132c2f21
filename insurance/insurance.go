// Package insurance keeps a luarate.Limiter limiting while Redis is
// unavailable, instead of failing open (admitting everything) or closed
// (admitting nothing): the same Lua scripts then run on an embedded,
// in-process Redis (miniredis, with no network listener) against each
// limit's share for this process. It is its own package so that programs
// that do not use it do not link miniredis.
//
//	limiter := luarate.New(client, insurance.With(insurance.Config{Instances: 4}))
//	defer limiter.Close() // stops the embedded servers
//
// The share is Rate and Burst divided by Instances, rounded down, at least 1:
// window algorithms admit Rate/Instances per window; bucket algorithms and
// GCRA get a bucket of Burst/Instances refilled at Rate/Instances. Every limit
// of an AllowMulti call is scaled on its own and the call stays
// all-or-nothing. Result.Limit reports the share, and Result.Insured is true.
//
// Every error that wraps luarate.ErrUnavailable switches the Limiter to the
// insurance: that call and all calls for the next Retry are decided in the
// process, with no wait for Redis. Then one call tries Redis again; when
// Redis answers, decisions go back to it and the insurance is emptied once
// the decisions under way on it are done; a call still on its way to it then
// asks Redis. Both switches are logged once. A context that ended before the call, or that
// the caller cancelled, switches nothing and returns its error. Give calls a
// context with a deadline: a Redis that hangs holds the call that tries it
// until then.
//
// During an outage:
//   - each process limits alone, so the effective limit is share x live
//     processes;
//   - a call that takes more than the share (AllowN, AllowMulti) gets an
//     error wrapping luarate.ErrUnavailable; AllowAtMost, Penalize and Refund
//     take or give back at most the share;
//   - Reset clears the key in the insurance and returns nil;
//   - time is the Limiter's clock (WithClock's, else this machine's).
//
// What Redis counted before the outage is not seen by the insurance, and
// what the insurance counted is forgotten when Redis is back. The Acquire
// concurrency limiter is not insured. docs/operations.md weighs these
// trade-offs.
package insurance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

// Config configures With.
type Config struct {
	// Instances is how many processes share the limits, usually the number
	// of replicas of the service. While Redis is unavailable, each process
	// enforces 1/Instances of every limit on its own. It must be at least 1.
	Instances int
	// Retry is how long decisions stay on the insurance after Redis failed
	// before the next call tries Redis again (one call at a time; the others
	// keep deciding on the insurance meanwhile). The default value is 1s.
	Retry time.Duration
	// Logger gets one line per switch: a warning when decisions move to the
	// insurance, an info line when they move back to Redis. The default
	// value is slog.Default().
	Logger *slog.Logger
}

// DefaultRetry is Config.Retry's default.
const DefaultRetry = time.Second

// With returns the option that insures a Limiter: each Limiter built with it
// gets its own embedded servers, started at the first failure and kept until
// Limiter.Close. After Close, an outage gets ErrUnavailable errors as without
// insurance.
//
// With panics if Instances is less than 1 or Retry is negative: a
// misconfigured fallback should fail at start, not in the middle of an
// outage.
func With(cfg Config) luarate.Option {
	cfg = cfg.checked()
	return func(l *luarate.Limiter) {
		luarate.WithFallback(newInsurance(cfg))(l)
	}
}

// checked returns cfg with its defaults set, and panics as With says.
func (cfg Config) checked() Config {
	if cfg.Instances < 1 {
		panic(fmt.Sprintf("insurance.With: Instances must be at least 1, got %d", cfg.Instances))
	}
	if cfg.Retry < 0 {
		panic(fmt.Sprintf("insurance.With: Retry must not be negative, got %v", cfg.Retry))
	}
	if cfg.Retry == 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// sweepEvery is how much the decision clock must advance before the
// insurance's keys are aged. Aging costs O(keys log keys) in miniredis, so it
// is not done per decision; a key outlives its TTL by at most this much, and
// the scripts never rely on expiry to be right, only to free memory.
const sweepEvery = time.Second

// embeddedTimeout bounds one decision on the in-process server: a guard
// against a stuck server, not a latency target. A decision takes well under a
// millisecond alone, but calls on one key queue on one server (64 goroutines
// on one key under -race on a loaded machine waited over 1s). The caller's
// context may already be spent by the failed call to Redis, so it is not used.
const embeddedTimeout = 10 * time.Second

// errClosed is the insurance's error after Limiter.Close.
var errClosed = errors.New("luarate: insurance: limiter closed")

// insurance is one Limiter's Fallback. on, gen and decided are read without
// the lock on every call; the rest is guarded by mu. Every decision on the
// embedded servers holds state for reading, and the switch back to Redis
// holds it for writing while it empties them, so no call decides on state
// the switch cleared.
type insurance struct {
	config Config
	wall   func() time.Time // the clock of Retry; tests replace it

	on      atomic.Bool   // decisions go to the embedded server
	gen     atomic.Uint64 // incremented at each switch, under mu
	decided atomic.Int64  // decisions on the insurance in this outage

	state sync.RWMutex // taken before mu

	mu      sync.Mutex
	probeAt time.Time  // with on: when the next call may try Redis
	since   time.Time  // with on: when the outage began
	shards  []embedded // nil until the first failure
	swept   time.Time  // decision time the embedded keys were last aged to
	closed  bool
}

var _ luarate.Fallback = (*insurance)(nil)

func newInsurance(cfg Config) *insurance {
	return &insurance{config: cfg, wall: time.Now}
}

// embedded is one in-process server of the insurance. miniredis runs one
// script at a time (each in a fresh Lua interpreter, about 0.3ms), so the
// insurance has one per CPU, and the key picks the server.
type embedded struct {
	mini   *miniredis.Miniredis
	client rueidis.Client
}

// Decide decides call in Redis, or on the insurance while Redis is
// unavailable.
func (ins *insurance) Decide(ctx context.Context, call luarate.Call, redis func(context.Context) (luarate.Result, error)) (luarate.Result, error) {
	what := call.Limits[0].Algorithm.String() + " script"
	var redisErr error
	for range maxAttempts {
		var res luarate.Result
		gen, fallback, err := ins.viaRedis(ctx, func(ctx context.Context) (err error) {
			res, err = redis(ctx)
			return err
		})
		if !fallback {
			return res, err
		}
		if err != nil {
			redisErr = err
		}
		res, decided, err := ins.decide(ctx, gen, call)
		if err != nil {
			return luarate.Result{}, insuranceError(what, err, redisErr)
		}
		if decided {
			res.Insured = true
			return res, nil
		}
		// Redis came back before the insurance could decide: ask Redis
	}
	return luarate.Result{}, insuranceError(what, errFlapping, redisErr)
}

// maxAttempts bounds how often one call goes to the insurance and finds that
// decisions went back to Redis meanwhile.
const maxAttempts = 3

// errFlapping is the error of a call that kept missing the switches.
var errFlapping = errors.New("luarate: insurance: Redis went away and came back during the call")

// Reset resets the key in the insurance and in Redis. Under the insurance a
// failing Redis is not an error; after Close it is, as without insurance.
func (ins *insurance) Reset(ctx context.Context, call luarate.Call, redis func(context.Context) error) error {
	if err := ins.reset(ctx, call); err != nil {
		return insuranceError("luarate: reset", err, nil)
	}
	if _, fallback, err := ins.viaRedis(ctx, redis); !fallback || ins.isClosed() {
		return err
	}
	return nil // Redis is unavailable: the key was reset in the insurance
}

func (ins *insurance) isClosed() bool {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	return ins.closed
}

// viaRedis runs call against Redis unless decisions are on the insurance, and
// switches on what Redis answered. fallback says the insurance must decide,
// in generation gen: Redis was skipped (err is nil) or unavailable (err wraps
// ErrUnavailable). A context that ended before the call, or that the caller
// cancelled, says nothing about Redis: it switches nothing and its error is
// returned.
func (ins *insurance) viaRedis(ctx context.Context, call func(context.Context) error) (gen uint64, fallback bool, err error) {
	if ctx.Err() != nil {
		return 0, false, call(ctx) // fails as it would without insurance
	}
	gen, tryRedis := ins.route()
	if !tryRedis {
		return gen, true, nil
	}
	err = call(ctx)
	if !errors.Is(err, luarate.ErrUnavailable) {
		ins.up(gen)
		return 0, false, err
	}
	if errors.Is(err, context.Canceled) {
		return 0, false, err
	}
	return ins.down(gen, err), true, err
}

// insuranceError is the error of a call neither Redis nor the insurance could
// decide. It wraps ErrUnavailable, and Redis' error when Redis was tried.
func insuranceError(what string, err, redisErr error) error {
	if redisErr != nil {
		return fmt.Errorf("%w; the insurance could not decide either: %w", redisErr, err)
	}
	return fmt.Errorf("%s: %w (on the insurance since an earlier failure): %w", what, luarate.ErrUnavailable, err)
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

// down records that a call routed in generation gen found Redis unavailable,
// and returns the generation now current. A failure reported after the
// switch it belongs to is old news and ignored.
func (ins *insurance) down(gen uint64, err error) uint64 {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if gen != ins.gen.Load() {
		return ins.gen.Load()
	}
	now := ins.wall()
	ins.probeAt = now.Add(ins.config.Retry)
	if ins.on.Load() {
		return gen // a failed probe, or one of several calls failing at once
	}
	ins.since = now
	ins.decided.Store(0)
	ins.gen.Add(1)
	ins.on.Store(true)
	if !ins.closed { // closed: no decision moves to the insurance, so nothing to say
		ins.config.Logger.LogAttrs(context.Background(), slog.LevelWarn,
			"luarate: Redis unavailable, deciding on the in-process insurance",
			slog.Int("instances", ins.config.Instances), slog.Duration("retry", ins.config.Retry),
			slog.Any("error", err))
	}
	return ins.gen.Load()
}

// up records that a call routed in generation gen got an answer from Redis.
// Only a call routed during the current outage (the probe) ends it, not a
// slow call sent before Redis failed.
func (ins *insurance) up(gen uint64) {
	if !ins.on.Load() {
		return
	}
	ins.state.Lock() // wait for the decisions on the insurance under way
	defer ins.state.Unlock()
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if !ins.on.Load() || gen != ins.gen.Load() {
		return
	}
	ins.gen.Add(1)
	ins.on.Store(false)
	if ins.closed {
		return // its switches are not news: a closed Limiter decides in Redis alone
	}
	for _, e := range ins.shards {
		e.mini.FlushAll() // forget the outage: Redis is the truth again
	}
	ins.config.Logger.LogAttrs(context.Background(), slog.LevelInfo,
		"luarate: Redis is back, deciding in Redis again",
		slog.Duration("outage", ins.wall().Sub(ins.since)),
		slog.Int64("insured_decisions", ins.decided.Load()))
}

// decide decides call on the embedded server against this process's share,
// if decisions are still on the insurance in generation gen; decided is
// false when they went back to Redis.
func (ins *insurance) decide(ctx context.Context, gen uint64, call luarate.Call) (res luarate.Result, decided bool, err error) {
	limits, n, err := share(call, ins.config.Instances)
	if err != nil {
		return luarate.Result{}, false, err
	}
	ins.state.RLock()
	defer ins.state.RUnlock()
	if !ins.on.Load() || ins.gen.Load() != gen {
		return luarate.Result{}, false, nil
	}
	l, err := ins.limiter(call.Now, call.Key)
	if err != nil {
		return luarate.Result{}, false, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), embeddedTimeout)
	defer cancel()
	switch call.Op {
	case luarate.OpTake:
		res, err = l.AllowMulti(ctx, call.Key, n, limits...)
	case luarate.OpAtMost:
		res, err = l.AllowAtMost(ctx, call.Key, limits[0], n)
	case luarate.OpRefund:
		res, err = l.Refund(ctx, call.Key, limits[0], n)
	default:
		err = fmt.Errorf("luarate: insurance: unknown op %d", call.Op)
	}
	if err != nil {
		return luarate.Result{}, false, err
	}
	ins.decided.Add(1)
	return res, true, nil
}

// reset resets call's key on the embedded server, if it was started.
func (ins *insurance) reset(ctx context.Context, call luarate.Call) error {
	ins.mu.Lock()
	started := ins.shards != nil && !ins.closed
	ins.mu.Unlock()
	if !started {
		return nil // nothing stored there (or closed: only Redis counts)
	}
	limits, _, err := share(call, ins.config.Instances)
	if err != nil {
		return err
	}
	l, err := ins.limiter(time.Time{}, call.Key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), embeddedTimeout)
	defer cancel()
	return l.Reset(ctx, call.Key, limits[0])
}

// share returns call's limits cut to this process's share (Rate and Burst
// divided by instances, rounded down, at least 1; a Burst of 0 stays 0) and
// the units to take or give back. OpTake is all or nothing, so a cost above a
// share is an error; OpAtMost and OpRefund are cut to the smallest share.
func share(call luarate.Call, instances int) ([]luarate.Limit, int, error) {
	n := call.N
	limits := make([]luarate.Limit, len(call.Limits))
	for i, lim := range call.Limits {
		lim.Rate = max(lim.Rate/instances, 1)
		if lim.Burst != 0 {
			lim.Burst = max(lim.Burst/instances, 1)
		}
		if n > lim.Capacity() {
			if call.Op == luarate.OpTake {
				return nil, 0, fmt.Errorf("luarate: insurance: cost %d exceeds this process's share %d of limit %d (1/%d of it)", n, lim.Capacity(), i+1, instances)
			}
			n = lim.Capacity()
		}
		limits[i] = lim
	}
	return limits, n, nil
}

// limiter returns a Limiter on the embedded server for key, deciding at now,
// starting the servers on first use, and ages their keys to now (the zero
// time ages nothing).
func (ins *insurance) limiter(now time.Time, key string) (*luarate.Limiter, error) {
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
	_, _ = h.Write([]byte(key))
	client := shards[h.Sum32()%uint32(len(shards))].client
	return luarate.New(client, luarate.WithClock(func() time.Time { return now })), nil
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

// Close stops the embedded servers; Limiter.Close calls it.
func (ins *insurance) Close() {
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if !ins.closed {
		ins.closed = true
		closeEmbedded(ins.shards)
	}
}
