#!/usr/bin/env bash
# Store-and-forward acceptance: the broker (a real mosquitto) is stopped for
# 60 seconds while the agent serves 100 requests and is restarted once in
# the middle; after the broker is back, all 100 request records arrive on
# /telemetry, none twice (by their ids), at QoS 1 to a persistent
# mosquitto_sub session that was registered before the outage. Prints the
# reconnect time after the broker restart and the time until the last
# record arrived. OUTAGE_S overrides the 60 s (for quick local runs).
# Needs mosquitto, mosquitto_sub, curl, python3, sqlite3.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
src=$(cd "$(dirname "$0")/../.." && pwd)
model=$shared/models/stories260K.gguf
outage_s=${OUTAGE_S:-60}
n_requests=100
for tool in mosquitto mosquitto_sub curl python3 sqlite3; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
# shellcheck source=lib_mqtt.sh
. "$(dirname "$0")/lib_mqtt.sh"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  mqtt_stop
  rm -rf "$work"
}
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }

mqtt_start "$work/mq" || exit 1
port=$MQTT_PORT
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1

# The consumer's persistent session (clean session off, QoS 1): the broker
# queues what arrives for it while it is away.
mosquitto_sub -h 127.0.0.1 -p "$port" -c -i outage-consumer -q 1 -t "$P/dev1/telemetry" -W 1 \
  >/dev/null 2>&1

start() {
  "$bin" serve -m "$model" --socket "$work/dev1.sock" --state-dir "$work/state" \
    --lua-dir "$src/lua" --broker "mqtt://127.0.0.1:$port" --device-id dev1 \
    --fleet-key "$work/k.pub" --set fleet.keepalive_s=5 --set fleet.reconnect_min_ms=200 \
    --set fleet.reconnect_max_ms=2000 >>"$work/agent.log" 2>&1 &
  agent=$!
  pids+=("$agent")
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$work/dev1.sock" http://localhost/health)" = 200 ] && return 0
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.1
  done
  echo "the agent did not become ready:"; cat "$work/agent.log"; exit 1
}
serve() { # N requests, each recorded with its own id
  local n=0
  for _ in $(seq 1 "$1"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$work/dev1.sock" \
      http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":4}')
    [ "$code" = 200 ] && n=$((n + 1))
  done
  served=$((served + n))
}
served=0
start
for _ in $(seq 1 100); do grep -q "fleet: connected" "$work/agent.log" && break; sleep 0.1; done
grep -q "fleet: connected" "$work/agent.log" && ok "the agent is connected before the outage" ||
  bad "the agent is connected before the outage"

mqtt_stop
t_down=$(now)
serve $((n_requests / 2))
kill -TERM "$agent"; wait "$agent" 2>/dev/null
start
serve $((n_requests - n_requests / 2))
[ "$served" = "$n_requests" ] && ok "$n_requests requests served during the outage, with one agent restart" ||
  bad "$served of $n_requests requests served during the outage"
rest=$(python3 -c "import sys; print(max(0.0, $outage_s - (float(sys.argv[2]) - float(sys.argv[1]))))" "$t_down" "$(now)")
sleep "$rest"
echo "# broker down for $(since "$t_down") s"
marker=$(wc -l <"$work/agent.log")
connects=$(grep -c "fleet: connected" "$work/agent.log")
mqtt_start "$work/mq" "$port" || exit 1
t_up=$(now)
mosquitto_sub -h 127.0.0.1 -p "$port" -c -i outage-consumer -q 1 -t "$P/dev1/telemetry" \
  -W 120 >"$work/telemetry.out" 2>/dev/null &
subp=$!
pids+=("$subp")
t_conn=""
for _ in $(seq 1 1200); do
  if [ -z "$t_conn" ] && [ "$(grep -c "fleet: connected" "$work/agent.log")" -gt "$connects" ]; then
    t_conn=$(since "$t_up")
  fi
  n=$(python3 -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    try:
        n += json.loads(line).get("type") == "request"
    except ValueError:
        pass
print(n)' "$work/telemetry.out")
  # The records can all arrive within one turn of this loop, right after
  # the reconnect: look at the log again before deciding.
  if [ -z "$t_conn" ] && [ "$(grep -c "fleet: connected" "$work/agent.log")" -gt "$connects" ]; then
    t_conn=$(since "$t_up")
  fi
  [ "$n" -ge "$n_requests" ] && [ -n "$t_conn" ] && break
  sleep 0.1
done
t_all=$(since "$t_up")
sleep 2 # anything sent twice would arrive now
kill -TERM "$subp" 2>/dev/null; wait "$subp" 2>/dev/null
echo "# agent reconnected ${t_conn:-never} s after the broker restart; $n request records after $t_all s"
python3 - "$work/telemetry.out" "$n_requests" <<'EOF' && ok "all $n_requests request records arrived, none twice" || bad "request records after the outage"
import json, sys
ids = []
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("type") == "request":
        ids.append(d["id"])
want = int(sys.argv[2])
dups = len(ids) - len(set(ids))
print(f"# {len(ids)} request records, {len(set(ids))} distinct ids, {dups} duplicates")
sys.exit(0 if len(set(ids)) == want and dups == 0 else 1)
EOF
if [ -n "$t_conn" ]; then
  ok "the agent reconnected on its own (${t_conn} s)"
else
  bad "the agent did not log its reconnect"; tail -n +"$((marker + 1))" "$work/agent.log" | head -20
fi
pending=$(sqlite3 "$work/state/outpost.db" "SELECT count(*) FROM outbox WHERE sent = 0" 2>/dev/null || echo "?")
[ "$pending" = 0 ] && ok "the outbox is empty once acknowledged" || bad "outbox still holds $pending unsent messages"
kill -TERM "$agent"; wait "$agent" 2>/dev/null
echo "{\"test\":\"fleet_outage\",\"outage_s\":$outage_s,\"requests\":$n_requests,\"reconnect_s\":${t_conn:-null},\"all_records_s\":$t_all}"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
