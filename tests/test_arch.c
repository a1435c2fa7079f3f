/*
 * test_arch.c - every supported architecture against a plain reference.
 *
 * For each architecture a tiny random-weight model (F32 weights, the
 * stories260K tokenizer) is written with the GGUF writer in the tensor names
 * and metadata keys llama.cpp's converters use, opened with eng_model_open,
 * and run through eng_eval. A forward pass written here in the most direct
 * way (double precision, one token at a time, no cache tricks) gives the
 * expected logits. Each architecture option is also switched off in the
 * reference to check that it changes the logits by far more than the
 * tolerance, so a test cannot pass with the option ignored.
 *
 * Tolerance: 2e-2 absolute on logits of magnitude 1..10, as in
 * test_model.c. The engine keeps K and V in F16 (a relative error of about
 * 5e-4 per element) and computes in float; the worst difference measured on
 * these models is 7e-3 (qwen2, qwen3), 2e-3 or less for the others.
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
#include "model_impl.h" /* the KV cache rows, for the context-shift test */

#define TOL 2e-2
enum { N_LAYER = 2, N_EMBD = 64, N_FF = 96, MAX_T = 96 };

/* One architecture under test, and the switches the reference follows. */
typedef struct arch_cfg {
    const char *label; /* test name suffix */
    const char *arch;  /* general.architecture */
    int n_head, n_head_kv, head_dim, n_rot;
    bool key_length;   /* write <arch>.attention.key_length */
    bool neox, qkv_bias, qk_norm, fused_qkv, fused_gate_up, post_norms, gelu, tied;
    float embd_scale, attn_scale, attn_softcap, final_softcap;
    int window;        /* on even layers */
    float freq_base, linear_factor, attn_factor;
    bool rope_freqs;   /* Llama 3 style rope_freqs.weight */
    bool longrope;     /* rope_factors_long/short, original context 32 */
    int n_ctx;         /* context the engine runs with */
} arch_cfg;

#define ORIG_CTX 32

static const arch_cfg cfg_llama3 = {
    .label = "llama3", .arch = "llama", .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_rot = 16,
    .embd_scale = 1, .attn_scale = 0.25f, .freq_base = 500000.0f, .rope_freqs = true, .n_ctx = 64,
};
static const arch_cfg cfg_llama_linear = {
    .label = "llama_linear", .arch = "llama", .n_head = 4, .n_head_kv = 4, .head_dim = 16,
    .n_rot = 16, .embd_scale = 1, .attn_scale = 0.25f, .freq_base = 10000.0f,
    .linear_factor = 4.0f, .n_ctx = 64,
};
static const arch_cfg cfg_qwen2 = {
    .label = "qwen2", .arch = "qwen2", .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_rot = 16,
    .neox = true, .qkv_bias = true, .tied = true, .embd_scale = 1, .attn_scale = 0.25f,
    .freq_base = 1000000.0f, .n_ctx = 64,
};
static const arch_cfg cfg_qwen3 = {
    .label = "qwen3", .arch = "qwen3", .n_head = 4, .n_head_kv = 2, .head_dim = 32, .n_rot = 32,
    .key_length = true, .neox = true, .qk_norm = true, .tied = true, .embd_scale = 1,
    .attn_scale = 0.17677669529663687f, .freq_base = 1000000.0f, .n_ctx = 64,
};
static const arch_cfg cfg_phi3 = {
    .label = "phi3", .arch = "phi3", .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_rot = 12,
    .neox = true, .fused_qkv = true, .fused_gate_up = true, .embd_scale = 1, .attn_scale = 0.25f,
    .freq_base = 10000.0f, .attn_factor = 1.25f, .longrope = true, .n_ctx = 64,
};
static const arch_cfg cfg_gemma2 = {
    .label = "gemma2", .arch = "gemma2", .n_head = 4, .n_head_kv = 2, .head_dim = 32, .n_rot = 32,
    .key_length = true, .neox = true, .post_norms = true, .gelu = true, .tied = true,
    .embd_scale = 8.0f, .attn_scale = 0.17677669529663687f, .attn_softcap = 3.0f,
    .final_softcap = 4.0f, .window = 5, .freq_base = 10000.0f, .n_ctx = 64,
};

/* ---- random weights and the model file ---------------------------------- */

