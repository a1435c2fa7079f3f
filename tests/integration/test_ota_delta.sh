#!/usr/bin/env bash
# outpost ota diff|patch|manifest from the command line: a fine-tuned
# stories15m-shaped Q4_0 model (both quantized from F16 with `outpost
# quantize`, the target with every weight moved a little by
# tests/bench/gguf_perturb) round-trips byte for byte, with qdiff records,
# and the delta is under half the target and under `zstd -19` of the target
# alone; a wrong base, a truncated and a corrupted delta each fail
# with exit 1, one line on stderr and no OUT or OUT.tmp left (an existing OUT
# untouched); usage errors exit 2; a signed manifest verifies with the real
# minisign when it is installed.
set -uo pipefail
bin=${OUTPOST_BIN:?}
perturb=${OUTPOST_BUILD:?}/tests/gguf_perturb
vocab=${OUTPOST_SHARED:?}/models/stories260K.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

# expect CODE WHAT NEEDLE cmd...: exit code CODE, and for a failure one line
# on stderr containing NEEDLE.
expect() {
  local code=$1 what=$2 needle=$3; shift 3
  "$@" >"$work/out" 2>"$work/err"
  local rc=$? lines; lines=$(wc -l <"$work/err")
  if [ "$rc" -ne "$code" ]; then bad "$what: exit $rc, wanted $code: $(cat "$work/err")"; return 1; fi
  if [ "$code" -ne 0 ] && { [ "$lines" -ne 1 ] || ! grep -qF -- "$needle" "$work/err"; }; then
    bad "$what: stderr ($lines lines) lacks '$needle': $(cat "$work/err")"; return 1
  fi
  if [ "$code" -ne 0 ]; then ok "$what ($(cat "$work/err"))"; else ok "$what"; fi
}
no_output() { # WHAT: neither out.gguf nor out.gguf.tmp exists
  if [ -e out.gguf ] || [ -e out.gguf.tmp ]; then bad "$1: output left behind"; else ok "$1: no output left"; fi
}

"$bin" model synth --shape stories15m --type f16 --vocab "$vocab" -o f16.gguf >/dev/null &&
  "$perturb" f16.gguf f16-tuned.gguf --noise 0.05 --seed 5 >/dev/null &&
  "$bin" quantize f16.gguf base.gguf q4_0 >/dev/null &&
  "$bin" quantize f16-tuned.gguf target.gguf q4_0 >/dev/null || { bad "making the models"; exit 1; }

expect 0 "diff" "" "$bin" ota diff base.gguf target.gguf -o d.delta
grep -q '^tensors .* [1-9][0-9]* qdiff' out && ok "diff uses qdiff on the fine-tune: $(grep ^tensors out)" ||
  bad "no qdiff records: $(cat out)"
expect 0 "patch" "" "$bin" ota patch base.gguf d.delta -o out.gguf
cmp -s out.gguf target.gguf && ok "patched file is byte-identical to the target" || bad "patched file differs"
rm -f out.gguf
tsize=$(stat -c %s target.gguf) dsize=$(stat -c %s d.delta)
zstd -q -19 -c target.gguf >t.zst 2>/dev/null && zsize=$(stat -c %s t.zst) || zsize=$tsize
[ $((dsize * 2)) -lt "$tsize" ] && [ "$dsize" -lt "$zsize" ] &&
  ok "delta $dsize bytes: under half the target ($tsize) and under zstd -19 alone ($zsize)" ||
  bad "delta $dsize bytes, target $tsize, zstd -19 $zsize"
expect 0 "diff --json" "" "$bin" ota diff base.gguf target.gguf -o d2.delta --json --level 3
grep -q '"delta_bytes":[0-9]*,' out && ok "diff --json prints the sizes" || bad "diff --json: $(cat out)"

# Refusals: wrong base, truncated, corrupted; OUT left as it was.
"$bin" model synth --shape stories15m --type q4_0 --vocab "$vocab" --seed 9 -o other.gguf >/dev/null
expect 1 "wrong base" "wrong base" "$bin" ota patch other.gguf d.delta -o out.gguf && no_output "wrong base"
head -c $((dsize / 2)) d.delta >trunc.delta
expect 1 "truncated delta" "truncated" "$bin" ota patch base.gguf trunc.delta -o out.gguf && no_output "truncated"
cp d.delta bad.delta
printf '\xff\xff\xff\xff' | dd of=bad.delta bs=1 seek=$((dsize - 200)) conv=notrunc 2>/dev/null
expect 1 "corrupted delta" "d.delta" "$bin" ota patch base.gguf bad.delta -o out.gguf && no_output "corrupted"
printf 'old model\n' >out.gguf
expect 1 "wrong base over an existing OUT" "wrong base" "$bin" ota patch other.gguf d.delta -o out.gguf
[ "$(cat out.gguf)" = "old model" ] && [ ! -e out.gguf.tmp ] && ok "existing OUT untouched" || bad "existing OUT changed"
rm -f out.gguf
expect 1 "not a delta" "magic" "$bin" ota patch base.gguf base.gguf -o out.gguf
expect 1 "diff of a non-GGUF" "d.delta" "$bin" ota diff base.gguf d.delta -o x.delta

# Usage errors.
expect 2 "diff without -o" "-o DELTA" "$bin" ota diff base.gguf target.gguf
expect 2 "patch with one file" "two files" "$bin" ota patch base.gguf -o out.gguf
expect 2 "bad level" "--level" "$bin" ota diff base.gguf target.gguf -o x --level 40
expect 2 "patch --level" "--level is an option of diff" "$bin" ota patch base.gguf d.delta -o x --level 3
expect 0 "diff --help" "" "$bin" ota diff --help
grep -q 'qdiff' out && ok "help describes the record kinds" || bad "help lacks the record kinds"

# Manifests.
expect 0 "keygen" "" "$bin" ota keygen -p k.pub -s k.key -q
expect 0 "manifest" "" "$bin" ota manifest --delta d.delta --version 4 -o m.json --chunk-size 65536 \
  --health-prompt "Once upon a time" --expect "the" -s k.key
grep -q '"kind": "delta"' m.json && grep -q '"expect_substring": "the"' m.json &&
  ok "manifest names kind and health check" || bad "manifest: $(head -c 300 m.json)"
if command -v minisign >/dev/null; then
  minisign -V -p k.pub -m m.json >/dev/null 2>&1 && ok "minisign -V accepts the manifest signature" ||
    bad "minisign -V refused the manifest"
fi
expect 2 "manifest without --version" "--version" "$bin" ota manifest --delta d.delta -o m2.json
expect 1 "manifest of a non-delta" "magic" "$bin" ota manifest --delta base.gguf --version 1 -o m2.json

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
