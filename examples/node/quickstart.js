const fs = require('node:fs');
const Redis = require('ioredis');

const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0');
redis.defineCommand('gcra', { lua: fs.readFileSync('scripts/gcra.lua', 'utf8') }); // EVALSHA, EVAL on NOSCRIPT

(async () => {
  // 10 per second per user, bursts of 10 ("rate period_ms burst"; cost 1 by default); the Go client's key for the same limit
  for (let i = 1; i <= 12; i++) {
    const [allowed, , remaining, , retryMs] = await redis.gcra(1, 'rl:{user42}:g3:1000', '10 1000 10');
    console.log(i, allowed ? 'allowed' : `denied, retry in ${retryMs} ms`, `remaining=${remaining}`);
  }
  redis.disconnect();
})();
