#!/usr/bin/env bash
# test_model_tools.sh - `outpost model info`, `outpost model synth` and
# `outpost quantize` against the real stories260K model and the llama-spm
# vocab: hyper-parameters reported, every target type written and read back,
# the block-size fallback note, exit codes of bad input, synth's shapes and
# its determinism. Works in a temporary directory removed on exit.
set -euo pipefail

: "${OUTPOST_BIN:?OUTPOST_BIN must name the outpost binary}"
: "${OUTPOST_SHARED:?OUTPOST_SHARED must name the shared data directory}"

MODEL="$OUTPOST_SHARED/models/stories260K.gguf"
VOCAB="$OUTPOST_SHARED/tokenizer/ggml-vocab-llama-spm.gguf"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0

fail() {
    echo "FAIL: $*" >&2
    if [[ -s "$WORK/err" ]]; then
        echo "--- stderr of the last command:" >&2
        head -n 20 "$WORK/err" >&2
    fi
    echo "$passed passed, 1 failed" >&2
    exit 1
}

pass() {
    passed=$((passed + 1))
    echo "ok $passed - $*"
}

# run EXPECTED_RC CMD...: runs CMD with stdout in $WORK/out and stderr in
# $WORK/err, and fails unless it exits with EXPECTED_RC.
run() {
    local want="$1" rc=0
    shift
    "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
    [[ "$rc" == "$want" ]] || fail "'$*' exited $rc, expected $want"
}

# has FILE REGEX WHAT: FILE has a line matching the extended REGEX.
has() {
    grep -Eq -- "$2" "$1" || fail "$3: no line matching /$2/ in $(basename "$1")"
}

# lacks FILE REGEX WHAT
lacks() {
    if grep -Eq -- "$2" "$1"; then fail "$3: unexpected line matching /$2/"; fi
}

# tensor_type INFO_FILE NAME TYPE: model info lists tensor NAME with TYPE.
tensor_type() {
    has "$1" "^  $2 +\[[0-9, ]+\] +$3 " "tensor $2 should be $3"
}

[[ -x "$OUTPOST_BIN" ]] || fail "$OUTPOST_BIN is not executable"
[[ -r "$MODEL" ]] || fail "$MODEL is missing"
[[ -r "$VOCAB" ]] || fail "$VOCAB is missing"

# ---- model info on the real model -------------------------------------------
run 0 "$OUTPOST_BIN" model info "$MODEL"
cp "$WORK/out" "$WORK/info-orig"
has "$WORK/out" '^  gguf version +3$' "gguf version"
has "$WORK/out" '^architecture: llama$' "architecture"
has "$WORK/out" '^  embedding length +64 ' "n_embd"
has "$WORK/out" '^  block count +5 ' "block count"
has "$WORK/out" '^  feed-forward length +172 ' "n_ff"
has "$WORK/out" '^  head count +8 ' "head count"
has "$WORK/out" '^  head count kv +4 ' "kv head count"
has "$WORK/out" '^  rms epsilon +1e-05 ' "rms epsilon"
has "$WORK/out" '^  model +llama$' "tokenizer model"
has "$WORK/out" '^  vocab size +512$' "tokenizer vocab size"
has "$WORK/out" '^  bos +1 "<s>"$' "bos token"
has "$WORK/out" '^  tokenizer\.ggml\.tokens +array\[string\] 512 +\["<unk>", "<s>", "</s>", .*\.\.\. [0-9]+ more\]$' \
    "abbreviated token array"
has "$WORK/out" '^tensors \(48\):$' "tensor count"
tensor_type "$WORK/out" "blk.0.ffn_down.weight" f32
has "$WORK/out" '^  blk\.0\.ffn_down\.weight +\[172, 64\] ' "ffn_down shape"
has "$WORK/out" '^  parameters +292\.80 K \(292800\)$' "parameter count"
has "$WORK/out" '^  bits per weight +32\.00$' "bits per weight of an f32 model"
[[ ! -s "$WORK/err" ]] || fail "model info printed on stderr"
pass "model info reports stories260K's hyper-parameters, tokenizer, tensors and totals"

