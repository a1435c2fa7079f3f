/*
 * pol.h - the embedded Lua 5.4 policy runtime (the pol_ module): load a
 * routing policy in a sandbox and ask it, per request, where to answer.
 *
 * A policy is a Lua file defining `route(req, env)` that returns
 * `{ target = "local"|"peer"|"cloud", reason = "...", [model = "..."],
 * [max_tokens = N], [redact = bool] }` (the contract in ARCHITECTURE.md).
 * Each pol handle owns one private lua_State with only safe functions in it,
 * an instruction budget per call and a memory cap for the whole state.
 * Every failure (load error, runtime error, bad return value, a limit hit)
 * comes back as a negative status plus one error line; pol_route() then
 * still fills in the fallback decision (local, reason "policy_error"), so
 * the caller only has to log the line; pol_stats() counts. A limit hit
 * rebuilds the Lua state from the policy's source, so no debris of an
 * interrupted call survives (globals set by earlier calls go with it).
 *
 * Threads: a handle may be shared; calls on it are serialised by its own
 * mutex, and pol_reload() builds the new state before it takes the lock, so
 * routing goes on during a reload and a broken file leaves the old policy.
 * Strings inside a pol_decision are copies owned by the caller's struct.
 */
#ifndef OUTPOST_POL_H
#define OUTPOST_POL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Result codes: 0 is success, negative values name the kind of failure. */
enum {
    POL_OK = 0,
    POL_EIO = -1,      /* the policy file could not be read */
    POL_ESYNTAX = -2,  /* the file is not valid Lua text (or is bytecode) */
    POL_ERUNTIME = -3, /* the policy raised an error, or defines no route() */
    POL_ERESULT = -4,  /* route() returned something outside the contract */
    POL_EINSTR = -5,   /* instruction limit reached */
    POL_EMEM = -6,     /* memory limit reached */
    POL_ENOMEM = -7,   /* the host itself ran out of memory */
    POL_EUSAGE = -8,   /* the caller broke the API contract */
};

/* Defaults taken when an option is 0. The instruction budget is about
 * 5-10 ms of Lua on a small core; the default policy needs a few hundred. */
#define POL_DEFAULT_INSTR_LIMIT 1000000u
#define POL_DEFAULT_MEM_LIMIT_BYTES (8u << 20)

/* Where a request goes. AUTO only appears in a request ("decide for me"),
 * never in a decision. */
typedef enum pol_target {
    POL_TARGET_AUTO,
    POL_TARGET_LOCAL,
    POL_TARGET_PEER,
    POL_TARGET_CLOUD,
    POL_TARGET_COUNT,
} pol_target;

typedef enum pol_privacy {
    POL_PRIVACY_NORMAL,
    POL_PRIVACY_PRIVATE,
    POL_PRIVACY_COUNT,
} pol_privacy;

/* Name tables: "auto", "local", "peer", "cloud"; "normal", "private".
 * The parsers return 0 or POL_EUSAGE for an unknown name. */
const char *pol_target_name(pol_target t);
int pol_target_parse(const char *s, pol_target *out);
const char *pol_privacy_name(pol_privacy p);
int pol_privacy_parse(const char *s, pol_privacy *out);

/* Value of pol_env.on_ac when the power source is unknown. */
#define POL_UNKNOWN (-1)

/* What the policy sees as `req`. pii holds the kind names of the PII found
 * in the request (pii_kind_name(), one per kind), borrowed for the call. */
typedef struct pol_req {
    int64_t prompt_tokens;
    int64_t messages;
    pol_target route_requested;
    pol_privacy privacy;
    const char *const *pii;
    size_t n_pii;
    int64_t max_latency_ms; /* < 0: the client set none (nil in Lua) */
} pol_req;

/* What the policy sees as `env`. A double that is NaN is unknown and shows
 * as nil in Lua: an RTT is NaN when that side is not reachable or not
 * measured yet, battery_pct when there is no battery, cloud_budget_usd when
 * no budget is configured. */
typedef struct pol_env {
    bool online;
    double cloud_rtt_ms;
    double peer_rtt_ms;
    double battery_pct;
    int on_ac; /* 1 on mains power, 0 on battery, POL_UNKNOWN */
    double temp_c;
    double local_tok_s;
    int64_t queue_depth;
    double cloud_spend_usd;
    double cloud_budget_usd;
} pol_env;

/* Nothing known: offline, every sensor nil, empty queue, nothing spent. */
void pol_env_init(pol_env *env);

#define POL_REASON_MAX 64
#define POL_MODEL_MAX 128

typedef struct pol_decision {
    pol_target target; /* LOCAL, PEER or CLOUD */
    char reason[POL_REASON_MAX];
    char model[POL_MODEL_MAX]; /* "" when the policy named none */
    int64_t max_tokens;        /* 0 when the policy set none */
    bool redact;               /* replace PII before the request leaves */
} pol_decision;

/* The decision when a policy fails: local, with reason "policy_error". */
void pol_decision_fallback(pol_decision *out);

typedef struct pol_opts {
    uint64_t instr_limit;     /* Lua VM instructions per call; 0: default */
    size_t mem_limit_bytes;   /* whole Lua state; 0: default */
    const char *lua_dir;      /* where require() looks; NULL: require fails */
    /* print(...) and outpost.log(...) in Lua call this with one line
     * (control characters blanked), on the routing thread with the handle's
     * lock held: it must not call back into pol_. NULL drops the lines. */
    void (*log)(void *log_ud, const char *line);
    void *log_ud;
} pol_opts;

typedef struct pol_counters {
    uint64_t calls;       /* pol_route() calls */
    uint64_t errors;      /* calls that fell back, limit hits included */
    uint64_t instr_limit_hits;
    uint64_t mem_limit_hits;
    uint64_t reloads;     /* successful pol_reload() */
    uint64_t reload_errors;
} pol_counters;

typedef struct pol pol;

/* Load the policy at path (opts may be NULL for defaults). The file's top
 * level runs once under the same limits as a call and must define route. */
int pol_open(pol **out, const char *path, const pol_opts *opts, char err[256]);
void pol_close(pol *p);

/* Ask the policy. On failure *out holds the fallback decision and err says
 * why; the status says what kind of failure it was. */
int pol_route(pol *p, const pol_req *req, const pol_env *env, pol_decision *out,
              char err[256]);

/* Load path (NULL: the current file again) into a new state and switch to
 * it; on any failure the old policy stays in force. */
int pol_reload(pol *p, const char *path, char err[256]);

/* Replace the running policy with Lua source held in memory (a fleet
 * policy.set): it is compiled, its top level run and route() called on two
 * sample requests (normal/offline, private/online) in the new state under
 * the handle's limits; only if all of that succeeds does it replace the
 * running policy, atomically for pol_route(). name stands for the file in
 * messages; a later pol_reload(p, NULL, ...) cannot re-read it (pass the
 * path). On failure the old policy stays in force. */
int pol_replace_source(pol *p, const char *source, size_t len, const char *name, char err[256]);

/* A consistent copy of the handle's counters. */
void pol_stats(pol *p, pol_counters *out);

#endif
