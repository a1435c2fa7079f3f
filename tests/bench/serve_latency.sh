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
# Prints a table and one JSON line; asserts nothing about time.
#
#   tests/bench/serve_latency.sh [BUILD_DIR]      (default: build)
#
# Environment: N (10000), IDLE (1000), C (1000), R (30).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$build/agent/outpost
model=$here/../shared/models/stories260K.gguf
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -KILL $pid 2>/dev/null; rm -rf "$work"' EXIT

"$bin" serve -m "$model" --socket "$work/s.sock" --state-dir "$work/state" \
  --policy "$here/lua/default.lua" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q "ready" "$work/log" && break
  sleep 0.1
done

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

python3 - "$work/s.sock" "$pid" "${N:-10000}" "${IDLE:-1000}" "${C:-1000}" "$R" "$work/run_ms" "$bench_ms" <<'PY'
import json, socket, statistics, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
n, idle, conc, r = (int(x) for x in sys.argv[3:7])
run_file, bench_ms = sys.argv[7], float(sys.argv[8])

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

held = [connect() for _ in range(idle)]
s = connect()
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

print(f"{'echo_p50_us':>11} {'echo_p99_us':>11} {'health_p50_us':>13} {'health_p99_us':>13} {'health_max_us':>13} {'rss_kb':>13} {'conc_ok':>9} "
      f"{'ttft_srv_ms':>11} {'ttft_cli_ms':>11} {'run_ms':>8} {'bench_ms':>8} {'srv-run_ms':>10} {'cli-bench_ms':>12}")
print(f"{floor50:11.1f} {floor99:11.1f} {p50:13.1f} {p99:13.1f} {mx:13.1f} {f'{rss0}->{rss1}':>13} {f'{ok}/{conc}':>9} "
      f"{a:11.3f} {c:11.3f} {b:8.3f} {bench_ms:8.3f} {a - b:10.3f} {c - bench_ms:12.3f}")
print(json.dumps({"health_requests": n, "idle_connections": idle, "echo_p50_us": round(floor50, 1),
                  "echo_p99_us": round(floor99, 1), "health_p50_us": round(p50, 1),
                  "health_p99_us": round(p99, 1), "health_max_us": round(mx, 1), "rss_before_kb": rss0,
                  "rss_after_kb": rss1, "concurrent": conc, "concurrent_ok": ok,
                  "ttft_server_median_ms": round(a, 3), "ttft_client_median_ms": round(c, 3),
                  "run_prefill_median_ms": round(b, 3), "bench_prefill_ms": round(bench_ms, 3),
                  "ttft_server_minus_run_ms": round(a - b, 3),
                  "ttft_client_minus_bench_ms": round(c - bench_ms, 3),
                  "agent_cached_tokens_max": max(cached)}))
PY
kill -TERM $pid
wait $pid
pid=""
