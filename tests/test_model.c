/*
 * test_model.c - the Llama forward pass against a plain reference.
 *
 * Each test writes a tiny random-weight Llama model (F32 weights, the
 * stories260K tokenizer) with the GGUF writer, runs it through the engine,
 * and compares with a forward pass written here in the most direct way
 * (double precision, no batching, no threads, no cache tricks).
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
#include "ops.h"

enum { N_EMBD = 64, N_LAYER = 2, N_HEAD = 8, N_HEAD_KV = 2, N_FF = 96, HEAD_DIM = N_EMBD / N_HEAD };
#define ROPE_BASE 10000.0f
#define EPS 1e-5f

typedef struct ref_model {
    int n_vocab;
    float *embd, *out_norm, *output;
    float *attn_norm[N_LAYER], *wq[N_LAYER], *wk[N_LAYER], *wv[N_LAYER], *wo[N_LAYER];
    float *ffn_norm[N_LAYER], *wg[N_LAYER], *wu[N_LAYER], *wd[N_LAYER];
} ref_model;

static uint64_t rng_state = 12345;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *rand_mat(size_t n, float scale)
{
    float *m = malloc(n * sizeof *m);
    assert_non_null(m);
    for (size_t i = 0; i < n; i++)
        m[i] = frand() * scale;
    return m;
}

static void add(gguf_writer *w, const char *name, int64_t ne0, int64_t ne1, char *err)
{
    int64_t ne[2] = {ne0, ne1};
    assert_true(gguf_writer_add_tensor(w, name, ne1 > 1 ? 2 : 1, ne, QT_F32, err) >= 0);
}

/* Writes the model file and fills the reference weights. */
static void make_model(const char *path, ref_model *r)
{
    char err[256];
    gguf *voc;
    assert_int_equal(gguf_open(&voc, OUTPOST_SHARED "/models/stories260K.gguf", err), 0);
    uint64_t n_vocab;
    assert_non_null(gguf_get_arr(voc, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_vocab));
    r->n_vocab = (int)n_vocab;
    const int64_t kvd = N_HEAD_KV * HEAD_DIM;
    r->embd = rand_mat((size_t)N_EMBD * n_vocab, 1.0f);
    r->out_norm = rand_mat(N_EMBD, 0.2f);
    for (int i = 0; i < N_EMBD; i++)
        r->out_norm[i] += 1.0f;
    r->output = rand_mat((size_t)N_EMBD * n_vocab, 0.125f);
    for (int l = 0; l < N_LAYER; l++) {
        r->attn_norm[l] = rand_mat(N_EMBD, 0.2f);
        r->ffn_norm[l] = rand_mat(N_EMBD, 0.2f);
        for (int i = 0; i < N_EMBD; i++) {
            r->attn_norm[l][i] += 1.0f;
            r->ffn_norm[l][i] += 1.0f;
        }
        r->wq[l] = rand_mat((size_t)N_EMBD * N_EMBD, 0.25f);
        r->wk[l] = rand_mat((size_t)N_EMBD * kvd, 0.25f);
        r->wv[l] = rand_mat((size_t)N_EMBD * kvd, 0.25f);
        r->wo[l] = rand_mat((size_t)N_EMBD * N_EMBD, 0.125f);
        r->wg[l] = rand_mat((size_t)N_EMBD * N_FF, 0.25f);
        r->wu[l] = rand_mat((size_t)N_EMBD * N_FF, 0.25f);
        r->wd[l] = rand_mat((size_t)N_FF * N_EMBD, 0.1f);
    }

    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(gguf_writer_copy_kv(w, voc, "tokenizer."), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.context_length", 256), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.embedding_length", N_EMBD), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.block_count", N_LAYER), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.feed_forward_length", N_FF), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count", N_HEAD), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count_kv", N_HEAD_KV), 0);
    assert_int_equal(gguf_writer_set_f32(w, "llama.rope.freq_base", ROPE_BASE), 0);
    assert_int_equal(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", EPS), 0);
    add(w, "token_embd.weight", N_EMBD, r->n_vocab, err);
    add(w, "output_norm.weight", N_EMBD, 1, err);
    add(w, "output.weight", N_EMBD, r->n_vocab, err);
    for (int l = 0; l < N_LAYER; l++) {
        char n[64];
#define ADD(s, a, b) (snprintf(n, sizeof n, "blk.%d." s ".weight", l), add(w, n, a, b, err))
        ADD("attn_norm", N_EMBD, 1);
        ADD("attn_q", N_EMBD, N_EMBD);
        ADD("attn_k", N_EMBD, kvd);
        ADD("attn_v", N_EMBD, kvd);
        ADD("attn_output", N_EMBD, N_EMBD);
        ADD("ffn_norm", N_EMBD, 1);
        ADD("ffn_gate", N_EMBD, N_FF);
        ADD("ffn_up", N_EMBD, N_FF);
        ADD("ffn_down", N_FF, N_EMBD);
#undef ADD
    }
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
#define PUT(p, n) assert_int_equal(gguf_writer_write_tensor(w, p, (n) * sizeof(float), err), 0)
    PUT(r->embd, (size_t)N_EMBD * r->n_vocab);
    PUT(r->out_norm, N_EMBD);
    PUT(r->output, (size_t)N_EMBD * r->n_vocab);
    for (int l = 0; l < N_LAYER; l++) {
        PUT(r->attn_norm[l], N_EMBD);
        PUT(r->wq[l], N_EMBD * N_EMBD);
        PUT(r->wk[l], N_EMBD * kvd);
        PUT(r->wv[l], N_EMBD * kvd);
        PUT(r->wo[l], N_EMBD * N_EMBD);
        PUT(r->ffn_norm[l], N_EMBD);
        PUT(r->wg[l], N_EMBD * N_FF);
        PUT(r->wu[l], N_EMBD * N_FF);
        PUT(r->wd[l], N_FF * N_EMBD);
    }
#undef PUT
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(voc);
}

