/*
 * model.c - open a GGUF model: read the hyper-parameters of its
 * architecture, bind and check every weight tensor, load the tokenizer.
 *
 * Weights are not copied: an eng_w points into the file's read-only mapping
 * and the kernels read the blocks where they lie. Only the norm vectors
 * (a few KiB) are converted to F32 at load, into one buffer the model owns.
 * Every tensor's shape is checked against the hyper-parameters here, so the
 * forward pass can index without further checks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

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
    return ENG_OK;
}

/* A norm weight of n floats, converted into dst. */
static int bind_norm(eng_model *m, float *dst, const char *name, int64_t n, char err[256])
{
    eng_w w;
    int rc = bind(m, &w, name, n, 1, true, err);
    if (rc)
        return rc;
    qt_get(w.type)->to_float(w.data, dst, n);
    return ENG_OK;
}

static int load_llama(eng_model *m, const char *arch, char err[256])
{
    eng_hparams *hp = &m->hp;
    const gguf *g = m->g;
    int rc;
    hp->arch = ENG_ARCH_LLAMA;
    if ((rc = need_u32(g, arch, "embedding_length", &hp->n_embd, true, err)) ||
        (rc = need_u32(g, arch, "block_count", &hp->n_layer, true, err)) ||
        (rc = need_u32(g, arch, "feed_forward_length", &hp->n_ff, true, err)) ||
        (rc = need_u32(g, arch, "attention.head_count", &hp->n_head, true, err)))
        return rc;
    hp->n_head_kv = hp->n_head;
    hp->n_ctx_train = 2048;
    if ((rc = need_u32(g, arch, "attention.head_count_kv", &hp->n_head_kv, false, err)) ||
        (rc = need_u32(g, arch, "context_length", &hp->n_ctx_train, false, err)))
        return rc;
    if (hp->n_embd % hp->n_head != 0 || hp->n_head % hp->n_head_kv != 0) {
        snprintf(err, 256, "%s: %d heads do not divide n_embd %d or are not a multiple of %d kv heads",
                 gguf_path(g), hp->n_head, hp->n_embd, hp->n_head_kv);
        return ENG_EFORMAT;
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    hp->n_rot = hp->head_dim;
    if ((rc = need_u32(g, arch, "rope.dimension_count", &hp->n_rot, false, err)))
        return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0) {
        snprintf(err, 256, "%s: %s.rope.dimension_count %d must be even and at most the head size %d",
                 gguf_path(g), arch, hp->n_rot, hp->head_dim);
        return ENG_EFORMAT;
    }
    char key[128];
    hp->rope_freq_base = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    if (gguf_get_f32(g, key, &hp->rope_freq_base) == GGUF_ETYPE || !(hp->rope_freq_base > 0)) {
        snprintf(err, 256, "%s: %s must be a positive number", gguf_path(g), key);
        return ENG_EFORMAT;
    }
    hp->norm_eps = 1e-5f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (gguf_get_f32(g, key, &hp->norm_eps) == GGUF_ETYPE || !(hp->norm_eps >= 0)) {
        snprintf(err, 256, "%s: %s must be a non-negative number", gguf_path(g), key);
        return ENG_EFORMAT;
    }

    const int64_t n_embd = hp->n_embd, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
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
    if (hp->tied_output)
        m->output = m->tok_embd;

    size_t n_norm = (size_t)n_embd * (2 * (size_t)hp->n_layer + 1);
    m->norm_store = malloc(n_norm * sizeof(float));
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->norm_store || !m->layers) {
        snprintf(err, 256, "%s: out of memory for %d layers", gguf_path(g), hp->n_layer);
        return ENG_ENOMEM;
    }
    float *ns = m->norm_store;
    if ((rc = bind_norm(m, ns, "output_norm.weight", n_embd, err)))
        return rc;
    m->output_norm = ns;
    ns += n_embd;

    uint64_t bytes = m->output.row_bytes * (uint64_t)m->output.ne1 + m->tok_embd.row_bytes;
    uint64_t type_bytes[QT_TYPE_COUNT] = {0};
    for (int32_t i = 0; i < hp->n_layer; i++) {
        eng_layer *L = &m->layers[i];
        char name[96];
#define LNAME(s) (snprintf(name, sizeof name, "blk.%d." s ".weight", i), name)
        if ((rc = bind_norm(m, ns, LNAME("attn_norm"), n_embd, err)))
            return rc;
        L->attn_norm = ns;
        ns += n_embd;
        if ((rc = bind_norm(m, ns, LNAME("ffn_norm"), n_embd, err)))
            return rc;
        L->ffn_norm = ns;
        ns += n_embd;
        if ((rc = bind_weight(m, &L->wq, LNAME("attn_q"), n_embd, n_embd, true, err)) ||
            (rc = bind_weight(m, &L->wk, LNAME("attn_k"), n_embd, kv_dim, true, err)) ||
            (rc = bind_weight(m, &L->wv, LNAME("attn_v"), n_embd, kv_dim, true, err)) ||
            (rc = bind_weight(m, &L->wo, LNAME("attn_output"), n_embd, n_embd, true, err)) ||
            (rc = bind_weight(m, &L->w_gate, LNAME("ffn_gate"), n_embd, hp->n_ff, true, err)) ||
            (rc = bind_weight(m, &L->w_up, LNAME("ffn_up"), n_embd, hp->n_ff, true, err)) ||
            (rc = bind_weight(m, &L->w_down, LNAME("ffn_down"), hp->n_ff, n_embd, true, err)))
            return rc;
#undef LNAME
        const eng_w *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) {
            uint64_t b = ws[j]->row_bytes * (uint64_t)ws[j]->ne1;
            bytes += b;
            type_bytes[ws[j]->type] += b;
        }
        bytes += 2 * (uint64_t)n_embd * sizeof(float);
    }
    m->decode_weight_bytes = bytes;
    m->main_type = QT_F32;
    for (int t = 0; t < QT_TYPE_COUNT; t++)
        if (type_bytes[t] > type_bytes[m->main_type])
            m->main_type = (qt_type)t;
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
    snprintf(m->hp.arch_name, sizeof m->hp.arch_name, "%s", arch);
    char terr[256];
    if (tok_open_gguf(&m->tk, m->g, terr) != TOK_OK) {
        snprintf(err, 256, "%s: tokenizer: %s", path, terr);
        rc = ENG_EFORMAT;
        goto fail;
    }
    if (strcmp(arch, "llama") == 0) {
        rc = load_llama(m, arch, err);
    } else {
        snprintf(err, 256, "%s: architecture '%s' is not supported (supported: llama)", path,
                 arch);
        rc = ENG_EFORMAT;
    }
    if (rc)
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
    free(m);
}

const eng_hparams *eng_model_hparams(const eng_model *m) { return &m->hp; }
const tok *eng_model_tok(const eng_model *m) { return m->tk; }
const gguf *eng_model_gguf(const eng_model *m) { return m->g; }
uint64_t eng_model_decode_weight_bytes(const eng_model *m) { return m->decode_weight_bytes; }
qt_type eng_model_main_type(const eng_model *m) { return m->main_type; }
