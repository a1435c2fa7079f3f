/*
 * backend_openai.c - the `backend-openai` plugin: answers chat and
 * completion requests through an OpenAI-compatible HTTP(S) API with
 * libcurl, for both of the agent's remote targets.
 *
 *   cloud  url is the API base (https://api.example.com/v1): POST
 *          <url>/chat/completions or <url>/completions, probe GET <url>/models.
 *   peer   url is another Outpost (http(s)://host:port, a trailing /v1 is
 *          dropped): POST <url>/v1/chat/completions with "outpost":
 *          {"route":"local"} in the body, so the peer answers itself and a
 *          request never bounces between two agents; probe GET <url>/health.
 *
 * A call asks for a stream ("stream": true, stream_options.include_usage)
 * and hands every piece of text to the caller as soon as its event is
 * complete (openai_wire.c reads the events); a server that answers with one
 * JSON object instead is read as such. Failures before any text reached the
 * caller are retried - connect errors, timeouts of an attempt, HTTP 408,
 * 429 and 5xx, a stream cut before its end - with exponential backoff and
 * jitter (retry_backoff_ms, 250 by default, doubling up to 16 times that,
 * times a random 0.5..1; a 429's
 * Retry-After is honoured), all within the instance's overall timeout. Once
 * text has been relayed nothing is retried: the caller already has part of
 * an answer, so the failure is OUTPOST_EPARTIAL. Other 4xx are the request's
 * or the key's fault and are not retried either.
 *
 * Invariants: TLS peers and host names are verified (libcurl's defaults,
 * set explicitly); only http and https are spoken and redirects are not
 * followed (a redirect must not carry the bearer key elsewhere). What the
 * remote sends is bounded: an unfinished event by OAW_MAX_EVENT_BYTES, an
 * error body by ERR_BODY_MAX. One instance may serve many calls at once:
 * each call has its own easy handle; connections, DNS and TLS sessions are
 * shared between them (a curl share with one lock per kind of data), so
 * calls and probes after the first reuse a warm connection.
 *
 * Ownership: an instance owns copies of its configuration; nothing a call
 * returns is allocated.
 */
#include "openai_wire.h"
#include "outpost_plugin.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ERR_BODY_MAX 4096
#define BACKOFF_BASE_MS 250.0
#define BACKOFF_MAX_FACTOR 16.0
#define PROBE_TIMEOUT_MS 5000L

typedef struct oai {
    const outpost_host *host;
    char name[32];
    bool outpost;        /* the remote is an Outpost (target "peer") */
    char *chat_url, *completion_url, *probe_url;
    char *model;         /* NULL: the request's */
    char *auth_header;   /* "Authorization: Bearer ..."; NULL: none */
    char *agent_header;  /* "User-Agent: outpost/..." */
    long connect_timeout_ms, timeout_ms;
    int retries;
    double backoff_ms;   /* before the first retry */
    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
} oai;

static void errf(char err[OUTPOST_PLUGIN_ERR_SIZE], const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void errf(char err[OUTPOST_PLUGIN_ERR_SIZE], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, OUTPOST_PLUGIN_ERR_SIZE, fmt, ap);
    va_end(ap);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- lifetime -------------------------------------------------------------- */

static int plugin_init(const outpost_host *host, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    (void)host;
    CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (cc != CURLE_OK) {
        errf(err, "libcurl did not initialise: %s", curl_easy_strerror(cc));
        return OUTPOST_EINPUT;
    }
    return OUTPOST_OK;
}

static void plugin_fini(void) { curl_global_cleanup(); }

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud)
{
    (void)h;
    (void)access;
    oai *in = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&in->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    (void)h;
    oai *in = ud;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&in->share_mu[data]);
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static void oai_close(void *inst)
{
    oai *in = inst;
    if (!in)
        return;
    if (in->share)
        curl_share_cleanup(in->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&in->share_mu[i]);
    free(in->chat_url);
    free(in->completion_url);
    free(in->probe_url);
    free(in->model);
    free(in->auth_header);
    free(in->agent_header);
    free(in);
}

