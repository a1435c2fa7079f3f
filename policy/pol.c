/*
 * pol.c - the Lua policy runtime: a sandboxed lua_State per policy, the
 * route() call and its result contract, limits, atomic reload (see pol.h).
 *
 * Sandbox. The state is made with lua_newstate and our own allocator, and
 * gets only: the safe base functions (an allow-list; print and outpost.log
 * go to the caller's log callback), string without string.dump, table,
 * math, utf8, and an os table holding time, clock and date alone. There is
 * no io, no debug, no coroutine, no package library: require is our own C
 * function that loads text-only files from the configured lua/ directory,
 * and load is a wrapper that always passes mode "t", so no bytecode (which
 * the VM does not verify) ever gets in. The policy file itself is loaded
 * text-only too. Lua runs two kinds of code with hooks off, finalizers and
 * the message handler of an error raised in a hook; setmetatable refuses
 * __gc and xpcall is ours, so neither can be written by a policy.
 *
 * Limits. The allocator refuses any growth past mem_limit_bytes for the
 * whole state (Lua then collects and, failing that, raises a memory error);
 * a count hook charges instructions against a per-call budget and, once it
 * is spent, fires on every instruction; our pcall and xpcall pass limit
 * errors on instead of catching them, so nothing a policy does can outlast
 * either limit. Neither limit
 * reaches inside a single C function (a pathological string.find runs to
 * its end); policies are operator-written code, the sandbox guards against
 * their mistakes and against reaching the host, not against every CPU trap.
 *
 * Every Lua API call that may raise runs under one lua_pcall per request
 * (building req/env, calling route, checking the result), so an error can
 * never reach Lua's panic handler. Counters and the current state are
 * guarded by p->lock; reloads are serialised by p->reload_lock.
 */
#include "pol.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A policy (or a helper module) is a small script; refusing big files keeps
 * a misconfigured path (a model file, say) from being read into memory. */
#define POL_SOURCE_MAX_BYTES (1u << 20)
/* Instructions between two visits of the count hook. */
#define POL_HOOK_STEP 1000u
#define POL_NAME_MAX 64

/* ---- name tables --------------------------------------------------------- */

static const char *const target_names[POL_TARGET_COUNT] = {
    [POL_TARGET_AUTO] = "auto",
    [POL_TARGET_LOCAL] = "local",
    [POL_TARGET_PEER] = "peer",
    [POL_TARGET_CLOUD] = "cloud",
};

static const char *const privacy_names[POL_PRIVACY_COUNT] = {
    [POL_PRIVACY_NORMAL] = "normal",
    [POL_PRIVACY_PRIVATE] = "private",
};

const char *pol_target_name(pol_target t)
{
    return (unsigned)t < POL_TARGET_COUNT ? target_names[t] : "?";
}

int pol_target_parse(const char *s, pol_target *out)
{
    for (int i = 0; s && i < POL_TARGET_COUNT; i++)
        if (strcmp(s, target_names[i]) == 0) {
            *out = (pol_target)i;
            return POL_OK;
        }
    return POL_EUSAGE;
}

const char *pol_privacy_name(pol_privacy p)
{
    return (unsigned)p < POL_PRIVACY_COUNT ? privacy_names[p] : "?";
}

int pol_privacy_parse(const char *s, pol_privacy *out)
{
    for (int i = 0; s && i < POL_PRIVACY_COUNT; i++)
        if (strcmp(s, privacy_names[i]) == 0) {
            *out = (pol_privacy)i;
            return POL_OK;
        }
    return POL_EUSAGE;
}

void pol_env_init(pol_env *env)
{
    env->online = false;
    env->cloud_rtt_ms = NAN;
    env->peer_rtt_ms = NAN;
    env->battery_pct = NAN;
    env->on_ac = POL_UNKNOWN;
    env->temp_c = NAN;
    env->local_tok_s = NAN;
    env->queue_depth = 0;
    env->cloud_spend_usd = 0;
    env->cloud_budget_usd = NAN;
}

void pol_decision_fallback(pol_decision *out)
{
    memset(out, 0, sizeof *out);
    out->target = POL_TARGET_LOCAL;
    snprintf(out->reason, sizeof out->reason, "policy_error");
}

