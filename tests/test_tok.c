/*
 * test_tok.c - tokenizer tests: llama.cpp's reference vectors (exact ids for
 * SentencePiece, GPT-2, Falcon and DeepSeek-Coder vocabularies), decode
 * round trips, byte fallback, special-token parsing, the pre-tokenizer table,
 * malformed metadata, thread safety and load/encode cost on large inputs.
 *
 * Vocabularies come from $OUTPOST_SHARED/tokenizer and models/; malformed
 * ones are written with gguf_writer into a temporary directory that each test
 * removes again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "tok.h"
#include "tok_impl.h"

#ifndef OUTPOST_SHARED
#define OUTPOST_SHARED "../shared"
#endif

static const char *shared_dir(void)
{
    const char *s = getenv("OUTPOST_SHARED");
    return s && *s ? s : OUTPOST_SHARED;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- opening vocabularies ------------------------------------------------- */

typedef struct loaded {
    gguf *g;
    tok *t;
} loaded;

static loaded load_path(const char *path)
{
    loaded l = {0};
    char err[256] = "";
    int rc = gguf_open(&l.g, path, err);
    if (rc)
        fail_msg("gguf_open(%s): %s", path, err);
    rc = tok_open_gguf(&l.t, l.g, err);
    if (rc)
        fail_msg("tok_open_gguf(%s): %s", path, err);
    return l;
}

static loaded load_vocab(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf", shared_dir(), name);
    return load_path(path);
}

static void unload(loaded *l)
{
    tok_free(l->t);
    gguf_close(l->g);
}

/* ---- the reference vectors ------------------------------------------------ */

typedef struct vectors {
    char *inp_buf, *out_buf;
    size_t n;
    const char *text[128];
    size_t text_len[128];
    char *ids_line[128];
} vectors;

/* X.gguf.inp holds the strings separated by "\n__ggml_vocab_test__\n", the
 * last one followed by it too; X.gguf.out one line of ids per string. */
static void load_vectors(const char *name, vectors *v)
{
    memset(v, 0, sizeof *v);
    char path[1024];
    size_t inp_len, out_len;
    snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf.inp", shared_dir(), name);
    v->inp_buf = read_file(path, &inp_len);
    assert_non_null(v->inp_buf);
    snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf.out", shared_dir(), name);
    v->out_buf = read_file(path, &out_len);
    assert_non_null(v->out_buf);

    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t seplen = sizeof sep - 1;
    char *p = v->inp_buf, *end = v->inp_buf + inp_len;
    while (p < end) {
        char *q = memmem(p, (size_t)(end - p), sep, seplen);
        assert_non_null(q);
        assert_true(v->n < 128);
        v->text[v->n] = p;
        v->text_len[v->n] = (size_t)(q - p);
        v->n++;
        p = q + seplen;
    }
    size_t lines = 0;
    for (char *s = v->out_buf; s < v->out_buf + out_len;) {
        char *nl = memchr(s, '\n', (size_t)(v->out_buf + out_len - s));
        if (nl)
            *nl = '\0';
        assert_true(lines < 128);
        v->ids_line[lines++] = s;
        s = nl ? nl + 1 : v->out_buf + out_len;
    }
    assert_int_equal(lines, v->n);
}

static void free_vectors(vectors *v)
{
    free(v->inp_buf);
    free(v->out_buf);
}

static size_t parse_ids(const char *line, int32_t *ids, size_t cap)
{
    size_t n = 0;
    const char *p = line;
    for (;;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        char *e;
        long v = strtol(p, &e, 10);
        assert_true(e != p);
        assert_true(n < cap);
        ids[n++] = (int32_t)v;
        p = e;
    }
    return n;
}

static void format_ids(const int32_t *ids, size_t n, char *buf, size_t cap)
{
    size_t w = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && w + 12 < cap; i++)
        w += (size_t)snprintf(buf + w, cap - w, "%s%d", i ? " " : "", (int)ids[i]);
}

static void check_vectors(const char *name)
{
    loaded l = load_vocab(name);
    vectors v;
    load_vectors(name, &v);
    int failures = 0;
    static int32_t want[4096];
    for (size_t i = 0; i < v.n; i++) {
        size_t n_want = parse_ids(v.ids_line[i], want, 4096);
        int32_t *ids = NULL;
        size_t n = 0;
        char err[256] = "";
        int rc = tok_encode(l.t, v.text[i], v.text_len[i], 0, &ids, &n, err);
        if (rc) {
            print_error("%s #%zu: tok_encode failed: %s\n", name, i, err);
            failures++;
            continue;
        }
        if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
            char got[8192], exp[8192];
            format_ids(ids, n, got, sizeof got);
            format_ids(want, n_want, exp, sizeof exp);
            print_error("%s #%zu: input \"%.*s\"\n  expected: %s\n  actual:   %s\n", name, i,
                        (int)v.text_len[i], v.text[i], exp, got);
            failures++;
        }
        free(ids);
    }
    free_vectors(&v);
    unload(&l);
    assert_int_equal(failures, 0);
}

static void vectors_llama_spm_match_exactly(void **state)
{
    (void)state;
    check_vectors("llama-spm");
}

static void vectors_gpt2_match_exactly(void **state)
{
    (void)state;
    check_vectors("gpt-2");
}

static void vectors_falcon_match_exactly(void **state)
{
    (void)state;
    check_vectors("falcon");
}

static void vectors_deepseek_coder_match_exactly(void **state)
{
    (void)state;
    check_vectors("deepseek-coder");
}

