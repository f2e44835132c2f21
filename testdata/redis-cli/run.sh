#!/usr/bin/env bash
# Transcript test: runs the README's `redis-cli --eval` examples (and the rest
# of transcript.txt) from the project root against a redis-server it starts
# on a free loopback port, and compares the output line by line. Also checks
# that every redis-cli line in README.md is in the transcript, and that every
# script's own header example runs and replies with six integers.
# Prints "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=testdata/redis-cli

tmp=$(mktemp -d)
. internal/redistest/redis-server.sh
trap 'stop_redis; rm -rf "$tmp"' EXIT
start_redis "$tmp"

passed=0 failed=0
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

# cli runs a pasted "redis-cli ..." line on our server, with terminal-style output.
cli() {
  local -a words
  read -ra words <<<"$1"
  [ "${words[0]}" = redis-cli ] || { echo "not a redis-cli command: $1"; return; }
  redis-cli --no-raw -p "$REDIS_PORT" "${words[@]:1}" 2>&1
}

# matches GOT WANT: equal lines, where "<lo..hi>" in WANT matches an integer in range.
matches() {
  local got=$1 want=$2
  if [[ $want =~ ^(.*)\<(-?[0-9]+)\.\.(-?[0-9]+)\>(.*)$ ]]; then
    local pre=${BASH_REMATCH[1]} lo=${BASH_REMATCH[2]} hi=${BASH_REMATCH[3]} post=${BASH_REMATCH[4]}
    [[ $got == "$pre"* && $got == *"$post" ]] || return 1
    local n=${got#"$pre"}
    n=${n%"$post"}
    [[ $n =~ ^-?[0-9]+$ ]] && ((n >= lo && n <= hi))
  else
    [ "$got" = "$want" ]
  fi
}

check() { # COMMAND EXPECTED-LINES
  local cmd=$1 want=$2 got
  got=$(cli "$cmd")
  local -a g w
  mapfile -t g <<<"$got"
  mapfile -t w <<<"$want"
  local ok=1 i
  [ ${#g[@]} -eq ${#w[@]} ] || ok=0
  for ((i = 0; ok && i < ${#w[@]}; i++)); do
    matches "${g[i]}" "${w[i]}" || ok=0
  done
  if ((ok)); then
    passed=$((passed + 1))
  else
    fail "$cmd"
    diff <(echo "$want") <(echo "$got") | sed 's/^/    /' || true
  fi
}

# 1. the transcript, in order
cmd="" want=""
commands=()
while IFS= read -r line || [ -n "$line" ]; do
  case $line in
  '#'* | '') continue ;;
  '$ '*)
    [ -z "$cmd" ] || check "$cmd" "$want"
    cmd=${line#'$ '} want=""
    commands+=("$cmd")
    ;;
  *) want=${want:+$want$'\n'}$line ;;
  esac
done <"$here/transcript.txt"
[ -z "$cmd" ] || check "$cmd" "$want"

# 2. every redis-cli line of the README is tested above
while IFS= read -r line; do
  found=0
  for c in "${commands[@]}"; do [ "$c" = "$line" ] && found=1; done
  if ((found)); then passed=$((passed + 1)); else fail "README line not in $here/transcript.txt: $line"; fi
done < <(grep -E '^redis-cli ' README.md)

# 3. every script's header example works on an empty server
redis-cli -p "$REDIS_PORT" flushall >/dev/null
for f in scripts/*.lua; do
  example=$(grep -m1 -E '^--\s+redis-cli --eval ' "$f" | sed -E 's/^--\s+//') || true
  if [ -z "$example" ]; then
    fail "$f has no 'redis-cli --eval' example in its header"
    continue
  fi
  got=$(cli "$example")
  if [ "$(grep -cE '^[1-6]\) \(integer\) [0-9]+$' <<<"$got")" = 6 ] && [ "$(wc -l <<<"$got")" = 6 ]; then
    passed=$((passed + 1))
  else
    fail "$f header example: $example"
    echo "$got" | sed 's/^/    /'
  fi
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
done

echo "redis-cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
