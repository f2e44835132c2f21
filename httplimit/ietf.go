package httplimit

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/luarate/luarate"
)

// setIETFHeaders writes RateLimit-Policy and RateLimit as Structured Field
// lists of one item each (draft-ietf-httpapi-ratelimit-headers-11):
//
//	RateLimit-Policy: "name";q=<rate>;w=<period seconds>[;luarate-burst=<capacity>]
//	RateLimit: "name";r=<remaining>;t=<seconds>
func setIETFHeaders(h http.Header, policy string, limit luarate.Limit, res luarate.Result) {
	name := sfString(policy)
	var p strings.Builder
	p.WriteString(name)
	p.WriteString(";q=")
	p.WriteString(strconv.Itoa(limit.Rate))
	if limit.Period%time.Second == 0 {
		p.WriteString(";w=")
		p.WriteString(strconv.FormatInt(int64(limit.Period/time.Second), 10))
	}
	if limit.Capacity() != limit.Rate {
		p.WriteString(";luarate-burst=")
		p.WriteString(strconv.Itoa(limit.Capacity()))
	}
	h.Set("RateLimit-Policy", p.String())

	t := res.ResetAfter
	if !res.Allowed {
		t = res.RetryAfter
	}
	secs := ceilSeconds(t)
	if !res.Allowed {
		secs = max(secs, 1) // as Retry-After
	}
	h.Set("RateLimit", name+";r="+strconv.FormatInt(res.Remaining, 10)+";t="+strconv.FormatInt(secs, 10))
}

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
