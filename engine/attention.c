/*
 * attention.c - causal grouped-query attention over the KV cache.
 *
 * Query token i of a batch sits at position n_past + i and attends to cache
 * positions max(0, pos - window + 1) .. pos (the whole prefix when window is
 * 0). Work is split across threads by (token, head) pair; each thread keeps
 * one row of scores of at most n_ctx floats, so a prompt never materialises
 * an n x n score matrix per head. Every output row is computed by one thread,
 * so the result does not depend on the thread count.
 *
 * Keys and values are read through the cache type's row of the qt_ table:
 * the query is converted to the key type's vec_dot_type (F16 for an F16
 * cache, Q8_0 blocks for a Q8_0 cache), so the score dot product is the same
 * kernel the weight matmuls use.
 */
#include <math.h>
#include <string.h>

#include "model_impl.h"
#include "ops.h"

typedef struct attn_task {
    const kv_cache *kv;
    const attn_params *a;
    float *scratch;
    size_t scratch_per_thread;
} attn_task;

static void attn_worker(void *arg, int ith, int nth)
{
    const attn_task *t = arg;
    const attn_params *a = t->a;
    const kv_cache *kv = t->kv;
    const int32_t hd = a->head_dim, n_head = a->n_head;
    const int32_t group = a->n_head / a->n_head_kv;
    const qt_traits *kt = qt_get(kv->type);
    const qt_traits *qt = qt_get(kt->vec_dot_type);
    const size_t head_bytes = qt_row_bytes(kv->type, hd);
    float *scores = t->scratch + (size_t)ith * t->scratch_per_thread;
    float *vrow = scores + kv->n_ctx;
    void *qconv = vrow + hd; /* hd floats of room: any conversion of q fits */
    long b, e;
    pool_range((long)a->n_tokens * n_head, ith, nth, &b, &e);
    for (long item = b; item < e; item++) {
        const int32_t i = (int32_t)(item / n_head), h = (int32_t)(item % n_head);
        const int32_t kvh = h / group;
        const int32_t pos = a->n_past + i;
        const int32_t first = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
        const int32_t n_keys = pos - first + 1;
        const float *q = a->q + (size_t)i * a->q_stride + (size_t)h * hd;
        const void *qv = q;
        if (kt->vec_dot_type != QT_F32) {
            qt->from_float(q, qconv, hd);
            qv = qconv;
        }
        for (int32_t j = 0; j < n_keys; j++) {
            const uint8_t *krow = kv_k_row(kv, a->layer, first + j) + (size_t)kvh * head_bytes;
            float s;
            kt->vec_dot(hd, &s, krow, qv);
            s *= a->scale;
            if (a->softcap > 0)
                s = a->softcap * tanhf(s / a->softcap);
            scores[j] = s;
        }
        ops_softmax(scores, n_keys);
        float *out = a->out + (size_t)i * a->out_stride + (size_t)h * hd;
        memset(out, 0, (size_t)hd * sizeof(float));
        for (int32_t j = 0; j < n_keys; j++) {
            const uint8_t *vr = kv_v_row(kv, a->layer, first + j) + (size_t)kvh * head_bytes;
            kt->to_float(vr, vrow, hd);
            const float p = scores[j];
            for (int32_t d = 0; d < hd; d++)
                out[d] += p * vrow[d];
        }
    }
}

size_t attn_scratch_floats(int32_t n_ctx, int32_t head_dim)
{
    return (size_t)n_ctx + 2 * (size_t)head_dim + 16;
}

void attn_run(pool *p, const kv_cache *kv, float *scratch, const attn_params *a)
{
    attn_task t = {.kv = kv, .a = a, .scratch = scratch,
                   .scratch_per_thread = attn_scratch_floats(kv->n_ctx, a->head_dim)};
    pool_run(p, attn_worker, &t);
}
