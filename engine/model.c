/*
 * model.c - open a GGUF model: read the hyper-parameters of its
 * architecture, bind and check every weight tensor, load the tokenizer.
 *
 * Weights are not copied: an eng_w points into the file's read-only mapping
 * and the kernels read the blocks where they lie. Only the vectors (norms,
 * biases, RoPE factors: a few KiB) are converted to F32 at load, into one
 * buffer the model owns. Every tensor's shape is checked against the
 * hyper-parameters here, so the forward pass can index without further
 * checks.
 *
 * The supported architectures are one family: pre-norm decoders with RoPE
 * and a gated FFN. What sets them apart is decided here, once, and recorded
 * in the hyper-parameters (RoPE style, scales, soft-caps, windows) and in
 * which optional layer tensors are bound (biases, Q/K norms, post-norms,
 * fused matrices); the one forward pass in llama.c follows those. Metadata
 * keys and tensor names are llama.cpp's (its converters write the files):
 *   llama   adjacent-pair RoPE; Llama 3 frequency divisors (rope_freqs.weight)
 *           and linear RoPE scaling; optional Q/K/V/output biases
 *   qwen2   NeoX RoPE, Q/K/V biases
 *   qwen3   NeoX RoPE, per-head RMS norm of Q and K before RoPE, head size
 *           from attention.key_length
 *   phi3    NeoX RoPE (maybe partial), fused attn_qkv, ffn_up holding gate
 *           and up, LongRoPE factors; its sliding window is ignored, as
 *           llama.cpp does, because the converters do not describe it right
 *   gemma2  NeoX RoPE, embeddings times sqrt(n_embd), post-attention and
 *           post-FFN norms, GELU, attention and final logit soft-capping,
 *           sliding window on layers l % 2 == 0. Its RMS norms multiply by
 *           (1 + w) and the converter already stored 1 + w, so norm weights
 *           are used as they are.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model_impl.h"

static const struct {
    const char *name;
    eng_arch arch;
} arch_table[] = {
    {"llama", ENG_ARCH_LLAMA},
    {"qwen2", ENG_ARCH_QWEN2},
    {"qwen3", ENG_ARCH_QWEN3},
    {"phi3", ENG_ARCH_PHI3},
    {"gemma2", ENG_ARCH_GEMMA2},
};
#define N_ARCHS (sizeof arch_table / sizeof arch_table[0])

static int need_u32(const gguf *g, const char *arch, const char *suffix, int32_t *out,
                    bool required, char err[256])
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v);
    if (rc == GGUF_ENOTFOUND && !required)
        return ENG_OK;
    if (rc != GGUF_OK || v == 0 || v > (1u << 30)) {
        snprintf(err, 256, "%s: %s %s", gguf_path(g), key,
                 rc == GGUF_ENOTFOUND ? "is missing" : "is not a positive integer below 2^30");
        return ENG_EFORMAT;
    }
    *out = (int32_t)v;
    return ENG_OK;
}

/* An optional number: *out keeps its default when the key is absent. */
static int get_f32(const gguf *g, const char *arch, const char *suffix, float *out,
                   bool positive, char err[256])
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_f32(g, key, out);
    if (rc == GGUF_ENOTFOUND)
        return ENG_OK;
    if (rc != GGUF_OK || !isfinite(*out) || (positive ? !(*out > 0) : !(*out >= 0))) {
        snprintf(err, 256, "%s: %s must be a %s number", gguf_path(g), key,
                 positive ? "positive" : "non-negative");
        return ENG_EFORMAT;
    }
    return ENG_OK;
}

static int bind(eng_model *m, eng_w *w, const char *name, int64_t ne0, int64_t ne1,
                bool required, char err[256])
{
    const gguf_tensor *t = gguf_find_tensor(m->g, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (!required)
            return ENG_OK;
        snprintf(err, 256, "%s: tensor '%s' is missing", gguf_path(m->g), name);
        return ENG_EFORMAT;
    }
    if (t->n_dims > 2 || t->ne[0] != ne0 || t->ne[1] != ne1) {
        snprintf(err, 256, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                 gguf_path(m->g), name, (long long)t->ne[0], (long long)t->ne[1],
                 (long long)ne0, (long long)ne1);
        return ENG_EFORMAT;
    }
    const qt_traits *tr = qt_get((qt_type)t->type);
    if (!tr || !tr->to_float || (ne1 > 1 && !tr->vec_dot)) {
        snprintf(err, 256, "%s: tensor '%s' has type %s, which this engine cannot compute with",
                 gguf_path(m->g), name, qt_type_name((qt_type)t->type));
        return ENG_EFORMAT;
    }
    w->id = -1;
    w->name = t->name;
    w->data = t->data;
    w->type = (qt_type)t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = qt_row_bytes(w->type, ne0);
    return ENG_OK;
}

