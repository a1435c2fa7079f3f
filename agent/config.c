/*
 * config.c - the agent's configuration: one schema table, four sources
 * (built-in defaults, a Lua file, OUTPOST_* variables, flags), cross-field
 * checks, and a dump that reads back as a config file (see config.h).
 *
 * The schema is rows[] below (and model_rows[] for the entries of models):
 * key path, type, where the value lives in struct cfg, range or validator,
 * default, environment variable, flag and a line of documentation. Every
 * source goes through the same setters, so a value is checked the same way
 * whether it came from the file, the environment or a flag, and each key
 * remembers which source set it last (cfg_dump shows it).
 *
 * The Lua file is data. It runs in a lua_State that has no library opened
 * at all: its global table starts empty, there is no pcall to catch our
 * limits, no setmetatable (so no metamethods and no finalizers), no load.
 * Our allocator caps the state's memory and a count hook its instructions.
 * What the chunk leaves in its globals is then read raw with lua_next; that
 * walk never allocates inside the Lua state and never calls into Lua code,
 * so it cannot raise and needs no protected call, and a C allocation made
 * during it is always owned by the cfg or by the function that made it.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Install locations the build passes in (meson.build); a plain compile
 * gets the /usr/local layout. */
#ifndef OUTPOST_LUA_DIR
#define OUTPOST_LUA_DIR "/usr/local/share/outpost/lua"
#endif
#ifndef OUTPOST_PLUGIN_DIR
#define OUTPOST_PLUGIN_DIR "/usr/local/lib/outpost/plugins"
#endif

#define CFG_PATH_MAX 4095
#define CFG_TEXT_MAX 4096
#define CFG_LIST_MAX 256
#define CFG_MODELS_MAX 64
#define HOOK_STEP 1000
/* Reading the globals needs a little memory of its own (stack slots) even
 * when the chunk used all of its cap. */
#define READ_HEADROOM_BYTES (64u << 10)

/* ---- the schema ---------------------------------------------------------- */

typedef enum kt {
    KT_SECTION, /* a table of further keys */
    KT_MODELS,  /* the array of model tables */
    KT_STR,     /* text, shape checked by row.check */
    KT_PATH,    /* a file or directory, made absolute */
    KT_TCP,     /* HOST:PORT, fills tcp_host/tcp_port/tcp_loopback */
    KT_INT,     /* integer in [min, max] */
    KT_NUM,     /* finite number in [fmin, fmax] */
    KT_BOOL,
    KT_MODE,    /* file mode, written as an octal string */
    KT_UIDS,    /* array of user ids or names */
    KT_GIDS,    /* array of group ids or names */
    KT_NAMES,   /* array of strings, each checked by row.check */
    KT_KVTYPE,  /* "f16" | "q8_0" */
} kt;

#define F_OPT 1u    /* may be unset: NULL, or NaN for a number */
#define F_SECRET 2u /* never printed, never echoed in an error */

/* NULL when s is acceptable, else what was expected. */
typedef const char *(*check_fn)(const char *s, size_t len);

typedef struct row {
    const char *path;
    kt type;
    size_t off;     /* into struct cfg, or struct cfg_model for model_rows */
    unsigned width; /* KT_INT: bytes of the field */
    int64_t min, max;
    double fmin, fmax;
    const char *def; /* default as text; NULL: unset or computed in cfg_new */
    check_fn check;
    unsigned flags;
    const char *env;
    const char *flag;
    const char *doc;
} row;

static const char *check_url(const char *s, size_t len);
static const char *check_broker(const char *s, size_t len);
static const char *check_token(const char *s, size_t len);
static const char *check_password(const char *s, size_t len);
static const char *check_model_name(const char *s, size_t len);
static const char *check_upstream_model(const char *s, size_t len);
static const char *check_topic_level(const char *s, size_t len);
static const char *check_topic_prefix(const char *s, size_t len);
static const char *check_plugin_name(const char *s, size_t len);

#define AT(field) .off = offsetof(cfg, field)
#define INT_AT(field) AT(field), .width = sizeof(((cfg *)0)->field)
#define MAT(field) .off = offsetof(cfg_model, field)
#define MINT_AT(field) MAT(field), .width = sizeof(((cfg_model *)0)->field)

/* Order is the order of cfg_dump and of the shipped config.lua. A key
 * "a.b" must follow its section "a". */
