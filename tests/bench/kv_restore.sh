#!/usr/bin/env bash
# Saved session KV states: what resuming a session from its file costs
# against prefilling its conversation again, through `outpost serve`.
#
# For each model the same sequence runs against two agents, one with a disk
# budget (states are saved) and one with kv.disk_budget_mb=0 (never saved),
# R times with a fresh session each:
#   1. turn 1 of a new session with a long message (about TOKENS tokens),
#      then turn 2 with a short one, from the live cache (the floor);
#   2. a request without a session: it replaces the live cache, and with a
#      budget first saves the session's state (write, fsync, rename);
#   3. the file is dropped from the page cache (posix_fadvise DONTNEED on
#      that file alone), so the restore reads from the disk;
#   4. turn 3 of the session with a short message: restored from the file,
#      or prefilled from scratch without a budget.
# Figures are the agent's own outpost.ttft_ms (request body complete to the
# first sampled token), medians over R: step 4 with and without the file
# (restore vs re-prefill, and their ratio; minus turn 2, what the restore
# itself adds) and step 2 with minus without a budget (the save the
# switching request pays for). Prints a table and one
# JSON line per model; asserts nothing about time.
#
#   tests/bench/kv_restore.sh [BUILD_DIR]      (default: build)
#
# Environment: R (5), TOKENS (1000 for stories260K), SYNTH=1 also runs a
# random-weight smol-135m-shaped model (Q8_0 weights, F16 KV; written to a
# temporary file with `outpost model synth`) with SYNTH_TOKENS (500).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$build/agent/outpost
stories=$here/../shared/models/stories260K.gguf
work=$(mktemp -d)
trap 'for p in $(jobs -p); do kill -KILL $p 2>/dev/null; done; rm -rf "$work"' EXIT

models=("$stories:${TOKENS:-1000}")
if [ "${SYNTH:-0}" = 1 ]; then
  "$bin" model synth --shape smol-135m --type q8_0 --vocab "$stories" -o "$work/smol-135m-q8_0.gguf" >/dev/null
  models+=("$work/smol-135m-q8_0.gguf:${SYNTH_TOKENS:-500}")
fi

for entry in "${models[@]}"; do
  python3 - "$bin" "${entry%:*}" "${entry##*:}" "${R:-5}" "$work" "$here/lua/default.lua" <<'PY'
import http.client, json, os, socket, statistics, subprocess, sys, time

bin_, model, tokens, reps, work, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=600)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

def post(sock, body):
    c = UnixConn(sock)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    d = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise SystemExit(f"request failed: {r.status} {d}")
    return d

def chat(sock, session, text):
    return post(sock, {"messages": [{"role": "user", "content": text}], "max_tokens": 1,
                       "temperature": 0, "outpost": {"session": session, "privacy": "private"}})

def plain(sock, text):
    return post(sock, {"messages": [{"role": "user", "content": text}], "max_tokens": 1,
                       "temperature": 0, "outpost": {"privacy": "private"}})

def tok_count(text):
    out = subprocess.run([bin_, "tokenize", "-m", model, "--bos"], input=text.encode(),
                         capture_output=True, check=True).stdout.split()
    return len(out)

# A message of about `tokens` tokens.
sentence = "The little dog ran to the big tree and played with a red ball all day long. "
per = tok_count(sentence * 10) / 10
long_text = sentence * max(1, int(tokens / per))

def run(budget_mb):
    state = os.path.join(work, f"state-{budget_mb}")
    sock = os.path.join(work, f"s-{budget_mb}.sock")
    log = open(os.path.join(work, f"log-{budget_mb}"), "w")
    p = subprocess.Popen([bin_, "serve", "-m", model, "--socket", sock, "--state-dir", state,
                          "--policy", policy, "--set", f"kv.disk_budget_mb={budget_mb}"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                c = UnixConn(sock); c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        plain(sock, "Hello there")  # warm
        res = {"turn1": [], "live": [], "switch": [], "resume": [], "cached": [], "prompt": [],
               "file": []}
        for r in range(reps):
            d = chat(sock, "new", f"Story number {r}. " + long_text)
            sid = d["outpost"]["session"]
            res["turn1"].append(d["outpost"]["ttft_ms"])
            res["live"].append(chat(sock, sid, "Where did the dog go?")["outpost"]["ttft_ms"])
            res["switch"].append(plain(sock, f"Hello number {r}")["outpost"]["ttft_ms"])
            path = os.path.join(state, "kv", sid + ".kv")
            if os.path.exists(path):
                res["file"].append(os.path.getsize(path))
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            d = chat(sock, sid, "What did the dog do next?")
            res["resume"].append(d["outpost"]["ttft_ms"])
            res["cached"].append(d["outpost"]["cached_tokens"])
            res["prompt"].append(d["usage"]["prompt_tokens"])
        return res
    finally:
        p.terminate()
        p.wait(timeout=60)
        log.close()

saved, none = run(1024), run(0)
med = statistics.median
name = os.path.basename(model)[:-5]
restore_ms, reprefill_ms = med(saved["resume"]), med(none["resume"])
save_ms = med(saved["switch"]) - med(none["switch"])
file_bytes = int(med(saved["file"])) if saved["file"] else 0
row = {
    "model": name, "reps": reps, "prompt_tokens": int(med(saved["prompt"])),
    "restored_tokens": int(med(saved["cached"])), "reprefill_cached_tokens": int(med(none["cached"])),
    "file_bytes": file_bytes, "turn1_prefill_ms": round(med(saved["turn1"]), 3),
    "resume_restored_ttft_ms": round(restore_ms, 3), "resume_reprefill_ttft_ms": round(reprefill_ms, 3),
    "reprefill_over_restore": round(reprefill_ms / restore_ms, 2) if restore_ms > 0 else None,
    "resume_live_ttft_ms": round(med(saved["live"]), 3),
    "restore_added_ms": round(restore_ms - med(saved["live"]), 3),
    "save_ms": round(save_ms, 3),
}
print(f"\n{name}: {row['prompt_tokens']} prompt tokens at turn 3, {row['restored_tokens']} restored "
      f"from a {file_bytes / 1048576:.2f} MiB file (medians of {reps})")
print(f"  {'turn 3 TTFT, restored from disk (cold page cache)':<52} {restore_ms:10.2f} ms")
print(f"  {'turn 3 TTFT, prefilled again (no saved state)':<52} {reprefill_ms:10.2f} ms")
print(f"  {'re-prefill / restore':<52} {row['reprefill_over_restore']:10}x")
print(f"  {'turn 2 TTFT, live cache (floor)':<52} {row['resume_live_ttft_ms']:10.2f} ms")
print(f"  {'restore added (turn 3 restored - turn 2 live)':<52} {row['restore_added_ms']:10.2f} ms")
print(f"  {'save on switch (switch TTFT with - without budget)':<52} {save_ms:10.2f} ms")
print(f"  {'turn 1 TTFT (full prefill of the long message)':<52} {row['turn1_prefill_ms']:10.2f} ms")
print(json.dumps(row))
PY
done