/* bind() a matrix the matmuls use, and register it so that adapters can
 * find it by name. The registry was sized by the tensor count, and a tensor
 * is bound at most once. */
static int bind_weight(eng_model *m, eng_w *w, const char *name, int64_t ne0, int64_t ne1,
                       bool required, char err[256])
{
    int rc = bind(m, w, name, ne0, ne1, required, err);
    if (rc || !w->data)
        return rc;
    if (m->n_weights >= (int32_t)gguf_tensor_count(m->g)) {
        snprintf(err, 256, "%s: tensor '%s' bound twice", gguf_path(m->g), name);
        return ENG_EFORMAT;
    }
    w->id = m->n_weights;
    m->weights[m->n_weights++] = w;
    m->decode_weight_bytes += w->row_bytes * (uint64_t)w->ne1;
    return ENG_OK;
}

/* Vectors are carved out of norm_store, sized for the most any
 * architecture binds (vec_floats_bound). */
typedef struct vec_store {
    float *next, *end;
} vec_store;

/* A vector of n floats, converted into the store; *out = NULL if the tensor
 * is absent and not required. */
static int bind_vec(eng_model *m, vec_store *vs, const float **out, const char *name, int64_t n,
                    bool required, char err[256])
{
    eng_w w;
    *out = NULL;
    int rc = bind(m, &w, name, n, 1, required, err);
    if (rc || !w.data)
        return rc;
    if (vs->end - vs->next < n) {
        snprintf(err, 256, "%s: tensor '%s' does not fit the vector store", gguf_path(m->g), name);
        return ENG_EFORMAT;
    }
    qt_get(w.type)->to_float(w.data, vs->next, n);
    *out = vs->next;
    vs->next += n;
    m->decode_weight_bytes += (uint64_t)n * sizeof(float);
    return ENG_OK;
}

/* RoPE factors divide frequencies: each must be a positive number. */
static int bind_rope_factors(eng_model *m, vec_store *vs, const float **out, const char *name,
                             char err[256])
{
    const int64_t n = m->hp.n_rot / 2;
    int rc = bind_vec(m, vs, out, name, n, false, err);
    if (rc || !*out)
        return rc;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite((*out)[i]) || !((*out)[i] > 0)) {
            snprintf(err, 256, "%s: tensor '%s' element %lld is %g, expected a positive factor",
                     gguf_path(m->g), name, (long long)i, (double)(*out)[i]);
            return ENG_EFORMAT;
        }
    }
    return ENG_OK;
}

/* RoPE scaling (llama.cpp's reading of the rope.scaling.* keys): the type
 * defaults to linear, whose factor stretches positions; none ignores the
 * factor. LongRoPE needs nothing more than its factor tensors. */
static int load_rope_scaling(eng_model *m, const char *arch, char err[256])
{
    eng_hparams *hp = &m->hp;
    const gguf *g = m->g;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *type = gguf_get_str(g, key);
    if (gguf_get(g, key) && !type) {
        snprintf(err, 256, "%s: %s is not a string", gguf_path(g), key);
        return ENG_EFORMAT;
    }
    if (type && strcmp(type, "none") != 0 && strcmp(type, "linear") != 0 &&
        strcmp(type, "longrope") != 0) {
        snprintf(err, 256, "%s: %s '%s' is not supported (none, linear, longrope)",
                 gguf_path(g), key, type);
        return ENG_EFORMAT;
    }
    float factor = 0.0f;
    int rc;
    if ((rc = get_f32(g, arch, "rope.scaling.factor", &factor, false, err)))
        return rc;
    if (factor == 0.0f && (rc = get_f32(g, arch, "rope.scale_linear", &factor, false, err)))
        return rc;
    hp->rope_freq_scale = factor == 0.0f || (type && strcmp(type, "none") == 0) ? 1.0f
                                                                               : 1.0f / factor;
    hp->rope_attn_factor = 1.0f;
    hp->n_ctx_orig = hp->n_ctx_train;
    if ((rc = get_f32(g, arch, "rope.scaling.attn_factor", &hp->rope_attn_factor, true, err)) ||
        (rc = need_u32(g, arch, "rope.scaling.original_context_length", &hp->n_ctx_orig, false,
                       err)))
        return rc;
    return ENG_OK;
}

