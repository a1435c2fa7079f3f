/*
 * scheduler.h - the local backend: one engine worker thread per loaded model,
 * fed by a bounded queue of jobs (the sched_ module).
 *
 * A sched owns a model, the one eng_ctx that evaluates it, and the thread
 * that drives that context. Jobs wait in a FIFO of fixed size (full: the
 * caller answers 429); the worker runs one at a time, evaluates only the
 * part of the prompt that differs from the tokens its KV cache already holds
 * (longest common prefix), samples with the job's parameters and hands each
 * piece of text to the job's sink as soon as it is known not to be part of a
 * stop string.
 *
 * The KV cache of a session can outlive the worker's one live cache: when
 * the worker turns from a session to other work, and when it stops, it
 * saves the session's cache to <kv_dir>/<session>.kv (within a disk budget,
 * least recently used sessions evicted first), and a later turn of that
 * session starts from the file when the live cache holds something else.
 * See scheduler.c for when exactly.
 *
 * A job is a plain record passed between modules. The caller (the HTTP
 * front) creates it, fills in the request, prepares it (sched_prepare:
 * chat template, tokenize, fit into the context) and hands it to a backend:
 * the local engine (sched_submit) or, later, a remote one behind the same
 * sched_backend interface. From then on the backend writes the result fields
 * and calls the sink from its own thread; its last call is always on_done,
 * after which it never touches the job again and the caller frees it. The
 * only field the caller may change meanwhile is `cancel`.
 *
 * (The file is scheduler.h, not sched.h: that name would hide the C
 * library's <sched.h>, which <pthread.h> includes, for every file built with
 * agent/ on the include path.)
 */
#ifndef OUTPOST_SCHED_H
#define OUTPOST_SCHED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine.h"
#include "pol.h"
#include "sample.h"
#include "store.h"

enum {
    SCHED_OK = 0,
    SCHED_EFULL = -1,    /* the queue is full: try again later */
    SCHED_ECLOSED = -2,  /* the scheduler is draining or stopped */
    SCHED_ENOMEM = -3,
    SCHED_ETOOLONG = -4, /* the prompt does not fit in the context, even cut */
    SCHED_EINPUT = -5,   /* nothing to evaluate, bad parameters */
    SCHED_EENGINE = -6,  /* the engine failed while evaluating */
    SCHED_ELOAD = -7,    /* the model could not be loaded */
    SCHED_ETIMEOUT = -8, /* the request's deadline passed (text so far is kept) */
    SCHED_EREMOTE = -9,  /* a peer or cloud backend failed after part of its reply */
};

#define SCHED_MAX_STOP 16
#define SCHED_ID_MAX 64

typedef enum sched_finish {
    SCHED_FINISH_NONE,      /* not finished (or never started) */
    SCHED_FINISH_STOP,      /* end-of-generation token or a stop string */
    SCHED_FINISH_LENGTH,    /* max_tokens, or the context is full */
    SCHED_FINISH_CANCELLED, /* the client went away or the agent is stopping */
    SCHED_FINISH_ERROR,
} sched_finish;

/* "stop", "length", "cancelled", "error"; NULL for NONE. */
const char *sched_finish_name(sched_finish f);

typedef struct sched_job sched_job;

/* One message of a conversation; content is NUL-terminated, len bytes. */
typedef struct sched_msg {
    store_role role;
    char *content;
    size_t len;
} sched_msg;

/* Where results go. Called on the backend's thread, never concurrently for
 * one job. on_piece gets valid UTF-8 only, never a part of a stop string.
 * gone (optional) is asked before every token whether the client is still
 * there; true cancels the job just like setting `cancel`. */
typedef struct sched_sink {
    void *ud;
    void (*on_piece)(void *ud, const char *text, size_t len);
    void (*on_done)(void *ud, sched_job *job);
    bool (*gone)(void *ud);
} sched_sink;

