/*
 * attention.c - causal grouped-query attention over the KV cache.
 *
 * Query token i of a batch sits at position n_past + i and attends to cache
 * positions max(0, pos - window + 1) .. pos (the whole prefix when window is
 * 0). Work is split across threads by (token, group of query heads sharing
 * one KV head): a work item reads each key and value row of its KV head
 * once for all its heads (a value row is converted to float once, not once
 * per head), which matters for prompts, where every token of the batch
 * reads the whole prefix. With too few items for the threads (decode, few
 * KV heads) items shrink to fewer heads, down to one.
 *
 * Keys are scored ATT_CHUNK at a time with a running maximum and sum per
 * head (online softmax): each chunk's exponentials are taken against the
 * largest score so far, and the output and sum collected so far are
 * rescaled when the maximum grows. So scratch is a fixed ATT_MAX_HEADS x
 * ATT_CHUNK scores per thread whatever the context length, and a prompt
 * never materialises an n x n score matrix. Every output row is computed by
 * one thread in a fixed order, so the result does not depend on the thread
 * count.
 *
 * Keys and values are read through the cache type's row of the qt_ table:
 * the query is converted to the key type's vec_dot_type (F16 for an F16
 * cache, Q8_0 blocks for a Q8_0 cache), so the score dot product is the same
 * kernel the weight matmuls use. Where the CPU has AVX-512 each chunk's key
 * rows are converted to float once per work item instead (like the values)
 * and scored against all the item's heads in one pass
 * (attn_scores_avx512: one load of a key row for up to 8 heads, instead of
 * a vec_dot call per head and key); the query meets them as the vec_dot
 * would see it (converted and back), so only the summation order differs.
 * The exponentials go through ops_exp_sum (a vector exp). Items are taken
 * in token order 0, n-1, 1, n-2, ... so that the split of a prompt across
 * threads is balanced (a late token reads more keys than an early one). Each chunk's value rows are converted to
 * float once per work item, and each head's output gathers them as a sum of
 * scaled rows vectorised across the head dimension (attn_accum: no float
 * reduction, so the compiler vectorises it without reassociating; on x86-64
 * a clone compiled for AVX2 is used when the CPU has AVX2 and FMA, which
 * differs from the portable one at most by a multiply-add contracted into
 * an FMA, and one for AVX-512 that fuses every one).
 */
#include <math.h>
#include <string.h>

#include "model_impl.h"
#include "ops.h"

#define ATT_CHUNK 128    /* keys scored per pass */
#define ATT_MAX_HEADS 8  /* query heads per work item */

/* out[d] += sum over j of p[j] v[j][d], j < c, d < hd. Defined twice on
 * x86-64: portable, and compiled for AVX2. */
#define ATT_ACCUM(SUFFIX, ATTR)                                                                    \
    ATTR static void attn_accum##SUFFIX(float *restrict out, const float *restrict p,              \
                                        const float *restrict v, int32_t hd, int32_t c)            \
    {                                                                                              \
        for (int32_t j = 0; j < c; j++) {                                                          \
            const float pj = p[j];                                                                 \
            const float *vr = v + (size_t)j * hd;                                                  \
            for (int32_t d = 0; d < hd; d++)                                                       \
                out[d] += pj * vr[d];                                                              \
        }                                                                                          \
    }

ATT_ACCUM(_c, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ATT_HAVE_AVX2 1
ATT_ACCUM(_avx2, __attribute__((target("avx2,fma"))))
#endif

typedef void (*attn_accum_fn)(float *restrict, const float *restrict, const float *restrict, int32_t,
                              int32_t);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ATT_HAVE_AVX512 1
/* sc[h][j] = q[h] . k[j] for h < hg, j < c: each key row is loaded once for
 * all the item's heads, 16 dims per FMA, one horizontal sum per score. */
__attribute__((target("avx512f"))) static void attn_scores_avx512(float *restrict sc, const float *restrict q,
                                                                   const float *restrict k, int32_t hg,
                                                                   int32_t hd, int32_t c)
{
    for (int32_t j = 0; j < c; j++) {
        const float *kr = k + (size_t)j * hd;
        __m512 acc[ATT_MAX_HEADS];
        for (int32_t h = 0; h < hg; h++)
            acc[h] = _mm512_setzero_ps();
        for (int32_t d = 0; d < hd; d += 16) {
            const __mmask16 m = hd - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - d)) - 1u);
            const __m512 kv = _mm512_maskz_loadu_ps(m, kr + d);
            for (int32_t h = 0; h < hg; h++)
                acc[h] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + (size_t)h * hd + d), kv, acc[h]);
        }
        for (int32_t h = 0; h < hg; h++)
            sc[h * ATT_CHUNK + j] = _mm512_reduce_add_ps(acc[h]);
    }
}

