/*
 * config.h - the agent's configuration (the cfg_ module): built-in defaults,
 * a config file in Lua read as data, OUTPOST_* environment variables and
 * `outpost serve` flags, merged into one plain struct.
 *
 * Precedence, lowest first: built-in defaults < config file < environment <
 * flags. Build a configuration in exactly that order:
 *
 *     cfg *c;
 *     if (cfg_new(&c, err)                          // defaults
 *         || (path && cfg_load_file(c, path, err))  // -c FILE, if given
 *         || cfg_apply_env(c, err)                  // OUTPOST_*
 *         || cfg_apply_flag(c, "model", m, err)     // one call per flag, in argv order
 *         || cfg_validate(c, err))                  // cross-field checks
 *         { print err; cfg_free(c); exit 2 }
 *
 * With no file and no environment, `-m MODEL` alone gives a valid config.
 * There is no implicit config file: the systemd unit passes -c.
 *
 * The config file is Lua, run as data: a fresh Lua state with no libraries
 * and no functions at all (not even print or pairs), text chunks only, an
 * instruction limit and a memory cap. Local variables, arithmetic, string
 * concatenation and table constructors work; helper functions must be
 * `local`. After it runs, every global it left behind must be a key of the
 * schema below, holding tables, strings, numbers or booleans only; anything
 * else is an error naming the key path ("listen.socket: expected a string,
 * got function"), and an unknown key is an error with a suggestion
 * ("lisen: unknown key (did you mean listen?)").
 *
 * Relative paths are taken relative to the config file's directory (in the
 * file) or to the current directory (environment, flags); every path in a
 * cfg is absolute.
 *
 * Ownership: a cfg owns every string and array it points to; callers read
 * the fields and change them only through cfg_ functions. SIGHUP reload:
 * build a new cfg the same way and swap it in; cfg_ keeps no global state.
 * Functions that fail leave the cfg valid to free but partly updated; a
 * caller that gets an error should discard it.
 */
#ifndef OUTPOST_CONFIG_H
#define OUTPOST_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "quant.h"

/* Result codes: 0 is success, negative values name the kind of failure. */
enum {
    CFG_OK = 0,
    CFG_EIO = -1,      /* the file cannot be read, or is too big */
    CFG_ESYNTAX = -2,  /* not valid Lua text (bytecode is refused too) */
    CFG_ERUNTIME = -3, /* the file raised an error while running */
    CFG_EINSTR = -4,   /* the file ran past the instruction limit */
    CFG_EMEM = -5,     /* the file needed more than the memory cap */
    CFG_ETYPE = -6,    /* a value of the wrong type (a function, a string for a number) */
    CFG_EUNKNOWN = -7, /* a key the schema does not know (a typo) */
    CFG_EVALUE = -8,   /* right type, wrong value: out of range, bad URL, ... */
    CFG_EINVALID = -9, /* cfg_validate: the values do not fit together */
    CFG_ENOMEM = -10,  /* the host ran out of memory */
    CFG_EUSAGE = -11,  /* the caller broke the API contract (unknown flag name) */
};

/* Limits of the config reader itself (not of routing policies). */
#define CFG_FILE_MAX_BYTES (1u << 20)
#define CFG_INSTR_LIMIT 1000000u
#define CFG_MEM_LIMIT_BYTES (8u << 20)

/* Longest Unix socket path: sizeof(struct sockaddr_un.sun_path) - 1. */
#define CFG_SOCKET_PATH_MAX 107
/* Longest model name (the store's limit for names). */
#define CFG_MODEL_NAME_MAX 127

/* Where a value came from (cfg_dump shows it next to each value). */
typedef enum cfg_origin {
    CFG_FROM_DEFAULT,
    CFG_FROM_FILE,
    CFG_FROM_ENV,
    CFG_FROM_FLAG,
} cfg_origin;

typedef struct cfg_ids {
    uint32_t *v;
    size_t n;
} cfg_ids;

typedef struct cfg_strs {
    char **v;
    size_t n;
} cfg_strs;

/* How calls to one remote target (peer or cloud) are bounded: the keys
 * <target>.connect_timeout_ms, .timeout_ms, .retries, .retry_backoff_ms. */
typedef struct cfg_remote {
    int64_t connect_timeout_ms; /* per attempt, default 3000 */
    int64_t timeout_ms;         /* the whole call, retries and pauses included;
                                   0 (default): limits.request_timeout_s */
    int64_t retries;            /* further attempts after a failure before any
                                   reply text, default 2 */
    int64_t retry_backoff_ms;   /* pause before the first retry, doubling for
                                   each next one (at most 16 times this), with
                                   jitter; default 250 */
} cfg_remote;