static int oai_open(const outpost_host *host, const outpost_backend_config *cfg, void **inst,
                    char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    *inst = NULL;
    if (!cfg || !cfg->url || !cfg->name) {
        errf(err, "backend-openai: the configuration needs a name and a url");
        return OUTPOST_EINPUT;
    }
    const char *u = cfg->url;
    if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) {
        errf(err, "backend-openai %s: url \"%.100s\": expected http:// or https://", cfg->name, u);
        return OUTPOST_EINPUT;
    }
    if (cfg->api_key && strpbrk(cfg->api_key, "\r\n")) {
        errf(err, "backend-openai %s: api_key: contains a line break", cfg->name);
        return OUTPOST_EINPUT;
    }
    oai *in = calloc(1, sizeof *in);
    if (!in) {
        errf(err, "backend-openai: out of memory");
        return OUTPOST_ENOMEM;
    }
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&in->share_mu[i], NULL);
    in->host = host;
    snprintf(in->name, sizeof in->name, "%s", cfg->name);
    in->outpost = strcmp(cfg->name, "peer") == 0;
    in->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 5000;
    in->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 300000;
    in->retries = cfg->retries >= 0 ? cfg->retries : 0;
    in->backoff_ms = cfg->retry_backoff_ms > 0 ? cfg->retry_backoff_ms : BACKOFF_BASE_MS;

    /* The base without trailing slashes (and, for an Outpost, without /v1). */
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/')
        n--;
    if (in->outpost && n >= 3 && memcmp(u + n - 3, "/v1", 3) == 0)
        n -= 3;
    char *base = malloc(n + 1);
    if (base) {
        memcpy(base, u, n);
        base[n] = '\0';
        const char *api = in->outpost ? "/v1" : "";
        char *b2 = join(base, api);
        if (b2) {
            in->chat_url = join(b2, "/chat/completions");
            in->completion_url = join(b2, "/completions");
            free(b2);
        }
        in->probe_url = join(base, in->outpost ? "/health" : "/models");
        free(base);
    }
    if (cfg->model && cfg->model[0])
        in->model = strdup(cfg->model);
    if (cfg->api_key && cfg->api_key[0])
        in->auth_header = join("Authorization: Bearer ", cfg->api_key);
    in->agent_header = join("User-Agent: outpost/",
                            host && host->agent_version ? host->agent_version : "unknown");
    if (!in->chat_url || !in->completion_url || !in->probe_url || !in->agent_header ||
        (cfg->model && cfg->model[0] && !in->model) ||
        (cfg->api_key && cfg->api_key[0] && !in->auth_header))
        goto nomem;
    if (!(in->share = curl_share_init()))
        goto nomem;
    curl_share_setopt(in->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(in->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(in->share, CURLSHOPT_USERDATA, in);
    curl_share_setopt(in->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(in->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(in->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    *inst = in;
    return OUTPOST_OK;
nomem:
    oai_close(in);
    errf(err, "backend-openai %s: out of memory", cfg->name);
    return OUTPOST_ENOMEM;
}

/* ---- one HTTP exchange -------------------------------------------------------- */

typedef enum body_mode { BODY_UNKNOWN, BODY_SSE, BODY_WHOLE, BODY_ERROR, BODY_DISCARD } body_mode;

typedef struct xfer {
    CURL *curl;
    const outpost_stream *s; /* NULL for a probe */
    body_mode mode;
    long status;
    oaw_reader rd;
    int rd_rc;
    char ebody[ERR_BODY_MAX];
    size_t ebody_len;
    double retry_after_s;   /* from a Retry-After header; 0: none */
    char curl_err[CURL_ERROR_SIZE];
} xfer;

static int relay_text(void *ud, const char *text, size_t len)
{
    const outpost_stream *s = ((xfer *)ud)->s;
    return s && s->on_text ? s->on_text(s->ud, text, len) : 0;
}

static body_mode decide_mode(xfer *x, const char *first, size_t n)
{
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &x->status);
    if (!x->s)
        return BODY_DISCARD;
    if (x->status < 200 || x->status >= 300)
        return BODY_ERROR;
    char *ct = NULL;
    curl_easy_getinfo(x->curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct)
        return strncasecmp(ct, "text/event-stream", 17) == 0 ? BODY_SSE : BODY_WHOLE;
    /* No content type: a JSON object starts with '{', an event stream not. */
    for (size_t i = 0; i < n; i++)
        if (first[i] != ' ' && first[i] != '\t' && first[i] != '\r' && first[i] != '\n')
            return first[i] == '{' ? BODY_WHOLE : BODY_SSE;
    return BODY_SSE;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (x->mode == BODY_UNKNOWN)
        x->mode = decide_mode(x, p, n);
    switch (x->mode) {
    case BODY_SSE: x->rd_rc = oaw_sse_feed(&x->rd, p, n); break;
    case BODY_WHOLE: x->rd_rc = oaw_body_feed(&x->rd, p, n); break;
    case BODY_ERROR: {
        size_t room = sizeof x->ebody - 1 - x->ebody_len;
        size_t k = n < room ? n : room;
        memcpy(x->ebody + x->ebody_len, p, k);
        x->ebody_len += k;
        x->ebody[x->ebody_len] = '\0';
        break;
    }
    default: break;
    }
    return x->rd_rc ? 0 : n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (n > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
        char buf[32];
        size_t k = n - 12 < sizeof buf - 1 ? n - 12 : sizeof buf - 1;
        memcpy(buf, p + 12, k);
        buf[k] = '\0';
        char *end;
        double v = strtod(buf, &end);
        /* Delta-seconds only; an HTTP date is left to our own backoff. */
        if (end != buf && v >= 0 && v < 86400)
            x->retry_after_s = v;
    }
    return n;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    const outpost_stream *s = ((xfer *)ud)->s;
    return s && s->cancelled && s->cancelled(s->ud) ? 1 : 0;
}

static struct curl_slist *add_header(struct curl_slist *h, const char *line, bool *ok)
{
    if (!*ok || !line)
        return h;
    struct curl_slist *n = curl_slist_append(h, line);
    if (!n) {
        *ok = false;
        return h;
    }
    return n;
}

/* A fresh easy handle with what every exchange shares. */
static CURL *easy_new(oai *in, xfer *x, const char *url, long timeout_ms)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    x->curl = c;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_SHARE, in->share);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     in->connect_timeout_ms < timeout_ms ? in->connect_timeout_ms : timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->curl_err);
    return c;
}

