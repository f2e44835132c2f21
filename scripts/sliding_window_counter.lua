-- luarate: sliding_window_counter v2
--
-- Sliding window counter: the two-window estimate. Time is cut into windows of
-- `period_ms` aligned to the Unix epoch, as in fixed_window, and each key counts
-- the current window and remembers the previous one. At `elapsed` ms into the
-- current window the cost of the last period_ms is estimated as
--     current + previous * (period_ms - elapsed) / period_ms
-- i.e. it assumes the previous window's requests were spread evenly over it.
-- A request is allowed when estimate + cost <= rate. O(1) memory and time.
--
-- The approximation: within one aligned window it never admits more than
-- `rate`, and over any span of period_ms it admits at most
--     rate + previous * elapsed / period_ms   (< 2 * rate)
-- where the worst case is a previous window whose requests all came at its very
-- end, followed by a current window that is spent as fast as the estimate allows.
-- For traffic spread evenly it is close to exact; it never has fixed_window's
-- full 2x burst at a boundary instant.
--
-- Rounding: the weighted previous count is rounded UP,
--     weighted = ceil(previous * (period_ms - elapsed) / period_ms),
-- computed exactly in integers (rate * period_ms <= 9e15 keeps every product
-- below 2^53), so the script never admits past its own real-valued estimate.
-- remaining = rate - current - weighted; retry_after_ms is the first whole ms
-- at which this rounded estimate admits the request.
--
-- Time going back: a window older than the newest one seen is treated as the
-- first instant of that newest window (where its estimate is highest), so a
-- clock that goes back never mints capacity.
--
-- Modes: take (all of cost or nothing), atmost (as much of cost as the
-- estimate still admits), refund (give cost back to the current window's count,
-- then to the previous window's, never below 0). Lockout: a denied take (or an
-- atmost that grants nothing) on a limit with lockout_ms > 0 locks that key
-- until now + lockout_ms: every take and atmost is denied until then, whatever
-- the estimate. A request denied while locked does not extend the lock; a
-- refund does not lift it (a lock punishes what already happened; if a success
-- could lift it, one valid account would clear a lock at will); deleting the
-- key (Reset) does.
--
-- State: a string "<current> <window_start_ms> <previous>", with
-- " <locked_until_ms>" appended while a lock may matter. TTL = until the end
-- of the next window, when the current count stops mattering, or the lock if
-- later. Versioned by key: callers put the script version in their keys (the
-- Go client's keys end in ":swc2:<period_ms>"); v1 keys are not read.
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e9, cost admitted per window
--   period_ms  integer 1..1e12, window length, with rate * period_ms <= 9e15
--   burst      integer 0 or equal to rate (a window has no separate burst)
-- then:
--   cost       integer 0..rate of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--   mode       optional "take" (default; missing or ""), "atmost" or "refund"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or over a
--                   lowered limit), else 1
--   limit           the rate of the reported limit
--   remaining       rate minus the rounded estimate, after this request; 0
--                   while locked
--   reset_after_ms  ms until the estimate is back to 0 (both windows
--                   forgotten), or the lock ends, if later
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   unit would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         units this call took (take: cost or 0; atmost: 0..cost),
--                   or gave back (refund, to the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, cost 1):
--   redis-cli --eval scripts/sliding_window_counter.lua rl:{user42}:swc , 10 1000 0 1


local function fail(fmt, ...)
  error({luarate = string.format(fmt, ...)}, 0)
end

local function printable(s)
  return (string.gsub(string.sub(s, 1, 40), '[^%w%p ]', '?'))
end

-- int reads ARGV[i] as a plain decimal integer in [min, max].
local function int(i, name, min, max)
  local s = ARGV[i]
  if s == nil then
    fail('ARGV[%d] %s is missing', i, name)
  end
  local v = #s <= 16 and string.find(s, '^%d+$') and tonumber(s)
  if not v or v < min or v > max then
    fail('ARGV[%d] %s must be an integer from %.0f to %.0f, got "%s"', i, name, min, max, printable(s))
  end
  return v
