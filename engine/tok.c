/*
 * tok.c - the tokenizer's front: loading tokenizer.ggml.* metadata from a
 * GGUF file, splitting special tokens out of the input, turning ids back into
 * text, and the small containers the SentencePiece (tok_spm.c) and byte-level
 * BPE (tok_bpe.c) halves share.
 *
 * Loading copies every string it keeps (token texts, merge halves) into the
 * tok's own arena, so the gguf may be closed afterwards; a tok is never
 * written again once tok_open_gguf() returns, which is what makes it safe to
 * share between threads.
 *
 * Special tokens follow llama.cpp: user-defined tokens are always cut out of
 * the text before tokenizing, control and unknown tokens only when the caller
 * passes TOK_PARSE_SPECIAL, or inside the spans the caller marks as its own
 * markup (tok_encode_spans). At each position the longest eligible token wins
 * and the scan resumes after it (leftmost-longest, as Hugging Face's added
 * token matcher does). Each run of text between them is encoded on its own.
 *
 * Decoding is the exact inverse of encoding: pieces are precomputed at load
 * (U+2581 -> space, <0xXX> -> byte, byte-level characters -> bytes), and for
 * SentencePiece with add_space_prefix the one space that encoding put in
 * front of each run of text is taken off again.
 */
#include "tok_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tok_set_err(char err[256], const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
}

/* ---- hashing -------------------------------------------------------------- */

static uint64_t tok_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint32_t tok_str_hash(const char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = tok_mix64(h ^ w);
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = tok_mix64(h ^ w);
    return (uint32_t)(h ^ (h >> 32));
}

static uint32_t tok_pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n && c < (1u << 31))
        c <<= 1;
    return c;
}

/* ---- interned strings ---------------------------------------------------- */

void tok_strtab_free(tok_strtab *s)
{
    free(s->arena);
    free(s->off);
    free(s->len);
    free(s->slot);
    free(s->slot_hash);
    memset(s, 0, sizeof *s);
}

int32_t tok_strtab_append(tok_strtab *s, const char *p, size_t n)
{
    if (s->n == s->cap) {
        if (s->cap > INT32_MAX / 2)
            return TOK_EFORMAT;
        int32_t cap = s->cap ? s->cap * 2 : 256;
        uint32_t *off = realloc(s->off, (size_t)cap * sizeof *off);
        if (!off)
            return TOK_ENOMEM;
        s->off = off;
        uint32_t *len = realloc(s->len, (size_t)cap * sizeof *len);
        if (!len)
            return TOK_ENOMEM;
        s->len = len;
        s->cap = cap;
    }
    /* Offsets and lengths are 32-bit: a vocabulary past 4 GiB is not one. */
    if (n >= UINT32_MAX || s->arena_len + n + 1 > UINT32_MAX)
        return TOK_EFORMAT;
    if (s->arena_len + n + 1 > s->arena_cap) {
        size_t cap = s->arena_cap ? s->arena_cap : 4096;
        while (cap < s->arena_len + n + 1)
            cap *= 2;
        char *a = realloc(s->arena, cap);
        if (!a)
            return TOK_ENOMEM;
        s->arena = a;
        s->arena_cap = cap;
    }
    if (n)
        memcpy(s->arena + s->arena_len, p, n);
    s->arena[s->arena_len + n] = '\0';
    s->off[s->n] = (uint32_t)s->arena_len;
    s->len[s->n] = (uint32_t)n;
    s->arena_len += n + 1;
    return s->n++;
}

static int tok_strtab_grow_index(tok_strtab *s)
{
    uint32_t cap = s->mask ? (s->mask + 1) * 2 : tok_pow2_at_least((size_t)s->cap * 2);
    uint32_t *slot = calloc(cap, sizeof *slot);
    uint32_t *hash = calloc(cap, sizeof *hash);
    if (!slot || !hash) {
        free(slot);
        free(hash);
        return TOK_ENOMEM;
    }
    uint32_t mask = cap - 1;
    for (uint32_t i = 0; s->mask && i <= s->mask; i++) {
        if (!s->slot[i])
            continue;
        uint32_t j = s->slot_hash[i] & mask;
        while (slot[j])
            j = (j + 1) & mask;
        slot[j] = s->slot[i];
        hash[j] = s->slot_hash[i];
    }
    free(s->slot);
    free(s->slot_hash);
    s->slot = slot;
    s->slot_hash = hash;
    s->mask = mask;
    return TOK_OK;
}

int32_t tok_strtab_find(const tok_strtab *s, const char *p, size_t n)
{
    if (!s->mask)
        return -1;
    uint32_t h = tok_str_hash(p, n);
    for (uint32_t i = h & s->mask; s->slot[i]; i = (i + 1) & s->mask) {
        if (s->slot_hash[i] != h)
            continue;
        int32_t id = (int32_t)(s->slot[i] - 1);
        if (s->len[id] == n && memcmp(s->arena + s->off[id], p, n) == 0)
            return id;
    }
    return -1;
}

