/*
 * test_lora.c - LoRA adapters against merged weights.
 *
 * A tiny random F32 Llama model is written three ways: the base, an adapter
 * for some of its matrices, and a "merged" model whose matrices already hold
 * W + scale * alpha / rank * B A. The engine running base + adapter must give
 * the merged model's logits; detaching must give the base's logits exactly.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"

enum { N_EMBD = 64, N_LAYER = 2, N_HEAD = 4, N_HEAD_KV = 2, N_FF = 96, RANK = 4 };
#define ALPHA 8.0f
#define KV_DIM (N_HEAD_KV * N_EMBD / N_HEAD)

typedef struct tensor {
    char name[48];
    int64_t ne0, ne1;
    float *data;
} tensor;

typedef struct tensor_set {
    tensor t[64];
    int n;
} tensor_set;

static uint64_t rng = 99;
static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static tensor *add(tensor_set *s, const char *name, int64_t ne0, int64_t ne1, float scale,
                   float offset)
{
    tensor *t = &s->t[s->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->data = malloc((size_t)(ne0 * ne1) * sizeof(float));
    assert_non_null(t->data);
    for (int64_t i = 0; i < ne0 * ne1; i++)
        t->data[i] = frand() * scale + offset;
    return t;
}

static tensor *find(tensor_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0)
            return &s->t[i];
    return NULL;
}

static void free_set(tensor_set *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->t[i].data);
    s->n = 0;
}

static int32_t n_vocab;

static void base_weights(tensor_set *s)
{
    add(s, "token_embd.weight", N_EMBD, n_vocab, 1.0f, 0);
    add(s, "output_norm.weight", N_EMBD, 1, 0.1f, 1.0f);
    add(s, "output.weight", N_EMBD, n_vocab, 0.125f, 0);
    for (int l = 0; l < N_LAYER; l++) {
        char n[48];
#define ADD(x, a, b, sc, off) (snprintf(n, sizeof n, "blk.%d." x ".weight", l), add(s, n, a, b, sc, off))
        ADD("attn_norm", N_EMBD, 1, 0.1f, 1.0f);
        ADD("attn_q", N_EMBD, N_EMBD, 0.25f, 0);
        ADD("attn_k", N_EMBD, KV_DIM, 0.25f, 0);
        ADD("attn_v", N_EMBD, KV_DIM, 0.25f, 0);
        ADD("attn_output", N_EMBD, N_EMBD, 0.125f, 0);
        ADD("ffn_norm", N_EMBD, 1, 0.1f, 1.0f);
        ADD("ffn_gate", N_EMBD, N_FF, 0.25f, 0);
        ADD("ffn_up", N_EMBD, N_FF, 0.25f, 0);
        ADD("ffn_down", N_FF, N_EMBD, 0.1f, 0);
#undef ADD
    }
}

/* meta: 0 = model, 1 = adapter (with general.type etc.) */
static void write_set(const char *path, tensor_set *s, bool adapter, const char *arch,
                      const char *gtype)
{
    char err[256];
    gguf *voc;
    assert_int_equal(gguf_open(&voc, OUTPOST_SHARED "/models/stories260K.gguf", err), 0);
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", arch), 0);
    if (adapter) {
        assert_int_equal(gguf_writer_set_str(w, "general.type", gtype), 0);
        assert_int_equal(gguf_writer_set_str(w, "adapter.type", "lora"), 0);
        assert_int_equal(gguf_writer_set_f32(w, "adapter.lora.alpha", ALPHA), 0);
    } else {
        assert_int_equal(gguf_writer_copy_kv(w, voc, "tokenizer."), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.context_length", 128), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.embedding_length", N_EMBD), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.block_count", N_LAYER), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.feed_forward_length", N_FF), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count", N_HEAD), 0);
        assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count_kv", N_HEAD_KV), 0);
    }
    for (int i = 0; i < s->n; i++) {
        int64_t ne[2] = {s->t[i].ne0, s->t[i].ne1};
        assert_true(gguf_writer_add_tensor(w, s->t[i].name, s->t[i].ne1 > 1 ? 2 : 1, ne, QT_F32,
                                           err) >= 0);
    }
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    for (int i = 0; i < s->n; i++)
        assert_int_equal(gguf_writer_write_tensor(w, s->t[i].data,
                                                  (uint64_t)(s->t[i].ne0 * s->t[i].ne1) * 4, err),
                         0);
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(voc);
}

static const char *adapted[] = {"blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output.weight"};
#define N_ADAPTED 3

