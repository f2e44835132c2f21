// Package httplimit rate-limits HTTP requests with a luarate.Limiter. It is
// standard net/http middleware, func(http.Handler) http.Handler, so it fits
// the standard mux, chi, gorilla/mux and anything else built on net/http.
//
//	limiter := luarate.New(client)
//	limits := luarate.MustParseLimits("10/second;1000/day", luarate.GCRA)
//	api := httplimit.Middleware(limiter, limits,
//		httplimit.WithKey(httplimit.First(httplimit.APIKey("X-API-Key", keyIsValid), httplimit.IP())))
//	mux.Handle("/api/", api(apiHandler))
//
// Per request it finds the client's key (by default its IP address, proxies'
// headers ignored; APIKey for keys the application has verified), takes the
// request's cost (1 unless WithCost) from every limit at once in one
// AllowMulti call, all or nothing, and:
//
//   - writes X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset
//     (a Unix time in seconds) for the tightest limit on every response,
//     allowed or denied (WithHeaderNames renames or drops them,
//     WithResetDelta sends seconds from now; WithIETFHeaders adds the IETF
//     RateLimit-Policy and RateLimit fields);
//   - when allowed, calls the next handler (and, with WithRefundWhen, gives
//     the cost back if the response says the request should not count);
//   - when denied, answers 429 Too Many Requests with Retry-After and a JSON
//     body {"error": ..., "retry_after": seconds} (WithDenyHandler replaces it).
//
// Each Middleware has counters of its own: two middlewares never count into
// each other, even with the same limits, unless both are given the same
// WithScope name. One middleware wrapping several handlers counts them
// together.
//
// When Redis fails or does not answer within the decision timeout (100ms by
// default, WithTimeout), the request is served anyway (fail open): a limiter
// outage should not become an API outage. The error is logged with log/slog
// and passed to the observer, never swallowed. WithFailClosed answers 503
// with Retry-After: 1 and a JSON body instead. A bad limit, a key
// function's error, a Redis user without a permission the scripts need
// (luarate.ErrNoPermission) or a key holding a value the scripts did not
// write is a bug in the setup, not an outage: those get 500 under either
// policy, so a setup error never leaves an API silently unlimited. Refuse (a
// key function) gets 401. A request whose own context ends before Redis
// answers (the client went away) is not a Redis failure: it gets 503 without
// running the handler, is logged at Debug, and is Outcome Canceled.
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
	"sync/atomic"
	"time"

	"github.com/luarate/luarate"
)

// ErrUnavailable wraps the errors that mean Redis made no decision
// (luarate.ErrUnavailable: down, unreachable, slower than the decision
// timeout, out of memory, a replica...): the limiter could not decide, and
// the request fails open or closed. Error handlers can test for it with
// errors.Is.
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
	Refused      Outcome = "refused"       // the key function refused the request (ErrRefused); 401
	Canceled     Outcome = "canceled"      // the request's own context ended (the client went away) before Redis answered; the handler did not run; 503
	Error        Outcome = "error"         // a setup error: bad key, cost or limit, a Redis user without the scripts' permissions, a foreign value at the key; 500
)

// Decision is what the observer hears about each request that was not exempt.
type Decision struct {
	Request *http.Request
	Scope   string          // the counters' scope: WithScope's name, or the middleware's own
	Key     string          // the client key (before the scope is added)
	Limits  []luarate.Limit // the limits applied
	Cost    int             // the units the request took (WithCost)
	Result  luarate.Result  // the tightest limit's answer (Result.Insured: the Limiter's insurance gave it); zero when Err is set
	Latency time.Duration   // time spent asking Redis
	Outcome Outcome
	Err     error // why Redis could not decide, or what was wrong with key, cost or limit
}

// config is the middleware's settings; Options change it.
type config struct {
	key        KeyFunc
	limitFunc  func(*http.Request) ([]luarate.Limit, error)
	cost       func(*http.Request) int
	refundWhen func(*http.Request, int) bool
	exempt     func(*http.Request) bool
	scope      string
	deny       func(http.ResponseWriter, *http.Request, luarate.Result)
	onError    func(http.ResponseWriter, *http.Request, error)
	failClosed bool
	timeout    time.Duration
	logger     *slog.Logger
	observer   func(Decision)
	headers    headers
}

// Option configures Middleware.
type Option func(*config)

// WithKey sets how a request maps to a rate-limit key. The default value is
// IP(): the connection's remote address, proxies' headers ignored. For API
// clients use APIKey, which trusts only keys the application verified.
func WithKey(f KeyFunc) Option { return func(c *config) { c.key = f } }

