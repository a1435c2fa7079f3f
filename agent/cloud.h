/*
 * cloud.h - the remote backends (the cloud_ module): answer a job through a
 * backend plugin instance (backend-openai) on a peer Outpost or a cloud API,
 * behind the same sched_backend interface as the local engine.
 *
 * One cloud handle serves one target ("peer" or "cloud"). It owns a small
 * pool of remote-call threads fed by a bounded queue: submit never blocks,
 * and a job that finds the pool and its queue full, the target known to be
 * down, or the month's budget spent is refused at once with job->route set
 * back to local and job->reason saying why, so the caller answers it on the
 * device. On a thread, a job's conversation is copied, every hook plugin's
 * outbound() may rewrite it (PII redaction when the policy asked), and the
 * plugin's chat() streams the reply into the job's sink. A failure before
 * any text reached the client hands the job to the local scheduler (route
 * local, reason "<target>_unreachable") instead of failing it; after text
 * has gone out, the job ends with SCHED_EREMOTE and the text so far. Every
 * job ends with its telemetry row (sched_job_record, with the cost estimate
 * for the cloud) and then on_done, exactly as the local engine does.
 *
 * A prober thread measures reachability and round-trip time with the
 * plugin's probe() every probe_interval_s, sooner after a failed call, and
 * never on a request's path; cloud_get_facts() reads the last result for
 * the policy's env.
 *
 * Ownership: cloud_open() borrows the plugin instance, the hooks, the
 * models and the store (the caller closes them after cloud_close()). The
 * conversions exposed for the unit tests return malloc'd copies that
 * cloud_request_free() releases.
 */
#ifndef OUTPOST_CLOUD_H
#define OUTPOST_CLOUD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outpost_plugin.h"
#include "scheduler.h"
#include "store.h"

enum {
    CLOUD_OK = 0,
    CLOUD_EUSAGE = -1, /* bad options */
    CLOUD_ENOMEM = -2,
    CLOUD_ETHREAD = -3, /* a thread could not be started */
    CLOUD_EHOOK = -4,   /* a hook refused or failed */
    CLOUD_ENOREDACT = -5, /* redaction was asked for and no hook plugin can do it */
};

/* One opened hook plugin instance. */
typedef struct cloud_hook {
    const char *name; /* the plugin's, for log lines */
    const outpost_hook_ops *ops;
    void *inst;
} cloud_hook;

typedef struct cloud_opts {
    const char *target;                  /* "peer" or "cloud" */
    const outpost_backend_ops *ops;      /* the backend plugin's table */
    void *inst;                          /* its opened instance */
    const cloud_hook *hooks;             /* run in order before a request leaves */
    size_t n_hooks;
    const outpost_host *host;            /* alloc/free for the hooks' rewrites */
    sched **models;                      /* the local fallback, by job->model */
    size_t n_models;
    size_t default_model;                /* when job->model names none of them */
    store *st;                           /* telemetry and spend; NULL: none */
    int threads;                         /* remote calls at once; <= 0: 4 */
    int queue_max;                       /* jobs waiting for a thread; < 0: 0, 0: 8 */
    double price_per_1k_tokens;          /* USD, prompt + completion; 0: free */
    double budget_usd_month;             /* NaN: no cap; the target refuses jobs
                                            once this month's spend reaches it */
    double probe_interval_s;             /* <= 0: 30 */
    void (*log)(void *ud, const char *line); /* one line per event; NULL: stderr */
    void *log_ud;
} cloud_opts;

typedef struct cloud cloud;

/* Start the threads (the first probe runs at once, on the prober). */
int cloud_open(cloud **out, const cloud_opts *o, char err[256]);
/* Cancel what is left (it ends at its next piece of text or within a
 * fraction of a second while waiting), join the threads, free. Every job
 * taken has had its on_done when this returns. */
void cloud_close(cloud *c);

/* Stop taking jobs; wait up to timeout_ms for those queued or running, then
 * cancel the rest and wait for them. Returns how many were cancelled. */
int cloud_drain(cloud *c, int timeout_ms);

/* The backend for http_services.peer / .cloud. */
sched_backend cloud_backend(cloud *c);

const char *cloud_target(const cloud *c);

/* What the policy and /metrics see. */
typedef struct cloud_facts {
    bool online;              /* the last probe (or call) reached the target */
    bool probed;              /* a probe has finished at least once */
    double rtt_ms;            /* last measured; NaN when offline or not yet measured */
    double spend_usd_month;   /* estimated spend on this target this calendar month */
    double budget_usd_month;  /* NaN: no cap */
    uint64_t calls_ok, calls_failed, fallbacks, refused;
} cloud_facts;

void cloud_get_facts(cloud *c, cloud_facts *out);

/* Ask the prober for a fresh measurement now (e.g. after a failure). */
void cloud_probe_now(cloud *c);

/* ---- conversions (exposed for tests/test_cloud.c) -------------------------------- */

/* The outbound copy of a job: the whole conversation (or the raw prompt),
 * contents copied with host->alloc so hooks may replace them. */
typedef struct cloud_request {
    outpost_outbound ob;          /* target, redact, messages/prompt */
    outpost_chat_request rq;      /* points into ob after cloud_request_seal() */
    const char *stop[SCHED_MAX_STOP];
    const outpost_host *host;
} cloud_request;

/* Fill r from the job (roles by name, sampling: temperature, top_p,
 * max_tokens when set, stop strings, the seed, the request id). */
int cloud_request_from_job(cloud_request *r, const sched_job *j, const char *target,
                           const outpost_host *host, char err[256]);
/* Point r->rq at the (possibly rewritten) outbound texts. */
void cloud_request_seal(cloud_request *r);
void cloud_request_free(cloud_request *r);

/* Run the hooks over r->ob. CLOUD_EHOOK with err naming the hook when one
 * fails or leaves a text missing; CLOUD_ENOREDACT when r->ob.redact is set
 * and there is no hook at all (the request must not leave unredacted). */
int cloud_run_hooks(const cloud_hook *hooks, size_t n, cloud_request *r, char err[256]);

/* The cost estimate of tokens at price USD per 1000. */
double cloud_cost_usd(int64_t prompt_tokens, int64_t completion_tokens,
                      double price_per_1k_tokens);

/* Unix milliseconds of the start of the local calendar month containing
 * now_s (Unix seconds). */
int64_t cloud_month_start_ms(int64_t now_s);

#endif
