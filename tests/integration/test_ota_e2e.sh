#!/usr/bin/env bash
# OTA model and adapter updates end to end, against a real mosquitto: a
# delta between two models differing in 10% of their tensors (drawn afresh,
# tests/bench/gguf_perturb) is published with `outpost fleet publish`,
# applied, health-checked and served; then a corrupted chunk, a wrong base,
# a bad signature, a failing health check and an older version each end
# with the previous model still serving and a reply on /resp; a whole-file
# update follows, survives a restart, and a LoRA adapter is hot-swapped with
# its round (a round not above it is refused).
#
# The models: stories260K and its perturbed copies (the CI run), or with
# OTA_E2E_SHAPE=NAME (e.g. tinyllama-1.1b) a random-weight Q4_0 model of that
# shape from `outpost model synth` (stories260K's tokenizer, seed 1) and its
# perturbed copies, kept in OTA_E2E_MODELS (default
# /work/bench-models/ota-e2e-NAME) and reused; chunks are then 1 MiB
# (OTA_E2E_CHUNK) and replies may take longer. tests/bench/ota_e2e.sh runs it
# so and turns the "# metric" lines into a table.
#
# Which model serves is asserted, not assumed: it is told by the greedy
# completion of a prompt, compared with `outpost run` on each file (both
# as UTF-8 with bad bytes replaced: random weights emit stray byte tokens).
# The agent serves model X when its answer agrees with X's past the point
# where X's answer parts from the others' (at most one model can pass
# that): on random weights the top logits are close, and the agent's
# prefix reuse (a cached prompt prefix, then one token evaluated alone)
# can round differently from `outpost run`'s one batch and flip a later
# token, so whole answers need not be equal; on stories260K they are. The
# prompt is the first of a few on which v1, v2 and v3 part within their
# first 2 characters (else the one on which they part soonest).
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

# metric NAME VALUE: a figure for tests/bench/ota_e2e.sh
metric() { echo "# metric $1=$2"; }
# anon_watch PID FILE: until FILE.stop exists, the peak RssAnon (KiB) of PID
# into FILE, sampled every $anon_every_s with bash builtins (no fork per
# sample; a spike shorter than that can be missed)
anon_watch() {
  local peak=0 k v _ fd
  exec {fd}<> <(:)
  while [ ! -e "$2.stop" ] && [ -r "/proc/$1/status" ]; do
    while read -r k v _; do
      [[ $k == RssAnon: ]] && { [ "$v" -gt "$peak" ] && { peak=$v; echo "$peak" >"$2"; }; break; }
    done <"/proc/$1/status" 2>/dev/null
    read -t "$anon_every_s" -u $fd
  done
  exec {fd}>&-
}
anon_now() { awk '$1 == "RssAnon:" { print $2 }' "/proc/$1/status" 2>/dev/null; }

mqtt_start "$work/mq" || exit 1
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1
"$bin" ota keygen -p "$work/x.pub" -s "$work/x.sec" >/dev/null 2>&1

shape=${OTA_E2E_SHAPE:-}
if [ -z "$shape" ]; then
  models=$work chunk=4096 reply_s=60 load_tokens=48 anon_every_s=0.1
else
  models=${OTA_E2E_MODELS:-/work/bench-models/ota-e2e-$shape}
  chunk=${OTA_E2E_CHUNK:-1048576} reply_s=900 load_tokens=8 anon_every_s=0.01
  mkdir -p "$models" || exit 1
fi
# make_model FILE COMMAND...: COMMAND writes FILE.tmp, kept as FILE (a file
# already there is reused)
make_model() {
  local f=$1
  shift
  [ -s "$f" ] && return 0
  "$@" >/dev/null 2>"$work/make.err" && mv "$f.tmp" "$f" && return 0
  echo "FAIL: making $f:"; cat "$work/make.err"; exit 1
}
if [ -z "$shape" ]; then
  make_model "$models/v1.gguf" cp "$shared/models/stories260K.gguf" "$models/v1.gguf.tmp"