// WithLimitFunc picks the limits per request, for example larger ones for
// premium API keys. It replaces the limits given to Middleware; an error
// from it is answered with 500.
func WithLimitFunc(f func(*http.Request) ([]luarate.Limit, error)) Option {
	return func(c *config) { c.limitFunc = f }
}

// WithCost sets how many units a request takes from every limit, for
// weighted endpoints (a search costs 5, a batch of n costs n). The default
// is 1. 0 only reads the limits (headers, no charge); a negative cost, or
// one above a limit's capacity, is answered with 500, since it could never be
// admitted.
func WithCost(f func(*http.Request) int) Option { return func(c *config) { c.cost = f } }

// WithRefundWhen gives an admitted request's cost back to every limit when
// f, called with the status the next handler wrote, returns true: count only
// some outcomes, as Flask-Limiter's deduct_when does. For example refund
// when the status is not a server error, to limit only failing requests,
// or refund on success to count only failed logins:
//
//	httplimit.WithRefundWhen(func(r *http.Request, status int) bool { return status < 400 })
//
// The refund is luarate's Refund, one call per limit after the handler
// returns, under the decision timeout. A refund that fails is logged and the
// request stays counted: never more admitted than the limit. LeakyQueue
// takes no refunds (its admitted requests hold departure slots), so refunds
// of a LeakyQueue limit are logged errors.
func WithRefundWhen(f func(r *http.Request, status int) bool) Option {
	return func(c *config) { c.refundWhen = f }
}

// WithExempt lets requests for which f returns true through untouched: no
// decision, no headers, nothing counted (health checks, internal callers).
func WithExempt(f func(*http.Request) bool) Option { return func(c *config) { c.exempt = f } }

// WithScope names this middleware's counters. Without it every Middleware
// gets a scope of its own, "mw1", "mw2"... in the order the Middleware calls
// run, so no two middlewares share a counter by accident. Middlewares given
// the same name share their counters (with the same algorithm and period):
// a global limit over several routes. Name every middleware when processes
// that share a Redis might build their middlewares in different orders
// (different services, or a deploy that adds a route), and build each
// middleware once, not per request.
func WithScope(name string) Option { return func(c *config) { c.scope = name } }

// WithDenyHandler replaces the 429 response. The rate-limit headers
// (including Retry-After) are already set when f runs; f writes the status
// and body.
func WithDenyHandler(f func(w http.ResponseWriter, r *http.Request, res luarate.Result)) Option {
	return func(c *config) { c.deny = f }
}

// WithErrorHandler replaces the response when no decision could be made:
// err wraps ErrUnavailable when Redis failed under WithFailClosed or the
// request's context ended first (Outcome Canceled), ErrRefused when the key
// function refused the request, otherwise the key, cost or limit was bad. The default writes 503 (with Retry-After: 1), 401 or 500
// and a JSON body {"error": ...}.
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

// WithLogger sets where failures are logged (at level Error; a request whose
// context ended first at Debug). The default
// value is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithObserver calls f once per decision (not for exempt requests), before
// the response is written: feed it to Prometheus (see the module
// github.com/luarate/luarate/prometheus) or OpenTelemetry. f runs on the
// request's goroutine, so it should be quick.
func WithObserver(f func(Decision)) Option { return func(c *config) { c.observer = f } }

// instances numbers the middlewares without a WithScope.
var instances atomic.Int64

// Middleware limits every request passing through it to limits per key, all
// at once (luarate's AllowMulti): a request is admitted only if it fits every
// limit, and then it is counted in every one. The limits must share one
// Algorithm and have distinct Periods, as luarate.ParseLimits returns them.
func Middleware(l *luarate.Limiter, limits []luarate.Limit, opts ...Option) func(http.Handler) http.Handler {
	c := &config{
		key:     IP(),
		deny:    denyJSON,
		onError: errorJSON,
		timeout: 100 * time.Millisecond,
		logger:  slog.Default(),
		headers: defaultHeaders(),
	}
	for _, o := range opts {
		o(c)
	}
	if c.scope == "" {
		c.scope = "mw" + strconv.FormatInt(instances.Add(1), 10)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.serve(l, limits, next, w, r)
		})
	}
}

