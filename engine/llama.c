/*
 * llama.c - contexts and the forward pass of the Llama family (every
 * architecture model.c loads: llama, qwen2, qwen3, phi3, gemma2).
 *
 * One pass takes a batch of up to n_batch tokens at consecutive positions:
 *   x = embedding rows (times embd_scale)
 *   per layer: h = norm(x); q, k, v = Wq h, Wk h, Wv h (or one fused Wqkv)
 *              (+ biases); per-head norms of q and k; RoPE of q and k
 *              a = Wo . attention(q, k, v) (+ bias), post-norm; x += a
 *              h = norm(x); f = Wdown . (act(Wgate h) * Wup h), post-norm; x += f
 *   logits = Wout . norm(x) (soft-capped)
 * Every step in the middle is optional and taken when the model has it, so
 * there is one path for the data whatever the architecture.
 * Every matmul is batch x weights (one read of the weights per pass), so a
 * prompt is processed as matrix x matrix. Attention is grouped-query with a
 * causal mask (and a sliding window on the layers that have one): token i
 * of the batch sees cache positions up to n_past + i. K and V rows of the
 * batch are written into the cache before attention, so the batch attends
 * to itself through the cache.
 * The per-token float work between the matmuls (norms, biases, RoPE, KV
 * stores, residual adds, the FFN activation) runs in five steps per layer
 * (rows_step), each row by itself: on the calling thread for decode, split
 * across the pool by token for a prompt (it was 7% of prefill time on one
 * thread). RoPE's cos/sin table is made once per pass for the batch's
 * positions and shared by every layer.
 * Attention itself lives in attention.c, the matmuls in matmul.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "ops.h"

eng_ctx_params eng_ctx_params_default(void)
{
    return (eng_ctx_params){.n_ctx = 0, .n_threads = 0, .n_batch = 512, .kv_type = QT_F16};
}

void eng_ctx_free(eng_ctx *c)
{
    if (!c)
        return;
    pool_free(c->pool);
    kv_release(&c->kv);
    mm_scratch_release(&c->mm);
    lora_set_release(&c->lora);
    free(c->x);
    free(c->xb);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->attn);
    free(c->ffn_g);
    free(c->ffn_u);
    free(c->att_scratch);
    free(c->logits);
    free(c->pos);
    free(c->rope_cs);
    free(c);
}

int eng_ctx_new(eng_ctx **out, const eng_model *m, const eng_ctx_params *p, char err[256])
{
    *out = NULL;
    const eng_hparams *hp = &m->hp;
    eng_ctx_params prm = p ? *p : eng_ctx_params_default();
    if (prm.n_ctx <= 0)
        prm.n_ctx = hp->n_ctx_train;
    if (prm.n_batch <= 0)
        prm.n_batch = 512;
    if (prm.n_batch > prm.n_ctx)
        prm.n_batch = prm.n_ctx;
    if (prm.kv_type == QT_F32)
        prm.kv_type = QT_F16;
    if (prm.n_ctx > (1 << 22)) {
        snprintf(err, 256, "context size %d is above the limit of %d", prm.n_ctx, 1 << 22);
        return ENG_EUSAGE;
    }
    eng_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, 256, "out of memory for a context");
        return ENG_ENOMEM;
    }
    c->m = m;
    c->n_ctx = prm.n_ctx;
    c->n_batch = prm.n_batch;
    /* LongRoPE: the long factors once the context outgrows the original
     * training length (llama.cpp decides by the context size, not by the
     * position). Llama 3's rope_freqs apply always. */
    const float *factors = m->rope_freqs;
    if (!factors)
        factors = prm.n_ctx > hp->n_ctx_orig ? m->rope_long : m->rope_short;
    c->rope = (ops_rope_cfg){.head_dim = hp->head_dim, .n_rot = hp->n_rot, .neox = hp->rope_neox,
                             .freq_base = hp->rope_freq_base, .freq_scale = hp->rope_freq_scale,
                             .freq_factors = factors, .mscale = hp->rope_attn_factor};
    int rc = pool_new(&c->pool, prm.n_threads, err);
    if (rc) {
        eng_ctx_free(c);
        return ENG_EUSAGE;
    }
    const size_t kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    rc = kv_init(&c->kv, prm.kv_type, hp->n_layer, prm.n_ctx, (int32_t)kv_dim, hp->head_dim,
                 err);
    if (rc) {
        eng_ctx_free(c);
        return rc;
    }
    /* A fused Q|K|V (or gate|up) matmul writes its rows whole, so q (ffn_u)
     * is as wide as they are when any layer has the fused matrix. */
    bool fused_qkv = false, fused_gate_up = false;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        fused_qkv = fused_qkv || m->layers[l].wqkv.data;
        fused_gate_up = fused_gate_up || !m->layers[l].w_gate.data;
    }
    const size_t nb = (size_t)c->n_batch, ne = (size_t)hp->n_embd;
    const size_t q_dim = (size_t)hp->n_head * (size_t)hp->head_dim;
    const size_t n_ff = (size_t)hp->n_ff;
    c->x = malloc(nb * ne * sizeof(float));
    c->xb = malloc(nb * ne * sizeof(float));
    c->q = malloc(nb * (q_dim + (fused_qkv ? 2 * kv_dim : 0)) * sizeof(float));
    c->attn = malloc(nb * q_dim * sizeof(float));
    c->k = malloc(nb * kv_dim * sizeof(float));
    c->v = malloc(nb * kv_dim * sizeof(float));
    c->ffn_g = malloc(nb * n_ff * sizeof(float));
    c->ffn_u = malloc(nb * n_ff * (fused_gate_up ? 2 : 1) * sizeof(float));
    c->pos = malloc(nb * sizeof(int32_t));
    c->rope_cs = malloc(nb * (size_t)(hp->n_rot > 0 ? hp->n_rot : 1) * sizeof(float));
    c->att_scratch = malloc((size_t)pool_threads(c->pool) *
                            attn_scratch_floats(prm.n_ctx, hp->head_dim) * sizeof(float));
    c->cap_logits = 1;
    c->logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!c->x || !c->xb || !c->q || !c->attn || !c->k || !c->v || !c->ffn_g || !c->ffn_u ||
        !c->pos || !c->rope_cs || !c->att_scratch || !c->logits) {
        snprintf(err, 256, "out of memory for a context of %d positions", prm.n_ctx);
        eng_ctx_free(c);
        return ENG_ENOMEM;
    }
    *out = c;
    return ENG_OK;
}