int tok_strtab_index(tok_strtab *s, int32_t id)
{
    const char *p = s->arena + s->off[id];
    size_t n = s->len[id];
    if (tok_strtab_find(s, p, n) >= 0)
        return 0;
    /* Keep the load factor at or below one half so probes stay short. */
    if (!s->mask || (size_t)(s->n_indexed + 1) * 2 > (size_t)s->mask + 1) {
        int rc = tok_strtab_grow_index(s);
        if (rc)
            return rc;
    }
    uint32_t h = tok_str_hash(p, n);
    uint32_t i = h & s->mask;
    while (s->slot[i])
        i = (i + 1) & s->mask;
    s->slot[i] = (uint32_t)id + 1;
    s->slot_hash[i] = h;
    s->n_indexed++;
    return 1;
}

int32_t tok_strtab_intern(tok_strtab *s, const char *p, size_t n)
{
    int32_t id = tok_strtab_find(s, p, n);
    if (id >= 0)
        return id;
    id = tok_strtab_append(s, p, n);
    if (id < 0)
        return id;
    int rc = tok_strtab_index(s, id);
    return rc < 0 ? rc : id;
}

/* ---- pair map ------------------------------------------------------------- */

int tok_pairmap_init(tok_pairmap *m, size_t n_max)
{
    memset(m, 0, sizeof *m);
    if (n_max > (1u << 30))
        return TOK_EFORMAT;
    uint32_t cap = tok_pow2_at_least(n_max * 2 + 1);
    m->key = malloc((size_t)cap * sizeof *m->key);
    m->a = malloc((size_t)cap * sizeof *m->a);
    m->b = malloc((size_t)cap * sizeof *m->b);
    if (!m->key || !m->a || !m->b) {
        tok_pairmap_free(m);
        return TOK_ENOMEM;
    }
    for (uint32_t i = 0; i < cap; i++)
        m->key[i] = TOK_PAIRMAP_EMPTY;
    m->mask = cap - 1;
    return TOK_OK;
}

void tok_pairmap_free(tok_pairmap *m)
{
    free(m->key);
    free(m->a);
    free(m->b);
    memset(m, 0, sizeof *m);
}

bool tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t a, int32_t b)
{
    uint32_t i = (uint32_t)tok_mix64(key) & m->mask;
    while (m->key[i] != TOK_PAIRMAP_EMPTY) {
        if (m->key[i] == key)
            return false;
        i = (i + 1) & m->mask;
    }
    m->key[i] = key;
    m->a[i] = a;
    m->b[i] = b;
    return true;
}

bool tok_pairmap_get(const tok_pairmap *m, uint64_t key, int32_t *a, int32_t *b)
{
    if (!m->key)
        return false;
    uint32_t i = (uint32_t)tok_mix64(key) & m->mask;
    while (m->key[i] != TOK_PAIRMAP_EMPTY) {
        if (m->key[i] == key) {
            if (a)
                *a = m->a[i];
            if (b)
                *b = m->b[i];
            return true;
        }
        i = (i + 1) & m->mask;
    }
    return false;
}

/* ---- merge work queue ----------------------------------------------------- */

static bool tok_bigram_before(const tok_bigram *x, const tok_bigram *y)
{
    return x->key < y->key || (x->key == y->key && x->left < y->left);
}

int tok_heap_push(tok_heap *h, tok_bigram b)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        tok_bigram *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return TOK_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!tok_bigram_before(&b, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = b;
    return TOK_OK;
}

tok_bigram tok_heap_pop(tok_heap *h)
{
    tok_bigram top = h->v[0];
    tok_bigram last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && tok_bigram_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!tok_bigram_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

void tok_heap_free(tok_heap *h)
{
    free(h->v);
    memset(h, 0, sizeof *h);
}

/* ---- growable outputs ----------------------------------------------------- */

int tok_ids_push(tok_ids *o, int32_t id)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v)
            return TOK_ENOMEM;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
    return TOK_OK;
}

int tok_spans_push(tok_spans *s, size_t start, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        tok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return TOK_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].start = start;
    s->v[s->n].len = len;
    s->n++;
    return TOK_OK;
}

/* ---- UTF-8 ---------------------------------------------------------------- */

size_t tok_utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t want;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        want = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        want = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        want = 4;
        cp = c & 0x07;
    } else {
        return 1;
    }
    if (want > n)
        return 1;
    for (size_t i = 1; i < want; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 1;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF are not
     * characters (RFC 3629). */
    if ((want == 3 && cp < 0x800) || (want == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 1;
    return want;
}

size_t tok_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---- loading -------------------------------------------------------------- */

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* Texts llama.cpp recognises as end-of-turn and as end-of-generation tokens
 * when the metadata does not name them. */
static const char *const tok_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<end_of_utterance>",
    "<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>", /* DeepSeek */
    NULL,
};
static const char *const tok_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
    "<end_of_utterance>", NULL,
};

static int32_t tok_find_text(const tok *t, const char *s)
{
    int32_t id = tok_strtab_find(&t->str, s, strlen(s));
    return id < t->n_vocab ? id : -1;
}

/* A token id from integer metadata. Absent keys and ids outside the vocabulary
 * leave *id alone (llama.cpp warns and keeps its default, and converters write
 * 0xFFFFFFFF for "none"); a non-integer value is a format error. */
