#!/usr/bin/env bash
# outpost serve end to end with the real stories260K model: the OpenAI routes
# on the Unix socket (non-streaming and SSE), the TCP listener with its bearer
# key, sessions with KV prefix reuse, the documented errors, metrics, the
# client commands, queue limits, cancellation on disconnect, SIGHUP, a
# draining SIGTERM, and the telemetry rows left in SQLite.
# Needs curl, python3 (JSON checks) and sqlite3.
. "$(dirname "$0")/lib.sh"
need curl python3 sqlite3
policy=$work/policy.lua
cp "$src/lua/default.lua" "$policy"
sock=$work/s.sock
state=$work/state
pid=""

# req METHOD PATH [BODY] -> body in $work/body, status in $code.
req() {
  local m=$1 p=$2
  shift 2
  code=$(curl -s -o "$work/body" -w '%{http_code}' --unix-socket "$sock" -X "$m" \
    -H 'Content-Type: application/json' "http://localhost$p" "$@")
}
port=$(free_port)
start_agent() { # extra flags...
  OUTPOST_API_KEY=sekrit agent_start "$work/log" "$sock" --state-dir "$state" \
    --policy "$policy" --lua-dir "$src/lua" --listen "127.0.0.1:$port" "$@"
  pid=$agent_pid
}
stop_agent() { agent_stop "$pid"; pid=""; }

# A stand-in for systemd's notification socket, recording what the agent says.
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
f = open(sys.argv[2], "ab", 0)
while True:
    f.write(s.recv(4096) + b"\n")' "$work/notify.sock" "$work/notify.log" &
for _ in $(seq 1 50); do [ -S "$work/notify.sock" ] && break; sleep 0.1; done
NOTIFY_SOCKET=$work/notify.sock start_agent --set limits.queue_depth=2 --set listen.allowed_uids=65534
grep -q "and tcp 127.0.0.1:$port" "$work/log" && ok "agent ready on the socket and TCP port $port" || bad "TCP listener not in the log: $(cat "$work/log")"
perm=$(stat -c %a "$sock")
[ "$perm" = 660 ] && ok "socket mode 0660" || bad "socket mode $perm"

# 1. Non-streaming chat completion.
req POST /v1/chat/completions -d '{"model":"stories260K","messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":24,"temperature":0}'
if [ "$code" = 200 ] && [ "$(json "$work/body" 'd["object"]=="chat.completion" and d["choices"][0]["message"]["role"]=="assistant" and len(d["choices"][0]["message"]["content"])>0 and d["choices"][0]["finish_reason"] in ("stop","length") and d["usage"]["prompt_tokens"]>0 and d["usage"]["completion_tokens"]>0 and d["outpost"]["route"]=="local" and len(d["outpost"]["reason"])>0 and d["outpost"]["ttft_ms"]>0 and d["outpost"]["truncated"]==False and d["id"].startswith("chatcmpl-")')" = True ]; then
  ok "chat completion: message, usage and outpost objects"
else bad "chat completion: $code $(cat "$work/body")"; fi

# 2. Streaming chat completion: chunks, a last chunk with the reason and the
# outpost object, then [DONE].
curl -sN --unix-socket "$sock" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":24,"temperature":0,"stream":true}' >"$work/sse"
if python3 - "$work/sse" "$work/body" <<'EOF'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]", events[-1]
chunks = [json.loads(e) for e in events[:-1]]
assert all(c["object"] == "chat.completion.chunk" for c in chunks)
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
last = chunks[-1]
assert last["choices"][0]["finish_reason"] in ("stop", "length")
assert last["outpost"]["route"] == "local"
# The same greedy request gives the same text streamed or not.
assert text == json.load(open(sys.argv[2]))["choices"][0]["message"]["content"], text
EOF
then ok "streamed chat: chunks, finish reason, outpost object, [DONE], same text as non-streamed"
else bad "streamed chat: $(head -c 600 "$work/sse")"; fi

# 3. /v1/completions greedy equals `outpost run` on the same prompt.
prompt="Once upon a time"
expected=$("$bin" run -m "$model" -p "$prompt" -n 32 --temp 0 2>/dev/null)
req POST /v1/completions -d "{\"prompt\":\"$prompt\",\"max_tokens\":32,\"temperature\":0}"
got=$(json "$work/body" 'd["choices"][0]["text"]')
if [ "$code" = 200 ] && [ -n "$got" ] && [ "$got" = "$expected" ] && [ "$(json "$work/body" 'd["object"]')" = text_completion ]; then
  ok "completion equals 'outpost run' greedy output"
