# Shell twin of redistest.Start, for scripts that need a throwaway Redis:
#   . internal/redistest/redis-server.sh
#   start_redis "$tmpdir"   # sets REDIS_PORT and REDIS_PID
#   ...                     # redis-cli -p "$REDIS_PORT" ...
#   stop_redis
# The server listens on 127.0.0.1 on a free port (never 6379), with
# persistence off and its files in the given directory.

start_redis() {
  local dir=$1 port attempt i
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      continue # taken
    fi
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
      >"$dir/redis-$port.log" 2>&1 &
    REDIS_PID=$!
    for i in $(seq 200); do # 10 s: a loaded machine can be slow to start it
      # ours, not some other server that won a race for the port
      if redis-cli -p "$port" info server 2>/dev/null | grep -q "^process_id:$REDIS_PID"; then
        REDIS_PORT=$port
        return 0
      fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.05
    done
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true # (its exit status is not ours: under set -e it would end the caller)
  done
  echo "could not start redis-server on a free loopback port (see $dir/redis-*.log)" >&2
  return 1
}

stop_redis() {
  if [ -n "${REDIS_PID:-}" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  fi
}
