/*
 * api.h - the OpenAI-compatible JSON of the agent's HTTP API (the api_
 * module): request bodies in, responses, stream chunks and errors out.
 *
 * Parsing: api_parse_chat() and api_parse_completion() turn the body of
 * POST /v1/chat/completions and POST /v1/completions into an api_request, or
 * refuse it with a status (api_error_status(): 400 for anything the client
 * sent wrong) and one line that names the field at fault, e.g.
 *   messages[2].role: expected one of system, user, assistant, tool; got "robot"
 * which the HTTP layer returns with api_error_json(). Fields Outpost does not
 * know are ignored, as OpenAI-compatible servers do; fields it knows but
 * cannot honour (n > 1, tools, image parts, logprobs, JSON modes) are refused
 * with API_EUNSUPPORTED rather than silently dropped. Limits (messages per
 * request, bytes per message, max_tokens ceiling, nesting depth) come from
 * api_limits, normally the config's.
 *
 * Building: every JSON text is made with jansson, never by hand. Builders take
 * borrowed strings and return a malloc'd, NUL-terminated compact JSON text (no
 * raw newlines, so a stream chunk fits one SSE "data:" line); free it with
 * free(). Text that is not valid UTF-8 (a token boundary inside a character)
 * is written with U+FFFD in place of the bad bytes; a streaming caller should
 * hold such a tail back with api_utf8_complete_len() instead.
 *
 * Ownership: an api_request owns all its strings; api_request_free() frees
 * them (and is safe on a zeroed or already freed request). Nothing here keeps
 * global state; every function may run on any thread.
 */
#ifndef OUTPOST_API_H
#define OUTPOST_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pol.h"
#include "store.h"

enum {
    API_OK = 0,
    API_EJSON = -1,        /* the body is not JSON, not an object, or nested too deep */
    API_EINVAL = -2,       /* a field is missing, of the wrong type, or out of range */
    API_EUNSUPPORTED = -3, /* valid OpenAI input that Outpost does not do */
    API_ENOMEM = -4,
};

/* The HTTP status for a result code (400 for the input errors, 500 for
 * API_ENOMEM), and the OpenAI-style "code": "invalid_json", "invalid_value",
 * "unsupported_value", "internal_error" (NULL for API_OK). */
int api_error_status(int rc);
const char *api_error_code(int rc);

/* ---- requests ------------------------------------------------------------ */

typedef enum api_kind { API_CHAT, API_COMPLETION } api_kind;

/* Sampling settings. The local engine applies temperature, top_p, top_k,
 * min_p and repeat_penalty (smp_params). presence_penalty and
 * frequency_penalty are accepted and relayed to peer and cloud, but the local
 * sampler has no additive penalties and does not apply them: mapping them
 * onto its multiplicative repeat penalty would change what the numbers mean.
 * Clients who want the local penalty send "repeat_penalty". */
typedef struct api_sampling {
    double temperature;       /* [0, 2]; 0 = greedy */
    double top_p;             /* [0, 1]; 1 = off */
    int32_t top_k;            /* extension, [0, 1000000]; 0 = off */
    double min_p;             /* extension, [0, 1]; 0 = off */
    double repeat_penalty;    /* extension (llama.cpp's), (0, 2]; 1 = off */
    double presence_penalty;  /* [-2, 2] */
    double frequency_penalty; /* [-2, 2] */
} api_sampling;

typedef struct api_limits {
    size_t max_messages;      /* messages in one chat request */
    size_t max_content_bytes; /* bytes of one message's text, or of the prompt */
    int32_t max_tokens;       /* the largest max_tokens a request may ask for */
    size_t max_stop;          /* stop strings in one request */
    size_t max_stop_bytes;    /* bytes of one stop string */
    int max_depth;            /* JSON nesting depth of the body */
    api_sampling defaults;    /* settings of a request that names none */
} api_limits;

