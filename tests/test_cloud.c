/*
 * test_cloud.c - the remote backends: the reply reader and request builder
 * of the backend-openai plugin (plugins/openai_wire.c), the job conversion,
 * hooks and spend of agent/cloud.c, and the real backend-openai.so (loaded
 * with plug_load from the build tree) talking HTTP to a server in this
 * process.
 *
 * That server is libmicrohttpd on a free loopback port playing a scripted
 * remote: it answers each request with the next entry of a script (a
 * status, a body, and whether to cut the connection mid-body or hold the
 * body back until released), and records what it was sent. A real Outpost
 * is the remote in tests/integration/test_routing.sh; here the remote must
 * misbehave on demand (503 then success, a 400, a stream cut after its
 * first event, a reply that never comes), which no real one does. The
 * fallback to the local engine runs the real stories260K model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cloud.h"
#include "openai_wire.h"
#include "pii.h"
#include "plugin.h"

#ifndef OUTPOST_PLUGIN_BUILD_DIR
#error "OUTPOST_PLUGIN_BUILD_DIR must name the build tree's plugins directory"
#endif
#ifndef OUTPOST_SHARED
#error "OUTPOST_SHARED must name the shared data directory"
#endif

/* ---- the reply reader ------------------------------------------------------------- */

typedef struct collected {
    char text[4096];
    size_t len;
    int calls;
    int stop_after; /* return nonzero on this call (1-based); 0: never */
} collected;

static int collect(void *ud, const char *t, size_t n)
{
    collected *c = ud;
    assert_true(c->len + n < sizeof c->text);
    memcpy(c->text + c->len, t, n);
    c->len += n;
    c->text[c->len] = '\0';
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

static const char chat_stream[] =
    "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
    "\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n"
    ": keep-alive comment\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9t\\u00e9\"},"
    "\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],"
    "\"outpost\":{\"route\":\"local\",\"reason\":\"requested\"}}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,"
    "\"total_tokens\":15}}\n\n"
    "data: [DONE]\n\n";

static void check_chat_stream(const oaw_reader *r, const collected *c)
{
    assert_string_equal(c->text, "Hello \xc3\xa9t\xc3\xa9");
    assert_true(r->reply.done);
    assert_string_equal(r->reply.finish_reason, "length");
    assert_int_equal(r->reply.prompt_tokens, 12);
    assert_int_equal(r->reply.completion_tokens, 3);
    assert_string_equal(r->reply.remote_route, "local");
    assert_string_equal(r->reply.remote_reason, "requested");
    assert_int_equal(r->reply.text_bytes, strlen(c->text));
}

static void sse_relays_deltas_usage_and_outpost_object(void **state)
{
    (void)state;
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_sse_feed(&r, chat_stream, strlen(chat_stream)), OAW_OK);
    assert_int_equal(oaw_sse_finish(&r), OAW_OK);
    check_chat_stream(&r, &c);
    oaw_reader_free(&r);
}

static void sse_gives_the_same_reply_whatever_the_network_splits(void **state)
{
    (void)state;
    size_t n = strlen(chat_stream);
    /* Every split point into two pieces, and byte by byte. */
    for (size_t cut = 0; cut <= n; cut++) {
        collected c = {0};
        oaw_reader r;
        oaw_reader_init(&r, collect, &c, 0);
        assert_int_equal(oaw_sse_feed(&r, chat_stream, cut), OAW_OK);
        assert_int_equal(oaw_sse_feed(&r, chat_stream + cut, n - cut), OAW_OK);
        assert_int_equal(oaw_sse_finish(&r), OAW_OK);
        check_chat_stream(&r, &c);
        oaw_reader_free(&r);
    }
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(oaw_sse_feed(&r, chat_stream + i, 1), OAW_OK);
    assert_int_equal(oaw_sse_finish(&r), OAW_OK);
    check_chat_stream(&r, &c);
    oaw_reader_free(&r);
}

static void sse_takes_crlf_cr_bom_fields_and_multiline_data(void **state)
{
    (void)state;
    static const char s[] =
        "\xEF\xBB\xBF: comment\r\n"
        "event: message\r\nid: 7\r\nretry: 100\r\n"
        "data:{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
        "data: {\"choices\":\rdata: [{\"delta\":{\"content\":\"b\"}}]}\r\r"
        "data\n\n" /* an empty data field: an empty event, skipped */
        "data: [DONE]\r\n\r\n";
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_sse_feed(&r, s, sizeof s - 1), OAW_OK);
    assert_int_equal(oaw_sse_finish(&r), OAW_OK);
    assert_string_equal(c.text, "ab");
    assert_true(r.reply.done);
    assert_int_equal(r.reply.n_events, 2);
    oaw_reader_free(&r);
}

static void sse_dispatches_an_event_left_open_at_the_end(void **state)
{
    (void)state;
    static const char s[] = "data: {\"choices\":[{\"text\":\"x\",\"finish_reason\":\"stop\"}]}\n\n"
                            "data: [DONE]";
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_sse_feed(&r, s, sizeof s - 1), OAW_OK);
    assert_false(r.reply.done);
    assert_int_equal(oaw_sse_finish(&r), OAW_OK);
    assert_true(r.reply.done);
    assert_string_equal(c.text, "x");
    assert_string_equal(r.reply.finish_reason, "stop");
    oaw_reader_free(&r);
}

/* A refusal sticks: later calls fail the same way and relay nothing. */
static void expect_refused(const char *s, int want_rc, const char *in_err)
{
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    int rc = oaw_sse_feed(&r, s, strlen(s));
    if (rc == OAW_OK)
        rc = oaw_sse_finish(&r);
    assert_int_equal(rc, want_rc);
    if (!strstr(r.err, in_err))
        fail_msg("error \"%s\" does not mention \"%s\"", r.err, in_err);
    static const char more[] = "data: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n";
    assert_int_equal(oaw_sse_feed(&r, more, sizeof more - 1), want_rc);
    assert_null(strstr(c.text, "late"));
    oaw_reader_free(&r);
}

