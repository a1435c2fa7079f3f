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
 * kernel the weight matmuls use. Each chunk's value rows are converted to
 * float once per work item, and each head's output gathers them as a sum of
 * scaled rows vectorised across the head dimension (attn_accum: no float
 * reduction, so the compiler vectorises it without reassociating; on x86-64
 * a clone compiled for AVX2 is used when the CPU has AVX2 and FMA, which
 * differs from the portable one at most by a multiply-add contracted into
 * an FMA).
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

typedef struct attn_task {
    const kv_cache *kv;
    const attn_params *a;
    float *scratch;
    size_t scratch_per_thread;
    int32_t heads_per_item; /* divides n_head / n_head_kv, at most ATT_MAX_HEADS */
    attn_accum_fn accum;
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
     * queries (hd floats of room each: any conversion of q fits) */
    float *scores = t->scratch + (size_t)ith * t->scratch_per_thread;
    float *vbuf = scores + (size_t)ATT_MAX_HEADS * ATT_CHUNK;
    float *qroom = vbuf + (size_t)hd * ATT_CHUNK;
    long b, e;
    pool_range((long)a->n_tokens * items_per_token, ith, nth, &b, &e);
    for (long item = b; item < e; item++) {
        const int32_t i = (int32_t)(item / items_per_token);
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
            out[h] = a->out + (size_t)i * a->out_stride + (size_t)(h0 + h) * hd;
            memset(out[h], 0, (size_t)hd * sizeof(float));
            max[h] = -INFINITY;
            sum[h] = 0.0;
        }
        for (int32_t j0 = 0; j0 < n_keys; j0 += ATT_CHUNK) {
            const int32_t c = n_keys - j0 < ATT_CHUNK ? n_keys - j0 : ATT_CHUNK;
            for (int32_t j = 0; j < c; j++) {
                const uint8_t *krow = kv_k_row(kv, a->layer, first + j0 + j) + (size_t)kvh * head_bytes;
                for (int32_t h = 0; h < hg; h++) {
                    float s;
                    kt->vec_dot(hd, &s, krow, qv[h]);
                    s *= a->scale;
                    if (a->softcap > 0)
                        s = a->softcap * tanhf(s / a->softcap);
                    scores[h * ATT_CHUNK + j] = s;
                }
                kt->to_float(kv_v_row(kv, a->layer, first + j0 + j) + (size_t)kvh * head_bytes,
                             vbuf + (size_t)j * hd, hd);
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
                for (int32_t j = 0; j < c; j++) {
                    sc[j] = expf(sc[j] - m);
                    sum[h] += sc[j];
                }
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
    return (size_t)ATT_MAX_HEADS * ATT_CHUNK + (size_t)head_dim * ATT_CHUNK +
           (size_t)ATT_MAX_HEADS * (size_t)head_dim + 16;
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
    pool_run(p, attn_worker, &t);
}
