/*
 * chat.c - chat template families: detection by substrings of the Jinja
 * template, and one renderer per family.
 *
 * The formats follow each family's official template (Meta, Mistral's
 * tokenizer cookbook, Google, Microsoft, HuggingFace H4), checked against
 * the outputs of llama.cpp's built-in templates. Where the two differ we take
 * the official one for what the model sees around a turn (Llama 2 writes
 * " reply </s><s>[INST]" with the spaces), and llama.cpp's choice where the
 * official template would defeat prefix reuse across turns (Mistral v3 puts
 * the system prompt in the last user turn; here it goes in the first).
 *
 * Renderers append to one growing buffer; the first failed allocation makes
 * every later append a no-op and chat_render() reports it once at the end.
 */
#include "chat.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const family_names[CHAT_FAMILY_COUNT] = {
    [CHAT_PLAIN] = "plain",
    [CHAT_CHATML] = "chatml",
    [CHAT_LLAMA2] = "llama2",
    [CHAT_LLAMA3] = "llama3",
    [CHAT_MISTRAL] = "mistral",
    [CHAT_MISTRAL_V1] = "mistral-v1",
    [CHAT_MISTRAL_V3] = "mistral-v3",
    [CHAT_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
    [CHAT_MISTRAL_V7] = "mistral-v7",
    [CHAT_MISTRAL_V7_TEKKEN] = "mistral-v7-tekken",
    [CHAT_PHI3] = "phi3",
    [CHAT_GEMMA] = "gemma",
    [CHAT_ZEPHYR] = "zephyr",
};

const char *chat_family_name(chat_family f)
{
    if ((unsigned)f >= CHAT_FAMILY_COUNT)
        return NULL;
    return family_names[f];
}

int chat_family_parse(const char *name, chat_family *out)
{
    if (!name)
        return CHAT_EINVAL;
    for (int f = 0; f < CHAT_FAMILY_COUNT; f++) {
        if (strcmp(name, family_names[f]) == 0) {
            *out = (chat_family)f;
            return CHAT_OK;
        }
    }
    return CHAT_EINVAL;
}

/* ---- detection ----------------------------------------------------------- */

static bool has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

static bool writes_eos(chat_family f)
{
    switch (f) {
    case CHAT_LLAMA2:
    case CHAT_MISTRAL:
    case CHAT_MISTRAL_V1:
    case CHAT_MISTRAL_V3:
    case CHAT_MISTRAL_V3_TEKKEN:
    case CHAT_MISTRAL_V7:
    case CHAT_MISTRAL_V7_TEKKEN:
    case CHAT_ZEPHYR:
        return true;
    default:
        return false;
    }
}

/* The [INST] families. Mistral's own templates are told apart by marks only
 * they carry: [SYSTEM_PROMPT] (v7), the v1 system line or the tool block of
 * v3; then by the spacing around [INST], which is the whole difference
 * between the tokenizer versions. Anything else with [INST] is Llama 2 (with
 * <<SYS>>) or the original Mistral template (without). */
static chat_family detect_inst(const char *s)
{
    if (has(s, "[SYSTEM_PROMPT]"))
        return has(s, "[SYSTEM_PROMPT] ") ? CHAT_MISTRAL_V7 : CHAT_MISTRAL_V7_TEKKEN;
    if (has(s, "' [INST] ' + system_message") || has(s, "[AVAILABLE_TOOLS]")) {
        if (has(s, " [INST]"))
            return CHAT_MISTRAL_V1;
        if (has(s, "\"[INST]\"") || has(s, "'[INST]'"))
            return CHAT_MISTRAL_V3_TEKKEN;
        return CHAT_MISTRAL_V3;
    }
    return has(s, "<<SYS>>") ? CHAT_LLAMA2 : CHAT_MISTRAL;
}

