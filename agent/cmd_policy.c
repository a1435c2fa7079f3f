/*
 * cmd_policy.c - `outpost policy test`: run a routing policy's route() on
 * one request described in JSON and print the decision, without an agent;
 * `outpost policy reload` (asks a running agent to reload its policy).
 *
 * The JSON keys are the Lua field names of req and env, so what a policy
 * author writes here is what route() will see; strings are parsed into the
 * pol_ enums here, at the edge, and unknown keys are usage errors (a typo
 * would otherwise silently test the default). The decision goes to stdout
 * as one JSON object; the time route() took goes to stderr.
 */
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pii.h"
#include "pol.h"

static const char usage_text[] =
    "usage: outpost policy test FILE --request JSON [--env JSON] [options]\n"
    "       outpost policy reload [--socket PATH] [-c CONFIG]\n"
    "\n"
    "test: load the Lua routing policy FILE and print, as one JSON object on\n"
    "stdout, the decision its route(req, env) makes for one request\n"
    "({\"target\":...,\"reason\":...} plus model, max_tokens, redact when set).\n"
    "The time the call took goes to stderr. No agent needs to be running.\n"
    "\n"
    "  --request JSON    the request (JSON text, or @PATH to read it from a file):\n"
    "                      prompt_tokens    whole number >= 0        (default 0)\n"
    "                      messages         whole number >= 0        (default 1)\n"
    "                      route_requested  auto|local|peer|cloud    (default auto)\n"
    "                      privacy          normal|private           (default normal)\n"
    "                      pii              array of email, iban, card, national_id,\n"
    "                                       phone                    (default [])\n"
    "                      text             a string run through the PII detector;\n"
    "                                       the kinds it finds join pii\n"
    "                      max_latency_ms   whole number >= 0 or null (default null)\n"
    "  --env JSON        facts about the device (JSON text or @PATH); absent keys:\n"
    "                      online true; queue_depth 0; cloud_spend_usd 0;\n"
    "                      cloud_rtt_ms, peer_rtt_ms, battery_pct, on_ac, temp_c,\n"
    "                      local_tok_s, cloud_budget_usd null (unknown; no budget)\n"
    "  --lua-dir DIR     where require() finds modules (default: FILE's directory)\n"
    "  --instr-limit N   Lua instructions per call (default 1000000)\n"
    "  --mem-limit BYTES size cap of the policy's Lua state (default 8388608)\n"
    "  --repeat N        call route() N times; stderr gets the median and p99\n"
    "  -h, --help        this text\n"
    "\n"
    "reload: ask the running agent (over its socket) to load its policy again.\n"
    "\n"
    "Exit status: 0 ok, 1 the policy failed to load or route (one line on stderr),\n"
    "2 usage error.\n";

