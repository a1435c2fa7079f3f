/*
 * outpost_plugin.h - the plugin ABI: what a shared object must export for
 * `outpost serve` to load it, and what the agent offers it in return.
 *
 * A plugin is a file <plugins.dir>/<name>.so that exports one object,
 *
 *     OUTPOST_PLUGIN_EXPORT(my_plugin) = { OUTPOST_PLUGIN_ABI_VERSION,
 *                                          sizeof(outpost_plugin), ... };
 *
 * (its symbol is `outpost_plugin`: C does not let a variable share the
 * typedef's name, so the macro names the symbol with an asm label),
 * naming itself (the name must equal the file name without ".so"), its
 * kind, and a table of that kind's operations. The agent dlopen()s the
 * file, reads the object, and refuses the plugin - with one line naming the
 * file and the fault, while it keeps running - when the symbol is missing,
 * abi_version differs from the agent's, struct_size is smaller than the
 * agent's, the name does not match, or the kind's table is missing or
 * incomplete. A version bump of the ABI is the only way to change a struct
 * below: fields are never reordered, only appended (struct_size tells which
 * exist), so a plugin built against ABI N works with any agent of ABI N.
 *
 * Kinds:
 *   backend  answers chat requests somewhere else (a peer Outpost, a cloud
 *            API); called from the agent's remote-call threads, possibly
 *            several calls at once on one instance.
 *   sensor   reads device facts (battery, power, temperature, pressure)
 *            for the policy's env; called from one thread at a time.
 *   hook     sees (and may rewrite) a request before it leaves the device.
 *
 * Ownership: everything the agent passes in stays the agent's and is valid
 * only for the duration of the call, except message contents a hook
 * replaces (see outpost_outbound). Strings are UTF-8 and NUL-terminated;
 * lengths, where given, exclude the NUL. Every operation that can fail
 * returns an OUTPOST_E* code and writes one line into err (at most 256
 * bytes including the NUL) naming what failed.
 *
 * This header is self-contained: plugins need nothing else from the agent.
 */
#ifndef OUTPOST_PLUGIN_H
#define OUTPOST_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OUTPOST_PLUGIN_ABI_VERSION 1u
#define OUTPOST_PLUGIN_SYMBOL "outpost_plugin"
#define OUTPOST_PLUGIN_ERR_SIZE 256

/* Result codes of every operation. */
enum {
    OUTPOST_OK = 0,
    OUTPOST_EINPUT = -1,       /* the request or the configuration is unusable */
    OUTPOST_EUNREACHABLE = -2, /* no answer at all: DNS, connect, TLS, timeout
                                  before the first byte of the reply */
    OUTPOST_EREMOTE = -3,      /* the remote answered with an error status */
    OUTPOST_EPARTIAL = -4,     /* failed after part of the reply was streamed */
    OUTPOST_ECANCELLED = -5,   /* the stream's callback asked to stop */
    OUTPOST_ENOMEM = -6,
    OUTPOST_EIO = -7,          /* a local read failed (sensors) */
};

typedef enum outpost_plugin_kind {
    OUTPOST_PLUGIN_BACKEND = 1,
    OUTPOST_PLUGIN_SENSOR = 2,
    OUTPOST_PLUGIN_HOOK = 3,
} outpost_plugin_kind;

/* ---- what the agent offers ---------------------------------------------------- */

/* Valid from init() to fini(); any thread may call these at any time. */
typedef struct outpost_host {
    uint32_t abi_version; /* the agent's OUTPOST_PLUGIN_ABI_VERSION */
    uint32_t struct_size; /* sizeof(outpost_host) in the agent */
    void *ctx;            /* first argument of every function below */
    const char *agent_version;
    /* One line to the agent's log, prefixed with the plugin's name. */
    void (*log)(void *ctx, const char *plugin, const char *line);
    /* Memory for buffers that cross the boundary (hook rewrites). */
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *p);
    /* The agent's PII detector: text with every finding (emails, phone
     * numbers, card numbers, IBANs, national IDs) replaced by its tag
     * ("[EMAIL]", ...). *out is from alloc() and NUL-terminated; *n_found
     * is how many were replaced. */
    int (*pii_redact)(void *ctx, const char *text, size_t len, char **out, size_t *out_len,
                      size_t *n_found, char err[OUTPOST_PLUGIN_ERR_SIZE]);
} outpost_host;

/* ---- backends ------------------------------------------------------------------- */

typedef struct outpost_message {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
    size_t len;
} outpost_message;

typedef struct outpost_backend_config {
    const char *name;       /* the target it serves: "peer" or "cloud" */
    const char *url;        /* base URL, e.g. https://api.example.com/v1 */
    const char *api_key;    /* bearer token; NULL: none */
    const char *model;      /* model name sent upstream; NULL: the request's */
    int connect_timeout_ms; /* per attempt */
    int timeout_ms;         /* whole call, retries included */
    int retries;            /* further attempts after a failure with no reply text */
    int retry_backoff_ms;   /* pause before the first retry, doubling per retry up
                               to 16 times this, with jitter; <= 0: the plugin's
                               default (appended within ABI 1: the agent sets it) */
} outpost_backend_config;

typedef struct outpost_chat_request {
    const outpost_message *messages; /* chat; NULL when prompt is set */
    size_t n_messages;
    const char *prompt;  /* a plain completion (/v1/completions); NULL for chat */
    size_t prompt_len;
    const char *model;   /* the client's model name; the config's model wins */
    double temperature;  /* < 0: not sent */
    double top_p;        /* < 0: not sent */
    int64_t max_tokens;  /* <= 0: not sent */
    const char *const *stop;
    size_t n_stop;
    bool has_seed;
    int64_t seed;
    const char *request_id; /* for the remote's logs (X-Request-Id) */
} outpost_chat_request;

