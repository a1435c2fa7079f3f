#!/usr/bin/env bash
# OTA model and adapter updates end to end, against a real mosquitto: a
# delta between two stories260K-based models (10% of the tensors drawn
# afresh, tests/bench/gguf_perturb) is published with `outpost fleet
# publish`, applied, health-checked and served; then a corrupted chunk, a
# wrong base, a bad signature, a failing health check and an older version
# each end with the previous model still serving and a reply on /resp; a
# whole-file update follows, survives a restart, and a LoRA adapter is
# hot-swapped with its round (a round not above it is refused). Which model
# serves is told by its greedy completion, compared with `outpost run` on
# each file.
# Needs mosquitto, mosquitto_sub/_pub, curl, python3.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
build=${OUTPOST_BUILD:?}
src=$(cd "$(dirname "$0")/../.." && pwd)
perturb=$build/tests/gguf_perturb
for tool in mosquitto mosquitto_sub mosquitto_pub curl python3; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
[ -x "$perturb" ] || { echo "SKIP: $perturb is not built"; exit 77; }
# shellcheck source=lib_mqtt.sh
. "$(dirname "$0")/lib_mqtt.sh"
work=$(mktemp -d)
agent=
cleanup() {
  [ -n "$agent" ] && kill -KILL "$agent" 2>/dev/null
  mqtt_stop
  [ -n "${KEEP:-}" ] || rm -rf "$work"; echo "work $work"
}
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

mqtt_start "$work/mq" || exit 1
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1
"$bin" ota keygen -p "$work/x.pub" -s "$work/x.sec" >/dev/null 2>&1

cp "$shared/models/stories260K.gguf" "$work/v1.gguf"
"$perturb" "$work/v1.gguf" "$work/v2.gguf" --replace 0.1 --seed 11 >/dev/null 2>&1 &&
  "$perturb" "$work/v2.gguf" "$work/v3.gguf" --replace 0.1 --seed 12 >/dev/null 2>&1 &&
  "$perturb" "$work/v1.gguf" "$work/other.gguf" --replace 0.5 --seed 13 >/dev/null 2>&1 ||
  { echo "FAIL: gguf_perturb"; exit 1; }
PROMPT="Once upon a time"
expect_of() { "$bin" run -m "$1" -p "$PROMPT" -n 12 --temp 0 2>/dev/null; }
T1=$(expect_of "$work/v1.gguf") T2=$(expect_of "$work/v2.gguf") T3=$(expect_of "$work/v3.gguf")
[ "$T1" != "$T2" ] && [ "$T2" != "$T3" ] || { echo "FAIL: the models answer alike"; exit 1; }

sock=$work/dev.sock
start() {
  "$bin" serve -m "$work/v1.gguf" --socket "$sock" --state-dir "$work/state" --lua-dir "$src/lua" \
    --broker "$MQTT_URL" --device-id dev1 --fleet-key "$work/k.pub" \
    --set fleet.keepalive_s=5 --set fleet.reconnect_max_ms=1000 >>"$work/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/health)" = 200 ] &&
      grep -q "fleet: connected" "$work/agent.log" && return 0
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.1
  done
  echo "agent did not become ready:"; tail -30 "$work/agent.log"; exit 1
}
served() {
  curl -s --unix-socket "$sock" http://localhost/v1/completions -H 'Content-Type: application/json' \
    -d "{\"model\":\"default\",\"prompt\":\"$PROMPT\",\"max_tokens\":12,\"temperature\":0}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' 2>/dev/null
}
status() { mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "$P/dev1/status" -C 1 -W 3 2>/dev/null; }
# publish FLAGS...: reply in $reply, exit status in $rc
publish() {
  reply=$("$bin" fleet publish --broker "$MQTT_URL" --device dev1 --timeout 60 \
    --chunk-size 4096 "$@" 2>>"$work/cli.log")
  rc=$?
}
failed_with() { # NAME TEXT: ok=false, error contains TEXT, and v2 still serves
  if [ "$rc" = 1 ] && [ "$(field "$reply" 'd["ok"]')" = False ] &&
    [[ "$(field "$reply" 'd["error"]')" == *"$2"* ]]; then ok "$1"; else bad "$1 (rc $rc, reply: $reply)"; fi
}

start
check "the factory model serves first (the agent answers as outpost run does)" '[ "$(served)" = "$T1" ]'

t0=$(date +%s.%N)
publish -s "$work/k.sec" --version 2 --base "$work/v1.gguf" --model "$work/v2.gguf"
t1=$(date +%s.%N)
check "a delta v1->v2 is applied: the reply says committed" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"outcome\"]")" = committed ]'
check "the new model serves" '[ "$(served)" = "$T2" ]'
check "status carries model_version 2" '[ "$(field "$(status)" "d[\"model_version\"]")" = 2 ]'
echo "# delta publish+apply+check: $(python3 -c "print(round($t1-$t0,2))") s, delta $(grep -o 'delta [^:]*: [0-9]* bytes' "$work/cli.log" | tail -1)"