int32_t eng_n_past(const eng_ctx *c) { return c->n_past; }
int32_t eng_n_ctx(const eng_ctx *c) { return c->n_ctx; }
pool *eng_ctx_pool(eng_ctx *c) { return c->pool; }

const float *eng_logits(const eng_ctx *c, int32_t i)
{
    if (c->n_logits == 0)
        return NULL;
    if (i < 0)
        i = c->n_logits - 1;
    if (i >= c->n_logits)
        return NULL;
    return c->logits + (size_t)i * (size_t)c->m->hp.n_vocab;
}

/* ---- one pass --------------------------------------------------------- */

typedef enum { LOGITS_NONE, LOGITS_LAST, LOGITS_ALL } logits_mode;

/* mm_run multiplies weights of one width and activation type together (a
 * Q6_K attn_v beside Q4_K attn_q, both meeting Q8_K or both A8 x16); other
 * mixtures run as several calls. Every output is the same dot product
 * either way. */
static int matmul(eng_ctx *c, const mm_job *jobs, int n_jobs, const float *x, int32_t n,
                  char err[256])
{
    for (int i = 0; i < n_jobs;) {
        int j = i + 1;
        while (j < n_jobs && mm_can_share(jobs[i].w, jobs[j].w))
            j++;
        int rc = mm_run(c->pool, &c->mm, jobs + i, j - i, x, n, err);
        if (rc)
            return rc;
        i = j;
    }
    return ENG_OK;
}

static void add_rows(float *x, const float *y, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        x[i] += y[i];
}

/* The per-token float work between the matmuls of a layer, one step at a
 * time: each token's row is worked on alone, so a prompt batch splits it
 * across the pool by token (the rows a thread gets depend on the batch size
 * and thread count only, and each row's arithmetic is the same whoever does
 * it, so the result does not depend on the split). */
typedef enum {
    ROWS_ATTN_IN,  /* xb = norm(x) */
    ROWS_QKV_OUT,  /* biases, q/k norms, RoPE of q and k; K and V rows into the cache */
    ROWS_ATTN_OUT, /* bias, post-norm of the attention output; x += it; xb = ffn norm(x) */
    ROWS_ACT,      /* ffn_g = act(gate) * up */
    ROWS_FFN_OUT,  /* post-norm of the FFN output; x += it; xb = next layer's norm(x) */
} rows_step;

typedef struct rows_task {
    eng_ctx *c;
    rows_step step;
    int32_t l, n;
    float *q, *k, *v;
    size_t q_stride, kv_stride;
} rows_task;

