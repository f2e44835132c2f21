-- luarate: fixed_window v1
--
-- Fixed window counter. Time is cut into windows of `period_ms`, aligned to the
-- Unix epoch, so every key's window starts and resets at the same instant. Each
-- window admits up to `rate` cost. Cheapest algorithm there is, exact within a
-- window, but a client can spend `rate` just before a boundary and `rate` again
-- just after it: up to twice the rate within one period.
--
-- State: a string "<count> <window_start_ms>". TTL = until the window ends.
-- Versioned by key: callers put the script version in their keys (the Go
-- client's keys end in ":fw1:<period_ms>").
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e9, cost admitted per window
--   period_ms  integer 1..1e12, window length
--   burst      integer 0 or equal to rate (a window has no separate burst)
-- then:
--   cost       integer 0..rate of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the rate of the reported limit
--   remaining       cost still admitted in the current window
--   reset_after_ms  ms until the current window ends
--   retry_after_ms  ms until this request would be admitted; 0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, cost 1):
--   redis-cli --eval scripts/fixed_window.lua rl:{user42} , 10 1000 0 1

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
      fail('ARGV[%d] burst must be 0 or equal to rate for fixed_window, got %.0f', a + 3, burst)
    end
    if cost > rate then
      fail('ARGV[%d] cost %.0f exceeds the capacity of limit %d (rate %.0f)', 3 * n + 1, cost, i, rate)
    end

    local stored = redis.pcall('GET', KEYS[i])
    if type(stored) == 'table' then
      fail('KEYS[%d] holds a value that is not a string; use another key', i)
    end
    local count, start = 0, now - now % period
    if stored then
      local c, s = string.match(stored, '^(%d+) (%d+)$')
      c, s = tonumber(c), tonumber(s)
      if not c or c > 1e9 or s > 4e12 then
        fail('KEYS[%d] holds a value fixed_window v1 did not write; use another key', i)
      end
      if s >= start then
        -- this window, or a later one if the clock went back: keep counting there
        count, start = c, s
      end
    end

    local reset = start + period - now
    local r
    if count + cost <= rate then
      count = count + cost
      r = {1, rate, rate - count, reset, 0, 0}
      writes[i] = {string.format('%d %d', count, start), reset}
    else
      r = {0, rate, math.max(rate - count, 0), reset, reset, 0}
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
return redis.error_reply('ERR luarate: fixed_window failed: ' .. tostring(res))
