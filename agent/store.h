/*
 * store.h - the agent's persistent state in one SQLite file (the store_ module).
 *
 * Conversations (sessions and their messages, plus where a session's saved KV
 * cache lives), per-request telemetry, settings, and the outbox of messages
 * waiting for the fleet channel. Everything else in the agent talks to this
 * API; agent/store.c is the only file that contains SQL.
 *
 * One handle may be shared by any number of threads: every call takes the
 * handle's mutex, so calls on one handle run one at a time. Several handles
 * (or processes) on the same file also work; writers wait on each other up
 * to the busy timeout instead of failing.
 *
 * Ownership: a session belongs to the uid that created it. Every call that
 * reads or changes a session on behalf of a client takes that client's uid and
 * answers STORE_ENOTFOUND for a session owned by someone else, exactly as for
 * one that does not exist, so ids of other users' sessions leak nothing.
 *
 * Arrays returned by the store are the caller's: free them with the matching
 * store_*_free(). Timestamps are Unix time in milliseconds.
 */
#ifndef OUTPOST_STORE_H
#define OUTPOST_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Result codes: 0 is success, negative values name the kind of failure. */
enum {
    STORE_OK = 0,
    STORE_EIO = -1,       /* open, read or write failed (I/O error, permissions) */
    STORE_EFULL = -2,     /* disk full or the size cap reached; the call wrote nothing */
    STORE_ENOTFOUND = -3, /* no such row (or, for sessions, not the caller's) */
    STORE_EINVAL = -4,    /* an argument was refused: too long, NUL byte, bad UTF-8 */
    STORE_ENOMEM = -5,
    STORE_EVERSION = -6,  /* the database was written by a newer Outpost */
    STORE_ECORRUPT = -7,  /* the file is not a database or is damaged */
    STORE_EBUSY = -8,     /* still locked by another writer after the busy timeout */
    STORE_EEXIST = -9,    /* a row with that id is already recorded */
};

/* Limits on what the store accepts, in bytes without the terminating NUL. */
#define STORE_ID_SIZE 33          /* session ids: 32 hex digits + NUL */
#define STORE_NAME_MAX 127        /* model names, request ids, session ids given to lookups */
#define STORE_TITLE_MAX 255       /* session titles, routing reasons, settings keys */
#define STORE_STATUS_MAX 31       /* request status: "ok" or an error code */
#define STORE_TOPIC_MAX 255       /* outbox topics */
#define STORE_PATH_MAX 4095       /* saved KV file paths */
#define STORE_CONTENT_MAX (16u << 20) /* message content, setting values, outbox payloads */

typedef struct store store;

typedef struct store_opts {
    int busy_timeout_ms;     /* how long a writer waits for another; 0 = 5000 */
    int64_t max_db_bytes;    /* size cap of the database file; beyond it writes fail
                                with STORE_EFULL; 0 = no cap. The write-ahead log
                                adds up to about 4 MiB on top while open. */
    /* The clock for every timestamp the store writes; NULL = the real clock.
       It is called with the handle locked and must not call the store. */
    int64_t (*now_ms)(void *ctx);
    void *now_ctx;
    /* Stop migrating at this schema version (tests of the upgrade path only:
       most calls need the latest schema); 0 = latest. */
    int migrate_to;
} store_opts;

/* Opens (creating it with mode 0600 if absent) and upgrades the database at
 * path. opts may be NULL for the defaults. A database whose schema is newer
 * than store_schema_version() is refused with STORE_EVERSION and left as is. */
int store_open(store **out, const char *path, const store_opts *opts, char err[256]);
void store_close(store *s);

/* The schema version this build writes, and the one the open database has. */
int store_schema_version(void);
int store_user_version(store *s);

/* A fresh random id: 32 lowercase hex digits (128 bits from getrandom). */
int store_new_id(char id[STORE_ID_SIZE], char err[256]);

/* ---- sessions and messages ---------------------------------------------- */