static int load_hparams(eng_model *m, const char *arch, char err[256])
{
    eng_hparams *hp = &m->hp;
    const gguf *g = m->g;
    int rc;
    if ((rc = need_u32(g, arch, "embedding_length", &hp->n_embd, true, err)) ||
        (rc = need_u32(g, arch, "block_count", &hp->n_layer, true, err)) ||
        (rc = need_u32(g, arch, "feed_forward_length", &hp->n_ff, true, err)) ||
        (rc = need_u32(g, arch, "attention.head_count", &hp->n_head, true, err)))
        return rc;
    hp->n_head_kv = hp->n_head;
    hp->n_ctx_train = 2048;
    hp->head_dim = 0;
    if ((rc = need_u32(g, arch, "attention.head_count_kv", &hp->n_head_kv, false, err)) ||
        (rc = need_u32(g, arch, "context_length", &hp->n_ctx_train, false, err)) ||
        (rc = need_u32(g, arch, "attention.key_length", &hp->head_dim, false, err)))
        return rc;
    if (hp->n_head % hp->n_head_kv != 0) {
        snprintf(err, 256, "%s: %d heads are not a multiple of %d kv heads", gguf_path(g),
                 hp->n_head, hp->n_head_kv);
        return ENG_EFORMAT;
    }
    if (hp->head_dim == 0) {
        if (hp->n_embd % hp->n_head != 0) {
            snprintf(err, 256, "%s: %d heads do not divide n_embd %d (and %s.attention.key_length "
                     "is absent)", gguf_path(g), hp->n_head, hp->n_embd, arch);
            return ENG_EFORMAT;
        }
        hp->head_dim = hp->n_embd / hp->n_head;
    }
    int32_t value_dim = hp->head_dim;
    if ((rc = need_u32(g, arch, "attention.value_length", &value_dim, false, err)))
        return rc;
    if (value_dim != hp->head_dim || (int64_t)hp->n_head * hp->head_dim > (1 << 20)) {
        snprintf(err, 256, "%s: head size %d (key) / %d (value) is not supported (equal sizes, "
                 "at most 2^20 per token)", gguf_path(g), hp->head_dim, value_dim);
        return ENG_EFORMAT;
    }
    hp->n_rot = hp->head_dim;
    if ((rc = need_u32(g, arch, "rope.dimension_count", &hp->n_rot, false, err)))
        return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0) {
        snprintf(err, 256, "%s: %s.rope.dimension_count %d must be even and at most the head size %d",
                 gguf_path(g), arch, hp->n_rot, hp->head_dim);
        return ENG_EFORMAT;
    }
    hp->rope_freq_base = 10000.0f;
    hp->norm_eps = 1e-5f;
    if ((rc = get_f32(g, arch, "rope.freq_base", &hp->rope_freq_base, true, err)) ||
        (rc = get_f32(g, arch, "attention.layer_norm_rms_epsilon", &hp->norm_eps, false, err)) ||
        (rc = load_rope_scaling(m, arch, err)))
        return rc;

    /* Only the original Llama rotates neighbouring pairs; every other
     * family here was converted from rotate_half code (llama.cpp's
     * LLAMA_ROPE_TYPE_NEOX). */
    hp->rope_neox = hp->arch != ENG_ARCH_LLAMA;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->embd_scale = 1.0f;
    hp->ffn_act = ENG_ACT_SILU;
    if (hp->arch == ENG_ARCH_GEMMA2) {
        /* Gemma 2 defaults (and llama.cpp's): caps 50 and 30, window 4096
         * on every other layer. The query is scaled by
         * query_pre_attn_scalar^-1/2, which no GGUF key carries: it is the
         * head size, except for the 27B model (46 layers), where it is
         * n_embd / n_head (Google's gemma_pytorch config, as llama.cpp). */
        hp->attn_softcap = 50.0f;
        hp->final_softcap = 30.0f;
        hp->swa_window = 4096;
        hp->swa_pattern = 2;
        if ((rc = get_f32(g, arch, "attn_logit_softcapping", &hp->attn_softcap, true, err)) ||
            (rc = get_f32(g, arch, "final_logit_softcapping", &hp->final_softcap, true, err)) ||
            (rc = need_u32(g, arch, "attention.sliding_window", &hp->swa_window, false, err)) ||
            (rc = need_u32(g, arch, "attention.sliding_window_pattern", &hp->swa_pattern, false,
                           err)))
            return rc;
        if (hp->n_layer == 46)
            hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
        hp->embd_scale = sqrtf((float)hp->n_embd);
        hp->ffn_act = ENG_ACT_GELU;
    }
    return ENG_OK;
}

