/*
 * test_attention.c - engine/attention.c on its own: a batch's attention
 * over a KV cache filled with random rows, against a plain double-precision
 * softmax written here, for F32, F16 and Q8_0 caches, with and without a
 * sliding window and logit soft-capping, for batches that start and end
 * inside key chunks and head sizes that are not whole vectors. And the
 * determinism attention.c promises: the same bits whatever the thread
 * count, and whether a batch's tokens are tiled together or each token is
 * attended alone.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model_impl.h"

typedef struct attn_case {
    qt_type type;
    int32_t head_dim, n_head, n_head_kv;
    int32_t n_past, n_tokens, window;
    float softcap;
} attn_case;

static uint32_t rng = 12345u;
static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

typedef struct fixture {
    const attn_case *ac;
    kv_cache kv;
    float *q; /* [n_tokens][n_head * head_dim] */
    attn_params a;
} fixture;

enum { LAYER = 1, N_LAYER = 2 };

static void fixture_init(fixture *f, const attn_case *ac)
{
    char err[256];
    memset(f, 0, sizeof *f);
    f->ac = ac;
    const int32_t hd = ac->head_dim, kv_dim = ac->n_head_kv * hd, q_dim = ac->n_head * hd;
    const int32_t n_ctx = ac->n_past + ac->n_tokens;
    assert_int_equal(kv_init(&f->kv, ac->type, N_LAYER, n_ctx, kv_dim, hd, err), 0);
    float *krow = malloc((size_t)kv_dim * sizeof(float)), *vrow = malloc((size_t)kv_dim * sizeof(float));
    for (int32_t l = 0; l < N_LAYER; l++)
        for (int32_t pos = 0; pos < n_ctx; pos++) {
            /* keys with a spread of sizes, so the softmax is not flat */
            for (int32_t d = 0; d < kv_dim; d++)
                krow[d] = 3.0f * frand();
            for (int32_t d = 0; d < kv_dim; d++)
                vrow[d] = frand();
            kv_store(&f->kv, l, pos, krow, vrow);
        }
    free(krow);
    free(vrow);
    f->q = malloc((size_t)ac->n_tokens * q_dim * sizeof(float));
    for (size_t i = 0; i < (size_t)ac->n_tokens * q_dim; i++)
        f->q[i] = frand();
    f->a = (attn_params){
        .layer = LAYER, .n_tokens = ac->n_tokens, .n_past = ac->n_past,
        .q = f->q, .q_stride = (size_t)q_dim, .out_stride = (size_t)q_dim,
        .n_head = ac->n_head, .n_head_kv = ac->n_head_kv, .head_dim = hd,
        .scale = 1.0f / sqrtf((float)hd), .softcap = ac->softcap, .window = ac->window,
    };
}

static void fixture_free(fixture *f)
{
    kv_release(&f->kv);
    free(f->q);
}

/* attn_run for tokens i0 .. i0 + n of the fixture's batch, on nth threads. */
static float *run(const fixture *f, int nth, int32_t i0, int32_t n, float *out)
{
    char err[256];
    pool *p;
    assert_int_equal(pool_new(&p, nth, err), 0);
    float *scratch = malloc((size_t)nth * attn_scratch_floats(f->kv.n_ctx, f->ac->head_dim) * sizeof(float));
    attn_params a = f->a;
    a.n_tokens = n;
    a.n_past = f->ac->n_past + i0;
    a.q = f->q + (size_t)i0 * a.q_stride;
    a.out = out + (size_t)i0 * a.out_stride;
    attn_run(p, &f->kv, scratch, &a);
    free(scratch);
    pool_free(p);
    return out;
}

/* The attention of token i, head h, in doubles: the query rounded as the
 * key type's dot product sees it, keys and values as the cache holds them. */
