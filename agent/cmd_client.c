/*
 * cmd_client.c - the commands that talk to a running agent over its Unix
 * socket: `outpost chat`, `outpost status` and `outpost policy reload`.
 *
 * HTTP is libcurl's, in the module outpost-client.so that these commands
 * dlopen() (client_http.h): the daemon, built into the same binary, then
 * never maps libcurl and what it links. JSON is jansson's. The
 * socket is found the way the agent finds it: --socket, else the config
 * file's listen.socket (-c), else OUTPOST_SOCKET, else the built-in default,
 * so a plain `outpost chat hi` reaches a plain `outpost serve`.
 *
 * chat streams: the reply is printed as its SSE events arrive, and the
 * routing facts (route, reason, session, TTFT) go to stderr afterwards.
 */
#include <dlfcn.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "client_http.h"
#include "config.h"

/* Where meson installs outpost-client.so (agent/meson.build). */
#ifndef OUTPOST_CLIENT_MODULE_PATH
#define OUTPOST_CLIENT_MODULE_PATH "/usr/local/lib/outpost/" CLIENT_HTTP_MODULE
#endif

static const char *str_or(const char *s, const char *fallback) { return s ? s : fallback; }

/* ---- the connection --------------------------------------------------------- */

/* The agent's socket: flag, config file, environment, default. */
static char *find_socket(const char *cmd, const char *flag, const char *config)
{
    if (flag)
        return strdup(flag);
    cfg *c = NULL;
    char err[256];
    int rc = cfg_new(&c, err);
    if (!rc && config)
        rc = cfg_load_file(c, config, err);
    if (!rc)
        rc = cfg_apply_env(c, err);
    char *path = NULL;
    if (rc)
        cli_error(cmd, "%s", err);
    else if (!(path = strdup(c->listen.socket)))
        cli_error(cmd, "out of memory");
    cfg_free(c);
    return path;
}

/* A command's way to the agent: its socket and the transport module. */
typedef struct agent_link {
    const char *cmd;
    char *sock;
    void *module;
    const client_http_ops *http;
} agent_link;

static void link_close(agent_link *l)
{
    if (l->module)
        dlclose(l->module);
    free(l->sock);
    *l = (agent_link){0};
}

/* Find the socket and load outpost-client.so (client_http.h): the build
 * tree's when this binary is the build tree's, else the installed one.
 * false after printing an error. */
