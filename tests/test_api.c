/*
 * test_api.c - the OpenAI request parser and response builders (agent/api.c).
 *
 * Valid bodies of every shape must parse into the expected fields; every
 * malformed field must be refused with its exact one-line message; every
 * built JSON text must parse back (with jansson) into the fields it was
 * built from.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <math.h>

#include "api.h"

/* ---- helpers -------------------------------------------------------------- */

static api_request parse_ok(api_kind kind, const char *body)
{
    api_request r;
    char err[256] = "";
    int rc = kind == API_CHAT ? api_parse_chat(body, strlen(body), NULL, &r, err)
                              : api_parse_completion(body, strlen(body), NULL, &r, err);
    if (rc != API_OK)
        fail_msg("refused (%d): %s\nbody: %s", rc, err, body);
    return r;
}

/* Parses with lim, expects rc and, when want is not NULL, exactly that line
 * (or, when want starts with '~', a line containing the rest). */
static void expect_lim(api_kind kind, const api_limits *lim, const char *body, size_t len, int rc,
                       const char *want)
{
    api_request r;
    memset(&r, 0x5A, sizeof r);
    char err[256] = "";
    int got = kind == API_CHAT ? api_parse_chat(body, len, lim, &r, err)
                               : api_parse_completion(body, len, lim, &r, err);
    if (got != rc)
        fail_msg("rc %d, want %d (%s)\nbody: %.200s", got, rc, err, body);
    if (want && want[0] == '~') {
        if (!strstr(err, want + 1))
            fail_msg("error \"%s\" lacks \"%s\"", err, want + 1);
    } else if (want && strcmp(err, want) != 0) {
        fail_msg("error:\n got: %s\nwant: %s", err, want);
    }
    /* One line of valid UTF-8, and the request left empty. */
    assert_true(err[0] != '\0');
    for (const char *p = err; *p; p++)
        assert_true((unsigned char)*p >= 0x20);
    json_t *line = json_string(err);
    if (!line)
        fail_msg("error line is not valid UTF-8: %s", err);
    json_decref(line);
    assert_null(r.messages);
    assert_null(r.prompt);
    assert_null(r.stop);
    assert_int_equal(r.n_messages, 0);
}

static void expect_err(api_kind kind, const char *body, int rc, const char *want)
{
    expect_lim(kind, NULL, body, strlen(body), rc, want);
}

static void chat_err(const char *body, int rc, const char *want)
{
    expect_err(API_CHAT, body, rc, want);
}

#define USER_HI "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static json_t *load(const char *json)
{
    json_error_t je;
    json_t *j = json_loads(json, 0, &je);
    if (!j)
        fail_msg("built JSON does not parse: %s\n%s", je.text, json);
    return j;
}

static const char *jget_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("\"%s\" is not a string", key);
    return json_string_value(v);
}

static json_int_t jget_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

/* ---- valid requests ---------------------------------------------------------- */

static void chat_minimal_request_takes_defaults(void **state)
{
    (void)state;
    api_request r = parse_ok(API_CHAT, "{" USER_HI "}");
    assert_int_equal(r.kind, API_CHAT);
    assert_string_equal(r.model, "default");
    assert_int_equal(r.n_messages, 1);
    assert_int_equal(r.messages[0].role, STORE_ROLE_USER);
    assert_string_equal(r.messages[0].content, "hi");
    assert_int_equal(r.messages[0].content_len, 2);
    assert_int_equal(r.max_tokens, 0);
    assert_true(r.sampling.temperature == 1.0);
    assert_true(r.sampling.top_p == 1.0);
    assert_int_equal(r.sampling.top_k, 0);
    assert_true(r.sampling.repeat_penalty == 1.0);
    assert_false(r.has_seed);
    assert_int_equal(r.n_stop, 0);
    assert_false(r.stream);
    assert_false(r.include_usage);
    assert_string_equal(r.user, "");
    assert_string_equal(r.outpost.session, "");
    assert_int_equal(r.outpost.route, POL_TARGET_AUTO);
    assert_int_equal(r.outpost.privacy, POL_PRIVACY_NORMAL);
    assert_int_equal(r.outpost.max_latency_ms, -1);
    assert_null(r.prompt);
    api_request_free(&r);
    api_request_free(&r); /* safe twice */
}

static const char full_chat[] =
    "{\"model\":\"tiny\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"developer\",\"content\":\"Use English.\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello\"},"
    "{\"type\":\"text\",\"text\":\"there\"}],\"name\":\"ann\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
    "{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"x\"},"
    "{\"role\":\"user\",\"content\":\"caf\\u00e9 \\ud83d\\ude00\"}],"
    "\"max_tokens\":64,\"temperature\":0.25,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
    "\"repeat_penalty\":1.1,\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
    "\"seed\":-1,\"stop\":[\"\\n\\n\",\"\",\"END\"],\"stream\":true,"
    "\"stream_options\":{\"include_usage\":true},\"n\":1,\"user\":\"u-1\","
    "\"tools\":[],\"logprobs\":false,\"response_format\":{\"type\":\"text\"},"
    "\"logit_bias\":{},\"future_field\":{\"deep\":[1,2,{\"x\":null}]},"
    "\"outpost\":{\"session\":\"0123abcd-x_y\",\"route\":\"local\","
    "\"privacy\":\"private\",\"max_latency_ms\":250}}";