static void free_model(ref_model *r)
{
    free(r->embd);
    free(r->out_norm);
    free(r->output);
    for (int l = 0; l < N_LAYER; l++) {
        free(r->attn_norm[l]);
        free(r->wq[l]);
        free(r->wk[l]);
        free(r->wv[l]);
        free(r->wo[l]);
        free(r->ffn_norm[l]);
        free(r->wg[l]);
        free(r->wu[l]);
        free(r->wd[l]);
    }
}

/* y[rows] = W x, W stored as rows of `cols` (GGUF ne0 = cols). */
static void ref_matvec(const float *w, const double *x, double *y, int cols, int rows)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

static void ref_rmsnorm(const double *x, const float *w, double *out, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + EPS);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void ref_rope(double *v, int n_heads, int pos)
{
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < HEAD_DIM / 2; i++) {
            double th = pos * pow(ROPE_BASE, -2.0 * i / HEAD_DIM);
            double *p = v + h * HEAD_DIM + 2 * i, a = p[0], b = p[1];
            p[0] = a * cos(th) - b * sin(th);
            p[1] = a * sin(th) + b * cos(th);
        }
}

/* Logits after each of the n tokens: out[n][n_vocab]. */
static void ref_forward(const ref_model *r, const int32_t *toks, int n, double *out)
{
    const int kvd = N_HEAD_KV * HEAD_DIM;
    double *K = calloc((size_t)N_LAYER * n * kvd, sizeof(double));
    double *V = calloc((size_t)N_LAYER * n * kvd, sizeof(double));
    double x[N_EMBD], xb[N_EMBD], q[N_EMBD], att[N_EMBD], o[N_EMBD], g[N_FF], u[N_FF];
    double *sc = malloc((size_t)n * sizeof(double));
    assert_true(K && V && sc);
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < N_EMBD; i++)
            x[i] = r->embd[(size_t)toks[t] * N_EMBD + i];
        for (int l = 0; l < N_LAYER; l++) {
            double *k = K + ((size_t)l * n + t) * kvd, *v = V + ((size_t)l * n + t) * kvd;
            ref_rmsnorm(x, r->attn_norm[l], xb, N_EMBD);
            ref_matvec(r->wq[l], xb, q, N_EMBD, N_EMBD);
            ref_matvec(r->wk[l], xb, k, N_EMBD, kvd);
            ref_matvec(r->wv[l], xb, v, N_EMBD, kvd);
            ref_rope(q, N_HEAD, t);
            ref_rope(k, N_HEAD_KV, t);
            for (int h = 0; h < N_HEAD; h++) {
                int kh = h / (N_HEAD / N_HEAD_KV);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const double *kj = K + ((size_t)l * n + j) * kvd + kh * HEAD_DIM;
                    double s = 0;
                    for (int d = 0; d < HEAD_DIM; d++)
                        s += q[h * HEAD_DIM + d] * kj[d];
                    sc[j] = s / sqrt((double)HEAD_DIM);
                    if (sc[j] > mx)
                        mx = sc[j];
                }
                for (int j = 0; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int d = 0; d < HEAD_DIM; d++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += sc[j] / sum * V[((size_t)l * n + j) * kvd + kh * HEAD_DIM + d];
                    att[h * HEAD_DIM + d] = a;
                }
            }
            ref_matvec(r->wo[l], att, o, N_EMBD, N_EMBD);
            for (int i = 0; i < N_EMBD; i++)
                x[i] += o[i];
            ref_rmsnorm(x, r->ffn_norm[l], xb, N_EMBD);
            ref_matvec(r->wg[l], xb, g, N_EMBD, N_FF);
            ref_matvec(r->wu[l], xb, u, N_EMBD, N_FF);
            for (int i = 0; i < N_FF; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            ref_matvec(r->wd[l], g, o, N_FF, N_EMBD);
            for (int i = 0; i < N_EMBD; i++)
                x[i] += o[i];
        }
        ref_rmsnorm(x, r->out_norm, xb, N_EMBD);
        ref_matvec(r->output, xb, out + (size_t)t * r->n_vocab, N_EMBD, r->n_vocab);
    }
    free(K);
    free(V);
    free(sc);
}

