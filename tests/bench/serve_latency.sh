#!/usr/bin/env bash
# The agent's own overhead, with stories260K:
#  - /health over the Unix socket: N sequential requests on one keep-alive
#    connection while IDLE other connections are held open; median, p99 and
#    max latency as the client sees it (a Python client: its own few
#    microseconds per request are included), next to the same client's
#    round trip to a trivial echo process over a socket pair (the floor set
#    by the machine: wake-ups of idle cores dominate it), and the agent's RSS after the
#    connections and a warm-up, and after the N requests (flat = nothing
#    grows per request);
#  - C concurrent connections each sending one /health at once: how many get
#    200;
#  - TTFT on R prompts that each start with a different word (so the agent's
#    KV prefix reuse cannot help): the agent's outpost.ttft_ms (from the
#    complete request body to the first sampled token: JSON parsing,
#    tokenization, policy route(), queue hand-off, prefill, first sample),
#    the client's time to the first streamed token, `outpost run`'s prefill
#    time on the same prompt (N / X from its "prompt N tokens, X tok/s";
#    a fresh process, so its first pass is cold), and the warm prefill of
#    `outpost bench -p TOKENS -n 1 -r 5`. Medians.
#  - route() with the shipped default policy: median and p99 of ROUTE_N calls
#    in one `outpost policy test --repeat` (sandbox, limits, result check);
#  - the agent's RSS without the model's weights, from /proc/PID/smaps after
#    the warm-up, idle (one connection, before the IDLE ones and any generation): anonymous pages plus file pages less
#    the model file's. The KV cache is malloc'd and untouched pages are not
#    resident: after the warm-up's one token at most two pages per layer of
#    K and of V are (kv_resident_max_kb), so the figure also bounds the RSS
#    without weights and KV from above; and, when mosquitto is installed
#    (FLEET=0 skips it), the same figure for a second agent that also joins a
#    fleet on a local broker (the MQTT channel with Paho and OpenSSL).
# The P3 acceptance figures are the first rows of the table and lead the
# JSON line: ttft_server_minus_run_ms, health_p99_us with rss before/after,
# route_median_us, agent_rss_excl_model_kb (and _fleet_kb).
# Prints a table and one JSON line; asserts nothing about time.
#
#   tests/bench/serve_latency.sh [BUILD_DIR]      (default: build)
#
# Environment: N (10000), IDLE (1000), C (1000), R (30), ROUTE_N (20000),
# FLEET (1 when mosquitto is installed).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$build/agent/outpost
model=$here/../shared/models/stories260K.gguf
work=$(mktemp -d)
pid="" fpid="" mpid=""
trap 'for p in $pid $fpid $mpid; do kill -KILL $p 2>/dev/null; done; rm -rf "$work"' EXIT

"$bin" serve -m "$model" --socket "$work/s.sock" --state-dir "$work/state" \
  --policy "$here/lua/default.lua" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q "ready" "$work/log" && break
  sleep 0.1
done
# The KV pages the warm-up's token can have touched: K and V, per layer at
# most two pages (a row may straddle a page boundary), 4 KiB each.
kv_max_kb=$("$bin" model info "$model" | awk '/block count/ { l = $3 } END { print 2 * l * 2 * 4 }')

# route() with the default policy, one process, the policy loaded once.
route=$("$bin" policy test "$here/lua/default.lua" --request '{"prompt_tokens":50}' \
  --repeat "${ROUTE_N:-20000}" 2>&1 >/dev/null | sed -n 's/.*median \([0-9.]*\) us, p99 \([0-9.]*\) us.*/\1 \2/p')

# A second agent in a fleet (mosquitto on a free port, a fresh fleet key).
fleet_sock=""
if [ "${FLEET:-1}" = 1 ] && command -v mosquitto >/dev/null; then
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mport" >"$work/mosq.conf"
  mosquitto -c "$work/mosq.conf" >"$work/mosq.log" 2>&1 &
  mpid=$!
  "$bin" ota keygen -W -p "$work/fleet.pub" -s "$work/fleet.sec" -q >/dev/null 2>&1
  sleep 0.3
  "$bin" serve -m "$model" --socket "$work/f.sock" --state-dir "$work/fstate" \
    --policy "$here/lua/default.lua" --broker "mqtt://127.0.0.1:$mport" --device-id bench \
    --fleet-key "$work/fleet.pub" >"$work/flog" 2>&1 &
  fpid=$!
  for _ in $(seq 1 100); do
    grep -q "ready" "$work/flog" && break
    sleep 0.1
  done
  grep -q "ready" "$work/flog" && fleet_sock=$work/f.sock || { echo "fleet agent did not start:" >&2; cat "$work/flog" >&2; }
