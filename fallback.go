package luarate

import (
	"context"
	"time"
)

// Fallback wraps every decision and Reset of a Limiter (not Acquire and its
// Lease): it gets the call and a function that makes it in Redis, and chooses
// whether to call it, for example to decide elsewhere while Redis is
// unavailable. Errors of the redis functions wrap ErrUnavailable when Redis
// did not decide. A Fallback sets Result.Insured when it decided instead of
// Redis; such denials are not kept by WithDenyCache. Package
// github.com/luarate/luarate/insurance is one.
type Fallback interface {
	// Decide returns the Result of call; redis makes the decision in Redis.
	Decide(ctx context.Context, call Call, redis func(context.Context) (Result, error)) (Result, error)
	// Reset forgets call.Key's state under call.Limits[0]; redis does it in
	// Redis.
	Reset(ctx context.Context, call Call, redis func(context.Context) error) error
}

// Call is one decision as a Fallback sees it, already validated.
type Call struct {
	Key    string  // the caller's key, without the prefix
	N      int     // the units to take or, with OpRefund, to give back
	Op     Op      // what to do with them
	Limits []Limit // every limit of the call (one unless OpTake)
	// Now is the Limiter's clock at the call: WithClock's, else the local
	// clock. Redis decides on its own clock unless WithClock.
	Now time.Time
}

// Op is what a Call does with its N units.
type Op int

const (
	OpTake   Op = iota // all of N or nothing: Allow, AllowN, AllowMulti, Peek (N = 0)
	OpAtMost           // as many of N as fit: AllowAtMost, Penalize
	OpRefund           // give N back: Refund
)

// WithFallback makes f wrap every decision and Reset of the Limiter.
func WithFallback(f Fallback) Option {
	return func(l *Limiter) { l.fallback = f }
}

// Close calls the Close method of the Limiter's Fallback, if it has one (the
// insurance stops its embedded servers; calling it twice is harmless). It
// does not close the rueidis client given to New, which the caller owns.
func (l *Limiter) Close() {
	if c, ok := l.fallback.(interface{ Close() }); ok {
		c.Close()
	}
}
