#!/usr/bin/env bash
# OTA delivery by HTTPS URL (model.offer with args.url, `outpost fleet
# publish --url`), against a real mosquitto and a real HTTPS server: Python's
# http.server wrapped in TLS with a CA and a server certificate openssl makes
# here, its handler written below (it honours "Range: bytes=N-", logs every
# request with its Range header and the bytes it sent, and can, once, cut
# the connection or stall after N bytes). The agent trusts the test CA
# through fleet.ota_ca. Checked:
#   a delta v1 -> v2 fetched by URL is applied and served;
#   a whole model v3 whose first GET is cut after N bytes: the agent asks
#     again with a Range header, the update is applied and served, and the
#     server sent less than twice the file;
#   a whole model v4 whose GET stalls while the agent is killed (SIGKILL):
#     after the restart the download resumes with a Range from the chunks
#     already on disk, and the update completes (reply to the original seq);
#   a URL serving wrong bytes (one byte flipped): the reply on /resp says a
#     chunk does not match, and v4 still serves;
#   a server whose certificate the agent does not trust: TLS verification
#     fails every try, the update fails after the bounded retries, v4 serves;
#   a URL that is not https:// is refused by `fleet publish` (usage) and by
#     the agent (a signed command sent by hand).
# Which model serves is told by its greedy completion, compared with
# `outpost run` on each file.
# Needs mosquitto, mosquitto_sub/_pub, curl, python3, openssl.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
build=${OUTPOST_BUILD:?}
src=$(cd "$(dirname "$0")/../.." && pwd)
perturb=$build/tests/gguf_perturb
for tool in mosquitto mosquitto_sub mosquitto_pub curl python3 openssl; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
[ -x "$perturb" ] || { echo "SKIP: $perturb is not built"; exit 77; }
# shellcheck source=lib_mqtt.sh
. "$(dirname "$0")/lib_mqtt.sh"
work=$(mktemp -d)
agent= server= server2= pubpid=
cleanup() {
  [ -n "$server2" ] && kill -KILL "$server2" 2>/dev/null && wait "$server2" 2>/dev/null
  [ -n "$pubpid" ] && kill -KILL "$pubpid" 2>/dev/null
  [ -n "$agent" ] && kill -KILL "$agent" 2>/dev/null
  [ -n "$server" ] && kill -KILL "$server" 2>/dev/null && wait "$server" 2>/dev/null
  mqtt_stop
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

mqtt_certs "$work/certs" || { echo "FAIL: openssl"; exit 1; }
mqtt_start "$work/mq" || exit 1
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1

# ---- the HTTPS server -------------------------------------------------------------
mkdir -p "$work/www"
cat >"$work/https.py" <<'EOF'
# A file server for the test: GET /NAME serves www/NAME, honouring
# "Range: bytes=N-" (206). Control files in the server's directory, each
# used once and removed: cut (NAME BYTES: close the connection after BYTES
# body bytes), stall (NAME BYTES: after BYTES, touch "stalled" and wait up
# to 30 s before closing). Every request is logged as one JSON line in
# requests.log: path, range header (or null), status, body bytes sent.
import http.server, json, os, re, socket, ssl, sys, threading, time
top, certfile, keyfile = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()

def take(name, path):
    ctl = os.path.join(top, name)
    with lock:
        try:
            want, n = open(ctl).read().split()
        except OSError:
            return None
        if want != path:
            return None
        os.unlink(ctl)
        return int(n)

def log(entry):
    with lock, open(os.path.join(top, "requests.log"), "a") as f:
        f.write(json.dumps(entry) + "\n")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        name = os.path.basename(self.path.split("?")[0])
        path = os.path.join(top, "www", name)
        rng = self.headers.get("Range")
        if not os.path.isfile(path):
            log({"path": name, "range": rng, "status": 404, "sent": 0})
            self.send_error(404)
            return
        data = open(path, "rb").read()
        start, status = 0, 200
        if rng is not None:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            if not m or int(m.group(1)) >= len(data):
                log({"path": name, "range": rng, "status": 416, "sent": 0})
                self.send_error(416)
                return
            start, status = int(m.group(1)), 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut, stall = take("cut", name), take("stall", name)
        limit = cut if cut is not None else stall
        sent = body if limit is None else body[:limit]
        try:
            self.wfile.write(sent)
            self.wfile.flush()
            if stall is not None:
                open(os.path.join(top, "stalled"), "w").close()
                for _ in range(300):
                    time.sleep(0.1)
                    if not os.path.exists(os.path.join(top, "stalled")):
                        break
        except OSError:
            pass
        log({"path": name, "range": rng, "status": status, "sent": len(sent)})
        if limit is not None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

srv = Server(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(certfile, keyfile)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(os.path.join(top, "port.tmp"), "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(os.path.join(top, "port.tmp"), os.path.join(top, "port"))
srv.serve_forever()
EOF
python3 "$work/https.py" "$work" "$work/certs/server.crt" "$work/certs/server.key" \
  >"$work/https.out" 2>&1 &
server=$!
for _ in $(seq 1 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "FAIL: the HTTPS server did not start"; cat "$work/https.out"; exit 1; }
URL="https://localhost:$(cat "$work/port")"
curl -s --cacert "$work/certs/ca.crt" -o /dev/null "$URL/none" # warm-up (404, logged)
: >"$work/requests.log"
# requests NAME: the log lines for NAME as "range status sent"
requests() {
  python3 - "$work/requests.log" "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["path"] == sys.argv[2]:
        print(d["range"] or "-", d["status"], d["sent"])
EOF
}

# ---- models ----------------------------------------------------------------------
cp "$shared/models/stories260K.gguf" "$work/v1.gguf"
"$perturb" "$work/v1.gguf" "$work/v2.gguf" --replace 0.1 --seed 11 >/dev/null 2>&1 &&
  "$perturb" "$work/v2.gguf" "$work/v3.gguf" --replace 0.1 --seed 12 >/dev/null 2>&1 &&
  "$perturb" "$work/v3.gguf" "$work/v4.gguf" --replace 0.1 --seed 14 >/dev/null 2>&1 ||
  { echo "FAIL: gguf_perturb"; exit 1; }
"$bin" ota diff "$work/v1.gguf" "$work/v2.gguf" -o "$work/www/d12.delta" >/dev/null 2>&1 ||
  { echo "FAIL: ota diff"; exit 1; }
cp "$work/v3.gguf" "$work/v4.gguf" "$work/www/"
python3 - "$work/v2.gguf" "$work/www/bad.gguf" <<'EOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[len(b) * 2 // 3] ^= 0x5a
open(sys.argv[2], "wb").write(b)
EOF
utf8() { python3 -c 'import sys; sys.stdout.write(sys.stdin.buffer.read().decode("utf-8", "replace"))'; }
expect_of() { "$bin" run -m "$1" -p "$PROMPT" -n 12 --temp 0 2>/dev/null | utf8; }
PROMPT=
for p in "Once upon a time" "The little dog" "Lily and Ben" "One day" "The sun was"; do
  PROMPT=$p
  T1=$(expect_of "$work/v1.gguf") T2=$(expect_of "$work/v2.gguf")
  T3=$(expect_of "$work/v3.gguf") T4=$(expect_of "$work/v4.gguf")
  [ "$T1" != "$T2" ] && [ "$T2" != "$T3" ] && [ "$T3" != "$T4" ] && [ "$T2" != "$T4" ] && break
  PROMPT=
done
[ -n "$PROMPT" ] || { echo "FAIL: the models answer alike on every prompt"; exit 1; }

# ---- the agent ---------------------------------------------------------------------
sock=$work/dev.sock
start() {
  "$bin" serve -m "$work/v1.gguf" --socket "$sock" --state-dir "$work/state" --lua-dir "$src/lua" \
    --broker "$MQTT_URL" --device-id dev1 --fleet-key "$work/k.pub" \
    --set fleet.ota_ca="$work/certs/ca.crt" \
    --set fleet.keepalive_s=5 --set fleet.reconnect_max_ms=1000 >>"$work/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/health)" = 200 ] &&
      [ "$(grep -c "fleet: connected" "$work/agent.log")" -ge "$1" ] && return 0
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.1
  done
  echo "agent did not become ready:"; tail -30 "$work/agent.log"; exit 1
}
served() {
  curl -s --unix-socket "$sock" http://localhost/v1/completions -H 'Content-Type: application/json' \
    -d "{\"model\":\"default\",\"prompt\":\"$PROMPT\",\"max_tokens\":12,\"temperature\":0}" |
    python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["choices"][0]["text"] + "\n")' 2>/dev/null |
    utf8
}
# publish FLAGS...: reply in $reply, exit status in $rc
publish() {
  reply=$("$bin" fleet publish --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --timeout 120 \
    --chunk-size 4096 "$@" 2>>"$work/cli.log")
  rc=$?
}
start 1

# 1. a delta by URL
publish --version 2 --delta "$work/www/d12.delta" --url "$URL/d12.delta"
check "delta by URL: the reply is ok (rc $rc: $reply)" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"ok\"]")" = True ]'
check "delta by URL: the result names version 2, committed" \
  '[ "$(field "$reply" "d[\"result\"][\"model_version\"]")" = 2 ] && [ "$(field "$reply" "d[\"result\"][\"outcome\"]")" = committed ]'
