/*
 * tok.h - tokenizers read from a GGUF file's tokenizer.ggml.* metadata.
 *
 * Two families:
 *  - SentencePiece ("llama"): score-driven merges of UTF-8 symbols, byte
 *    fallback to <0xXX> tokens, an optional leading-space prefix, spaces
 *    written as U+2581.
 *  - byte-level BPE ("gpt2"): the text is first split by the pre-tokenizer
 *    regular expressions named by tokenizer.ggml.pre (run with PCRE2), each
 *    piece is mapped byte-to-unicode and merged by merge rank.
 * Special and control tokens are split out of the text before either runs
 * (control tokens only when the caller asks for it).
 *
 * A tok is immutable after tok_open_gguf() and may be shared between threads.
 * It copies what it needs, so the gguf may be closed afterwards.
 */
#ifndef OUTPOST_TOK_H
#define OUTPOST_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct tok tok;

typedef enum tok_kind { TOK_KIND_SPM = 1, TOK_KIND_BPE = 2 } tok_kind;

enum {
    TOK_OK = 0,
    TOK_EFORMAT = -1, /* missing or inconsistent tokenizer metadata */
    TOK_ENOMEM = -2,
    TOK_EINPUT = -3,  /* invalid input (e.g. a token id out of range) */
};

/* Token attributes, from tokenizer.ggml.token_type. */
typedef enum tok_attr {
    TOK_ATTR_NORMAL = 1,
    TOK_ATTR_UNKNOWN = 2,
    TOK_ATTR_CONTROL = 3,
    TOK_ATTR_USER_DEFINED = 4,
    TOK_ATTR_UNUSED = 5,
    TOK_ATTR_BYTE = 6,
} tok_attr;

int tok_open_gguf(tok **out, const gguf *g, char err[256]);
void tok_free(tok *t);

tok_kind tok_get_kind(const tok *t);
int32_t tok_n_vocab(const tok *t);
int32_t tok_bos(const tok *t); /* -1 when the vocab has none */
int32_t tok_eos(const tok *t);
bool tok_add_bos_default(const tok *t); /* tokenizer.ggml.add_bos_token */
/* True for end-of-generation tokens (EOS, EOT, ...). */
bool tok_is_eog(const tok *t, int32_t id);
tok_attr tok_get_attr(const tok *t, int32_t id);
/* The raw vocabulary text of id (as stored, e.g. "▁the" or "Ġthe"). */
const char *tok_text(const tok *t, int32_t id);
/* The id whose raw vocabulary text is text[0..len) (e.g. "<|im_start|>"), or
 * -1: for callers that need a special token by name. */
int32_t tok_find(const tok *t, const char *text, size_t len);

#define TOK_ADD_BOS 1u       /* prepend BOS */
#define TOK_PARSE_SPECIAL 2u /* match control-token text in the input */

/* Encode len bytes of UTF-8 text. On success *ids is a malloc'd array the
 * caller frees and *n_ids its length; returns TOK_OK or a negative code. */
int tok_encode(const tok *t, const char *text, size_t len, unsigned flags,
               int32_t **ids, size_t *n_ids, char err[256]);

/* A byte range text[off, off + len) of an encoder's input. */
typedef struct tok_range {
    size_t off, len;
} tok_range;

/* tok_encode() for text that mixes a program's own markup with text from
 * users: control-token text is matched only inside special[0..n_special)
 * (sorted by offset, not overlapping, within len), and only where a whole
 * token lies inside one span; everywhere else it is encoded as the plain
 * text it spells, so a user cannot forge a control token. User-defined
 * tokens are matched everywhere, as by tok_encode(). flags may hold
 * TOK_ADD_BOS; TOK_PARSE_SPECIAL is refused (the spans say where). With
 * n_special 0 this is tok_encode() without TOK_PARSE_SPECIAL. */
int tok_encode_spans(const tok *t, const char *text, size_t len, unsigned flags,
                     const tok_range *special, size_t n_special, int32_t **ids, size_t *n_ids,
                     char err[256]);

/* The bytes token id stands for in output text (U+2581 -> ' ', <0x0A> -> "\n",
 * byte-level BPE mapped back to bytes). Control tokens give "" unless
 * render_special. Writes at most cap bytes, returns the full length (as
 * snprintf), or a negative code for an id out of range. No NUL is added. */
int tok_piece(const tok *t, int32_t id, bool render_special, char *buf, size_t cap);

/* Decode a whole sequence into a malloc'd NUL-terminated string; the inverse
 * of tok_encode: BOS/EOS are dropped and the leading space that SentencePiece
 * adds is removed, so decode(encode(x)) == x. */
int tok_decode(const tok *t, const int32_t *ids, size_t n_ids, bool render_special,
               char **text, size_t *len, char err[256]);

#endif