/* Floats of every vector an architecture may bind, an upper bound. */
static size_t vec_floats_bound(const eng_hparams *hp)
{
    const size_t n_embd = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    const size_t q_dim = (size_t)hp->n_head * hd, kv_dim = (size_t)hp->n_head_kv * hd;
    size_t per_layer = 5 * n_embd          /* attn, ffn, post norms; output bias */
                       + q_dim + 2 * kv_dim /* Q, K, V biases */
                       + 2 * hd;            /* Q and K norms */
    return n_embd + 3 * (size_t)(hp->n_rot / 2) + (size_t)hp->n_layer * per_layer;
}

static int load_layer(eng_model *m, vec_store *vs, int32_t il, char err[256])
{
    const eng_hparams *hp = &m->hp;
    eng_layer *L = &m->layers[il];
    const int64_t n_embd = hp->n_embd, n_ff = hp->n_ff, hd = hp->head_dim;
    const int64_t q_dim = (int64_t)hp->n_head * hd, kv_dim = (int64_t)hp->n_head_kv * hd;
    const eng_arch arch = hp->arch;
    char name[96];
    int rc;
#define LNAME(s) (snprintf(name, sizeof name, "blk.%d." s, il), name)
    if ((rc = bind_vec(m, vs, &L->attn_norm, LNAME("attn_norm.weight"), n_embd, true, err)) ||
        (rc = bind_vec(m, vs, &L->ffn_norm, LNAME("ffn_norm.weight"), n_embd, true, err)))
        return rc;

    /* Q, K and V: one fused matrix if the file has it, else three. */
    if ((rc = bind_weight(m, &L->wqkv, LNAME("attn_qkv.weight"), n_embd, q_dim + 2 * kv_dim,
                          false, err)))
        return rc;
    if (L->wqkv.data) {
        if ((rc = bind_vec(m, vs, &L->bqkv, LNAME("attn_qkv.bias"), q_dim + 2 * kv_dim, false,
                           err)))
            return rc;
    } else {
        if ((rc = bind_weight(m, &L->wq, LNAME("attn_q.weight"), n_embd, q_dim, true, err)) ||
            (rc = bind_weight(m, &L->wk, LNAME("attn_k.weight"), n_embd, kv_dim, true, err)) ||
            (rc = bind_weight(m, &L->wv, LNAME("attn_v.weight"), n_embd, kv_dim, true, err)))
            return rc;
        /* Biases, if any, go into one Q|K|V vector; a missing one is zero. */
        const bool need = arch == ENG_ARCH_QWEN2;
        const float *b[3];
        const char *suffix[3] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
        const int64_t len[3] = {q_dim, kv_dim, kv_dim};
        float *dst = vs->next;
        if (vs->end - vs->next < q_dim + 2 * kv_dim) {
            snprintf(err, 256, "%s: layer %d biases do not fit the vector store",
                     gguf_path(m->g), il);
            return ENG_EFORMAT;
        }
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "blk.%d.%s", il, suffix[j]);
            float *at = vs->next;
            if ((rc = bind_vec(m, vs, &b[j], name, len[j], need, err)))
                return rc;
            if (!b[j]) {
                memset(at, 0, (size_t)len[j] * sizeof(float));
                vs->next = at + len[j];
            }
        }
        if (b[0] || b[1] || b[2])
            L->bqkv = dst;
        else
            vs->next = dst;
    }
    if (arch == ENG_ARCH_QWEN3 &&
        ((rc = bind_vec(m, vs, &L->q_norm, LNAME("attn_q_norm.weight"), hd, true, err)) ||
         (rc = bind_vec(m, vs, &L->k_norm, LNAME("attn_k_norm.weight"), hd, true, err))))
        return rc;
    if ((rc = bind_weight(m, &L->wo, LNAME("attn_output.weight"), q_dim, n_embd, true, err)) ||
        (rc = bind_vec(m, vs, &L->bo, LNAME("attn_output.bias"), n_embd, false, err)))
        return rc;

    if (arch == ENG_ARCH_PHI3) {
        if ((rc = bind_weight(m, &L->w_up, LNAME("ffn_up.weight"), n_embd, 2 * n_ff, true, err)))
            return rc;
    } else if ((rc = bind_weight(m, &L->w_gate, LNAME("ffn_gate.weight"), n_embd, n_ff, true,
                                 err)) ||
               (rc = bind_weight(m, &L->w_up, LNAME("ffn_up.weight"), n_embd, n_ff, true, err))) {
        return rc;
    }
    if ((rc = bind_weight(m, &L->w_down, LNAME("ffn_down.weight"), n_ff, n_embd, true, err)))
        return rc;

    if (arch == ENG_ARCH_GEMMA2 &&
        ((rc = bind_vec(m, vs, &L->attn_post_norm, LNAME("post_attention_norm.weight"), n_embd,
                        true, err)) ||
         (rc = bind_vec(m, vs, &L->ffn_post_norm, LNAME("post_ffw_norm.weight"), n_embd, true,
                        err))))
        return rc;
