/*
 * api.c - OpenAI request bodies to api_request, and responses, stream chunks
 * and errors to JSON, all through jansson.
 *
 * Parsing is strict about the fields it knows and blind to the others. A
 * body is scanned for nesting depth before jansson sees it (jansson recurses
 * once per level, up to 2048), then decoded with duplicate keys refused, so
 * a field cannot mean one thing to us and another to a relay. Every error
 * line starts with the path of the field ("messages[2].content[0].text") and
 * quotes at most a short, escaped piece of the value, so a client's bytes
 * cannot make the line long, multi-line or invalid UTF-8.
 *
 * A number too large for jansson (an integer beyond 64 bits) makes the body fail
 * to decode without saying which field held it; the body is then decoded a
 * second time with integers as reals, so the range check of that field can
 * name it (and an unknown field holding it is ignored like any other).
 *
 * Building: jansson validates UTF-8 and refuses a string that is not; text
 * from the model can end inside a character, so every string goes through
 * jstr(), which writes U+FFFD for the bytes of a broken sequence.
 */
#include "api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

/* How many bytes of a client's value an error line quotes. */
#define QUOTE_MAX 40

/* OpenAI's bound on max_latency_ms is ours: one day. */
#define MAX_LATENCY_MS_MAX 86400000
#define TOP_K_MAX 1000000

#define STR_(x) #x
#define STR(x) STR_(x)

void api_limits_default(api_limits *l)
{
    memset(l, 0, sizeof *l);
    l->max_messages = API_DEFAULT_MAX_MESSAGES;
    l->max_content_bytes = API_DEFAULT_MAX_CONTENT_BYTES;
    l->max_tokens = API_DEFAULT_MAX_TOKENS;
    l->max_stop = API_DEFAULT_MAX_STOP;
    l->max_stop_bytes = API_DEFAULT_MAX_STOP_BYTES;
    l->max_depth = API_DEFAULT_MAX_DEPTH;
    l->defaults.temperature = 1.0;
    l->defaults.top_p = 1.0;
    l->defaults.top_k = 0;
    l->defaults.min_p = 0.0;
    l->defaults.repeat_penalty = 1.0;
    l->defaults.presence_penalty = 0.0;
    l->defaults.frequency_penalty = 0.0;
}

int api_error_status(int rc)
{
    switch (rc) {
    case API_OK: return 200;
    case API_EJSON:
    case API_EINVAL:
    case API_EUNSUPPORTED: return 400;
    default: return 500;
    }
}

const char *api_error_code(int rc)
{
    switch (rc) {
    case API_OK: return NULL;
    case API_EJSON: return "invalid_json";
    case API_EINVAL: return "invalid_value";
    case API_EUNSUPPORTED: return "unsupported_value";
    default: return "internal_error";
    }
}

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Looks at the sequence starting at s[0] (n > 0 bytes available), by the
 * ranges of RFC 3629 (no overlongs, no surrogates, nothing past U+10FFFF).
 * Returns its length when it is complete and valid. Otherwise returns 0 and
 * sets *bad to the number of bytes that form the longest valid beginning of
 * a sequence (at least 1), and *incomplete when those run to the end of s:
 * more bytes could still complete it. */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad, bool *incomplete)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    *incomplete = false;
    *bad = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *bad = i;
            *incomplete = true;
            return 0;
        }
        unsigned char b = s[i];
        bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) {
            *bad = i;
            return 0;
        }
    }
    return need + 1;
}

size_t api_utf8_complete_len(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t bad;
        bool incomplete;
        size_t k = utf8_seq(p + i, n - i, &bad, &incomplete);
        if (k > 0) {
            i += k;
        } else if (incomplete) {
            return i;
        } else {
            i += bad;
        }
    }
    return n;
}

static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad;
        bool incomplete;
        size_t k = utf8_seq(p + i, n - i, &bad, &incomplete);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* A JSON string of s[0..n), with U+FFFD for each broken sequence (its
 * longest valid beginning, or one byte). NULL when out of memory. */
