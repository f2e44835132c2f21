package luarate

import (
	"context"
	"fmt"
	"time"
)

// Wait takes one unit from key under limit, blocking until it is admitted
// (and, with LeakyQueue, until its turn) or ctx ends. It is WaitN with n = 1.
func (l *Limiter) Wait(ctx context.Context, key string, limit Limit) (Result, error) {
	return l.WaitN(ctx, key, limit, 1)
}

// WaitN takes n units from key under limit, as AllowN, and blocks until they
// are admitted, like golang.org/x/time/rate's WaitN. A denied try sleeps the
// Result's RetryAfter and tries again, so a waiting caller costs one Redis
// call per RetryAfter, never a busy loop; n above the capacity is an error at
// once, since it can never be admitted.
//
// When ctx has a deadline that comes before the RetryAfter of a denied try,
// WaitN returns at once with that Result and an error wrapping
// context.DeadlineExceeded instead of sleeping in vain. When ctx ends while
// it sleeps, WaitN returns ctx.Err() with the last Result. Either way nothing
// was taken, and nothing is taken when ctx has already ended.
//
// LeakyQueue keeps its queue: when the queue is full WaitN waits for a place
// as above, and once admitted it sleeps the Result's Delay, so it returns at
// the request's turn and callers proceed at most Rate per Period however many
// arrive at once. If ctx ends during that sleep, WaitN returns ctx's error
// with the Result, and the place in the queue is NOT given back: giving it
// back could let a later request take a departure slot that requests already
// queued behind this one were also promised, and the shaper would then let
// two go in one slot. The slot simply passes unused, as when a queued request
// is dropped in nginx: fewer requests go through because of it, never more.
// A deadline shorter than the delay is found out only after the place is
// taken; check Peek's Delay first if that matters.
func (l *Limiter) WaitN(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	for {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		res, err := l.AllowN(ctx, key, limit, n)
		switch {
		case err != nil:
			return res, err
		case res.Allowed:
			return res, sleep(ctx, res.Delay)
		}
		wait := max(res.RetryAfter, time.Millisecond)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return res, fmt.Errorf("luarate: wait: admitted in %v at the earliest, after the context's deadline: %w", wait, context.DeadlineExceeded)
		}
		if err := sleep(ctx, wait); err != nil {
			return res, err
		}
	}
}

// sleep waits d, or until ctx ends: then it returns ctx.Err().
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