static chat_family detect_family(const char *s)
{
    chat_family f;
    if (!s || !*s)
        return CHAT_PLAIN;
    if (chat_family_parse(s, &f) == CHAT_OK)
        return f;
    /* Checked in this order because later marks can appear inside earlier
     * families' templates (a ChatML template may mention <|user|> in a tool
     * preamble), never the other way round. */
    if (has(s, "<|im_start|>"))
        return CHAT_CHATML;
    if (has(s, "<|start_header_id|>"))
        return CHAT_LLAMA3;
    if (has(s, "[INST]"))
        return detect_inst(s);
    if (has(s, "<start_of_turn>"))
        return CHAT_GEMMA;
    /* GLM's <|user|> turns have no end marker at all: not a family here. */
    if (has(s, "[gMASK]"))
        return CHAT_PLAIN;
    /* Some of these templates build the tag as '<|' + role + '|>' and only
     * spell out the generation cue <|assistant|>. */
    bool role_pipes = has(s, "<|user|>") || has(s, "<|assistant|>");
    if (role_pipes && has(s, "<|end|>"))
        return CHAT_PHI3;
    if (role_pipes)
        return CHAT_ZEPHYR;
    return CHAT_PLAIN;
}

void chat_detect(const char *tmpl, const char *eos_text, chat_template *out)
{
    memset(out, 0, sizeof *out);
    out->family = detect_family(tmpl);
    if (!writes_eos(out->family))
        return;
    const char *eos = "</s>";
    /* StableLM 2 Zephyr spells its turn end in the template; the others
     * write eos_token, which is the model's EOS. */
    if (out->family == CHAT_ZEPHYR && tmpl && has(tmpl, "<|endoftext|>"))
        eos = "<|endoftext|>";
    else if (eos_text && *eos_text && strlen(eos_text) < CHAT_TOKEN_MAX)
        eos = eos_text;
    memcpy(out->eos, eos, strlen(eos) + 1);
}

void chat_detect_gguf(const gguf *g, const tok *t, chat_template *out)
{
    const char *tmpl = g ? gguf_get_str(g, "tokenizer.chat_template") : NULL;
    const char *eos = NULL;
    if (t) {
        int32_t id = tok_eos(t);
        if (id >= 0)
            eos = tok_text(t, id);
    }
    chat_detect(tmpl, eos, out);
}

/* ---- end of turn ----------------------------------------------------------- */

size_t chat_end_tokens(const chat_template *t, const char **out, size_t cap)
{
    const char *list[CHAT_END_MAX];
    size_t n = 0;
    switch (t->family) {
    case CHAT_CHATML:
        list[n++] = "<|im_end|>";
        list[n++] = "<|endoftext|>";
        break;
    case CHAT_LLAMA3:
        list[n++] = "<|eot_id|>";
        list[n++] = "<|eom_id|>";
        list[n++] = "<|end_of_text|>";
        break;
    case CHAT_PHI3:
        list[n++] = "<|end|>";
        list[n++] = "<|endoftext|>";
        break;
    case CHAT_GEMMA:
        list[n++] = "<end_of_turn>";
        list[n++] = "<eos>";
        break;
    default:
        /* A template set up by hand may lack the EOS text; chat_render()
         * writes "</s>" then, so that is what ends the turn. */
        if (writes_eos(t->family))
            list[n++] = t->eos[0] ? t->eos : "</s>";
        break;
    }
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = list[i];
    return n;
}

size_t chat_stop_texts(const chat_template *t, const char **out, size_t cap)
{
    if (t->family != CHAT_PLAIN)
        return 0;
    if (cap > 0)
        out[0] = "\nUser:";
    return 1;
}

/* ---- rendering ------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
    bool failed;
    /* Where message content went (in order, adjacent ones merged): what
     * chat_render_spans() leaves out of the template's own text. */
    tok_range *content;
    size_t n_content, cap_content;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->failed || n == 0)
        return;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* A text span: message content, possibly trimmed. */
typedef struct span {
    const char *p;
    size_t n;
} span;

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Jinja's trim / Python's strip, for ASCII whitespace: the templates apply
 * it to text that comes from JSON, where other Unicode spaces are rare
 * enough not to be worth decoding UTF-8 for. */
