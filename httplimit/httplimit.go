// Package httplimit rate-limits HTTP requests with a luarate.Limiter. It is
// standard net/http middleware, func(http.Handler) http.Handler, so it fits
// the standard mux, chi, gorilla/mux and anything else built on net/http.
//
//	limiter := luarate.New(client)
//	api := httplimit.Middleware(limiter, luarate.PerMinute(luarate.GCRA, 60),
//		httplimit.WithKey(httplimit.First(httplimit.Header("X-API-Key"), httplimit.IP())))
//	mux.Handle("/api/", api(apiHandler))
//
// Per request it finds the client's key (by default its IP address, proxies'
// headers ignored), asks Redis for one decision, and:
//
//   - writes X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset on
//     every response, allowed or denied (and, with WithIETFHeaders, the IETF
//     RateLimit-Policy and RateLimit fields);
//   - when allowed, calls the next handler;
//   - when denied, answers 429 Too Many Requests with Retry-After and a JSON
//     body {"error": ..., "retry_after": seconds} (WithDenyHandler replaces it).
//
// When Redis fails or does not answer within the decision timeout (100ms by
// default, WithTimeout), the request is served anyway (fail open): a limiter
// outage should not become an API outage. The error is logged with log/slog
// and passed to the observer, never swallowed. WithFailClosed answers 503
// instead. A bad limit or a key function's error is a bug in the setup, not an
// outage: those get 500 under either policy.
//
// The third policy lives in the Limiter, so every caller of it gets it:
// with insurance.With (package luarate/insurance), a Redis failure or timeout is decided on an
// in-process copy of the scripts against this instance's share of the limit.
// The middleware then neither fails open nor closed: it answers as usual
// (200, or 429 with the share in X-RateLimit-Limit), the Limiter logs each
// switch once, and the observer sees Outcome Allowed or Denied with
// Decision.Result.Insured set. Only a call the insurance cannot decide
// either (for example after Limiter.Close) falls back to fail open or closed.
package httplimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/luarate/luarate"
)

// ErrUnavailable wraps every error from Redis (including a timeout): the
// limiter could not decide. Error handlers can test for it with errors.Is.
var ErrUnavailable = errors.New("rate limiter unavailable")

// ErrNoKey means the key function found nothing to limit by.
var ErrNoKey = errors.New("no rate-limit key for this request")

// Outcome says what the middleware did with one request.
type Outcome string

// The outcomes an observer sees.
const (
	Allowed      Outcome = "allowed"       // admitted (by Redis, or by the insurance if Result.Insured); the next handler ran
	Denied       Outcome = "denied"        // denied (by Redis, or by the insurance if Result.Insured); 429
	FailedOpen   Outcome = "failed_open"   // Redis failed; served anyway
	FailedClosed Outcome = "failed_closed" // Redis failed; 503
	Error        Outcome = "error"         // bad key or limit; 500
)

// Decision is what the observer hears about each request that was not exempt.
type Decision struct {
	Request *http.Request
	Key     string         // the client key (before the scope is added)
	Limit   luarate.Limit  // the limit applied
	Result  luarate.Result // the script's answer (Result.Insured: the Limiter's insurance gave it); zero when Err is set
	Latency time.Duration  // time spent asking Redis
	Outcome Outcome
	Err     error // why Redis could not decide, or what was wrong with key or limit
}

// config is the middleware's settings; Options change it.
type config struct {
	key        KeyFunc
	limitFunc  func(*http.Request) (luarate.Limit, error)
	exempt     func(*http.Request) bool
	scope      string
	deny       func(http.ResponseWriter, *http.Request, luarate.Result)
	onError    func(http.ResponseWriter, *http.Request, error)
	failClosed bool
	timeout    time.Duration
	logger     *slog.Logger
	observer   func(Decision)
	policy     string // IETF policy name; "" = no IETF fields
}

// Option configures Middleware.
type Option func(*config)

// WithKey sets how a request maps to a rate-limit key. The default value is
// IP(): the connection's remote address, proxies' headers ignored.
func WithKey(f KeyFunc) Option { return func(c *config) { c.key = f } }

// WithLimitFunc picks the limit per request, for example a larger one for
// premium API keys. It replaces the limit given to Middleware; an error from
// it is answered with 500.
func WithLimitFunc(f func(*http.Request) (luarate.Limit, error)) Option {
	return func(c *config) { c.limitFunc = f }
}

// WithExempt lets requests for which f returns true through untouched: no
// decision, no headers, nothing counted (health checks, internal callers).
func WithExempt(f func(*http.Request) bool) Option { return func(c *config) { c.exempt = f } }

// WithScope keeps this middleware's counters apart from other middlewares'.
// Two middlewares with the same algorithm and period and no scope share one
// counter per client: right for a global limit over several routes, wrong for
// per-route limits, which should each get a scope such as the route name. The
// default value is "" (no scope).
func WithScope(name string) Option { return func(c *config) { c.scope = name } }

// WithDenyHandler replaces the 429 response. The rate-limit headers
// (including Retry-After) are already set when f runs; f writes the status
// and body.
func WithDenyHandler(f func(w http.ResponseWriter, r *http.Request, res luarate.Result)) Option {
	return func(c *config) { c.deny = f }
}

// WithErrorHandler replaces the response when no decision could be made:
// err wraps ErrUnavailable when Redis failed under WithFailClosed, otherwise
// the key or limit was bad. The default writes 503 (with Retry-After: 1) or
// 500 and a JSON body {"error": ...}.
func WithErrorHandler(f func(w http.ResponseWriter, r *http.Request, err error)) Option {
	return func(c *config) { c.onError = f }
}

