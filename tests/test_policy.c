/*
 * test_policy.c - the Lua policy runtime and the shipped default policy:
 * each rule of lua/default.lua, the sandbox refusing every way out we know
 * of, the instruction and memory limits (and the state working after them),
 * the route() result contract, atomic reload, require from the lua/ dir.
 *
 * Policies under test are written into a fresh temporary directory that
 * doubles as their lua/ directory; the default policy is read from the
 * source tree (OUTPOST_SOURCE).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>

#include "pol.h"

static char tmp_dir[] = "/tmp/outpost-test-policy-XXXXXX";
static char log_buf[1024];

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Write text (len bytes) to tmp_dir/name; returns the path (static). */
static const char *write_bytes(const char *name, const char *text, size_t len)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ % 4];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return p;
}

static const char *write_policy(const char *name, const char *text)
{
    return write_bytes(name, text, strlen(text));
}

static void capture_log(void *ud, const char *line)
{
    (void)ud;
    snprintf(log_buf, sizeof log_buf, "%s", line);
}

static pol *open_ok(const char *path, uint64_t instr, size_t mem)
{
    pol_opts o = {.instr_limit = instr, .mem_limit_bytes = mem, .lua_dir = tmp_dir,
                  .log = capture_log};
    char err[256];
    pol *p = NULL;
    int rc = pol_open(&p, path, &o, err);
    if (rc)
        fail_msg("pol_open(%s): %d: %s", path, rc, err);
    return p;
}

static pol *open_default(void)
{
    return open_ok(OUTPOST_SOURCE "/lua/default.lua", 0, 0);
}

/* A plain request: nothing special about it. */
static pol_req base_req(void)
{
    return (pol_req){.prompt_tokens = 50, .messages = 1, .route_requested = POL_TARGET_AUTO,
                     .privacy = POL_PRIVACY_NORMAL, .max_latency_ms = -1};
}

/* A healthy online device on mains power with a budget left. */
static pol_env base_env(void)
{
    pol_env e;
    pol_env_init(&e);
    e.online = true;
    e.cloud_rtt_ms = 80;
    e.battery_pct = 90;
    e.on_ac = 1;
    e.temp_c = 45;
    e.local_tok_s = 20;
    e.cloud_spend_usd = 1;
    e.cloud_budget_usd = 10;
    return e;
}

static void expect_route(pol *p, const pol_req *req, const pol_env *env, pol_target target,
                         const char *reason)
{
    pol_decision d;
    char err[256];
    int rc = pol_route(p, req, env, &d, err);
    if (rc)
        fail_msg("pol_route: %d: %s", rc, err);
    if (d.target != target || strcmp(d.reason, reason) != 0)
        fail_msg("expected %s/%s, got %s/%s", pol_target_name(target), reason,
                 pol_target_name(d.target), d.reason);
}

/* ---- the default policy ---------------------------------------------------- */

static void route_plain_request_stays_local(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "default_local");
    pol_close(p);
}

static void route_private_request_stays_local(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    /* Everything else argues for the cloud: privacy still wins. */
    r.privacy = POL_PRIVACY_PRIVATE;
    r.prompt_tokens = 5000;
    r.route_requested = POL_TARGET_CLOUD;
    e.battery_pct = 5;
    e.on_ac = 0;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "private");
    pol_close(p);
}

static void route_pii_request_stays_local(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    const char *kinds[] = {"email", "card"};
    r.pii = kinds;
    r.n_pii = 2;
    r.prompt_tokens = 5000;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "pii_detected");
    pol_close(p);
}

static void route_offline_stays_local(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    e.online = false;
    r.prompt_tokens = 5000;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "offline");
    r.route_requested = POL_TARGET_CLOUD;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "offline");
    pol_close(p);
}

static void route_explicit_request_is_honoured_when_possible(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    r.route_requested = POL_TARGET_CLOUD;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "requested");
    r.route_requested = POL_TARGET_LOCAL;
    r.prompt_tokens = 5000;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "requested");
    r.route_requested = POL_TARGET_PEER;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "peer_unreachable");
    e.peer_rtt_ms = 3;
    expect_route(p, &r, &e, POL_TARGET_PEER, "requested");
    r.route_requested = POL_TARGET_CLOUD;
    e.cloud_spend_usd = 10;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "over_budget");
    e.cloud_spend_usd = 1;
    e.cloud_rtt_ms = 5000;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "cloud_unreachable");
    pol_close(p);
}