run 0 "$OUTPOST_BIN" model info --help
has "$WORK/out" '^usage: outpost model info' "model info --help"
run 0 "$OUTPOST_BIN" quantize --help
has "$WORK/out" '^usage: outpost quantize' "quantize --help"
run 0 "$OUTPOST_BIN" model synth --help
has "$WORK/out" '^usage: outpost model synth' "model synth --help"
run 2 "$OUTPOST_BIN" model info
run 2 "$OUTPOST_BIN" model frobnicate
pass "--help prints usage on stdout; usage errors exit 2"

# ---- quantize to every type ---------------------------------------------------
declare -A ftype=([f32]=0 [f16]=1 [bf16]=32 [q8_0]=7 [q4_0]=2 [q4_1]=3 [q5_0]=8 [q5_1]=9)
for t in f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; do
    out="$WORK/s-$t.gguf"
    run 0 "$OUTPOST_BIN" quantize -t 2 "$MODEL" "$out" "$t"
    has "$WORK/out" '^file size: [0-9.]+ MiB -> [0-9.]+ [KM]iB \([0-9.]+x (smaller|larger), [0-9.]+% (reduction|increase)\)$' \
        "quantize $t: size summary"
    has "$WORK/out" "^wrote .* in [0-9.]+ s$" "quantize $t: time taken"
    case "$t" in
    q*)
        notes=$(grep -c 'row length 172 is not a multiple of 32, kept as f16' "$WORK/err" || true)
        [[ "$notes" == 5 ]] || fail "quantize $t: expected 5 fallback notes (one per ffn_down), got $notes"
        has "$WORK/err" '^note: blk\.0\.ffn_down\.weight: row length 172 is not a multiple of 32, kept as f16$' \
            "quantize $t: fallback note names the tensor"
        ;;
    *)
        [[ ! -s "$WORK/err" ]] || fail "quantize $t: unexpected output on stderr"
        ;;
    esac

    run 0 "$OUTPOST_BIN" model info "$out"
    has "$WORK/out" "^  file type +[A-Z0-9_]+ \\(${ftype[$t]}\\)$" "quantize $t: general.file_type"
    has "$WORK/out" '^tensors \(48\):$' "quantize $t: tensor count"
    has "$WORK/out" '^  embedding length +64 ' "quantize $t: metadata kept"
    has "$WORK/out" '^  vocab size +512$' "quantize $t: tokenizer kept"
    has "$WORK/out" '^  parameters +292\.80 K \(292800\)$' "quantize $t: parameter count"
    tensor_type "$WORK/out" "token_embd.weight" "$t"
    tensor_type "$WORK/out" "blk.0.attn_q.weight" "$t"
    tensor_type "$WORK/out" "blk.4.ffn_gate.weight" "$t"
    tensor_type "$WORK/out" "blk.0.attn_norm.weight" f32
    tensor_type "$WORK/out" "output_norm.weight" f32
    case "$t" in
    q4_* | q5_*)
        tensor_type "$WORK/out" "output.weight" q8_0
        tensor_type "$WORK/out" "blk.3.ffn_down.weight" f16
        ;;
    q8_0)
        tensor_type "$WORK/out" "output.weight" q8_0
        tensor_type "$WORK/out" "blk.3.ffn_down.weight" f16
        ;;
    *)
        tensor_type "$WORK/out" "output.weight" "$t"
        tensor_type "$WORK/out" "blk.3.ffn_down.weight" "$t"
        ;;
    esac
    pass "quantize stories260K to $t: types, fallback and metadata as expected"
done

# Fewer bits, smaller files.
size() { stat -c %s "$1"; }
(( $(size "$WORK/s-q4_0.gguf") < $(size "$WORK/s-q5_0.gguf") )) || fail "q4_0 is not smaller than q5_0"
(( $(size "$WORK/s-q5_0.gguf") < $(size "$WORK/s-q8_0.gguf") )) || fail "q5_0 is not smaller than q8_0"
(( $(size "$WORK/s-q8_0.gguf") < $(size "$WORK/s-f16.gguf") )) || fail "q8_0 is not smaller than f16"
(( $(size "$WORK/s-f16.gguf") < $(size "$WORK/s-f32.gguf") )) || fail "f16 is not smaller than f32"
pass "file sizes shrink with the bits per weight"

