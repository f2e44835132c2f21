package luarate

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseLimits reads limits written as people write them, such as
// "10/second;1000/day", "10 per minute", "5/15m" or "100/hour", and returns
// them in order, each counted by algo with Burst 0 (= Rate). The result can
// go straight to AllowMulti: the limits are valid and their periods distinct.
//
// The grammar, exactly (ABNF, RFC 5234; letters are case-insensitive):
//
//	limits     = OWS limit *( OWS sep OWS limit ) OWS
//	sep        = ";" / ","
//	limit      = count OWS "/" OWS period / count RWS "per" RWS period
//	count      = 1*DIGIT                 ; 1 to 1000000000
//	period     = [ multiplier OWS ] unit ; the unit times the multiplier
//	multiplier = 1*DIGIT                 ; 1 or more
//	unit       = "ms" / "millisecond" / "milliseconds"
//	           / "s" / "sec" / "second" / "seconds"
//	           / "m" / "min" / "minute" / "minutes"
//	           / "h" / "hr" / "hour" / "hours"
//	           / "d" / "day" / "days"
//	OWS        = *( SP / HTAB )
//	RWS        = 1*( SP / HTAB )
//
// So "10 per minute", "10/minute" and "10 / MINUTE" are the same limit,
// "5/15m" is 5 per 15 minutes, and "ms" is milliseconds (not minutes). A day
// is 24 hours.
// Anything else is an error wrapping ErrInvalidLimit that quotes the part
// that is wrong: an empty part, an unknown unit, a count out of range, or two
// limits with the same period.
func ParseLimits(s string, algo Algorithm) ([]Limit, error) {
	bad := func(part, format string, args ...any) error {
		return fmt.Errorf("luarate: %w: %q in %q: %s", ErrInvalidLimit, part, s, fmt.Sprintf(format, args...))
	}
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ',' })
	if strings.Count(s, ";")+strings.Count(s, ",")+1 != len(parts) {
		return nil, fmt.Errorf("luarate: %w: %q: empty limit between separators; write limits as \"10/second;1000/day\"", ErrInvalidLimit, s)
	}
	limits := make([]Limit, 0, len(parts))
	for _, part := range parts {
		lim, err := parseLimit(strings.Trim(part, " \t"), algo)
		if err != nil {
			return nil, bad(strings.Trim(part, " \t"), "%v", err)
		}
		for _, prev := range limits {
			if prev.Period == lim.Period {
				return nil, bad(strings.Trim(part, " \t"), "another limit has the same period %v; give each limit its own period", lim.Period)
			}
		}
		if err := lim.Validate(); err != nil {
			return nil, bad(strings.Trim(part, " \t"), "%s", strings.TrimPrefix(err.Error(), "luarate: "+ErrInvalidLimit.Error()+": "))
		}
		limits = append(limits, lim)
	}
	return limits, nil
}

// MustParseLimits is ParseLimits for limits fixed in the program: it panics
// on an error.
func MustParseLimits(s string, algo Algorithm) []Limit {
	limits, err := ParseLimits(s, algo)
	if err != nil {
		panic(err)
	}
	return limits
}

var units = map[string]time.Duration{
	"ms": time.Millisecond, "millisecond": time.Millisecond, "milliseconds": time.Millisecond,
	"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
}

// parseLimit reads one limit, already trimmed: count, "/" or "per", period.
func parseLimit(s string, algo Algorithm) (Limit, error) {
	if s == "" {
		return Limit{}, fmt.Errorf("empty limit")
	}
	digits, rest := leadingDigits(s)
	if digits == "" {
		return Limit{}, fmt.Errorf("must start with a count, as in 10/second")
	}
	spaced := strings.TrimLeft(rest, " \t")
	switch lower := asciiLower(spaced); {
	case strings.HasPrefix(lower, "/"):
		rest = spaced[1:]
	case len(spaced) < len(rest) && len(lower) > 4 && lower[:3] == "per" && (lower[3] == ' ' || lower[3] == '\t'):
		rest = spaced[3:]
	default:
		return Limit{}, fmt.Errorf("want \"/\" or \" per \" (spaces around it) after the count %s", digits)
	}
	count, err := strconv.Atoi(digits)
	if err != nil || count < 1 || count > maxRate {
		return Limit{}, fmt.Errorf("count must be from 1 to %d, got %s", maxRate, digits)
	}
	rest = strings.TrimLeft(rest, " \t")
	mult := int64(1) // (int64: a multiplier up to 1e12 overflows a 32-bit int)
	if m, after := leadingDigits(rest); m != "" {
		mult, err = strconv.ParseInt(m, 10, 64)
		if err != nil || mult < 1 || mult > maxPeriodMS {
			return Limit{}, fmt.Errorf("period multiplier must be from 1 to %d, got %s", int64(maxPeriodMS), m)
		}
		rest = strings.TrimLeft(after, " \t")
	}
	unit, ok := units[asciiLower(rest)]
	if !ok {
		return Limit{}, fmt.Errorf("unknown unit %q; use ms, second (s), minute (m), hour (h) or day (d)", rest)
	}
	if mult > maxPeriodMS/int64(unit/time.Millisecond) {
		return Limit{}, fmt.Errorf("period must be at most %dms", int64(maxPeriodMS))
	}
	return Limit{Algorithm: algo, Rate: count, Period: time.Duration(mult) * unit}, nil
}

func leadingDigits(s string) (digits, rest string) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i], s[i:]
}

// asciiLower lower-cases ASCII letters only: the grammar is case-insensitive
// for them alone (strings.ToLower would read "mİn" as "min").
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