static void sse_refuses_malformed_events_with_one_line(void **state)
{
    (void)state;
    expect_refused("data: {not json\n\n", OAW_EMALFORMED, "reply event 1: not JSON");
    expect_refused("data: [1,2]\n\n", OAW_EMALFORMED, "expected a JSON object");
    expect_refused("data: {\"choices\":{}}\n\n", OAW_EMALFORMED, "choices: expected an array");
    expect_refused("data: {\"choices\":[7]}\n\n", OAW_EMALFORMED, "choices[0]: expected an object");
    expect_refused("data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n", OAW_EMALFORMED,
                   "not a string");
    expect_refused("data: {\"usage\":{\"prompt_tokens\":\"9\"}}\n\n", OAW_EMALFORMED,
                   "usage.prompt_tokens");
    expect_refused("data: {\"usage\":{\"completion_tokens\":-1}}\n\n", OAW_EMALFORMED,
                   "usage.completion_tokens");
    expect_refused("data: [DONE]\n\ndata: {}\n\n", OAW_EMALFORMED, "after [DONE]");
}

static void sse_error_event_is_a_remote_error(void **state)
{
    (void)state;
    expect_refused("data: {\"error\":{\"message\":\"the model is overloaded\",\"code\":503}}\n\n",
                   OAW_EREMOTE, "the model is overloaded");
    expect_refused("data: {\"error\":\"plain words\"}\n\n", OAW_EREMOTE, "plain words");
}

static void sse_bounds_an_event_that_never_ends(void **state)
{
    (void)state;
    oaw_reader r;
    oaw_reader_init(&r, NULL, NULL, 64);
    char line[100];
    memset(line, 'a', sizeof line);
    assert_int_equal(oaw_sse_feed(&r, "data: ", 6), OAW_OK);
    assert_int_equal(oaw_sse_feed(&r, line, sizeof line), OAW_EMALFORMED);
    assert_non_null(strstr(r.err, "longer than 64 bytes"));
    assert_true(r.line_cap <= 256);
    oaw_reader_free(&r);
    /* ... and data lines that add up beyond it. */
    oaw_reader_init(&r, NULL, NULL, 64);
    int rc = OAW_OK;
    for (int i = 0; i < 20 && rc == OAW_OK; i++)
        rc = oaw_sse_feed(&r, "data: 0123456789\n", 17);
    assert_int_equal(rc, OAW_EMALFORMED);
    oaw_reader_free(&r);
}

static void sse_receiver_can_stop_the_stream(void **state)
{
    (void)state;
    collected c = {.stop_after = 1};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_sse_feed(&r, chat_stream, strlen(chat_stream)), OAW_ESTOP);
    assert_string_equal(c.text, "Hel");
    assert_int_equal(c.calls, 1);
    oaw_reader_free(&r);
}

static void sse_drops_nul_bytes_from_text(void **state)
{
    (void)state;
    static const char s[] = "data: {\"choices\":[{\"delta\":{\"content\":\"a\\u0000b\\u0000\"}}]}\n\n";
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_sse_feed(&r, s, sizeof s - 1), OAW_OK);
    assert_int_equal(c.len, 2);
    assert_string_equal(c.text, "ab");
    oaw_reader_free(&r);
}

static void whole_reply_is_read_as_one_object(void **state)
{
    (void)state;
    static const char body[] =
        "{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
        "{\"role\":\"assistant\",\"content\":\"whole\"},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}";
    collected c = {0};
    oaw_reader r;
    oaw_reader_init(&r, collect, &c, 0);
    assert_int_equal(oaw_body_feed(&r, body, 20), OAW_OK);
    assert_int_equal(oaw_body_feed(&r, body + 20, sizeof body - 21), OAW_OK);
    assert_int_equal(c.calls, 0);
    assert_int_equal(oaw_body_finish(&r), OAW_OK);
    assert_string_equal(c.text, "whole");
    assert_string_equal(r.reply.finish_reason, "stop");
    assert_int_equal(r.reply.completion_tokens, 1);
    oaw_reader_free(&r);

    char msg[64] = "untouched";
    assert_false(oaw_error_message("nonsense", 8, msg, sizeof msg));
    assert_string_equal(msg, "untouched");
    assert_true(oaw_error_message("{\"error\":{\"message\":\"bad key\"}}", 31, msg, sizeof msg));
    assert_string_equal(msg, "bad key");
}

/* ---- the request body --------------------------------------------------------------- */

static json_t *parse(const char *s)
{
    json_error_t je;
    json_t *o = json_loads(s, 0, &je);
    if (!o)
        fail_msg("not JSON (%s): %s", je.text, s);
    return o;
}