# A quantized input is dequantized and re-quantized.
run 0 "$OUTPOST_BIN" quantize "$WORK/s-q8_0.gguf" "$WORK/re-q4_0.gguf" q4_0
run 0 "$OUTPOST_BIN" model info "$WORK/re-q4_0.gguf"
tensor_type "$WORK/out" "blk.2.attn_v.weight" q4_0
# ffn_down was f16 in the input and stays f16: copied, not re-quantized.
tensor_type "$WORK/out" "blk.2.ffn_down.weight" f16
pass "quantize q8_0 -> q4_0 re-quantizes a quantized model"

# ---- K-quant recipes on stories260K: rows of 64 and 172 fit no 256-block ---------
# Every 2-D weight falls back as llama.cpp's quantizer does (q2_k/q3_k -> q4_0,
# q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0; rows of 172 -> f16), and the
# output tensor gets q8_0 directly (its rows do not fit the recipe's blocks).
# ktype TYPE TENSOR: the type TENSOR gets under recipe TYPE in stories260K.
ktype() {
    local t="$1" name="$2" fb
    case "$t" in
    q2_k) fb=q4_0 ;; q3_k_*) fb=q4_0 ;; q4_k_*) fb=q5_0 ;; q5_k_*) fb=q5_1 ;; q6_k) fb=q8_0 ;;
    esac
    case "$name" in
    output.weight) echo q8_0; return ;;
    *ffn_down*) echo f16; return ;;
    esac
    # the layers and tensors the recipes give more bits (use_more_bits over 5
    # layers picks 2 and 4; stories260K has 2 query heads per KV head)
    case "$t:$name" in
    q4_k_m:blk.[24].attn_v.* | q5_k_m:blk.[24].attn_v.*) echo q8_0 ;;  # q6_k
    q4_k_s:blk.[0-3].attn_v.*) echo q5_1 ;;                           # q5_k
    q3_k_m:blk.[01].attn_v.* | q3_k_l:*attn_v.* | q3_k_l:*attn_output.*) echo q5_1 ;;
    q3_k_m:*attn_v.* | q3_k_m:*attn_output.*) echo q5_0 ;;             # q4_k
    *) echo "$fb" ;;
    esac
}
declare -A kftype=([q2_k]=10 [q3_k_s]=11 [q3_k_m]=12 [q3_k_l]=13 [q4_k_s]=14 [q4_k_m]=15
                   [q5_k_s]=16 [q5_k_m]=17 [q6_k]=18)
for t in q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k; do
    out="$WORK/s-$t.gguf"
    run 0 "$OUTPOST_BIN" quantize -t 2 "$MODEL" "$out" "$t"
    has "$WORK/out" '^file size: [0-9.]+ MiB -> [0-9.]+ [KM]iB \([0-9.]+x smaller, [0-9.]+% reduction\)$' \
        "quantize $t: size summary"
    # 36 of the 37 matrices fall back (all but output.weight), one note each
    notes=$(grep -c '^note: .*: row length \(64\|172\) is not a multiple of 256, kept as ' "$WORK/err" || true)
    [[ "$notes" == 36 ]] || fail "quantize $t: expected 36 fallback notes, got $notes"
    lacks "$WORK/err" '^note: output\.weight' "quantize $t: output.weight needs no fallback note"
    run 0 "$OUTPOST_BIN" model info "$out"
    has "$WORK/out" "^  file type +MOSTLY_[A-Z0-9_]+ \\(${kftype[$t]}\\)$" "quantize $t: general.file_type"
    lacks "$WORK/out" '^  [a-z0-9_.]+ +\[[0-9, ]+\] +q[2-6]_k ' "quantize $t: no tensor can be a K type"
    for name in token_embd.weight output.weight blk.0.attn_q.weight blk.1.attn_v.weight \
        blk.2.attn_v.weight blk.3.attn_v.weight blk.4.attn_v.weight blk.0.attn_output.weight \
        blk.3.ffn_gate.weight blk.4.ffn_up.weight blk.2.ffn_down.weight; do
        tensor_type "$WORK/out" "$name" "$(ktype "$t" "$name")"
    done
    tensor_type "$WORK/out" "blk.0.attn_norm.weight" f32
    pass "quantize stories260K to $t: llama.cpp's recipe, every fallback noted"