typedef struct fixture {
    char path[64];
    ref_model ref;
    eng_model *m;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->path, sizeof f->path, "/tmp/outpost-test-model-%d.gguf", (int)getpid());
    make_model(f->path, &f->ref);
    char err[256];
    int rc = eng_model_open(&f->m, f->path, err);
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    eng_model_close(f->m);
    unlink(f->path);
    free_model(&f->ref);
    free(f);
    return 0;
}

static const int32_t prompt[] = {1, 45, 300, 7, 99, 12, 500, 3, 250, 77, 18, 402, 5, 6, 311, 64};
#define N_PROMPT ((int)(sizeof prompt / sizeof prompt[0]))

static eng_ctx *new_ctx(const eng_model *m, int n_threads, int n_batch)
{
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 64;
    p.n_threads = n_threads;
    p.n_batch = n_batch;
    eng_ctx *c;
    char err[256];
    assert_int_equal(eng_ctx_new(&c, m, &p, err), 0);
    return c;
}

/* The F16 KV cache costs about 3 decimal digits; logits are O(1..10). */
static void assert_close(const float *got, const double *want, int n, double tol)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (d > worst)
            worst = d;
    }
    if (worst > tol)
        fail_msg("logits differ from the reference by %g (tolerance %g)", worst, tol);
}

static void forward_batch_matches_reference(void **state)
{
    fixture *f = *state;
    const int nv = f->ref.n_vocab;
    double *want = malloc((size_t)N_PROMPT * nv * sizeof(double));
    ref_forward(&f->ref, prompt, N_PROMPT, want);
    eng_ctx *c = new_ctx(f->m, 2, 512);
    char err[256];
    assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
    assert_int_equal(eng_n_past(c), N_PROMPT);
    for (int t = 0; t < N_PROMPT; t++)
        assert_close(eng_logits(c, t), want + (size_t)t * nv, nv, 2e-2);
    eng_ctx_free(c);
    free(want);
}

static void forward_token_by_token_matches_reference(void **state)
{
    fixture *f = *state;
    const int nv = f->ref.n_vocab;
    double *want = malloc((size_t)N_PROMPT * nv * sizeof(double));
    ref_forward(&f->ref, prompt, N_PROMPT, want);
    eng_ctx *c = new_ctx(f->m, 1, 512);
    char err[256];
    for (int t = 0; t < N_PROMPT; t++) {
        assert_int_equal(eng_eval(c, &prompt[t], 1, false, err), 0);
        assert_close(eng_logits(c, -1), want + (size_t)t * nv, nv, 2e-2);
    }
    eng_ctx_free(c);
    free(want);
}

