-- luarate: token_bucket v2
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
-- Modes: take (all of cost or nothing), atmost (as many whole tokens of cost as
-- the bucket holds), refund (put cost tokens back, never beyond burst; granted
-- is what went back, rounded up to whole tokens). Lockout: a denied take (or an
-- atmost that grants nothing) on a limit with lockout_ms > 0 locks that key
-- until now + lockout_ms: every take and atmost is denied until then, however
-- full the bucket. A request denied while locked does not extend the lock; a
-- refund does not lift it (a lock punishes what already happened; if a success
-- could lift it, one valid account would clear a lock at will); deleting the
-- key (Reset) does.
--
-- State: a string "<units> <updated_ms>", or "<units> <updated_ms>
-- <locked_until_ms>" while a lock may matter. TTL = time until full again (a
-- full bucket needs no state), or the lock if later. Versioned by key: callers
-- put the script version in their keys (the Go client's keys end in
-- ":tb2:<period_ms>"); v1 keys are not read.
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
--   mode       optional "take" (default; missing or ""), "atmost" or "refund"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked, else 1
--   limit           the capacity (burst) of the reported limit
--   remaining       whole tokens left after this request; 0 while locked
--   reset_after_ms  ms until the reported bucket is full again (or the lock
--                   ends, if later)
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   token would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         tokens this call took (take: cost or 0; atmost: 0..cost),
--                   or gave back (refund, to the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, bucket of 10, cost 1):
--   redis-cli --eval scripts/token_bucket.lua rl:{user42} , 10 1000 10 1

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

local function gcd(a, b)
  while b > 0 do
    local r = a % b -- not "a, b = b, a % b": gopher-lua (miniredis) assigns in order
    a = b
    b = r
  end
  return a
end

-- load validates limit i of n and reads its state, refilled up to now
-- (a function of its own rather than a closure in run: cheaper per call)
local function load(i, n, cost, now, lockouts, cache)
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
  local level, updated, lock = capacity, now, 0
  if stored then
    local l, u, k = string.match(stored, '^(%d+) (%d+)$')
    if not l then
      l, u, k = string.match(stored, '^(%d+) (%d+) (%d+)$')
    end
    -- (no "x = a and b" reassignments: gopher-lua, in miniredis, may keep x)
    level, updated, lock = tonumber(l or ''), tonumber(u or ''), tonumber(k or '0')
    if not level or level > 4e15 or updated > 4e12 or lock > 5e12 then
      fail('KEYS[%d] holds a value token_bucket v2 did not write; use another key', i)
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
  return burst, unit, fill, capacity, lockout, level, updated, lock
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
  local take = cost -- tokens every limit is charged
  if refund then
    take = 0
  elseif atmost and cost > 0 then
    cache = {}
    for i = 1, n do
      local _, unit, _, _, _, level, _, lock = load(i, n, cost, now, lockouts, cache)
      if lock > now then
        take = 0
      elseif level < take * unit then
        take = math.floor(level / unit)
      end
    end
    if take == 0 then
      take = 1 -- grants nothing: answered as the denied take of one token
    end
  end

  local reply
  local writes, forced = {}, nil -- admissions; locks and refunds
  for i = 1, n do
    local burst, unit, fill, capacity, lockout, level, updated, lock = load(i, n, cost, now, lockouts, cache)
    local given = 0
    if refund and level < capacity then
      given = capacity - level
      if given > cost * unit then
        given = cost * unit
      end
      level = level + given
      given = math.ceil(given / unit)
    end
    -- updated > now when the clock went back: refill resumes from updated
    local lag = updated - now
    local need = take * unit
    local reset = lag + math.ceil((capacity - level) / fill)
    local fits = level >= need
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {string.format('%d %d %d', level, updated, lock), reset > lockout and reset or lockout}
    elseif given > 0 then
      forced = forced or {}
      if lock > now then
        forced[i] = {string.format('%d %d %d', level, updated, lock), reset > lock - now and reset or lock - now}
      elseif reset > 0 then
        forced[i] = {string.format('%d %d', level, updated), reset}
      else
        forced[i] = {false} -- full as of now: no state needed
      end
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = lock - now
      local retry = fits and 0 or lag + math.ceil((need - level) / fill)
      r = {0, burst, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, given}
    elseif fits then
      level = level - need
      reset = lag + math.ceil((capacity - level) / fill)
      r = {1, burst, math.floor(level / unit), reset, 0, 0, given + take}
      writes[i] = {string.format('%d %d', level, updated), reset}
    else
      r = {0, burst, math.floor(level / unit), reset, lag + math.ceil((need - level) / fill), 0, given}
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
return redis.error_reply('ERR luarate: token_bucket failed: ' .. tostring(res))
