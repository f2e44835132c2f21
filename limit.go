package luarate

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidLimit is wrapped by every error Limit.Validate returns.
var ErrInvalidLimit = errors.New("invalid limit")

// Limit says how much a key may do: Rate requests (or units of cost) per
// Period, counted by Algorithm. Burst is the capacity: how many may arrive at
// once before the steady Rate applies. 0 means Burst = Rate. Window algorithms
// (FixedWindow, SlidingWindowLog, SlidingWindowCounter) have no separate burst
// and accept only 0 or Rate.
//
// For example PerSecond(GCRA, 10) admits a burst of 10, then one every 100ms.
//
// Lockout, when not 0, blocks the key for that long once a request is denied:
// every Allow, AllowN, AllowAtMost and Penalize is then denied with RetryAfter
// the rest of the lock, however much capacity came back, until the lock ends
// or Reset. A request denied while locked does not extend the lock, so a
// client that keeps hammering is let back in on schedule. Refund does not
// lift it. 5 failed logins per 15 minutes, then locked for an hour:
//
//	Limit{Algorithm: SlidingWindowLog, Rate: 5, Period: 15 * time.Minute, Lockout: time.Hour}
//
// The login pattern in full:
// https://github.com/luarate/luarate/blob/main/docs/guide.md#abuse-protection
type Limit struct {
	Algorithm Algorithm
	Rate      int
	Period    time.Duration
	Burst     int
	Lockout   time.Duration // 0 = none; whole milliseconds, at most 1e12ms
}

// PerSecond returns a Limit of n per second.
func PerSecond(algo Algorithm, n int) Limit {
	return Limit{Algorithm: algo, Rate: n, Period: time.Second}
}

// PerMinute returns a Limit of n per minute.
func PerMinute(algo Algorithm, n int) Limit {
	return Limit{Algorithm: algo, Rate: n, Period: time.Minute}
}

// PerHour returns a Limit of n per hour.
func PerHour(algo Algorithm, n int) Limit { return Limit{Algorithm: algo, Rate: n, Period: time.Hour} }

// PerDay returns a Limit of n per 24 hours.
func PerDay(algo Algorithm, n int) Limit {
	return Limit{Algorithm: algo, Rate: n, Period: 24 * time.Hour}
}

// The bounds the scripts accept; Validate checks them first so a bad limit
// never costs a round trip.
const (
	maxRate     = 1_000_000_000
	maxPeriodMS = 1_000_000_000_000
	maxLogRate  = 4000 // a sliding window log stores one entry per unit
	maxLogCost  = 128  // entries one sliding_window_log call may add: n * limits
	maxLimits   = 16   // limits of one call
	// maxFullMS bounds the time a bucket or GCRA takes to refill from empty
	// (Burst * Period / Rate), so every reply fits a time.Duration.
	maxFullMS = 4_000_000_000_000
)

// Capacity is the most a key can hold at once: Burst, or Rate when Burst is 0.
func (l Limit) Capacity() int {
	if l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}

// Validate reports what is wrong with the limit, or nil. Errors wrap
// ErrInvalidLimit.
func (l Limit) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("luarate: %w: %s", ErrInvalidLimit, fmt.Sprintf(format, args...))
	}
	switch {
	case l.Algorithm <= 0 || int(l.Algorithm) >= len(scriptNames):
		return bad("unknown algorithm %d; use a constant such as luarate.GCRA", int(l.Algorithm))
	case l.Rate <= 0 || l.Rate > maxRate:
		return bad("rate must be from 1 to %d, got %d", maxRate, l.Rate)
	case l.Period <= 0 || l.Period%time.Millisecond != 0 || l.Period/time.Millisecond > maxPeriodMS:
		return bad("period must be a whole number of milliseconds from 1ms to %dms, got %v", int64(maxPeriodMS), l.Period)
	case l.Burst < 0 || l.Burst > maxRate:
		return bad("burst must be from 0 (= rate) to %d, got %d", maxRate, l.Burst)
	case l.Algorithm.windowed() && l.Burst != 0 && l.Burst != l.Rate:
		return bad("%s has no separate burst: set Burst to 0, got %d", l.Algorithm, l.Burst)
	case l.Lockout < 0 || l.Lockout%time.Millisecond != 0 || l.Lockout/time.Millisecond > maxPeriodMS:
		return bad("lockout must be 0 (none) or a whole number of milliseconds up to %dms, got %v", int64(maxPeriodMS), l.Lockout)
	}
	ms := int64(l.Period / time.Millisecond)
	switch l.Algorithm {
	case GCRA:
		if int64(l.Rate) > ms*1000 {
			return bad("gcra allows at most 1000 per millisecond of period: %d per %v is too fast", l.Rate, l.Period)
		}
		interval := (ms*1000 + int64(l.Rate) - 1) / int64(l.Rate)
		if float64(l.Capacity())*float64(interval) > 4e15 {
			return bad("gcra needs burst * period / rate, with period / rate rounded up to whole microseconds, at most 4e12ms: %d * %dµs is %.0fµs",
				l.Capacity(), interval, float64(l.Capacity())*float64(interval))
		}
	case SlidingWindowLog:
		if l.Rate > maxLogRate {
			return bad("sliding_window_log keeps one entry per request: rate must be at most %d, got %d", maxLogRate, l.Rate)
		}
	case SlidingWindowCounter:
		if float64(l.Rate)*float64(ms) > 9e15 {
			return bad("sliding_window_counter needs rate * period in ms at most 9e15")
		}
	case TokenBucket, LeakyBucket, LeakyQueue:
		if float64(l.Capacity())*float64(ms/gcd(int64(l.Rate), ms)) > 4e15 {
			return bad("burst * period / gcd(rate, period in ms) must be at most 4e15")
		}
		if float64(l.Capacity())*float64(ms)/float64(l.Rate) > maxFullMS {
			return bad("burst * period / rate (the time to refill from empty) must be at most %dms", int64(maxFullMS))
		}
	}
	return nil
}

func gcd(a, b int64) int64 {
	for b > 0 {
		a, b = b, a%b
	}
	return a
}