fi

# Prefill time of `outpost run` per prompt, in ms, one line per prompt.
words=(Once Lily Tom The One Sue Max A Ben Mia Sam Anna Tim Kate Bob Zoe Jack Amy Dan Eve
       Leo Ivy Ned Pam Rex Sky Ted Uma Vic Wes)
R=${R:-30}
: >"$work/run_ms"
for i in $(seq 0 $((R - 1))); do
  p="${words[$((i % ${#words[@]}))]} went to the park with a big red ball and a little dog"
  "$bin" run -m "$model" -p "$p" -n 1 --temp 0 2>&1 >/dev/null |
    sed -n 's/.*prompt \([0-9]*\) tokens, \([0-9.]*\) tok\/s.*/\1 \2/p' |
    awk '{ printf "%.6f\n", $1 / $2 * 1000 }' >>"$work/run_ms"
done

ntok=$("$bin" tokenize -m "$model" --bos <<<"Once went to the park with a big red ball and a little dog" | wc -w)
bench_ms=$("$bin" bench -m "$model" -p "$ntok" -n 1 -r 5 --json 2>/dev/null | tail -1 |
  python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["pp_tokens"] / d["pp_tok_s"] * 1000)')

python3 - "$work/s.sock" "$pid" "${N:-10000}" "${IDLE:-1000}" "${C:-1000}" "$R" "$work/run_ms" "$bench_ms" \
  "$model" "$kv_max_kb" "$route" "$fleet_sock" "${fpid:-0}" <<'PY'
import json, os, re, socket, statistics, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
n, idle, conc, r = (int(x) for x in sys.argv[3:7])
run_file, bench_ms = sys.argv[7], float(sys.argv[8])
model, kv_max_kb = os.path.realpath(sys.argv[9]), int(sys.argv[10])
route_med, route_p99 = (float(x) for x in sys.argv[11].split())
fleet_sock, fleet_pid = sys.argv[12], int(sys.argv[13])

def rss_split(pid):
    """kB from smaps: total, anonymous, file-backed less the model, the
    model file's, and the agent's own = total - model."""
    tot = anon = file_other = model_kb = 0
    name = None
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            f = line.split()
            name = f[5] if len(f) > 5 else ""
        elif line.startswith("Rss:"):
            v = int(line.split()[1])
            tot += v
            if name == model:
                model_kb += v
            elif name.startswith("/"):
                file_other += v
            else:
                anon += v
    return {"total": tot, "anon": anon, "file": file_other, "model": model_kb,
            "agent": tot - model_kb}

def rss_kb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s

def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, v = line.split(b":", 1)
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += s.recv(65536)
    return head.split(b" ")[1], rest[:length]

health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

def echo_floor(n):
    import os
    a, b = socket.socketpair()
    if os.fork() == 0:
        a.close()
        while True:
            d = b.recv(4096)
            if not d:
                os._exit(0)
            b.sendall(b"x" * 160)
    b.close()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        a.sendall(health)
        a.recv(4096)
        lat.append((time.perf_counter() - t) * 1e6)
    a.close()
    os.wait()
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]

floor50, floor99 = echo_floor(n)

# The agent's own memory first, idle (one warm connection), before the
# held connections add their buffers.
s = connect()
for _ in range(1000):
    s.sendall(health)
    read_response(s)
split = rss_split(pid)
fsplit = None
if fleet_sock:
    fs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fs.connect(fleet_sock)
    for _ in range(1000):
        fs.sendall(health)
        read_response(fs)
    fs.close()
    fsplit = rss_split(fleet_pid)
held = [connect() for _ in range(idle)]
for _ in range(1000):
    s.sendall(health)
    read_response(s)
rss0 = rss_kb()
lat = []
for _ in range(n):
    t = time.perf_counter()
    s.sendall(health)
    code, _ = read_response(s)
    lat.append((time.perf_counter() - t) * 1e6)
    assert code == b"200", code
rss1 = rss_kb()
for h in held:
    h.close()
s.close()
lat.sort()
p50, p99, mx = lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1], lat[-1]

socks = [connect() for _ in range(conc)]
for c in socks:
    c.sendall(health)
ok = 0
for c in socks:
    code, _ = read_response(c)
    ok += code == b"200"
    c.close()

def post(s, path, obj):
    body = json.dumps(obj).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))