static span trim(span s)
{
    while (s.n > 0 && is_space(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n > 0 && is_space(s.p[s.n - 1]))
        s.n--;
    return s;
}

static span content(const chat_msg *m)
{
    return (span){m->content, m->content_len};
}

/* Note text[off, off + n) of b as message content. */
static void mark_content(buf *b, size_t off, size_t n)
{
    if (b->failed || n == 0)
        return;
    if (b->n_content > 0) {
        tok_range *last = &b->content[b->n_content - 1];
        if (last->off + last->len == off) {
            last->len += n;
            return;
        }
    }
    if (b->n_content == b->cap_content) {
        size_t cap = b->cap_content ? b->cap_content * 2 : 16;
        tok_range *v = realloc(b->content, cap * sizeof *v);
        if (!v) {
            b->failed = true;
            return;
        }
        b->content = v;
        b->cap_content = cap;
    }
    b->content[b->n_content++] = (tok_range){off, n};
}

/* Message text: written verbatim, and marked as not the template's own. */
static void put_span(buf *b, span s)
{
    size_t off = b->len;
    put(b, s.p, s.n);
    mark_content(b, off, s.n);
}

/* System messages of families without a system role wait here for the next
 * user turn; several are joined by a blank line. */
typedef struct pending {
    buf text;
} pending;

static void pending_add(pending *ps, span s)
{
    if (ps->text.len > 0)
        puts_(&ps->text, "\n\n");
    put_span(&ps->text, s);
}

static bool pending_any(const pending *ps)
{
    return ps->text.len > 0;
}

/* Pending system text is message content, the joins between messages
 * included (they are whitespace). */
static void pending_take(buf *b, pending *ps)
{
    size_t off = b->len;
    put(b, ps->text.p, ps->text.len);
    mark_content(b, off, ps->text.len);
    ps->text.len = 0;
}

/* "<|im_start|>role\ncontent<|im_end|>\n" */
static void render_chatml(buf *b, const chat_msg *m, size_t n, bool gen)
{
    static const char *const roles[STORE_ROLE_COUNT] = {"system", "user", "assistant", "tool"};
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|im_start|>");
        puts_(b, roles[m[i].role]);
        puts_(b, "\n");
        put_span(b, content(&m[i]));
        puts_(b, "<|im_end|>\n");
    }
    if (gen)
        puts_(b, "<|im_start|>assistant\n");
}

/* Llama 3 trims every message; a tool result is the "ipython" role. */
static void render_llama3(buf *b, const chat_msg *m, size_t n, bool gen)
{
    static const char *const roles[STORE_ROLE_COUNT] = {"system", "user", "assistant",
                                                        "ipython"};
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|start_header_id|>");
        puts_(b, roles[m[i].role]);
        puts_(b, "<|end_header_id|>\n\n");
        put_span(b, trim(content(&m[i])));
        puts_(b, "<|eot_id|>");
    }
    if (gen)
        puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* "<|role|>\ncontent" + end + "\n": Phi-3 (end = <|end|>) and Zephyr (end =
 * the EOS). Neither vocabulary has a tool role: tool results are user turns. */
static void render_role_pipes(buf *b, const chat_msg *m, size_t n, bool gen, const char *end)
{
    static const char *const roles[STORE_ROLE_COUNT] = {"system", "user", "assistant", "user"};
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|");
        puts_(b, roles[m[i].role]);
        puts_(b, "|>\n");
        put_span(b, content(&m[i]));
        puts_(b, end);
        puts_(b, "\n");
    }
    if (gen)
        puts_(b, "<|assistant|>\n");
}

/* Gemma has no system role: the system text opens the next user turn,
 * followed by a blank line. Messages are trimmed; the assistant is "model". */
static void render_gemma(buf *b, const chat_msg *m, size_t n, bool gen, pending *ps)
{
    for (size_t i = 0; i < n; i++) {
        span c = trim(content(&m[i]));
        switch (m[i].role) {
        case STORE_ROLE_SYSTEM:
            pending_add(ps, c);
            break;
        case STORE_ROLE_ASSISTANT:
            puts_(b, "<start_of_turn>model\n");
            put_span(b, c);
            puts_(b, "<end_of_turn>\n");
            break;
        default:
            puts_(b, "<start_of_turn>user\n");
            if (pending_any(ps)) {
                pending_take(b, ps);
                puts_(b, "\n\n");
            }
            put_span(b, c);
            puts_(b, "<end_of_turn>\n");
            break;
        }
    }
    if (pending_any(ps)) {
        /* A system message with no user turn after it still reaches the model. */
        puts_(b, "<start_of_turn>user\n");
        pending_take(b, ps);
        puts_(b, "<end_of_turn>\n");
    }
    if (gen)
        puts_(b, "<start_of_turn>model\n");
}

/* Meta's Llama 2 chat: the system prompt sits in a <<SYS>> block inside the
 * first [INST]; every message is stripped; a reply is " text </s>" and each
 * later user turn restarts with BOS. */