static void route_long_prompt_goes_to_cloud_under_budget(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    r.prompt_tokens = 4000;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "long_prompt");
    /* No budget configured is no cap; an unknown RTT does not block. */
    e.cloud_budget_usd = NAN;
    e.cloud_rtt_ms = NAN;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "long_prompt");
    /* Over budget: a reachable peer takes it, else it stays here. */
    e.cloud_budget_usd = 10;
    e.cloud_spend_usd = 9.99;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "over_budget");
    e.peer_rtt_ms = 4;
    expect_route(p, &r, &e, POL_TARGET_PEER, "long_prompt");
    pol_close(p);
}

static void route_hard_requests_go_to_cloud(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    r.messages = 40;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "long_conversation");
    r.messages = 2;
    e.queue_depth = 6;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "local_busy");
    e.queue_depth = 0;
    e.local_tok_s = 0.5;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "local_slow");
    pol_close(p);
}

static void route_latency_critical_request_stays_local(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    r.prompt_tokens = 4000;
    r.max_latency_ms = 300;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "latency_critical");
    /* A generous deadline leaves the long prompt to the cloud. */
    r.max_latency_ms = 30000;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "long_prompt");
    pol_close(p);
}

static void route_low_battery_shifts_to_peer_then_cloud(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    e.battery_pct = 12;
    e.on_ac = 0;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "battery_low");
    e.peer_rtt_ms = 6;
    expect_route(p, &r, &e, POL_TARGET_PEER, "battery_low");
    /* On mains power a low battery is charging, not a reason to move. */
    e.on_ac = 1;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "default_local");
    /* Power source unknown: the rule does not fire. */
    e.on_ac = POL_UNKNOWN;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "default_local");
    /* No peer and no budget left: it stays, and says why. */
    e.on_ac = 0;
    e.peer_rtt_ms = NAN;
    e.cloud_spend_usd = 50;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "over_budget");
    pol_close(p);
}

static void route_hot_device_shifts_work_away(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e = base_env();
    e.temp_c = 88;
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "thermal");
    e.peer_rtt_ms = 2;
    expect_route(p, &r, &e, POL_TARGET_PEER, "thermal");
    pol_close(p);
}

static void route_unknown_facts_trigger_nothing(void **state)
{
    (void)state;
    pol *p = open_default();
    pol_req r = base_req();
    pol_env e;
    pol_env_init(&e);
    e.online = true;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "default_local");
    pol_close(p);
}

/* ---- what the policy sees -------------------------------------------------- */

static void route_sees_every_request_and_env_field(void **state)
{
    (void)state;
    const char *path = write_policy("echo.lua",
        "function route(req, env)\n"
        "  local s = string.format('%d_%d_%s_%s_%s_%s_%s', req.prompt_tokens, req.messages,\n"
        "    req.route_requested, req.privacy, table.concat(req.pii, '+'),\n"
        "    tostring(req.max_latency_ms), tostring(env.online))\n"
        "  local f = string.format('%s_%s_%s_%s_%s_%s_%d_%s_%s', tostring(env.cloud_rtt_ms),\n"
        "    tostring(env.peer_rtt_ms), tostring(env.battery_pct), tostring(env.on_ac),\n"
        "    tostring(env.temp_c), tostring(env.local_tok_s), env.queue_depth,\n"
        "    tostring(env.cloud_spend_usd), tostring(env.cloud_budget_usd))\n"
        "  return { target = 'local', reason = s, model = f }\n"
        "end\n");
    pol *p = open_ok(path, 0, 0);
    const char *kinds[] = {"email", "phone"};
    pol_req r = {.prompt_tokens = 77, .messages = 3, .route_requested = POL_TARGET_PEER,
                 .privacy = POL_PRIVACY_PRIVATE, .pii = kinds, .n_pii = 2,
                 .max_latency_ms = 250};
    pol_env e;
    pol_env_init(&e);
    e.cloud_rtt_ms = 12.5;
    e.queue_depth = 2;
    e.on_ac = 0;
    pol_decision d;
    char err[256];
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_OK);
    assert_string_equal(d.reason, "77_3_peer_private_email+phone_250_false");
    assert_string_equal(d.model, "12.5_nil_nil_false_nil_nil_2_0.0_nil");
    r.max_latency_ms = -1;
    r.n_pii = 0;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_OK);
    assert_string_equal(d.reason, "77_3_peer_private__nil_false");
    pol_close(p);
}