static void request_json_carries_conversation_and_sampling(void **state)
{
    (void)state;
    outpost_message m[3] = {{"system", "Be brief.", 9}, {"user", "Hi \xc3\xa9", 5},
                            {"assistant", "Hello", 5}};
    const char *stop[2] = {"\n\n", "END"};
    outpost_chat_request rq = {.messages = m, .n_messages = 3, .model = "client-model",
                               .temperature = 0, .top_p = 0.5, .max_tokens = 7, .stop = stop,
                               .n_stop = 2, .has_seed = true, .seed = -3};
    oaw_request_opts o = {.model = "upstream", .stream = true, .outpost_route_local = true};
    char *s = NULL, err[OUTPOST_PLUGIN_ERR_SIZE];
    assert_int_equal(oaw_request_json(&rq, &o, &s, err), OAW_OK);
    json_t *b = parse(s);
    assert_string_equal(json_string_value(json_object_get(b, "model")), "upstream");
    json_t *msgs = json_object_get(b, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "role")), "user");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                        "Hi \xc3\xa9");
    assert_true(json_is_true(json_object_get(b, "stream")));
    assert_true(json_is_true(json_object_get(json_object_get(b, "stream_options"), "include_usage")));
    assert_true(json_real_value(json_object_get(b, "temperature")) == 0.0);
    assert_true(json_real_value(json_object_get(b, "top_p")) == 0.5);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 7);
    assert_string_equal(json_string_value(json_array_get(json_object_get(b, "stop"), 1)), "END");
    assert_int_equal(json_integer_value(json_object_get(b, "seed")), -3);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(b, "outpost"), "route")), "local");
    assert_null(json_object_get(b, "prompt"));
    json_decref(b);
    free(s);

    /* Unset fields are left out; the client's model when none is configured. */
    rq = (outpost_chat_request){.prompt = "Once", .prompt_len = 4, .model = "m",
                                .temperature = -1, .top_p = -1};
    o = (oaw_request_opts){0};
    assert_int_equal(oaw_request_json(&rq, &o, &s, err), OAW_OK);
    b = parse(s);
    assert_string_equal(json_string_value(json_object_get(b, "prompt")), "Once");
    assert_string_equal(json_string_value(json_object_get(b, "model")), "m");
    assert_int_equal(json_object_size(b), 2);
    json_decref(b);
    free(s);
}

static void request_json_refuses_what_is_not_utf8(void **state)
{
    (void)state;
    outpost_message m = {"user", "bad \xff byte", 10};
    outpost_chat_request rq = {.messages = &m, .n_messages = 1, .temperature = -1, .top_p = -1};
    char *s = NULL, err[OUTPOST_PLUGIN_ERR_SIZE];
    assert_int_equal(oaw_request_json(&rq, NULL, &s, err), OAW_EMALFORMED);
    assert_null(s);
    assert_non_null(strstr(err, "messages[0]"));
    rq = (outpost_chat_request){.temperature = -1, .top_p = -1};
    assert_int_equal(oaw_request_json(&rq, NULL, &s, err), OAW_EMALFORMED);
}

/* ---- a host like the daemon's ---------------------------------------------------------- */

typedef struct test_host {
    pii *detector;
} test_host;

static void host_log(void *ctx, const char *plugin, const char *line)
{
    (void)ctx;
    fprintf(stderr, "plugin %s: %s\n", plugin, line);
}

static void *host_alloc(void *ctx, size_t n)
{
    (void)ctx;
    return malloc(n ? n : 1);
}

static void host_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static int host_pii_redact(void *ctx, const char *text, size_t len, char **out, size_t *out_len,
                           size_t *n_found, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    test_host *t = ctx;
    pii_finding *f = NULL;
    size_t n = 0;
    if (pii_scan(t->detector, text, len, &f, &n, err))
        return OUTPOST_EINPUT;
    free(f);
    if (pii_redact(t->detector, text, len, out, out_len, err))
        return OUTPOST_EINPUT;
    *n_found = n;
    return OUTPOST_OK;
}

static test_host the_host_ctx;
static outpost_host the_host = {
    .abi_version = OUTPOST_PLUGIN_ABI_VERSION, .struct_size = sizeof(outpost_host),
    .ctx = &the_host_ctx, .agent_version = "test", .log = host_log, .alloc = host_alloc,
    .free = host_free, .pii_redact = host_pii_redact,
};

/* ---- job conversion and hooks ------------------------------------------------------------ */

static sched_job *chat_job(void)
{
    sched_job *j = sched_job_new();
    assert_non_null(j);
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_SYSTEM, "sys", 3), SCHED_OK);
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_USER, "first turn", 10), SCHED_OK);
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_ASSISTANT, "reply", 5), SCHED_OK);
    j->n_history = 3; /* the session's part */
    const char *q = "mail me at jane.doe@example.com";
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_USER, q, strlen(q)), SCHED_OK);
    assert_int_equal(sched_job_add_stop(j, "###", 3), SCHED_OK);
    j->sampling.temp = 0.25f;
    j->sampling.top_p = 1.0f;
    j->sampling.seed = 42;
    j->max_tokens = 9;
    snprintf(j->model, sizeof j->model, "stories260K");
    snprintf(j->request_id, sizeof j->request_id, "chatcmpl-test");
    return j;
}

static void job_becomes_the_whole_conversation_as_copies(void **state)
{
    (void)state;
    sched_job *j = chat_job();
    cloud_request r;
    char err[256];
    assert_int_equal(cloud_request_from_job(&r, j, "cloud", &the_host, err), CLOUD_OK);
    assert_int_equal(r.rq.n_messages, 4); /* history included, not only the new turn */
    const char *roles[4] = {"system", "user", "assistant", "user"};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(r.rq.messages[i].role, roles[i]);
        assert_int_equal(r.rq.messages[i].len, j->msgs[i].len);
        assert_memory_equal(r.rq.messages[i].content, j->msgs[i].content, j->msgs[i].len);
        assert_ptr_not_equal(r.rq.messages[i].content, j->msgs[i].content);
    }
    assert_null(r.rq.prompt);
    assert_true(fabs(r.rq.temperature - 0.25) < 1e-6);
    assert_true(r.rq.top_p < 0); /* 1 is "off": not sent */
    assert_int_equal(r.rq.max_tokens, 9);
    assert_int_equal(r.rq.n_stop, 1);
    assert_string_equal(r.rq.stop[0], "###");
    assert_true(r.rq.has_seed);
    assert_int_equal(r.rq.seed, 42);
    assert_string_equal(r.rq.model, "stories260K");
    assert_string_equal(r.rq.request_id, "chatcmpl-test");
    assert_string_equal(r.ob.target, "cloud");
    assert_false(r.ob.redact);
    cloud_request_free(&r);

    sched_job *p = sched_job_new();
    assert_int_equal(sched_job_set_prompt(p, "Once upon", 9), SCHED_OK);
    p->redact = true;
    assert_int_equal(cloud_request_from_job(&r, p, "peer", &the_host, err), CLOUD_OK);
    assert_null(r.rq.messages);
    assert_int_equal(r.rq.prompt_len, 9);
    assert_string_equal(r.rq.prompt, "Once upon");
    assert_true(r.ob.redact);
    cloud_request_free(&r);
    sched_job_free(p);
    sched_job_free(j);
}