typedef struct tensor {
    char name[48];
    int64_t ne0, ne1;
    float *data;
} tensor;

typedef struct ref_layer {
    float *attn_norm, *wq, *wk, *wv, *wqkv, *bq, *bk, *bv, *q_norm, *k_norm, *wo;
    float *post_attn, *ffn_norm, *wg, *wu, *wd, *post_ffw;
} ref_layer;

typedef struct ref_model {
    int n_vocab;
    tensor t[64];
    int n_t;
    float *embd, *out_norm, *output, *rope_freqs, *rope_long, *rope_short;
    ref_layer L[N_LAYER];
} ref_model;

static uint64_t rng_state = 2024;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* A tensor of ne1 rows of ne0 (ne1 1: a vector), offset + scale * U(-1, 1). */
static float *add(ref_model *r, const char *name, int64_t ne0, int64_t ne1, float scale,
                  float offset)
{
    assert_true(r->n_t < 64);
    tensor *t = &r->t[r->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->data = malloc((size_t)(ne0 * ne1) * sizeof(float));
    assert_non_null(t->data);
    for (int64_t i = 0; i < ne0 * ne1; i++)
        t->data[i] = frand() * scale + offset;
    return t->data;
}

static float *add_layer(ref_model *r, int l, const char *suffix, int64_t ne0, int64_t ne1,
                        float scale, float offset)
{
    char name[48];
    snprintf(name, sizeof name, "blk.%d.%s", l, suffix);
    return add(r, name, ne0, ne1, scale, offset);
}

static void make_model(const char *path, const arch_cfg *cf, ref_model *r)
{
    char err[256];
    gguf *voc;
    assert_int_equal(gguf_open(&voc, OUTPOST_SHARED "/models/stories260K.gguf", err), 0);
    uint64_t n_vocab;
    assert_non_null(gguf_get_arr(voc, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_vocab));
    memset(r, 0, sizeof *r);
    r->n_vocab = (int)n_vocab;
    const int64_t hd = cf->head_dim, q_dim = cf->n_head * hd, kv_dim = cf->n_head_kv * hd;

    r->embd = add(r, "token_embd.weight", N_EMBD, r->n_vocab, 1.0f, 0.0f);
    r->out_norm = add(r, "output_norm.weight", N_EMBD, 1, 0.2f, 1.0f);
    r->output = cf->tied ? r->embd : add(r, "output.weight", N_EMBD, r->n_vocab, 0.125f, 0.0f);
    if (cf->rope_freqs) /* divisors between 1 and 8, as Llama 3's are */
        r->rope_freqs = add(r, "rope_freqs.weight", cf->n_rot / 2, 1, 3.5f, 4.5f);
    if (cf->longrope) {
        r->rope_long = add(r, "rope_factors_long.weight", cf->n_rot / 2, 1, 2.0f, 3.0f);
        r->rope_short = add(r, "rope_factors_short.weight", cf->n_rot / 2, 1, 0.4f, 1.2f);
    }
    for (int l = 0; l < N_LAYER; l++) {
        ref_layer *L = &r->L[l];
        L->attn_norm = add_layer(r, l, "attn_norm.weight", N_EMBD, 1, 0.2f, 1.0f);
        if (cf->fused_qkv) {
            L->wqkv = add_layer(r, l, "attn_qkv.weight", N_EMBD, q_dim + 2 * kv_dim, 0.25f, 0);
            L->wq = L->wqkv;
            L->wk = L->wqkv + N_EMBD * q_dim;
            L->wv = L->wk + N_EMBD * kv_dim;
        } else {
            L->wq = add_layer(r, l, "attn_q.weight", N_EMBD, q_dim, 0.25f, 0);
            L->wk = add_layer(r, l, "attn_k.weight", N_EMBD, kv_dim, 0.25f, 0);
            L->wv = add_layer(r, l, "attn_v.weight", N_EMBD, kv_dim, 0.25f, 0);
        }
        if (cf->qkv_bias) {
            L->bq = add_layer(r, l, "attn_q.bias", q_dim, 1, 0.5f, 0);
            L->bk = add_layer(r, l, "attn_k.bias", kv_dim, 1, 0.5f, 0);
            L->bv = add_layer(r, l, "attn_v.bias", kv_dim, 1, 0.5f, 0);
        }
        if (cf->qk_norm) {
            L->q_norm = add_layer(r, l, "attn_q_norm.weight", hd, 1, 0.3f, 1.0f);
            L->k_norm = add_layer(r, l, "attn_k_norm.weight", hd, 1, 0.3f, 1.0f);
        }
        L->wo = add_layer(r, l, "attn_output.weight", q_dim, N_EMBD, 0.125f, 0);
        if (cf->post_norms)
            L->post_attn = add_layer(r, l, "post_attention_norm.weight", N_EMBD, 1, 0.3f, 1.0f);
        L->ffn_norm = add_layer(r, l, "ffn_norm.weight", N_EMBD, 1, 0.2f, 1.0f);
        if (cf->fused_gate_up) {
            L->wg = add_layer(r, l, "ffn_up.weight", N_EMBD, 2 * N_FF, 0.25f, 0);
            L->wu = L->wg + N_EMBD * N_FF;
        } else {
            L->wg = add_layer(r, l, "ffn_gate.weight", N_EMBD, N_FF, 0.25f, 0);
            L->wu = add_layer(r, l, "ffn_up.weight", N_EMBD, N_FF, 0.25f, 0);
        }
        L->wd = add_layer(r, l, "ffn_down.weight", N_FF, N_EMBD, 0.1f, 0);
        if (cf->post_norms)
            L->post_ffw = add_layer(r, l, "post_ffw_norm.weight", N_EMBD, 1, 0.3f, 1.0f);
    }

    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    char key[96];
#define KEY(s) (snprintf(key, sizeof key, "%s." s, cf->arch), key)
    assert_int_equal(gguf_writer_copy_kv(w, voc, "tokenizer."), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", cf->arch), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("context_length"), 256), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("embedding_length"), N_EMBD), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("block_count"), N_LAYER), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("feed_forward_length"), N_FF), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("attention.head_count"), cf->n_head), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), cf->n_head_kv), 0);
    assert_int_equal(gguf_writer_set_u32(w, KEY("rope.dimension_count"), cf->n_rot), 0);
    assert_int_equal(gguf_writer_set_f32(w, KEY("rope.freq_base"), cf->freq_base), 0);
    assert_int_equal(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f), 0);
    if (cf->key_length) {
        assert_int_equal(gguf_writer_set_u32(w, KEY("attention.key_length"), cf->head_dim), 0);
        assert_int_equal(gguf_writer_set_u32(w, KEY("attention.value_length"), cf->head_dim), 0);
    }
    if (cf->linear_factor > 0) {
        assert_int_equal(gguf_writer_set_str(w, KEY("rope.scaling.type"), "linear"), 0);
        assert_int_equal(gguf_writer_set_f32(w, KEY("rope.scaling.factor"), cf->linear_factor), 0);
    }
    if (cf->attn_factor > 0)
        assert_int_equal(gguf_writer_set_f32(w, KEY("rope.scaling.attn_factor"), cf->attn_factor),
                         0);
    if (cf->longrope)
        assert_int_equal(
            gguf_writer_set_u32(w, KEY("rope.scaling.original_context_length"), ORIG_CTX), 0);
    if (strcmp(cf->arch, "phi3") == 0) /* real Phi-3 files carry one; the engine ignores it */
        assert_int_equal(gguf_writer_set_u32(w, KEY("attention.sliding_window"), 3), 0);
    if (cf->attn_softcap > 0)
        assert_int_equal(gguf_writer_set_f32(w, KEY("attn_logit_softcapping"), cf->attn_softcap),
                         0);
    if (cf->final_softcap > 0)
        assert_int_equal(
            gguf_writer_set_f32(w, KEY("final_logit_softcapping"), cf->final_softcap), 0);
    if (cf->window > 0)
        assert_int_equal(gguf_writer_set_u32(w, KEY("attention.sliding_window"), cf->window), 0);
#undef KEY
    for (int i = 0; i < r->n_t; i++) {
        int64_t ne[2] = {r->t[i].ne0, r->t[i].ne1};
        assert_true(gguf_writer_add_tensor(w, r->t[i].name, r->t[i].ne1 > 1 ? 2 : 1, ne, QT_F32,
                                           err) >= 0);
    }
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    for (int i = 0; i < r->n_t; i++)
        assert_int_equal(gguf_writer_write_tensor(w, r->t[i].data,
                                                  (uint64_t)(r->t[i].ne0 * r->t[i].ne1) *
                                                      sizeof(float),
                                                  err),
                         0);
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(voc);
}

static void free_model(ref_model *r)
{
    for (int i = 0; i < r->n_t; i++)
        free(r->t[i].data);
}

/* ---- the reference forward pass ------------------------------------------ */

/* y[rows] = W x, W stored as rows of `cols` (GGUF ne0 = cols). */
static void matvec(const float *w, const double *x, double *y, int cols, int rows)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

static void rmsnorm(const double *x, const float *w, double *out, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + 1e-6);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * s * w[i];
}

