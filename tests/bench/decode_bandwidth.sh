#!/usr/bin/env bash
# Decode speed as a share of the measured memory read bandwidth, and prefill
# speed as a multiple of decode speed, on TinyLlama-1.1B-shaped random-weight
# models (speed does not depend on the weights' values). Every figure is a
# median over REPS repetitions of one `outpost bench` run, which measures the
# read bandwidth in the same run, in turns with the decode steps (membw_GB/s;
# peak_GB/s is its fastest single pass). The 1-minute load average before
# each run is printed beside it: on a shared machine it says how much of the
# two cores the run could have had. Prints a table and one JSON line per
# type; asserts nothing about time.
#
#   tests/bench/decode_bandwidth.sh [BUILD_DIR] [TYPES...]   (default: build q4_0 q8_0 q4_k_m)
#
# Environment: THREADS (2), PP (128), TG (64), REPS (3), SHAPE (tinyllama-1.1b),
# CTK (f16; or q8_0), WORK (a temporary directory; the models are ~0.6-1.2 GB
# each, kept when WORK is given). OUTPOST_NO_REPACK=1 runs Q4_0, Q8_0, Q4_K
# and Q6_K matrices as stored instead of repacked (AVX-512 CPUs; see README).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
shift || true
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(q4_0 q8_0 q4_k_m)
bin=$build/agent/outpost
shared=${OUTPOST_SHARED:-$here/../shared}
threads=${THREADS:-2} pp=${PP:-128} tg=${TG:-64} reps=${REPS:-3} shape=${SHAPE:-tinyllama-1.1b}
ctk=${CTK:-f16}
work=${WORK:-$(mktemp -d)}
cleanup() { [ -n "${WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

printf '%-8s %10s %10s %7s %10s %10s %8s %10s %10s %8s %6s\n' type pp_tok_s tg_tok_s pp/tg eff_GB/s membw_GB/s share peak_GB/s rss_MiB kv_B/tok load
for t in "${types[@]}"; do
  m=$work/$shape-$t.gguf
  [ -f "$m" ] || "$bin" model synth --shape "$shape" --type "$t" \
    --vocab "$shared/tokenizer/ggml-vocab-llama-spm.gguf" -o "$m" >/dev/null
  load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
  j=$("$bin" bench -m "$m" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --ctk "$ctk" --json)
  python3 - "$t" "$j" "$load" <<'PY'
import json, sys
t, j, load = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ratio = j['pp_tok_s'] / j['tg_tok_s'] if j['tg_tok_s'] else 0
print(f"{t:<8} {j['pp_tok_s']:10.2f} {j['tg_tok_s']:10.2f} {ratio:6.2f}x {j['eff_gbs']:10.2f} "
      f"{j['membw_gbs']:10.2f} {100*j['membw_share']:7.1f}% {j['membw_peak_gbs']:10.2f} "
      f"{j['peak_rss_mb']:10.1f} {j['kv_bytes_per_token']:8d} {load:>6}")
PY
  echo "$j"
done