static int tok_load_id(const gguf *g, const char *key, int32_t n_vocab, int32_t *id,
                       char err[256])
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        return TOK_OK;
    int64_t x;
    switch (v->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        x = v->v.u64 > (uint64_t)INT64_MAX ? -1 : (int64_t)v->v.u64;
        break;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        x = v->v.i64;
        break;
    default:
        tok_set_err(err, "%s: %s is a %s, expected an integer token id", gguf_path(g), key,
                    gguf_type_name(v->type));
        return TOK_EFORMAT;
    }
    if (x >= 0 && x < n_vocab)
        *id = (int32_t)x;
    return TOK_OK;
}

static int tok_load_bool(const gguf *g, const char *key, bool *b, char err[256])
{
    int rc = gguf_get_bool(g, key, b);
    if (rc == GGUF_ETYPE) {
        tok_set_err(err, "%s: %s is not a bool", gguf_path(g), key);
        return TOK_EFORMAT;
    }
    return TOK_OK;
}

static int tok_load_tokens(tok *t, const gguf *g, char err[256])
{
    const char *path = gguf_path(g);
    const gguf_value *v = gguf_get(g, KEY_TOKENS);
    if (!v) {
        tok_set_err(err, "%s: %s is missing (no vocabulary)", path, KEY_TOKENS);
        return TOK_EFORMAT;
    }
    if (v->type != GGUF_TYPE_ARRAY || v->v.arr.elem != GGUF_TYPE_STRING) {
        tok_set_err(err, "%s: %s is a %s, expected an array of strings", path, KEY_TOKENS,
                    v->type == GGUF_TYPE_ARRAY ? "array of another type"
                                               : gguf_type_name(v->type));
        return TOK_EFORMAT;
    }
    uint64_t n = v->v.arr.n;
    if (n == 0 || n > (uint64_t)INT32_MAX / 2) {
        tok_set_err(err, "%s: %s has %llu entries, expected 1 to %d", path, KEY_TOKENS,
                    (unsigned long long)n, INT32_MAX / 2);
        return TOK_EFORMAT;
    }
    const gguf_str *s = v->v.arr.data;
    t->n_vocab = (int32_t)n;

    /* Size the arena and index once: the vocabulary is most of what goes in. */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++)
        total += s[i].len + 1;
    if (total > UINT32_MAX) {
        tok_set_err(err, "%s: %s holds %zu bytes of text, more than 4 GiB", path, KEY_TOKENS,
                    total);
        return TOK_EFORMAT;
    }
    t->str.arena = malloc(total ? total : 1);
    t->str.off = malloc(n * sizeof *t->str.off);
    t->str.len = malloc(n * sizeof *t->str.len);
    if (!t->str.arena || !t->str.off || !t->str.len)
        goto nomem;
    t->str.arena_cap = total ? total : 1;
    t->str.cap = (int32_t)n;
    for (uint64_t i = 0; i < n; i++) {
        int32_t id = tok_strtab_append(&t->str, s[i].ptr, s[i].len);
        if (id < 0)
            goto nomem;
        /* An empty text can never be matched; a repeated text keeps its first
         * id (llama.cpp refuses such files; old converters wrote them). */
        if (s[i].len && tok_strtab_index(&t->str, id) < 0)
            goto nomem;
    }
    return TOK_OK;
nomem:
    tok_set_err(err, "%s: out of memory loading %llu tokens", path, (unsigned long long)n);
    return TOK_ENOMEM;
}

static int tok_load_scores_types(tok *t, const gguf *g, char err[256])
{
    const char *path = gguf_path(g);
    size_t n = (size_t)t->n_vocab;
    t->score = calloc(n, sizeof *t->score);
    t->attr = malloc(n);
    t->eog = calloc(n, 1);
    if (!t->score || !t->attr || !t->eog) {
        tok_set_err(err, "%s: out of memory for %zu token attributes", path, n);
        return TOK_ENOMEM;
    }
    memset(t->attr, TOK_ATTR_NORMAL, n);

    /* Scores are optional (BPE vocabularies often have none); when present
     * they must be one per token, float32 or int32 as llama.cpp accepts. */
    const gguf_value *v = gguf_get(g, KEY_SCORES);
    if (v) {
        if (v->type != GGUF_TYPE_ARRAY ||
            (v->v.arr.elem != GGUF_TYPE_FLOAT32 && v->v.arr.elem != GGUF_TYPE_INT32)) {
            tok_set_err(err, "%s: %s must be an array of float32 or int32", path, KEY_SCORES);
            return TOK_EFORMAT;
        }
        if (v->v.arr.n != n) {
            tok_set_err(err, "%s: %s has %llu entries but there are %zu tokens", path,
                        KEY_SCORES, (unsigned long long)v->v.arr.n, n);
            return TOK_EFORMAT;
        }
        for (size_t i = 0; i < n; i++) {
            float f = v->v.arr.elem == GGUF_TYPE_FLOAT32 ? ((const float *)v->v.arr.data)[i]
                                                         : (float)((const int32_t *)v->v.arr.data)[i];
            /* A NaN would break the merge order; rank it below everything. */
            t->score[i] = isnan(f) ? -INFINITY : f;
        }
    }

    v = gguf_get(g, KEY_TYPES);
    if (v) {
        if (v->type != GGUF_TYPE_ARRAY || v->v.arr.elem != GGUF_TYPE_INT32) {
            tok_set_err(err, "%s: %s must be an array of int32", path, KEY_TYPES);
            return TOK_EFORMAT;
        }
        if (v->v.arr.n != n) {
            tok_set_err(err, "%s: %s has %llu entries but there are %zu tokens", path,
                        KEY_TYPES, (unsigned long long)v->v.arr.n, n);
            return TOK_EFORMAT;
        }
        const int32_t *ty = v->v.arr.data;
        for (size_t i = 0; i < n; i++) {
            /* GGUF token types: 0 undefined, 1 normal ... 6 byte. */
            if (ty[i] < 0 || ty[i] > TOK_ATTR_BYTE) {
                tok_set_err(err, "%s: %s[%zu] = %d, expected 0..6 (token '%.40s')", path,
                            KEY_TYPES, i, (int)ty[i], tok_strtab_str(&t->str, (int32_t)i));
                return TOK_EFORMAT;
            }
            t->attr[i] = (uint8_t)(ty[i] == 0 ? TOK_ATTR_NORMAL : ty[i]);
        }
    }
    return TOK_OK;
}