/* Pair i turns by pos / factor_i * scale * base^(-2i/n_rot); NeoX pairs
 * dims (i, i + n_rot/2), the original Llama pairs (2i, 2i+1). */
static void rope(const arch_cfg *cf, const float *factors, double *v, int n_heads, int pos)
{
    const int half = cf->n_rot / 2;
    const double scale = cf->linear_factor > 0 ? 1.0 / cf->linear_factor : 1.0;
    const double m = cf->attn_factor > 0 ? cf->attn_factor : 1.0;
    for (int h = 0; h < n_heads; h++) {
        double *x = v + h * cf->head_dim;
        for (int i = 0; i < half; i++) {
            double th = pos * scale * pow(cf->freq_base, -2.0 * i / cf->n_rot);
            if (factors)
                th /= factors[i];
            double *a = cf->neox ? &x[i] : &x[2 * i], *b = cf->neox ? &x[i + half] : &x[2 * i + 1];
            double xa = *a, xb = *b;
            *a = m * (xa * cos(th) - xb * sin(th));
            *b = m * (xa * sin(th) + xb * cos(th));
        }
    }
}

static double act(const arch_cfg *cf, double g)
{
    if (cf->gelu)
        return 0.5 * g * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (g + 0.044715 * g * g * g)));
    return g / (1 + exp(-g));
}

