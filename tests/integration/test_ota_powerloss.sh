#!/usr/bin/env bash
# Power loss during an OTA update, against a real mosquitto: 20 times, an
# update is published (`outpost fleet publish`, whole model, 16 KiB chunks:
# the kills land in the transfer, staging, health check and commit) and the
# agent is killed with SIGKILL at a random moment (seeded, printed). After
# each restart a valid model must serve at once (the old or the new one,
# told by its greedy completion), and the update must either finish by
# itself (the saved offer and the broker's persistent session resume it) or,
# when the offer was lost with the process, succeed when published again;
# no staging or transfer file may be left behind. Prints how each round
# ended and a JSON line.
# Needs mosquitto, mosquitto_sub/_pub, curl, python3.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
build=${OUTPOST_BUILD:?}
src=$(cd "$(dirname "$0")/../.." && pwd)
perturb=$build/tests/gguf_perturb
rounds=${OTA_POWERLOSS_ROUNDS:-20}
seed=${OTA_POWERLOSS_SEED:-4242}
for tool in mosquitto mosquitto_sub mosquitto_pub curl python3; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
[ -x "$perturb" ] || { echo "SKIP: $perturb is not built"; exit 77; }
# shellcheck source=lib_mqtt.sh
. "$(dirname "$0")/lib_mqtt.sh"
work=$(mktemp -d)
agent= pubpid=
cleanup() {
  [ -n "$agent" ] && kill -KILL "$agent" 2>/dev/null
  [ -n "$pubpid" ] && kill -KILL "$pubpid" 2>/dev/null
  mqtt_stop
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

mqtt_start "$work/mq" || exit 1
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1
cp "$shared/models/stories260K.gguf" "$work/m0.gguf"
"$perturb" "$work/m0.gguf" "$work/m1.gguf" --replace 0.3 --seed 21 >/dev/null 2>&1 &&
  "$perturb" "$work/m0.gguf" "$work/m2.gguf" --replace 0.3 --seed 22 >/dev/null 2>&1 ||
  { echo "FAIL: gguf_perturb"; exit 1; }
PROMPT="Once upon a time"
text_of() { "$bin" run -m "$1" -p "$PROMPT" -n 12 --temp 0 2>/dev/null; }
declare -A T
for m in m0 m1 m2; do T[$m]=$(text_of "$work/$m.gguf"); done

sock=$work/dev.sock
start() {
  "$bin" serve -m "$work/m0.gguf" --socket "$sock" --state-dir "$work/state" --lua-dir "$src/lua" \
    --broker "$MQTT_URL" --device-id dev1 --fleet-key "$work/k.pub" \
    --set fleet.keepalive_s=5 --set fleet.reconnect_max_ms=1000 >>"$work/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/health)" = 200 ] &&
      return 0
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
served() {
  curl -s --unix-socket "$sock" http://localhost/v1/completions -H 'Content-Type: application/json' \
    -d "{\"model\":\"default\",\"prompt\":\"$PROMPT\",\"max_tokens\":12,\"temperature\":0}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' 2>/dev/null
}
status() { mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "$P/dev1/status" -C 1 -W 3 2>/dev/null; }
# publish VERSION MODEL [flags]: `outpost fleet publish` of the whole file
publish() {
  local v=$1 m=$2
  shift 2
  "$bin" fleet publish --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --chunk-size 16384 \
    --version "$v" --model "$work/$m.gguf" --probe "$PROMPT" "$@"
}
strays() { find "$work/state/models" "$work/state/ota" \( -name '*.part' -o -name '*.map' -o -name '*.tmp' \) 2>/dev/null; }

start || { echo "FAIL: the agent did not start"; tail -20 "$work/agent.log"; exit 1; }
for _ in $(seq 1 100); do grep -q "fleet: connected" "$work/agent.log" && break; sleep 0.1; done
cur=m0 resumed=0 republished=0 kept_old=0 got_new=0
delays=$(python3 -c "import random; r=random.Random($seed); print(' '.join('%.2f' % r.uniform(0.2, 1.8) for _ in range($rounds)))")
i=0
for delay in $delays; do
  i=$((i + 1))
  version=$((i + 1))
  if [ "$cur" = m1 ]; then new=m2; else new=m1; fi
  publish $version $new --timeout 120 >>"$work/pub.out" 2>>"$work/pub.log" &
  pubpid=$!
  sleep "$delay"
  kill -KILL "$agent" 2>/dev/null
  wait "$agent" 2>/dev/null
  agent=
  if ! start; then
    bad "round $i (kill after ${delay}s): the agent restarts"
    tail -20 "$work/agent.log"
    break
  fi
  now=$(served)
  if [ "$now" = "${T[$cur]}" ]; then
    kept_old=$((kept_old + 1)); ok "round $i (kill after ${delay}s): a valid model serves at once (the old one)"
  elif [ "$now" = "${T[$new]}" ]; then
    got_new=$((got_new + 1)); ok "round $i (kill after ${delay}s): a valid model serves at once (the new one)"
  else
    bad "round $i (kill after ${delay}s): the model that serves is neither ($now)"
  fi
  # The update finishes by itself, or is published again.
  finished=
  for _ in $(seq 1 60); do
    [ "$(field "$(status)" 'd["model_version"]')" = "$version" ] && { finished=1; break; }
    sleep 0.5
  done
  if [ -n "$finished" ]; then
    resumed=$((resumed + 1))
  else
    kill -KILL "$pubpid" 2>/dev/null
    reply=$(publish $version $new --timeout 60 2>>"$work/pub.log")
    if [ "$(field "$reply" 'd["ok"]')" = True ]; then
      republished=$((republished + 1))
    else
      bad "round $i: published again, the update fails ($reply)"
      grep "ota:" "$work/agent.log" | tail -5
    fi
  fi
  kill -KILL "$pubpid" 2>/dev/null
  wait "$pubpid" 2>/dev/null
  pubpid=
  if [ "$(served)" = "${T[$new]}" ] && [ -z "$(strays)" ]; then
    ok "round $i: the update ends installed, nothing left behind"
    cur=$new
  else
    bad "round $i: after the update: serving '$(served)', strays: $(strays | tr '\n' ' ')"
    break
  fi
done
echo "# recovery at restart found the install phase: $(grep -o 'recovery: phase was [a-z]*' "$work/agent.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "# rounds $i: the old model served after the kill $kept_old times, the new one $got_new times;"
echo "# the update resumed by itself $resumed times, was published again $republished times"
echo "{\"bench\":\"ota_powerloss\",\"rounds\":$i,\"old_after_kill\":$kept_old,\"new_after_kill\":$got_new,\"resumed\":$resumed,\"republished\":$republished,\"failed\":$fail}"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
