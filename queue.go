package luarate

import (
	"context"
	"time"
)

// Wait takes one unit from key under limit and, when admitted, sleeps the
// Result's Delay before returning: with LeakyQueue it returns at the
// request's turn, so callers proceed at most Rate per Period however many
// arrive at once. It is WaitN with n = 1.
func (l *Limiter) Wait(ctx context.Context, key string, limit Limit) (Result, error) {
	return l.WaitN(ctx, key, limit, 1)
}

// WaitN takes n units from key under limit, as AllowN, and when admitted
// sleeps the Result's Delay (0 for every algorithm but LeakyQueue) before it
// returns nil. Being denied is not an error: the queue is full, nothing was
// taken, and WaitN returns at once with Allowed false and RetryAfter set.
//
// If ctx ends during the sleep, WaitN returns ctx's error (errors.Is
// context.Canceled or context.DeadlineExceeded) with the Result. The place in
// the queue is NOT given back: giving it back could let a later request take
// a departure slot that requests already queued behind this one were also
// promised, and the shaper would then let two go in one slot. The slot simply
// passes unused, as when a queued request is dropped in nginx: fewer
// requests go through because of it, never more.
//
// Nothing is taken when ctx has already ended. A deadline shorter than the
// delay is found out only after the place is taken; check Peek's Delay first
// if that matters.
func (l *Limiter) WaitN(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	res, err := l.AllowN(ctx, key, limit, n)
	if err != nil || !res.Allowed || res.Delay <= 0 {
		return res, err
	}
	t := time.NewTimer(res.Delay)
	defer t.Stop()
	select {
	case <-t.C:
		return res, nil
	case <-ctx.Done():
		return res, ctx.Err()
	}
}