check "delta by URL: v2 serves" '[ "$(served)" = "$T2" ]'
check "delta by URL: one GET of the whole file, no Range" \
  '[ "$(requests d12.delta)" = "- 200 $(stat -c %s "$work/www/d12.delta")" ]'

# 2. a whole model whose first GET is cut
size3=$(stat -c %s "$work/v3.gguf")
echo "v3.gguf 300000" >"$work/cut"
publish --version 3 --model "$work/v3.gguf" --url "$URL/v3.gguf"
check "cut connection: the reply is ok (rc $rc: $reply)" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"ok\"]")" = True ]'
check "cut connection: v3 serves" '[ "$(served)" = "$T3" ]'
echo "# requests for v3.gguf (range status sent):"; requests v3.gguf | sed 's/^/#   /'
check "cut connection: the first GET was cut at 300000 bytes" \
  '[ "$(requests v3.gguf | head -1)" = "- 200 300000" ]'
check "cut connection: the next GET asked a Range from the chunks stored (bytes=299008-)" \
  '[ "$(requests v3.gguf | sed -n 2p | cut -d" " -f1-2)" = "bytes=299008- 206" ]'
total=$(requests v3.gguf | awk '{s += $3} END {print s + 0}')
check "cut connection: $total bytes served for a $size3-byte file (< 2x)" \
  '[ "$total" -lt $((2 * size3)) ] && [ "$total" -ge "$size3" ]'