static const row rows[] = {
    {.path = "models", .type = KT_MODELS, .env = "OUTPOST_MODEL", .flag = "model",
     .doc = "models to load: an array of { name, path, ctx, threads, kv_type, default }"},

    {.path = "listen", .type = KT_SECTION, .doc = "where local apps reach the agent"},
    {.path = "listen.socket", .type = KT_PATH, AT(listen.socket), .env = "OUTPOST_SOCKET",
     .flag = "socket", .doc = "Unix socket path"},
    {.path = "listen.socket_mode", .type = KT_MODE, AT(listen.socket_mode), .def = "0660",
     .doc = "socket file mode, an octal string"},
    {.path = "listen.allowed_uids", .type = KT_UIDS, AT(listen.allowed_uids), .def = "",
     .doc = "users (ids or names) allowed on the socket besides the agent's own and root"},
    {.path = "listen.allowed_gids", .type = KT_GIDS, AT(listen.allowed_gids), .def = "",
     .doc = "groups (ids or names) whose members are allowed on the socket"},
    {.path = "listen.tcp", .type = KT_TCP, AT(listen.tcp), .flags = F_OPT,
     .env = "OUTPOST_LISTEN", .flag = "listen",
     .doc = "optional TCP listener HOST:PORT; beyond loopback it needs api_key"},
    {.path = "listen.api_key", .type = KT_STR, AT(listen.api_key), .check = check_token,
     .flags = F_OPT | F_SECRET, .env = "OUTPOST_API_KEY",
     .doc = "bearer token TCP clients must send"},

    {.path = "state_dir", .type = KT_PATH, AT(state_dir), .env = "OUTPOST_STATE_DIR",
     .flag = "state-dir", .doc = "SQLite database and saved KV state"},

    {.path = "policy", .type = KT_SECTION, .doc = "the Lua routing policy"},
    {.path = "policy.file", .type = KT_PATH, AT(policy.file), .env = "OUTPOST_POLICY",
     .flag = "policy", .doc = "the policy defining route(req, env)"},
    {.path = "policy.lua_dir", .type = KT_PATH, AT(policy.lua_dir), .env = "OUTPOST_LUA_DIR",
     .flag = "lua-dir", .doc = "where the policy's require() finds modules"},
    {.path = "policy.instr_limit", .type = KT_INT, INT_AT(policy.instr_limit), .min = 1000,
     .max = 1000000000, .def = "1000000", .doc = "Lua instructions per route() call"},
    {.path = "policy.mem_limit_mb", .type = KT_INT, INT_AT(policy.mem_limit_mb), .min = 1,
     .max = 1024, .def = "8", .doc = "memory cap of the policy's Lua state, MiB"},

    {.path = "peer", .type = KT_SECTION, .doc = "a network-edge peer (another Outpost)"},
    {.path = "peer.url", .type = KT_STR, AT(peer.url), .check = check_url, .flags = F_OPT,
     .env = "OUTPOST_PEER", .flag = "peer", .doc = "base URL, http(s)://host:port"},
    {.path = "peer.api_key", .type = KT_STR, AT(peer.api_key), .check = check_token,
     .flags = F_OPT | F_SECRET, .env = "OUTPOST_PEER_KEY", .doc = "bearer token for the peer"},
    {.path = "peer.connect_timeout_ms", .type = KT_INT, INT_AT(peer.call.connect_timeout_ms),
     .min = 10, .max = 600000, .def = "3000", .doc = "connect timeout of one attempt, ms"},
    {.path = "peer.timeout_ms", .type = KT_INT, INT_AT(peer.call.timeout_ms), .min = 0,
     .max = 86400000, .def = "0",
     .doc = "the whole call, retries included, ms; 0: limits.request_timeout_s"},
    {.path = "peer.retries", .type = KT_INT, INT_AT(peer.call.retries), .min = 0, .max = 10,
     .def = "2", .doc = "further attempts after a failure before any reply text"},
    {.path = "peer.retry_backoff_ms", .type = KT_INT, INT_AT(peer.call.retry_backoff_ms),
     .min = 1, .max = 60000, .def = "250",
     .doc = "pause before the first retry, ms; doubles per retry, at most 16 times this"},

    {.path = "cloud", .type = KT_SECTION, .doc = "an OpenAI-compatible cloud API"},
    {.path = "cloud.url", .type = KT_STR, AT(cloud.url), .check = check_url, .flags = F_OPT,
     .env = "OUTPOST_CLOUD", .flag = "cloud", .doc = "base URL, e.g. https://api.openai.com/v1"},
    {.path = "cloud.api_key", .type = KT_STR, AT(cloud.api_key), .check = check_token,
     .flags = F_OPT | F_SECRET, .env = "OUTPOST_CLOUD_KEY",
     .doc = "API key (better kept in OUTPOST_CLOUD_KEY than in this file)"},
    {.path = "cloud.model", .type = KT_STR, AT(cloud.model), .check = check_upstream_model,
     .flags = F_OPT, .env = "OUTPOST_CLOUD_MODEL",
     .doc = "model name sent upstream; nil: the one the client asked for"},
    {.path = "cloud.budget_usd_month", .type = KT_NUM, AT(cloud.budget_usd_month), .fmin = 0,
     .fmax = 1e9, .flags = F_OPT, .doc = "monthly spend cap in USD; nil: no cap, 0: never"},
    {.path = "cloud.price_per_1k_tokens", .type = KT_NUM, AT(cloud.price_per_1k_tokens),
     .fmin = 0, .fmax = 1000, .def = "0.01",
     .doc = "USD per 1000 tokens (prompt + completion), for the spend estimate"},
    {.path = "cloud.connect_timeout_ms", .type = KT_INT, INT_AT(cloud.call.connect_timeout_ms),
     .min = 10, .max = 600000, .def = "3000", .doc = "connect timeout of one attempt, ms"},
    {.path = "cloud.timeout_ms", .type = KT_INT, INT_AT(cloud.call.timeout_ms), .min = 0,
     .max = 86400000, .def = "0",
     .doc = "the whole call, retries included, ms; 0: limits.request_timeout_s"},
    {.path = "cloud.retries", .type = KT_INT, INT_AT(cloud.call.retries), .min = 0, .max = 10,
     .def = "2", .doc = "further attempts after a failure before any reply text"},
    {.path = "cloud.retry_backoff_ms", .type = KT_INT, INT_AT(cloud.call.retry_backoff_ms),
     .min = 1, .max = 60000, .def = "250",
     .doc = "pause before the first retry, ms; doubles per retry, at most 16 times this"},

    {.path = "limits", .type = KT_SECTION, .doc = "per-request and per-queue bounds"},
    {.path = "limits.max_body_bytes", .type = KT_INT, INT_AT(limits.max_body_bytes),
     .min = 1024, .max = 1 << 30, .def = "4194304", .doc = "largest request body; beyond: 413"},
    {.path = "limits.max_prompt_tokens", .type = KT_INT, INT_AT(limits.max_prompt_tokens),
     .min = 0, .max = 16777216, .def = "0", .doc = "0: as many as the model's context holds"},
    {.path = "limits.max_output_tokens", .type = KT_INT, INT_AT(limits.max_output_tokens),
     .min = 1, .max = 16777216, .def = "2048", .doc = "cap on max_tokens of a request"},
    {.path = "limits.queue_depth", .type = KT_INT, INT_AT(limits.queue_depth), .min = 1,
     .max = 65536, .def = "16", .doc = "waiting requests per model; beyond: 429"},
    {.path = "limits.request_timeout_s", .type = KT_INT, INT_AT(limits.request_timeout_s),
     .min = 1, .max = 86400, .def = "300", .doc = "a request's whole life, queueing included"},
    {.path = "limits.drain_timeout_s", .type = KT_INT, INT_AT(limits.drain_timeout_s),
     .min = 0, .max = 3600, .def = "30",
     .doc = "SIGTERM waits this long for in-flight requests (the unit's TimeoutStopSec covers it)"},

    {.path = "retention", .type = KT_SECTION, .doc = "how long the store keeps things; 0: forever"},
    {.path = "retention.request_max_age_days", .type = KT_INT,
     INT_AT(retention.request_max_age_days), .min = 0, .max = 36500, .def = "30",
     .doc = "telemetry rows older than this are dropped"},
    {.path = "retention.max_requests", .type = KT_INT, INT_AT(retention.max_requests),
     .min = 0, .max = 1000000000000, .def = "100000", .doc = "telemetry rows kept at most"},
    {.path = "retention.session_idle_days", .type = KT_INT,
     INT_AT(retention.session_idle_days), .min = 0, .max = 36500, .def = "30",
     .doc = "sessions unused this long are dropped"},

    {.path = "kv", .type = KT_SECTION, .doc = "saved KV caches of idle sessions"},
    {.path = "kv.disk_budget_mb", .type = KT_INT, INT_AT(kv.disk_budget_mb), .min = 0,
     .max = 100000000, .def = "1024", .doc = "disk for saved KV state, LRU-evicted; 0: none"},

    {.path = "fleet", .type = KT_SECTION, .doc = "fleet management over MQTT"},
    {.path = "fleet.broker", .type = KT_STR, AT(fleet.broker), .check = check_broker,
     .flags = F_OPT, .env = "OUTPOST_BROKER", .flag = "broker",
     .doc = "mqtt://host:port or mqtts://host:port; nil: no fleet"},
    {.path = "fleet.device_id", .type = KT_STR, AT(fleet.device_id), .check = check_topic_level,
     .flags = F_OPT, .env = "OUTPOST_DEVICE_ID", .flag = "device-id",
     .doc = "this device's id (one MQTT topic level)"},
    {.path = "fleet.fleet_key", .type = KT_PATH, AT(fleet.fleet_key), .flags = F_OPT,
     .env = "OUTPOST_FLEET_KEY", .flag = "fleet-key",
     .doc = "minisign public key that signs fleet commands"},
    {.path = "fleet.groups", .type = KT_NAMES, AT(fleet.groups), .check = check_topic_level,
     .def = "", .flag = "group", .doc = "groups whose commands this device takes"},
    {.path = "fleet.topic_prefix", .type = KT_STR, AT(fleet.topic_prefix),
     .check = check_topic_prefix, .def = "outpost/v1", .doc = "MQTT topic prefix"},
    {.path = "fleet.ca", .type = KT_PATH, AT(fleet.ca), .flags = F_OPT, .flag = "ca",
     .doc = "CA certificate for mqtts; nil: the system's"},
    {.path = "fleet.ota_ca", .type = KT_PATH, AT(fleet.ota_ca), .flags = F_OPT,
     .doc = "CA certificate(s) for OTA downloads by https:// URL; nil: the system's"},
    {.path = "fleet.cert", .type = KT_PATH, AT(fleet.cert), .flags = F_OPT, .flag = "cert",
     .doc = "client certificate for mqtts"},
    {.path = "fleet.key", .type = KT_PATH, AT(fleet.key), .flags = F_OPT, .flag = "key",
     .doc = "client private key file for mqtts"},
    {.path = "fleet.username", .type = KT_STR, AT(fleet.username), .check = check_token,
     .flags = F_OPT, .doc = "MQTT user name; nil: none"},
    {.path = "fleet.password", .type = KT_STR, AT(fleet.password), .check = check_password,
     .flags = F_OPT | F_SECRET, .env = "OUTPOST_MQTT_PASSWORD", .doc = "MQTT password"},
    {.path = "fleet.mqtt_version", .type = KT_INT, INT_AT(fleet.mqtt_version), .min = 4, .max = 5,
     .def = "4", .doc = "4 (MQTT 3.1.1) or 5"},
    {.path = "fleet.keepalive_s", .type = KT_INT, INT_AT(fleet.keepalive_s), .min = 5,
     .max = 3600, .def = "30", .doc = "MQTT keep-alive in seconds"},
    {.path = "fleet.reconnect_min_ms", .type = KT_INT, INT_AT(fleet.reconnect_min_ms), .min = 10,
     .max = 600000, .def = "500", .doc = "first reconnect delay (doubles, with jitter)"},
    {.path = "fleet.reconnect_max_ms", .type = KT_INT, INT_AT(fleet.reconnect_max_ms), .min = 10,
     .max = 3600000, .def = "30000", .doc = "longest reconnect delay"},
    {.path = "fleet.rollup_interval_s", .type = KT_INT, INT_AT(fleet.rollup_interval_s),
     .min = 10, .max = 86400, .def = "300",
     .doc = "seconds between telemetry roll-ups (config.set may change it)"},
    {.path = "fleet.outbox_max_msgs", .type = KT_INT, INT_AT(fleet.outbox_max_msgs), .min = 100,
     .max = 10000000, .def = "10000",
     .doc = "unsent telemetry kept; beyond it the oldest roll-ups go first (config.set may "
            "change it)"},

    {.path = "plugins", .type = KT_SECTION, .doc = "backend, sensor and hook plugins"},
    {.path = "plugins.dir", .type = KT_PATH, AT(plugins.dir), .env = "OUTPOST_PLUGIN_DIR",
     .flag = "plugin-dir", .doc = "where plugins are loaded from"},
    {.path = "plugins.enabled", .type = KT_NAMES, AT(plugins.enabled), .check = check_plugin_name,
     .def = "sensor-linux,hook-redact", .doc = "plugins to load at start, by name"},
    {.path = "plugins.backend", .type = KT_STR, AT(plugins.backend), .check = check_plugin_name,
     .def = "backend-openai",
     .doc = "backend plugin for peer and cloud, loaded only when one is configured"},

    {.path = "sensors", .type = KT_SECTION,
     .doc = "device facts for the policy (sensor plugins); read at start, restart to change"},
    {.path = "sensors.root", .type = KT_PATH, AT(sensors.root), .def = "/",
     .env = "OUTPOST_SYSFS_ROOT", .doc = "where /sys and /proc are read (a fake tree in tests)"},
    {.path = "sensors.interval_s", .type = KT_INT, INT_AT(sensors.interval_s), .min = 1,
     .max = 3600, .def = "5", .doc = "seconds between two readings of the sensors"},

    {.path = "memory_max_mb", .type = KT_INT, INT_AT(memory_max_mb), .min = 0,
     .max = 100000000, .def = "0", .env = "OUTPOST_MEMORY_MAX_MB",
     .doc = "the agent's memory budget, MiB (0: none); keep equal to the unit's MemoryMax="},
};
#define N_ROWS (sizeof rows / sizeof rows[0])

static const row model_rows[] = {
    {.path = "name", .type = KT_STR, MAT(name), .check = check_model_name,
     .doc = "API name; default: the file name without .gguf"},
    {.path = "path", .type = KT_PATH, MAT(path), .doc = "the GGUF file"},
    {.path = "ctx", .type = KT_INT, MINT_AT(ctx), .min = 0, .max = 16777216, .def = "0",
     .doc = "KV positions; 0: the model's training context"},
    {.path = "threads", .type = KT_INT, MINT_AT(threads), .min = 0, .max = 1024, .def = "0",
     .doc = "compute threads; 0: one per online core"},
    {.path = "kv_type", .type = KT_KVTYPE, MAT(kv_type), .def = "f16",
     .doc = "KV cache type: f16 or q8_0"},
    {.path = "default", .type = KT_BOOL, MAT(is_default), .def = "false",
     .doc = "the model `default` names (the first one when none says so)"},
};
#define N_MODEL_ROWS (sizeof model_rows / sizeof model_rows[0])