else bad "completion: $code [$got] vs run [$expected]"; fi
curl -sN --unix-socket "$sock" http://localhost/v1/completions -d "{\"prompt\":\"$prompt\",\"max_tokens\":32,\"temperature\":0,\"stream\":true}" >"$work/sse"
streamed=$(python3 -c '
import json,sys
ev=[l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert ev[-1]=="[DONE]"
print("".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]))' "$work/sse")
[ "$streamed" = "$expected" ] && ok "streamed completion equals 'outpost run'" || bad "streamed completion [$streamed]"

# Stop strings end the text before them, across token boundaries.
if [[ "$expected" == *.* ]]; then
  req POST /v1/completions -d "{\"prompt\":\"$prompt\",\"max_tokens\":32,\"temperature\":0,\"stop\":[\"zzz\",\".\"]}"
  got=$(json "$work/body" 'd["choices"][0]["text"]')
  [ "$got" = "${expected%%.*}" ] && [ "$(json "$work/body" 'd["choices"][0]["finish_reason"]')" = stop ] \
    && ok "stop string: the text ends before it, finish_reason stop" || bad "stop string: [$got] vs [${expected%%.*}]"
fi

# ... also when the stop string spans several tokens.
stop=$(python3 -c 'import sys; w=sys.argv[1].split(); print(" ".join(w[2:4]))' "$expected")
if [ -n "$stop" ]; then
  req POST /v1/completions -d "{\"prompt\":\"$prompt\",\"max_tokens\":32,\"temperature\":0,\"stop\":\"$stop\",\"stream\":true}"
  got=$(python3 -c '
import json,sys
ev=[l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
print("".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]))' "$work/body")
  [ "$got" = "${expected%%"$stop"*}" ] && ok "streamed stop string over several tokens ('$stop')" \
    || bad "multi-token stop '$stop': [$got] vs [${expected%%"$stop"*}]"
fi

# 4. Models.
req GET /v1/models
[ "$code" = 200 ] && [ "$(json "$work/body" '[m["id"] for m in d["data"]]')" = "['stories260K']" ] \
  && ok "/v1/models lists the model" || bad "/v1/models: $code $(cat "$work/body")"

# 5. A session over two turns: turn 2 sends only its new message and reuses
# the KV cache of all of turn 1's prompt.
req POST /v1/chat/completions -d '{"messages":[{"role":"user","content":"Tell me about a cat"}],"max_tokens":16,"temperature":0,"outpost":{"session":"new"}}'
sid=$(json "$work/body" 'd["outpost"]["session"]')
p1=$(json "$work/body" 'd["usage"]["prompt_tokens"]')
req POST /v1/chat/completions -d "{\"messages\":[{\"role\":\"user\",\"content\":\"What did the cat do?\"}],\"max_tokens\":16,\"temperature\":0,\"outpost\":{\"session\":\"$sid\"}}"
c2=$(json "$work/body" 'd["outpost"]["cached_tokens"]')
p2=$(json "$work/body" 'd["usage"]["prompt_tokens"]')
if [ "$code" = 200 ] && [ -n "$p1" ] && [ -n "$c2" ] && [ "$c2" -ge "$p1" ] && [ "$p2" -gt "$c2" ]; then
  ok "session turn 2 reuses $c2 cached tokens (turn 1 prompt: $p1, turn 2 prompt: $p2)"
else bad "session reuse: turn 1 prompt '$p1', turn 2 cached '$c2' prompt '$p2' ($code $(cat "$work/body"))"; fi
req GET "/v1/sessions/$sid"
[ "$code" = 200 ] && [ "$(json "$work/body" '[m["role"] for m in d["data"]]')" = "['user', 'assistant', 'user', 'assistant']" ] \
  && ok "the session holds both turns" || bad "session content: $code $(cat "$work/body")"
req GET /v1/sessions
[ "$(json "$work/body" 'len([s for s in d["data"] if s["id"]=="'"$sid"'"])')" = 1 ] && ok "the session is listed" || bad "session list: $(cat "$work/body")"