#define API_DEFAULT_MAX_MESSAGES 512
#define API_DEFAULT_MAX_CONTENT_BYTES (1u << 20)
#define API_DEFAULT_MAX_TOKENS 4096
#define API_DEFAULT_MAX_STOP 16
#define API_DEFAULT_MAX_STOP_BYTES 256
#define API_DEFAULT_MAX_DEPTH 32

/* The defaults above, and OpenAI's documented sampling defaults
 * (temperature 1, top_p 1, penalties 0) with top_k, min_p and the repeat
 * penalty off. Start from these and change fields: a limit left at 0 (or
 * below) is taken as its default by the parsers; the sampling defaults are
 * used as they are. */
void api_limits_default(api_limits *l);

#define API_MODEL_MAX STORE_NAME_MAX   /* bytes of a model name */
#define API_SESSION_MAX STORE_NAME_MAX /* bytes of a session id */
#define API_USER_MAX 256               /* bytes of the "user" field */

typedef struct api_message {
    store_role role;  /* "developer" (OpenAI's newer name) is taken as system */
    char *content;    /* UTF-8 without NUL bytes, NUL-terminated; text parts of
                         an array content are joined by "\n" */
    size_t content_len;
} api_message;

/* The request's "outpost" object. */
typedef struct api_outpost {
    char session[API_SESSION_MAX + 1]; /* "" = none; else 1-127 of [A-Za-z0-9_-] */
    pol_target route;                  /* POL_TARGET_AUTO when not given */
    pol_privacy privacy;               /* POL_PRIVACY_NORMAL when not given */
    int64_t max_latency_ms;            /* -1 = not given; else [1, 86400000] */
} api_outpost;

typedef struct api_request {
    api_kind kind;
    char model[API_MODEL_MAX + 1]; /* "default" when the body names none */
    /* API_CHAT: at least one message. */
    api_message *messages;
    size_t n_messages;
    /* API_COMPLETION: the prompt (a one-element array is taken as its string). */
    char *prompt;
    size_t prompt_len;
    /* max_tokens or max_completion_tokens, [1, limits.max_tokens];
       0 = not given: the scheduler's default applies. */
    int32_t max_tokens;
    api_sampling sampling;
    bool has_seed;
    uint64_t seed; /* the JSON integer as two's complement */
    /* Non-empty stop strings (empty ones are dropped), NUL-terminated. */
    char **stop;
    size_t n_stop;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    char user[API_USER_MAX + 1];
    api_outpost outpost;
} api_request;

/* Parse a request body of len bytes (need not be NUL-terminated). lim may be
 * NULL for api_limits_default(). On success *out owns its strings; on
 * failure *out is zeroed, err holds one line, and the result says why. */
int api_parse_chat(const char *body, size_t len, const api_limits *lim, api_request *out,
                   char err[256]);
int api_parse_completion(const char *body, size_t len, const api_limits *lim,
                         api_request *out, char err[256]);
void api_request_free(api_request *r);

/* What api_request_json() writes besides the OpenAI fields. */
#define API_JSON_EXTENSIONS 1u /* top_k, min_p, repeat_penalty (OpenAI itself refuses them) */
#define API_JSON_OUTPOST 2u    /* the "outpost" object, with outpost below */

/* The request as an OpenAI request body again, for relaying it to a peer or
 * the cloud: model replaces r->model when not NULL; with API_JSON_OUTPOST
 * the outpost object is written from outpost (r->outpost when NULL), e.g.
 * with route "local" so that a peer does not forward it further. Parsing the
 * result gives r back. */
int api_request_json(const api_request *r, const char *model, unsigned flags,
                     const api_outpost *outpost, char **json, char err[256]);

/* ---- responses --------------------------------------------------------------- */

typedef enum api_finish {
    API_FINISH_NONE,   /* not finished (stream chunks): finish_reason null */
    API_FINISH_STOP,   /* end of turn, EOS or a stop string */
    API_FINISH_LENGTH, /* max_tokens or the context ran out */
} api_finish;

typedef struct api_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens; /* total_tokens is written as their sum */
} api_usage;

