-- luarate: sliding_window_log v2
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
-- Members are "<score>:<d><j>", j = 1, 2, ... among the entries of one score
-- and d the number of digits of j (so "1000:11", "1000:212"; members of one
-- score sort in the order of j), so two requests in the same microsecond, or a
-- cost of n, are distinct entries.
-- A clock that goes back never mints capacity: entries are never placed
-- before the newest one already in the log, and that newest one still counts.
--
-- Modes: take (all of cost or nothing), atmost (as much of cost as the window
-- still holds), refund (remove the newest min(cost, entries in the window)
-- entries: the most recent requests are forgotten as if never made, so a
-- refund right after a take undoes it exactly; never below empty). Lockout: a
-- denied take (or an atmost that grants nothing) on a limit with lockout_ms > 0
-- locks that key until now + lockout_ms: every take and atmost is denied until
-- then, whatever the log says. A request denied while locked does not extend
-- the lock; a refund does not lift it (a lock punishes what already happened;
-- if a success could lift it, one valid account would clear a lock at will);
-- deleting the key (Reset) does.
--
-- State: a sorted set per key; a lock is one more member "lock:<until_us>"
-- scored +inf, so it sorts after every entry. Entries that left the window are
-- removed on every admission (a denied request writes nothing but a new lock).
-- TTL = until the newest entry leaves the window, or the lock if later.
-- Versioned by key: callers put the script version in their keys (the Go
-- client's keys end in ":swl2:<period_ms>"); v1 keys are not read.
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
--   mode       optional "take" (default; missing or ""), "atmost" or "refund"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or over a
--                   lowered limit), else 1
--   limit           the rate of the reported limit
--   remaining       cost still admitted now; 0 while locked
--   reset_after_ms  ms until the log is empty (back to full), or the lock
--                   ends, if later
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   unit would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         units this call took (take: cost or 0; atmost: 0..cost),
--                   or removed (refund, from the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (10 per second, cost 1):
--   redis-cli --eval scripts/sliding_window_log.lua rl:{user42}:swl , 10 1000 0 1


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

-- entry_time reads the score out of a member this script wrote.
local function entry_time(i, member)
  local ts = member and string.match(member, '^(%d+):%d+$')
  ts = ts and tonumber(ts) -- gopher-lua's tonumber(nil) raises
  if not ts then
    fail('KEYS[%d] holds a value sliding_window_log v2 did not write; use another key', i)
  end
  return ts
end

-- load validates limit i of n and reads its log: entries in the window, the
-- newest entry's time, the lock and its member
-- (a function of its own rather than a closure in run: cheaper per call)
local function load(i, n, cost, now, lockouts, cache)
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
  local lockout = lockouts and int(3 * n + 3 + i, 'lockout_ms', 0, 1e12) * 1000 or 0

  local span = period * 1000
  local after = '(' .. string.format('%d', now - span) -- entries still in the window
  local c = cache and cache[i]
  -- the newest entry and the lock, read first: it checks the key's type and format
  local last = c and c[1] or redis.pcall('ZRANGE', KEYS[i], -2, -1)
  if last.err then
    fail('KEYS[%d] holds a value that is not a sorted set; use another key', i)
  end
  local count, newest, lock, lockname = 0, nil, 0, nil
  local top = last[2] or last[1]
  if top and string.byte(top) == 108 then -- "l": the lock member
    lock = tonumber(string.match(top, '^lock:(%d+)$') or '')
    if not lock or #top > 21 then
      fail('KEYS[%d] holds a value sliding_window_log v2 did not write; use another key', i)
    end
    lockname = top
    top = nil -- (not "top = last[2] and last[1]": gopher-lua, in miniredis, may keep top)
    if last[2] then
      top = last[1]
    end
  end
  if top then
    newest = entry_time(i, top)
    if c then
      count = c[2]
    else
      count = redis.call('ZCOUNT', KEYS[i], after, '+inf')
    end
    if cache then
      cache[i] = {last, count}
    end
    if lockname then
      count = count - 1
    end
  elseif cache then
    cache[i] = {last, 0}
  end
  return rate, span, after, lockout, count, newest, lock, lockname
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

  local cache -- atmost: the first pass's replies, so each key is read once
  local take = cost -- what every limit is charged
  if refund then
    take = 0
  elseif atmost and cost > 0 then
    cache = {}
    for i = 1, n do
      local rate, _, _, _, count, _, lock = load(i, n, cost, now, lockouts, cache)
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
    local rate, span, after, lockout, count, newest, lock, lockname = load(i, n, cost, now, lockouts, cache)
    local given = 0
    if refund and count > 0 and cost > 0 then
      given = cost
      if count < cost then
        given = count
      end
      local skip = lockname and 1 or 0
      count = count - given
      newest = nil
      if count > 0 then
        newest = entry_time(i, redis.call('ZRANGE', KEYS[i], -given - 1 - skip, -given - 1 - skip)[1])
      end
      forced = forced or {}
      forced[i] = {-given - skip, -1 - skip}
    end
    local reset = count > 0 and math.ceil((newest + span - now) / 1000) or 0
    local fits = count + take <= rate
    local retry = 0
    if not fits then
      -- the request fits once the oldest (count + take - rate) entries have left
      local blocking = redis.call('ZRANGEBYSCORE', KEYS[i], after, '+inf', 'LIMIT', count + take - rate - 1, 1)[1]
      retry = math.ceil((entry_time(i, blocking) + span - now) / 1000)
    end
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {lockname, lock, reset > lockout / 1000 and reset or lockout / 1000}
    elseif given > 0 then
      local f = forced[i]
      if lock > now then
        local wait = math.ceil((lock - now) / 1000)
        f[3] = reset > wait and reset or wait
      else
        f[3] = reset
        f[4] = lockname -- a stale lock: drop it
      end
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = math.ceil((lock - now) / 1000)
      r = {0, rate, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, given}
    elseif fits then
      local at = now -- where new entries go: never before an entry already logged
      if newest and newest > now then
        at = newest
      end
      if take > 0 then
        reset = math.ceil((at + span - now) / 1000)
      end
      r = {1, rate, rate - count - take, reset, 0, 0, given + take}
      writes[i] = {at, now - span, reset, lockname}
    else
      r = {0, rate, count < rate and rate - count or 0, reset, retry, 0, given}
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
      local ts, cut, reset, lockname = writes[i][1], writes[i][2], writes[i][3], writes[i][4]
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', cut))
      if lockname then
        redis.call('ZREM', KEYS[i], lockname) -- a lock that has ended
      end
      local score = string.format('%d', ts)
      local j = redis.call('ZCOUNT', KEYS[i], score, score)
      local args = {}
      for k = j + 1, j + take do
        args[#args + 1] = score
        local d = k < 10 and 1 or k < 100 and 2 or k < 1000 and 3 or k < 10000 and 4
          or k < 100000 and 5 or k < 1000000 and 6 or 7 -- digits of k
        args[#args + 1] = string.format('%s:%d%d', score, d, k)
        if #args == 1000 or k == j + take then
          redis.call('ZADD', KEYS[i], unpack(args))
          args = {}
        end
      end
      redis.call('PEXPIRE', KEYS[i], reset)
    end
  elseif forced then
    for i = 1, n do
      local w = forced[i]
      if w and type(w[1]) == 'number' then
        -- refund: remove the newest entries by rank (the lock sorts last)
        redis.call('ZREMRANGEBYRANK', KEYS[i], w[1], w[2])
        if w[4] then
          redis.call('ZREM', KEYS[i], w[4])
        end
        if w[3] > 0 then
          redis.call('PEXPIRE', KEYS[i], w[3])
        else
          redis.call('DEL', KEYS[i]) -- nothing left in the window
        end
      elseif w then
        if w[1] then
          redis.call('ZREM', KEYS[i], w[1]) -- a lock that has ended
        end
        redis.call('ZADD', KEYS[i], '+inf', string.format('lock:%d', w[2]))
        redis.call('PEXPIRE', KEYS[i], w[3])
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
return redis.error_reply('ERR luarate: sliding_window_log failed: ' .. tostring(res))