static json_t *jstr(const char *s, size_t n)
{
    if (!s)
        return n == 0 ? json_string("") : NULL;
    if (utf8_valid(s, n))
        return json_stringn(s, n);
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *fixed = malloc(n * 3 + 1);
    if (!fixed)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t bad;
        bool incomplete;
        size_t k = utf8_seq(p + i, n - i, &bad, &incomplete);
        if (k > 0) {
            memcpy(fixed + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(fixed + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    json_t *j = json_stringn(fixed, o);
    free(fixed);
    return j;
}

/* ---- error lines ------------------------------------------------------------- */

static int fail(char err[256], int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char err[256], int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
    return rc;
}

/* Writes s[0..n) quoted and escaped, at most QUOTE_MAX bytes of it, cut at a
 * character boundary, with "..." when cut. */
static void quote(const char *s, size_t n, char *out, size_t cap)
{
    size_t take = n > QUOTE_MAX ? api_utf8_complete_len(s, QUOTE_MAX) : n;
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < take && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c == '\t') {
            out[o++] = '\\';
            out[o++] = 't';
        } else if (c < 0x20 || c == 0x7F) {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    if (take < n && o + 4 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* The value as an error line shows it: a string "quoted", a number as is,
 * a container by its kind only. */
static void describe(const json_t *v, char *out, size_t cap)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: snprintf(out, cap, "an object"); break;
    case JSON_ARRAY: snprintf(out, cap, "an array"); break;
    case JSON_STRING: quote(json_string_value(v), json_string_length(v), out, cap); break;
    case JSON_INTEGER: snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL: snprintf(out, cap, "%g", json_real_value(v)); break;
    case JSON_TRUE: snprintf(out, cap, "true"); break;
    case JSON_FALSE: snprintf(out, cap, "false"); break;
    default: snprintf(out, cap, "null"); break;
    }
}

static int expected(char err[256], const char *path, const char *what, const json_t *got)
{
    char d[QUOTE_MAX * 4 + 16];
    describe(got, d, sizeof d);
    return fail(err, API_EINVAL, "%s: expected %s, got %s", path, what, d);
}

/* For enumerations: "expected one of a, b, c; got "x"". */
static int expected_one_of(char err[256], const char *path, const char *names, const json_t *got)
{
    char d[QUOTE_MAX * 4 + 16];
    describe(got, d, sizeof d);
    return fail(err, API_EINVAL, "%s: expected one of %s; got %s", path, names, d);
}

/* An error line is one line of valid UTF-8, whatever bytes jansson quoted
 * from the body ("near '...'") and wherever the 256-byte buffer cut it:
 * control characters become spaces, each broken sequence one '?', and a
 * character cut at the end is dropped. */
static void one_line(char err[256])
{
    unsigned char *p = (unsigned char *)err;
    size_t n = strlen(err), o = 0;
    for (size_t i = 0; i < n;) {
        size_t bad;
        bool incomplete;
        size_t k = utf8_seq(p + i, n - i, &bad, &incomplete);
        if (k > 0) {
            for (size_t j = 0; j < k; j++)
                p[o++] = k == 1 && p[i] < 0x20 ? ' ' : p[i + j];
            i += k;
        } else if (incomplete) {
            break;
        } else {
            p[o++] = '?';
            i += bad;
        }
    }
    p[o] = '\0';
}

/* ---- typed field access ----------------------------------------------------------- */

/* The member, or NULL when absent or null (OpenAI treats both as "not set"). */
static json_t *opt(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static int num_in(const json_t *v, const char *path, double lo, double hi, double *out,
                  char err[256])
{
    if (!json_is_number(v))
        return expected(err, path, "a number", v);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) {
        char dv[64];
        describe(v, dv, sizeof dv);
        return fail(err, API_EINVAL, "%s: must be between %g and %g; got %s", path, lo, hi, dv);
    }
    *out = d;
    return API_OK;
}

/* An integer, or a real with an integral value (some clients send 256.0). */
static int int_in(const json_t *v, const char *path, int64_t lo, int64_t hi, int64_t *out,
                  char err[256])
{
    char dv[64];
    int64_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d))
            return expected(err, path, "an integer", v);
        /* 2^63 is exact in a double; anything at or beyond it is out of range. */
        if (d >= 9223372036854775808.0 || d < -9223372036854775808.0) {
            describe(v, dv, sizeof dv);
            return fail(err, API_EINVAL, "%s: must be between %" PRId64 " and %" PRId64 "; got %s",
                        path, lo, hi, dv);
        }
        x = (int64_t)d;
    } else {
        return expected(err, path, "an integer", v);
    }
    if (x < lo || x > hi) {
        describe(v, dv, sizeof dv);
        return fail(err, API_EINVAL, "%s: must be between %" PRId64 " and %" PRId64 "; got %s",
                    path, lo, hi, dv);
    }
    *out = x;
    return API_OK;
}

static int bool_of(const json_t *v, const char *path, bool *out, char err[256])
{
    if (!json_is_boolean(v))
        return expected(err, path, "true or false", v);
    *out = json_is_true(v);
    return API_OK;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static bool has_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return true;
    }
    return false;
}

/* ---- nesting depth ------------------------------------------------------------------ */

static int check_depth(const char *s, size_t n, int max, char err[256])
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                return fail(err, API_EJSON, "body: JSON nested deeper than %d levels", max);
        } else if (c == ']' || c == '}') {
            if (depth > 0)
                depth--;
        }
    }
    return API_OK;
}

/* ---- fields ----------------------------------------------------------------------- */

static int parse_model(const json_t *root, api_request *r, char err[256])
{
    const json_t *v = opt(root, "model");
    if (!v) {
        snprintf(r->model, sizeof r->model, "default");
        return API_OK;
    }
    if (!json_is_string(v))
        return expected(err, "model", "a string", v);
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n > API_MODEL_MAX || has_control(s, n))
        return expected(err, "model", "a model name of 1 to " STR(API_MODEL_MAX) " bytes", v);
    memcpy(r->model, s, n + 1);
    return API_OK;
}

static int parse_role(const json_t *v, const char *path, store_role *out, char err[256])
{
    if (!v)
        return fail(err, API_EINVAL, "%s: required", path);
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        for (int i = 0; i < STORE_ROLE_COUNT; i++) {
            if (strcmp(s, store_role_name((store_role)i)) == 0) {
                *out = (store_role)i;
                return API_OK;
            }
        }
        /* OpenAI renamed the system role for its newer models. */
        if (strcmp(s, "developer") == 0) {
            *out = STORE_ROLE_SYSTEM;
            return API_OK;
        }
    }
    return expected_one_of(err, path, "system, user, assistant, tool", v);
}