static void hooks_redact_with_the_real_plugin_only_when_asked(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(pii_new(&the_host_ctx.detector, err), 0);
    plug *hp = NULL;
    if (plug_load(&hp, OUTPOST_PLUGIN_BUILD_DIR, "hook-redact", &the_host, err))
        fail_msg("%s", err);
    const outpost_plugin *info = plug_info(hp);
    void *inst = NULL;
    char perr[OUTPOST_PLUGIN_ERR_SIZE];
    assert_int_equal(info->hook->open(&the_host, &inst, perr), OUTPOST_OK);
    cloud_hook hook = {.name = info->name, .ops = info->hook, .inst = inst};

    sched_job *j = chat_job();
    for (int redact = 0; redact <= 1; redact++) {
        j->redact = redact;
        cloud_request r;
        assert_int_equal(cloud_request_from_job(&r, j, "cloud", &the_host, err), CLOUD_OK);
        assert_int_equal(cloud_run_hooks(&hook, 1, &r, err), CLOUD_OK);
        cloud_request_seal(&r);
        const char *last = r.rq.messages[3].content;
        if (redact) {
            assert_null(strstr(last, "jane.doe@example.com"));
            assert_non_null(strstr(last, "[EMAIL]"));
            assert_int_equal(r.rq.messages[3].len, strlen(last));
            assert_int_equal(r.ob.n_redacted, 1);
        } else {
            assert_string_equal(last, "mail me at jane.doe@example.com");
        }
        assert_string_equal(r.rq.messages[1].content, "first turn");
        cloud_request_free(&r);
    }
    /* Redaction asked and nothing to do it: the request must not leave. */
    j->redact = true;
    cloud_request r;
    assert_int_equal(cloud_request_from_job(&r, j, "cloud", &the_host, err), CLOUD_OK);
    assert_int_equal(cloud_run_hooks(NULL, 0, &r, err), CLOUD_ENOREDACT);
    assert_non_null(strstr(err, "no hook plugin"));
    cloud_request_free(&r);
    sched_job_free(j);
    info->hook->close(inst);
    plug_unload(hp);
    pii_free(the_host_ctx.detector);
    the_host_ctx.detector = NULL;
}

static void cost_and_month_start(void **state)
{
    (void)state;
    assert_true(fabs(cloud_cost_usd(1500, 500, 0.01) - 0.02) < 1e-12);
    assert_true(cloud_cost_usd(-1, 1000, 0.5) == 0.5);
    assert_true(cloud_cost_usd(100, 100, 0) == 0);
    time_t now = time(NULL);
    int64_t m = cloud_month_start_ms((int64_t)now);
    time_t ms = (time_t)(m / 1000);
    struct tm a, b;
    localtime_r(&ms, &a);
    localtime_r(&now, &b);
    assert_int_equal(a.tm_mday, 1);
    assert_int_equal(a.tm_hour, 0);
    assert_int_equal(a.tm_min, 0);
    assert_int_equal(a.tm_mon, b.tm_mon);
    assert_int_equal(a.tm_year, b.tm_year);
    assert_true(m <= (int64_t)now * 1000);
}

/* ---- a scripted remote ----------------------------------------------------------------------- */

typedef enum { ANS_WHOLE, ANS_CUT, ANS_HOLD } ans_mode;

typedef struct answer {
    unsigned status;
    const char *type;
    const char *body;
    ans_mode mode;
} answer;

static struct {
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    answer script[8];
    size_t n, next;
    size_t n_requests;
    char last_url[256], last_auth[256], last_body[16384];
    atomic_bool release;
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct conn_body {
    char buf[16384];
    size_t len;
} conn_body;

static ssize_t cut_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    const answer *a = cls;
    size_t len = strlen(a->body);
    if (a->mode == ANS_HOLD) {
        for (int i = 0; i < 2000 && !atomic_load(&srv.release); i++)
            usleep(5000);
        if (pos >= len)
            return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (pos < len) {
        size_t k = len - pos < max ? len - pos : max;
        memcpy(buf, a->body + pos, k);
        return (ssize_t)k;
    }
    return MHD_CONTENT_READER_END_WITH_ERROR; /* ANS_CUT: no terminating chunk */
}

static enum MHD_Result srv_handler(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *data,
                                   size_t *data_size, void **con_cls)
{
    (void)cls;
    (void)version;
    conn_body *b = *con_cls;
    if (!b) {
        *con_cls = calloc(1, sizeof *b);
        return *con_cls ? MHD_YES : MHD_NO;
    }
    if (*data_size) {
        size_t k = *data_size < sizeof b->buf - 1 - b->len ? *data_size : sizeof b->buf - 1 - b->len;
        memcpy(b->buf + b->len, data, k);
        b->len += k;
        *data_size = 0;
        return MHD_YES;
    }
    /* Probes (GET) get a plain 200 and leave the script to the calls. */
    static const answer probe_answer = {200, "application/json", "{\"object\":\"list\",\"data\":[]}",
                                        ANS_WHOLE};
    bool probe = strcmp(method, "GET") == 0;
    pthread_mutex_lock(&srv.mu);
    snprintf(srv.last_url, sizeof srv.last_url, "%s", url);
    const answer *a = &probe_answer;
    if (!probe) {
        srv.n_requests++;
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        snprintf(srv.last_auth, sizeof srv.last_auth, "%s", auth ? auth : "");
        memcpy(srv.last_body, b->buf, b->len + 1);
        a = &srv.script[srv.next < srv.n ? srv.next : srv.n - 1];
        srv.next++;
    }
    pthread_mutex_unlock(&srv.mu);
    struct MHD_Response *r =
        a->mode == ANS_WHOLE
            ? MHD_create_response_from_buffer(strlen(a->body), (void *)a->body,
                                              MHD_RESPMEM_PERSISTENT)
            : MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, cut_reader, (void *)a,
                                                NULL);
    if (!r)
        return MHD_NO;
    if (a->type)
        MHD_add_response_header(r, "Content-Type", a->type);
    enum MHD_Result ret = MHD_queue_response(c, a->status, r);
    MHD_destroy_response(r);
    return ret;
}