words = ["Once", "Lily", "Tom", "The", "One", "Sue", "Max", "A", "Ben", "Mia", "Sam", "Anna", "Tim", "Kate", "Bob",
         "Zoe", "Jack", "Amy", "Dan", "Eve", "Leo", "Ivy", "Ned", "Pam", "Rex", "Sky", "Ted", "Uma", "Vic", "Wes"]
server_ms, client_ms, cached = [], [], []
for i in range(r):
    p = f"{words[i % len(words)]} went to the park with a big red ball and a little dog"
    s = connect()
    post(s, "/v1/completions", {"prompt": p, "max_tokens": 1, "temperature": 0})
    d = json.loads(read_response(s)[1])
    server_ms.append(d["outpost"]["ttft_ms"])
    cached.append(d["outpost"]["cached_tokens"])
    # The same prompt again after another one, streamed: time to the first token's event.
    q = f"{words[(i + 1) % len(words)]} {p}"
    t = time.perf_counter()
    post(s, "/v1/completions", {"prompt": q, "max_tokens": 1, "temperature": 0, "stream": True})
    buf = b""
    while b'"text":"' not in buf.split(b"\r\n\r\n", 1)[-1] or b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    client_ms.append((time.perf_counter() - t) * 1e3)
    s.close()
run_ms = [float(x) for x in open(run_file).read().split()]
a, c, b = statistics.median(server_ms), statistics.median(client_ms), statistics.median(run_ms)

fl = fsplit["agent"] if fsplit else None
print(f"{'figure (P3 acceptance)':<44} {'value':>14}  aim")
print(f"{'agent TTFT - outpost run prefill, median':<44} {a - b:11.3f} ms  < 1 ms")
print(f"{'/health p99 over the socket, %d requests' % n:<44} {p99:11.1f} us  < 1000 us, RSS {rss0} -> {rss1} kB")
print(f"{'route() median, default policy':<44} {route_med:11.2f} us  < 20 us")
print(f"{'agent RSS without weights (and KV)':<44} {split['agent']:11d} kB  < 10240 kB "
      f"(anon {split['anon']}, file {split['file']}; model {split['model']}; KV <= {kv_max_kb} of it)")
if fsplit:
    print(f"{'  the same, fleet joined (MQTT, OpenSSL)':<44} {fl:11d} kB  "
          f"(anon {fsplit['anon']}, file {fsplit['file']}; model {fsplit['model']})")
print()
print(f"{'echo_p50_us':>11} {'echo_p99_us':>11} {'health_p50_us':>13} {'health_p99_us':>13} {'health_max_us':>13} {'rss_kb':>13} {'conc_ok':>9} "
      f"{'ttft_srv_ms':>11} {'ttft_cli_ms':>11} {'run_ms':>8} {'bench_ms':>8} {'srv-run_ms':>10} {'cli-bench_ms':>12}")
print(f"{floor50:11.1f} {floor99:11.1f} {p50:13.1f} {p99:13.1f} {mx:13.1f} {f'{rss0}->{rss1}':>13} {f'{ok}/{conc}':>9} "
      f"{a:11.3f} {c:11.3f} {b:8.3f} {bench_ms:8.3f} {a - b:10.3f} {c - bench_ms:12.3f}")
print(json.dumps({"ttft_server_minus_run_ms": round(a - b, 3), "health_p99_us": round(p99, 1),
                  "rss_before_kb": rss0, "rss_after_kb": rss1, "route_median_us": route_med,
                  "route_p99_us": route_p99, "agent_rss_excl_model_kb": split["agent"],
                  "agent_rss_anon_kb": split["anon"], "agent_rss_file_excl_model_kb": split["file"],
                  "model_rss_kb": split["model"], "kv_resident_max_kb": kv_max_kb,
                  "agent_rss_excl_model_fleet_kb": fl,
                  "health_requests": n, "idle_connections": idle, "echo_p50_us": round(floor50, 1),
                  "echo_p99_us": round(floor99, 1), "health_p50_us": round(p50, 1),
                  "health_max_us": round(mx, 1), "concurrent": conc, "concurrent_ok": ok,
                  "ttft_server_median_ms": round(a, 3), "ttft_client_median_ms": round(c, 3),
                  "run_prefill_median_ms": round(b, 3), "bench_prefill_ms": round(bench_ms, 3),
                  "ttft_client_minus_bench_ms": round(c - bench_ms, 3),
                  "agent_cached_tokens_max": max(cached)}))
PY
kill -TERM $pid
wait $pid
pid=""
if [ -n "$fpid" ]; then kill -TERM "$fpid"; wait "$fpid"; fpid=""; fi
if [ -n "$mpid" ]; then kill -TERM "$mpid"; wait "$mpid" 2>/dev/null; mpid=""; fi