else
  make_model "$models/v1.gguf" "$bin" model synth --shape "$shape" --type q4_0 --seed 1 \
    --vocab "$shared/models/stories260K.gguf" -o "$models/v1.gguf.tmp"
fi
make_model "$models/v2.gguf" "$perturb" "$models/v1.gguf" "$models/v2.gguf.tmp" --replace 0.1 --seed 11
make_model "$models/v3.gguf" "$perturb" "$models/v2.gguf" "$models/v3.gguf.tmp" --replace 0.1 --seed 12
make_model "$models/other.gguf" "$perturb" "$models/v1.gguf" "$models/other.gguf.tmp" --replace 0.5 --seed 13
metric shape "${shape:-stories260k}"
metric model_bytes "$(stat -c %s "$models/v2.gguf")"
metric chunk_bytes "$chunk"

utf8() { python3 -c 'import sys; sys.stdout.write(sys.stdin.buffer.read().decode("utf-8", "replace"))'; }
expect_of() { "$bin" run -m "$1" -p "$PROMPT" -n 12 --temp 0 2>/dev/null | utf8; }
# identify TEXT T1 T2 T3: v1, v2 or v3 when TEXT agrees with that answer
# beyond its longest common prefix with the other two; else "another".
# With TEXT "-": the longest common prefix of any two of T1 T2 T3, or -1
# when two are equal.
identify() {
  python3 -c '
import os, sys
s, t = sys.argv[1], sys.argv[2:]
def lcp(a, b):
    return len(os.path.commonprefix([a, b]))
if s == "-":
    print(-1 if len(set(t)) < 3 else max(lcp(t[i], t[j]) for i in range(3) for j in range(i)))
    sys.exit(0)
for i, x in enumerate(t):
    if lcp(s, x) > max(lcp(x, y) for j, y in enumerate(t) if j != i):
        print("v%d" % (i + 1))
        break
else:
    print("another")' "$@"
}
PROMPT= best=
for p in "Once upon a time" "The little dog" "Lily and Ben" "One day" "The sun was"; do
  PROMPT=$p
  T1=$(expect_of "$models/v1.gguf") T2=$(expect_of "$models/v2.gguf") T3=$(expect_of "$models/v3.gguf")
  parts=$(identify - "$T1" "$T2" "$T3")
  [ "$parts" -ge 0 ] && { [ -z "$best" ] || [ "$parts" -lt "${best%% *}" ]; } && best="$parts $p"
  [ "$parts" -ge 0 ] && [ "$parts" -le 2 ] && break
