/*
 * lora.c - LoRA adapters: load, attach to a context, apply in the matmuls.
 *
 * An adapter is a GGUF file with general.type = "adapter", adapter.type =
 * "lora", the base model's general.architecture, adapter.lora.alpha, and for
 * each adapted weight W (ne0 = n_in, ne1 = n_out) two tensors named after it:
 * "<W>.lora_a" with ne = [n_in, rank] and "<W>.lora_b" with ne = [rank, n_out].
 * The adapted product is
 *     y = W x + scale * (alpha / rank) * B (A x)        (alpha 0: no alpha/rank)
 * computed as two small extra matmuls after W's own, so the base weights stay
 * untouched in their read-only mapping and adapters can be attached, scaled,
 * swapped or removed between evaluations without reloading anything.
 *
 * An eng_lora is immutable once opened and tied to the model it was checked
 * against; a context holds up to ENG_MAX_LORAS of them with their scales.
 * Tokens already in the KV cache keep the values computed before a change.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

typedef struct lora_pair {
    eng_w a, b;       /* A: rank rows of n_in; B: n_out rows of rank */
    float alpha_rank; /* alpha / rank, or 1 when the file gives no alpha */
} lora_pair;

struct eng_lora {
    const eng_model *m;
    gguf *g;
    lora_pair *pairs;
    int32_t n_pairs;
    const lora_pair **by_weight; /* [m->n_weights]: the pair adapting weight id, or NULL */
};

static const char suffix_a[] = ".lora_a", suffix_b[] = ".lora_b";

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static const eng_w *find_weight(const eng_model *m, const char *name, size_t len)
{
    for (int32_t i = 0; i < m->n_weights; i++)
        if (strlen(m->weights[i]->name) == len && strncmp(m->weights[i]->name, name, len) == 0)
            return m->weights[i];
    return NULL;
}

/* A LoRA factor as a matmul weight: ne1 rows of ne0, of a type we can
 * multiply with. id -1: factors are never adapted themselves. */
static int bind_factor(const eng_lora *l, eng_w *w, const gguf_tensor *t, int64_t ne0,
                       int64_t ne1, char err[256])
{
    if (t->n_dims != 2 || t->ne[0] != ne0 || t->ne[1] != ne1) {
        snprintf(err, 256, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                 gguf_path(l->g), t->name, (long long)t->ne[0], (long long)t->ne[1],
                 (long long)ne0, (long long)ne1);
        return ENG_EFORMAT;
    }
    const qt_traits *tr = qt_get((qt_type)t->type);
    if (!tr || !tr->vec_dot) {
        snprintf(err, 256, "%s: tensor '%s' has type %s, which this engine cannot compute with",
                 gguf_path(l->g), t->name, qt_type_name((qt_type)t->type));
        return ENG_EFORMAT;
    }
    *w = (eng_w){.id = -1, .name = t->name, .data = t->data, .type = (qt_type)t->type,
                 .ne0 = ne0, .ne1 = ne1, .row_bytes = qt_row_bytes((qt_type)t->type, ne0)};
    return ENG_OK;
}

void eng_lora_close(eng_lora *l)
{
    if (!l)
        return;
    free(l->pairs);
    free(l->by_weight);
    gguf_close(l->g);
    free(l);
}

