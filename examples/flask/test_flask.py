"""End-to-end test of the Flask example: its own redis-server and two
`gunicorn -w 4` apps on free loopback ports, bounded concurrent load, a Go
program on the same Redis, and the tutorials' limiters beside luarate's; first,
the limit notation read by parse_limits and by Go's ParseLimits alike.

    /usr/bin/python3 examples/flask/test_flask.py      # or: bash examples/flask/run.sh

Ends with "N passed, 0 failed"; exits 1 on any failure. Needs redis-server,
Debian's python3-flask, python3-redis and gunicorn, and go.
"""
import concurrent.futures, json, logging, math, os, shutil, signal, socket, subprocess, sys, tempfile, time, uuid
import urllib.error, urllib.parse, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import redis  # noqa: E402
from luarate_flask import Limiter, Result, parse_limits, set_headers  # noqa: E402

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    passed, failed = passed + bool(ok), failed + (not ok)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment


def request(url, method="GET", headers=None, data=None):
    """(status, headers, JSON body) of one request, 10 s at most."""
    body = urllib.parse.urlencode(data).encode() if data else None
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with LOOPBACK.open(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def flood(url, n, threads=16, headers=None):
    """n requests, `threads` at a time; returns (responses, seconds)."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(request, url, headers=headers(i) if callable(headers) else headers)
                   for i in range(n)]
        out = [f.result(timeout=60) for f in futures]
    return out, time.monotonic() - start


def admitted(responses):
    return sum(1 for status, _, _ in responses if status == 200)


class Processes:
    """The servers this test starts; stop() ends them (and only them)."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.tmp, name + ".log"), "w+")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=HERE,
                             env=dict(os.environ, **(env or {})), start_new_session=True)
        self.procs.append(p)
        return p, log

    def stop(self, p):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)  # p leads its own process group
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def start_redis(procs):
    for _ in range(10):
        port = free_port()
        p, _ = procs.start(f"redis-{port}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no", "--dir", procs.tmp])
        r = redis.Redis(port=port, socket_timeout=2)
        for _ in range(100):
            try:
                if r.info("server")["process_id"] == p.pid:  # ours, not a server that won the port
                    return p, port
            except redis.RedisError:
                pass
            if p.poll() is not None:
                break
            time.sleep(0.05)
        procs.stop(p)
    raise RuntimeError("could not start redis-server on a free loopback port")


