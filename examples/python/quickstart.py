import os
import redis

r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
with open("scripts/gcra.lua", "rb") as f:
    gcra = r.register_script(f.read())  # EVALSHA, falling back to EVAL on NOSCRIPT

# 10 per second per user, bursts of 10 ("rate period_ms burst"; cost 1 by default); the Go client's key for the same limit
for i in range(1, 13):
    allowed, limit, remaining, reset_ms, retry_ms, _, _ = gcra(keys=["rl:{user42}:g3:1000"], args=["10 1000 10"])
    print(i, "allowed" if allowed else f"denied, retry in {retry_ms} ms", f"remaining={remaining}")