/* decode(encode(x)) == x for every vector input, with and without BOS. */
static void check_round_trip(const char *name)
{
    loaded l = load_vocab(name);
    vectors v;
    load_vectors(name, &v);
    int failures = 0;
    for (size_t i = 0; i < v.n; i++) {
        for (unsigned flags = 0; flags <= TOK_ADD_BOS; flags += TOK_ADD_BOS) {
            if ((flags & TOK_ADD_BOS) && tok_bos(l.t) < 0)
                continue;
            int32_t *ids = NULL;
            size_t n = 0;
            char *text = NULL;
            size_t len = 0;
            char err[256] = "";
            assert_int_equal(tok_encode(l.t, v.text[i], v.text_len[i], flags, &ids, &n, err), 0);
            assert_int_equal(tok_decode(l.t, ids, n, false, &text, &len, err), 0);
            if (len != v.text_len[i] || memcmp(text, v.text[i], len) != 0) {
                print_error("%s #%zu (flags %u): \"%.*s\" decodes to \"%s\"\n", name, i, flags,
                            (int)v.text_len[i], v.text[i], text);
                failures++;
            }
            assert_int_equal(strlen(text), len);
            free(ids);
            free(text);
        }
    }
    free_vectors(&v);
    unload(&l);
    assert_int_equal(failures, 0);
}

static void round_trip_llama_spm(void **state)
{
    (void)state;
    check_round_trip("llama-spm");
}

static void round_trip_gpt2(void **state)
{
    (void)state;
    check_round_trip("gpt-2");
}

static void round_trip_falcon(void **state)
{
    (void)state;
    check_round_trip("falcon");
}

static void round_trip_deepseek_coder(void **state)
{
    (void)state;
    check_round_trip("deepseek-coder");
}

/* ---- helpers over one tok ------------------------------------------------- */

static size_t encode(const tok *t, const char *s, unsigned flags, int32_t *out, size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    char err[256] = "";
    int rc = tok_encode(t, s, strlen(s), flags, &ids, &n, err);
    if (rc)
        fail_msg("tok_encode(\"%s\"): %s", s, err);
    assert_true(n <= cap);
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    return n;
}

static char *decode(const tok *t, const int32_t *ids, size_t n, bool special)
{
    char *text = NULL;
    size_t len = 0;
    char err[256] = "";
    int rc = tok_decode(t, ids, n, special, &text, &len, err);
    if (rc)
        fail_msg("tok_decode: %s", err);
    return text;
}

static bool contains(const int32_t *ids, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* ---- SentencePiece -------------------------------------------------------- */

static loaded load_stories(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared_dir());
    return load_path(path);
}

static void stories260k_encodes_once_upon_a_time_after_bos(void **state)
{
    (void)state;
    loaded l = load_stories();
    assert_int_equal(tok_get_kind(l.t), TOK_KIND_SPM);
    assert_int_equal(tok_n_vocab(l.t), 512);
    assert_int_equal(tok_bos(l.t), 1);
    assert_int_equal(tok_eos(l.t), 2);
    assert_true(tok_add_bos_default(l.t));
    assert_true(tok_is_eog(l.t, 2));
    assert_false(tok_is_eog(l.t, 1));

    int32_t ids[64];
    size_t n = encode(l.t, "Once upon a time", TOK_ADD_BOS, ids, 64);
    assert_true(n >= 2);
    assert_int_equal(ids[0], 1);
    /* A story vocabulary has whole words for this: far fewer tokens than
     * characters, none of them a byte fallback, the first one "▁Once"-ish. */
    assert_true(n <= 9);
    for (size_t i = 1; i < n; i++) {
        assert_true(ids[i] > 2 && ids[i] < 512);
        assert_int_not_equal(tok_get_attr(l.t, ids[i]), TOK_ATTR_BYTE);
    }
    const char *first = tok_text(l.t, ids[1]);
    assert_non_null(first);
    assert_memory_equal(first, "\xe2\x96\x81", 3);
    char *text = decode(l.t, ids, n, false);
    assert_string_equal(text, "Once upon a time");
    free(text);
    unload(&l);
}

static void spm_uses_byte_fallback_for_characters_outside_the_vocab(void **state)
{
    (void)state;
    loaded l = load_stories();
    /* U+65E5 U+672C ("日本") and an emoji are not among 512 story tokens. */
    const char *s = "a \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80!";
    int32_t ids[64];
    size_t n = encode(l.t, s, 0, ids, 64);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (tok_get_attr(l.t, ids[i]) == TOK_ATTR_BYTE)
            bytes++;
    assert_int_equal(bytes, 10); /* 3 + 3 + 4 bytes of the three characters */
    /* <0xE6> is token 3 + 0xE6 in LLaMA's layout. */
    assert_true(contains(ids, n, 3 + 0xe6));
    assert_string_equal(tok_text(l.t, 3 + 0xe6), "<0xE6>");
    char piece[8];
    assert_int_equal(tok_piece(l.t, 3 + 0xe6, false, piece, sizeof piece), 1);
    assert_int_equal((unsigned char)piece[0], 0xe6);
    char *text = decode(l.t, ids, n, false);
    assert_string_equal(text, s);
    free(text);
    unload(&l);
}

static void spm_leading_space_prefix_and_escape(void **state)
{
    (void)state;
    loaded l = load_vocab("llama-spm");
    int32_t ids[64];
    /* "Hello world" and " Hello world" differ only by the extra U+2581. */
    size_t n = encode(l.t, "Hello world", 0, ids, 64);
    assert_int_equal(n, 2);
    assert_string_equal(tok_text(l.t, ids[0]), "\xe2\x96\x81" "Hello");
    assert_string_equal(tok_text(l.t, ids[1]), "\xe2\x96\x81" "world");
    char piece[16];
    int len = tok_piece(l.t, ids[1], false, piece, sizeof piece);
    assert_int_equal(len, 6);
    assert_memory_equal(piece, " world", 6);
    /* tok_piece reports the full length even when cap is short, like snprintf. */
    assert_int_equal(tok_piece(l.t, ids[1], false, piece, 2), 6);
    assert_memory_equal(piece, " w", 2);
    assert_true(tok_piece(l.t, -1, false, piece, sizeof piece) < 0);
    assert_true(tok_piece(l.t, tok_n_vocab(l.t), false, piece, sizeof piece) < 0);
    unload(&l);
}

