"""luarate for Flask: rate limits decided inside Redis by luarate's Lua scripts.

Copy this file and the scripts/ directory. Keys are built as the Go client
builds them, so a Go service limiting the same key shares the same limit.

    limiter = Limiter(redis.Redis.from_url(url), "path/to/scripts")

    @app.get("/public")
    @limiter.limit("10/minute")          # several: "10/second;1000/day"
    def public(): ...
"""
import functools, hashlib, ipaddress, logging, os, re, time
from collections import namedtuple
from flask import g, jsonify, make_response, request
from redis.exceptions import (AuthenticationError, AuthorizationError, ClusterDownError, ConnectionError, ReadOnlyError,
                              RedisError, ResponseError, TimeoutError, TryAgainError)

log = logging.getLogger("luarate")
Result = namedtuple("Result", "allowed limit remaining reset_after_ms retry_after_ms")
UNIT_MS = {"ms": 1, "millisecond": 1, "milliseconds": 1,
           "s": 1000, "sec": 1000, "second": 1000, "seconds": 1000,
           "m": 60000, "min": 60000, "minute": 60000, "minutes": 60000,
           "h": 3600000, "hr": 3600000, "hour": 3600000, "hours": 3600000,
           "d": 86400000, "day": 86400000, "days": 86400000}
MAX_COUNT, MAX_PERIOD_MS = 10**9, 10**12
# count, "/" (spaces or tabs around it allowed) or " per " (required), [multiplier] unit;
# ASCII only, as the grammar: [0-9], not \d, and re.ASCII keeps IGNORECASE to A-Z.
LIMIT_RE = re.compile(r"([0-9]+)(?:[ \t]*/|[ \t]+per[ \t])[ \t]*([0-9]*)[ \t]*([a-z]+)", re.ASCII | re.IGNORECASE)


def parse_limits(text):
    """"10/second;1000/day", "10 per minute", "5/15m" -> [(rate, period_ms), ...].

    Exactly the grammar of Go's luarate.ParseLimits (see its doc): limits
    joined by ";" or ","; a count from 1 to 1e9; "/" or " per "; a period of
    an optional multiplier and a unit ms, s, sec, second(s), m, min, minute(s),
    h, hr, hour(s), d, day(s), in any case, at most 1e12 ms. "ms" is
    milliseconds. Spaces and tabs only. An empty part, anything else, or two
    limits with one period is a ValueError quoting the part."""
    limits = []
    for part in (p.strip(" \t") for p in re.split(r"[;,]", text)):
        def bad(why):
            return ValueError(f"luarate: bad limit {part!r} in {text!r}: {why}")
        m = LIMIT_RE.fullmatch(part)
        if not m:
            raise bad("empty limit; write limits as \"10/second;1000/day\"" if not part else
                      "want a count, \"/\" or \" per \" (spaces around it), then a period, as in 10/second or 5 per 15m")
        count, mult, unit = number(m[1]), number(m[2] or "1"), m[3].lower()
        if not 1 <= count <= MAX_COUNT:
            raise bad(f"count must be from 1 to {MAX_COUNT}")
        if unit not in UNIT_MS:
            raise bad(f"unknown unit {m[3]!r}; use ms, second (s), minute (m), hour (h) or day (d)")
        period = mult * UNIT_MS[unit]
        if mult < 1 or period > MAX_PERIOD_MS:
            raise bad(f"period must be from 1ms to {MAX_PERIOD_MS}ms, and its multiplier at least 1")
        if any(p == period for _, p in limits):
            raise bad(f"another limit has the same period ({period} ms); give each limit its own period")
        limits.append((count, period))
    return limits


def number(digits):
    """int(digits), cut to 14 significant digits: more are out of range anyway,
    and int() refuses strings over 4300 digits."""
    return int(digits.lstrip("0")[:14] or "0")


# The script contract (v3, see scripts/README.md or the header of any
# scripts/*.lua). Only these two functions know it.
def script_args(limits, cost, mode="take", lockout_ms=0):
    """ARGV: one "rate period_ms burst" per limit (burst 0 = rate), with
    " lockout_ms" when there is one; then cost (missing = 1), and now_ms
    ("" = Redis TIME) and the mode when it is not take."""
    lock = f" {lockout_ms}" if lockout_ms else ""
    argv = [f"{rate} {period_ms} 0{lock}" for rate, period_ms in limits]
    if cost != 1 or mode != "take":
        argv.append(cost)
    if mode != "take":
        argv += ["", mode]
    return argv


def decode_reply(reply):
    """{allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}"""
    if not isinstance(reply, list) or len(reply) != 7 or not all(isinstance(v, int) for v in reply):
        raise RedisError(f"luarate: not a luarate reply: {reply!r}")
    return Result(reply[0] == 1, *reply[1:5])