/* ---- one Lua state and its accounting ------------------------------------ */

/* What the allocator and the hook need: reached from a lua_State through
 * the allocator's user data, so no globals are involved. */
typedef struct pol_vm {
    lua_State *L;
    size_t mem_used, mem_limit;
    bool mem_refused; /* the allocator said no since the call began */
    uint64_t instr_used, instr_limit;
    bool instr_hit;
    const pol_opts *opts; /* the owning handle's, outlives the vm */
} pol_vm;

struct pol {
    pthread_mutex_t lock;        /* vm, source, path, counters */
    pthread_mutex_t reload_lock; /* one reload at a time */
    pol_vm *vm;
    char *source;
    size_t source_len;
    char *path;
    pol_opts opts; /* lua_dir points at our own copy */
    char *lua_dir;
    pol_counters stats;
};

static pol_vm *vm_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    pol_vm *vm = ud;
    /* With ptr NULL, osize encodes the object's type, not a size. */
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        vm->mem_used -= old;
        return NULL;
    }
    if (nsize > old && vm->mem_used - old + nsize > vm->mem_limit) {
        vm->mem_refused = true;
        return NULL;
    }
    void *np = realloc(ptr, nsize);
    if (!np) {
        /* Lua requires that a shrink never fails: the old block still fits. */
        if (nsize <= old) {
            vm->mem_used = vm->mem_used - old + nsize;
            return ptr;
        }
        return NULL;
    }
    vm->mem_used = vm->mem_used - old + nsize;
    return np;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    pol_vm *vm = vm_of(L);
    uint64_t step = vm->instr_limit < POL_HOOK_STEP ? vm->instr_limit : POL_HOOK_STEP;
    vm->instr_used += vm->instr_hit ? 1 : step;
    if (vm->instr_used >= vm->instr_limit) {
        if (!vm->instr_hit) {
            vm->instr_hit = true;
            lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
        }
        luaL_error(L, "instruction limit reached");
    }
}

/* Arm the limits for one call (or one load). */
static void vm_begin(pol_vm *vm)
{
    vm->instr_used = 0;
    vm->instr_hit = false;
    vm->mem_refused = false;
    int step = (int)(vm->instr_limit < POL_HOOK_STEP ? vm->instr_limit : POL_HOOK_STEP);
    lua_sethook(vm->L, count_hook, LUA_MASKCOUNT, step);
}

static void vm_free(pol_vm *vm)
{
    if (!vm)
        return;
    if (vm->L) {
        /* Finalizers a policy left behind run under a fresh budget. */
        vm_begin(vm);
        lua_close(vm->L);
    }
    free(vm);
}

/* luaL_error with printf formats (lua_pushfstring knows no widths). */
static void throw_line(lua_State *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void throw_line(lua_State *L, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_where(L, 1); /* the policy's file:line, when Lua code called us */
    lua_pushstring(L, msg);
    lua_concat(L, 2);
    lua_error(L);
    __builtin_unreachable();
}

/* Copy s for an error line: printable ASCII, cut at max bytes. */
static void printable(char *dst, size_t cap, const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[n] = '\0';
}

/* ---- the sandbox's own functions ----------------------------------------- */

/* print(...) and outpost.log(...): the arguments as tostring() shows them,
 * tab-separated, control characters blanked so a line stays one line. */
static int sb_log(lua_State *L)
{
    pol_vm *vm = vm_of(L);
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            luaL_addchar(&b, '\t');
        for (size_t k = 0; k < len && k < 1024; k++) {
            unsigned char ch = (unsigned char)s[k];
            luaL_addchar(&b, ch < 0x20 || ch == 0x7f ? ' ' : (char)ch);
        }
        lua_pop(L, 1);
    }
    luaL_pushresult(&b);
    if (vm->opts->log)
        vm->opts->log(vm->opts->log_ud, lua_tostring(L, -1));
    return 0;
}

/* load(chunk [, chunkname [, mode [, env]]]) with mode forced to "t". */
static int sb_load(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    if (n >= 2)
        lua_pushvalue(L, 2);
    else
        lua_pushnil(L);
    lua_pushliteral(L, "t");
    if (n >= 4) {
        lua_pushvalue(L, 4);
        lua_call(L, 4, LUA_MULTRET);
    } else {
        lua_call(L, 3, LUA_MULTRET);
    }
    return lua_gettop(L) - n;
}

