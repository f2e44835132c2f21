package luarate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// The bounds of a concurrency limit; the script checks the same.
const (
	maxConcurrency = 1000 // one sorted-set entry per lease held; the script's cap
	maxLeaseMS     = 1_000_000_000_000
)

// Lease is one slot of a concurrency limit, held from Acquire until Release
// or until it expires. A Lease is safe for concurrent use; Release and Extend
// on a nil *Lease do nothing, so
//
//	lease, res, err := l.Acquire(ctx, key, 10, time.Minute)
//	defer lease.Release(ctx)
//
// is safe whether or not a slot was granted.
type Lease struct {
	l     *Limiter
	key   string // the Redis key
	id    string
	max   int
	lease time.Duration
}

// ID is the lease's id, 32 random hex digits: the member "lease:<ID>" of the
// key's sorted set.
func (le *Lease) ID() string { return le.id }

// Acquire takes one of max slots of key for a request in flight, for at most
// lease: at most max leases of key hold at once. Call Release when the
// request is done; a holder that never releases (it crashed, or lost its
// connection) frees its slot when the lease expires, lease after Acquire.
// Pick lease longer than the slowest request, or Extend it while working.
//
// When a slot is free, Acquire returns the Lease and a Result with Allowed
// true, Limit max and Remaining the slots still free. When all are taken it
// returns a nil Lease and Allowed false, with RetryAfter the time until the
// earliest lease expires (a release may free one sooner). ResetAfter is the
// time until every current lease has expired. Delay is always 0.
//
// The lease id is 128 random bits made here, not in Redis, so the script is a
// pure function of its arguments (replicated and replayed exactly) and needs
// no counter key; two ids collide with negligible probability. The Redis key
// is prefix{key}:c3. Time is the Redis server's clock unless WithClock.
//
// Concurrency is not an Algorithm: it counts requests in flight, not
// requests per time, so it takes no Limit, and the deny cache does not apply
// (a release frees a slot at any time).
func (l *Limiter) Acquire(ctx context.Context, key string, max int, lease time.Duration) (*Lease, Result, error) {
	le, err := l.newLease(key, max, lease)
	if err != nil {
		return nil, Result{}, err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, Result{}, fmt.Errorf("luarate: lease id: %w", err)
	}
	le.id = hex.EncodeToString(b[:])
	res, err := le.run(ctx, "acquire")
	if err != nil || !res.Allowed {
		return nil, res, err
	}
	return le, res, nil
}

// PeekConcurrency reports key's concurrency limit of max without taking a
// slot: Allowed is true when an Acquire would get one now, Remaining the free
// slots, RetryAfter (when none is free) the time until the earliest lease
// expires. It writes nothing.
func (l *Limiter) PeekConcurrency(ctx context.Context, key string, max int) (Result, error) {
	le, err := l.newLease(key, max, time.Millisecond)
	if err != nil {
		return Result{}, err
	}
	return le.run(ctx, "peek")
}

// Release gives the lease's slot back. Releasing twice, or after the lease
// expired, is harmless: it returns nil and changes nothing, and it never
// frees another holder's slot. An error means Redis could not be asked; the
// lease then still frees itself when it expires.
func (le *Lease) Release(ctx context.Context) error {
	if le == nil {
		return nil
	}
	_, err := le.run(ctx, "release")
	return err
}

// Extend pushes the lease's expiry to the lease duration from now, for work
// that outlasts it. It reports false when the lease no longer holds (it
// expired, or was released): its slot may be someone else's by now, so the
// work should stop or Acquire again. A lease is never shortened.
func (le *Lease) Extend(ctx context.Context) (bool, error) {
	if le == nil {
		return false, nil
	}
	res, err := le.run(ctx, "extend")
	return res.Allowed, err
}

// newLease validates a concurrency limit and returns its Lease, with no id
// yet: Acquire makes one.
func (l *Limiter) newLease(key string, max int, lease time.Duration) (*Lease, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	switch {
	case max < 1 || max > maxConcurrency:
		return nil, fmt.Errorf("luarate: %w: max must be from 1 to %d, got %d", ErrInvalidLimit, maxConcurrency, max)
	case lease <= 0 || lease%time.Millisecond != 0 || lease/time.Millisecond > maxLeaseMS:
		return nil, fmt.Errorf("luarate: %w: lease must be a whole number of milliseconds from 1ms to %dms, got %v", ErrInvalidLimit, int64(maxLeaseMS), lease)
	}
	return &Lease{
		l:     l,
		key:   l.prefix + "{" + escapeBraces(key) + "}:" + scripts["concurrency"].keyTag,
		max:   max,
		lease: lease,
	}, nil
}

// run calls the concurrency script with op on the lease's key.
func (le *Lease) run(ctx context.Context, op string) (Result, error) {
	args := []string{op, strconv.Itoa(le.max), strconv.FormatInt(int64(le.lease/time.Millisecond), 10), le.id}
	if le.l.now != nil {
		args = append(args, strconv.FormatInt(le.l.now().UnixMilli(), 10))
	}
	// no batching: the concurrency script has no batch form
	res, err := evalOne(ctx, le.l.client, scripts["concurrency"], []string{le.key}, args)
	if err != nil {
		return Result{}, redisError("concurrency script", err)
	}
	return res, nil
}
