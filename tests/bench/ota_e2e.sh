#!/usr/bin/env bash
# The OTA end-to-end acceptance at a real model's size: runs
# tests/integration/test_ota_e2e.sh (the same script the CI runs on
# stories260K) with OTA_E2E_SHAPE=tinyllama-1.1b - two random-weight Q4_0
# models of TinyLlama-1.1B's shape differing in 10% of their tensors, a
# real mosquitto, `outpost fleet publish` to a real `outpost serve` - and
# turns its "# metric" lines into a table and one JSON line:
#   delta      size, diff time, chunks and the time to send them, the
#              device's stage (patch + verify + fsync) and health-check
#              times, publish wall time, time from the offer to the new
#              model serving (publish wall minus the delta's diff: the reply
#              comes after the swap), the agent's peak RssAnon during it
#              (mapped model files do not count), which model served after
#   failures   corrupted chunk, wrong base, bad signature, failing health
#              check, older version: the device's reply and which model
#              served after it (asserted by the test: v2)
#   whole      the whole-file update (550 MB in chunks) with requests
#              served meanwhile
# The test's own ok/FAIL lines are kept in the log; this script exits 1
# when the test failed. Times are one run on a shared machine (noisy).
#
#   tests/bench/ota_e2e.sh [BUILD_DIR]      (default: build)
#
# Environment: SHAPE (tinyllama-1.1b), OTA_E2E_MODELS (where the models are
# kept and reused; default /work/bench-models/ota-e2e-SHAPE, about 2.2 GB),
# OTA_E2E_CHUNK (chunk size, 1 MiB), LOG (the test's output; default a
# temporary file, removed).
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
shape=${SHAPE:-tinyllama-1.1b}
log=${LOG:-$(mktemp)}
[ -n "${LOG:-}" ] || trap 'rm -f "$log"' EXIT
[ -x "$build/agent/outpost" ] && [ -x "$build/tests/gguf_perturb" ] ||
  { echo "$build: outpost or tests/gguf_perturb not built" >&2; exit 1; }

t0=$SECONDS
OTA_E2E_SHAPE=$shape OUTPOST_BIN=$build/agent/outpost OUTPOST_BUILD=$build \
  OUTPOST_SHARED=${OUTPOST_SHARED:-$here/../shared} \
  bash "$here/tests/integration/test_ota_e2e.sh" >"$log" 2>&1
rc=$?
echo "test_ota_e2e.sh at $shape: exit $rc in $((SECONDS - t0)) s; $(tail -n 3 "$log" | grep -E 'passed' || echo 'no summary line')"
grep '^FAIL' "$log"

python3 - "$log" "$shape" <<'PY'
import json, sys
m = {}
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("# metric "):
        k, _, v = line[len("# metric "):].rstrip("\n").partition("=")
        m[k] = v

def num(k, scale=1.0, nd=1):
    try:
        v = round(float(m[k]) * scale, nd)
    except (KeyError, ValueError):
        return None
    return int(v) if nd == 0 else v

MiB = 1 / 1048576
rows = [
    ("model file", num("model_bytes", MiB), "MiB"),
    ("delta size", num("delta_delta_bytes", MiB, 2), "MiB"),
    ("delta share of the model", round(100 * float(m["delta_delta_bytes"]) / float(m["model_bytes"]), 2)
     if "delta_delta_bytes" in m and "model_bytes" in m else None, "%"),
    ("delta diff (publisher)", num("delta_diff_s"), "s"),
    ("chunks (size %s)" % m.get("chunk_bytes", "?"), num("delta_chunks", 1, 0), ""),
    ("publish: chunks sent", num("delta_send_s"), "s"),
    ("apply: stage (patch, verify, fsync)", num("delta_stage_ms", 1e-3, 2), "s"),
    ("apply: health check (load, warm-up, probe)", num("delta_check_ms", 1e-3, 2), "s"),
    ("publish wall (diff + offer + chunks + apply + reply)", num("delta_s"), "s"),
    ("offer -> new model serving", round(float(m["delta_s"]) - float(m.get("delta_diff_s", 0)), 1)
     if "delta_s" in m else None, "s"),
    ("agent RssAnon idle", num("idle_anon_kib", 1 / 1024), "MiB"),
    ("agent peak RssAnon during the delta update", num("delta_peak_anon_kib", 1 / 1024), "MiB"),
    ("served after the delta", m.get("delta_serving"), ""),
    ("whole file: publish wall", num("whole_s"), "s"),
    ("whole file: chunks / sent in", "%s / %s s" % (m.get("whole_chunks"), m.get("whole_send_s")), ""),
    ("whole file: stage / check", "%s / %s ms" % (m.get("whole_stage_ms"), m.get("whole_check_ms")), ""),
    ("whole file: peak RssAnon", num("whole_peak_anon_kib", 1 / 1024), "MiB"),
    ("whole file: requests during it, 200s", "%s, %s" % (m.get("whole_requests_during"),
                                                         m.get("whole_requests_200")), ""),
    ("served after the whole file", m.get("whole_serving"), ""),
]
print("%-52s %s" % ("OTA end to end, " + sys.argv[2], "value"))
for name, v, unit in rows:
    print("%-52s %s %s" % (name, "-" if v is None else v, unit))
print()
print("%-14s %-7s %-7s %-9s %s" % ("failure case", "wall s", "diff s", "peak MiB",
                                   "the device's reply (error); who serves after"))
fails = {}
for case in ("corrupted", "wrong_base", "bad_signature", "health", "old_version"):
    fails[case] = {"wall_s": num(case + "_s"), "diff_s": num(case + "_diff_s"),
                   "peak_anon_mib": num(case + "_peak_anon_kib", 1 / 1024),
                   "result": m.get("fail_" + case)}
    f = fails[case]
    print("%-14s %-7s %-7s %-9s %s" % (case, f["wall_s"], "-" if f["diff_s"] is None else f["diff_s"],
                                       f["peak_anon_mib"], f["result"]))
out = {"bench": "ota_e2e", "shape": sys.argv[2], "model_bytes": num("model_bytes", 1, 0),
       "delta_bytes": num("delta_delta_bytes", 1, 0), "chunks": num("delta_chunks", 1, 0),
       "chunk_bytes": num("chunk_bytes", 1, 0), "diff_s": num("delta_diff_s"),
       "send_s": num("delta_send_s"), "stage_ms": num("delta_stage_ms", 1, 0),
       "check_ms": num("delta_check_ms", 1, 0), "publish_wall_s": num("delta_s"),
       "offer_to_serving_s": round(float(m["delta_s"]) - float(m.get("delta_diff_s", 0)), 1)
       if "delta_s" in m else None,
       "idle_anon_mib": num("idle_anon_kib", 1 / 1024),
       "peak_anon_mib": num("delta_peak_anon_kib", 1 / 1024), "served_after": m.get("delta_serving"),
       "whole_wall_s": num("whole_s"), "whole_peak_anon_mib": num("whole_peak_anon_kib", 1 / 1024),
       "failures": fails}
print(json.dumps(out))
PY
exit $rc
