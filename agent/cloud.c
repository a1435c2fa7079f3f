/*
 * cloud.c - jobs answered by a peer Outpost or a cloud API through a
 * backend plugin, on a small pool of remote-call threads (see cloud.h).
 *
 * Locking: one mutex (c->mu) guards the queue, the running list, the
 * reachability facts, the spend and the counters; it is never held while a
 * plugin runs, a sink is called or the store is written, so a slow remote
 * never blocks submit(), /metrics or the prober. A job belongs to the
 * thread running it from the pop until on_done (or the hand-off to the local
 * engine); the only thing another thread does to it meanwhile is set
 * `cancel`, through c->running, which is cleared before the job is let go.
 *
 * The fallback rule: a job goes back to the local engine exactly when the
 * remote call failed before a byte of its reply reached the client (the
 * plugin reports anything else as OUTPOST_EPARTIAL or a cancellation). The
 * client then sees one answer, the local one, with route "local" and reason
 * "<target>_unreachable" in its outpost object.
 */
#include "cloud.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct cloud {
    char target[8];
    store_route route;
    const outpost_backend_ops *ops;
    void *inst;
    cloud_hook *hooks;
    size_t n_hooks;
    const outpost_host *host;
    sched **models;
    size_t n_models, default_model;
    store *st;
    double price_per_1k, budget_usd;
    double probe_interval_s;
    void (*log)(void *ud, const char *line);
    void *log_ud;

    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* a job was queued, or stop */
    pthread_cond_t cv_idle;  /* a job finished */
    pthread_cond_t cv_probe; /* probe now, or stop (CLOCK_MONOTONIC) */
    sched_job **queue;
    size_t q_cap, q_head, q_len, q_max;
    sched_job **running;     /* per thread; NULL when idle */
    size_t n_busy;
    bool closing, stop;
    pthread_t *threads;
    size_t n_threads, n_started;
    pthread_t prober;
    bool prober_started, probe_kick;

    bool online, probed;
    double rtt_ms;
    double last_probe_s;
    int fail_streak;

    double spend_usd;
    int64_t spend_month_ms;  /* the month spend_usd belongs to */
    uint64_t calls_ok, calls_failed, fallbacks, refused;
};