static void spm_word_split_gives_the_same_ids_as_merging_whole_runs(void **state)
{
    (void)state;
    loaded l = load_vocab("llama-spm");
    assert_true(l.t->spm_word_split);
    vectors v;
    load_vectors("llama-spm", &v);
    /* Every vector input, plus a long mixed run. */
    char mixed[4096];
    size_t w = 0;
    for (size_t i = 0; i < v.n && w + v.text_len[i] + 2 < sizeof mixed; i++) {
        memcpy(mixed + w, v.text[i], v.text_len[i]);
        w += v.text_len[i];
        mixed[w++] = ' ';
    }
    for (size_t i = 0; i <= v.n; i++) {
        const char *s = i < v.n ? v.text[i] : mixed;
        size_t len = i < v.n ? v.text_len[i] : w;
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        char err[256];
        l.t->spm_word_split = true;
        assert_int_equal(tok_encode(l.t, s, len, 0, &a, &na, err), 0);
        l.t->spm_word_split = false;
        assert_int_equal(tok_encode(l.t, s, len, 0, &b, &nb, err), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(a);
        free(b);
    }
    free_vectors(&v);
    unload(&l);
}

/* ---- special tokens ------------------------------------------------------- */

static void control_tokens_are_parsed_only_with_parse_special(void **state)
{
    (void)state;
    loaded l = load_vocab("gpt-2");
    int32_t ids[64];
    const char *s = "Hi<|endoftext|>there";
    size_t n = encode(l.t, s, TOK_PARSE_SPECIAL, ids, 64);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 50256);
    assert_int_equal(tok_get_attr(l.t, 50256), TOK_ATTR_CONTROL);
    char *text = decode(l.t, ids, n, false);
    assert_string_equal(text, "Hithere");
    free(text);
    text = decode(l.t, ids, n, true);
    assert_string_equal(text, s);
    free(text);

    n = encode(l.t, s, 0, ids, 64);
    assert_true(n > 3);
    assert_false(contains(ids, n, 50256));
    text = decode(l.t, ids, n, false);
    assert_string_equal(text, s);
    free(text);
    unload(&l);

    /* SentencePiece: "</s>" typed as text is never the EOS token. */
    l = load_vocab("llama-spm");
    n = encode(l.t, "a</s>b", 0, ids, 64);
    assert_false(contains(ids, n, 2));
    text = decode(l.t, ids, n, false);
    assert_string_equal(text, "a</s>b");
    free(text);
    n = encode(l.t, "a</s>b", TOK_PARSE_SPECIAL, ids, 64);
    assert_true(contains(ids, n, 2));
    /* The run after a special token gets its own leading space, and decode
     * takes it off again. */
    text = decode(l.t, ids, n, true);
    assert_string_equal(text, "a</s>b");
    free(text);
    unload(&l);
}

static size_t encode_spans(const tok *t, const char *s, const tok_range *sp, size_t n_sp,
                           int32_t *out, size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    char err[256] = "";
    if (tok_encode_spans(t, s, strlen(s), 0, sp, n_sp, &ids, &n, err))
        fail_msg("tok_encode_spans(\"%s\"): %s", s, err);
    assert_true(n <= cap);
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    return n;
}

/* A chat prompt's own markup may hold control tokens, the user text inside
 * it may not: control-token text counts only inside the given spans, and
 * only when the whole token is inside one. */
static void control_tokens_are_parsed_only_inside_given_spans(void **state)
{
    (void)state;
    loaded l = load_vocab("gpt-2");
    const char *s = "A<|endoftext|>B<|endoftext|>C"; /* the token is 13 bytes */
    int32_t ids[64], want[64], part[64];
    size_t n_count = 0;

    /* Only the first one is markup. */
    size_t n = encode_spans(l.t, s, (tok_range[]){{1, 13}}, 1, ids, 64);
    for (size_t i = 0; i < n; i++)
        n_count += ids[i] == 50256;
    assert_int_equal(n_count, 1);
    size_t nw = encode(l.t, "A", 0, want, 64);
    want[nw++] = 50256;
    size_t np = encode(l.t, "B<|endoftext|>C", 0, part, 64);
    memcpy(want + nw, part, np * sizeof *part);
    nw += np;
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, n * sizeof *ids);

    /* A span that ends inside the token, or starts after its first byte,
     * does not make it. */
    n = encode_spans(l.t, s, (tok_range[]){{1, 12}}, 1, ids, 64);
    assert_false(contains(ids, n, 50256));
    n = encode_spans(l.t, s, (tok_range[]){{0, 1}, {2, 12}}, 2, ids, 64);
    assert_false(contains(ids, n, 50256));

    /* No spans: the text as plain text; one span over everything: as with
     * TOK_PARSE_SPECIAL. */
    n = encode_spans(l.t, s, NULL, 0, ids, 64);
    nw = encode(l.t, s, 0, want, 64);
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, n * sizeof *ids);
    n = encode_spans(l.t, s, (tok_range[]){{0, strlen(s)}}, 1, ids, 64);
    nw = encode(l.t, s, TOK_PARSE_SPECIAL, want, 64);
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, n * sizeof *ids);

    /* Spans out of order, overlapping or past the end, and the flag the
     * spans replace, are refused. */
    int32_t *p = NULL;
    size_t np2 = 0;
    char err[256] = "";
    assert_int_equal(tok_encode_spans(l.t, s, strlen(s), 0, (tok_range[]){{5, 5}, {4, 1}}, 2,
                                      &p, &np2, err), TOK_EINPUT);
    assert_non_null(strstr(err, "span 1"));
    assert_int_equal(tok_encode_spans(l.t, s, strlen(s), 0, (tok_range[]){{20, 10}}, 1, &p,
                                      &np2, err), TOK_EINPUT);
    assert_int_equal(tok_encode_spans(l.t, s, strlen(s), TOK_PARSE_SPECIAL, NULL, 0, &p, &np2,
                                      err), TOK_EINPUT);
    assert_null(p);
    unload(&l);

    /* SentencePiece: "</s>" outside the spans stays text, inside is EOS. */
    l = load_vocab("llama-spm");
    n = encode_spans(l.t, "a</s>b</s>", (tok_range[]){{6, 4}}, 1, ids, 64);
    assert_int_equal(ids[n - 1], 2);
    n_count = 0;
    for (size_t i = 0; i < n; i++)
        n_count += ids[i] == 2;
    assert_int_equal(n_count, 1);
    unload(&l);
}