/* Adapter factors for the weights above, and the merged copy of base. */
static void adapter_weights(tensor_set *base, tensor_set *lora, tensor_set *merged, float scale)
{
    for (int i = 0; i < base->n; i++) {
        tensor *t = add(merged, base->t[i].name, base->t[i].ne0, base->t[i].ne1, 0, 0);
        memcpy(t->data, base->t[i].data, (size_t)(t->ne0 * t->ne1) * sizeof(float));
    }
    for (int k = 0; k < N_ADAPTED; k++) {
        tensor *w = find(merged, adapted[k]);
        char n[64];
        snprintf(n, sizeof n, "%s.lora_a", adapted[k]);
        tensor *a = add(lora, n, w->ne0, RANK, 0.3f, 0);
        snprintf(n, sizeof n, "%s.lora_b", adapted[k]);
        tensor *b = add(lora, n, RANK, w->ne1, 0.3f, 0);
        /* W'[o][i] += scale * alpha/rank * sum_r B[o][r] A[r][i] */
        for (int64_t o = 0; o < w->ne1; o++)
            for (int64_t i = 0; i < w->ne0; i++) {
                double d = 0;
                for (int r = 0; r < RANK; r++)
                    d += (double)b->data[o * RANK + r] * a->data[r * w->ne0 + i];
                w->data[o * w->ne0 + i] += (float)(scale * ALPHA / RANK * d);
            }
    }
}

typedef struct fixture {
    char base[64], lora[64], merged[64], lora2[64];
    eng_model *mb, *mm;
} fixture;

#define SCALE 0.5f

static int setup(void **state)
{
    char err[256];
    gguf *voc;
    assert_int_equal(gguf_open(&voc, OUTPOST_SHARED "/models/stories260K.gguf", err), 0);
    uint64_t nv;
    assert_non_null(gguf_get_arr(voc, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &nv));
    n_vocab = (int32_t)nv;
    gguf_close(voc);

    fixture *f = calloc(1, sizeof *f);
    int pid = (int)getpid();
    snprintf(f->base, sizeof f->base, "/tmp/outpost-lora-base-%d.gguf", pid);
    snprintf(f->lora, sizeof f->lora, "/tmp/outpost-lora-a-%d.gguf", pid);
    snprintf(f->lora2, sizeof f->lora2, "/tmp/outpost-lora-b-%d.gguf", pid);
    snprintf(f->merged, sizeof f->merged, "/tmp/outpost-lora-merged-%d.gguf", pid);
    tensor_set *base = calloc(1, sizeof *base), *lora = calloc(1, sizeof *lora);
    tensor_set *merged = calloc(1, sizeof *merged), *lora2 = calloc(1, sizeof *lora2);
    tensor_set *unused = calloc(1, sizeof *unused);
    base_weights(base);
    adapter_weights(base, lora, merged, SCALE);
    adapter_weights(base, lora2, unused, SCALE);
    write_set(f->base, base, false, "llama", NULL);
    write_set(f->merged, merged, false, "llama", NULL);
    write_set(f->lora, lora, true, "llama", "adapter");
    write_set(f->lora2, lora2, true, "llama", "adapter");
    free_set(base);
    free_set(lora);
    free_set(merged);
    free_set(lora2);
    free_set(unused);
    free(base);
    free(lora);
    free(merged);
    free(lora2);
    free(unused);
    assert_int_equal(eng_model_open(&f->mb, f->base, err), 0);
    assert_int_equal(eng_model_open(&f->mm, f->merged, err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    eng_model_close(f->mb);
    eng_model_close(f->mm);
    unlink(f->base);
    unlink(f->lora);
    unlink(f->lora2);
    unlink(f->merged);
    free(f);
    return 0;
}

static const int32_t prompt[] = {1, 17, 250, 33, 400, 9, 77, 301};
#define N_PROMPT 8

/* Logits of the whole prompt (all positions) from a fresh context. */
static float *run(const eng_model *m, const eng_lora *l, float scale)
{
    char err[256];
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 32;
    p.n_threads = 2;
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, m, &p, err), 0);
    if (l)
        assert_int_equal(eng_ctx_set_loras(c, &l, &scale, 1, err), 0);
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
    float *out = malloc((size_t)N_PROMPT * (size_t)n_vocab * sizeof(float));
    for (int t = 0; t < N_PROMPT; t++)
        memcpy(out + (size_t)t * n_vocab, eng_logits(c, t), (size_t)n_vocab * sizeof(float));
    eng_ctx_free(c);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > worst)
            worst = fabs((double)a[i] - b[i]);
    return worst;
}

static void adapter_gives_the_merged_weights_logits(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_lora *l;
    assert_int_equal(eng_lora_open(&l, f->mb, f->lora, err), 0);
    assert_int_equal(eng_lora_n_pairs(l), N_ADAPTED);
    float *with = run(f->mb, l, SCALE), *merged = run(f->mm, NULL, 0), *base = run(f->mb, NULL, 0);
    size_t n = (size_t)N_PROMPT * (size_t)n_vocab;
    /* F32 weights throughout; only the summation order differs. */
    assert_true(max_diff(with, merged, n) < 2e-3);
    /* ... and the adapter really changed something. */
    assert_true(max_diff(with, base, n) > 1e-2);
    free(with);
    free(merged);
    free(base);
    eng_lora_close(l);
}