static const row *model_row(const char *name)
{
    for (size_t i = 0; i < N_MODEL_ROWS; i++)
        if (strcmp(model_rows[i].path, name) == 0)
            return &model_rows[i];
    return NULL;
}

static int row_index(const char *path)
{
    for (size_t i = 0; i < N_ROWS; i++)
        if (strcmp(rows[i].path, path) == 0)
            return (int)i;
    return -1;
}

static const char *leaf_of(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* Length of the parent part of a row path ("listen" of "listen.socket"). */
static size_t parent_len(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot ? (size_t)(dot - path) : 0;
}

/* ---- the context of one source ------------------------------------------- */

/* Who is setting values: for messages, relative paths and origins. */
typedef struct src {
    cfg *c;
    cfg_origin origin;
    const char *where;    /* "file.lua", "OUTPOST_SOCKET", "--socket", "defaults" */
    bool key_in_msg;      /* name the key path after where (file, defaults) */
    const char *base_dir; /* absolute directory for relative paths */
    char *err;
} src;

static int fail(src *x, int rc, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(src *x, int rc, const char *key, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (x->key_in_msg && key)
        snprintf(x->err, 256, "%s: %s: %s", x->where, key, msg);
    else
        snprintf(x->err, 256, "%s: %s", x->where, msg);
    return rc;
}

/* A value quoted for an error line: printable ASCII, cut at 48 bytes. */
static void shown(char *dst, size_t cap, const char *s, size_t len)
{
    size_t n = 0;
    if (cap < 5)
        return;
    for (size_t i = 0; i < len && n + 4 < cap && i < 48; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (len > 48 && n + 4 < cap) {
        memcpy(dst + n, "...", 3);
        n += 3;
    }
    dst[n] = '\0';
}

/* ---- validators ---------------------------------------------------------- */

static bool all_graphic(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* After "scheme://": a host, optionally ":port", then an optional path. */
static bool host_port_ok(const char *s, size_t len, bool allow_path)
{
    size_t i = 0;
    if (i < len && s[i] == '[') {
        while (i < len && s[i] != ']')
            i++;
        if (i == len || i < 2)
            return false;
        i++;
    } else {
        size_t h = i;
        while (i < len && s[i] != ':' && s[i] != '/')
            i++;
        if (i == h)
            return false;
    }
    if (i < len && s[i] == ':') {
        size_t p = ++i;
        long port = 0;
        while (i < len && isdigit((unsigned char)s[i]) && port <= 65535)
            port = port * 10 + (s[i++] - '0');
        if (i == p || port < 1 || port > 65535)
            return false;
    }
    if (i < len && (!allow_path || s[i] != '/'))
        return false;
    return true;
}

static const char *check_url(const char *s, size_t len)
{
    const char *want = "expected http://HOST[:PORT][/PATH] or https://...";
    if (len > 2048 || !all_graphic(s, len))
        return want;
    size_t skip = 0;
    if (len > 7 && strncmp(s, "http://", 7) == 0)
        skip = 7;
    else if (len > 8 && strncmp(s, "https://", 8) == 0)
        skip = 8;
    if (!skip || !host_port_ok(s + skip, len - skip, true))
        return want;
    return NULL;
}

static const char *check_broker(const char *s, size_t len)
{
    const char *want = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]";
    if (len > 1024 || !all_graphic(s, len))
        return want;
    size_t skip = 0;
    if (len > 7 && strncmp(s, "mqtt://", 7) == 0)
        skip = 7;
    else if (len > 8 && strncmp(s, "mqtts://", 8) == 0)
        skip = 8;
    if (!skip || !host_port_ok(s + skip, len - skip, false))
        return want;
    return NULL;
}

/* Bearer tokens go into an HTTP header: visible ASCII only. */
static const char *check_token(const char *s, size_t len)
{
    if (len < 1 || len > 1024 || !all_graphic(s, len))
        return "expected 1 to 1024 visible ASCII characters";
    return NULL;
}

/* MQTT passwords may hold spaces and any UTF-8 (MQTT 3.1.1 section 3.1.3.5:
 * binary data up to 65535 bytes); control characters are refused so a
 * config file cannot hide one. */
static const char *check_password(const char *s, size_t len)
{
    if (len < 1 || len > 65535)
        return "expected 1 to 65535 bytes";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return "expected no control characters";
    return NULL;
}

static const char *check_model_name(const char *s, size_t len)
{
    if (len < 1 || len > CFG_MODEL_NAME_MAX || !all_graphic(s, len) || memchr(s, '"', len) ||
        memchr(s, '\\', len))
        return "expected 1 to 127 visible ASCII characters without quotes or backslashes";
    if (len == 7 && memcmp(s, "default", 7) == 0)
        return "\"default\" is reserved: it always names the default model";
    return NULL;
}

static const char *check_upstream_model(const char *s, size_t len)
{
    if (len < 1 || len > 255 || !all_graphic(s, len))
        return "expected 1 to 255 visible ASCII characters";
    return NULL;
}

/* One MQTT topic level we build topics from: no '/', '+', '#'. */
static const char *check_topic_level(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return "expected 1 to 64 characters of A-Z a-z 0-9 _ . -";
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return "expected 1 to 64 characters of A-Z a-z 0-9 _ . -";
    return NULL;
}

static const char *check_topic_prefix(const char *s, size_t len)
{
    const char *want = "expected topic levels of A-Z a-z 0-9 _ . - separated by '/'";
    if (len < 1 || len > 128 || s[0] == '/' || s[len - 1] == '/')
        return want;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '/') {
            if (s[i + 1] == '/')
                return want;
        } else if (!isalnum((unsigned char)ch) && ch != '_' && ch != '.' && ch != '-') {
            return want;
        }
    }
    return NULL;
}

static const char *check_plugin_name(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return "expected 1 to 64 characters of a-z 0-9 _ -";
    for (size_t i = 0; i < len; i++)
        if (!(s[i] >= 'a' && s[i] <= 'z') && !isdigit((unsigned char)s[i]) && s[i] != '_' &&
            s[i] != '-')
            return "expected 1 to 64 characters of a-z 0-9 _ -";
    return NULL;
}

/* ---- setters ------------------------------------------------------------- */

static void *field_of(void *base, const row *r)
{
    return (char *)base + r->off;
}

static void strs_clear(cfg_strs *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void ids_clear(cfg_ids *l)
{
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void model_clear(cfg_model *m)
{
    free(m->name);
    free(m->path);
    memset(m, 0, sizeof *m);
}

static void models_free(cfg_model *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        model_clear(&v[i]);
    free(v);
}

static void set_str(char **slot, char *owned)
{
    free(*slot);
    *slot = owned;
}

/* s (len bytes) made absolute against x->base_dir; NULL when out of memory. */
static char *absolute(const src *x, const char *s, size_t len)
{
    while (len > 2 && s[0] == '.' && s[1] == '/') {
        s += 2;
        len -= 2;
        while (len > 1 && s[0] == '/') {
            s++;
            len--;
        }
    }
    if (len > 0 && s[0] == '/')
        return strndup(s, len);
    if (len == 1 && s[0] == '.')
        return strdup(x->base_dir);
    size_t blen = strlen(x->base_dir);
    bool slash = blen > 0 && x->base_dir[blen - 1] == '/';
    char *out = malloc(blen + 1 + len + 1);
    if (!out)
        return NULL;
    memcpy(out, x->base_dir, blen);
    size_t n = blen;
    if (!slash)
        out[n++] = '/';
    memcpy(out + n, s, len);
    out[n + len] = '\0';
    return out;
}

static bool is_loopback(const char *host)
{
    if (strcmp(host, "localhost") == 0)
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

static int set_tcp(src *x, const char *key, const char *s, size_t len)
{
    cfg *c = x->c;
    char v[64];
    shown(v, sizeof v, s, len);
    const char *want = "expected HOST:PORT, [IPv6]:PORT, port 1 to 65535";
    if (len < 3 || len > 300 || !all_graphic(s, len))
        return fail(x, CFG_EVALUE, key, "\"%s\" is not a listen address (%s)", v, want);
    const char *colon = memrchr(s, ':', len);
    if (!colon || colon == s)
        return fail(x, CFG_EVALUE, key, "\"%s\" is not a listen address (%s)", v, want);
    size_t hlen = (size_t)(colon - s);
    const char *host = s;
    if (host[0] == '[') {
        if (hlen < 3 || host[hlen - 1] != ']')
            return fail(x, CFG_EVALUE, key, "\"%s\" is not a listen address (%s)", v, want);
        host++;
        hlen -= 2;
    } else if (memchr(host, ':', hlen) || memchr(host, ']', hlen)) {
        return fail(x, CFG_EVALUE, key,
                    "\"%s\": an IPv6 address needs brackets, as in [::1]:8080", v);
    }
    long port = 0;
    const char *p = colon + 1;
    size_t plen = len - (size_t)(p - s);
    if (plen < 1 || plen > 5)
        port = -1;
    for (size_t i = 0; port >= 0 && i < plen; i++)
        port = isdigit((unsigned char)p[i]) ? port * 10 + (p[i] - '0') : -1;
    if (port < 1 || port > 65535)
        return fail(x, CFG_EVALUE, key, "\"%s\": port out of range (%s)", v, want);
    char *whole = strndup(s, len), *h = strndup(host, hlen);
    if (!whole || !h) {
        free(whole);
        free(h);
        return fail(x, CFG_ENOMEM, key, "out of memory");
    }
    set_str(&c->listen.tcp, whole);
    set_str(&c->listen.tcp_host, h);
    c->listen.tcp_port = (int)port;
    c->listen.tcp_loopback = is_loopback(h);
    return CFG_OK;
}

/* A uid or gid from a decimal number or a name (resolved now). */
static int parse_id(src *x, const char *key, bool group, const char *s, size_t len,
                    uint32_t *out)
{
    char item[256];
    char v[64];
    shown(v, sizeof v, s, len);
    if (len == 0 || len >= sizeof item)
        return fail(x, CFG_EVALUE, key, "\"%s\" is not a %s name or id", v,
                    group ? "group" : "user");
    memcpy(item, s, len);
    item[len] = '\0';
    if (isdigit((unsigned char)item[0])) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(item, &end, 10);
        if (*end || errno || n >= UINT32_MAX)
            return fail(x, CFG_EVALUE, key, "\"%s\" is not a %s id (0 to %u)", v,
                        group ? "group" : "user", UINT32_MAX - 1);
        *out = (uint32_t)n;
        return CFG_OK;
    }
    size_t cap = 16384;
    char *buf = malloc(cap);
    if (!buf)
        return fail(x, CFG_ENOMEM, key, "out of memory");
    int rc = CFG_OK, e;
    if (group) {
        struct group gr, *res = NULL;
        e = getgrnam_r(item, &gr, buf, cap, &res);
        if (res)
            *out = (uint32_t)gr.gr_gid;
        else
            rc = CFG_EVALUE;
    } else {
        struct passwd pw, *res = NULL;
        e = getpwnam_r(item, &pw, buf, cap, &res);
        if (res)
            *out = (uint32_t)pw.pw_uid;
        else
            rc = CFG_EVALUE;
    }
    free(buf);
    if (rc)
        return fail(x, rc, key, "no %s named \"%s\"%s%s", group ? "group" : "user", v,
                    e ? ": " : "", e ? strerror(e) : "");
    return CFG_OK;
}

/* Add item to a list (names are checked; ids parsed). */
static int list_add_text(src *x, const row *r, void *slot, const char *key, const char *s,
                         size_t len)
{
    if (r->type == KT_NAMES) {
        cfg_strs *l = slot;
        if (l->n >= CFG_LIST_MAX)
            return fail(x, CFG_EVALUE, key, "more than %d items", CFG_LIST_MAX);
        const char *why = r->check ? r->check(s, len) : NULL;
        if (why) {
            char v[64];
            shown(v, sizeof v, s, len);
            return fail(x, CFG_EVALUE, key, "\"%s\" is not valid (%s)", v, why);
        }
        for (size_t i = 0; i < l->n; i++)
            if (strlen(l->v[i]) == len && memcmp(l->v[i], s, len) == 0)
                return CFG_OK; /* a set: a repeat adds nothing */
        char *dup = strndup(s, len);
        char **nv = dup ? realloc(l->v, (l->n + 1) * sizeof *nv) : NULL;
        if (!nv) {
            free(dup);
            return fail(x, CFG_ENOMEM, key, "out of memory");
        }
        l->v = nv;
        l->v[l->n++] = dup;
        return CFG_OK;
    }
    cfg_ids *l = slot;
    if (l->n >= CFG_LIST_MAX)
        return fail(x, CFG_EVALUE, key, "more than %d items", CFG_LIST_MAX);
    uint32_t id = 0;
    int rc = parse_id(x, key, r->type == KT_GIDS, s, len, &id);
    if (rc)
        return rc;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == id)
            return CFG_OK;
    uint32_t *nv = realloc(l->v, (l->n + 1) * sizeof *nv);
    if (!nv)
        return fail(x, CFG_ENOMEM, key, "out of memory");
    l->v = nv;
    l->v[l->n++] = id;
    return CFG_OK;
}

static void list_clear(const row *r, void *slot)
{
    if (r->type == KT_NAMES)
        strs_clear(slot);
    else
        ids_clear(slot);
}

static int set_int(src *x, const row *r, void *slot, const char *key, int64_t v)
{
    if (v < r->min || v > r->max)
        return fail(x, CFG_EVALUE, key, "%lld is out of range (expected %lld to %lld)",
                    (long long)v, (long long)r->min, (long long)r->max);
    if (r->width == sizeof(int32_t))
        *(int32_t *)slot = (int32_t)v;
    else
        *(int64_t *)slot = v;
    return CFG_OK;
}

static int set_num(src *x, const row *r, void *slot, const char *key, double v)
{
    if (!isfinite(v) || v < r->fmin || v > r->fmax)
        return fail(x, CFG_EVALUE, key, "%g is out of range (expected %g to %g)", v, r->fmin,
                    r->fmax);
    *(double *)slot = v;
    return CFG_OK;
}

/* Strings of every kind that is written as a string: STR, PATH, TCP, MODE,
 * KVTYPE. Used for Lua strings and for all text sources. */
static int set_string(src *x, const row *r, void *slot, const char *key, const char *s,
                      size_t len)
{
    char v[64];
    shown(v, sizeof v, s, len);
    if (strlen(s) != len)
        return fail(x, CFG_EVALUE, key, "contains a NUL byte");
    switch (r->type) {
    case KT_STR: {
        const char *why = r->check ? r->check(s, len) : NULL;
        if (why && (r->flags & F_SECRET))
            return fail(x, CFG_EVALUE, key, "not valid (%s)", why);
        if (why)
            return fail(x, CFG_EVALUE, key, "\"%s\" is not valid (%s)", v, why);
        if (len > CFG_TEXT_MAX)
            return fail(x, CFG_EVALUE, key, "longer than %d bytes", CFG_TEXT_MAX);
        char *dup = strndup(s, len);
        if (!dup)
            return fail(x, CFG_ENOMEM, key, "out of memory");
        set_str(slot, dup);
        return CFG_OK;
    }
    case KT_PATH: {
        if (len == 0 || len > CFG_PATH_MAX)
            return fail(x, CFG_EVALUE, key, "expected a path of 1 to %d bytes", CFG_PATH_MAX);
        char *abs = absolute(x, s, len);
        if (!abs)
            return fail(x, CFG_ENOMEM, key, "out of memory");
        if (strlen(abs) > CFG_PATH_MAX) {
            free(abs);
            return fail(x, CFG_EVALUE, key, "\"%s\": path longer than %d bytes", v,
                        CFG_PATH_MAX);
        }
        set_str(slot, abs);
        return CFG_OK;
    }
    case KT_TCP:
        return set_tcp(x, key, s, len);
    case KT_MODE: {
        unsigned mode = 0;
        bool ok = len >= 1 && len <= 4;
        for (size_t i = 0; ok && i < len; i++) {
            ok = s[i] >= '0' && s[i] <= '7';
            mode = mode * 8 + (unsigned)(s[i] - '0');
        }
        if (!ok || mode > 0777)
            return fail(x, CFG_EVALUE, key,
                        "\"%s\" is not a file mode (expected octal digits such as \"0660\")", v);
        *(unsigned *)slot = mode;
        return CFG_OK;
    }
    case KT_KVTYPE:
        if (strcasecmp(s, "f16") == 0)
            *(qt_type *)slot = QT_F16;
        else if (strcasecmp(s, "q8_0") == 0)
            *(qt_type *)slot = QT_Q8_0;
        else
            return fail(x, CFG_EVALUE, key, "\"%s\" is not a KV cache type (f16, q8_0)", v);
        return CFG_OK;
    default:
        return fail(x, CFG_EUSAGE, key, "not a string key");
    }
}

/* Forward: -m / OUTPOST_MODEL. */
static int set_models_text(src *x, const char *s);

/* Keys whose default follows another key until something sets them. */
static int after_set(src *x, const row *r)
{
    cfg *c = x->c;
    char *fresh = NULL;
    if (strcmp(r->path, "state_dir") == 0 && c->state_dir &&
        c->socket_follows_state_dir_ &&
        c->origin_[row_index("listen.socket")] == CFG_FROM_DEFAULT) {
        size_t n = strlen(c->state_dir) + sizeof "/outpost.sock";
        if (!(fresh = malloc(n)))
            return fail(x, CFG_ENOMEM, r->path, "out of memory");
        snprintf(fresh, n, "%s/outpost.sock", c->state_dir);
        set_str(&c->listen.socket, fresh);
    }
    if (strcmp(r->path, "policy.lua_dir") == 0 && c->policy.lua_dir &&
        c->origin_[row_index("policy.file")] == CFG_FROM_DEFAULT) {
        size_t n = strlen(c->policy.lua_dir) + sizeof "/default.lua";
        if (!(fresh = malloc(n)))
            return fail(x, CFG_ENOMEM, r->path, "out of memory");
        snprintf(fresh, n, "%s/default.lua", c->policy.lua_dir);
        set_str(&c->policy.file, fresh);
    }
    return CFG_OK;
}

/* A value given as text (defaults, environment, flags) for a top-level row
 * (idx >= 0) or a model row (base is then the model). Lists take comma
 * separated items. */
static int set_text(src *x, void *base, const row *r, int idx, const char *key, const char *s)
{
    void *slot = field_of(base, r);
    size_t len = strlen(s);
    int rc;
    char v[64];
    shown(v, sizeof v, s, len);
    switch (r->type) {
    case KT_SECTION:
        return fail(x, CFG_EUSAGE, key, "a section cannot be set as a whole; set its keys");
    case KT_MODELS:
        rc = set_models_text(x, s);
        break;
    case KT_INT: {
        char *end;
        errno = 0;
        long long n = strtoll(s, &end, 10);
        if (len == 0 || *end || errno == ERANGE || isspace((unsigned char)s[0]))
            return fail(x, CFG_ETYPE, key, "\"%s\" is not an integer", v);
        rc = set_int(x, r, slot, key, n);
        break;
    }
    case KT_NUM: {
        char *end;
        errno = 0;
        double n = strtod(s, &end);
        if (len == 0 || *end || errno == ERANGE || isspace((unsigned char)s[0]))
            return fail(x, CFG_ETYPE, key, "\"%s\" is not a number", v);
        rc = set_num(x, r, slot, key, n);
        break;
    }
    case KT_BOOL:
        if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on") || !strcmp(s, "1"))
            *(bool *)slot = true;
        else if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off") ||
                 !strcmp(s, "0"))
            *(bool *)slot = false;
        else
            return fail(x, CFG_ETYPE, key, "\"%s\" is not a boolean (true, false)", v);
        rc = CFG_OK;
        break;
    case KT_UIDS:
    case KT_GIDS:
    case KT_NAMES: {
        /* A list flag given twice appends; any other source replaces. */
        if (!(x->origin == CFG_FROM_FLAG && idx >= 0 && x->c->origin_[idx] == CFG_FROM_FLAG))
            list_clear(r, slot);
        rc = CFG_OK;
        const char *p = s;
        while (rc == CFG_OK && *p) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            while (n > 0 && isspace((unsigned char)*p)) {
                p++;
                n--;
            }
            while (n > 0 && isspace((unsigned char)p[n - 1]))
                n--;
            if (n > 0)
                rc = list_add_text(x, r, slot, key, p, n);
            else if (comma)
                rc = fail(x, CFG_EVALUE, key, "\"%s\": empty list item", v);
            p = comma ? comma + 1 : p + strlen(p);
        }
        break;
    }
    default:
        rc = set_string(x, r, slot, key, s, len);
        break;
    }
    if (rc == CFG_OK && idx >= 0) {
        x->c->origin_[idx] = (unsigned char)x->origin;
        rc = after_set(x, r);
    }
    return rc;
}