/* The response's "outpost" object: how the request was served. */
typedef struct api_served {
    pol_target route;      /* LOCAL, PEER or CLOUD */
    const char *reason;    /* the policy's reason, or the fallback's; NULL = "" */
    double ttft_ms;        /* written to the microsecond; NaN or < 0: null */
    int64_t cached_tokens; /* prompt tokens whose KV state was reused */
    bool truncated;        /* the conversation was cut to fit the context */
    const char *session;   /* the session the turn belongs to; NULL or "": none */
    /* When a peer or the cloud was asked (target not NULL or ""), the
     * "remote" object: {"target", ["route", "reason"] (what a remote Outpost
     * decided, when it said), ["error"] (why the call failed or was refused:
     * the fallback's cause)}. Each field NULL or "": left out. */
    struct {
        const char *target, *route, *reason, *error;
    } remote;
} api_served;

/* "chatcmpl-" or "cmpl-" followed by 24 random letters and digits. */
#define API_ID_SIZE 40
int api_new_id(api_kind kind, char id[API_ID_SIZE], char err[256]);

/* A whole (non-streamed) answer. */
typedef struct api_result {
    const char *id;      /* from api_new_id() */
    int64_t created;     /* Unix time in seconds */
    const char *model;   /* the name the client used, or the model's */
    const char *text;    /* the generated text, text_len bytes */
    size_t text_len;
    api_finish finish;
    api_usage usage;
    const api_served *served; /* NULL: no "outpost" object */
} api_result;

/* {"id","object":"chat.completion","created","model","choices":[{"index":0,
 * "message":{"role":"assistant","content"},"logprobs":null,"finish_reason"}],
 * "usage":{...},"outpost":{...}} */
int api_chat_response(const api_result *r, char **json, char err[256]);
/* The same for /v1/completions: "object":"text_completion", choices[0].text. */
int api_completion_response(const api_result *r, char **json, char err[256]);

/* One Server-Sent Event's JSON (the HTTP layer writes "data: ", the JSON and
 * a blank line, and "data: [DONE]" at the end). A chat stream is: a first
 * chunk with role set (and usually text ""), chunks with text, a last chunk
 * with finish set (and served, for the outpost object), then, when the
 * request asked for stream_options.include_usage, a usage chunk. */
typedef struct api_chunk {
    const char *id; /* the same for every chunk of a stream */
    int64_t created;
    const char *model;
    bool role;            /* chat: the delta carries "role":"assistant" */
    const char *text;     /* the new text, text_len bytes; NULL: none in this chunk */
    size_t text_len;
    api_finish finish;    /* API_FINISH_NONE: "finish_reason": null */
    bool include_usage;   /* the request asked for usage: chunks carry "usage": null */
    const api_usage *usage;   /* not NULL: this is the usage chunk, with "choices": [] */
    const api_served *served; /* not NULL: add the "outpost" object */
} api_chunk;

int api_chat_chunk(const api_chunk *c, char **json, char err[256]);
int api_completion_chunk(const api_chunk *c, char **json, char err[256]);

/* The length of the longest prefix of s[0..n) that does not end inside an
 * unfinished UTF-8 sequence: a streaming caller sends that much and keeps the
 * rest for the next token. Bytes that can never become valid are not held. */
size_t api_utf8_complete_len(const char *s, size_t n);

/* GET /v1/models. */
typedef struct api_model_info {
    const char *id;
    int64_t created;      /* Unix seconds (e.g. the file's mtime) */
    const char *owned_by; /* NULL = "outpost" */
} api_model_info;

int api_models_list(const api_model_info *models, size_t n, char **json, char err[256]);

/* {"error":{"message","type","param":null,"code"}} in OpenAI's shape. type
 * NULL picks the type OpenAI uses for status (400, 404, 413:
 * "invalid_request_error"; 401: "authentication_error"; 403:
 * "permission_error"; 429: "rate_limit_error"; 5xx: "server_error"); code
 * NULL writes null. Returns NULL only when out of memory. */
char *api_error_json(int status, const char *type, const char *code, const char *message);

#endif