static void detach_scale_zero_and_swap_restore_the_base(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_lora *a, *b;
    assert_int_equal(eng_lora_open(&a, f->mb, f->lora, err), 0);
    assert_int_equal(eng_lora_open(&b, f->mb, f->lora2, err), 0);
    size_t n = (size_t)N_PROMPT * (size_t)n_vocab;
    float *base = run(f->mb, NULL, 0), *zero = run(f->mb, a, 0.0f);
    assert_memory_equal(base, zero, n * sizeof(float));

    /* One context: attach a, swap to b, detach, reattach a. */
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 64;
    p.n_threads = 1;
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, f->mb, &p, err), 0);
    float s = SCALE, *la = malloc((size_t)n_vocab * 4), *lb = malloc((size_t)n_vocab * 4);
    const eng_lora *const la_set[1] = {a}, *const lb_set[1] = {b};
    assert_int_equal(eng_ctx_set_loras(c, la_set, &s, 1, err), 0);
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, false, err), 0);
    memcpy(la, eng_logits(c, -1), (size_t)n_vocab * 4);
    eng_kv_truncate(c, 0);
    assert_int_equal(eng_ctx_set_loras(c, lb_set, &s, 1, err), 0);
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, false, err), 0);
    memcpy(lb, eng_logits(c, -1), (size_t)n_vocab * 4);
    assert_true(max_diff(la, lb, (size_t)n_vocab) > 1e-2);
    eng_kv_truncate(c, 0);
    assert_int_equal(eng_ctx_set_loras(c, NULL, NULL, 0, err), 0);
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, false, err), 0);
    assert_memory_equal(eng_logits(c, -1), base + (size_t)(N_PROMPT - 1) * n_vocab,
                        (size_t)n_vocab * 4);
    eng_kv_truncate(c, 0);
    assert_int_equal(eng_ctx_set_loras(c, la_set, &s, 1, err), 0);
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, false, err), 0);
    assert_memory_equal(eng_logits(c, -1), la, (size_t)n_vocab * 4);
    eng_ctx_free(c);
    free(la);
    free(lb);
    free(base);
    free(zero);
    eng_lora_close(a);
    eng_lora_close(b);
}

static void adapter_for_another_model_is_refused(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_lora *l;
    assert_int_equal(eng_lora_open(&l, f->mm, f->lora, err), 0); /* opened for the merged model */
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 16;
    p.n_threads = 1;
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, f->mb, &p, err), 0);
    const eng_lora *const set[1] = {l};
    assert_int_equal(eng_ctx_set_loras(c, set, NULL, 1, err), ENG_EUSAGE);
    assert_non_null(strstr(err, "not opened for this context's model"));
    eng_ctx_free(c);
    eng_lora_close(l);
}

static void expect_bad_adapter(fixture *f, tensor_set *s, const char *arch, const char *gtype,
                               const char *needle)
{
    char path[80], err[256];
    snprintf(path, sizeof path, "/tmp/outpost-lora-bad-%d.gguf", (int)getpid());
    write_set(path, s, true, arch, gtype);
    eng_lora *l = NULL;
    assert_int_equal(eng_lora_open(&l, f->mb, path, err), ENG_EFORMAT);
    assert_null(l);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    unlink(path);
    free_set(s);
}

static void malformed_adapters_are_refused_with_a_reason(void **state)
{
    fixture *f = *state;
    tensor_set *s = calloc(1, sizeof *s);
    add(s, "blk.0.attn_q.weight.lora_a", N_EMBD, RANK, 1, 0);
    add(s, "blk.0.attn_q.weight.lora_b", RANK, N_EMBD, 1, 0);
    expect_bad_adapter(f, s, "llama", "model", "not a LoRA adapter");
    add(s, "blk.0.attn_q.weight.lora_a", N_EMBD, RANK, 1, 0);
    add(s, "blk.0.attn_q.weight.lora_b", RANK, N_EMBD, 1, 0);
    expect_bad_adapter(f, s, "qwen2", "adapter", "architecture 'qwen2'");
    add(s, "blk.0.attn_q.weight.lora_a", N_EMBD, RANK, 1, 0);
    expect_bad_adapter(f, s, "llama", "adapter", "no partner");
    add(s, "blk.9.attn_q.weight.lora_a", N_EMBD, RANK, 1, 0);
    add(s, "blk.9.attn_q.weight.lora_b", RANK, N_EMBD, 1, 0);
    expect_bad_adapter(f, s, "llama", "adapter", "not a weight matrix of the model");
    add(s, "blk.0.attn_k.weight.lora_a", N_EMBD, RANK, 1, 0);
    add(s, "blk.0.attn_k.weight.lora_b", RANK, N_EMBD, 1, 0); /* attn_k has KV_DIM rows */
    expect_bad_adapter(f, s, "llama", "adapter", "expected [4, 32]");
    add(s, "blk.0.attn_q.weight.lora_x", N_EMBD, RANK, 1, 0);
    expect_bad_adapter(f, s, "llama", "adapter", "neither");
    expect_bad_adapter(f, s, "llama", "adapter", "no lora_a/lora_b pairs");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(adapter_gives_the_merged_weights_logits),
        cmocka_unit_test(detach_scale_zero_and_swap_restore_the_base),
        cmocka_unit_test(adapter_for_another_model_is_refused),
        cmocka_unit_test(malformed_adapters_are_refused_with_a_reason),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