/* ---- models -------------------------------------------------------------- */

/* The default API name of a model: its file name without ".gguf". */
static char *name_from_path(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 5 && strcasecmp(base + n - 5, ".gguf") == 0)
        n -= 5;
    if (n > CFG_MODEL_NAME_MAX)
        n = CFG_MODEL_NAME_MAX;
    char *name = strndup(base, n);
    if (!name)
        return NULL;
    /* Keep the name usable in JSON and error lines whatever the file is called. */
    for (char *p = name; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            *p = '_';
    return name;
}

static int model_defaults(src *x, cfg_model *m, const char *key)
{
    for (size_t i = 0; i < N_MODEL_ROWS; i++)
        if (model_rows[i].def) {
            int rc = set_text(x, m, &model_rows[i], -1, key, model_rows[i].def);
            if (rc)
                return rc;
        }
    return CFG_OK;
}

/* -m VALUE / OUTPOST_MODEL: a configured model's name, or a GGUF path. */
static int set_models_text(src *x, const char *s)
{
    cfg *c = x->c;
    int idx = row_index("models");
    if (!strchr(s, '/')) {
        size_t hit = c->n_models;
        for (size_t i = 0; i < c->n_models; i++)
            if (strcmp(c->models[i].name, s) == 0)
                hit = i;
        if (hit < c->n_models) {
            for (size_t i = 0; i < c->n_models; i++)
                c->models[i].is_default = i == hit;
            return CFG_OK;
        }
    }
    if (!*s)
        return fail(x, CFG_EVALUE, "models", "empty model path");
    bool replace = c->origin_[idx] != (unsigned char)x->origin;
    if (!replace && c->n_models >= CFG_MODELS_MAX)
        return fail(x, CFG_EVALUE, "models", "more than %d models", CFG_MODELS_MAX);
    cfg_model m = {0};
    int rc = model_defaults(x, &m, "models");
    if (!rc)
        rc = set_string(x, model_row("path"), &m.path, "models", s, strlen(s));
    if (!rc && !(m.name = name_from_path(m.path)))
        rc = fail(x, CFG_ENOMEM, "models", "out of memory");
    if (rc) {
        model_clear(&m);
        return rc;
    }
    if (replace) {
        models_free(c->models, c->n_models);
        c->models = NULL;
        c->n_models = 0;
        m.is_default = true;
    }
    cfg_model *nv = realloc(c->models, (c->n_models + 1) * sizeof *nv);
    if (!nv) {
        model_clear(&m);
        return fail(x, CFG_ENOMEM, "models", "out of memory");
    }
    c->models = nv;
    c->models[c->n_models++] = m;
    return CFG_OK;
}