done
(( $(size "$WORK/s-q2_k.gguf") < $(size "$WORK/s-q4_k_m.gguf") )) || fail "q2_k is not smaller than q4_k_m"
(( $(size "$WORK/s-q4_k_m.gguf") < $(size "$WORK/s-q6_k.gguf") )) || fail "q4_k_m is not smaller than q6_k"

# The fallen-back model runs and scores.
run 0 "$OUTPOST_BIN" run -m "$WORK/s-q4_k_m.gguf" -p "Once upon a time" -n 16 --temp 0 -t 2
[[ $(wc -w <"$WORK/out") -ge 4 ]] || fail "run on the q4_k_m model printed almost nothing"
run 0 "$OUTPOST_BIN" perplexity -m "$WORK/s-q4_k_m.gguf" -f "$OUTPOST_SHARED/eval/tinytales.txt" -c 128 -t 2
has "$WORK/out" '^PPL = [0-9]+\.[0-9]+$' "perplexity of the q4_k_m model"
pass "stories260K q4_k_m: run generates text, perplexity runs"

# ---- quantize errors -----------------------------------------------------------
run 2 "$OUTPOST_BIN" quantize "$MODEL" "$WORK/bad.gguf" q9_9
has "$WORK/err" "unknown type 'q9_9'" "bad type message"
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "bad type: expected one line on stderr"
run 1 "$OUTPOST_BIN" quantize "$WORK/does-not-exist.gguf" "$WORK/bad.gguf" q4_0
has "$WORK/err" "does-not-exist\.gguf: cannot open" "missing input message"
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "missing input: expected one line on stderr"
run 2 "$OUTPOST_BIN" quantize "$MODEL" "$WORK/bad.gguf"
cp "$WORK/s-q8_0.gguf" "$WORK/self.gguf"
run 2 "$OUTPOST_BIN" quantize "$WORK/self.gguf" "$WORK/./self.gguf" q4_0
has "$WORK/err" "refusing to overwrite the input" "overwrite refusal message"
cmp -s "$WORK/self.gguf" "$WORK/s-q8_0.gguf" || fail "the refused input was changed"
[[ ! -e "$WORK/bad.gguf" ]] || fail "a failed quantize left an output file"
pass "quantize: bad type exits 2, missing input exits 1, input is never overwritten"

# ---- model synth ---------------------------------------------------------------
run 0 "$OUTPOST_BIN" model synth --shape list
has "$WORK/out" '^tinyllama-1\.1b +2048 +22 +5632 +32 +4 ' "shape table: tinyllama"
has "$WORK/out" '^stories260k +64 +5 +172 +8 +4 ' "shape table: stories260k"
pass "synth --shape list prints the shape table"

run 0 "$OUTPOST_BIN" model synth --shape stories260k --type q4_0 --vocab "$VOCAB" \
    -o "$WORK/syn260k.gguf" --seed 42 -t 2
has "$WORK/out" "^wrote $WORK/syn260k.gguf$" "synth prints the path"
has "$WORK/err" '^note: blk\.0\.ffn_down\.weight: row length 172 is not a multiple of 32, kept as f16$' \
    "synth fallback note"
run 0 "$OUTPOST_BIN" model info "$WORK/syn260k.gguf"
has "$WORK/out" '^  name +synthetic stories260k' "synth general.name"
has "$WORK/out" '^  file type +MOSTLY_Q4_0 \(2\)$' "synth file type"
has "$WORK/out" '^  context length +512 ' "synth context length"
has "$WORK/out" '^  embedding length +64 ' "synth n_embd"
has "$WORK/out" '^  block count +5 ' "synth layers"
has "$WORK/out" '^  feed-forward length +172 ' "synth n_ff"
has "$WORK/out" '^  head count +8 ' "synth heads"
has "$WORK/out" '^  head count kv +4 ' "synth kv heads"
has "$WORK/out" '^  rope dimension count +8 ' "synth rope dims"
has "$WORK/out" '^  vocab size +32000 +\(llama\.vocab_size\)$' "synth llama.vocab_size"
has "$WORK/out" '^  vocab size +32000$' "synth tokenizer vocab"
has "$WORK/out" '^  tokenizer\.ggml\.scores ' "synth copies tokenizer scores"
has "$WORK/out" '^  tokenizer\.ggml\.token_type ' "synth copies token types"
has "$WORK/out" '^tensors \(48\):$' "synth tensor count"
has "$WORK/out" '^  token_embd\.weight +\[64, 32000\] +q4_0 ' "synth token_embd"
has "$WORK/out" '^  output\.weight +\[64, 32000\] +q4_0 ' "synth output"
has "$WORK/out" '^  blk\.4\.attn_k\.weight +\[64, 32\] +q4_0 ' "synth attn_k"
has "$WORK/out" '^  blk\.4\.ffn_down\.weight +\[172, 64\] +f16 ' "synth ffn_down fallback"
has "$WORK/out" '^  blk\.4\.ffn_norm\.weight +\[64\] +f32 ' "synth norm"
pass "synth stories260k: shape, metadata, tokenizer and tensor types"

