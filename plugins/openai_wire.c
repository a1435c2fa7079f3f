/*
 * openai_wire.c - OpenAI-compatible request bodies out, streamed and whole
 * replies in (see openai_wire.h).
 *
 * The event-stream reader follows the WHATWG HTML standard's "Server-sent
 * events" parsing rules: a line ends at CRLF, LF or CR; a leading BOM is
 * dropped; "field:value" with one space after the colon dropped; a line
 * without a colon is a field with an empty value; data lines accumulate
 * (joined by LF) until a blank line dispatches them. Its one invariant: the
 * bytes it holds (the unfinished line plus the event's data) never exceed
 * max_event_bytes, so a peer that never sends a newline cannot make it grow
 * without end. JSON is jansson's; every text handed on is what jansson
 * decoded, so it is valid UTF-8 (NUL bytes, which a C string cannot carry
 * onwards, are dropped).
 */
#include "openai_wire.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void oaw_reader_init(oaw_reader *r, oaw_text_fn on_text, void *ud, size_t max_event_bytes)
{
    memset(r, 0, sizeof *r);
    r->on_text = on_text;
    r->ud = ud;
    r->max_event_bytes = max_event_bytes ? max_event_bytes : OAW_MAX_EVENT_BYTES;
    r->reply.prompt_tokens = r->reply.completion_tokens = -1;
}

void oaw_reader_free(oaw_reader *r)
{
    free(r->line);
    free(r->data);
    r->line = r->data = NULL;
    r->line_len = r->line_cap = r->data_len = r->data_cap = 0;
}

static int fail(oaw_reader *r, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(oaw_reader *r, int rc, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, sizeof r->err, fmt, ap);
        va_end(ap);
    }
    r->failed = true;
    r->fail_rc = rc;
    return rc;
}

/* Append to a growing buffer, within the reader's byte budget. */
static int grow_add(oaw_reader *r, char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (r->line_len + r->data_len + n > r->max_event_bytes)
        return fail(r, OAW_EMALFORMED, "reply: an event longer than %zu bytes",
                    r->max_event_bytes);
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return fail(r, OAW_ENOMEM, "reply: out of memory");
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
    return OAW_OK;
}

/* ---- one chunk ------------------------------------------------------------- */

static int relay(oaw_reader *r, const char *s, size_t n)
{
    /* Pieces between NUL bytes. */
    while (n > 0) {
        const char *z = memchr(s, '\0', n);
        size_t k = z ? (size_t)(z - s) : n;
        if (k > 0) {
            r->reply.text_bytes += k;
            if (r->on_text && r->on_text(r->ud, s, k))
                return fail(r, OAW_ESTOP, "reply: the receiver stopped it");
        }
        if (!z)
            break;
        s += k + 1;
        n -= k + 1;
    }
    return OAW_OK;
}