static bool link_open(agent_link *l, const char *cmd, const char *sock_flag, const char *config)
{
    *l = (agent_link){.cmd = cmd};
    if (!(l->sock = find_socket(cmd, sock_flag, config)))
        return false;
    const char *path = OUTPOST_CLIENT_MODULE_PATH;
#ifdef OUTPOST_BUILD_DIR
    if (cli_in_build_tree())
        path = OUTPOST_BUILD_DIR "/agent/" CLIENT_HTTP_MODULE;
#endif
    if (!(l->module = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
        const char *why = dlerror();
        cli_error(cmd, "cannot load the client module: %s", why ? why : path);
        link_close(l);
        return false;
    }
    const client_http_ops *ops = dlsym(l->module, CLIENT_HTTP_SYMBOL);
    if (!ops || ops->abi_version != CLIENT_HTTP_ABI_VERSION ||
        ops->struct_size < sizeof(client_http_ops) || !ops->request) {
        cli_error(cmd, "%s: %s (expected version %u; reinstall outpost)", path,
                  !ops ? "no " CLIENT_HTTP_SYMBOL " symbol" : "a mismatched client module",
                  CLIENT_HTTP_ABI_VERSION);
        link_close(l);
        return false;
    }
    l->http = ops;
    return true;
}

/* One request to the agent. body NULL: GET (or method). Returns false after
 * printing an error when the agent cannot be reached. */
static bool agent_request(agent_link *l, const char *method, const char *path,
                          const char *body, client_http_event_fn on_event, void *ud,
                          client_http_reply *out)
{
    char err[256];
    if (l->http->request(l->sock, method, path, body, on_event, ud, out, err)) {
        cli_error(l->cmd, "cannot reach the agent at %s (is 'outpost serve' running?)", err);
        return false;
    }
    return true;
}

/* The message of an OpenAI-shaped error body, or the body itself. */
static void print_error_body(const char *cmd, long status, const char *body)
{
    json_t *j = json_loads(body ? body : "", 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    cli_error(cmd, "the agent answered %ld: %s", status, msg ? msg : body ? body : "");
    json_decref(j);
}

/* ---- chat ---------------------------------------------------------------------- */

static const char chat_usage[] =
    "usage: outpost chat [-s SESSION] [options] TEXT\n"
    "\n"
    "Send TEXT to the running agent as a user message and print the reply as it\n"
    "is generated. The route taken, its reason and the session go to stderr.\n"
    "\n"
    "  -s, --session ID      continue a session; 'new' starts one (its id is\n"
    "                        printed on stderr)\n"
    "  -m, --model NAME      a model the agent serves (default: its default)\n"
    "  -n, --max-tokens N    longest reply in tokens\n"
    "      --temp T          temperature; 0 is greedy\n"
    "      --private         keep the request on this device\n"
    "      --route R         ask for auto, local, peer or cloud\n"
    "      --socket PATH     the agent's socket\n"
    "  -c, --config FILE     read the socket path from this config file\n"
    "  -h, --help            this text\n"
    "\n"
    "Exit status: 0 ok, 1 the agent failed or could not be reached, 2 usage error.\n";

typedef struct chat_state {
    bool printed;
    bool failed;
    json_t *outpost;
    char error[512];
} chat_state;

static bool chat_event(void *ud, const char *data, size_t len)
{
    chat_state *cs = ud;
    if (len == 6 && !memcmp(data, "[DONE]", 6))
        return false;
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!j)
        return true;
    json_t *err = json_object_get(j, "error");
    if (err) {
        snprintf(cs->error, sizeof cs->error, "%s",
                 str_or(json_string_value(json_object_get(err, "message")), "error"));
        cs->failed = true;
    }
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    const char *text = json_string_value(json_object_get(json_object_get(choice, "delta"),
                                                          "content"));
    if (text && text[0]) {
        fputs(text, stdout);
        fflush(stdout);
        cs->printed = true;
    }
    json_t *o = json_object_get(j, "outpost");
    if (o) {
        json_decref(cs->outpost);
        cs->outpost = json_incref(o);
    }
    json_decref(j);
    return true;
}

enum { OPT_TEMP = 256, OPT_PRIVATE, OPT_ROUTE, OPT_SOCKET };

int cmd_chat(int argc, char **argv)
{
    const char *cmd = "chat";
    static const struct option opts[] = {
        {"session", required_argument, NULL, 's'}, {"model", required_argument, NULL, 'm'},
        {"max-tokens", required_argument, NULL, 'n'}, {"temp", required_argument, NULL, OPT_TEMP},
        {"private", no_argument, NULL, OPT_PRIVATE}, {"route", required_argument, NULL, OPT_ROUTE},
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *session = NULL, *model = "default", *route = NULL, *sock_flag = NULL,
               *config = NULL;
    long max_tokens = 0;
    float temp = -1;
    bool private_ = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":s:m:n:c:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': session = optarg; break;
        case 'm': model = optarg; break;
        case 'n': if (!cli_parse_long(cmd, "-n", optarg, 1, 1 << 24, &max_tokens)) return CLI_USAGE; break;
        case OPT_TEMP: if (!cli_parse_float(cmd, "--temp", optarg, 0, 2, &temp)) return CLI_USAGE; break;
        case OPT_PRIVATE: private_ = true; break;
        case OPT_ROUTE: route = optarg; break;
        case OPT_SOCKET: sock_flag = optarg; break;
        case 'c': config = optarg; break;
        case 'h': fputs(chat_usage, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind != argc - 1) {
        cli_error(cmd, optind >= argc ? "expected the message TEXT" : "unexpected argument '%s'",
                  argv[optind + (optind < argc ? 1 : 0)]);
        return CLI_USAGE;
    }
    const char *text = argv[optind];

    json_t *req = json_pack("{s:s, s:[{s:s, s:s}], s:b}", "model", model, "messages", "role",
                            "user", "content", text, "stream", 1);
    json_t *op = json_object();
    if (!req || !op) {
        json_decref(req);
        json_decref(op);
        cli_error(cmd, "out of memory");
        return CLI_FAIL;
    }
    if (session)
        json_object_set_new(op, "session", json_string(session));
    if (private_)
        json_object_set_new(op, "privacy", json_string("private"));
    if (route)
        json_object_set_new(op, "route", json_string(route));
    json_object_set_new(req, "outpost", op);
    if (max_tokens)
        json_object_set_new(req, "max_tokens", json_integer(max_tokens));
    if (temp >= 0)
        json_object_set_new(req, "temperature", json_real(temp));
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);

    int status = CLI_FAIL;
    agent_link link = {0};
    chat_state cs = {0};
    client_http_reply r = {0};
    if (!body) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    if (!link_open(&link, cmd, sock_flag, config) ||
        !agent_request(&link, NULL, "/v1/chat/completions", body, chat_event, &cs, &r))
        goto done;
    if (r.status != 200) {
        print_error_body(cmd, r.status, r.body);
        goto done;
    }
    if (cs.printed)
        fputc('\n', stdout);
    if (cs.failed) {
        cli_error(cmd, "%s", cs.error);
        goto done;
    }
    if (cs.outpost) {
        json_t *o = cs.outpost;
        const char *sid = json_string_value(json_object_get(o, "session"));
        fprintf(stderr, "[route %s (%s), ttft %.1f ms, %lld cached tokens%s%s%s]\n",
                str_or(json_string_value(json_object_get(o, "route")), "?"),
                str_or(json_string_value(json_object_get(o, "reason")), ""),
                json_number_value(json_object_get(o, "ttft_ms")),
                (long long)json_integer_value(json_object_get(o, "cached_tokens")),
                json_is_true(json_object_get(o, "truncated")) ? ", history truncated" : "",
                sid ? ", session " : "", sid ? sid : "");
    }
    status = CLI_OK;
done:
    json_decref(cs.outpost);
    free(r.body);
    free(body);
    link_close(&link);
    return status;
}

/* ---- status ------------------------------------------------------------------------ */

static const char status_usage[] =
    "usage: outpost status [--socket PATH] [-c CONFIG]\n"
    "\n"
    "Print whether the agent is up, the models it serves, and its queue and\n"
    "request counters.\n"
    "\n"
    "Exit status: 0 the agent is ready, 1 it is loading or cannot be reached,\n"
    "2 usage error.\n";

/* Sum of the samples of a Prometheus metric (all label sets) in text. */
static double metric_sum(const char *text, const char *name, bool *found)
{
    double sum = 0;
    size_t n = strlen(name);
    *found = false;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) || (p[n] != ' ' && p[n] != '{'))
            continue;
        const char *v = strchr(p, ' ');
        if (v) {
            sum += strtod(v + 1, NULL);
            *found = true;
        }
    }
    return sum;
}