# A conversation longer than the context loses its oldest messages, not the
# system prompt, and says so; a single message that cannot fit is a 400.
python3 - "$work/long.json" "$work/huge.json" <<'EOF2'
import json, sys
line = "The little dog ran to the big tree and played with a red ball all day long. "
msgs = [{"role": "system", "content": "You tell stories."}]
for i in range(16):
    msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"Part {i}. " + line * 8})
json.dump({"messages": msgs, "max_tokens": 8, "temperature": 0}, open(sys.argv[1], "w"))
json.dump({"messages": [{"role": "user", "content": line * 200}], "max_tokens": 8}, open(sys.argv[2], "w"))
EOF2
req POST /v1/chat/completions --data-binary @"$work/long.json"
[ "$code" = 200 ] && [ "$(json "$work/body" 'd["outpost"]["truncated"] == True and d["usage"]["prompt_tokens"] <= 2048')" = True ] \
  && ok "context overflow: oldest messages dropped, truncated=true" || bad "context overflow: $code $(head -c 400 "$work/body")"
req POST /v1/chat/completions --data-binary @"$work/huge.json"
[ "$code" = 400 ] && [ "$(json "$work/body" 'd["error"]["code"]')" = context_length_exceeded ] \
  && ok "a message longer than the context: 400 context_length_exceeded" || bad "huge message: $code $(head -c 300 "$work/body")"

# Routing: the policy's decision and reason come back in the outpost object.
route_of() { # outpost-object BODY... -> "route reason"
  req POST /v1/chat/completions -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$1\"}],\"max_tokens\":2,\"outpost\":$2}"
  json "$work/body" 'd["outpost"]["route"] + " " + d["outpost"]["reason"]'
}
[ "$(route_of "hello" '{"privacy":"private"}')" = "local private" ] && ok "private request: local, reason private" || bad "private: $(cat "$work/body")"
[ "$(route_of "write to bob@example.com" '{}')" = "local pii_detected" ] && ok "PII in the text: local, reason pii_detected" || bad "pii: $(cat "$work/body")"
r=$(route_of "hello" '{"route":"cloud"}')
case "$r" in
  "local cloud_unconfigured" | "local offline") ok "cloud asked for, none configured: answered locally ($r)" ;;
  *) bad "cloud without a backend: $r" ;;
esac

# A policy that fails sends requests local with reason policy_error; one that
# does not load is refused by a reload and the running policy stays.
cat >"$policy" <<'EOF2'
function route(req, env) error("broken on purpose") end
EOF2
"$bin" policy reload --socket "$sock" >/dev/null 2>&1
[ "$(route_of "hello" '{}')" = "local policy_error" ] && ok "a failing policy: local, reason policy_error" || bad "failing policy: $(cat "$work/body")"
echo 'function route(req, env) return {' >"$policy"
"$bin" policy reload --socket "$sock" >/dev/null 2>"$work/err"
rc=$?
[ $rc -eq 1 ] && [ "$(route_of "hello" '{}')" = "local policy_error" ] && ok "a policy with a syntax error is refused, the old one stays" \
  || bad "broken reload: rc $rc $(cat "$work/err")"
cp "$src/lua/default.lua" "$policy"
"$bin" policy reload --socket "$sock" >/dev/null 2>&1
[ "$(route_of "hello" '{}')" = "local default_local" ] && ok "the default policy is back after a reload" || bad "reload back: $(cat "$work/body")"

# 6. Errors in OpenAI's shape.
req POST /v1/chat/completions -d '{"messages": [oops'
[ "$code" = 400 ] && [ "$(json "$work/body" 'sorted(d["error"].keys())==["code","message","param","type"] and d["error"]["type"]=="invalid_request_error" and len(d["error"]["message"])>0')" = True ] \
  && ok "malformed JSON: 400 in OpenAI's error shape" || bad "malformed JSON: $code $(cat "$work/body")"