static void render_llama2(buf *b, const chat_msg *m, size_t n, const char *eos, pending *ps)
{
    for (size_t i = 0; i < n; i++) {
        span c = trim(content(&m[i]));
        switch (m[i].role) {
        case STORE_ROLE_SYSTEM:
            pending_add(ps, c);
            break;
        case STORE_ROLE_ASSISTANT:
            puts_(b, " ");
            put_span(b, c);
            puts_(b, " ");
            puts_(b, eos);
            break;
        default:
            if (b->len > 0)
                puts_(b, "<s>");
            puts_(b, "[INST] ");
            if (pending_any(ps)) {
                puts_(b, "<<SYS>>\n");
                pending_take(b, ps);
                puts_(b, "\n<</SYS>>\n\n");
            }
            put_span(b, c);
            puts_(b, " [/INST]");
            break;
        }
    }
    if (pending_any(ps)) {
        if (b->len > 0)
            puts_(b, "<s>");
        puts_(b, "[INST] <<SYS>>\n");
        pending_take(b, ps);
        puts_(b, "\n<</SYS>>\n\n [/INST]");
    }
}

/* The [INST] formats of Mistral before v7 differ only in spacing:
 *   open   the text before a user turn's content ("[INST] ", " [INST] ", "[INST]")
 *   close  the text after it (" [/INST]" or "[/INST]")
 *   reply  what precedes a reply (" " or "")
 *   sys    what joins a system prompt to the user text after it
 * v3 also trims replies. The system prompt goes in the first user turn. */
typedef struct inst_style {
    const char *open, *close, *reply, *sys;
    bool trim_reply;
} inst_style;

static void render_inst(buf *b, const chat_msg *m, size_t n, const char *eos,
                        const inst_style *st, pending *ps)
{
    for (size_t i = 0; i < n; i++) {
        span c = content(&m[i]);
        switch (m[i].role) {
        case STORE_ROLE_SYSTEM:
            pending_add(ps, c);
            break;
        case STORE_ROLE_ASSISTANT:
            puts_(b, st->reply);
            put_span(b, st->trim_reply ? trim(c) : c);
            puts_(b, eos);
            break;
        default:
            puts_(b, st->open);
            if (pending_any(ps)) {
                pending_take(b, ps);
                puts_(b, st->sys);
            }
            put_span(b, c);
            puts_(b, st->close);
            break;
        }
    }
    if (pending_any(ps)) {
        puts_(b, st->open);
        pending_take(b, ps);
        puts_(b, st->close);
    }
}

/* Mistral v7: the system prompt has its own tags, in place. */
static void render_v7(buf *b, const chat_msg *m, size_t n, const char *eos, bool tekken)
{
    const char *sp = tekken ? "" : " ";
    for (size_t i = 0; i < n; i++) {
        span c = content(&m[i]);
        switch (m[i].role) {
        case STORE_ROLE_SYSTEM:
            puts_(b, "[SYSTEM_PROMPT]");
            puts_(b, sp);
            put_span(b, c);
            puts_(b, "[/SYSTEM_PROMPT]");
            break;
        case STORE_ROLE_ASSISTANT:
            puts_(b, sp);
            put_span(b, c);
            puts_(b, eos);
            break;
        default:
            puts_(b, "[INST]");
            puts_(b, sp);
            put_span(b, c);
            puts_(b, "[/INST]");
            break;
        }
    }
}

/* Base models: a transcript of "Role: text" lines, trimmed, ending with
 * "Assistant:" as the cue. A transcript keeps the whole conversation in the
 * prompt (so sessions reuse their KV prefix) and gives the model a turn
 * structure it can pick up from the text alone; "\nUser:" stops it when it
 * starts writing the user's next line. */
static void render_plain(buf *b, const chat_msg *m, size_t n, bool gen)
{
    static const char *const roles[STORE_ROLE_COUNT] = {"System:", "User:", "Assistant:",
                                                        "Tool:"};
    for (size_t i = 0; i < n; i++) {
        span c = trim(content(&m[i]));
        puts_(b, roles[m[i].role]);
        if (c.n > 0) {
            puts_(b, " ");
            put_span(b, c);
        }
        puts_(b, "\n");
    }
    if (gen)
        puts_(b, "Assistant:");
}

/* The complement of b's content spans within [0, b->len): the template's
 * own text, as a malloc'd array (NULL when empty). false: out of memory. */
