-- luarate: leaky_queue v1
--
-- Leaky bucket as a queue (shaping), as nginx limit_req without nodelay.
-- Requests leave the queue at a fixed rate, one every T = period_ms / rate. A
-- request of `cost` takes `cost` places in a queue of `burst` places. When it
-- fits it is admitted with delay_ms, the time until the requests ahead of it
-- have left: the caller must wait that long before it proceeds. A request
-- that would overflow the queue is dropped (denied, nothing written).
--
-- An empty queue admits its first request with delay 0; `burst` requests at
-- one instant get delays 0, T, 2T, ... (burst-1)T. So nginx's "rate=10r/s
-- burst=5" is rate 10, period_ms 1000, burst 6 here (nginx does not count
-- the request that proceeds at once). It admits exactly what leaky_bucket
-- (policing) admits; only when the admitted proceed differs.
--
-- Departures: a request admitted at now behind q queued places leaves at
-- now + q*T exactly; delay_ms is that rounded UP to whole ms, so no request
-- proceeds before its slot, and slots are exactly cost*T apart (two delays
-- told in whole ms may be up to 1 ms closer than that, never earlier than
-- their slots). Rounding: none in the state. The queue is kept in integer
-- units of 1/u of a place, u = period_ms / gcd(rate, period_ms), so every ms
-- drains exactly rate/gcd units. Time is whole ms.
--
-- State: a string "<units> <updated_ms>". TTL = until the queue is empty. A
-- clock that goes back drains nothing until it catches up with updated_ms.
-- Versioned by key: callers put the script version in their keys (the Go
-- client's keys end in ":lq1:<period_ms>").
--
-- KEYS[i]      state key of limit i, i = 1..N. All keys of one call must share
--              a hash slot in Redis Cluster: give them one {hash tag}. Keys
--              must be distinct: two limits cannot share one state.
-- ARGV         for each limit i, three values in the order of KEYS:
--   rate       integer 1..1e9, requests leaving per period
--   period_ms  integer 1..1e12
--   burst      integer 0..1e9, queue places; 0 = rate
-- then:
--   cost       integer 0..burst of every limit; 0 = peek (reads, never writes)
--   now_ms     optional integer 0..4e12, Unix time in ms; missing or "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms}:
--   allowed         1 if the request was admitted (all limits consumed), else 0
--   limit           the queue places (burst) of the reported limit
--   remaining       places of cost 1 still free after this request
--   reset_after_ms  ms until the queue is empty
--   retry_after_ms  ms until this request would fit; 0 when allowed
--   delay_ms        allowed: ms to wait before proceeding (0 = go now); a
--                   peek: the delay a request admitted now would get;
--                   denied: 0
-- With several limits all or none consume, and the reply reports the tightest:
-- the denying limit with the longest retry_after, else the fewest remaining.
-- delay_ms is the longest delay of all limits: the request waits for its slot
-- in every queue. The limit with the longest T always has the longest queue
-- in time (same admissions, bigger steps, same drain of 1 ms per ms), so the
-- departures follow its schedule and are at least every limit's T apart.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (leaves 10 per second, queues 20, cost 1):
--   redis-cli --eval scripts/leaky_queue.lua rl:{user42}:lq , 10 1000 20 1

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
  local delay = 0 -- the longest wait of all limits
  for i = 1, n do
    local a = 3 * (i - 1)
    local rate = int(a + 1, 'rate', 1, 1e9)
    local period = int(a + 2, 'period_ms', 1, 1e12)
    local burst = int(a + 3, 'burst', 0, 1e9)
    if burst == 0 then
      burst = rate
    end
    local g = gcd(rate, period)
    local unit = period / g -- units per request
    local drain = rate / g  -- units leaked per ms
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
    local level, updated = 0, now
    if stored then
      local l, u = string.match(stored, '^(%d+) (%d+)$')
      level, updated = tonumber(l), tonumber(u)
      if not level or level > 4e15 or updated > 4e12 then
        fail('KEYS[%d] holds a value leaky_queue v1 did not write; use another key', i)
      end
      if now > updated then
        -- leak; compare before multiplying so huge gaps stay exact
        if now - updated >= level / drain then
          level = 0
        else
          level = level - (now - updated) * drain
        end
        updated = now
      end
    end

    -- updated > now when the clock went back: leaking resumes from updated
    local lag = updated - now
    local need = cost * unit
    local free = capacity - level
    if free < 0 then
      free = 0 -- the limit was lowered since this state was written
    end
    local r
    if need <= free then
      -- the request's first place leaves once the queue ahead of it has
      local wait = lag + math.ceil(level / drain)
      if wait > delay then
        delay = wait
      end
      level = level + need
      free = free - need
      r = {1, burst, math.floor(free / unit), lag + math.ceil(level / drain), 0, 0}
      writes[i] = {string.format('%d %d', level, updated), r[4]}
    else
      r = {0, burst, math.floor(free / unit), lag + math.ceil(level / drain),
        lag + math.ceil((level + need - capacity) / drain), 0}
    end
    if reply == nil
      or (r[1] == 0 and (reply[1] == 1 or r[5] > reply[5]))
      or (r[1] == reply[1] and r[1] == 1 and r[3] < reply[3]) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then nothing is written
  if reply[1] == 1 then
    reply[6] = delay
    if cost > 0 then
      for i = 1, n do
        redis.call('SET', KEYS[i], writes[i][1], 'PX', writes[i][2])
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
return redis.error_reply('ERR luarate: leaky_queue failed: ' .. tostring(res))