static void user_defined_tokens_are_always_split_out(void **state)
{
    (void)state;
    loaded l = load_vocab("deepseek-coder");
    assert_int_equal(tok_get_attr(l.t, 32009), TOK_ATTR_USER_DEFINED);
    assert_string_equal(tok_text(l.t, 32009), "\xc3\xbc");
    int32_t ids[64];
    size_t n = encode(l.t, "F\xc3\xbchrer", 0, ids, 64);
    assert_true(contains(ids, n, 32009));
    /* Longest match wins: "<|User|>" (user-defined) is one token. */
    n = encode(l.t, "<|User|>hi", 0, ids, 64);
    assert_int_equal(ids[0], 32019);
    /* Control tokens (BOS here) stay text without the flag. */
    n = encode(l.t, tok_text(l.t, 32013), 0, ids, 64);
    assert_false(contains(ids, n, 32013));
    n = encode(l.t, tok_text(l.t, 32013), TOK_PARSE_SPECIAL, ids, 64);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 32013);
    assert_int_equal(tok_find(l.t, "<|EOT|>", 7), 32021);
    assert_int_equal(tok_find(l.t, "<|nope|>", 8), -1);
    unload(&l);
}

static void add_bos_prepends_bos_and_decode_drops_it(void **state)
{
    (void)state;
    loaded l = load_vocab("deepseek-coder");
    assert_true(tok_add_bos_default(l.t));
    assert_int_equal(tok_bos(l.t), 32013);
    int32_t ids[64];
    size_t n = encode(l.t, "int x;", TOK_ADD_BOS, ids, 64);
    assert_int_equal(ids[0], 32013);
    char *text = decode(l.t, ids, n, true);
    assert_string_equal(text, "int x;");
    free(text);
    unload(&l);
}

/* ---- byte-level BPE details ----------------------------------------------- */

static void bpe_invalid_utf8_round_trips_where_the_vocab_can_spell_it(void **state)
{
    (void)state;
    const char *names[] = {"gpt-2", "falcon", "deepseek-coder"};
    const char s[] = "ok \xff\xfe x\xc3 \xe2\x82 caf\xc3\xa9 \xed\xa0\x80!\x03";
    /* Falcon has no token for 0xff, 0xfe or 0x03, DeepSeek-Coder only
     * user-defined ones for 0xff and 0xfe: those bytes become U+FFFD. */
    const char falcon[] = "ok \xef\xbf\xbd\xef\xbf\xbd x\xc3 \xe2\x82 caf\xc3\xa9 "
                          "\xed\xa0\x80!\xef\xbf\xbd";
    const char deepseek[] = "ok \xef\xbf\xbd\xef\xbf\xbd x\xc3 \xe2\x82 caf\xc3\xa9 "
                            "\xed\xa0\x80!\x03";
    const char *want_text[] = {s, falcon, deepseek};
    size_t want_lens[] = {sizeof s - 1, sizeof falcon - 1, sizeof deepseek - 1};
    for (size_t k = 0; k < 3; k++) {
        loaded l = load_vocab(names[k]);
        const char *want = want_text[k];
        size_t want_len = want_lens[k];
        int32_t *ids = NULL;
        size_t n = 0;
        char *text = NULL;
        size_t len = 0;
        char err[256];
        if (tok_encode(l.t, s, sizeof s - 1, 0, &ids, &n, err))
            fail_msg("%s: %s", names[k], err);
        assert_int_equal(tok_decode(l.t, ids, n, false, &text, &len, err), 0);
        assert_int_equal(len, want_len);
        assert_memory_equal(text, want, len);
        free(ids);
        free(text);
        unload(&l);
    }
}

static void random_bytes_round_trip_exactly(void **state)
{
    (void)state;
    /* GPT-2 and LLaMA's SentencePiece can spell every byte; mostly-ASCII
     * noise with stray high bytes must come back unchanged. */
    const char *names[] = {"gpt-2", "llama-spm"};
    uint64_t seed = 0x243f6a8885a308d3ULL;
    for (int k = 0; k < 2; k++) {
        loaded l = load_vocab(names[k]);
        for (int round = 0; round < 40; round++) {
            char s[600];
            size_t n = (size_t)(round * 15);
            for (size_t i = 0; i < n; i++) {
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                unsigned r = (unsigned)(seed >> 33);
                s[i] = r % 4 == 0 ? (char)(r >> 8) : " aeiou\n\tbcd.,'<>|"[(r >> 8) % 17];
            }
            /* A literal U+2581 reads back as a space in SentencePiece. */
            if (memmem(s, n, "\342\226\201", 3))
                continue;
            int32_t *ids = NULL;
            size_t n_ids = 0;
            char *text = NULL;
            size_t len = 0;
            char err[256];
            if (tok_encode(l.t, s, n, 0, &ids, &n_ids, err))
                fail_msg("%s round %d: %s", names[k], round, err);
            assert_int_equal(tok_decode(l.t, ids, n_ids, false, &text, &len, err), 0);
            assert_int_equal(len, n);
            assert_memory_equal(text, s, n);
            free(ids);
            free(text);
        }
        unload(&l);
    }
}

static void decode_rejects_ids_outside_the_vocab(void **state)
{
    (void)state;
    loaded l = load_vocab("gpt-2");
    int32_t ids[] = {15496, 50257};
    char *text = NULL;
    size_t len;
    char err[256] = "";
    assert_int_equal(tok_decode(l.t, ids, 2, false, &text, &len, err), TOK_EINPUT);
    assert_null(text);
    assert_non_null(strstr(err, "50257"));
    unload(&l);
}

