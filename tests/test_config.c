/*
 * test_config.c - the agent's configuration: defaults, the Lua config file
 * read as data, OUTPOST_* environment variables, flags, cross-field checks
 * and the dump.
 *
 * Every test starts from a scrubbed environment (no OUTPOST_*, no XDG or
 * systemd variables, HOME and XDG_RUNTIME_DIR inside a fresh mkdtemp
 * directory, which is removed afterwards), so the defaults under test are
 * the ones the test set up and not the ones of whoever runs it.
 */
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#ifndef OUTPOST_SOURCE
#define OUTPOST_SOURCE "."
#endif

static const char *const scrubbed[] = {
    "OUTPOST_MODEL", "OUTPOST_SOCKET", "OUTPOST_LISTEN", "OUTPOST_API_KEY",
    "OUTPOST_STATE_DIR", "OUTPOST_POLICY", "OUTPOST_LUA_DIR", "OUTPOST_PEER",
    "OUTPOST_PEER_KEY", "OUTPOST_CLOUD", "OUTPOST_CLOUD_KEY", "OUTPOST_CLOUD_MODEL",
    "OUTPOST_BROKER", "OUTPOST_DEVICE_ID", "OUTPOST_FLEET_KEY", "OUTPOST_PLUGIN_DIR",
    "OUTPOST_MEMORY_MAX_MB", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR", "INVOCATION_ID", "NOTIFY_SOCKET",
};

