#!/usr/bin/env bash
# Transcript test: runs the documents' `redis-cli` examples (and the rest of
# transcript.txt) from the project root against a redis-server it starts on a
# free loopback port, and compares the output line by line. redis-cli lines of
# the documents that the transcript does not list, and every script's own
# header example, are run too: they must answer without an error (limiter
# scripts: with exactly seven integers).
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

# cli runs a pasted "redis-cli ..." line on our server, with terminal-style
# output. Words are split as a shell would (quotes and all), without expansion.
cli() {
  local -a words
  mapfile -t words < <(xargs printf '%s\n' <<<"$1")
  [ "${words[0]}" = redis-cli ] || { echo "not a redis-cli command: $1"; return; }
  redis-cli --no-raw -p "$REDIS_PORT" "${words[@]:1}" 2>&1
}

# matches GOT WANT: equal lines, where "<lo..hi>" in WANT matches an integer in
# range and "<*>" any text.
matches() {
  local got=$1 want=$2
  if [[ $want == *'<*>'* ]]; then
    local pre=${want%%'<*>'*} post=${want#*'<*>'}
    [[ $got == "$pre"* && $got == *"$post" ]] && ((${#got} >= ${#pre} + ${#post}))
  elif [[ $want =~ ^(.*)\<(-?[0-9]+)\.\.(-?[0-9]+)\>(.*)$ ]]; then
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

# smoke LABEL COMMAND: on an empty server the command must answer without an
# error; a limiter script (its header documents the seven-integer reply) must
# answer exactly seven integers.
smoke() {
  local label=$1 cmd=$2 got script seven=0
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  got=$(cli "$cmd")
  if [[ $cmd =~ --eval\ (scripts/[a-z_]+\.lua) ]]; then
    script=${BASH_REMATCH[1]}
    grep -q 'Reply: {allowed, limit, remaining, reset_after_ms, retry_after_ms, delay_ms, granted}' "$script" 2>/dev/null && seven=1
  fi
  if [ -z "$got" ] || grep -q '^(error)' <<<"$got" ||
    { ((seven)) && ! { [ "$(grep -cE '^[1-7]\) \(integer\) [0-9]+$' <<<"$got")" = 7 ] && [ "$(wc -l <<<"$got")" = 7 ]; }; }; then
    fail "$label: $cmd"
    echo "$got" | sed 's/^/    /'
  else
    passed=$((passed + 1))
  fi
}

# 2. the documents' redis-cli lines that the transcript does not pin down still run
docs=(README.md scripts/README.md docs/*.md)
while IFS=: read -r doc line; do
  found=0
  for c in "${commands[@]}"; do [ "$c" = "$line" ] && found=1; done
  ((found)) || smoke "$doc (not in $here/transcript.txt)" "$line"
done < <(grep -HE '^redis-cli ' "${docs[@]}")

# 3. every script's header example works as pasted, on an empty server
for f in scripts/*.lua; do
  example=$(grep -m1 -E '^--\s+redis-cli --eval ' "$f" | sed -E 's/^--\s+//') || true
  if [ -z "$example" ]; then
    fail "$f has no 'redis-cli --eval' example in its header"
    continue
  fi
  smoke "$f header example" "$example"
done

echo "redis-cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