static void empty_input_gives_no_tokens(void **state)
{
    (void)state;
    loaded l = load_vocab("llama-spm");
    int32_t *ids = NULL;
    size_t n = 99;
    char err[256];
    assert_int_equal(tok_encode(l.t, "", 0, 0, &ids, &n, err), 0);
    assert_int_equal(n, 0);
    assert_non_null(ids);
    free(ids);
    assert_int_equal(tok_encode(l.t, "", 0, TOK_ADD_BOS, &ids, &n, err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    free(ids);
    unload(&l);
}

/* ---- the pre-tokenizer table ---------------------------------------------- */

static size_t split(const tok_pre *p, const char *s, const char **pieces, size_t cap,
                    char *store, size_t store_cap)
{
    tok_pre_session ps;
    char err[256];
    assert_int_equal(tok_pre_session_init(&ps, err), 0);
    tok_spans out = {0};
    int rc = tok_pre_split(p, &ps, s, strlen(s), &out, err);
    if (rc)
        fail_msg("tok_pre_split: %s", err);
    assert_true(out.n <= cap);
    size_t w = 0, expect = 0;
    for (size_t i = 0; i < out.n; i++) {
        assert_int_equal(out.v[i].start, expect); /* pieces tile the text */
        assert_true(out.v[i].len > 0);
        expect += out.v[i].len;
        assert_true(w + out.v[i].len + 1 <= store_cap);
        memcpy(store + w, s + out.v[i].start, out.v[i].len);
        store[w + out.v[i].len] = '\0';
        pieces[i] = store + w;
        w += out.v[i].len + 1;
    }
    assert_int_equal(expect, strlen(s));
    size_t n = out.n;
    free(out.v);
    tok_pre_session_free(&ps);
    return n;
}

static void every_pre_tokenizer_compiles_and_tiles_its_input(void **state)
{
    (void)state;
    size_t n_fam;
    const tok_pre_family *fam = tok_pre_families(&n_fam);
    assert_true(n_fam >= 20);
    const char *s = "Hello, y'all! How're you \xf0\x9f\x98\x81 ?\xe6\x88\x91\xe6\x83\xb3 "
                    "12345 3.14\n\n\t  \xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 "
                    "\xea\xb0\x80 \xe3\x81\x82 \xff bad\xc3";
    uint32_t have_jit = 0;
    pcre2_config(PCRE2_CONFIG_JIT, &have_jit);
    for (size_t i = 0; i < n_fam; i++) {
        tok_pre p;
        char err[256] = "";
        int rc = tok_pre_compile(&p, &fam[i], err);
        if (rc)
            fail_msg("family %s: %s", fam[i].names[0], err);
        /* Where PCRE2 has a JIT, every pattern is compiled with it. */
        for (int r = 0; r < p.n; r++)
            assert_true(p.jit[r] || !have_jit);
        const char *pieces[256];
        char store[1024];
        size_t n = split(&p, s, pieces, 256, store, sizeof store);
        assert_true(n > 1);
        tok_pre_free(&p);
        /* Names are unique across the table. */
        for (const char *const *a = fam[i].names; *a; a++)
            assert_ptr_equal(tok_pre_find(*a), &fam[i]);
    }
    assert_non_null(tok_pre_find("llama-bpe"));
    assert_non_null(tok_pre_find("llama3"));
    assert_non_null(tok_pre_find("qwen2"));
    assert_non_null(tok_pre_find("deepseek-llm"));
    assert_non_null(tok_pre_find("starcoder"));
    assert_non_null(tok_pre_find("refact"));
    assert_non_null(tok_pre_find("mpt"));
    assert_non_null(tok_pre_find("command-r"));
    assert_non_null(tok_pre_find("tekken"));
    assert_non_null(tok_pre_find("gpt-4o"));
    assert_non_null(tok_pre_find("deepseek-v3"));
    assert_null(tok_pre_find("no-such-pre"));
}

static void expect_split(const char *family, const char *s, const char *const *want)
{
    tok_pre p;
    char err[256] = "";
    const tok_pre_family *f = tok_pre_find(family);
    assert_non_null(f);
    assert_int_equal(tok_pre_compile(&p, f, err), 0);
    const char *pieces[64];
    char store[1024];
    size_t n = split(&p, s, pieces, 64, store, sizeof store);
    size_t n_want = 0;
    while (want[n_want])
        n_want++;
    bool same = n == n_want;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(pieces[i], want[i]) == 0;
    if (!same) {
        for (size_t i = 0; i < n; i++)
            print_error("%s piece %zu: \"%s\"\n", family, i, pieces[i]);
        fail_msg("%s: \"%s\" split differently", family, s);
    }
    tok_pre_free(&p);
}

static void pre_tokenizers_split_like_their_published_regexes(void **state)
{
    (void)state;
    expect_split("llama-bpe", "Hello world 1234567 don't",
                 (const char *const[]){"Hello", " world", " ", "123", "456", "7", " don", "'t",
                                       NULL});
    /* Llama 3 contractions are case-insensitive. */
    expect_split("llama3", "I'LL GO", (const char *const[]){"I", "'LL", " GO", NULL});
    expect_split("qwen2", "ab 123", (const char *const[]){"ab", " ", "1", "2", "3", NULL});
    expect_split("gpt-2", "Hello  world!!", (const char *const[]){"Hello", " ", " world", "!!",
                                                                   NULL});
    expect_split("gpt-4o", "HelloWorld 12345",
                 (const char *const[]){"Hello", "World", " ", "123", "45", NULL});
    expect_split("starcoder", "x=12", (const char *const[]){"x", "=", "1", "2", NULL});
    expect_split("falcon", "a+1234567", (const char *const[]){"a", "+", "123", "456", "7", NULL});
    expect_split("deepseek-coder", "ab\ncd, 12",
                 (const char *const[]){"ab", "\n", "cd", ",", " ", "1", "2", NULL});
    expect_split("deepseek-llm", "Hi \xce\xb1\xce\xb2!",
                 (const char *const[]){"Hi", " \xce\xb1\xce\xb2", "!", NULL});
    expect_split("superbpe", "1234567", (const char *const[]){"1", "234", "567", NULL});
}

/* ---- synthetic vocabularies ----------------------------------------------- */

typedef struct tmpdir {
    char path[64];
    char file[128];
} tmpdir;

static void tmpdir_make(tmpdir *d)
{
    snprintf(d->path, sizeof d->path, "/tmp/test_tok_XXXXXX");
    assert_non_null(mkdtemp(d->path));
    snprintf(d->file, sizeof d->file, "%s/vocab.gguf", d->path);
}

static void tmpdir_remove(tmpdir *d)
{
    unlink(d->file);
    rmdir(d->path);
}

/* GPT-2's byte-level character for byte b, as UTF-8. */
static size_t byte_char(int b, char *out)
{
    int extra = 0, cp = -1;
    for (int x = 0; x <= b; x++) {
        bool printable = (x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || x >= 0xae;
        cp = printable ? x : 256 + extra++;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

typedef struct vocab_builder {
    gguf_str *tokens;
    char **owned;
    size_t n, cap;
    gguf_str *merges;
    size_t n_merges, cap_merges;
} vocab_builder;

static void vb_push(gguf_str **arr, size_t *n, size_t *cap, char ***owned, const char *s,
                    size_t len)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 512;
        *arr = realloc(*arr, *cap * sizeof **arr);
        assert_non_null(*arr);
        if (owned) {
            *owned = realloc(*owned, *cap * sizeof **owned);
            assert_non_null(*owned);
        }
    }
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, s, len);
    copy[len] = '\0';
    (*arr)[*n].ptr = copy;
    (*arr)[*n].len = len;
    if (owned)
        (*owned)[*n] = copy;
    (*n)++;
}

static void vb_token(vocab_builder *b, const char *s)
{
    vb_push(&b->tokens, &b->n, &b->cap, &b->owned, s, strlen(s));
}

static void vb_merge(vocab_builder *b, const char *s)
{
    vb_push(&b->merges, &b->n_merges, &b->cap_merges, NULL, s, strlen(s));
}

static void vb_bytes(vocab_builder *b)
{
    for (int x = 0; x < 256; x++) {
        char u[4];
        size_t n = byte_char(x, u);
        vb_push(&b->tokens, &b->n, &b->cap, &b->owned, u, n);
    }
}

static void vb_free(vocab_builder *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->owned[i]);
    for (size_t i = 0; i < b->n_merges; i++)
        free((char *)b->merges[i].ptr);
    free(b->tokens);
    free(b->owned);
    free(b->merges);
}

static gguf_writer *vb_writer(const vocab_builder *b, const char *model, const char *pre)
{
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    if (model)
        assert_int_equal(gguf_writer_set_str(w, "tokenizer.ggml.model", model), 0);
    if (pre)
        assert_int_equal(gguf_writer_set_str(w, "tokenizer.ggml.pre", pre), 0);
    if (b->n)
        assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, b->n,
                                             b->tokens),
                         0);
    if (b->n_merges)
        assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.merges", GGUF_TYPE_STRING,
                                             b->n_merges, b->merges),
                         0);
    return w;
}