/* pcall and xpcall that cannot catch a limit: once the budget is spent or
 * memory refused, the error goes on to our own lua_pcall whatever the
 * policy wraps around it. xpcall calls its handler after unwinding, not at
 * the point of error: Lua runs a handler for an error raised in a hook with
 * hooks off, where a looping handler could never be stopped (and there is
 * no debug.traceback here to want the error point for). */
static bool limit_hit(lua_State *L, int status)
{
    return vm_of(L)->instr_hit || status == LUA_ERRMEM;
}

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (st != LUA_OK) {
        if (limit_hit(L, st))
            return lua_error(L);
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    return lua_gettop(L);
}

static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_remove(L, 2);
    lua_insert(L, 1); /* handler, f, args... */
    int st = lua_pcall(L, n - 2, LUA_MULTRET, 0);
    if (st == LUA_OK) {
        lua_pushboolean(L, 1);
        lua_replace(L, 1);
        return lua_gettop(L);
    }
    if (limit_hit(L, st))
        return lua_error(L);
    st = lua_pcall(L, 1, 1, 0); /* handler(err) */
    if (st != LUA_OK && limit_hit(L, st))
        return lua_error(L);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

/* setmetatable refusing __gc: Lua runs finalizers with hooks off, so a
 * looping __gc would escape the instruction limit. Lua marks an object for
 * finalization only if its metatable has __gc when it is set, so checking
 * here is enough. */
static int sb_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            throw_line(L, "setmetatable: __gc metamethods are not allowed in a policy");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* Module names are dot-separated words of letters, digits and '_'; a dot
 * maps to a subdirectory. Anything else ('/', "..", a leading dot) could
 * name a file outside the lua/ directory. */
static bool module_name_ok(const char *name, size_t len)
{
    if (len == 0 || len > POL_NAME_MAX)
        return false;
    bool word_start = true;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (ch == '.') {
            if (word_start)
                return false;
            word_start = true;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || ch == '_') {
            word_start = false;
        } else {
            return false;
        }
    }
    return !word_start;
}

/* The marker in the loaded table for a module whose chunk is running. */
static const char loading_marker = 0;

static int sb_require(lua_State *L)
{
    pol_vm *vm = vm_of(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    char shown[POL_NAME_MAX + 1];
    printable(shown, sizeof shown, name, len);
    lua_settop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* 2 */
    lua_getfield(L, 2, name);
    if (lua_touserdata(L, -1) == &loading_marker)
        throw_line(L, "require '%s': the module requires itself while loading", shown);
    if (lua_toboolean(L, -1))
        return 1;
    lua_pop(L, 1);
    if (strlen(name) != len || !module_name_ok(name, len))
        throw_line(L, "require '%s': refused, a module name is words of letters, "
                        "digits and '_' separated by '.'", shown);
    if (!vm->opts->lua_dir)
        throw_line(L, "require '%s': no lua directory is configured", shown);

    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s.lua", vm->opts->lua_dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        throw_line(L, "require '%s': path too long", shown);
    char *file = path + strlen(vm->opts->lua_dir) + 1;
    for (char *c = file; *c && c < path + n - 4; c++)
        if (*c == '.')
            *c = '/';
    struct stat st;
    if (stat(path, &st) != 0)
        throw_line(L, "require '%s': module not found (no file %s)", shown, path);
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)POL_SOURCE_MAX_BYTES)
        throw_line(L, "require '%s': %s is not a regular file of at most 1 MiB", shown,
                     path);
    if (luaL_loadfilex(L, path, "t") != LUA_OK)
        return lua_error(L);
    /* Mark it as loading so a cycle is reported, and unmark it if the
     * chunk fails so a later require reports the real error again. */
    lua_pushlightuserdata(L, (void *)&loading_marker);
    lua_setfield(L, 2, name);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pushnil(L);
        lua_setfield(L, 2, name);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    return 1;
}