// WithFailClosed answers 503 when Redis fails or times out. The default is
// to fail open: serve the request, log the error and report it to the
// observer with Outcome FailedOpen.
func WithFailClosed() Option { return func(c *config) { c.failClosed = true } }

// WithTimeout bounds each decision: the request's context, cut to d. A
// decision that takes longer counts as a Redis failure (the script may still
// run and count the request once Redis catches up). The default value is
// 100ms; 0 means only the request's own context applies.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithLogger sets where failures are logged (at level Error). The default
// value is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithObserver calls f once per decision (not for exempt requests), before
// the response is written: feed it to Prometheus or OpenTelemetry. f runs on
// the request's goroutine, so it should be quick.
func WithObserver(f func(Decision)) Option { return func(c *config) { c.observer = f } }

// WithIETFHeaders also writes the RateLimit-Policy and RateLimit fields of
// the IETF draft (draft-ietf-httpapi-ratelimit-headers-11), with policy as
// the policy's name ("default" if empty):
//
//	RateLimit-Policy: "default";q=10;w=1
//	RateLimit: "default";r=7;t=1
//
// q and w are Rate per Period (w in whole seconds, left out when the period
// is not one), plus luarate-burst=<capacity> when Burst differs from Rate. r
// is Remaining; t is seconds until full again, or, when denied, until a retry
// can succeed, so it never points past Retry-After.
func WithIETFHeaders(policy string) Option {
	if policy == "" {
		policy = "default"
	}
	return func(c *config) { c.policy = policy }
}

// Middleware limits every request passing through it to limit per key.
func Middleware(l *luarate.Limiter, limit luarate.Limit, opts ...Option) func(http.Handler) http.Handler {
	c := &config{
		key:     IP(),
		deny:    denyJSON,
		onError: errorJSON,
		timeout: 100 * time.Millisecond,
		logger:  slog.Default(),
	}
	for _, o := range opts {
		o(c)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.serve(l, limit, next, w, r)
		})
	}
}

func (c *config) serve(l *luarate.Limiter, limit luarate.Limit, next http.Handler, w http.ResponseWriter, r *http.Request) {
	if c.exempt != nil && c.exempt(r) {
		next.ServeHTTP(w, r)
		return
	}
	d := Decision{Request: r, Limit: limit}
	var err error
	d.Key, err = c.key(r)
	if err == nil && d.Key == "" {
		err = ErrNoKey
	}
	if err == nil && c.limitFunc != nil {
		d.Limit, err = c.limitFunc(r)
	}
	if err == nil {
		d.Result, d.Latency, err = c.decide(r.Context(), l, d.Key, d.Limit)
	}
	switch {
	case err == nil && d.Result.Allowed:
		d.Outcome = Allowed
	case err == nil:
		d.Outcome = Denied
	case !errors.Is(err, ErrUnavailable):
		d.Outcome = Error
	case c.failClosed:
		d.Outcome = FailedClosed
	default:
		d.Outcome = FailedOpen
	}
	d.Err = err
	if err != nil {
		c.logger.LogAttrs(r.Context(), slog.LevelError, "luarate: no rate-limit decision",
			slog.String("outcome", string(d.Outcome)), slog.String("key", d.Key),
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Duration("latency", d.Latency), slog.Any("error", err))
	}
	if c.observer != nil {
		c.observer(d)
	}
	switch d.Outcome {
	case Allowed:
		c.setHeaders(w.Header(), d.Limit, d.Result)
		next.ServeHTTP(w, r)
	case Denied:
		c.setHeaders(w.Header(), d.Limit, d.Result)
		c.deny(w, r, d.Result)
	case FailedOpen:
		next.ServeHTTP(w, r)
	default:
		c.onError(w, r, err)
	}
}

// decide asks Redis under the decision timeout. Errors that are not about
// the key or limit wrap ErrUnavailable.
func (c *config) decide(ctx context.Context, l *luarate.Limiter, key string, limit luarate.Limit) (luarate.Result, time.Duration, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if c.scope != "" {
		key = c.scope + ":" + key
	}
	start := time.Now()
	res, err := l.Allow(ctx, key, limit)
	latency := time.Since(start)
	if err != nil && !errors.Is(err, luarate.ErrInvalidLimit) && !errors.Is(err, luarate.ErrInvalidRequest) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return res, latency, err
}

func (c *config) setHeaders(h http.Header, limit luarate.Limit, res luarate.Result) {
	res.SetHeaders(h)
	if c.policy != "" {
		setIETFHeaders(h, c.policy, limit, res)
	}
}

// denyJSON is the default denial: 429 and
// {"error":"rate limit exceeded","retry_after":1,"retry_after_ms":96}.
func denyJSON(w http.ResponseWriter, _ *http.Request, res luarate.Result) {
	retry, _ := strconv.Atoi(w.Header().Get("Retry-After"))
	writeJSON(w, http.StatusTooManyRequests, map[string]any{
		"error":          "rate limit exceeded",
		"retry_after":    retry,
		"retry_after_ms": res.RetryAfter.Milliseconds(),
	})
}

// errorJSON is the default answer when there is no decision: 503 when Redis
// failed (fail closed), 500 for a bad key or limit.
func errorJSON(w http.ResponseWriter, _ *http.Request, err error) {
	if errors.Is(err, ErrUnavailable) {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "rate limiter unavailable, retry later", "retry_after": 1})
		return
	}
	writeJSON(w, http.StatusInternalServerError, map[string]any{"error": "rate limiting is misconfigured"})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