/* Write w to d->file, open it and try tok_open_gguf; returns its status. */
static int open_written(gguf_writer *w, tmpdir *d, tok **t, char err[256])
{
    char gerr[256] = "";
    if (gguf_writer_begin(w, d->file, gerr) || gguf_writer_finish(w, gerr))
        fail_msg("writing %s: %s", d->file, gerr);
    gguf_writer_free(w);
    gguf *g = NULL;
    if (gguf_open(&g, d->file, gerr))
        fail_msg("reopening %s: %s", d->file, gerr);
    *t = NULL;
    int rc = tok_open_gguf(t, g, err);
    gguf_close(g);
    return rc;
}

static void bpe_vocab_basic(vocab_builder *b)
{
    memset(b, 0, sizeof *b);
    vb_bytes(b);
    vb_token(b, "ab");
    vb_token(b, "abc");
    vb_merge(b, "a b");
}

static void llama3_ignore_merges_keeps_whole_vocab_words(void **state)
{
    (void)state;
    vocab_builder b;
    bpe_vocab_basic(&b);
    int32_t ab = 256, abc = 257;
    const char *pres[] = {"gpt-2", "llama-bpe"};
    for (int k = 0; k < 2; k++) {
        tmpdir d;
        tmpdir_make(&d);
        tok *t;
        char err[256] = "";
        int rc = open_written(vb_writer(&b, "gpt2", pres[k]), &d, &t, err);
        tmpdir_remove(&d);
        if (rc)
            fail_msg("%s: %s", pres[k], err);
        int32_t ids[16];
        size_t n = encode(t, "abc", 0, ids, 16);
        if (k == 0) {
            /* No rule makes "abc": merges give "ab" + "c". */
            assert_int_equal(n, 2);
            assert_int_equal(ids[0], ab);
            assert_int_equal(ids[1], 'c');
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(ids[0], abc);
            assert_true(tok_add_bos_default(t) == false); /* no BOS token in this vocab */
        }
        tok_free(t);
    }
    vb_free(&b);
}

static void expect_open_error(vocab_builder *b, const char *model, const char *pre,
                              void (*extra)(gguf_writer *), const char *needle)
{
    tmpdir d;
    tmpdir_make(&d);
    gguf_writer *w = vb_writer(b, model, pre);
    if (extra)
        extra(w);
    tok *t = (tok *)1;
    char err[256] = "";
    int rc = open_written(w, &d, &t, err);
    tmpdir_remove(&d);
    assert_int_equal(rc, TOK_EFORMAT);
    assert_null(t);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    /* The message names the file. */
    assert_non_null(strstr(err, "vocab.gguf"));
}

static void scores_too_short(gguf_writer *w)
{
    float s[3] = {0, -1, -2};
    assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, 3, s), 0);
}

static void types_out_of_range(gguf_writer *w)
{
    int32_t ty[258];
    for (int i = 0; i < 258; i++)
        ty[i] = 1;
    ty[100] = 9;
    assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, 258, ty),
                     0);
}

static void scores_as_strings(gguf_writer *w)
{
    gguf_str s[1] = {{"x", 1}};
    assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_STRING, 1, s), 0);
}