static void chat_full_request_parses_every_field(void **state)
{
    (void)state;
    api_request r = parse_ok(API_CHAT, full_chat);
    assert_string_equal(r.model, "tiny");
    assert_int_equal(r.n_messages, 6);
    assert_int_equal(r.messages[0].role, STORE_ROLE_SYSTEM);
    assert_int_equal(r.messages[1].role, STORE_ROLE_SYSTEM); /* developer */
    assert_string_equal(r.messages[1].content, "Use English.");
    assert_int_equal(r.messages[2].role, STORE_ROLE_USER);
    assert_string_equal(r.messages[2].content, "Hello\nthere");
    assert_int_equal(r.messages[2].content_len, 11);
    assert_int_equal(r.messages[3].role, STORE_ROLE_ASSISTANT);
    assert_string_equal(r.messages[3].content, "");
    assert_int_equal(r.messages[4].role, STORE_ROLE_TOOL);
    assert_string_equal(r.messages[5].content, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    assert_int_equal(r.max_tokens, 64);
    assert_true(r.sampling.temperature == 0.25);
    assert_true(r.sampling.top_p == 0.9);
    assert_int_equal(r.sampling.top_k, 40);
    assert_true(r.sampling.min_p == 0.05);
    assert_true(r.sampling.repeat_penalty == 1.1);
    assert_true(r.sampling.presence_penalty == 0.5);
    assert_true(r.sampling.frequency_penalty == -0.5);
    assert_true(r.has_seed);
    assert_true(r.seed == UINT64_MAX); /* -1 as two's complement */
    assert_int_equal(r.n_stop, 2);      /* the empty one is dropped */
    assert_string_equal(r.stop[0], "\n\n");
    assert_string_equal(r.stop[1], "END");
    assert_true(r.stream);
    assert_true(r.include_usage);
    assert_string_equal(r.user, "u-1");
    assert_string_equal(r.outpost.session, "0123abcd-x_y");
    assert_int_equal(r.outpost.route, POL_TARGET_LOCAL);
    assert_int_equal(r.outpost.privacy, POL_PRIVACY_PRIVATE);
    assert_int_equal(r.outpost.max_latency_ms, 250);
    api_request_free(&r);
}

static void chat_accepts_number_and_null_variants(void **state)
{
    (void)state;
    /* max_completion_tokens alone, an integral real, null as "not set". */
    api_request r = parse_ok(API_CHAT, "{" USER_HI ",\"max_completion_tokens\":256.0,"
                                       "\"temperature\":0,\"seed\":null,\"stop\":null,"
                                       "\"model\":null,\"outpost\":{\"route\":null,\"session\":null}}");
    assert_int_equal(r.max_tokens, 256);
    assert_true(r.sampling.temperature == 0.0);
    assert_false(r.has_seed);
    assert_string_equal(r.model, "default");
    assert_int_equal(r.outpost.route, POL_TARGET_AUTO);
    api_request_free(&r);
    /* Both token limits, equal; a single stop string; the cloud route. */
    r = parse_ok(API_CHAT, "{" USER_HI ",\"max_tokens\":9,\"max_completion_tokens\":9,"
                           "\"stop\":\"###\",\"seed\":9007199254740993,"
                           "\"outpost\":{\"route\":\"cloud\",\"privacy\":\"normal\"}}");
    assert_int_equal(r.max_tokens, 9);
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "###");
    assert_true(r.seed == 9007199254740993ull); /* exact beyond 2^53 */
    assert_int_equal(r.outpost.route, POL_TARGET_CLOUD);
    api_request_free(&r);
}

static void completion_prompt_shapes_parse(void **state)
{
    (void)state;
    api_request r = parse_ok(API_COMPLETION, "{\"model\":\"m\",\"prompt\":\"Once upon\","
                                             "\"max_tokens\":16,\"echo\":false,\"logprobs\":0,"
                                             "\"best_of\":1,\"suffix\":\"\"}");
    assert_int_equal(r.kind, API_COMPLETION);
    assert_string_equal(r.prompt, "Once upon");
    assert_int_equal(r.prompt_len, 9);
    assert_null(r.messages);
    api_request_free(&r);
    r = parse_ok(API_COMPLETION, "{\"prompt\":[\"only one\"]}");
    assert_string_equal(r.prompt, "only one");
    api_request_free(&r);
    r = parse_ok(API_COMPLETION, "{\"prompt\":\"\"}");
    assert_string_equal(r.prompt, "");
    assert_int_equal(r.prompt_len, 0);
    api_request_free(&r);
}

static void body_need_not_be_nul_terminated(void **state)
{
    (void)state;
    const char buf[] = "{\"prompt\":\"abc\"}GARBAGE";
    api_request r;
    char err[256];
    assert_int_equal(api_parse_completion(buf, 16, NULL, &r, err), API_OK);
    assert_string_equal(r.prompt, "abc");
    api_request_free(&r);
}

static void limits_and_sampling_defaults_come_from_the_caller(void **state)
{
    (void)state;
    api_limits lim;
    api_limits_default(&lim);
    lim.max_messages = 2;
    lim.max_content_bytes = 8;
    lim.max_tokens = 100;
    lim.max_stop = 1;
    lim.max_stop_bytes = 3;
    lim.defaults.temperature = 0.8;
    lim.defaults.top_k = 40;
    const char *ok = "{\"messages\":[{\"role\":\"user\",\"content\":\"12345678\"}],\"max_tokens\":100}";
    api_request r;
    char err[256];
    assert_int_equal(api_parse_chat(ok, strlen(ok), &lim, &r, err), API_OK);
    assert_true(r.sampling.temperature == 0.8);
    assert_int_equal(r.sampling.top_k, 40);
    api_request_free(&r);

    const char *b1 = "{\"messages\":[{\"role\":\"user\",\"content\":\"123456789\"}]}";
    expect_lim(API_CHAT, &lim, b1, strlen(b1), API_EINVAL,
               "messages[0].content: 9 bytes; at most 8 allowed");
    const char *b2 = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
                     "\"content\":\"b\"},{\"role\":\"user\",\"content\":\"c\"}]}";
    expect_lim(API_CHAT, &lim, b2, strlen(b2), API_EINVAL, "messages: 3 messages; at most 2 allowed");
    const char *b3 = "{" USER_HI ",\"max_tokens\":101}";
    expect_lim(API_CHAT, &lim, b3, strlen(b3), API_EINVAL,
               "max_tokens: must be between 1 and 100; got 101");
    const char *b4 = "{" USER_HI ",\"stop\":[\"a\",\"b\"]}";
    expect_lim(API_CHAT, &lim, b4, strlen(b4), API_EINVAL, "stop: 2 strings; at most 1 allowed");
    const char *b5 = "{" USER_HI ",\"stop\":\"abcd\"}";
    expect_lim(API_CHAT, &lim, b5, strlen(b5), API_EINVAL, "stop: 4 bytes; at most 3 allowed");
    const char *b6 = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                     "\"1234\"},{\"type\":\"text\",\"text\":\"5678\"}]}]}";
    expect_lim(API_CHAT, &lim, b6, strlen(b6), API_EINVAL,
               "messages[0].content: more than 8 bytes of text");
    const char *b7 = "{\"prompt\":\"123456789\"}";
    expect_lim(API_COMPLETION, &lim, b7, strlen(b7), API_EINVAL,
               "prompt: 9 bytes; at most 8 allowed");

    /* Zeroed limits fall back to the defaults rather than refusing all. */
    api_limits zero = lim;
    zero.max_messages = 0;
    zero.max_tokens = 0;
    zero.max_content_bytes = 0;
    assert_int_equal(api_parse_chat(b2, strlen(b2), &zero, &r, err), API_OK);
    api_request_free(&r);
}