/* What stays in _G once the libraries are open: everything else goes. */
static const char *const global_allow[] = {
    "_G", "_VERSION", "assert", "error", "getmetatable", "ipairs", "load", "next",
    "pairs", "pcall", "print", "rawequal", "rawget", "rawlen", "rawset", "require",
    "select", "setmetatable", "tonumber", "tostring", "type", "xpcall",
    "math", "os", "outpost", "string", "table", "utf8",
};

static bool allowed_global(const char *name)
{
    for (size_t i = 0; i < sizeof global_allow / sizeof global_allow[0]; i++)
        if (strcmp(name, global_allow[i]) == 0)
            return true;
    return false;
}

/* Build the sandbox; runs under lua_pcall so a memory error is caught. */
static int sandbox_open(lua_State *L)
{
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_pop(L, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    lua_pop(L, 1);

    /* os: opened directly (never registered as a loaded module, so
     * require('os') cannot reach the full library), three fields copied. */
    lua_pushcfunction(L, luaopen_os);
    lua_call(L, 0, 1);
    lua_createtable(L, 0, 3);
    static const char *const os_keep[] = {"time", "clock", "date"};
    for (int i = 0; i < 3; i++) {
        lua_getfield(L, -2, os_keep[i]);
        lua_setfield(L, -2, os_keep[i]);
    }
    lua_setglobal(L, "os");
    lua_pop(L, 1);

    lua_getglobal(L, "load");
    lua_pushcclosure(L, sb_load, 1);
    lua_setglobal(L, "load");
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_pushcfunction(L, sb_pcall);
    lua_setglobal(L, "pcall");
    lua_pushcfunction(L, sb_xpcall);
    lua_setglobal(L, "xpcall");
    lua_pushcfunction(L, sb_require);
    lua_setglobal(L, "require");
    lua_pushcfunction(L, sb_log);
    lua_setglobal(L, "print");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sb_log);
    lua_setfield(L, -2, "log");
    lua_setglobal(L, "outpost");

    /* Allow-list the globals: dofile, loadfile, collectgarbage, warn and
     * whatever a newer Lua adds go. Assigning nil to a present field
     * during traversal is allowed by lua_next's contract. */
    lua_pushglobaltable(L);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !allowed_global(lua_tostring(L, -1))) {
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, -4);
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* Build a state with the sandbox in it and run the policy's top level.
 * Errors name chunk (the policy's path). */
static int vm_new(pol_vm **out, const pol_opts *opts, const char *source, size_t len,
                  const char *chunk, char err[256])
{
    *out = NULL;
    pol_vm *vm = calloc(1, sizeof *vm);
    if (!vm) {
        snprintf(err, 256, "%s: out of memory", chunk);
        return POL_ENOMEM;
    }
    vm->opts = opts;
    vm->mem_limit = opts->mem_limit_bytes;
    vm->instr_limit = opts->instr_limit;
    int rc;
    vm->L = lua_newstate(vm_alloc, vm);
    if (!vm->L) {
        snprintf(err, 256, "%s: cannot create a Lua state within %zu bytes", chunk,
                 vm->mem_limit);
        rc = POL_EMEM;
        goto fail;
    }
    lua_State *L = vm->L;
    lua_gc(L, LUA_GCGEN, 0, 0);
    vm_begin(vm);
    lua_pushcfunction(L, sandbox_open);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, 256, "%s: cannot set up the sandbox within %zu bytes", chunk,
                 vm->mem_limit);
        rc = POL_EMEM;
        goto fail;
    }

    char name[4096 + 1];
    snprintf(name, sizeof name, "@%s", chunk);
    vm_begin(vm);
    int st = luaL_loadbufferx(L, source, len, name, "t");
    if (st == LUA_OK)
        st = lua_pcall(L, 0, 0, 0);
    if (st != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (vm->instr_hit) {
            snprintf(err, 256, "%s: loading: instruction limit reached (%llu instructions)",
                     chunk, (unsigned long long)vm->instr_limit);
            rc = POL_EINSTR;
        } else if (st == LUA_ERRMEM || vm->mem_refused) {
            snprintf(err, 256, "%s: loading: memory limit reached (%zu bytes)", chunk,
                     vm->mem_limit);
            rc = POL_EMEM;
        } else {
            if (!msg)
                snprintf(err, 256, "%s: loading: raised a %s value as its error", chunk,
                         luaL_typename(L, -1));
            else if (strncmp(msg, chunk, strlen(chunk)) == 0)
                snprintf(err, 256, "%s", msg);
            else
                snprintf(err, 256, "%s: %s", chunk, msg);
            rc = st == LUA_ERRSYNTAX ? POL_ESYNTAX : POL_ERUNTIME;
        }
        goto fail;
    }
    if (lua_getglobal(L, "route") != LUA_TFUNCTION) {
        snprintf(err, 256, "%s: defines no route(req, env) function", chunk);
        rc = POL_ERUNTIME;
        goto fail;
    }
    lua_settop(L, 0);
    *out = vm;
    return POL_OK;