/* Content given as an array of parts: the text parts joined by "\n". */
static int parse_parts(const json_t *arr, const char *path, const api_limits *lim,
                       api_message *m, char err[256])
{
    char p[96];
    size_t n = json_array_size(arr), total = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *part = json_array_get(arr, i);
        snprintf(p, sizeof p, "%s[%zu]", path, i);
        if (!json_is_object(part))
            return expected(err, p, "an object like {\"type\": \"text\", \"text\": \"...\"}", part);
        const json_t *type = json_object_get(part, "type");
        snprintf(p, sizeof p, "%s[%zu].type", path, i);
        if (!type)
            return fail(err, API_EINVAL, "%s: required", p);
        if (!json_is_string(type))
            return expected(err, p, "a string", type);
        if (strcmp(json_string_value(type), "text") != 0) {
            char d[QUOTE_MAX * 4 + 16];
            describe(type, d, sizeof d);
            return fail(err, API_EUNSUPPORTED, "%s: only \"text\" parts are supported; got %s", p,
                        d);
        }
        const json_t *text = json_object_get(part, "text");
        snprintf(p, sizeof p, "%s[%zu].text", path, i);
        if (!text)
            return fail(err, API_EINVAL, "%s: required", p);
        if (!json_is_string(text))
            return expected(err, p, "a string", text);
        total += json_string_length(text) + (i > 0);
        if (total > lim->max_content_bytes)
            return fail(err, API_EINVAL, "%s: more than %zu bytes of text", path,
                        lim->max_content_bytes);
    }
    char *c = malloc(total + 1);
    if (!c)
        return fail(err, API_ENOMEM, "%s: out of memory", path);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *text = json_object_get(json_array_get(arr, i), "text");
        if (i > 0)
            c[o++] = '\n';
        memcpy(c + o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    c[o] = '\0';
    m->content = c;
    m->content_len = o;
    return API_OK;
}

static int parse_message(const json_t *v, size_t i, const api_limits *lim, api_message *m,
                         char err[256])
{
    char path[64], p[96];
    snprintf(path, sizeof path, "messages[%zu]", i);
    if (!json_is_object(v))
        return expected(err, path, "an object", v);

    snprintf(p, sizeof p, "%s.role", path);
    int rc = parse_role(json_object_get(v, "role"), p, &m->role, err);
    if (rc)
        return rc;

    const json_t *calls = opt(v, "tool_calls");
    snprintf(p, sizeof p, "%s.tool_calls", path);
    if (calls && !(json_is_array(calls) && json_array_size(calls) == 0))
        return fail(err, API_EUNSUPPORTED, "%s: tool calls are not supported", p);

    const json_t *c = opt(v, "content");
    snprintf(p, sizeof p, "%s.content", path);
    if (!c) {
        /* An assistant turn that only called tools has no content. */
        if (m->role != STORE_ROLE_ASSISTANT)
            return fail(err, API_EINVAL, "%s: required", p);
        m->content = dup_n("", 0);
        m->content_len = 0;
    } else if (json_is_string(c)) {
        size_t n = json_string_length(c);
        if (n > lim->max_content_bytes)
            return fail(err, API_EINVAL, "%s: %zu bytes; at most %zu allowed", p, n,
                        lim->max_content_bytes);
        m->content = dup_n(json_string_value(c), n);
        m->content_len = n;
    } else if (json_is_array(c)) {
        return parse_parts(c, p, lim, m, err);
    } else {
        return expected(err, p, "a string or an array of text parts", c);
    }
    if (!m->content)
        return fail(err, API_ENOMEM, "%s: out of memory", p);
    return API_OK;
}

static int parse_messages(const json_t *root, const api_limits *lim, api_request *r,
                          char err[256])
{
    const json_t *v = opt(root, "messages");
    if (!v)
        return fail(err, API_EINVAL, "messages: required");
    if (!json_is_array(v))
        return expected(err, "messages", "an array", v);
    size_t n = json_array_size(v);
    if (n == 0)
        return fail(err, API_EINVAL, "messages: must contain at least one message");
    if (n > lim->max_messages)
        return fail(err, API_EINVAL, "messages: %zu messages; at most %zu allowed", n,
                    lim->max_messages);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages)
        return fail(err, API_ENOMEM, "messages: out of memory for %zu messages", n);
    for (size_t i = 0; i < n; i++) {
        /* Counted before parsing so that api_request_free() sees a partly
         * filled message too. */
        r->n_messages = i + 1;
        int rc = parse_message(json_array_get(v, i), i, lim, &r->messages[i], err);
        if (rc)
            return rc;
    }
    return API_OK;
}

static int parse_prompt(const json_t *root, const api_limits *lim, api_request *r,
                        char err[256])
{
    const json_t *v = opt(root, "prompt");
    const char *path = "prompt";
    if (!v)
        return fail(err, API_EINVAL, "prompt: required");
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        const json_t *first = json_array_get(v, 0);
        if (n == 0)
            return fail(err, API_EINVAL, "prompt: must not be an empty array");
        if (json_is_number(first) || json_is_array(first))
            return fail(err, API_EUNSUPPORTED, "prompt: token arrays are not supported; send text");
        if (n > 1)
            return fail(err, API_EUNSUPPORTED,
                        "prompt: %zu prompts in one request; only one is supported", n);
        v = first;
        path = "prompt[0]";
    }
    if (!json_is_string(v))
        return expected(err, path, "a string or an array of one string", v);
    size_t n = json_string_length(v);
    if (n > lim->max_content_bytes)
        return fail(err, API_EINVAL, "%s: %zu bytes; at most %zu allowed", path, n,
                    lim->max_content_bytes);
    r->prompt = dup_n(json_string_value(v), n);
    if (!r->prompt)
        return fail(err, API_ENOMEM, "%s: out of memory", path);
    r->prompt_len = n;
    return API_OK;
}