/* Logits after each of the n tokens: out[n][n_vocab]. factors: the RoPE
 * divisors in force (rope_freqs, or LongRoPE's long or short set). */
static void ref_forward(const arch_cfg *cf, const ref_model *r, const float *factors,
                        const int32_t *toks, int n, double *out)
{
    const int hd = cf->head_dim, q_dim = cf->n_head * hd, kvd = cf->n_head_kv * hd;
    double *K = calloc((size_t)N_LAYER * n * kvd, sizeof(double));
    double *V = calloc((size_t)N_LAYER * n * kvd, sizeof(double));
    double x[N_EMBD], xb[N_EMBD], o[N_EMBD], g[N_FF], u[N_FF], q[256], att[256], sc[MAX_T];
    assert_true(K && V && q_dim <= 256 && n <= MAX_T);
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < N_EMBD; i++)
            x[i] = r->embd[(size_t)toks[t] * N_EMBD + i] * (double)cf->embd_scale;
        for (int l = 0; l < N_LAYER; l++) {
            const ref_layer *L = &r->L[l];
            double *k = K + ((size_t)l * n + t) * kvd, *v = V + ((size_t)l * n + t) * kvd;
            rmsnorm(x, L->attn_norm, xb, N_EMBD);
            matvec(L->wq, xb, q, N_EMBD, q_dim);
            matvec(L->wk, xb, k, N_EMBD, kvd);
            matvec(L->wv, xb, v, N_EMBD, kvd);
            if (cf->qkv_bias) {
                for (int i = 0; i < q_dim; i++)
                    q[i] += L->bq[i];
                for (int i = 0; i < kvd; i++) {
                    k[i] += L->bk[i];
                    v[i] += L->bv[i];
                }
            }
            if (cf->qk_norm) {
                for (int h = 0; h < cf->n_head; h++)
                    rmsnorm(q + h * hd, L->q_norm, q + h * hd, hd);
                for (int h = 0; h < cf->n_head_kv; h++)
                    rmsnorm(k + h * hd, L->k_norm, k + h * hd, hd);
            }
            rope(cf, factors, q, cf->n_head, t);
            rope(cf, factors, k, cf->n_head_kv, t);
            /* even layers slide: key j is seen from t iff t - j < window */
            const int first = cf->window > 0 && l % 2 == 0 && t - cf->window + 1 > 0
                                  ? t - cf->window + 1 : 0;
            for (int h = 0; h < cf->n_head; h++) {
                const int kh = h / (cf->n_head / cf->n_head_kv);
                double mx = -1e300, sum = 0;
                for (int j = first; j <= t; j++) {
                    const double *kj = K + ((size_t)l * n + j) * kvd + kh * hd;
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += q[h * hd + d] * kj[d];
                    s *= cf->attn_scale;
                    if (cf->attn_softcap > 0)
                        s = cf->attn_softcap * tanh(s / cf->attn_softcap);
                    sc[j] = s;
                    if (s > mx)
                        mx = s;
                }
                for (int j = first; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int d = 0; d < hd; d++) {
                    double a = 0;
                    for (int j = first; j <= t; j++)
                        a += sc[j] / sum * V[((size_t)l * n + j) * kvd + kh * hd + d];
                    att[h * hd + d] = a;
                }
            }
            matvec(L->wo, att, o, q_dim, N_EMBD);
            if (cf->post_norms)
                rmsnorm(o, L->post_attn, o, N_EMBD);
            for (int i = 0; i < N_EMBD; i++)
                x[i] += o[i];
            rmsnorm(x, L->ffn_norm, xb, N_EMBD);
            matvec(L->wg, xb, g, N_EMBD, N_FF);
            matvec(L->wu, xb, u, N_EMBD, N_FF);
            for (int i = 0; i < N_FF; i++)
                g[i] = act(cf, g[i]) * u[i];
            matvec(L->wd, g, o, N_FF, N_EMBD);
            if (cf->post_norms)
                rmsnorm(o, L->post_ffw, o, N_EMBD);
            for (int i = 0; i < N_EMBD; i++)
                x[i] += o[i];
        }
        rmsnorm(x, r->out_norm, xb, N_EMBD);
        double *lg = out + (size_t)t * r->n_vocab;
        matvec(r->output, xb, lg, N_EMBD, r->n_vocab);
        if (cf->final_softcap > 0)
            for (int i = 0; i < r->n_vocab; i++)
                lg[i] = cf->final_softcap * tanh(lg[i] / cf->final_softcap);
    }
    free(K);
    free(V);
}