/* The special ids, the add_* flags and the end-of-generation set. */
static int tok_load_specials(tok *t, const gguf *g, const tok_pre_family *fam, char err[256])
{
    int32_t n = t->n_vocab;
    if (t->kind == TOK_KIND_SPM) {
        /* LLaMA's SentencePiece defaults: <unk> 0, <s> 1, </s> 2. */
        t->unk = n > 0 ? 0 : -1;
        t->bos = n > 1 ? 1 : -1;
        t->eos = n > 2 ? 2 : -1;
        t->add_bos = true;
        t->add_space_prefix = true;
    } else {
        t->unk = t->bos = t->eos = -1;
        t->add_bos = fam->add_bos;
        t->add_space_prefix = false;
    }
    t->eot = t->eom = t->pad = -1;
    t->add_eos = false;

    static const struct {
        const char *key;
        size_t off;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", offsetof(tok, bos)},
        {"tokenizer.ggml.eos_token_id", offsetof(tok, eos)},
        {"tokenizer.ggml.unknown_token_id", offsetof(tok, unk)},
        {"tokenizer.ggml.padding_token_id", offsetof(tok, pad)},
        {"tokenizer.ggml.eot_token_id", offsetof(tok, eot)},
        {"tokenizer.ggml.eom_token_id", offsetof(tok, eom)},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        int32_t *dst = (int32_t *)((char *)t + ids[i].off);
        int rc = tok_load_id(g, ids[i].key, n, dst, err);
        if (rc)
            return rc;
    }
    int rc = tok_load_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err);
    if (!rc)
        rc = tok_load_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err);
    if (!rc)
        rc = tok_load_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err);
    if (rc)
        return rc;
    if (t->kind == TOK_KIND_BPE && fam->no_bos && !gguf_get(g, "tokenizer.ggml.bos_token_id"))
        t->bos = -1;
    if (t->bos < 0)
        t->add_bos = false;
    if (t->eos < 0)
        t->add_eos = false;

    /* Converters do not always name the end-of-turn token; find it by text. */
    for (const char *const *p = tok_eot_texts; t->eot < 0 && *p; p++)
        t->eot = tok_find_text(t, *p);
    if (t->eom < 0)
        t->eom = tok_find_text(t, "<|eom_id|>");

    for (const char *const *p = tok_eog_texts; *p; p++) {
        int32_t id = tok_find_text(t, *p);
        if (id >= 0)
            t->eog[id] = 1;
    }
    int32_t marks[] = {t->eos, t->eot, t->eom};
    for (size_t i = 0; i < 3; i++)
        if (marks[i] >= 0)
            t->eog[marks[i]] = 1;

    /* gpt-oss (harmony) ends turns with <|return|> or <|call|>; there <|end|>
     * only closes a message and must not stop generation. */
    int32_t end = tok_find_text(t, "<|end|>");
    int32_t ret = tok_find_text(t, "<|return|>"), call = tok_find_text(t, "<|call|>");
    if (end >= 0 && ret >= 0 && call >= 0 && t->eog[ret] && t->eog[call]) {
        t->eog[end] = 0;
        t->attr[end] = TOK_ATTR_USER_DEFINED;
        if (t->eot == end)
            t->eot = -1;
    }

    /* Like llama.cpp, a token that ends generation is a control token even
     * when the converter typed it normal, so it is not produced from text. */
    for (int32_t id = 0; id < n; id++)
        if (t->eog[id] && t->attr[id] != TOK_ATTR_CONTROL && t->attr[id] != TOK_ATTR_USER_DEFINED)
            t->attr[id] = TOK_ATTR_CONTROL;
    return TOK_OK;
}

static bool tok_has_space_mark(const tok *t, int32_t id)
{
    const char *s = tok_strtab_str(&t->str, id);
    return memmem(s, t->str.len[id], "\xe2\x96\x81", 3) != NULL;
}

