/*
 * test_repack.c - weights repacked at load (model.c, qt_repack_type) give
 * the logits of the weights used as stored.
 *
 * A one-layer llama with rows of 512 and 1024 elements (whole x16 blocks,
 * so every matrix but the embedding table is repacked where the CPU has
 * the kernels) is written in Q4_0, Q8_0, Q4_K and Q6_K, opened twice, with
 * OUTPOST_NO_REPACK=1 and without, and both run the same prompt batched and
 * token by token. For Q4_0 and Q8_0 the two differ only in the order float
 * sums are taken, so their logits agree to a small fraction of the logits'
 * spread. Q4_K and Q6_K as stored meet Q8_K activations (one scale per 256) and
 * repacked meets A8 x16 (one per 32), so their logits differ by activation
 * rounding: both are compared with an F32 twin of the model (the same
 * weights dequantized), and the repacked logits must be as close to it as
 * the stored ones (or closer). On a CPU without the repacked kernels both
 * opens are the same and the test still checks that nothing was repacked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "model_impl.h"

enum { N_EMBD = 512, N_FF = 1024, N_HEAD = 8, N_HEAD_KV = 2 };

static const int32_t prompt[] = {1, 45, 300, 7, 99, 12, 500, 3, 250, 77, 18, 402};
#define N_PROMPT ((int)(sizeof prompt / sizeof prompt[0]))

static uint64_t rng = 7;
static float frand(void)
{
    rng = rng * 6364136223846793005u + 1442695040888963407u;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* twin: the matrix quantized to type and stored dequantized, as F32 */
static void add_tensor(gguf_writer *w, void **data, uint64_t *size, int *n, const char *name, int64_t ne0,
                       int64_t ne1, qt_type type, bool twin, float scale, float offset)
{
    char err[256];
    const int64_t ne[2] = {ne0, ne1};
    const bool vec = ne1 == 1;
    const qt_type t = vec || twin ? QT_F32 : type;
    assert_true(gguf_writer_add_tensor(w, name, vec ? 1 : 2, ne, t, err) >= 0);
    float *f = malloc(sizeof(float) * (size_t)(ne0 * ne1));
    assert_non_null(f);
    for (int64_t i = 0; i < ne0 * ne1; i++)
        f[i] = offset + scale * frand();
    if (twin && !vec) {
        uint8_t *q = malloc(qt_row_bytes(type, ne0));
        assert_non_null(q);
        for (int64_t r = 0; r < ne1; r++) {
            qt_get_impl(type, QT_IMPL_SCALAR)->from_float(f + r * ne0, q, ne0);
            qt_get_impl(type, QT_IMPL_SCALAR)->to_float(q, f + r * ne0, ne0);
        }
        free(q);
    }
    size[*n] = qt_row_bytes(t, ne0) * (uint64_t)ne1;
    data[*n] = malloc(size[*n]);
    assert_non_null(data[*n]);
    for (int64_t r = 0; r < ne1; r++)
        qt_get_impl(t, QT_IMPL_SCALAR)->from_float(f + r * ne0, (uint8_t *)data[*n] + (size_t)r * qt_row_bytes(t, ne0), ne0);
    free(f);
    (*n)++;
}