#undef LNAME
    const bool slides = hp->swa_window > 0 &&
                        (hp->swa_pattern == 0 || il % hp->swa_pattern < hp->swa_pattern - 1);
    L->window = slides ? hp->swa_window : 0;
    return ENG_OK;
}

static int load_tensors(eng_model *m, char err[256])
{
    eng_hparams *hp = &m->hp;
    const gguf *g = m->g;
    int rc;
    const int64_t n_embd = hp->n_embd;
    const gguf_tensor *te = gguf_find_tensor(g, "token_embd.weight");
    if (!te) {
        snprintf(err, 256, "%s: tensor 'token_embd.weight' is missing", gguf_path(g));
        return ENG_EFORMAT;
    }
    hp->n_vocab = (int32_t)te->ne[1];
    if (te->ne[1] > (1 << 24) || hp->n_vocab != tok_n_vocab(m->tk)) {
        snprintf(err, 256, "%s: token_embd.weight has %lld rows but the tokenizer has %d tokens",
                 gguf_path(g), (long long)te->ne[1], tok_n_vocab(m->tk));
        return ENG_EFORMAT;
    }
    if ((rc = bind_weight(m, &m->tok_embd, "token_embd.weight", n_embd, hp->n_vocab, true, err)) ||
        (rc = bind_weight(m, &m->output, "output.weight", n_embd, hp->n_vocab, false, err)))
        return rc;
    hp->tied_output = m->output.data == NULL;
    /* A decode step reads one embedding row, and the output head in full. */
    m->decode_weight_bytes = m->tok_embd.row_bytes +
                             (hp->tied_output ? 0 : m->output.row_bytes * (uint64_t)hp->n_vocab);
    if (hp->tied_output) {
        m->output = m->tok_embd;
        m->decode_weight_bytes += m->tok_embd.row_bytes * (uint64_t)hp->n_vocab;
    }

    const size_t n_vec = vec_floats_bound(hp);
    m->norm_store = malloc(n_vec * sizeof(float));
    m->repacked_bytes = n_vec * sizeof(float);
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->norm_store || !m->layers) {
        snprintf(err, 256, "%s: out of memory for %d layers", gguf_path(g), hp->n_layer);
        return ENG_ENOMEM;
    }
    vec_store vs = {m->norm_store, m->norm_store + n_vec};
    if ((rc = bind_vec(m, &vs, &m->output_norm, "output_norm.weight", n_embd, true, err)))
        return rc;
    if (hp->arch == ENG_ARCH_LLAMA &&
        (rc = bind_rope_factors(m, &vs, &m->rope_freqs, "rope_freqs.weight", err)))
        return rc;
    if (hp->arch == ENG_ARCH_PHI3 &&
        ((rc = bind_rope_factors(m, &vs, &m->rope_long, "rope_factors_long.weight", err)) ||
         (rc = bind_rope_factors(m, &vs, &m->rope_short, "rope_factors_short.weight", err))))
        return rc;
    for (int32_t il = 0; il < hp->n_layer; il++)
        if ((rc = load_layer(m, &vs, il, err)))
            return rc;

    uint64_t type_bytes[QT_TYPE_COUNT] = {0};
    for (int32_t i = 0; i < m->n_weights; i++) {
        const eng_w *w = m->weights[i];
        if (w != &m->tok_embd && w != &m->output)
            type_bytes[w->type] += w->row_bytes * (uint64_t)w->ne1;
    }
    m->main_type = QT_F32;
    for (int t = 0; t < QT_TYPE_COUNT; t++)
        if (type_bytes[t] > type_bytes[m->main_type])
            m->main_type = (qt_type)t;
    return ENG_OK;
}