publish -s "$work/k.sec" --version 3 --base "$work/v2.gguf" --model "$work/v3.gguf" --corrupt-chunk 1
failed_with "a corrupted chunk fails the update with a reply" "corrupted"
check "after the corrupted chunk v2 still serves" '[ "$(served)" = "$T2" ]'

publish -s "$work/k.sec" --version 3 --base "$work/other.gguf" --model "$work/v3.gguf"
failed_with "a delta against another base is refused" "wrong base"
check "after the wrong base v2 still serves" '[ "$(served)" = "$T2" ]'

publish -s "$work/x.sec" --version 3 --base "$work/v2.gguf" --model "$work/v3.gguf"
failed_with "an offer signed by an unknown key is refused" "signature"
check "after the bad signature v2 still serves" '[ "$(served)" = "$T2" ]'

publish -s "$work/k.sec" --version 3 --base "$work/v2.gguf" --model "$work/v3.gguf" \
  --probe "$PROMPT" --expect "no model ever says this"
failed_with "a failing health check rolls back with a reply" "health check"
check "the reply of the failed check says rolled_back" \
  '[ "$(field "$reply" "d[\"result\"][\"outcome\"]")" = rolled_back ]'
check "after the failed health check v2 still serves" '[ "$(served)" = "$T2" ]'

publish -s "$work/k.sec" --version 2 --model "$work/v3.gguf"
failed_with "a version not above the installed one is refused" "anti-rollback"

# Requests keep coming while the update lands: none may fail.
load() {
  local k=0
  while [ ! -f "$work/load.stop" ] && [ $k -lt 2000 ]; do
    k=$((k + 1))
    curl -s -o /dev/null -w '%{http_code}\n' --unix-socket "$sock" http://localhost/v1/completions \
      -H 'Content-Type: application/json' \
      -d "{\"model\":\"default\",\"prompt\":\"$PROMPT $k\",\"max_tokens\":48,\"temperature\":0}"
  done >"$work/load.$1"
}
load a & la=$!
load b & lb=$!
publish -s "$work/k.sec" --version 5 --model "$work/v3.gguf" --probe "$PROMPT" --max-ppl 1e9
touch "$work/load.stop"
wait $la $lb
n_load=$(cat "$work/load.a" "$work/load.b" | wc -l)
check "a whole-file update with a health check passes" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"model_version\"]")" = 5 ]'
check "v3 serves" '[ "$(served)" = "$T3" ]'
check "the $n_load requests sent during the update all answered 200" \
  '[ "$n_load" -gt 10 ] && [ "$(cat "$work/load.a" "$work/load.b" | grep -c "^200$")" = "$n_load" ]'

kill -TERM "$agent"; wait "$agent" 2>/dev/null; agent=
start
check "after a restart v3 still serves" '[ "$(served)" = "$T3" ]'
check "after a restart status says model_version 5" '[ "$(field "$(status)" "d[\"model_version\"]")" = 5 ]'
check "no staging or transfer files are left" \
  '[ -z "$(find "$work/state/models" "$work/state/ota" -name "*.part" -o -name "*.map" -o -name "*.tmp")" ]'

# Adapters: stories260K has dim 64 and 5 layers.
python3 "$src/tests/integration/make_lora.py" "$work/lora1.gguf" 64 5 4 1 >/dev/null &&
  python3 "$src/tests/integration/make_lora.py" "$work/lora2.gguf" 64 5 4 2 >/dev/null ||
  { bad "make_lora.py"; }
adapter() {
  reply=$("$bin" fleet adapter --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --timeout 60 \
    --chunk-size 4096 "$@" 2>>"$work/cli.log")
  rc=$?
}
adapter --round 1 "$work/lora1.gguf"
check "adapter round 1 is hot-swapped in" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"adapter_round\"]")" = 1 ]'
check "status carries adapter_round 1" '[ "$(field "$(status)" "d[\"adapter_round\"]")" = 1 ]'
check "the agent still answers with the adapter" '[ -n "$(served)" ]'
adapter --round 1 "$work/lora2.gguf"
failed_with "an adapter round not above the current one is refused" "not above"
adapter --round 2 "$work/lora2.gguf"
check "adapter round 2 replaces it" '[ $rc = 0 ] && [ "$(field "$(status)" "d[\"adapter_round\"]")" = 2 ]'

# Offers follow key rotation: once key.rotate (signed by the current key)
# installs x as the next key, an offer signed by x is accepted.
next=$(sed -n 2p "$work/x.pub")
reply=$("$bin" fleet cmd --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --timeout 15 \
  --seq-file "$work/seq" "{\"cmd\":\"key.rotate\",\"args\":{\"next_key\":\"$next\"}}" 2>>"$work/cli.log")
rc=$?
check "key.rotate installs x as the next fleet key" '[ $rc = 0 ]'
publish -s "$work/x.sec" --version 6 --model "$work/v2.gguf"
check "an offer signed by the rotated-in key is applied" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"model_version\"]")" = 6 ]'
check "status says model_version 6" '[ "$(field "$(status)" "d[\"model_version\"]")" = 6 ]'

grep -E "ota:" "$work/agent.log" | sed 's/^/# /' | tail -20
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
