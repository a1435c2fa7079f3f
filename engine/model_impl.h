/*
 * model_impl.h - the engine's internal structures, shared by model.c (load),
 * kv.c (the KV cache), matmul.c and llama.c (the forward pass). Nothing
 * outside engine/ includes this file.
 */
#ifndef OUTPOST_MODEL_IMPL_H
#define OUTPOST_MODEL_IMPL_H

#include "engine.h"
#include "ops.h"
#include "pool.h"

/* A weight matrix as the kernels see it: ne1 rows of ne0 elements, rows
 * row_bytes apart, in the read-only mapping of the model file. */
typedef struct eng_w {
    int32_t id;         /* index among the model's bound weights (LoRA looks adapters up by it) */
    const char *name;
    const uint8_t *data;
    qt_type type;
    int64_t ne0, ne1;
    size_t row_bytes;
} eng_w;

/* One block. Vectors are converted to F32 at load; a NULL vector or a weight
 * with NULL data is an option this architecture does not have. q_dim is
 * n_head * head_dim, kv_dim n_head_kv * head_dim. */
typedef struct eng_layer {
    const float *attn_norm;      /* [n_embd] */
    eng_w wq, wk, wv;            /* separate projections, or */
    eng_w wqkv;                  /* fused: rows are Q, then K, then V (phi3) */
    const float *bqkv;           /* [q_dim + 2 kv_dim] biases of Q, K, V (qwen2) */
    const float *q_norm, *k_norm;/* [head_dim] per-head RMS norms before RoPE (qwen3) */
    eng_w wo;
    const float *bo;             /* [n_embd] */
    const float *attn_post_norm; /* [n_embd] on the attention output (gemma2) */
    const float *ffn_norm;
    eng_w w_gate, w_up, w_down;  /* no w_gate: w_up stacks gate and up rows (phi3) */
    const float *ffn_post_norm;  /* [n_embd] on the FFN output (gemma2) */
    int32_t window;              /* sliding attention window of this layer, 0: none */
} eng_layer;

struct eng_model {
    gguf *g;
    tok *tk;
    eng_hparams hp;
    eng_w tok_embd;
    const float *output_norm;
    eng_w output;       /* == tok_embd when tied */
    eng_layer *layers;
    const float *rope_freqs;   /* [n_rot/2] frequency divisors (Llama 3), or NULL */
    const float *rope_long, *rope_short; /* LongRoPE divisors (phi3), or NULL */
    float *norm_store;  /* owns every vector above */
    uint64_t decode_weight_bytes;
    uint64_t repacked_bytes; /* weight bytes copied out of the mapping (norms as F32, repacked matrices) */
    uint8_t *repack_buf;     /* anonymous mapping holding the repacked matrices, or NULL */
    size_t repack_len;
    qt_type main_type;
    eng_w **weights; /* by id: every bound weight (they live in the structs above) */
    int32_t n_weights;     /* eng_w ids are 0 .. n_weights-1 */
};

/* The KV cache: K and V (in `type`: F32, F16 or Q8_0) as
 * [layer][KV head][position][head_dim], head-major so that attention,
 * which works one KV head at a time, reads a run of positions as one
 * contiguous stretch (hardware prefetchers see it coming; a position-major
 * row would give each head a short slice every row_bytes). A decode step
 * writes one slice per KV head. */
typedef struct kv_cache {
    qt_type type;
    int32_t n_layer, n_ctx, kv_dim, head_dim, n_head_kv;
    size_t row_bytes;  /* a position's kv_dim elements */
    size_t head_bytes; /* a position's head_dim elements of one KV head */
    uint8_t *k, *v;
} kv_cache;

int kv_init(kv_cache *kv, qt_type type, int32_t n_layer, int32_t n_ctx, int32_t kv_dim,
            int32_t head_dim, char err[256]);
