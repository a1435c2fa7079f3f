/*
 * fuzz_api.c - libFuzzer target for the OpenAI request parser (agent/api.c).
 *
 * Each input is parsed as a chat body and as a completion body, once with
 * the default limits and once with tight ones. A refusal must come with a
 * known result code, a zeroed request and one error line of valid UTF-8
 * that api_error_json() turns into JSON jansson reads back. An accepted
 * request must keep every promise of api.h (limits, ranges, NUL-free
 * content of the stated length, enum values in range), must survive a round
 * trip through api_request_json() and the parser unchanged, and its text
 * must go through the response builders into JSON that parses. A broken
 * promise aborts with a message, which libFuzzer reports as a crash.
 *
 * The input buffer belongs to libFuzzer and is not NUL-terminated; the
 * parser gets its length.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_api: broken promise: %s (%s:%d)\n", #cond,         \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static bool valid_utf8(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static void check_text(const char *s, size_t n, size_t max)
{
    FUZZ_CHECK(s != NULL);
    FUZZ_CHECK(n <= max);
    FUZZ_CHECK(strlen(s) == n);
    FUZZ_CHECK(valid_utf8(s, n));
}

static void check_refusal(int rc, const api_request *r, const char *err)
{
    FUZZ_CHECK(rc == API_EJSON || rc == API_EINVAL || rc == API_EUNSUPPORTED ||
               rc == API_ENOMEM);
    size_t n = strlen(err);
    FUZZ_CHECK(n > 0 && n < 256);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err[i] >= 0x20);
    FUZZ_CHECK(valid_utf8(err, n));
    FUZZ_CHECK(r->messages == NULL && r->n_messages == 0);
    FUZZ_CHECK(r->prompt == NULL && r->stop == NULL && r->n_stop == 0);

    char *json = api_error_json(api_error_status(rc), NULL, api_error_code(rc), err);
    FUZZ_CHECK(json != NULL);
    json_t *j = json_loads(json, 0, NULL);
    FUZZ_CHECK(j != NULL);
    json_t *msg = json_object_get(json_object_get(j, "error"), "message");
    FUZZ_CHECK(json_is_string(msg) && strcmp(json_string_value(msg), err) == 0);
    json_decref(j);
    free(json);
}

static void check_request(const api_request *r, api_kind kind, const api_limits *lim)
{
    FUZZ_CHECK(r->kind == kind);
    size_t mlen = strlen(r->model);
    FUZZ_CHECK(mlen >= 1 && mlen <= API_MODEL_MAX);
    if (kind == API_CHAT) {
        FUZZ_CHECK(r->n_messages >= 1 && r->n_messages <= lim->max_messages);
        FUZZ_CHECK(r->prompt == NULL);
        for (size_t i = 0; i < r->n_messages; i++) {
            FUZZ_CHECK((unsigned)r->messages[i].role < STORE_ROLE_COUNT);
            check_text(r->messages[i].content, r->messages[i].content_len,
                       lim->max_content_bytes);
        }
    } else {
        FUZZ_CHECK(r->messages == NULL && r->n_messages == 0);
        check_text(r->prompt, r->prompt_len, lim->max_content_bytes);
    }
    FUZZ_CHECK(r->max_tokens >= 0 && r->max_tokens <= lim->max_tokens);
    const api_sampling *s = &r->sampling;
    FUZZ_CHECK(s->temperature >= 0 && s->temperature <= 2);
    FUZZ_CHECK(s->top_p >= 0 && s->top_p <= 1);
    FUZZ_CHECK(s->top_k >= 0);
    FUZZ_CHECK(s->min_p >= 0 && s->min_p <= 1);
    FUZZ_CHECK(s->repeat_penalty > 0 && s->repeat_penalty <= 2);
    FUZZ_CHECK(s->presence_penalty >= -2 && s->presence_penalty <= 2);
    FUZZ_CHECK(s->frequency_penalty >= -2 && s->frequency_penalty <= 2);
    FUZZ_CHECK(r->n_stop <= lim->max_stop);
    for (size_t i = 0; i < r->n_stop; i++) {
        FUZZ_CHECK(r->stop[i][0] != '\0');
        check_text(r->stop[i], strlen(r->stop[i]), lim->max_stop_bytes);
    }
    FUZZ_CHECK(!r->include_usage || r->stream);
    FUZZ_CHECK(strlen(r->user) <= API_USER_MAX && valid_utf8(r->user, strlen(r->user)));
    const api_outpost *o = &r->outpost;
    for (const char *p = o->session; *p; p++)
        FUZZ_CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '-' || *p == '_');
    FUZZ_CHECK((unsigned)o->route < POL_TARGET_COUNT);
    FUZZ_CHECK((unsigned)o->privacy < POL_PRIVACY_COUNT);
    FUZZ_CHECK(o->max_latency_ms == -1 || (o->max_latency_ms >= 1 && o->max_latency_ms <= 86400000));
}

static void check_same(const api_request *a, const api_request *b)
{
    FUZZ_CHECK(a->kind == b->kind);
    FUZZ_CHECK(strcmp(a->model, b->model) == 0);
    FUZZ_CHECK(a->n_messages == b->n_messages);
    for (size_t i = 0; i < a->n_messages; i++) {
        FUZZ_CHECK(a->messages[i].role == b->messages[i].role);
        FUZZ_CHECK(a->messages[i].content_len == b->messages[i].content_len);
        FUZZ_CHECK(memcmp(a->messages[i].content, b->messages[i].content,
                          a->messages[i].content_len) == 0);
    }
    FUZZ_CHECK((a->prompt == NULL) == (b->prompt == NULL));
    if (a->prompt) {
        FUZZ_CHECK(a->prompt_len == b->prompt_len);
        FUZZ_CHECK(memcmp(a->prompt, b->prompt, a->prompt_len) == 0);
    }
    FUZZ_CHECK(a->max_tokens == b->max_tokens);
    const api_sampling *x = &a->sampling, *y = &b->sampling;
    FUZZ_CHECK(x->temperature == y->temperature && x->top_p == y->top_p &&
               x->top_k == y->top_k && x->min_p == y->min_p &&
               x->repeat_penalty == y->repeat_penalty &&
               x->presence_penalty == y->presence_penalty &&
               x->frequency_penalty == y->frequency_penalty);
    FUZZ_CHECK(a->has_seed == b->has_seed && (!a->has_seed || a->seed == b->seed));
    FUZZ_CHECK(a->n_stop == b->n_stop);
    for (size_t i = 0; i < a->n_stop; i++)
        FUZZ_CHECK(strcmp(a->stop[i], b->stop[i]) == 0);
    FUZZ_CHECK(a->stream == b->stream && a->include_usage == b->include_usage);
    FUZZ_CHECK(strcmp(a->user, b->user) == 0);
    FUZZ_CHECK(memcmp(&a->outpost, &b->outpost, sizeof a->outpost) == 0);
}

static int parse(api_kind kind, const char *body, size_t len, const api_limits *lim,
                 api_request *r, char err[256])
{
    return kind == API_CHAT ? api_parse_chat(body, len, lim, r, err)
                            : api_parse_completion(body, len, lim, r, err);
}

static void check_builders(const api_request *r)
{
    const char *text = r->kind == API_CHAT ? r->messages[r->n_messages - 1].content : r->prompt;
    size_t len = r->kind == API_CHAT ? r->messages[r->n_messages - 1].content_len : r->prompt_len;
    /* The user field doubles as remote text: any UTF-8 (or not) must build. */
    api_served served = {
        .route = r->outpost.route == POL_TARGET_AUTO ? POL_TARGET_LOCAL : r->outpost.route,
        .reason = r->user, .ttft_ms = 1.5, .cached_tokens = 3, .truncated = true,
        .session = r->outpost.session,
        .remote = {.target = "peer", .route = r->model, .reason = r->user, .error = r->user}};
    api_result res = {"chatcmpl-x", 1, r->model, text, len, API_FINISH_STOP, {1, 2}, &served};
    api_chunk c = {"chatcmpl-x", 1, r->model, true, text, len, API_FINISH_LENGTH,
                   r->include_usage, NULL, &served};
    char err[256];
    char *json = NULL;
    int rc = r->kind == API_CHAT ? api_chat_response(&res, &json, err)
                                 : api_completion_response(&res, &json, err);
    FUZZ_CHECK(rc == API_OK);
    json_t *j = json_loads(json, 0, NULL);
    FUZZ_CHECK(j != NULL);
    json_decref(j);
    free(json);
    rc = r->kind == API_CHAT ? api_chat_chunk(&c, &json, err)
                             : api_completion_chunk(&c, &json, err);
    FUZZ_CHECK(rc == API_OK);
    FUZZ_CHECK(strchr(json, '\n') == NULL);
    j = json_loads(json, 0, NULL);
    FUZZ_CHECK(j != NULL);
    json_decref(j);
    free(json);
}

