-- luarate: concurrency v1
--
-- Concurrency limiter: at most `max` requests in flight per key, as Stripe's
-- concurrent-requests limiter. A request takes a lease before it starts and
-- gives it back when it is done. Every lease has an id (chosen by the caller,
-- e.g. 128 random bits; the script stays a pure function of its arguments)
-- and an expiry, now + lease_ms: a holder that crashes without releasing
-- frees its slot when its lease expires. Releasing a lease twice, or after it
-- expired, is harmless: it changes nothing and frees no one else's slot.
--
-- State: a sorted set per key, member "lease:<id>" scored by its expiry in
-- Unix ms. A lease holds while now < expiry. Writes remove the expired leases
-- first; TTL = until the latest lease expires (an empty set is deleted).
-- Memory: O(max) entries per key. A clock that goes back keeps every lease
-- until its expiry; a lease is never shortened by acquire or extend.
--
-- KEYS[1]      the state key; exactly one
-- ARGV[1]  op        "acquire": take a slot for lease_id, if one is free (a
--                                lease_id that already holds renews it: a
--                                retried acquire never takes two slots)
--                    "release": give lease_id's slot back
--                    "extend":  push lease_id's expiry to now + lease_ms, if
--                                it still holds (a lost lease is not retaken)
--                    "peek":    read only; would a new lease get a slot now?
-- ARGV[2]  max       integer 1..1e6, leases held at once
-- ARGV[3]  lease_ms  integer 1..1e12, how long a lease holds unless released
-- ARGV[4]  lease_id  1..64 characters out of A-Z a-z 0-9 - _ . : (peek
--                    ignores it: it may be empty)
-- ARGV[5]  now_ms    optional integer 0..4e12, Unix time in ms; missing or
--                    "" = Redis TIME
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         acquire: 1 if the lease is held now, else 0 (all taken)
--                   release: 1 if the lease was held and is now given back,
--                            0 if it was not held (never, released, expired)
--                   extend:  1 if the lease still held and was extended, else 0
--                   peek:    1 if an acquire would get a slot now, else 0
--   limit           max
--   remaining       free slots after this call
--   reset_after_ms  ms until every current lease has expired (0 = none held)
--   retry_after_ms  acquire/peek when all slots are taken: ms until the
--                   earliest lease expires (sooner if one is released); else 0
--   delay_ms        always 0
--   granted         1 when this call took a new slot (acquire) or gave one
--                   back (release); 0 for a renewal, an extend, a peek or a
--                   denial
-- A denied acquire, a peek and a release or extend of a lease that does not
-- hold write nothing. Bad arguments get one line "ERR luarate: ..." naming
-- the argument.
--
-- Example (at most 5 in flight, leases of 30 s, lease id "req-1"):
--   redis-cli --eval scripts/concurrency.lua rl:{user42}:c , acquire 5 30000 req-1

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

-- expiry reads the score of a member this script wrote.
local function expiry(member, score)
  local e = score and string.find(member, '^lease:') and string.find(score, '^%d+$') and tonumber(score)
  if not e then
    fail('KEYS[1] holds a value concurrency v1 did not write; use another key')
  end
  return e
end

local function run()
  if #KEYS ~= 1 then
    fail('expected exactly 1 key (one concurrency limit per call), got %d', #KEYS)
  end
  if #ARGV ~= 4 and #ARGV ~= 5 then
    fail('expected 4 or 5 ARGV (op, max, lease_ms, lease_id [now_ms]), got %d', #ARGV)
  end
  local op = ARGV[1]
  if op ~= 'acquire' and op ~= 'release' and op ~= 'extend' and op ~= 'peek' then
    fail('ARGV[1] op must be acquire, release, extend or peek, got "%s"',
      string.gsub(string.sub(op, 1, 40), '[^%w%p ]', '?'))
  end
  local max = int(2, 'max', 1, 1e6)
  local lease = int(3, 'lease_ms', 1, 1e12)
  local id = ARGV[4]
  if not (op == 'peek' and id == '') and (#id > 64 or not string.find(id, '^[A-Za-z0-9%-_%.:]+$')) then
    fail('ARGV[4] lease_id must be 1 to 64 characters out of A-Z a-z 0-9 - _ . :, got "%s"',
      string.gsub(string.sub(id, 1, 40), '[^%w%p ]', '?'))
  end
  local now
  if ARGV[5] == nil or ARGV[5] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = int(5, 'now_ms', 0, 4e12)
  end

  local key = KEYS[1]
  local member = 'lease:' .. id
  local live = '(' .. string.format('%d', now) -- leases with expiry > now hold
  -- the latest lease, read first: it checks the key's type and format
  local last = redis.pcall('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last.err then
    fail('KEYS[1] holds a value that is not a sorted set; use another key')
  end
  local held, latest = 0, now
  if last[1] then
    latest = expiry(last[1], last[2])
    if latest > now then
      held = redis.call('ZCOUNT', key, live, '+inf')
    else
      latest = now
    end
  end
  local mine = nil -- lease_id's expiry, if it holds
  if op ~= 'peek' then
    local s = redis.call('ZSCORE', key, member)
    if s then
      mine = expiry(member, s)
      if mine <= now then
        mine = nil
      end
    end
  end

  -- earliest is when the first lease that holds expires
  local function earliest()
    local first = redis.call('ZRANGEBYSCORE', key, live, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    return expiry(first[1], first[2])
  end
  local function free(n)
    if n >= max then
      return 0 -- more than max when max was lowered while leases held
    end
    return max - n
  end

  if op == 'peek' then
    if held < max then
      return {1, max, free(held), latest - now, 0, 0, 0}
    end
    return {0, max, 0, latest - now, earliest() - now, 0, 0}
  end
  if op == 'acquire' and not mine and held >= max then
    return {0, max, 0, latest - now, earliest() - now, 0, 0}
  end
  if (op == 'release' or op == 'extend') and not mine then
    return {0, max, free(held), latest - now, 0, 0, 0}
  end

  -- a write: drop the expired leases, then change lease_id's
  local granted = 0 -- slots taken (a new lease) or given back (a release)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
  if op == 'release' then
    redis.call('ZREM', key, member)
    held = held - 1
    granted = 1
    if held > 0 then
      local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      latest = expiry(top[1], top[2])
    else
      latest = now -- the set is empty, so Redis deleted the key
    end
  else
    local until_ms = now + lease
    if mine and mine > until_ms then
      until_ms = mine -- never shorten a lease (the clock went back)
    end
    if not mine then
      held = held + 1
      granted = 1
    end
    redis.call('ZADD', key, string.format('%d', until_ms), member)
    if until_ms > latest then
      latest = until_ms
    end
  end
  if held > 0 then
    redis.call('PEXPIRE', key, string.format('%d', latest - now))
  end
  return {1, max, free(held), latest - now, 0, 0, granted}
end

local ok, res = pcall(run)
if ok then
  return res
end
if type(res) == 'table' and res.luarate then
  return redis.error_reply('ERR luarate: ' .. res.luarate)
end
return redis.error_reply('ERR luarate: concurrency failed: ' .. tostring(res))