/* ---- fixtures ------------------------------------------------------------ */

static const int32_t prompt[] = {1, 45, 300, 7, 99, 12, 500, 3, 250, 77, 18, 402, 5, 6, 311, 64};
#define N_PROMPT ((int)(sizeof prompt / sizeof prompt[0]))

typedef struct fixture {
    const arch_cfg *cf;
    char path[96];
    ref_model ref;
    eng_model *m;
    const float *factors; /* in force at cf->n_ctx */
    double *want;         /* [N_PROMPT][n_vocab] */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->cf = *state;
    snprintf(f->path, sizeof f->path, "/tmp/outpost-test-arch-%s-%d.gguf", f->cf->label,
             (int)getpid());
    make_model(f->path, f->cf, &f->ref);
    char err[256];
    int rc = eng_model_open(&f->m, f->path, err);
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    f->factors = f->ref.rope_freqs;
    if (f->cf->longrope)
        f->factors = f->cf->n_ctx > ORIG_CTX ? f->ref.rope_long : f->ref.rope_short;
    f->want = malloc((size_t)N_PROMPT * f->ref.n_vocab * sizeof(double));
    assert_non_null(f->want);
    ref_forward(f->cf, &f->ref, f->factors, prompt, N_PROMPT, f->want);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    eng_model_close(f->m);
    unlink(f->path);
    free_model(&f->ref);
    free(f->want);
    free(f);
    return 0;
}

static eng_ctx *new_ctx(const fixture *f, int n_threads, int n_ctx)
{
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = n_ctx;
    p.n_threads = n_threads;
    eng_ctx *c;
    char err[256];
    int rc = eng_ctx_new(&c, f->m, &p, err);
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    return c;
}

static double max_diff(const float *got, const double *want, int n)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= worst))
            worst = d; /* NaN sticks */
    }
    return worst;
}

static void assert_close(const fixture *f, const float *got, const double *want, int t)
{
    double d = max_diff(got, want, f->ref.n_vocab);
    if (!(d <= TOL))
        fail_msg("%s: logits of token %d differ from the reference by %g (tolerance %g)",
                 f->cf->label, t, d, TOL);
}