/* ---- malformed bodies ----------------------------------------------------------- */

static void invalid_json_is_refused_with_position(void **state)
{
    (void)state;
    chat_err("{\"messages\": [", API_EJSON, "~body: invalid JSON at line 1");
    chat_err("", API_EJSON, "~body: invalid JSON");
    chat_err("{\"a\":1} trailing", API_EJSON, "~body: invalid JSON");
    chat_err("{'single': 1}", API_EJSON, "~body: invalid JSON");
    chat_err("{\"a\":\"\\u0000\"}", API_EJSON, "~body: invalid JSON"); /* NUL in a string */
    chat_err("{\"a\":\"\xff\"}", API_EJSON, "~body: invalid JSON");    /* not UTF-8 */
    chat_err("{\"model\":\"a\",\"model\":\"b\"," USER_HI "}", API_EJSON, "~duplicate");
    /* jansson quotes the body near a bad escape, here a lone lead byte that
     * must not reach the error line (found by fuzz_api). */
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":\"caf \\ud8\xcd\x9b\xa3\"}]}",
             API_EJSON, "~invalid escape near '\"caf \\ud8?'");
    /* A raw newline in a string must not make the error two lines. */
    chat_err("{\"a\":\"x\ny\"}", API_EJSON, "~body: invalid JSON");
    api_request r;
    char err[256];
    assert_int_equal(api_parse_chat(NULL, 0, NULL, &r, err), API_EJSON);
    assert_int_equal(api_parse_chat(NULL, 5, NULL, &r, err), API_EJSON);
}

static void non_object_body_is_refused(void **state)
{
    (void)state;
    chat_err("[1,2]", API_EJSON, "body: expected a JSON object, got an array");
    chat_err("\"text\"", API_EJSON, "~body: invalid JSON");
    chat_err("42", API_EJSON, "~body: invalid JSON");
    chat_err("null", API_EJSON, "~body: invalid JSON");
}

static void deeply_nested_json_is_refused_before_decoding(void **state)
{
    (void)state;
    size_t depth = 100000;
    char *b = malloc(2 * depth + 64);
    size_t o = (size_t)sprintf(b, "{" USER_HI ",\"x\":");
    for (size_t i = 0; i < depth; i++)
        b[o++] = '[';
    for (size_t i = 0; i < depth; i++)
        b[o++] = ']';
    b[o++] = '}';
    b[o] = '\0';
    chat_err(b, API_EJSON, "body: JSON nested deeper than 32 levels");
    free(b);
    /* Brackets inside strings are text, not nesting. */
    char s[400];
    o = (size_t)sprintf(s, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 100; i++)
        s[o++] = '[';
    o += (size_t)sprintf(s + o, "\\\"{{{{\"}]}");
    api_request r = parse_ok(API_CHAT, s);
    assert_int_equal(r.messages[0].content_len, 105);
    api_request_free(&r);
    /* The object and 31 arrays in it are 32 levels, fine; one more is not. */
    for (int extra = 0; extra < 2; extra++) {
        char d[200];
        o = (size_t)sprintf(d, "{" USER_HI ",\"x\":");
        for (int i = 0; i < 31 + extra; i++)
            d[o++] = '[';
        for (int i = 0; i < 31 + extra; i++)
            d[o++] = ']';
        d[o++] = '}';
        d[o] = '\0';
        if (extra == 0) {
            r = parse_ok(API_CHAT, d);
            api_request_free(&r);
        } else {
            chat_err(d, API_EJSON, "body: JSON nested deeper than 32 levels");
        }
    }
}

static void huge_numbers_name_their_field(void **state)
{
    (void)state;
    chat_err("{" USER_HI ",\"max_tokens\":1e300}", API_EINVAL,
             "max_tokens: must be between 1 and 4096; got 1e+300");
    chat_err("{" USER_HI ",\"max_tokens\":123456789012345678901234567890}", API_EINVAL,
             "max_tokens: must be between 1 and 4096; got 1.23457e+29");
    chat_err("{" USER_HI ",\"seed\":99999999999999999999}", API_EINVAL,
             "seed: must be between -9223372036854775808 and 9223372036854775807; got 1e+20");
    chat_err("{" USER_HI ",\"temperature\":1e999}", API_EJSON, "~real number overflow");
    chat_err("{" USER_HI ",\"top_k\":2147483648}", API_EINVAL,
             "top_k: must be between 0 and 1000000; got 2147483648");
    /* A huge integer in a field we ignore does not sink the request. */
    api_request r = parse_ok(API_CHAT, "{" USER_HI ",\"unknown\":123456789012345678901234567890}");
    assert_int_equal(r.n_messages, 1);
    api_request_free(&r);
}

static void messages_errors_name_the_field(void **state)
{
    (void)state;
    chat_err("{}", API_EINVAL, "messages: required");
    chat_err("{\"messages\":null}", API_EINVAL, "messages: required");
    chat_err("{\"messages\":{}}", API_EINVAL, "messages: expected an array, got an object");
    chat_err("{\"messages\":[]}", API_EINVAL, "messages: must contain at least one message");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},\"hi\"]}", API_EINVAL,
             "messages[1]: expected an object, got \"hi\"");
    chat_err("{\"messages\":[{\"content\":\"a\"}]}", API_EINVAL, "messages[0].role: required");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":"
             "\"b\"},{\"role\":\"robot\",\"content\":\"c\"}]}",
             API_EINVAL, "messages[2].role: expected one of system, user, assistant, tool; got \"robot\"");
    chat_err("{\"messages\":[{\"role\":5,\"content\":\"a\"}]}", API_EINVAL,
             "messages[0].role: expected one of system, user, assistant, tool; got 5");
    chat_err("{\"messages\":[{\"role\":\"User\",\"content\":\"a\"}]}", API_EINVAL,
             "messages[0].role: expected one of system, user, assistant, tool; got \"User\"");
    chat_err("{\"messages\":[{\"role\":\"user\"}]}", API_EINVAL, "messages[0].content: required");
    chat_err("{\"messages\":[{\"role\":\"system\",\"content\":null}]}", API_EINVAL,
             "messages[0].content: required");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":42}]}", API_EINVAL,
             "messages[0].content: expected a string or an array of text parts, got 42");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}", API_EINVAL,
             "messages[0].content[0]: expected an object like {\"type\": \"text\", \"text\": "
             "\"...\"}, got \"x\"");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}", API_EINVAL,
             "messages[0].content[0].type: required");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x\"}}]}]}",
             API_EUNSUPPORTED,
             "messages[0].content[1].type: only \"text\" parts are supported; got \"image_url\"");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", API_EINVAL,
             "messages[0].content[0].text: required");
    chat_err("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":[]}]}]}",
             API_EINVAL, "messages[0].content[0].text: expected a string, got an array");
    chat_err("{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":"
             "\"c1\"}]}]}",
             API_EUNSUPPORTED, "messages[0].tool_calls: tool calls are not supported");
}

