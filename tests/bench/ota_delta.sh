#!/usr/bin/env bash
# OTA model deltas: `outpost ota diff|patch` against `xdelta3 -e -s` / `-d -s`
# and `zstd --patch-from=BASE --long=31` / `zstd -d --patch-from=BASE
# --long=31`, on the same files in the same run, for two TinyLlama-1.1B-shaped
# pairs:
#   a  two Q4_0 models differing in 10% of their 2-D tensors: the base is
#      `outpost model synth --type q4_0 --seed 1`; the target is a copy in
#      which tests/bench/gguf_perturb.c (--replace 0.1 --seed 7) draws about
#      a tenth of the matrices afresh (same mean and standard deviation);
#   b  a full fine-tune: an F16 model (synth, seed 1) and a copy in which every
#      weight moves by Gaussian noise of 5% of its tensor's standard deviation
#      (gguf_perturb --noise 0.05 --seed 11), both quantized to Q4_0 with
#      `outpost quantize` (output.weight becomes Q8_0, norms stay F32).
# For each tool: delta size (and its share of the target), diff and apply
# time, wall and CPU (user + system, from /usr/bin/time; CPU is the steadier
# figure on a shared machine), and the apply's peak anonymous memory,
# measured in a second apply run: RssAnon sampled from /proc/PID/status
# every 5 ms by bash builtins (VmHWM would count the mapped model files,
# which are page cache, not anonymous memory; a spike shorter than the
# interval can be missed). Every apply's output is compared with the target
# (cmp). Page cache warm: both files of a pair are read once beforehand.
# Asserts nothing about time.
#
#   tests/bench/ota_delta.sh [BUILD_DIR]      (default: build)
#
# Environment: WORK (/work/bench-models: models are kept there and reused;
# file names start with "delta-"), PAIRS ("a b"), LEVEL (outpost's zstd
# level, default: outpost's).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
bin=$build/agent/outpost
perturb=$build/tests/gguf_perturb
work=${WORK:-/work/bench-models}
pairs=${PAIRS:-a b}
vocab=${OUTPOST_SHARED:-$here/../shared}/models/stories260K.gguf
for t in xdelta3 zstd; do command -v $t >/dev/null || { echo "$t is not installed" >&2; exit 1; }; done
[ -x "$bin" ] && [ -x "$perturb" ] || { echo "$bin or $perturb: not built" >&2; exit 1; }
mkdir -p "$work"
tmp=$(mktemp -d "$work/delta-run.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

make_model() { # FILE COMMAND...: run COMMAND unless FILE exists
  local f=$1; shift
  [ -s "$f" ] && return 0
  echo "making $f" >&2
  "$@" >/dev/null
}
make_model "$work/delta-a-base.gguf" "$bin" model synth --shape tinyllama-1.1b --type q4_0 \
  --vocab "$vocab" --seed 1 -o "$work/delta-a-base.gguf"
make_model "$work/delta-a-target.gguf" "$perturb" "$work/delta-a-base.gguf" \
  "$work/delta-a-target.gguf" --replace 0.1 --seed 7
if [[ " $pairs " == *" b "* ]]; then
  make_model "$work/delta-f16-base.gguf" "$bin" model synth --shape tinyllama-1.1b --type f16 \
    --vocab "$vocab" --seed 1 -o "$work/delta-f16-base.gguf"
  make_model "$work/delta-f16-tuned.gguf" "$perturb" "$work/delta-f16-base.gguf" \
    "$work/delta-f16-tuned.gguf" --noise 0.05 --seed 11
  make_model "$work/delta-b-base.gguf" "$bin" quantize "$work/delta-f16-base.gguf" \
    "$work/delta-b-base.gguf" q4_0
  make_model "$work/delta-b-target.gguf" "$bin" quantize "$work/delta-f16-tuned.gguf" \
    "$work/delta-b-target.gguf" q4_0
fi

# timed OUTWALL OUTCPU COMMAND...: wall seconds and CPU seconds (user +
# system, the steadier figure on a shared machine) of one run.
timed() {
  local __w=$1 __c=$2; shift 2
  /usr/bin/time -f '%e %U %S' -o "$tmp/time.out" "$@" >"$tmp/last.out"
  read -r w u s <"$tmp/time.out"
  printf -v "$__w" '%.2f' "$w"
  printf -v "$__c" '%.2f' "$(echo "$u + $s" | bc)"
}
# peak_anon OUTKIB COMMAND...: peak RssAnon (KiB) of one more run, sampled
# every 5 ms without forking (bash builtins only, so the sampler takes
# little CPU from the command it watches).
peak_anon() {
  local __k=$1; shift
  local peak=0 k v _ fd
  exec {fd}<> <(:)
  "$@" >/dev/null &
  local pid=$!
  while [ -r /proc/$pid/status ]; do
    while read -r k v _; do
      [[ $k == RssAnon: ]] && { [ "$v" -gt "$peak" ] && peak=$v; break; }
    done </proc/$pid/status 2>/dev/null || true
    read -t 0.005 -u $fd || true
  done
  wait $pid
  exec {fd}>&-
  printf -v "$__k" '%d' "$peak"
}

level_flag=()
[ -n "${LEVEL:-}" ] && level_flag=(--level "$LEVEL")
rows=()
printf '%-4s %-8s %12s %7s %8s %8s %8s %8s %9s\n' pair tool delta_bytes "%tgt" diff_s diff_cpu apply_s apply_cpu anon_MiB
for p in $pairs; do
  base=$work/delta-$p-base.gguf target=$work/delta-$p-target.gguf
  cat "$base" "$target" >/dev/null
  tsize=$(stat -c %s "$target")
  for tool in outpost xdelta3 zstd; do
    d=$tmp/$p.$tool out=$tmp/$p.$tool.out
    case $tool in
    outpost)
      timed ds dc "$bin" ota diff "$base" "$target" -o "$d" "${level_flag[@]}"
      sed -n "s/^tensors/pair $p: outpost's tensor records:/p" "$tmp/last.out" >&2
      apply=("$bin" ota patch "$base" "$d" -o "$out") ;;
    xdelta3)
      timed ds dc xdelta3 -e -f -s "$base" "$target" "$d"
      apply=(xdelta3 -d -f -s "$base" "$d" "$out") ;;
    zstd)
      timed ds dc zstd -q -f --patch-from="$base" --long=31 "$target" -o "$d"
      apply=(zstd -q -f -d --patch-from="$base" --long=31 "$d" -o "$out") ;;
    esac
    timed as ac "${apply[@]}"
    cmp -s "$out" "$target" || { echo "$tool: pair $p: the applied file differs from the target" >&2; exit 1; }
    rm -f "$out"
    peak_anon ak "${apply[@]}"
    cmp -s "$out" "$target" || { echo "$tool: pair $p: the applied file differs from the target" >&2; exit 1; }
    rm -f "$out"
    dsize=$(stat -c %s "$d")
    pct=$(echo "scale=2; 100 * $dsize / $tsize" | bc)
    mibv=$(echo "scale=1; $ak / 1024" | bc)
    printf '%-4s %-8s %12d %7s %8s %8s %8s %8s %9s\n' "$p" "$tool" "$dsize" "$pct" "$ds" "$dc" "$as" "$ac" "$mibv"
    rows+=("{\"pair\":\"$p\",\"tool\":\"$tool\",\"target_bytes\":$tsize,\"delta_bytes\":$dsize,\"delta_pct\":$pct,\"diff_s\":$ds,\"diff_cpu_s\":$dc,\"apply_s\":$as,\"apply_cpu_s\":$ac,\"apply_peak_anon_kib\":$ak}")
    rm -f "$d"
  done
done
json=$(IFS=,; echo "${rows[*]}")
echo "{\"bench\":\"ota_delta\",\"rows\":[$json]}"
