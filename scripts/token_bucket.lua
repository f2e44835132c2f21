-- luarate: token_bucket v1
--
-- Token bucket. Each key holds up to `burst` tokens and gains `rate` tokens per
-- `period_ms`, continuously. A request of `cost` tokens is allowed when the
-- bucket holds that many, and takes them. Allows bursts up to `burst`, then a
-- steady `rate`. Admits the same traffic as GCRA; the state is the level
-- itself, which some find easier to inspect.
--
-- Rounding: none. The level is kept in integer units of 1/u token, where
-- u = period_ms / gcd(rate, period_ms), so every ms adds exactly rate/gcd units
-- and no fraction of a token is ever lost or minted. Time is whole ms.
--
-- State: a string "<units> <updated_ms>". TTL = time until full again (a full
-- bucket needs no state). Versioned by key: callers put the script version in
-- their keys (the Go client's keys end in ":tb1:<period_ms>").
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e9, tokens added per period
--   period_ms  integer 1..1e12
--   burst      integer 0..1e9, bucket capacity; 0 = rate
-- then:
--   cost       integer 0..burst of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the capacity (burst) of the reported limit
--   remaining       whole tokens left after this request
--   reset_after_ms  ms until the reported bucket is full again
--   retry_after_ms  ms until this request would be admitted; 0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, bucket of 10, cost 1):
--   redis-cli --eval scripts/token_bucket.lua rl:{user42} , 10 1000 10 1

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

local function gcd(a, b)
  while b > 0 do
    local r = a % b -- not "a, b = b, a % b": gopher-lua (miniredis) assigns in order
    a = b
    b = r
  end
  return a
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
    if burst == 0 then
      burst = rate
    end
    local g = gcd(rate, period)
    local unit = period / g -- units per token
    local fill = rate / g   -- units added per ms
    local capacity = burst * unit
    if capacity > 4e15 then
      fail('limit %d: burst * period_ms / gcd(rate, period_ms) must be at most 4e15', i)
    end
    if cost > burst then
      fail('ARGV[%d] cost %.0f exceeds the capacity of limit %d (burst %.0f)', 3 * n + 1, cost, i, burst)
    end

    local stored = redis.pcall('GET', KEYS[i])
    if type(stored) == 'table' then
      fail('KEYS[%d] holds a value that is not a string; use another key', i)
    end
    local level, updated = capacity, now
    if stored then
      local l, u = string.match(stored, '^(%d+) (%d+)$')
      level, updated = tonumber(l), tonumber(u)
      if not level or level > 4e15 or updated > 4e12 then
        fail('KEYS[%d] holds a value token_bucket v1 did not write; use another key', i)
      end
      if now > updated then
        -- refill; compare before multiplying so huge gaps stay exact
        if now - updated >= (capacity - level) / fill then
          level = capacity
        else
          level = level + (now - updated) * fill
        end
        updated = now
      end
      if level > capacity then
        level = capacity -- the limit was lowered since this state was written
      end
    end

    -- updated > now when the clock went back: refill resumes from updated
    local lag = updated - now
    local need = cost * unit
    local r
    if level >= need then
      level = level - need
      r = {1, burst, math.floor(level / unit), lag + math.ceil((capacity - level) / fill), 0, 0}
      writes[i] = {string.format('%d %d', level, updated), r[4]}
    else
      r = {0, burst, math.floor(level / unit), lag + math.ceil((capacity - level) / fill),
        lag + math.ceil((need - level) / fill), 0}
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
return redis.error_reply('ERR luarate: token_bucket failed: ' .. tostring(res))
