# lib.sh - what the agent's integration scripts share (sourced, not run):
# locations, a temporary directory removed on exit, the ok/bad counters
# and their closing line, and starting and stopping real `outpost serve`
# processes on Unix sockets in that directory. Every agent started here is
# killed by the EXIT trap if the script ends early; a script that needs
# more cleanup sets lib_on_exit to a function name.
#
#   need [--fail] TOOL...        SKIP (exit 77), or FAIL with --fail, when one is missing
#   ok TEXT / bad TEXT           count and print "ok: ..." / "FAIL: ..."
#   finish                       print "N passed, M failed"; exit 0 only without failures
#   json FILE EXPR               a Python expression over the JSON document d
#   free_port                    a free loopback TCP port (bound, then released)
#   health SOCK                  the HTTP status of GET /health on SOCK
#   agent_start LOG SOCK ARGS... `outpost serve -m $model --socket SOCK ARGS` with its
#                                output appended to LOG (environment as the caller
#                                sets it: VAR=x agent_start ...); waits for /health 200;
#                                the pid in $agent_pid
#   agent_stop PID               SIGTERM, wait; the exit status in $rc
#   wait_log FILE TEXT           until FILE contains TEXT (10 s); false if it never does
#   post SOCK PATH FILE          POST the JSON in FILE; body in $work/body, status in $code
#   metric SOCK NAME             the value of one /metrics sample (NAME with labels), or 0
set -uo pipefail
bin=${OUTPOST_BIN:?}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
shared=${OUTPOST_SHARED:-$src/../shared}
build=${OUTPOST_BUILD:-$src/build}
model=$shared/models/stories260K.gguf
work=$(mktemp -d)
pass=0 fail=0
agent_pid=""
lib_pids=()
lib_on_exit=""

lib_cleanup() {
  [ -n "$lib_on_exit" ] && "$lib_on_exit"
  for p in "${lib_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap lib_cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
finish() {
  echo "$pass passed, $fail failed"
  [ "$fail" = 0 ]
  exit $?
}

need() {
  local strict=0
  [ "${1:-}" = --fail ] && { strict=1; shift; }
  for tool in "$@"; do
    command -v "$tool" >/dev/null && continue
    if [ $strict = 1 ]; then
      echo "FAIL: $tool is not installed (.ci/deps installs it)"
      echo "$pass passed, $((fail + 1)) failed"
      exit 1
    fi
    echo "SKIP: $tool is not installed"
    exit 77
  done
}

json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
health() { curl -s -o /dev/null -w '%{http_code}' --unix-socket "$1" http://localhost/health; }

agent_start() {
  local log=$1 sock=$2
  shift 2
  "$bin" serve -m "$model" --socket "$sock" "$@" >>"$log" 2>&1 &
  agent_pid=$!
  lib_pids+=("$agent_pid")
  for _ in $(seq 1 300); do
    [ "$(health "$sock")" = 200 ] && return 0
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL: the agent did not become ready on $sock:"
  cat "$log"
  echo "$pass passed, $((fail + 1)) failed"
  exit 1
}

agent_stop() {
  kill -TERM "$1"
  wait "$1"
  rc=$?
}

wait_log() {
  for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  return 1
}

post() {
  code=$(curl -s -o "$work/body" -w '%{http_code}' --unix-socket "$1" \
    -H 'Content-Type: application/json' "http://localhost$2" --data-binary @"$3")
}

metric() {
  curl -s --unix-socket "$1" http://localhost/metrics |
    awk -v k="$2" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }'
}