static int parse_max_tokens(const json_t *root, const api_limits *lim, api_request *r,
                            char err[256])
{
    int64_t a = 0, b = 0;
    const json_t *va = opt(root, "max_tokens"), *vb = opt(root, "max_completion_tokens");
    int rc;
    if (va && (rc = int_in(va, "max_tokens", 1, lim->max_tokens, &a, err)))
        return rc;
    if (vb && (rc = int_in(vb, "max_completion_tokens", 1, lim->max_tokens, &b, err)))
        return rc;
    if (va && vb && a != b)
        return fail(err, API_EINVAL,
                    "max_tokens: %" PRId64 " conflicts with max_completion_tokens: %" PRId64, a, b);
    r->max_tokens = (int32_t)(vb ? b : a);
    return API_OK;
}

static int parse_sampling(const json_t *root, api_request *r, char err[256])
{
    api_sampling *s = &r->sampling;
    const json_t *v;
    int rc;
    int64_t k;
    if ((v = opt(root, "temperature")) && (rc = num_in(v, "temperature", 0, 2, &s->temperature, err)))
        return rc;
    if ((v = opt(root, "top_p")) && (rc = num_in(v, "top_p", 0, 1, &s->top_p, err)))
        return rc;
    if ((v = opt(root, "top_k"))) {
        if ((rc = int_in(v, "top_k", 0, TOP_K_MAX, &k, err)))
            return rc;
        s->top_k = (int32_t)k;
    }
    if ((v = opt(root, "min_p")) && (rc = num_in(v, "min_p", 0, 1, &s->min_p, err)))
        return rc;
    if ((v = opt(root, "repeat_penalty"))) {
        if ((rc = num_in(v, "repeat_penalty", 0, 2, &s->repeat_penalty, err)))
            return rc;
        /* The penalty divides positive logits: 0 would divide by zero. */
        if (s->repeat_penalty <= 0)
            return fail(err, API_EINVAL, "repeat_penalty: must be greater than 0; got 0");
    }
    if ((v = opt(root, "presence_penalty")) &&
        (rc = num_in(v, "presence_penalty", -2, 2, &s->presence_penalty, err)))
        return rc;
    if ((v = opt(root, "frequency_penalty")) &&
        (rc = num_in(v, "frequency_penalty", -2, 2, &s->frequency_penalty, err)))
        return rc;
    if ((v = opt(root, "seed"))) {
        int64_t seed;
        if ((rc = int_in(v, "seed", INT64_MIN, INT64_MAX, &seed, err)))
            return rc;
        r->has_seed = true;
        r->seed = (uint64_t)seed;
    }
    return API_OK;
}

static int add_stop(api_request *r, const json_t *v, const char *path, const api_limits *lim,
                    char err[256])
{
    if (!json_is_string(v))
        return expected(err, path, "a string", v);
    size_t n = json_string_length(v);
    if (n == 0)
        return API_OK; /* a stop string that matches everywhere would mean nothing */
    if (n > lim->max_stop_bytes)
        return fail(err, API_EINVAL, "%s: %zu bytes; at most %zu allowed", path, n,
                    lim->max_stop_bytes);
    char *s = dup_n(json_string_value(v), n);
    if (!s)
        return fail(err, API_ENOMEM, "%s: out of memory", path);
    r->stop[r->n_stop++] = s;
    return API_OK;
}

static int parse_stop(const json_t *root, const api_limits *lim, api_request *r, char err[256])
{
    const json_t *v = opt(root, "stop");
    if (!v)
        return API_OK;
    size_t n;
    if (json_is_string(v)) {
        n = 1;
    } else if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > lim->max_stop)
            return fail(err, API_EINVAL, "stop: %zu strings; at most %zu allowed", n, lim->max_stop);
    } else {
        return expected(err, "stop", "a string or an array of strings", v);
    }
    if (n == 0)
        return API_OK;
    r->stop = calloc(n, sizeof *r->stop);
    if (!r->stop)
        return fail(err, API_ENOMEM, "stop: out of memory");
    if (json_is_string(v))
        return add_stop(r, v, "stop", lim, err);
    for (size_t i = 0; i < n; i++) {
        char p[32];
        snprintf(p, sizeof p, "stop[%zu]", i);
        int rc = add_stop(r, json_array_get(v, i), p, lim, err);
        if (rc)
            return rc;
    }
    return API_OK;
}

static int parse_stream(const json_t *root, api_request *r, char err[256])
{
    const json_t *v;
    int rc;
    if ((v = opt(root, "stream")) && (rc = bool_of(v, "stream", &r->stream, err)))
        return rc;
    if (!(v = opt(root, "stream_options")))
        return API_OK;
    /* As OpenAI: options of a stream that is not one are a client mistake. */
    if (!r->stream)
        return fail(err, API_EINVAL, "stream_options: only allowed when stream is true");
    if (!json_is_object(v))
        return expected(err, "stream_options", "an object", v);
    const json_t *u = opt(v, "include_usage");
    if (u && (rc = bool_of(u, "stream_options.include_usage", &r->include_usage, err)))
        return rc;
    return API_OK;
}

/* Known OpenAI fields whose meaning Outpost cannot deliver: refused when a
 * request actually asks for them (their "off" values pass). */