static void route_optional_result_fields_are_returned(void **state)
{
    (void)state;
    const char *path = write_policy("full.lua",
        "function route(req, env)\n"
        "  print('routing', req.prompt_tokens)\n"
        "  return { target = 'cloud', reason = 'long_prompt', model = 'gpt-4o-mini',\n"
        "           max_tokens = 256, redact = true }\n"
        "end\n");
    pol *p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    pol_decision d;
    char err[256];
    log_buf[0] = '\0';
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_OK);
    assert_int_equal(d.target, POL_TARGET_CLOUD);
    assert_string_equal(d.reason, "long_prompt");
    assert_string_equal(d.model, "gpt-4o-mini");
    assert_int_equal(d.max_tokens, 256);
    assert_true(d.redact);
    assert_string_equal(log_buf, "routing\t50");
    pol_close(p);
}

/* ---- sandbox ---------------------------------------------------------------- */

/* Each attempt must fail inside route() with a runtime error naming it. */
static void sandbox_refuses_every_escape(void **state)
{
    (void)state;
    const char *path = write_policy("escape.lua",
        "local attempts = {\n"
        "  function() return io.open('/etc/passwd') end,\n"
        "  function() return os.execute('touch /tmp/outpost-pwned') end,\n"
        "  function() return require('os').execute('true') end,\n"
        "  function() return require('io') end,\n"
        "  function() return dofile('/etc/passwd') end,\n"
        "  function() return loadfile('/etc/passwd') end,\n"
        "  function() return debug.getinfo(1) end,\n"
        "  function() return load(string.dump(function() end)) end,\n"
        "  function() return ('x').dump(print) end,\n"
        "  function() return package.loadlib('libc.so.6', 'system') end,\n"
        "  function() return collectgarbage('stop') end,\n"
        "  function() return os.getenv('HOME') end,\n"
        "  function() return coroutine.wrap(function() end) end,\n"
        "  function() return require('/etc/passwd') end,\n"
        "  function() return setmetatable({}, { __gc = function() while true do end end }) end,\n"
        "}\n"
        "function route(req, env)\n"
        "  attempts[req.prompt_tokens]()\n"
        "  return { target = 'cloud', reason = 'escaped' }\n"
        "end\n");
    static const char *const names[] = {
        "io", "execute", "require 'os'", "require 'io'", "dofile", "loadfile", "debug",
        "dump", "dump", "package", "collectgarbage", "getenv", "coroutine", "refused",
        "__gc",
    };
    pol *p = open_ok(path, 0, 0);
    pol_env e = base_env();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        pol_req r = base_req();
        r.prompt_tokens = (int64_t)i + 1;
        pol_decision d;
        char err[256];
        int rc = pol_route(p, &r, &e, &d, err);
        if (rc != POL_ERUNTIME || !strstr(err, names[i]))
            fail_msg("attempt %zu (%s): rc %d, err '%s'", i + 1, names[i], rc,
                     rc ? err : d.reason);
        assert_int_equal(d.target, POL_TARGET_LOCAL);
        assert_string_equal(d.reason, "policy_error");
    }
    assert_int_equal(access("/tmp/outpost-pwned", F_OK), -1);
    pol_close(p);
}