static void error_lines_quote_values_safely(void **state)
{
    (void)state;
    /* Control characters are escaped, long values cut with "...", quotes escaped. */
    chat_err("{\"messages\":[{\"role\":\"ro\\nb\\\"ot\\u0001\",\"content\":\"a\"}]}", API_EINVAL,
             "messages[0].role: expected one of system, user, assistant, tool; got "
             "\"ro\\nb\\\"ot\\x01\"");
    char body[512];
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"%s\",\"content\":\"a\"}]}",
             "0123456789012345678901234567890123456789TAIL");
    chat_err(body, API_EINVAL,
             "messages[0].role: expected one of system, user, assistant, tool; got "
             "\"0123456789012345678901234567890123456789\"...");
    /* A cut never splits a character: 39 ASCII bytes then a 2-byte letter. */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"%s\xc3\xa9xyz\",\"content\":\"a\"}]}",
             "012345678901234567890123456789012345678");
    chat_err(body, API_EINVAL,
             "messages[0].role: expected one of system, user, assistant, tool; got "
             "\"012345678901234567890123456789012345678\"...");
}

static void model_and_user_errors(void **state)
{
    (void)state;
    chat_err("{\"model\":7," USER_HI "}", API_EINVAL, "model: expected a string, got 7");
    chat_err("{\"model\":\"\"," USER_HI "}", API_EINVAL,
             "model: expected a model name of 1 to 127 bytes, got \"\"");
    chat_err("{\"model\":\"a\\tb\"," USER_HI "}", API_EINVAL,
             "model: expected a model name of 1 to 127 bytes, got \"a\\tb\"");
    char body[600];
    char name[200];
    memset(name, 'm', 128);
    name[128] = '\0';
    snprintf(body, sizeof body, "{\"model\":\"%s\"," USER_HI "}", name);
    chat_err(body, API_EINVAL, "~model: expected a model name of 1 to 127 bytes");
    chat_err("{" USER_HI ",\"user\":[]}", API_EINVAL, "user: expected a string, got an array");
    char u[300];
    memset(u, 'u', 257);
    u[257] = '\0';
    snprintf(body, sizeof body, "{" USER_HI ",\"user\":\"%s\"}", u);
    chat_err(body, API_EINVAL, "user: 257 bytes; at most 256 allowed");
}

static void number_fields_check_type_and_range(void **state)
{
    (void)state;
    chat_err("{" USER_HI ",\"max_tokens\":0}", API_EINVAL,
             "max_tokens: must be between 1 and 4096; got 0");
    chat_err("{" USER_HI ",\"max_tokens\":-1}", API_EINVAL,
             "max_tokens: must be between 1 and 4096; got -1");
    chat_err("{" USER_HI ",\"max_tokens\":5000}", API_EINVAL,
             "max_tokens: must be between 1 and 4096; got 5000");
    chat_err("{" USER_HI ",\"max_tokens\":2.5}", API_EINVAL,
             "max_tokens: expected an integer, got 2.5");
    chat_err("{" USER_HI ",\"max_tokens\":\"100\"}", API_EINVAL,
             "max_tokens: expected an integer, got \"100\"");
    chat_err("{" USER_HI ",\"max_completion_tokens\":true}", API_EINVAL,
             "max_completion_tokens: expected an integer, got true");
    chat_err("{" USER_HI ",\"max_tokens\":10,\"max_completion_tokens\":20}", API_EINVAL,
             "max_tokens: 10 conflicts with max_completion_tokens: 20");
    chat_err("{" USER_HI ",\"temperature\":-0.1}", API_EINVAL,
             "temperature: must be between 0 and 2; got -0.1");
    chat_err("{" USER_HI ",\"temperature\":2.5}", API_EINVAL,
             "temperature: must be between 0 and 2; got 2.5");
    chat_err("{" USER_HI ",\"temperature\":\"hot\"}", API_EINVAL,
             "temperature: expected a number, got \"hot\"");
    chat_err("{" USER_HI ",\"top_p\":1.5}", API_EINVAL, "top_p: must be between 0 and 1; got 1.5");
    chat_err("{" USER_HI ",\"top_k\":-1}", API_EINVAL,
             "top_k: must be between 0 and 1000000; got -1");
    chat_err("{" USER_HI ",\"min_p\":2}", API_EINVAL, "min_p: must be between 0 and 1; got 2");
    chat_err("{" USER_HI ",\"repeat_penalty\":0}", API_EINVAL,
             "repeat_penalty: must be greater than 0; got 0");
    chat_err("{" USER_HI ",\"repeat_penalty\":3}", API_EINVAL,
             "repeat_penalty: must be between 0 and 2; got 3");
    chat_err("{" USER_HI ",\"presence_penalty\":3}", API_EINVAL,
             "presence_penalty: must be between -2 and 2; got 3");
    chat_err("{" USER_HI ",\"frequency_penalty\":-2.5}", API_EINVAL,
             "frequency_penalty: must be between -2 and 2; got -2.5");
    chat_err("{" USER_HI ",\"seed\":1.5}", API_EINVAL, "seed: expected an integer, got 1.5");
    chat_err("{" USER_HI ",\"seed\":\"7\"}", API_EINVAL, "seed: expected an integer, got \"7\"");
}

static void stop_and_stream_errors(void **state)
{
    (void)state;
    chat_err("{" USER_HI ",\"stop\":5}", API_EINVAL,
             "stop: expected a string or an array of strings, got 5");
    chat_err("{" USER_HI ",\"stop\":[\"a\",5]}", API_EINVAL, "stop[1]: expected a string, got 5");
    chat_err("{" USER_HI ",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
             "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
             API_EINVAL, "stop: 17 strings; at most 16 allowed");
    chat_err("{" USER_HI ",\"stream\":\"yes\"}", API_EINVAL,
             "stream: expected true or false, got \"yes\"");
    chat_err("{" USER_HI ",\"stream_options\":{\"include_usage\":true}}", API_EINVAL,
             "stream_options: only allowed when stream is true");
    chat_err("{" USER_HI ",\"stream\":true,\"stream_options\":[]}", API_EINVAL,
             "stream_options: expected an object, got an array");
    chat_err("{" USER_HI ",\"stream\":true,\"stream_options\":{\"include_usage\":1}}", API_EINVAL,
             "stream_options.include_usage: expected true or false, got 1");
}