static void rows_do(const rows_task *t, int32_t i0, int32_t i1)
{
    eng_ctx *c = t->c;
    const eng_hparams *hp = &c->m->hp;
    const eng_layer *L = &c->m->layers[t->l];
    const int64_t n_embd = hp->n_embd, n_ff = hp->n_ff, hd = hp->head_dim;
    const int64_t q_dim = (int64_t)hp->n_head * hd, kv_dim = (int64_t)hp->n_head_kv * hd;
    void (*act)(float *, const float *, int64_t) =
        hp->ffn_act == ENG_ACT_GELU ? ops_geglu : ops_swiglu;
    for (int32_t i = i0; i < i1; i++) {
        float *x = c->x + i * n_embd, *xb = c->xb + i * n_embd;
        switch (t->step) {
        case ROWS_ATTN_IN:
            ops_rmsnorm(xb, x, L->attn_norm, n_embd, hp->norm_eps);
            break;
        case ROWS_QKV_OUT: {
            float *qi = t->q + i * t->q_stride, *ki = t->k + i * t->kv_stride;
            float *vi = t->v + i * t->kv_stride;
            if (L->bqkv) {
                add_rows(qi, L->bqkv, q_dim);
                add_rows(ki, L->bqkv + q_dim, kv_dim);
                add_rows(vi, L->bqkv + q_dim + kv_dim, kv_dim);
            }
            if (L->q_norm) {
                for (int32_t h = 0; h < hp->n_head; h++)
                    ops_rmsnorm(qi + h * hd, qi + h * hd, L->q_norm, hd, hp->norm_eps);
                for (int32_t h = 0; h < hp->n_head_kv; h++)
                    ops_rmsnorm(ki + h * hd, ki + h * hd, L->k_norm, hd, hp->norm_eps);
            }
            const float *cs = c->rope_cs + (size_t)i * (size_t)hp->n_rot;
            ops_rope_apply_table(qi, hp->n_head, &c->rope, cs);
            ops_rope_apply_table(ki, hp->n_head_kv, &c->rope, cs);
            kv_store(&c->kv, t->l, c->n_past + i, ki, vi);
            break;
        }
        case ROWS_ATTN_OUT:
            if (L->bo)
                add_rows(xb, L->bo, n_embd);
            if (L->attn_post_norm)
                ops_rmsnorm(xb, xb, L->attn_post_norm, n_embd, hp->norm_eps);
            add_rows(x, xb, n_embd);
            ops_rmsnorm(xb, x, L->ffn_norm, n_embd, hp->norm_eps);
            break;
        case ROWS_ACT:
            if (L->w_gate.data) {
                act(c->ffn_g + i * n_ff, c->ffn_u + i * n_ff, n_ff);
            } else {
                /* one row of 2 n_ff: the gate half, then the up half */
                const float *gate = c->ffn_u + 2 * i * n_ff;
                memcpy(c->ffn_g + i * n_ff, gate, (size_t)n_ff * sizeof(float));
                act(c->ffn_g + i * n_ff, gate + n_ff, n_ff);
            }
            break;
        case ROWS_FFN_OUT:
            if (L->ffn_post_norm)
                ops_rmsnorm(xb, xb, L->ffn_post_norm, n_embd, hp->norm_eps);
            add_rows(x, xb, n_embd);
            if (t->l + 1 < hp->n_layer)
                ops_rmsnorm(xb, x, c->m->layers[t->l + 1].attn_norm, n_embd, hp->norm_eps);
            break;
        }
    }
}

static void rows_worker(void *arg, int ith, int nth)
{
    const rows_task *t = arg;
    long b, e;
    pool_range(t->n, ith, nth, &b, &e);
    rows_do(t, (int32_t)b, (int32_t)e);
}

/* Runs one step for the batch: on the calling thread for a batch too small
 * to repay a dispatch (decode), across the pool otherwise. */
static void rows_run(rows_task *t, rows_step step)
{
    t->step = step;
    if (t->n < 2 * pool_threads(t->c->pool))
        rows_do(t, 0, t->n);
    else
        pool_run(t->c->pool, rows_worker, t);
}