static bool scaffold_of(const buf *b, tok_range **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    tok_range *v = malloc((b->n_content + 1) * sizeof *v);
    if (!v)
        return false;
    size_t n = 0, at = 0;
    for (size_t i = 0; i <= b->n_content; i++) {
        size_t end = i < b->n_content ? b->content[i].off : b->len;
        if (end > at)
            v[n++] = (tok_range){at, end - at};
        if (i < b->n_content)
            at = b->content[i].off + b->content[i].len;
    }
    if (n == 0) {
        free(v);
        return true;
    }
    *out = v;
    *n_out = n;
    return true;
}

int chat_render(const chat_template *t, const chat_msg *msgs, size_t n,
                bool add_generation_prompt, char **text, size_t *len, char err[256])
{
    return chat_render_spans(t, msgs, n, add_generation_prompt, text, len, NULL, NULL, err);
}

int chat_render_spans(const chat_template *t, const chat_msg *msgs, size_t n,
                      bool add_generation_prompt, char **text, size_t *len,
                      tok_range **scaffold, size_t *n_scaffold, char err[256])
{
    static const inst_style mistral = {"[INST] ", " [/INST]", "", "\n", false};
    static const inst_style v1 = {" [INST] ", " [/INST]", " ", "\n\n", false};
    static const inst_style v3 = {"[INST] ", "[/INST]", " ", "\n\n", true};
    static const inst_style v3_tekken = {"[INST]", "[/INST]", "", "\n\n", false};

    *text = NULL;
    if (len)
        *len = 0;
    if (scaffold)
        *scaffold = NULL;
    if (n_scaffold)
        *n_scaffold = 0;
    if ((unsigned)t->family >= CHAT_FAMILY_COUNT) {
        snprintf(err, 256, "chat template: unknown family %d", (int)t->family);
        return CHAT_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)msgs[i].role >= STORE_ROLE_COUNT) {
            snprintf(err, 256, "messages[%zu].role: unknown role %d", i, (int)msgs[i].role);
            return CHAT_EINVAL;
        }
        if (!msgs[i].content && msgs[i].content_len > 0) {
            snprintf(err, 256, "messages[%zu].content: NULL with length %zu", i,
                     msgs[i].content_len);
            return CHAT_EINVAL;
        }
    }

    buf b = {0};
    pending ps = {{0}};
    const char *eos = t->eos[0] ? t->eos : "</s>";
    bool gen = add_generation_prompt;
    switch (t->family) {
    case CHAT_PLAIN: render_plain(&b, msgs, n, gen); break;
    case CHAT_CHATML: render_chatml(&b, msgs, n, gen); break;
    case CHAT_LLAMA3: render_llama3(&b, msgs, n, gen); break;
    case CHAT_PHI3: render_role_pipes(&b, msgs, n, gen, "<|end|>"); break;
    case CHAT_ZEPHYR: render_role_pipes(&b, msgs, n, gen, eos); break;
    case CHAT_GEMMA: render_gemma(&b, msgs, n, gen, &ps); break;
    case CHAT_LLAMA2: render_llama2(&b, msgs, n, eos, &ps); break;
    case CHAT_MISTRAL: render_inst(&b, msgs, n, eos, &mistral, &ps); break;
    case CHAT_MISTRAL_V1: render_inst(&b, msgs, n, eos, &v1, &ps); break;
    case CHAT_MISTRAL_V3: render_inst(&b, msgs, n, eos, &v3, &ps); break;
    case CHAT_MISTRAL_V3_TEKKEN: render_inst(&b, msgs, n, eos, &v3_tekken, &ps); break;
    case CHAT_MISTRAL_V7: render_v7(&b, msgs, n, eos, false); break;
    case CHAT_MISTRAL_V7_TEKKEN: render_v7(&b, msgs, n, eos, true); break;
    case CHAT_FAMILY_COUNT: break;
    }
    bool failed = b.failed || ps.text.failed;
    free(ps.text.p);
    free(ps.text.content);
    if (!failed && !b.p) {
        b.p = calloc(1, 1);
        failed = !b.p;
    }
    if (!failed && scaffold && !scaffold_of(&b, scaffold, n_scaffold))
        failed = true;
    free(b.content);
    if (failed) {
        free(b.p);
        snprintf(err, 256, "chat template %s: out of memory rendering %zu messages",
                 family_names[t->family], n);
        return CHAT_ENOMEM;
    }
    *text = b.p;
    if (len)
        *len = b.len;
    return CHAT_OK;
}