/* ---- tests --------------------------------------------------------------- */

static void batch_matches_reference(void **state)
{
    fixture *f = *state;
    eng_ctx *c = new_ctx(f, 2, f->cf->n_ctx);
    char err[256];
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
    for (int t = 0; t < N_PROMPT; t++)
        assert_close(f, eng_logits(c, t), f->want + (size_t)t * f->ref.n_vocab, t);
    eng_ctx_free(c);
}

static void token_by_token_matches_reference(void **state)
{
    fixture *f = *state;
    eng_ctx *c = new_ctx(f, 1, f->cf->n_ctx);
    char err[256];
    for (int t = 0; t < N_PROMPT; t++) {
        assert_int_equal(eng_eval(c, &prompt[t], 1, false, err), 0);
        assert_close(f, eng_logits(c, -1), f->want + (size_t)t * f->ref.n_vocab, t);
    }
    eng_ctx_free(c);
}

static void thread_count_does_not_change_logits(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_ctx *a = new_ctx(f, 1, f->cf->n_ctx), *b = new_ctx(f, 3, f->cf->n_ctx);
    assert_int_equal(eng_eval(a, prompt, N_PROMPT, true, err), 0);
    assert_int_equal(eng_eval(b, prompt, N_PROMPT, true, err), 0);
    for (int t = 0; t < N_PROMPT; t++)
        assert_memory_equal(eng_logits(a, t), eng_logits(b, t),
                            (size_t)f->ref.n_vocab * sizeof(float));
    eng_ctx_free(a);
    eng_ctx_free(b);
}

/* The reference with one option changed must miss the engine's logits by
 * far more than the tolerance: the option is really applied. */
static void expect_option_matters(const fixture *f, const float *got, const arch_cfg *alt,
                                  const float *factors, const char *what)
{
    double *other = malloc((size_t)N_PROMPT * f->ref.n_vocab * sizeof(double));
    assert_non_null(other);
    ref_forward(alt, &f->ref, factors, prompt, N_PROMPT, other);
    double worst = 0;
    for (int t = 0; t < N_PROMPT; t++) {
        double d = max_diff(got + (size_t)t * f->ref.n_vocab, other + (size_t)t * f->ref.n_vocab,
                            f->ref.n_vocab);
        if (!(d <= worst))
            worst = d;
    }
    free(other);
    if (!(worst > 10 * TOL) || isnan(worst))
        fail_msg("%s: without %s the logits change by only %g", f->cf->label, what, worst);
}

static void every_option_changes_the_logits(void **state)
{
    fixture *f = *state;
    const arch_cfg *cf = f->cf;
    eng_ctx *c = new_ctx(f, 2, cf->n_ctx);
    char err[256];
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
    float *got = malloc((size_t)N_PROMPT * f->ref.n_vocab * sizeof(float));
    assert_non_null(got);
    for (int t = 0; t < N_PROMPT; t++)
        memcpy(got + (size_t)t * f->ref.n_vocab, eng_logits(c, t),
               (size_t)f->ref.n_vocab * sizeof(float));
    eng_ctx_free(c);
    arch_cfg alt;
    int checked = 0;
#define OPTION(cond, field, value, what)                                                        \
    if (cond) {                                                                                 \
        alt = *cf;                                                                              \
        alt.field = value;                                                                      \
        expect_option_matters(f, got, &alt, f->factors, what);                                  \
        checked++;                                                                              \
    }
    OPTION(true, neox, !cf->neox, "its RoPE pairing")
    OPTION(cf->qkv_bias, qkv_bias, false, "Q/K/V biases")
    OPTION(cf->qk_norm, qk_norm, false, "Q/K norms")
    OPTION(cf->post_norms, post_norms, false, "post-norms")
    OPTION(cf->gelu, gelu, false, "GELU")
    OPTION(cf->embd_scale != 1, embd_scale, 1.0f, "the embedding scale")
    OPTION(cf->attn_softcap > 0, attn_softcap, 0.0f, "attention soft-capping")
    OPTION(cf->final_softcap > 0, final_softcap, 0.0f, "final soft-capping")
    OPTION(cf->window > 0, window, 0, "the sliding window")
    OPTION(cf->linear_factor > 0, linear_factor, 0.0f, "linear RoPE scaling")
    OPTION(cf->attn_factor > 0, attn_factor, 0.0f, "the RoPE attention factor")
#undef OPTION
    if (cf->n_rot < cf->head_dim) {
        /* rotate every dim; the extra pairs get no frequency divisor */
        float all[128];
        for (int i = 0; i < cf->head_dim / 2; i++)
            all[i] = f->factors && i < cf->n_rot / 2 ? f->factors[i] : 1.0f;
        alt = *cf;
        alt.n_rot = cf->head_dim;
        expect_option_matters(f, got, &alt, all, "partial rotary");
        checked++;
    }
    if (f->factors) {
        expect_option_matters(f, got, cf, NULL, "RoPE frequency factors");
        checked++;
    }
    if (cf->longrope) {
        expect_option_matters(f, got, cf, f->ref.rope_short, "the long LongRoPE factors");
        checked++;
    }
    assert_true(checked >= 2);
    free(got);
}

