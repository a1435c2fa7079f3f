/*
 * kv.c - the KV cache: storage, truncation and context shift (saving and
 * restoring it to a file is kv_state.c).
 *
 * Keys are stored after RoPE, so moving a key to another position means
 * turning it by the difference (RoPE rotations compose: rotating by pos a
 * then by d equals rotating by a + d). A shift therefore converts each moved
 * key row to float, rotates it by -n_discard, and stores it back; values move
 * as they are. Rows are F16 or Q8_0 (blocks of 32 with one scale each: half
 * the memory of F16 at about 0.4% relative error per element).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "ops.h"

int kv_init(kv_cache *kv, qt_type type, int32_t n_layer, int32_t n_ctx, int32_t kv_dim,
            int32_t head_dim, char err[256])
{
    memset(kv, 0, sizeof *kv);
    const qt_traits *tr = qt_get(type);
    if (!tr || (type != QT_F16 && type != QT_F32 && type != QT_Q8_0)) {
        snprintf(err, 256, "KV cache type %s is not supported (f16, q8_0)", qt_type_name(type));
        return ENG_EUSAGE;
    }
    /* Attention reads one head's slice of a row at a time, so a head must be
     * whole blocks of the cache type. */
    if (qt_row_bytes(type, head_dim) == 0) {
        snprintf(err, 256, "KV cache type %s needs a head size that is a multiple of %u, not %d",
                 qt_type_name(type), tr->block_elems, head_dim);
        return ENG_EUSAGE;
    }
    if (head_dim <= 0 || kv_dim % head_dim != 0) {
        snprintf(err, 256, "KV width %d is not a whole number of heads of %d", kv_dim, head_dim);
        return ENG_EUSAGE;
    }
    kv->type = type;
    kv->n_layer = n_layer;
    kv->n_ctx = n_ctx;
    kv->kv_dim = kv_dim;
    kv->head_dim = head_dim;
    kv->n_head_kv = kv_dim / head_dim;
    kv->head_bytes = qt_row_bytes(type, head_dim);
    kv->row_bytes = kv->head_bytes * (size_t)kv->n_head_kv;
    size_t bytes = kv->row_bytes * (size_t)n_layer * (size_t)n_ctx;
    kv->k = malloc(bytes);
    kv->v = malloc(bytes);
    if (!kv->k || !kv->v) {
        kv_release(kv);
        snprintf(err, 256, "out of memory for a %d-position KV cache (%zu MiB)", n_ctx,
                 2 * bytes >> 20);
        return ENG_ENOMEM;
    }
    return ENG_OK;
}

void kv_store(kv_cache *kv, int32_t layer, int32_t pos, const float *k, const float *v)
{
    const qt_traits *tr = qt_get(kv->type);
    const int32_t hd = kv->head_dim;
    for (int32_t h = 0; h < kv->n_head_kv; h++) {
        tr->from_float(k + (size_t)h * hd, kv_k_head(kv, layer, h, pos), hd);
        tr->from_float(v + (size_t)h * hd, kv_v_head(kv, layer, h, pos), hd);
    }
}

void kv_release(kv_cache *kv)
{
    free(kv->k);
    free(kv->v);
    kv->k = kv->v = NULL;
}

uint64_t eng_kv_bytes_per_pos(const eng_ctx *c)
{
    return 2 * (uint64_t)c->kv.row_bytes * (uint64_t)c->kv.n_layer;
}

void eng_kv_truncate(eng_ctx *c, int32_t n)
{
    if (n >= 0 && n < c->n_past)
        c->n_past = n;
}

int eng_kv_shift(eng_ctx *c, int32_t keep, int32_t n_discard, char err[256])
{
    if (keep < 0 || n_discard <= 0 || keep + n_discard > c->n_past) {
        snprintf(err, 256, "cannot drop %d positions after the first %d of %d", n_discard, keep,
                 c->n_past);
        return ENG_EUSAGE;
    }
    const eng_hparams *hp = &c->m->hp;
    const qt_traits *tr = qt_get(c->kv.type);
    float *row = malloc((size_t)c->kv.kv_dim * sizeof(float));
    if (!row) {
        snprintf(err, 256, "out of memory shifting the KV cache");
        return ENG_ENOMEM;
    }
    /* The context's own RoPE (pairing, scaling, factors), as a pure rotation:
     * the attention factor was applied once already when the key was made. */
    ops_rope_cfg rc = c->rope;
    rc.mscale = 1.0f;
    const int32_t hd = c->kv.head_dim;
    for (int32_t l = 0; l < c->kv.n_layer; l++) {
        for (int32_t p = keep + n_discard; p < c->n_past; p++) {
            int32_t to = p - n_discard;
            for (int32_t h = 0; h < c->kv.n_head_kv; h++)
                tr->to_float(kv_k_head(&c->kv, l, h, p), row + (size_t)h * hd, hd);
            ops_rope_apply(row, hp->n_head_kv, &rc, -(double)n_discard);
            for (int32_t h = 0; h < c->kv.n_head_kv; h++) {
                tr->from_float(row + (size_t)h * hd, kv_k_head(&c->kv, l, h, to), hd);
                memmove(kv_v_head(&c->kv, l, h, to), kv_v_head(&c->kv, l, h, p), c->kv.head_bytes);
            }
        }
    }
    free(row);
    c->n_past -= n_discard;
    return ENG_OK;
}