static void unsupported_features_are_refused_not_ignored(void **state)
{
    (void)state;
    chat_err("{" USER_HI ",\"n\":3}", API_EUNSUPPORTED,
             "n: only 1 choice per request is supported; got 3");
    chat_err("{" USER_HI ",\"n\":0}", API_EINVAL, "n: must be at least 1; got 0");
    chat_err("{" USER_HI ",\"n\":\"2\"}", API_EINVAL, "n: expected an integer, got \"2\"");
    chat_err("{" USER_HI ",\"tools\":[{\"type\":\"function\"}]}", API_EUNSUPPORTED,
             "tools: function calling is not supported");
    chat_err("{" USER_HI ",\"tools\":{}}", API_EINVAL, "tools: expected an array, got an object");
    chat_err("{" USER_HI ",\"functions\":[{}]}", API_EUNSUPPORTED,
             "functions: function calling is not supported");
    chat_err("{" USER_HI ",\"logprobs\":true}", API_EUNSUPPORTED,
             "logprobs: log probabilities are not supported");
    chat_err("{" USER_HI ",\"top_logprobs\":2}", API_EUNSUPPORTED,
             "top_logprobs: log probabilities are not supported");
    chat_err("{" USER_HI ",\"logit_bias\":{\"50256\":-100}}", API_EUNSUPPORTED,
             "logit_bias: not supported");
    chat_err("{" USER_HI ",\"response_format\":{\"type\":\"json_object\"}}", API_EUNSUPPORTED,
             "response_format.type: only \"text\" is supported; got \"json_object\"");
    chat_err("{" USER_HI ",\"response_format\":{}}", API_EINVAL,
             "response_format.type: expected a string, got null");
    expect_err(API_COMPLETION, "{\"prompt\":\"a\",\"echo\":true}", API_EUNSUPPORTED,
               "echo: echoing the prompt is not supported");
    expect_err(API_COMPLETION, "{\"prompt\":\"a\",\"suffix\":\"z\"}", API_EUNSUPPORTED,
               "suffix: insertion is not supported");
    expect_err(API_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":5}", API_EUNSUPPORTED,
               "logprobs: log probabilities are not supported");
    expect_err(API_COMPLETION, "{\"prompt\":\"a\",\"best_of\":2}", API_EUNSUPPORTED,
               "best_of: only 1 is supported; got 2");
}

static void outpost_object_errors(void **state)
{
    (void)state;
    chat_err("{" USER_HI ",\"outpost\":[]}", API_EINVAL, "outpost: expected an object, got an array");
    chat_err("{" USER_HI ",\"outpost\":{\"route\":\"moon\"}}", API_EINVAL,
             "outpost.route: expected one of auto, local, peer, cloud; got \"moon\"");
    chat_err("{" USER_HI ",\"outpost\":{\"route\":1}}", API_EINVAL,
             "outpost.route: expected one of auto, local, peer, cloud; got 1");
    chat_err("{" USER_HI ",\"outpost\":{\"privacy\":\"secret\"}}", API_EINVAL,
             "outpost.privacy: expected one of normal, private; got \"secret\"");
    chat_err("{" USER_HI ",\"outpost\":{\"max_latency_ms\":0}}", API_EINVAL,
             "outpost.max_latency_ms: must be between 1 and 86400000; got 0");
    chat_err("{" USER_HI ",\"outpost\":{\"max_latency_ms\":\"fast\"}}", API_EINVAL,
             "outpost.max_latency_ms: expected an integer, got \"fast\"");
    chat_err("{" USER_HI ",\"outpost\":{\"session\":\"a b\"}}", API_EINVAL,
             "outpost.session: expected an id of 1 to 127 letters, digits, '-' or '_', "
             "got \"a b\"");
    chat_err("{" USER_HI ",\"outpost\":{\"session\":\"\"}}", API_EINVAL,
             "~outpost.session: expected an id");
    chat_err("{" USER_HI ",\"outpost\":{\"session\":\"../../etc\"}}", API_EINVAL,
             "~outpost.session: expected an id");
    chat_err("{" USER_HI ",\"outpost\":{\"session\":\"..\"}}", API_EINVAL,
             "~outpost.session: expected an id");
    chat_err("{" USER_HI ",\"outpost\":{\"sesion\":\"abc\"}}", API_EINVAL,
             "outpost: unknown field \"sesion\" (known: session, route, privacy, max_latency_ms)");
}

static void completion_prompt_errors(void **state)
{
    (void)state;
    expect_err(API_COMPLETION, "{}", API_EINVAL, "prompt: required");
    expect_err(API_COMPLETION, "{\"prompt\":[]}", API_EINVAL, "prompt: must not be an empty array");
    expect_err(API_COMPLETION, "{\"prompt\":[\"a\",\"b\",\"c\"]}", API_EUNSUPPORTED,
               "prompt: 3 prompts in one request; only one is supported");
    expect_err(API_COMPLETION, "{\"prompt\":[1,2,3]}", API_EUNSUPPORTED,
               "prompt: token arrays are not supported; send text");
    expect_err(API_COMPLETION, "{\"prompt\":[[1,2]]}", API_EUNSUPPORTED,
               "prompt: token arrays are not supported; send text");
    expect_err(API_COMPLETION, "{\"prompt\":7}", API_EINVAL,
               "prompt: expected a string or an array of one string, got 7");
    expect_err(API_COMPLETION, "{\"prompt\":[{}]}", API_EINVAL,
               "prompt[0]: expected a string or an array of one string, got an object");
    /* A chat body sent to /v1/completions says what is missing. */
    expect_err(API_COMPLETION, "{" USER_HI "}", API_EINVAL, "prompt: required");
}

static void error_status_and_code_per_result(void **state)
{
    (void)state;
    assert_int_equal(api_error_status(API_EJSON), 400);
    assert_int_equal(api_error_status(API_EINVAL), 400);
    assert_int_equal(api_error_status(API_EUNSUPPORTED), 400);
    assert_int_equal(api_error_status(API_ENOMEM), 500);
    assert_string_equal(api_error_code(API_EJSON), "invalid_json");
    assert_string_equal(api_error_code(API_EINVAL), "invalid_value");
    assert_string_equal(api_error_code(API_EUNSUPPORTED), "unsupported_value");
    assert_null(api_error_code(API_OK));
}

/* ---- relaying --------------------------------------------------------------------- */

