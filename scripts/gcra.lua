-- luarate: gcra v1
--
-- GCRA, the generic cell rate algorithm (a token bucket kept as one timestamp).
-- Requests are spaced one emission interval T = period_ms / rate apart; up to
-- `burst` of them may arrive early. The state is the theoretical arrival time
-- (TAT): when the key would be back to empty if nothing else arrived. A request
-- of `cost` is allowed when TAT + cost*T - burst*T <= now. Smooth like a token
-- bucket, one number of state, O(1) time.
--
-- Rounding: T is rounded UP to whole microseconds, so a rate that does not
-- divide its period (7 per 3 s) admits a hair less than asked, never more.
--
-- State: a string holding TAT in Unix microseconds. TTL = TAT - now, the time
-- until the key would be empty anyway. Versioned by key: callers put the script
-- version in their keys (the Go client's keys end in ":g1:<period_ms>").
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e9, requests per period
--   period_ms  integer 1..1e12, with rate <= 1000 * period_ms
--   burst      integer 0..1e9, how many may come at once; 0 = rate
-- then:
--   cost       integer 0..burst of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the capacity (burst) of the reported limit
--   remaining       requests of cost 1 that would still be admitted now
--   reset_after_ms  ms until the reported limit is back to full
--   retry_after_ms  ms until this request would be admitted; 0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, bursts of 10, cost 1):
--   redis-cli --eval scripts/gcra.lua rl:{user42} , 10 1000 10 1

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
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = int(3 * n + 2, 'now_ms', 0, 4e12) * 1000
  end

  local reply
  local writes = {}
  for i = 1, n do
    local a = 3 * (i - 1)
    local rate = int(a + 1, 'rate', 1, 1e9)
    local period = int(a + 2, 'period_ms', 1, 1e12)
    local burst = int(a + 3, 'burst', 0, 1e9)
    if burst == 0 then
      burst = rate
    end
    if rate > period * 1000 then
      fail('ARGV[%d] rate %.0f is over 1000 per ms of period_ms %.0f', a + 1, rate, period)
    end
    local interval = math.ceil(period * 1000 / rate) -- T, in microseconds
    local tolerance = burst * interval
    if tolerance > 4e15 then
      fail('limit %d: burst * period_ms / rate must be at most 4e12 ms', i)
    end
    if cost > burst then
      fail('ARGV[%d] cost %.0f exceeds the capacity of limit %d (burst %.0f)', 3 * n + 1, cost, i, burst)
    end

    local stored = redis.pcall('GET', KEYS[i])
    if type(stored) == 'table' then
      fail('KEYS[%d] holds a value that is not a string; use another key', i)
    end
    local tat = now
    if stored then
      local t = #stored <= 16 and string.find(stored, '^%d+$') and tonumber(stored)
      if not t then
        fail('KEYS[%d] holds a value gcra v1 did not write; use another key', i)
      end
      if t > tat then
        tat = t
      end
    end

    local new_tat = tat + cost * interval
    local allow_at = new_tat - tolerance
    local r
    if now >= allow_at then
      r = {1, burst, math.floor((now - allow_at) / interval), math.ceil((new_tat - now) / 1000), 0, 0}
      writes[i] = new_tat
    else
      local left = math.floor((now + tolerance - tat) / interval)
      if left < 0 then
        left = 0
      end
      r = {0, burst, left, math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000), 0}
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
      redis.call('SET', KEYS[i], string.format('%d', writes[i]), 'PX', math.ceil((writes[i] - now) / 1000))
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
return redis.error_reply('ERR luarate: gcra failed: ' .. tostring(res))
