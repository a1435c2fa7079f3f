/*
 * tok_pre.c - byte-level BPE pre-tokenizers: the split rules of each
 * tokenizer family, keyed by tokenizer.ggml.pre, and the code that runs them
 * with PCRE2 (UTF + UCP, JIT when available).
 *
 * A family is a list of regular expressions applied in order, as Hugging
 * Face's Sequence of Split(behavior = Isolated) pre-tokenizers does: each
 * regex splits every current piece into its matches and the gaps between
 * them, and both are kept, so the pieces always tile the input. The patterns
 * are the published ones from each model's tokenizer.json (as catalogued by
 * llama.cpp's llama-vocab.cpp, whose family names and grouping these follow);
 * where llama.cpp rewrote a pattern for std::regex (case-insensitive groups,
 * \p{Lu}-style classes), the original is used, since PCRE2 supports it.
 *
 * Unicode categories come from PCRE2's own tables (PCRE2_UCP). Input that is
 * not valid UTF-8 is matched with PCRE2_MATCH_INVALID_UTF: malformed bytes
 * match nothing and end up in gap pieces of their own, so no byte is lost.
 *
 * Compiled patterns are read-only and shared; match data, the match context
 * and the JIT stack belong to one tok_pre_session, i.e. to one tok_encode()
 * call.
 */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- the patterns --------------------------------------------------------- */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"

#define RE_CONTRACTIONS "(?i:'s|'t|'re|'ve|'m|'ll|'d)"

/* Llama 3 (tiktoken cl100k style): digits in groups of up to three. */
#define RE_LLAMA3                                                                    \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* Qwen2: like Llama 3 but one digit per piece. */
#define RE_QWEN2                                                                    \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* o200k-style words: an optional upper-case run, then lower-case letters (or
 * the reverse), marks attached. */
#define RE_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_CASED_WORDS(suffix)                                                      \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+" suffix "|[^\\r\\n\\p{L}\\p{N}]?" \
    RE_UPPER "+" RE_LOWER "*" suffix

#define RE_GPT4O                                                                    \
    RE_CASED_WORDS(RE_CONTRACTIONS "?")                                             \
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

#define RE_TEKKEN                                                                   \
    RE_CASED_WORDS("") "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* CJK ideographs (U+4E00..U+9FA5) with the ranges DeepSeek adds. */
#define RE_CJK_HANGUL "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
#define RE_CJK_KANA "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+"

/* DeepSeek LLM's letters: the cased-letter ranges of Unicode, spelled out. */
#define RE_DSLLM_LETTERS                                                              \
    "\\s?[A-Za-z\\x{00B5}\\x{00C0}-\\x{00D6}\\x{00D8}-\\x{00F6}\\x{00F8}-\\x{01BA}"    \
    "\\x{01BC}-\\x{01BF}\\x{01C4}-\\x{0293}\\x{0295}-\\x{02AF}\\x{0370}-\\x{0373}"      \
    "\\x{0376}\\x{0377}\\x{037B}-\\x{037D}\\x{037F}\\x{0386}\\x{0388}-\\x{038A}"        \
    "\\x{038C}\\x{038E}-\\x{03A1}\\x{03A3}-\\x{03F5}\\x{03F7}-\\x{0481}"                \
    "\\x{048A}-\\x{052F}\\x{0531}-\\x{0556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"      \
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"      \
    "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"      \
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}"       \
    "\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}"       \
    "\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"      \
    "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"       \
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}"        \
    "\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}"                \
    "\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}"                 \
    "\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"       \
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}"      \
    "\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"      \
    "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}" \
    "\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+"

#define RE_DSLLM_PUNCT \
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+"

/* DeepSeek V3: ASCII punctuation may lead a Latin word; marks join letters. */
#define RE_DSV3_WORDS                                                                     \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?" \
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+"

/* BLOOM / Poro: everything up to a space or sentence punctuation. */
#define RE_PORO " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{0964}\\x{06D4}\\x{060C})]+"

/* ---- the families --------------------------------------------------------- */

#define LIST(...) ((const char *const[]){__VA_ARGS__, NULL})