req POST /v1/chat/completions -d '{"messages":[{"role":"user","content":42}]}'
[ "$code" = 400 ] && ok "wrong type: 400" || bad "wrong type: $code $(cat "$work/body")"
head -c 5000000 /dev/zero | tr '\0' a >"$work/big"
req POST /v1/chat/completions --data-binary @"$work/big"
[ "$code" = 413 ] && [ "$(json "$work/body" 'd["error"]["code"]')" = body_too_large ] && ok "oversize body: 413" || bad "oversize body: $code"
req POST /v1/chat/completions -d '{"model":"gpt-17","messages":[{"role":"user","content":"hi"}]}'
[ "$code" = 404 ] && [ "$(json "$work/body" 'd["error"]["code"]')" = model_not_found ] && ok "unknown model: 404" || bad "unknown model: $code $(cat "$work/body")"
req POST /v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}],"outpost":{"session":"0123456789abcdef0123456789abcdef"}}'
[ "$code" = 404 ] && [ "$(json "$work/body" 'd["error"]["code"]')" = session_not_found ] && ok "unknown session: 404" || bad "unknown session: $code $(cat "$work/body")"
req GET /v1/nothing
[ "$code" = 404 ] && ok "unknown route: 404" || bad "unknown route: $code"
req DELETE /v1/models
[ "$code" = 405 ] && ok "wrong method: 405" || bad "wrong method: $code"

# 7. TCP: bearer key required except for /health.
tcp=http://127.0.0.1:$port
c=$(curl -s -o /dev/null -w '%{http_code}' "$tcp/health")
[ "$c" = 200 ] && ok "TCP /health needs no key" || bad "TCP /health: $c"
c=$(curl -s -o /dev/null -w '%{http_code}' "$tcp/v1/models")
[ "$c" = 401 ] && ok "TCP without the key: 401" || bad "TCP without key: $c"
c=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' "$tcp/v1/models")
[ "$c" = 401 ] && ok "TCP with a wrong key: 401" || bad "TCP wrong key: $c"
c=$(curl -s -o "$work/body" -w '%{http_code}' -H 'Authorization: Bearer sekrit' "$tcp/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":8}')
[ "$c" = 200 ] && ok "TCP chat with the key" || bad "TCP chat: $c $(cat "$work/body")"