static void request_json_round_trips(void **state)
{
    (void)state;
    api_request a = parse_ok(API_CHAT, full_chat);
    char *json = NULL;
    char err[256];
    assert_int_equal(api_request_json(&a, NULL, API_JSON_EXTENSIONS | API_JSON_OUTPOST, NULL,
                                      &json, err),
                     API_OK);
    api_request b = parse_ok(API_CHAT, json);
    assert_string_equal(b.model, a.model);
    assert_int_equal(b.n_messages, a.n_messages);
    for (size_t i = 0; i < a.n_messages; i++) {
        assert_int_equal(b.messages[i].role, a.messages[i].role);
        assert_int_equal(b.messages[i].content_len, a.messages[i].content_len);
        assert_memory_equal(b.messages[i].content, a.messages[i].content, a.messages[i].content_len);
    }
    assert_int_equal(b.max_tokens, a.max_tokens);
    assert_true(b.sampling.temperature == a.sampling.temperature);
    assert_true(b.sampling.top_p == a.sampling.top_p);
    assert_int_equal(b.sampling.top_k, a.sampling.top_k);
    assert_true(b.sampling.min_p == a.sampling.min_p);
    assert_true(b.sampling.repeat_penalty == a.sampling.repeat_penalty);
    assert_true(b.sampling.presence_penalty == a.sampling.presence_penalty);
    assert_true(b.sampling.frequency_penalty == a.sampling.frequency_penalty);
    assert_true(b.has_seed && b.seed == a.seed);
    assert_int_equal(b.n_stop, a.n_stop);
    assert_string_equal(b.stop[1], a.stop[1]);
    assert_true(b.stream && b.include_usage);
    assert_string_equal(b.user, a.user);
    assert_memory_equal(&b.outpost, &a.outpost, sizeof a.outpost);
    free(json);
    api_request_free(&b);

    /* For the cloud: another model name, no extensions, no outpost object. */
    assert_int_equal(api_request_json(&a, "gpt-4o-mini", 0, NULL, &json, err), API_OK);
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "model"), "gpt-4o-mini");
    assert_null(json_object_get(j, "top_k"));
    assert_null(json_object_get(j, "repeat_penalty"));
    assert_null(json_object_get(j, "outpost"));
    assert_int_equal(jget_int(j, "max_tokens"), 64);
    assert_string_equal(jget_str(json_array_get(json_object_get(j, "messages"), 1), "role"),
                        "system");
    json_decref(j);
    free(json);

    /* For a peer: the outpost object with the route pinned to local. */
    api_outpost o = a.outpost;
    o.route = POL_TARGET_LOCAL;
    o.max_latency_ms = -1;
    assert_int_equal(api_request_json(&a, NULL, API_JSON_OUTPOST, &o, &json, err), API_OK);
    b = parse_ok(API_CHAT, json);
    assert_int_equal(b.outpost.route, POL_TARGET_LOCAL);
    assert_int_equal(b.outpost.max_latency_ms, -1);
    assert_string_equal(b.outpost.session, a.outpost.session);
    api_request_free(&b);
    free(json);
    api_request_free(&a);

    api_request c = parse_ok(API_COMPLETION, "{\"prompt\":\"Once\",\"seed\":5}");
    assert_int_equal(api_request_json(&c, NULL, 0, NULL, &json, err), API_OK);
    api_request d = parse_ok(API_COMPLETION, json);
    assert_string_equal(d.prompt, "Once");
    assert_true(d.has_seed && d.seed == 5);
    assert_int_equal(d.max_tokens, 0);
    free(json);
    api_request_free(&c);
    api_request_free(&d);
}

/* ---- responses -------------------------------------------------------------------- */

static void chat_response_has_openai_shape_and_outpost(void **state)
{
    (void)state;
    api_served served = {.route = POL_TARGET_LOCAL, .reason = "private request",
                         .ttft_ms = 12.3456789, .cached_tokens = 17, .truncated = true,
                         .session = "sess-1"};
    api_result res = {"chatcmpl-abc", 1700000000, "tiny", "Hello \"world\"\n", 14,
                      API_FINISH_LENGTH, {20, 5}, &served};
    char *json = NULL;
    char err[256];
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    assert_null(strchr(json, '\n'));
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "id"), "chatcmpl-abc");
    assert_string_equal(jget_str(j, "object"), "chat.completion");
    assert_int_equal(jget_int(j, "created"), 1700000000);
    assert_string_equal(jget_str(j, "model"), "tiny");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 1);
    assert_int_equal(jget_int(ch, "index"), 0);
    assert_string_equal(jget_str(ch, "finish_reason"), "length");
    json_t *msg = json_object_get(ch, "message");
    assert_string_equal(jget_str(msg, "role"), "assistant");
    assert_string_equal(jget_str(msg, "content"), "Hello \"world\"\n");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(jget_int(u, "prompt_tokens"), 20);
    assert_int_equal(jget_int(u, "completion_tokens"), 5);
    assert_int_equal(jget_int(u, "total_tokens"), 25);
    json_t *o = json_object_get(j, "outpost");
    assert_string_equal(jget_str(o, "route"), "local");
    assert_string_equal(jget_str(o, "reason"), "private request");
    assert_true(fabs(json_real_value(json_object_get(o, "ttft_ms")) - 12.346) < 1e-9);
    assert_int_equal(jget_int(o, "cached_tokens"), 17);
    assert_true(json_is_true(json_object_get(o, "truncated")));
    assert_string_equal(json_string_value(json_object_get(o, "session")), "sess-1");
    assert_null(json_object_get(o, "remote")); /* answered here, no remote asked */
    json_decref(j);
    free(json);

    /* Unknown TTFT is null; no served info, no outpost object; stop reason. */
    served.ttft_ms = NAN;
    served.reason = NULL;
    res.finish = API_FINISH_STOP;
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    j = load(json);
    o = json_object_get(j, "outpost");
    assert_true(json_is_null(json_object_get(o, "ttft_ms")));
    assert_string_equal(jget_str(o, "reason"), "");
    assert_string_equal(jget_str(json_array_get(json_object_get(j, "choices"), 0), "finish_reason"),
                        "stop");
    json_decref(j);
    free(json);
    res.served = NULL;
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    j = load(json);
    assert_null(json_object_get(j, "outpost"));
    json_decref(j);
    free(json);

    res.id = NULL;
    assert_int_equal(api_chat_response(&res, &json, err), API_EINVAL);
    assert_null(json);
}

/* A relayed request carries the remote Outpost's own decision; a fallback
 * carries why the remote failed; empty fields are left out. */