static const tok_pre_family tok_pre_table[] = {
    /* llama.cpp's fallback for BPE vocabularies that name no pre-tokenizer. */
    {LIST("default"),
     LIST("[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"), false, false,
     false},
    {LIST("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
          "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
          "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"),
     LIST(RE_GPT2), false, false, false},
    {LIST("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
          "lfm2", "jina-v5-nano"),
     LIST(RE_LLAMA3), true, true, false},
    {LIST("dbrx", "smaug-bpe"), LIST(RE_LLAMA3), false, false, false},
    {LIST("glm4", "chatglm-bpe"), LIST(RE_LLAMA3), false, false, true},
    {LIST("jais-2"),
     LIST(RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                          "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)"
                          "|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)"
                          "|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}"),
     false, false, false},
    {LIST("deepseek-llm"),
     LIST("[\\r\\n]", RE_DSLLM_LETTERS, RE_DSLLM_PUNCT, "\\s+$", RE_CJK_HANGUL, "\\p{N}+"),
     false, false, false},
    {LIST("deepseek-coder"),
     LIST("[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK_HANGUL, "\\p{N}"), false, false,
     false},
    {LIST("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
     LIST("\\p{N}{1,3}", RE_CJK_KANA,
          RE_DSV3_WORDS "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("spark2_5"),
     LIST("\\p{N}{1,3}", RE_CJK_KANA, RE_DSV3_WORDS "|[\\r\\n]|\\s+(?!\\S)|\\s+", "\\p{N}"),
     false, false, false},
    {LIST("falcon"), LIST("[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"), false,
     false, false},
    {LIST("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
          "mellum2"),
     LIST("\\p{N}", RE_GPT2), false, false, false},
    {LIST("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
          "solar-open", "grok-2"),
     LIST(RE_QWEN2), false, false, false},
    {LIST("qwen35"),
     LIST(RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
                          "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("poro-chat", "bloom", "gpt3-finnish"), LIST(RE_PORO), false, false, false},
    {LIST("viking"), LIST(RE_PORO, "\\p{N}"), false, false, false},
    {LIST("tekken"), LIST(RE_TEKKEN), true, true, false},
    {LIST("chameleon"),
     LIST("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )",
          "\\p{N}", "[\\p{P}!-/:-@\\[-`{-~]", RE_GPT2),
     false, true, false},
    {LIST("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), LIST(RE_GPT4O), false, false,
     false},
    {LIST("tiny_aya", "cohere2moe"), LIST("\\d{1,3}(?=(?:\\d{3})*\\b)", RE_GPT4O), false, false,
     false},
    {LIST("superbpe"), LIST("\\p{N}+", "(?=(\\d{3})+(?!\\d))"), false, false, false},
    {LIST("bailingmoe", "bailingmoe2", "llada-moe"),
     LIST("'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}"
          "| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("seed-coder"),
     LIST(RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}"
                          "| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("ufakzeka"),
     LIST("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
          "|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("laguna"), LIST("[^\\n]+|[\\n]+", RE_QWEN2), false, false, false},
    {LIST("exaone-moe"),
     LIST(RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}"
                          "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"),
     false, false, false},
    {LIST("minicpm5"),
     LIST("\\p{N}{1,3}", RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+"
                                         "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
                                         "|\\s+(?!\\S)|\\s+"),
     true, false, false},
    {LIST("youtu"),
     LIST("[\\x{AC00}-\\x{D7A3}\\x{3131}-\\x{318E}]+|[\\x{FF01}\\x{2026}\\x{201C}\\x{201D}"
          "\\x{2018}\\x{2019}\\x{2014}\\x{FF1A}\\x{FF1B}\\x{FF0C}\\x{3001}-\\x{303F}"
          "\\x{FE30}-\\x{FE4F}]+|[\\x{3105}-\\x{312F}]+|" RE_CJK_KANA,
          RE_CASED_WORDS("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?")
          "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
     true, false, false},
};

const tok_pre_family *tok_pre_families(size_t *n)
{
    *n = sizeof tok_pre_table / sizeof tok_pre_table[0];
    return tok_pre_table;
}

const tok_pre_family *tok_pre_find(const char *name)
{
    for (size_t i = 0; i < sizeof tok_pre_table / sizeof tok_pre_table[0]; i++)
        for (const char *const *n = tok_pre_table[i].names; *n; n++)
            if (strcmp(*n, name) == 0)
                return &tok_pre_table[i];
    return NULL;
}

/* ---- compiling ------------------------------------------------------------ */

int tok_pre_compile(tok_pre *p, const tok_pre_family *f, char err[256])
{
    memset(p, 0, sizeof *p);
    for (const char *const *re = f->regexes; *re; re++) {
        if (p->n == TOK_PRE_MAX_REGEX) {
            tok_set_err(err, "pre-tokenizer %s: more than %d regular expressions", f->names[0],
                        TOK_PRE_MAX_REGEX);
            tok_pre_free(p);
            return TOK_EFORMAT;
        }
        int code;
        PCRE2_SIZE at;
        pcre2_code *c = pcre2_compile((PCRE2_SPTR)*re, PCRE2_ZERO_TERMINATED,
                                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code,
                                      &at, NULL);
        if (!c) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(code, msg, sizeof msg);
            tok_set_err(err, "pre-tokenizer %s: regex %d does not compile at offset %zu: %s",
                        f->names[0], p->n, (size_t)at, (const char *)msg);
            tok_pre_free(p);
            return code == PCRE2_ERROR_NOMEMORY ? TOK_ENOMEM : TOK_EFORMAT;
        }
        p->code[p->n] = c;
        /* Without JIT support PCRE2's interpreter gives the same matches. */
        p->jit[p->n] = pcre2_jit_compile(c, PCRE2_JIT_COMPLETE) == 0;
        p->n++;
    }
    return TOK_OK;
}

void tok_pre_free(tok_pre *p)
{
    for (int i = 0; i < p->n; i++)
        pcre2_code_free(p->code[i]);
    memset(p, 0, sizeof *p);
}

/* ---- matching ------------------------------------------------------------- */

/* JIT stack bounds: enough for every pattern above on any input, since none
 * repeats a group per character; a match that still runs out is retried with
 * the interpreter, whose backtracking lives on the heap. */
#define TOK_JIT_STACK_MIN (32 * 1024)
#define TOK_JIT_STACK_MAX (1024 * 1024)

int tok_pre_session_init(tok_pre_session *s, char err[256])
{
    memset(s, 0, sizeof *s);
    s->md = pcre2_match_data_create(1, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    if (!s->md || !s->mctx) {
        tok_pre_session_free(s);
        tok_set_err(err, "tok_encode: out of memory for regex match data");
        return TOK_ENOMEM;
    }
    s->jit_stack = pcre2_jit_stack_create(TOK_JIT_STACK_MIN, TOK_JIT_STACK_MAX, NULL);
    if (s->jit_stack)
        pcre2_jit_stack_assign(s->mctx, NULL, s->jit_stack);
    return TOK_OK;
}

void tok_pre_session_free(tok_pre_session *s)
{
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jit_stack);
    free(s->tmp.v);
    memset(s, 0, sizeof *s);
}

/* Split one piece (base, n) of text by regex c, appending pieces to dst. */
static int tok_pre_split_piece(const pcre2_code *c, tok_pre_session *s, const char *text,
                               size_t base, size_t n, tok_spans *dst, char err[256])
{
    const unsigned char *subj = (const unsigned char *)text + base;
    size_t pos = 0, prev = 0;
    while (pos < n) {
        int rc = pcre2_match(c, subj, n, pos, 0, s->md, s->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(c, subj, n, pos, PCRE2_NO_JIT, s->md, s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            tok_set_err(err, "tok_encode: pre-tokenizer match failed at byte %zu: %s",
                        base + pos, (const char *)msg);
            return rc == PCRE2_ERROR_NOMEMORY ? TOK_ENOMEM : TOK_EINPUT;
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (ms < pos || me < ms || me > n) {
            tok_set_err(err, "tok_encode: pre-tokenizer returned a bad match [%zu, %zu)", ms, me);
            return TOK_EINPUT;
        }
        if (ms > prev && tok_spans_push(dst, base + prev, ms - prev))
            return TOK_ENOMEM;
        if (me > ms) {
            if (tok_spans_push(dst, base + ms, me - ms))
                return TOK_ENOMEM;
            prev = pos = me;
        } else {
            /* An empty match only marks a split point; move one character on. */
            prev = ms;
            if (ms >= n)
                break;
            pos = ms + tok_utf8_len(subj + ms, n - ms);
        }
    }
    if (n > prev && tok_spans_push(dst, base + prev, n - prev))
        return TOK_ENOMEM;
    return TOK_OK;
}

int tok_pre_split(const tok_pre *p, tok_pre_session *s, const char *text, size_t len,
                  tok_spans *out, char err[256])
{
    out->n = 0;
    if (len == 0)
        return TOK_OK;
    if (tok_spans_push(out, 0, len))
        goto nomem;
    for (int r = 0; r < p->n; r++) {
        s->tmp.n = 0;
        for (size_t i = 0; i < out->n; i++) {
            int rc = tok_pre_split_piece(p->code[r], s, text, out->v[i].start, out->v[i].len,
                                         &s->tmp, err);
            if (rc == TOK_ENOMEM)
                goto nomem;
            if (rc)
                return rc;
        }
        tok_spans t = *out;
        *out = s->tmp;
        s->tmp = t;
    }
    return TOK_OK;
nomem:
    tok_set_err(err, "tok_encode: out of memory splitting text");
    return TOK_ENOMEM;
}