def set_headers(headers, res, now_ms=None):
    """The headers of the Go middleware (httplimit), rounded as it rounds them:
    X-RateLimit-Reset is the Unix time in seconds (rounded up) when the limit
    is full again, from now_ms (default: this machine's clock); Retry-After,
    on a denial, is seconds (rounded up, at least 1)."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    headers["X-RateLimit-Limit"] = str(res.limit)
    headers["X-RateLimit-Remaining"] = str(res.remaining)
    headers["X-RateLimit-Reset"] = str(ceil_seconds(now_ms + res.reset_after_ms))
    if not res.allowed:
        headers["Retry-After"] = str(retry_after_seconds(res))


def ceil_seconds(ms):
    return -(-ms // 1000)


def retry_after_seconds(res):
    return max(ceil_seconds(res.retry_after_ms), 1)


def denied(res, error="rate limit exceeded"):
    """The Go middleware's 429: headers set, and a JSON body."""
    resp = make_response(jsonify(error=error, retry_after=retry_after_seconds(res),
                                 retry_after_ms=res.retry_after_ms), 429)
    set_headers(resp.headers, res)
    return resp


def ip_key():
    """The client's address as the Go httplimit.IP() keys it; IPv6 by its /64."""
    ip = ipaddress.ip_address(request.remote_addr)
    return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False)}" if ip.version == 6 else f"ip:{ip}"


def verified_api_key(value):
    """Call once the app has checked the key (as Go httplimit.Header names it):
    the request is then limited by the key instead of its IP."""
    g.luarate_key = "x-api-key:" + hashlib.sha256(value.encode()).hexdigest()[:32]


def escape_braces(s):
    """As the Go client: %, { and } become %25, %7B and %7D inside the {hash tag}."""
    return re.sub(r"[%{}]", lambda m: "%{:02X}".format(ord(m[0])), s)


# Redis's errors that mean it made no decision, as the Go client's ErrUnavailable:
# full, a replica, too few replicas, failing over, loading, busy, a slot moving.
UNDECIDED_CODES = ("OOM", "READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING", "BUSY", "CLUSTERDOWN", "TRYAGAIN")


def undecided(err):
    """Whether err means Redis made no decision (down, too slow, full, a replica...):
    fail open or closed then. Anything else, the script refusing a limit or a key, a
    Redis user without the scripts' permissions, a wrong password, is a setup error."""
    if isinstance(err, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError, ReadOnlyError, TryAgainError, ClusterDownError)):
        return True  # (redis-py strips the code of the errors it has a class for)
    return isinstance(err, ResponseError) and str(err).split(" ", 1)[0] in UNDECIDED_CODES


def default_key():
    return g.get("luarate_key") or ip_key()


class Limiter:
    """fail_open: serve requests when Redis cannot decide (the default, as the Go
    middleware), or answer 503; a setup error is raised (a 500), never served
    unlimited. algorithm: a script name from scripts_dir."""

    def __init__(self, redis_client, scripts_dir, prefix="rl:", fail_open=True, algorithm="gcra"):
        self.prefix, self.fail_open, self.algorithm = escape_braces(prefix), fail_open, algorithm
        self.scripts = {}  # name -> (key tag, script)
        for file in sorted(os.listdir(scripts_dir)):
            with open(os.path.join(scripts_dir, file), "rb") as f:
                src = f.read()
            m = re.match(rb"-- luarate: ([a-z_]+) v([1-9][0-9]*)\n", src)
            if m:  # "-- luarate: sliding_window_log v3" -> key tag "swl3"
                tag = "".join(w[0] for w in m[1].decode().split("_")) + m[2].decode()
                self.scripts[m[1].decode()] = (tag, redis_client.register_script(src))

    def hit(self, key, limits, cost=1, mode="take", lockout_ms=0, algorithm=None):
        """One atomic decision over every limit. Raises RedisError when Redis cannot decide."""
        tag, script = self.scripts[algorithm or self.algorithm]
        keys = [f"{self.prefix}{{{escape_braces(key)}}}:{tag}:{period}" for _, period in limits]
        return decode_reply(script(keys=keys, args=script_args(limits, cost, mode, lockout_ms)))

    def limit(self, limits, key=default_key, scope=None, algorithm=None, fail_open=None):
        """Decorator: limits is a string, or a function (reading flask.request)
        returning one. Each route counts apart (scope: its endpoint, e.g. "public"
        or "blueprint.view"); routes given one scope share a counter, and
        scope="" is the bare key."""
        fixed = None if callable(limits) else parse_limits(limits)
        cached = functools.lru_cache(maxsize=64)(parse_limits)

        def decorate(view):
            @functools.wraps(view)
            def wrapped(*args, **kwargs):
                name = request.endpoint if scope is None else scope
                k = f"{name}:{key()}" if name else key()
                try:
                    res = self.hit(k, fixed or cached(limits()), algorithm=algorithm)
                except RedisError as e:
                    if not undecided(e):
                        raise  # a setup error (a bad limit or key, a missing permission): a bug, not an outage
                    return self.unavailable(k, e, self.fail_open if fail_open is None else fail_open,
                                            lambda: view(*args, **kwargs))
                if not res.allowed:
                    return denied(res)
                resp = make_response(view(*args, **kwargs))
                set_headers(resp.headers, res)
                return resp
            return wrapped
        return decorate

    def unavailable(self, key, err, fail_open, serve=None):
        """Log why there is no decision; serve() when failing open, else 503."""
        outcome = "failed_open" if fail_open else "failed_closed"
        log.error("luarate: no rate-limit decision outcome=%s key=%s method=%s path=%s error=%r",
                  outcome, key, request.method, request.path, err)
        if fail_open:
            return serve()
        resp = make_response(jsonify(error="rate limiter unavailable, retry later", retry_after=1), 503)
        resp.headers["Retry-After"] = "1"
        return resp