static void malformed_metadata_is_a_clean_error(void **state)
{
    (void)state;
    vocab_builder empty = {0};
    expect_open_error(&empty, "gpt2", "gpt-2", NULL, "tokenizer.ggml.tokens");

    vocab_builder b;
    bpe_vocab_basic(&b);
    expect_open_error(&b, NULL, NULL, NULL, "tokenizer.ggml.model");
    expect_open_error(&b, "bert", NULL, NULL, "tokenizer.ggml.model");
    expect_open_error(&b, "gpt2", "no-such-pre", NULL, "tokenizer.ggml.pre");
    expect_open_error(&b, "gpt2", "gpt-2", scores_too_short, "tokenizer.ggml.scores");
    expect_open_error(&b, "gpt2", "gpt-2", scores_as_strings, "tokenizer.ggml.scores");
    expect_open_error(&b, "gpt2", "gpt-2", types_out_of_range, "tokenizer.ggml.token_type[100]");
    expect_open_error(&b, "llama", NULL, scores_too_short, "tokenizer.ggml.scores");
    vb_merge(&b, "abc");
    expect_open_error(&b, "gpt2", "gpt-2", NULL, "tokenizer.ggml.merges[1]");
    vb_free(&b);

    bpe_vocab_basic(&b);
    free((char *)b.merges[0].ptr);
    b.n_merges = 0;
    expect_open_error(&b, "gpt2", "gpt-2", NULL, "tokenizer.ggml.merges");
    vb_free(&b);
}

static void lenient_where_llama_cpp_is_lenient(void **state)
{
    (void)state;
    /* No scores, no token types, no pre (-> "default"), a special id out of
     * range, and a duplicated token: all accepted. */
    vocab_builder b;
    bpe_vocab_basic(&b);
    vb_token(&b, "ab"); /* duplicate of id 256 */
    tmpdir d;
    tmpdir_make(&d);
    gguf_writer *w = vb_writer(&b, "gpt2", NULL);
    assert_int_equal(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 0xffffffffu), 0);
    tok *t;
    char err[256] = "";
    int rc = open_written(w, &d, &t, err);
    tmpdir_remove(&d);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(tok_eos(t), -1);
    assert_int_equal(tok_find(t, "ab", 2), 256);
    int32_t ids[8];
    size_t n = encode(t, "ab", 0, ids, 8);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 256);
    tok_free(t);
    vb_free(&b);
}

static void spm_user_defined_tokens_split_or_merge_by_their_text(void **state)
{
    (void)state;
    /* "▁▁" (user-defined, written with U+2581) can only come from merging;
     * "<tab>" (user-defined, plain text) is cut out of the input. */
    vocab_builder b = {0};
    /* Octal escapes: U+2581 is \342\226\201. */
    const char *toks[] = {"<unk>", "<s>", "</s>", "\342\226\201", "a", "\342\226\201a",
                          "\342\226\201\342\226\201", "<tab>"};
    float scores[] = {0, 0, 0, -5, -4, -1, 0, 0};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 4, 4};
    for (size_t i = 0; i < 8; i++)
        vb_token(&b, toks[i]);
    tmpdir d;
    tmpdir_make(&d);
    gguf_writer *w = vb_writer(&b, "llama", NULL);
    assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, 8, scores),
                     0);
    assert_int_equal(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, 8, types),
                     0);
    tok *t;
    char err[256] = "";
    int rc = open_written(w, &d, &t, err);
    tmpdir_remove(&d);
    if (rc)
        fail_msg("%s", err);
    int32_t ids[16];
    size_t n = encode(t, "a  a<tab>a", 0, ids, 16);
    /* "▁a▁▁a" -> ▁a ▁▁ a, then <tab>, then "▁a" for the run after it. */
    int32_t want[] = {5, 6, 4, 7, 5};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    char *text = decode(t, ids, n, false);
    assert_string_equal(text, "a  a<tab>a");
    free(text);
    char piece[8];
    assert_int_equal(tok_piece(t, 6, false, piece, sizeof piece), 2);
    assert_memory_equal(piece, "  ", 2);
    tok_free(t);
    vb_free(&b);
}

/* ---- concurrency and cost ------------------------------------------------- */

typedef struct thread_job {
    const tok *t;
    const vectors *v;
    int rounds;
    int mismatches;
    int32_t **expect;
    size_t *n_expect;
} thread_job;

static void *encode_many(void *arg)
{
    thread_job *j = arg;
    for (int r = 0; r < j->rounds; r++) {
        for (size_t i = 0; i < j->v->n; i++) {
            int32_t *ids = NULL;
            size_t n = 0;
            char err[256];
            if (tok_encode(j->t, j->v->text[i], j->v->text_len[i], TOK_PARSE_SPECIAL, &ids, &n,
                           err) ||
                n != j->n_expect[i] || memcmp(ids, j->expect[i], n * sizeof *ids) != 0)
                j->mismatches++;
            free(ids);
        }
    }
    return NULL;
}

static void one_tok_encodes_from_several_threads(void **state)
{
    (void)state;
    loaded l = load_vocab("falcon");
    vectors v;
    load_vectors("falcon", &v);
    int32_t *expect[128];
    size_t n_expect[128];
    char err[256];
    for (size_t i = 0; i < v.n; i++)
        assert_int_equal(tok_encode(l.t, v.text[i], v.text_len[i], TOK_PARSE_SPECIAL, &expect[i],
                                    &n_expect[i], err),
                         0);
    pthread_t th[4];
    thread_job jobs[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (thread_job){l.t, &v, 5, 0, expect, n_expect};
        assert_int_equal(pthread_create(&th[k], NULL, encode_many, &jobs[k]), 0);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        assert_int_equal(jobs[k].mismatches, 0);
    }
    for (size_t i = 0; i < v.n; i++)
        free(expect[i]);
    free_vectors(&v);
    unload(&l);
}

static void long_inputs_encode_and_round_trip(void **state)
{
    (void)state;
    /* 1 MiB of prose, and 256 KiB with no space at all (one SentencePiece
     * run, one BPE pre-token): both must stay near-linear. */
    size_t n_prose = 1 << 20, n_word = 1 << 18;
    char *prose = malloc(n_prose + 1), *word = malloc(n_word + 1);
    assert_non_null(prose);
    assert_non_null(word);
    const char *sentence = "The quick brown fox jumps over the lazy dog, 1234 times!\n";
    size_t sl = strlen(sentence);
    for (size_t i = 0; i < n_prose; i++)
        prose[i] = sentence[i % sl];
    for (size_t i = 0; i < n_word; i++)
        word[i] = (char)('a' + (i * 7 + i / 13) % 26);
    prose[n_prose] = word[n_word] = '\0';

    const char *names[] = {"llama-spm", "gpt-2"};
    for (int k = 0; k < 2; k++) {
        loaded l = load_vocab(names[k]);
        const char *inputs[] = {prose, word};
        size_t lens[] = {n_prose, n_word};
        for (int m = 0; m < 2; m++) {
            int32_t *ids = NULL;
            size_t n = 0;
            char *text = NULL;
            size_t len = 0;
            char err[256];
            double t0 = now_ms();
            assert_int_equal(tok_encode(l.t, inputs[m], lens[m], 0, &ids, &n, err), 0);
            double t1 = now_ms();
            assert_int_equal(tok_decode(l.t, ids, n, false, &text, &len, err), 0);
            assert_int_equal(len, lens[m]);
            assert_memory_equal(text, inputs[m], len);
            assert_true(n < lens[m]);
            print_message("%s: %zu bytes -> %zu tokens in %.1f ms\n", names[k], lens[m], n,
                          t1 - t0);
            free(ids);
            free(text);
        }
        unload(&l);
    }
    free(prose);
    free(word);
}

