#!/usr/bin/env bash
# What an agent adds when it relays a request to a remote Outpost, with
# stories260K on both sides and loopback between them: agent B serves on
# TCP with a key; agent A runs with `--cloud http://127.0.0.1:PORT/v1` (the
# backend-openai plugin) and is asked on its Unix socket with
# outpost.route = "cloud". The client measures the time to the first
# streamed token (first chunk with content) of the same request sent
#   direct: to B over TCP, and
#   via A:  to A over its socket, which relays it to B and the tokens back;
# alternating the two, N times each, after a warm-up (B's KV prefix cache
# holds the prompt for both, so prefill is the same tiny amount). Reported:
# medians and p90 of each, the overhead as the median of the paired
# differences (via A minus the direct one just before it), and A's own
# outpost.ttft_ms next to B's for the same requests. Prints a table and one
# JSON line; asserts nothing about time.
#
#   tests/bench/remote_overhead.sh [BUILD_DIR]      (default: build)
#
# Environment: N (200).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$build/agent/outpost
model=$here/../shared/models/stories260K.gguf
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OUTPOST_API_KEY=benchkey "$bin" serve -m "$model" --socket "$work/b.sock" --state-dir "$work/b" \
  --policy "$here/lua/default.lua" --lua-dir "$here/lua" --listen "127.0.0.1:$port" \
  >"$work/b.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "ready" "$work/b.log" && break; sleep 0.1; done
OUTPOST_CLOUD_KEY=benchkey "$bin" serve -m "$model" --socket "$work/a.sock" --state-dir "$work/a" \
  --policy "$here/lua/default.lua" --lua-dir "$here/lua" --cloud "http://127.0.0.1:$port/v1" \
  --plugin-dir "$build/plugins" >"$work/a.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "cloud: reachable" "$work/a.log" && break; sleep 0.1; done
grep -q "cloud: reachable" "$work/a.log" || { echo "A did not reach B:"; cat "$work/a.log"; exit 1; }

python3 - "$work/a.sock" "$port" "${N:-200}" <<'PY'
import http.client, json, socket, statistics, sys, time

a_sock, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

body = {"messages": [{"role": "user", "content": "Tell me a story about a cat"}],
        "max_tokens": 8, "temperature": 0, "stream": True}

def ttft(conn, headers, b):
    """Client time to the first chunk with text, and the outpost object."""
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(b), headers=headers)
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    first, outpost, buf = None, None, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            d = json.loads(ev[6:])
            ch = d.get("choices") or [{}]
            if first is None and ch[0].get("delta", {}).get("content"):
                first = time.perf_counter() - t0
            if "outpost" in d:
                outpost = d["outpost"]
    assert first is not None, "no text"
    return first * 1e3, outpost

direct = http.client.HTTPConnection("127.0.0.1", port)
via = UnixConn(a_sock)
hb = {"Content-Type": "application/json", "Authorization": "Bearer benchkey"}
ha = {"Content-Type": "application/json"}
ba = dict(body, outpost={"route": "cloud"})
for _ in range(10):  # warm-up: connections, B's KV cache, A's pooled connection
    ttft(direct, hb, body)
    ttft(via, ha, ba)

d_ms, v_ms, diff, a_srv, b_srv = [], [], [], [], []
for _ in range(n):
    t, o = ttft(direct, hb, body)
    d_ms.append(t); b_srv.append(o["ttft_ms"])
    u, o = ttft(via, ha, ba)
    assert o["route"] == "cloud", o
    v_ms.append(u); a_srv.append(o["ttft_ms"])
    diff.append(u - t)

def p(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]

med = statistics.median
print(f"remote relay overhead, stories260K on both agents, loopback, N={n} pairs")
print(f"{'':34}{'median ms':>11}{'p90 ms':>10}")
print(f"{'TTFT direct on B (client, TCP)':34}{med(d_ms):11.3f}{p(d_ms, .9):10.3f}")
print(f"{'TTFT via A -> B (client, socket)':34}{med(v_ms):11.3f}{p(v_ms, .9):10.3f}")
print(f"{'overhead (paired difference)':34}{med(diff):11.3f}{p(diff, .9):10.3f}")
print(f"{'B outpost.ttft_ms (direct)':34}{med(b_srv):11.3f}{p(b_srv, .9):10.3f}")
print(f"{'A outpost.ttft_ms (via A)':34}{med(a_srv):11.3f}{p(a_srv, .9):10.3f}")
print(json.dumps({"bench": "remote_overhead", "model": "stories260K", "n": n,
                  "ttft_direct_ms_median": round(med(d_ms), 3),
                  "ttft_via_a_ms_median": round(med(v_ms), 3),
                  "overhead_ms_median": round(med(diff), 3),
                  "overhead_ms_p90": round(p(diff, .9), 3),
                  "a_outpost_ttft_ms_median": round(med(a_srv), 3),
                  "b_outpost_ttft_ms_median": round(med(b_srv), 3)}))
PY
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
pids=()
