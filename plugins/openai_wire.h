/*
 * openai_wire.h - the wire format of an OpenAI-compatible call, both ways
 * (the oaw_ module, part of the backend-openai plugin): the request body
 * that goes out, and the reply that comes back, streamed as Server-Sent
 * Events or whole as one JSON object.
 *
 * The reply reader is a push parser: feed it the bytes as the network gives
 * them, in pieces of any size, and it calls on_text with each piece of the
 * answer as soon as the event carrying it is complete. It never reads past
 * what it was given, holds at most max_event_bytes of an unfinished event
 * (beyond that the reply is refused as malformed), and refuses anything
 * that is not the documented chunk shape with one error line, never a crash:
 * it is fed by a libFuzzer target (tests/fuzz/fuzz_sse.c).
 *
 * Ownership: an oaw_reader owns its buffers (oaw_reader_free); the text it
 * hands to on_text is valid only during the call. oaw_request_json returns
 * a malloc'd string the caller frees. No global state; any thread.
 */
#ifndef OUTPOST_OPENAI_WIRE_H
#define OUTPOST_OPENAI_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outpost_plugin.h"

enum {
    OAW_OK = 0,
    OAW_ESTOP = -1,      /* on_text returned nonzero: the caller stops reading */
    OAW_EMALFORMED = -2, /* not SSE, not JSON, or not the chunk shape */
    OAW_EREMOTE = -3,    /* the remote sent an error object */
    OAW_ENOMEM = -4,
};

/* Largest unfinished event (or whole reply) the reader holds by default. */
#define OAW_MAX_EVENT_BYTES (4u << 20)

/* What the reply said so far, besides its text. */
typedef struct oaw_reply {
    char finish_reason[16];    /* "" until a chunk names one */
    int64_t prompt_tokens;     /* -1 until usage arrives */
    int64_t completion_tokens; /* -1 until usage arrives */
    char remote_route[16];     /* a remote Outpost's "outpost" object; "" otherwise */
    char remote_reason[64];
    bool done;                 /* "data: [DONE]" was seen */
    size_t n_events;           /* events dispatched (comments and blank ones not counted) */
    size_t text_bytes;         /* bytes handed to on_text */
} oaw_reply;

typedef int (*oaw_text_fn)(void *ud, const char *text, size_t len);

typedef struct oaw_reader {
    oaw_text_fn on_text;
    void *ud;
    size_t max_event_bytes;
    oaw_reply reply;
    char err[OUTPOST_PLUGIN_ERR_SIZE]; /* why the last call failed */
    /* private */
    char *line;   /* the line being read (SSE) or the whole body (JSON) */
    size_t line_len, line_cap;
    char *data;   /* the "data" field of the event being built */
    size_t data_len, data_cap;
    bool has_data;
    bool after_cr;  /* the last byte was CR: a following LF ends no new line */
    bool started;   /* the first line was read (only it may start with a BOM) */
    bool failed;    /* a call failed: every later one fails the same way */
    int fail_rc;
} oaw_reader;

/* on_text may be NULL (text is then only counted). max_event_bytes 0: the
 * default. */
void oaw_reader_init(oaw_reader *r, oaw_text_fn on_text, void *ud, size_t max_event_bytes);
void oaw_reader_free(oaw_reader *r);

/* Server-Sent Events (the WHATWG HTML standard's event stream format):
 * lines end in CRLF, LF or CR; "data:" lines append to the event's data
 * (joined by LF, one leading space after the colon dropped); other fields
 * and ":" comments are ignored; a blank line dispatches the event. Each
 * event's data is "[DONE]" or one JSON chunk (oaw_chunk). At the end of the
 * stream, oaw_sse_finish dispatches an event left without its blank line
 * (lenient: the standard drops it, but servers that close right after
 * "data: [DONE]" exist). Returns OAW_OK or the first failure, after which
 * the reader stays failed. */
int oaw_sse_feed(oaw_reader *r, const char *buf, size_t n);
int oaw_sse_finish(oaw_reader *r);

/* A reply that is not a stream (a server that ignored "stream": true):
 * gather the body, then read it as one chat.completion/text_completion
 * object. */
int oaw_body_feed(oaw_reader *r, const char *buf, size_t n);
int oaw_body_finish(oaw_reader *r);

/* One JSON object as a stream chunk (whole = false: choices[0].delta.content
 * or choices[0].text) or a whole reply (whole = true: choices[0].message.
 * content or choices[0].text); finish_reason, usage and the "outpost" object
 * are taken from either. {"error": ...} is OAW_EREMOTE with its message. */
int oaw_chunk(oaw_reader *r, const char *json, size_t len, bool whole);

/* The error message of an error reply body ({"error":{"message":...}},
 * {"error":"..."} or {"message":...}), cut to fit; false when the body has
 * none (then msg is untouched). */
bool oaw_error_message(const char *body, size_t len, char *msg, size_t msg_size);

/* What to put in the request body besides rq. */
typedef struct oaw_request_opts {
    const char *model;       /* wins over rq->model; NULL: rq->model; both NULL: omitted */
    bool stream;             /* "stream": true with stream_options.include_usage */
    bool outpost_route_local; /* add "outpost": {"route": "local"} (the remote is an
                                 Outpost that must answer itself, not forward) */
} oaw_request_opts;

/* The body of POST /chat/completions (rq->messages) or /completions
 * (rq->prompt), as compact JSON. Text must be valid UTF-8 (OAW_EMALFORMED
 * names the message otherwise). */
int oaw_request_json(const outpost_chat_request *rq, const oaw_request_opts *o, char **json,
                     char err[OUTPOST_PLUGIN_ERR_SIZE]);

#endif
