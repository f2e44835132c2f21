-- luarate: concurrency v3
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
-- Unix ms, and one more member "c3" scored +inf (it sorts last) that says
-- this script wrote the set. A key holding anything else (another script's
-- set, a set without that member, another type) is refused with an error and
-- left untouched. A lease holds while now < expiry. A write adds or moves
-- lease_id's lease first (a call refused for memory changes nothing), then
-- removes the expired leases; TTL = until the latest lease expires, plus 1
-- ms: Redis 7.0 and earlier delete a key at once when their millisecond
-- clock turns during a PEXPIRE of 1 ms, and with it leases that still hold
-- (a set with no lease left is deleted). Memory: O(max) entries per key, max capped so
-- that no call removes more than 1000 leases. A clock that goes back keeps
-- every lease until its expiry; a lease is never shortened by acquire or extend.
--
-- KEYS[1]      the state key; exactly one
-- ARGV[1]  op        "acquire": take a slot for lease_id, if one is free (a
--                                lease_id that already holds renews it: a
--                                retried acquire never takes two slots)
--                    "release": give lease_id's slot back
--                    "extend":  push lease_id's expiry to now + lease_ms, if
--                                it still holds (a lost lease is not retaken)
--                    "peek":    read only; would a new lease get a slot now?
-- ARGV[2]  max       integer 1..1000, leases held at once
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
-- hold write nothing.
--
-- Errors: bad arguments or a key this script did not write get one line
-- "ERR luarate: ..." naming the argument or key, and change nothing. Errors
-- Redis raises (OOM, READONLY, NOPERM...) come back with their own code.
--
-- Example (at most 5 in flight, leases of 30 s, lease id "req-1"):
--   redis-cli --eval scripts/concurrency.lua rl:{ex}:c , acquire 5 30000 req-1

-- shared helpers: the same as in the limiter scripts' prelude
local function fail(fmt, ...)
  error({luarate = string.format(fmt, ...)}, 0)
end

local function printable(s)
  return (string.gsub(string.sub(s, 1, 40), '[^%w%p ]', '?'))
end

-- int reads ARGV[i] as a plain decimal integer from 0 to max.
local function int(i, name, max)
  local s = ARGV[i]
  if s and #s <= 13 and string.find(s, '^%d+$') then
    local v = s + 0
    if v <= max then
      return v
    end
  end
  fail('ARGV[%d] %s must be an integer from 0 to %.0f, got "%s"', i, name, max, printable(s or '(missing)'))
end

-- clock returns now in microseconds: ARGV[i] (now_ms) if given, else Redis TIME.
local function clock(i)
  local s = ARGV[i]
  if s == nil or s == '' then
    local t = redis.call('TIME')
    return t[1] * 1000000 + t[2]
  end
  return int(i, 'now_ms', 4e12) * 1000
end

-- positive reads ARGV[i] as a plain decimal integer from 1 to max.
local function positive(i, name, max)
  local s = ARGV[i]
  local v = s and #s <= 13 and string.find(s, '^%d+$') and s + 0
  if not v or v < 1 or v > max then
    fail('ARGV[%d] %s must be an integer from 1 to %.0f, got "%s"', i, name, max, printable(s or '(missing)'))
  end
  return v
end

-- lease reads a lease member and its score as this script wrote them: the expiry.
local function lease(member, score)
  local e = member and score and string.find(member, '^lease:') and string.match(score, '^%d+$')
  if not e or #e > 13 then
    fail('KEYS[1] holds a value concurrency v3 did not write; use another key')
  end
  return e + 0
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
    fail('ARGV[1] op must be acquire, release, extend or peek, got "%s"', printable(op))
  end
  local max = positive(2, 'max', 1000)
  local length = positive(3, 'lease_ms', 1e12)
  local id = ARGV[4]
  if not (op == 'peek' and id == '') and (#id > 64 or not string.find(id, '^[A-Za-z0-9%-_%.:]+$')) then
    fail('ARGV[4] lease_id must be 1 to 64 characters out of A-Z a-z 0-9 - _ . :, got "%s"', printable(id))
  end
  local now = clock(5)
  now = (now - now % 1000) / 1000

  local key = KEYS[1]
  local member = 'lease:' .. id
  local live = string.format('(%d', now) -- leases with expiry > now hold
  -- the latest lease and the marker, read first: it checks the key's type and format
  local top = redis.pcall('ZRANGE', key, -2, -1, 'WITHSCORES')
  if top.err then
    if string.find(top.err, '^WRONGTYPE') then
      fail('KEYS[1] holds a value that is not a sorted set; use another key')
    end
    error(top) -- Redis's own error (NOPERM, ...), passed on with its code
  end
  local n = #top
  if n > 0 and (top[n - 1] ~= 'c3' or top[n] ~= 'inf') then
    fail('KEYS[1] holds a value concurrency v3 did not write; use another key')
  end
  local held, latest = 0, now
  if n == 4 then
    latest = lease(top[1], top[2])
    if latest > now then
      held = redis.call('ZCOUNT', key, live, '+inf') - 1 -- the marker sorts last
    else
      latest = now
    end
  end
  local mine = nil -- lease_id's expiry, if it holds
  if op ~= 'peek' and n == 4 then
    local s = redis.call('ZSCORE', key, member)
    if s then
      mine = lease(member, s)
      if mine <= now then
        mine = nil
      end
    end
  end
  local free = held < max and max - held or 0 -- held > max when max was lowered

  if op == 'peek' or op == 'acquire' and not mine and held >= max then
    if held < max then
      return {1, max, free, latest - now, 0, 0, 0}
    end
    -- the first lease that holds expires first
    local first = redis.call('ZRANGEBYSCORE', key, live, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    return {0, max, 0, latest - now, lease(first[1], first[2]) - now, 0, 0}
  end
  if (op == 'release' or op == 'extend') and not mine then
    return {0, max, free, latest - now, 0, 0, 0}
  end

  local granted = 0 -- slots taken (a new lease) or given back (a release)
  if op == 'release' then
    held, granted = held - 1, 1
    redis.call('ZREM', key, member)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
    if held == 0 then
      redis.call('DEL', key) -- no lease left: only the marker
      latest = now
    else
      local last = redis.call('ZRANGE', key, -2, -2, 'WITHSCORES')
      latest = lease(last[1], last[2])
    end
  else
    local expiry = now + length
    if mine and mine > expiry then
      expiry = mine -- never shorten a lease (the clock went back)
    end
    if not mine then
      held, granted = held + 1, 1
    end
    if n == 0 then
      redis.call('ZADD', key, string.format('%d', expiry), member, '+inf', 'c3')
    else
      redis.call('ZADD', key, string.format('%d', expiry), member) -- first: refused for memory, it changes nothing
      redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
    end
    if expiry > latest then
      latest = expiry
    end
  end
  if held > 0 then
    redis.call('PEXPIRE', key, string.format('%d', latest - now + 1)) -- (+ 1: see TTL under State)
  end
  return {1, max, held < max and max - held or 0, latest - now, 0, 0, granted}
end

-- the shared entry's ending: Redis's own errors keep their code
local ok, res = pcall(run)
if ok then
  return res
elseif type(res) == 'table' and res.luarate then
  return redis.error_reply('ERR luarate: ' .. res.luarate)
elseif type(res) == 'table' and res.err then
  return res -- Redis's own error, with its code
elseif type(res) == 'string' and string.find(res, '^%u+ ') then
  return redis.error_reply(res) -- raised by redis.call (Redis 7.0 raises "OOM ..."), code first
end
return redis.error_reply('ERR luarate: ' .. tostring(res))