/* Matrices whose rows the fastest kernels here want in another layout
 * (qt_repack_type: Q4_0, Q8_0, Q4_K and Q6_K on AVX-512 CPUs) are copied
 * once into one anonymous mapping, row by row, and point there from then
 * on; the embedding table stays in place (rows of it are looked up as
 * stored, and a tied output head shares it). The mapped pages a matrix
 * was copied from are handed back to the kernel (MADV_DONTNEED: the file
 * is still there to read them from again), so peak memory grows by one
 * matrix, not by all of them. The copies are counted in repacked_bytes. The mapping is populated
 * in one call and each matrix's rows are split across the online cores: on
 * the virtual machine we measure on, first writes to fresh memory dominate
 * (0.7-0.9 s per 580 MB, from a plain memset), and the two together took
 * TinyLlama Q4_0's load from 1.26 s to 0.86 s (Q8_0: 2.7 s to 1.5 s). The
 * mapping asks for transparent huge pages (2 MiB, where the kernel's THP
 * mode is "madvise" or "always"): fewer TLB walks for kernels that stream
 * rows with a prefetch 4 KiB ahead (Q4_K x16 decode ~4% faster on a
 * two-thread stream, 128-token prompts 5-10% faster, measured) and fewer
 * faults while populating (Q4_0 load 0.8 s -> 0.3-0.5 s). */
/* One matrix's rows into dst (stride bytes apart), split across a pool's
 * threads by row. */
typedef struct repack_task {
    const eng_w *w;
    uint8_t *dst;
    size_t stride;
} repack_task;

static void repack_share(void *arg, int ith, int nth)
{
    const repack_task *t = arg;
    long r0, r1;
    pool_range((long)t->w->ne1, ith, nth, &r0, &r1);
    for (long r = r0; r < r1; r++)
        qt_repack_row(t->w->type, t->w->data + (size_t)r * t->w->row_bytes, t->dst + (size_t)r * t->stride,
                      t->w->ne0);
}

/* The layout w is copied into (its own type: not copied), and the bytes
 * between its copied rows: rows start on 64 bytes, as the kernels' aligned
 * loads want. */
static qt_type repack_target(const eng_model *m, const eng_w *w)
{
    return w == &m->tok_embd ? w->type : qt_repack_type(w->type, w->ne0);
}

static size_t repack_stride(const eng_w *w)
{
    return (w->row_bytes + 63) / 64 * 64;
}

