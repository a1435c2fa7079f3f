/*
 * serve.c - `outpost serve`: the agent in the foreground, as systemd runs it.
 *
 * Start-up order matters for health checks: the configuration is built and
 * checked first (a bad one is a usage error before anything is touched),
 * then the store, PII detector and policy, then the listeners, which answer
 * /health with 503 while the models load and warm up; only then does the
 * agent report ready (200, and READY=1 to systemd).
 *
 * Signals are blocked in every thread and taken synchronously by the main
 * thread, which otherwise sleeps: SIGTERM/SIGINT drain (no new connections,
 * requests in flight get limits.drain_timeout_s to finish, the rest are
 * cancelled at their next token) and exit 0; SIGHUP reloads what can change
 * without a restart: the policy (from the configured file, or the file the
 * reloaded config names), the allowed peers and the TCP API key. Models,
 * listeners and the state directory need a restart; a reload that changes
 * them says so. POST /v1/policy/reload runs the same reload.
 *
 * Plugins (plugins/outpost_plugin.h) load after the PII detector, from
 * plugins.dir, every name in plugins.enabled; a plugin the loader refuses
 * costs one log line and the agent goes on without it. An agent run from
 * its build tree (the binary is <build>/agent/outpost) and given no
 * plugins.dir loads the plugins built beside it, <build>/plugins, so tests
 * and developers need no --plugin-dir; an installed agent uses
 * libdir/outpost/plugins. Peer and cloud are backend-openai instances wrapped
 * in the cloud_ module's call pool (agent/cloud.h), which also runs the
 * hook plugins before a request leaves the device. Sensor plugins are
 * opened on sensors.root and read by the main thread (the housekeeping
 * timer, with retention) every sensors.interval_s; their facts reach the
 * policy's env and /metrics through http_set_device_facts().
 *
 * sd_notify is the NOTIFY_SOCKET datagram protocol written out here
 * (READY=1, RELOADING=1, STOPPING=1, STATUS=...): a few lines, no libsystemd.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cloud.h"
#include "config.h"
#include "fetch_http.h"
#include "fleet.h"
#include "fleet_ota.h"
#include "http.h"
#include "pii.h"
#include "plugin.h"
#include "pol.h"
#include "scheduler.h"
#include "store.h"

static const char *const cmd = "serve";

static const char usage_text[] =
    "usage: outpost serve [-c CONFIG] [-m MODEL] [--socket PATH] [--listen HOST:PORT]\n"
    "                     [--state-dir DIR] [--policy FILE] [--peer URL] [--cloud URL]\n"
    "\n"
    "Run the agent in the foreground: an OpenAI-compatible HTTP API on a Unix\n"
    "socket (and optionally TCP) that answers each request locally, on a peer or\n"
    "in the cloud, as the routing policy decides. Flags override OUTPOST_*\n"
    "variables, which override the config file, which overrides the defaults.\n"
    "\n"
    "  -c, --config FILE     config file (Lua, read as data)\n"
    "  -m, --model MODEL     GGUF file to serve (repeat for more; the first is the\n"
    "                        default), or the name of a configured model to make it\n"
    "                        the default\n"
    "      --socket PATH     Unix socket (default $XDG_RUNTIME_DIR/outpost.sock)\n"
    "      --listen HOST:PORT  also listen on TCP (port 0: any free port; a non-\n"
    "                        loopback address needs OUTPOST_API_KEY)\n"
    "      --state-dir DIR   SQLite state (default $XDG_STATE_HOME/outpost)\n"
    "      --policy FILE     routing policy (Lua)\n"
    "      --lua-dir DIR     where the policy's require() looks\n"
    "      --peer URL        another Outpost to offload to\n"
    "      --cloud URL       an OpenAI-compatible cloud API (key in OUTPOST_CLOUD_KEY)\n"
    "      --plugin-dir DIR  where plugins are loaded from\n"
    "      --broker URL      join a fleet: mqtt://host:port or mqtts://host:port\n"
    "      --device-id ID    this device's id in the fleet (one MQTT topic level)\n"
    "      --fleet-key PUB   minisign public key that signs fleet commands\n"
    "      --group G         a fleet group to take commands from (repeatable)\n"
    "      --ca FILE, --cert FILE, --key FILE  TLS files for an mqtts broker\n"
    "      --set KEY=VALUE   any config key, e.g. --set limits.queue_depth=4\n"
    "  -h, --help            this text\n"
    "\n"
    "Signals: SIGTERM or SIGINT drain and exit 0; SIGHUP reloads the policy, the\n"
    "allowed peers and the API key.\n"
    "Exit status: 0 after a clean stop, 1 runtime failure, 2 usage or config error.\n";

enum { OPT_SOCKET = 256, OPT_LISTEN, OPT_STATE_DIR, OPT_POLICY, OPT_LUA_DIR, OPT_PEER,
       OPT_CLOUD, OPT_SET, OPT_PLUGIN_DIR, OPT_BROKER, OPT_DEVICE_ID, OPT_FLEET_KEY, OPT_GROUP,
       OPT_CA, OPT_CERT, OPT_KEY };

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"model", required_argument, NULL, 'm'},
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"policy", required_argument, NULL, OPT_POLICY},
    {"lua-dir", required_argument, NULL, OPT_LUA_DIR},
    {"peer", required_argument, NULL, OPT_PEER},
    {"cloud", required_argument, NULL, OPT_CLOUD},
    {"set", required_argument, NULL, OPT_SET},
    {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
    {"broker", required_argument, NULL, OPT_BROKER},
    {"device-id", required_argument, NULL, OPT_DEVICE_ID},
    {"fleet-key", required_argument, NULL, OPT_FLEET_KEY},
    {"group", required_argument, NULL, OPT_GROUP},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* A flag as given, replayed onto every config built (start and reload). */
