-- luarate: fixed_window v2
--
-- Fixed window counter. Time is cut into windows of `period_ms`, aligned to the
-- Unix epoch, so every key's window starts and resets at the same instant. Each
-- window admits up to `rate` cost. Cheapest algorithm there is, exact within a
-- window, but a client can spend `rate` just before a boundary and `rate` again
-- just after it: up to twice the rate within one period.
--
-- Modes: take (all of cost or nothing), atmost (as much of cost as the window
-- still holds), refund (give cost back to the current window's count, never
-- below 0). Lockout: a denied take (or an atmost that grants nothing) on a
-- limit with lockout_ms > 0 locks that key until now + lockout_ms: every take
-- and atmost is denied until then, whatever the window says. A request denied
-- while locked does not extend the lock; a refund does not lift it (a lock
-- punishes what already happened; if a success could lift it, one valid
-- account would clear a lock at will); deleting the key (Reset) does.
--
-- State: a string "<count> <window_start_ms>", or "<count> <window_start_ms>
-- <locked_until_ms>" while a lock may matter. TTL = until the window ends, or
-- the lock if later. Versioned by key: callers put the script version in their
-- keys (the Go client's keys end in ":fw2:<period_ms>"); v1 keys are not read.
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
--   mode       optional "take" (default; missing or ""), "atmost" or "refund"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or over a
--                   lowered limit), else 1
--   limit           the rate of the reported limit
--   remaining       cost still admitted in the current window; 0 while locked
--   reset_after_ms  ms until the current window ends (or the lock, if later)
--   retry_after_ms  ms until this request would be admitted (atmost: until 1
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
--   redis-cli --eval scripts/fixed_window.lua rl:{user42} , 10 1000 0 1

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

-- load validates limit i of n and reads its state as of now
-- (a function of its own rather than a closure in run: cheaper per call)
local function load(i, n, cost, now, lockouts, cache)
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
  local count, start, lock = 0, now - now % period, 0
  if stored then
    -- (no "x = a and b" reassignments: gopher-lua, in miniredis, may keep x)
    local mc, ms, ml = string.match(stored, '^(%d+) (%d+)$')
    if not mc then
      mc, ms, ml = string.match(stored, '^(%d+) (%d+) (%d+)$')
    end
    local c, s, l = tonumber(mc or ''), tonumber(ms or ''), tonumber(ml or '0')
    if not c or c > 1e9 or s > 4e12 or l > 5e12 then
      fail('KEYS[%d] holds a value fixed_window v2 did not write; use another key', i)
    end
    if s >= start then
      -- this window, or a later one if the clock went back: keep counting there
      count, start = c, s
    end
    lock = l
  end
  return rate, period, lockout, count, start, lock
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
      local rate, _, _, count, _, lock = load(i, n, cost, now, lockouts, cache)
      if lock > now then
        take = 0
      elseif rate - count < take then
        take = rate - count
      end
    end
    if take <= 0 then
      take = 1 -- grants nothing: answered as the denied take of one unit
    end
  end

  local reply
  local writes, forced = {}, nil -- admissions; locks and refunds
  for i = 1, n do
    local rate, period, lockout, count, start, lock = load(i, n, cost, now, lockouts, cache)
    local given = 0
    if refund and count > 0 then
      given = cost
      if count < cost then
        given = count
      end
      count = count - given
    end
    local reset = start + period - now
    local fits = count + take <= rate
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {string.format('%d %d %d', count, start, lock), reset > lockout and reset or lockout}
    elseif given > 0 then
      forced = forced or {}
      if lock > now then
        forced[i] = {string.format('%d %d %d', count, start, lock), reset > lock - now and reset or lock - now}
      else
        forced[i] = {string.format('%d %d', count, start), reset}
      end
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = lock - now
      local retry = wait
      if not fits and reset > wait then
        retry = reset
      end
      r = {0, rate, 0, reset > wait and reset or wait, retry, 0, given}
    elseif fits then
      count = count + take
      r = {1, rate, rate - count, reset, 0, 0, given + take}
      writes[i] = {string.format('%d %d', count, start), reset}
    else
      r = {0, rate, count < rate and rate - count or 0, reset, reset, 0, given}
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
return redis.error_reply('ERR luarate: fixed_window failed: ' .. tostring(res))