typedef enum store_role {
    STORE_ROLE_SYSTEM,
    STORE_ROLE_USER,
    STORE_ROLE_ASSISTANT,
    STORE_ROLE_TOOL,
    STORE_ROLE_COUNT
} store_role;

const char *store_role_name(store_role r); /* "system", ...; NULL if out of range */

typedef struct store_session {
    char id[STORE_ID_SIZE];
    uid_t owner_uid;
    char model[STORE_NAME_MAX + 1];
    char title[STORE_TITLE_MAX + 1];       /* "" when none */
    int64_t created_ms, updated_ms, last_used_ms;
    int64_t n_messages;
    char kv_path[STORE_PATH_MAX + 1];      /* "" when no KV state is saved */
    int64_t kv_tokens, kv_bytes;
} store_session;

/* title may be NULL. Writes the new session's id into id. */
int store_session_create(store *s, uid_t owner_uid, const char *model, const char *title,
                         char id[STORE_ID_SIZE], char err[256]);
int store_session_get(store *s, const char *id, uid_t requester_uid, store_session *out,
                      char err[256]);
/* The owner's sessions, most recently used first, at most limit (0 = all).
 * *out is NULL when there are none; free it with free(). */
int store_session_list(store *s, uid_t owner_uid, size_t limit, store_session **out,
                       size_t *n_out, char err[256]);
/* Deletes the session and its messages. If deleted is not NULL it receives the
 * row as it was, so the caller can remove the session's KV file. */
int store_session_delete(store *s, const char *id, uid_t uid, store_session *deleted,
                         char err[256]);

typedef struct store_message {
    int64_t seq;           /* 1, 2, ... in the order of appending */
    store_role role;
    char *content;         /* UTF-8, NUL-terminated, content_len bytes before the NUL */
    size_t content_len;
    int64_t n_tokens;
    int64_t created_ms;
} store_message;

/* Appends a message and marks the session used now. Content must be valid
 * UTF-8 without NUL bytes (the conversation is rebuilt into prompts as C
 * strings, where a NUL would silently cut it): anything else is refused with
 * STORE_EINVAL naming the offset. seq_out may be NULL. */
int store_message_append(store *s, const char *session_id, uid_t uid, store_role role,
                         const char *content, size_t content_len, int64_t n_tokens,
                         int64_t *seq_out, char err[256]);
/* All of the session's messages in order; free with store_messages_free. */
int store_messages_load(store *s, const char *session_id, uid_t uid, store_message **out,
                        size_t *n_out, char err[256]);
void store_messages_free(store_message *m, size_t n);

/* Records (path != NULL) or forgets (path == NULL) the session's saved KV
 * state. The scheduler calls this; no uid check. The store never touches the
 * file itself. */
int store_session_set_kv(store *s, const char *id, const char *path, int64_t n_tokens,
                         int64_t n_bytes, char err[256]);

typedef struct store_kv_entry {
    char id[STORE_ID_SIZE];
    char kv_path[STORE_PATH_MAX + 1];
    int64_t kv_tokens, kv_bytes, last_used_ms;
} store_kv_entry;

/* Sessions with saved KV state, least recently used first, at most limit
 * (0 = all): the eviction order. Free *out with free(). */
int store_sessions_lru(store *s, size_t limit, store_kv_entry **out, size_t *n_out,
                       char err[256]);
/* How many sessions have saved KV state, and its bytes on disk (the sizes
 * recorded with store_session_set_kv). */
int store_kv_usage(store *s, int64_t *sessions_out, int64_t *bytes_out, char err[256]);

/* ---- telemetry ---------------------------------------------------------- */

typedef enum store_route {
    STORE_ROUTE_LOCAL,
    STORE_ROUTE_PEER,
    STORE_ROUTE_CLOUD,
    STORE_ROUTE_COUNT
} store_route;

const char *store_route_name(store_route r); /* "local", ...; NULL if out of range */

/* One served request. Strings may be NULL where noted; a negative measurement
 * means "not measured" (e.g. no TTFT for a request that failed first). */
