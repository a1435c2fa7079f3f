#!/usr/bin/env bash
# Routing between two real agents on loopback, with the real stories260K model:
# A (the device) answers on its Unix socket and reaches B (its "cloud" and
# its "peer": another `outpost serve` with a TCP listener and a key) through
# the backend-openai plugin. Checked: a private request stays on A; a long one
# (over the default policy's long_prompt threshold) is answered by B, streamed
# and not, and B's telemetry shows it; the peer route likewise; PII that the
# policy sends out with redact=true reaches B redacted (B's own PII detector
# finds nothing, while the same text sent without redaction is found); the
# cloud spend is estimated, persisted, shown in /metrics and in the policy's
# env (a tiny budget turns the next long request local, also after a
# restart); a garbage .so and a plugin of the wrong ABI are refused with one
# log line each while the agent serves; and with B stopped A answers locally
# with reason cloud_unreachable / peer_unreachable. Every answer's `outpost`
# object shows the decision, and for a relayed request the remote side's
# (outpost.remote: B's own route and reason, or why the call failed).
# Needs curl, python3 and sqlite3.
. "$(dirname "$0")/lib.sh"
need curl python3 sqlite3

# start NAME SOCKET flags... (env set by the caller): state in $work/NAME; pid in $started
start() {
  local name=$1 sock=$2
  shift 2
  agent_start "$work/$name.log" "$sock" --state-dir "$work/$name" --lua-dir "$src/lua" "$@"
  started=$agent_pid
}
stop() { agent_stop "$1"; return $rc; }
rows() { sqlite3 "$1" "$2" 2>/dev/null; }

# Request bodies. 180 sentences are ~1980 prompt tokens: over the default
# policy's 1536, and still inside the model's 2048 context with 16 to spare.
python3 - "$work" <<'EOF'
import json, sys
w = sys.argv[1]
long = "Once upon a time there was a little cat. " * 180
def save(name, body):
    json.dump(body, open(f"{w}/{name}.json", "w"))
save("private", {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12,
                 "temperature": 0, "outpost": {"privacy": "private"}})