static int refuse_unsupported(const json_t *root, api_kind kind, char err[256])
{
    const json_t *v;
    int64_t x;
    int rc;
    if ((v = opt(root, "n"))) {
        if ((rc = int_in(v, "n", INT64_MIN, INT64_MAX, &x, err)))
            return rc;
        if (x < 1)
            return fail(err, API_EINVAL, "n: must be at least 1; got %" PRId64, x);
        if (x != 1)
            return fail(err, API_EUNSUPPORTED,
                        "n: only 1 choice per request is supported; got %" PRId64, x);
    }
    if ((v = opt(root, "best_of"))) {
        if ((rc = int_in(v, "best_of", 1, INT64_MAX, &x, err)))
            return rc;
        if (x != 1)
            return fail(err, API_EUNSUPPORTED, "best_of: only 1 is supported; got %" PRId64, x);
    }
    static const char *const tool_keys[] = {"tools", "functions"};
    for (size_t i = 0; i < 2; i++) {
        if (!(v = opt(root, tool_keys[i])))
            continue;
        if (!json_is_array(v))
            return expected(err, tool_keys[i], "an array", v);
        if (json_array_size(v) > 0)
            return fail(err, API_EUNSUPPORTED, "%s: function calling is not supported",
                        tool_keys[i]);
    }
    if ((v = opt(root, "logprobs"))) {
        bool on = false;
        if (kind == API_CHAT) {
            if ((rc = bool_of(v, "logprobs", &on, err)))
                return rc;
        } else {
            if ((rc = int_in(v, "logprobs", 0, INT64_MAX, &x, err)))
                return rc;
            on = x > 0;
        }
        if (on)
            return fail(err, API_EUNSUPPORTED, "logprobs: log probabilities are not supported");
    }
    if ((v = opt(root, "top_logprobs"))) {
        if ((rc = int_in(v, "top_logprobs", 0, INT64_MAX, &x, err)))
            return rc;
        if (x > 0)
            return fail(err, API_EUNSUPPORTED, "top_logprobs: log probabilities are not supported");
    }
    if ((v = opt(root, "logit_bias"))) {
        if (!json_is_object(v))
            return expected(err, "logit_bias", "an object", v);
        if (json_object_size(v) > 0)
            return fail(err, API_EUNSUPPORTED, "logit_bias: not supported");
    }
    if ((v = opt(root, "response_format"))) {
        if (!json_is_object(v))
            return expected(err, "response_format", "an object", v);
        const json_t *t = json_object_get(v, "type");
        if (!json_is_string(t))
            return expected(err, "response_format.type", "a string", t ? t : json_null());
        if (strcmp(json_string_value(t), "text") != 0) {
            char d[QUOTE_MAX * 4 + 16];
            describe(t, d, sizeof d);
            return fail(err, API_EUNSUPPORTED,
                        "response_format.type: only \"text\" is supported; got %s", d);
        }
    }
    if (kind == API_COMPLETION) {
        bool echo = false;
        if ((v = opt(root, "echo")) && (rc = bool_of(v, "echo", &echo, err)))
            return rc;
        if (echo)
            return fail(err, API_EUNSUPPORTED, "echo: echoing the prompt is not supported");
        if ((v = opt(root, "suffix"))) {
            if (!json_is_string(v))
                return expected(err, "suffix", "a string", v);
            if (json_string_length(v) > 0)
                return fail(err, API_EUNSUPPORTED, "suffix: insertion is not supported");
        }
    }
    return API_OK;
}

/* Session ids may end up in file names (saved KV state) and log lines:
 * no dots, slashes or spaces. */
static bool session_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static int parse_outpost(const json_t *root, api_outpost *o, char err[256])
{
    const json_t *obj = opt(root, "outpost");
    if (!obj)
        return API_OK;
    if (!json_is_object(obj))
        return expected(err, "outpost", "an object", obj);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        int rc;
        if (strcmp(key, "session") == 0) {
            if (json_is_null(v))
                continue;
            bool ok = json_is_string(v);
            size_t n = ok ? json_string_length(v) : 0;
            const char *s = ok ? json_string_value(v) : "";
            ok = ok && n >= 1 && n <= API_SESSION_MAX;
            for (size_t i = 0; ok && i < n; i++)
                ok = session_char(s[i]);
            if (!ok)
                return expected(err, "outpost.session",
                                "an id of 1 to " STR(API_SESSION_MAX)
                                " letters, digits, '-' or '_'", v);
            memcpy(o->session, s, n + 1);
        } else if (strcmp(key, "route") == 0) {
            if (json_is_null(v))
                continue;
            if (!json_is_string(v) || pol_target_parse(json_string_value(v), &o->route) != 0)
                return expected_one_of(err, "outpost.route", "auto, local, peer, cloud", v);
        } else if (strcmp(key, "privacy") == 0) {
            if (json_is_null(v))
                continue;
            if (!json_is_string(v) || pol_privacy_parse(json_string_value(v), &o->privacy) != 0)
                return expected_one_of(err, "outpost.privacy", "normal, private", v);
        } else if (strcmp(key, "max_latency_ms") == 0) {
            if (json_is_null(v))
                continue;
            if ((rc = int_in(v, "outpost.max_latency_ms", 1, MAX_LATENCY_MS_MAX,
                             &o->max_latency_ms, err)))
                return rc;
        } else {
            /* Our own namespace: a misspelt field is a mistake worth naming. */
            char k[QUOTE_MAX * 4 + 16];
            quote(key, strlen(key), k, sizeof k);
            return fail(err, API_EINVAL,
                        "outpost: unknown field %s (known: session, route, privacy, "
                        "max_latency_ms)", k);
        }
    }
    return API_OK;
}

static int parse_user(const json_t *root, api_request *r, char err[256])
{
    const json_t *v = opt(root, "user");
    if (!v)
        return API_OK;
    if (!json_is_string(v))
        return expected(err, "user", "a string", v);
    size_t n = json_string_length(v);
    if (n > API_USER_MAX)
        return fail(err, API_EINVAL, "user: %zu bytes; at most %d allowed", n, API_USER_MAX);
    memcpy(r->user, json_string_value(v), n + 1);
    return API_OK;
}

