-- luarate: fixed_window v3
--
-- Fixed window counter. Time is cut into windows of `period_ms`, aligned to the
-- Unix epoch, so every key's window starts and resets at the same instant. Each
-- window admits up to `rate` requests. Cheapest algorithm there is, exact within
-- a window, but a client can spend `rate` just before a boundary and `rate`
-- again just after it: up to twice the rate within one period.
--
-- Modes: take (all of cost or nothing), atmost (as many of cost as the window
-- still holds), refund (give cost back to the current window's count, never
-- below 0; granted is what went back).
-- Lockout: a denied take (or an atmost that grants nothing) on a limit with a
-- lockout_ms locks that key until now + lockout_ms; see scripts/README.md.
--
-- State: a string "fw3 <count> <window_start>", or "fw3 <count> <window_start>
-- <locked_until>" while a lock may matter, times in Unix ms. A key holding
-- anything else is refused with an error and left untouched. TTL = until the
-- window ends, or the lock if later. A window that counts nothing is full: its
-- reset_after_ms is 0, and a refund that empties it deletes the key (unless
-- a lock holds, which then sets the TTL).
--
-- KEYS[i]     state key of limit i, i = 1..N, N <= 16. All keys of one call
--             must share a hash slot in Redis Cluster (give them one {hash
--             tag}) and be distinct.
-- ARGV[i]     limit i, in the order of KEYS: "rate period_ms burst" or
--             "rate period_ms burst lockout_ms", plain decimal integers:
--   rate        1..1e9 requests per window
--   period_ms   1..1e12, the window's length
--   burst       0 or equal to rate (a window has no separate burst)
--   lockout_ms  0..1e12; 0 or missing = no lockout
-- ARGV[N+1]   optional cost: 0..rate of every limit; 0 = peek (reads, never
--             writes); missing = 1
-- ARGV[N+2]   optional now_ms: 0..4e12, Unix time in ms; missing or "" = Redis TIME
-- ARGV[N+3]   optional mode: "take" (default; missing or ""), "atmost" or "refund"
--
-- Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}:
--   allowed         take: 1 if admitted (all limits consumed), else 0; atmost:
--                   1 if granted > 0; refund and peek: 0 if locked (or over a
--                   lowered limit), else 1
--   limit           the rate of the reported limit
--   remaining       requests still admitted in the current window; 0 while
--                   locked
--   reset_after_ms  ms until the current window ends (or the lock, if later);
--                   0 when the window counts nothing and no lock holds
--   retry_after_ms  ms until this request would be admitted (atmost: until one
--                   unit would); while locked at least the rest of the lock;
--                   0 when allowed
--   delay_ms        always 0 here (queueing scripts: ms to wait before proceeding)
--   granted         requests this call took (take: cost or 0; atmost: 0..cost),
--                   or gave back (refund, to the reported limit); peek: 0
-- With several limits all or none consume (atmost: the same amount from all),
-- and the reply reports the tightest: the denying limit with the longest
-- retry_after, else the fewest remaining. Each limit is refunded on its own.
--
-- Batch form: ARGV[1] = "batch", ARGV[2] = now_ms or "" (one clock for the
-- whole batch), then for each request "<nkeys> <cost>" or "<nkeys> <cost>
-- <mode>" followed by its nkeys limits; KEYS holds each request's keys in the
-- same order (at most 32 requests and 32 keys). Each request is decided
-- alone, in order, exactly as the plain form would decide it; the reply is
-- the concatenation of their 7-integer replies, or of one error in place of
-- the 7 integers for a request that is bad (its limits, cost or keys), or
-- of one negative integer -j for a reply that is the same as request j's
-- (j < this request). A batch whose shape is wrong (a request header, nkeys
-- that do not add up, too many requests or keys) is refused whole with one
-- error before anything is decided.
-- ARGV[1] = "batch1" is the same batch of usual requests, each one key
-- taken at cost 1, without headers: ARGV[2 + i] is the limit of KEYS[i].
--
-- Errors: bad arguments or a key this script did not write get one line
-- "ERR luarate: ..." naming the argument or key, and change nothing. Errors
-- Redis raises (OOM, READONLY, NOPERM...) come back with their own code.
--
-- Examples (10 per second, cost 1; then the same in a batch of two requests,
-- the second with two limits):
--   redis-cli --eval scripts/fixed_window.lua rl:{ex}:fw , '10 1000 0'
--   redis-cli --eval scripts/fixed_window.lua rl:{ex}:fw rl:{ex}:fw:s rl:{ex}:fw:h , batch '' '1 1' '10 1000 0' '2 1' '10 1000 0' '100 3600000 0'