static int tok_classify(tok *t, char err[256])
{
    t->cls = calloc((size_t)t->n_vocab, 1);
    if (!t->cls) {
        tok_set_err(err, "out of memory for token classes");
        return TOK_ENOMEM;
    }
    bool spm = t->kind == TOK_KIND_SPM;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t a = t->attr[id];
        if (a == TOK_ATTR_NORMAL || (a == TOK_ATTR_BYTE && !spm) ||
            (a == TOK_ATTR_USER_DEFINED && spm && tok_has_space_mark(t, id)))
            t->cls[id] = TOK_CLASS_PLAIN;
        else if (a == TOK_ATTR_CONTROL || a == TOK_ATTR_UNKNOWN || a == TOK_ATTR_USER_DEFINED)
            t->cls[id] = TOK_CLASS_SPECIAL;
    }
    return TOK_OK;
}

static int tok_build_special_trie(tok *t, char err[256])
{
    size_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (tok_is_special(t, id))
            total += t->str.len[id];
    if (total > (size_t)INT32_MAX / 2) {
        tok_set_err(err, "special tokens hold %zu bytes of text, too many", total);
        return TOK_EFORMAT;
    }
    t->special_node_tok = malloc((total + 1) * sizeof *t->special_node_tok);
    if (!t->special_node_tok || tok_pairmap_init(&t->special_edge, total) != TOK_OK) {
        tok_set_err(err, "out of memory for the special-token table");
        return TOK_ENOMEM;
    }
    t->special_node_tok[0] = -1;
    t->n_special_nodes = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!tok_is_special(t, id) || !t->str.len[id])
            continue;
        const unsigned char *s = (const unsigned char *)tok_strtab_str(&t->str, id);
        size_t len = t->str.len[id];
        int32_t node = 0;
        for (size_t i = 0; i < len; i++) {
            int32_t next = 0;
            if (node == 0)
                next = t->special_root[s[i]];
            else
                tok_pairmap_get(&t->special_edge, tok_pair_key(node, s[i]), &next, NULL);
            if (next == 0) {
                next = t->n_special_nodes++;
                t->special_node_tok[next] = -1;
                if (node == 0)
                    t->special_root[s[i]] = next;
                else
                    tok_pairmap_put(&t->special_edge, tok_pair_key(node, s[i]), next, 0);
            }
            node = next;
        }
        if (t->special_node_tok[node] < 0)
            t->special_node_tok[node] = id;
    }
    return TOK_OK;
}

/* Parse "<0xXX>" as SentencePiece spells a byte; -1 if s is not that. */
static int tok_parse_byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decode a code point at p (valid UTF-8 of length l). */
static uint32_t tok_utf8_cp(const unsigned char *p, size_t l)
{
    if (l == 1)
        return p[0];
    uint32_t cp = p[0] & (0xff >> (l + 1));
    for (size_t i = 1; i < l; i++)
        cp = (cp << 6) | (p[i] & 0x3f);
    return cp;
}

/* What each token stands for in output text (special tokens included; the
 * caller of tok_piece decides whether to show them). Never longer than the
 * token's own text, so one arena of the same size holds all of them. */
static int tok_build_pieces(tok *t, char err[256])
{
    size_t n = (size_t)t->n_vocab;
    t->piece = malloc(t->str.arena_len ? t->str.arena_len : 1);
    t->piece_off = malloc(n * sizeof *t->piece_off);
    t->piece_len = malloc(n * sizeof *t->piece_len);
    if (!t->piece || !t->piece_off || !t->piece_len) {
        tok_set_err(err, "out of memory for %zu token pieces", n);
        return TOK_ENOMEM;
    }
    size_t at = 0;
    for (size_t id = 0; id < n; id++) {
        const unsigned char *s = (const unsigned char *)tok_strtab_str(&t->str, (int32_t)id);
        size_t len = t->str.len[id];
        char *o = t->piece + at;
        size_t w = 0;
        uint8_t a = t->attr[id];
        int byte = a == TOK_ATTR_BYTE ? tok_parse_byte_token((const char *)s, len) : -1;
        if (byte >= 0) {
            o[w++] = (char)byte;
        } else if (!tok_is_plain(t, (int32_t)id)) {
            memcpy(o, s, len);
            w = len;
        } else if (t->kind == TOK_KIND_SPM) {
            for (size_t i = 0; i < len;) {
                if (i + 3 <= len && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                    o[w++] = ' ';
                    i += 3;
                } else {
                    o[w++] = (char)s[i++];
                }
            }
        } else {
            /* Byte-level BPE: each character stands for one byte; a character
             * outside the 256 (hand-added tokens) is kept as it is. */
            for (size_t i = 0; i < len;) {
                size_t l = tok_utf8_len(s + i, len - i);
                bool valid = l > 1 || s[i] < 0x80;
                uint32_t cp = valid ? tok_utf8_cp(s + i, l) : UINT32_MAX;
                if (cp < 324 && t->cp_byte[cp] >= 0) {
                    o[w++] = (char)t->cp_byte[cp];
                } else {
                    memcpy(o + w, s + i, l);
                    w += l;
                }
                i += l;
            }
        }
        t->piece_off[id] = (uint32_t)at;
        t->piece_len[id] = (uint32_t)w;
        at += w;
    }
    return TOK_OK;
}

