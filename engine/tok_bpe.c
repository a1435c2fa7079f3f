/*
 * tok_bpe.c - byte-level BPE (tokenizer.ggml.model = "gpt2"): the GPT-2
 * byte <-> unicode mapping, loading the merge rules, and encoding one run of
 * ordinary text.
 *
 * GPT-2's byte-level alphabet gives every byte a printable character: the
 * bytes that are printable Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF)
 * stand for themselves, the other 68 take U+0100 onwards in byte order. Token
 * texts and merges are written in that alphabet.
 *
 * A run is split into pre-tokens by the family's regular expressions
 * (tok_pre.c); each pre-token is merged on its own. Symbols start as one per
 * input byte, each carrying the id of its string in the tok's interned table,
 * so a merge rule is a lookup of the pair (left id, right id) -> (rank, merged
 * id) in an integer hash map; the pair of lowest rank is merged first, the
 * left-most on a tie, through a binary heap with stale entries dropped on pop.
 * Families with ignore_merges (Llama 3 and others) emit a pre-token that is
 * itself a token without merging.
 */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

void tok_bpe_init_bytes(tok *t)
{
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        t->byte_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
    }
    for (int cp = 0; cp < 324; cp++)
        t->cp_byte[cp] = -1;
    for (int b = 0; b < 256; b++) {
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
        t->byte_str[b] = -1;
    }
}

int tok_bpe_load_merges(tok *t, const char *path, const gguf_str *merges, uint64_t n_merges,
                        char err[256])
{
    if (n_merges > (uint64_t)INT32_MAX / 4) {
        tok_set_err(err, "%s: tokenizer.ggml.merges has %llu entries, too many", path,
                    (unsigned long long)n_merges);
        return TOK_EFORMAT;
    }
    int rc = tok_pairmap_init(&t->merge, (size_t)n_merges);
    if (rc) {
        tok_set_err(err, "%s: out of memory for %llu merges", path, (unsigned long long)n_merges);
        return rc;
    }
    size_t cap = 0;
    for (uint64_t i = 0; i < n_merges; i++)
        if (merges[i].len > cap)
            cap = merges[i].len;
    char *cat = malloc(cap + 1);
    if (!cat) {
        tok_set_err(err, "%s: out of memory for merges", path);
        return TOK_ENOMEM;
    }
    for (uint64_t i = 0; i < n_merges; i++) {
        const char *s = merges[i].ptr;
        size_t len = merges[i].len;
        /* "left right": the separator is the first space after the first
         * byte, so a left half may itself be a space (as llama.cpp reads it). */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp || sp + 1 == s + len) {
            tok_set_err(err, "%s: tokenizer.ggml.merges[%llu] = \"%.40s\" is not two strings "
                             "separated by a space", path, (unsigned long long)i, s);
            rc = TOK_EFORMAT;
            goto fail;
        }
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        int32_t l = tok_strtab_intern(&t->str, s, nl);
        int32_t r = l < 0 ? l : tok_strtab_intern(&t->str, sp + 1, nr);
        memcpy(cat, s, nl);
        memcpy(cat + nl, sp + 1, nr);
        int32_t m = r < 0 ? r : tok_strtab_intern(&t->str, cat, nl + nr);
        if (m < 0) {
            tok_set_err(err, "%s: out of memory (or over 4 GiB of text) loading merges", path);
            rc = m;
            goto fail;
        }
        /* A repeated pair keeps its first (best) rank. */
        tok_pairmap_put(&t->merge, tok_pair_key(l, r), (int32_t)i, m);
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t n = tok_utf8_put(t->byte_cp[b], u);
        t->byte_str[b] = tok_strtab_find(&t->str, u, n);
    }
    free(cat);
    return TOK_OK;
fail:
    free(cat);
    return rc;
}

typedef struct bpe_sym {
    int32_t prev, next;
    int32_t str;       /* interned string id, -1 if the string is in no rule */
    uint32_t start, n; /* input bytes covered; n = 0 once merged away */
} bpe_sym;

typedef struct bpe_word {
    const tok *t;
    bpe_sym *sym;
    tok_heap heap;
    char *buf; /* the pre-token in the byte-level alphabet */
} bpe_word;

static int bpe_try_pair(bpe_word *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return TOK_OK;
    int32_t a = w->sym[left].str, b = w->sym[right].str;
    int32_t rank;
    if (a < 0 || b < 0 || !tok_pairmap_get(&w->t->merge, tok_pair_key(a, b), &rank, NULL))
        return TOK_OK;
    tok_bigram g = {.key = (double)rank, .left = left, .right = right, .x = a, .y = b};
    return tok_heap_push(&w->heap, g);
}