static void sandbox_keeps_safe_os_functions(void **state)
{
    (void)state;
    const char *path = write_policy("clock.lua",
        "function route(req, env)\n"
        "  local t = os.time(); local c = os.clock(); local d = os.date('!%Y', 0)\n"
        "  assert(type(t) == 'number' and type(c) == 'number' and d == '1970')\n"
        "  local f = load('return 40 + 2')\n"
        "  local ok, e = pcall(error, 'boom')\n"
        "  assert(not ok and e:find('boom'))\n"
        "  local ok2, h = xpcall(function(a) error('bad ' .. a, 0) end,\n"
        "                       function(m) return 'handled ' .. m end, 'x')\n"
        "  assert(not ok2 and h == 'handled bad x')\n"
        "  local ok3, a, b = pcall(function(...) return select('#', ...), ... end, 7, nil)\n"
        "  assert(ok3 and a == 2 and b == 7)\n"
        "  assert(select(2, xpcall(function(x, y) return x + y end, print, 2, 3)) == 5)\n"
        "  assert(getmetatable(setmetatable({}, { __index = { k = 1 } })).__index.k == 1)\n"
        "  return { target = 'local', reason = 'ok_' .. f() .. '_' .. math.floor(2.5) ..\n"
        "           '_' .. utf8.char(65) .. '_' .. #table.pack(1, 2) }\n"
        "end\n");
    pol *p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "ok_42_2_A_2");
    pol_close(p);
}

typedef struct dump_buf {
    char *data;
    size_t n, cap;
} dump_buf;

static int dump_writer(lua_State *L, const void *b, size_t n, void *ud)
{
    (void)L;
    dump_buf *d = ud;
    if (d->n + n > d->cap)
        return 1;
    memcpy(d->data + d->n, b, n);
    d->n += n;
    return 0;
}

/* Real Lua 5.4 bytecode for "return 1", made by a plain state outside. */
static size_t make_bytecode(char *out, size_t cap)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    assert_int_equal(luaL_loadstring(L, "return 1"), LUA_OK);
    dump_buf d = {out, 0, cap};
    assert_int_equal(lua_dump(L, dump_writer, &d, 1), 0);
    lua_close(L);
    return d.n;
}

static void sandbox_refuses_bytecode_everywhere(void **state)
{
    (void)state;
    char bc[512];
    size_t n = make_bytecode(bc, sizeof bc);
    assert_int_equal(bc[0], '\033');

    /* As the policy file itself. */
    const char *path = write_bytes("bytecode.lua", bc, n);
    pol_opts o = {.lua_dir = tmp_dir};
    pol *p = NULL;
    char err[256];
    assert_int_equal(pol_open(&p, path, &o, err), POL_ESYNTAX);
    assert_null(p);
    assert_non_null(strstr(err, "binary"));

    /* As a module for require, and as a string handed to load (even with
     * mode "b" asked for explicitly). */
    write_bytes("bcmod.lua", bc, n);
    char src[4096];
    size_t w = (size_t)snprintf(src, sizeof src, "local bc = \"");
    for (size_t i = 0; i < n; i++)
        w += (size_t)snprintf(src + w, sizeof src - w, "\\%u", (unsigned char)bc[i]);
    snprintf(src + w, sizeof src - w,
             "\"\n"
             "function route(req, env)\n"
             "  if req.prompt_tokens == 1 then require('bcmod') end\n"
             "  local f1, e1 = load(bc)\n"
             "  local f2, e2 = load(bc, 'x', 'b')\n"
             "  if f1 or f2 then return { target = 'cloud', reason = 'bytecode_ran' } end\n"
             "  assert(e1:find('binary') and e2:find('binary'))\n"
             "  return { target = 'local', reason = 'refused' }\n"
             "end\n");
    p = open_ok(write_policy("loadbc.lua", src), 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "refused");
    r.prompt_tokens = 1;
    pol_decision d;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "binary"));
    pol_close(p);
}

static void require_loads_helpers_from_the_lua_dir_only(void **state)
{
    (void)state;
    char sub[600];
    snprintf(sub, sizeof sub, "%s/util", tmp_dir);
    mkdir(sub, 0700);
    write_policy("thresholds.lua", "return { long = 100 }\n");
    write_policy("util/fmt.lua",
                 "local M = {}\nfunction M.tag(s) return 'via_' .. s end\nreturn M\n");
    write_policy("secret.txt", "return {}\n");
    const char *path = write_policy("uses_require.lua",
        "local T = require('thresholds')\n"
        "local fmt = require('util.fmt')\n"
        "assert(require('thresholds') == T)\n"
        "local bad = { '../secret', '/etc/passwd', 'util/fmt', '.hidden', 'a..b', 'nope' }\n"
        "function route(req, env)\n"
        "  if req.prompt_tokens > 0 then require(bad[req.prompt_tokens]) end\n"
        "  return { target = 'local', reason = fmt.tag(tostring(T.long)) }\n"
        "end\n");
    pol *p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    r.prompt_tokens = 0;
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "via_100");
    const char *want[] = {"refused", "refused", "refused", "refused", "refused", "not found"};
    for (int i = 0; i < 6; i++) {
        r.prompt_tokens = i + 1;
        pol_decision d;
        char err[256];
        assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERUNTIME);
        if (!strstr(err, want[i]))
            fail_msg("require #%d: '%s'", i + 1, err);
    }
    pol_close(p);

    /* Without a lua directory, require is off. */
    pol_opts o = {0};
    char err[256];
    pol *q = NULL;
    assert_int_equal(pol_open(&q, path, &o, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "no lua directory"));
}