static void make_model(const char *path, qt_type type, bool twin)
{
    char err[256];
    rng = 7; /* the same weights for a model and its twin */
    gguf *voc;
    assert_int_equal(gguf_open(&voc, OUTPOST_SHARED "/models/stories260K.gguf", err), 0);
    uint64_t n_vocab;
    assert_non_null(gguf_get_arr(voc, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_vocab));
    gguf_writer *w = gguf_writer_new();
    assert_int_equal(gguf_writer_copy_kv(w, voc, "tokenizer."), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.context_length", 256), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.embedding_length", N_EMBD), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.block_count", 1), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.feed_forward_length", N_FF), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count", N_HEAD), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count_kv", N_HEAD_KV), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.rope.dimension_count", N_EMBD / N_HEAD), 0);
    assert_int_equal(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f), 0);
    void *data[16];
    uint64_t size[16];
    int n = 0;
    const int64_t kv = N_EMBD / N_HEAD * N_HEAD_KV;
    const float s = 1.0f / sqrtf((float)N_EMBD);
    add_tensor(w, data, size, &n, "token_embd.weight", N_EMBD, (int64_t)n_vocab, type, twin, 1.0f, 0.0f);
    add_tensor(w, data, size, &n, "output_norm.weight", N_EMBD, 1, QT_F32, twin, 0.1f, 1.0f);
    add_tensor(w, data, size, &n, "output.weight", N_EMBD, (int64_t)n_vocab, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.attn_norm.weight", N_EMBD, 1, QT_F32, twin, 0.1f, 1.0f);
    add_tensor(w, data, size, &n, "blk.0.attn_q.weight", N_EMBD, N_EMBD, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.attn_k.weight", N_EMBD, kv, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.attn_v.weight", N_EMBD, kv, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.attn_output.weight", N_EMBD, N_EMBD, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.ffn_norm.weight", N_EMBD, 1, QT_F32, twin, 0.1f, 1.0f);
    add_tensor(w, data, size, &n, "blk.0.ffn_gate.weight", N_EMBD, N_FF, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.ffn_up.weight", N_EMBD, N_FF, type, twin, s, 0.0f);
    add_tensor(w, data, size, &n, "blk.0.ffn_down.weight", N_FF, N_EMBD, type, twin, 1.0f / sqrtf((float)N_FF), 0.0f);
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(gguf_writer_write_tensor(w, data[i], size[i], err), 0);
        free(data[i]);
    }
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(voc);
}

/* Logits of the prompt, batched and then token by token (decode path). */
static float *run(eng_model *m, int n_vocab)
{
    float *out = malloc(sizeof(float) * (size_t)n_vocab * 2 * N_PROMPT);
    assert_non_null(out);
    char err[256];
    for (int pass = 0; pass < 2; pass++) {
        eng_ctx_params p = eng_ctx_params_default();
        p.n_ctx = 64;
        p.n_threads = 2;
        eng_ctx *c;
        assert_int_equal(eng_ctx_new(&c, m, &p, err), 0);
        if (pass == 0) {
            assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
            for (int t = 0; t < N_PROMPT; t++)
                memcpy(out + (size_t)t * n_vocab, eng_logits(c, t), sizeof(float) * (size_t)n_vocab);
        } else {
            for (int t = 0; t < N_PROMPT; t++) {
                assert_int_equal(eng_eval(c, &prompt[t], 1, false, err), 0);
                memcpy(out + (size_t)(N_PROMPT + t) * n_vocab, eng_logits(c, -1), sizeof(float) * (size_t)n_vocab);
            }
        }
        eng_ctx_free(c);
    }
    return out;
}

