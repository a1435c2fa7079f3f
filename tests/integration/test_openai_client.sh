#!/usr/bin/env bash
# A real OpenAI client library against a real agent: OpenAI's `openai` npm
# package (pinned in package.json / package-lock.json beside this script),
# run with Node, completes chat requests, non-streaming and streaming, on the
# TCP listener with the bearer key, and a wrong key gets the library's
# AuthenticationError (openai_client.mjs does the checks). Then curl does the
# same over the Unix socket.
#
# The package is installed with `npm ci` into the build directory
# ($OUTPOST_BUILD/openai-client), again only when the lock file changed;
# node_modules never lands in the source tree. Node and npm are required:
# without them, or without the registry, this test fails (it never skips),
# because CI has both (.ci/deps).
. "$(dirname "$0")/lib.sh"
sock=$work/s.sock
die() { echo "FAIL: $1"; echo "$pass passed, $((fail + 1)) failed"; exit 1; }

need --fail node npm curl python3
[ -f "$model" ] || die "no model at $model"

# The client library, from the committed lock file.
client=$build/openai-client
mkdir -p "$client" || die "cannot create $client"
if ! cmp -s "$src/tests/integration/package-lock.json" "$client/package-lock.json" ||
   [ ! -f "$client/node_modules/openai/package.json" ]; then
  cp "$src/tests/integration/package.json" "$src/tests/integration/package-lock.json" "$client/"
  (cd "$client" && npm ci --no-audit --no-fund --ignore-scripts >"$work/npm.log" 2>&1) ||
    { cat "$work/npm.log"; rm -f "$client/package-lock.json"; die "npm ci of the openai package failed"; }
fi
# Beside its node_modules: an ES module resolves packages from its own folder.
cp "$src/tests/integration/openai_client.mjs" "$client/" || die "cannot copy the client script"
version=$(node -e 'console.log(require(process.argv[1]).version)' "$client/node_modules/openai/package.json")
echo "# node $(node --version), openai $version"

port=$(free_port)
key=key-$RANDOM$RANDOM
OUTPOST_API_KEY=$key agent_start "$work/log" "$sock" --state-dir "$work/state" \
  --policy "$src/lua/default.lua" --lua-dir "$src/lua" --listen "127.0.0.1:$port"
pid=$agent_pid
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] ||
  { cat "$work/log"; die "the agent did not become ready on 127.0.0.1:$port"; }

# 1. The OpenAI library over TCP.
node "$client/openai_client.mjs" "http://127.0.0.1:$port/v1" "$key" stories260K >"$work/node.out" 2>&1
node_rc=$?
cat "$work/node.out"
n_ok=$(grep -c '^ok: ' "$work/node.out")
n_bad=$(grep -c '^FAIL: ' "$work/node.out")
pass=$((pass + n_ok))
fail=$((fail + n_bad))
if [ $node_rc -ne 0 ] && [ "$n_bad" -eq 0 ]; then bad "the Node client exited $node_rc"; fi
[ "$n_ok" -ge 10 ] || bad "the Node client ran only $n_ok checks"

# 2. curl over the Unix socket, the same greedy request both ways.
body='{"model":"stories260K","messages":[{"role":"user","content":"Tell me a story about a cat"}],"max_tokens":32,"temperature":0}'
code=$(curl -s -o "$work/body" -w '%{http_code}' --unix-socket "$sock" -H 'Content-Type: application/json' \
  http://localhost/v1/chat/completions -d "$body")
if [ "$code" = 200 ] && python3 - "$work/body" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["object"] == "chat.completion" and d["choices"][0]["message"]["content"], d
assert d["usage"]["prompt_tokens"] > 0 and d["usage"]["completion_tokens"] > 0, d
assert d["outpost"]["route"] == "local", d
EOF
then ok "curl --unix-socket: non-streaming chat completion"
else bad "curl --unix-socket chat: $code $(head -c 400 "$work/body")"; fi

curl -sN --unix-socket "$sock" -H 'Content-Type: application/json' http://localhost/v1/chat/completions \
  -d "${body%\}},\"stream\":true}" >"$work/sse"
if python3 - "$work/sse" "$work/body" "$work/node.out" <<'EOF'
import json, sys
raw = open(sys.argv[1]).read()
assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
events = [e for e in raw.split("\n\n") if e]
assert all(e.startswith("data: ") for e in events), events
data = [e[6:] for e in events]
assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
chunks = [json.loads(x) for x in data[:-1]]
text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
assert chunks[-1]["outpost"]["route"] == "local"
assert text and text == json.load(open(sys.argv[2]))["choices"][0]["message"]["content"], text
EOF
then ok "curl --unix-socket: streamed chunks equal the non-streamed text, 'data: [DONE]' last"
else bad "curl --unix-socket stream: $(tail -c 400 "$work/sse")"; fi

# The same greedy request gets the same reply over TCP (Node) and the socket (curl).
node_reply=$(sed -n 's/^# reply: //p' "$work/node.out")
curl_reply=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["choices"][0]["message"]["content"], ensure_ascii=False))' "$work/body" 2>/dev/null)
[ -n "$node_reply" ] && [ "$node_reply" = "$curl_reply" ] && ok "the Node client over TCP and curl over the socket got the same greedy reply" \
  || bad "replies differ: node $node_reply, curl $curl_reply"

# 3. The agent stayed clean.
agent_stop "$pid"
[ $rc -eq 0 ] && ok "the agent exits 0 on SIGTERM" || bad "agent exit status $rc"
if grep -qE "runtime error|AddressSanitizer|LeakSanitizer" "$work/log"; then
  bad "sanitizer reports in the agent's log:"; cat "$work/log"
else ok "no sanitizer reports in the agent's log"; fi

finish
