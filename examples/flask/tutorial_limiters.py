"""The two hand-written limiters of the Flask + Redis tutorials, as they are
written, next to luarate's script on the same route shape. test_flask.py runs
this app under gunicorn -w 4 to compare them under one concurrent load.

LIMIT requests per WINDOW seconds per client IP (TUTORIAL_WINDOW, default 60).
"""
import os
import redis
from flask import Flask, jsonify, request
from luarate_flask import Limiter, ip_key

app = Flask(__name__)
r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
LIMIT, WINDOW = 10, int(os.environ.get("TUTORIAL_WINDOW", "60"))
limiter = Limiter(r, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))


@app.get("/getset")
def getset():
    # Read the count, decide, write it back: two requests that read the same
    # count both pass and both write count + 1.
    key = f"rate_limit:getset:{request.remote_addr}"
    current = r.get(key)
    if current is None:
        r.set(key, 1, ex=WINDOW)
    elif int(current) < LIMIT:
        r.set(key, int(current) + 1, keepttl=True)
    else:
        return jsonify(error="Too many requests"), 429
    return jsonify(data="some data")


@app.get("/incr")
def incr():
    # Atomic count, but every request counts, denied ones too, and every
    # request pushes the expiry back: a client that keeps retrying stays denied.
    key = f"rate_limit:incr:{request.remote_addr}"
    pipe = r.pipeline()
    pipe.incr(key)
    pipe.expire(key, WINDOW)
    count, _ = pipe.execute()
    if count > LIMIT:
        return jsonify(error="Too many requests"), 429
    return jsonify(data="some data")


@app.get("/luarate")
@limiter.limit(f"{LIMIT}/{WINDOW}s", key=ip_key, algorithm="sliding_window_log")
def luarate():
    return jsonify(data="some data")
