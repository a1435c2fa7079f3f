#!/usr/bin/env bash
# outpost run / perplexity / tokenize against llama.cpp's reference figures
# for the real stories260K model (../shared/eval), plus the run command's
# error and context-full behaviour.
set -uo pipefail
bin=${OUTPOST_BIN:?}
shared=${OUTPOST_SHARED:?}
model=$shared/models/stories260K.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

# 1. Greedy continuations equal llama.cpp's, line by line of the TSV.
while IFS=$'\t' read -r prompt expected; do
  [ -n "$prompt" ] || continue
  got=$("$bin" run -m "$model" -p "$prompt" -n 32 --temp 0 --echo 2>"$work/err" | tr '\n' ' ')
  # The reference flattened llama-cli's closing newline too, so ours stays in.
  if [ "$got" == "$expected" ]; then ok "greedy: $prompt"
  else bad "greedy: $prompt"; echo "  expected: [$expected]"; echo "  got:      [$got]"; fi
done < "$shared/eval/greedy_stories260K.tsv"

# 2. Greedy output does not depend on the thread count.
p="Lily and Tom went to the park"
a=$("$bin" run -m "$model" -p "$p" -n 64 --temp 0 -t 1 2>/dev/null)
b=$("$bin" run -m "$model" -p "$p" -n 64 --temp 0 -t 2 2>/dev/null)
c=$("$bin" run -m "$model" -p "$p" -n 64 --temp 0 -t 3 2>/dev/null)
if [ -n "$a" ] && [ "$a" == "$b" ] && [ "$a" == "$c" ]; then ok "same greedy output with -t 1, 2, 3"
else bad "greedy output differs between thread counts"; fi

# 3. Perplexity within 0.1% of llama.cpp's 3.9568.
out=$("$bin" perplexity -m "$model" -f "$shared/eval/tinytales.txt" -c 128 2>"$work/err")
ppl=$(sed -n 's/^PPL = \([0-9.]*\).*/\1/p' <<<"$out")
if [ -n "$ppl" ] && awk -v p="$ppl" 'BEGIN { d = (p - 3.9568) / 3.9568; exit !(d < 0.001 && d > -0.001) }'; then
  ok "perplexity $ppl within 0.1% of 3.9568"
else bad "perplexity '$ppl' (output: $out; $(tail -n 1 "$work/err"))"; fi

# 4. Sampling: the same seed gives the same text, and text is produced.
s1=$("$bin" run -m "$model" -p "The little dog" -n 40 --temp 0.9 --seed 7 2>/dev/null)
s2=$("$bin" run -m "$model" -p "The little dog" -n 40 --temp 0.9 --seed 7 2>/dev/null)
s3=$("$bin" run -m "$model" -p "The little dog" -n 40 --temp 0.9 --seed 8 2>/dev/null)
if [ -n "$s1" ] && [ "$s1" == "$s2" ] && [ "$s1" != "$s3" ]; then ok "seeded sampling is reproducible"
else bad "seeded sampling: [$s1] [$s2] [$s3]"; fi

# 5. A full context stops with a message by default ...
"$bin" run -m "$model" -p "Once upon a time" -n 100 -c 32 --temp 0 >"$work/out" 2>"$work/err"
rc=$?
if [ $rc -eq 0 ] && grep -q "context of 32 tokens is full" "$work/err"; then ok "full context stops with a message"
else bad "full context: rc $rc, stderr: $(cat "$work/err")"; fi
# ... and goes on with --context-shift, keeping the first tokens.
"$bin" run -m "$model" -p "Once upon a time" -n 100 -c 32 --temp 0 --context-shift --keep 4 \
  >"$work/out" 2>"$work/err"
rc=$?
if [ $rc -eq 0 ] && grep -q "generated 100 tokens" "$work/err"; then ok "context shift generates past the context size"
else bad "context shift: rc $rc, stderr: $(cat "$work/err")"; fi

# 6. Errors are one line and the right exit code.
expect_fail() { # code, description, command...
  local code=$1 what=$2; shift 2
  "$@" >/dev/null 2>"$work/err"
  local rc=$?
  local lines; lines=$(wc -l <"$work/err")
  if [ $rc -eq "$code" ] && [ "$lines" -eq 1 ]; then ok "$what (exit $rc: $(cat "$work/err"))"
  else bad "$what: exit $rc, $lines lines: $(cat "$work/err")"; fi
}
expect_fail 1 "missing model file" "$bin" run -m "$work/nope.gguf" -p hi
head -c 5000 "$model" >"$work/trunc.gguf"
expect_fail 1 "truncated model" "$bin" run -m "$work/trunc.gguf" -p hi
printf 'not a gguf file at all, not at all' >"$work/junk.gguf"
expect_fail 1 "not a GGUF file" "$bin" run -m "$work/junk.gguf" -p hi
expect_fail 2 "missing -m" "$bin" run -p hi
expect_fail 2 "bad --temp" "$bin" run -m "$model" --temp abc
expect_fail 2 "unknown flag" "$bin" run -m "$model" --frobnicate
expect_fail 2 "unknown command" "$bin" frobnicate
expect_fail 1 "prompt longer than the context" "$bin" run -m "$model" -c 4 -p "Once upon a time there was a dog"

# 7. tokenize / detokenize round trip through the CLI.
vocab=$shared/tokenizer/ggml-vocab-llama-spm.gguf
text=$'Hello world\n  two spaces and ünïcödé 🦙'
ids=$(printf '%s' "$text" | "$bin" tokenize -m "$vocab")
back=$(printf '%s' "$ids" | "$bin" detokenize -m "$vocab"; printf x)
back=${back%x}
if [ -n "$ids" ] && [ "$back" == "$text" ]; then ok "tokenize/detokenize round trip ($ids)"
else bad "round trip: ids [$ids] back [$back]"; fi
bos=$(printf 'Hello' | "$bin" tokenize -m "$vocab" --bos)
if [ "${bos%% *}" == "1" ]; then ok "--bos prepends id 1"; else bad "--bos: $bos"; fi
plain=$(printf '<s>' | "$bin" tokenize -m "$vocab")
special=$(printf '<s>' | "$bin" tokenize -m "$vocab" --special)
if [ "$special" == "1" ] && [ "$plain" != "1" ]; then ok "control text is plain unless --special"
else bad "--special: plain [$plain] special [$special]"; fi
expect_fail 1 "detokenize rejects an id outside the vocabulary" \
  sh -c "echo 1 99999999 | '$bin' detokenize -m '$vocab'"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