func (c *config) serve(l *luarate.Limiter, limits []luarate.Limit, next http.Handler, w http.ResponseWriter, r *http.Request) {
	if c.exempt != nil && c.exempt(r) {
		next.ServeHTTP(w, r)
		return
	}
	d := Decision{Request: r, Scope: c.scope, Limits: limits, Cost: 1}
	var err error
	d.Key, err = c.key(r)
	if err == nil && d.Key == "" {
		err = ErrNoKey
	}
	if err == nil && c.limitFunc != nil {
		d.Limits, err = c.limitFunc(r)
	}
	if err == nil && c.cost != nil {
		d.Cost = c.cost(r)
	}
	if err == nil {
		d.Result, d.Latency, err = c.decide(r.Context(), l, d.Key, d.Limits, d.Cost)
	}
	switch {
	case err == nil && d.Result.Allowed:
		d.Outcome = Allowed
	case err == nil:
		d.Outcome = Denied
	case errors.Is(err, ErrRefused):
		d.Outcome = Refused
	case errors.Is(err, ErrUnavailable) && r.Context().Err() != nil:
		d.Outcome = Canceled
	case !errors.Is(err, ErrUnavailable):
		d.Outcome = Error
	case c.failClosed:
		d.Outcome = FailedClosed
	default:
		d.Outcome = FailedOpen
	}
	d.Err = err
	if err != nil && d.Outcome != Refused {
		level := slog.LevelError
		if d.Outcome == Canceled {
			level = slog.LevelDebug // the client's doing, not a failure
		}
		c.logger.LogAttrs(r.Context(), level, "luarate: no rate-limit decision",
			slog.String("outcome", string(d.Outcome)), slog.String("key", d.Key),
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Duration("latency", d.Latency), slog.Any("error", err))
	}
	if c.observer != nil {
		c.observer(d)
	}
	switch d.Outcome {
	case Allowed:
		c.headers.set(w.Header(), d.Limits, d.Result)
		c.serveCounted(l, d, next, w, r)
	case Denied:
		c.headers.set(w.Header(), d.Limits, d.Result)
		c.deny(w, r, d.Result)
	case FailedOpen:
		next.ServeHTTP(w, r)
	default:
		c.onError(w, r, err)
	}
}

// serveCounted runs the next handler of an admitted request and, when
// WithRefundWhen says its status should not count, gives its cost back.
func (c *config) serveCounted(l *luarate.Limiter, d Decision, next http.Handler, w http.ResponseWriter, r *http.Request) {
	if c.refundWhen == nil || d.Cost == 0 {
		next.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	next.ServeHTTP(sw, r)
	if sw.status == 0 {
		sw.status = http.StatusOK // nothing written: net/http sends 200
	}
	if !c.refundWhen(r, sw.status) {
		return
	}
	ctx := context.WithoutCancel(r.Context()) // the client may be gone; the refund is still owed
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	for _, lim := range d.Limits {
		if _, err := l.Refund(ctx, c.scope+":"+d.Key, lim, d.Cost); err != nil {
			c.logger.LogAttrs(r.Context(), slog.LevelError, "luarate: refund failed; the request stays counted",
				slog.String("key", d.Key), slog.Int("status", sw.status), slog.Any("error", err))
		}
	}
}

// statusWriter remembers the status the handler wrote. Unwrap lets
// http.ResponseController reach the writer's Flush, Hijack and deadlines.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 { // 1xx are informational; the final status follows
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// decide asks Redis under the decision timeout. Errors that mean Redis made
// no decision wrap ErrUnavailable; any other is a setup error.
func (c *config) decide(ctx context.Context, l *luarate.Limiter, key string, limits []luarate.Limit, cost int) (luarate.Result, time.Duration, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	start := time.Now()
	res, err := l.AllowMulti(ctx, c.scope+":"+key, cost, limits...)
	latency := time.Since(start)
	if errors.Is(err, luarate.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return res, latency, err
}

// denyJSON is the default denial: 429 and
// {"error":"rate limit exceeded","retry_after":1,"retry_after_ms":96}.
func denyJSON(w http.ResponseWriter, _ *http.Request, res luarate.Result) {
	writeJSON(w, http.StatusTooManyRequests, map[string]any{
		"error":          "rate limit exceeded",
		"retry_after":    retryAfterSeconds(res),
		"retry_after_ms": res.RetryAfter.Milliseconds(),
	})
}

// errorJSON is the default answer when there is no decision: 503 when Redis
// failed (fail closed), 401 when the key function refused the request, 500
// for a setup error.
func errorJSON(w http.ResponseWriter, _ *http.Request, err error) {
	switch {
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "rate limiter unavailable, retry later", "retry_after": 1})
	case errors.Is(err, ErrRefused):
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "a valid API key is required"})
	default:
		writeJSON(w, http.StatusInternalServerError, map[string]any{"error": "rate limiting is misconfigured"})
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
