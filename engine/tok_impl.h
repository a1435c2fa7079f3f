/*
 * tok_impl.h - what the tok_ files share: the tok struct, the interned
 * string table, the integer-pair map, the merge work queue and the
 * pre-tokenizer. Not a public header; only engine/tok*.c include it.
 *
 * Invariants:
 *  - A tok is written only inside tok_open_gguf(); afterwards every field is
 *    read-only, so any number of threads may encode and decode at once. Per
 *    call state (symbols, heaps, PCRE2 match data) lives in the caller's
 *    stack frame or in buffers the call allocates and frees.
 *  - String ids [0, n_vocab) are the vocabulary's tokens in order; ids from
 *    n_vocab on are strings that occur only in BPE merge rules. Every string
 *    is stored in one arena, NUL-terminated, addressed by offset.
 */
#ifndef OUTPOST_TOK_IMPL_H
#define OUTPOST_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tok.h"

void tok_set_err(char err[256], const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- interned strings ---------------------------------------------------- */

typedef struct tok_strtab {
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *off, *len; /* per string id */
    int32_t n, cap;
    /* Open-addressing index: slot holds id + 1 (0 = empty) and the id's hash. */
    uint32_t *slot, *slot_hash;
    uint32_t mask, n_indexed;
} tok_strtab;

void tok_strtab_free(tok_strtab *s);
/* Store a copy of p[0..n) as the next id without indexing it; returns the id
 * or TOK_ENOMEM / TOK_EFORMAT (arena past 4 GiB). */
int32_t tok_strtab_append(tok_strtab *s, const char *p, size_t n);
/* Make id findable by its text unless an earlier id has the same text.
 * Returns 1 if indexed, 0 if shadowed, TOK_ENOMEM. */
int tok_strtab_index(tok_strtab *s, int32_t id);
/* The id whose text is p[0..n), or -1. */
int32_t tok_strtab_find(const tok_strtab *s, const char *p, size_t n);
/* find, or append + index. Returns the id or a negative code. */
int32_t tok_strtab_intern(tok_strtab *s, const char *p, size_t n);

static inline const char *tok_strtab_str(const tok_strtab *s, int32_t id)
{
    return s->arena + s->off[id];
}

/* ---- (uint64 key) -> (int32, int32) map with a fixed capacity ------------ */

typedef struct tok_pairmap {
    uint64_t *key; /* TOK_PAIRMAP_EMPTY marks a free slot */
    int32_t *a, *b;
    uint32_t mask;
} tok_pairmap;

#define TOK_PAIRMAP_EMPTY UINT64_MAX

static inline uint64_t tok_pair_key(int32_t hi, int32_t lo)
{
    return ((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo;
}

/* Room for n_max keys at a load factor of at most one half. */
int tok_pairmap_init(tok_pairmap *m, size_t n_max);
void tok_pairmap_free(tok_pairmap *m);
/* Insert unless present; returns true if inserted (first insertion wins). */
bool tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t a, int32_t b);
bool tok_pairmap_get(const tok_pairmap *m, uint64_t key, int32_t *a, int32_t *b);

/* ---- merge work queue (binary min-heap) ---------------------------------- */

/* One candidate merge of symbols left and right. Smaller key first, then the
 * left-most pair: SentencePiece uses key = -score, BPE key = rank. x and y are
 * what the pair must still look like when popped (else it is stale). */
typedef struct tok_bigram {
    double key;
    int32_t left, right;
    int32_t x, y;
} tok_bigram;

typedef struct tok_heap {
    tok_bigram *v;
    size_t n, cap;
} tok_heap;

int tok_heap_push(tok_heap *h, tok_bigram b);
tok_bigram tok_heap_pop(tok_heap *h); /* h->n must be > 0 */
void tok_heap_free(tok_heap *h);

/* ---- growable outputs ----------------------------------------------------- */

typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

int tok_ids_push(tok_ids *o, int32_t id);

typedef struct tok_span {
    size_t start, len;
} tok_span;

typedef struct tok_spans {
    tok_span *v;
    size_t n, cap;
} tok_spans;

int tok_spans_push(tok_spans *s, size_t start, size_t len);

/* ---- pre-tokenizer (tok_pre.c) ------------------------------------------- */

#define TOK_PRE_MAX_REGEX 8

/* A family of byte-level BPE pre-tokenizers sharing one list of split rules,
 * looked up by the value of tokenizer.ggml.pre. */
typedef struct tok_pre_family {
    const char *const *names;   /* NULL-terminated */
    const char *const *regexes; /* NULL-terminated, applied in order */
    bool ignore_merges;         /* a pre-token that is a token is kept whole */
    bool add_bos;               /* default when add_bos_token is absent */
    bool no_bos;                /* the family has no BOS by default */
} tok_pre_family;

const tok_pre_family *tok_pre_find(const char *name);
/* The family list, for tests: families[i] for i < *n. */
const tok_pre_family *tok_pre_families(size_t *n);

typedef struct tok_pre {
    int n;
    pcre2_code *code[TOK_PRE_MAX_REGEX];
    bool jit[TOK_PRE_MAX_REGEX];
} tok_pre;

int tok_pre_compile(tok_pre *p, const tok_pre_family *f, char err[256]);
void tok_pre_free(tok_pre *p);

/* Per-call matching state: PCRE2 match data, a JIT stack and scratch. */
typedef struct tok_pre_session {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    tok_spans tmp;
} tok_pre_session;

int tok_pre_session_init(tok_pre_session *s, char err[256]);
void tok_pre_session_free(tok_pre_session *s);
/* Split text[0..len) into pieces (spans relative to text) in out, which is
 * cleared first. Every regex in turn splits every current piece into its
 * matches and the gaps between them, both kept: the pieces always tile the
 * text exactly. */
int tok_pre_split(const tok_pre *p, tok_pre_session *s, const char *text, size_t len,
                  tok_spans *out, char err[256]);

/* ---- the tokenizer -------------------------------------------------------- */

struct tok {
    tok_kind kind;
    int32_t n_vocab;
    tok_strtab str; /* ids < n_vocab are the tokens */
    float *score;
    uint8_t *attr;  /* tok_attr */
    uint8_t *eog;   /* 1 for end-of-generation ids */
    uint8_t *cls;   /* TOK_CLASS_* bits, from attr and text */

    /* What each token stands for in output text, special tokens included. */
    char *piece;
    uint32_t *piece_off, *piece_len;

    int32_t bos, eos, eot, eom, unk, pad;
    bool add_bos, add_eos, add_space_prefix;

    /* SentencePiece: no plain token has U+2581 right after another character
     * (other than U+2581), so no merge can cross the start of a word and each
     * word may be merged on its own with the same result. */
    bool spm_word_split;

    /* The token that spells raw byte b on its own: SentencePiece <0xXX>, or
     * byte-level BPE's character for b; -1 if the vocabulary lacks it. */
    int32_t byte_tok[256];

    /* Special tokens (control, user-defined, unknown) as a byte trie: the
     * root's children in an array, deeper edges (node << 8 | byte) in a map. */
    int32_t special_root[256]; /* child node, 0 = none */
    tok_pairmap special_edge;
    int32_t *special_node_tok; /* token ending at node, -1 = none */
    int32_t n_special_nodes;

    /* Byte-level BPE. */
    tok_pairmap merge;     /* (left string id, right string id) -> (rank, merged id) */
    int32_t byte_str[256]; /* string id of b's byte-level character, -1 if unseen */
    uint32_t byte_cp[256]; /* b's byte-level code point */
    int16_t cp_byte[324];  /* inverse of byte_cp, -1 where none */
    bool ignore_merges;
    tok_pre pre;
    char pre_name[64];
};

/* How a token takes part in encoding, decided once at load:
 *  - PLAIN: ordinary text may be spelled with it (merges, whole-word lookups,
 *    byte spelling), and it decodes through the model's text mapping. Normal
 *    tokens; for byte-level BPE also byte tokens; for SentencePiece also
 *    user-defined tokens written with U+2581, which raw input never contains.
 *  - SPECIAL: cut out of the input before tokenizing (control and unknown
 *    tokens only with TOK_PARSE_SPECIAL) and decoded as their raw text. Never
 *    produced from other text, or decoding would not give that text back
 *    (DeepSeek-Coder types the byte-level characters of 0xF5..0xFF as
 *    user-defined "õ" .. "ÿ").
 * Unused tokens and SentencePiece's <0xXX> tokens (which only byte fallback
 * emits) are neither. */
enum { TOK_CLASS_PLAIN = 1, TOK_CLASS_SPECIAL = 2 };

static inline bool tok_is_plain(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->cls[id] & TOK_CLASS_PLAIN);
}

static inline bool tok_is_special(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->cls[id] & TOK_CLASS_SPECIAL);
}

/* UTF-8 length of the well-formed character at p[0..n), or 1 for a byte that
 * does not start one (so malformed input still advances byte by byte). */
size_t tok_utf8_len(const unsigned char *p, size_t n);
/* Write code point cp as UTF-8 into out (4 bytes room); returns the length. */
size_t tok_utf8_put(uint32_t cp, char *out);

/* Encode one run of ordinary text (no special tokens in it), appending ids.
 * after_special: the run starts the text or follows a special token. */
int tok_spm_encode(const tok *t, const char *text, size_t len, bool after_special,
                   tok_ids *out, char err[256]);
int tok_bpe_encode(const tok *t, tok_pre_session *ps, const char *text, size_t len,
                   tok_ids *out, char err[256]);

/* Load-time helpers of tok_bpe.c: the byte <-> unicode tables and the merges. */
void tok_bpe_init_bytes(tok *t);
int tok_bpe_load_merges(tok *t, const char *path, const gguf_str *merges, uint64_t n_merges,
                        char err[256]);

#endif