static void a_150k_vocabulary_loads_quickly(void **state)
{
    (void)state;
    /* 256 bytes + 65536 pairs + 84208 triples = 150000 tokens, one merge per
     * token past the bytes, as a large byte-level vocabulary has. */
    vocab_builder b = {0};
    vb_bytes(&b);
    char u[256][3];
    size_t ul[256];
    for (int x = 0; x < 256; x++)
        ul[x] = byte_char(x, u[x]);
    char s[16], m[24];
    for (int x = 0; x < 256; x++)
        for (int y = 0; y < 256; y++) {
            size_t n = 0;
            memcpy(s + n, u[x], ul[x]), n += ul[x];
            memcpy(s + n, u[y], ul[y]), n += ul[y];
            vb_push(&b.tokens, &b.n, &b.cap, &b.owned, s, n);
            size_t k = 0;
            memcpy(m + k, u[x], ul[x]), k += ul[x];
            m[k++] = ' ';
            memcpy(m + k, u[y], ul[y]), k += ul[y];
            vb_push(&b.merges, &b.n_merges, &b.cap_merges, NULL, m, k);
        }
    for (int i = 0; b.n < 150000; i++) {
        int x = (i % 65536) / 256, y = i % 256, z = i / 65536;
        size_t n = 0, k = 0;
        memcpy(s + n, u[x], ul[x]), n += ul[x];
        memcpy(s + n, u[y], ul[y]), n += ul[y];
        memcpy(m + k, s, n), k += n;
        m[k++] = ' ';
        memcpy(s + n, u[z], ul[z]), n += ul[z];
        memcpy(m + k, u[z], ul[z]), k += ul[z];
        vb_push(&b.tokens, &b.n, &b.cap, &b.owned, s, n);
        vb_push(&b.merges, &b.n_merges, &b.cap_merges, NULL, m, k);
    }
    tmpdir d;
    tmpdir_make(&d);
    gguf_writer *w = vb_writer(&b, "gpt2", "qwen2");
    char gerr[256] = "";
    assert_int_equal(gguf_writer_begin(w, d.file, gerr), 0);
    assert_int_equal(gguf_writer_finish(w, gerr), 0);
    gguf_writer_free(w);
    gguf *g;
    assert_int_equal(gguf_open(&g, d.file, gerr), 0);
    tok *t = NULL;
    char err[256] = "";
    double t0 = now_ms();
    int rc = tok_open_gguf(&t, g, err);
    double ms = now_ms() - t0;
    gguf_close(g);
    tmpdir_remove(&d);
    if (rc)
        fail_msg("%s", err);
    print_message("%d tokens, %zu merges loaded in %.1f ms\n", tok_n_vocab(t), b.n_merges, ms);
    /* Milliseconds in a normal build; the bound leaves room for sanitizers. */
    assert_true(ms < 3000.0);
    int32_t ids[8];
    size_t n = encode(t, "abc", 0, ids, 8);
    assert_int_equal(n, 2); /* "ab" + "c" */
    tok_free(t);
    vb_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(vectors_llama_spm_match_exactly),
        cmocka_unit_test(vectors_gpt2_match_exactly),
        cmocka_unit_test(vectors_falcon_match_exactly),
        cmocka_unit_test(vectors_deepseek_coder_match_exactly),
        cmocka_unit_test(round_trip_llama_spm),
        cmocka_unit_test(round_trip_gpt2),
        cmocka_unit_test(round_trip_falcon),
        cmocka_unit_test(round_trip_deepseek_coder),
        cmocka_unit_test(stories260k_encodes_once_upon_a_time_after_bos),
        cmocka_unit_test(spm_uses_byte_fallback_for_characters_outside_the_vocab),
        cmocka_unit_test(spm_leading_space_prefix_and_escape),
        cmocka_unit_test(spm_word_split_gives_the_same_ids_as_merging_whole_runs),
        cmocka_unit_test(control_tokens_are_parsed_only_with_parse_special),
        cmocka_unit_test(control_tokens_are_parsed_only_inside_given_spans),
        cmocka_unit_test(user_defined_tokens_are_always_split_out),
        cmocka_unit_test(add_bos_prepends_bos_and_decode_drops_it),
        cmocka_unit_test(bpe_invalid_utf8_round_trips_where_the_vocab_can_spell_it),
        cmocka_unit_test(random_bytes_round_trip_exactly),
        cmocka_unit_test(decode_rejects_ids_outside_the_vocab),
        cmocka_unit_test(empty_input_gives_no_tokens),
        cmocka_unit_test(every_pre_tokenizer_compiles_and_tiles_its_input),
        cmocka_unit_test(pre_tokenizers_split_like_their_published_regexes),
        cmocka_unit_test(llama3_ignore_merges_keeps_whole_vocab_words),
        cmocka_unit_test(malformed_metadata_is_a_clean_error),
        cmocka_unit_test(lenient_where_llama_cpp_is_lenient),
        cmocka_unit_test(spm_user_defined_tokens_split_or_merge_by_their_text),
        cmocka_unit_test(one_tok_encodes_from_several_threads),
        cmocka_unit_test(long_inputs_encode_and_round_trip),
        cmocka_unit_test(a_150k_vocabulary_loads_quickly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