/* ---- limits ----------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void infinite_loop_is_stopped_and_the_next_call_works(void **state)
{
    (void)state;
    const char *path = write_policy("loop.lua",
        "function route(req, env)\n"
        "  if req.prompt_tokens == 1 then while true do end end\n"
        "  if req.prompt_tokens == 2 then\n"
        "    while true do pcall(function() while true do end end) end\n"
        "  end\n"
        "  if req.prompt_tokens == 3 then\n"
        "    local function f() return f() end\n"
        "    while true do pcall(f) end\n"
        "  end\n"
        /* Lua runs an xpcall handler for a hook's error with hooks off. */
        "  if req.prompt_tokens == 4 then\n"
        "    while true do\n"
        "      xpcall(function() while true do end end, function() while true do end end)\n"
        "    end\n"
        "  end\n"
        "  if req.prompt_tokens == 5 then\n"
        "    local x <close> = setmetatable({}, { __close = function() while true do end end })\n"
        "    while true do end\n"
        "  end\n"
        "  return { target = 'local', reason = 'fine' }\n"
        "end\n");
    pol *p = open_ok(path, 100000, 0);
    pol_env e = base_env();
    for (int kind = 1; kind <= 5; kind++) {
        pol_req r = base_req();
        r.prompt_tokens = kind;
        pol_decision d;
        char err[256];
        double t0 = now_s();
        int rc = pol_route(p, &r, &e, &d, err);
        double ms = (now_s() - t0) * 1e3;
        if (rc != POL_EINSTR)
            fail_msg("loop %d: rc %d: %s", kind, rc, rc ? err : d.reason);
        assert_non_null(strstr(err, "instruction limit"));
        assert_int_equal(d.target, POL_TARGET_LOCAL);
        /* 100k instructions are well under a millisecond; allow sanitizers. */
        assert_true(ms < 2000);
        r.prompt_tokens = 0;
        expect_route(p, &r, &e, POL_TARGET_LOCAL, "fine");
    }
    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.calls, 10);
    assert_int_equal(c.errors, 5);
    assert_int_equal(c.instr_limit_hits, 5);
    assert_int_equal(c.mem_limit_hits, 0);
    pol_close(p);

    /* A loop at the top level stops the load instead. */
    path = write_policy("toploop.lua", "while true do end\nfunction route() end\n");
    pol_opts o = {.instr_limit = 100000};
    pol *q = NULL;
    char err[256];
    assert_int_equal(pol_open(&q, path, &o, err), POL_EINSTR);
    assert_non_null(strstr(err, "instruction limit"));
}