static int repack_weights(eng_model *m, char err[256])
{
    size_t total = 0;
    for (int32_t i = 0; i < m->n_weights; i++) {
        const eng_w *w = m->weights[i];
        if (repack_target(m, w) != w->type)
            total += repack_stride(w) * (size_t)w->ne1;
    }
    if (total == 0)
        return ENG_OK;
    /* on 2 MiB boundaries, asking for transparent huge pages, then
     * populated in one call (where the kernel lacks MADV_POPULATE_WRITE, the
     * copies' first writes fault the pages in) */
    const size_t huge = (size_t)2 << 20;
    void *raw = mmap(NULL, total + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        snprintf(err, 256, "%s: out of memory for %zu bytes of repacked weights", gguf_path(m->g), total);
        return ENG_ENOMEM;
    }
    m->repack_buf = raw;
    m->repack_len = total + huge;
    uint8_t *buf = (uint8_t *)(((uintptr_t)raw + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
    (void)madvise(buf, total, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
#endif
#ifdef MADV_POPULATE_WRITE
    if (madvise(buf, total, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) {
        snprintf(err, 256, "%s: cannot populate %zu bytes of repacked weights: %s", gguf_path(m->g), total,
                 strerror(errno));
        return ENG_ENOMEM; /* eng_model_close unmaps it */
    }
#endif
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    /* one thread per online core; without a pool (no threads to be had)
     * the copies run on this thread alone */
    pool *workers = NULL;
    char perr[256];
    if (pool_new(&workers, 0, perr) != 0)
        workers = NULL;
    uint8_t *dst = buf;
    for (int32_t i = 0; i < m->n_weights; i++) {
        eng_w *w = m->weights[i];
        const qt_type to = repack_target(m, w);
        if (to == w->type)
            continue;
        const size_t bytes = w->row_bytes * (size_t)w->ne1, stride = repack_stride(w);
        assert(qt_row_bytes(to, w->ne0) == w->row_bytes);
        repack_task task = {w, dst, stride};
        if (workers)
            pool_run(workers, repack_share, &task);
        else
            repack_share(&task, 0, 1);
        if (gguf_is_mapped(m->g)) {
            uintptr_t lo = ((uintptr_t)w->data + page - 1) / page * page;
            uintptr_t hi = ((uintptr_t)w->data + bytes) / page * page;
            if (hi > lo)
                madvise((void *)lo, hi - lo, MADV_DONTNEED);
        }
        w->data = dst;
        w->type = to;
        w->row_bytes = stride;
        dst += stride * (size_t)w->ne1;
    }
    if (workers)
        pool_free(workers);
    m->repacked_bytes += total;
    return ENG_OK;
}

int eng_model_open(eng_model **out, const char *path, char err[256])
{
    *out = NULL;
    eng_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, 256, "%s: out of memory", path);
        return ENG_ENOMEM;
    }
    int rc = gguf_open(&m->g, path, err);
    if (rc) {
        free(m);
        return rc == GGUF_EIO ? ENG_EIO : ENG_EFORMAT;
    }
    m->weights = calloc(gguf_tensor_count(m->g) + 1, sizeof *m->weights);
    if (!m->weights) {
        snprintf(err, 256, "%s: out of memory", path);
        rc = ENG_ENOMEM;
        goto fail;
    }
    const char *arch = gguf_get_str(m->g, "general.architecture");
    if (!arch) {
        snprintf(err, 256, "%s: general.architecture is missing", path);
        rc = ENG_EFORMAT;
        goto fail;
    }
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(arch, arch_table[i].name) == 0)
            m->hp.arch = arch_table[i].arch;
    if (!m->hp.arch) {
        char names[128] = "";
        for (size_t i = 0; i < N_ARCHS; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     arch_table[i].name);
        snprintf(err, 256, "%s: architecture '%.40s' is not supported (supported: %s)", path,
                 arch, names);
        rc = ENG_EFORMAT;
        goto fail;
    }
    snprintf(m->hp.arch_name, sizeof m->hp.arch_name, "%s", arch);
    char terr[256];
    if (tok_open_gguf(&m->tk, m->g, terr) != TOK_OK) {
        snprintf(err, 256, "%s: tokenizer: %s", path, terr);
        rc = ENG_EFORMAT;
        goto fail;
    }
    if ((rc = load_hparams(m, arch, err)) || (rc = load_tensors(m, err)) || (rc = repack_weights(m, err)))
        goto fail;
    *out = m;
    return ENG_OK;
fail:
    eng_model_close(m);
    return rc;
}

void eng_model_close(eng_model *m)
{
    if (!m)
        return;
    tok_free(m->tk);
    gguf_close(m->g);
    free(m->layers);
    free(m->weights);
    free(m->norm_store);
    if (m->repack_buf)
        munmap(m->repack_buf, m->repack_len);
    free(m);
}

const eng_hparams *eng_model_hparams(const eng_model *m) { return &m->hp; }
const tok *eng_model_tok(const eng_model *m) { return m->tk; }
const gguf *eng_model_gguf(const eng_model *m) { return m->g; }
uint64_t eng_model_decode_weight_bytes(const eng_model *m) { return m->decode_weight_bytes; }
uint64_t eng_model_repacked_bytes(const eng_model *m) { return m->repacked_bytes; }
qt_type eng_model_main_type(const eng_model *m) { return m->main_type; }