static void srv_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                          enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

static void srv_start(const answer *script, size_t n)
{
    assert_true(n <= 8);
    memcpy(srv.script, script, n * sizeof *script);
    srv.n = n;
    srv.next = 0;
    srv.n_requests = 0;
    srv.last_url[0] = srv.last_auth[0] = srv.last_body[0] = '\0';
    atomic_store(&srv.release, false);
    srv.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
                             NULL, NULL, srv_handler, NULL, MHD_OPTION_NOTIFY_COMPLETED,
                             srv_completed, NULL, MHD_OPTION_END);
    assert_non_null(srv.d);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv.d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(di);
    srv.port = di->port;
}

static void srv_stop(void)
{
    atomic_store(&srv.release, true);
    MHD_stop_daemon(srv.d);
    srv.d = NULL;
}

/* ---- the plugin against it --------------------------------------------------------------------- */

typedef struct backend {
    plug *p;
    const outpost_backend_ops *ops;
    void *inst;
} backend;

/* The real plugin, opened with cfg (name and url given, key "k3y"). */
static void backend_open_cfg(backend *b, const outpost_backend_config *cfg)
{
    char err[256];
    if (plug_load(&b->p, OUTPOST_PLUGIN_BUILD_DIR, "backend-openai", &the_host, err))
        fail_msg("%s", err);
    b->ops = plug_info(b->p)->backend;
    char perr[OUTPOST_PLUGIN_ERR_SIZE];
    if (b->ops->open(&the_host, cfg, &b->inst, perr))
        fail_msg("%s", perr);
}

static void backend_open(backend *b, const char *name, const char *url, int retries)
{
    outpost_backend_config cfg = {.name = name, .url = url, .api_key = "k3y", .model = NULL,
                                  .connect_timeout_ms = 2000, .timeout_ms = 20000,
                                  .retries = retries, .retry_backoff_ms = 5};
    backend_open_cfg(b, &cfg);
}

static void backend_close(backend *b)
{
    b->ops->close(b->inst);
    plug_unload(b->p);
}

static char *srv_url(const char *path)
{
    static char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d%s", srv.port, path);
    return u;
}

typedef struct stream_state {
    collected c;
    atomic_int cancel_polls;
    bool cancel;
} stream_state;

static int st_text(void *ud, const char *t, size_t n) { return collect(&((stream_state *)ud)->c, t, n); }
static int st_cancelled(void *ud)
{
    stream_state *s = ud;
    atomic_fetch_add(&s->cancel_polls, 1);
    return s->cancel;
}

static int call(backend *b, stream_state *ss, outpost_chat_result *res, char *err)
{
    outpost_message m = {"user", "hello", 5};
    outpost_chat_request rq = {.messages = &m, .n_messages = 1, .model = "stories260K",
                               .temperature = 0, .top_p = -1, .max_tokens = 4,
                               .request_id = "chatcmpl-x"};
    outpost_stream s = {.ud = ss, .on_text = st_text, .cancelled = st_cancelled};
    return b->ops->chat(b->inst, &rq, &s, res, err);
}

/* One scripted exchange: the server with its answers, the real plugin on
 * it, and what a call left behind. */
typedef struct rig {
    backend b;
    stream_state ss;
    outpost_chat_result res;
    char err[OUTPOST_PLUGIN_ERR_SIZE];
} rig;

static void rig_open(rig *r, const answer *script, size_t n, const char *target,
                     const char *path, int retries)
{
    memset(r, 0, sizeof *r);
    srv_start(script, n);
    backend_open(&r->b, target, srv_url(path), retries);
}

/* One call; what an earlier call collected is forgotten, a cancel flag set
 * by the test is kept. */
static int rig_call(rig *r)
{
    memset(&r->ss.c, 0, sizeof r->ss.c);
    r->err[0] = '\0';
    return call(&r->b, &r->ss, &r->res, r->err);
}

static void rig_close(rig *r)
{
    backend_close(&r->b);
    srv_stop();
}

static const char ok_stream[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\" there\"},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n"
    "data: [DONE]\n\n";

static void backend_streams_and_sends_key_body_and_path(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream", ok_stream, ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1/", 2);
    assert_int_equal(rig_call(&r), OUTPOST_OK);
    assert_string_equal(r.ss.c.text, "Hi there");
    assert_int_equal(r.res.attempts, 1);
    assert_int_equal(r.res.http_status, 200);
    assert_string_equal(r.res.finish_reason, "stop");
    assert_int_equal(r.res.prompt_tokens, 5);
    assert_int_equal(r.res.completion_tokens, 2);
    assert_string_equal(srv.last_url, "/v1/chat/completions");
    assert_string_equal(srv.last_auth, "Bearer k3y");
    json_t *body = parse(srv.last_body);
    assert_true(json_is_true(json_object_get(body, "stream")));
    assert_string_equal(json_string_value(json_object_get(body, "model")), "stories260K");
    assert_null(json_object_get(body, "outpost")); /* a cloud gets plain OpenAI */
    json_decref(body);

    /* The probe: GET <url>/models, with a round trip. */
    double rtt = -1;
    assert_int_equal(r.b.ops->probe(r.b.inst, &rtt, r.err), OUTPOST_OK);
    assert_string_equal(srv.last_url, "/v1/models");
    assert_true(rtt >= 0);
    rig_close(&r);

    /* A peer is an Outpost: /v1 is added, the request asks it to answer
     * itself, and the probe is /health. */
    rig_open(&r, a, 1, "peer", "", 0);
    assert_int_equal(rig_call(&r), OUTPOST_OK);
    assert_string_equal(srv.last_url, "/v1/chat/completions");
    body = parse(srv.last_body);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, "outpost"), "route")),
                        "local");
    json_decref(body);
    assert_int_equal(r.b.ops->probe(r.b.inst, &rtt, r.err), OUTPOST_OK);
    assert_string_equal(srv.last_url, "/health");
    rig_close(&r);
}