int eng_lora_open(eng_lora **out, const eng_model *m, const char *path, char err[256])
{
    *out = NULL;
    eng_lora *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, 256, "%s: out of memory", path);
        return ENG_ENOMEM;
    }
    l->m = m;
    int rc = gguf_open(&l->g, path, err);
    if (rc) {
        free(l);
        return rc == GGUF_EIO ? ENG_EIO : ENG_EFORMAT;
    }
    const char *type = gguf_get_str(l->g, "general.type");
    const char *atype = gguf_get_str(l->g, "adapter.type");
    const char *arch = gguf_get_str(l->g, "general.architecture");
    rc = ENG_EFORMAT;
    if (!type || strcmp(type, "adapter") != 0 || !atype || strcmp(atype, "lora") != 0) {
        snprintf(err, 256, "%s: not a LoRA adapter (general.type '%s', adapter.type '%s'; expected 'adapter' and 'lora')",
                 path, type ? type : "(none)", atype ? atype : "(none)");
        goto fail;
    }
    if (!arch || strcmp(arch, m->hp.arch_name) != 0) {
        snprintf(err, 256, "%s: adapter is for architecture '%s', the model is '%s'", path,
                 arch ? arch : "(none)", m->hp.arch_name);
        goto fail;
    }
    float alpha = 0.0f;
    if (gguf_get_f32(l->g, "adapter.lora.alpha", &alpha) == GGUF_ETYPE) {
        snprintf(err, 256, "%s: adapter.lora.alpha is not a number", path);
        goto fail;
    }
    size_t n_t = gguf_tensor_count(l->g);
    l->pairs = calloc(n_t / 2 + 1, sizeof *l->pairs);
    l->by_weight = calloc((size_t)m->n_weights + 1, sizeof *l->by_weight);
    if (!l->pairs || !l->by_weight) {
        snprintf(err, 256, "%s: out of memory", path);
        rc = ENG_ENOMEM;
        goto fail;
    }
    /* Every tensor is one half of a pair; walk the A halves and find each B. */
    for (size_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(l->g, i);
        bool is_a = ends_with(t->name, suffix_a);
        if (!is_a && !ends_with(t->name, suffix_b)) {
            snprintf(err, 256, "%s: tensor '%s' is neither <weight>.lora_a nor <weight>.lora_b",
                     path, t->name);
            goto fail;
        }
        size_t base_len = strlen(t->name) - (sizeof suffix_a - 1);
        char other[256];
        if (base_len + sizeof suffix_b > sizeof other) {
            snprintf(err, 256, "%s: tensor name '%.80s...' is too long", path, t->name);
            goto fail;
        }
        snprintf(other, sizeof other, "%.*s%s", (int)base_len, t->name, is_a ? suffix_b : suffix_a);
        const gguf_tensor *partner = gguf_find_tensor(l->g, other);
        if (!partner) {
            snprintf(err, 256, "%s: tensor '%s' has no partner '%s'", path, t->name, other);
            goto fail;
        }
        if (!is_a)
            continue;
        const eng_w *w = find_weight(m, t->name, base_len);
        if (!w) {
            snprintf(err, 256, "%s: '%.*s' is not a weight matrix of the model", path,
                     (int)base_len, t->name);
            goto fail;
        }
        if (w == &m->tok_embd && !m->hp.tied_output) {
            snprintf(err, 256, "%s: adapting token_embd.weight (an embedding lookup) is not supported",
                     path);
            goto fail;
        }
        lora_pair *p = &l->pairs[l->n_pairs];
        int64_t rank = t->ne[1];
        if ((rc = bind_factor(l, &p->a, t, w->ne0, rank, err)) ||
            (rc = bind_factor(l, &p->b, partner, rank, w->ne1, err)))
            goto fail;
        rc = ENG_EFORMAT;
        p->alpha_rank = alpha != 0.0f ? alpha / (float)rank : 1.0f;
        l->by_weight[w->id] = p;
        l->n_pairs++;
    }
    if (l->n_pairs == 0) {
        snprintf(err, 256, "%s: the adapter holds no lora_a/lora_b pairs", path);
        goto fail;
    }
    *out = l;
    return ENG_OK;
fail:
    eng_lora_close(l);
    return rc;
}

int32_t eng_lora_n_pairs(const eng_lora *l) { return l->n_pairs; }

void lora_set_release(lora_set *ls)
{
    free(ls->t);
    free(ls->u);
    memset(ls, 0, sizeof *ls);
}

int eng_ctx_set_loras(eng_ctx *c, const eng_lora *const *adapters, const float *scales, int n,
                      char err[256])
{
    if (n < 0 || n > ENG_MAX_LORAS) {
        snprintf(err, 256, "%d adapters given; at most %d may be active", n, ENG_MAX_LORAS);
        return ENG_EUSAGE;
    }
    for (int i = 0; i < n; i++) {
        if (!adapters[i] || adapters[i]->m != c->m) {
            snprintf(err, 256, "adapter %d was not opened for this context's model", i);
            return ENG_EUSAGE;
        }
    }
    for (int i = 0; i < n; i++) {
        c->lora.adapters[i] = adapters[i];
        c->lora.scales[i] = scales ? scales[i] : 1.0f;
    }
    c->lora.n = n;
    c->mm.lora = n > 0 ? &c->lora : NULL;
    return ENG_OK;
}

static int grow(float **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    float *nb = realloc(*buf, need * sizeof(float));
    if (!nb)
        return -1;
    *buf = nb;
    *cap = need;
    return 0;
}

int lora_apply(pool *p, mm_scratch *s, const mm_job *jobs, int n_jobs, const float *x,
               int32_t n, char err[256])
{
    lora_set *ls = s->lora;
    int rc = ENG_OK;
    s->lora = NULL; /* the factor matmuls below are plain ones */
    for (int j = 0; j < n_jobs && rc == ENG_OK; j++) {
        const eng_w *w = jobs[j].w;
        if (w->id < 0)
            continue;
        for (int k = 0; k < ls->n && rc == ENG_OK; k++) {
            const lora_pair *pr = ls->adapters[k]->by_weight[w->id];
            if (!pr || ls->scales[k] == 0.0f)
                continue;
            if (grow(&ls->t, &ls->cap_t, (size_t)n * (size_t)pr->a.ne1) ||
                grow(&ls->u, &ls->cap_u, (size_t)n * (size_t)w->ne1)) {
                snprintf(err, 256, "out of memory applying an adapter to %s", w->name);
                rc = ENG_ENOMEM;
                break;
            }
            mm_job ja = {&pr->a, ls->t}, jb = {&pr->b, ls->u};
            if ((rc = mm_run(p, s, &ja, 1, x, n, err)) || (rc = mm_run(p, s, &jb, 1, ls->t, n, err)))
                break;
            const float scale = ls->scales[k] * pr->alpha_rank;
            const size_t total = (size_t)n * (size_t)w->ne1;
            for (size_t i = 0; i < total; i++)
                jobs[j].y[i] += scale * ls->u[i];
        }
    }
    s->lora = ls;
    return rc;
}