-- luarate shared: pending (the same in every limiter script)
-- fast's cost c is the number 1 (the usual cost) or a string to check. Its
-- last three arguments, in a batch:
--   pending     each key's state as the batch read it (one MGET: a string,
--               or false for no key or a key of another type, which fast
--               tells apart by writing with SET ... NX) or as fast decided
--               it; requests on one key read and write it there
--   pending_px  the PX of what fast decided over a state and has not written
--               yet: the batch writes it once, before any other path reads
--               keys and at its end
--   limits      the numbers fast read from each limit string, so later
--               requests with that limit skip reading and checking it, then
--               the state and reply the first key without state got at the
--               usual cost, which every such key of that limit gets at the
--               batch's one now
-- Outside a batch all three are nil, and fast reads and writes Redis itself.
-- (They are arguments, not upvalues: a closure without upvalues is cheaper
-- to make.)
-- luarate shared: end

-- fast decides the common call, one limit without a lockout taken (or
-- peeked, cost 0) at now (microseconds; nil = Redis TIME), for the plain form
-- and for each such request of a batch. It is defined before anything else,
-- so the plain call pays for no other function. It returns nil for any
-- argument or state it does not accept: the general path below then decides
-- the same call, and names what is wrong.
local function fast(key, spec, c, now, pending, pending_px, limits)
  local string, redis = string, redis -- (locals are cheaper to read than globals)
  local lim, rate, period = limits and limits[spec]
  if lim then
    rate, period = lim[1], lim[2]
  else
    local burst
    rate, period, burst = string.match(spec, '^(%d+) (%d+) (%d+)$')
    if not rate or #rate > 10 or #period > 13 or #burst > 10 then
      return nil
    end
    rate, period = rate + 0, period + 0
    burst = burst == '0' and rate or burst + 0 -- (0, the usual burst, = rate: compared, not converted)
    if rate < 1 or rate > 1e9 or period < 1 or period > 1e12 or burst ~= 0 and burst ~= rate then
      return nil
    end
  end
  if c ~= 1 then -- 1, the usual cost, or a string to check
    if #c > 10 or not string.find(c, '^%d+$') or c + 0 > rate then
      return nil
    end
    c = c + 0
  end
  local stored
  if pending then
    if not lim then
      lim = {rate, period} -- later requests with this limit read it here
      limits[spec] = lim
    end
    stored = pending[key]
    if stored == false and c == 0 then -- no string: none, or a key of another type
      return nil -- a peek writes nothing that would tell them apart
    end
  end
  -- luarate shared: fast read (the same in every fast that keeps a string)
  if stored == nil then
    stored = redis.pcall('GET', key)
    if pending then
      pending[key] = stored -- later requests on this key read it here
    end
  end
  -- luarate shared: end
  local count, first
  if stored and not stored.err then -- a string (an error reply is a table with err)
    count, first = string.match(stored, '^fw3 (%d+) (%d+)$')
    if not count then
      return nil
    end
    count, first = count + 0, first + 0
    if count > 1e9 or first > 4e12 then
      return nil
    end
  elseif stored then
    return nil
  end
  if not now then
    local t = redis.call('TIME')
    now = t[1] * 1000000 + t[2]
  end
  now = (now - now % 1000) / 1000
  local start = now - now % period
  if not count or first < start then
    count, first = 0, start -- an earlier window's count (or none): a new window
  end
  local rest = first + period - now
  count = count + c
  if count > rate then
    count = count - c
    return {0, rate, count < rate and rate - count or 0, rest, rest, 0, 0}
  end
  local r = {1, rate, rate - count, count > 0 and rest or 0, 0, 0, c}
  if c > 0 then
    local value, px = string.format('fw3 %d %d', count, first), string.format('%d', rest)
    -- luarate shared: fast write (the same in every fast that keeps a string)
    if not pending then
      redis.call('SET', key, value, 'PX', px)
    elseif stored == false then -- NX: written only if none, so never over a key of another type
      if not redis.call('SET', key, value, 'PX', px, 'NX') then
        return nil
      end
      pending[key] = value
      if c == 1 then
        lim.state, lim.px, lim.reply = value, px, r -- what every new key of this limit gets, at the batch's one now
      end
    else
      pending[key], pending_px[key] = value, px
    end
    -- luarate shared: end
  end
  return r
