package luarate

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// ErrInvalidResponse means Redis answered with something that is not a
// luarate reply: usually a different script loaded under the same SHA1, or a
// proxy in the way.
var ErrInvalidResponse = errors.New("luarate: invalid response from Redis")

// Result is the outcome of one decision, as the script replied it.
//
// If a limiter allows 10 per second and has admitted 6 this second, an Allow
// returns Allowed true, Limit 10, Remaining 3 (after this request), RetryAfter 0,
// Granted 1.
type Result struct {
	// Allowed is true when the request was admitted and its cost consumed.
	// For Peek and Refund, which admit nothing, it is false only while the
	// key is locked out (or over a limit lowered since): a Peek on a key with
	// nothing left still says true, with Remaining 0.
	Allowed bool
	// Limit is the capacity of the limit reported: Burst, or Rate for a window.
	Limit int64
	// Remaining is how many requests of cost 1 would still be admitted now,
	// by the limit reported (after an AllowMulti denial, the denying limit
	// with the longest RetryAfter, which may have more left than another).
	Remaining int64
	// ResetAfter is the wait until the limit is back to full (Remaining = Limit).
	ResetAfter time.Duration
	// RetryAfter is the wait until this request would be admitted; 0 when allowed.
	RetryAfter time.Duration
	// Delay is how long an admitted request must wait before it proceeds. Only
	// queueing algorithms set it; it is 0 for the others.
	Delay time.Duration
	// Granted is how many units this call took or, for Refund, gave back.
	// Allow and AllowN take all of n or nothing, so Granted is n or 0;
	// AllowAtMost and Penalize take what fits. If a limit of 10 per minute has
	// 3 left, AllowAtMost(..., 5) returns Allowed true, Granted 3, Remaining 0;
	// a Refund(..., 2) right after returns Granted 2 and Remaining 2. Peek
	// returns 0.
	Granted int64
	// Insured is true when Redis was unavailable and the Limiter's Fallback
	// decided instead (package insurance: against this process's share of
	// the limit, which Limit then reports).
	Insured bool
}

// replyLen is the number of integers in every script's reply:
// {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}.
const replyLen = 7

// maxReplyMS is the longest wait a reply may carry: the most milliseconds a
// time.Duration holds. The scripts' bounds keep every valid limit's replies
// far below it.
const maxReplyMS = math.MaxInt64 / int64(time.Millisecond)

// parseResult decodes a script reply, checking its shape instead of trusting it.
func parseResult(msg rueidis.RedisMessage) (Result, error) {
	arr, err := msg.ToArray()
	if err != nil || len(arr) != replyLen {
		return Result{}, ErrInvalidResponse
	}
	return parseInts(arr)
}

// parseInts decodes the 7 integers of one decision, rejecting any value out
// of its range rather than wrapping it.
func parseInts(arr []rueidis.RedisMessage) (Result, error) {
	var v [replyLen]int64
	for i := range v {
		var err error
		if v[i], err = arr[i].AsInt64(); err != nil || v[i] < 0 {
			return Result{}, ErrInvalidResponse
		}
	}
	if v[0] > 1 || v[1] > maxRate || v[2] > maxRate || v[6] > maxRate || v[3] > maxReplyMS || v[4] > maxReplyMS || v[5] > maxReplyMS {
		return Result{}, ErrInvalidResponse
	}
	return Result{
		Allowed:    v[0] == 1,
		Limit:      v[1],
		Remaining:  v[2],
		ResetAfter: time.Duration(v[3]) * time.Millisecond,
		RetryAfter: time.Duration(v[4]) * time.Millisecond,
		Delay:      time.Duration(v[5]) * time.Millisecond,
		Granted:    v[6],
	}, nil
}

// SetHeaders writes the de-facto rate-limit headers:
//
//	X-RateLimit-Limit      the capacity
//	X-RateLimit-Remaining  requests left now
//	X-RateLimit-Reset      seconds from now until back to full (rounded up)
//	Retry-After            seconds until a retry can succeed (only when denied; at least 1)
//
// Reset is seconds from now, not a Unix time, so it stays right when the
// client's clock is off. The httplimit middleware writes a Unix time there
// by default instead (its WithResetDelta writes what SetHeaders writes).
func (r Result) SetHeaders(h http.Header) {
	h.Set("X-RateLimit-Limit", strconv.FormatInt(r.Limit, 10))
	h.Set("X-RateLimit-Remaining", strconv.FormatInt(r.Remaining, 10))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(ceilSeconds(r.ResetAfter), 10))
	if !r.Allowed {
		h.Set("Retry-After", strconv.FormatInt(max(ceilSeconds(r.RetryAfter), 1), 10))
	}
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