# 3. a restart during the download
size4=$(stat -c %s "$work/v4.gguf")
echo "v4.gguf 500000" >"$work/stall"
"$bin" fleet publish --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --timeout 120 \
  --chunk-size 4096 --version 4 --model "$work/v4.gguf" --url "$URL/v4.gguf" \
  >"$work/pub4.out" 2>>"$work/cli.log" &
pubpid=$!
for _ in $(seq 1 300); do [ -e "$work/stalled" ] && break; sleep 0.1; done
check "restart: the first GET stalled after 500000 bytes" '[ -e "$work/stalled" ]'
sleep 1 # the agent stores what arrived
kill -KILL "$agent"; wait "$agent" 2>/dev/null; agent=
rm -f "$work/stalled"
start 2
wait "$pubpid"; rc=$?; pubpid=
reply=$(cat "$work/pub4.out")
check "restart: the original offer's reply is ok (rc $rc: $reply)" \
  '[ $rc = 0 ] && [ "$(field "$reply" "d[\"ok\"]")" = True ]'
check "restart: v4 serves" '[ "$(served)" = "$T4" ]'
echo "# requests for v4.gguf (range status sent):"; requests v4.gguf | sed 's/^/#   /'
# the resumed GET: any but the stalled first one ("- 200 500000"), whose log
# line the server writes only when its stall ends, which under load can be
# after the resumed GET's line
r2=$(requests v4.gguf | awk '!($1 == "-" && $3 == 500000)' | head -n 1 | cut -d" " -f1)
check "restart: the resumed GET asked a Range from what was on disk ($r2)" \
  '[[ "$r2" =~ ^bytes=([0-9]+)-$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] && [ "${BASH_REMATCH[1]}" -le 500000 ] && [ $((BASH_REMATCH[1] % 4096)) = 0 ]'
