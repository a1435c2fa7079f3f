/*
 * fuzz_sse.c - libFuzzer target for the reply reader of the backend-openai
 * plugin (plugins/openai_wire.c): Server-Sent Events as a remote sends
 * them, and a whole JSON reply.
 *
 * The first input byte picks a small event budget (so the size limit is
 * reached often) and how the rest is cut into network reads; the rest is
 * the stream. Promises checked on every input: every piece handed on is
 * non-empty valid UTF-8 without NUL bytes; the bytes counted match the
 * bytes handed on; the reader never holds more than its budget; a failure
 * comes with a known code and one line of error text, and sticks (the next
 * feed fails the same way without handing anything on); the same stream
 * read in one piece gives the same text and outcome. A broken promise
 * aborts, which libFuzzer reports as a crash.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "openai_wire.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_sse: broken promise: %s (%s:%d)\n", #cond,         \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

typedef struct sink {
    char *text;
    size_t len, cap;
    bool frozen; /* after a failure nothing more may arrive */
} sink;

static int on_text(void *ud, const char *t, size_t n)
{
    sink *s = ud;
    FUZZ_CHECK(!s->frozen);
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(memchr(t, '\0', n) == NULL);
    json_t *j = json_stringn(t, n); /* jansson checks UTF-8 */
    FUZZ_CHECK(j != NULL);
    json_decref(j);
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n)
            cap *= 2;
        char *p = realloc(s->text, cap);
        FUZZ_CHECK(p != NULL);
        s->text = p;
        s->cap = cap;
    }
    memcpy(s->text + s->len, t, n);
    s->len += n;
    /* Now and then the receiver stops the stream. */
    return s->len > 0 && s->text[0] == 'Z';
}

static bool known_rc(int rc)
{
    return rc == OAW_OK || rc == OAW_ESTOP || rc == OAW_EMALFORMED || rc == OAW_EREMOTE ||
           rc == OAW_ENOMEM;
}

static int read_stream(const uint8_t *p, size_t n, size_t budget, unsigned step, sink *s,
                       oaw_reply *reply)
{
    oaw_reader r;
    oaw_reader_init(&r, on_text, s, budget);
    int rc = OAW_OK;
    size_t off = 0;
    while (off < n && rc == OAW_OK) {
        size_t k = step ? step : n;
        if (k > n - off)
            k = n - off;
        rc = oaw_sse_feed(&r, (const char *)p + off, k);
        FUZZ_CHECK(r.line_len + r.data_len <= r.max_event_bytes);
        off += k;
    }
    if (rc == OAW_OK)
        rc = oaw_sse_finish(&r);
    FUZZ_CHECK(known_rc(rc));
    FUZZ_CHECK(r.reply.text_bytes == s->len);
    if (rc != OAW_OK) {
        FUZZ_CHECK(r.err[0] != '\0');
        FUZZ_CHECK(memchr(r.err, '\0', sizeof r.err) != NULL);
        s->frozen = true;
        FUZZ_CHECK(oaw_sse_feed(&r, "data: {\"choices\":[{\"text\":\"x\"}]}\n\n", 36) == rc);
        FUZZ_CHECK(oaw_sse_finish(&r) == rc);
    }
    *reply = r.reply;
    oaw_reader_free(&r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t budget = 16u << (data[0] & 7);     /* 16 B .. 2 KiB */
    unsigned step = (unsigned)(data[0] >> 3); /* 0: one read; else reads of 1..31 bytes */
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    sink a = {0}, b = {0};
    oaw_reply ra, rb;
    int rc_a = read_stream(p, n, budget, step, &a, &ra);
    int rc_b = read_stream(p, n, budget, 0, &b, &rb);
    /* The cut points change nothing, except where the budget applies to
     * what one read leaves unfinished - which is the same either way. */
    FUZZ_CHECK(rc_a == rc_b);
    FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.text, b.text, a.len) == 0));
    FUZZ_CHECK(ra.done == rb.done && strcmp(ra.finish_reason, rb.finish_reason) == 0);
    FUZZ_CHECK(ra.prompt_tokens == rb.prompt_tokens);
    free(a.text);
    free(b.text);

    /* The same bytes as a whole (non-streamed) reply, and as an error body. */
    sink c = {0};
    oaw_reader r;
    oaw_reader_init(&r, on_text, &c, budget * 64);
    int rc = oaw_body_feed(&r, (const char *)p, n);
    if (rc == OAW_OK)
        rc = oaw_body_finish(&r);
    FUZZ_CHECK(known_rc(rc));
    FUZZ_CHECK(r.reply.text_bytes == c.len);
    oaw_reader_free(&r);
    free(c.text);
    char msg[64];
    if (oaw_error_message((const char *)p, n, msg, sizeof msg))
        FUZZ_CHECK(memchr(msg, '\0', sizeof msg) != NULL);
    return 0;
}