typedef struct flag_arg {
    const char *name; /* cfg_apply_flag's name or a key path */
    char *value;
} flag_arg;

typedef struct serve_state {
    const char *config_path;
    flag_arg *flags;
    size_t n_flags;
    cfg *conf;
    store *st;
    pii *pii;
    pol *policy;
    http_server *http;
    sched **models;
    size_t n_models;
    char *peer_url, *cloud_url;
    pthread_mutex_t reload_mu;
    /* Plugins: the host table they all get (ctx = this state), every plugin
     * loaded (refused ones are not here), the directory they came from. */
    outpost_host host;
    plug **plugins;
    size_t n_plugins;
    char *plugin_dir;
    /* Remote targets: hook instances, the backend plugin's instances for
     * peer and cloud, and the call pools around them (NULL: none). */
    cloud_hook *hooks;
    size_t n_hooks;
    const outpost_backend_ops *backend;
    void *peer_inst, *cloud_inst;
    cloud *peer, *cloud;
    /* Sensor plugins, opened on sensors.root and read by the main thread
     * (see "sensors" below); interval and root are fixed at start. */
    struct sensor_slot *sensors;
    size_t n_sensors;
    double sensor_interval_s;
    /* The fleet channel (NULL: no fleet.broker), started once the models
     * serve; the model index its status names. */
    fleet *fleet;
    size_t default_model;
    /* OTA model and adapter updates (fleet_ota.h), with the fleet only:
     * opened before the models load (the default model may be served from
     * an installed slot), its handlers given to the fleet. */
    fleet_ota *ota;
} serve_state;

/* ---- sd_notify --------------------------------------------------------------- */

/* The systemd notification protocol: one datagram of "KEY=VALUE\n" lines to
 * the socket in $NOTIFY_SOCKET (an '@' first means the abstract namespace).
 * Silently nothing when not run by systemd. */
static void sd_notify_msg(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !path[0])
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@'))
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        fprintf(stderr, "outpost serve: sd_notify: %s\n", strerror(errno));
    close(fd);
}

/* ---- configuration -------------------------------------------------------------- */

/* defaults < file < environment < flags, then the cross-field checks. */
static int build_config(const serve_state *S, cfg **out, char err[256])
{
    cfg *c = NULL;
    int rc = cfg_new(&c, err);
    if (!rc && S->config_path)
        rc = cfg_load_file(c, S->config_path, err);
    if (!rc)
        rc = cfg_apply_env(c, err);
    for (size_t i = 0; i < S->n_flags && !rc; i++)
        rc = cfg_apply_flag(c, S->flags[i].name, S->flags[i].value, err);
    if (!rc)
        rc = cfg_validate(c, err);
    if (rc) {
        cfg_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

static int mkdir_p(const char *path, char err[256])
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        snprintf(err, 256, "state directory path too long: %s", path);
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0700) && errno != EEXIST) {
                snprintf(err, 256, "cannot create %s: %s", buf, strerror(errno));
                return -1;
            }
            *p = c;
            if (!c)
                break;
        }
    }
    return 0;
}

static void policy_log(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "outpost serve: policy: %s\n", line);
}

static bool same_str(const char *a, const char *b)
{
    return (a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0);
}

/* SIGHUP and POST /v1/policy/reload. */
static int reload(void *ud, char err[256])
{
    serve_state *S = ud;
    pthread_mutex_lock(&S->reload_mu);
    sd_notify_msg("RELOADING=1\nSTATUS=reloading");
    cfg *c = NULL;
    int rc = build_config(S, &c, err);
    if (!rc) {
        const char *old_tcp = S->conf->listen.tcp, *new_tcp = c->listen.tcp;
        if (strcmp(S->conf->listen.socket, c->listen.socket) ||
            (old_tcp == NULL) != (new_tcp == NULL) || (old_tcp && strcmp(old_tcp, new_tcp)) ||
            strcmp(S->conf->state_dir, c->state_dir))
            fprintf(stderr, "outpost serve: reload: listeners and state_dir change only on "
                            "restart\n");
        if (!same_str(S->conf->peer.url, c->peer.url) ||
            !same_str(S->conf->cloud.url, c->cloud.url) ||
            !same_str(S->conf->cloud.model, c->cloud.model) ||
            !same_str(S->conf->peer.api_key, c->peer.api_key) ||
            !same_str(S->conf->cloud.api_key, c->cloud.api_key) ||
            memcmp(&S->conf->cloud.budget_usd_month, &c->cloud.budget_usd_month, sizeof(double)) ||
            S->conf->cloud.price_per_1k_tokens != c->cloud.price_per_1k_tokens ||
            memcmp(&S->conf->peer.call, &c->peer.call, sizeof c->peer.call) ||
            memcmp(&S->conf->cloud.call, &c->cloud.call, sizeof c->cloud.call))
            fprintf(stderr, "outpost serve: reload: peer and cloud settings change only on "
                            "restart\n");
        rc = http_set_access(S->http, c->listen.allowed_uids.v, c->listen.allowed_uids.n,
                             c->listen.allowed_gids.v, c->listen.allowed_gids.n,
                             c->listen.api_key, err);
    }
    char fleet_policy[64];
    fleet_policy_version(S->fleet, fleet_policy);
    if (!rc && S->policy && fleet_policy[0]) {
        fprintf(stderr, "outpost serve: reload: the policy set by the fleet (version %s) stays; "
                        "policy.file is not reloaded\n", fleet_policy);
    } else if (!rc && S->policy) {
        char perr[256];
        if ((rc = pol_reload(S->policy, c->policy.file, perr)))
            snprintf(err, 256, "policy %s: %s (the previous policy stays)", c->policy.file, perr);
    }
    if (!rc) {
        cfg_free(S->conf);
        S->conf = c;
        fprintf(stderr, "outpost serve: reloaded (policy %s)\n", S->conf->policy.file);
    } else {
        cfg_free(c);
        fprintf(stderr, "outpost serve: reload failed: %s\n", err);
    }
    sd_notify_msg("READY=1\nSTATUS=serving");
    pthread_mutex_unlock(&S->reload_mu);
    return rc ? -1 : 0;
}