static void allocation_bomb_is_stopped_and_the_state_recovers(void **state)
{
    (void)state;
    const char *path = write_policy("bomb.lua",
        "function route(req, env)\n"
        "  if req.prompt_tokens == 1 then\n"
        "    local t = {}\n"
        "    while true do t[#t + 1] = string.rep('x', 65536) .. #t end\n"
        "  end\n"
        "  if req.prompt_tokens == 2 then\n"
        "    hoard = hoard or {}\n"
        "    while true do hoard[#hoard + 1] = string.rep('y', 4096) .. #hoard end\n"
        "  end\n"
        "  if req.prompt_tokens == 3 then local s = string.rep('z', 1 << 28) end\n"
        "  local ok = {}\n"
        "  for i = 1, 1000 do ok[i] = tostring(i) end\n"
        "  return { target = 'local', reason = 'fine_' .. #ok }\n"
        "end\n");
    pol *p = open_ok(path, 0, 4u << 20);
    pol_env e = base_env();
    for (int kind = 1; kind <= 3; kind++) {
        pol_req r = base_req();
        r.prompt_tokens = kind;
        pol_decision d;
        char err[256];
        int rc = pol_route(p, &r, &e, &d, err);
        if (rc != POL_EMEM)
            fail_msg("bomb %d: rc %d: %s", kind, rc, rc ? err : d.reason);
        assert_non_null(strstr(err, "memory limit"));
        assert_string_equal(d.reason, "policy_error");
        /* Kind 2 kept its hoard in a global: only a rebuilt state can
         * serve the next call. */
        r.prompt_tokens = 0;
        expect_route(p, &r, &e, POL_TARGET_LOCAL, "fine_1000");
        expect_route(p, &r, &e, POL_TARGET_LOCAL, "fine_1000");
    }
    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.mem_limit_hits, 3);
    assert_int_equal(c.errors, 3);
    pol_close(p);
}

/* ---- the result contract ------------------------------------------------------ */

static void bad_return_values_fall_back_to_local(void **state)
{
    (void)state;
    const char *path = write_policy("bad.lua",
        "local r = {\n"
        "  function() return nil end,\n"
        "  function() return 'local' end,\n"
        "  function() return { target = 'moon', reason = 'x' } end,\n"
        "  function() return { target = 'auto', reason = 'x' } end,\n"
        "  function() return { target = 'local' } end,\n"
        "  function() return { reason = 'x' } end,\n"
        "  function() return { target = 'local', reason = 42 } end,\n"
        "  function() return { target = 'local', reason = '' } end,\n"
        "  function() return { target = 'local', reason = 'a\\nb' } end,\n"
        "  function() return { target = 'local', reason = string.rep('r', 64) } end,\n"
        "  function() return { target = 'local', reason = 'x', max_tokens = 1.5 } end,\n"
        "  function() return { target = 'local', reason = 'x', max_tokens = -3 } end,\n"
        "  function() return { target = 'local', reason = 'x', redact = 'yes' } end,\n"
        "  function() return { target = 'local', reason = 'x', targte = 'cloud' } end,\n"
        "  function() return { target = 'local', reason = 'x', [1] = 2 } end,\n"
        "  function() return { target = 'local', reason = 'x', model = {} } end,\n"
        "}\n"
        "function route(req, env) return r[req.prompt_tokens]() end\n");
    static const char *const why[] = {
        "returned nil", "returned string", "\"moon\"", "\"auto\"", "without reason",
        "without target", "reason of type number", "reason of 0 bytes", "byte 0x0a",
        "reason of 64 bytes", "max_tokens", "max_tokens", "redact of type string",
        "unknown field 'targte'", "number key", "model of type table",
    };
    pol *p = open_ok(path, 0, 0);
    pol_env e = base_env();
    for (size_t i = 0; i < sizeof why / sizeof why[0]; i++) {
        pol_req r = base_req();
        r.prompt_tokens = (int64_t)i + 1;
        pol_decision d;
        char err[256];
        int rc = pol_route(p, &r, &e, &d, err);
        if (rc != POL_ERESULT || !strstr(err, why[i]))
            fail_msg("case %zu: rc %d, err '%s' (expected '%s')", i + 1, rc, rc ? err : "",
                     why[i]);
        assert_int_equal(d.target, POL_TARGET_LOCAL);
        assert_string_equal(d.reason, "policy_error");
        assert_string_equal(d.model, "");
    }
    pol_close(p);
}