total=$(requests v4.gguf | awk '{s += $3} END {print s + 0}')
check "restart: $total bytes served for a $size4-byte file (< 2x)" '[ "$total" -lt $((2 * size4)) ]'
check "restart: the agent said it resumed" 'grep -q "ota: resuming model.offer" "$work/agent.log"'

# 4. wrong bytes at the URL
publish --version 5 --model "$work/v2.gguf" --url "$URL/bad.gguf"
check "wrong bytes: the reply fails (rc $rc: $reply)" \
  '[ $rc = 1 ] && [ "$(field "$reply" "d[\"ok\"]")" = False ]'
check "wrong bytes: the error names the chunk that does not match" \
  '[[ "$(field "$reply" "d[\"error\"]")" == *"chunk"*"does not match"* ]]'
check "wrong bytes: v4 still serves" '[ "$(served)" = "$T4" ]'

# 5. a server whose certificate the agent does not trust (self-signed,
#    another name): TLS verification refuses it; after the bounded retries
#    the update fails with libcurl's reason on /resp
mkdir -p "$work/untrusted"
ln -s "$work/www" "$work/untrusted/www"
python3 "$work/https.py" "$work/untrusted" "$work/certs/other.crt" "$work/certs/other.key" \
  >"$work/https2.out" 2>&1 &
server2=$!
for _ in $(seq 1 100); do [ -s "$work/untrusted/port" ] && break; sleep 0.1; done
publish --version 6 --model "$work/v3.gguf" --url "https://localhost:$(cat "$work/untrusted/port")/v3.gguf"
kill -KILL "$server2" 2>/dev/null; wait "$server2" 2>/dev/null; server2=
check "untrusted certificate: the reply fails (rc $rc: $reply)" \
  '[ $rc = 1 ] && [ "$(field "$reply" "d[\"ok\"]")" = False ]'
check "untrusted certificate: the error is the TLS verification, after 6 tries" \
  '[[ "$(field "$reply" "d[\"error\"]")" == *"certificate"*"6 tries"* ]]'
check "untrusted certificate: v4 still serves" '[ "$(served)" = "$T4" ]'

# 6. not https
"$bin" fleet publish --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" --version 6 \
  --model "$work/v2.gguf" --url "http://localhost:1/v2.gguf" >/dev/null 2>"$work/usage.err"
check "publish --url http:// is a usage error" '[ $? = 2 ] && grep -q "https://" "$work/usage.err"'
reply=$("$bin" fleet cmd --broker "$MQTT_URL" --device dev1 -s "$work/k.sec" \
  '{"cmd":"model.offer","args":{"manifest":"{}","manifest_sig":"x","url":"http://localhost/v.gguf"}}' \
  2>>"$work/cli.log")
check "agent: an http:// url is refused on /resp ($reply)" \
  '[ "$(field "$reply" "d[\"ok\"]")" = False ] && [[ "$(field "$reply" "d[\"error\"]")" == *"https://"* ]]'
check "agent: v4 still serves" '[ "$(served)" = "$T4" ]'

kill -TERM "$agent"; wait "$agent" 2>/dev/null; agent=
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