/* 1000 concurrent clients need more descriptors than the usual soft limit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void prune(serve_state *S)
{
    store_retention ret = {
        .request_max_age_s = S->conf->retention.request_max_age_days * 86400,
        .max_requests = S->conf->retention.max_requests,
        .session_idle_s = S->conf->retention.session_idle_days * 86400,
    };
    store_prune_result res;
    char err[256];
    if (store_prune(S->st, &ret, &res, err)) {
        fprintf(stderr, "outpost serve: retention: %s\n", err);
        return;
    }
    for (size_t i = 0; i < res.n_kv_paths; i++)
        unlink(res.kv_paths[i]);
    store_prune_result_free(&res);
}

/* ---- plugins ------------------------------------------------------------------------ */

/* Remote calls are bounded by <target>.connect_timeout_ms, .timeout_ms
 * (0: limits.request_timeout_s), .retries and .retry_backoff_ms. */
#ifndef OUTPOST_FETCH_MODULE_PATH
#define OUTPOST_FETCH_MODULE_PATH "/usr/local/lib/outpost/" FETCH_HTTP_MODULE
#endif
#define REMOTE_THREADS 4
#define REMOTE_QUEUE 8
#define REMOTE_PROBE_INTERVAL_S 30.0

static void host_log(void *ctx, const char *plugin, const char *line)
{
    (void)ctx;
    fprintf(stderr, "outpost serve: plugin %s: %s\n", plugin ? plugin : "?", line ? line : "");
}

static void *host_alloc(void *ctx, size_t size)
{
    (void)ctx;
    return malloc(size ? size : 1);
}

static void host_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

/* The agent's PII detector for hook-redact: the findings are counted by a
 * scan, then replaced by their tags (both the same detector, so the count
 * is what was replaced). */
static int host_pii_redact(void *ctx, const char *text, size_t len, char **out, size_t *out_len,
                           size_t *n_found, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    serve_state *S = ctx;
    *out = NULL;
    *out_len = 0;
    if (n_found)
        *n_found = 0;
    if (!S->pii) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "the agent has no PII detector");
        return OUTPOST_EINPUT;
    }
    pii_finding *f = NULL;
    size_t nf = 0;
    int rc = pii_scan(S->pii, text, len, &f, &nf, err);
    free(f);
    if (!rc)
        rc = pii_redact(S->pii, text, len, out, out_len, err);
    if (rc)
        return rc == PII_ENOMEM ? OUTPOST_ENOMEM : OUTPOST_EINPUT;
    if (n_found)
        *n_found = nf;
    return OUTPOST_OK;
}

static int choose_plugin_dir(serve_state *S)
{
    const char *dir = S->conf->plugins.dir;
#ifdef OUTPOST_BUILD_DIR
    if (cfg_origin_of(S->conf, "plugins.dir") == CFG_FROM_DEFAULT && cli_in_build_tree())
        dir = OUTPOST_BUILD_DIR "/plugins";
#endif
    free(S->plugin_dir);
    S->plugin_dir = strdup(dir);
    return S->plugin_dir ? 0 : -1;
}

/* Load one plugin into S->plugins; a refused one costs a log line. */
static const outpost_plugin *load_plugin(serve_state *S, const char *name)
{
    plug **more = S->plugin_dir ? realloc(S->plugins, (S->n_plugins + 1) * sizeof *more) : NULL;
    if (!more) {
        fprintf(stderr, "outpost serve: out of memory: plugin %s not loaded\n", name);
        return NULL;
    }
    S->plugins = more;
    plug *p = NULL;
    char perr[256];
    if (plug_load(&p, S->plugin_dir, name, &S->host, perr)) {
        fprintf(stderr, "outpost serve: plugin refused: %s\n", perr);
        return NULL;
    }
    const outpost_plugin *info = plug_info(p);
    fprintf(stderr, "outpost serve: plugin %s %s (%s) loaded from %s\n", info->name,
            info->version ? info->version : "", plug_kind_name(info->kind), plug_path(p));
    S->plugins[S->n_plugins++] = p;
    return info;
}

/* Every plugin in plugins.enabled; a refused one is logged and skipped.
 * The backend for peer and cloud (plugins.backend) is not among them unless
 * listed: open_remotes() loads it when a remote target is configured, so an
 * agent without one never maps libcurl and its TLS libraries. */
static void load_plugins(serve_state *S)
{
    S->host = (outpost_host){
        .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
        .struct_size = sizeof(outpost_host),
        .ctx = S,
        .agent_version = OUTPOST_VERSION,
        .log = host_log,
        .alloc = host_alloc,
        .free = host_free,
        .pii_redact = host_pii_redact,
    };
    if (choose_plugin_dir(S)) {
        fprintf(stderr, "outpost serve: out of memory: no plugins loaded\n");
        return;
    }
    const cfg_strs *en = &S->conf->plugins.enabled;
    for (size_t i = 0; i < en->n; i++) {
        bool dup = false;
        for (size_t k = 0; k < i; k++)
            dup = dup || strcmp(en->v[k], en->v[i]) == 0;
        if (!dup)
            load_plugin(S, en->v[i]);
    }
}

