#!/usr/bin/env bash
# Prefill and decode speed over a long context: `outpost run` of a prompt
# that fills most of a TinyLlama-1.1B-shaped model's 2048 positions, greedy,
# generating until the context is full. `outpost bench` decodes from an
# empty cache (as llama-bench does), so attention over a long cache shows
# here and not there. Several build directories run in turns, REPS rounds,
# for an A/B in one sitting; figures are medians per build. Prints a table
# and one JSON line per build; asserts nothing about time.
#
#   tests/bench/long_context.sh [BUILD_DIR...]   (default: build)
#
# Environment: TYPE (q4_0), THREADS (2), REPS (3), REPEATS (180: copies of a
# nine-word sentence, ~1,980 tokens), SHAPE (tinyllama-1.1b), WORK (a
# temporary directory; the model, ~0.6 GB, is kept when WORK is given).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
builds=("$@")
[ ${#builds[@]} -gt 0 ] || builds=("$here/build")
shared=${OUTPOST_SHARED:-$here/../shared}
type=${TYPE:-q4_0} threads=${THREADS:-2} reps=${REPS:-3} repeats=${REPEATS:-180}
shape=${SHAPE:-tinyllama-1.1b}
work=${WORK:-$(mktemp -d)}
cleanup() { [ -n "${WORK:-}" ] || rm -rf "$work"; rm -f "$prompt" "$log"; }
prompt=$(mktemp) log=$(mktemp)
trap cleanup EXIT

model=$work/$shape-$type.gguf
[ -f "$model" ] || "${builds[0]}/agent/outpost" model synth --shape "$shape" --type "$type" \
  --vocab "$shared/tokenizer/ggml-vocab-llama-spm.gguf" -o "$model" >/dev/null
python3 -c "import sys; print(' '.join(['the quick brown fox jumps over the lazy dog'] * int(sys.argv[1])))" \
  "$repeats" >"$prompt"

for ((r = 0; r < reps; r++)); do
  for b in "${builds[@]}"; do
    # stderr's last line: "... | prompt N tokens, X tok/s | generated M tokens, Y tok/s"
    line=$("$b/agent/outpost" run -m "$model" -f "$prompt" -n -1 --temp 0 --ignore-eos -t "$threads" \
      2>&1 >/dev/null | tail -n 1)
    echo "$b|$line" >>"$log"
  done
done

python3 - "$log" "$type" <<'PY'
import json, re, statistics, sys
runs = {}
for row in open(sys.argv[1]):
    b, line = row.rstrip('\n').split('|', 1)
    m = re.search(r'prompt (\d+) tokens, ([\d.]+) tok/s \| generated (\d+) tokens, ([\d.]+) tok/s', line)
    if not m:
        sys.exit(f"long_context.sh: no timings in the output of {b}: {line}")
    runs.setdefault(b, []).append([float(g) for g in m.groups()])
print(f"{'build':<40} {'prompt':>7} {'pp_tok_s':>9} {'generated':>9} {'tg_tok_s':>9}")
for b, rs in runs.items():
    pp = statistics.median(r[1] for r in rs)
    tg = statistics.median(r[3] for r in rs)
    print(f"{b[-40:]:<40} {int(rs[0][0]):>7} {pp:9.2f} {int(rs[0][2]):>9} {tg:9.2f}")
for b, rs in runs.items():
    print(json.dumps({"build": b, "type": sys.argv[2], "prompt_tokens": int(rs[0][0]),
                      "pp_tok_s": statistics.median(r[1] for r in rs),
                      "generated": int(rs[0][2]), "tg_tok_s": statistics.median(r[3] for r in rs),
                      "runs": len(rs)}))
PY