/* attn_accum with the head's outputs held in up to four zmm (64 dims) while
 * the chunk's value rows stream past: each output element gets the
 * multiply-adds of attn_accum_c in the same order, each fused into one FMA.
 * Against the AVX2 clone: 2.9% -> 1.7% of the samples of TinyLlama Q4_0 prompts
 * (perf, 128 tokens, two threads). */
__attribute__((target("avx512f"))) static void attn_accum_avx512(float *restrict out, const float *restrict p,
                                                                  const float *restrict v, int32_t hd, int32_t c)
{
    for (int32_t d0 = 0; d0 < hd; d0 += 64) {
        __mmask16 m[4];
        __m512 acc[4];
        for (int k = 0; k < 4; k++) {
            const int32_t lanes = hd - d0 - 16 * k;
            m[k] = lanes >= 16 ? (__mmask16)0xffff : lanes > 0 ? (__mmask16)((1u << lanes) - 1u) : 0;
            acc[k] = _mm512_maskz_loadu_ps(m[k], out + d0 + 16 * k);
        }
        for (int32_t j = 0; j < c; j++) {
            const __m512 pj = _mm512_set1_ps(p[j]);
            const float *vr = v + (size_t)j * hd + d0;
            for (int k = 0; k < 4; k++)
                acc[k] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m[k], vr + 16 * k), acc[k]);
        }
        for (int k = 0; k < 4; k++)
            _mm512_mask_storeu_ps(out + d0 + 16 * k, m[k], acc[k]);
    }
}
#endif

typedef struct attn_task {
    const kv_cache *kv;
    const attn_params *a;
    float *scratch;
    size_t scratch_per_thread;
    int32_t heads_per_item; /* divides n_head / n_head_kv, at most ATT_MAX_HEADS */
    attn_accum_fn accum;
    bool float_scores; /* keys to float per chunk, scores by attn_scores_avx512 */
} attn_task;