static int parse_fields(const json_t *root, const api_limits *lim, api_request *r,
                        char err[256])
{
    int rc;
    if ((rc = parse_model(root, r, err)))
        return rc;
    if (r->kind == API_CHAT)
        rc = parse_messages(root, lim, r, err);
    else
        rc = parse_prompt(root, lim, r, err);
    if (rc)
        return rc;
    if ((rc = parse_max_tokens(root, lim, r, err)) || (rc = parse_sampling(root, r, err)) ||
        (rc = parse_stop(root, lim, r, err)) || (rc = parse_stream(root, r, err)) ||
        (rc = parse_user(root, r, err)) || (rc = refuse_unsupported(root, r->kind, err)) ||
        (rc = parse_outpost(root, &r->outpost, err)))
        return rc;
    return API_OK;
}

/* Zero or negative limits take the defaults, so a config that leaves one
 * out cannot make every request fail. */
static void normalize_limits(const api_limits *in, api_limits *out)
{
    api_limits d;
    api_limits_default(&d);
    if (!in) {
        *out = d;
        return;
    }
    *out = *in;
    if (out->max_messages == 0)
        out->max_messages = d.max_messages;
    if (out->max_content_bytes == 0)
        out->max_content_bytes = d.max_content_bytes;
    if (out->max_tokens <= 0)
        out->max_tokens = d.max_tokens;
    if (out->max_stop == 0)
        out->max_stop = d.max_stop;
    if (out->max_stop_bytes == 0)
        out->max_stop_bytes = d.max_stop_bytes;
    if (out->max_depth <= 0)
        out->max_depth = d.max_depth;
}

static int parse_body(const char *body, size_t len, const api_limits *lim_in, api_kind kind,
                      api_request *r, char err[256])
{
    api_limits lim;
    normalize_limits(lim_in, &lim);
    memset(r, 0, sizeof *r);
    err[0] = '\0';
    r->kind = kind;
    r->sampling = lim.defaults;
    r->outpost.route = POL_TARGET_AUTO;
    r->outpost.privacy = POL_PRIVACY_NORMAL;
    r->outpost.max_latency_ms = -1;

    int rc;
    json_t *root = NULL;
    if (!body && len > 0) {
        rc = fail(err, API_EJSON, "body: missing");
        goto fail;
    }
    if ((rc = check_depth(body, len, lim.max_depth, err)))
        goto fail;
    json_error_t je;
    root = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!root && json_error_code(&je) == json_error_numeric_overflow)
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_out_of_memory)
            rc = fail(err, API_ENOMEM, "body: out of memory decoding %zu bytes", len);
        else
            rc = fail(err, API_EJSON, "body: invalid JSON at line %d, column %d: %s", je.line,
                      je.column, je.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        expected(err, "body", "a JSON object", root);
        rc = API_EJSON;
        goto fail;
    }
    if ((rc = parse_fields(root, &lim, r, err)))
        goto fail;
    json_decref(root);
    return API_OK;

fail:
    json_decref(root);
    api_request_free(r);
    memset(r, 0, sizeof *r);
    if (!err[0])
        snprintf(err, 256, "body: refused");
    one_line(err);
    return rc;
}

int api_parse_chat(const char *body, size_t len, const api_limits *lim, api_request *out,
                   char err[256])
{
    return parse_body(body, len, lim, API_CHAT, out, err);
}

int api_parse_completion(const char *body, size_t len, const api_limits *lim,
                         api_request *out, char err[256])
{
    return parse_body(body, len, lim, API_COMPLETION, out, err);
}

void api_request_free(api_request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_messages; i++)
        free(r->messages[i].content);
    free(r->messages);
    r->messages = NULL;
    r->n_messages = 0;
    free(r->prompt);
    r->prompt = NULL;
    r->prompt_len = 0;
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    r->stop = NULL;
    r->n_stop = 0;
}

/* ---- building ------------------------------------------------------------------- */

/* Collects json_object_set_new() failures: jansson frees the value and
 * returns -1 when the value (or the object) is NULL, so a chain of sets
 * needs one check at the end. */
typedef struct jb {
    bool ok;
} jb;

static void set(jb *b, json_t *obj, const char *key, json_t *val)
{
    if (json_object_set_new(obj, key, val) != 0)
        b->ok = false;
}

static void push(jb *b, json_t *arr, json_t *val)
{
    if (json_array_append_new(arr, val) != 0)
        b->ok = false;
}

/* Dumps root (taking it) into *json; reals with up to 15 significant digits
 * unless exact is set (requests for relaying keep every bit). */
static int finish(jb *b, json_t *root, bool exact, char **json, const char *what, char err[256])
{
    *json = NULL;
    if (b->ok && root) {
        size_t flags = JSON_COMPACT | (exact ? 0 : JSON_REAL_PRECISION(15));
        *json = json_dumps(root, flags);
    }
    json_decref(root);
    if (!*json)
        return fail(err, API_ENOMEM, "%s: out of memory building the JSON", what);
    return API_OK;
}

static json_t *finish_reason(api_finish f)
{
    switch (f) {
    case API_FINISH_STOP: return json_string("stop");
    case API_FINISH_LENGTH: return json_string("length");
    default: return json_null();
    }
}