def start_gunicorn(procs, module, env):
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        p, log = procs.start(f"{module}-{port}", [sys.executable, "-m", "gunicorn", "-w", "4",
                                                 "-b", f"127.0.0.1:{port}", module], env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            log.seek(0)
            if log.read().count("Booting worker") >= 4:  # all four, so the load meets them all
                return p, log, f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        procs.stop(p)
    log.seek(0)
    raise RuntimeError(f"gunicorn {module} did not boot 4 workers:\n{log.read()}")


def check_flood(name, url, n, limit, period_s, headers=None):
    """Exactly `limit` of n concurrent requests admitted, headers as the Go middleware's."""
    start = time.time()
    out, secs = flood(url, n, headers=headers)
    end = time.time()
    ok = [(h, b) for s, h, b in out if s == 200]
    denied = [(h, b) for s, h, b in out if s == 429]
    check(f"{name}: {limit} of {n} concurrent requests admitted", len(ok) == limit and len(denied) == n - limit,
          f"{len(ok)} admitted, {len(denied)} denied, in {secs:.2f} s")
    check(f"{name}: X-RateLimit-Limit {limit}, Remaining counts down {limit - 1}..0 once each",
          all(h["X-RateLimit-Limit"] == str(limit) for h, _ in ok + denied)
          and sorted(int(h["X-RateLimit-Remaining"]) for h, _ in ok) == list(range(len(ok))))
    check(f"{name}: every 429 has Retry-After >= 1 and the JSON body",
          all(int(h.get("Retry-After") or 0) >= 1 and h["X-RateLimit-Remaining"] == "0" and h["X-RateLimit-Reset"]
              and b["error"] == "rate limit exceeded" and b["retry_after"] == int(h.get("Retry-After") or 0)
              for h, b in denied))
    resets = [int(h["X-RateLimit-Reset"]) for h, _ in ok + denied]
    check(f"{name}: X-RateLimit-Reset is a Unix time within the {period_s} s period",
          all(int(start) <= t <= math.ceil(end) + period_s for t in resets), f"{min(resets)}..{max(resets)}, "
          f"requests sent from {start:.0f} to {end:.0f}")
    return {b["worker"] for _, b in ok}


def test_app(base, r, procs, redis_proc, redis_port, log):
    workers = check_flood("/public", base + "/public", 40, 10, 60)
    workers |= check_flood("/private, an invented X-API-Key per request (limited by IP)", base + "/private",
                           20, 2, 60, headers=lambda i: {"X-API-Key": uuid.uuid4().hex})
    workers |= check_flood("/private, a verified X-API-Key", base + "/private", 10, 2, 60, {"X-API-Key": "key-b"})
    workers |= check_flood("/api/data (10 per minute; 100 per day, one atomic call)", base + "/api/data", 30, 10, 60)
    day = Limiter(r, os.path.join(ROOT, "scripts")).hit("data:ip:127.0.0.1", parse_limits("100/day"), cost=0)
    check("/api/data: the day limit was charged only for the 10 admitted", day.remaining == 90,
          f"day remaining {day.remaining}")
    workers |= check_flood("/dynamic, X-User-Role: premium", base + "/dynamic", 130, 100, 3600,
                           {"X-API-Key": "key-c", "X-User-Role": "premium"})
    workers |= check_flood("/dynamic, no role", base + "/dynamic", 25, 10, 3600, {"X-API-Key": "key-d"})
    check("the load met several gunicorn workers", len(workers) >= 2, f"{len(workers)} workers answered")

    # One limit shared with Go: Flask takes 3, Go sees 7 left and takes 2, Flask sees 4 left after its 4th.
    for _ in range(3):
        request(base + "/dynamic", headers={"X-API-Key": "key-e"})
    go = subprocess.run([os.path.join(procs.tmp, "gocheck"), "-redis", f"127.0.0.1:{redis_port}", "-scope",
                         "dynamic", "-api-key", "key-e", "-rate", "10", "-period", "1h", "-allow", "2"],
                        capture_output=True, text=True, timeout=30)
    _, h, _ = request(base + "/dynamic", headers={"X-API-Key": "key-e"})
    check("Go's Peek sees the 3 Flask requests, and Flask sees Go's 2",
          go.stdout.split("\n")[:3] == ["peek allowed=true remaining=7 limit=10",
                                        "allow allowed=true remaining=6 limit=10",
                                        "allow allowed=true remaining=5 limit=10"]
          and h["X-RateLimit-Remaining"] == "4", f"go: {go.stdout.strip()!r} {go.stderr.strip()!r}; "
                                                 f"then Flask: Remaining {h['X-RateLimit-Remaining']}")

    odd = "user:{42}%"  # braces and % escaped as the Go client escapes them
    for _ in range(3):
        Limiter(r, os.path.join(ROOT, "scripts")).hit(odd, parse_limits("10/hour"))
    go = subprocess.run([os.path.join(procs.tmp, "gocheck"), "-redis", f"127.0.0.1:{redis_port}", "-key", odd,
                         "-rate", "10", "-period", "1h"], capture_output=True, text=True, timeout=30)
    check(f"Go's Peek sees 3 requests Python made on the key {odd!r}",
          go.stdout.strip() == "peek allowed=true remaining=7 limit=10", f"go: {go.stdout.strip()!r} {go.stderr.strip()!r}")

    login = base + "/login"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        out = list(pool.map(lambda _: request(login, "POST", data={"username": "carol", "password": "guess"}),
                            range(20), timeout=60))
    statuses = sorted(s for s, _, _ in out)
    check("/login: 20 concurrent wrong passwords: 5 refused as wrong, 15 locked out",
          statuses == [401] * 5 + [429] * 15, f"{statuses.count(401)} x 401, {statuses.count(429)} x 429")
    s, _, b = request(login, "POST", data={"username": "dave", "password": "correct horse"})
    check("/login: the 21st attempt from one IP is refused whatever the user", s == 429 and "address" in b["error"],
          f"{s} {b}")
    r.delete("rl:{login-ip:ip:127.0.0.1}:swl3:900000")  # lift the IP's lock, as Reset does
    s, h, _ = request(login, "POST", data={"username": "carol", "password": "correct horse"})
    check("/login: a locked user is refused even with the right password, for the hour",
          s == 429 and int(h.get("Retry-After") or 0) > 3500, f"{s} Retry-After {h.get('Retry-After')}")
    right = [request(login, "POST", data={"username": "bob", "password": "correct horse"})[0] for _ in range(8)]
    wrong = [request(login, "POST", data={"username": "bob", "password": "guess"}) for _ in range(6)]
    check("/login: successes are given back: 8 right, then 5 wrong (Remaining 4..0), then locked",
          right == [200] * 8 and [s for s, _, _ in wrong] == [401] * 5 + [429]
          and [h["X-RateLimit-Remaining"] for _, h, _ in wrong[:5]] == ["4", "3", "2", "1", "0"],
          f"{right} {[(s, h['X-RateLimit-Remaining']) for s, h, _ in wrong]}")

    procs.stop(redis_proc)
    s, h, _ = request(base + "/public")
    check("Redis down: /public fails open (served, no rate-limit headers)", s == 200 and "X-RateLimit-Limit" not in h)
    s, h, _ = request(login, "POST", data={"username": "bob", "password": "guess"})
    check("Redis down: /login fails closed (503, Retry-After: 1)", s == 503 and h["Retry-After"] == "1")
    time.sleep(0.5)  # gunicorn's log is written by the workers
    log.seek(0)
    text = log.read()
    check("Redis down: each is logged in one line naming outcome, key and route",
          "luarate: no rate-limit decision outcome=failed_open key=public:ip:127.0.0.1 method=GET path=/public" in text
          and "outcome=failed_closed key=login-user:bob method=POST path=/login" in text)


# The limit notation: each string and what it reads as (None: rejected). Go's ParseLimits must agree.
# (Go also takes "10/mİn": its strings.ToLower maps "İ" to "i". Its grammar, and parse_limits, do not.)
MINUTE_DAY = [(10, 60000), (100, 86400000)]
LIMITS = {
    "10/second;1000/day": [(10, 1000), (1000, 86400000)], "10 per minute": [(10, 60000)],
    "10/minute": [(10, 60000)], "10 / MINUTE": [(10, 60000)], "10 PER Minutes": [(10, 60000)],
    "5/15m": [(5, 900000)], "5/100ms": [(5, 100)], "5/100 MS": [(5, 100)], "3/millisecond": [(3, 1)],
    "3/2milliseconds": [(3, 2)], "1/sec": [(1, 1000)], "2/30 seconds": [(2, 30000)], "7/min": [(7, 60000)],
    "2/hr": [(2, 3600000)], "3 per 2 hours": [(3, 7200000)], "1/1D": [(1, 86400000)], "4/2 days": [(4, 172800000)],
    "100/hour, 7/30s": [(100, 3600000), (7, 30000)], "\t10 per\tminute ; 100 per  day\t": MINUTE_DAY,
    "10/m,100/d": MINUTE_DAY, "0010/05m": [(10, 300000)], "1000000000/s": [(1000000000, 1000)],
    "1/1000000000000ms": [(1, 10**12)], "1/11574d": [(1, 11574 * 86400000)],
    "10 / per minute": None, "": None, " ": None, "10/s;": None, ";10/s": None, "10/s;;5/m": None,
    "10/s, ,5/m": None, "5/100mins": None, "10/hs": None, "10/ds": None, "10/secs": None, "10/hrs": None,
    "10/fortnight": None, "0/minute": None, "1000000001/s": None, "10/0m": None, "10/00m": None,
    "ten/minute": None, "10/minute;5/60s": None, "10/1m,10/60000ms": None, "10per minute": None,
    "10 perminute": None, "10 per": None, "10 per/minute": None, "10//minute": None, "10/": None,
    "/minute": None, "10 minute": None, "10/1000000000001ms": None, "1/11575d": None, "-1/s": None,
    "+1/s": None, "1.5/s": None, "10/1.5s": None, "10/s\n": None, "10\n/s": None, "10/\u00a0s": None,
    "10/\u017f": None, "10/m\u0131n": None, "\u0661\u0660/s": None, "10/\u0661s": None,
    "1" + "0" * 5000 + "/s": None, "10/" + "9" * 5000 + "ms": None, "10/s 5/m": None,
}


def test_parse_limits(parsecheck):
    def read(text):
        try:
            return parse_limits(text)
        except ValueError:
            return None
    got = {text: read(text) for text in LIMITS}
    wrong = {text: v for text, v in got.items() if v != LIMITS[text]}
    check(f"parse_limits reads {sum(v is not None for v in LIMITS.values())} limit strings and rejects "
          f"{sum(v is None for v in LIMITS.values())} as the table says", not wrong, wrong)

    def line(limits):
        return "error" if limits is None else " ".join(f"{rate}/{period}" for rate, period in limits)
    go = subprocess.run([parsecheck], input="".join(json.dumps(t) + "\n" for t in LIMITS),
                        capture_output=True, text=True, timeout=30)
    differ = {t: (line(got[t]), g) for t, g in zip(LIMITS, go.stdout.split("\n")) if line(got[t]) != g}
    check("Go's ParseLimits reads every one of them as parse_limits does",
          go.returncode == 0 and len(go.stdout.split("\n")) == len(LIMITS) + 1 and not differ,
          f"(python, go): {differ} {go.stderr.strip()}" if differ or go.returncode else "")

    errors = []
    for bad in ["10/fortnight", "10/s;", "10/minute;5/60s", "10/s;5/100mins"]:
        try:
            parse_limits(bad)
        except ValueError as e:
            errors.append(str(e))
    check("parse_limits names the bad part", len(errors) == 4 and "'10/fortnight' in '10/fortnight'" in errors[0]
          and "'' in '10/s;': empty limit" in errors[1] and "'5/60s'" in errors[2] and "same period" in errors[2]
          and "unknown unit 'mins'" in errors[3], errors)


def test_set_headers():
    now_ms = 1_700_000_000_500
    got = []
    for res in [Result(True, 10, 9, 400, 0), Result(True, 10, 9, 600, 0), Result(True, 10, 10, 0, 0),
                Result(False, 10, 0, 59_500, 0), Result(False, 10, 0, 2_000, 1_001)]:
        h = {}
        set_headers(h, res, now_ms)
        got.append((h["X-RateLimit-Reset"], h.get("Retry-After")))
    # as httplimit: ceil((now_ms + reset_after_ms) / 1000), Retry-After ceil(retry_after_ms / 1000) and >= 1
    want = [("1700000001", None), ("1700000002", None), ("1700000001", None), ("1700000060", "1"),
            ("1700000003", "2")]
    check("set_headers: X-RateLimit-Reset is the Unix time in seconds, rounded up as httplimit rounds it",
          got == want, got)


def test_fail_closed_decorator():
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", RATELIMIT_FAIL="closed")
    import app  # in this process: nothing listens on that port
    lines = []
    handler = logging.Handler()
    handler.emit = lambda rec: lines.append(rec.getMessage())
    logging.getLogger("luarate").addHandler(handler)
    logging.getLogger("luarate").propagate = False
    s = app.app.test_client().get("/public")
    check("RATELIMIT_FAIL=closed: the decorator answers 503 when Redis is down, and logs it once",
          s.status_code == 503 and s.headers["Retry-After"] == "1" and s.get_json()["retry_after"] == 1
          and len(lines) == 1 and "outcome=failed_closed key=public:ip:127.0.0.1" in lines[0], lines[0] if lines else "")


def test_setup_error(port):
    """A Redis user without EVALSHA is a setup error: the decorator raises (a 500) under
    either policy, as the Go middleware answers 500, instead of serving unlimited."""
    from flask import Flask
    r = redis.Redis(port=port)
    r.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"],
                  commands=["-evalsha", "-eval"])
    scripts = os.path.join(ROOT, "scripts")
    codes = []
    for fail_open in (True, False):
        a = Flask("setup")
        limiter = Limiter(redis.Redis(port=port, username="noscripts", password="pw"), scripts, fail_open=fail_open)
        a.get("/x")(limiter.limit("10/minute")(lambda: "ok"))
        a.logger.disabled = True  # the traceback of the expected 500
        codes.append(a.test_client().get("/x").status_code)
    check("a Redis user without EVALSHA: 500 failing open or closed, never served unlimited", codes == [500, 500],
          f"{codes}")
    r.acl_deluser("noscripts")