done
[ -n "$best" ] || { echo "FAIL: two of v1, v2 and v3 answer alike on every prompt"; exit 1; }
if [ "$PROMPT" != "${best#* }" ]; then
  PROMPT=${best#* }
  T1=$(expect_of "$models/v1.gguf") T2=$(expect_of "$models/v2.gguf") T3=$(expect_of "$models/v3.gguf")
fi
echo "# the served model is told by its answer to \"$PROMPT\" (the answers part after ${best%% *} characters)"

sock=$work/dev.sock
start() {
  "$bin" serve -m "$models/v1.gguf" --socket "$sock" --state-dir "$work/state" --lua-dir "$src/lua" \
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
    python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["choices"][0]["text"] + "\n")' 2>/dev/null
}
status() { mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "$P/dev1/status" -C 1 -W 3 2>/dev/null; }
# publish FLAGS...: reply in $reply, exit status in $rc
publish() {
  reply=$("$bin" fleet publish --broker "$MQTT_URL" --device dev1 --timeout "$reply_s" \
    --chunk-size "$chunk" "$@" 2>"$work/cli.last")
  rc=$?
  cat "$work/cli.last" >>"$work/cli.log"
}
# watched NAME FLAGS...: publish while RssAnon is sampled, then the figures:
# NAME_s (wall), NAME_peak_anon_kib, and from the CLI's lines the delta's
# size and diff time, the chunks and the time to send them
watched() {
  local name=$1 t0 t1
  shift
  rm -f "$work/anon" "$work/anon.stop"
  anon_watch "$agent" "$work/anon" &
  local wp=$!
  t0=$(date +%s.%N)
  publish "$@"
  t1=$(date +%s.%N)
  touch "$work/anon.stop"
  wait $wp
  metric "${name}_s" "$(python3 -c "print(round($t1 - $t0, 2))")"
  metric "${name}_peak_anon_kib" "$(cat "$work/anon" 2>/dev/null || echo 0)"
  sed -n 's/.*delta .*: \([0-9]*\) bytes (target.* in \([0-9.]*\) s$/\1 \2/p' "$work/cli.last" |
    { read -r b s && metric "${name}_delta_bytes" "$b" && metric "${name}_diff_s" "$s"; }
  sed -n 's/.*: \([0-9]*\) bytes in \([0-9]*\) chunks sent in \([0-9.]*\) s.*/\1 \2 \3/p' "$work/cli.last" |
    { read -r b n s && metric "${name}_payload_bytes" "$b" && metric "${name}_chunks" "$n" &&
      metric "${name}_send_s" "$s"; }
  metric "${name}_stage_ms" "$(field "$reply" 'round(d["result"]["stage_ms"])')"
  metric "${name}_check_ms" "$(field "$reply" 'round(d["result"]["check_ms"])')"
}
failed_with() { # NAME TEXT: ok=false, error contains TEXT, and v2 still serves
  if [ "$rc" = 1 ] && [ "$(field "$reply" 'd["ok"]')" = False ] &&
    [[ "$(field "$reply" 'd["error"]')" == *"$2"* ]]; then ok "$1"; else bad "$1 (rc $rc, reply: $reply)"; fi
}
# failure NAME: a failure case's figures (after the check of who serves, in $serving)
failure() {
  metric "fail_$1" "$(field "$reply" '"ok" if d["ok"] else d.get("error", "")[:60]'); then serving: $serving"
}
# who: the model that serves now (v1, v2, v3 or "another")
who() { identify "$(served)" "$T1" "$T2" "$T3"; }

start
serving=$(who)
check "the factory model serves first (the agent answers as outpost run does)" '[ $serving = v1 ]'
metric idle_anon_kib "$(anon_now "$agent")"

watched delta -s "$work/k.sec" --version 2 --base "$models/v1.gguf" --model "$models/v2.gguf"
check "a delta v1->v2 is applied: the reply says committed" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"outcome\"]")" = committed ]'
serving=$(who)
metric delta_serving "$serving"
check "the new model serves" '[ $serving = v2 ]'
check "status carries model_version 2" '[ "$(field "$(status)" "d[\"model_version\"]")" = 2 ]'

watched corrupted -s "$work/k.sec" --version 3 --base "$models/v2.gguf" --model "$models/v3.gguf" \
  --corrupt-chunk 1
failed_with "a corrupted chunk fails the update with a reply" "corrupted"
serving=$(who)
check "after the corrupted chunk v2 still serves" '[ $serving = v2 ]'
failure corrupted

watched wrong_base -s "$work/k.sec" --version 3 --base "$models/other.gguf" --model "$models/v3.gguf"
failed_with "a delta against another base is refused" "wrong base"
serving=$(who)
check "after the wrong base v2 still serves" '[ $serving = v2 ]'
failure wrong_base

watched bad_signature -s "$work/x.sec" --version 3 --base "$models/v2.gguf" --model "$models/v3.gguf"
failed_with "an offer signed by an unknown key is refused" "signature"
serving=$(who)
check "after the bad signature v2 still serves" '[ $serving = v2 ]'
failure bad_signature