# Peer credentials: the socket's mode keeps strangers out; beyond it
# (opened up here on purpose) SO_PEERCRED decides, and sessions stay with
# the uid that made them. Needs root to act as other users.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  chmod 711 "$work"
  chmod 666 "$sock"
  as() { local u=$1; shift; setpriv --reuid="$u" --regid="$u" --clear-groups "$@"; }
  c=$(as 65533 curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/v1/models)
  [ "$c" = 403 ] && ok "a uid outside the allowed list: 403" || bad "stranger uid: $c"
  c=$(as 65533 curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/health)
  [ "$c" = 200 ] && ok "/health answers anyone who can connect" || bad "stranger /health: $c"
  nb=$(as 65534 curl -s --unix-socket "$sock" http://localhost/v1/chat/completions \
    -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"outpost":{"session":"new"}}')
  nsid=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["outpost"]["session"])' "$nb" 2>/dev/null)
  req GET "/v1/sessions/$nsid"
  c_root=$code
  c_own=$(as 65534 curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" "http://localhost/v1/sessions/$nsid")
  req POST /v1/chat/completions -d "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"outpost\":{\"session\":\"$nsid\"}}"
  if [ -n "$nsid" ] && [ "$c_own" = 200 ] && [ "$c_root" = 404 ] && [ "$code" = 404 ]; then
    ok "an allowed uid's session is invisible to another uid (404 to read or resume)"
  else bad "session isolation: sid '$nsid' own $c_own, other read $c_root, other resume $code"; fi
  chmod 660 "$sock"
fi

# 8. Client commands.
out=$("$bin" chat --socket "$sock" -n 12 --temp 0 "Tell me a story" 2>"$work/err")
[ $? -eq 0 ] && [ -n "$out" ] && grep -q "route local" "$work/err" && ok "outpost chat prints the reply and the route" \
  || bad "outpost chat: [$out] $(cat "$work/err")"
"$bin" status --socket "$sock" >"$work/out" 2>&1 && grep -q "ready" "$work/out" && grep -q stories260K "$work/out" \
  && ok "outpost status" || bad "outpost status: $(cat "$work/out")"
"$bin" policy reload --socket "$sock" >"$work/out" 2>&1 && ok "outpost policy reload" || bad "policy reload: $(cat "$work/out")"
# The client commands' HTTP (libcurl) is a module they load; the daemon,
# the same binary, never maps libcurl, nor the backend plugin (no peer or
# cloud is configured here).
if ! grep -qE 'libcurl|backend-openai' "/proc/$pid/maps" && grep -q 'sensor-linux' "/proc/$pid/maps"; then
  ok "the daemon maps neither libcurl nor backend-openai (the client commands load outpost-client.so)"
else bad "the daemon maps: $(grep -oE '[^ /]*(curl|backend|sensor)[^ ]*' "/proc/$pid/maps" | sort -u | tr '\n' ' ')"; fi
# A copy outside the build tree looks for the installed module: without
# it, one line naming it and exit 1 (no crash).
cp "$bin" "$work/outpost-copy"
if [ ! -e "$(strings "$bin" | grep -m1 '/outpost/outpost-client\.so$')" ]; then
  "$work/outpost-copy" status --socket "$sock" >/dev/null 2>"$work/err"
  [ $? -eq 1 ] && [ "$(wc -l <"$work/err")" = 1 ] && grep -q "cannot load the client module: .*outpost-client.so" "$work/err" \
    && ok "without its client module the binary says so in one line, exit 1" || bad "no module: $(cat "$work/err")"
fi
"$bin" chat --socket "$work/none.sock" hi >/dev/null 2>"$work/err"
[ $? -eq 1 ] && grep -q "cannot reach the agent" "$work/err" && ok "chat without an agent: one line, exit 1" || bad "chat without agent: $(cat "$work/err")"

# 9. A second agent on the same socket is refused.
"$bin" serve -m "$model" --socket "$sock" --state-dir "$work/state2" --policy "$policy" >"$work/out" 2>&1
[ $? -eq 1 ] && grep -q "already listening" "$work/out" && ok "a second agent on the socket is refused" || bad "second agent: $(cat "$work/out")"

# 10. A client that disconnects cancels its generation.
curl -sN --max-time 0.3 --unix-socket "$sock" http://localhost/v1/completions \
  -d '{"prompt":"Once","max_tokens":2000,"temperature":0,"stream":true}' >/dev/null 2>&1
cancelled=0
for _ in $(seq 1 50); do
  cancelled=$(curl -s --unix-socket "$sock" http://localhost/metrics | sed -n 's/^outpost_requests_total{model="stories260K",status="cancelled"} //p')
  [ "${cancelled:-0}" -ge 1 ] && break
  sleep 0.1
done
[ "${cancelled:-0}" -ge 1 ] && ok "a disconnected client's generation is cancelled" || bad "no cancellation counted"

# 11. A full queue answers 429 with Retry-After (queue_depth 2 + 1 running).
cpids=()
for i in 1 2 3 4 5 6; do
  curl -s -o /dev/null -D "$work/h$i" --unix-socket "$sock" http://localhost/v1/completions \
    -d '{"prompt":"Once","max_tokens":600,"temperature":0}' &
  cpids+=($!)
done
wait "${cpids[@]}"
n429=$(grep -l "^HTTP/1.1 429" "$work"/h? | wc -l)
n200=$(grep -l "^HTTP/1.1 200" "$work"/h? | wc -l)
if [ "$n429" -ge 1 ] && [ "$n200" -ge 1 ] && grep -qi "^Retry-After: [0-9]" $(grep -l "^HTTP/1.1 429" "$work"/h? | head -1); then
  ok "full queue: $n429 x 429 with Retry-After, $n200 x 200"
else bad "queue limit: $n429 x 429, $n200 x 200"; fi

# 1000 concurrent connections, each with a generation request: every one
# gets 200 or 429, and the agent stays healthy.
python3 - "$sock" >"$work/conc" <<'EOF2'
import collections, socket, sys
body = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
socks = []
for _ in range(1000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    socks.append(s)
for s in socks:
    s.sendall(req)
codes = collections.Counter()
for s in socks:
    s.settimeout(60)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    codes[data.split(b" ", 2)[1].decode() if data else "none"] += 1
    s.close()
print(" ".join(f"{k}:{v}" for k, v in sorted(codes.items())))
EOF2
conc=$(cat "$work/conc")
req GET /health
if [ "$code" = 200 ] && [ -n "$conc" ] && ! grep -qvE '^(200|429):[0-9]+$' <<<"$(tr ' ' '\n' <<<"$conc")"; then
  ok "1000 concurrent generation requests: $conc; /health still 200"
else bad "1000 concurrent: [$conc], health $code"; fi

# 12. Metrics.
curl -s --unix-socket "$sock" http://localhost/metrics >"$work/metrics"
if grep -q '^outpost_http_requests_total{route="/v1/chat/completions",code="200"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_http_requests_total{route="/v1/chat/completions",code="400"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_http_requests_total{route="/v1/completions",code="429"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_completion_tokens_total{model="stories260K"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_ttft_seconds_bucket{model="stories260K",le="+Inf"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_token_latency_seconds_count{model="stories260K"} [1-9]' "$work/metrics" &&
   grep -q '^outpost_queue_depth{model="stories260K"} 0' "$work/metrics"; then
  ok "/metrics: requests by route and status, tokens, histograms, queue depth"
else bad "metrics:"; cat "$work/metrics"; fi

# 13. SIGHUP reloads and the agent keeps serving.
n_reloads=$(grep -c "reloaded" "$work/log")
kill -HUP "$pid"
for _ in $(seq 1 30); do [ "$(grep -c "reloaded" "$work/log")" -gt "$n_reloads" ] && break; sleep 0.1; done
req GET /v1/models
[ "$code" = 200 ] && [ "$(grep -c "reloaded" "$work/log")" -gt "$n_reloads" ] && ok "SIGHUP reloads, the agent keeps serving" \
  || bad "SIGHUP: $code $(tail -3 "$work/log")"

# 14. SIGTERM drains: a request in flight still gets its whole answer, the
# agent exits 0 and removes its socket.
curl -s -o "$work/drain" -w '%{http_code}' --unix-socket "$sock" http://localhost/v1/completions \
  -d '{"prompt":"Once","max_tokens":400,"temperature":0}' >"$work/drain_code" &
cpid=$!
# SIGTERM only once the request is in flight (a loaded machine may take a
# while to start curl).
for _ in $(seq 1 100); do
  [ "$(metric "$sock" outpost_in_flight_requests)" -ge 1 ] 2>/dev/null && break
  sleep 0.05
done
stop_agent
wait $cpid
if [ $rc -eq 0 ] && [ "$(cat "$work/drain_code")" = 200 ] && [ "$(json "$work/drain" 'd["usage"]["completion_tokens"]')" = 400 ] && [ ! -e "$sock" ]; then
  ok "SIGTERM: the request in flight finished, exit 0, socket removed"
else bad "SIGTERM drain: rc $rc, request $(cat "$work/drain_code"), $(head -c 300 "$work/drain"); log: $(tail -3 "$work/log")"; fi

# systemd heard READY=1, RELOADING=1 (SIGHUP) and STOPPING=1.
sleep 0.2
grep -q "^READY=1" "$work/notify.log" && grep -q "^RELOADING=1" "$work/notify.log" && grep -q "^STOPPING=1" "$work/notify.log" \
  && ok "sd_notify: READY, RELOADING, STOPPING" || bad "sd_notify: $(cat "$work/notify.log" 2>/dev/null)"

# 15. Telemetry and messages are in SQLite.
db=$state/outpost.db
n_ok=$(sqlite3 "$db" "select count(*) from requests where status='ok' and route='local' and model='stories260K' and ttft_ms > 0 and completion_tokens > 0")
n_full=$(sqlite3 "$db" "select count(*) from requests where status='queue_full'")
n_cancel=$(sqlite3 "$db" "select count(*) from requests where status='cancelled'")
n_msg=$(sqlite3 "$db" "select count(*) from messages")
if [ "${n_ok:-0}" -ge 10 ] && [ "${n_full:-0}" -ge 1 ] && [ "${n_cancel:-0}" -ge 1 ] && [ "${n_msg:-0}" -ge 4 ]; then
  ok "SQLite: $n_ok ok rows, $n_full queue_full, $n_cancel cancelled, $n_msg messages"
else bad "SQLite rows: ok $n_ok, queue_full $n_full, cancelled $n_cancel, messages $n_msg"; fi

# 16. Nothing went wrong inside the agent (sanitizer builds report here).
if grep -qE "runtime error|AddressSanitizer|LeakSanitizer|ThreadSanitizer" "$work/log"; then
  bad "the agent's log has sanitizer reports:"; cat "$work/log"
else ok "no sanitizer reports in the agent's log"; fi

finish