static void reference(const fixture *f, int32_t i, int32_t h, double *want)
{
    const attn_case *ac = f->ac;
    const int32_t hd = ac->head_dim, kvh = h / (ac->n_head / ac->n_head_kv);
    const qt_traits *kt = qt_get(ac->type), *qt = qt_get(kt->vec_dot_type);
    float *qf = malloc((size_t)hd * sizeof(float)), *room = malloc((size_t)hd * sizeof(float) * 2);
    float *kf = malloc((size_t)hd * sizeof(float)), *vf = malloc((size_t)hd * sizeof(float));
    const float *q = f->q + (size_t)i * f->a.q_stride + (size_t)h * hd;
    if (kt->vec_dot_type == QT_F32) {
        memcpy(qf, q, (size_t)hd * sizeof(float));
    } else {
        qt->from_float(q, room, hd);
        qt->to_float(room, qf, hd);
    }
    const int32_t pos = ac->n_past + i;
    const int32_t lo = ac->window > 0 && pos - ac->window + 1 > 0 ? pos - ac->window + 1 : 0;
    double *s = malloc((size_t)(pos + 1) * sizeof(double)), mx = -INFINITY, sum = 0;
    for (int32_t j = lo; j <= pos; j++) {
        kt->to_float(kv_k_head(&f->kv, LAYER, kvh, j), kf, hd);
        double dot = 0;
        for (int32_t d = 0; d < hd; d++)
            dot += (double)qf[d] * kf[d];
        dot *= f->a.scale;
        if (ac->softcap > 0)
            dot = ac->softcap * tanh(dot / ac->softcap);
        s[j] = dot;
        if (dot > mx)
            mx = dot;
    }
    for (int32_t d = 0; d < hd; d++)
        want[d] = 0;
    for (int32_t j = lo; j <= pos; j++) {
        const double e = exp(s[j] - mx);
        sum += e;
        kt->to_float(kv_v_head(&f->kv, LAYER, kvh, j), vf, hd);
        for (int32_t d = 0; d < hd; d++)
            want[d] += e * vf[d];
    }
    for (int32_t d = 0; d < hd; d++)
        want[d] /= sum;
    free(qf);
    free(room);
    free(kf);
    free(vf);
    free(s);
}

static const attn_case cases[] = {
    /* F32 keys, 8 heads on 2 KV heads, a batch from inside the second chunk
     * into the fourth; head size 40 (masked vector tails) */
    {QT_F32, 40, 8, 2, 50, 150, 0, 0.0f},
    /* F16, 6 heads on 3 (groups of 2), a 37-position sliding window */
    {QT_F16, 40, 6, 3, 0, 130, 37, 0.0f},
    /* Q8_0, 4 heads on 1, head size 96, soft-capped scores */
    {QT_Q8_0, 96, 4, 1, 65, 70, 0, 5.0f},
    /* a window wider than a key chunk: a row's chunks must not depend on
     * which other rows share its item */
    {QT_F32, 64, 8, 2, 10, 140, 100, 0.0f},
    /* one KV head per query head, a single token (decode) deep in the cache */
    {QT_F16, 64, 3, 3, 200, 1, 0, 0.0f},
};

static void matches_double_reference(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fixture f;
        fixture_init(&f, &cases[c]);
        const attn_case *ac = &cases[c];
        const int32_t q_dim = ac->n_head * ac->head_dim;
        float *out = calloc((size_t)ac->n_tokens * q_dim, sizeof(float));
        double *want = malloc((size_t)ac->head_dim * sizeof(double));
        run(&f, 2, 0, ac->n_tokens, out);
        double worst = 0;
        for (int32_t i = 0; i < ac->n_tokens; i++)
            for (int32_t h = 0; h < ac->n_head; h++) {
                reference(&f, i, h, want);
                const float *got = out + (size_t)i * q_dim + (size_t)h * ac->head_dim;
                for (int32_t d = 0; d < ac->head_dim; d++) {
                    const double e = fabs(got[d] - want[d]);
                    if (!(e <= worst)) /* NaN shows as the worst */
                        worst = e;
                }
            }
        if (!(worst < 1e-5))
            fail_msg("case %zu (%s): worst error %g against the double reference", c,
                     qt_type_name(ac->type), worst);
        free(out);
        free(want);
        fixture_free(&f);
    }
}

static void same_bits_for_any_threads_and_tiling(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fixture f;
        fixture_init(&f, &cases[c]);
        const attn_case *ac = &cases[c];
        const size_t bytes = (size_t)ac->n_tokens * ac->n_head * ac->head_dim * sizeof(float);
        float *one = run(&f, 1, 0, ac->n_tokens, malloc(bytes));
        for (int nth = 2; nth <= 5; nth += 3) {
            float *many = run(&f, nth, 0, ac->n_tokens, malloc(bytes));
            assert_memory_equal(one, many, bytes);
            free(many);
        }
        /* each token alone (items of one token), and the batch in odd pieces */
        float *alone = malloc(bytes), *pieces = malloc(bytes);
        for (int32_t i = 0; i < ac->n_tokens; i++)
            run(&f, 2, i, 1, alone);
        for (int32_t i = 0; i < ac->n_tokens; i += 7)
            run(&f, 3, i, ac->n_tokens - i < 7 ? ac->n_tokens - i : 7, pieces);
        assert_memory_equal(one, alone, bytes);
        assert_memory_equal(one, pieces, bytes);
        free(one);
        free(alone);
        free(pieces);
        fixture_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_double_reference),
        cmocka_unit_test(same_bits_for_any_threads_and_tiling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