end

-- floor_div is floor(a / b) for integers 0 <= a, b < 2^53, exact: the float
-- quotient may be off by one near an integer, so it is corrected.
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  return floor_div(a + b - 1, b)
end

-- load validates limit i of n and reads its state as of now
-- (a function of its own rather than a closure in run: cheaper per call)
local function load(i, n, cost, now, lockouts, cache)
  local a = 3 * (i - 1)
  local rate = int(a + 1, 'rate', 1, 1e9)
  local period = int(a + 2, 'period_ms', 1, 1e12)
  local burst = int(a + 3, 'burst', 0, 1e9)
  if burst ~= 0 and burst ~= rate then
    fail('ARGV[%d] burst must be 0 or equal to rate for sliding_window_counter, got %.0f', a + 3, burst)
  end
  if rate * period > 9e15 then
    fail('limit %d: rate * period_ms must be at most 9e15', i)
  end
  if cost > rate then
    fail('ARGV[%d] cost %.0f exceeds the capacity of limit %d (rate %.0f)', 3 * n + 1, cost, i, rate)
  end
  local lockout = lockouts and int(3 * n + 3 + i, 'lockout_ms', 0, 1e12) or 0

  local stored = cache and cache[i]
  if stored == nil then
    stored = redis.pcall('GET', KEYS[i])
    if cache then
      cache[i] = stored
    end
  end
  if type(stored) == 'table' then
    fail('KEYS[%d] holds a value that is not a string; use another key', i)
  end
  local start = now - now % period
  local at = now -- the instant the estimate is taken at
  local cur, prev, lock = 0, 0, 0
  if stored then
    -- (no "x = a and b" reassignments: gopher-lua, in miniredis, may keep x)
    local mc, ms, mp, ml = string.match(stored, '^(%d+) (%d+) (%d+)$')
    if not mc then
      mc, ms, mp, ml = string.match(stored, '^(%d+) (%d+) (%d+) (%d+)$')
    end
    local c, s, p, l = tonumber(mc or ''), tonumber(ms or ''), tonumber(mp or ''), tonumber(ml or '0')
    if not c or c > 1e9 or s > 4e12 or p > 1e9 or l > 5e12 then
      fail('KEYS[%d] holds a value sliding_window_counter v2 did not write; use another key', i)
    end
    if s >= start then
      -- this window, or a later one if the clock went back: use its start
      cur, prev = c, p
      if s > start then
        start, at = s, s
      end
    elseif s + period == start then
      prev = c
    end
    lock = l
  end
  return rate, period, lockout, start, at, cur, prev, lock
end