/* Splitting the prompt into several passes (n_batch 5) gives what one pass gives. */
static void small_batches_match_one_batch(void **state)
{
    fixture *f = *state;
    const int nv = f->ref.n_vocab;
    eng_ctx *a = new_ctx(f->m, 2, 512), *b = new_ctx(f->m, 2, 5);
    char err[256];
    assert_int_equal(eng_eval(a, prompt, N_PROMPT, true, err), 0);
    assert_int_equal(eng_eval(b, prompt, N_PROMPT, true, err), 0);
    for (int t = 0; t < N_PROMPT; t++) {
        const float *x = eng_logits(a, t), *y = eng_logits(b, t);
        for (int i = 0; i < nv; i++)
            assert_true(fabsf(x[i] - y[i]) < 1e-3f);
    }
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void thread_count_does_not_change_logits(void **state)
{
    fixture *f = *state;
    const int nv = f->ref.n_vocab;
    char err[256];
    eng_ctx *c1 = new_ctx(f->m, 1, 512);
    assert_int_equal(eng_eval(c1, prompt, N_PROMPT, true, err), 0);
    for (int nth = 2; nth <= 5; nth++) {
        eng_ctx *c = new_ctx(f->m, nth, 512);
        assert_int_equal(eng_eval(c, prompt, N_PROMPT, true, err), 0);
        for (int t = 0; t < N_PROMPT; t++)
            assert_memory_equal(eng_logits(c, t), eng_logits(c1, t), (size_t)nv * sizeof(float));
        eng_ctx_free(c);
    }
    eng_ctx_free(c1);
}

static void full_context_is_refused_and_kept(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 8;
    p.n_threads = 1;
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, f->m, &p, err), 0);
    assert_int_equal(eng_eval(c, prompt, 6, false, err), 0);
    assert_int_equal(eng_eval(c, prompt, 3, false, err), ENG_ECTXFULL);
    assert_non_null(strstr(err, "do not fit"));
    assert_int_equal(eng_n_past(c), 6);
    assert_int_equal(eng_eval(c, prompt, 2, false, err), 0);
    assert_int_equal(eng_n_past(c), 8);
    eng_ctx_free(c);
}

static void bad_token_id_is_an_error(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_ctx *c = new_ctx(f->m, 1, 512);
    int32_t bad[2] = {1, 100000};
    assert_int_equal(eng_eval(c, bad, 2, false, err), ENG_EUSAGE);
    assert_non_null(strstr(err, "100000"));
    assert_int_equal(eng_n_past(c), 0);
    eng_ctx_free(c);
}

/* A context shift re-rotates each moved key by -n_discard; that is right
 * only if RoPE rotations compose: rotate(37) then rotate(-12) == rotate(25). */
static void rope_rotations_compose(void **state)
{
    (void)state;
    float x[2 * HEAD_DIM], y[2 * HEAD_DIM];
    for (int i = 0; i < 2 * HEAD_DIM; i++)
        x[i] = y[i] = frand();
    ops_rope(x, 2, HEAD_DIM, HEAD_DIM, 37, ROPE_BASE);
    ops_rope(x, 2, HEAD_DIM, HEAD_DIM, -12, ROPE_BASE);
    ops_rope(y, 2, HEAD_DIM, HEAD_DIM, 25, ROPE_BASE);
    for (int i = 0; i < 2 * HEAD_DIM; i++)
        assert_true(fabsf(x[i] - y[i]) < 1e-5f);
}

static void context_shift_frees_positions(void **state)
{
    fixture *f = *state;
    char err[256];
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = 16;
    p.n_threads = 2;
    eng_ctx *c;
    assert_int_equal(eng_ctx_new(&c, f->m, &p, err), 0);
    assert_int_equal(eng_eval(c, prompt, 16, false, err), 0);
    assert_int_equal(eng_kv_shift(c, 4, 6, err), 0);
    assert_int_equal(eng_n_past(c), 10);
    assert_int_equal(eng_eval(c, prompt, 6, false, err), 0);
    assert_int_equal(eng_n_past(c), 16);
    const float *l = eng_logits(c, -1);
    for (int i = 0; i < f->ref.n_vocab; i++)
        assert_true(isfinite(l[i]));
    assert_int_equal(eng_kv_shift(c, 10, 7, err), ENG_EUSAGE);
    eng_ctx_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forward_batch_matches_reference),
        cmocka_unit_test(forward_token_by_token_matches_reference),
        cmocka_unit_test(small_batches_match_one_batch),
        cmocka_unit_test(thread_count_does_not_change_logits),
        cmocka_unit_test(full_context_is_refused_and_kept),
        cmocka_unit_test(bad_token_id_is_an_error),
        cmocka_unit_test(rope_rotations_compose),
        cmocka_unit_test(context_shift_frees_positions),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
