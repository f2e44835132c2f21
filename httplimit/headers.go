package httplimit

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/luarate/luarate"
)

// headers is how the middleware describes a decision in the response.
type headers struct {
	limit, remaining, reset string // field names; "" leaves the field out
	resetDelta              bool
	now                     func() time.Time
	ietf                    bool
	policies                []string // IETF policy names, by limit position
}

func defaultHeaders() headers {
	return headers{limit: "X-RateLimit-Limit", remaining: "X-RateLimit-Remaining", reset: "X-RateLimit-Reset", now: time.Now}
}

// WithHeaderNames renames the X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset fields; an empty name leaves that field out, so
// WithHeaderNames("", "", "") sends none of them. Retry-After on a 429 is
// standard HTTP and always sent.
func WithHeaderNames(limit, remaining, reset string) Option {
	return func(c *config) { c.headers.limit, c.headers.remaining, c.headers.reset = limit, remaining, reset }
}

// WithResetDelta sends X-RateLimit-Reset as seconds from now (rounded up)
// instead of the default, a Unix time in seconds (rounded up) as GitHub's API,
// Flask-Limiter and go-chi/httprate send it. A delta does not depend on the
// client's clock.
func WithResetDelta() Option { return func(c *config) { c.headers.resetDelta = true } }

// WithClock sets the clock X-RateLimit-Reset's Unix time is computed from.
// The default value is time.Now; tests pass the same fixed clock they give
// the Limiter.
func WithClock(now func() time.Time) Option { return func(c *config) { c.headers.now = now } }

// WithIETFHeaders also writes the RateLimit-Policy and RateLimit fields of
// draft-ietf-httpapi-ratelimit-headers-11, naming the policies of the limits
// in order. A limit without a name is "default" when it is the only one, else
// its notation, such as "1000/1d". For limits "50/minute;1000/hour" named
// "permin" and "perhr":
//
//	RateLimit-Policy: "permin";q=50;w=60,"perhr";q=1000;w=3600
//	RateLimit: "permin";r=49;t=2
//
// RateLimit-Policy lists every limit: q is its Rate and w its Period in
// seconds, rounded up when the period is not whole seconds (w must be an
// integer, and a longer window states a stricter policy than the real one,
// so a client keeping to it is never refused), plus luarate-burst=<capacity>
// when Burst is not Rate. RateLimit describes the tightest limit, the same
// one as X-RateLimit-*: r is its Remaining, never more than q; t is the
// seconds (rounded up) until its available quota next grows: on a denial
// the wait until this request could be admitted (= Retry-After); for
// TokenBucket, GCRA and the leaky buckets the time until the next unit
// comes back; for the window algorithms the time until the window is empty,
// an upper bound (a sliding window may give units back sooner). t is left
// out when the limit is full.
func WithIETFHeaders(policies ...string) Option {
	return func(c *config) { c.headers.ietf, c.headers.policies = true, policies }
}

func (h headers) set(hdr http.Header, limits []luarate.Limit, res luarate.Result) {
	if h.limit != "" {
		hdr.Set(h.limit, strconv.FormatInt(res.Limit, 10))
	}
	if h.remaining != "" {
		hdr.Set(h.remaining, strconv.FormatInt(res.Remaining, 10))
	}
	if h.reset != "" {
		reset := ceilSeconds(res.ResetAfter)
		if !h.resetDelta {
			reset = ceilSeconds(time.Duration(h.now().UnixMilli())*time.Millisecond + res.ResetAfter)
		}
		hdr.Set(h.reset, strconv.FormatInt(reset, 10))
	}
	if !res.Allowed {
		hdr.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(res), 10))
	}
	if h.ietf {
		h.setIETF(hdr, limits, res)
	}
}

// setIETF writes RateLimit-Policy and RateLimit as Structured Field lists,
// items separated by a bare comma as in the draft's examples.
func (h headers) setIETF(hdr http.Header, limits []luarate.Limit, res luarate.Result) {
	var p strings.Builder
	for i, lim := range limits {
		if i > 0 {
			p.WriteByte(',')
		}
		p.WriteString(sfString(h.policy(limits, i)))
		p.WriteString(";q=")
		p.WriteString(strconv.Itoa(lim.Rate))
		p.WriteString(";w=")
		p.WriteString(strconv.FormatInt(ceilSeconds(lim.Period), 10))
		if lim.Capacity() != lim.Rate {
			p.WriteString(";luarate-burst=")
			p.WriteString(strconv.Itoa(lim.Capacity()))
		}
	}
	hdr.Set("RateLimit-Policy", p.String())

	i := tightest(limits, res)
	lim := limits[i]
	field := sfString(h.policy(limits, i)) + ";r=" + strconv.FormatInt(min(res.Remaining, int64(lim.Rate)), 10)
	if t, ok := untilMore(lim, res); ok {
		field += ";t=" + strconv.FormatInt(t, 10)
	}
	hdr.Set("RateLimit", field)
}

// policy is the IETF name of limits[i].
func (h headers) policy(limits []luarate.Limit, i int) string {
	switch {
	case i < len(h.policies) && h.policies[i] != "":
		return h.policies[i]
	case len(limits) == 1:
		return "default"
	}
	return strconv.Itoa(limits[i].Rate) + "/" + periodName(limits[i].Period)
}

// periodName writes d in the largest unit that divides it, in the notation
// luarate.ParseLimits reads: 1d, 15m, 1500ms.
func periodName(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if d%u.d == 0 {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name
		}
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

// tightest finds which limit res reports. AllowMulti reports the tightest
// limit's Result without naming it; its Limit is that limit's capacity. Of
// several limits with that capacity the one with the longest period is taken:
// its units come back slowest.
func tightest(limits []luarate.Limit, res luarate.Result) int {
	best := -1
	for i, lim := range limits {
		if int64(lim.Capacity()) == res.Limit && (best < 0 || lim.Period > limits[best].Period) {
			best = i
		}
	}
	return max(best, 0)
}

// untilMore is the IETF t of lim: seconds until its available quota grows
// (see WithIETFHeaders); false when the limit is full.
func untilMore(lim luarate.Limit, res luarate.Result) (int64, bool) {
	switch {
	case !res.Allowed:
		return retryAfterSeconds(res), true
	case res.Remaining >= res.Limit || res.ResetAfter <= 0:
		return 0, false
	}
	t := res.ResetAfter
	switch lim.Algorithm {
	case luarate.TokenBucket, luarate.GCRA, luarate.LeakyBucket, luarate.LeakyQueue:
		// full again after Limit-Remaining units come back, one per interval:
		// the first of them after ResetAfter less the others' intervals
		interval := lim.Period / time.Duration(lim.Rate)
		t -= time.Duration(res.Limit-res.Remaining-1) * interval
		t = max(min(t, res.ResetAfter), time.Millisecond)
	}
	return ceilSeconds(t), true
}

// retryAfterSeconds is Retry-After for a denial: seconds rounded up, at least 1.
func retryAfterSeconds(res luarate.Result) int64 { return max(ceilSeconds(res.RetryAfter), 1) }

// sfString quotes s as a Structured Field String: printable ASCII, with '"'
// and '\' escaped; anything else becomes '_'.
func sfString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == '"' || ch == '\\':
			b.WriteByte('\\')
			b.WriteByte(ch)
		case ch < 0x20 || ch > 0x7e:
			b.WriteByte('_')
		default:
			b.WriteByte(ch)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