static bool tok_has_inner_space_mark(const tok *t, int32_t id)
{
    const unsigned char *s = (const unsigned char *)tok_strtab_str(&t->str, id);
    size_t n = t->str.len[id];
    for (size_t j = 1; j + 3 <= n; j++) {
        if (s[j] != 0xe2 || s[j + 1] != 0x96 || s[j + 2] != 0x81)
            continue;
        if (j < 3 || s[j - 3] != 0xe2 || s[j - 2] != 0x96 || s[j - 1] != 0x81)
            return true;
    }
    return false;
}

static void tok_check_word_split(tok *t)
{
    t->spm_word_split = t->kind == TOK_KIND_SPM;
    for (int32_t id = 0; t->spm_word_split && id < t->n_vocab; id++)
        if (tok_is_plain(t, id) && tok_has_inner_space_mark(t, id))
            t->spm_word_split = false;
}

static void tok_find_byte_tokens(tok *t)
{
    for (int b = 0; b < 256; b++) {
        t->byte_tok[b] = -1;
        if (t->kind == TOK_KIND_SPM) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            int32_t id = tok_find_text(t, hex);
            /* Some SentencePiece vocabularies spell bytes as themselves. */
            if (id < 0) {
                char c = (char)b;
                id = tok_strtab_find(&t->str, &c, 1);
                if (!tok_is_plain(t, id))
                    id = -1;
            }
            t->byte_tok[b] = id;
        } else {
            int32_t id = t->byte_str[b];
            t->byte_tok[b] = tok_is_plain(t, id) ? id : -1;
        }
    }
}

int tok_open_gguf(tok **out, const gguf *g, char err[256])
{
    if (!out || !g) {
        tok_set_err(err, "tok_open_gguf: NULL argument");
        return TOK_EINPUT;
    }
    *out = NULL;
    const char *path = gguf_path(g);
    tok *t = calloc(1, sizeof *t);
    if (!t) {
        tok_set_err(err, "%s: out of memory", path);
        return TOK_ENOMEM;
    }
    int rc;
    const char *model = gguf_get_str(g, KEY_MODEL);
    if (!model) {
        tok_set_err(err, "%s: %s is missing or not a string (expected \"llama\" or \"gpt2\")",
                    path, KEY_MODEL);
        rc = TOK_EFORMAT;
        goto fail;
    }
    if (strcmp(model, "llama") == 0) {
        t->kind = TOK_KIND_SPM;
    } else if (strcmp(model, "gpt2") == 0) {
        t->kind = TOK_KIND_BPE;
    } else {
        tok_set_err(err, "%s: %s = \"%.60s\" is not supported (expected \"llama\" or \"gpt2\")",
                    path, KEY_MODEL, model);
        rc = TOK_EFORMAT;
        goto fail;
    }

    /* A BPE vocabulary without tokenizer.ggml.pre gets llama.cpp's "default"
     * rules; an unknown name is refused rather than tokenized wrongly. */
    const tok_pre_family *fam = NULL;
    if (t->kind == TOK_KIND_BPE) {
        const char *pre = gguf_get_str(g, KEY_PRE);
        if (!pre)
            pre = "default";
        fam = tok_pre_find(pre);
        if (!fam) {
            tok_set_err(err, "%s: %s = \"%.60s\" is not a known pre-tokenizer", path, KEY_PRE,
                        pre);
            rc = TOK_EFORMAT;
            goto fail;
        }
        snprintf(t->pre_name, sizeof t->pre_name, "%s", pre);
        t->ignore_merges = fam->ignore_merges;
    }

    if ((rc = tok_load_tokens(t, g, err)) != TOK_OK)
        goto fail;
    if ((rc = tok_load_scores_types(t, g, err)) != TOK_OK)
        goto fail;

    if (t->kind == TOK_KIND_BPE) {
        tok_bpe_init_bytes(t);
        const gguf_value *v = gguf_get(g, KEY_MERGES);
        if (!v) {
            tok_set_err(err, "%s: %s is missing (a gpt2 tokenizer needs its merges)", path,
                        KEY_MERGES);
            rc = TOK_EFORMAT;
            goto fail;
        }
        if (v->type != GGUF_TYPE_ARRAY || v->v.arr.elem != GGUF_TYPE_STRING) {
            tok_set_err(err, "%s: %s must be an array of strings", path, KEY_MERGES);
            rc = TOK_EFORMAT;
            goto fail;
        }
        if ((rc = tok_bpe_load_merges(t, path, v->v.arr.data, v->v.arr.n, err)) != TOK_OK)
            goto fail;
        if ((rc = tok_pre_compile(&t->pre, fam, err)) != TOK_OK)
            goto fail;
    }

    if ((rc = tok_load_specials(t, g, fam, err)) != TOK_OK)
        goto fail;
    if ((rc = tok_classify(t, err)) != TOK_OK)
        goto fail;
    tok_find_byte_tokens(t);
    tok_check_word_split(t);
    if ((rc = tok_build_special_trie(t, err)) != TOK_OK)
        goto fail;
    if ((rc = tok_build_pieces(t, err)) != TOK_OK)
        goto fail;
    *out = t;
    return TOK_OK;
fail:
    tok_free(t);
    return rc;
}