static void served_remote_object_shows_the_remote_side(void **state)
{
    (void)state;
    api_served served = {.route = POL_TARGET_PEER, .reason = "battery_low", .ttft_ms = 5,
                         .remote = {.target = "peer", .route = "local",
                                    .reason = "requested", .error = ""}};
    api_result res = {.id = "chatcmpl-r", .created = 1, .model = "m", .text = "hi",
                      .text_len = 2, .finish = API_FINISH_STOP, .served = &served};
    char *json = NULL;
    char err[256];
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    json_t *j = load(json);
    json_t *r = json_object_get(json_object_get(j, "outpost"), "remote");
    assert_true(json_is_object(r));
    assert_int_equal(json_object_size(r), 3);
    assert_string_equal(jget_str(r, "target"), "peer");
    assert_string_equal(jget_str(r, "route"), "local");
    assert_string_equal(jget_str(r, "reason"), "requested");
    json_decref(j);
    free(json);

    served = (api_served){.route = POL_TARGET_LOCAL, .reason = "cloud_unreachable",
                          .remote = {.target = "cloud",
                                     .error = "http://127.0.0.1:9/v1: Couldn't connect"}};
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    j = load(json);
    json_t *o = json_object_get(j, "outpost");
    assert_string_equal(jget_str(o, "route"), "local");
    r = json_object_get(o, "remote");
    assert_int_equal(json_object_size(r), 2);
    assert_string_equal(jget_str(r, "target"), "cloud");
    assert_string_equal(jget_str(r, "error"), "http://127.0.0.1:9/v1: Couldn't connect");
    json_decref(j);
    free(json);
}

static void completion_response_has_text_choice(void **state)
{
    (void)state;
    api_served served = {.route = POL_TARGET_CLOUD, .reason = "long request", .ttft_ms = 250};
    api_result res = {"cmpl-xyz", 1, "default", " there was", 10, API_FINISH_STOP, {3, 3},
                      &served};
    char *json = NULL;
    char err[256];
    assert_int_equal(api_completion_response(&res, &json, err), API_OK);
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "object"), "text_completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(jget_str(ch, "text"), " there was");
    assert_true(json_is_null(json_object_get(ch, "logprobs")));
    assert_null(json_object_get(ch, "message"));
    assert_string_equal(jget_str(json_object_get(j, "outpost"), "route"), "cloud");
    json_decref(j);
    free(json);
}

static void chat_stream_chunks_follow_openai(void **state)
{
    (void)state;
    char *json = NULL;
    char err[256];
    /* First chunk: the role, empty content, no finish. */
    api_chunk c = {"chatcmpl-s", 5, "tiny", true, "", 0, API_FINISH_NONE, false, NULL, NULL};
    assert_int_equal(api_chat_chunk(&c, &json, err), API_OK);
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "object"), "chat.completion.chunk");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *d = json_object_get(ch, "delta");
    assert_string_equal(jget_str(d, "role"), "assistant");
    assert_string_equal(jget_str(d, "content"), "");
    assert_true(json_is_null(json_object_get(ch, "finish_reason")));
    assert_null(json_object_get(j, "usage"));
    json_decref(j);
    free(json);

    /* A text chunk of a stream that asked for usage: "usage": null. */
    c.role = false;
    c.text = "lo\nw";
    c.text_len = 4;
    c.include_usage = true;
    assert_int_equal(api_chat_chunk(&c, &json, err), API_OK);
    assert_null(strchr(json, '\n')); /* fits one SSE data line */
    j = load(json);
    d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    assert_null(json_object_get(d, "role"));
    assert_string_equal(jget_str(d, "content"), "lo\nw");
    assert_true(json_is_null(json_object_get(j, "usage")));
    json_decref(j);
    free(json);

    /* The last chunk: empty delta, finish reason, outpost object. */
    api_served served = {.route = POL_TARGET_PEER, .reason = "battery low", .ttft_ms = 3.5,
                         .cached_tokens = 8};
    c.text = NULL;
    c.text_len = 0;
    c.finish = API_FINISH_STOP;
    c.served = &served;
    assert_int_equal(api_chat_chunk(&c, &json, err), API_OK);
    j = load(json);
    ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_object_size(json_object_get(ch, "delta")), 0);
    assert_string_equal(jget_str(ch, "finish_reason"), "stop");
    assert_string_equal(jget_str(json_object_get(j, "outpost"), "route"), "peer");
    json_decref(j);
    free(json);

    /* The usage chunk: no choices, the usage object. */
    api_usage u = {11, 7};
    api_chunk uc = {"chatcmpl-s", 5, "tiny", false, NULL, 0, API_FINISH_NONE, true, &u, NULL};
    assert_int_equal(api_chat_chunk(&uc, &json, err), API_OK);
    j = load(json);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    assert_int_equal(jget_int(json_object_get(j, "usage"), "total_tokens"), 18);
    json_decref(j);
    free(json);
}

static void completion_stream_chunk_carries_text(void **state)
{
    (void)state;
    char *json = NULL;
    char err[256];
    api_chunk c = {"cmpl-s", 5, "tiny", false, " Once", 5, API_FINISH_LENGTH, false, NULL, NULL};
    assert_int_equal(api_completion_chunk(&c, &json, err), API_OK);
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "object"), "text_completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(jget_str(ch, "text"), " Once");
    assert_string_equal(jget_str(ch, "finish_reason"), "length");
    json_decref(j);
    free(json);
}

static void invalid_utf8_text_is_replaced_not_refused(void **state)
{
    (void)state;
    /* A lone continuation byte, a cut 3-byte sequence, an overlong, a surrogate. */
    const char text[] = "a\x80" "b\xe2\x82" "c\xc0\xaf" "d\xed\xa0\x80" "e\xe2\x82\xac";
    api_result res = {"chatcmpl-u", 0, "m", text, sizeof text - 1, API_FINISH_STOP, {1, 1}, NULL};
    char *json = NULL;
    char err[256];
    assert_int_equal(api_chat_response(&res, &json, err), API_OK);
    json_t *j = load(json);
    const char *got = jget_str(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                               "message"),
                               "content");
    assert_string_equal(got, "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd"
                             "d\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "e\xe2\x82\xac");
    json_decref(j);
    free(json);
}