/* One entry of `models`. */
typedef struct cfg_model {
    char *name;       /* the API name; default: the file name without .gguf */
    char *path;       /* the GGUF file (absolute) */
    int32_t ctx;      /* KV positions; 0: the model's training context */
    int32_t threads;  /* compute threads; 0: one per online core */
    qt_type kv_type;  /* QT_F16 ("f16", default) or QT_Q8_0 ("q8_0") */
    bool is_default;  /* exactly one model is the default (`default = true`
                         in the file; the first one when none says so) */
} cfg_model;

typedef struct cfg {
    cfg_model *models;
    size_t n_models;

    struct {
        /* Unix socket (absolute path). Default, first that applies:
         * $RUNTIME_DIRECTORY/outpost.sock (systemd's RuntimeDirectory=),
         * $XDG_RUNTIME_DIR/outpost.sock (a login session or user service),
         * /run/outpost/outpost.sock when run by systemd's system manager
         * ($INVOCATION_ID or $NOTIFY_SOCKET set, no XDG_RUNTIME_DIR),
         * else <state_dir>/outpost.sock (follows state_dir). */
        char *socket;
        unsigned socket_mode; /* file mode bits, default 0660 */
        /* Who may connect (http's rule): root, the daemon's own uid, and
         * members of the daemon's own group (the socket's group: `outpost`
         * under systemd) always; besides them a peer whose uid is in
         * allowed_uids or one of whose groups is in allowed_gids. A peer's
         * groups are its primary gid (SO_PEERCRED) and its supplementary
         * groups (SO_PEERGROUPS), since `usermod -aG outpost alice` only
         * adds a supplementary group. Both lists are empty by default;
         * names in the file are resolved to ids when it is read. */
        cfg_ids allowed_uids;
        cfg_ids allowed_gids;
        /* Optional TCP listener "HOST:PORT" ("[v6addr]:PORT"); NULL: none.
         * tcp_host is HOST without brackets, tcp_port 1..65535, and
         * tcp_loopback says HOST is localhost, 127.0.0.0/8 or ::1. */
        char *tcp;
        char *tcp_host;
        int tcp_port;
        bool tcp_loopback;
        char *api_key; /* bearer token for TCP (secret); NULL: none */
    } listen;

    /* SQLite database and saved KV state. Default: $STATE_DIRECTORY
     * (systemd's StateDirectory=), else $XDG_STATE_HOME/outpost, else
     * $HOME/.local/state/outpost. */
    char *state_dir;

    struct {
        char *file;    /* default: <lua_dir>/default.lua (follows lua_dir) */
        char *lua_dir; /* require() root; default: the installed lua/ directory
                          (datadir/outpost/lua), or the source tree's lua/ in an
                          uninstalled build */
        int64_t instr_limit;  /* per route() call, default 1,000,000 */
        int64_t mem_limit_mb; /* the policy's whole Lua state, default 8 */
    } policy;

    struct {
        char *url;     /* another Outpost, http(s)://...; NULL: no peer */
        char *api_key; /* secret; NULL: none */
        cfg_remote call;
    } peer;

    struct {
        char *url;     /* OpenAI-compatible base URL; NULL: no cloud */
        char *api_key; /* secret; NULL: none */
        char *model;   /* model name sent upstream; NULL: the client's */
        double budget_usd_month;    /* NaN: no cap (0 means never use the cloud) */
        double price_per_1k_tokens; /* USD, for the spend estimate */
        cfg_remote call;
    } cloud;

    struct {
        int64_t max_body_bytes;
        int64_t max_prompt_tokens; /* 0: as many as the model's context holds */
        int64_t max_output_tokens;
        int64_t queue_depth;       /* waiting requests per model; beyond: 429 */
        int64_t request_timeout_s;
        int64_t drain_timeout_s;   /* SIGTERM waits this long for in-flight requests */
    } limits;

    struct { /* 0 means keep forever / no cap */
        int64_t request_max_age_days;
        int64_t max_requests;
        int64_t session_idle_days;
    } retention;

    struct {
        int64_t disk_budget_mb; /* saved KV of idle sessions; 0: never save */
    } kv;

    struct { /* P4 reads these; here only their shape is checked */
        char *broker;       /* mqtt://host:port or mqtts://host:port; NULL: no fleet */
        char *device_id;    /* one MQTT topic level: [A-Za-z0-9_.-], 1..64 */
        char *fleet_key;    /* minisign public key file */
        cfg_strs groups;    /* same alphabet as device_id */
        char *topic_prefix; /* default "outpost/v1" */
        char *ca, *cert, *key; /* TLS files for mqtts (key is a path, not a secret) */
        char *ota_ca;          /* CA file for OTA downloads by https:// URL; NULL: system's */
        char *username, *password; /* NULL: none; password is a secret */
        int64_t mqtt_version;      /* 4 (3.1.1, default) or 5 */
        int64_t keepalive_s, reconnect_min_ms, reconnect_max_ms;
        int64_t rollup_interval_s, outbox_max_msgs; /* config.set may change them */
    } fleet;

    struct {
        char *dir;        /* default: the installed plugin directory
                             (libdir/outpost/plugins), or the build tree's */
        cfg_strs enabled; /* plugin names to load at start; default sensor-linux
                             and hook-redact */
        char *backend;    /* the backend plugin for peer and cloud, loaded when
                             either is configured; default "backend-openai" */
    } plugins;

    struct {
        char *root;         /* where sensor plugins find sys/ and proc/; default "/" */
        int64_t interval_s; /* seconds between readings, default 5 */
    } sensors;

    /* The agent's own memory budget in MiB (0: none). The kernel-enforced
     * ceiling is the systemd unit's MemoryMax=, which cannot read this file:
     * keep the two equal (packaging/outpost.service explains how). */
    int64_t memory_max_mb;

    char *source; /* the config file read, NULL when none */

    /* Private to config.c. */
    unsigned char *origin_;
    bool socket_follows_state_dir_;
} cfg;