fail:
    vm_free(vm);
    return rc;
}

/* ---- one call ------------------------------------------------------------ */

typedef struct route_call {
    const pol_req *req;
    const pol_env *env;
    pol_decision *out;
    bool in_result; /* errors from here on are about the returned value */
} route_call;

static void set_num(lua_State *L, const char *key, double v)
{
    if (isnan(v))
        return;
    lua_pushnumber(L, v);
    lua_setfield(L, -2, key);
}

static void set_int(lua_State *L, const char *key, int64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

static void push_req(lua_State *L, const pol_req *r)
{
    lua_createtable(L, 0, 7);
    set_int(L, "prompt_tokens", r->prompt_tokens);
    set_int(L, "messages", r->messages);
    lua_pushstring(L, pol_target_name(r->route_requested));
    lua_setfield(L, -2, "route_requested");
    lua_pushstring(L, pol_privacy_name(r->privacy));
    lua_setfield(L, -2, "privacy");
    lua_createtable(L, (int)r->n_pii, 0);
    for (size_t i = 0; i < r->n_pii; i++) {
        lua_pushstring(L, r->pii[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "pii");
    if (r->max_latency_ms >= 0)
        set_int(L, "max_latency_ms", r->max_latency_ms);
}

static void push_env(lua_State *L, const pol_env *e)
{
    lua_createtable(L, 0, 10);
    lua_pushboolean(L, e->online);
    lua_setfield(L, -2, "online");
    set_num(L, "cloud_rtt_ms", e->cloud_rtt_ms);
    set_num(L, "peer_rtt_ms", e->peer_rtt_ms);
    set_num(L, "battery_pct", e->battery_pct);
    if (e->on_ac != POL_UNKNOWN) {
        lua_pushboolean(L, e->on_ac != 0);
        lua_setfield(L, -2, "on_ac");
    }
    set_num(L, "temp_c", e->temp_c);
    set_num(L, "local_tok_s", e->local_tok_s);
    set_int(L, "queue_depth", e->queue_depth);
    set_num(L, "cloud_spend_usd", e->cloud_spend_usd);
    set_num(L, "cloud_budget_usd", e->cloud_budget_usd);
}

/* A reason or model name: printable ASCII, no longer than the field. */
static void read_text_field(lua_State *L, const char *key, char *dst, size_t cap)
{
    if (lua_type(L, -1) != LUA_TSTRING)
        throw_line(L, "route() returned %s of type %s (expected a string)", key,
              luaL_typename(L, -1));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (len == 0 || len >= cap)
        throw_line(L, "route() returned a %s of %zu bytes (expected 1 to %zu)", key, len, cap - 1);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            throw_line(L, "route() returned a %s with a byte 0x%02x (expected printable ASCII)",
                  key, (unsigned char)s[i]);
    memcpy(dst, s, len + 1);
}

/* The result table at the top of the stack, read raw (no metamethods run). */
static void read_decision(lua_State *L, pol_decision *d)
{
    if (!lua_istable(L, -1))
        throw_line(L, "route() returned %s (expected a table with target and reason)",
              luaL_typename(L, -1));
    memset(d, 0, sizeof *d);
    bool have_target = false, have_reason = false;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            throw_line(L, "route() returned a table with a %s key (expected target, reason, "
                     "model, max_tokens, redact)", luaL_typename(L, -2));
        size_t klen;
        const char *key = lua_tolstring(L, -2, &klen);
        if (strcmp(key, "target") == 0) {
            if (lua_type(L, -1) != LUA_TSTRING)
                throw_line(L, "route() returned target of type %s (expected \"local\", "
                              "\"peer\" or \"cloud\")", luaL_typename(L, -1));
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            pol_target t = POL_TARGET_AUTO;
            if (strlen(s) != len || pol_target_parse(s, &t) != POL_OK ||
                t == POL_TARGET_AUTO) {
                char shown[32];
                printable(shown, sizeof shown, s, len);
                throw_line(L, "route() returned target \"%s\" (expected \"local\", \"peer\" "
                              "or \"cloud\")", shown);
            }
            d->target = t;
            have_target = true;
        } else if (strcmp(key, "reason") == 0) {
            read_text_field(L, "reason", d->reason, sizeof d->reason);
            have_reason = true;
        } else if (strcmp(key, "model") == 0) {
            read_text_field(L, "model", d->model, sizeof d->model);
        } else if (strcmp(key, "max_tokens") == 0) {
            int ok = 0;
            lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &ok) : 0;
            if (!ok || v < 1 || v > INT32_MAX)
                throw_line(L, "route() returned max_tokens that is not a whole number in "
                         "1..%d", INT32_MAX);
            d->max_tokens = v;
        } else if (strcmp(key, "redact") == 0) {
            if (lua_type(L, -1) != LUA_TBOOLEAN)
                throw_line(L, "route() returned redact of type %s (expected a boolean)",
                      luaL_typename(L, -1));
            d->redact = lua_toboolean(L, -1);
        } else {
            char shown[40];
            printable(shown, sizeof shown, key, klen);
            throw_line(L, "route() returned an unknown field '%s' (expected target, reason, "
                     "model, max_tokens, redact)", shown);
        }
        lua_pop(L, 1);
    }
    if (!have_target || !have_reason)
        throw_line(L, "route() returned a table without %s", have_target ? "reason" : "target");
}

static int route_call_fn(lua_State *L)
{
    route_call *c = lua_touserdata(L, 1);
    if (lua_getglobal(L, "route") != LUA_TFUNCTION)
        throw_line(L, "route is not a function any more (it is %s)", luaL_typename(L, -1));
    push_req(L, c->req);
    push_env(L, c->env);
    lua_call(L, 2, 1);
    c->in_result = true;
    read_decision(L, c->out);
    return 0;
}

/* ---- the handle ---------------------------------------------------------- */

static int read_source(const char *path, char **out, size_t *len, char err[256])
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, 256, "%s: cannot open: %s", path, strerror(errno));
        return POL_EIO;
    }
    int rc = POL_EIO;
    char *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, 256, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_size > (off_t)POL_SOURCE_MAX_BYTES) {
        snprintf(err, 256, "%s: %lld bytes, a policy may be at most 1 MiB", path,
                 (long long)st.st_size);
        goto done;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        snprintf(err, 256, "%s: out of memory", path);
        rc = POL_ENOMEM;
        goto done;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        snprintf(err, 256, "%s: read error", path);
        free(buf);
        buf = NULL;
        goto done;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    rc = POL_OK;
done:
    fclose(f);
    return rc;
}