static void unload_plugins(serve_state *S)
{
    for (size_t i = S->n_plugins; i-- > 0;)
        plug_unload(S->plugins[i]);
    free(S->plugins);
    S->plugins = NULL;
    S->n_plugins = 0;
    free(S->plugin_dir);
    S->plugin_dir = NULL;
}

/* A configured target whose backend could not be set up: every job routed
 * there is refused, so it is answered locally with reason
 * "<target>_unreachable" (not "_unconfigured": it is configured). */
static int no_backend_submit(void *ud, sched_job *job, char err[256])
{
    (void)job;
    snprintf(err, 256, "%s: no backend plugin could be set up to reach it", (const char *)ud);
    return SCHED_ECLOSED;
}

static void open_hooks(serve_state *S)
{
    size_t n = 0;
    for (size_t i = 0; i < S->n_plugins; i++)
        n += plug_info(S->plugins[i])->kind == OUTPOST_PLUGIN_HOOK;
    if (!n || !(S->hooks = calloc(n, sizeof *S->hooks)))
        return;
    for (size_t i = 0; i < S->n_plugins; i++) {
        const outpost_plugin *info = plug_info(S->plugins[i]);
        if (info->kind != OUTPOST_PLUGIN_HOOK)
            continue;
        void *inst = NULL;
        char herr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        if (info->hook->open(&S->host, &inst, herr)) {
            herr[sizeof herr - 1] = '\0';
            fprintf(stderr, "outpost serve: plugin %s: cannot open: %s\n", info->name, herr);
            continue;
        }
        S->hooks[S->n_hooks++] = (cloud_hook){.name = info->name, .ops = info->hook,
                                              .inst = inst};
    }
}

/* The backend plugin instance for one target and the call pool around it;
 * NULL (after a log line) when either cannot be set up. */
static cloud *open_remote(serve_state *S, const char *target, const char *url, const char *key,
                          const char *model, const cfg_remote *call, void **inst,
                          size_t default_model)
{
    const cfg *c = S->conf;
    if (!S->backend) {
        fprintf(stderr, "outpost serve: %s %s: no backend plugin is loaded (backend-openai); "
                        "requests routed there are answered locally\n", target, url);
        return NULL;
    }
    int64_t timeout_ms = call->timeout_ms > 0 ? call->timeout_ms
                                              : c->limits.request_timeout_s * 1000;
    outpost_backend_config bc = {
        .name = target,
        .url = url,
        .api_key = key,
        .model = model,
        .connect_timeout_ms = (int)call->connect_timeout_ms,
        .timeout_ms = timeout_ms > INT32_MAX ? INT32_MAX : (int)timeout_ms,
        .retries = (int)call->retries,
        .retry_backoff_ms = (int)call->retry_backoff_ms,
    };
    char perr[OUTPOST_PLUGIN_ERR_SIZE] = "";
    if (S->backend->open(&S->host, &bc, inst, perr)) {
        perr[sizeof perr - 1] = '\0';
        fprintf(stderr, "outpost serve: %s: %s; requests routed there are answered locally\n",
                target, perr);
        *inst = NULL;
        return NULL;
    }
    bool is_cloud = strcmp(target, "cloud") == 0;
    cloud_opts o = {
        .target = target,
        .ops = S->backend,
        .inst = *inst,
        .hooks = S->hooks,
        .n_hooks = S->n_hooks,
        .host = &S->host,
        .models = S->models,
        .n_models = S->n_models,
        .default_model = default_model,
        .st = S->st,
        .threads = REMOTE_THREADS,
        .queue_max = REMOTE_QUEUE,
        .price_per_1k_tokens = is_cloud ? c->cloud.price_per_1k_tokens : 0,
        .budget_usd_month = is_cloud ? c->cloud.budget_usd_month : NAN,
        .probe_interval_s = REMOTE_PROBE_INTERVAL_S,
    };
    cloud *cl = NULL;
    char err[256];
    if (cloud_open(&cl, &o, err)) {
        fprintf(stderr, "outpost serve: %s: %s; requests routed there are answered locally\n",
                target, err);
        S->backend->close(*inst);
        *inst = NULL;
        return NULL;
    }
    fprintf(stderr, "outpost serve: %s at %s (%zu hook%s before a request leaves)\n", target, url,
            S->n_hooks, S->n_hooks == 1 ? "" : "s");
    return cl;
}

/* Hooks, then peer and cloud when configured, into svc. */
static void open_remotes(serve_state *S, size_t default_model, http_services *svc)
{
    const cfg *c = S->conf;
    if (!c->peer.url && !c->cloud.url)
        return;
    /* plugins.backend, loaded now unless plugins.enabled had it; a backend
     * of another name that plugins.enabled loaded serves when it cannot. */
    const outpost_plugin *chosen = NULL, *other = NULL;
    for (size_t i = 0; i < S->n_plugins; i++) {
        const outpost_plugin *info = plug_info(S->plugins[i]);
        if (info->kind != OUTPOST_PLUGIN_BACKEND)
            continue;
        if (strcmp(info->name, c->plugins.backend) == 0)
            chosen = info;
        else if (!other)
            other = info;
    }
    if (!chosen && (chosen = load_plugin(S, c->plugins.backend)) &&
        chosen->kind != OUTPOST_PLUGIN_BACKEND) {
        fprintf(stderr, "outpost serve: plugins.backend: %s is a %s plugin, not a backend\n",
                chosen->name, plug_kind_name(chosen->kind));
        chosen = NULL;
    }
    if (!chosen)
        chosen = other;
    S->backend = chosen ? chosen->backend : NULL;
    open_hooks(S);
    /* Copies: a reload replaces the cfg these point into. */
    if (c->peer.url && (S->peer_url = strdup(c->peer.url))) {
        S->peer = open_remote(S, "peer", c->peer.url, c->peer.api_key, NULL, &c->peer.call,
                              &S->peer_inst, default_model);
        svc->peer = S->peer ? cloud_backend(S->peer)
                            : (sched_backend){.name = "peer", .ud = S->peer_url,
                                              .submit = no_backend_submit};
        svc->peer_link = S->peer;
    }
    if (c->cloud.url && (S->cloud_url = strdup(c->cloud.url))) {
        S->cloud = open_remote(S, "cloud", c->cloud.url, c->cloud.api_key, c->cloud.model,
                               &c->cloud.call, &S->cloud_inst, default_model);
        svc->cloud = S->cloud ? cloud_backend(S->cloud)
                              : (sched_backend){.name = "cloud", .ud = S->cloud_url,
                                                .submit = no_backend_submit};
        svc->cloud_link = S->cloud;
    }
}