def compare_tutorials(base, r, window, rounds=5):
    print(f"\nThe tutorials' limiters and luarate: 10 per {window} s per IP, gunicorn -w 4, one Redis.")
    print(f"{rounds} rounds of 60 requests, 16 at a time (Redis emptied before each), then one client")
    print(f"retrying every 0.25 s for {2 * window} s:")
    print(f"{'':28} {'admitted of 60, per round':26} retries admitted")
    results = {}
    for route, name in [("/getset", "tutorial GET then SET"), ("/incr", "tutorial INCR + EXPIRE"),
                        ("/luarate", "luarate sliding_window_log")]:
        counts, slowest = [], 0
        for _ in range(rounds):
            r.flushdb()
            out, secs = flood(base + route, 60)
            counts.append(admitted(out))
            slowest = max(slowest, secs)
        retries, deadline = [], time.monotonic() + 2 * window
        while time.monotonic() < deadline:
            retries.append(request(base + route)[0])
            time.sleep(0.25)
        results[route] = (counts, retries.count(200), slowest)
        print(f"{name:28} {' '.join(f'{c:2}' for c in counts):26} {retries.count(200)} of {len(retries)}")
    print(flush=True)
    luarate, incr = results["/luarate"], results["/incr"]
    check("luarate admits exactly 10 of 60 in every round, and admits retries again after the window",
          luarate[0] == [10] * rounds and luarate[1] > 0, f"slowest round took {luarate[2]:.2f} s of the {window} s")
    check("the INCR + EXPIRE tutorial keeps denying a client that keeps retrying", incr[1] == 0)


