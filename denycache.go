package luarate

import (
	"container/list"
	"slices"
	"strings"
	"sync"
	"time"
)

// WithDenyCache remembers denials in the process for up to size keys, so a
// key that keeps calling while denied costs Redis nothing until its retry
// time. The default is off.
//
// After Redis denies a take (Allow, AllowN, AllowMulti) of cost n with
// RetryAfter T, takes of cost n on the same key and limits are answered
// from memory for the next T (Allowed false, RetryAfter and ResetAfter
// counted down); everything else goes to Redis (a larger cost too: it would
// be denied as well, but its RetryAfter is longer), so the limits
// admit the same requests with the cache on or off. Limits with a Lockout are
// never answered from memory. A Reset or Refund by another process takes
// effect here only once the cached retry time has passed; through this
// Limiter it clears the key's cached denials. Beyond size keys the least
// recently used are forgotten: about size * (350 bytes + the key's length).
// The trade-offs:
// https://github.com/luarate/luarate/blob/main/docs/operations.md#the-deny-cache
func WithDenyCache(size int) Option {
	return func(l *Limiter) {
		if size > 0 {
			l.denies = newDenyCache(size)
		} else {
			l.denies = nil
		}
	}
}

// maxDenialsPerKey bounds the denials kept for one key (different limits or
// costs of the same key).
const maxDenialsPerKey = 4

// denyCache is a size-bounded LRU of recent denials, grouped by the key's
// hash tag ("rl:{user42}") so that Reset can drop every limit of a key.
type denyCache struct {
	mu    sync.Mutex
	gen   uint64 // bumped by forget: denials decided before it are stale
	size  int
	order *list.List // of *denyEntry, most recently used first
	byTag map[string]*list.Element
}

type denyEntry struct {
	tag     string
	denials []denial
}

// denial is one Redis answer: limits denied cost n, decided no earlier than
// at, with no admission possible before until.
type denial struct {
	limits []Limit
	n      int
	at     time.Time
	until  time.Time
	res    Result
}

func newDenyCache(size int) *denyCache {
	return &denyCache{size: size, order: list.New(), byTag: make(map[string]*list.Element, size)}
}

// hashTag returns the "prefix{key}" part of a Redis key the Limiter built.
// The prefix and the key have their braces escaped, so the first '}' ends it.
func hashTag(redisKey string) string {
	return redisKey[:strings.IndexByte(redisKey, '}')+1]
}

// lookup answers a request of cost n from a cached denial that covers it.
func (c *denyCache) lookup(redisKey string, limits []Limit, n int, now time.Time) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byTag[hashTag(redisKey)]
	if !ok {
		return Result{}, false
	}
	e := el.Value.(*denyEntry)
	live := e.denials[:0]
	var res Result
	found := false
	for _, d := range e.denials {
		if !now.Before(d.until) {
			continue // expired: drop it
		}
		live = append(live, d)
		if !found && n == d.n && slices.Equal(d.limits, limits) {
			elapsed := now.Sub(d.at)
			res = d.res
			res.RetryAfter -= elapsed
			res.ResetAfter = max(res.ResetAfter-elapsed, res.RetryAfter)
			found = true
		}
	}
	clear(e.denials[len(live):])
	e.denials = live
	if len(live) == 0 {
		c.order.Remove(el)
		delete(c.byTag, e.tag)
	} else if found {
		c.order.MoveToFront(el)
	}
	return res, found
}

// generation is read before a request is sent, and handed to remember.
func (c *denyCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// remember stores Redis' denial of cost n, for a request sent at sent in
// generation gen; a forget since then (a Reset or Refund that may have
// overtaken the request) makes it stale, and it is dropped. Times in replies
// are rounded up to whole ms, so the denial is trusted one ms less than its
// RetryAfter.
func (c *denyCache) remember(redisKey string, limits []Limit, n int, sent time.Time, gen uint64, res Result) {
	if res.RetryAfter <= time.Millisecond {
		return
	}
	d := denial{limits: slices.Clone(limits), n: n, at: sent, until: sent.Add(res.RetryAfter - time.Millisecond), res: res}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	tag := hashTag(redisKey)
	if el, ok := c.byTag[tag]; ok {
		e := el.Value.(*denyEntry)
		c.order.MoveToFront(el)
		for i := range e.denials {
			if slices.Equal(e.denials[i].limits, limits) {
				e.denials[i] = d // the newest answer for these limits
				return
			}
		}
		if len(e.denials) == maxDenialsPerKey {
			e.denials = slices.Delete(e.denials, 0, 1)
		}
		e.denials = append(e.denials, d)
		return
	}
	if c.order.Len() >= c.size {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.byTag, oldest.Value.(*denyEntry).tag)
	}
	tag = strings.Clone(tag) // do not pin the request's buffer
	c.byTag[tag] = c.order.PushFront(&denyEntry{tag: tag, denials: []denial{d}})
}

// forget drops every cached denial of the key redisKey belongs to, and
// makes the denials of requests still in flight stale.
func (c *denyCache) forget(redisKey string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if el, ok := c.byTag[hashTag(redisKey)]; ok {
		c.order.Remove(el)
		delete(c.byTag, el.Value.(*denyEntry).tag)
	}
}