/* Spell bytes one token each. Some vocabularies (Falcon's) lack the
 * characters of bytes that valid UTF-8 never or rarely uses; such a byte
 * becomes <unk> if there is one, else U+FFFD (what llama.cpp and Hugging Face
 * turn undecodable input into), so encoding never fails on odd input. */
static int bpe_emit_bytes(const tok *t, const unsigned char *p, uint32_t n, tok_ids *out,
                          char err[256])
{
    static const unsigned char replacement[3] = {0xef, 0xbf, 0xbd};
    for (uint32_t i = 0; i < n; i++) {
        int32_t id = t->byte_tok[p[i]] >= 0 ? t->byte_tok[p[i]] : t->unk;
        if (id >= 0) {
            if (tok_ids_push(out, id))
                return TOK_ENOMEM;
            continue;
        }
        for (int k = 0; k < 3; k++) {
            id = t->byte_tok[replacement[k]];
            if (id < 0) {
                tok_set_err(err, "tok_encode: byte 0x%02x has no token in this vocabulary",
                            p[i]);
                return TOK_EINPUT;
            }
            if (tok_ids_push(out, id))
                return TOK_ENOMEM;
        }
    }
    return TOK_OK;
}

static int bpe_encode_word(bpe_word *w, const unsigned char *p, size_t n, tok_ids *out,
                           char err[256])
{
    const tok *t = w->t;
    if (t->ignore_merges) {
        size_t len = 0;
        for (size_t i = 0; i < n; i++)
            len += tok_utf8_put(t->byte_cp[p[i]], w->buf + len);
        int32_t id = tok_strtab_find(&t->str, w->buf, len);
        if (tok_is_plain(t, id))
            return tok_ids_push(out, id);
    }
    bpe_sym *sym = w->sym;
    for (size_t i = 0; i < n; i++) {
        sym[i] = (bpe_sym){.prev = (int32_t)i - 1, .next = i + 1 < n ? (int32_t)i + 1 : -1,
                           .str = t->byte_str[p[i]], .start = (uint32_t)i, .n = 1};
    }
    w->heap.n = 0;
    int rc;
    for (size_t i = 1; i < n; i++)
        if ((rc = bpe_try_pair(w, (int32_t)i - 1, (int32_t)i)) != TOK_OK)
            return rc;
    while (w->heap.n) {
        tok_bigram g = tok_heap_pop(&w->heap);
        bpe_sym *l = &sym[g.left], *r = &sym[g.right];
        if (l->n == 0 || r->n == 0 || l->str != g.x || r->str != g.y)
            continue;
        int32_t merged = -1;
        tok_pairmap_get(&t->merge, tok_pair_key(g.x, g.y), NULL, &merged);
        l->str = merged;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = g.left;
        if ((rc = bpe_try_pair(w, l->prev, g.left)) != TOK_OK ||
            (rc = bpe_try_pair(w, g.left, l->next)) != TOK_OK)
            return rc;
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = sym[i].next) {
        /* A merge may produce a string that is not a plain token (a rule
         * without its vocabulary entry): spell its bytes instead. */
        if (tok_is_plain(t, sym[i].str))
            rc = tok_ids_push(out, sym[i].str);
        else
            rc = bpe_emit_bytes(t, p + sym[i].start, sym[i].n, out, err);
        if (rc)
            return rc;
    }
    return TOK_OK;
}

int tok_bpe_encode(const tok *t, tok_pre_session *ps, const char *text, size_t len,
                   tok_ids *out, char err[256])
{
    if (len > (size_t)INT32_MAX / 2) {
        tok_set_err(err, "tok_encode: a run of %zu bytes is too long to tokenize", len);
        return TOK_EINPUT;
    }
    tok_spans pieces = {0};
    bpe_word w = {.t = t};
    int rc = tok_pre_split(&t->pre, ps, text, len, &pieces, err);
    if (rc)
        goto done;
    size_t longest = 0;
    for (size_t i = 0; i < pieces.n; i++)
        if (pieces.v[i].len > longest)
            longest = pieces.v[i].len;
    w.sym = malloc((longest + 1) * sizeof *w.sym);
    w.buf = malloc(longest * 2 + 1);
    if (!w.sym || !w.buf) {
        rc = TOK_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < pieces.n && rc == TOK_OK; i++)
        rc = bpe_encode_word(&w, (const unsigned char *)text + pieces.v[i].start,
                             pieces.v[i].len, out, err);
done:
    if (rc == TOK_ENOMEM)
        tok_set_err(err, "tok_encode: out of memory");
    tok_heap_free(&w.heap);
    free(w.sym);
    free(w.buf);
    free(pieces.v);
    return rc;
}