save("long", {"messages": [{"role": "user", "content": long}], "max_tokens": 16, "temperature": 0})
save("long_stream", {"messages": [{"role": "user", "content": long}], "max_tokens": 16,
                     "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
save("long_prompt", {"prompt": long, "max_tokens": 8, "temperature": 0})
save("peer", {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12,
              "temperature": 0, "outpost": {"route": "peer"}})
pii = "Please write to jane.doe@example.com about the cat."
save("pii_redact", {"messages": [{"role": "user", "content": pii}], "max_tokens": 8,
                    "temperature": 0, "outpost": {"route": "cloud"}})
save("pii_plain", {"messages": [{"role": "user", "content": pii}], "max_tokens": 8,
                   "temperature": 0, "outpost": {"route": "peer"}})
EOF

# Policies. A: the default, plus one test rule: PII with an explicit route
# leaves the device, redacted for the cloud and as is for the peer. B: the
# default, printing how many PII kinds it finds in what it receives.
pol_a=$work/policy_a.lua pol_b=$work/policy_b.lua
cp "$src/lua/default.lua" "$pol_a"
cat >>"$pol_a" <<'EOF'
local default_route = route
function route(req, env)
  if #req.pii > 0 and req.route_requested == "cloud" then
    return { target = "cloud", reason = "pii_redacted", redact = true }
  elseif #req.pii > 0 and req.route_requested == "peer" then
    return { target = "peer", reason = "pii_plain", redact = false }
  end
  return default_route(req, env)
end
EOF
cp "$src/lua/default.lua" "$pol_b"
cat >>"$pol_b" <<'EOF'
local default_route = route
function route(req, env)
  print("received pii=" .. #req.pii)
  return default_route(req, env)
end
EOF

# B: the remote side.
port_b=$(free_port)
OUTPOST_API_KEY=bkey start b "$work/b.sock" --listen "127.0.0.1:$port_b" --policy "$pol_b"
pid_b=$started
db_b=$work/b/outpost.db
# A: the device, with B as its cloud and its peer.
OUTPOST_CLOUD_KEY=bkey OUTPOST_PEER_KEY=bkey start a "$work/a.sock" --policy "$pol_a" \
  --cloud "http://127.0.0.1:$port_b/v1" --peer "http://127.0.0.1:$port_b"
pid_a=$started
db_a=$work/a/outpost.db
if wait_log "$work/a.log" "cloud: reachable" && wait_log "$work/a.log" "peer: reachable"; then
  ok "A loaded backend-openai and measured B as cloud and peer"
else bad "A did not reach B: $(cat "$work/a.log")"; fi

# 1. Private: answered by A, B sees nothing.
nb0=$(rows "$db_b" "select count(*) from requests")
post "$work/a.sock" /v1/chat/completions "$work/private.json"
if [ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]=="local" and d["outpost"]["reason"]=="private" and len(d["choices"][0]["message"]["content"])>0')" = True ] \
   && [ "$(rows "$db_b" "select count(*) from requests")" = "$nb0" ]; then
  ok "private request answered by A (route local, reason private), B untouched"
else bad "private: $code $(cat "$work/body")"; fi

# 2. Long, not streamed: B answers, A says cloud/long_prompt.
post "$work/a.sock" /v1/chat/completions "$work/long.json"
cp "$work/body" "$work/long_answer"
if [ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]=="cloud" and d["outpost"]["reason"]=="long_prompt" and len(d["choices"][0]["message"]["content"])>0 and d["usage"]["prompt_tokens"]>1536 and d["usage"]["completion_tokens"]>0 and d["outpost"]["ttft_ms"]>0')" = True ]; then
  ok "long request answered via the cloud (route cloud, reason long_prompt, usage from B)"
else bad "long: $code $(head -c 600 "$work/body")"; fi
nb1=$(rows "$db_b" "select count(*) from requests")
[ "$nb1" = $((nb0 + 1)) ] && [ "$(rows "$db_b" "select status from requests order by created_ms desc limit 1")" = ok ] \
  && ok "B's telemetry has the request it served" || bad "B's requests: $nb0 -> $nb1"
# A's answer carries B's own decision, as B recorded it.
b_dec=$(rows "$db_b" "select route || '/' || reason from requests order by created_ms desc limit 1")
a_rem=$(json "$work/long_answer" 'd["outpost"]["remote"]["target"]+":"+d["outpost"]["remote"]["route"]+"/"+d["outpost"]["remote"]["reason"]+":"+str("error" in d["outpost"]["remote"])')
[ -n "$b_dec" ] && [ "$a_rem" = "cloud:$b_dec:False" ] \
  && ok "A's outpost.remote shows B's decision ($b_dec) and no error" || bad "remote: '$a_rem' vs B '$b_dec'"
row=$(rows "$db_a" "select route, reason, status, prompt_tokens > 1536, cost_usd > 0 from requests order by created_ms desc limit 1")
[ "$row" = "cloud|long_prompt|ok|1|1" ] && ok "A's telemetry: route cloud, reason, tokens and a cost estimate" \
  || bad "A's row: $row"

# 3. Long, streamed: B's chunks relayed as they come, the same greedy text.
curl -sN --unix-socket "$work/a.sock" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
  --data-binary @"$work/long_stream.json" >"$work/sse"
if python3 - "$work/sse" "$work/long_answer" <<'EOF'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]", events[-1]
chunks = [json.loads(e) for e in events[:-1]]
text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
fin = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
assert len(fin) == 1 and fin[0]["outpost"]["route"] == "cloud", fin
assert fin[0]["outpost"]["reason"] == "long_prompt"
assert fin[0]["outpost"]["remote"]["target"] == "cloud", fin
assert fin[0]["outpost"]["remote"]["route"] == "local", fin
assert chunks[-1]["usage"]["completion_tokens"] > 0
assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 2
assert text == json.load(open(sys.argv[2]))["choices"][0]["message"]["content"], text
EOF
then ok "streamed long request via the cloud: chunks, outpost object, usage, [DONE], same text"
else bad "streamed long: $(tail -c 800 "$work/sse")"; fi

# 4. A plain completion goes the same way.
post "$work/a.sock" /v1/completions "$work/long_prompt.json"
[ "$code" = 200 ] && [ "$(json "$work/body" 'd["object"]=="text_completion" and d["outpost"]["route"]=="cloud" and len(d["choices"][0]["text"])>0')" = True ] \
  && ok "long /v1/completions answered via the cloud" || bad "completion: $code $(head -c 400 "$work/body")"

# 5. The peer route: B answers it itself (A asks it to stay local there).
post "$work/a.sock" /v1/chat/completions "$work/peer.json"
if [ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]=="peer" and d["outpost"]["reason"]=="requested" and d["outpost"]["remote"]=={"target":"peer","route":"local","reason":"requested"}')" = True ] \
   && [ "$(rows "$db_b" "select route, reason from requests order by created_ms desc limit 1")" = "local|requested" ]; then
  ok "peer route: answered by B (route peer on A, B kept it local as asked, outpost.remote says so)"
else bad "peer: $code $(cat "$work/body") / B: $(rows "$db_b" "select route, reason from requests order by created_ms desc limit 1")"; fi

# 6. PII: with redact=true B receives none of it; without, B finds it.
post "$work/a.sock" /v1/chat/completions "$work/pii_redact.json"
r1=$(json "$work/body" 'd["outpost"]["route"]+"/"+d["outpost"]["reason"]')
sleep 0.2
l1=$(grep -o 'received pii=[0-9]*' "$work/b.log" | tail -n 1)
post "$work/a.sock" /v1/chat/completions "$work/pii_plain.json"
r2=$(json "$work/body" 'd["outpost"]["route"]+"/"+d["outpost"]["reason"]')
sleep 0.2
l2=$(grep -o 'received pii=[0-9]*' "$work/b.log" | tail -n 1)
[ "$r1" = cloud/pii_redacted ] && [ "$l1" = "received pii=0" ] \
  && ok "redact=true: B received the request with its PII replaced (hook-redact)" || bad "redacted: $r1, B: $l1"
[ "$r2" = peer/pii_plain ] && [ "$l2" = "received pii=1" ] \
  && ok "redact=false: the same text reaches B with its PII (the check can tell)" || bad "plain: $r2, B: $l2"

# 7. Metrics: spend and the remotes' state.
curl -s --unix-socket "$work/a.sock" http://localhost/metrics >"$work/metrics"
spend=$(sed -n 's/^outpost_cloud_spend_usd //p' "$work/metrics")
if python3 -c "import sys; assert float(sys.argv[1]) > 0" "$spend" 2>/dev/null \
   && grep -q '^outpost_remote_up{target="cloud"} 1' "$work/metrics" \
   && grep -q '^outpost_remote_up{target="peer"} 1' "$work/metrics" \
   && grep -q '^outpost_remote_calls_total{target="cloud",result="ok"} [1-9]' "$work/metrics"; then
  ok "/metrics: cloud spend $spend USD, both remotes up, calls counted"
else bad "metrics: $(grep -E 'spend|remote' "$work/metrics")"; fi

# 8. Plugins that must be refused, and a budget that the spend exhausts: agent C.
pdir=$work/plugins
mkdir -p "$pdir"
ln -s "$build/plugins/backend-openai.so" "$pdir/backend-openai.so"
head -c 4096 /dev/urandom >"$pdir/garbage.so"
bad_abi=$build/tests/plugins/bad-abi.so
have_abi=0
[ -f "$bad_abi" ] && cp "$bad_abi" "$pdir/bad-abi.so" && have_abi=1
OUTPOST_CLOUD_KEY=bkey start c "$work/c.sock" --policy "$pol_a" --cloud "http://127.0.0.1:$port_b/v1" \
  --plugin-dir "$pdir" --set plugins.enabled=backend-openai,garbage,bad-abi,hook-redact \
  --set cloud.budget_usd_month=0.001 --set cloud.price_per_1k_tokens=0.01
pid_c=$started
grep -q "plugin refused: plugin $pdir/garbage.so: cannot load" "$work/c.log" \
  && ok "a garbage .so is refused with one line naming it" || bad "garbage: $(cat "$work/c.log")"
if [ $have_abi = 1 ]; then
  grep -q "plugin refused: plugin $pdir/bad-abi.so: built for plugin ABI 999" "$work/c.log" \
    && ok "a plugin of the wrong ABI version is refused with one line naming it" || bad "abi: $(cat "$work/c.log")"
else bad "tests/plugins/bad-abi.so was not built"; fi
grep -q "plugin refused: plugin hook-redact: $pdir/hook-redact.so: no such readable file" "$work/c.log" \
  && ok "a missing plugin is refused with one line" || bad "missing: $(grep refused "$work/c.log")"
wait_log "$work/c.log" "cloud: reachable"
post "$work/c.sock" /v1/chat/completions "$work/pii_redact.json"
[ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]+"/"+d["outpost"]["reason"]')" = local/redact_unavailable ] \
  && ok "the refusals leave C serving; redact asked with no hook loaded stays local (redact_unavailable)" \
  || bad "C redact: $code $(cat "$work/body")"
post "$work/c.sock" /v1/chat/completions "$work/long.json"
[ "$(json "$work/body" 'd["outpost"]["route"]')" = cloud ] && ok "under budget: the long request goes to the cloud" \
  || bad "C first long: $(head -c 300 "$work/body")"
post "$work/c.sock" /v1/chat/completions "$work/long.json"
[ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]+"/"+d["outpost"]["reason"]')" = local/over_budget ] \
  && ok "the estimated spend (~0.02 USD) exhausts the 0.001 USD budget: next long request local, over_budget" \
  || bad "C over budget: $code $(head -c 300 "$work/body")"
stop "$pid_c"
OUTPOST_CLOUD_KEY=bkey start c "$work/c.sock" --policy "$pol_a" --cloud "http://127.0.0.1:$port_b/v1" \
  --plugin-dir "$pdir" --set plugins.enabled=backend-openai --set cloud.budget_usd_month=0.001
pid_c=$started
wait_log "$work/c.log" "cloud: reachable"
post "$work/c.sock" /v1/chat/completions "$work/long.json"
[ "$(json "$work/body" 'd["outpost"]["reason"]')" = over_budget ] \
  && ok "after a restart the month's spend is read back from SQLite: still over_budget" \
  || bad "C after restart: $(head -c 300 "$work/body")"
stop "$pid_c"

# 9. B stopped: A falls back to its own engine and says why.
stop "$pid_b"
post "$work/a.sock" /v1/chat/completions "$work/long.json"
if [ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]=="local" and d["outpost"]["reason"]=="cloud_unreachable" and len(d["choices"][0]["message"]["content"])>0 and d["outpost"]["remote"]["target"]=="cloud" and len(d["outpost"]["remote"]["error"])>0 and "route" not in d["outpost"]["remote"]')" = True ]; then
  ok "B stopped: the long request is answered by A (route local, reason cloud_unreachable, outpost.remote.error: $(json "$work/body" 'd["outpost"]["remote"]["error"]'))"
else bad "B stopped: $code $(head -c 600 "$work/body")"; fi
row=$(rows "$db_a" "select route, reason, status from requests order by created_ms desc limit 1")
[ "$row" = "local|cloud_unreachable|ok" ] && ok "A's telemetry records the fallback" || bad "fallback row: $row"
grep -q "answered locally (cloud_unreachable)" "$work/a.log" && ok "A logs why it fell back" \
  || bad "no fallback line in A's log"
curl -sN --unix-socket "$work/a.sock" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
  --data-binary @"$work/long_stream.json" >"$work/sse"
if python3 - "$work/sse" <<'EOF'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]"
fin = [json.loads(e) for e in events[:-1]]
fin = [c for c in fin if c["choices"] and c["choices"][0]["finish_reason"]]
o = fin[0]["outpost"]
assert o["route"] == "local" and o["reason"] == "cloud_unreachable", o
assert o["remote"]["target"] == "cloud" and o["remote"]["error"], o
EOF
then ok "B stopped, streamed: route local, reason cloud_unreachable"
else bad "B stopped, streamed: $(tail -c 500 "$work/sse")"; fi
post "$work/a.sock" /v1/chat/completions "$work/peer.json"
# (Tried and failed: outpost.remote has the error; or the policy already
# knew from the prober that the peer is down and never tried: no remote.)
[ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["route"]+"/"+d["outpost"]["reason"]+"/"+str("remote" not in d["outpost"] or (d["outpost"]["remote"]["target"]=="peer" and len(d["outpost"]["remote"]["error"])>0))')" = local/peer_unreachable/True ] \
  && ok "B stopped: a request for the peer is answered by A (peer_unreachable$(json "$work/body" '", tried: "+d["outpost"]["remote"]["error"] if "remote" in d["outpost"] else ", known down"'))" \
  || bad "peer stopped: $code $(cat "$work/body")"
curl -s --unix-socket "$work/a.sock" http://localhost/metrics >"$work/metrics"
fb=$(awk '/^outpost_remote_calls_total\{target="cloud",result="(fallback|refused)"\}/ { n += $2 } END { print n + 0 }' "$work/metrics")
grep -q '^outpost_remote_up{target="cloud"} 0' "$work/metrics" && [ "${fb:-0}" -ge 2 ] \
  && grep -q '^outpost_remote_calls_total{target="cloud",result="failed"} [1-9]' "$work/metrics" \
  && ok "/metrics: the cloud is down, its failed call and $fb local fallbacks counted" \
  || bad "metrics after stop: $(grep -E 'remote_(up|calls)' "$work/metrics")"

stop "$pid_a"
[ $? = 0 ] && ok "A stops cleanly (remote pools drained, plugins unloaded)" || bad "A exit status"
finish