/* Built-in defaults, some taken from the environment (see the fields). */
int cfg_new(cfg **out, char err[256]);
void cfg_free(cfg *c);

/* Run the Lua file at path (or text, for tests and fuzzing; name is used in
 * messages and relative paths resolve against the current directory) and
 * merge its globals over c. Errors name the file, the key path and what was
 * expected; a file that loops or allocates without end stops at
 * CFG_INSTR_LIMIT / CFG_MEM_LIMIT_BYTES with CFG_EINSTR / CFG_EMEM. */
int cfg_load_file(cfg *c, const char *path, char err[256]);
int cfg_load_string(cfg *c, const char *text, size_t len, const char *name, char err[256]);

/* Apply the OUTPOST_* variables that are set and not empty:
 *   OUTPOST_MODEL      models (like -m)      OUTPOST_SOCKET     listen.socket
 *   OUTPOST_LISTEN     listen.tcp            OUTPOST_API_KEY    listen.api_key
 *   OUTPOST_STATE_DIR  state_dir             OUTPOST_POLICY     policy.file
 *   OUTPOST_LUA_DIR    policy.lua_dir        OUTPOST_PEER       peer.url
 *   OUTPOST_PEER_KEY   peer.api_key          OUTPOST_CLOUD      cloud.url
 *   OUTPOST_CLOUD_KEY  cloud.api_key         OUTPOST_CLOUD_MODEL cloud.model
 *   OUTPOST_BROKER     fleet.broker          OUTPOST_DEVICE_ID  fleet.device_id
 *   OUTPOST_FLEET_KEY  fleet.fleet_key       OUTPOST_PLUGIN_DIR plugins.dir
 *   OUTPOST_MEMORY_MAX_MB memory_max_mb      OUTPOST_SYSFS_ROOT sensors.root
 *   OUTPOST_MQTT_PASSWORD fleet.password
 * Errors name the variable. */
int cfg_apply_env(cfg *c, char err[256]);

/* Apply one command-line flag, named without dashes:
 *   model (-m)  socket  listen  state-dir  policy  lua-dir  peer  cloud
 *   broker  device-id  fleet-key  group  ca  cert  key  plugin-dir
 * or any scalar or list key path ("limits.queue_depth"), value as text.
 * Lists (group, plugins.enabled, ...) take comma-separated items; a list
 * flag given twice appends, the first replaces what the file said.
 * "model": VALUE names a configured model (exact name, no '/') which then
 * becomes the default, or else is a GGUF path: the first such flag replaces
 * the file's model list, later ones add models; the first is the default.
 * OUTPOST_MODEL works the same way. Errors name the flag ("--socket: ...");
 * an unknown flag name is CFG_EUSAGE. */
int cfg_apply_flag(cfg *c, const char *flag, const char *value, char err[256]);

/* Cross-field checks: at least one model, unique model names ("default" is
 * reserved: it always names the default model), exactly one default, a
 * socket path that fits sun_path, a TCP listener on a non-loopback address
 * only with an api_key, remote timeouts that fit together (a connect timeout
 * within the call's, a call within limits.request_timeout_s), a fleet broker only with device_id and fleet_key,
 * TLS cert and key together. */
int cfg_validate(const cfg *c, char err[256]);

/* The effective configuration as a Lua config file (it reads back with
 * cfg_load_string), each value with a comment saying where it came from.
 * Secrets (api keys) print as "<redacted>". */
void cfg_dump(const cfg *c, FILE *f);

/* The default model (NULL when there is none), and a model by API name
 * ("default" names the default model). */
const cfg_model *cfg_default_model(const cfg *c);
const cfg_model *cfg_find_model(const cfg *c, const char *name);

/* Where a key's value came from; -1 for a path the schema does not know. */
int cfg_origin_of(const cfg *c, const char *key_path);

#endif