/* ---- unknown keys: did you mean ... -------------------------------------- */

/* Edits between a and b, a swap of two neighbours counting as one (the
 * optimal string alignment distance): "paht" is one edit from "path". */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return SIZE_MAX;
    unsigned char d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (unsigned char)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (unsigned char)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            unsigned v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1u < v)
                v = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < v)
                v = d[i][j - 1] + 1u;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1u < v)
                v = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned char)v;
        }
    return d[la][lb];
}

/* The suggestion for an unknown key `name` inside `parent` ("" for the top
 * level, "models[]" for a model entry): the closest sibling within a few
 * edits, else a key of that exact name elsewhere in the schema. */
static void suggest(const char *parent, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t plen = strlen(parent), best = SIZE_MAX;
    size_t n = strlen(name);
    size_t limit = n <= 4 ? 1 : n <= 8 ? 2 : 3;
    bool in_model = strcmp(parent, "models[]") == 0;
    for (size_t i = 0; i < (in_model ? N_MODEL_ROWS : N_ROWS); i++) {
        const char *path = in_model ? model_rows[i].path : rows[i].path;
        if (!in_model && (parent_len(path) != plen || strncmp(path, parent, plen) != 0))
            continue;
        size_t d = edit_distance(name, leaf_of(path));
        if (d <= limit && d < best) {
            best = d;
            snprintf(out, cap, "%s", leaf_of(path));
        }
    }
    if (best != SIZE_MAX)
        return;
    for (size_t i = 0; i < N_ROWS; i++)
        if (strcmp(leaf_of(rows[i].path), name) == 0) {
            snprintf(out, cap, "%s", rows[i].path);
            return;
        }
    if (!in_model)
        for (size_t i = 0; i < N_MODEL_ROWS; i++)
            if (strcmp(model_rows[i].path, name) == 0) {
                snprintf(out, cap, "a model's %s, inside models = { { ... } }", name);
                return;
            }
}

static int unknown_key(src *x, const char *parent, const char *shown_parent, const char *name)
{
    char hint[96], key[160];
    suggest(parent, name, hint, sizeof hint);
    if (*shown_parent)
        snprintf(key, sizeof key, "%s.%s", shown_parent, name);
    else
        snprintf(key, sizeof key, "%s", name);
    if (*hint)
        return fail(x, CFG_EUNKNOWN, key, "unknown key (did you mean %s?)", hint);
    return fail(x, CFG_EUNKNOWN, key, "unknown key");
}

/* ---- reading Lua values -------------------------------------------------- */

static const char *lua_kind(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER)
        return lua_isinteger(L, idx) ? "integer" : "number";
    return lua_typename(L, t);
}

static int type_error(src *x, lua_State *L, int idx, const char *key, const char *want)
{
    return fail(x, CFG_ETYPE, key, "expected %s, got %s", want, lua_kind(L, idx));
}

/* The table at idx is an array of n items, keys 1..n; returns n or -1. */
static lua_Integer array_len(src *x, lua_State *L, int idx, const char *key, int *rc)
{
    idx = lua_absindex(L, idx);
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int ok = 0;
        lua_Integer k = lua_type(L, -2) == LUA_TNUMBER ? lua_tointegerx(L, -2, &ok) : 0;
        lua_pop(L, 1);
        if (!ok || k < 1 || k > n) {
            lua_pop(L, 1);
            *rc = fail(x, CFG_ETYPE, key,
                       "expected an array (a list of values), got a table with other keys");
            return -1;
        }
        count++;
    }
    if (count != n) {
        *rc = fail(x, CFG_ETYPE, key, "expected an array without holes");
        return -1;
    }
    return n;
}

static int read_list(src *x, lua_State *L, const row *r, void *slot, const char *key)
{
    if (lua_type(L, -1) != LUA_TTABLE)
        return type_error(x, L, -1, key,
                          r->type == KT_NAMES ? "an array of strings" : "an array of ids or names");
    int rc = CFG_OK;
    lua_Integer n = array_len(x, L, -1, key, &rc);
    if (n < 0)
        return rc;
    if (n > CFG_LIST_MAX)
        return fail(x, CFG_EVALUE, key, "more than %d items", CFG_LIST_MAX);
    list_clear(r, slot);
    for (lua_Integer i = 1; rc == CFG_OK && i <= n; i++) {
        char item_key[160];
        snprintf(item_key, sizeof item_key, "%s[%lld]", key, (long long)i);
        lua_rawgeti(L, -1, i);
        int t = lua_type(L, -1);
        if (t == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            if (strlen(s) != len)
                rc = fail(x, CFG_EVALUE, item_key, "contains a NUL byte");
            else
                rc = list_add_text(x, r, slot, item_key, s, len);
        } else if (t == LUA_TNUMBER && r->type != KT_NAMES) {
            int ok = 0;
            lua_Integer v = lua_tointegerx(L, -1, &ok);
            if (!ok || v < 0 || v >= (lua_Integer)UINT32_MAX) {
                rc = fail(x, CFG_EVALUE, item_key, "not an id (0 to %u)", UINT32_MAX - 1);
            } else {
                char num[24];
                int len = snprintf(num, sizeof num, "%lld", (long long)v);
                rc = list_add_text(x, r, slot, item_key, num, (size_t)len);
            }
        } else {
            rc = type_error(x, L, -1, item_key,
                            r->type == KT_NAMES ? "a string" : "an id or a name");
        }
        lua_pop(L, 1);
    }
    return rc;
}