static void policy_errors_are_clean(void **state)
{
    (void)state;
    pol_opts o = {.lua_dir = tmp_dir};
    pol *p = NULL;
    char err[256];
    const char *path = write_policy("noroute.lua", "local x = 1\n");
    assert_int_equal(pol_open(&p, path, &o, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "no route(req, env) function"));

    path = write_policy("syntax.lua", "function route(req, env)\n  return {\nend\n");
    assert_int_equal(pol_open(&p, path, &o, err), POL_ESYNTAX);
    assert_non_null(strstr(err, "syntax.lua:3:"));

    char missing[600];
    snprintf(missing, sizeof missing, "%s/missing.lua", tmp_dir);
    assert_int_equal(pol_open(&p, missing, &o, err), POL_EIO);
    assert_non_null(strstr(err, "missing.lua: cannot open"));

    path = write_policy("raises.lua",
        "function route(req, env)\n"
        "  if req.prompt_tokens == 1 then error({}) end\n"
        "  if req.prompt_tokens == 2 then route = nil; return nil end\n"
        "  local t = nil\n"
        "  return t.field\n"
        "end\n");
    p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    pol_decision d;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "raises.lua:5:"));
    r.prompt_tokens = 1;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "table value"));
    r.prompt_tokens = 2;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERESULT);
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_ERUNTIME);
    assert_non_null(strstr(err, "route is not a function"));
    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.calls, 4);
    assert_int_equal(c.errors, 4);
    pol_close(p);
}

/* ---- reload ------------------------------------------------------------------- */

static void reload_keeps_the_old_policy_on_a_broken_file(void **state)
{
    (void)state;
    const char *path = write_policy("live.lua",
        "function route() return { target = 'local', reason = 'version_a' } end\n");
    pol *p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "version_a");
    char err[256];

    write_policy("live.lua", "function route() return { target = 'cloud'\n");
    assert_int_equal(pol_reload(p, NULL, err), POL_ESYNTAX);
    assert_non_null(strstr(err, "live.lua"));
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "version_a");

    write_policy("live.lua", "-- route() forgotten\n");
    assert_int_equal(pol_reload(p, NULL, err), POL_ERUNTIME);
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "version_a");

    write_policy("live.lua",
                 "function route() return { target = 'cloud', reason = 'version_b' } end\n");
    assert_int_equal(pol_reload(p, NULL, err), POL_OK);
    expect_route(p, &r, &e, POL_TARGET_CLOUD, "version_b");

    /* Another file, and a failing limit hit after it rebuilds from it. */
    const char *other = write_policy("other.lua",
        "function route(req) if req.prompt_tokens == 1 then while true do end end\n"
        "  return { target = 'peer', reason = 'version_c' } end\n");
    assert_int_equal(pol_reload(p, other, err), POL_OK);
    expect_route(p, &r, &e, POL_TARGET_PEER, "version_c");
    r.prompt_tokens = 1;
    pol_decision d;
    assert_int_equal(pol_route(p, &r, &e, &d, err), POL_EINSTR);
    r.prompt_tokens = 0;
    expect_route(p, &r, &e, POL_TARGET_PEER, "version_c");

    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.reloads, 2);
    assert_int_equal(c.reload_errors, 2);
    pol_close(p);
}

/* policy.set from the fleet: source in memory, compiled and dry-run before
 * it replaces the running policy; every failure leaves the old one. */
static void replace_source_dry_runs_before_it_replaces(void **state)
{
    (void)state;
    const char *path = write_policy("fleet.lua",
        "function route() return { target = 'local', reason = 'file' } end\n");
    pol *p = open_ok(path, 0, 0);
    pol_req r = base_req();
    pol_env e = base_env();
    char err[256];
    static const char *const broken[] = {
        "function route() return { target = 'cloud'\n",                    /* syntax */
        "function route() error('not today') end\n",                       /* runtime */
        "function route() return { target = 'moon', reason = 'x' } end\n", /* result */
        "function route() while true do end end\n",                        /* limit */
        "x = 1\n",                                                         /* no route */
    };
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        assert_int_not_equal(pol_replace_source(p, broken[i], strlen(broken[i]), "fleet v9", err),
                             POL_OK);
        assert_non_null(strstr(err, "fleet v9"));
        expect_route(p, &r, &e, POL_TARGET_LOCAL, "file");
    }
    /* Only the private/online sample fails: still refused. */
    const char *half = "function route(req) if req.privacy == 'private' then error('no') end\n"
                       "  return { target = 'cloud', reason = 'half' } end\n";
    assert_int_equal(pol_replace_source(p, half, strlen(half), "fleet v10", err), POL_ERUNTIME);
    expect_route(p, &r, &e, POL_TARGET_LOCAL, "file");
    const char *good = "function route() return { target = 'peer', reason = 'fleet' } end\n";
    assert_int_equal(pol_replace_source(p, good, strlen(good), "fleet v11", err), POL_OK);
    expect_route(p, &r, &e, POL_TARGET_PEER, "fleet");
    assert_int_equal(pol_replace_source(p, "", 0, "empty", err), POL_ERUNTIME);
    expect_route(p, &r, &e, POL_TARGET_PEER, "fleet");
    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.reloads, 1);
    assert_int_equal(c.reload_errors, 7);
    pol_close(p);
}

