#!/usr/bin/env bash
# outpost run --lora: an adapter changes the output, scale 0 gives the base
# model's output exactly, and a bad adapter is a one-line error.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
here=$(cd "$(dirname "$0")" && pwd)
model=$shared/models/stories260K.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

python3 "$here/make_lora.py" "$work/a.gguf" 64 5 4 1
python3 "$here/make_lora.py" "$work/wrong-arch.gguf" 64 5 4 1 qwen2
python3 "$here/make_lora.py" "$work/wrong-shape.gguf" 32 5 4 1
run() { "$bin" run -m "$model" -p "Once upon a time" -n 24 --temp 0 "$@" 2>"$work/err"; }

base=$(run)
with=$(run --lora "$work/a.gguf")
zero=$(run --lora "$work/a.gguf:0")
half=$(run --lora "$work/a.gguf:0.5")
[ -n "$with" ] && [ "$with" != "$base" ] && ok "an adapter changes the greedy text" || bad "adapter had no effect: [$with]"
[ "$zero" == "$base" ] && ok "scale 0 gives the base model's text" || bad "scale 0: [$zero] vs [$base]"
[ -n "$half" ] && ok "a scaled adapter runs" || bad "scale 0.5 produced nothing"
two=$(run --lora "$work/a.gguf:0.5" --lora "$work/a.gguf:0.5")
[ "$two" == "$with" ] && ok "two halves of one adapter equal the whole" || bad "0.5+0.5: [$two] vs [$with]"

expect_fail() { # code, what, args...
  local code=$1 what=$2; shift 2
  run "$@" >/dev/null
  local rc=$? lines; lines=$(wc -l <"$work/err")
  if [ $rc -eq "$code" ] && [ "$lines" -eq 1 ]; then ok "$what ($(cat "$work/err"))"
  else bad "$what: exit $rc, $lines lines: $(cat "$work/err")"; fi
}
expect_fail 1 "adapter for another architecture" --lora "$work/wrong-arch.gguf"
expect_fail 1 "adapter of the wrong shape" --lora "$work/wrong-shape.gguf"
expect_fail 1 "a model file is not an adapter" --lora "$model"
expect_fail 1 "missing adapter file" --lora "$work/none.gguf"
expect_fail 2 "bad adapter scale" --lora "$work/a.gguf:1e9"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