static void utf8_complete_len_holds_back_unfinished_tail(void **state)
{
    (void)state;
    assert_int_equal(api_utf8_complete_len("h\xc3\xa9llo", 6), 6);
    assert_int_equal(api_utf8_complete_len("h\xc3", 2), 1);
    assert_int_equal(api_utf8_complete_len("\xe2\x82", 2), 0);
    assert_int_equal(api_utf8_complete_len("a\xf0\x9f\x98", 4), 1);
    assert_int_equal(api_utf8_complete_len("a\xf0\x9f\x98\x80", 5), 5);
    /* Bytes that can never start or continue a character are not held. */
    assert_int_equal(api_utf8_complete_len("a\xff", 2), 2);
    assert_int_equal(api_utf8_complete_len("a\xc3x", 3), 3);
    assert_int_equal(api_utf8_complete_len("\xed\xa0", 2), 2); /* surrogate lead */
    assert_int_equal(api_utf8_complete_len("", 0), 0);
}

static void new_ids_are_prefixed_and_random(void **state)
{
    (void)state;
    char a[API_ID_SIZE], b[API_ID_SIZE], err[256];
    assert_int_equal(api_new_id(API_CHAT, a, err), API_OK);
    assert_int_equal(api_new_id(API_CHAT, b, err), API_OK);
    assert_int_equal(strncmp(a, "chatcmpl-", 9), 0);
    assert_int_equal(strlen(a), 9 + 24);
    for (const char *p = a + 9; *p; p++)
        assert_true((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9'));
    assert_string_not_equal(a, b);
    assert_int_equal(api_new_id(API_COMPLETION, a, err), API_OK);
    assert_int_equal(strncmp(a, "cmpl-", 5), 0);
    assert_int_equal(strlen(a), 5 + 24);
}

static void models_list_has_openai_shape(void **state)
{
    (void)state;
    api_model_info m[] = {{"stories260K", 1700000000, NULL}, {"default", 1700000000, "me"}};
    char *json = NULL;
    char err[256];
    assert_int_equal(api_models_list(m, 2, &json, err), API_OK);
    json_t *j = load(json);
    assert_string_equal(jget_str(j, "object"), "list");
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(jget_str(json_array_get(data, 0), "id"), "stories260K");
    assert_string_equal(jget_str(json_array_get(data, 0), "object"), "model");
    assert_string_equal(jget_str(json_array_get(data, 0), "owned_by"), "outpost");
    assert_string_equal(jget_str(json_array_get(data, 1), "owned_by"), "me");
    assert_int_equal(jget_int(json_array_get(data, 1), "created"), 1700000000);
    json_decref(j);
    free(json);
    assert_int_equal(api_models_list(NULL, 0, &json, err), API_OK);
    j = load(json);
    assert_int_equal(json_array_size(json_object_get(j, "data")), 0);
    json_decref(j);
    free(json);
}

static void error_json_has_openai_shape(void **state)
{
    (void)state;
    char *json = api_error_json(400, NULL, "invalid_value",
                                "messages[2].role: expected one of system, user, assistant, tool; "
                                "got \"robot\"");
    json_t *j = load(json);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(jget_str(e, "message"),
                        "messages[2].role: expected one of system, user, assistant, tool; got \"robot\"");
    assert_string_equal(jget_str(e, "type"), "invalid_request_error");
    assert_string_equal(jget_str(e, "code"), "invalid_value");
    assert_true(json_is_null(json_object_get(e, "param")));
    json_decref(j);
    free(json);

    static const struct {
        int status;
        const char *type;
    } types[] = {{404, "invalid_request_error"}, {413, "invalid_request_error"},
                 {401, "authentication_error"},  {403, "permission_error"},
                 {429, "rate_limit_error"},      {500, "server_error"},
                 {503, "server_error"}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        json = api_error_json(types[i].status, NULL, NULL, "x");
        j = load(json);
        e = json_object_get(j, "error");
        assert_string_equal(jget_str(e, "type"), types[i].type);
        assert_true(json_is_null(json_object_get(e, "code")));
        json_decref(j);
        free(json);
    }
    /* A message cut inside a character still makes valid JSON. */
    json = api_error_json(400, "invalid_request_error", NULL, "bad \xc3");
    j = load(json);
    assert_string_equal(jget_str(json_object_get(j, "error"), "message"), "bad \xef\xbf\xbd");
    json_decref(j);
    free(json);
}

/* Every parse error line is what api_error_json() turns into a 400 body. */
static void parse_errors_become_openai_error_bodies(void **state)
{
    (void)state;
    api_request r;
    char err[256];
    const char *body = "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}";
    int rc = api_parse_chat(body, strlen(body), NULL, &r, err);
    char *json = api_error_json(api_error_status(rc), NULL, api_error_code(rc), err);
    json_t *j = load(json);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(jget_str(e, "message"), err);
    assert_string_equal(jget_str(e, "code"), "invalid_value");
    json_decref(j);
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chat_minimal_request_takes_defaults),
        cmocka_unit_test(chat_full_request_parses_every_field),
        cmocka_unit_test(chat_accepts_number_and_null_variants),
        cmocka_unit_test(completion_prompt_shapes_parse),
        cmocka_unit_test(body_need_not_be_nul_terminated),
        cmocka_unit_test(limits_and_sampling_defaults_come_from_the_caller),
        cmocka_unit_test(invalid_json_is_refused_with_position),
        cmocka_unit_test(non_object_body_is_refused),
        cmocka_unit_test(deeply_nested_json_is_refused_before_decoding),
        cmocka_unit_test(huge_numbers_name_their_field),
        cmocka_unit_test(messages_errors_name_the_field),
        cmocka_unit_test(error_lines_quote_values_safely),
        cmocka_unit_test(model_and_user_errors),
        cmocka_unit_test(number_fields_check_type_and_range),
        cmocka_unit_test(stop_and_stream_errors),
        cmocka_unit_test(unsupported_features_are_refused_not_ignored),
        cmocka_unit_test(outpost_object_errors),
        cmocka_unit_test(completion_prompt_errors),
        cmocka_unit_test(error_status_and_code_per_result),
        cmocka_unit_test(request_json_round_trips),
        cmocka_unit_test(chat_response_has_openai_shape_and_outpost),
        cmocka_unit_test(served_remote_object_shows_the_remote_side),
        cmocka_unit_test(completion_response_has_text_choice),
        cmocka_unit_test(chat_stream_chunks_follow_openai),
        cmocka_unit_test(completion_stream_chunk_carries_text),
        cmocka_unit_test(invalid_utf8_text_is_replaced_not_refused),
        cmocka_unit_test(utf8_complete_len_holds_back_unfinished_tail),
        cmocka_unit_test(new_ids_are_prefixed_and_random),
        cmocka_unit_test(models_list_has_openai_shape),
        cmocka_unit_test(error_json_has_openai_shape),
        cmocka_unit_test(parse_errors_become_openai_error_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