def main():
    def stop(signum, _):  # fail, and still clean up
        raise RuntimeError("ran over 300 s" if signum == signal.SIGALRM else "terminated")
    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.alarm(300)
    tmp = tempfile.mkdtemp(prefix="luarate-flask-")
    procs = Processes(tmp)
    try:
        test_set_headers()
        subprocess.run(["go", "build", "-o", tmp + os.sep, "./examples/flask/gocheck", "./examples/flask/parsecheck"],
                       cwd=ROOT, check=True, timeout=240)
        test_parse_limits(os.path.join(tmp, "parsecheck"))
        redis_proc, port = start_redis(procs)
        url = f"redis://127.0.0.1:{port}/0"
        r = redis.Redis.from_url(url)
        _, _, tutorials = start_gunicorn(procs, "tutorial_limiters:app", {"REDIS_URL": url, "TUTORIAL_WINDOW": "2"})
        compare_tutorials(tutorials, r, 2)
        _, log, base = start_gunicorn(procs, "app:app", {"REDIS_URL": url, "API_KEYS": "key-b,key-c,key-d,key-e"})
        test_setup_error(port)
        test_app(base, r, procs, redis_proc, port, log)
        test_fail_closed_decorator()
    except Exception as e:
        check("the test ran to its end", False, repr(e))
    finally:
        signal.alarm(0)
        procs.stop_all()
        if failed:
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