static void backend_retries_503_and_429_then_succeeds(void **state)
{
    (void)state;
    answer a[] = {{503, "application/json", "{\"error\":{\"message\":\"busy\"}}", ANS_WHOLE},
                  {429, "application/json", "{\"error\":{\"message\":\"slow down\"}}", ANS_WHOLE},
                  {200, "text/event-stream", ok_stream, ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 3, "cloud", "/v1", 2);
    assert_int_equal(rig_call(&r), OUTPOST_OK);
    assert_int_equal(r.res.attempts, 3);
    assert_int_equal(srv.n_requests, 3);
    assert_string_equal(r.ss.c.text, "Hi there");
    rig_close(&r);

    /* Out of retries: the last status and its message. */
    rig_open(&r, a, 1, "cloud", "/v1", 1);
    assert_int_equal(rig_call(&r), OUTPOST_EREMOTE);
    assert_int_equal(r.res.attempts, 2);
    assert_int_equal(r.res.http_status, 503);
    assert_non_null(strstr(r.err, "HTTP 503: busy"));
    assert_int_equal(r.ss.c.len, 0);
    rig_close(&r);
}

/* retry_backoff_ms is the first pause: one that cannot fit the call's
 * timeout_ms means no retry at all, a short one lets the retry happen. */
static void backend_backoff_pause_is_bounded_by_the_call_timeout(void **state)
{
    (void)state;
    answer a[] = {{503, "application/json", "{\"error\":{\"message\":\"busy\"}}", ANS_WHOLE},
                  {200, "text/event-stream", ok_stream, ANS_WHOLE}};
    const int backoff_ms[] = {60000, 1};
    const int want_attempts[] = {1, 2};
    const int want_rc[] = {OUTPOST_EREMOTE, OUTPOST_OK};
    for (int i = 0; i < 2; i++) {
        rig r;
        memset(&r, 0, sizeof r);
        srv_start(a, 2);
        outpost_backend_config cfg = {.name = "cloud", .url = srv_url("/v1"), .api_key = "k3y",
                                      .connect_timeout_ms = 2000, .timeout_ms = 20000,
                                      .retries = 3, .retry_backoff_ms = backoff_ms[i]};
        backend_open_cfg(&r.b, &cfg);
        assert_int_equal(rig_call(&r), want_rc[i]);
        assert_int_equal(r.res.attempts, want_attempts[i]);
        assert_int_equal(srv.n_requests, want_attempts[i]);
        rig_close(&r);
    }
}

static void backend_does_not_retry_a_client_error(void **state)
{
    (void)state;
    answer a[] = {{400, "application/json", "{\"error\":{\"message\":\"bad model\"}}", ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 3);
    assert_int_equal(rig_call(&r), OUTPOST_EREMOTE);
    assert_int_equal(r.res.attempts, 1);
    assert_int_equal(srv.n_requests, 1);
    assert_non_null(strstr(r.err, "HTTP 400: bad model"));
    rig_close(&r);
}

static void backend_cut_after_text_is_partial_and_not_retried(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream",
                   "data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\n", ANS_CUT}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 3);
    assert_int_equal(rig_call(&r), OUTPOST_EPARTIAL);
    assert_string_equal(r.ss.c.text, "half");
    assert_int_equal(r.res.attempts, 1);
    assert_int_equal(srv.n_requests, 1);
    rig_close(&r);

    /* Cut before any text: retried, and the retry's answer is relayed once. */
    answer a2[] = {{200, "text/event-stream", ": nothing yet\n\n", ANS_CUT},
                   {200, "text/event-stream", ok_stream, ANS_WHOLE}};
    rig_open(&r, a2, 2, "cloud", "/v1", 3);
    assert_int_equal(rig_call(&r), OUTPOST_OK);
    assert_int_equal(r.res.attempts, 2);
    assert_string_equal(r.ss.c.text, "Hi there");
    rig_close(&r);
}

static void backend_reads_a_whole_json_reply_and_refuses_garbage(void **state)
{
    (void)state;
    answer a[] = {{200, "application/json",
                   "{\"choices\":[{\"message\":{\"content\":\"all at once\"},"
                   "\"finish_reason\":\"length\"}]}", ANS_WHOLE},
                  {200, "text/event-stream", "data: {oops\n\n", ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 2, "cloud", "/v1", 2);
    assert_int_equal(rig_call(&r), OUTPOST_OK);
    assert_string_equal(r.ss.c.text, "all at once");
    assert_string_equal(r.res.finish_reason, "length");
    assert_int_equal(rig_call(&r), OUTPOST_EREMOTE);
    assert_int_equal(r.res.attempts, 1); /* a malformed reply is not retried */
    assert_non_null(strstr(r.err, "not JSON"));
    rig_close(&r);
}

static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void backend_unreachable_is_retried_then_reported(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", closed_port());
    backend b;
    backend_open(&b, "cloud", url, 1);
    stream_state ss = {0};
    outpost_chat_result res;
    char err[OUTPOST_PLUGIN_ERR_SIZE] = "";
    assert_int_equal(call(&b, &ss, &res, err), OUTPOST_EUNREACHABLE);
    assert_int_equal(res.attempts, 2);
    assert_int_equal(res.http_status, 0);
    assert_non_null(strstr(err, url));
    double rtt;
    assert_int_equal(b.ops->probe(b.inst, &rtt, err), OUTPOST_EUNREACHABLE);
    backend_close(&b);
}

static void backend_stops_waiting_when_the_caller_cancels(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream", ok_stream, ANS_HOLD}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 2);
    r.ss.cancel = true;
    assert_int_equal(rig_call(&r), OUTPOST_ECANCELLED);
    assert_true(atomic_load(&r.ss.cancel_polls) > 0);
    assert_int_equal(r.ss.c.len, 0);
    assert_int_equal(r.res.attempts, 1);
    rig_close(&r);
}

/* ---- cloud_: jobs through the pool ------------------------------------------------------------ */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    char text[4096];
    size_t len;
} waiter;

