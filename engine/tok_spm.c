/*
 * tok_spm.c - SentencePiece-style encoding of one run of ordinary text, as
 * llama.cpp does it for tokenizer.ggml.model = "llama".
 *
 * The run gets a leading space when it starts the input or follows a special
 * token (add_space_prefix), every ASCII space becomes U+2581, and each UTF-8
 * character becomes a symbol. Adjacent symbols whose concatenation is a token
 * are merged, highest score first and the left-most pair on a tie, until no
 * pair is a token. What is left is emitted symbol by symbol: a token as
 * itself, anything else through byte fallback as <0xXX> tokens.
 *
 * llama.cpp re-segments leftover symbols through their merge history; here a
 * merge only ever forms a vocabulary token, so the only symbols that are not
 * tokens are single characters that were never merged, and their history is
 * empty: byte fallback is all that re-segmentation can do to them.
 *
 * Candidate pairs sit in a binary heap keyed by -score; a popped pair whose
 * symbols changed since it was pushed is stale and dropped. When the
 * vocabulary allows it (tok.spm_word_split), the text is cut before every
 * word-initial U+2581 and each word is merged alone: no merge can cross such
 * a cut, so the result is the same and the heap stays small.
 */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct spm_sym {
    int32_t prev, next;
    uint32_t start, n; /* bytes of the escaped text; n = 0 once merged away */
} spm_sym;

typedef struct spm_run {
    const tok *t;
    const char *text; /* escaped: U+2581 for spaces, maybe a leading one */
    spm_sym *sym;
    tok_heap heap;
} spm_run;

static int spm_try_pair(spm_run *r, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return TOK_OK;
    const spm_sym *l = &r->sym[left], *rt = &r->sym[right];
    int32_t id = tok_strtab_find(&r->t->str, r->text + l->start, (size_t)l->n + rt->n);
    if (!tok_is_plain(r->t, id))
        return TOK_OK;
    tok_bigram b = {
        .key = -(double)r->t->score[id],
        .left = left,
        .right = right,
        .x = (int32_t)(l->n + rt->n),
        .y = 0,
    };
    return tok_heap_push(&r->heap, b);
}

/* Emit one final symbol: itself if it is a token, else its bytes. */
static int spm_emit(spm_run *r, const spm_sym *s, tok_ids *out, char err[256])
{
    const tok *t = r->t;
    const unsigned char *p = (const unsigned char *)r->text + s->start;
    int32_t id = tok_strtab_find(&t->str, (const char *)p, s->n);
    if (tok_is_plain(t, id))
        return tok_ids_push(out, id);
    bool all_bytes = true;
    for (uint32_t i = 0; i < s->n; i++)
        all_bytes = all_bytes && t->byte_tok[p[i]] >= 0;
    if (all_bytes) {
        for (uint32_t i = 0; i < s->n; i++)
            if (tok_ids_push(out, t->byte_tok[p[i]]))
                return TOK_ENOMEM;
        return TOK_OK;
    }
    /* No byte tokens: SentencePiece without byte fallback says <unk>. */
    if (t->unk >= 0)
        return tok_ids_push(out, t->unk);
    tok_set_err(err, "tok_encode: byte 0x%02x has no token and the vocabulary has neither "
                     "byte tokens nor an unknown token", p[0]);
    return TOK_EINPUT;
}

/* Merge and emit the escaped bytes [from, to). */
static int spm_encode_chunk(spm_run *r, size_t from, size_t to, tok_ids *out, char err[256])
{
    spm_sym *sym = r->sym;
    int32_t n = 0;
    for (size_t at = from; at < to;) {
        size_t l = tok_utf8_len((const unsigned char *)r->text + at, to - at);
        sym[n] = (spm_sym){.prev = n - 1, .next = at + l < to ? n + 1 : -1,
                           .start = (uint32_t)at, .n = (uint32_t)l};
        n++;
        at += l;
    }
    r->heap.n = 0;
    int rc;
    for (int32_t i = 1; i < n; i++)
        if ((rc = spm_try_pair(r, i - 1, i)) != TOK_OK)
            return rc;

    while (r->heap.n) {
        tok_bigram b = tok_heap_pop(&r->heap);
        spm_sym *l = &sym[b.left], *rt = &sym[b.right];
        if (l->n == 0 || rt->n == 0 || (int64_t)l->n + rt->n != b.x)
            continue;
        l->n += rt->n;
        rt->n = 0;
        l->next = rt->next;
        if (rt->next >= 0)
            sym[rt->next].prev = b.left;
        if ((rc = spm_try_pair(r, l->prev, b.left)) != TOK_OK ||
            (rc = spm_try_pair(r, b.left, l->next)) != TOK_OK)
            return rc;
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = sym[i].next)
        if ((rc = spm_emit(r, &sym[i], out, err)) != TOK_OK)
            return rc;
    return TOK_OK;
}

static bool spm_is_mark(const char *p)
{
    return (unsigned char)p[0] == 0xe2 && (unsigned char)p[1] == 0x96 &&
           (unsigned char)p[2] == 0x81;
}

int tok_spm_encode(const tok *t, const char *text, size_t len, bool after_special,
                   tok_ids *out, char err[256])
{
    if (len > (size_t)(INT32_MAX - 3) / 3) {
        tok_set_err(err, "tok_encode: a run of %zu bytes is too long to tokenize", len);
        return TOK_EINPUT;
    }
    bool prefix = after_special && t->add_space_prefix;
    size_t cap = len * 3 + 3;
    char *buf = malloc(cap);
    spm_sym *sym = malloc(cap * sizeof *sym);
    spm_run r = {.t = t, .text = buf, .sym = sym};
    int rc = TOK_ENOMEM;
    if (!buf || !sym)
        goto done;

    size_t w = 0;
    if (prefix) {
        memcpy(buf, "\xe2\x96\x81", 3);
        w = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + w, "\xe2\x96\x81", 3);
            w += 3;
        } else {
            buf[w++] = text[i];
        }
    }

    if (!t->spm_word_split) {
        rc = spm_encode_chunk(&r, 0, w, out, err);
        goto done;
    }
    size_t from = 0;
    rc = TOK_OK;
    for (size_t p = 1; p + 3 <= w && rc == TOK_OK; p++) {
        if (spm_is_mark(buf + p) && !(p >= 3 && spm_is_mark(buf + p - 3))) {
            rc = spm_encode_chunk(&r, from, p, out, err);
            from = p;
            p += 2;
        }
    }
    if (rc == TOK_OK && from < w)
        rc = spm_encode_chunk(&r, from, w, out, err);
done:
    if (rc == TOK_ENOMEM)
        tok_set_err(err, "tok_encode: out of memory");
    tok_heap_free(&r.heap);
    free(sym);
    free(buf);
    return rc;
}