static void one(api_kind kind, const char *body, size_t len, const api_limits *lim)
{
    api_request r;
    char err[256];
    err[0] = '\0';
    int rc = parse(kind, body, len, lim, &r, err);
    if (rc != API_OK) {
        check_refusal(rc, &r, err);
        return;
    }
    check_request(&r, kind, lim);

    char *json = NULL;
    FUZZ_CHECK(api_request_json(&r, NULL, API_JSON_EXTENSIONS | API_JSON_OUTPOST, NULL, &json,
                                err) == API_OK);
    api_request back;
    rc = parse(kind, json, strlen(json), lim, &back, err);
    if (rc != API_OK)
        fprintf(stderr, "fuzz_api: round trip refused: %s\n%s\n", err, json);
    FUZZ_CHECK(rc == API_OK);
    check_same(&r, &back);
    api_request_free(&back);
    free(json);

    check_builders(&r);
    api_request_free(&r);
    api_request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    api_limits def, tight;
    api_limits_default(&def);
    api_limits_default(&tight);
    tight.max_messages = 3;
    tight.max_content_bytes = 16;
    tight.max_tokens = 50;
    tight.max_stop = 2;
    tight.max_stop_bytes = 4;
    tight.max_depth = 4;
    const char *body = (const char *)data;
    one(API_CHAT, body, size, &def);
    one(API_COMPLETION, body, size, &def);
    one(API_CHAT, body, size, &tight);
    one(API_COMPLETION, body, size, &tight);
    return 0;
}