static void w_piece(void *ud, const char *t, size_t n)
{
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    if (w->len + n < sizeof w->text) {
        memcpy(w->text + w->len, t, n);
        w->len += n;
        w->text[w->len] = '\0';
    }
    pthread_mutex_unlock(&w->mu);
}

static void w_done(void *ud, sched_job *j)
{
    (void)j;
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void w_init(waiter *w, sched_job *j)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    j->sink = (sched_sink){.ud = w, .on_piece = w_piece, .on_done = w_done};
    j->t_arrival = sched_now();
    j->route = STORE_ROUTE_CLOUD;
    snprintf(j->reason, sizeof j->reason, "long_prompt");
}

static void w_wait(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

static cloud *pool_open(backend *b, sched **models, size_t n_models, int threads, int queue,
                        double budget)
{
    cloud_opts o = {.target = "cloud", .ops = b->ops, .inst = b->inst, .host = &the_host,
                    .models = models, .n_models = n_models, .threads = threads,
                    .queue_max = queue, .price_per_1k_tokens = 1.0, .budget_usd_month = budget};
    cloud *c = NULL;
    char err[256];
    if (cloud_open(&c, &o, err))
        fail_msg("%s", err);
    return c;
}

/* Submit j to be and wait for its on_done (w collects its text). */
static void submit_and_wait(sched_backend be, sched_job *j, waiter *w)
{
    char err[256];
    w_init(w, j);
    assert_int_equal(be.submit(be.ud, j, err), SCHED_OK);
    w_wait(w);
}

static void cloud_job_streams_to_the_sink_and_counts_cost(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream", ok_stream, ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 0);
    cloud *c = pool_open(&r.b, NULL, 0, 2, 2, NAN);
    sched_backend be = cloud_backend(c);
    assert_string_equal(be.name, "cloud");
    sched_job *j = chat_job();
    waiter w;
    submit_and_wait(be, j, &w);
    assert_int_equal(j->status, SCHED_OK);
    assert_int_equal(j->route, STORE_ROUTE_CLOUD);
    assert_string_equal(j->reason, "long_prompt");
    assert_string_equal(w.text, "Hi there");
    assert_string_equal(j->text, "Hi there");
    assert_int_equal(j->finish, SCHED_FINISH_STOP);
    assert_int_equal(j->prompt_tokens, 5);
    assert_int_equal(j->completion_tokens, 2);
    assert_true(j->ttft_ms >= 0);
    assert_true(fabs(j->cost_usd - 0.007) < 1e-12); /* 7 tokens at 1 USD per 1000 */
    cloud_facts f;
    cloud_get_facts(c, &f);
    assert_true(fabs(f.spend_usd_month - 0.007) < 1e-12);
    assert_int_equal(f.calls_ok, 1);
    assert_true(f.online);
    assert_string_equal(j->remote_error, ""); /* nothing failed */
    sched_job_free(j);
    cloud_close(c);
    rig_close(&r);
}

static void cloud_partial_failure_keeps_the_text_and_does_not_fall_back(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream",
                   "data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\n", ANS_CUT}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 2);
    cloud *c = pool_open(&r.b, NULL, 0, 1, 1, NAN);
    sched_backend be = cloud_backend(c);
    sched_job *j = chat_job();
    waiter w;
    submit_and_wait(be, j, &w);
    assert_int_equal(j->status, SCHED_EREMOTE);
    assert_int_equal(j->finish, SCHED_FINISH_ERROR);
    assert_int_equal(j->route, STORE_ROUTE_CLOUD);
    assert_string_equal(w.text, "half");
    assert_non_null(strstr(j->err, "after part of its reply"));
    assert_true(j->remote_error[0] != '\0'); /* for the response's outpost.remote */
    sched_job_free(j);
    cloud_close(c);
    rig_close(&r);
}

static void cloud_refuses_at_once_when_busy_or_over_budget(void **state)
{
    (void)state;
    answer a[] = {{200, "text/event-stream", ok_stream, ANS_HOLD}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 0);
    cloud *c = pool_open(&r.b, NULL, 0, 1, -1, NAN); /* one call, no queue */
    sched_backend be = cloud_backend(c);
    sched_job *j1 = chat_job(), *j2 = chat_job();
    waiter w1;
    w_init(&w1, j1);
    j2->route = STORE_ROUTE_CLOUD;
    char err[256];
    assert_int_equal(be.submit(be.ud, j1, err), SCHED_OK);
    /* The one thread has j1 (running, or queued for it): no room for j2. */
    assert_int_equal(be.submit(be.ud, j2, err), SCHED_EFULL);
    assert_int_equal(j2->route, STORE_ROUTE_LOCAL);
    assert_string_equal(j2->reason, "cloud_busy");
    atomic_store(&srv.release, true);
    w_wait(&w1);
    assert_string_equal(w1.text, "Hi there");
    cloud_close(c);

    /* A budget of 0 means never. */
    c = pool_open(&r.b, NULL, 0, 1, 1, 0.0);
    be = cloud_backend(c);
    sched_job *j3 = chat_job();
    j3->route = STORE_ROUTE_CLOUD;
    assert_int_equal(be.submit(be.ud, j3, err), SCHED_ECLOSED);
    assert_int_equal(j3->route, STORE_ROUTE_LOCAL);
    assert_string_equal(j3->reason, "over_budget");
    cloud_facts f;
    cloud_get_facts(c, &f);
    assert_int_equal(f.refused, 1);
    cloud_close(c);
    sched_job_free(j1);
    sched_job_free(j2);
    sched_job_free(j3);
    rig_close(&r);
}

