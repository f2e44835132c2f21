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
-- Modes: take (queue all of cost or nothing) and atmost (queue as many whole
-- places of cost as fit). There is no refund: an admitted request holds its
-- departure slot, and giving places back would let a newcomer leave in a slot
-- already promised to a request queued behind it, two in one slot. A caller
-- that gives up simply lets its slot pass unused. Lockout: a denied take (or
-- an atmost that grants nothing) on a limit with lockout_ms > 0 locks that key
-- until now + lockout_ms: every take and atmost is denied until then, however
-- empty the queue. A request denied while locked does not extend the lock;
-- deleting the key (Reset) lifts it.
--
-- State: a string "<units> <updated_ms>", or "<units> <updated_ms>
-- <locked_until_ms>" while a lock may matter. TTL = until the queue is empty,
-- or the lock if later. A clock that goes back drains nothing until it
-- catches up with updated_ms. Versioned by key: callers put the script
-- version in their keys (the Go client's keys end in ":lq1:<period_ms>").
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
--   mode       optional "take" (default; missing or "") or "atmost"
--   lockout_ms optional, one per limit in the order of KEYS: integer 0..1e12,
--              0 = no lockout. Given for all limits or for none.
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits queued), else 0; atmost:
--                   1 if granted > 0; peek: 0 if locked, else 1
--   limit           the queue places (burst) of the reported limit
--   remaining       places of cost 1 still free after this request; 0 while
--                   locked
--   reset_after_ms  ms until the queue is empty (or the lock ends, if later)
--   retry_after_ms  ms until this request would fit (atmost: until one place
--                   would); while locked at least the rest of the lock; 0 when
--                   allowed
--   delay_ms        allowed: ms to wait before proceeding (0 = go now); a
--                   peek: the delay a request admitted now would get;
--                   denied: 0
--   granted         places this call took (take: cost or 0; atmost: 0..cost);
--                   peek: 0
-- With several limits all or none queue (atmost: the same places in all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. delay_ms is the longest delay of
-- all limits: the request waits for its slot in every queue. The limit with
-- the longest T always has the longest queue in time (same admissions, bigger
-- steps, same drain of 1 ms per ms), so the departures follow its schedule
-- and are at least every limit's T apart.
-- Bad arguments get one line "ERR luarate: ..." naming the argument.
--
-- Example (leaves 10 per second, queues 20, cost 1):
--   redis-cli --eval scripts/leaky_queue.lua rl:{user42}:lq , 10 1000 20 1

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

-- load validates limit i of n and reads its state, drained up to now
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
  local unit = period / g -- units per request
  local drain = rate / g  -- units leaked per ms
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
  local level, updated, lock = 0, now, 0
  if stored then
    local l, u, k = string.match(stored, '^(%d+) (%d+)$')
    if not l then
      l, u, k = string.match(stored, '^(%d+) (%d+) (%d+)$')
    end
    -- (no "x = a and b" reassignments: gopher-lua, in miniredis, may keep x)
    level, updated, lock = tonumber(l or ''), tonumber(u or ''), tonumber(k or '0')
    if not level or level > 4e15 or updated > 4e12 or lock > 5e12 then
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
  return burst, unit, drain, capacity, lockout, level, updated, lock
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
  local atmost = mode == 'atmost'
  if mode == 'refund' then
    fail('ARGV[%d] mode refund is not offered by leaky_queue: admitted requests hold their departure slots', 3 * n + 3)
  elseif not (atmost or mode == nil or mode == '' or mode == 'take') then
    fail('ARGV[%d] mode must be take or atmost, got "%s"', 3 * n + 3, printable(mode))
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
  local take = cost -- the places taken in every queue
  if atmost and cost > 0 then
    cache = {}
    for i = 1, n do
      local _, unit, _, capacity, _, level, _, lock = load(i, n, cost, now, lockouts, cache)
      if lock > now then
        take = 0
      elseif capacity - level < take * unit then
        take = 0
        if level < capacity then
          take = math.floor((capacity - level) / unit)
        end
      end
    end
    if take == 0 then
      take = 1 -- grants nothing: answered as the denied take of one unit
    end
  end

  local reply
  local delay = 0 -- the longest wait of all queues
  local writes, forced = {}, nil -- admissions; locks
  for i = 1, n do
    local burst, unit, drain, capacity, lockout, level, updated, lock = load(i, n, cost, now, lockouts, cache)
    -- updated > now when the clock went back: leaking resumes from updated
    local lag = updated - now
    local need = take * unit
    local free = capacity - level
    if free < 0 then
      free = 0 -- the limit was lowered since this state was written
    end
    local reset = lag + math.ceil(level / drain)
    local fits = need <= free
    if not fits and take > 0 and lockout > 0 and lock <= now then
      lock = now + lockout
      forced = forced or {}
      forced[i] = {string.format('%d %d %d', level, updated, lock), reset > lockout and reset or lockout}
    end
    local r
    if lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = lock - now
      local retry = fits and 0 or lag + math.ceil((level + need - capacity) / drain)
      r = {0, burst, 0, reset > wait and reset or wait, retry > wait and retry or wait, 0, 0}
    elseif fits then
      -- the request's first place leaves once the queue ahead of it has
      if reset > delay then
        delay = reset
      end
      level = level + need
      reset = lag + math.ceil(level / drain)
      r = {1, burst, math.floor((free - need) / unit), reset, 0, 0, take}
      writes[i] = {string.format('%d %d', level, updated), reset}
    else
      r = {0, burst, math.floor(free / unit), reset, lag + math.ceil((level + need - capacity) / drain), 0, 0}
    end
    if reply == nil
      or (r[1] == 0 and (reply[1] == 1 or r[5] > reply[5]))
      or (r[1] == reply[1] and r[1] == 1 and r[3] < reply[3]) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then only locks are written
  if reply[1] == 1 then
    reply[6] = delay
    if take > 0 then
      for i = 1, n do
        redis.call('SET', KEYS[i], writes[i][1], 'PX', writes[i][2])
      end
    end
  elseif forced then
    for i = 1, n do
      local w = forced[i]
      if w then
        redis.call('SET', KEYS[i], w[1], 'PX', w[2])
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