watched health -s "$work/k.sec" --version 3 --base "$models/v2.gguf" --model "$models/v3.gguf" \
  --probe "$PROMPT" --expect "no model ever says this"
failed_with "a failing health check rolls back with a reply" "health check"
check "the reply of the failed check says rolled_back" \
  '[ "$(field "$reply" "d[\"result\"][\"outcome\"]")" = rolled_back ]'
serving=$(who)
check "after the failed health check v2 still serves" '[ $serving = v2 ]'
failure health

watched old_version -s "$work/k.sec" --version 2 --model "$models/v3.gguf"
failed_with "a version not above the installed one is refused" "anti-rollback"
serving=$(who)
check "after the refused old version v2 still serves" '[ $serving = v2 ]'
failure old_version

# Requests keep coming while the update lands: none may fail.
load() {
  local k=0
  while [ ! -f "$work/load.stop" ] && [ $k -lt 2000 ]; do
    k=$((k + 1))
    curl -s -o /dev/null -w '%{http_code}\n' --unix-socket "$sock" http://localhost/v1/completions \
      -H 'Content-Type: application/json' \
      -d "{\"model\":\"default\",\"prompt\":\"$PROMPT $k\",\"max_tokens\":$load_tokens,\"temperature\":0}"
  done >"$work/load.$1"
}
load a & la=$!
load b & lb=$!
watched whole -s "$work/k.sec" --version 5 --model "$models/v3.gguf" --probe "$PROMPT" --max-ppl 1e9
touch "$work/load.stop"
wait $la $lb
n_load=$(cat "$work/load.a" "$work/load.b" | wc -l)
check "a whole-file update with a health check passes" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"model_version\"]")" = 5 ]'
serving=$(who)
metric whole_serving "$serving"
check "v3 serves" '[ $serving = v3 ]'
n_200=$(cat "$work/load.a" "$work/load.b" | grep -c "^200$")
metric whole_requests_during "$n_load"
metric whole_requests_200 "$n_200"
check "the $n_load requests sent during the update all answered 200" \
  '[ "$n_load" -gt 10 ] && [ "$n_200" = "$n_load" ]'

kill -TERM "$agent"; wait "$agent" 2>/dev/null; agent=
start
check "after a restart v3 still serves" '[ "$(who)" = v3 ]'
check "after a restart status says model_version 5" '[ "$(field "$(status)" "d[\"model_version\"]")" = 5 ]'
check "no staging or transfer files are left" \
  '[ -z "$(find "$work/state/models" "$work/state/ota" -name "*.part" -o -name "*.map" -o -name "*.tmp")" ]'

# Adapters for the model's shape (its embedding length and block count).
n_embd=$("$bin" model info "$models/v1.gguf" | awk '/\(llama.embedding_length\)/ { print $3 }')
n_layer=$("$bin" model info "$models/v1.gguf" | awk '/\(llama.block_count\)/ { print $3 }')
python3 "$src/tests/integration/make_lora.py" "$work/lora1.gguf" "$n_embd" "$n_layer" 4 1 >/dev/null &&
  python3 "$src/tests/integration/make_lora.py" "$work/lora2.gguf" "$n_embd" "$n_layer" 4 2 >/dev/null ||
  { bad "make_lora.py (n_embd '$n_embd', n_layer '$n_layer')"; }
adapter() {
  reply=$("$bin" fleet adapter --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --timeout "$reply_s" \
    --chunk-size "$chunk" "$@" 2>>"$work/cli.log")
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
publish -s "$work/x.sec" --version 6 --model "$models/v2.gguf"
check "an offer signed by the rotated-in key is applied" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"result\"][\"model_version\"]")" = 6 ]'
check "status says model_version 6" '[ "$(field "$(status)" "d[\"model_version\"]")" = 6 ]'

grep -E "ota:" "$work/agent.log" | sed 's/^/# /' | tail -20
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