run 0 "$OUTPOST_BIN" model synth --shape smol-135m --type q8_0 --vocab "$VOCAB" \
    -o "$WORK/smol.gguf"
[[ ! -s "$WORK/err" ]] || fail "smol-135m q8_0 needs no fallback, yet stderr has output"
run 0 "$OUTPOST_BIN" model info "$WORK/smol.gguf"
has "$WORK/out" '^  embedding length +576 ' "smol n_embd"
has "$WORK/out" '^  block count +30 ' "smol layers"
has "$WORK/out" '^  feed-forward length +1536 ' "smol n_ff"
has "$WORK/out" '^  head count +9 ' "smol heads"
has "$WORK/out" '^  head count kv +3 ' "smol kv heads"
has "$WORK/out" '^  rope dimension count +64 ' "smol head dim"
has "$WORK/out" '^  vocab size +32000$' "smol n_vocab"
has "$WORK/out" '^tensors \(272\):$' "smol tensor count (tied output)"
lacks "$WORK/out" '^  output\.weight ' "smol has tied output"
has "$WORK/out" '^  blk\.29\.attn_v\.weight +\[576, 192\] +q8_0 ' "smol attn_v"
has "$WORK/out" '^  blk\.29\.ffn_down\.weight +\[1536, 576\] +q8_0 ' "smol ffn_down"
pass "synth smol-135m: shape, n_vocab 32000, tied output"

# ---- K-quants on smol-135m: rows of 1536 (ffn_down) are whole 256-blocks -----------
# q4_k_m over 30 layers: ffn_down and attn_v get q6_k in layers 0-2, 26-29 and
# every third layer from 5 (use_more_bits); rows of 576 fall back (q4_k ->
# q5_0, q6_k -> q8_0); the tied token_embd makes the logits: q8_0.
# smol_k4m INFO: the q4_k_m types of smol-135m.
smol_k4m() {
    tensor_type "$1" "token_embd.weight" q8_0
    tensor_type "$1" "blk.0.ffn_down.weight" q6_k
    tensor_type "$1" "blk.2.ffn_down.weight" q6_k
    tensor_type "$1" "blk.3.ffn_down.weight" q4_k
    tensor_type "$1" "blk.5.ffn_down.weight" q6_k
    tensor_type "$1" "blk.25.ffn_down.weight" q4_k
    tensor_type "$1" "blk.26.ffn_down.weight" q6_k
    tensor_type "$1" "blk.29.ffn_down.weight" q6_k
    tensor_type "$1" "blk.0.attn_v.weight" q8_0
    tensor_type "$1" "blk.4.attn_v.weight" q5_0
    tensor_type "$1" "blk.8.attn_v.weight" q8_0
    tensor_type "$1" "blk.7.attn_q.weight" q5_0
    tensor_type "$1" "blk.7.ffn_gate.weight" q5_0
    has "$1" '^  file type +MOSTLY_Q4_K_M \(15\)$' "smol q4_k_m file type"
}
run 0 "$OUTPOST_BIN" quantize -t 2 "$WORK/smol.gguf" "$WORK/smol-q4_k_m.gguf" q4_k_m
has "$WORK/out" '^\[ *[0-9]+/ 272\] blk\.0\.ffn_down\.weight +\[1536, 576\] +q8_0 -> q6_k ' \
    "quantize smol q4_k_m: ffn_down line"