struct sched_job {
    /* ---- the request, filled in by the caller ---- */
    sched_msg *msgs;          /* chat: the whole conversation; owned by the job */
    size_t n_msgs, cap_msgs;
    size_t n_history;         /* msgs[0..n_history) came from the session store */
    bool raw;                 /* a plain completion: prompt is used as given */
    char *prompt;             /* raw prompt text, owned (NUL-terminated) */
    size_t prompt_len;
    smp_params sampling;
    int64_t max_tokens;       /* <= 0: the scheduler's default */
    char *stop[SCHED_MAX_STOP];
    size_t n_stop;
    char session_id[STORE_ID_SIZE]; /* "" when the request names no session */
    uid_t uid;                /* the client, for the session's messages */
    char request_id[SCHED_ID_MAX];
    char model[STORE_NAME_MAX + 1]; /* the model name reported and recorded */
    store_route route;        /* where it was answered, with the policy's reason */
    char reason[POL_REASON_MAX];
    bool redact;              /* the policy asked for PII to be replaced before the
                                 request leaves the device (remote backends' hooks) */
    double t_arrival;         /* sched_now() when the request was complete */
    double deadline;          /* sched_now() time the job must end by; 0: none */
    sched_sink sink;
    atomic_bool cancel;

    /* ---- written by sched_prepare ---- */
    int32_t *tokens;          /* the prompt as evaluated; NULL after SCHED_ETOOLONG */
    size_t n_tokens;
    int64_t full_tokens;      /* the whole prompt before any cut: what the policy
                                 weighs, and what a remote backend would get */
    size_t n_dropped;         /* oldest messages left out to fit the context */
    bool truncated;           /* messages or prompt tokens were left out */

    /* ---- the result, written by the backend before on_done ---- */
    int status;               /* SCHED_OK or the failure */
    char err[256];
    sched_finish finish;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double ttft_ms;           /* arrival to first token; < 0: none */
    double decode_tok_s, token_p50_ms, token_p95_ms; /* < 0: not measured */
    char *text;               /* everything sent to on_piece, NUL-terminated */
    double cost_usd;          /* cloud cost estimate (0 for local), recorded with it */
    size_t text_len, text_cap;

    /* ---- a remote target's part, for the response's outpost.remote ---- */
    char remote_target[8];    /* "peer" or "cloud" when the job was sent to one
                                 (set by the caller); "" when it never was */
    char remote_route[16];    /* what a remote Outpost decided for the job (its
                                 reply's outpost object, written by the remote */
    char remote_reason[64];   /* backend); "" when it said nothing (a cloud API) */
    char remote_error[256];   /* why the remote call failed or was refused */
};

/* A zeroed job with the defaults (sampling as smp_params_default, no
 * measurements); NULL when out of memory. */
sched_job *sched_job_new(void);
void sched_job_free(sched_job *j);
/* Append a message (content copied); SCHED_ENOMEM or SCHED_EINPUT. */
int sched_job_add_msg(sched_job *j, store_role role, const char *content, size_t len);
/* Set the raw prompt (copied). */
int sched_job_set_prompt(sched_job *j, const char *text, size_t len);
/* Add a stop string (copied); at most SCHED_MAX_STOP, non-empty. */
int sched_job_add_stop(sched_job *j, const char *text, size_t len);

/* Write what the finished job leaves behind into the store: its telemetry
 * row always, and the conversation's new messages plus the reply when it
 * names a session and completed (a failed or cancelled turn is not saved,
 * so the client can retry it). Any backend calls this before on_done. */
int sched_job_record(store *st, const sched_job *j, char err[256]);

/* Monotonic clock in seconds (the time base of t_arrival). */
double sched_now(void);

typedef struct sched_opts {
    const char *name;          /* the model's name in the API */
    const char *path;          /* GGUF file */
    int32_t n_ctx;             /* <= 0: the training context, at most 4096 */
    int32_t n_threads;         /* <= 0: online cores */
    int32_t n_batch;           /* <= 0: 512 */
    qt_type kv_type;           /* QT_F16 or QT_Q8_0 */
    int queue_max;             /* jobs waiting besides the running one; <= 0: 16 */
    int64_t max_tokens_default; /* when the request sets none; <= 0: 256 */
    int64_t max_tokens_limit;  /* requests asking more get this; <= 0: no limit */
    int64_t max_prompt_tokens; /* prompts longer are cut; <= 0: the context */
    const char *chat_template; /* a chat_ family name; NULL: from the model's metadata */
    bool warmup;               /* evaluate a token at load so the first request is fast */
    store *st;                 /* telemetry and sessions; NULL: nothing recorded */
    /* Saved KV states of sessions (needs st): the directory they go to
     * (it must exist; NULL: none are saved or restored) and the disk budget
     * all of them share (<= 0: none are kept; sched_open removes any left
     * by an earlier run). */
    const char *kv_dir;
    int64_t kv_budget_bytes;
} sched_opts;