int pol_open(pol **out, const char *path, const pol_opts *opts, char err[256])
{
    *out = NULL;
    if (!path) {
        snprintf(err, 256, "pol_open: no policy path given");
        return POL_EUSAGE;
    }
    pol *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, 256, "%s: out of memory", path);
        return POL_ENOMEM;
    }
    if (opts)
        p->opts = *opts;
    if (p->opts.instr_limit == 0)
        p->opts.instr_limit = POL_DEFAULT_INSTR_LIMIT;
    if (p->opts.mem_limit_bytes == 0)
        p->opts.mem_limit_bytes = POL_DEFAULT_MEM_LIMIT_BYTES;
    int rc = POL_ENOMEM;
    p->path = strdup(path);
    p->lua_dir = p->opts.lua_dir ? strdup(p->opts.lua_dir) : NULL;
    if (!p->path || (p->opts.lua_dir && !p->lua_dir)) {
        snprintf(err, 256, "%s: out of memory", path);
        goto fail;
    }
    p->opts.lua_dir = p->lua_dir;
    if ((rc = read_source(path, &p->source, &p->source_len, err)))
        goto fail;
    if ((rc = vm_new(&p->vm, &p->opts, p->source, p->source_len, path, err)))
        goto fail;
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->reload_lock, NULL);
    *out = p;
    return POL_OK;