void tok_free(tok *t)
{
    if (!t)
        return;
    tok_strtab_free(&t->str);
    free(t->score);
    free(t->attr);
    free(t->eog);
    free(t->cls);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    tok_pairmap_free(&t->special_edge);
    free(t->special_node_tok);
    tok_pairmap_free(&t->merge);
    tok_pre_free(&t->pre);
    free(t);
}

/* ---- accessors ------------------------------------------------------------ */

tok_kind tok_get_kind(const tok *t) { return t->kind; }
int32_t tok_n_vocab(const tok *t) { return t->n_vocab; }
int32_t tok_bos(const tok *t) { return t->bos; }
int32_t tok_eos(const tok *t) { return t->eos; }
bool tok_add_bos_default(const tok *t) { return t->add_bos; }

bool tok_is_eog(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

tok_attr tok_get_attr(const tok *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return TOK_ATTR_UNUSED;
    return (tok_attr)t->attr[id];
}

const char *tok_text(const tok *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    return tok_strtab_str(&t->str, id);
}

int32_t tok_find(const tok *t, const char *text, size_t len)
{
    if (!text)
        return -1;
    int32_t id = tok_strtab_find(&t->str, text, len);
    return id < t->n_vocab ? id : -1;
}

/* ---- encoding ------------------------------------------------------------- */

/* The longest special token allowed here that starts at text[i]; its id, and
 * its length in *n, or -1. */
static int32_t tok_match_special(const tok *t, const unsigned char *text, size_t len, size_t i,
                                 bool parse_control, size_t *n)
{
    int32_t node = t->special_root[text[i]];
    int32_t best = -1;
    size_t j = i + 1;
    while (node) {
        int32_t id = t->special_node_tok[node];
        if (id >= 0 && (parse_control || t->attr[id] == TOK_ATTR_USER_DEFINED)) {
            best = id;
            *n = j - i;
        }
        if (j == len)
            break;
        int32_t next = 0;
        if (!tok_pairmap_get(&t->special_edge, tok_pair_key(node, text[j]), &next, NULL))
            break;
        node = next;
        j++;
    }
    return best;
}

static int tok_encode_run(const tok *t, tok_pre_session *ps, const char *text, size_t len,
                          bool after_special, tok_ids *out, char err[256])
{
    if (t->kind == TOK_KIND_SPM)
        return tok_spm_encode(t, text, len, after_special, out, err);
    return tok_bpe_encode(t, ps, text, len, out, err);
}

/* The one encoder behind tok_encode() and tok_encode_spans(): control
 * tokens are eligible everywhere when all_control, else only inside the
 * spans (already checked to be sorted and within len). */
static int tok_encode_impl(const tok *t, const char *text, size_t len, unsigned flags,
                           bool all_control, const tok_range *spans, size_t n_spans,
                           int32_t **ids, size_t *n_ids, char err[256])
{
    tok_ids out = {0};
    tok_pre_session ps = {0};
    int rc = TOK_OK;
    if ((out.v = malloc(64 * sizeof *out.v)) == NULL)
        goto nomem;
    out.cap = 64;
    if (flags & TOK_ADD_BOS) {
        if (t->bos < 0) {
            tok_set_err(err, "tok_encode: TOK_ADD_BOS given but the vocabulary has no BOS token");
            rc = TOK_EINPUT;
            goto fail;
        }
        if (tok_ids_push(&out, t->bos))
            goto nomem;
    }
    if (t->kind == TOK_KIND_BPE && (rc = tok_pre_session_init(&ps, err)) != TOK_OK)
        goto fail;

    const unsigned char *u = (const unsigned char *)text;
    bool after_special = true;
    size_t run = 0, i = 0, k = 0;
    while (i < len) {
        size_t n = 0;
        int32_t id = -1;
        if (t->special_root[u[i]]) {
            while (k < n_spans && spans[k].off + spans[k].len <= i)
                k++;
            bool in_span = k < n_spans && spans[k].off <= i;
            if (all_control) {
                id = tok_match_special(t, u, len, i, true, &n);
            } else {
                /* User-defined tokens anywhere; control tokens only when
                 * they end inside the span they start in. */
                id = tok_match_special(t, u, len, i, false, &n);
                size_t nc = 0;
                int32_t idc = in_span ? tok_match_special(t, u, spans[k].off + spans[k].len, i,
                                                          true, &nc)
                                      : -1;
                if (idc >= 0 && (id < 0 || nc > n)) {
                    id = idc;
                    n = nc;
                }
            }
        }
        if (id < 0) {
            i++;
            continue;
        }
        if (i > run && (rc = tok_encode_run(t, &ps, text + run, i - run, after_special, &out,
                                            err)) != TOK_OK)
            goto fail;
        if (tok_ids_push(&out, id))
            goto nomem;
        after_special = true;
        i += n;
        run = i;
    }
    if (len > run &&
        (rc = tok_encode_run(t, &ps, text + run, len - run, after_special, &out, err)) != TOK_OK)
        goto fail;
    tok_pre_session_free(&ps);
    *ids = out.v;
    *n_ids = out.n;
    return TOK_OK;
nomem:
    tok_set_err(err, "tok_encode: out of memory");
    rc = TOK_ENOMEM;
fail:
    tok_pre_session_free(&ps);
    free(out.v);
    return rc;
}

int tok_encode(const tok *t, const char *text, size_t len, unsigned flags, int32_t **ids,
               size_t *n_ids, char err[256])
{
    if (!t || !ids || !n_ids || (!text && len)) {
        tok_set_err(err, "tok_encode: NULL argument");
        return TOK_EINPUT;
    }
    *ids = NULL;
    *n_ids = 0;
    if ((flags & ~(TOK_ADD_BOS | TOK_PARSE_SPECIAL)) != 0) {
        tok_set_err(err, "tok_encode: unknown flags 0x%x", flags);
        return TOK_EINPUT;
    }
    return tok_encode_impl(t, text, len, flags, (flags & TOK_PARSE_SPECIAL) != 0, NULL, 0, ids,
                           n_ids, err);
}

int tok_encode_spans(const tok *t, const char *text, size_t len, unsigned flags,
                     const tok_range *special, size_t n_special, int32_t **ids, size_t *n_ids,
                     char err[256])
{
    if (!t || !ids || !n_ids || (!text && len) || (!special && n_special)) {
        tok_set_err(err, "tok_encode_spans: NULL argument");
        return TOK_EINPUT;
    }
    *ids = NULL;
    *n_ids = 0;
    if ((flags & ~TOK_ADD_BOS) != 0) {
        tok_set_err(err, "tok_encode_spans: flags 0x%x: only TOK_ADD_BOS is taken", flags);
        return TOK_EINPUT;
    }
    size_t end = 0;
    for (size_t k = 0; k < n_special; k++) {
        if (special[k].off < end || special[k].off > len || special[k].len > len - special[k].off) {
            tok_set_err(err,
                        "tok_encode_spans: span %zu [%zu, +%zu) overlaps the one before or ends "
                        "past the text (%zu bytes)",
                        k, special[k].off, special[k].len, len);
            return TOK_EINPUT;
        }
        end = special[k].off + special[k].len;
    }
    return tok_encode_impl(t, text, len, flags, false, special, n_special, ids, n_ids, err);
}

/* ---- decoding ------------------------------------------------------------- */

static bool tok_hidden(const tok *t, int32_t id, bool render_special)
{
    uint8_t a = t->attr[id];
    return !render_special && (a == TOK_ATTR_CONTROL || a == TOK_ATTR_UNKNOWN || a == TOK_ATTR_UNUSED);
}

int tok_piece(const tok *t, int32_t id, bool render_special, char *buf, size_t cap)
{
    if (!t || id < 0 || id >= t->n_vocab)
        return TOK_EINPUT;
    if (tok_hidden(t, id, render_special))
        return 0;
    size_t n = t->piece_len[id];
    if (buf && cap)
        memcpy(buf, t->piece + t->piece_off[id], n < cap ? n : cap);
    return (int)n;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n_ids, bool render_special, char **text,
               size_t *len, char err[256])
{
    if (!t || !text || (!ids && n_ids)) {
        tok_set_err(err, "tok_decode: NULL argument");
        return TOK_EINPUT;
    }
    *text = NULL;
    if (len)
        *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            tok_set_err(err, "tok_decode: id %d at position %zu is outside the vocabulary (0..%d)",
                        (int)ids[i], i, (int)t->n_vocab - 1);
            return TOK_EINPUT;
        }
        total += t->piece_len[ids[i]];
    }
    if (n_ids && t->bos >= 0 && ids[0] == t->bos) {
        ids++;
        n_ids--;
    }
    if (n_ids && t->eos >= 0 && ids[n_ids - 1] == t->eos)
        n_ids--;

    char *s = malloc(total + 1);
    if (!s) {
        tok_set_err(err, "tok_decode: out of memory for %zu bytes", total + 1);
        return TOK_ENOMEM;
    }
    /* SentencePiece put a space before every run of text that starts the
     * input or follows a special token; the first piece of such a run gives
     * it back. */
    bool strip = t->kind == TOK_KIND_SPM && t->add_space_prefix;
    bool pending = strip;
    size_t w = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        const char *p = t->piece + t->piece_off[id];
        size_t n = t->piece_len[id];
        if (tok_is_special(t, id)) {
            if (!tok_hidden(t, id, render_special)) {
                memcpy(s + w, p, n);
                w += n;
            }
            pending = strip;
            continue;
        }
        if (tok_hidden(t, id, render_special) || n == 0)
            continue;
        if (pending && p[0] == ' ') {
            p++;
            n--;
        }
        pending = false;
        memcpy(s + w, p, n);
        w += n;
    }
    s[w] = '\0';
    *text = s;
    if (len)
        *len = w;
    return TOK_OK;
}