typedef struct sched sched;

/* Load the model, create its context, warm it up, start the worker. */
int sched_open(sched **out, const sched_opts *o, char err[256]);
/* Cancel what is left, stop the worker, free everything. Every job handed
 * in has had its on_done by the time this returns. */
void sched_close(sched *s);

const char *sched_name(const sched *s);
const eng_model *sched_model(const sched *s);
int32_t sched_n_ctx(const sched *s);

/* Render, tokenize and fit the job's prompt into the context: cut the
 * oldest messages after the leading system prompt (or the oldest tokens of
 * a raw prompt, after BOS) until the prompt leaves room for the reply, and
 * say so in truncated. Uses only immutable model data, so any thread may
 * call it while the worker runs. SCHED_ETOOLONG when even the system prompt
 * and the last message do not fit. */
int sched_prepare(sched *s, sched_job *j, char err[256]);

/* Queue a prepared job. SCHED_EFULL when the queue is full, SCHED_ECLOSED
 * while draining; on failure the job was not taken (no on_done). */
int sched_submit(sched *s, sched_job *j, char err[256]);

/* Stop taking jobs, wait up to timeout_ms for queued and running ones to
 * finish, then cancel the rest and wait for them (they stop at their next
 * token). Returns how many had to be cancelled. */
int sched_drain(sched *s, int timeout_ms);

/* Hot-swap the LoRA adapter (GGUF, engine/lora.c) of this model: path NULL
 * detaches. The adapter is opened here (its errors are SCHED_ELOAD) and
 * attached by the worker between two jobs: the running job finishes with
 * the old adapter, every later one uses the new. The live KV cache is
 * dropped (it was computed with the old adapter). Blocks until attached;
 * SCHED_ECLOSED while draining. Any thread. */
int sched_set_adapter(sched *s, const char *path, char err[256]);

/* Latency histograms: upper bounds in milliseconds (the +Inf bucket is
 * implicit, after the last). */
#define SCHED_TTFT_BUCKETS 12
#define SCHED_TOKEN_BUCKETS 12
extern const double sched_ttft_bounds_ms[SCHED_TTFT_BUCKETS];
extern const double sched_token_bounds_ms[SCHED_TOKEN_BUCKETS];

typedef struct sched_stats {
    int64_t queue_depth;       /* jobs waiting, not counting the running one */
    int64_t queue_max;
    bool busy;                 /* a job is running */
    double decode_tok_s;       /* moving average over recent jobs; NaN before any */
    double job_s;              /* moving average of a job's run time; NaN before any */
    uint64_t jobs, jobs_cancelled, jobs_failed;
    uint64_t prompt_tokens, completion_tokens, cached_tokens;
    uint64_t ttft_counts[SCHED_TTFT_BUCKETS + 1]; /* per bucket, not cumulative */
    double ttft_sum_ms;
    uint64_t token_counts[SCHED_TOKEN_BUCKETS + 1];
    double token_sum_ms;
    /* saved KV states: written, restored into the live cache, refused on
     * restore (damaged, from another model), and removed to fit the budget */
    uint64_t kv_saves, kv_restores, kv_restore_failures, kv_evictions;
} sched_stats;

void sched_get_stats(sched *s, sched_stats *out);

/* Anything that answers jobs: the local engine or a remote backend
 * (peer/cloud plugins, agent/cloud.h). submit has sched_submit's contract.
 * A remote backend that refuses a job may first set job->route to
 * STORE_ROUTE_LOCAL and job->reason to say why (e.g. "over_budget"); a
 * refusal that leaves the route as it was is answered locally with reason
 * "<name>_unreachable". */
typedef struct sched_backend {
    const char *name;
    void *ud;
    int (*submit)(void *ud, sched_job *job, char err[256]);
} sched_backend;

/* The local engine as a backend. */
sched_backend sched_backend_local(sched *s);

#endif
