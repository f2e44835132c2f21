-- luarate: sliding_window_log v3
--
-- Sliding window log. Every admitted unit of cost is one entry in a sorted set,
-- scored by its time; a request of `cost` is allowed when the entries of the
-- last `period_ms` plus `cost` are at most `rate`. Exact: over ANY span of
-- `period_ms` it never admits more than `rate`, with no boundary bursts.
-- The price is memory and work: one entry per unit (measured on Redis 7.0:
-- about 36 bytes each up to 128 entries, about 118 beyond) and O(cost + log
-- rate) time per request, so rate and cost are capped (below) to keep every
-- call under 1 ms of Redis time. Use it for small rates where exactness matters.
--
-- Window: an entry at time e counts while now < e + period_ms, so waiting
-- retry_after_ms (the moment the blocking entry leaves) admits exactly then.
-- Entries are scored in Unix microseconds (Redis TIME, or now_ms * 1000).
-- A clock that goes back never mints capacity: entries are never placed
-- before the newest one already in the log, and that newest one still counts;
-- entries that left the window but are not removed yet (see State) count
-- again while the clock is back before their end.
--
-- Modes: take (all of cost or nothing), atmost (as much of cost as the window
-- still holds), refund (remove the newest min(cost, entries in the window)
-- entries: the most recent requests are forgotten as if never made, so a
-- refund right after a take undoes it exactly; never below empty).
-- Lockout: a denied take (or an atmost that grants nothing) on a limit with a
-- lockout_ms locks that key until now + lockout_ms; see scripts/README.md.
--
-- State: a sorted set per key. Entries are members "<us>:<d><j>", scored <us>,
-- j = 1, 2, ... among the entries of one time and d the number of digits of j
-- ("1000:11", "1000:212": the entries of one time sort in the order of j).
-- One more member, scored +inf so it sorts last, says this script wrote the
-- set: "swl3", or "swl3 <locked_until_us>" while a lock may matter. A key
-- holding anything else (another script's set, a set without that member,
-- another type) is refused with an error and left untouched. An admission
-- adds its entries first and then removes as many of the entries that have
-- left the window (oldest first) as it added, or all of them if fewer: a log
-- never holds more entries than the largest rate it was used with, and no
-- call removes more than cost entries from a log (a refund that empties the
-- window unlinks the key instead: Redis frees it in the background). A
-- denial writes nothing but a new lock. TTL = until the newest entry leaves
-- the window, or the lock if later, plus 1 ms: Redis 7.0 and earlier delete
-- a key at once when their millisecond clock turns during a PEXPIRE of 1 ms,
-- and with it entries that still count.
--
-- KEYS[i]     state key of limit i, i = 1..N, N <= 16. All keys of one call
--             must share a hash slot in Redis Cluster (give them one {hash
--             tag}) and be distinct.
-- ARGV[i]     limit i, in the order of KEYS: "rate period_ms burst" or
--             "rate period_ms burst lockout_ms", plain decimal integers:
--   rate        1..4000, units admitted in any window of period_ms
--   period_ms   1..1e12, the window
--   burst       0 or equal to rate (the window has no separate burst)
--   lockout_ms  0..1e12; 0 or missing = no lockout
-- ARGV[N+1]   optional cost: 0..rate of every limit, and cost * N at most
--             128 (every unit is an entry in every log); 0 = peek (reads,
--             never writes); missing = 1
-- ARGV[N+2]   optional now_ms: 0..4e12, Unix time in ms; missing or "" = Redis TIME
-- ARGV[N+3]   optional mode: "take" (default; missing or ""), "atmost" or "refund"
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or over a
--                   lowered limit), else 1
--   limit           the rate of the reported limit
--   remaining       cost still admitted now; 0 while locked
--   reset_after_ms  ms until the log is empty (back to full), or the lock
--                   ends, if later; 0 when full
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   unit would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         units this call took (take: cost or 0; atmost: 0..cost),
--                   or removed (refund, from the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
--
-- Batch form: ARGV[1] = "batch", ARGV[2] = now_ms or "" (one clock for the
-- whole batch), then for each request "<nkeys> <cost>" or "<nkeys> <cost>
-- <mode>" followed by its nkeys limits; KEYS holds each request's keys in the
-- same order. Each request is decided alone, in order, exactly as the plain
-- form would decide it; the reply is the concatenation of their 7-integer
-- replies, or of one error in place of the 7 integers for a request that is
-- bad (its limits, cost or keys), or of one negative integer -j for a reply
-- that is the same as request j's (j < this request). A batch whose shape is
-- wrong (a request header, nkeys that do not add up) is refused whole with
-- one error before anything is decided. A whole batch is capped like one
-- call (not at the 32 requests and 32 keys of the other scripts): at most 16
-- limits (nkeys summed over its requests) and 128 units (cost * nkeys,
-- summed); a request that would go over fails alone. ARGV[1] = "batch1" is the same batch of usual requests,
-- each one key taken at cost 1, without headers: ARGV[2 + i] is the limit
-- of KEYS[i].
--
-- Errors: bad arguments or a key this script did not write get one line
-- "ERR luarate: ..." naming the argument or key, and change nothing. Errors
-- Redis raises (OOM, READONLY, NOPERM...) come back with their own code; a
-- call refused for memory (OOM) has changed nothing: every call that adds to
-- a log does so with its first write.
--
-- Examples (10 per second, cost 1; then the same in a batch of two requests,
-- the second with two limits):
--   redis-cli --eval scripts/sliding_window_log.lua rl:{ex}:swl , '10 1000 0'
--   redis-cli --eval scripts/sliding_window_log.lua rl:{ex}:swl rl:{ex}:swl:s rl:{ex}:swl:h , batch '' '1 1' '10 1000 0' '2 1' '10 1000 0' '100 3600000 0'

-- luarate shared: pending (the same in every limiter script)
-- fast's cost c is the number 1 (the usual cost) or a string to check. Its
-- last three arguments, in a batch:
--   pending     each key's state as the batch read it (one MGET: a string,
--               or false for no key or a key of another type, which fast
--               tells apart by writing with SET ... NX) or as fast decided
--               it; requests on one key read and write it there
--   pending_px  the PX of what fast decided over a state and has not written
--               yet: the batch writes it once, before any other path reads
--               keys and at its end
--   limits      the numbers fast read from each limit string, so later
--               requests with that limit skip reading and checking it, then
--               the state and reply the first key without state got at the
--               usual cost, which every such key of that limit gets at the
--               batch's one now
-- Outside a batch all three are nil, and fast reads and writes Redis itself.
-- (They are arguments, not upvalues: a closure without upvalues is cheaper
-- to make.)
-- luarate shared: end