/* LongRoPE: a context within the original length uses the short factors. */
/* A context shift must leave the cache as a fresh evaluation of the kept
 * tokens would: in layer 0, K and V depend on the token alone (and K on its
 * position through RoPE), so after dropping positions 4..9 of 16 the shifted
 * cache's layer-0 rows must equal those of a context that evaluated tokens
 * 0..3 and 10..15 directly. V moves unchanged; K is re-rotated through F32,
 * so it may differ by one more F16 rounding. */
static void context_shift_matches_fresh_keys(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_ctx *a = new_ctx(f, 2, 32), *b = new_ctx(f, 2, 32);
    assert_int_equal(eng_eval(a, prompt, N_PROMPT, false, err), 0);
    assert_int_equal(eng_kv_shift(a, 4, 6, err), 0);
    int32_t kept[10];
    memcpy(kept, prompt, 4 * sizeof *kept);
    memcpy(kept + 4, prompt + 10, 6 * sizeof *kept);
    assert_int_equal(eng_eval(b, kept, 10, false, err), 0);
    assert_int_equal(eng_n_past(a), 10);
    const kv_cache *ka = &a->kv, *kb = &b->kv;
    const qt_traits *tr = qt_get(ka->type);
    const int32_t hd = ka->head_dim;
    float *x = malloc((size_t)hd * sizeof(float)), *y = malloc((size_t)hd * sizeof(float));
    for (int32_t p = 0; p < 10; p++)
        for (int32_t h = 0; h < ka->n_head_kv; h++) {
            assert_memory_equal(kv_v_head(ka, 0, h, p), kv_v_head(kb, 0, h, p), ka->head_bytes);
            tr->to_float(kv_k_head(ka, 0, h, p), x, hd);
            tr->to_float(kv_k_head(kb, 0, h, p), y, hd);
            for (int32_t d = 0; d < hd; d++)
                if (fabsf(x[d] - y[d]) > 2e-3f * (1.0f + fabsf(y[d])))
                    fail_msg("position %d head %d dim %d: shifted key %g, fresh key %g", p, h, d, x[d], y[d]);
        }
    free(x);
    free(y);
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void short_context_uses_short_factors(void **state)
{
    fixture *f = *state;
    assert_true(f->cf->longrope);
    double *want = malloc((size_t)N_PROMPT * f->ref.n_vocab * sizeof(double));
    assert_non_null(want);
    ref_forward(f->cf, &f->ref, f->ref.rope_short, prompt, N_PROMPT, want);
    eng_ctx *c = new_ctx(f, 2, ORIG_CTX);
    char err[256];
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
    for (int t = 0; t < N_PROMPT; t++)
        assert_close(f, eng_logits(c, t), want + (size_t)t * f->ref.n_vocab, t);
    eng_ctx_free(c);
    free(want);
}

static void hparams_describe_the_architecture(void **state)
{
    fixture *f = *state;
    const arch_cfg *cf = f->cf;
    const eng_hparams *hp = eng_model_hparams(f->m);
    assert_string_equal(hp->arch_name, cf->arch);
    assert_int_equal(hp->head_dim, cf->head_dim);
    assert_int_equal(hp->n_rot, cf->n_rot);
    assert_int_equal(hp->rope_neox, cf->neox);
    assert_int_equal(hp->tied_output, cf->tied);
    assert_true(fabsf(hp->attn_scale - cf->attn_scale) < 1e-6f);
    assert_int_equal(hp->ffn_act, cf->gelu ? ENG_ACT_GELU : ENG_ACT_SILU);
    assert_int_equal(hp->swa_window, cf->window); /* phi3's sliding_window is ignored */
}

/* ---- loading errors ------------------------------------------------------ */

/* Writes cf's model, copies it with one change and expects eng_model_open to
 * fail with a message containing want. */
static void expect_open_error(const arch_cfg *cf, const char *arch, const char *drop_tensor,
                              const char *want)
{
    char err[256], path[96];
    snprintf(path, sizeof path, "/tmp/outpost-test-arch-bad-%d.gguf", (int)getpid());
    ref_model r;
    make_model(path, cf, &r);
    gguf *g;
    assert_int_equal(gguf_open(&g, path, err), 0);
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(gguf_writer_copy_kv(w, g, ""), 0);
    if (arch)
        assert_int_equal(gguf_writer_set_str(w, "general.architecture", arch), 0);
    char path2[112];
    snprintf(path2, sizeof path2, "%s.2", path);
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (drop_tensor && strcmp(t->name, drop_tensor) == 0)
            continue;
        assert_true(gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, (qt_type)t->type, err) >=
                    0);
    }
    assert_int_equal(gguf_writer_begin(w, path2, err), 0);
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (drop_tensor && strcmp(t->name, drop_tensor) == 0)
            continue;
        assert_int_equal(gguf_writer_write_tensor(w, t->data, t->size_bytes, err), 0);
    }
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(g);
    eng_model *m = NULL;
    assert_int_equal(eng_model_open(&m, path2, err), ENG_EFORMAT);
    assert_null(m);
    if (!strstr(err, want))
        fail_msg("error '%s' does not say '%s'", err, want);
    assert_null(strchr(err, '\n'));
    unlink(path);
    unlink(path2);
    free_model(&r);
}