has "$WORK/err" '^note: blk\.3\.attn_v\.weight: row length 576 is not a multiple of 256, kept as q5_0$' \
    "quantize smol q4_k_m: attn_v fallback note"
lacks "$WORK/err" 'ffn_down' "quantize smol q4_k_m: ffn_down needs no fallback"
run 0 "$OUTPOST_BIN" model info "$WORK/smol-q4_k_m.gguf"
smol_k4m "$WORK/out"
run 0 "$OUTPOST_BIN" model synth --shape smol-135m --type q4_k_m --vocab "$VOCAB" \
    -o "$WORK/smol-synth-q4_k_m.gguf" -t 2
run 0 "$OUTPOST_BIN" model info "$WORK/smol-synth-q4_k_m.gguf"
smol_k4m "$WORK/out"
pass "smol-135m q4_k_m (quantize and synth): llama.cpp's recipe with K types where rows fit"

run 0 "$OUTPOST_BIN" run -m "$WORK/smol-q4_k_m.gguf" -p "Once upon a time" -n 8 --temp 0 -t 2
[[ -s "$WORK/out" ]] || fail "run on smol q4_k_m printed nothing"
run 0 "$OUTPOST_BIN" perplexity -m "$WORK/smol-q4_k_m.gguf" -f "$OUTPOST_SHARED/eval/tinytales.txt" \
    -c 128 --chunks 1 -t 2
has "$WORK/out" '^PPL = [0-9]+\.[0-9]+$' "perplexity of smol q4_k_m"
pass "smol-135m q4_k_m: run generates, perplexity runs"

run 0 "$OUTPOST_BIN" model synth --shape stories260k --type q4_0 --vocab "$VOCAB" \
    -o "$WORK/syn260k-again.gguf" --seed 42 -t 1
cmp "$WORK/syn260k.gguf" "$WORK/syn260k-again.gguf" >/dev/null ||
    fail "synth with the same seed (and another thread count) wrote different bytes"
run 0 "$OUTPOST_BIN" model synth --shape stories260k --type q4_0 --vocab "$VOCAB" \
    -o "$WORK/syn260k-other.gguf" --seed 43
if cmp -s "$WORK/syn260k.gguf" "$WORK/syn260k-other.gguf"; then
    fail "synth with another seed wrote the same bytes"
fi
pass "synth is deterministic: same seed, same bytes; another seed, other bytes"

run 2 "$OUTPOST_BIN" model synth --shape no-such-shape --type q4_0 --vocab "$VOCAB" -o "$WORK/x.gguf"
run 2 "$OUTPOST_BIN" model synth --shape stories260k --type q4_0 --vocab "$VOCAB"
run 1 "$OUTPOST_BIN" model synth --shape stories260k --type q4_0 --vocab "$WORK/nope.gguf" -o "$WORK/x.gguf"
[[ ! -e "$WORK/x.gguf" ]] || fail "a failed synth left an output file"
pass "synth: unknown shape or missing -o exit 2, unreadable vocab exits 1"

# ---- malformed input -----------------------------------------------------------
head -c 500000 "$MODEL" >"$WORK/truncated.gguf"
run 1 "$OUTPOST_BIN" model info "$WORK/truncated.gguf"
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "truncated file: expected exactly one line on stderr"
has "$WORK/err" '^outpost model info: .*truncated\.gguf: ' "truncated file: the error names the file"
head -c 100 "$MODEL" >"$WORK/header-only.gguf"
run 1 "$OUTPOST_BIN" model info "$WORK/header-only.gguf"
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "cut header: expected exactly one line on stderr"
printf 'not a gguf file at all, just text\n' >"$WORK/text.gguf"
run 1 "$OUTPOST_BIN" model info "$WORK/text.gguf"
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "text file: expected exactly one line on stderr"
run 1 "$OUTPOST_BIN" quantize "$WORK/truncated.gguf" "$WORK/x.gguf" q4_0
[[ $(wc -l <"$WORK/err") == 1 ]] || fail "quantize of a truncated file: expected one line on stderr"
pass "malformed files: exit 1 with one line on stderr"

echo "$passed passed, 0 failed"