/* Transport failures worth another attempt: the network, not the setup. */
static bool curl_retryable(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
#ifdef CURLE_HTTP2
    case CURLE_HTTP2:
#endif
#ifdef CURLE_HTTP2_STREAM
    case CURLE_HTTP2_STREAM:
#endif
        return true;
    default: return false;
    }
}

static const char *curl_why(const xfer *x, CURLcode cc)
{
    return x->curl_err[0] ? x->curl_err : curl_easy_strerror(cc);
}

/* One attempt at the call. *retryable says whether another may succeed;
 * *relayed_bytes how much text the caller got. */
static int attempt(oai *in, const char *url, const char *body, struct curl_slist *hdr,
                   const outpost_stream *s, long timeout_ms, outpost_chat_result *res,
                   bool *retryable, double *retry_after_s, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    xfer x = {.s = s};
    oaw_reader_init(&x.rd, relay_text, &x, 0);
    *retryable = false;
    *retry_after_s = 0;
    CURL *c = easy_new(in, &x, url, timeout_ms);
    if (!c) {
        errf(err, "%s: libcurl could not create a handle", url);
        oaw_reader_free(&x.rd);
        return OUTPOST_ENOMEM;
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x.status);
    res->http_status = (int)x.status;
    size_t relayed = x.rd.reply.text_bytes;
    int rc = OUTPOST_OK;

    if (x.rd_rc == OAW_ESTOP || cc == CURLE_ABORTED_BY_CALLBACK) {
        errf(err, "%s: cancelled by the caller", url);
        rc = OUTPOST_ECANCELLED;
    } else if (x.rd_rc == OAW_ENOMEM) {
        errf(err, "%s: out of memory reading the reply", url);
        rc = OUTPOST_ENOMEM;
    } else if (x.rd_rc) {
        /* The reply itself was wrong: an error event, or not the format. */
        errf(err, "%s: %s", url, x.rd.err);
        rc = relayed ? OUTPOST_EPARTIAL : OUTPOST_EREMOTE;
        *retryable = x.rd_rc == OAW_EREMOTE;
    } else if (cc != CURLE_OK) {
        if (relayed) {
            errf(err, "%s: the reply broke off after %zu bytes of text: %s", url, relayed,
                 curl_why(&x, cc));
            rc = OUTPOST_EPARTIAL;
        } else if (x.status >= 200) {
            errf(err, "%s: HTTP %ld, then: %s", url, x.status, curl_why(&x, cc));
            rc = OUTPOST_EREMOTE;
            *retryable = true;
        } else {
            errf(err, "%s: %s", url, curl_why(&x, cc));
            rc = OUTPOST_EUNREACHABLE;
            *retryable = curl_retryable(cc);
        }
    } else if (x.status < 200 || x.status >= 300) {
        char msg[200] = "";
        if (!oaw_error_message(x.ebody, x.ebody_len, msg, sizeof msg))
            snprintf(msg, sizeof msg, "%.120s", x.ebody_len ? x.ebody : "(no body)");
        msg[strcspn(msg, "\r\n")] = '\0';
        errf(err, "%s: HTTP %ld: %s", url, x.status, msg);
        rc = OUTPOST_EREMOTE;
        *retryable = x.status == 408 || x.status == 429 || x.status >= 500;
        *retry_after_s = x.retry_after_s;
    } else {
        int frc = x.mode == BODY_WHOLE ? oaw_body_finish(&x.rd)
                  : x.mode == BODY_SSE ? oaw_sse_finish(&x.rd)
                                       : OAW_EMALFORMED;
        relayed = x.rd.reply.text_bytes;
        if (x.mode == BODY_UNKNOWN) {
            errf(err, "%s: HTTP %ld with an empty body", url, x.status);
            rc = OUTPOST_EREMOTE;
            *retryable = true;
        } else if (frc == OAW_ESTOP) {
            errf(err, "%s: cancelled by the caller", url);
            rc = OUTPOST_ECANCELLED;
        } else if (frc) {
            errf(err, "%s: %s", url, x.rd.err);
            rc = relayed ? OUTPOST_EPARTIAL : frc == OAW_ENOMEM ? OUTPOST_ENOMEM : OUTPOST_EREMOTE;
            *retryable = frc == OAW_EREMOTE;
        } else if (!x.rd.reply.done && !x.rd.reply.finish_reason[0]) {
            errf(err, "%s: the stream ended before its last event ([DONE])", url);
            rc = relayed ? OUTPOST_EPARTIAL : OUTPOST_EREMOTE;
            *retryable = !relayed;
        }
    }
    if (relayed)
        *retryable = false;
    const oaw_reply *rp = &x.rd.reply;
    if (rp->finish_reason[0])
        snprintf(res->finish_reason, sizeof res->finish_reason, "%s", rp->finish_reason);
    if (rp->prompt_tokens >= 0)
        res->prompt_tokens = rp->prompt_tokens;
    if (rp->completion_tokens >= 0)
        res->completion_tokens = rp->completion_tokens;
    if (rp->remote_route[0]) {
        snprintf(res->remote_route, sizeof res->remote_route, "%s", rp->remote_route);
        snprintf(res->remote_reason, sizeof res->remote_reason, "%s", rp->remote_reason);
    }
    oaw_reader_free(&x.rd);
    curl_easy_cleanup(c);
    return rc;
}