-- fast decides the common call, one limit without a lockout taken (or
-- peeked, cost 0) at now (microseconds; nil = Redis TIME), for the plain
-- form; it is defined before anything else, so the plain call pays for no
-- other function. In a batch it declines (pending is set), so that every
-- request's units count toward the batch's cap in the general path. It
-- returns nil for any argument or state it does not accept: the general path
-- below then decides the same call, and names what is wrong.
local function fast(key, spec, c, now, pending, pending_px)
  local string, redis = string, redis -- (locals are cheaper to read than globals)
  if not pending and #spec <= 36 and (c == 1 or #c <= 10 and string.find(c, '^%d+$')) then
    local rate, period, burst = string.match(spec, '^(%d+) (%d+) (%d+)$')
    local top = redis.pcall('ZRANGE', key, '-2', '-1') -- the newest entry and the marker
    local n, newest, d, j = #top
    if n == 2 then
      newest, d, j = string.match(top[1], '^(%d+):(%d)(%d+)$')
    end
    if rate and (n == 0 and not top.err or top[n] == 'swl3' and (n == 1 or newest and #newest <= 16 and #j == d + 0)) then
      rate, period = rate + 0, period + 0
      burst = burst == '0' and rate or burst + 0 -- (0, the usual burst, = rate: compared, not converted)
      c = c + 0 -- (1, the usual cost, is a number already)
      if rate >= 1 and rate <= 4000 and period >= 1 and period <= 1e12 and (burst == 0 or burst == rate) and c <= rate and c <= 128 then
        if not now then
          local t = redis.call('TIME')
          now = t[1] * 1000000 + t[2]
        end
        local span = period * 1000
        local count, stale = 0, 0 -- entries in the window, and older ones
        if n == 2 then
          local card = redis.call('ZCARD', key) - 1 -- (the marker)
          newest, stale = newest + 0, card
          if newest + span > now then
            -- counted from the oldest end: cheap while the log is small (a listpack)
            stale = redis.call('ZCOUNT', key, '-inf', string.format('%d', now - span))
          end
          count = card - stale
        end
        if count + c > rate then
          -- it fits once the oldest count + c - rate entries in the window have left
          local b = stale + count + c - rate - 1
          local blocking = string.match(redis.call('ZRANGE', key, b, b)[1] or '', '^%d+')
          if blocking then
            return {0, rate, count < rate and rate - count or 0, math.ceil((newest + span - now) / 1000), math.ceil((blocking + span - now) / 1000), 0, 0}
          end
        elseif c == 0 then
          return {1, rate, rate - count, count > 0 and math.ceil((newest + span - now) / 1000) or 0, 0, 0, 0}
        else
          local at, x = now, 1 -- where the new entries go, and the first j
          if newest and newest >= now then
            at, x = newest, j + 1
          end
          local score = string.format('%d', at)
          local args, m = {score, score .. ':11'}, 2 -- the common case: a new time, cost 1
          if x > 1 or c > 1 then
            local ten, digits = 10, 1
            while ten <= x do
              ten, digits = ten * 10, digits + 1
            end
            local prefix = score .. ':' .. digits
            m = 0
            for y = x, x + c - 1 do
              if y == ten then
                ten, digits = ten * 10, digits + 1
                prefix = score .. ':' .. digits
              end
              args[m + 1], args[m + 2], m = score, prefix .. y, m + 2
            end
          end
          if n == 0 then
            args[m + 1], args[m + 2] = '+inf', 'swl3'
          end
          redis.call('ZADD', key, unpack(args)) -- first: refused for memory, it changes nothing
          local reset = math.ceil((at + span - now) / 1000)
          redis.call('PEXPIRE', key, string.format('%d', reset + 1)) -- (+ 1: see TTL under State)
          if stale > 0 then
            redis.call('ZREMRANGEBYRANK', key, 0, (stale < c and stale or c) - 1)
          end
          return {1, rate, rate - count - c, reset, 0, 0, c}
        end
      end
    end
  end
  return nil
end

-- string_state: false, the state is a sorted set, which MGET does not read
-- (a batch's requests take the general path, which reads each key itself).
local string_state = false

-- luarate shared: plain (the same in every limiter script)
-- The plain form of the common call goes to fast first, and the usual call
-- of all, one limit and nothing else, with the fewest checks.
do
  local keys, argv = KEYS, ARGV -- (a local is cheaper to read than a global)
  local nargs, r = #argv, nil
  if nargs == 1 and #keys == 1 then
    r = fast(keys[1], argv[1], 1)
  elseif nargs > 1 and nargs <= 4 and #keys == 1 then
    local how, now_ms = argv[4] or '', argv[3] or ''
    if (how == '' or how == 'take')
      and (now_ms == '' or #now_ms <= 13 and string.find(now_ms, '^%d+$') and now_ms + 0 <= 4e12) then
      r = fast(keys[1], argv[1], argv[2], now_ms ~= '' and now_ms * 1000 or nil)
    end
  end
  if r then
    return r
  end
end
-- luarate shared: end

-- luarate shared: prelude (the same in every limiter script; a test keeps the copies identical)
local function fail(fmt, ...)
  error({luarate = string.format(fmt, ...)}, 0)
end

local function printable(s)
  return (string.gsub(string.sub(s, 1, 40), '[^%w%p ]', '?'))
end

-- int reads ARGV[i] as a plain decimal integer from 0 to max.
local function int(i, name, max)
  local s = ARGV[i]
  if s and #s <= 13 and string.find(s, '^%d+$') then
    local v = s + 0
    if v <= max then
      return v
    end
  end
  fail('ARGV[%d] %s must be an integer from 0 to %.0f, got "%s"', i, name, max, printable(s or '(missing)'))
end

-- limit reads ARGV[i], "rate period_ms burst [lockout_ms]", and returns its
-- four numbers, burst 0 meaning rate and a missing lockout_ms 0.
local function limit(i, max_rate)
  local s = ARGV[i] or '(missing)'
  local r, p, b, space, l = string.match(s, '^(%d+) (%d+) (%d+)( ?)(%d*)$') -- one pattern: lockout_ms optional
  if not r or space ~= '' and l == '' or #r > 10 or #p > 13 or #b > 10 or #l > 13 then
    fail('ARGV[%d] must be a limit "rate period_ms burst" or "rate period_ms burst lockout_ms" in plain digits, got "%s"', i, printable(s))
  end
  r, p, b, l = r + 0, p + 0, b + 0, l == '' and 0 or l + 0
  if r < 1 or r > max_rate then
    fail('ARGV[%d] rate must be from 1 to %.0f, got %.0f', i, max_rate, r)
  elseif p < 1 or p > 1e12 then
    fail('ARGV[%d] period_ms must be from 1 to 1000000000000, got %.0f', i, p)
  elseif b > 1e9 then
    fail('ARGV[%d] burst must be from 0 (= rate) to 1000000000, got %.0f', i, b)
  elseif l > 1e12 then
    fail('ARGV[%d] lockout_ms must be from 0 to 1000000000000, got %.0f', i, l)
  end
  if b == 0 then
    b = r
  end
  return r, p, b, l
end

-- clock returns now in microseconds: ARGV[i] (now_ms) if given, else Redis TIME.
local function clock(i)
  local s = ARGV[i]
  if s == nil or s == '' then
    local t = redis.call('TIME')
    return t[1] * 1000000 + t[2]
  end
  return int(i, 'now_ms', 4e12) * 1000
end

-- get reads a state key: its string, or false when it does not exist.
local function get(k)
  local v = redis.pcall('GET', KEYS[k])
  if type(v) == 'table' then
    if string.find(v.err, '^WRONGTYPE') then
      fail('KEYS[%d] holds a value that is not a string; use another key', k)
    end
    error(v) -- Redis's own error (NOPERM, ...), passed on with its code
  end
  return v
end

-- tighter reports whether reply r reports a tighter limit than best does: a
-- denial beats an admission, then the longer retry_after, then among
-- admissions the fewer remaining.
local function tighter(r, best)
  if best == nil or r[1] ~= best[1] then
    return best == nil or r[1] == 0
  end
  if r[1] == 0 then
    return r[5] > best[5]
  end
  return r[3] < best[3]
end
-- luarate shared: end

-- entry reads a log entry "<us>:<d><j>" of KEYS[k]: its time and its j.
local function entry(k, member)
  local at, d, j = string.match(member or '', '^(%d+):(%d)(%d+)$')
  if not at or #at > 16 or #j ~= d + 0 then
    fail('KEYS[%d] holds a value sliding_window_log v3 did not write; use another key', k)
  end
  return at + 0, j + 0
end

-- load reads limit i of the request whose keys start at KEYS[k] and limits at
-- ARGV[a], and its log as of now: the entries in the window and before it,
-- the newest entry and the lock. stored is the key's ZRANGE -2 -1 when already read.
local function load(k, a, i, cost, now, stored)
  local rate, period, burst, lockout = limit(a + i - 1, 4000)
  if burst ~= rate then
    fail('ARGV[%d] burst must be 0 or equal to rate for sliding_window_log, got %.0f', a + i - 1, burst)
  elseif cost > rate then
    fail('cost %.0f exceeds the capacity of limit %d (rate %.0f)', cost, i, rate)
  end
  local key = KEYS[k + i - 1]
  local top = stored or redis.pcall('ZRANGE', key, '-2', '-1')
  if top.err then
    if string.find(top.err, '^WRONGTYPE') then
      fail('KEYS[%d] holds a value that is not a sorted set; use another key', k + i - 1)
    end
    error(top) -- Redis's own error (NOPERM, ...), passed on with its code
  end
  local lim = {key = key, rate = rate, span = period * 1000, lockout = lockout * 1000, members = #top, count = 0, stale = 0, lock = 0}
  if lim.members > 0 then
    local marker = top[lim.members]
    local lock = string.match(marker, '^swl3 (%d+)$')
    if marker ~= 'swl3' and not (lock and #lock <= 16) then
      fail('KEYS[%d] holds a value sliding_window_log v3 did not write; use another key', k + i - 1)
    end
    lim.marker, lim.lock = marker, lock and lock + 0 or 0
  end
  if lim.members == 2 then
    lim.newest, lim.j = entry(k + i - 1, top[1])
    local card = redis.call('ZCARD', key) - 1 -- (the marker)
    lim.stale = card
    if lim.newest + lim.span > now then
      lim.stale = redis.call('ZCOUNT', key, '-inf', string.format('%d', now - lim.span))
    end
    lim.count = card - lim.stale
  end
  return lim
end

-- entries returns the ZADD arguments for n entries at time at, j from x on.
local function entries(at, x, n)
  local score = string.format('%d', at)
  if x == 1 and n == 1 then
    return {score, score .. ':11'} -- the common case, without a number to format
  end
  local args, m, ten, digits = {}, 0, 10, 1
  while ten <= x do
    ten, digits = ten * 10, digits + 1
  end
  local prefix = score .. ':' .. digits
  for y = x, x + n - 1 do
    if y == ten then
      ten, digits = ten * 10, digits + 1
      prefix = score .. ':' .. digits
    end
    args[m + 1], args[m + 2], m = score, prefix .. y, m + 2
  end
  return args
end

-- what this call has charged so far (a batch adds up its requests)
local units, limits = 0, 0

-- decide answers one request: n limits with keys from KEYS[k] and limits from
-- ARGV[a], taking cost in mode at now (microseconds); stored is KEYS[k]'s
-- ZRANGE -2 -1 when already read. It validates everything before it writes
-- anything, and writes what adds to a log before what frees.
local function decide(k, n, a, cost, how, now, stored)
  for i = 2, n do
    for j = 1, i - 1 do
      if KEYS[k + i - 1] == KEYS[k + j - 1] then
        fail('KEYS[%d] repeats KEYS[%d]; give each limit its own key', k + i - 1, k + j - 1)
      end
    end
  end
  local lims = {load(k, a, 1, cost, now, stored)}
  for i = 2, n do
    lims[i] = load(k, a, i, cost, now)
  end
  if units + cost * n > 128 then
    fail('cost * limits must add up to at most 128 per call (or batch), got %.0f', units + cost * n)
  elseif limits + n > 16 then
    fail('a batch may hold at most 16 limits of sliding_window_log, got %d', limits + n)
  end
  units, limits = units + cost * n, limits + n

  local take = cost -- what every limit is charged
  if how == 'refund' then
    take = 0
  elseif how == 'atmost' and cost > 0 then
    for i = 1, n do
      local lim = lims[i]
      if lim.lock > now then
        take = 0
      elseif lim.rate - lim.count < take then
        take = lim.rate - lim.count
      end
    end
    if take <= 0 then
      take = 1 -- grants nothing: answered as the denied take of one unit
    end
  end

  local reply
  for i = 1, n do
    local lim = lims[i]
    local given, count, newest = 0, lim.count, lim.newest
    if how == 'refund' and count > 0 and cost > 0 then
      given = cost < count and cost or count
      count = count - given
      newest = nil
      if count > 0 then
        newest = entry(k + i - 1, redis.call('ZRANGE', lim.key, -given - 2, -given - 2)[1])
      end
    end
    local reset = count > 0 and math.ceil((newest + lim.span - now) / 1000) or 0
    local fits = count + take <= lim.rate
    local retry = 0
    if not fits then
      -- it fits once the oldest count + take - rate entries in the window
      -- have left (a refund removes the newest: the ranks below stay)
      local rank = lim.stale + count + take - lim.rate - 1
      retry = math.ceil((entry(k + i - 1, redis.call('ZRANGE', lim.key, rank, rank)[1]) + lim.span - now) / 1000)
    end
    local wait = math.ceil((lim.lock - now) / 1000)
    if not fits and take > 0 and lim.lockout > 0 and lim.lock <= now then
      lim.lock, wait = now + lim.lockout, lim.lockout / 1000
      lim.forced = {marker = string.format('swl3 %d', lim.lock), ttl = reset > wait and reset or wait}
    elseif given > 0 then
      lim.forced = {unrank = given, ttl = reset}
      if lim.lock > now then
        lim.forced.ttl = reset > wait and reset or wait
      elseif lim.lock > 0 and reset > 0 then
        lim.forced.marker = 'swl3' -- a lock that has ended
      end
    end
    local r
    if lim.lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      r = {0, lim.rate, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, given}
    elseif fits then
      local at, x = now, 1 -- where new entries go: never before an entry already logged
      if newest and newest >= now then
        at, x = newest, lim.j + 1
      end
      if take > 0 then
        reset = math.ceil((at + lim.span - now) / 1000)
        lim.admitted = {at = at, x = x, ttl = reset}
      end
      r = {1, lim.rate, lim.rate - count - take, reset, 0, 0, given + take}
    else
      r = {0, lim.rate, count < lim.rate and lim.rate - count or 0, reset, retry, 0, given}
    end
    if tighter(r, reply) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then only locks and
  -- refunds are written. Writes that add come first (a call refused for
  -- memory changes nothing), then TTLs, then what frees.
  local admit = reply[1] == 1 and take > 0
  for i = 1, n do
    local lim = lims[i]
    local w = admit and lim.admitted or lim.forced
    lim.plan = w
    if w then
      local add = {}
      if w == lim.admitted then
        add = entries(w.at, w.x, take)
        if lim.members == 0 or lim.lock > 0 then
          w.marker = 'swl3' -- a new log, or a lock that has ended
        end
        w.prune = lim.stale < take and lim.stale or take
      end
      if w.marker then
        local m = #add
        add[m + 1], add[m + 2] = '+inf', w.marker
      end
      if add[1] then
        redis.call('ZADD', lim.key, unpack(add))
      end
    end
  end
  for i = 1, n do
    local w = lims[i].plan
    if w and w.ttl > 0 then
      redis.call('PEXPIRE', lims[i].key, string.format('%d', w.ttl + 1)) -- (+ 1: see TTL under State)
    end
  end
  for i = 1, n do
    local lim = lims[i]
    local w = lim.plan
    if w and w.ttl <= 0 then
      redis.call('UNLINK', lim.key) -- a refund emptied the window: nothing to keep
    elseif w then
      if w.marker and lim.marker and lim.marker ~= w.marker then
        redis.call('ZREM', lim.key, lim.marker)
      end
      if w.unrank then
        redis.call('ZREMRANGEBYRANK', lim.key, -w.unrank - 1, -2)
      end
      if w.prune and w.prune > 0 then
        redis.call('ZREMRANGEBYRANK', lim.key, 0, w.prune - 1)
      end
    end
  end
  return reply
end

-- luarate shared: entry (the same in every limiter script)
-- run answers the plain form, or each request of a batch.
local function run()
  local nkeys, nargs, form = #KEYS, #ARGV, ARGV[1]
  if form ~= 'batch' and form ~= 'batch1' then
    if nkeys == 0 or nkeys > 16 then
      fail('need 1 to 16 keys, one per limit, got %d', nkeys)
    elseif nargs < nkeys or nargs > nkeys + 3 then
      fail('expected %d to %d ARGV (a limit per key, then [cost [now_ms [mode]]]), got %d', nkeys, nkeys + 3, nargs)
    end
    local how = ARGV[nkeys + 3] or ''
    if how ~= '' and how ~= 'take' and how ~= 'atmost' and how ~= 'refund' then
      fail('ARGV[%d] mode must be take, atmost or refund, got "%s"', nkeys + 3, printable(how))
    end
    local cost = nargs == nkeys and 1 or int(nkeys + 1, 'cost', 1e9)
    return decide(1, nkeys, 1, cost, how, clock(nkeys + 2))
  end

  -- a batch: check its shape first, so a refused batch changes nothing.
  -- request reads the request header at ARGV[a]: its nkeys, cost and mode.
  -- (Callers read the usual one, "1 1", without it.)
  local function request(a)
    local h = ARGV[a]
    local n, cost, how = string.match(h, '^(%d+) (%d+)$')
    if not n then
      n, cost, how = string.match(h, '^(%d+) (%d+) (%a+)$')
    end
    if not n or #n > 2 or #cost > 10 or (how and how ~= 'take' and how ~= 'atmost' and how ~= 'refund') then
      fail('ARGV[%d] must be a request "nkeys cost" or "nkeys cost mode", got "%s"', a, printable(h))
    end
    return n + 0, cost, how or ''
  end
  -- In the batch1 form every request is the usual one, one key taken at
  -- cost 1, and has no header: ARGV[2 + i] is the limit of KEYS[i].
  local header = form == 'batch1' and 0 or 1 -- ARGV per request before its limits
  local count, k, a = 0, 1, 3
  if header == 0 then
    count = nkeys
    if nkeys == 0 or nkeys > 32 or nargs ~= nkeys + 2 then
      fail('a batch1 needs 1 to 32 KEYS and ARGV "batch1", now_ms, then a limit per key, got %d KEYS and %d ARGV', nkeys, nargs)
    end
  else
    while a <= nargs do
      count = count + 1
      local n = ARGV[a] == '1 1' and 1 or request(a)
      if n < 1 or n > 16 or k + n - 1 > nkeys or a + n > nargs then
        fail('ARGV[%d] request %d: nkeys must be from 1 to 16, with that many KEYS and limits left, got "%s"', a, count, printable(ARGV[a]))
      end
      k, a = k + n, a + n + 1
    end
    if count == 0 or count > 32 or nkeys > 32 or k <= nkeys then
      fail('a batch needs 1 to 32 requests whose nkeys add up to #KEYS (at most 32), got %d requests for %d of %d keys', count, k - 1, nkeys)
    end
  end
  local now = clock(2)
  local out, o = {}, 0
  local pending, pending_px = {}, {}
  if string_state then -- every key read at once: a string, or false for none or another type
    local got = redis.pcall('MGET', unpack(KEYS))
    if not got.err then -- (a user without +mget: fast reads each key with GET)
      for i = 1, nkeys do
        pending[KEYS[i]] = got[i]
      end
    end
  end
  -- flush writes what fast decided and holds in pending, and returns empty
  -- ones (tables passed, not upvalues: gopher-lua, which tests use, loses an
  -- upvalue's assignments after an error caught by pcall)
  local function flush(pending, pending_px)
    for key, px in pairs(pending_px) do
      redis.call('SET', key, pending[key], 'PX', px)
    end
    return {}, {}
  end
  -- denied[key] is the last denial fast gave on key, {spec, cost, state,
  -- reply}. fast decides by those and the batch's one now alone, and a denial
  -- writes nothing, so the same request on the same state is denied alike
  -- without deciding it again: a flood on one key costs a lookup per request.
  local denied, limits = {}, {}
  -- last is the last reply written out in full, by request last_j; a request
  -- whose reply is the same gets -last_j in its place, one integer for seven
  local last, last_j
  k, a = 1, 2 + header -- a: the request's header (batch1: the ARGV before its limit)
  for j = 1, count do
    local n, cost, how = 1, 1, '' -- (fast takes the usual cost as a number)
    if header == 1 and ARGV[a] ~= '1 1' then
      n, cost, how = request(a)
    end
    local ok, r = true, nil
    if n == 1 and (how == '' or how == 'take') then
      local key, spec = KEYS[k], ARGV[a + 1]
      local state = pending[key]
      local d, lim = denied[key], limits[spec]
      if state == false and cost == 1 and lim and lim.reply then
        -- a new key, as the first new key of this limit in the batch: the
        -- same state and reply (or, NX refusing a key of another type, the
        -- general path)
        if redis.call('SET', key, lim.state, 'PX', lim.px, 'NX') then
          pending[key], r = lim.state, lim.reply
        end
      elseif d and d[3] == state and d[1] == spec and d[2] == cost then
        r = d[4]
      else
        r = fast(key, spec, cost, now, pending, pending_px, limits)
        if r and r[1] == 0 and (state == nil or state == pending[key]) then
          denied[key] = {spec, cost, pending[key], r}
        end
      end
    end
    if not r then
      pending, pending_px = flush(pending, pending_px) -- the general path reads its keys from Redis
      ok, r = pcall(decide, k, n, a + 1, cost + 0, how, now)
    end
    if ok then
      if r == last or last and r[3] == last[3] and r[4] == last[4] and r[1] == last[1] and r[5] == last[5]
        and r[2] == last[2] and r[6] == last[6] and r[7] == last[7] then
        o = o + 1
        out[o] = -last_j -- the same 7 integers as request last_j's reply
      else
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
        o = o + 7
        last, last_j = r, j
      end
    elseif type(r) == 'table' and r.luarate then
      o = o + 1
      out[o] = {err = 'ERR luarate: request ' .. j .. ': ' .. r.luarate}
    else
      error(r, 0) -- Redis's own error fails the whole batch
    end
    k, a = k + n, a + n + header
  end
  flush(pending, pending_px)
  return out
end

local ok, res = pcall(run)
if ok then
  return res
elseif type(res) == 'table' and res.luarate then
  return redis.error_reply('ERR luarate: ' .. res.luarate)
elseif type(res) == 'table' and res.err then
  return res -- Redis's own error, with its code
elseif type(res) == 'string' and string.find(res, '^%u+ ') then
  return redis.error_reply(res) -- the same, as Redis 7.0's redis.call raises it: its text
end
return redis.error_reply('ERR luarate: ' .. tostring(res))
-- luarate shared: end
