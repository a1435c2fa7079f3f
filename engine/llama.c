/*
 * llama.c - contexts and the forward pass of the Llama architecture.
 *
 * One pass takes a batch of up to n_batch tokens at consecutive positions:
 *   x = embedding rows
 *   per layer: x += Wo . attention(RoPE(Wq.norm(x)), RoPE(Wk.norm(x)), Wv.norm(x))
 *              x += Wdown . (silu(Wgate.norm(x)) * Wup.norm(x))
 *   logits = Wout . norm(x)
 * Every matmul is batch x weights (one read of the weights per pass), so a
 * prompt is processed as matrix x matrix. Attention is grouped-query with a
 * causal mask: token i of the batch sees cache positions 0 .. n_past + i.
 * K and V rows of the batch are written into the cache before attention, so
 * the batch attends to itself through the cache.
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
    const size_t nb = (size_t)c->n_batch, ne = (size_t)hp->n_embd;
    c->x = malloc(nb * ne * sizeof(float));
    c->xb = malloc(nb * ne * sizeof(float));
    c->q = malloc(nb * ne * sizeof(float));
    c->attn = malloc(nb * ne * sizeof(float));
    c->k = malloc(nb * kv_dim * sizeof(float));
    c->v = malloc(nb * kv_dim * sizeof(float));
    c->ffn_g = malloc(nb * (size_t)hp->n_ff * sizeof(float));
    c->ffn_u = malloc(nb * (size_t)hp->n_ff * sizeof(float));
    c->pos = malloc(nb * sizeof(int32_t));
    c->att_scratch = malloc((size_t)pool_threads(c->pool) *
                            attn_scratch_floats(prm.n_ctx, hp->head_dim) * sizeof(float));
    c->cap_logits = 1;
    c->logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!c->x || !c->xb || !c->q || !c->attn || !c->k || !c->v || !c->ffn_g || !c->ffn_u ||
        !c->pos || !c->att_scratch || !c->logits) {
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

static int forward(eng_ctx *c, const int32_t *tokens, int32_t n, logits_mode mode,
                   char err[256])
{
    const eng_model *m = c->m;
    const eng_hparams *hp = &m->hp;
    const int64_t n_embd = hp->n_embd, n_ff = hp->n_ff;
    const int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    const qt_traits *et = qt_get(m->tok_embd.type);
    const qt_traits *kt = qt_get(c->kv.type);
    int rc;

    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab) {
            snprintf(err, 256, "token id %d is outside the vocabulary (0..%d)", tokens[i],
                     hp->n_vocab - 1);
            return ENG_EUSAGE;
        }
        et->to_float(m->tok_embd.data + (size_t)tokens[i] * m->tok_embd.row_bytes,
                     c->x + i * n_embd, n_embd);
    }

    for (int32_t l = 0; l < hp->n_layer; l++) {
        const eng_layer *L = &m->layers[l];
        for (int32_t i = 0; i < n; i++)
            ops_rmsnorm(c->xb + i * n_embd, c->x + i * n_embd, L->attn_norm, n_embd,
                        hp->norm_eps);
        mm_job qkv[3] = {{&L->wq, c->q}, {&L->wk, c->k}, {&L->wv, c->v}};
        if ((rc = mm_run(c->pool, &c->mm, qkv, 3, c->xb, n, err)))
            return rc;
        for (int32_t i = 0; i < n; i++) {
            const double pos = (double)(c->n_past + i);
            ops_rope(c->q + i * n_embd, hp->n_head, hp->head_dim, hp->n_rot, pos,
                     hp->rope_freq_base);
            ops_rope(c->k + i * kv_dim, hp->n_head_kv, hp->head_dim, hp->n_rot, pos,
                     hp->rope_freq_base);
            kt->from_float(c->k + i * kv_dim, kv_k_row(&c->kv, l, c->n_past + i), kv_dim);
            kt->from_float(c->v + i * kv_dim, kv_v_row(&c->kv, l, c->n_past + i), kv_dim);
        }
        attn_params ap = {
            .layer = l, .n_tokens = n, .n_past = c->n_past,
            .q = c->q, .q_stride = (size_t)n_embd, .out = c->attn, .out_stride = (size_t)n_embd,
            .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
            .scale = 1.0f / sqrtf((float)hp->head_dim),
        };
        attn_run(c->pool, &c->kv, c->att_scratch, &ap);
        mm_job o[1] = {{&L->wo, c->xb}};
        if ((rc = mm_run(c->pool, &c->mm, o, 1, c->attn, n, err)))
            return rc;
        for (int64_t i = 0; i < n * n_embd; i++)
            c->x[i] += c->xb[i];

        for (int32_t i = 0; i < n; i++)
            ops_rmsnorm(c->xb + i * n_embd, c->x + i * n_embd, L->ffn_norm, n_embd,
                        hp->norm_eps);
        mm_job gu[2] = {{&L->w_gate, c->ffn_g}, {&L->w_up, c->ffn_u}};
        if ((rc = mm_run(c->pool, &c->mm, gu, 2, c->xb, n, err)))
            return rc;
        ops_swiglu(c->ffn_g, c->ffn_u, n * n_ff);
        mm_job d[1] = {{&L->w_down, c->xb}};
        if ((rc = mm_run(c->pool, &c->mm, d, 1, c->ffn_g, n, err)))
            return rc;
        for (int64_t i = 0; i < n * n_embd; i++)
            c->x[i] += c->xb[i];
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
    if ((rc = mm_run(c->pool, &c->mm, out, 1, c->xb, n_out, err)))
        return rc;
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