typedef struct store_request {
    const char *id;          /* unique; NULL = a fresh random id */
    const char *session_id;  /* NULL when the request named no session */
    store_route route;
    const char *reason;      /* the policy's reason; NULL = "" */
    const char *model;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double ttft_ms, decode_tok_s, token_p50_ms, token_p95_ms;
    double cost_usd;         /* cloud cost estimate; 0 for local */
    const char *status;      /* "ok" or an error code such as "queue_full" */
    int64_t created_ms;      /* 0 = now */
} store_request;

int store_request_insert(store *s, const store_request *r, char err[256]);

enum { STORE_ROLLUP_GROUPS = 32 };

typedef struct store_rollup_group {
    store_route route;
    char status[STORE_STATUS_MAX + 1];
    int64_t n;
} store_rollup_group;

typedef struct store_rollup {
    int64_t n_requests, n_errors;          /* errors: status other than "ok" */
    int64_t n_by_route[STORE_ROUTE_COUNT];
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double cost_usd;
    double ttft_p50_ms, ttft_p95_ms;       /* nearest rank; -1 when no TTFT was measured */
    double decode_tok_s_mean;              /* -1 when none was measured */
    /* Counts by (route, status), largest first; groups beyond the array are
       still in the totals above, and groups_dropped says how many. */
    store_rollup_group groups[STORE_ROLLUP_GROUPS];
    int n_groups, groups_dropped;
} store_rollup;

/* The summed cost estimate of the requests answered on route and created at
 * or after since_ms (the cloud spend of this month, for the budget). */
int store_requests_cost(store *s, store_route route, int64_t since_ms, double *usd_out,
                        char err[256]);

/* Aggregates the requests created at or after since_ms. */
int store_requests_rollup(store *s, int64_t since_ms, store_rollup *out, char err[256]);

/* ---- retention ---------------------------------------------------------- */

typedef struct store_retention {
    int64_t request_max_age_s; /* drop telemetry older than this; 0 = keep */
    int64_t max_requests;      /* keep at most this many, newest; 0 = no cap */
    int64_t session_idle_s;    /* drop sessions unused this long; 0 = keep */
} store_retention;

typedef struct store_prune_result {
    int64_t n_requests, n_sessions, n_outbox;
    char **kv_paths;           /* KV files of the dropped sessions, for the caller to unlink */
    size_t n_kv_paths;
} store_prune_result;

/* Applies the retention limits and drops outbox messages already sent, in
 * short transactions of a bounded number of rows so other threads and
 * processes get the database in between. out may be NULL; otherwise free it
 * with store_prune_result_free. */
int store_prune(store *s, const store_retention *r, store_prune_result *out, char err[256]);
void store_prune_result_free(store_prune_result *r);

/* ---- settings ----------------------------------------------------------- */

int store_setting_set(store *s, const char *key, const char *value, char err[256]);
/* *value_out is the caller's (free()). STORE_ENOTFOUND when unset. */
int store_setting_get(store *s, const char *key, char **value_out, char err[256]);
int store_setting_delete(store *s, const char *key, char err[256]);

/* ---- outbox for the fleet channel --------------------------------------- */

typedef struct store_outbox_msg {
    int64_t id;                /* increasing, never reused */
    char topic[STORE_TOPIC_MAX + 1];
    unsigned char *payload;    /* payload_len bytes, any content, NUL after the end */
    size_t payload_len;
    int64_t created_ms;
    int64_t attempts;          /* how many times it was peeked, this peek included */
} store_outbox_msg;

/* Queues a message; it stays until acknowledged, across restarts. */
int store_outbox_put(store *s, const char *topic, const void *payload, size_t payload_len,
                     int64_t *id_out, char err[256]);
/* The oldest max_n unacknowledged messages, oldest first; each peek counts as
 * a delivery attempt. Free with store_outbox_free. */
int store_outbox_peek(store *s, size_t max_n, store_outbox_msg **out, size_t *n_out,
                      char err[256]);
