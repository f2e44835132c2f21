-- luarate: sliding_window_counter v1
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
-- State: a string "<current> <window_start_ms> <previous>". TTL = until the end
-- of the next window, when the current count stops mattering. Versioned by
-- key: callers put the script version in their keys (the Go client's keys end
-- in ":swc1:<period_ms>").
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
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the rate of the reported limit
--   remaining       rate minus the rounded estimate, after this request
--   reset_after_ms  ms until the estimate is back to 0 (both windows forgotten)
--   retry_after_ms  ms until this request would be admitted; 0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, cost 1):
--   redis-cli --eval scripts/sliding_window_counter.lua rl:{user42}:swc , 10 1000 0 1

local function fail(fmt, ...)
  error({luarate = string.format(fmt, ...)}, 0)
end

-- int reads ARGV[i] as a plain decimal integer in [min, max].
local function int(i, name, min, max)
  local s = ARGV[i]
  if s == nil then
    fail('ARGV[%d] %s is missing', i, name)
  end
  local v = #s <= 16 and string.find(s, '^%d+$') and tonumber(s)
  if not v or v < min or v > max then
    fail('ARGV[%d] %s must be an integer from %.0f to %.0f, got "%s"',
      i, name, min, max, string.gsub(string.sub(s, 1, 40), '[^%w%p ]', '?'))
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

local function run()
  local n = #KEYS
  if n == 0 then
    fail('need at least one key')
  end
  if #ARGV ~= 3 * n + 1 and #ARGV ~= 3 * n + 2 then
    fail('expected %d ARGV (rate, period_ms, burst per key, then cost [now_ms]), got %d',
      3 * n + 1, #ARGV)
  end
  for i = 2, n do
    for j = 1, i - 1 do
      if KEYS[i] == KEYS[j] then
        fail('KEYS[%d] repeats KEYS[%d]; give each limit its own key', i, j)
      end
    end
  end
  local cost = int(3 * n + 1, 'cost', 0, 1e9)
  local now
  if ARGV[3 * n + 2] == nil or ARGV[3 * n + 2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = int(3 * n + 2, 'now_ms', 0, 4e12)
  end

  local reply
  local writes = {}
  for i = 1, n do
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

    local stored = redis.pcall('GET', KEYS[i])
    if type(stored) == 'table' then
      fail('KEYS[%d] holds a value that is not a string; use another key', i)
    end
    local start = now - now % period
    local at = now -- the instant the estimate is taken at
    local cur, prev = 0, 0
    if stored then
      local c, s, p = string.match(stored, '^(%d+) (%d+) (%d+)$')
      c, s, p = tonumber(c), tonumber(s), tonumber(p)
      if not c or c > 1e9 or s > 4e12 or p > 1e9 then
        fail('KEYS[%d] holds a value sliding_window_counter v1 did not write; use another key', i)
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
    end

    local weighted = ceil_div(prev * (start + period - at), period)
    local reset = 0
    local r
    if cur + weighted + cost <= rate then
      cur = cur + cost
      if cur > 0 then
        reset = start + 2 * period - now
      elseif prev > 0 then
        reset = start + period - now
      end
      r = {1, rate, rate - cur - weighted, reset, 0, 0}
      writes[i] = {string.format('%d %d %d', cur, start, prev), reset}
    else
      if cur > 0 then
        reset = start + 2 * period - now
      else
        reset = start + period - now
      end
      -- first instant t with ceil(prev * (start + period - t) / period) <= room
      local room = rate - cur - cost
      local t
      if room >= 0 then
        t = start + period - floor_div(room * period, prev)
      else
        -- not in this window: in the next, the current count is the previous one
        t = start + 2 * period - floor_div((rate - cost) * period, cur)
        if t < start + period then
          t = start + period
        end
      end
      local remaining = rate - cur - weighted
      if remaining < 0 then
        remaining = 0
      end
      r = {0, rate, remaining, reset, t - now, 0}
    end
    if reply == nil
      or (r[1] == 0 and (reply[1] == 1 or r[5] > reply[5]))
      or (r[1] == reply[1] and r[1] == 1 and r[3] < reply[3]) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then nothing is written
  if reply[1] == 1 and cost > 0 then
    for i = 1, n do
      redis.call('SET', KEYS[i], writes[i][1], 'PX', writes[i][2])
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