static void logf_(cloud *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(cloud *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (c->log)
        c->log(c->log_ud, line);
    else
        fprintf(stderr, "outpost serve: %s: %s\n", c->target, line);
}

/* ---- conversions ----------------------------------------------------------------- */

double cloud_cost_usd(int64_t prompt_tokens, int64_t completion_tokens, double price_per_1k)
{
    int64_t n = (prompt_tokens > 0 ? prompt_tokens : 0) +
                (completion_tokens > 0 ? completion_tokens : 0);
    if (!(price_per_1k > 0))
        return 0;
    return (double)n / 1000.0 * price_per_1k;
}

int64_t cloud_month_start_ms(int64_t now_s)
{
    time_t t = (time_t)now_s;
    struct tm tm;
    if (!localtime_r(&t, &tm))
        return 0;
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_isdst = -1;
    time_t m = mktime(&tm);
    return m == (time_t)-1 ? 0 : (int64_t)m * 1000;
}

static char *host_copy(const outpost_host *h, const char *s, size_t len)
{
    char *d = h->alloc(h->ctx, len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

void cloud_request_free(cloud_request *r)
{
    const outpost_host *h = r->host;
    if (!h)
        return;
    for (size_t i = 0; i < r->ob.n_messages; i++)
        if (r->ob.messages[i].content)
            h->free(h->ctx, (void *)r->ob.messages[i].content);
    free(r->ob.messages);
    if (r->ob.prompt)
        h->free(h->ctx, r->ob.prompt);
    memset(r, 0, sizeof *r);
}

int cloud_request_from_job(cloud_request *r, const sched_job *j, const char *target,
                           const outpost_host *host, char err[256])
{
    memset(r, 0, sizeof *r);
    r->host = host;
    r->ob.target = target;
    r->ob.redact = j->redact;
    if (j->raw) {
        if (!(r->ob.prompt = host_copy(host, j->prompt ? j->prompt : "", j->prompt_len)))
            goto nomem;
        r->ob.prompt_len = j->prompt_len;
    } else {
        if (j->n_msgs == 0) {
            snprintf(err, 256, "request %s: no messages to send", j->request_id);
            return CLOUD_EUSAGE;
        }
        if (!(r->ob.messages = calloc(j->n_msgs, sizeof *r->ob.messages)))
            goto nomem;
        r->ob.n_messages = j->n_msgs;
        for (size_t i = 0; i < j->n_msgs; i++) {
            outpost_message *m = &r->ob.messages[i];
            m->role = store_role_name(j->msgs[i].role);
            if (!m->role) {
                snprintf(err, 256, "request %s: message %zu has no known role", j->request_id, i);
                cloud_request_free(r);
                return CLOUD_EUSAGE;
            }
            if (!(m->content = host_copy(host, j->msgs[i].content, j->msgs[i].len)))
                goto nomem;
            m->len = j->msgs[i].len;
        }
    }
    outpost_chat_request *q = &r->rq;
    q->model = j->model[0] ? j->model : NULL;
    q->temperature = j->sampling.temp >= 0 ? j->sampling.temp : -1;
    /* top_p 1 is "off" locally and the API's default: not worth sending. */
    q->top_p = j->sampling.top_p > 0 && j->sampling.top_p < 1 ? j->sampling.top_p : -1;
    q->max_tokens = j->max_tokens > 0 ? j->max_tokens : 0;
    for (size_t i = 0; i < j->n_stop; i++)
        r->stop[i] = j->stop[i];
    q->stop = j->n_stop ? r->stop : NULL;
    q->n_stop = j->n_stop;
    q->has_seed = true;
    q->seed = (int64_t)j->sampling.seed;
    q->request_id = j->request_id[0] ? j->request_id : NULL;
    cloud_request_seal(r);
    return CLOUD_OK;
nomem:
    cloud_request_free(r);
    snprintf(err, 256, "request %s: out of memory copying it for the %s", j->request_id, target);
    return CLOUD_ENOMEM;
}

void cloud_request_seal(cloud_request *r)
{
    r->rq.messages = r->ob.prompt ? NULL : r->ob.messages;
    r->rq.n_messages = r->ob.prompt ? 0 : r->ob.n_messages;
    r->rq.prompt = r->ob.prompt;
    r->rq.prompt_len = r->ob.prompt_len;
}

int cloud_run_hooks(const cloud_hook *hooks, size_t n, cloud_request *r, char err[256])
{
    if (r->ob.redact && n == 0) {
        snprintf(err, 256, "the policy asked for PII redaction and no hook plugin is loaded "
                           "(hook-redact)");
        return CLOUD_ENOREDACT;
    }
    for (size_t i = 0; i < n; i++) {
        char herr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        if (hooks[i].ops->outbound(hooks[i].inst, &r->ob, herr)) {
            herr[sizeof herr - 1] = '\0';
            snprintf(err, 256, "hook %s: %s", hooks[i].name ? hooks[i].name : "?",
                     herr[0] ? herr : "refused the request (no reason given)");
            return CLOUD_EHOOK;
        }
        for (size_t k = 0; k < r->ob.n_messages; k++)
            if (!r->ob.messages[k].content) {
                snprintf(err, 256, "hook %s: left message %zu without content",
                         hooks[i].name ? hooks[i].name : "?", k);
                return CLOUD_EHOOK;
            }
    }
    return CLOUD_OK;
}

/* ---- spend ------------------------------------------------------------------------ */

/* Called with c->mu held: start a new month's sum when the month turns. */
static void spend_roll(cloud *c)
{
    int64_t m = cloud_month_start_ms((int64_t)time(NULL));
    if (m == c->spend_month_ms)
        return;
    c->spend_month_ms = m;
    c->spend_usd = 0;
    if (c->st && c->route == STORE_ROUTE_CLOUD) {
        char err[256];
        double usd = 0;
        if (store_requests_cost(c->st, c->route, m, &usd, err))
            logf_(c, "spend of this month unknown (counting from 0): %s", err);
        else
            c->spend_usd = usd;
    }
}

static bool over_budget(cloud *c)
{
    spend_roll(c);
    return !isnan(c->budget_usd) && c->spend_usd >= c->budget_usd;
}

/* ---- one job ------------------------------------------------------------------------ */

typedef struct call_ctx {
    cloud *c;
    sched_job *j;
    double t_first, t_last;
    int64_t n_pieces;
    bool timed_out, oom;
} call_ctx;

static bool must_stop(call_ctx *x)
{
    sched_job *j = x->j;
    if (atomic_load_explicit(&j->cancel, memory_order_relaxed))
        return true;
    if (j->deadline > 0 && sched_now() > j->deadline) {
        x->timed_out = true;
        return true;
    }
    if (j->sink.gone && j->sink.gone(j->sink.ud)) {
        atomic_store(&j->cancel, true);
        return true;
    }
    return false;
}

static int text_append(sched_job *j, const char *p, size_t n)
{
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = j->text_cap ? j->text_cap : 256;
        while (cap < j->text_len + n + 1)
            cap *= 2;
        char *t = realloc(j->text, cap);
        if (!t)
            return -1;
        j->text = t;
        j->text_cap = cap;
    }
    memcpy(j->text + j->text_len, p, n);
    j->text_len += n;
    j->text[j->text_len] = '\0';
    return 0;
}

static int on_text(void *ud, const char *text, size_t len)
{
    call_ctx *x = ud;
    sched_job *j = x->j;
    double t = sched_now();
    if (x->n_pieces == 0) {
        x->t_first = t;
        j->ttft_ms = (t - j->t_arrival) * 1e3;
    }
    x->t_last = t;
    x->n_pieces++;
    if (text_append(j, text, len)) {
        x->oom = true;
        return 1;
    }
    j->sink.on_piece(j->sink.ud, text, len);
    return must_stop(x) ? 1 : 0;
}

static int on_cancelled(void *ud) { return must_stop(ud) ? 1 : 0; }

static sched *local_model(cloud *c, const sched_job *j)
{
    for (size_t i = 0; i < c->n_models; i++)
        if (strcmp(sched_name(c->models[i]), j->model) == 0)
            return c->models[i];
    return c->n_models ? c->models[c->default_model < c->n_models ? c->default_model : 0] : NULL;
}

/* The job leaves this thread's hands: drain must no longer reach it (once
 * on_done ran or the local engine has it, it may be freed at any time). */
static void release_job(cloud *c, const sched_job *j)
{
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n_threads; i++)
        if (c->running[i] == j)
            c->running[i] = NULL;
    pthread_mutex_unlock(&c->mu);
}

/* The job's last steps on this thread: telemetry, then the sink's on_done. */
static void finish(cloud *c, sched_job *j)
{
    char err[256];
    if (!j->text && text_append(j, "", 0) && j->status == SCHED_OK) {
        j->status = SCHED_ENOMEM;
        j->finish = SCHED_FINISH_ERROR;
        snprintf(j->err, sizeof j->err, "out of memory for the reply");
    }
    if (sched_job_record(c->st, j, err))
        logf_(c, "telemetry for request %s: %s", j->request_id, err);
    release_job(c, j);
    j->sink.on_done(j->sink.ud, j);
}

static void fail(sched_job *j, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(sched_job *j, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
    j->status = status;
    j->finish = SCHED_FINISH_ERROR;
}

/* Answer the job on the device after the remote side could not: the
 * client has received nothing yet, so it gets the local answer whole. */
static void fall_back(cloud *c, sched_job *j, const char *reason, const char *why)
{
    j->route = STORE_ROUTE_LOCAL;
    snprintf(j->reason, sizeof j->reason, "%s", reason);
    snprintf(j->remote_error, sizeof j->remote_error, "%s", why);
    pthread_mutex_lock(&c->mu);
    c->fallbacks++;
    pthread_mutex_unlock(&c->mu);
    logf_(c, "%s; request %s is answered locally (%s)", why, j->request_id, reason);
    if (atomic_load(&j->cancel)) {
        j->finish = SCHED_FINISH_CANCELLED;
        finish(c, j);
        return;
    }
    sched *s = local_model(c, j);
    if (!s) {
        fail(j, SCHED_ECLOSED, "the %s could not be reached and no local model is loaded",
             c->target);
        finish(c, j);
        return;
    }
    if (!j->tokens) {
        /* sched_prepare found the prompt too long for the local context. */
        fail(j, SCHED_ETOOLONG, "the prompt does not fit the local model's context (%lld tokens), "
                                "and the %s could not be reached: %.100s",
             (long long)j->full_tokens, c->target, why);
        finish(c, j);
        return;
    }
    j->status = SCHED_OK;
    j->finish = SCHED_FINISH_NONE;
    j->err[0] = '\0';
    char err[256];
    release_job(c, j);
    int rc = sched_submit(s, j, err);
    if (rc) {
        fail(j, rc, "%s", err);
        finish(c, j);
    }
}

static sched_finish finish_of(const char *reason)
{
    if (!strcmp(reason, "length"))
        return SCHED_FINISH_LENGTH;
    return SCHED_FINISH_STOP;
}

static void mark_reachable(cloud *c, bool ok, bool unreachable)
{
    pthread_mutex_lock(&c->mu);
    if (ok) {
        c->calls_ok++;
        c->online = true;
    } else {
        c->calls_failed++;
        if (unreachable) {
            c->online = false;
            c->rtt_ms = NAN;
        }
        c->probe_kick = true;
        pthread_cond_signal(&c->cv_probe);
    }
    pthread_mutex_unlock(&c->mu);
}

static void run_job(cloud *c, sched_job *j)
{
    char err[256] = "";
    j->status = SCHED_OK;
    j->finish = SCHED_FINISH_NONE;
    call_ctx x = {.c = c, .j = j};
    if (must_stop(&x)) {
        if (x.timed_out)
            fail(j, SCHED_ETIMEOUT, "the request ran past its time limit");
        else
            j->finish = SCHED_FINISH_CANCELLED;
        finish(c, j);
        return;
    }
    cloud_request r;
    int rc = cloud_request_from_job(&r, j, c->target, c->host, err);
    if (rc) {
        fail(j, rc == CLOUD_ENOMEM ? SCHED_ENOMEM : SCHED_EINPUT, "%s", err);
        finish(c, j);
        return;
    }
    rc = cloud_run_hooks(c->hooks, c->n_hooks, &r, err);
    if (rc) {
        cloud_request_free(&r);
        fall_back(c, j, rc == CLOUD_ENOREDACT ? "redact_unavailable" : "hook_refused", err);
        return;
    }
    cloud_request_seal(&r);
    outpost_stream s = {.ud = &x, .on_text = on_text, .cancelled = on_cancelled};
    outpost_chat_result res;
    char perr[OUTPOST_PLUGIN_ERR_SIZE] = "";
    rc = c->ops->chat(c->inst, &r.rq, &s, &res, perr);
    perr[sizeof perr - 1] = '\0';
    cloud_request_free(&r);

    if (rc != OUTPOST_OK && rc != OUTPOST_ECANCELLED && x.n_pieces == 0 && !x.oom) {
        mark_reachable(c, false, rc == OUTPOST_EUNREACHABLE);
        char reason[POL_REASON_MAX];
        snprintf(reason, sizeof reason, "%s_unreachable", c->target);
        fall_back(c, j, reason, perr[0] ? perr : "the remote call failed");
        return;
    }
    if (x.oom) {
        fail(j, SCHED_ENOMEM, "out of memory for the reply");
    } else if (rc == OUTPOST_OK) {
        mark_reachable(c, true, false);
        j->finish = finish_of(res.finish_reason);
    } else if (rc == OUTPOST_ECANCELLED) {
        if (x.timed_out)
            fail(j, SCHED_ETIMEOUT, "the request ran past its time limit");
        else
            j->finish = SCHED_FINISH_CANCELLED;
    } else {
        mark_reachable(c, false, false);
        fail(j, SCHED_EREMOTE, "the %s failed after part of its reply: %s", c->target, perr);
        snprintf(j->remote_error, sizeof j->remote_error, "%s", perr);
        logf_(c, "request %s: %s", j->request_id, j->err);
    }
    /* A remote Outpost's own decision goes back to the client (the
     * response's outpost.remote). */
    snprintf(j->remote_route, sizeof j->remote_route, "%s", res.remote_route);
    snprintf(j->remote_reason, sizeof j->remote_reason, "%s", res.remote_reason);
    if (res.remote_route[0] && rc == OUTPOST_OK && c->route == STORE_ROUTE_PEER &&
        strcmp(res.remote_route, "local") != 0)
        logf_(c, "request %s: the peer answered on its route %s (%s)", j->request_id,
              res.remote_route, res.remote_reason);

    /* What the remote reported, else what we counted (pieces are about a
     * token each) and what the local tokenizer made of the prompt. */
    j->prompt_tokens = res.prompt_tokens >= 0 ? res.prompt_tokens : j->full_tokens;
    j->completion_tokens = res.completion_tokens >= 0 ? res.completion_tokens : x.n_pieces;
    j->cached_tokens = 0;
    if (j->completion_tokens >= 2 && x.t_last > x.t_first)
        j->decode_tok_s = (double)(j->completion_tokens - 1) / (x.t_last - x.t_first);
    j->cost_usd = cloud_cost_usd(j->prompt_tokens, j->completion_tokens, c->price_per_1k);
    if (j->cost_usd > 0) {
        pthread_mutex_lock(&c->mu);
        spend_roll(c);
        c->spend_usd += j->cost_usd;
        pthread_mutex_unlock(&c->mu);
    }
    finish(c, j);
}

/* ---- threads ------------------------------------------------------------------------- */

typedef struct worker_arg {
    cloud *c;
    size_t slot;
} worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *w = arg;
    cloud *c = w->c;
    size_t slot = w->slot;
    free(w);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->q_len == 0 && !c->stop)
            pthread_cond_wait(&c->cv_work, &c->mu);
        if (c->q_len == 0)
            break;
        sched_job *j = c->queue[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        c->running[slot] = j;
        c->n_busy++;
        pthread_mutex_unlock(&c->mu);
        run_job(c, j); /* clears running[slot] before the job is let go */
        pthread_mutex_lock(&c->mu);
        c->n_busy--;
        pthread_cond_broadcast(&c->cv_idle);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void deadline_in(struct timespec *ts, double s)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    double sec = floor(s);
    ts->tv_sec += (time_t)sec;
    ts->tv_nsec += (long)((s - sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *prober_main(void *arg)
{
    cloud *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        c->probe_kick = false;
        pthread_mutex_unlock(&c->mu);
        double rtt = NAN;
        char perr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        int rc = c->ops->probe(c->inst, &rtt, perr);
        perr[sizeof perr - 1] = '\0';
        pthread_mutex_lock(&c->mu);
        bool was_online = c->online, first = !c->probed;
        c->probed = true;
        c->last_probe_s = sched_now();
        if (rc == OUTPOST_OK) {
            c->online = true;
            c->rtt_ms = rtt;
            c->fail_streak = 0;
        } else {
            c->online = false;
            c->rtt_ms = NAN;
            c->fail_streak++;
        }
        bool now_online = c->online;
        int streak = c->fail_streak;
        pthread_mutex_unlock(&c->mu);
        if (now_online && (first || !was_online))
            logf_(c, "reachable (round trip %.1f ms)", rtt);
        else if (!now_online && (first || was_online || streak == 1))
            logf_(c, "unreachable: %s", perr[0] ? perr : "probe failed");
        pthread_mutex_lock(&c->mu);
        /* Online: the regular interval. Down: 1, 2, 4, ... s up to it. */
        double wait = c->probe_interval_s;
        if (!c->online) {
            double b = (double)(1u << (streak < 6 ? streak - 1 : 5));
            if (b < wait)
                wait = b;
        }
        struct timespec until;
        deadline_in(&until, wait);
        while (!c->stop && !c->probe_kick) {
            int w = pthread_cond_timedwait(&c->cv_probe, &c->mu, &until);
            if (w == ETIMEDOUT)
                break;
        }
        /* A kick right after a probe waits a second: failures in a burst
         * cost one probe, not one each. */
        if (c->probe_kick && !c->stop && sched_now() - c->last_probe_s < 1.0) {
            deadline_in(&until, 1.0 - (sched_now() - c->last_probe_s));
            while (!c->stop && pthread_cond_timedwait(&c->cv_probe, &c->mu, &until) != ETIMEDOUT)
                ;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

void cloud_probe_now(cloud *c)
{
    pthread_mutex_lock(&c->mu);
    c->probe_kick = true;
    pthread_cond_signal(&c->cv_probe);
    pthread_mutex_unlock(&c->mu);
}

/* ---- the backend ------------------------------------------------------------------------ */

static int cloud_submit(void *ud, sched_job *j, char err[256])
{
    cloud *c = ud;
    pthread_mutex_lock(&c->mu);
    int rc = SCHED_OK;
    if (c->closing) {
        snprintf(err, 256, "the %s backend is shutting down", c->target);
        rc = SCHED_ECLOSED;
    } else if (c->probed && !c->online) {
        snprintf(err, 256, "the %s is unreachable (last probe failed)", c->target);
        rc = SCHED_ECLOSED;
    } else if (c->route == STORE_ROUTE_CLOUD && over_budget(c)) {
        snprintf(err, 256, "the %s budget of %.2f USD this month is spent (%.4f USD)",
                 c->target, c->budget_usd, c->spend_usd);
        j->route = STORE_ROUTE_LOCAL;
        snprintf(j->reason, sizeof j->reason, "over_budget");
        rc = SCHED_ECLOSED;
    } else if (c->q_len >= (c->n_threads - c->n_busy) + c->q_max) {
        snprintf(err, 256, "all %zu %s calls are busy and %zu wait", c->n_threads, c->target,
                 c->q_len);
        j->route = STORE_ROUTE_LOCAL;
        snprintf(j->reason, sizeof j->reason, "%s_busy", c->target);
        rc = SCHED_EFULL;
    } else {
        c->queue[(c->q_head + c->q_len) % c->q_cap] = j;
        c->q_len++;
        pthread_cond_signal(&c->cv_work);
    }
    if (rc)
        c->refused++;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

sched_backend cloud_backend(cloud *c)
{
    return (sched_backend){.name = c->target, .ud = c, .submit = cloud_submit};
}

const char *cloud_target(const cloud *c) { return c->target; }

void cloud_get_facts(cloud *c, cloud_facts *out)
{
    pthread_mutex_lock(&c->mu);
    spend_roll(c);
    *out = (cloud_facts){
        .online = c->online,
        .probed = c->probed,
        .rtt_ms = c->online ? c->rtt_ms : NAN,
        .spend_usd_month = c->spend_usd,
        .budget_usd_month = c->budget_usd,
        .calls_ok = c->calls_ok,
        .calls_failed = c->calls_failed,
        .fallbacks = c->fallbacks,
        .refused = c->refused,
    };
    pthread_mutex_unlock(&c->mu);
}

/* ---- lifetime ---------------------------------------------------------------------------- */

int cloud_drain(cloud *c, int timeout_ms)
{
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    struct timespec until;
    deadline_in(&until, timeout_ms > 0 ? timeout_ms / 1e3 : 0);
    while (c->q_len + c->n_busy > 0 && timeout_ms > 0)
        if (pthread_cond_timedwait(&c->cv_idle, &c->mu, &until) == ETIMEDOUT)
            break;
    int n = 0;
    for (size_t i = 0; i < c->q_len; i++, n++)
        atomic_store(&c->queue[(c->q_head + i) % c->q_cap]->cancel, true);
    for (size_t i = 0; i < c->n_threads; i++)
        if (c->running[i]) {
            atomic_store(&c->running[i]->cancel, true);
            n++;
        }
    while (c->q_len + c->n_busy > 0)
        pthread_cond_wait(&c->cv_idle, &c->mu);
    pthread_mutex_unlock(&c->mu);
    return n;
}

void cloud_close(cloud *c)
{
    if (!c)
        return;
    if (c->n_started || c->prober_started)
        cloud_drain(c, 0);
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_broadcast(&c->cv_work);
    pthread_cond_broadcast(&c->cv_probe);
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < c->n_started; i++)
        pthread_join(c->threads[i], NULL);
    if (c->prober_started)
        pthread_join(c->prober, NULL);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_idle);
    pthread_cond_destroy(&c->cv_probe);
    pthread_mutex_destroy(&c->mu);
    free(c->threads);
    free(c->running);
    free(c->queue);
    free(c->hooks);
    free(c);
}

int cloud_open(cloud **out, const cloud_opts *o, char err[256])
{
    *out = NULL;
    if (!o || !o->target || (strcmp(o->target, "peer") && strcmp(o->target, "cloud")) ||
        !o->ops || !o->ops->chat || !o->ops->probe || !o->host || !o->host->alloc ||
        !o->host->free || (o->n_hooks && !o->hooks)) {
        snprintf(err, 256, "cloud_open: needs a target (peer or cloud), a backend table and "
                           "instance, and a host with alloc/free");
        return CLOUD_EUSAGE;
    }
    cloud *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, 256, "out of memory");
        return CLOUD_ENOMEM;
    }
    snprintf(c->target, sizeof c->target, "%s", o->target);
    _Static_assert(sizeof c->target <= sizeof ((sched_job *)0)->remote_target,
                   "a target name fits sched_job.remote_target");
    c->route = strcmp(o->target, "peer") == 0 ? STORE_ROUTE_PEER : STORE_ROUTE_CLOUD;
    c->ops = o->ops;
    c->inst = o->inst;
    c->host = o->host;
    c->models = o->models;
    c->n_models = o->n_models;
    c->default_model = o->default_model;
    c->st = o->st;
    c->price_per_1k = o->price_per_1k_tokens > 0 ? o->price_per_1k_tokens : 0;
    c->budget_usd = o->budget_usd_month;
    c->probe_interval_s = o->probe_interval_s > 0 ? o->probe_interval_s : 30;
    c->log = o->log;
    c->log_ud = o->log_ud;
    c->rtt_ms = NAN;
    c->spend_month_ms = -1;
    c->n_threads = o->threads > 0 ? (size_t)o->threads : 4;
    c->q_max = o->queue_max < 0 ? 0 : o->queue_max == 0 ? 8 : (size_t)o->queue_max;
    c->q_cap = c->n_threads + c->q_max;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv_work, NULL);
    pthread_cond_init(&c->cv_idle, &ca);
    pthread_cond_init(&c->cv_probe, &ca);
    pthread_condattr_destroy(&ca);
    c->queue = calloc(c->q_cap, sizeof *c->queue);
    c->running = calloc(c->n_threads, sizeof *c->running);
    c->threads = calloc(c->n_threads, sizeof *c->threads);
    if (o->n_hooks && (c->hooks = calloc(o->n_hooks, sizeof *c->hooks)))
        memcpy(c->hooks, o->hooks, o->n_hooks * sizeof *c->hooks);
    c->n_hooks = c->hooks ? o->n_hooks : 0;
    if (!c->queue || !c->running || !c->threads || (o->n_hooks && !c->hooks)) {
        cloud_close(c);
        snprintf(err, 256, "out of memory");
        return CLOUD_ENOMEM;
    }
    pthread_mutex_lock(&c->mu);
    spend_roll(c);
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < c->n_threads; i++) {
        worker_arg *w = malloc(sizeof *w);
        if (w)
            *w = (worker_arg){.c = c, .slot = i};
        if (!w || pthread_create(&c->threads[i], NULL, worker_main, w)) {
            free(w);
            cloud_close(c);
            snprintf(err, 256, "cannot start the %s call threads", o->target);
            return CLOUD_ETHREAD;
        }
        c->n_started++;
    }
    if (pthread_create(&c->prober, NULL, prober_main, c)) {
        cloud_close(c);
        snprintf(err, 256, "cannot start the %s prober thread", o->target);
        return CLOUD_ETHREAD;
    }
    c->prober_started = true;
    *out = c;
    return CLOUD_OK;
}