/* The value at the top of the stack for row r; base is the cfg or model. */
static int read_value(src *x, lua_State *L, void *base, const row *r, const char *key)
{
    void *slot = field_of(base, r);
    int t = lua_type(L, -1);
    switch (r->type) {
    case KT_INT: {
        if (t != LUA_TNUMBER)
            return type_error(x, L, -1, key, "an integer");
        int ok = 0;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        if (!ok) {
            double d = (double)lua_tonumber(L, -1);
            if (isfinite(d) && d == floor(d)) /* whole, but beyond 64 bits */
                return fail(x, CFG_EVALUE, key, "%g is out of range (expected %lld to %lld)",
                            d, (long long)r->min, (long long)r->max);
            return fail(x, CFG_ETYPE, key, "expected an integer, got %.15g", d);
        }
        return set_int(x, r, slot, key, (int64_t)v);
    }
    case KT_NUM:
        if (t != LUA_TNUMBER)
            return type_error(x, L, -1, key, "a number");
        return set_num(x, r, slot, key, (double)lua_tonumber(L, -1));
    case KT_BOOL:
        if (t != LUA_TBOOLEAN)
            return type_error(x, L, -1, key, "a boolean");
        *(bool *)slot = lua_toboolean(L, -1);
        return CFG_OK;
    case KT_UIDS:
    case KT_GIDS:
    case KT_NAMES:
        return read_list(x, L, r, slot, key);
    case KT_MODE:
        if (t == LUA_TNUMBER)
            return fail(x, CFG_ETYPE, key,
                        "expected an octal string such as \"0660\", got a number (Lua has no "
                        "octal literals: 0660 is six hundred and sixty)");
        break;
    default:
        break;
    }
    if (t != LUA_TSTRING)
        return type_error(x, L, -1, key, "a string");
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    return set_string(x, r, slot, key, s, len);
}

static int read_model(src *x, lua_State *L, cfg_model *m, const char *key)
{
    if (lua_type(L, -1) != LUA_TTABLE)
        return type_error(x, L, -1, key, "a table { path = ..., ... }");
    int rc = model_defaults(x, m, key);
    if (rc)
        return rc;
    int tab = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, tab)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return fail(x, CFG_EUNKNOWN, key, "a key that is not a name (keys are path, name, "
                                              "ctx, threads, kv_type, default)");
        }
        const char *name = lua_tostring(L, -2);
        const row *r = model_row(name);
        char sub[192];
        snprintf(sub, sizeof sub, "%s.%.64s", key, name);
        if (!r) {
            char hint[96];
            suggest("models[]", name, hint, sizeof hint);
            lua_pop(L, 2);
            if (*hint)
                return fail(x, CFG_EUNKNOWN, sub, "unknown key (did you mean %s?)", hint);
            return fail(x, CFG_EUNKNOWN, sub, "unknown key");
        }
        rc = read_value(x, L, m, r, sub);
        lua_pop(L, 1);
        if (rc) {
            lua_pop(L, 1);
            return rc;
        }
    }
    if (!m->path) {
        snprintf(x->err, 256, "%s: %s: no path (every model needs the path of its GGUF file)",
                 x->where, key);
        return CFG_EVALUE;
    }
    if (!m->name && !(m->name = name_from_path(m->path)))
        return fail(x, CFG_ENOMEM, key, "out of memory");
    return CFG_OK;
}

static int read_models(src *x, lua_State *L)
{
    if (lua_type(L, -1) != LUA_TTABLE)
        return type_error(x, L, -1, "models", "an array of model tables");
    int rc = CFG_OK;
    lua_Integer n = array_len(x, L, -1, "models", &rc);
    if (n < 0)
        return rc;
    if (n > CFG_MODELS_MAX)
        return fail(x, CFG_EVALUE, "models", "more than %d models", CFG_MODELS_MAX);
    cfg_model *v = n ? calloc((size_t)n, sizeof *v) : NULL;
    if (n && !v)
        return fail(x, CFG_ENOMEM, "models", "out of memory");
    bool any_default = false;
    for (lua_Integer i = 0; rc == CFG_OK && i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "models[%lld]", (long long)i + 1);
        lua_rawgeti(L, -1, i + 1);
        rc = read_model(x, L, &v[i], key);
        lua_pop(L, 1);
        any_default |= v[i].is_default;
    }
    if (rc) {
        models_free(v, (size_t)n);
        return rc;
    }
    if (n && !any_default)
        v[0].is_default = true;
    models_free(x->c->models, x->c->n_models);
    x->c->models = v;
    x->c->n_models = (size_t)n;
    return CFG_OK;
}

/* Walk the table at the top of the stack: the globals (parent "") or a
 * section. Keys are checked against the schema before any value is used,
 * so a typo is reported even when another value is also wrong. */
static int read_table(src *x, lua_State *L, const char *parent)
{
    if (!lua_checkstack(L, 8))
        return fail(x, CFG_EMEM, parent, "out of Lua stack");
    int tab = lua_gettop(L);
    size_t plen = strlen(parent);
    char path[160];
    for (int pass = 0; pass < 2; pass++) {
        lua_pushnil(L);
        while (lua_next(L, tab)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                if (plen)
                    return fail(x, CFG_EUNKNOWN, parent,
                                "an array item or a key that is not a name (expected named keys)");
                return fail(x, CFG_EUNKNOWN, NULL, "a global whose name is not a string");
            }
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            int idx = -1;
            if (klen <= 64 && strlen(k) == klen) {
                snprintf(path, sizeof path, "%s%s%s", parent, plen ? "." : "", k);
                idx = row_index(path);
            }
            if (idx < 0) {
                char name[64];
                shown(name, sizeof name, k, klen);
                lua_pop(L, 2);
                return unknown_key(x, parent, parent, name);
            }
            int rc = CFG_OK;
            if (pass == 1) {
                const row *r = &rows[idx];
                if (r->type == KT_SECTION) {
                    if (lua_type(L, -1) != LUA_TTABLE)
                        rc = type_error(x, L, -1, path, "a table");
                    else
                        rc = read_table(x, L, path);
                } else if (r->type == KT_MODELS) {
                    rc = read_models(x, L);
                } else {
                    rc = read_value(x, L, x->c, r, path);
                }
                if (rc == CFG_OK && r->type != KT_SECTION) {
                    x->c->origin_[idx] = (unsigned char)x->origin;
                    rc = after_set(x, r);
                }
            }
            lua_pop(L, 1);
            if (rc) {
                lua_pop(L, 1);
                return rc;
            }
        }
    }
    return CFG_OK;
}

/* ---- running the file ---------------------------------------------------- */

typedef struct lvm {
    size_t used, limit;
    bool refused;
    uint64_t instr_used;
    bool instr_hit;
} lvm;

static void *lvm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    lvm *vm = ud;
    /* With ptr NULL, osize names the kind of object, not a size. */
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        vm->used -= old;
        return NULL;
    }
    if (nsize > old && vm->used - old + nsize > vm->limit) {
        vm->refused = true;
        return NULL;
    }
    void *np = realloc(ptr, nsize);
    if (!np) {
        /* Lua relies on a shrink never failing: keep the old block. */
        if (nsize <= old) {
            vm->used = vm->used - old + nsize;
            return ptr;
        }
        return NULL;
    }
    vm->used = vm->used - old + nsize;
    return np;
}

static void lvm_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    void *ud;
    lua_getallocf(L, &ud);
    lvm *vm = ud;
    vm->instr_used += HOOK_STEP;
    /* The chunk has no pcall, so this error ends it. */
    if (vm->instr_used >= CFG_INSTR_LIMIT) {
        vm->instr_hit = true;
        luaL_error(L, "instruction limit reached");
    }
}

/* One line of a Lua message: printable, no newlines. */
static void clean_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = ' ';
}

static int run_chunk(src *x, const char *text, size_t len, const char *name)
{
    lvm vm = {.limit = CFG_MEM_LIMIT_BYTES};
    lua_State *L = lua_newstate(lvm_alloc, &vm);
    if (!L)
        return fail(x, CFG_ENOMEM, NULL, "cannot create a Lua state");
    char chunk[CFG_PATH_MAX + 2];
    snprintf(chunk, sizeof chunk, "@%s", name);
    int rc = CFG_OK;
    lua_sethook(L, lvm_hook, LUA_MASKCOUNT, HOOK_STEP);
    /* Text only: bytecode is not verified by the VM. */
    int st = luaL_loadbufferx(L, text, len, chunk, "t");
    if (st == LUA_OK)
        st = lua_pcall(L, 0, 0, 0);
    lua_sethook(L, NULL, 0, 0);
    if (st != LUA_OK) {
        if (vm.instr_hit) {
            rc = fail(x, CFG_EINSTR, NULL,
                      "instruction limit reached (%u instructions): a config file is data, "
                      "not a program",
                      CFG_INSTR_LIMIT);
        } else if (st == LUA_ERRMEM || vm.refused) {
            rc = fail(x, CFG_EMEM, NULL, "memory limit reached (%u bytes)",
                      CFG_MEM_LIMIT_BYTES);
        } else {
            const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            char line[256];
            snprintf(line, sizeof line, "%s", msg ? msg : "raised a non-string error");
            clean_line(line);
            /* Calling print, os.getenv, ... fails on a nil global. */
            bool no_fn = strstr(line, "(global '") &&
                         (strstr(line, "attempt to call") || strstr(line, "attempt to index"));
            rc = st == LUA_ERRSYNTAX ? CFG_ESYNTAX : CFG_ERUNTIME;
            /* Lua's messages already start with "name:line:". */
            if (msg && (strncmp(line, name, strlen(name)) == 0 || strncmp(line, "...", 3) == 0))
                snprintf(x->err, 256, "%s%s", line,
                         no_fn ? " (a config file has no libraries or functions)" : "");
            else
                snprintf(x->err, 256, "%s: %s%s", name, line,
                         no_fn ? " (a config file has no libraries or functions)" : "");
        }
        goto done;
    }
    lua_settop(L, 0);
    vm.limit = vm.used + READ_HEADROOM_BYTES;
    lua_pushglobaltable(L);
    rc = read_table(x, L, "");
done:
    lua_close(L);
    return rc;
}

