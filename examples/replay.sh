#!/usr/bin/env bash
# Replays every conformance vector (testdata/vectors/*.json) from Python and
# from Node.js against a throwaway redis-server on a free loopback port, then
# stops it. Needs redis-server, python3-redis and node with `npm ci` done in
# examples/node (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
. internal/redistest/redis-server.sh
trap 'stop_redis; rm -rf "$tmp"' EXIT
start_redis "$tmp"
url="redis://127.0.0.1:$REDIS_PORT/0"

# Debian's python3-redis is in the system Python; a python3 earlier on PATH
# (pyenv, a venv) may not have it.
python=python3
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import redis' 2>/dev/null; then
  python=/usr/bin/python3
fi

status=0
"$python" examples/python/replay_vectors.py --redis "$url" || status=1
node examples/node/replay-vectors.js --redis "$url" || status=1

# The quick starts run as printed (from the project root), and scripts/README.md
# still prints them.
doc=scripts/README.md
readme=$(cat "$doc")
for qs in examples/python/quickstart.py examples/node/quickstart.js; do
  case $qs in *.py) run=("$python" "$qs") ;; *) run=(node "$qs") ;; esac
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  if out=$(REDIS_URL=$url "${run[@]}" 2>&1) && [ "$(grep -c allowed <<<"$out")" = 10 ] &&
    [ "$(grep -c denied <<<"$out")" = 2 ]; then
    echo "$qs: 10 allowed, 2 denied, as $doc says"
  else
    echo "FAIL: $qs:"
    echo "$out"
    status=1
  fi
  if [[ $readme != *"$(cat "$qs")"* ]]; then
    echo "FAIL: $doc does not show $qs as it is"
    status=1
  fi
done
exit $status