static json_t *usage_json(const api_usage *u)
{
    jb b = {true};
    json_t *o = json_object();
    set(&b, o, "prompt_tokens", json_integer(u->prompt_tokens));
    set(&b, o, "completion_tokens", json_integer(u->completion_tokens));
    set(&b, o, "total_tokens", json_integer(u->prompt_tokens + u->completion_tokens));
    if (!b.ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *served_json(const api_served *s)
{
    jb b = {true};
    json_t *o = json_object();
    const char *route = pol_target_name(s->route);
    set(&b, o, "route", route ? json_string(route) : json_null());
    const char *reason = s->reason ? s->reason : "";
    set(&b, o, "reason", jstr(reason, strlen(reason)));
    if (isfinite(s->ttft_ms) && s->ttft_ms >= 0)
        set(&b, o, "ttft_ms", json_real(round(s->ttft_ms * 1000.0) / 1000.0));
    else
        set(&b, o, "ttft_ms", json_null());
    set(&b, o, "cached_tokens", json_integer(s->cached_tokens));
    set(&b, o, "truncated", json_boolean(s->truncated));
    if (s->session && s->session[0])
        set(&b, o, "session", jstr(s->session, strlen(s->session)));
    if (s->remote.target && s->remote.target[0]) {
        json_t *r = json_object();
        const char *const fields[][2] = {{"target", s->remote.target},
                                         {"route", s->remote.route},
                                         {"reason", s->remote.reason},
                                         {"error", s->remote.error}};
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            if (fields[i][1] && fields[i][1][0])
                set(&b, r, fields[i][0], jstr(fields[i][1], strlen(fields[i][1])));
        set(&b, o, "remote", r);
    }
    if (!b.ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int check_common(const char *what, const char *id, const char *model, const char *text,
                        size_t text_len, char err[256])
{
    if (!id || !model)
        return fail(err, API_EINVAL, "%s: %s is NULL", what, !id ? "id" : "model");
    if (!text && text_len > 0)
        return fail(err, API_EINVAL, "%s: text is NULL with length %zu", what, text_len);
    return API_OK;
}

static json_t *head(jb *b, const char *id, const char *object, int64_t created, const char *model)
{
    json_t *o = json_object();
    set(b, o, "id", jstr(id, strlen(id)));
    set(b, o, "object", json_string(object));
    set(b, o, "created", json_integer(created));
    set(b, o, "model", jstr(model, strlen(model)));
    return o;
}

static int response(const api_result *r, api_kind kind, char **json, char err[256])
{
    const char *what = kind == API_CHAT ? "chat response" : "completion response";
    *json = NULL;
    int rc = check_common(what, r->id, r->model, r->text, r->text_len, err);
    if (rc)
        return rc;
    jb b = {true};
    json_t *root = head(&b, r->id, kind == API_CHAT ? "chat.completion" : "text_completion",
                        r->created, r->model);
    json_t *choice = json_object();
    set(&b, choice, "index", json_integer(0));
    if (kind == API_CHAT) {
        json_t *msg = json_object();
        set(&b, msg, "role", json_string("assistant"));
        set(&b, msg, "content", jstr(r->text, r->text_len));
        set(&b, choice, "message", msg);
    } else {
        set(&b, choice, "text", jstr(r->text, r->text_len));
    }
    set(&b, choice, "logprobs", json_null());
    set(&b, choice, "finish_reason", finish_reason(r->finish));
    json_t *choices = json_array();
    push(&b, choices, choice);
    set(&b, root, "choices", choices);
    set(&b, root, "usage", usage_json(&r->usage));
    if (r->served)
        set(&b, root, "outpost", served_json(r->served));
    return finish(&b, root, false, json, what, err);
}

int api_chat_response(const api_result *r, char **json, char err[256])
{
    return response(r, API_CHAT, json, err);
}

int api_completion_response(const api_result *r, char **json, char err[256])
{
    return response(r, API_COMPLETION, json, err);
}

static int chunk(const api_chunk *c, api_kind kind, char **json, char err[256])
{
    const char *what = kind == API_CHAT ? "chat chunk" : "completion chunk";
    *json = NULL;
    int rc = check_common(what, c->id, c->model, c->text, c->text_len, err);
    if (rc)
        return rc;
    jb b = {true};
    json_t *root = head(&b, c->id, kind == API_CHAT ? "chat.completion.chunk" : "text_completion",
                        c->created, c->model);
    json_t *choices = json_array();
    if (!c->usage) {
        json_t *choice = json_object();
        set(&b, choice, "index", json_integer(0));
        if (kind == API_CHAT) {
            json_t *delta = json_object();
            if (c->role)
                set(&b, delta, "role", json_string("assistant"));
            if (c->text)
                set(&b, delta, "content", jstr(c->text, c->text_len));
            set(&b, choice, "delta", delta);
        } else {
            set(&b, choice, "text", jstr(c->text, c->text_len));
        }
        set(&b, choice, "logprobs", json_null());
        set(&b, choice, "finish_reason", finish_reason(c->finish));
        push(&b, choices, choice);
    }
    set(&b, root, "choices", choices);
    if (c->usage)
        set(&b, root, "usage", usage_json(c->usage));
    else if (c->include_usage)
        set(&b, root, "usage", json_null());
    if (c->served)
        set(&b, root, "outpost", served_json(c->served));
    return finish(&b, root, false, json, what, err);
}

int api_chat_chunk(const api_chunk *c, char **json, char err[256])
{
    return chunk(c, API_CHAT, json, err);
}

int api_completion_chunk(const api_chunk *c, char **json, char err[256])
{
    return chunk(c, API_COMPLETION, json, err);
}

int api_new_id(api_kind kind, char id[API_ID_SIZE], char err[256])
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[24];
    size_t got = 0;
    while (got < sizeof rnd) {
        ssize_t k = getrandom(rnd + got, sizeof rnd - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        /* Reported as an internal error (500), the only kind it can be. */
        if (k < 0)
            return fail(err, API_ENOMEM, "response id: getrandom failed: %s", strerror(errno));
        got += (size_t)k;
    }
    int o = snprintf(id, API_ID_SIZE, "%s", kind == API_CHAT ? "chatcmpl-" : "cmpl-");
    for (size_t i = 0; i < sizeof rnd; i++)
        id[o++] = alnum[rnd[i] % (sizeof alnum - 1)];
    id[o] = '\0';
    return API_OK;
}

int api_models_list(const api_model_info *models, size_t n, char **json, char err[256])
{
    jb b = {true};
    json_t *root = json_object();
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!models[i].id) {
            json_decref(root);
            json_decref(data);
            *json = NULL;
            return fail(err, API_EINVAL, "models list: models[%zu].id is NULL", i);
        }
        const char *owner = models[i].owned_by ? models[i].owned_by : "outpost";
        json_t *m = json_object();
        set(&b, m, "id", jstr(models[i].id, strlen(models[i].id)));
        set(&b, m, "object", json_string("model"));
        set(&b, m, "created", json_integer(models[i].created));
        set(&b, m, "owned_by", jstr(owner, strlen(owner)));
        push(&b, data, m);
    }
    set(&b, root, "object", json_string("list"));
    set(&b, root, "data", data);
    return finish(&b, root, false, json, "models list", err);
}

static const char *type_for_status(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *api_error_json(int status, const char *type, const char *code, const char *message)
{
    jb b = {true};
    const char *msg = message ? message : "";
    const char *t = type ? type : type_for_status(status);
    json_t *e = json_object();
    set(&b, e, "message", jstr(msg, strlen(msg)));
    set(&b, e, "type", jstr(t, strlen(t)));
    set(&b, e, "param", json_null());
    set(&b, e, "code", code ? jstr(code, strlen(code)) : json_null());
    json_t *root = json_object();
    set(&b, root, "error", e);
    char err[256];
    char *json;
    if (finish(&b, root, false, &json, "error", err) != API_OK)
        return NULL;
    return json;
}

/* ---- relaying ------------------------------------------------------------------- */

int api_request_json(const api_request *r, const char *model, unsigned flags,
                     const api_outpost *outpost, char **json, char err[256])
{
    *json = NULL;
    if (r->kind != API_CHAT && r->kind != API_COMPLETION)
        return fail(err, API_EINVAL, "request: unknown kind %d", (int)r->kind);
    for (size_t i = 0; i < r->n_messages; i++) {
        if (!store_role_name(r->messages[i].role))
            return fail(err, API_EINVAL, "request: messages[%zu]: unknown role %d", i,
                        (int)r->messages[i].role);
    }
    jb b = {true};
    const char *m = model ? model : r->model;
    json_t *root = json_object();
    set(&b, root, "model", jstr(m, strlen(m)));
    if (r->kind == API_CHAT) {
        json_t *msgs = json_array();
        for (size_t i = 0; i < r->n_messages; i++) {
            const char *role = store_role_name(r->messages[i].role);
            json_t *o = json_object();
            set(&b, o, "role", role ? json_string(role) : NULL);
            set(&b, o, "content", jstr(r->messages[i].content, r->messages[i].content_len));
            push(&b, msgs, o);
        }
        set(&b, root, "messages", msgs);
    } else {
        set(&b, root, "prompt", jstr(r->prompt, r->prompt_len));
    }
    /* max_tokens rather than max_completion_tokens: every OpenAI-compatible
     * server knows the older name. */
    if (r->max_tokens > 0)
        set(&b, root, "max_tokens", json_integer(r->max_tokens));
    const api_sampling *s = &r->sampling;
    set(&b, root, "temperature", json_real(s->temperature));
    set(&b, root, "top_p", json_real(s->top_p));
    set(&b, root, "presence_penalty", json_real(s->presence_penalty));
    set(&b, root, "frequency_penalty", json_real(s->frequency_penalty));
    if (flags & API_JSON_EXTENSIONS) {
        set(&b, root, "top_k", json_integer(s->top_k));
        set(&b, root, "min_p", json_real(s->min_p));
        set(&b, root, "repeat_penalty", json_real(s->repeat_penalty));
    }
    if (r->has_seed)
        set(&b, root, "seed", json_integer((json_int_t)r->seed));
    if (r->n_stop > 0) {
        json_t *stop = json_array();
        for (size_t i = 0; i < r->n_stop; i++)
            push(&b, stop, jstr(r->stop[i], strlen(r->stop[i])));
        set(&b, root, "stop", stop);
    }
    set(&b, root, "stream", json_boolean(r->stream));
    if (r->stream && r->include_usage) {
        json_t *so = json_object();
        set(&b, so, "include_usage", json_true());
        set(&b, root, "stream_options", so);
    }
    if (r->user[0])
        set(&b, root, "user", jstr(r->user, strlen(r->user)));
    if (flags & API_JSON_OUTPOST) {
        const api_outpost *o = outpost ? outpost : &r->outpost;
        json_t *oj = json_object();
        if (o->session[0])
            set(&b, oj, "session", jstr(o->session, strlen(o->session)));
        const char *route = pol_target_name(o->route);
        const char *privacy = pol_privacy_name(o->privacy);
        set(&b, oj, "route", route ? json_string(route) : NULL);
        set(&b, oj, "privacy", privacy ? json_string(privacy) : NULL);
        if (o->max_latency_ms >= 0)
            set(&b, oj, "max_latency_ms", json_integer(o->max_latency_ms));
        set(&b, root, "outpost", oj);
    }
    return finish(&b, root, true, json, "request", err);
}