static int cwd_dir(char *buf, size_t cap, char err[256])
{
    if (!getcwd(buf, cap)) {
        snprintf(err, 256, "cannot get the current directory: %s", strerror(errno));
        return CFG_EIO;
    }
    return CFG_OK;
}

int cfg_load_string(cfg *c, const char *text, size_t len, const char *name, char err[256])
{
    if (!c || !text || !name) {
        snprintf(err, 256, "cfg_load_string: missing cfg, text or name");
        return CFG_EUSAGE;
    }
    char cwd[CFG_PATH_MAX + 1];
    int rc = cwd_dir(cwd, sizeof cwd, err);
    if (rc)
        return rc;
    src x = {.c = c, .origin = CFG_FROM_FILE, .where = name, .key_in_msg = true,
             .base_dir = cwd, .err = err};
    return run_chunk(&x, text, len, name);
}

int cfg_load_file(cfg *c, const char *path, char err[256])
{
    if (!c || !path || !*path) {
        snprintf(err, 256, "cfg_load_file: missing cfg or path");
        return CFG_EUSAGE;
    }
    char cwd[CFG_PATH_MAX + 1];
    int rc = cwd_dir(cwd, sizeof cwd, err);
    if (rc)
        return rc;
    src here = {.c = c, .base_dir = cwd, .err = err, .where = path};
    char *abs = absolute(&here, path, strlen(path));
    char *text = NULL;
    FILE *f = NULL;
    if (!abs) {
        snprintf(err, 256, "%s: out of memory", path);
        return CFG_ENOMEM;
    }
    f = fopen(abs, "rb");
    struct stat st;
    if (!f) {
        snprintf(err, 256, "%s: cannot open: %s", path, strerror(errno));
        rc = CFG_EIO;
        goto done;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, 256, "%s: not a regular file", path);
        rc = CFG_EIO;
        goto done;
    }
    if (st.st_size > (off_t)CFG_FILE_MAX_BYTES) {
        snprintf(err, 256, "%s: %lld bytes, a config file may be at most %u", path,
                 (long long)st.st_size, CFG_FILE_MAX_BYTES);
        rc = CFG_EIO;
        goto done;
    }
    if (!(text = malloc((size_t)st.st_size + 1))) {
        snprintf(err, 256, "%s: out of memory", path);
        rc = CFG_ENOMEM;
        goto done;
    }
    size_t n = fread(text, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        snprintf(err, 256, "%s: read error", path);
        rc = CFG_EIO;
        goto done;
    }
    text[n] = '\0';
    /* Relative paths in the file are relative to the file's directory. */
    char *slash = strrchr(abs, '/');
    char dir[CFG_PATH_MAX + 1];
    snprintf(dir, sizeof dir, "%.*s", slash == abs ? 1 : (int)(slash - abs), abs);
    src x = {.c = c, .origin = CFG_FROM_FILE, .where = path, .key_in_msg = true,
             .base_dir = dir, .err = err};
    rc = run_chunk(&x, text, n, path);
    if (rc == CFG_OK) {
        set_str(&c->source, abs);
        abs = NULL;
    }
done:
    if (f)
        fclose(f);
    free(text);
    free(abs);
    return rc;
}

/* ---- defaults ------------------------------------------------------------ */

/* The first entry of a colon-separated list of directories systemd passes
 * ($STATE_DIRECTORY, $RUNTIME_DIRECTORY), or an absolute $VAR; NULL when
 * unset, empty or relative (the XDG Base Directory spec says to ignore
 * relative values). */
static char *env_dir(const char *var)
{
    const char *v = getenv(var);
    if (!v || v[0] != '/')
        return NULL;
    size_t n = strcspn(v, ":");
    while (n > 1 && v[n - 1] == '/')
        n--;
    return strndup(v, n);
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", a, b);
    return s;
}

static char *home_dir(void)
{
    char *h = env_dir("HOME");
    if (h)
        return h;
    long cap = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t n = cap > 0 ? (size_t)cap : 16384;
    char *buf = malloc(n);
    struct passwd pw, *res = NULL;
    if (buf && getpwuid_r(getuid(), &pw, buf, n, &res) == 0 && res && pw.pw_dir &&
        pw.pw_dir[0] == '/')
        h = strdup(pw.pw_dir);
    free(buf);
    return h;
}

/* State directory: systemd's StateDirectory=, then the XDG Base Directory
 * spec's $XDG_STATE_HOME (default ~/.local/state). NULL if no home. */
static char *default_state_dir(void)
{
    char *d = env_dir("STATE_DIRECTORY");
    if (d)
        return d;
    char *base = env_dir("XDG_STATE_HOME");
    if (base) {
        d = join(base, "outpost");
        free(base);
        return d;
    }
    char *home = home_dir();
    if (!home)
        return NULL;
    d = join(home, ".local/state/outpost");
    free(home);
    return d;
}

/* The socket: systemd's RuntimeDirectory=, then $XDG_RUNTIME_DIR (a login
 * session or a user service; checked before the systemd test because
 * terminals started by a user manager inherit INVOCATION_ID), then
 * /run/outpost under the system manager (it sets INVOCATION_ID for every
 * service since v232, and NOTIFY_SOCKET for Type=notify). NULL: follow
 * state_dir. */
static char *default_socket(void)
{
    char *d = env_dir("RUNTIME_DIRECTORY");
    if (!d)
        d = env_dir("XDG_RUNTIME_DIR");
    if (d) {
        char *s = join(d, "outpost.sock");
        free(d);
        return s;
    }
    const char *inv = getenv("INVOCATION_ID"), *notify = getenv("NOTIFY_SOCKET");
    if ((inv && *inv) || (notify && *notify))
        return strdup("/run/outpost/outpost.sock");
    return NULL;
}

void cfg_free(cfg *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < N_ROWS; i++) {
        const row *r = &rows[i];
        void *slot = field_of(c, r);
        switch (r->type) {
        case KT_STR:
        case KT_PATH:
        case KT_TCP:
            set_str(slot, NULL);
            break;
        case KT_UIDS:
        case KT_GIDS:
        case KT_NAMES:
            list_clear(r, slot);
            break;
        default:
            break;
        }
    }
    models_free(c->models, c->n_models);
    free(c->listen.tcp_host);
    free(c->source);
    free(c->origin_);
    free(c);
}

int cfg_new(cfg **out, char err[256])
{
    *out = NULL;
    cfg *c = calloc(1, sizeof *c);
    if (!c || !(c->origin_ = calloc(N_ROWS, 1))) {
        free(c);
        snprintf(err, 256, "configuration: out of memory");
        return CFG_ENOMEM;
    }
    c->cloud.budget_usd_month = NAN;
    src x = {.c = c, .origin = CFG_FROM_DEFAULT, .where = "defaults", .key_in_msg = true,
             .base_dir = "/", .err = err};
    int rc = CFG_OK;
    for (size_t i = 0; rc == CFG_OK && i < N_ROWS; i++)
        if (rows[i].def)
            rc = set_text(&x, c, &rows[i], (int)i, rows[i].path, rows[i].def);
    if (rc)
        goto fail;
    /* Computed defaults: each may be missing (NULL), which cfg_validate
     * reports if nothing else sets the key. */
    c->state_dir = default_state_dir();
    c->listen.socket = default_socket();
    if (!c->listen.socket) {
        c->socket_follows_state_dir_ = true;
        if (c->state_dir && !(c->listen.socket = join(c->state_dir, "outpost.sock")))
            goto nomem;
    }
    c->policy.lua_dir = strdup(OUTPOST_LUA_DIR);
    c->policy.file = join(OUTPOST_LUA_DIR, "default.lua");
    c->plugins.dir = strdup(OUTPOST_PLUGIN_DIR);
    if (!c->policy.lua_dir || !c->policy.file || !c->plugins.dir)
        goto nomem;
    *out = c;
    return CFG_OK;
nomem:
    snprintf(err, 256, "configuration: out of memory");
    rc = CFG_ENOMEM;
fail:
    cfg_free(c);
    return rc;
}

/* ---- environment and flags ----------------------------------------------- */

int cfg_apply_env(cfg *c, char err[256])
{
    char cwd[CFG_PATH_MAX + 1];
    int rc = cwd_dir(cwd, sizeof cwd, err);
    for (size_t i = 0; rc == CFG_OK && i < N_ROWS; i++) {
        if (!rows[i].env)
            continue;
        const char *v = getenv(rows[i].env);
        if (!v || !*v)
            continue;
        src x = {.c = c, .origin = CFG_FROM_ENV, .where = rows[i].env, .base_dir = cwd,
                 .err = err};
        rc = set_text(&x, c, &rows[i], (int)i, rows[i].path, v);
    }
    return rc;
}

int cfg_apply_flag(cfg *c, const char *flag, const char *value, char err[256])
{
    if (!c || !flag || !value) {
        snprintf(err, 256, "cfg_apply_flag: missing cfg, flag or value");
        return CFG_EUSAGE;
    }
    int idx = -1;
    for (size_t i = 0; idx < 0 && i < N_ROWS; i++)
        if (rows[i].flag && strcmp(rows[i].flag, flag) == 0)
            idx = (int)i;
    if (idx < 0)
        idx = row_index(flag);
    if (idx < 0 || rows[idx].type == KT_SECTION) {
        snprintf(err, 256, "--%s: %s", flag,
                 idx < 0 ? "no such flag or configuration key"
                         : "a section cannot be set as a whole; set its keys");
        return CFG_EUSAGE;
    }
    char cwd[CFG_PATH_MAX + 1];
    int rc = cwd_dir(cwd, sizeof cwd, err);
    if (rc)
        return rc;
    char where[80];
    snprintf(where, sizeof where, "--%s", flag);
    src x = {.c = c, .origin = CFG_FROM_FLAG, .where = where, .base_dir = cwd, .err = err};
    return set_text(&x, c, &rows[idx], idx, rows[idx].path, value);
}

/* ---- checks across keys -------------------------------------------------- */