enum { OPT_REQUEST = 256, OPT_ENV, OPT_LUA_DIR, OPT_INSTR, OPT_MEM, OPT_REPEAT };
static const struct option long_opts[] = {
    {"request", required_argument, NULL, OPT_REQUEST},
    {"env", required_argument, NULL, OPT_ENV},
    {"lua-dir", required_argument, NULL, OPT_LUA_DIR},
    {"instr-limit", required_argument, NULL, OPT_INSTR},
    {"mem-limit", required_argument, NULL, OPT_MEM},
    {"repeat", required_argument, NULL, OPT_REPEAT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *const cmd = "policy";

/* ---- JSON in ------------------------------------------------------------- */

/* --request/--env value: JSON text, or @PATH. Returns an object or NULL
 * after printing the error. */
static json_t *load_object(const char *flag, const char *arg)
{
    json_error_t jerr;
    json_t *j;
    if (arg[0] == '@') {
        size_t len;
        char *text = cli_read_file(cmd, arg + 1, &len);
        if (!text)
            return NULL;
        j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        free(text);
    } else {
        j = json_loads(arg, JSON_REJECT_DUPLICATES, &jerr);
    }
    if (!j) {
        cli_error(cmd, "%s: not valid JSON: %s (line %d, column %d)", flag, jerr.text,
                  jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        cli_error(cmd, "%s: expected a JSON object", flag);
        json_decref(j);
        return NULL;
    }
    return j;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a fraction";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool check_keys(const char *flag, json_t *o, const char *const *known, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++)
            ok = strcmp(key, known[i]) == 0;
        if (!ok) {
            cli_error(cmd, "%s: unknown key \"%s\" (see 'outpost policy --help')", flag, key);
            return false;
        }
    }
    return true;
}

static bool get_count(const char *flag, json_t *o, const char *key, bool nullable,
                      int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return true;
    if (nullable && json_is_null(v)) {
        *out = -1;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        cli_error(cmd, "%s: %s: expected a whole number >= 0%s, got %s", flag, key,
                  nullable ? " or null" : "", json_kind(v));
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

/* A fact that may be unknown: a number, or null for NaN. */
static bool get_fact(const char *flag, json_t *o, const char *key, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return true;
    if (json_is_null(v)) {
        *out = NAN;
        return true;
    }
    if (!json_is_number(v)) {
        cli_error(cmd, "%s: %s: expected a number or null, got %s", flag, key, json_kind(v));
        return false;
    }
    *out = json_number_value(v);
    return true;
}

static bool get_name(const char *flag, json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return true;
    if (!json_is_string(v)) {
        cli_error(cmd, "%s: %s: expected a string, got %s", flag, key, json_kind(v));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* req from --request; kinds[] receives the PII kind names (static strings). */
static bool parse_request(json_t *o, pol_req *req, const char *kinds[PII_KIND_COUNT])
{
    static const char *const known[] = {"prompt_tokens", "messages", "route_requested",
                                        "privacy", "pii", "text", "max_latency_ms"};
    const char *flag = "--request";
    if (!check_keys(flag, o, known, sizeof known / sizeof known[0]))
        return false;
    memset(req, 0, sizeof *req);
    req->messages = 1;
    req->max_latency_ms = -1;
    req->route_requested = POL_TARGET_AUTO;
    req->privacy = POL_PRIVACY_NORMAL;
    const char *route = NULL, *privacy = NULL, *text = NULL;
    if (!get_count(flag, o, "prompt_tokens", false, &req->prompt_tokens) ||
        !get_count(flag, o, "messages", false, &req->messages) ||
        !get_count(flag, o, "max_latency_ms", true, &req->max_latency_ms) ||
        !get_name(flag, o, "route_requested", &route) ||
        !get_name(flag, o, "privacy", &privacy) || !get_name(flag, o, "text", &text))
        return false;
    if (route && pol_target_parse(route, &req->route_requested) != POL_OK) {
        cli_error(cmd, "%s: route_requested: \"%s\" is not auto, local, peer or cloud", flag,
                  route);
        return false;
    }
    if (privacy && pol_privacy_parse(privacy, &req->privacy) != POL_OK) {
        cli_error(cmd, "%s: privacy: \"%s\" is not normal or private", flag, privacy);
        return false;
    }

    bool seen[PII_KIND_COUNT] = {false};
    json_t *arr = json_object_get(o, "pii");
    if (arr && !json_is_array(arr)) {
        cli_error(cmd, "%s: pii: expected an array of kind names, got %s", flag,
                  json_kind(arr));
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        pii_kind k;
        if (!json_is_string(v) || pii_kind_parse(json_string_value(v), &k) != PII_OK) {
            cli_error(cmd, "%s: pii[%zu]: expected one of email, iban, card, national_id, "
                           "phone", flag, i);
            return false;
        }
        seen[k] = true;
    }
    if (text) {
        char err[256];
        pii *d = NULL;
        pii_finding *f = NULL;
        size_t n = 0;
        if (pii_new(&d, err) || pii_scan(d, text, strlen(text), &f, &n, err)) {
            cli_error(cmd, "%s", err);
            pii_free(d);
            return false;
        }
        for (size_t k = 0; k < n; k++)
            seen[f[k].kind] = true;
        free(f);
        pii_free(d);
    }
    size_t n = 0;
    for (int k = 0; k < PII_KIND_COUNT; k++)
        if (seen[k])
            kinds[n++] = pii_kind_name((pii_kind)k);
    req->pii = kinds;
    req->n_pii = n;
    return true;
}

static bool parse_env(json_t *o, pol_env *env)
{
    static const char *const known[] = {
        "online", "cloud_rtt_ms", "peer_rtt_ms", "battery_pct", "on_ac", "temp_c",
        "local_tok_s", "queue_depth", "cloud_spend_usd", "cloud_budget_usd"};
    const char *flag = "--env";
    pol_env_init(env);
    env->online = true;
    if (!o)
        return true;
    if (!check_keys(flag, o, known, sizeof known / sizeof known[0]))
        return false;
    json_t *v = json_object_get(o, "online");
    if (v) {
        if (!json_is_boolean(v)) {
            cli_error(cmd, "%s: online: expected true or false, got %s", flag, json_kind(v));
            return false;
        }
        env->online = json_is_true(v);
    }
    v = json_object_get(o, "on_ac");
    if (v) {
        if (!json_is_boolean(v) && !json_is_null(v)) {
            cli_error(cmd, "%s: on_ac: expected true, false or null, got %s", flag,
                      json_kind(v));
            return false;
        }
        env->on_ac = json_is_null(v) ? POL_UNKNOWN : json_is_true(v);
    }
    double spend = env->cloud_spend_usd;
    if (!get_fact(flag, o, "cloud_rtt_ms", &env->cloud_rtt_ms) ||
        !get_fact(flag, o, "peer_rtt_ms", &env->peer_rtt_ms) ||
        !get_fact(flag, o, "battery_pct", &env->battery_pct) ||
        !get_fact(flag, o, "temp_c", &env->temp_c) ||
        !get_fact(flag, o, "local_tok_s", &env->local_tok_s) ||
        !get_fact(flag, o, "cloud_budget_usd", &env->cloud_budget_usd) ||
        !get_fact(flag, o, "cloud_spend_usd", &spend) ||
        !get_count(flag, o, "queue_depth", false, &env->queue_depth))
        return false;
    if (isnan(spend)) {
        cli_error(cmd, "%s: cloud_spend_usd: expected a number, got null", flag);
        return false;
    }
    env->cloud_spend_usd = spend;
    return true;
}

/* ---- test ---------------------------------------------------------------- */

static void log_line(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "policy log: %s\n", line);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_decision(const pol_decision *d)
{
    json_t *o = json_object();
    if (!o)
        return;
    json_object_set_new(o, "target", json_string(pol_target_name(d->target)));
    json_object_set_new(o, "reason", json_string(d->reason));
    if (d->model[0])
        json_object_set_new(o, "model", json_string(d->model));
    if (d->max_tokens)
        json_object_set_new(o, "max_tokens", json_integer(d->max_tokens));
    if (d->redact)
        json_object_set_new(o, "redact", json_true());
    char *s = json_dumps(o, JSON_COMPACT);
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

static int policy_test(int argc, char **argv)
{
    const char *request = NULL, *env_arg = NULL, *lua_dir = NULL;
    uint64_t instr = 0, mem = 0;
    long repeat = 1;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
        switch (c) {
        case OPT_REQUEST: request = optarg; break;
        case OPT_ENV: env_arg = optarg; break;
        case OPT_LUA_DIR: lua_dir = optarg; break;
        case OPT_INSTR:
            if (!cli_parse_u64(cmd, "--instr-limit", optarg, &instr))
                return CLI_USAGE;
            break;
        case OPT_MEM:
            if (!cli_parse_u64(cmd, "--mem-limit", optarg, &mem))
                return CLI_USAGE;
            break;
        case OPT_REPEAT:
            if (!cli_parse_long(cmd, "--repeat", optarg, 1, 10000000, &repeat))
                return CLI_USAGE;
            break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind >= argc) {
        cli_error(cmd, "test needs a policy FILE (see 'outpost policy --help')");
        return CLI_USAGE;
    }
    if (optind + 1 < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
        return CLI_USAGE;
    }
    const char *file = argv[optind];
    if (!request) {
        cli_error(cmd, "test needs --request JSON (see 'outpost policy --help')");
        return CLI_USAGE;
    }

    int status = CLI_USAGE;
    json_t *jreq = NULL, *jenv = NULL;
    char *dir_copy = NULL;
    double *times = NULL;
    pol *p = NULL;
    pol_req req;
    pol_env env;
    const char *kinds[PII_KIND_COUNT];
    if (!(jreq = load_object("--request", request)) ||
        (env_arg && !(jenv = load_object("--env", env_arg))) ||
        !parse_request(jreq, &req, kinds) || !parse_env(jenv, &env))
        goto done;

    status = CLI_FAIL;
    if (!lua_dir) {
        if (!(dir_copy = strdup(file))) {
            cli_error(cmd, "out of memory");
            goto done;
        }
        lua_dir = dirname(dir_copy);
    }
    if (!(times = malloc((size_t)repeat * sizeof *times))) {
        cli_error(cmd, "out of memory for %ld timings", repeat);
        goto done;
    }
    pol_opts opts = {.instr_limit = instr, .mem_limit_bytes = mem, .lua_dir = lua_dir,
                     .log = log_line};
    char err[256];
    if (pol_open(&p, file, &opts, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    pol_decision d;
    for (long i = 0; i < repeat; i++) {
        double t0 = cli_now();
        int rc = pol_route(p, &req, &env, &d, err);
        times[i] = (cli_now() - t0) * 1e6;
        if (rc) {
            cli_error(cmd, "%s", err);
            goto done;
        }
    }
    print_decision(&d);
    if (repeat == 1) {
        fprintf(stderr, "route(): %.1f us\n", times[0]);
    } else {
        qsort(times, (size_t)repeat, sizeof *times, cmp_double);
        fprintf(stderr, "route(): %ld calls, median %.2f us, p99 %.2f us, min %.2f us\n",
                repeat, times[repeat / 2], times[(size_t)((double)(repeat - 1) * 0.99)],
                times[0]);
    }
    status = CLI_OK;
done:
    pol_close(p);
    free(times);
    free(dir_copy);
    json_decref(jreq);
    json_decref(jenv);
    return status;
}

int cmd_policy(int argc, char **argv)
{
    if (argc < 2) {
        cli_error(cmd, "expected 'test' or 'reload' (see 'outpost policy --help')");
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage_text, stdout);
        return CLI_OK;
    }
    if (strcmp(argv[1], "test") == 0)
        return policy_test(argc - 1, argv + 1);
    if (strcmp(argv[1], "reload") == 0) {
        if (argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            fputs(usage_text, stdout);
            return CLI_OK;
        }
        return cmd_policy_reload(argc - 1, argv + 1);
    }
    cli_error(cmd, "unknown subcommand '%s' (expected 'test' or 'reload')", argv[1]);
    return CLI_USAGE;
}
