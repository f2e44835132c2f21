-- luarate: gcra v2
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
-- Modes: take (all of cost or nothing), atmost (as many of cost as fit now),
-- refund (move TAT back by cost * T, never before now: the key is never more
-- than full; granted is what went back, rounded up to whole requests).
-- Lockout: a denied take (or an atmost that grants nothing) on a limit with
-- lockout_ms > 0 locks that key until now + lockout_ms: every take and atmost
-- is denied until then, whatever TAT says. A request denied while locked does
-- not extend the lock; a refund does not lift it (a lock punishes what already
-- happened; if a success could lift it, one valid account would clear a lock
-- at will); deleting the key (Reset) does.
--
-- State: a string holding TAT in Unix microseconds, or "<TAT> <locked_until_us>"
-- while a lock may matter. TTL = TAT - now, the time until the key would be
-- empty anyway, or the lock if later. Versioned by key: callers put the script
-- version in their keys (the Go client's keys end in ":g2:<period_ms>"); v1
-- keys are not read.
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
--   mode       optional "take" (default; missing or ""), "atmost" or "refund"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or if the
--                   clock went back further than the burst), else 1
--   limit           the capacity (burst) of the reported limit
--   remaining       requests of cost 1 that would still be admitted now; 0
--                   while locked
--   reset_after_ms  ms until the reported limit is back to full (or the lock
--                   ends, if later)
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   unit would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         requests this call took (take: cost or 0; atmost: 0..cost),
--                   or gave back (refund, to the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, bursts of 10, cost 1):
--   redis-cli --eval scripts/gcra.lua rl:{user42} , 10 1000 10 1


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

-- load validates limit i of n and reads its state
-- (a function of its own rather than a closure in run: cheaper per call)
local function load(i, n, cost, now, lockouts, cache)
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
  local lockout = lockouts and int(3 * n + 3 + i, 'lockout_ms', 0, 1e12) * 1000 or 0

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
  local tat, lock = now, 0
  if stored then
    local t = #stored <= 16 and string.find(stored, '^%d+$') and tonumber(stored)
    if not t then
      local s, l = string.match(stored, '^(%d+) (%d+)$')
      if not s or #s > 16 or #l > 16 then
        fail('KEYS[%d] holds a value gcra v2 did not write; use another key', i)
      end
      t, lock = tonumber(s), tonumber(l)
    end
    if t > tat then
      tat = t
    end
  end
  return burst, interval, tolerance, lockout, tat, lock
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
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = int(3 * n + 2, 'now_ms', 0, 4e12) * 1000
  end

  local cache -- atmost: the first pass's GET replies, so each key is read once
  local take = cost -- what every limit is charged
  if refund then
    take = 0
  elseif atmost and cost > 0 then
    cache = {}
    for i = 1, n do
      local _, interval, tolerance, _, tat, lock = load(i, n, cost, now, lockouts, cache)
      local left = math.floor((now + tolerance - tat) / interval)
      if lock > now or left <= 0 then
        take = 0
      elseif left < take then
        take = left
      end
    end
    if take == 0 then
      take = 1 -- grants nothing: answered as the denied take of one request
    end
  end

  local reply
  local writes, forced = {}, nil -- admissions; locks and refunds
  for i = 1, n do
    local burst, interval, tolerance, lockout, tat, lock = load(i, n, cost, now, lockouts, cache)
    local given = 0
    if refund and tat > now then
      local back = tat - cost * interval
      if back < now then
        back = now
      end
      given = math.ceil((tat - back) / interval)
      tat = back
    end
    local new_tat = tat + take * interval
    local allow_at = new_tat - tolerance
    local reset = math.ceil((tat - now) / 1000)
    local fits = now >= allow_at
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {string.format('%d %d', tat, lock), math.ceil(((tat > lock and tat or lock) - now) / 1000)}
    elseif given > 0 then
      forced = forced or {}
      if lock > now then
        forced[i] = {string.format('%d %d', tat, lock), math.ceil(((tat > lock and tat or lock) - now) / 1000)}
      elseif tat > now then
        forced[i] = {string.format('%d', tat), reset}
      else
        forced[i] = {false} -- full: no state needed
      end
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = math.ceil((lock - now) / 1000)
      local retry = fits and 0 or math.ceil((allow_at - now) / 1000)
      r = {0, burst, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, given}
    elseif fits then
      r = {1, burst, math.floor((now - allow_at) / interval), math.ceil((new_tat - now) / 1000), 0, 0, given + take}
      writes[i] = new_tat
    else
      local left = math.floor((now + tolerance - tat) / interval)
      if left < 0 then
        left = 0
      end
      r = {0, burst, left, reset, math.ceil((allow_at - now) / 1000), 0, given}
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
      redis.call('SET', KEYS[i], string.format('%d', writes[i]), 'PX', math.ceil((writes[i] - now) / 1000))
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
return redis.error_reply('ERR luarate: gcra failed: ' .. tostring(res))
