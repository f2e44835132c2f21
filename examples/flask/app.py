"""The Flask API of the Redis rate-limiting tutorials, limited by luarate's scripts.

    REDIS_URL=redis://127.0.0.1:6379/0 API_KEYS=demo-key gunicorn -w 4 app:app
"""
import logging, os
import redis
from flask import Flask, jsonify, request
from redis.exceptions import RedisError
from luarate_flask import Limiter, denied, ip_key, parse_limits, set_headers, undecided, verified_api_key

logging.basicConfig(level=logging.INFO)
app = Flask(__name__)
r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                         socket_timeout=1, socket_connect_timeout=1)
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")
limiter = Limiter(r, SCRIPTS, fail_open=os.environ.get("RATELIMIT_FAIL", "open") == "open")
API_KEYS = {k for k in os.environ.get("API_KEYS", "").split(",") if k}


@app.before_request
def check_api_key():
    # Only a key the app knows names a client; any other is limited by its IP
    # (a header anyone can invent must not be a fresh identity).
    key = request.headers.get("X-API-Key")
    if key in API_KEYS:
        verified_api_key(key)


def answer(**body):
    return jsonify(worker=os.getpid(), **body)  # which gunicorn worker answered


@app.get("/api/data")
@limiter.limit("10 per minute; 100 per day", key=ip_key)  # per IP, as in the tutorials
def data():
    return answer(data="some data")


@app.get("/public")
@limiter.limit("10/minute")  # by verified API key, else by IP
def public():
    return answer(message="public")


@app.get("/private")
@limiter.limit("2/minute")
def private():
    return answer(message="private")


def role_limit():
    # A real app takes the role from the authenticated user, not from a
    # header the client writes.
    return "100/hour" if request.headers.get("X-User-Role") == "premium" else "10/hour"


@app.get("/dynamic")
@limiter.limit(role_limit)
def dynamic():
    return answer(role=request.headers.get("X-User-Role", "free"))


# Login: 20 attempts per 15 minutes per IP (then locked 15 minutes), and 5
# failures per 15 minutes per username (then locked an hour). Each attempt
# takes one unit from the username; a right password gives it back, so only
# failures count. Fails closed: this guards passwords.
PASSWORD = "correct horse"  # every user's, in this demo
ATTEMPTS, FAILURES = parse_limits("20/15m"), parse_limits("5/15m")
LOG = "sliding_window_log"


@app.post("/login")
def login():
    user, password = request.form.get("username", ""), request.form.get("password", "")
    if not user:
        return jsonify(error="username is missing"), 400
    user_key = "login-user:" + user
    try:
        res = limiter.hit("login-ip:" + ip_key(), ATTEMPTS, lockout_ms=15 * 60000, algorithm=LOG)
        if not res.allowed:
            return denied(res, "too many login attempts from this address")
        res = limiter.hit(user_key, FAILURES, lockout_ms=3600000, algorithm=LOG)
    except RedisError as e:
        if not undecided(e):
            raise  # a setup error: a bug, not an outage
        return limiter.unavailable(user_key, e, fail_open=False)
    if not res.allowed:
        return denied(res, "too many failed logins for this user")
    if password != PASSWORD:
        resp = jsonify(error="wrong username or password")
        resp.status_code = 401
        set_headers(resp.headers, res)  # X-RateLimit-Remaining: failures left before the lock
        return resp
    try:
        limiter.hit(user_key, FAILURES, mode="refund", lockout_ms=3600000, algorithm=LOG)
    except RedisError as e:
        app.logger.error("luarate: login refund failed key=%s error=%r", user_key, e)
    return answer(ok=True, user=user)
