#!/usr/bin/env node
// Replay luarate's conformance vectors against a real Redis from Node.js.
//
// Every script in scripts/ becomes an ioredis command (EVALSHA, falling back
// to EVAL on NOSCRIPT), and every case in testdata/vectors/*.json is run step
// by step: each reply, or each error text, must match exactly.
//
//   npm ci && node replay-vectors.js [--redis redis://127.0.0.1:6379/0]
//
// REDIS_URL is used when --redis is not given. Each case gets keys under a
// fresh random prefix, so the vectors never see one another's (or anyone's)
// state; every key the scripts write has a TTL. Prints "N passed, N failed"
// and exits non-zero if any case failed.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const Redis = require('ioredis');

const root = path.resolve(__dirname, '..', '..');

// loadScripts defines one command per scripts/*.lua: the whole integration.
function loadScripts(redis) {
  const names = [];
  for (const file of fs.readdirSync(path.join(root, 'scripts')).sort()) {
    if (!file.endsWith('.lua')) continue;
    const name = path.basename(file, '.lua');
    // no numberOfKeys: each call passes its key count first
    redis.defineCommand(name, { lua: fs.readFileSync(path.join(root, 'scripts', file), 'utf8') });
    names.push(name);
  }
  return names;
}

// runStep returns {reply} or {error: the wire text "ERR luarate: ..."}.
async function runStep(redis, name, keys, argv) {
  try {
    return { reply: await redis[name](keys.length, ...keys, ...argv) };
  } catch (e) {
    if (!(e instanceof Redis.ReplyError)) throw e;
    return { error: e.message.startsWith('ERR ') ? e.message : 'ERR ' + e.message };
  }
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function replay(redis, scripts, file, runId) {
  const vector = JSON.parse(fs.readFileSync(file, 'utf8'));
  const name = vector.script;
  if (!scripts.includes(name)) return { passed: 0, failures: [`${file}: no script scripts/${name}.lua`] };
  let passed = 0;
  const failures = [];
  for (const [ci, c] of vector.cases.entries()) {
    const prefix = `luarate-vectors:node:${runId}:${name}:${ci}:`;
    let ok = true;
    for (const [si, step] of c.steps.entries()) {
      const got = await runStep(redis, name, step.keys.map((k) => prefix + k), step.argv);
      const want = step.error ? { error: step.error } : { reply: step.reply };
      if (!same(got, want)) {
        failures.push(`${name} / ${c.name} / step ${si + 1} (argv ${step.argv.join(' ')}): ` +
          `got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
        ok = false;
        break;
      }
    }
    if (ok) passed++;
  }
  return { passed, failures };
}

async function main() {
  const i = process.argv.indexOf('--redis');
  let url = (i > 0 && process.argv[i + 1]) || process.env.REDIS_URL || 'redis://127.0.0.1:6379/0';
  if (!url.includes('://')) url = 'redis://' + url;
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  let lastError = null;
  redis.on('error', (e) => { lastError = e; }); // reported below, once
  try {
    await redis.connect();
  } catch (e) {
    console.error(`replay-vectors: cannot reach Redis at ${url}: ${(lastError || e).message}`);
    return 2;
  }
  try {
    const scripts = loadScripts(redis);
    const dir = path.join(root, 'testdata', 'vectors');
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
    if (files.length === 0) {
      console.error('replay-vectors: no vectors in testdata/vectors');
      return 2;
    }
    const runId = crypto.randomBytes(4).toString('hex');
    let passed = 0;
    let failed = 0;
    for (const f of files) {
      const r = await replay(redis, scripts, path.join(dir, f), runId);
      passed += r.passed;
      failed += r.failures.length;
      for (const msg of r.failures) console.log('FAIL', msg);
    }
    console.log(`node: ${passed} passed, ${failed} failed`);
    return failed ? 1 : 0;
  } finally {
    redis.disconnect();
  }
}

main().then((code) => { process.exitCode = code; }, (e) => { console.error('replay-vectors:', e.message); process.exitCode = 2; });