/* Marks messages as sent; unknown or already acknowledged ids are ignored. */
int store_outbox_ack(store *s, const int64_t *ids, size_t n, char err[256]);
int store_outbox_pending(store *s, int64_t *n_out, char err[256]);
void store_outbox_free(store_outbox_msg *m, size_t n);
/* As store_outbox_peek, but only messages with an id above after_id (the
 * fleet channel skips what it already handed to the MQTT client). */
int store_outbox_peek_after(store *s, int64_t after_id, size_t max_n, store_outbox_msg **out,
                            size_t *n_out, char err[256]);

/* ---- inbox of fleet commands --------------------------------------------- */

/* A command is stored here before the broker is told it arrived (PUBACK) and
 * stays until store_inbox_done(), so a command acknowledged to the broker is
 * never lost to a crash or a shutdown: the next start takes it up again.
 * Rows use store_outbox_msg; attempts counts the peeks. */

/* Stores a command; STORE_EFULL (nothing stored) when max_rows are waiting. */
int store_inbox_put(store *s, const char *topic, const void *payload, size_t payload_len,
                    int64_t max_rows, int64_t *id_out, char err[256]);
/* The oldest max_n commands, oldest first; each peek counts as an attempt.
 * Free with store_outbox_free. */
int store_inbox_peek(store *s, size_t max_n, store_outbox_msg **out, size_t *n_out,
                     char err[256]);
/* Deletes command id and, when key is not NULL, sets setting key to value,
 * in one transaction: a crash leaves both or neither. */
int store_inbox_done(store *s, int64_t id, const char *key, const char *value, char err[256]);

/* ---- fleet telemetry: a bounded outbox and the export of requests -------- */

/* Which messages go first when the outbox is over its bound: roll-ups (a
 * later roll-up covers much the same), then the oldest records. */
typedef enum store_outbox_kind {
    STORE_OUTBOX_RECORD = 0, /* a request record or an event */
    STORE_OUTBOX_ROLLUP = 1,
} store_outbox_kind;

/* Unsent messages deleted to keep the bound, added to by each call. */
typedef struct store_outbox_drops {
    int64_t rollups, records;
} store_outbox_drops;

/* Queues a message of kind in one transaction with the bound: afterwards at
 * most max_pending (0 = no bound) unsent messages remain, the ones dropped
 * counted into *drops (may be NULL). The new message itself may be the one
 * dropped when it is the oldest roll-up. */
int store_outbox_put_kind(store *s, const char *topic, const void *payload, size_t payload_len,
                          store_outbox_kind kind, int64_t max_pending, int64_t *id_out,
                          store_outbox_drops *drops, char err[256]);

/* A recorded request as the export reads it (every string a copy). */
typedef struct store_request_row {
    int64_t rowid;
    char id[STORE_NAME_MAX + 1];
    char session_id[STORE_NAME_MAX + 1]; /* "" when none */
    store_route route;
    char reason[STORE_TITLE_MAX + 1];
    char model[STORE_NAME_MAX + 1];
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double ttft_ms, decode_tok_s, token_p50_ms, token_p95_ms; /* NAN: not measured */
    double cost_usd;
    char status[STORE_STATUS_MAX + 1];
    int64_t created_ms;
} store_request_row;

/* Turns a request into an outbox payload (*payload malloc'd, the store frees
 * it). Runs with the store locked: it must not call the store. Non-zero
 * fails the whole export (nothing is marked). */
typedef int (*store_request_format_fn)(void *ud, const store_request_row *r, char **payload,
                                       size_t *len, char err[256]);

#define STORE_EXPORT_MAX 1024 /* rows one export call takes at most */

/* Every request is exported exactly once: in one transaction, up to max_n
 * requests not yet exported (oldest first) are formatted, queued on topic
 * as records and marked exported, then the bound applies (as
 * store_outbox_put_kind). A crash leaves either all of it or none.
 * *n_out: how many were exported. */
int store_requests_export(store *s, const char *topic, size_t max_n, store_request_format_fn fmt,
                          void *ud, int64_t max_pending, size_t *n_out,
                          store_outbox_drops *drops, char err[256]);

#endif