local function run()
  local n = #KEYS
  if n == 0 then
    fail('need at least one key')
  end
  local nargs = #ARGV
  if nargs ~= 3 * n + 1 and nargs ~= 3 * n + 2 and nargs ~= 3 * n + 3 and nargs ~= 4 * n + 3 then
    fail('expected %d, %d, %d or %d ARGV (rate, period_ms, burst per key, then cost [now_ms [mode [lockout_ms per key]]]), got %d',
      3 * n + 1, 3 * n + 2, 3 * n + 3, 4 * n + 3, nargs)
  end
  for i = 2, n do
    for j = 1, i - 1 do
      if KEYS[i] == KEYS[j] then
        fail('KEYS[%d] repeats KEYS[%d]; give each limit its own key', i, j)
      end
    end
  end
  local cost = int(3 * n + 1, 'cost', 0, 1e9)
  local mode = ARGV[3 * n + 3]
  local atmost, refund = mode == 'atmost', mode == 'refund'
  if not (atmost or refund or mode == nil or mode == '' or mode == 'take') then
    fail('ARGV[%d] mode must be take, atmost or refund, got "%s"', 3 * n + 3, printable(mode))
  end
  local lockouts = nargs == 4 * n + 3
  local now
  if ARGV[3 * n + 2] == nil or ARGV[3 * n + 2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = int(3 * n + 2, 'now_ms', 0, 4e12)
  end

  local cache -- atmost: the first pass's GET replies, so each key is read once
  local take = cost -- what every limit is charged
  if refund then
    take = 0
  elseif atmost and cost > 0 then
    cache = {}
    for i = 1, n do
      local rate, period, _, start, at, cur, prev, lock = load(i, n, cost, now, lockouts, cache)
      local left = rate - cur - ceil_div(prev * (start + period - at), period)
      if lock > now then
        take = 0
      elseif left < take then
        take = left
      end
    end
    if take <= 0 then
      take = 1 -- grants nothing: answered as the denied take of one unit
    end
  end

  local reply
  local writes, forced = {}, nil -- admissions; locks and refunds
  for i = 1, n do
    local rate, period, lockout, start, at, cur, prev, lock = load(i, n, cost, now, lockouts, cache)
    local given = 0
    if refund and cur + prev > 0 then
      given = cost
      if cur < cost then
        given = cur
      end
      cur = cur - given
      local more = cost - given
      if more > prev then
        more = prev
      end
      prev = prev - more
      given = given + more
    end
    local weighted = ceil_div(prev * (start + period - at), period)
    -- reset: until the estimate is 0 again
    local reset = 0
    if cur > 0 then
      reset = start + 2 * period - now
    elseif prev > 0 then
      reset = start + period - now
    end
    local fits = cur + weighted + take <= rate
    local retry = 0
    if not fits then
      if cur == 0 then
        reset = start + period - now
      end
      -- first instant t with ceil(prev * (start + period - t) / period) <= room
      local room = rate - cur - take
      local t
      if room >= 0 then
        t = start + period - floor_div(room * period, prev)
      else
        -- not in this window: in the next, the current count is the previous one
        t = start + 2 * period - floor_div((rate - take) * period, cur)
        if t < start + period then
          t = start + period
        end
      end
      retry = t - now
    end
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {string.format('%d %d %d %d', cur, start, prev, lock), reset > lockout and reset or lockout}
    elseif given > 0 then
      forced = forced or {}
      if lock > now then
        forced[i] = {string.format('%d %d %d %d', cur, start, prev, lock), reset > lock - now and reset or lock - now}
      elseif reset > 0 then
        forced[i] = {string.format('%d %d %d', cur, start, prev), reset}
      else
        forced[i] = {false} -- both windows empty: no state needed
      end
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = lock - now
      r = {0, rate, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, given}
    elseif fits then
      cur = cur + take
      if cur > 0 then
        reset = start + 2 * period - now
      end
      r = {1, rate, rate - cur - weighted, reset, 0, 0, given + take}
      writes[i] = {string.format('%d %d %d', cur, start, prev), reset}
    else
      local remaining = rate - cur - weighted
      if remaining < 0 then
        remaining = 0
      end
      r = {0, rate, remaining, reset, retry, 0, given}
    end
    if reply == nil
      or (r[1] == 0 and (reply[1] == 1 or r[5] > reply[5]))
      or (r[1] == reply[1] and r[1] == 1 and r[3] < reply[3]) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then only locks are written
  if reply[1] == 1 and take > 0 then
    for i = 1, n do
      redis.call('SET', KEYS[i], writes[i][1], 'PX', writes[i][2])
    end
  elseif forced then
    for i = 1, n do
      local w = forced[i]
      if w and w[1] then
        redis.call('SET', KEYS[i], w[1], 'PX', w[2])
      elseif w then
        redis.call('DEL', KEYS[i])
      end
    end
  end
  return reply
end

local ok, res = pcall(run)
if ok then
  return res
end
if type(res) == 'table' and res.luarate then
  return redis.error_reply('ERR luarate: ' .. res.luarate)
end
return redis.error_reply('ERR luarate: sliding_window_counter failed: ' .. tostring(res))