fail:
    free(p->source);
    free(p->path);
    free(p->lua_dir);
    free(p);
    return rc;
}

void pol_close(pol *p)
{
    if (!p)
        return;
    vm_free(p->vm);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->reload_lock);
    free(p->source);
    free(p->path);
    free(p->lua_dir);
    free(p);
}

/* After a limit hit: a fresh state from the same source, so whatever the
 * interrupted call left half-built (or hoarded in globals) is gone. If that
 * fails the old state stays, collected, and the reason joins err. */
static void vm_rebuild(pol *p, char err[256])
{
    pol_vm *fresh;
    char why[256];
    if (vm_new(&fresh, &p->opts, p->source, p->source_len, p->path, why) == POL_OK) {
        vm_free(p->vm);
        p->vm = fresh;
        return;
    }
    lua_gc(p->vm->L, LUA_GCCOLLECT);
    size_t used = strlen(err);
    if (used + 3 < 256)
        snprintf(err + used, 256 - used, "; %s", why);
}

int pol_route(pol *p, const pol_req *req, const pol_env *env, pol_decision *out,
              char err[256])
{
    pol_decision_fallback(out);
    if (!p || !req || !env) {
        snprintf(err, 256, "pol_route: missing handle, request or environment");
        return POL_EUSAGE;
    }
    for (size_t i = 0; i < req->n_pii; i++)
        if (!req->pii || !req->pii[i]) {
            snprintf(err, 256, "pol_route: req.pii[%zu] is NULL", i);
            return POL_EUSAGE;
        }
    pthread_mutex_lock(&p->lock);
    p->stats.calls++;
    pol_vm *vm = p->vm;
    lua_State *L = vm->L;
    pol_decision d;
    route_call c = {.req = req, .env = env, .out = &d, .in_result = false};
    vm_begin(vm);
    lua_pushcfunction(L, route_call_fn);
    lua_pushlightuserdata(L, &c);
    int st = lua_pcall(L, 1, 0, 0);
    int rc = POL_OK;
    if (st == LUA_OK) {
        *out = d;
    } else if (vm->instr_hit) {
        snprintf(err, 256, "%s: route(): instruction limit reached (%llu instructions)",
                 p->path, (unsigned long long)vm->instr_limit);
        rc = POL_EINSTR;
        p->stats.instr_limit_hits++;
    } else if (st == LUA_ERRMEM || vm->mem_refused) {
        snprintf(err, 256, "%s: route(): memory limit reached (%zu bytes)", p->path,
                 vm->mem_limit);
        rc = POL_EMEM;
        p->stats.mem_limit_hits++;
    } else {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (c.in_result)
            snprintf(err, 256, "%s: %s", p->path, msg);
        else if (msg)
            snprintf(err, 256, "route(): %s", msg);
        else
            snprintf(err, 256, "%s: route(): raised a %s value as its error", p->path,
                     luaL_typename(L, -1));
        rc = c.in_result ? POL_ERESULT : POL_ERUNTIME;
    }
    lua_settop(L, 0);
    if (rc != POL_OK) {
        p->stats.errors++;
        if (rc == POL_EINSTR || rc == POL_EMEM)
            vm_rebuild(p, err);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* One call of route() on a vm that is not serving yet, with a request
 * and environment of our own: a policy that cannot answer these would
 * answer nothing. */
static int vm_dry_run(pol_vm *vm, const char *name, const pol_req *req, const pol_env *env,
                      char err[256])
{
    lua_State *L = vm->L;
    pol_decision d;
    route_call c = {.req = req, .env = env, .out = &d, .in_result = false};
    vm_begin(vm);
    lua_pushcfunction(L, route_call_fn);
    lua_pushlightuserdata(L, &c);
    int st = lua_pcall(L, 1, 0, 0);
    int rc = POL_OK;
    if (st == LUA_OK) {
        rc = POL_OK;
    } else if (vm->instr_hit) {
        snprintf(err, 256, "%s: dry run of route(): instruction limit reached (%llu instructions)",
                 name, (unsigned long long)vm->instr_limit);
        rc = POL_EINSTR;
    } else if (st == LUA_ERRMEM || vm->mem_refused) {
        snprintf(err, 256, "%s: dry run of route(): memory limit reached (%zu bytes)", name,
                 vm->mem_limit);
        rc = POL_EMEM;
    } else {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        snprintf(err, 256, "%s: dry run of route(): %s", name, msg ? msg : "raised a non-string error");
        rc = c.in_result ? POL_ERESULT : POL_ERUNTIME;
    }
    lua_settop(L, 0);
    return rc;
}

/* The end of a reload (called with reload_lock held, releases it): on
 * POL_OK the new VM, source and path replace the running ones atomically
 * under p->lock and the old ones are freed; otherwise the new ones are
 * freed, the running policy stays, and the failure is counted. */
static int reload_finish(pol *p, int rc, pol_vm *vm, char *src, size_t len, char *path)
{
    if (rc != POL_OK) {
        vm_free(vm);
        free(path);
        free(src);
        pthread_mutex_lock(&p->lock);
        p->stats.reload_errors++;
        pthread_mutex_unlock(&p->lock);
        pthread_mutex_unlock(&p->reload_lock);
        return rc;
    }
    pthread_mutex_lock(&p->lock);
    pol_vm *old_vm = p->vm;
    char *old_src = p->source, *old_path = p->path;
    p->vm = vm;
    p->source = src;
    p->source_len = len;
    p->path = path;
    p->stats.reloads++;
    pthread_mutex_unlock(&p->lock);
    vm_free(old_vm);
    free(old_src);
    free(old_path);
    pthread_mutex_unlock(&p->reload_lock);
    return POL_OK;
}

int pol_replace_source(pol *p, const char *source, size_t len, const char *name, char err[256])
{
    if (!p || !source || !name) {
        snprintf(err, 256, "pol_replace_source: no handle, source or name");
        return POL_EUSAGE;
    }
    if (len > POL_SOURCE_MAX_BYTES) {
        snprintf(err, 256, "%s: %zu bytes, a policy may be at most 1 MiB", name, len);
        return POL_EUSAGE;
    }
    pthread_mutex_lock(&p->reload_lock);
    char *new_path = strdup(name);
    char *src = malloc(len + 1);
    pol_vm *vm = NULL;
    int rc = POL_ENOMEM;
    if (!new_path || !src) {
        snprintf(err, 256, "%s: out of memory", name);
        goto fail;
    }
    memcpy(src, source, len);
    src[len] = '\0';
    if ((rc = vm_new(&vm, &p->opts, src, len, new_path, err)))
        goto fail;
    static const char *const no_pii[1] = {NULL};
    pol_req req = {.prompt_tokens = 32, .messages = 1, .route_requested = POL_TARGET_AUTO,
                   .privacy = POL_PRIVACY_NORMAL, .pii = no_pii, .n_pii = 0,
                   .max_latency_ms = -1};
    pol_env env;
    pol_env_init(&env);
    if ((rc = vm_dry_run(vm, new_path, &req, &env, err)))
        goto fail;
    req.privacy = POL_PRIVACY_PRIVATE;
    env.online = true;
    rc = vm_dry_run(vm, new_path, &req, &env, err);
fail:
    return reload_finish(p, rc, vm, src, len, new_path);
}

int pol_reload(pol *p, const char *path, char err[256])
{
    if (!p) {
        snprintf(err, 256, "pol_reload: no handle");
        return POL_EUSAGE;
    }
    pthread_mutex_lock(&p->reload_lock);
    char *new_path = strdup(path ? path : p->path);
    char *src = NULL;
    size_t len = 0;
    pol_vm *vm = NULL;
    int rc = POL_ENOMEM;
    if (!new_path) {
        snprintf(err, 256, "%s: out of memory", path ? path : p->path);
        goto done;
    }
    if ((rc = read_source(new_path, &src, &len, err)))
        goto done;
    rc = vm_new(&vm, &p->opts, src, len, new_path, err);
done:
    return reload_finish(p, rc, vm, src, len, new_path);
}

void pol_stats(pol *p, pol_counters *out)
{
    pthread_mutex_lock(&p->lock);
    *out = p->stats;
    pthread_mutex_unlock(&p->lock);
}