void kv_release(kv_cache *kv);
/* Store a position's key and value rows (kv_dim floats each), head by head. */
void kv_store(kv_cache *kv, int32_t layer, int32_t pos, const float *k, const float *v);
static inline size_t kv_offset(const kv_cache *kv, int32_t layer, int32_t head, int32_t pos)
{
    return (((size_t)layer * (size_t)kv->n_head_kv + (size_t)head) * (size_t)kv->n_ctx + (size_t)pos) *
           kv->head_bytes;
}
static inline uint8_t *kv_k_head(const kv_cache *kv, int32_t layer, int32_t head, int32_t pos)
{
    return kv->k + kv_offset(kv, layer, head, pos);
}
static inline uint8_t *kv_v_head(const kv_cache *kv, int32_t layer, int32_t head, int32_t pos)
{
    return kv->v + kv_offset(kv, layer, head, pos);
}

/* Attention of a batch over the cache (attention.c). */
typedef struct attn_params {
    int32_t layer, n_tokens, n_past;
    const float *q;     /* [n_tokens][q_stride]; head h at h * head_dim */
    size_t q_stride;
    float *out;         /* [n_tokens][out_stride] */
    size_t out_stride;
    int32_t n_head, n_head_kv, head_dim;
    float scale;        /* usually 1 / sqrt(head_dim) */
    float softcap;      /* > 0: scores become softcap * tanh(score / softcap) */
    int32_t window;     /* > 0: a query sees only the last `window` positions */
} attn_params;

/* Floats of scratch one thread needs. */
size_t attn_scratch_floats(int32_t n_ctx, int32_t head_dim);
/* scratch holds attn_scratch_floats() floats per pool thread. */
void attn_run(pool *p, const kv_cache *kv, float *scratch, const attn_params *a);

/* One matrix x matrix product of a batch: y[t][r] = dot(W row r, x[t]). */
typedef struct mm_job {
    const eng_w *w;
    float *y; /* [n][w->ne1] */
} mm_job;

/* The adapters attached to a context (lora.c), with scratch for the
 * low-rank products. */
typedef struct lora_set {
    int n;
    const eng_lora *adapters[ENG_MAX_LORAS];
    float scales[ENG_MAX_LORAS];
    float *t, *u; /* A x and B (A x) */
    size_t cap_t, cap_u;
} lora_set;

/* Scratch the matmul needs: activation rows quantized to the weights'
 * vec_dot_type, sized for n_batch rows of the widest input. */
typedef struct mm_scratch {
    uint8_t *xq;
    size_t cap_bytes;
    lora_set *lora; /* attached adapters, or NULL: mm_run ends with lora_apply */
} mm_scratch;

/* y = x W^T for up to 4 weights sharing the input x[n][ne0] (every pair
 * of jobs must pass mm_can_share). Rows are split across the pool's
 * threads; each output is computed by one thread, so results do not depend
 * on the thread count. */
bool mm_can_share(const eng_w *a, const eng_w *b); /* same ne0 and activation type */
int mm_run(pool *p, mm_scratch *s, const mm_job *jobs, int n_jobs, const float *x, int32_t n,
           char err[256]);
void mm_scratch_release(mm_scratch *s);

/* After the base product of jobs: y += scale * B (A x) for every attached
 * adapter that adapts a job's weight (lora.c). */
int lora_apply(pool *p, mm_scratch *s, const mm_job *jobs, int n_jobs, const float *x,
               int32_t n, char err[256]);
void lora_set_release(lora_set *ls);

struct eng_ctx {
    const eng_model *m;
    pool *pool;
    kv_cache kv;
    int32_t n_ctx, n_batch, n_past;
    /* RoPE as this context applies it (LongRoPE picks its factors by n_ctx).
     * Re-rotating cached keys must use it with mscale 1. */
    ops_rope_cfg rope;
    float *rope_cs;     /* [n_batch][n_rot]: cos, sin of the batch's positions (ops_rope_table) */
    /* activations for one pass of up to n_batch tokens; with fused weights
     * q holds Q|K|V rows and ffn_u gate|up rows */
    float *x, *xb, *q, *k, *v, *attn, *ffn_g, *ffn_u;
    float *att_scratch; /* attn_scratch_floats() per thread */
    mm_scratch mm;
    lora_set lora;
    float *logits;      /* [n_logits][n_vocab] */
    int32_t n_logits, cap_logits;
    int32_t *pos;       /* positions of the batch */
};

#endif