static int forward(eng_ctx *c, const int32_t *tokens, int32_t n, logits_mode mode,
                   char err[256])
{
    const eng_model *m = c->m;
    const eng_hparams *hp = &m->hp;
    const int64_t n_embd = hp->n_embd, hd = hp->head_dim;
    const int64_t q_dim = (int64_t)hp->n_head * hd, kv_dim = (int64_t)hp->n_head_kv * hd;
    const qt_traits *et = qt_get(m->tok_embd.type);
    rows_task rt = {.c = c, .n = n};
    int rc;

    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab) {
            snprintf(err, 256, "token id %d is outside the vocabulary (0..%d)", tokens[i],
                     hp->n_vocab - 1);
            return ENG_EUSAGE;
        }
        ops_rope_table(c->rope_cs + (size_t)i * (size_t)hp->n_rot, &c->rope,
                       (double)(c->n_past + i));
        float *row = c->x + i * n_embd;
        et->to_float(m->tok_embd.data + (size_t)tokens[i] * m->tok_embd.row_bytes, row, n_embd);
        if (hp->embd_scale != 1.0f)
            for (int64_t d = 0; d < n_embd; d++)
                row[d] *= hp->embd_scale;
    }

    rt.l = 0;
    rows_run(&rt, ROWS_ATTN_IN); /* later layers' come with the step before them */
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const eng_layer *L = &m->layers[l];
        rt.l = l;
        /* q, k, v rows: three buffers, or slices of one fused row */
        float *q = c->q, *k = c->k, *v = c->v;
        size_t q_stride = (size_t)q_dim, kv_stride = (size_t)kv_dim;
        if (L->wqkv.data) {
            k = q + q_dim;
            v = k + kv_dim;
            q_stride = kv_stride = (size_t)(q_dim + 2 * kv_dim);
            mm_job qkv[1] = {{&L->wqkv, c->q}};
            rc = matmul(c, qkv, 1, c->xb, n, err);
        } else {
            mm_job qkv[3] = {{&L->wq, q}, {&L->wk, k}, {&L->wv, v}};
            rc = matmul(c, qkv, 3, c->xb, n, err);
        }
        if (rc)
            return rc;
        rt.q = q;
        rt.k = k;
        rt.v = v;
        rt.q_stride = q_stride;
        rt.kv_stride = kv_stride;
        rows_run(&rt, ROWS_QKV_OUT);
        attn_params ap = {
            .layer = l, .n_tokens = n, .n_past = c->n_past,
            .q = q, .q_stride = q_stride, .out = c->attn, .out_stride = (size_t)q_dim,
            .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
            .scale = hp->attn_scale, .softcap = hp->attn_softcap, .window = L->window,
        };
        attn_run(c->pool, &c->kv, c->att_scratch, &ap);
        mm_job o[1] = {{&L->wo, c->xb}};
        if ((rc = matmul(c, o, 1, c->attn, n, err)))
            return rc;
        rows_run(&rt, ROWS_ATTN_OUT);
        if (L->w_gate.data) {
            mm_job gu[2] = {{&L->w_gate, c->ffn_g}, {&L->w_up, c->ffn_u}};
            rc = matmul(c, gu, 2, c->xb, n, err);
        } else {
            mm_job gu[1] = {{&L->w_up, c->ffn_u}};
            rc = matmul(c, gu, 1, c->xb, n, err);
        }
        if (rc)
            return rc;
        rows_run(&rt, ROWS_ACT);
        mm_job d[1] = {{&L->w_down, c->xb}};
        if ((rc = matmul(c, d, 1, c->ffn_g, n, err)))
            return rc;
        rows_run(&rt, ROWS_FFN_OUT);
    }

    c->n_past += n;
    if (mode == LOGITS_NONE)
        return ENG_OK;
    /* Only the rows whose logits are wanted go through the output head. */
    const int32_t first = mode == LOGITS_ALL ? 0 : n - 1;
    const int32_t n_out = n - first;
    for (int32_t i = first; i < n; i++)
        ops_rmsnorm(c->xb + (i - first) * n_embd, c->x + i * n_embd, m->output_norm, n_embd,
                    hp->norm_eps);
    float *dst = c->logits + (size_t)c->n_logits * (size_t)hp->n_vocab;
    mm_job out[1] = {{&m->output, dst}};
    if ((rc = matmul(c, out, 1, c->xb, n_out, err)))
        return rc;
    if (hp->final_softcap > 0)
        ops_softcap(dst, (int64_t)n_out * hp->n_vocab, hp->final_softcap);
    c->n_logits += n_out;
    return ENG_OK;
}

int eng_eval(eng_ctx *c, const int32_t *tokens, int32_t n, bool all_logits, char err[256])
{
    if (n <= 0) {
        snprintf(err, 256, "nothing to evaluate");
        return ENG_EUSAGE;
    }
    if (n > c->n_ctx - c->n_past) {
        snprintf(err, 256, "%d tokens do not fit: %d of %d context positions are in use", n,
                 c->n_past, c->n_ctx);
        return ENG_ECTXFULL;
    }
    int32_t want = all_logits ? n : 1;
    if (want > c->cap_logits) {
        float *nl = realloc(c->logits, (size_t)want * (size_t)c->m->hp.n_vocab * sizeof(float));
        if (!nl) {
            snprintf(err, 256, "out of memory for the logits of %d tokens", n);
            return ENG_ENOMEM;
        }
        c->logits = nl;
        c->cap_logits = want;
    }
    const int32_t start = c->n_past;
    c->n_logits = 0;
    for (int32_t done = 0; done < n;) {
        int32_t chunk = n - done < c->n_batch ? n - done : c->n_batch;
        logits_mode mode = all_logits ? LOGITS_ALL : done + chunk == n ? LOGITS_LAST : LOGITS_NONE;
        int rc = forward(c, tokens + done, chunk, mode, err);
        if (rc) {
            c->n_past = start;
            c->n_logits = 0;
            return rc;
        }
        done += chunk;
    }
    return ENG_OK;
}