int cmd_status(int argc, char **argv)
{
    const char *cmd = "status";
    static const struct option opts[] = {
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sock_flag = NULL, *config = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET: sock_flag = optarg; break;
        case 'c': config = optarg; break;
        case 'h': fputs(status_usage, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    agent_link link;
    if (!link_open(&link, cmd, sock_flag, config))
        return CLI_FAIL;
    int status = CLI_FAIL;
    client_http_reply health = {0}, models = {0}, metrics = {0};
    if (!agent_request(&link, NULL, "/health", NULL, NULL, NULL, &health))
        goto done;
    printf("%-14s %s (%s)\n", "agent", health.status == 200 ? "ready" : "loading", link.sock);
    if (health.status != 200)
        goto done;
    if (agent_request(&link, NULL, "/v1/models", NULL, NULL, NULL, &models) &&
        models.status == 200) {
        json_t *j = json_loads(models.body ? models.body : "", 0, NULL);
        size_t i;
        json_t *m;
        printf("%-14s", "models");
        json_array_foreach(json_object_get(j, "data"), i, m)
            printf(" %s", str_or(json_string_value(json_object_get(m, "id")), "?"));
        printf("\n");
        json_decref(j);
    } else if (models.status) {
        print_error_body(cmd, models.status, models.body);
        goto done;
    }
    if (agent_request(&link, NULL, "/metrics", NULL, NULL, NULL, &metrics) &&
        metrics.status == 200) {
        static const struct {
            const char *metric, *label;
        } rows[] = {
            {"outpost_queue_depth", "queued"},
            {"outpost_in_flight_requests", "in flight"},
            {"outpost_requests_total", "served"},
            {"outpost_prompt_tokens_total", "prompt tokens"},
            {"outpost_cached_tokens_total", "cached tokens"},
            {"outpost_completion_tokens_total", "generated"},
            {"outpost_decode_tokens_per_second", "decode tok/s"},
            {"outpost_kv_saved_sessions", "saved sessions"},
            {"outpost_kv_disk_bytes", "saved KV bytes"},
        };
        for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
            bool found;
            double v = metric_sum(metrics.body ? metrics.body : "", rows[k].metric, &found);
            if (found)
                printf("%-14s %g\n", rows[k].label, v);
        }
    }
    status = CLI_OK;
done:
    free(health.body);
    free(models.body);
    free(metrics.body);
    link_close(&link);
    return status;
}

/* ---- policy reload ------------------------------------------------------------------ */

int cmd_policy_reload(int argc, char **argv)
{
    const char *cmd = "policy";
    static const struct option opts[] = {
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"config", required_argument, NULL, 'c'}, {NULL, 0, NULL, 0},
    };
    const char *sock_flag = NULL, *config = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET: sock_flag = optarg; break;
        case 'c': config = optarg; break;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "reload: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    agent_link link;
    if (!link_open(&link, cmd, sock_flag, config))
        return CLI_FAIL;
    client_http_reply r = {0};
    int status = CLI_FAIL;
    if (agent_request(&link, NULL, "/v1/policy/reload", "{}", NULL, NULL, &r)) {
        if (r.status == 200) {
            printf("policy reloaded\n");
            status = CLI_OK;
        } else {
            print_error_body(cmd, r.status, r.body);
        }
    }
    free(r.body);
    link_close(&link);
    return status;
}
