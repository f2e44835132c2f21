-- luarate: sliding_window_log v1
--
-- Sliding window log. Every admitted unit of cost is one entry in a sorted set,
-- scored by its time; a request of `cost` is allowed when the entries of the
-- last `period_ms` plus `cost` are at most `rate`. Exact: over ANY span of
-- `period_ms` it never admits more than `rate`, with no boundary bursts.
-- The price is memory: O(rate) entries per key (measured on Redis 7.0: about
-- 36 bytes each up to 128 entries, about 118 beyond), and O(cost + log rate)
-- time per request. Use it for small rates where exactness matters; rate is
-- capped at 1e6.
--
-- Window: an entry at time e counts while now < e + period_ms, so waiting
-- retry_after_ms (the moment the blocking entry leaves) admits exactly then.
-- Entries are scored in Unix microseconds (Redis TIME, or now_ms * 1000).
-- Members are "<score>:<j>", j = 1, 2, ... among the entries of one score, so
-- two requests in the same microsecond, or a cost of n, are distinct entries.
-- A clock that goes back never mints capacity: entries are never placed
-- before the newest one already in the log, and that newest one still counts.
--
-- State: a sorted set per key. Entries that left the window are removed on
-- every admission (a denied request writes nothing). TTL = until the newest
-- entry leaves the window. Versioned by key: callers put the script version in
-- their keys (the Go client's keys end in ":swl1:<period_ms>").
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e6, cost admitted in any window of period_ms
--   period_ms  integer 1..1e12, window length
--   burst      integer 0 or equal to rate (the window has no separate burst)
-- then:
--   cost       integer 0..rate of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the rate of the reported limit
--   remaining       cost still admitted now
--   reset_after_ms  ms until the log is empty (back to full)
--   retry_after_ms  ms until this request would be admitted; 0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, cost 1):
--   redis-cli --eval scripts/sliding_window_log.lua rl:{user42}:swl , 10 1000 0 1

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

-- entry_time reads the score out of a member this script wrote.
local function entry_time(i, member)
  local ts = member and string.match(member, '^(%d+):%d+$')
  ts = ts and tonumber(ts) -- gopher-lua's tonumber(nil) raises
  if not ts then
    fail('KEYS[%d] holds a value sliding_window_log v1 did not write; use another key', i)
  end
  return ts
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
    local rate = int(a + 1, 'rate', 1, 1e6)
    local period = int(a + 2, 'period_ms', 1, 1e12)
    local burst = int(a + 3, 'burst', 0, 1e9)
    if burst ~= 0 and burst ~= rate then
      fail('ARGV[%d] burst must be 0 or equal to rate for sliding_window_log, got %.0f', a + 3, burst)
    end
    if cost > rate then
      fail('ARGV[%d] cost %.0f exceeds the capacity of limit %d (rate %.0f)', 3 * n + 1, cost, i, rate)
    end

    local span = period * 1000
    local after = '(' .. string.format('%d', now - span) -- entries still in the window
    -- the newest entry, read first: it checks the key's type and format
    local last = redis.pcall('ZRANGE', KEYS[i], -1, -1)
    if last.err then
      fail('KEYS[%d] holds a value that is not a sorted set; use another key', i)
    end
    local count, newest, at = 0, nil, now -- at: where new entries go
    if last[1] then
      newest = entry_time(i, last[1])
      count = redis.call('ZCOUNT', KEYS[i], after, '+inf')
      if newest > now then
        at = newest -- never before an entry already logged
      end
    end

    local r
    if count + cost <= rate then
      local reset = 0
      if cost > 0 then
        reset = math.ceil((at + span - now) / 1000)
      elseif count > 0 then
        reset = math.ceil((newest + span - now) / 1000)
      end
      r = {1, rate, rate - count - cost, reset, 0, 0}
      writes[i] = {at, now - span, reset}
    else
      -- the request fits once the oldest (count + cost - rate) entries have left
      local blocking = redis.call('ZRANGEBYSCORE', KEYS[i], after, '+inf', 'LIMIT', count + cost - rate - 1, 1)[1]
      local remaining = rate - count
      if remaining < 0 then
        remaining = 0 -- the limit was lowered since these entries were written
      end
      r = {0, rate, remaining, math.ceil((newest + span - now) / 1000),
        math.ceil((entry_time(i, blocking) + span - now) / 1000), 0}
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
      local ts, cut, reset = writes[i][1], writes[i][2], writes[i][3]
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', cut))
      local score = string.format('%d', ts)
      local j = redis.call('ZCOUNT', KEYS[i], score, score)
      local args = {}
      for k = 1, cost do
        args[#args + 1] = score
        args[#args + 1] = string.format('%s:%d', score, j + k)
        if #args == 1000 or k == cost then
          redis.call('ZADD', KEYS[i], unpack(args))
          args = {}
        end
      end
      redis.call('PEXPIRE', KEYS[i], reset)
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
return redis.error_reply('ERR luarate: sliding_window_log failed: ' .. tostring(res))