typedef struct hammer {
    pol *p;
    int failures;
} hammer;

static void *hammer_routes(void *arg)
{
    hammer *h = arg;
    pol_req r = base_req();
    pol_env e = base_env();
    for (int i = 0; i < 2000; i++) {
        pol_decision d;
        char err[256];
        if (pol_route(h->p, &r, &e, &d, err) != POL_OK ||
            (strcmp(d.reason, "one") != 0 && strcmp(d.reason, "two") != 0))
            h->failures++;
    }
    return NULL;
}

static void routes_from_many_threads_survive_reloads(void **state)
{
    (void)state;
    const char *one = write_policy("one.lua",
        "function route() return { target = 'local', reason = 'one' } end\n");
    const char *two = write_policy("two.lua",
        "function route() return { target = 'local', reason = 'two' } end\n");
    pol *p = open_ok(one, 0, 0);
    hammer h[3] = {{p, 0}, {p, 0}, {p, 0}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer_routes, &h[i]), 0);
    char err[256];
    for (int i = 0; i < 20; i++)
        assert_int_equal(pol_reload(p, i % 2 ? one : two, err), POL_OK);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(h[i].failures, 0);
    }
    pol_counters c;
    pol_stats(p, &c);
    assert_int_equal(c.calls, 6000);
    assert_int_equal(c.reloads, 20);
    pol_close(p);
}

static void name_tables_round_trip(void **state)
{
    (void)state;
    for (int t = 0; t < POL_TARGET_COUNT; t++) {
        pol_target back;
        assert_int_equal(pol_target_parse(pol_target_name((pol_target)t), &back), POL_OK);
        assert_int_equal(back, t);
    }
    pol_target t;
    assert_int_equal(pol_target_parse("edge", &t), POL_EUSAGE);
    pol_privacy pv;
    assert_int_equal(pol_privacy_parse("private", &pv), POL_OK);
    assert_int_equal(pv, POL_PRIVACY_PRIVATE);
    assert_int_equal(pol_privacy_parse("secret", &pv), POL_EUSAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(route_plain_request_stays_local),
        cmocka_unit_test(route_private_request_stays_local),
        cmocka_unit_test(route_pii_request_stays_local),
        cmocka_unit_test(route_offline_stays_local),
        cmocka_unit_test(route_explicit_request_is_honoured_when_possible),
        cmocka_unit_test(route_long_prompt_goes_to_cloud_under_budget),
        cmocka_unit_test(route_hard_requests_go_to_cloud),
        cmocka_unit_test(route_latency_critical_request_stays_local),
        cmocka_unit_test(route_low_battery_shifts_to_peer_then_cloud),
        cmocka_unit_test(route_hot_device_shifts_work_away),
        cmocka_unit_test(route_unknown_facts_trigger_nothing),
        cmocka_unit_test(route_sees_every_request_and_env_field),
        cmocka_unit_test(route_optional_result_fields_are_returned),
        cmocka_unit_test(sandbox_refuses_every_escape),
        cmocka_unit_test(sandbox_keeps_safe_os_functions),
        cmocka_unit_test(sandbox_refuses_bytecode_everywhere),
        cmocka_unit_test(require_loads_helpers_from_the_lua_dir_only),
        cmocka_unit_test(infinite_loop_is_stopped_and_the_next_call_works),
        cmocka_unit_test(allocation_bomb_is_stopped_and_the_state_recovers),
        cmocka_unit_test(bad_return_values_fall_back_to_local),
        cmocka_unit_test(policy_errors_are_clean),
        cmocka_unit_test(reload_keeps_the_old_policy_on_a_broken_file),
        cmocka_unit_test(replace_source_dry_runs_before_it_replaces),
        cmocka_unit_test(routes_from_many_threads_survive_reloads),
        cmocka_unit_test(name_tables_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