int cfg_validate(const cfg *c, char err[256])
{
    const char *where = c->source ? c->source : "configuration";
    if (c->n_models == 0) {
        snprintf(err, 256, "%s: models: no model configured (add one to models, or pass -m "
                           "MODEL)", where);
        return CFG_EINVALID;
    }
    size_t defaults = 0;
    for (size_t i = 0; i < c->n_models; i++) {
        const cfg_model *m = &c->models[i];
        if (!m->name || !m->path) {
            snprintf(err, 256, "%s: models[%zu]: no name or path", where, i + 1);
            return CFG_EINVALID;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->models[j].name, m->name) == 0) {
                snprintf(err, 256, "%s: models[%zu].name: \"%.64s\" is also the name of "
                                   "models[%zu] (names must be unique)", where, i + 1,
                         m->name, j + 1);
                return CFG_EINVALID;
            }
        const char *why = check_model_name(m->name, strlen(m->name));
        if (why) {
            snprintf(err, 256, "%s: models[%zu].name: \"%.64s\" is not valid (%s; set name)",
                     where, i + 1, m->name, why);
            return CFG_EINVALID;
        }
        defaults += m->is_default;
    }
    if (defaults != 1) {
        snprintf(err, 256, "%s: models: %zu models say default = true (exactly one may)",
                 where, defaults);
        return CFG_EINVALID;
    }
    if (!c->state_dir) {
        snprintf(err, 256, "%s: state_dir: no default (neither STATE_DIRECTORY, "
                           "XDG_STATE_HOME nor HOME is set): set state_dir, --state-dir or "
                           "OUTPOST_STATE_DIR", where);
        return CFG_EINVALID;
    }
    if (!c->listen.socket || strlen(c->listen.socket) > CFG_SOCKET_PATH_MAX) {
        snprintf(err, 256, "%s: listen.socket: %s", where,
                 c->listen.socket ? "path longer than the 107 bytes a Unix socket address holds"
                                  : "no socket path");
        return CFG_EINVALID;
    }
    if (c->listen.tcp && !c->listen.tcp_loopback && !c->listen.api_key) {
        snprintf(err, 256, "%s: listen.tcp: \"%.64s\" is not a loopback address, so "
                           "listen.api_key (or OUTPOST_API_KEY) must be set", where,
                 c->listen.tcp);
        return CFG_EINVALID;
    }
    const struct {
        const char *name;
        const cfg_remote *r;
    } remotes[] = {{"peer", &c->peer.call}, {"cloud", &c->cloud.call}};
    for (size_t i = 0; i < 2; i++) {
        const cfg_remote *r = remotes[i].r;
        const char *t = remotes[i].name;
        if (r->timeout_ms > c->limits.request_timeout_s * 1000) {
            snprintf(err, 256, "%s: %s.timeout_ms: %lld ms is longer than "
                               "limits.request_timeout_s (%lld s), which ends the request first "
                               "(use 0 to follow it)", where, t, (long long)r->timeout_ms,
                     (long long)c->limits.request_timeout_s);
            return CFG_EINVALID;
        }
        if (r->timeout_ms > 0 && r->connect_timeout_ms > r->timeout_ms) {
            snprintf(err, 256, "%s: %s.connect_timeout_ms: %lld ms is longer than %s.timeout_ms "
                               "(%lld ms), the whole call", where, t,
                     (long long)r->connect_timeout_ms, t, (long long)r->timeout_ms);
            return CFG_EINVALID;
        }
    }
    if (c->fleet.broker && (!c->fleet.device_id || !c->fleet.fleet_key)) {
        snprintf(err, 256, "%s: fleet.broker is set, so fleet.%s must be set too", where,
                 !c->fleet.device_id ? "device_id" : "fleet_key");
        return CFG_EINVALID;
    }
    if (!c->fleet.cert != !c->fleet.key) {
        snprintf(err, 256, "%s: fleet.%s is set without fleet.%s (a client certificate needs "
                           "its key)", where, c->fleet.cert ? "cert" : "key",
                 c->fleet.cert ? "key" : "cert");
        return CFG_EINVALID;
    }
    if ((c->fleet.ca || c->fleet.cert) && c->fleet.broker &&
        strncmp(c->fleet.broker, "mqtts://", 8) != 0) {
        snprintf(err, 256, "%s: fleet.%s is set but fleet.broker is not mqtts://", where,
                 c->fleet.ca ? "ca" : "cert");
        return CFG_EINVALID;
    }
    return CFG_OK;
}

/* ---- lookups ------------------------------------------------------------- */

const cfg_model *cfg_default_model(const cfg *c)
{
    for (size_t i = 0; c && i < c->n_models; i++)
        if (c->models[i].is_default)
            return &c->models[i];
    return NULL;
}

const cfg_model *cfg_find_model(const cfg *c, const char *name)
{
    if (!c || !name)
        return NULL;
    if (strcmp(name, "default") == 0)
        return cfg_default_model(c);
    for (size_t i = 0; i < c->n_models; i++)
        if (strcmp(c->models[i].name, name) == 0)
            return &c->models[i];
    return NULL;
}

int cfg_origin_of(const cfg *c, const char *key_path)
{
    int idx = key_path ? row_index(key_path) : -1;
    if (!c || idx < 0 || rows[idx].type == KT_SECTION)
        return -1;
    return c->origin_[idx];
}

/* ---- dump ---------------------------------------------------------------- */

/* A Lua string literal: quotes, backslashes and control bytes escaped
 * (\ddd with three digits, so a following digit cannot join it). */
static void put_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\%03u", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void put_origin(FILE *f, const cfg *c, size_t i)
{
    switch ((cfg_origin)c->origin_[i]) {
    case CFG_FROM_FILE:
        fprintf(f, "  -- from the config file");
        break;
    case CFG_FROM_ENV:
        fprintf(f, "  -- from %s", rows[i].env ? rows[i].env : "the environment");
        break;
    case CFG_FROM_FLAG:
        fprintf(f, "  -- from --%s", rows[i].flag ? rows[i].flag : rows[i].path);
        break;
    default:
        fprintf(f, "  -- default");
        break;
    }
}

static void put_value(FILE *f, const void *base, const row *r)
{
    const void *slot = (const char *)base + r->off;
    switch (r->type) {
    case KT_STR:
    case KT_PATH:
    case KT_TCP: {
        const char *s = *(char *const *)slot;
        if (!s)
            fputs("nil", f);
        else if (r->flags & F_SECRET)
            fputs("\"<redacted>\"", f);
        else
            put_quoted(f, s);
        break;
    }
    case KT_INT:
        fprintf(f, "%lld", r->width == sizeof(int32_t) ? (long long)*(const int32_t *)slot
                                                        : (long long)*(const int64_t *)slot);
        break;
    case KT_NUM: {
        double v = *(const double *)slot;
        char num[40];
        /* The shortest form that reads back as the same double. */
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(num, sizeof num, "%.*g", prec, v);
            if (strtod(num, NULL) == v)
                break;
        }
        fputs(isnan(v) ? "nil" : num, f);
        break;
    }
    case KT_BOOL:
        fputs(*(const bool *)slot ? "true" : "false", f);
        break;
    case KT_MODE:
        fprintf(f, "\"%04o\"", *(const unsigned *)slot);
        break;
    case KT_KVTYPE:
        fputs(*(const qt_type *)slot == QT_Q8_0 ? "\"q8_0\"" : "\"f16\"", f);
        break;
    case KT_UIDS:
    case KT_GIDS: {
        const cfg_ids *l = slot;
        fputc('{', f);
        for (size_t i = 0; i < l->n; i++)
            fprintf(f, "%s%u", i ? ", " : " ", l->v[i]);
        fputs(l->n ? " }" : "}", f);
        break;
    }
    case KT_NAMES: {
        const cfg_strs *l = slot;
        fputc('{', f);
        for (size_t i = 0; i < l->n; i++) {
            fputs(i ? ", " : " ", f);
            put_quoted(f, l->v[i]);
        }
        fputs(l->n ? " }" : "}", f);
        break;
    }
    default:
        fputs("nil", f);
        break;
    }
}

void cfg_dump(const cfg *c, FILE *f)
{
    fprintf(f, "-- Outpost: the effective configuration%s%s. Secrets show as "
               "\"<redacted>\".\n-- Precedence: defaults < config file < OUTPOST_* "
               "environment < flags.\n", c->source ? " with " : "",
            c->source ? c->source : "");
    const char *open = NULL; /* the section being printed */
    for (size_t i = 0; i < N_ROWS; i++) {
        const row *r = &rows[i];
        size_t plen = parent_len(r->path);
        if (open && (plen == 0 || strncmp(r->path, open, plen) != 0)) {
            fputs("}\n", f);
            open = NULL;
        }
        if (r->type == KT_SECTION) {
            fprintf(f, "\n-- %s\n%s = {\n", r->doc, r->path);
            open = r->path;
            continue;
        }
        const char *ind = open ? "  " : "";
        if (r->type == KT_MODELS) {
            fprintf(f, "\n-- %s\n%s = {", r->doc, r->path);
            put_origin(f, c, i);
            fputc('\n', f);
            for (size_t m = 0; m < c->n_models; m++) {
                fputs("  {", f);
                for (size_t k = 0; k < N_MODEL_ROWS; k++) {
                    fprintf(f, "%s%s = ", k ? ", " : " ", model_rows[k].path);
                    put_value(f, &c->models[m], &model_rows[k]);
                }
                fputs(" },\n", f);
            }
            fputs("}\n", f);
            continue;
        }
        if (!open)
            fputc('\n', f);
        fprintf(f, "%s-- %s\n%s%s = ", ind, r->doc, ind, leaf_of(r->path));
        put_value(f, c, r);
        fputs(open ? "," : "", f);
        put_origin(f, c, i);
        fputc('\n', f);
    }
    if (open)
        fputs("}\n", f);
}