/* After the listeners closed: let remote calls finish within the budget
 * (their fallbacks still reach the local queues, drained next). */
static void drain_remotes(serve_state *S)
{
    int budget_ms = S->conf ? (int)(S->conf->limits.drain_timeout_s * 1000) : 0;
    int n = 0;
    if (S->peer)
        n += cloud_drain(S->peer, budget_ms);
    if (S->cloud)
        n += cloud_drain(S->cloud, budget_ms);
    if (n)
        fprintf(stderr, "outpost serve: %d remote request(s) cancelled after the drain\n", n);
}

static void close_remotes(serve_state *S)
{
    cloud_close(S->peer);
    cloud_close(S->cloud);
    S->peer = S->cloud = NULL;
    if (S->backend) {
        if (S->peer_inst)
            S->backend->close(S->peer_inst);
        if (S->cloud_inst)
            S->backend->close(S->cloud_inst);
    }
    S->peer_inst = S->cloud_inst = NULL;
    for (size_t i = 0; i < S->n_hooks; i++)
        S->hooks[i].ops->close(S->hooks[i].inst);
    free(S->hooks);
    S->hooks = NULL;
    S->n_hooks = 0;
}

/* ---- sensors ----------------------------------------------------------------------- */

/* Every loaded sensor plugin is opened once on sensors.root and read by the
 * main thread every sensors.interval_s (so the ABI's "one thread at a time"
 * holds: nothing else calls them); the facts go to the HTTP front, which
 * puts them in each route() env and on /metrics. Where several sensors know
 * a fact, the first in plugins.enabled order gives it. A sensor that cannot
 * open or read costs a log line (once per failing streak) and leaves its
 * facts unknown; the agent serves on. */
typedef struct sensor_slot {
    const char *name;
    const outpost_sensor_ops *ops;
    void *inst;
    bool failing;
} sensor_slot;

static void sensors_open(serve_state *S)
{
    S->sensor_interval_s = (double)S->conf->sensors.interval_s;
    size_t n = 0;
    for (size_t i = 0; i < S->n_plugins; i++)
        n += plug_info(S->plugins[i])->kind == OUTPOST_PLUGIN_SENSOR;
    if (!n || !(S->sensors = calloc(n, sizeof *S->sensors)))
        return;
    for (size_t i = 0; i < S->n_plugins; i++) {
        const outpost_plugin *info = plug_info(S->plugins[i]);
        if (info->kind != OUTPOST_PLUGIN_SENSOR)
            continue;
        void *inst = NULL;
        char serr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        if (info->sensor->open(&S->host, S->conf->sensors.root, &inst, serr)) {
            serr[sizeof serr - 1] = '\0';
            fprintf(stderr, "outpost serve: plugin %s: cannot open: %s (its facts stay unknown)\n",
                    info->name, serr);
            continue;
        }
        S->sensors[S->n_sensors++] = (sensor_slot){.name = info->name, .ops = info->sensor,
                                                   .inst = inst};
    }
}

static void keep_first(double *have, double v)
{
    if (isnan(*have) && !isnan(v))
        *have = v;
}

/* One reading of every sensor, merged, handed to the HTTP front. */
static void sensors_sample(serve_state *S)
{
    http_device_facts all;
    http_device_facts_unknown(&all);
    for (size_t i = 0; i < S->n_sensors; i++) {
        sensor_slot *s = &S->sensors[i];
        outpost_sensor_facts f;
        http_device_facts_unknown(&f);
        char serr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        if (s->ops->read(s->inst, &f, serr)) {
            serr[sizeof serr - 1] = '\0';
            if (!s->failing)
                fprintf(stderr, "outpost serve: plugin %s: read failed: %s (facts unknown until "
                                "it recovers)\n", s->name, serr);
            s->failing = true;
            continue;
        }
        if (s->failing)
            fprintf(stderr, "outpost serve: plugin %s: reading again\n", s->name);
        s->failing = false;
        keep_first(&all.battery_pct, f.battery_pct);
        if (all.on_ac < 0 && f.on_ac >= 0)
            all.on_ac = f.on_ac ? 1 : 0;
        keep_first(&all.temp_c, f.temp_c);
        keep_first(&all.cpu_pressure_pct, f.cpu_pressure_pct);
        keep_first(&all.mem_pressure_pct, f.mem_pressure_pct);
        keep_first(&all.io_pressure_pct, f.io_pressure_pct);
    }
    if (S->http)
        http_set_device_facts(S->http, &all);
}

static void sensors_close(serve_state *S)
{
    for (size_t i = 0; i < S->n_sensors; i++)
        S->sensors[i].ops->close(S->sensors[i].inst);
    free(S->sensors);
    S->sensors = NULL;
    S->n_sensors = 0;
}