/* Where the reply goes, as it arrives. on_text gets valid UTF-8 pieces in
 * order; a nonzero return cancels the call (OUTPOST_ECANCELLED). cancelled
 * (may be NULL) is polled while the call waits (connecting, the remote's
 * prefill, a backoff pause between attempts): nonzero stops the call the
 * same way, so a client that hangs up does not keep a remote call alive. */
typedef struct outpost_stream {
    void *ud;
    int (*on_text)(void *ud, const char *text, size_t len);
    int (*cancelled)(void *ud);
} outpost_stream;

typedef struct outpost_chat_result {
    char finish_reason[16];     /* "stop", "length", ... as the remote said */
    int64_t prompt_tokens;      /* -1: not reported */
    int64_t completion_tokens;  /* -1: not reported */
    int http_status;            /* of the last attempt; 0: none */
    int attempts;               /* how many were made */
    /* When the remote is an Outpost: its own decision, from its reply's
     * "outpost" object; "" otherwise. */
    char remote_route[16];
    char remote_reason[64];
} outpost_chat_result;

typedef struct outpost_backend_ops {
    int (*open)(const outpost_host *host, const outpost_backend_config *cfg, void **inst,
                char err[OUTPOST_PLUGIN_ERR_SIZE]);
    void (*close)(void *inst);
    /* Blocking; thread-safe on one instance. Streams the reply through s. */
    int (*chat)(void *inst, const outpost_chat_request *rq, const outpost_stream *s,
                outpost_chat_result *res, char err[OUTPOST_PLUGIN_ERR_SIZE]);
    /* A cheap reachability check (no tokens spent); *rtt_ms on success. */
    int (*probe)(void *inst, double *rtt_ms, char err[OUTPOST_PLUGIN_ERR_SIZE]);
} outpost_backend_ops;

/* ---- sensors -------------------------------------------------------------------- */

/* Device facts; a fact the device does not have stays at its "unknown"
 * value (NaN, or -1 for on_ac), which the policy sees as nil. */
typedef struct outpost_sensor_facts {
    double battery_pct;      /* 0..100 */
    int on_ac;               /* 1 on mains, 0 on battery, -1 unknown */
    double temp_c;           /* the hottest thermal zone */
    double cpu_pressure_pct; /* PSI "some" avg10 */
    double mem_pressure_pct;
    double io_pressure_pct;
} outpost_sensor_facts;

typedef struct outpost_sensor_ops {
    /* root: where /sys and /proc are found ("/" on a device; a test tree). */
    int (*open)(const outpost_host *host, const char *root, void **inst,
                char err[OUTPOST_PLUGIN_ERR_SIZE]);
    void (*close)(void *inst);
    int (*read)(void *inst, outpost_sensor_facts *out, char err[OUTPOST_PLUGIN_ERR_SIZE]);
} outpost_sensor_ops;

/* ---- hooks ---------------------------------------------------------------------- */

/* A request about to leave the device. A hook may replace a message's
 * content: it frees the old buffer with host->free and stores one from
 * host->alloc (NUL-terminated, len without the NUL); the agent frees what
 * it finds there afterwards. */
typedef struct outpost_outbound {
    const char *target;        /* "peer" or "cloud" */
    bool redact;               /* the policy asked for PII to be redacted */
    outpost_message *messages; /* content is char * the hook may replace */
    size_t n_messages;
    char *prompt;              /* plain completion, replaceable likewise; or NULL */
    size_t prompt_len;
    size_t n_redacted;         /* hooks add how many findings they replaced */
} outpost_outbound;

typedef struct outpost_hook_ops {
    int (*open)(const outpost_host *host, void **inst, char err[OUTPOST_PLUGIN_ERR_SIZE]);
    void (*close)(void *inst);
    /* A failure stops the request from leaving (it is answered locally). */
    int (*outbound)(void *inst, outpost_outbound *req, char err[OUTPOST_PLUGIN_ERR_SIZE]);
} outpost_hook_ops;

/* ---- the exported object ------------------------------------------------------ */

typedef struct outpost_plugin {
    uint32_t abi_version; /* OUTPOST_PLUGIN_ABI_VERSION it was built against */
    uint32_t struct_size; /* sizeof(outpost_plugin) it was built with */
    const char *name;     /* equals the file name without ".so" */
    const char *version;
    const char *description; /* one line, for `outpost status` and logs */
    outpost_plugin_kind kind;
    /* Optional, once after loading / before unloading. */
    int (*init)(const outpost_host *host, char err[OUTPOST_PLUGIN_ERR_SIZE]);
    void (*fini)(void);
    /* Exactly the table of the plugin's kind is set; the others are NULL. */
    const outpost_backend_ops *backend;
    const outpost_sensor_ops *sensor;
    const outpost_hook_ops *hook;
} outpost_plugin;

/* Defines the exported object under the symbol OUTPOST_PLUGIN_SYMBOL, with
 * default visibility (plugins are built with hidden visibility by default):
 *     OUTPOST_PLUGIN_EXPORT(my_plugin) = { ... };                             */
#define OUTPOST_PLUGIN_EXPORT(var)                                                           \
    __attribute__((visibility("default"))) const outpost_plugin var __asm__(OUTPOST_PLUGIN_SYMBOL)

#endif
