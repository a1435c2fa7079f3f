#!/usr/bin/env bash
# The fleet channel against a real mosquitto, with mosquitto_sub/_pub as the
# independent clients: the retained status (online; offline after SIGTERM;
# the last will after SIGKILL), ping through `outpost fleet cmd`, every
# rejection case answered on /resp (unsigned, mis-signed, unknown key,
# expired, replayed, wrong device, wrong group, unknown command, not JSON),
# group commands, config.set (a runtime key and a refused one), policy.set
# (a good policy changes routing and persists across a restart; one that
# does not compile and one whose route() fails the dry run leave it
# running), key rotation to a key made by `minisign -G` with a command
# signed by the real `minisign -S`, the old key retired, and a second agent
# on the TLS listener (client certificate, MQTT 5).
# Needs mosquitto, mosquitto_sub/_pub, minisign, openssl, curl, python3.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
src=$(cd "$(dirname "$0")/../.." && pwd)
model=$shared/models/stories260K.gguf
for tool in mosquitto mosquitto_sub mosquitto_pub minisign openssl curl python3; do
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
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
# field JSON EXPR: EXPR over d = the parsed JSON
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

mqtt_certs "$work/mq" || { echo "FAIL: openssl could not make the certificates"; exit 1; }
mqtt_start "$work/mq" || exit 1
P=outpost/v1
sub() { mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" "$@"; }
pub() { mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" "$@"; }

"$bin" ota keygen -p "$work/k1.pub" -s "$work/k1.sec" >/dev/null 2>&1
"$bin" ota keygen -p "$work/stranger.pub" -s "$work/stranger.sec" >/dev/null 2>&1
minisign -G -W -p "$work/mk.pub" -s "$work/mk.sec" >/dev/null 2>&1 ||
  { echo "FAIL: minisign -G"; exit 1; }

# start NAME SOCKET flags...; pid in $started
start() {
  local name=$1 sock=$2
  shift 2
  "$bin" serve -m "$model" --socket "$sock" --state-dir "$work/$name" --lua-dir "$src/lua" \
    --set fleet.keepalive_s=5 --set fleet.reconnect_max_ms=2000 "$@" >>"$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/health)" = 200 ] && return 0
    kill -0 "$started" 2>/dev/null || break
    sleep 0.1
  done
  echo "agent $name did not become ready:"; cat "$work/$name.log"; exit 1
}
wait_log() { for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.1; done; return 1; }
# status DEVICE: the retained status (empty when none)
status() { sub -t "$P/$1/status" -C 1 -W 3 2>/dev/null; }
# wait_state DEVICE STATE SECONDS
wait_state() {
  local s
  for _ in $(seq 1 $((10 * $3))); do
    s=$(status "$1")
    [ "$(field "$s" 'd["state"]')" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
A=(--broker "$MQTT_URL" --device-id dev1 --fleet-key "$work/k1.pub" --group g1 --group g3)
start dev1 "$work/dev1.sock" "${A[@]}"
dev1=$started
wait_log "$work/dev1.log" "fleet: connected" || bad "dev1 connects"
check "status is retained and online with version and model" \
  'wait_state dev1 online 5 && s=$(status dev1) && [ "$(field "$s" "d[\"model\"]")" = stories260K ] && [ -n "$(field "$s" "d[\"version\"]")" ] && [ "$(field "$s" "d[\"policy_version\"]")" = None ]'

# cmd KEY JSON [flags]: `outpost fleet cmd` to dev1; stdout in $reply, exit in $rc
cmd() {
  local key=$1 body=$2
  shift 2
  reply=$("$bin" fleet cmd --broker "$MQTT_URL" --device dev1 -s "$key" --seq-file "$work/seq" \
    --timeout 15 "$@" "$body" 2>>"$work/cli.log")
  rc=$?
}
cmd "$work/k1.sec" '{"cmd":"ping"}'
check "ping: fleet cmd prints the reply and exits 0" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"ok\"]")" = True ] && [ "$(field "$reply" "d[\"result\"][\"pong\"]")" = True ]'

# raw TEXT [TOPIC [WAIT]]: publish TEXT on dev1's cmd topic (or TOPIC); the
# next /resp within WAIT seconds (default 15) in $reply
raw() {
  local out=$work/resp.out topic=${2:-$P/dev1/cmd} wait_s=${3:-15}
  : >"$out"
  sub -t "$P/dev1/resp" -C 1 -W "$wait_s" -q 1 >"$out" 2>/dev/null &
  local sp=$!
  sleep 0.5
  if [ "$1" = --empty ]; then pub -t "$topic" -q 1 -n; else pub -t "$topic" -q 1 -m "$1"; fi
  wait $sp
  reply=$(cat "$out")
}
# sealed FLAGS... JSON: a signed envelope without sending (--print)
sealed() { "$bin" fleet cmd -s "$work/k1.sec" --seq-file "$work/seq" --print "$@"; }
rejected() { # NAME ERRORPREFIX: the reply is ok=false with that error kind
  if [ "$(field "$reply" 'd["ok"]')" = False ] && [[ "$(field "$reply" 'd["error"]')" == "$2"* ]]; then
    ok "$1"
  else
    bad "$1 (reply: $reply)"
  fi
}

env_ok=$(sealed --device dev1 '{"cmd":"ping"}')
seq_ok=$(field "$(field "$env_ok" 'd["payload"]')" 'd["seq"]')
unsigned=$(python3 -c 'import json,sys; e=json.loads(sys.argv[1]); e["sig"]=""; print(json.dumps(e))' "$(sealed --device dev1 '{"cmd":"ping"}')")
raw "$unsigned"; rejected "unsigned command rejected on /resp" unsigned
nosig=$(python3 -c 'import json,sys; e=json.loads(sys.argv[1]); del e["sig"]; print(json.dumps(e))' "$(sealed --device dev1 '{"cmd":"ping"}')")
raw "$nosig"; rejected "command without a sig field rejected" unsigned
tampered=$(python3 -c 'import json,sys; e=json.loads(sys.argv[1]); e["payload"]=e["payload"].replace("ping","telemetry.flush"); print(json.dumps(e))' "$(sealed --device dev1 '{"cmd":"ping"}')")
raw "$tampered"; rejected "tampered payload rejected (bad signature)" bad_signature
check "a rejection echoes the claimed seq and name" \
  '[ "$(field "$reply" "d[\"cmd\"]")" = telemetry.flush ] && [ "$(field "$reply" "d[\"seq\"]")" -gt 0 ]'
stranger=$("$bin" fleet cmd -s "$work/stranger.sec" --seq-file "$work/seq" --print --device dev1 '{"cmd":"ping"}')
raw "$stranger"; rejected "command signed by an unknown key rejected" bad_signature
cmd "$work/k1.sec" '{"cmd":"ping"}' --expires-in -5
rejected "expired command rejected" expired
check "fleet cmd exits 1 on a rejection" '[ $rc = 1 ]'
raw "$env_ok"
check "a fresh envelope is accepted" '[ "$(field "$reply" "d[\"ok\"]")" = True ] && [ "$(field "$reply" "d[\"seq\"]")" = "$seq_ok" ]'
raw "$env_ok"; rejected "the same envelope again is rejected as replayed" replayed
old=$("$bin" fleet cmd -s "$work/k1.sec" --seq 5 --print --device dev1 '{"cmd":"ping"}')
raw "$old"; rejected "a lower seq is rejected as replayed" replayed
raw "$(sealed --device dev2 '{"cmd":"ping"}')"; rejected "command for another device rejected" wrong_target
raw "$(sealed --group g2 '{"cmd":"ping"}')" "$P/group/g2/cmd" 4
check "a group the device is not in: nothing subscribed, no reply" '[ -z "$reply" ]'
raw "$(sealed --group g2 '{"cmd":"ping"}')"; rejected "a command for a group the device is not in, on its own topic, rejected" wrong_target
cmd "$work/k1.sec" '{"cmd":"reboot"}'
rejected "unknown command rejected" unknown_command
raw 'this is not json'; rejected "a payload that is not JSON gets a malformed reply" malformed
check "the malformed reply has seq null" '[ "$(field "$reply" "d[\"seq\"]")" = None ]'
raw --empty; rejected "an empty message gets a malformed reply" malformed
group_reply=$("$bin" fleet cmd --broker "$MQTT_URL" --group g1 -s "$work/k1.sec" --seq-file "$work/seq" --expect 1 --timeout 15 '{"cmd":"ping"}' 2>>"$work/cli.log")
check "a group command is answered by its member" '[ $? = 0 ] && [ "$(field "$group_reply" "d[\"ok\"]")" = True ]'

cmd "$work/k1.sec" '{"cmd":"config.set","args":{"fleet.rollup_interval_s":60}}'
check "config.set of a runtime key is applied" '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"applied\"][\"fleet.rollup_interval_s\"]")" = 60 ]'
cmd "$work/k1.sec" '{"cmd":"config.set","args":{"limits.queue_depth":4}}'
check "config.set of another key is refused, naming the settable ones" \
  '[ $rc = 1 ] && [[ "$(field "$reply" "d[\"error\"]")" == *"cannot be set at run time"*fleet.rollup_interval_s* ]]'
cmd "$work/k1.sec" '{"cmd":"model.offer","args":{}}'
check "model.offer gets its one reply (not available without an OTA handler, else the handler's)" \
  '[ "$(field "$reply" "d[\"cmd\"]")" = model.offer ] && [ "$(echo "$reply" | wc -l)" = 1 ]'

# ---- policy.set -------------------------------------------------------------
chat() { # SOCKET -> the outpost.reason of one answer
  curl -s --unix-socket "$1" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":4,"temperature":0}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["outpost"]["reason"])' 2>/dev/null
}
before=$(chat "$work/dev1.sock")
printf 'function route(req, env)\n  return { target = "local", reason = "fleet_v2" }\nend\n' >"$work/good.lua"
cmd "$work/k1.sec" '{"cmd":"policy.set","args":{"version":"2"}}' --arg-file source="$work/good.lua"
check "policy.set of a good policy is accepted" '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"policy_version\"]")" = 2 ]'
check "the new policy routes (reason fleet_v2, was $before)" '[ "$(chat "$work/dev1.sock")" = fleet_v2 ]'
check "status carries policy_version 2" 'for _ in $(seq 1 30); do [ "$(field "$(status dev1)" "d[\"policy_version\"]")" = 2 ] && break; sleep 0.1; done; [ "$(field "$(status dev1)" "d[\"policy_version\"]")" = 2 ]'
printf 'function route(req, env)\n  return { target = "local", reason = \nend\n' >"$work/syntax.lua"
cmd "$work/k1.sec" '{"cmd":"policy.set","args":{"version":"3"}}' --arg-file source="$work/syntax.lua"
check "policy.set of a policy that does not compile is refused" '[ $rc = 1 ] && [[ "$(field "$reply" "d[\"error\"]")" == *"previous policy keeps running"* ]]'
check "after the refused policy the old one still routes" '[ "$(chat "$work/dev1.sock")" = fleet_v2 ]'
printf 'function route(req, env)\n  error("no route today")\nend\n' >"$work/runtime.lua"
cmd "$work/k1.sec" '{"cmd":"policy.set","args":{"version":"4"}}' --arg-file source="$work/runtime.lua"
check "policy.set of a policy whose route() fails the dry run is refused" '[ $rc = 1 ] && [[ "$(field "$reply" "d[\"error\"]")" == *"dry run"* ]]'
printf 'function route(req, env)\n  return { target = "moon", reason = "x" }\nend\n' >"$work/result.lua"
cmd "$work/k1.sec" '{"cmd":"policy.set","args":{"version":"5"}}' --arg-file source="$work/result.lua"
check "policy.set of a policy with a bad decision is refused" '[ $rc = 1 ]'
check "and the old policy still routes" '[ "$(chat "$work/dev1.sock")" = fleet_v2 ] && [ "$(field "$(status dev1)" "d[\"policy_version\"]")" = 2 ]'

# ---- telemetry ----------------------------------------------------------------
# Records of the requests served above may still be on their way (the
# export runs every second; slower under ASan): read until both kinds came.
sub -t "$P/dev1/telemetry" -W 20 >"$work/tel.out" 2>/dev/null &
tp=$!
sleep 0.5
chat "$work/dev1.sock" >/dev/null
cmd "$work/k1.sec" '{"cmd":"telemetry.flush"}'
tel_kinds() { python3 -c "import json,sys; print(' '.join(sorted({json.loads(l)['type'] for l in open(sys.argv[1]) if l.strip()})))" "$work/tel.out" 2>/dev/null; }
for _ in $(seq 1 150); do
  [[ "$(tel_kinds)" == *request*rollup* ]] && break
  sleep 0.1
done
kill $tp 2>/dev/null; wait $tp 2>/dev/null
check "a served request and a roll-up arrive on /telemetry" '[[ "$(tel_kinds)" == *request*rollup* ]]'
check "the request record has route, reason, tokens, TTFT, tok/s, status and an id" \
  'python3 -c "
import json,sys
r=[json.loads(l) for l in open(sys.argv[1]) if l.strip() and json.loads(l)[\"type\"]==\"request\"][-1]
assert r[\"route\"]==\"local\" and r[\"reason\"]==\"fleet_v2\" and r[\"completion_tokens\"]>0
assert r[\"ttft_ms\"]>0 and r[\"tok_s\"]>0 and r[\"status\"]==\"ok\" and len(r[\"id\"])>8" "$work/tel.out"'

# ---- key rotation to a minisign key; a command signed by minisign -S ---------------
next=$(sed -n 2p "$work/mk.pub")
cmd "$work/k1.sec" "{\"cmd\":\"key.rotate\",\"args\":{\"next_key\":\"$next\"}}"
check "key.rotate signed by the current key installs the next key" '[ $rc = 0 ]'
seq_m=$(( $(cat "$work/seq") + 1 ))
printf '{"target":{"device":"dev1"},"seq":%s,"expires":%s,"body":{"cmd":"ping"}}' "$seq_m" $(( $(date +%s) + 300 )) >"$work/payload.json"
minisign -S -s "$work/mk.sec" -m "$work/payload.json" >/dev/null 2>&1 || bad "minisign -S"
menv=$(python3 -c 'import json,sys; print(json.dumps({"payload": open(sys.argv[1]).read(), "sig": open(sys.argv[1] + ".minisig").read()}))' "$work/payload.json")
raw "$menv"
check "a command signed by the real minisign -S with the next key is accepted" '[ "$(field "$reply" "d[\"ok\"]")" = True ] && [ "$(field "$reply" "d[\"seq\"]")" = "$seq_m" ]'
echo "$seq_m" >"$work/seq"
cmd "$work/k1.sec" '{"cmd":"ping"}'
rejected "after rotation the old key is retired" bad_signature
cmd "$work/mk.sec" '{"cmd":"ping"}'
check "outpost fleet cmd signs with the minisign key" '[ $rc = 0 ]'

# ---- restart: the policy, keys and seq persist; SIGTERM says offline; SIGKILL: the will ----
kill -TERM "$dev1"; wait "$dev1" 2>/dev/null
check "after SIGTERM the retained status is offline" 'wait_state dev1 offline 5'
start dev1 "$work/dev1.sock" "${A[@]}"
dev1=$started
check "after a restart the status is online again" 'wait_state dev1 online 10'
check "after a restart the fleet policy still routes" '[ "$(chat "$work/dev1.sock")" = fleet_v2 ]'
raw "$menv"; rejected "after a restart the last seq is remembered (replay rejected)" replayed
cmd "$work/k1.sec" '{"cmd":"ping"}'
rejected "after a restart the retired key stays retired" bad_signature
kill -KILL "$dev1"; wait "$dev1" 2>/dev/null
t0=$(date +%s.%N)
check "after SIGKILL the broker publishes the last will: offline" 'wait_state dev1 offline 20'
echo "# last will after SIGKILL: $(python3 -c "import sys; print(round($(date +%s.%N) - $t0, 1))") s (keepalive 5 s)"

# ---- TLS with a client certificate, MQTT 5 ------------------------------------------------
start dev2 "$work/dev2.sock" --broker "$MQTT_TLS_URL" --device-id dev2 --fleet-key "$work/k1.pub" \
  --ca "$work/mq/ca.crt" --cert "$work/mq/client.crt" --key "$work/mq/client.key" \
  --set fleet.mqtt_version=5
dev2=$started
check "an agent connects over TLS with a client certificate (MQTT 5)" 'wait_log "$work/dev2.log" "connected to ssl://localhost:$MQTT_TLS_PORT (MQTT 5)"'
check "its status is online" 'wait_state dev2 online 10'
r=$("$bin" fleet cmd --broker "$MQTT_TLS_URL" --ca "$work/mq/ca.crt" --cert "$work/mq/client.crt" \
  --key "$work/mq/client.key" --mqtt-version 5 --device dev2 -s "$work/k1.sec" --seq-file "$work/seq2" \
  --timeout 15 '{"cmd":"ping"}' 2>>"$work/cli.log")
check "fleet cmd over TLS (MQTT 5) gets dev2's reply" '[ $? = 0 ] && [ "$(field "$r" "d[\"ok\"]")" = True ]'
"$bin" fleet cmd --broker "$MQTT_TLS_URL" --ca "$work/mq/ca.crt" --cert "$work/mq/other.crt" \
  --key "$work/mq/other.key" --device dev2 -s "$work/k1.sec" --seq-file "$work/seq2" --timeout 3 \
  '{"cmd":"ping"}' >/dev/null 2>>"$work/cli.log"
check "a client certificate from another CA is refused by the broker (exit 1)" '[ $? = 1 ]'
kill -TERM "$dev2"; wait "$dev2" 2>/dev/null

# ---- user name and password -------------------------------------------------------------------
if command -v mosquitto_passwd >/dev/null; then
  mqtt_start_auth "$work/mqauth" fleetuser 's3cret pass' || exit 1
  OUTPOST_MQTT_PASSWORD='s3cret pass' start dev3 "$work/dev3.sock" \
    --broker "mqtt://127.0.0.1:$MQTT_AUTH_PORT" --device-id dev3 --fleet-key "$work/k1.pub" \
    --set fleet.username=fleetuser
  dev3=$started
  check "an agent with the right user name and password connects" 'wait_log "$work/dev3.log" "fleet: connected"'
  kill -TERM "$dev3"; wait "$dev3" 2>/dev/null
  OUTPOST_MQTT_PASSWORD=wrong start dev4 "$work/dev4.sock" \
    --broker "mqtt://127.0.0.1:$MQTT_AUTH_PORT" --device-id dev4 --fleet-key "$work/k1.pub" \
    --set fleet.username=fleetuser
  dev4=$started
  check "with a wrong password the broker refuses it and the agent keeps retrying" \
    'wait_log "$work/dev4.log" "connect failed" && wait_log "$work/dev4.log" "retry 2 in" && ! grep -q "fleet: connected" "$work/dev4.log"'
  kill -TERM "$dev4"; wait "$dev4" 2>/dev/null
else
  echo "# mosquitto_passwd missing: user name and password not tested"
fi

# ---- usage ---------------------------------------------------------------------------------
"$bin" fleet cmd --device a --group b -s x '{"cmd":"ping"}' 2>/dev/null
check "fleet cmd with both --device and --group is a usage error (2)" '[ $? = 2 ]'
"$bin" fleet cmd --device a -s "$work/k1.sec" --print 'nope' 2>/dev/null
check "fleet cmd with a body that is not JSON is a usage error (2)" '[ $? = 2 ]'
"$bin" fleet cmd --help | grep -q 'Exit status'
check "fleet cmd --help documents the exit status" '[ $? = 0 ]'

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