static void unknown_architecture_lists_the_supported_ones(void **state)
{
    (void)state;
    expect_open_error(&cfg_qwen2, "mamba", NULL,
                      "architecture 'mamba' is not supported (supported: llama, qwen2, qwen3, "
                      "phi3, gemma2)");
}

static void qwen2_without_its_bias_is_refused(void **state)
{
    (void)state;
    expect_open_error(&cfg_qwen2, NULL, "blk.1.attn_k.bias",
                      "tensor 'blk.1.attn_k.bias' is missing");
}

static void qwen3_without_its_k_norm_is_refused(void **state)
{
    (void)state;
    expect_open_error(&cfg_qwen3, NULL, "blk.0.attn_k_norm.weight",
                      "tensor 'blk.0.attn_k_norm.weight' is missing");
}

/* The five behaviours every architecture must show, named after it. */
#define ARCH_TEST(cfg, fn)                                                                     \
    {.name = #cfg ": " #fn, .test_func = fn, .setup_func = setup, .teardown_func = teardown,   \
     .initial_state = (void *)&cfg}
#define ARCH_TESTS(cfg)                                                                        \
    ARCH_TEST(cfg, batch_matches_reference), ARCH_TEST(cfg, token_by_token_matches_reference), \
    ARCH_TEST(cfg, thread_count_does_not_change_logits),                                      \
    ARCH_TEST(cfg, every_option_changes_the_logits),                                          \
    ARCH_TEST(cfg, hparams_describe_the_architecture),                                        \
    ARCH_TEST(cfg, context_shift_matches_fresh_keys)

int main(void)
{
    const struct CMUnitTest tests[] = {
        ARCH_TESTS(cfg_llama3),
        ARCH_TESTS(cfg_llama_linear),
        ARCH_TESTS(cfg_qwen2),
        ARCH_TESTS(cfg_qwen3),
        ARCH_TESTS(cfg_phi3),
        ARCH_TESTS(cfg_gemma2),
        ARCH_TEST(cfg_phi3, short_context_uses_short_factors),
        cmocka_unit_test(unknown_architecture_lists_the_supported_ones),
        cmocka_unit_test(qwen2_without_its_bias_is_refused),
        cmocka_unit_test(qwen3_without_its_k_norm_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