end

-- string_state: the state is a string, which a batch reads with one MGET.
local string_state = true

-- luarate shared: plain (the same in every limiter script)
-- The plain form of the common call goes to fast first, and the usual call
-- of all, one limit and nothing else, with the fewest checks.
do
  local keys, argv = KEYS, ARGV -- (a local is cheaper to read than a global)
  local nargs, r = #argv, nil
  if nargs == 1 and #keys == 1 then
    r = fast(keys[1], argv[1], 1)
  elseif nargs > 1 and nargs <= 4 and #keys == 1 then
    local how, now_ms = argv[4] or '', argv[3] or ''
    if (how == '' or how == 'take')
      and (now_ms == '' or #now_ms <= 13 and string.find(now_ms, '^%d+$') and now_ms + 0 <= 4e12) then
      r = fast(keys[1], argv[1], argv[2], now_ms ~= '' and now_ms * 1000 or nil)
    end
  end
  if r then
    return r
  end
end
-- luarate shared: end

-- luarate shared: prelude (the same in every limiter script; a test keeps the copies identical)
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

-- limit reads ARGV[i], "rate period_ms burst [lockout_ms]", and returns its
-- four numbers, burst 0 meaning rate and a missing lockout_ms 0.
local function limit(i, max_rate)
  local s = ARGV[i] or '(missing)'
  local r, p, b, space, l = string.match(s, '^(%d+) (%d+) (%d+)( ?)(%d*)$') -- one pattern: lockout_ms optional
  if not r or space ~= '' and l == '' or #r > 10 or #p > 13 or #b > 10 or #l > 13 then
    fail('ARGV[%d] must be a limit "rate period_ms burst" or "rate period_ms burst lockout_ms" in plain digits, got "%s"', i, printable(s))
  end
  r, p, b, l = r + 0, p + 0, b + 0, l == '' and 0 or l + 0
  if r < 1 or r > max_rate then
    fail('ARGV[%d] rate must be from 1 to %.0f, got %.0f', i, max_rate, r)
  elseif p < 1 or p > 1e12 then
    fail('ARGV[%d] period_ms must be from 1 to 1000000000000, got %.0f', i, p)
  elseif b > 1e9 then
    fail('ARGV[%d] burst must be from 0 (= rate) to 1000000000, got %.0f', i, b)
  elseif l > 1e12 then
    fail('ARGV[%d] lockout_ms must be from 0 to 1000000000000, got %.0f', i, l)
  end
  if b == 0 then
    b = r
  end
  return r, p, b, l
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

-- get reads a state key: its string, or false when it does not exist.
local function get(k)
  local v = redis.pcall('GET', KEYS[k])
  if type(v) == 'table' then
    if string.find(v.err, '^WRONGTYPE') then
      fail('KEYS[%d] holds a value that is not a string; use another key', k)
    end
    error(v) -- Redis's own error (NOPERM, ...), passed on with its code
  end
  return v
end

-- tighter reports whether reply r reports a tighter limit than best does: a
-- denial beats an admission, then the longer retry_after, then among
-- admissions the fewer remaining.
local function tighter(r, best)
  if best == nil or r[1] ~= best[1] then
    return best == nil or r[1] == 0
  end
  if r[1] == 0 then
    return r[5] > best[5]
  end
  return r[3] < best[3]
end
-- luarate shared: end

-- load reads limit i of the request whose keys start at KEYS[k] and limits at
-- ARGV[a], and its window as of now (ms).
local function load(k, a, i, cost, now)
  local rate, period, burst, lockout = limit(a + i - 1, 1e9)
  if burst ~= rate then
    fail('ARGV[%d] burst must be 0 or equal to rate for fixed_window, got %.0f', a + i - 1, burst)
  end
  if cost > rate then
    fail('cost %.0f exceeds the capacity of limit %d (rate %.0f)', cost, i, rate)
  end
  local stored = get(k + i - 1)
  local lim = {rate = rate, period = period, lockout = lockout, count = 0, start = now - now % period, lock = 0}
  if stored then
    local c, s, l = string.match(stored, '^fw3 (%d+) (%d+) (%d+)$')
    if not c then
      c, s = string.match(stored, '^fw3 (%d+) (%d+)$')
      l = '0'
    end
    if not c or c + 0 > 1e9 or s + 0 > 4e12 or l + 0 > 5e12 then
      fail('KEYS[%d] holds a value fixed_window v3 did not write; use another key', k + i - 1)
    end
    if s + 0 >= lim.start then
      -- this window, or a later one if the clock went back: keep counting there
      lim.count, lim.start = c + 0, s + 0
    end
    lim.lock = l + 0
  end
  return lim
end

-- save writes limit lim's state to KEYS[key], with a TTL until its window
-- ends, or its lock if later: its reset_after_ms. A window a refund emptied
-- counts nothing: without a lock it needs no state, and the key is deleted.
local function save(key, lim, now)
  local rest = lim.count > 0 and lim.start + lim.period - now or 0
  if lim.lock > now then
    local wait = lim.lock - now
    redis.call('SET', KEYS[key], string.format('fw3 %d %d %d', lim.count, lim.start, lim.lock), 'PX', string.format('%d', rest > wait and rest or wait))
  elseif rest > 0 then
    redis.call('SET', KEYS[key], string.format('fw3 %d %d', lim.count, lim.start), 'PX', string.format('%d', rest))
  else
    redis.call('DEL', KEYS[key])
  end
end

-- decide answers one request: n limits with keys from KEYS[k] and limits from
-- ARGV[a], taking cost in mode how at now (microseconds). It validates
-- everything before it writes anything.
local function decide(k, n, a, cost, how, now)
  now = (now - now % 1000) / 1000
  for i = 2, n do
    for j = 1, i - 1 do
      if KEYS[k + i - 1] == KEYS[k + j - 1] then
        fail('KEYS[%d] repeats KEYS[%d]; give each limit its own key', k + i - 1, k + j - 1)
      end
    end
  end
  local lims = {}
  for i = 1, n do
    lims[i] = load(k, a, i, cost, now)
  end
  local take = cost -- what every limit is charged
  if how == 'refund' then
    take = 0
  elseif how == 'atmost' and cost > 0 then
    for i = 1, n do
      local lim = lims[i]
      if lim.lock > now then
        take = 0
      elseif lim.rate - lim.count < take then
        take = lim.rate - lim.count
      end
    end
    if take <= 0 then
      take = 1 -- grants nothing: answered as the denied take of one request
    end
  end

  local reply
  for i = 1, n do
    local lim = lims[i]
    local given = 0
    if how == 'refund' and lim.count > 0 then
      given = cost < lim.count and cost or lim.count
      lim.count = lim.count - given
    end
    local rest = lim.start + lim.period - now -- ms until the window ends
    local reset = lim.count > 0 and rest or 0
    local fits = lim.count + take <= lim.rate
    local locks = not fits and take > 0 and lim.lockout > 0 and lim.lock <= now
    if locks then
      lim.lock = now + lim.lockout
    end
    local r
    if lim.lock > now then
      -- locked: denied until the lock ends, or later if it would not fit then
      local wait = lim.lock - now
      local retry = not fits and rest > wait and rest or wait
      r = {0, lim.rate, 0, reset > wait and reset or wait, retry, 0, given}
    elseif fits then
      local count = lim.count + take
      r = {1, lim.rate, lim.rate - count, count > 0 and rest or 0, 0, 0, given + take}
    else
      r = {0, lim.rate, lim.count < lim.rate and lim.rate - lim.count or 0, reset, rest, 0, given}
    end
    lim.changed = locks or given > 0 -- written whatever the other limits decide
    if tighter(r, reply) then
      reply = r
    end
  end

  -- reply is a denying limit whenever any limit denies: then only locks and
  -- refunds are written
  local admitted = reply[1] == 1 and take > 0
  for i = 1, n do
    local lim = lims[i]
    if admitted then
      lim.count = lim.count + take -- written only if every limit admits
    end
    if admitted or lim.changed then
      save(k + i - 1, lim, now)
    end
  end
  return reply
end

-- luarate shared: entry (the same in every limiter script)
-- run answers the plain form, or each request of a batch.
local function run()
  local nkeys, nargs, form = #KEYS, #ARGV, ARGV[1]
  if form ~= 'batch' and form ~= 'batch1' then
    if nkeys == 0 or nkeys > 16 then
      fail('need 1 to 16 keys, one per limit, got %d', nkeys)
    elseif nargs < nkeys or nargs > nkeys + 3 then
      fail('expected %d to %d ARGV (a limit per key, then [cost [now_ms [mode]]]), got %d', nkeys, nkeys + 3, nargs)
    end
    local how = ARGV[nkeys + 3] or ''
    if how ~= '' and how ~= 'take' and how ~= 'atmost' and how ~= 'refund' then
      fail('ARGV[%d] mode must be take, atmost or refund, got "%s"', nkeys + 3, printable(how))
    end
    local cost = nargs == nkeys and 1 or int(nkeys + 1, 'cost', 1e9)
    return decide(1, nkeys, 1, cost, how, clock(nkeys + 2))
  end

  -- a batch: check its shape first, so a refused batch changes nothing.
  -- request reads the request header at ARGV[a]: its nkeys, cost and mode.
  -- (Callers read the usual one, "1 1", without it.)
  local function request(a)
    local h = ARGV[a]
    local n, cost, how = string.match(h, '^(%d+) (%d+)$')
    if not n then
      n, cost, how = string.match(h, '^(%d+) (%d+) (%a+)$')
    end
    if not n or #n > 2 or #cost > 10 or (how and how ~= 'take' and how ~= 'atmost' and how ~= 'refund') then
      fail('ARGV[%d] must be a request "nkeys cost" or "nkeys cost mode", got "%s"', a, printable(h))
    end
    return n + 0, cost, how or ''
  end
  -- In the batch1 form every request is the usual one, one key taken at
  -- cost 1, and has no header: ARGV[2 + i] is the limit of KEYS[i].
  local header = form == 'batch1' and 0 or 1 -- ARGV per request before its limits
  local count, k, a = 0, 1, 3
  if header == 0 then
    count = nkeys
    if nkeys == 0 or nkeys > 32 or nargs ~= nkeys + 2 then
      fail('a batch1 needs 1 to 32 KEYS and ARGV "batch1", now_ms, then a limit per key, got %d KEYS and %d ARGV', nkeys, nargs)
    end
  else
    while a <= nargs do
      count = count + 1
      local n = ARGV[a] == '1 1' and 1 or request(a)
      if n < 1 or n > 16 or k + n - 1 > nkeys or a + n > nargs then
        fail('ARGV[%d] request %d: nkeys must be from 1 to 16, with that many KEYS and limits left, got "%s"', a, count, printable(ARGV[a]))
      end
      k, a = k + n, a + n + 1
    end
    if count == 0 or count > 32 or nkeys > 32 or k <= nkeys then
      fail('a batch needs 1 to 32 requests whose nkeys add up to #KEYS (at most 32), got %d requests for %d of %d keys', count, k - 1, nkeys)
    end
  end
  local now = clock(2)
  local out, o = {}, 0
  local pending, pending_px = {}, {}
  if string_state then -- every key read at once: a string, or false for none or another type
    local got = redis.pcall('MGET', unpack(KEYS))
    if not got.err then -- (a user without +mget: fast reads each key with GET)
      for i = 1, nkeys do
        pending[KEYS[i]] = got[i]
      end
    end
  end
  -- flush writes what fast decided and holds in pending, and returns empty
  -- ones (tables passed, not upvalues: gopher-lua, which tests use, loses an
  -- upvalue's assignments after an error caught by pcall)
  local function flush(pending, pending_px)
    for key, px in pairs(pending_px) do
      redis.call('SET', key, pending[key], 'PX', px)
    end
    return {}, {}
  end
  -- denied[key] is the last denial fast gave on key, {spec, cost, state,
  -- reply}. fast decides by those and the batch's one now alone, and a denial
  -- writes nothing, so the same request on the same state is denied alike
  -- without deciding it again: a flood on one key costs a lookup per request.
  local denied, limits = {}, {}
  -- last is the last reply written out in full, by request last_j; a request
  -- whose reply is the same gets -last_j in its place, one integer for seven
  local last, last_j
  k, a = 1, 2 + header -- a: the request's header (batch1: the ARGV before its limit)
  for j = 1, count do
    local n, cost, how = 1, 1, '' -- (fast takes the usual cost as a number)
    if header == 1 and ARGV[a] ~= '1 1' then
      n, cost, how = request(a)
    end
    local ok, r = true, nil
    if n == 1 and (how == '' or how == 'take') then
      local key, spec = KEYS[k], ARGV[a + 1]
      local state = pending[key]
      local d, lim = denied[key], limits[spec]
      if state == false and cost == 1 and lim and lim.reply then
        -- a new key, as the first new key of this limit in the batch: the
        -- same state and reply (or, NX refusing a key of another type, the
        -- general path)
        if redis.call('SET', key, lim.state, 'PX', lim.px, 'NX') then
          pending[key], r = lim.state, lim.reply
        end
      elseif d and d[3] == state and d[1] == spec and d[2] == cost then
        r = d[4]
      else
        r = fast(key, spec, cost, now, pending, pending_px, limits)
        if r and r[1] == 0 and (state == nil or state == pending[key]) then
          denied[key] = {spec, cost, pending[key], r}
        end
      end
    end
    if not r then
      pending, pending_px = flush(pending, pending_px) -- the general path reads its keys from Redis
      ok, r = pcall(decide, k, n, a + 1, cost + 0, how, now)
    end
    if ok then
      if r == last or last and r[3] == last[3] and r[4] == last[4] and r[1] == last[1] and r[5] == last[5]
        and r[2] == last[2] and r[6] == last[6] and r[7] == last[7] then
        o = o + 1
        out[o] = -last_j -- the same 7 integers as request last_j's reply
      else
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
        o = o + 7
        last, last_j = r, j
      end
    elseif type(r) == 'table' and r.luarate then
      o = o + 1
      out[o] = {err = 'ERR luarate: request ' .. j .. ': ' .. r.luarate}
    else
      error(r, 0) -- Redis's own error fails the whole batch
    end
    k, a = k + n, a + n + header
  end
  flush(pending, pending_px)
  return out
end

local ok, res = pcall(run)
if ok then
  return res
elseif type(res) == 'table' and res.luarate then
  return redis.error_reply('ERR luarate: ' .. res.luarate)
elseif type(res) == 'table' and res.err then
  return res -- Redis's own error, with its code
elseif type(res) == 'string' and string.find(res, '^%u+ ') then
  return redis.error_reply(res) -- the same, as Redis 7.0's redis.call raises it: its text
end
return redis.error_reply('ERR luarate: ' .. tostring(res))
-- luarate shared: end