static void cloud_failure_before_text_falls_back_to_the_local_model(void **state)
{
    (void)state;
    char err[256];
    answer a[] = {{500, "application/json", "{\"error\":{\"message\":\"exploded\"}}", ANS_WHOLE}};
    rig r;
    rig_open(&r, a, 1, "cloud", "/v1", 0);
    sched_opts so = {.name = "stories260K", .path = OUTPOST_SHARED "/models/stories260K.gguf",
                     .n_ctx = 256, .n_threads = 1, .queue_max = 4, .max_tokens_default = 8};
    sched *s = NULL;
    if (sched_open(&s, &so, err))
        fail_msg("%s", err);
    cloud *c = pool_open(&r.b, &s, 1, 1, 1, NAN);
    sched_backend be = cloud_backend(c);
    sched_job *j = sched_job_new();
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_USER, "Tell me a story", 15), SCHED_OK);
    snprintf(j->model, sizeof j->model, "stories260K");
    j->max_tokens = 8;
    j->sampling.temp = 0;
    assert_int_equal(sched_prepare(s, j, err), SCHED_OK);
    waiter w;
    submit_and_wait(be, j, &w);
    assert_int_equal(srv.n_requests, 1);
    assert_int_equal(j->status, SCHED_OK);
    assert_int_equal(j->route, STORE_ROUTE_LOCAL);
    assert_string_equal(j->reason, "cloud_unreachable");
    assert_non_null(strstr(j->remote_error, "exploded")); /* the fallback's cause */
    assert_true(w.len > 0);
    assert_string_equal(w.text, j->text); /* one answer, the local one */
    assert_true(j->completion_tokens > 0);
    assert_true(j->cost_usd == 0);
    cloud_facts f;
    cloud_get_facts(c, &f);
    assert_int_equal(f.fallbacks, 1);
    assert_int_equal(f.calls_failed, 1);
    cloud_close(c);
    sched_job_free(j);
    rig_close(&r);

    /* A target whose probe fails is refused at once, without a connect; the
     * caller (http.c) answers locally with reason cloud_unreachable. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", closed_port());
    backend b;
    backend_open(&b, "cloud", url, 0);
    c = pool_open(&b, &s, 1, 1, 1, NAN);
    be = cloud_backend(c);
    for (;;) { /* until the first probe has finished */
        cloud_get_facts(c, &f);
        if (f.probed)
            break;
        usleep(1000);
    }
    assert_false(f.online);
    assert_true(isnan(f.rtt_ms));
    sched_job *j2 = chat_job();
    j2->route = STORE_ROUTE_CLOUD;
    assert_int_equal(be.submit(be.ud, j2, err), SCHED_ECLOSED);
    assert_int_equal(j2->route, STORE_ROUTE_CLOUD); /* left for the caller's reason */
    assert_non_null(strstr(err, "unreachable"));
    cloud_close(c);
    sched_close(s);
    sched_job_free(j2);
    backend_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sse_relays_deltas_usage_and_outpost_object),
        cmocka_unit_test(sse_gives_the_same_reply_whatever_the_network_splits),
        cmocka_unit_test(sse_takes_crlf_cr_bom_fields_and_multiline_data),
        cmocka_unit_test(sse_dispatches_an_event_left_open_at_the_end),
        cmocka_unit_test(sse_refuses_malformed_events_with_one_line),
        cmocka_unit_test(sse_error_event_is_a_remote_error),
        cmocka_unit_test(sse_bounds_an_event_that_never_ends),
        cmocka_unit_test(sse_receiver_can_stop_the_stream),
        cmocka_unit_test(sse_drops_nul_bytes_from_text),
        cmocka_unit_test(whole_reply_is_read_as_one_object),
        cmocka_unit_test(request_json_carries_conversation_and_sampling),
        cmocka_unit_test(request_json_refuses_what_is_not_utf8),
        cmocka_unit_test(job_becomes_the_whole_conversation_as_copies),
        cmocka_unit_test(hooks_redact_with_the_real_plugin_only_when_asked),
        cmocka_unit_test(cost_and_month_start),
        cmocka_unit_test(backend_streams_and_sends_key_body_and_path),
        cmocka_unit_test(backend_retries_503_and_429_then_succeeds),
        cmocka_unit_test(backend_backoff_pause_is_bounded_by_the_call_timeout),
        cmocka_unit_test(backend_does_not_retry_a_client_error),
        cmocka_unit_test(backend_cut_after_text_is_partial_and_not_retried),
        cmocka_unit_test(backend_reads_a_whole_json_reply_and_refuses_garbage),
        cmocka_unit_test(backend_unreachable_is_retried_then_reported),
        cmocka_unit_test(backend_stops_waiting_when_the_caller_cancels),
        cmocka_unit_test(cloud_job_streams_to_the_sink_and_counts_cost),
        cmocka_unit_test(cloud_partial_failure_keeps_the_text_and_does_not_fall_back),
        cmocka_unit_test(cloud_refuses_at_once_when_busy_or_over_budget),
        cmocka_unit_test(cloud_failure_before_text_falls_back_to_the_local_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