static void check_type(qt_type type, qt_type packed)
{
    char path[96], err[256];
    snprintf(path, sizeof path, "/tmp/outpost-test-repack-%s-%d.gguf", qt_type_name(type), (int)getpid());
    make_model(path, type, false);
    eng_model *plain, *repacked;
    assert_int_equal(setenv("OUTPOST_NO_REPACK", "1", 1), 0);
    assert_int_equal(eng_model_open(&plain, path, err), 0);
    assert_int_equal(unsetenv("OUTPOST_NO_REPACK"), 0);
    assert_int_equal(eng_model_open(&repacked, path, err), 0);
    unlink(path);

    const bool expect = qt_repack_type(type, N_EMBD) == packed;
    assert_int_equal(plain->layers[0].wq.type, type);
    assert_int_equal(repacked->layers[0].wq.type, expect ? packed : type);
    assert_int_equal(repacked->layers[0].w_down.type, expect ? packed : type);
    assert_int_equal(repacked->tok_embd.type, type); /* looked up by row, never repacked */
    /* every matrix but the embedding table, rows padded to 64 bytes */
    const uint64_t row512 = (qt_row_bytes(type, N_EMBD) + 63) / 64 * 64, row1024 = (qt_row_bytes(type, N_FF) + 63) / 64 * 64;
    const uint64_t rows512 = 2 * (uint64_t)N_EMBD + 2 * (uint64_t)(N_EMBD / N_HEAD * N_HEAD_KV) + 2 * (uint64_t)N_FF +
                             (uint64_t)repacked->hp.n_vocab;
    const uint64_t matrix_bytes = row512 * rows512 + row1024 * (uint64_t)N_EMBD;
    assert_int_equal(eng_model_repacked_bytes(repacked) - eng_model_repacked_bytes(plain), expect ? matrix_bytes : 0);

    const int n_vocab = repacked->hp.n_vocab;
    float *a = run(plain, n_vocab), *b = run(repacked, n_vocab);
    const bool same_acts = qt_get(type)->vec_dot_type == qt_get(expect ? packed : type)->vec_dot_type;
    float *ref = NULL;
    if (!same_acts) {
        eng_model *twin;
        make_model(path, type, true);
        assert_int_equal(eng_model_open(&twin, path, err), 0);
        unlink(path);
        ref = run(twin, n_vocab);
        eng_model_close(twin);
    }
    for (int t = 0; t < 2 * N_PROMPT; t++) {
        const float *x = a + (size_t)t * n_vocab, *y = b + (size_t)t * n_vocab;
        const float *z = ref ? ref + (size_t)t * n_vocab : x;
        /* plain comparisons: fmin/fmax reductions here crashed the aarch64
         * cross compiler's vectorizer (GCC 12, internal compiler error) */
        float lo = x[0], hi = x[0], worst = 0.0f, plain_err = 0.0f, packed_err = 0.0f;
        for (int i = 0; i < n_vocab; i++) {
            if (x[i] < lo)
                lo = x[i];
            if (x[i] > hi)
                hi = x[i];
            const float d = x[i] > y[i] ? x[i] - y[i] : y[i] - x[i];
            if (!(d <= worst))
                worst = d;
            const float dp = x[i] > z[i] ? x[i] - z[i] : z[i] - x[i], dq = y[i] > z[i] ? y[i] - z[i] : z[i] - y[i];
            plain_err += dp * dp;
            packed_err += dq * dq;
        }
        if (same_acts && !(worst <= 1e-4f * (hi - lo)))
            fail_msg("%s, %s token %d: logits differ by %g (spread %g)", qt_type_name(type),
                     t < N_PROMPT ? "batched" : "decoded", t % N_PROMPT, worst, hi - lo);
        if (!same_acts && !(sqrtf(packed_err) <= 1.1f * sqrtf(plain_err) + 1e-4f * (hi - lo)))
            fail_msg("%s, %s token %d: repacked logits %g from the F32 twin's, stored ones %g (RMS sums)",
                     qt_type_name(type), t < N_PROMPT ? "batched" : "decoded", t % N_PROMPT,
                     (double)sqrtf(packed_err), (double)sqrtf(plain_err));
    }
    free(a);
    free(b);
    free(ref);
    eng_model_close(plain);
    eng_model_close(repacked);
}

static void q4_0_repacked_matches_stored(void **state)
{
    (void)state;
    check_type(QT_Q4_0, QT_Q4_0X16);
}

static void q8_0_repacked_matches_stored(void **state)
{
    (void)state;
    check_type(QT_Q8_0, QT_Q8_0X16);
}

static void q4_k_repacked_matches_stored(void **state)
{
    (void)state;
    check_type(QT_Q4_K, QT_Q4_KX16);
}

static void q6_k_repacked_matches_stored(void **state)
{
    (void)state;
    check_type(QT_Q6_K, QT_Q6_KX16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(q4_0_repacked_matches_stored),
        cmocka_unit_test(q8_0_repacked_matches_stored),
        cmocka_unit_test(q4_k_repacked_matches_stored),
        cmocka_unit_test(q6_k_repacked_matches_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