/* Pause before the next attempt, waking early when the caller cancels.
 * Returns nonzero when cancelled. */
static int pause_ms(double ms, const outpost_stream *s)
{
    double end = now_ms() + ms;
    for (;;) {
        if (s && s->cancelled && s->cancelled(s->ud))
            return 1;
        double left = end - now_ms();
        if (left <= 0)
            return 0;
        double step = left < 20 ? left : 20;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(step * 1e6)};
        nanosleep(&ts, NULL);
    }
}

/* xorshift64*, seeded per call: jitter needs no more than that. */
static double jitter(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

static int oai_chat(void *inst, const outpost_chat_request *rq, const outpost_stream *s,
                    outpost_chat_result *res, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    oai *in = inst;
    memset(res, 0, sizeof *res);
    res->prompt_tokens = res->completion_tokens = -1;
    if (!rq) {
        errf(err, "%s: no request", in->name);
        return OUTPOST_EINPUT;
    }
    oaw_request_opts ro = {.model = in->model, .stream = true,
                           .outpost_route_local = in->outpost};
    char *body = NULL;
    int wrc = oaw_request_json(rq, &ro, &body, err);
    if (wrc)
        return wrc == OAW_ENOMEM ? OUTPOST_ENOMEM : OUTPOST_EINPUT;

    char rid[128] = "";
    if (rq->request_id && rq->request_id[0] && !strpbrk(rq->request_id, "\r\n"))
        snprintf(rid, sizeof rid, "X-Request-Id: %.100s", rq->request_id);
    bool ok = true;
    struct curl_slist *hdr = NULL;
    hdr = add_header(hdr, "Content-Type: application/json", &ok);
    hdr = add_header(hdr, "Accept: text/event-stream", &ok);
    hdr = add_header(hdr, "Expect:", &ok); /* no 100-continue round trip */
    hdr = add_header(hdr, in->auth_header, &ok);
    hdr = add_header(hdr, in->agent_header, &ok);
    if (rid[0])
        hdr = add_header(hdr, rid, &ok);
    if (!ok) {
        curl_slist_free_all(hdr);
        free(body);
        errf(err, "%s: out of memory", in->name);
        return OUTPOST_ENOMEM;
    }
    const char *url = rq->prompt ? in->completion_url : in->chat_url;
    double deadline = now_ms() + (double)in->timeout_ms;
    struct timespec seed_ts;
    clock_gettime(CLOCK_REALTIME, &seed_ts);
    uint64_t rng = ((uint64_t)seed_ts.tv_nsec << 20) ^ (uint64_t)(uintptr_t)res ^ 0x9E3779B97F4A7C15ULL;
    int rc = OUTPOST_EUNREACHABLE;
    for (int i = 0;; i++) {
        long left = (long)(deadline - now_ms());
        if (left <= 0) {
            if (i == 0)
                errf(err, "%s: no time left for the call", url);
            break;
        }
        bool retryable;
        double retry_after_s;
        res->attempts++;
        rc = attempt(in, url, body, hdr, s, left, res, &retryable, &retry_after_s, err);
        if (rc == OUTPOST_OK || !retryable || i >= in->retries)
            break;
        double wait = in->backoff_ms * (double)(1u << (i < 8 ? i : 8));
        if (wait > in->backoff_ms * BACKOFF_MAX_FACTOR)
            wait = in->backoff_ms * BACKOFF_MAX_FACTOR;
        wait *= 0.5 + 0.5 * jitter(&rng);
        if (retry_after_s * 1e3 > wait)
            wait = retry_after_s * 1e3;
        if (now_ms() + wait >= deadline)
            break; /* the error of the last attempt stands */
        if (pause_ms(wait, s)) {
            errf(err, "%s: cancelled by the caller", in->name);
            rc = OUTPOST_ECANCELLED;
            break;
        }
    }
    curl_slist_free_all(hdr);
    free(body);
    return rc;
}

/* ---- reachability --------------------------------------------------------------- */

static int oai_probe(void *inst, double *rtt_ms, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    oai *in = inst;
    xfer x = {.s = NULL};
    oaw_reader_init(&x.rd, NULL, NULL, 0);
    long timeout = in->connect_timeout_ms + PROBE_TIMEOUT_MS;
    if (timeout > in->timeout_ms)
        timeout = in->timeout_ms;
    CURL *c = easy_new(in, &x, in->probe_url, timeout);
    bool ok = true;
    struct curl_slist *hdr = NULL;
    hdr = add_header(hdr, in->auth_header, &ok);
    hdr = add_header(hdr, in->agent_header, &ok);
    if (!c || !ok) {
        curl_slist_free_all(hdr);
        if (c)
            curl_easy_cleanup(c);
        errf(err, "%s: out of memory", in->name);
        return OUTPOST_ENOMEM;
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x.status);
    int rc = OUTPOST_OK;
    if (cc != CURLE_OK) {
        errf(err, "%s: %s", in->probe_url, curl_why(&x, cc));
        rc = OUTPOST_EUNREACHABLE;
    } else if (x.status == 401 || x.status == 403 || x.status >= 500) {
        errf(err, "%s: HTTP %ld%s", in->probe_url, x.status,
             x.status < 500 ? " (the API key was refused)" : "");
        rc = OUTPOST_EREMOTE;
    } else {
        /* From the request sent to the first byte of the answer: one round
         * trip plus the remote's own time, without connect or TLS set-up. */
        curl_off_t pre = 0, first = 0, total = 0;
        curl_easy_getinfo(c, CURLINFO_PRETRANSFER_TIME_T, &pre);
        curl_easy_getinfo(c, CURLINFO_STARTTRANSFER_TIME_T, &first);
        curl_easy_getinfo(c, CURLINFO_TOTAL_TIME_T, &total);
        double us = first > pre ? (double)(first - pre) : (double)total;
        if (rtt_ms)
            *rtt_ms = us / 1e3;
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    oaw_reader_free(&x.rd);
    return rc;
}

/* ---- the exported object ------------------------------------------------------- */

static const outpost_backend_ops backend_ops = {
    .open = oai_open,
    .close = oai_close,
    .chat = oai_chat,
    .probe = oai_probe,
};

OUTPOST_PLUGIN_EXPORT(backend_openai_plugin) = {
    .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(outpost_plugin),
    .name = "backend-openai",
    .version = "1.0",
    .description = "OpenAI-compatible HTTP(S) client (libcurl) for the peer and cloud targets",
    .kind = OUTPOST_PLUGIN_BACKEND,
    .init = plugin_init,
    .fini = plugin_fini,
    .backend = &backend_ops,
};
