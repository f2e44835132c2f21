#!/usr/bin/env python3
"""Replay luarate's conformance vectors against a real Redis from Python.

Every script in scripts/ is loaded with redis-py's register_script (EVALSHA,
falling back to EVAL on NOSCRIPT), and every case in testdata/vectors/*.json
is run step by step: each reply, or each error text, must match exactly.

    python3 examples/python/replay_vectors.py [--redis redis://127.0.0.1:6379/0]

REDIS_URL is used when --redis is not given. Each case gets keys under a fresh
random prefix, so the vectors never see one another's (or anyone's) state;
every key the scripts write has a TTL. Prints "N passed, N failed" and exits
non-zero if any case failed. Needs redis-py (Debian: apt-get install python3-redis).
"""
import argparse
import glob
import json
import os
import sys
import uuid

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_scripts(r):
    """Register every scripts/*.lua by name: the whole integration is this."""
    scripts = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.lua"))):
        with open(path, "rb") as f:
            source = f.read()
        name = os.path.basename(path)[: -len(".lua")]
        scripts[name] = r.register_script(source)
    return scripts


def run_step(script, keys, argv):
    """Returns (reply, None) or (None, error text as sent on the wire)."""
    try:
        return script(keys=keys, args=argv), None
    except redis.exceptions.ResponseError as e:
        # redis-py strips the "ERR " code; put it back to compare wire texts.
        text = str(e)
        return None, text if text.startswith("ERR ") else "ERR " + text


def replay(r, scripts, path, run_id):
    with open(path) as f:
        vector = json.load(f)
    name = vector["script"]
    if name not in scripts:
        return 0, [f"{path}: no script scripts/{name}.lua"]
    passed, failures = 0, []
    for ci, case in enumerate(vector["cases"]):
        prefix = f"luarate-vectors:py:{run_id}:{name}:{ci}:"
        for si, step in enumerate(case["steps"], 1):
            keys = [prefix + k for k in step["keys"]]
            reply, err = run_step(scripts[name], keys, step["argv"])
            want_err = step.get("error", "")
            if want_err:
                ok = err == want_err
                got, want = err if err is not None else reply, want_err
            else:
                ok = err is None and reply == step["reply"]
                got, want = err if err is not None else reply, step["reply"]
            if not ok:
                failures.append(
                    f"{name} / {case['name']} / step {si} (argv {' '.join(step['argv'])}): "
                    f"got {got!r}, want {want!r}")
                break
        else:
            passed += 1
    return passed, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
                        help="Redis URL (default $REDIS_URL, else redis://127.0.0.1:6379/0)")
    args = parser.parse_args()
    url = args.redis if "://" in args.redis else "redis://" + args.redis
    r = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        r.ping()
    except redis.exceptions.RedisError as e:
        print(f"replay_vectors: cannot reach Redis at {args.redis}: {e}", file=sys.stderr)
        return 2

    scripts = load_scripts(r)
    paths = sorted(glob.glob(os.path.join(ROOT, "testdata", "vectors", "*.json")))
    if not paths:
        print("replay_vectors: no vectors in testdata/vectors", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:8]
    passed, failed = 0, 0
    for path in paths:
        p, failures = replay(r, scripts, path, run_id)
        passed += p
        failed += len(failures)
        for f in failures:
            print("FAIL", f)
    print(f"python: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