/* ---- fleet ------------------------------------------------------------------------- */

static void fleet_log(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "outpost serve: fleet: %s\n", line);
}

/* The live fields of the retained status (fleet thread). */
static void fleet_status(void *ud, json_t *status)
{
    serve_state *S = ud;
    if (S->n_models)
        json_object_set_new(status, "model", json_string(sched_name(S->models[S->default_model])));
    json_object_set_new(status, "health", json_string(S->http ? "ok" : "starting"));
    if (S->ota)
        fleet_ota_status(S->ota, status);
}

/* After the store, the policy and the models: commands may replace the
 * policy, and status names the model. A broker that is down is no error
 * (the channel retries); bad fleet settings are. */
static int fleet_start(serve_state *S, char err[256])
{
    const cfg *c = S->conf;
    if (!c->fleet.broker)
        return 0;
    fleet_opts o = {
        .broker_url = c->fleet.broker,
        .device_id = c->fleet.device_id,
        .groups = (const char *const *)c->fleet.groups.v,
        .n_groups = c->fleet.groups.n,
        .topic_prefix = c->fleet.topic_prefix,
        .fleet_key_path = c->fleet.fleet_key,
        .ca_path = c->fleet.ca,
        .cert_path = c->fleet.cert,
        .key_path = c->fleet.key,
        .username = c->fleet.username,
        .password = c->fleet.password,
        .mqtt_version = (int)c->fleet.mqtt_version,
        .keepalive_s = (int)c->fleet.keepalive_s,
        .reconnect_min_ms = (int)c->fleet.reconnect_min_ms,
        .reconnect_max_ms = (int)c->fleet.reconnect_max_ms,
        .rollup_interval_s = c->fleet.rollup_interval_s,
        .outbox_max_msgs = c->fleet.outbox_max_msgs,
        .agent_version = OUTPOST_VERSION,
        .policy = S->policy,
        .log = fleet_log,
    };
    fleet_handlers h = {
        .status = fleet_status,
        .status_ud = S,
    };
    if (S->ota)
        fleet_ota_handlers(S->ota, &h);
    if (fleet_open(&o, &h, S->st, &S->fleet, err))
        return -1;
    if (S->ota && fleet_ota_start(S->ota, S->fleet, err))
        return -1;
    fprintf(stderr, "outpost serve: fleet: device %s, broker %s\n", c->fleet.device_id,
            c->fleet.broker);
    return 0;
}

/* ---- the command ------------------------------------------------------------------- */

static bool add_flag(serve_state *S, const char *name, const char *value)
{
    flag_arg *f = realloc(S->flags, (S->n_flags + 1) * sizeof *f);
    if (!f)
        return false;
    S->flags = f;
    char *v = strdup(value);
    if (!v)
        return false;
    f[S->n_flags++] = (flag_arg){.name = name, .value = v};
    return true;
}

