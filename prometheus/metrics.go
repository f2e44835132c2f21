// Package luarateprom exports httplimit's decisions as Prometheus metrics.
// It is its own module, so the luarate library never depends on
// client_golang:
//
//	import luarateprom "github.com/luarate/luarate/prometheus"
//
//	metrics, err := luarateprom.New(prometheus.DefaultRegisterer)
//	limit := httplimit.Middleware(limiter, limits, httplimit.WithObserver(metrics.Observe))
//
// It registers, all labelled by route:
//
//	luarate_http_decisions_total{route,outcome}          every decision, by httplimit.Outcome
//	luarate_http_decision_duration_seconds{route}        time spent asking Redis (histogram)
//	luarate_http_redis_errors_total{route}               no decision from Redis (failed_open, failed_closed): it failed or timed out
//	luarate_http_insured_decisions_total{route,outcome}  decided by the Limiter's insurance while Redis was down
//
// The route is the request's ServeMux pattern ("GET /api/data") when the
// middleware sits inside a route, else the middleware's scope (WithScope's
// name, or "mw1"...): never the raw path, whose values an attacker chooses,
// so the number of series stays bounded, as long as each middleware is built
// once, at start (a middleware built per request is a new scope, so a new
// series, every time). WithRoute picks another label.
package luarateprom

import (
	"time"

	"github.com/luarate/luarate/httplimit"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts httplimit decisions. Its Observe is an httplimit observer.
type Metrics struct {
	route       func(httplimit.Decision) string
	decisions   *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	redisErrors *prometheus.CounterVec
	insured     *prometheus.CounterVec
}

// Option configures New.
type Option func(*Metrics)

// WithRoute sets the route label of a decision. The default value is the
// request's ServeMux pattern, else the middleware's scope. Keep its values
// few: each one is a series.
func WithRoute(f func(httplimit.Decision) string) Option { return func(m *Metrics) { m.route = f } }

// DefaultBuckets are the latency histogram's buckets, in seconds: a decision
// on a nearby Redis takes 0.1 to 1ms; the default decision timeout is 100ms.
var DefaultBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25}

// New creates the metrics and registers them with reg. Call it once per
// registry and give its Metrics to every middleware: a second New on the
// same registry fails with prometheus.AlreadyRegisteredError. When it fails,
// it leaves nothing registered.
func New(reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	m := &Metrics{
		route: defaultRoute,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "luarate_http_decisions_total",
			Help: "Rate-limit decisions of the HTTP middleware, by route and outcome (allowed, denied, failed_open, failed_closed, refused, canceled, error).",
		}, []string{"route", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "luarate_http_decision_duration_seconds",
			Help:    "Time the HTTP middleware spent asking Redis for a decision.",
			Buckets: DefaultBuckets,
		}, []string{"route"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "luarate_http_redis_errors_total",
			Help: "Decisions Redis did not make (unreachable, failing or too slow; not a request whose client went away first), by route.",
		}, []string{"route"}),
		insured: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "luarate_http_insured_decisions_total",
			Help: "Decisions made by the Limiter's in-process insurance while Redis was unavailable, by route and outcome.",
		}, []string{"route", "outcome"}),
	}
	for _, o := range opts {
		o(m)
	}
	collectors := []prometheus.Collector{m.decisions, m.latency, m.redisErrors, m.insured}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

// Observe records one decision: pass it to httplimit.WithObserver.
func (m *Metrics) Observe(d httplimit.Decision) {
	route := m.route(d)
	m.decisions.WithLabelValues(route, string(d.Outcome)).Inc()
	switch d.Outcome {
	case httplimit.Allowed, httplimit.Denied, httplimit.FailedOpen, httplimit.FailedClosed:
		m.latency.WithLabelValues(route).Observe(float64(d.Latency) / float64(time.Second))
	}
	switch {
	case d.Outcome == httplimit.FailedOpen || d.Outcome == httplimit.FailedClosed:
		m.redisErrors.WithLabelValues(route).Inc()
	case d.Result.Insured:
		m.insured.WithLabelValues(route, string(d.Outcome)).Inc()
	}
}

func defaultRoute(d httplimit.Decision) string {
	if d.Request != nil && d.Request.Pattern != "" {
		return d.Request.Pattern
	}
	return d.Scope
}