typedef struct fixture {
    char dir[64];
    char home[96];
    char run[96];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/outpost-config-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    for (size_t i = 0; i < sizeof scrubbed / sizeof scrubbed[0]; i++)
        unsetenv(scrubbed[i]);
    snprintf(f->home, sizeof f->home, "%s/home", f->dir);
    snprintf(f->run, sizeof f->run, "%s/run", f->dir);
    setenv("HOME", f->home, 1);
    setenv("XDG_RUNTIME_DIR", f->run, 1);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Write text to dir/name; returns the path in a static buffer. */
static const char *write_file(const fixture *f, const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
    return path;
}

/* A fresh cfg with text loaded over it; asserts the status. */
static cfg *load_text(const char *text, int want, char err[256])
{
    cfg *c = NULL;
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    int rc = cfg_load_string(c, text, strlen(text), "test.lua", err);
    if (rc != want)
        fail_msg("want %d, got %d: %s", want, rc, rc ? err : "(ok)");
    return c;
}

/* The status and message of loading text, for the error-class tests. */
static void expect_error(const char *text, int want, const char *needle)
{
    char err[256] = "";
    cfg *c = load_text(text, want, err);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    cfg_free(c);
}

static char *dump_to_string(const cfg *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    cfg_dump(c, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* ---- defaults ------------------------------------------------------------ */

static void model_flag_alone_gives_a_complete_config(void **state)
{
    fixture *f = *state;
    char err[256], want[256];
    cfg *c;
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_int_equal(cfg_validate(c, err), CFG_EINVALID);
    assert_non_null(strstr(err, "no model configured"));

    assert_int_equal(cfg_apply_flag(c, "model", "/models/stories260K.gguf", err), CFG_OK);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    assert_int_equal(c->n_models, 1);
    assert_string_equal(c->models[0].name, "stories260K");
    assert_string_equal(c->models[0].path, "/models/stories260K.gguf");
    assert_true(c->models[0].is_default);
    assert_int_equal(c->models[0].ctx, 0);
    assert_int_equal(c->models[0].kv_type, QT_F16);
    assert_ptr_equal(cfg_find_model(c, "default"), &c->models[0]);
    assert_ptr_equal(cfg_find_model(c, "stories260K"), &c->models[0]);
    assert_null(cfg_find_model(c, "other"));

    snprintf(want, sizeof want, "%s/.local/state/outpost", f->home);
    assert_string_equal(c->state_dir, want);
    snprintf(want, sizeof want, "%s/outpost.sock", f->run);
    assert_string_equal(c->listen.socket, want);
    assert_int_equal(c->listen.socket_mode, 0660);
    assert_int_equal(c->listen.allowed_uids.n, 0);
    assert_null(c->listen.tcp);
    assert_null(c->listen.api_key);
    assert_string_equal(c->policy.file, OUTPOST_LUA_DIR "/default.lua");
    assert_string_equal(c->policy.lua_dir, OUTPOST_LUA_DIR);
    assert_int_equal(c->policy.instr_limit, 1000000);
    assert_int_equal(c->policy.mem_limit_mb, 8);
    assert_null(c->cloud.url);
    assert_true(isnan(c->cloud.budget_usd_month));
    assert_int_equal(c->limits.queue_depth, 16);
    assert_int_equal(c->limits.drain_timeout_s, 30);
    assert_int_equal(c->retention.request_max_age_days, 30);
    assert_int_equal(c->kv.disk_budget_mb, 1024);
    assert_string_equal(c->fleet.topic_prefix, "outpost/v1");
    /* The backend is not loaded at start: only when peer or cloud is set. */
    assert_int_equal(c->plugins.enabled.n, 2);
    assert_string_equal(c->plugins.enabled.v[0], "sensor-linux");
    assert_string_equal(c->plugins.backend, "backend-openai");
    assert_int_equal(c->peer.call.connect_timeout_ms, 3000);
    assert_int_equal(c->peer.call.timeout_ms, 0);
    assert_int_equal(c->peer.call.retries, 2);
    assert_int_equal(c->peer.call.retry_backoff_ms, 250);
    assert_int_equal(c->cloud.call.connect_timeout_ms, 3000);
    assert_int_equal(c->cloud.call.retries, 2);
    assert_null(c->source);
    assert_int_equal(cfg_origin_of(c, "listen.socket"), CFG_FROM_DEFAULT);
    assert_int_equal(cfg_origin_of(c, "models"), CFG_FROM_FLAG);
    assert_int_equal(cfg_origin_of(c, "no.such.key"), -1);
    cfg_free(c);
}

static void state_dir_follows_xdg_state_home_and_systemd(void **state)
{
    (void)state;
    char err[256];
    cfg *c;
    setenv("XDG_STATE_HOME", "/srv/state", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->state_dir, "/srv/state/outpost");
    cfg_free(c);

    /* The XDG spec says a relative value is invalid and to be ignored. */
    setenv("XDG_STATE_HOME", "relative/state", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_non_null(strstr(c->state_dir, "/home/.local/state/outpost"));
    cfg_free(c);

    setenv("STATE_DIRECTORY", "/var/lib/outpost:/var/lib/other", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->state_dir, "/var/lib/outpost");
    cfg_free(c);
}

static void socket_default_under_systemd_is_in_run_outpost(void **state)
{
    (void)state;
    char err[256];
    cfg *c;
    unsetenv("XDG_RUNTIME_DIR");
    setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/outpost/outpost.sock");
    cfg_free(c);

    unsetenv("INVOCATION_ID");
    setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/outpost/outpost.sock");
    cfg_free(c);

    /* RuntimeDirectory= says where outright. */
    setenv("RUNTIME_DIRECTORY", "/run/outpost-test", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/outpost-test/outpost.sock");
    cfg_free(c);

    /* A login session (a terminal under a user manager also has
     * INVOCATION_ID) keeps the per-user runtime directory. */
    unsetenv("RUNTIME_DIRECTORY");
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/user/1000/outpost.sock");
    cfg_free(c);
}

static void socket_without_runtime_dir_follows_state_dir(void **state)
{
    fixture *f = *state;
    char err[256], want[256];
    cfg *c;
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    snprintf(want, sizeof want, "%s/.local/state/outpost/outpost.sock", f->home);
    assert_string_equal(c->listen.socket, want);
    assert_int_equal(cfg_apply_flag(c, "state-dir", "/srv/op", err), CFG_OK);
    assert_string_equal(c->listen.socket, "/srv/op/outpost.sock");
    /* Once set explicitly the socket stays put. */
    assert_int_equal(cfg_apply_flag(c, "socket", "/tmp/op.sock", err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "state-dir", "/srv/other", err), CFG_OK);
    assert_string_equal(c->listen.socket, "/tmp/op.sock");
    cfg_free(c);
}

/* ---- a full file --------------------------------------------------------- */

static const char full_config[] =
    "-- every key, some computed the way a real file would\n"
    "local dir = \"models\"\n"
    "local function model(file, extra)\n"
    "  local m = { path = dir .. \"/\" .. file }\n"
    "  if extra then m.ctx = extra end\n"
    "  return m\n"
    "end\n"
    "models = {\n"
    "  model(\"tiny.gguf\", 512),\n"
    "  { name = \"big\", path = \"/opt/m/big.gguf\", ctx = 4096, threads = 3,\n"
    "    kv_type = \"q8_0\", default = true },\n"
    "}\n"
    "listen = { socket = \"/run/op/op.sock\", socket_mode = \"0600\",\n"
    "  allowed_uids = { 1000, \"root\" }, allowed_gids = { 100 },\n"
    "  tcp = \"0.0.0.0:8080\", api_key = \"s3cret-listen\" }\n"
    "state_dir = \"state\"\n"
    "policy = { file = \"/etc/op/route.lua\", lua_dir = \"/etc/op/lua\",\n"
    "  instr_limit = 2000000, mem_limit_mb = 16 }\n"
    "peer = { url = \"http://gw.local:8080\", api_key = \"s3cret-peer\" }\n"
    "cloud = { url = \"https://api.example.com/v1\", api_key = \"s3cret-cloud\",\n"
    "  model = \"gpt-4o-mini\", budget_usd_month = 12.5, price_per_1k_tokens = 0.0006 }\n"
    "limits = { max_body_bytes = 65536, max_prompt_tokens = 3000, max_output_tokens = 512,\n"
    "  queue_depth = 4, request_timeout_s = 60, drain_timeout_s = 10 }\n"
    "retention = { request_max_age_days = 7, max_requests = 5000, session_idle_days = 2 }\n"
    "kv = { disk_budget_mb = 256 }\n"
    "fleet = { broker = \"mqtts://broker.example.com:8883\", device_id = \"pi-01\",\n"
    "  fleet_key = \"/etc/op/fleet.pub\", groups = { \"kitchen\", \"beta\" },\n"
    "  topic_prefix = \"acme/outpost\", ca = \"/etc/op/ca.pem\",\n"
    "  cert = \"/etc/op/dev.pem\", key = \"/etc/op/dev.key\" }\n"
    "plugins = { dir = \"/usr/lib/op\", enabled = { \"backend-openai\" } }\n"
    "memory_max_mb = 1536\n";

static void full_file_sets_every_key(void **state)
{
    fixture *f = *state;
    char err[256], want[256];
    cfg *c;
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    const char *path = write_file(f, "full.lua", full_config);
    int rc = cfg_load_file(c, path, err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    assert_string_equal(c->source, path);

    assert_int_equal(c->n_models, 2);
    /* Relative paths are relative to the file's directory. */
    snprintf(want, sizeof want, "%s/models/tiny.gguf", f->dir);
    assert_string_equal(c->models[0].path, want);
    assert_string_equal(c->models[0].name, "tiny");
    assert_int_equal(c->models[0].ctx, 512);
    assert_false(c->models[0].is_default);
    assert_string_equal(c->models[1].name, "big");
    assert_int_equal(c->models[1].threads, 3);
    assert_int_equal(c->models[1].kv_type, QT_Q8_0);
    assert_true(c->models[1].is_default);
    assert_string_equal(cfg_default_model(c)->name, "big");

    assert_string_equal(c->listen.socket, "/run/op/op.sock");
    assert_int_equal(c->listen.socket_mode, 0600);
    assert_int_equal(c->listen.allowed_uids.n, 2);
    assert_int_equal(c->listen.allowed_uids.v[0], 1000);
    assert_int_equal(c->listen.allowed_uids.v[1], 0); /* "root" */
    assert_int_equal(c->listen.allowed_gids.n, 1);
    assert_int_equal(c->listen.allowed_gids.v[0], 100);
    assert_string_equal(c->listen.tcp_host, "0.0.0.0");
    assert_int_equal(c->listen.tcp_port, 8080);
    assert_false(c->listen.tcp_loopback);
    assert_string_equal(c->listen.api_key, "s3cret-listen");
    snprintf(want, sizeof want, "%s/state", f->dir);
    assert_string_equal(c->state_dir, want);
    assert_string_equal(c->policy.file, "/etc/op/route.lua");
    assert_int_equal(c->policy.instr_limit, 2000000);
    assert_string_equal(c->peer.url, "http://gw.local:8080");
    assert_string_equal(c->cloud.api_key, "s3cret-cloud");
    assert_true(c->cloud.budget_usd_month == 12.5);
    assert_true(c->cloud.price_per_1k_tokens == 0.0006);
    assert_int_equal(c->limits.max_body_bytes, 65536);
    assert_int_equal(c->limits.drain_timeout_s, 10);
    assert_int_equal(c->retention.max_requests, 5000);
    assert_int_equal(c->kv.disk_budget_mb, 256);
    assert_int_equal(c->fleet.groups.n, 2);
    assert_string_equal(c->fleet.groups.v[1], "beta");
    assert_string_equal(c->fleet.topic_prefix, "acme/outpost");
    assert_string_equal(c->fleet.key, "/etc/op/dev.key");
    assert_int_equal(c->plugins.enabled.n, 1);
    assert_int_equal(c->memory_max_mb, 1536);
    assert_int_equal(cfg_origin_of(c, "kv.disk_budget_mb"), CFG_FROM_FILE);
    cfg_free(c);
}

static void file_keeps_defaults_for_keys_it_omits(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text("limits = { queue_depth = 2 }\n", CFG_OK, err);
    assert_int_equal(c->limits.queue_depth, 2);
    assert_int_equal(c->limits.max_output_tokens, 2048);
    assert_int_equal(cfg_origin_of(c, "limits.queue_depth"), CFG_FROM_FILE);
    assert_int_equal(cfg_origin_of(c, "limits.max_output_tokens"), CFG_FROM_DEFAULT);
    cfg_free(c);
}

static void first_model_is_default_when_none_says_so(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text("models = { { path = \"/m/a.gguf\" }, { path = \"/m/b.gguf\" } }\n",
                       CFG_OK, err);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    assert_true(c->models[0].is_default);
    assert_false(c->models[1].is_default);
    cfg_free(c);
}

/* Found by fuzz_config: a path ending in '/' names no file, so the model's
 * default name is empty; the check refuses it, naming the field and the
 * fix, and a model with its own name is fine. */
static void model_path_naming_no_file_needs_a_name(void **state)
{
    (void)state;
    char err[256] = "";
    cfg *c = load_text("models = { { path = \"/m/\" } }\n", CFG_OK, err);
    assert_int_equal(c->n_models, 1);
    assert_string_equal(c->models[0].name, "");
    assert_int_equal(cfg_validate(c, err), CFG_EINVALID);
    if (!strstr(err, "models[1].name") || !strstr(err, "set name"))
        fail_msg("unexpected error: %s", err);
    cfg_free(c);
    c = load_text("models = { { path = \"/m/\", name = \"m\" } }\n", CFG_OK, err);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    cfg_free(c);
}

static void shipped_config_loads_and_its_examples_are_valid(void **state)
{
    fixture *f = *state;
    char err[256];
    cfg *c;
    const char *path = OUTPOST_SOURCE "/packaging/config.lua";
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    int rc = cfg_load_file(c, path, err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(cfg_validate(c, err), CFG_EINVALID); /* no model yet */
    assert_non_null(strstr(err, "no model configured"));
    cfg_free(c);

    /* Uncomment every example setting ("-- key = ..." and "-- { ... }"):
     * the documentation must name real keys with valid values. */
    FILE *in = fopen(path, "r");
    assert_non_null(in);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    char line[1024];
    int uncommented = 0;
    while (fgets(line, sizeof line, in)) {
        char *p = line;
        while (*p == ' ')
            p++;
        bool setting = false;
        if (strncmp(p, "-- ", 3) == 0) {
            const char *q = p + 3;
            if (q[0] == '{') {
                setting = true;
            } else {
                size_t n = strspn(q, "abcdefghijklmnopqrstuvwxyz_0123456789");
                setting = n > 0 && strncmp(q + n, " = ", 3) == 0;
            }
        }
        if (setting) {
            fwrite(line, 1, (size_t)(p - line), out);
            fputs(p + 3, out);
            uncommented++;
        } else {
            fputs(line, out);
        }
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_true(uncommented >= 40);
    c = load_text(text, CFG_OK, err);
    rc = cfg_validate(c, err);
    if (rc)
        fail_msg("%s", err);
    assert_string_equal(c->models[0].name, "tinyllama");
    assert_int_equal(c->memory_max_mb, 2048);
    cfg_free(c);
    free(text);
    (void)f;
}

/* ---- error classes ------------------------------------------------------- */

static void syntax_error_names_file_and_line(void **state)
{
    (void)state;
    expect_error("listen = {\n  socket = \"/x\"\n  socket_mode = \"0600\"\n}\n", CFG_ESYNTAX,
                 "test.lua:3:");
}

static void bytecode_is_refused(void **state)
{
    (void)state;
    expect_error("\x1bLua\x54\x00junk", CFG_ESYNTAX, "binary");
}

static void calling_a_function_is_a_runtime_error(void **state)
{
    (void)state;
    expect_error("state_dir = os.getenv(\"HOME\")\n", CFG_ERUNTIME,
                 "test.lua:1: attempt to index a nil value (global 'os') (a config file has "
                 "no libraries or functions)");
    expect_error("print(\"hello\")\n", CFG_ERUNTIME, "no libraries or functions");
    expect_error("local t = setmetatable({}, {})\n", CFG_ERUNTIME, "no libraries");
}

static void non_table_section_is_a_type_error(void **state)
{
    (void)state;
    expect_error("listen = \"/run/x.sock\"\n", CFG_ETYPE,
                 "test.lua: listen: expected a table, got string");
    expect_error("models = { \"/m/a.gguf\" }\n", CFG_ETYPE, "models[1]: expected a table");
    expect_error("fleet = { groups = \"kitchen\" }\n", CFG_ETYPE,
                 "fleet.groups: expected an array of strings, got string");
}

static void function_value_is_a_type_error_naming_the_key(void **state)
{
    (void)state;
    expect_error("listen = { socket = function() return \"/x\" end }\n", CFG_ETYPE,
                 "listen.socket: expected a string, got function");
    expect_error("models = { { path = \"/m/a.gguf\", ctx = function() end } }\n", CFG_ETYPE,
                 "models[1].ctx: expected an integer, got function");
    /* A helper left global is a global the schema does not know. */
    expect_error("function helper() end\n", CFG_EUNKNOWN, "helper: unknown key");
}

static void unknown_key_is_refused_with_a_suggestion(void **state)
{
    (void)state;
    expect_error("lisen = { socket = \"/x\" }\n", CFG_EUNKNOWN,
                 "lisen: unknown key (did you mean listen?)");
    expect_error("listen = { sockt = \"/x\" }\n", CFG_EUNKNOWN,
                 "listen.sockt: unknown key (did you mean socket?)");
    expect_error("socket = \"/x\"\n", CFG_EUNKNOWN, "did you mean listen.socket?");
    expect_error("models = { { paht = \"/m/a.gguf\" } }\n", CFG_EUNKNOWN,
                 "models[1].paht: unknown key (did you mean path?)");
    expect_error("limits = { frobnicate = 1 }\n", CFG_EUNKNOWN,
                 "limits.frobnicate: unknown key");
    expect_error("listen = { [1] = \"/x\" }\n", CFG_EUNKNOWN, "listen:");
    /* The typo is reported even though a later value is also wrong. */
    expect_error("limits = { queue_depth = -1, queue_dept = 2 }\n", CFG_EUNKNOWN,
                 "did you mean queue_depth?");
}

static void wrong_type_is_refused(void **state)
{
    (void)state;
    expect_error("limits = { queue_depth = \"8\" }\n", CFG_ETYPE,
                 "limits.queue_depth: expected an integer, got string");
    expect_error("memory_max_mb = 1.5\n", CFG_ETYPE, "expected an integer, got 1.5");
    expect_error("listen = { socket_mode = 0660 }\n", CFG_ETYPE, "octal");
    expect_error("models = { { path = \"/m/a.gguf\", default = \"yes\" } }\n", CFG_ETYPE,
                 "models[1].default: expected a boolean, got string");
    expect_error("cloud = { budget_usd_month = \"10\" }\n", CFG_ETYPE, "expected a number");
    expect_error("state_dir = 42\n", CFG_ETYPE, "state_dir: expected a string, got integer");
    expect_error("listen = { allowed_uids = { true } }\n", CFG_ETYPE,
                 "listen.allowed_uids[1]: expected an id or a name, got boolean");
}

static void bad_value_is_refused(void **state)
{
    (void)state;
    expect_error("limits = { queue_depth = 0 }\n", CFG_EVALUE,
                 "limits.queue_depth: 0 is out of range (expected 1 to 65536)");
    expect_error("models = { { path = \"/m/a.gguf\", threads = 100000 } }\n", CFG_EVALUE,
                 "models[1].threads: 100000 is out of range");
    expect_error("cloud = { price_per_1k_tokens = -1 }\n", CFG_EVALUE, "out of range");
    expect_error("cloud = { budget_usd_month = 1/0 }\n", CFG_EVALUE, "out of range");
    expect_error("listen = { tcp = \"127.0.0.1:70000\" }\n", CFG_EVALUE, "port out of range");
    expect_error("listen = { tcp = \"::1:8080\" }\n", CFG_EVALUE, "needs brackets");
    expect_error("listen = { socket_mode = \"0999\" }\n", CFG_EVALUE, "not a file mode");
    expect_error("peer = { url = \"ftp://x\" }\n", CFG_EVALUE, "peer.url: \"ftp://x\"");
    expect_error("fleet = { broker = \"tcp://b:1883\" }\n", CFG_EVALUE, "mqtt://");
    expect_error("fleet = { device_id = \"a/b\" }\n", CFG_EVALUE, "fleet.device_id");
    expect_error("fleet = { groups = { \"ok\", \"+\" } }\n", CFG_EVALUE, "fleet.groups[2]");
    expect_error("models = { { path = \"/m/a.gguf\", kv_type = \"q4_0\" } }\n", CFG_EVALUE,
                 "not a KV cache type");
    expect_error("models = { { path = \"/m/a.gguf\", name = \"default\" } }\n", CFG_EVALUE,
                 "reserved");
    expect_error("models = { { name = \"a\" } }\n", CFG_EVALUE, "models[1]: no path");
    expect_error("listen = { socket = \"/a\\0b\" }\n", CFG_EVALUE, "NUL");
    expect_error("listen = { allowed_uids = { \"no-such-user-here\" } }\n", CFG_EVALUE,
                 "no user named");
    expect_error("fleet = { groups = { [1] = \"a\", [3] = \"c\" } }\n", CFG_ETYPE, "array");
    /* A secret that is refused is not echoed. */
    char err[256];
    cfg *c = load_text("listen = { api_key = \"bad key with spaces\" }\n", CFG_EVALUE, err);
    assert_null(strstr(err, "bad key"));
    assert_non_null(strstr(err, "listen.api_key"));
    cfg_free(c);
}

static void endless_loop_stops_at_the_instruction_limit(void **state)
{
    (void)state;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_error("local n = 0\nwhile true do n = n + 1 end\n", CFG_EINSTR,
                 "instruction limit");
    expect_error("local function f(n) return f(n + 1) end\nstate_dir = f(0)\n", CFG_EINSTR,
                 "instruction limit");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    assert_true(s < 10.0); /* milliseconds really; generous for sanitizers */
}

static void allocation_bomb_stops_at_the_memory_cap(void **state)
{
    (void)state;
    expect_error("local s = \"x\"\nwhile true do s = s .. s end\n", CFG_EMEM,
                 "memory limit");
    expect_error("local t = {}\nfor i = 1, 1e7 do t[i] = \"a string long enough to be a "
                 "heap object of its own \" .. i end\n",
                 CFG_EMEM, "memory limit");
    /* A big but legal file is fine, and what it leaves must still be keys. */
    expect_error("local big = {}\nfor i = 1, 1000 do big[i] = i end\nx = big\n", CFG_EUNKNOWN,
                 "x: unknown key");
}

static void missing_file_is_an_io_error(void **state)
{
    fixture *f = *state;
    char err[256], path[256];
    cfg *c;
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    snprintf(path, sizeof path, "%s/absent.lua", f->dir);
    assert_int_equal(cfg_load_file(c, path, err), CFG_EIO);
    assert_non_null(strstr(err, "absent.lua: cannot open"));
    assert_int_equal(cfg_load_file(c, f->dir, err), CFG_EIO);
    assert_non_null(strstr(err, "not a regular file"));
    cfg_free(c);
}

/* ---- precedence ---------------------------------------------------------- */

static void environment_overrides_the_file(void **state)
{
    fixture *f = *state;
    char err[256];
    cfg *c;
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    const char *path = write_file(f, "env.lua",
                                  "models = { { path = \"/m/file.gguf\" } }\n"
                                  "listen = { socket = \"/run/file.sock\" }\n"
                                  "cloud = { url = \"https://file.example/v1\", "
                                  "api_key = \"from-file\" }\n"
                                  "limits = { queue_depth = 3 }\n");
    assert_int_equal(cfg_load_file(c, path, err), CFG_OK);
    setenv("OUTPOST_SOCKET", "/run/env.sock", 1);
    setenv("OUTPOST_CLOUD_KEY", "from-env", 1);
    setenv("OUTPOST_MODEL", "/m/env.gguf", 1);
    setenv("OUTPOST_PEER", "", 1); /* empty counts as unset */
    setenv("OUTPOST_MEMORY_MAX_MB", "512", 1);
    assert_int_equal(cfg_apply_env(c, err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/env.sock");
    assert_string_equal(c->cloud.api_key, "from-env");
    assert_string_equal(c->cloud.url, "https://file.example/v1");
    assert_null(c->peer.url);
    assert_int_equal(c->memory_max_mb, 512);
    assert_int_equal(c->limits.queue_depth, 3);
    assert_int_equal(c->n_models, 1);
    assert_string_equal(c->models[0].path, "/m/env.gguf");
    assert_int_equal(cfg_origin_of(c, "listen.socket"), CFG_FROM_ENV);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    cfg_free(c);

    /* A bad value names the variable. */
    setenv("OUTPOST_LISTEN", "nowhere", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_int_equal(cfg_apply_env(c, err), CFG_EVALUE);
    assert_non_null(strstr(err, "OUTPOST_LISTEN: \"nowhere\""));
    cfg_free(c);
}

static void flags_override_the_environment(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text("models = { { name = \"a\", path = \"/m/a.gguf\" },\n"
                       "           { name = \"b\", path = \"/m/b.gguf\" } }\n"
                       "fleet = { groups = { \"file\" } }\n",
                       CFG_OK, err);
    setenv("OUTPOST_SOCKET", "/run/env.sock", 1);
    setenv("OUTPOST_STATE_DIR", "/srv/env", 1);
    assert_int_equal(cfg_apply_env(c, err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "socket", "/run/flag.sock", err), CFG_OK);
    assert_string_equal(c->listen.socket, "/run/flag.sock");
    assert_string_equal(c->state_dir, "/srv/env");
    assert_int_equal(cfg_origin_of(c, "listen.socket"), CFG_FROM_FLAG);

    /* -m NAME picks a configured model as the default. */
    assert_int_equal(cfg_apply_flag(c, "model", "b", err), CFG_OK);
    assert_int_equal(c->n_models, 2);
    assert_string_equal(cfg_default_model(c)->name, "b");

    /* A repeated list flag appends; the first replaces the file's list. */
    assert_int_equal(cfg_apply_flag(c, "group", "g1", err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "group", "g2,g3", err), CFG_OK);
    assert_int_equal(c->fleet.groups.n, 3);
    assert_string_equal(c->fleet.groups.v[0], "g1");
    assert_string_equal(c->fleet.groups.v[2], "g3");

    /* Any key by its path. */
    assert_int_equal(cfg_apply_flag(c, "limits.queue_depth", "9", err), CFG_OK);
    assert_int_equal(c->limits.queue_depth, 9);
    assert_int_equal(cfg_apply_flag(c, "limits.queue_depth", "nine", err), CFG_ETYPE);
    assert_non_null(strstr(err, "--limits.queue_depth: \"nine\" is not an integer"));
    assert_int_equal(cfg_apply_flag(c, "frobnicate", "1", err), CFG_EUSAGE);
    assert_int_equal(cfg_apply_flag(c, "limits", "1", err), CFG_EUSAGE);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    cfg_free(c);

    /* Env model, then two -m paths: the flags replace, then append. */
    setenv("OUTPOST_MODEL", "/m/env.gguf", 1);
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_int_equal(cfg_apply_env(c, err), CFG_OK);
    assert_string_equal(c->models[0].path, "/m/env.gguf");
    assert_int_equal(cfg_apply_flag(c, "model", "/m/x.gguf", err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "model", "/m/y.gguf", err), CFG_OK);
    assert_int_equal(c->n_models, 2);
    assert_string_equal(c->models[0].name, "x");
    assert_true(c->models[0].is_default);
    assert_string_equal(c->models[1].name, "y");
    assert_false(c->models[1].is_default);
    assert_int_equal(cfg_validate(c, err), CFG_OK);
    cfg_free(c);
}

static void relative_flag_paths_use_the_current_directory(void **state)
{
    (void)state;
    char err[256], cwd[1024], want[1100];
    cfg *c;
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(cfg_new(&c, err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "model", "./tiny.gguf", err), CFG_OK);
    snprintf(want, sizeof want, "%s/tiny.gguf", cwd);
    assert_string_equal(c->models[0].path, want);
    assert_int_equal(cfg_apply_flag(c, "policy", "p.lua", err), CFG_OK);
    snprintf(want, sizeof want, "%s/p.lua", cwd);
    assert_string_equal(c->policy.file, want);
    cfg_free(c);
}

static void policy_file_follows_lua_dir_until_set(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text("policy = { lua_dir = \"/etc/op/lua\" }\n", CFG_OK, err);
    assert_string_equal(c->policy.file, "/etc/op/lua/default.lua");
    cfg_free(c);
    c = load_text("policy = { lua_dir = \"/etc/op/lua\", file = \"/x/p.lua\" }\n", CFG_OK, err);
    assert_string_equal(c->policy.file, "/x/p.lua");
    cfg_free(c);
}

/* ---- cross-field checks -------------------------------------------------- */

static int validate_text(const char *text, char err[256])
{
    cfg *c = load_text(text, CFG_OK, err);
    int rc = cfg_validate(c, err);
    cfg_free(c);
    return rc;
}

/* Remote timeouts and retries: set per target from the file, env-free
 * flags (--set), range-checked one by one, checked together at validation. */
static void remote_call_limits_are_read_and_checked(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text("peer = { url = \"http://gw:8080\", connect_timeout_ms = 500, "
                       "timeout_ms = 20000, retries = 0, retry_backoff_ms = 100 }\n"
                       "cloud = { connect_timeout_ms = 2000, retries = 5 }\n",
                       CFG_OK, err);
    assert_int_equal(c->peer.call.connect_timeout_ms, 500);
    assert_int_equal(c->peer.call.timeout_ms, 20000);
    assert_int_equal(c->peer.call.retries, 0);
    assert_int_equal(c->peer.call.retry_backoff_ms, 100);
    assert_int_equal(c->cloud.call.connect_timeout_ms, 2000);
    assert_int_equal(c->cloud.call.timeout_ms, 0);
    assert_int_equal(c->cloud.call.retries, 5);
    assert_int_equal(c->cloud.call.retry_backoff_ms, 250);
    assert_int_equal(cfg_apply_flag(c, "cloud.retries", "1", err), CFG_OK);
    assert_int_equal(c->cloud.call.retries, 1);
    assert_int_equal(cfg_apply_flag(c, "cloud.retries", "11", err), CFG_EVALUE);
    assert_non_null(strstr(err, "cloud.retries"));
    assert_int_equal(cfg_apply_flag(c, "peer.connect_timeout_ms", "fast", err), CFG_ETYPE);
    assert_non_null(strstr(err, "peer.connect_timeout_ms"));
    cfg_free(c);

    expect_error("peer = { retries = -1 }\n", CFG_EVALUE, "peer.retries");
    expect_error("cloud = { retry_backoff_ms = 0 }\n", CFG_EVALUE, "cloud.retry_backoff_ms");
    expect_error("cloud = { timeout_ms = \"1s\" }\n", CFG_ETYPE, "cloud.timeout_ms");
    expect_error("peer = { connect_timeout_ms = 1.5 }\n", CFG_ETYPE, "peer.connect_timeout_ms");
    expect_error("peer = { timeouts = 1 }\n", CFG_EUNKNOWN, "peer.timeouts");

#define ONE_MODEL "models = { { path = \"/m/a.gguf\" } }\n"
    /* A call may not outlive its request; an attempt's connect must fit the call. */
    assert_int_equal(validate_text(ONE_MODEL "limits = { request_timeout_s = 10 }\n"
                                             "cloud = { timeout_ms = 10001 }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "cloud.timeout_ms: 10001 ms is longer than "
                                "limits.request_timeout_s (10 s)"));
    assert_int_equal(validate_text(ONE_MODEL "limits = { request_timeout_s = 10 }\n"
                                             "cloud = { timeout_ms = 10000 }\n", err),
                     CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "peer = { timeout_ms = 1000, "
                                             "connect_timeout_ms = 2000 }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "peer.connect_timeout_ms: 2000 ms is longer than "
                                "peer.timeout_ms (1000 ms)"));
    /* 0 follows limits.request_timeout_s, whatever the connect timeout. */
    assert_int_equal(validate_text(ONE_MODEL "peer = { timeout_ms = 0, "
                                             "connect_timeout_ms = 600000 }\n", err),
                     CFG_OK);
#undef ONE_MODEL
}

static void validation_checks_keys_together(void **state)
{
    (void)state;
    char err[256];
#define ONE_MODEL "models = { { path = \"/m/a.gguf\" } }\n"
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"0.0.0.0:8080\" }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "listen.api_key"));
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"0.0.0.0:8080\", "
                                             "api_key = \"k\" }\n", err), CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"127.0.0.1:8080\" }\n", err),
                     CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"[::1]:8080\" }\n", err),
                     CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"localhost:8080\" }\n", err),
                     CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"[::]:8080\" }\n", err),
                     CFG_EINVALID);
    assert_int_equal(validate_text(ONE_MODEL "listen = { tcp = \"gw.lan:8080\" }\n", err),
                     CFG_EINVALID);

    assert_int_equal(validate_text("models = { { path = \"/m/a.gguf\" }, "
                                   "{ path = \"/n/a.gguf\" } }\n", err), CFG_EINVALID);
    assert_non_null(strstr(err, "models[2].name: \"a\" is also the name of models[1]"));
    assert_int_equal(validate_text("models = { { path = \"/m/a.gguf\", default = true }, "
                                   "{ path = \"/m/b.gguf\", default = true } }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "2 models say default = true"));
    assert_int_equal(validate_text("models = {}\n", err), CFG_EINVALID);
    assert_non_null(strstr(err, "no model configured"));
    /* A model file called default.gguf needs a name of its own. */
    assert_int_equal(validate_text("models = { { path = \"/m/default.gguf\" } }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "reserved"));

    assert_int_equal(validate_text(ONE_MODEL "fleet = { broker = \"mqtt://b:1883\" }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "fleet.device_id"));
    assert_int_equal(validate_text(ONE_MODEL "fleet = { broker = \"mqtt://b:1883\", "
                                             "device_id = \"d\", fleet_key = \"/k.pub\" }\n",
                                   err),
                     CFG_OK);
    assert_int_equal(validate_text(ONE_MODEL "fleet = { cert = \"/c.pem\" }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "fleet.cert is set without fleet.key"));
    assert_int_equal(validate_text(ONE_MODEL "fleet = { broker = \"mqtt://b\", device_id = "
                                             "\"d\", fleet_key = \"/k\", ca = \"/ca\" }\n", err),
                     CFG_EINVALID);
    assert_non_null(strstr(err, "mqtts://"));

    char long_sock[300];
    snprintf(long_sock, sizeof long_sock, ONE_MODEL "listen = { socket = \"/%0120d\" }\n", 0);
    assert_int_equal(validate_text(long_sock, err), CFG_EINVALID);
    assert_non_null(strstr(err, "107 bytes"));
#undef ONE_MODEL
}

/* ---- dump ---------------------------------------------------------------- */

static void dump_hides_secrets_and_reads_back(void **state)
{
    (void)state;
    char err[256];
    cfg *c = load_text(full_config, CFG_OK, err);
    setenv("OUTPOST_PEER_KEY", "s3cret-env-peer", 1);
    assert_int_equal(cfg_apply_env(c, err), CFG_OK);
    assert_int_equal(cfg_apply_flag(c, "socket", "/run/\"quoted\"\\odd.sock", err), CFG_OK);
    char *text = dump_to_string(c);
    assert_null(strstr(text, "s3cret"));
    assert_non_null(strstr(text, "api_key = \"<redacted>\""));
    assert_non_null(strstr(text, "-- from OUTPOST_PEER_KEY"));
    assert_non_null(strstr(text, "-- from --socket"));
    assert_non_null(strstr(text, "socket_mode = \"0600\""));

    /* The dump is itself a valid config with the same values. */
    cfg *d = load_text(text, CFG_OK, err);
    assert_int_equal(d->n_models, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(d->models[i].name, c->models[i].name);
        assert_string_equal(d->models[i].path, c->models[i].path);
        assert_int_equal(d->models[i].ctx, c->models[i].ctx);
        assert_int_equal(d->models[i].kv_type, c->models[i].kv_type);
        assert_int_equal(d->models[i].is_default, c->models[i].is_default);
    }
    assert_string_equal(d->listen.socket, c->listen.socket);
    assert_int_equal(d->listen.socket_mode, c->listen.socket_mode);
    assert_int_equal(d->listen.allowed_uids.n, c->listen.allowed_uids.n);
    assert_string_equal(d->listen.tcp, c->listen.tcp);
    assert_string_equal(d->state_dir, c->state_dir);
    assert_true(d->cloud.budget_usd_month == c->cloud.budget_usd_month);
    assert_true(d->cloud.price_per_1k_tokens == c->cloud.price_per_1k_tokens);
    assert_int_equal(d->limits.max_prompt_tokens, c->limits.max_prompt_tokens);
    assert_int_equal(d->retention.session_idle_days, c->retention.session_idle_days);
    assert_int_equal(d->fleet.groups.n, c->fleet.groups.n);
    assert_string_equal(d->fleet.topic_prefix, c->fleet.topic_prefix);
    assert_int_equal(d->memory_max_mb, c->memory_max_mb);
    assert_int_equal(cfg_validate(d, err), CFG_OK);
    cfg_free(d);
    free(text);
    cfg_free(c);

    /* Unset optional values print as nil. */
    c = load_text("", CFG_OK, err);
    text = dump_to_string(c);
    assert_non_null(strstr(text, "budget_usd_month = nil"));
    assert_non_null(strstr(text, "api_key = nil"));
    free(text);
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(model_flag_alone_gives_a_complete_config),
        T(state_dir_follows_xdg_state_home_and_systemd),
        T(socket_default_under_systemd_is_in_run_outpost),
        T(socket_without_runtime_dir_follows_state_dir),
        T(full_file_sets_every_key),
        T(file_keeps_defaults_for_keys_it_omits),
        T(first_model_is_default_when_none_says_so),
    T(model_path_naming_no_file_needs_a_name),
        T(shipped_config_loads_and_its_examples_are_valid),
        T(syntax_error_names_file_and_line),
        T(bytecode_is_refused),
        T(calling_a_function_is_a_runtime_error),
        T(non_table_section_is_a_type_error),
        T(function_value_is_a_type_error_naming_the_key),
        T(unknown_key_is_refused_with_a_suggestion),
        T(wrong_type_is_refused),
        T(bad_value_is_refused),
        T(endless_loop_stops_at_the_instruction_limit),
        T(allocation_bomb_stops_at_the_memory_cap),
        T(missing_file_is_an_io_error),
        T(environment_overrides_the_file),
        T(flags_override_the_environment),
        T(relative_flag_paths_use_the_current_directory),
        T(policy_file_follows_lua_dir_until_set),
        T(remote_call_limits_are_read_and_checked),
        T(validation_checks_keys_together),
        T(dump_hides_secrets_and_reads_back),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