static void attn_worker(void *arg, int ith, int nth)
{
    const attn_task *t = arg;
    const attn_params *a = t->a;
    const kv_cache *kv = t->kv;
    const int32_t hd = a->head_dim, hg = t->heads_per_item;
    const int32_t group = a->n_head / a->n_head_kv, items_per_token = a->n_head / hg;
    const qt_traits *kt = qt_get(kv->type);
    const qt_traits *qt = qt_get(kt->vec_dot_type);
    const size_t head_bytes = qt_row_bytes(kv->type, hd);
    /* scratch: scores [hg][ATT_CHUNK], values [ATT_CHUNK][hd], converted
     * queries (hd floats of room each: any conversion of q fits), and with
     * float_scores keys [ATT_CHUNK][hd] and the queries as floats [hg][hd] */
    float *scores = t->scratch + (size_t)ith * t->scratch_per_thread;
    float *vbuf = scores + (size_t)ATT_MAX_HEADS * ATT_CHUNK;
    float *qroom = vbuf + (size_t)hd * ATT_CHUNK;
    float *kbuf = qroom + (size_t)ATT_MAX_HEADS * hd;
    float *qf = kbuf + (size_t)hd * ATT_CHUNK;
    long b, e;
    pool_range((long)a->n_tokens * items_per_token, ith, nth, &b, &e);
    for (long item = b; item < e; item++) {
        /* items in token order 0, n-1, 1, n-2, ...: a token late in a prompt
         * sees more keys, so each thread's contiguous range of items gets
         * early and late tokens alike instead of the late half */
        const int32_t slot = (int32_t)(item / items_per_token);
        const int32_t i = slot % 2 == 0 ? slot / 2 : a->n_tokens - 1 - slot / 2;
        const int32_t h0 = (int32_t)(item % items_per_token) * hg;
        const int32_t kvh = h0 / group;
        const int32_t pos = a->n_past + i;
        const int32_t first = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
        const int32_t n_keys = pos - first + 1;
        const void *qv[ATT_MAX_HEADS];
        float *out[ATT_MAX_HEADS];
        float max[ATT_MAX_HEADS];
        double sum[ATT_MAX_HEADS];
        for (int32_t h = 0; h < hg; h++) {
            const float *q = a->q + (size_t)i * a->q_stride + (size_t)(h0 + h) * hd;
            qv[h] = q;
            if (kt->vec_dot_type != QT_F32) {
                void *qc = qroom + (size_t)h * hd;
                qt->from_float(q, qc, hd);
                qv[h] = qc;
            }
            /* the query as the key type's dot meets it (rounded to F16, or
             * Q8_0 codes times scale), so the float scores differ from the
             * vec_dot ones only in summation order */
            if (t->float_scores)
                qt->to_float(qv[h], qf + (size_t)h * hd, hd);
            out[h] = a->out + (size_t)i * a->out_stride + (size_t)(h0 + h) * hd;
            memset(out[h], 0, (size_t)hd * sizeof(float));
            max[h] = -INFINITY;
            sum[h] = 0.0;
        }
        for (int32_t j0 = 0; j0 < n_keys; j0 += ATT_CHUNK) {
            const int32_t c = n_keys - j0 < ATT_CHUNK ? n_keys - j0 : ATT_CHUNK;
            for (int32_t j = 0; j < c; j++) {
                const uint8_t *krow = kv_k_row(kv, a->layer, first + j0 + j) + (size_t)kvh * head_bytes;
                if (t->float_scores)
                    kt->to_float(krow, kbuf + (size_t)j * hd, hd);
                else
                    for (int32_t h = 0; h < hg; h++)
                        kt->vec_dot(hd, &scores[h * ATT_CHUNK + j], krow, qv[h]);
                kt->to_float(kv_v_row(kv, a->layer, first + j0 + j) + (size_t)kvh * head_bytes,
                             vbuf + (size_t)j * hd, hd);
            }
#ifdef ATT_HAVE_AVX512
            if (t->float_scores)
                attn_scores_avx512(scores, qf, kbuf, hg, hd, c);
#endif
            for (int32_t h = 0; h < hg; h++)
                for (int32_t j = 0; j < c; j++) {
                    float s = scores[h * ATT_CHUNK + j] * a->scale;
                    if (a->softcap > 0)
                        s = a->softcap * tanhf(s / a->softcap);
                    scores[h * ATT_CHUNK + j] = s;
                }
            for (int32_t h = 0; h < hg; h++) {
                float *sc = scores + h * ATT_CHUNK;
                float m = max[h];
                for (int32_t j = 0; j < c; j++)
                    if (sc[j] > m)
                        m = sc[j];
                if (m > max[h] && max[h] != -INFINITY) {
                    const float f = expf(max[h] - m);
                    for (int32_t d = 0; d < hd; d++)
                        out[h][d] *= f;
                    sum[h] *= f;
                }
                max[h] = m;
                sum[h] += ops_exp_sum(sc, c, m);
                t->accum(out[h], sc, vbuf, hd, c);
            }
        }
        for (int32_t h = 0; h < hg; h++) {
            const float inv = (float)(1.0 / sum[h]);
            for (int32_t d = 0; d < hd; d++)
                out[h][d] *= inv;
        }
    }
}

size_t attn_scratch_floats(int32_t n_ctx, int32_t head_dim)
{
    (void)n_ctx; /* keys are taken ATT_CHUNK at a time */
    return (size_t)ATT_MAX_HEADS * ATT_CHUNK + 2 * (size_t)head_dim * ATT_CHUNK +
           2 * (size_t)ATT_MAX_HEADS * (size_t)head_dim + 16;
}

void attn_run(pool *p, const kv_cache *kv, float *scratch, const attn_params *a)
{
    attn_task t = {.kv = kv, .a = a, .scratch = scratch,
                   .scratch_per_thread = attn_scratch_floats(kv->n_ctx, a->head_dim)};
    /* As many heads per item as share a KV head (up to ATT_MAX_HEADS), halved
     * while that leaves fewer than four items per thread. */
    const int32_t group = a->n_head / a->n_head_kv;
    int32_t hg = 1;
    while (hg * 2 <= ATT_MAX_HEADS && group % (hg * 2) == 0)
        hg *= 2;
    while (hg > 1 && (long)a->n_tokens * (a->n_head / hg) < 4L * pool_threads(p))
        hg /= 2;
    t.heads_per_item = hg;
    t.accum = attn_accum_c;
#ifdef ATT_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        t.accum = attn_accum_avx2;
#endif
#ifdef ATT_HAVE_AVX512
    t.float_scores = __builtin_cpu_supports("avx512f");
    if (t.float_scores)
        t.accum = attn_accum_avx512;
#endif
    pool_run(p, attn_worker, &t);
}