static void copy_str(char *dst, size_t size, json_t *v)
{
    const char *s = json_string_value(v);
    if (!s)
        return;
    size_t n = strlen(s);
    if (n >= size)
        n = size - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* An error object's message: {"error":{"message":..}}, {"error":".."},
 * {"message":..} (some servers' plain shape). */
static const char *error_text(json_t *o)
{
    json_t *e = json_object_get(o, "error");
    if (json_is_string(e))
        return json_string_value(e);
    if (json_is_object(e)) {
        const char *m = json_string_value(json_object_get(e, "message"));
        return m ? m : "(an error without a message)";
    }
    return json_string_value(json_object_get(o, "message"));
}

bool oaw_error_message(const char *body, size_t len, char *msg, size_t msg_size)
{
    if (!body || !len || !msg_size)
        return false;
    json_t *o = json_loadb(body, len, 0, NULL);
    const char *m = json_is_object(o) ? error_text(o) : NULL;
    if (m)
        snprintf(msg, msg_size, "%s", m);
    json_decref(o);
    return m != NULL;
}

static int read_usage(oaw_reader *r, json_t *u)
{
    if (!u || json_is_null(u))
        return OAW_OK;
    if (!json_is_object(u))
        return fail(r, OAW_EMALFORMED, "reply event %zu: usage: expected an object",
                    r->reply.n_events);
    static const char *const keys[2] = {"prompt_tokens", "completion_tokens"};
    int64_t *dst[2] = {&r->reply.prompt_tokens, &r->reply.completion_tokens};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(u, keys[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return fail(r, OAW_EMALFORMED, "reply event %zu: usage.%s: expected a count",
                        r->reply.n_events, keys[i]);
        *dst[i] = (int64_t)json_integer_value(v);
    }
    return OAW_OK;
}

int oaw_chunk(oaw_reader *r, const char *json, size_t len, bool whole)
{
    if (r->failed)
        return r->fail_rc;
    r->reply.n_events++;
    json_error_t je;
    json_t *o = json_loadb(json, len, JSON_ALLOW_NUL, &je);
    int rc = OAW_OK;
    if (!o)
        return fail(r, OAW_EMALFORMED, "reply event %zu: not JSON: %s", r->reply.n_events,
                    je.text);
    if (!json_is_object(o)) {
        rc = fail(r, OAW_EMALFORMED, "reply event %zu: expected a JSON object",
                  r->reply.n_events);
        goto done;
    }
    json_t *e = json_object_get(o, "error");
    if (e && !json_is_null(e)) {
        rc = fail(r, OAW_EREMOTE, "remote error: %.200s", error_text(o));
        goto done;
    }
    json_t *op = json_object_get(o, "outpost");
    if (json_is_object(op)) {
        copy_str(r->reply.remote_route, sizeof r->reply.remote_route,
                 json_object_get(op, "route"));
        copy_str(r->reply.remote_reason, sizeof r->reply.remote_reason,
                 json_object_get(op, "reason"));
    }
    if ((rc = read_usage(r, json_object_get(o, "usage"))))
        goto done;
    json_t *choices = json_object_get(o, "choices");
    if (!choices || json_is_null(choices))
        goto done;
    if (!json_is_array(choices)) {
        rc = fail(r, OAW_EMALFORMED, "reply event %zu: choices: expected an array",
                  r->reply.n_events);
        goto done;
    }
    if (json_array_size(choices) == 0)
        goto done;
    json_t *c = json_array_get(choices, 0);
    if (!json_is_object(c)) {
        rc = fail(r, OAW_EMALFORMED, "reply event %zu: choices[0]: expected an object",
                  r->reply.n_events);
        goto done;
    }
    json_t *holder = json_object_get(c, whole ? "message" : "delta");
    json_t *text = json_is_object(holder) ? json_object_get(holder, "content") : NULL;
    if (!text || json_is_null(text))
        text = json_object_get(c, "text");
    if (text && !json_is_null(text)) {
        if (!json_is_string(text)) {
            rc = fail(r, OAW_EMALFORMED, "reply event %zu: choices[0]: the text is not a string",
                      r->reply.n_events);
            goto done;
        }
        if ((rc = relay(r, json_string_value(text), json_string_length(text))))
            goto done;
    }
    json_t *fr = json_object_get(c, "finish_reason");
    if (json_is_string(fr))
        copy_str(r->reply.finish_reason, sizeof r->reply.finish_reason, fr);
done:
    json_decref(o);
    return rc;
}

/* ---- the event stream ---------------------------------------------------- */

static int dispatch(oaw_reader *r)
{
    if (!r->has_data)
        return OAW_OK;
    r->has_data = false;
    size_t n = r->data_len;
    r->data_len = 0;
    if (n == 0)
        return OAW_OK; /* "data:" alone: an empty event, nothing to read */
    if (n == 6 && memcmp(r->data, "[DONE]", 6) == 0) {
        r->reply.done = true;
        return OAW_OK;
    }
    if (r->reply.done)
        return fail(r, OAW_EMALFORMED, "reply: an event after [DONE]");
    return oaw_chunk(r, r->data, n, false);
}

static int take_line(oaw_reader *r)
{
    const char *s = r->line ? r->line : "";
    size_t n = r->line_len;
    int rc = OAW_OK;
    /* A byte-order mark before the first line is not part of it. */
    if (!r->started) {
        r->started = true;
        if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3, n -= 3;
    }
    if (n == 0) {
        rc = dispatch(r);
    } else if (s[0] != ':') {
        const char *colon = memchr(s, ':', n);
        size_t name_len = colon ? (size_t)(colon - s) : n;
        if (name_len == 4 && memcmp(s, "data", 4) == 0) {
            const char *v = colon ? colon + 1 : s + n;
            size_t vn = (size_t)(s + n - v);
            if (vn && *v == ' ')
                v++, vn--;
            /* The line's own bytes move into data: the budget counts them once. */
            r->line_len = 0;
            if (r->has_data)
                rc = grow_add(r, &r->data, &r->data_len, &r->data_cap, "\n", 1);
            if (!rc)
                rc = grow_add(r, &r->data, &r->data_len, &r->data_cap, v, vn);
            r->has_data = true;
        }
        /* event, id, retry and unknown fields do not change what we read */
    }
    r->line_len = 0;
    return rc;
}

int oaw_sse_feed(oaw_reader *r, const char *buf, size_t n)
{
    if (r->failed)
        return r->fail_rc;
    size_t i = 0;
    while (i < n) {
        if (r->after_cr && buf[i] == '\n') {
            r->after_cr = false;
            i++;
            continue;
        }
        r->after_cr = false;
        size_t k = i;
        while (k < n && buf[k] != '\n' && buf[k] != '\r')
            k++;
        if (k > i) {
            int rc = grow_add(r, &r->line, &r->line_len, &r->line_cap, buf + i, k - i);
            if (rc)
                return rc;
        }
        if (k == n)
            break;
        r->after_cr = buf[k] == '\r';
        int rc = take_line(r);
        if (rc)
            return rc;
        i = k + 1;
    }
    return OAW_OK;
}

int oaw_sse_finish(oaw_reader *r)
{
    if (r->failed)
        return r->fail_rc;
    int rc = r->line_len ? take_line(r) : OAW_OK;
    return rc ? rc : dispatch(r);
}

/* ---- a whole reply ---------------------------------------------------------- */

int oaw_body_feed(oaw_reader *r, const char *buf, size_t n)
{
    if (r->failed)
        return r->fail_rc;
    return n ? grow_add(r, &r->line, &r->line_len, &r->line_cap, buf, n) : OAW_OK;
}

int oaw_body_finish(oaw_reader *r)
{
    if (r->failed)
        return r->fail_rc;
    int rc = oaw_chunk(r, r->line ? r->line : "", r->line_len, true);
    if (!rc)
        r->reply.done = true;
    return rc;
}

/* ---- the request ------------------------------------------------------------- */

static int set_new(json_t *o, const char *key, json_t *v)
{
    return v ? json_object_set_new(o, key, v) : -1;
}

int oaw_request_json(const outpost_chat_request *rq, const oaw_request_opts *o, char **json,
                     char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    *json = NULL;
    bool chat = rq->prompt == NULL;
    if (chat && (!rq->messages || rq->n_messages == 0)) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "request: neither messages nor a prompt");
        return OAW_EMALFORMED;
    }
    json_t *b = json_object();
    if (!b)
        goto nomem;
    const char *model = o && o->model ? o->model : rq->model;
    if (model && set_new(b, "model", json_string(model))) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "request: model name is not valid UTF-8");
        json_decref(b);
        return OAW_EMALFORMED;
    }
    if (chat) {
        json_t *msgs = json_array();
        if (!msgs || json_object_set_new(b, "messages", msgs))
            goto nomem;
        for (size_t i = 0; i < rq->n_messages; i++) {
            const outpost_message *m = &rq->messages[i];
            json_t *content = m->content ? json_stringn(m->content, m->len) : NULL;
            json_t *role = m->role ? json_string(m->role) : NULL;
            if (!content || !role) {
                json_decref(content);
                json_decref(role);
                json_decref(b);
                snprintf(err, OUTPOST_PLUGIN_ERR_SIZE,
                         "request: messages[%zu]: the %s is missing or not valid UTF-8", i,
                         role ? "content" : "role");
                return OAW_EMALFORMED;
            }
            json_t *jm = json_object();
            if (!jm || json_array_append_new(msgs, jm) || json_object_set_new(jm, "role", role) ||
                json_object_set_new(jm, "content", content))
                goto nomem;
        }
    } else {
        json_t *p = json_stringn(rq->prompt, rq->prompt_len);
        if (!p) {
            json_decref(b);
            snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "request: the prompt is not valid UTF-8");
            return OAW_EMALFORMED;
        }
        if (json_object_set_new(b, "prompt", p))
            goto nomem;
    }
    if (o && o->stream) {
        if (set_new(b, "stream", json_true()) ||
            set_new(b, "stream_options", json_pack("{s:b}", "include_usage", 1)))
            goto nomem;
    }
    if (rq->temperature >= 0 && set_new(b, "temperature", json_real(rq->temperature)))
        goto nomem;
    if (rq->top_p >= 0 && set_new(b, "top_p", json_real(rq->top_p)))
        goto nomem;
    if (rq->max_tokens > 0 && set_new(b, "max_tokens", json_integer(rq->max_tokens)))
        goto nomem;
    if (rq->n_stop > 0) {
        json_t *st = json_array();
        if (!st || json_object_set_new(b, "stop", st))
            goto nomem;
        for (size_t i = 0; i < rq->n_stop; i++) {
            json_t *s = rq->stop[i] ? json_string(rq->stop[i]) : NULL;
            if (!s) {
                json_decref(b);
                snprintf(err, OUTPOST_PLUGIN_ERR_SIZE,
                         "request: stop[%zu] is missing or not valid UTF-8", i);
                return OAW_EMALFORMED;
            }
            if (json_array_append_new(st, s))
                goto nomem;
        }
    }
    if (rq->has_seed && set_new(b, "seed", json_integer(rq->seed)))
        goto nomem;
    if (o && o->outpost_route_local &&
        set_new(b, "outpost", json_pack("{s:s}", "route", "local")))
        goto nomem;
    *json = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    if (!*json) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "request: out of memory");
        return OAW_ENOMEM;
    }
    return OAW_OK;
nomem:
    json_decref(b);
    snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "request: out of memory");
    return OAW_ENOMEM;
}