static int parse_args(serve_state *S, int argc, char **argv)
{
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:m:h", long_opts, NULL)) != -1) {
        const char *name = NULL;
        switch (c) {
        case 'c': S->config_path = optarg; continue;
        case 'm': name = "model"; break;
        case OPT_SOCKET: name = "socket"; break;
        case OPT_LISTEN: name = "listen"; break;
        case OPT_STATE_DIR: name = "state-dir"; break;
        case OPT_POLICY: name = "policy"; break;
        case OPT_LUA_DIR: name = "lua-dir"; break;
        case OPT_PEER: name = "peer"; break;
        case OPT_CLOUD: name = "cloud"; break;
        case OPT_PLUGIN_DIR: name = "plugin-dir"; break;
        case OPT_BROKER: name = "broker"; break;
        case OPT_DEVICE_ID: name = "device-id"; break;
        case OPT_FLEET_KEY: name = "fleet-key"; break;
        case OPT_GROUP: name = "group"; break;
        case OPT_CA: name = "ca"; break;
        case OPT_CERT: name = "cert"; break;
        case OPT_KEY: name = "key"; break;
        case OPT_SET: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                cli_error(cmd, "--set: expected KEY=VALUE, got '%s'", optarg);
                return CLI_USAGE;
            }
            *eq = '\0';
            if (!add_flag(S, optarg, eq + 1)) {
                cli_error(cmd, "out of memory");
                return CLI_FAIL;
            }
            continue;
        }
        case 'h': fputs(usage_text, stdout); return -1;
        default: return cli_bad_option(cmd, argv, c);
        }
        if (!add_flag(S, name, optarg)) {
            cli_error(cmd, "out of memory");
            return CLI_FAIL;
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* The scheduler settings of configured model m (its file: path). */
static sched_opts model_opts(const serve_state *S, const cfg_model *m, const char *path,
                             const char *kv_dir)
{
    const cfg *c = S->conf;
    return (sched_opts){
        .name = m->name,
        .path = path,
        .n_ctx = m->ctx,
        .n_threads = m->threads,
        .kv_type = m->kv_type,
        .queue_max = (int)c->limits.queue_depth,
        .max_tokens_default = c->limits.max_output_tokens,
        .max_tokens_limit = c->limits.max_output_tokens,
        .max_prompt_tokens = c->limits.max_prompt_tokens,
        .warmup = true,
        .st = S->st,
        .kv_dir = kv_dir,
        .kv_budget_bytes = c->kv.disk_budget_mb << 20,
    };
}

static const cfg_model *default_model_cfg(const cfg *c)
{
    for (size_t i = 0; i < c->n_models; i++)
        if (c->models[i].is_default)
            return &c->models[i];
    return c->n_models ? &c->models[0] : NULL;
}

/* ---- OTA: what fleet_ota borrows from the agent ------------------------------------ */

/* A scheduler for an installed model file, with the default model's settings. */
static int ota_model_open(void *ud, const char *path, sched **out, char err[256])
{
    serve_state *S = ud;
    char kv_dir[4200];
    snprintf(kv_dir, sizeof kv_dir, "%s/kv", S->conf->state_dir);
    /* The config may be replaced by a reload meanwhile: hold it. */
    pthread_mutex_lock(&S->reload_mu);
    sched_opts o = model_opts(S, default_model_cfg(S->conf), path, kv_dir);
    int rc = sched_open(out, &o, err);
    pthread_mutex_unlock(&S->reload_mu);
    return rc ? -1 : 0;
}

/* Hot swap: the HTTP front reads S->models[default] for every new request
 * (it borrows the array), so one atomic pointer store sends new requests to
 * the new model; requests that already found the old one finish there, and
 * fleet_ota closes it once it has stayed idle (FLEET_OTA_RETIRE_IDLE_MS). */
static sched *ota_model_swap(void *ud, sched *s)
{
    serve_state *S = ud;
    sched *old = __atomic_exchange_n(&S->models[S->default_model], s, __ATOMIC_ACQ_REL);
    fprintf(stderr, "outpost serve: ota: model %s now serves from the installed update\n",
            sched_name(s));
    return old;
}

static sched *ota_model_current(void *ud)
{
    serve_state *S = ud;
    return __atomic_load_n(&S->models[S->default_model], __ATOMIC_ACQUIRE);
}

static int ota_open(serve_state *S, char err[256])
{
    const cfg *c = S->conf;
    const cfg_model *m = default_model_cfg(c);
    if (!c->fleet.broker || !m)
        return 0;
    /* outpost-fetch.so (agent/fetch_http.h): the build tree's when this
     * binary is the build tree's, else the installed one. */
    const char *fetch_module = OUTPOST_FETCH_MODULE_PATH;
#ifdef OUTPOST_BUILD_DIR
    if (cli_in_build_tree())
        fetch_module = OUTPOST_BUILD_DIR "/agent/" FETCH_HTTP_MODULE;
#endif
    fleet_ota_opts o = {
        .state_dir = c->state_dir,
        .factory_model = m->path,
        .fleet_key_path = c->fleet.fleet_key,
        .fetch_module = fetch_module,
        .url_ca = c->fleet.ota_ca,
        .host = {.ud = S, .model_open = ota_model_open, .model_swap = ota_model_swap,
                 .model_current = ota_model_current},
    };
    return fleet_ota_open(&o, &S->ota, err);
}

static int load_models(serve_state *S, char err[256], size_t *default_index)
{
    const cfg *c = S->conf;
    if (!(S->models = calloc(c->n_models, sizeof *S->models))) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    *default_index = 0;
    /* Saved KV states of sessions (the scheduler keeps them in budget). */
    char kv_dir[4200];
    snprintf(kv_dir, sizeof kv_dir, "%s/kv", c->state_dir);
    if (mkdir(kv_dir, 0700) && errno != EEXIST) {
        snprintf(err, 256, "cannot create %s: %s", kv_dir, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < c->n_models; i++) {
        const cfg_model *m = &c->models[i];
        /* The default model serves from its installed OTA slot, if any. */
        const char *path = S->ota && m == default_model_cfg(c) ? fleet_ota_model_path(S->ota)
                                                               : m->path;
        sched_opts o = model_opts(S, m, path, kv_dir);
        double t0 = cli_now();
        char serr[256];
        if (sched_open(&S->models[i], &o, serr)) {
            snprintf(err, 256, "model %s: %s", m->name, serr);
            return -1;
        }
        S->n_models++;
        if (m->is_default)
            *default_index = i;
        fprintf(stderr, "outpost serve: model %s loaded from %s (context %d, %.0f ms with "
                        "warm-up)\n",
                m->name, path, sched_n_ctx(S->models[i]), (cli_now() - t0) * 1e3);
    }
    return 0;
}

static void shutdown_models(serve_state *S)
{
    int64_t budget_ms = S->conf ? S->conf->limits.drain_timeout_s * 1000 : 0;
    double t0 = cli_now();
    int cancelled = 0;
    for (size_t i = 0; i < S->n_models; i++) {
        int64_t left = budget_ms - (int64_t)((cli_now() - t0) * 1e3);
        cancelled += sched_drain(S->models[i], left > 0 ? (int)left : 0);
    }
    if (cancelled)
        fprintf(stderr, "outpost serve: %d request(s) cancelled after the %lld s drain\n",
                cancelled, (long long)(budget_ms / 1000));
}

int cmd_serve(int argc, char **argv)
{
    serve_state S = {0};
    pthread_mutex_init(&S.reload_mu, NULL);
    int status = parse_args(&S, argc, argv);
    char err[256];
    sigset_t sigs;
    bool notified = false;
    if (status) {
        status = status < 0 ? CLI_OK : status;
        goto done;
    }
    if (build_config(&S, &S.conf, err)) {
        cli_error(cmd, "%s", err);
        status = CLI_USAGE;
        goto done;
    }
    status = CLI_FAIL;

    /* Before any thread exists, so that all of them inherit the mask and the
     * signals reach only the sigwait below. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    const cfg *c = S.conf;
    if (mkdir_p(c->state_dir, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    char db_path[4200];
    snprintf(db_path, sizeof db_path, "%s/outpost.db", c->state_dir);
    if (store_open(&S.st, db_path, NULL, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (pii_new(&S.pii, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    load_plugins(&S);
    sensors_open(&S);
    pol_opts po = {.instr_limit = (uint64_t)c->policy.instr_limit,
                   .mem_limit_bytes = (size_t)c->policy.mem_limit_mb << 20,
                   .lua_dir = c->policy.lua_dir, .log = policy_log};
    if (pol_open(&S.policy, c->policy.file, &po, err)) {
        /* A policy someone configured must load; the built-in default may
         * be missing from an uninstalled build, and then everything stays
         * local (reason "no_policy"). */
        bool configured = cfg_origin_of(c, "policy.file") != CFG_FROM_DEFAULT ||
                          cfg_origin_of(c, "policy.lua_dir") != CFG_FROM_DEFAULT;
        if (configured || access(c->policy.file, F_OK) == 0) {
            cli_error(cmd, "policy: %s", err);
            goto done;
        }
        fprintf(stderr, "outpost serve: no policy (%s); every request is answered locally\n",
                err);
    }

    api_limits lim;
    api_limits_default(&lim);
    if (c->limits.max_output_tokens < INT32_MAX)
        lim.max_tokens = (int32_t)c->limits.max_output_tokens;
    http_opts ho = {
        .socket_path = c->listen.socket,
        .socket_mode = c->listen.socket_mode,
        .allowed_uids = c->listen.allowed_uids.v,
        .n_allowed_uids = c->listen.allowed_uids.n,
        .allowed_gids = c->listen.allowed_gids.v,
        .n_allowed_gids = c->listen.allowed_gids.n,
        .tcp_host = c->listen.tcp ? c->listen.tcp_host : NULL,
        .tcp_port = c->listen.tcp_port,
        .api_key = c->listen.api_key,
        .max_body_bytes = (size_t)c->limits.max_body_bytes,
        .limits = &lim,
        .request_timeout_s = (unsigned)c->limits.request_timeout_s,
    };
    if (http_start(&S.http, &ho, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    fprintf(stderr, "outpost serve: listening on %s", c->listen.socket);
    if (c->listen.tcp)
        fprintf(stderr, " and tcp %s:%d", c->listen.tcp_host, http_tcp_port(S.http));
    fprintf(stderr, " (state in %s, policy %s)\n", c->state_dir, c->policy.file);
    sensors_sample(&S); /* facts from the first request on */
    sd_notify_msg("STATUS=loading models");

    size_t def = 0;
    if (ota_open(&S, err)) {
        cli_error(cmd, "ota: %s", err);
        goto done;
    }
    if (load_models(&S, err, &def)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    http_services svc = {
        .st = S.st, .policy = S.policy, .pii = S.pii, .models = S.models,
        .n_models = S.n_models, .default_model = def, .reload = reload, .reload_ud = &S,
    };
    open_remotes(&S, def, &svc);
    http_set_services(S.http, &svc);
    http_set_ready(S.http, true);
    S.default_model = def;
    if (fleet_start(&S, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    sd_notify_msg("READY=1\nSTATUS=serving");
    notified = true;
    fprintf(stderr, "outpost serve: ready\n");

    /* The main thread's only job now: signals, retention once an hour, and
     * the sensors every sensors.interval_s. */
    double next_prune = cli_now(), next_sample = cli_now() + S.sensor_interval_s;
    for (;;) {
        if (cli_now() >= next_prune) {
            pthread_mutex_lock(&S.reload_mu);
            prune(&S);
            pthread_mutex_unlock(&S.reload_mu);
            next_prune = cli_now() + 3600;
        }
        if (S.n_sensors && cli_now() >= next_sample) {
            sensors_sample(&S);
            next_sample = cli_now() + S.sensor_interval_s;
        }
        double wait_s = next_prune - cli_now();
        if (S.n_sensors && next_sample - cli_now() < wait_s)
            wait_s = next_sample - cli_now();
        wait_s = wait_s < 0.001 ? 0.001 : wait_s > 60 ? 60 : wait_s;
        struct timespec wait = {.tv_sec = (time_t)wait_s,
                                .tv_nsec = (long)((wait_s - (double)(time_t)wait_s) * 1e9)};
        int sig = sigtimedwait(&sigs, NULL, &wait);
        if (sig == SIGHUP) {
            char rerr[256];
            reload(&S, rerr);
        } else if (sig == SIGTERM || sig == SIGINT) {
            fprintf(stderr, "outpost serve: %s: draining\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
    }
    status = CLI_OK;

done:
    if (notified)
        sd_notify_msg("STOPPING=1\nSTATUS=stopping");
    if (S.http)
        http_close_listeners(S.http);
    fleet_ota_stop(S.ota); /* no update starts or swaps a model from here on */
    drain_remotes(&S);
    shutdown_models(&S);
    if (S.http) {
        /* Let the last responses go out before the connections close. */
        for (int i = 0; i < 200 && http_in_flight(S.http) > 0; i++)
            usleep(10000);
        http_stop(S.http);
    }
    close_remotes(&S);
    /* After the drain (its last requests are recorded; they are exported
     * now or at the next start), before the store closes. */
    fleet_close(S.fleet);
    S.fleet = NULL;
    fleet_ota_close(S.ota);
    for (size_t i = 0; i < S.n_models; i++)
        sched_close(S.models[i]);
    free(S.models);
    pol_close(S.policy);
    pii_free(S.pii);
    store_close(S.st);
    cfg_free(S.conf);
    free(S.peer_url);
    free(S.cloud_url);
    sensors_close(&S);
    unload_plugins(&S);
    for (size_t i = 0; i < S.n_flags; i++)
        free(S.flags[i].value);
    free(S.flags);
    pthread_mutex_destroy(&S.reload_mu);
    if (status == CLI_OK && notified)
        fprintf(stderr, "outpost serve: stopped\n");
    return status;
}
