#!/usr/bin/env bash
# The accuracy-retention table: a model quantized to each type, its file
# size, bits per weight and perplexity beside the F32 original's. Prints a
# table and one JSON line per type; asserts nothing.
#
#   tests/bench/quant_table.sh [BUILD_DIR] [TYPES...]
#       (default types: f16 q8_0 q6_k q5_k_m q5_0 q5_1 q4_k_m q4_0 q4_1 q3_k_m q2_k)
#
# Environment: MODEL (the F32 reference; default shared/models/stories260K.gguf),
# TEXT (shared/eval/tinytales.txt), CTX (128), THREADS (2), WORK (a temporary
# directory).
#
# stories260K's rows are 64 and 172 elements long, whole blocks of neither
# the K-quants' 256 nor (for 172) the legacy types' 32, so most of its
# tensors fall back there as llama.cpp's quantizer does (q4_k -> q5_0 ...,
# f16 for rows of 172): the "fallback" column counts the matrices that did
# and says what they became, and "tensor types" gives the resulting mix. No
# real model with 256-aligned rows ships with the repository (synthetic
# models have random weights, whose perplexity means nothing), so on
# stories260K a K type's row measures its recipe and fallbacks, not its
# K blocks; test_quant_k's RMS errors compare the block formats themselves.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
shift || true
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(f16 q8_0 q6_k q5_k_m q5_0 q5_1 q4_k_m q4_0 q4_1 q3_k_m q2_k)
bin=$build/agent/outpost
shared=${OUTPOST_SHARED:-$here/../shared}
model=${MODEL:-$shared/models/stories260K.gguf}
text=${TEXT:-$shared/eval/tinytales.txt}
ctx=${CTX:-128} threads=${THREADS:-2}
work=${WORK:-$(mktemp -d)}
cleanup() { [ -n "${WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

ppl() { "$bin" perplexity -m "$1" -f "$text" -c "$ctx" -t "$threads" 2>/dev/null | sed -n 's/^PPL = //p'; }

ref_ppl=$(ppl "$model")
printf '%-8s %9s %6s %8s %9s  %-30s %s\n' type size_KiB bpw PPL dPPL fallback "tensor types"
for t in f32 "${types[@]}"; do
  m=$model notes=/dev/null matrices=0
  if [ "$t" != f32 ]; then
    m=$work/$t.gguf notes=$work/$t.notes
    "$bin" quantize -t "$threads" "$model" "$m" "$t" >"$work/$t.log" 2>"$notes"
    matrices=$(grep -cE '\] +[^ ]+ +\[[0-9]+, [0-9]+\]' "$work/$t.log" || true)
  fi
  "$bin" model info "$m" >"$work/$t.info"
  p=$(ppl "$m")
  python3 - "$t" "$m" "$p" "$ref_ppl" "$work/$t.info" "$notes" "$matrices" "$model" "$ctx" <<'PY'
import json, os, re, sys
t, path, p, ref, info, notes, matrices, ref_model, ctx = sys.argv[1:10]
p, ref, matrices = float(p), float(ref), int(matrices)
bpw, mix = None, {}
for line in open(info):
    m = re.match(r"^  bits per weight +([0-9.]+)$", line)
    if m:
        bpw = float(m.group(1))
    m = re.match(r"^  ([a-z0-9_]+) +([0-9]+) tensors,", line)
    if m:
        mix[m.group(1)] = int(m.group(2))
fell = {}
for line in open(notes):
    m = re.search(r"kept as ([a-z0-9_]+)$", line.strip())
    if m:
        fell[m.group(1)] = fell.get(m.group(1), 0) + 1
n_fell = sum(fell.values())
fb = "-" if not n_fell else f"{n_fell}/{matrices}: " + " ".join(
    f"{k}x{v}" for k, v in sorted(fell.items(), key=lambda kv: -kv[1]))
size = os.path.getsize(path)
print(f"{t:<8} {size/1024:9.1f} {bpw:6.2f} {p:8.4f} {100*(p/ref-1):+8.2f}%  {fb:<30} "
      + " ".join(f"{k}:{v}" for k, v in sorted(mix.items(), key=lambda kv: -kv[1])))
print(json.dumps({"bench": "quant_table", "model": os.path.basename(ref_model), "ctx": int(ctx),
                  "type": t, "file_bytes": size, "bits_per_weight": bpw, "ppl": p, "ppl_f32": ref,
                  "ppl_change_pct": round(100 * (p / ref - 1), 4), "matrices": matrices,
                  "fallback": fell, "tensor_types": mix}))
PY
done
