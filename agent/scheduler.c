/*
 * scheduler.c - the engine worker of one model and its bounded job queue.
 *
 * The worker thread is the only thread that touches the eng_ctx and the
 * list of tokens its KV cache holds (`cached`): that list is the key to
 * prefix reuse. A job's prompt is compared with it token by token, the cache
 * is cut back to the longest common prefix and only the rest is evaluated,
 * so a conversation whose turn N+1 extends turn N prefills just the new
 * tokens. At least one prompt token is always evaluated, because sampling
 * needs the logits of the last one.
 *
 * Generated text goes through two filters before it reaches the sink: bytes
 * are held until they form complete UTF-8 (a character may be split over
 * byte-fallback tokens; invalid bytes become U+FFFD, since JSON cannot carry
 * them), and a tail that could still grow into a stop string is held until
 * it either does (then it and everything after are dropped) or cannot.
 *
 * Saved sessions. The live cache serves one conversation at a time; the
 * others keep theirs in <kv_dir>/<session>.kv (engine/kv_state.c writes and
 * checks the files). The rules, and why:
 *  - A session's state is saved when the worker turns from it to a job of
 *    another session or of none, and when the worker stops (SIGTERM drain),
 *    not after every turn: a conversation in progress stays live and costs
 *    no disk writes (flash wears), and the file is written once per switch.
 *    The switching job pays for that write; tests/bench/kv_restore.sh
 *    measures it.
 *  - Only sessions are saved (a request without one has nobody to come
 *    back), only states of at least KV_SAVE_MIN_TOKENS positions (shorter
 *    ones prefill about as fast as they load), and only when the file fits
 *    the disk budget after evicting the least recently used other sessions'
 *    files (store_sessions_lru). A state larger than the whole budget is not
 *    saved, and the session's older, shorter file stays.
 *  - A job of session S whose tokens the live cache does not hold (the live
 *    cache is another session's) looks for S's file: its token ids are read
 *    first, and the rows are loaded only when the file shares a longer
 *    prefix with the prompt than the live cache does. The usual prefix match
 *    then decides what is reused, so cached_tokens counts restored tokens.
 *    A file that cannot be used (damaged, from another model or KV type) is
 *    logged in one line naming it, removed, and the prompt is prefilled.
 *  - The live cache is reused only by jobs of the uid whose job filled it:
 *    cached_tokens (and the time to the first token) would otherwise tell
 *    one user whether another's conversation begins with a given text.
 *  - A file is recorded in the store only after it is complete (written to a
 *    temporary, fsynced, renamed); a file the store does not know, or a row
 *    whose file is gone, is cleaned up at start, and a start with a budget
 *    smaller than the files (0: none) evicts down to it.
 *  - Deleting a session (DELETE /v1/sessions/ID, retention) removes its file
 *    through the path the store returns; a session deleted while it is live
 *    here is noticed when saving (the store no longer knows it) and its new
 *    file removed.
 *
 * Locks: `mu` guards the queue, the running-job pointer, the closing and
 * stop flags and the statistics. The worker never holds it while evaluating.
 */
#include "scheduler.h"

#include "chat.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const double sched_ttft_bounds_ms[SCHED_TTFT_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};
const double sched_token_bounds_ms[SCHED_TOKEN_BUCKETS] = {
    0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000};

/* Prompt tokens evaluated between two looks at the cancel flag. */
#define PREFILL_CHUNK 256
/* Saved KV states shorter than this are not written (see the top). */
#define KV_SAVE_MIN_TOKENS 8

struct sched {
    char name[STORE_NAME_MAX + 1];
    eng_model *model;
    eng_ctx *ctx;
    const tok *tk;
    int32_t n_ctx, n_batch;
    int64_t max_tokens_default, max_tokens_limit, max_prompt_tokens;
    store *st;
    chat_template tmpl;
    int32_t end_ids[CHAT_END_MAX]; /* control tokens that end a turn in tmpl */
    size_t n_end_ids;
    const char *tmpl_stops[CHAT_END_MAX];
    size_t n_tmpl_stops;

    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* the worker waits for jobs */
    pthread_cond_t cv_idle; /* drain waits for the queue to empty */
    bool mu_ok, cv_work_ok, cv_idle_ok, thread_ok;
    pthread_t thread;
    sched_job **queue;      /* ring of queue_max slots */
    size_t q_cap, q_head, q_len;
    sched_job *running;     /* NULL again before its on_done (stats.busy lasts past it) */
    bool closing;           /* submit refuses */
    bool stop;              /* the worker exits once the queue is empty */
    sched_stats stats;

    char *kv_dir;           /* saved sessions, or NULL */
    int64_t kv_budget_bytes;

    /* worker-only */
    int32_t *cached;
    size_t n_cached, cap_cached;
    char live_session[STORE_ID_SIZE]; /* whose conversation `cached` is, "" none */
    uid_t live_uid;         /* the uid of the job that filled it */
    bool live_dirty;        /* it changed since it was last saved or restored */
    double *lat_ms;         /* per-token latencies of the running job */
    size_t cap_lat;

    /* LoRA hot swap (sched_set_adapter): the caller opens the adapter and
     * hands it over under mu; the worker attaches it between jobs. */
    eng_lora *lora;         /* attached to ctx (worker-only once running) */
    eng_lora *lora_next;    /* waiting to be attached (NULL: detach) */
    bool lora_change;       /* lora_next is waiting; cleared by the worker */
    int lora_rc;
    char lora_err[256];
};

double sched_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *sched_finish_name(sched_finish f)
{
    switch (f) {
    case SCHED_FINISH_STOP: return "stop";
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_CANCELLED: return "cancelled";
    case SCHED_FINISH_ERROR: return "error";
    default: return NULL;
    }
}

/* The status recorded in telemetry for a job's result. */
static const char *status_name(const sched_job *j)
{
    switch (j->status) {
    case SCHED_OK: return j->finish == SCHED_FINISH_CANCELLED ? "cancelled" : "ok";
    case SCHED_EFULL: return "queue_full";
    case SCHED_ECLOSED: return "shutting_down";
    case SCHED_ENOMEM: return "no_memory";
    case SCHED_ETOOLONG: return "context_length_exceeded";
    case SCHED_EINPUT: return "bad_input";
    case SCHED_EENGINE: return "engine_error";
    case SCHED_ETIMEOUT: return "timeout";
    case SCHED_EREMOTE: return "remote_error";
    default: return "error";
    }
}

/* ---- jobs ----------------------------------------------------------------- */

sched_job *sched_job_new(void)
{
    sched_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->sampling = smp_params_default();
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)j;
    j->sampling.seed = seed;
    j->ttft_ms = j->decode_tok_s = j->token_p50_ms = j->token_p95_ms = -1;
    atomic_init(&j->cancel, false);
    return j;
}

void sched_job_free(sched_job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->n_msgs; i++)
        free(j->msgs[i].content);
    free(j->msgs);
    free(j->prompt);
    for (size_t i = 0; i < j->n_stop; i++)
        free(j->stop[i]);
    free(j->tokens);
    free(j->text);
    free(j);
}

static char *dup_bytes(const char *s, size_t len)
{
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

int sched_job_add_msg(sched_job *j, store_role role, const char *content, size_t len)
{
    if ((int)role < 0 || role >= STORE_ROLE_COUNT)
        return SCHED_EINPUT;
    if (j->n_msgs == j->cap_msgs) {
        size_t cap = j->cap_msgs ? j->cap_msgs * 2 : 8;
        sched_msg *m = realloc(j->msgs, cap * sizeof *m);
        if (!m)
            return SCHED_ENOMEM;
        j->msgs = m;
        j->cap_msgs = cap;
    }
    char *c = dup_bytes(content, len);
    if (!c)
        return SCHED_ENOMEM;
    j->msgs[j->n_msgs++] = (sched_msg){.role = role, .content = c, .len = len};
    return SCHED_OK;
}

int sched_job_set_prompt(sched_job *j, const char *text, size_t len)
{
    char *p = dup_bytes(text, len);
    if (!p)
        return SCHED_ENOMEM;
    free(j->prompt);
    j->prompt = p;
    j->prompt_len = len;
    j->raw = true;
    return SCHED_OK;
}

int sched_job_add_stop(sched_job *j, const char *text, size_t len)
{
    if (len == 0 || j->n_stop == SCHED_MAX_STOP)
        return SCHED_EINPUT;
    char *p = dup_bytes(text, len);
    if (!p)
        return SCHED_ENOMEM;
    j->stop[j->n_stop++] = p;
    return SCHED_OK;
}

int sched_job_record(store *st, const sched_job *j, char err[256])
{
    if (!st)
        return 0;
    int rc = 0;
    bool completed = j->status == SCHED_OK && (j->finish == SCHED_FINISH_STOP ||
                                               j->finish == SCHED_FINISH_LENGTH);
    if (j->session_id[0] && completed) {
        for (size_t i = j->n_history; i < j->n_msgs && !rc; i++)
            rc = store_message_append(st, j->session_id, j->uid, j->msgs[i].role,
                                      j->msgs[i].content, j->msgs[i].len, 0, NULL, err);
        if (!rc)
            rc = store_message_append(st, j->session_id, j->uid, STORE_ROLE_ASSISTANT,
                                      j->text ? j->text : "", j->text_len,
                                      j->completion_tokens, NULL, err);
    }
    char row_err[256];
    store_request r = {
        .id = j->request_id[0] ? j->request_id : NULL,
        .session_id = j->session_id[0] ? j->session_id : NULL,
        .route = j->route,
        .reason = j->reason,
        .model = j->model,
        .prompt_tokens = j->prompt_tokens,
        .completion_tokens = j->completion_tokens,
        .cached_tokens = j->cached_tokens,
        .ttft_ms = j->ttft_ms,
        .decode_tok_s = j->decode_tok_s,
        .token_p50_ms = j->token_p50_ms,
        .token_p95_ms = j->token_p95_ms,
        .cost_usd = j->cost_usd,
        .status = status_name(j),
    };
    int rc2 = store_request_insert(st, &r, row_err);
    if (rc2 && !rc) {
        memcpy(err, row_err, 256);
        rc = rc2;
    }
    return rc;
}

/* ---- prompt preparation ----------------------------------------------------- */

static int64_t effective_max_tokens(const sched *s, int64_t asked)
{
    int64_t n = asked > 0 ? asked : s->max_tokens_default;
    if (s->max_tokens_limit > 0 && n > s->max_tokens_limit)
        n = s->max_tokens_limit;
    return n;
}

/* The conversation in the model's chat format: the leading system
 * messages, then the messages from `first` on, and the assistant's cue;
 * *scaffold says where the template's own text is (see tokenize). */
static int render(const sched *s, const sched_job *j, size_t n_sys, size_t first, char **out,
                  size_t *out_len, tok_range **scaffold, size_t *n_scaffold, char err[256])
{
    chat_msg *cm = malloc((j->n_msgs ? j->n_msgs : 1) * sizeof *cm);
    if (!cm) {
        snprintf(err, 256, "out of memory rendering %zu messages", j->n_msgs);
        return SCHED_ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < j->n_msgs; i++)
        if (i < n_sys || i >= first)
            cm[n++] = (chat_msg){j->msgs[i].role, j->msgs[i].content, j->msgs[i].len};
    int rc = chat_render_spans(&s->tmpl, cm, n, true, out, out_len, scaffold, n_scaffold, err);
    free(cm);
    if (rc)
        return rc == CHAT_ENOMEM ? SCHED_ENOMEM : SCHED_EINPUT;
    return SCHED_OK;
}

/* Control-token text becomes control tokens only inside the scaffold
 * spans (a chat template's own text); anything a client wrote (message
 * content, a raw prompt: no spans) is plain text, so it cannot forge a
 * turn or an end of text. */
static int tokenize(const sched *s, const char *text, size_t len, const tok_range *scaffold,
                    size_t n_scaffold, int32_t **ids, size_t *n, char err[256])
{
    unsigned flags = tok_add_bos_default(s->tk) ? TOK_ADD_BOS : 0;
    char terr[256];
    int rc = tok_encode_spans(s->tk, text, len, flags, scaffold, n_scaffold, ids, n, terr);
    if (rc) {
        snprintf(err, 256, "prompt: %s", terr);
        return rc == TOK_ENOMEM ? SCHED_ENOMEM : SCHED_EINPUT;
    }
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        snprintf(err, 256, "the prompt is empty and the model has no BOS token to start from");
        return SCHED_EINPUT;
    }
    return SCHED_OK;
}

int sched_prepare(sched *s, sched_job *j, char err[256])
{
    free(j->tokens);
    j->tokens = NULL;
    j->n_tokens = 0;
    j->full_tokens = 0;
    j->n_dropped = 0;
    j->truncated = false;
    j->max_tokens = effective_max_tokens(s, j->max_tokens);

    /* Leave room for at least part of the reply: a quarter of the context
     * at most, so one greedy max_tokens cannot evict the whole conversation. */
    int64_t reserve = j->max_tokens < s->n_ctx / 4 ? j->max_tokens : s->n_ctx / 4;
    if (reserve < 1)
        reserve = 1;
    int64_t limit = s->n_ctx - reserve;
    if (s->max_prompt_tokens > 0 && s->max_prompt_tokens < limit)
        limit = s->max_prompt_tokens;
    if (limit < 1)
        limit = 1;

    int rc;
    if (j->raw) {
        if ((rc = tokenize(s, j->prompt ? j->prompt : "", j->prompt_len, NULL, 0, &j->tokens,
                           &j->n_tokens, err)))
            return rc;
        j->full_tokens = (int64_t)j->n_tokens;
        if ((int64_t)j->n_tokens > limit) {
            /* Keep BOS, drop the oldest text: the end of a prompt is what
             * the continuation depends on. */
            size_t head = j->tokens[0] == tok_bos(s->tk) ? 1 : 0;
            size_t keep_tail = (size_t)limit - head;
            memmove(j->tokens + head, j->tokens + j->n_tokens - keep_tail,
                    keep_tail * sizeof *j->tokens);
            j->n_tokens = head + keep_tail;
            j->truncated = true;
        }
        return SCHED_OK;
    }

    if (j->n_msgs == 0) {
        snprintf(err, 256, "the request has no messages");
        return SCHED_EINPUT;
    }
    size_t n_sys = 0;
    while (n_sys < j->n_msgs && j->msgs[n_sys].role == STORE_ROLE_SYSTEM)
        n_sys++;
    if (n_sys == j->n_msgs)
        n_sys = j->n_msgs - 1; /* a lone system message is the prompt */
    for (size_t first = n_sys;; first++) {
        char *text = NULL;
        size_t len = 0;
        int32_t *ids = NULL;
        size_t n = 0;
        tok_range *scaffold = NULL;
        size_t n_scaffold = 0;
        if ((rc = render(s, j, n_sys, first, &text, &len, &scaffold, &n_scaffold, err)))
            return rc;
        rc = tokenize(s, text, len, scaffold, n_scaffold, &ids, &n, err);
        free(text);
        free(scaffold);
        if (rc)
            return rc;
        if (first == n_sys)
            j->full_tokens = (int64_t)n;
        if ((int64_t)n <= limit) {
            j->tokens = ids;
            j->n_tokens = n;
            j->n_dropped = first - n_sys;
            j->truncated = first > n_sys;
            return SCHED_OK;
        }
        free(ids);
        if (first + 1 >= j->n_msgs) {
            snprintf(err, 256,
                     "the prompt is %zu tokens even without older messages; the context "
                     "holds %d with %lld kept for the reply",
                     n, s->n_ctx, (long long)reserve);
            return SCHED_ETOOLONG;
        }
    }
}

/* ---- generated text --------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p, 0 if p[0..n) is a valid but
 * incomplete start, -1 if p[0] cannot start a valid sequence there
 * (Unicode 15, table 3-7: well-formed byte sequences). */
static int utf8_check(const unsigned char *p, size_t n)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    int len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0)
        len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        len = 3;
    else if (c == 0xED)
        len = 3, hi = 0x9F;
    else if (c == 0xF0)
        len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4)
        len = 4, hi = 0x8F;
    else
        return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        unsigned b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return -1;
    }
    return len;
}

typedef struct gen_state {
    unsigned char pend[4]; /* an incomplete UTF-8 sequence */
    size_t n_pend;
    size_t emitted;        /* bytes of j->text already given to the sink */
} gen_state;

static int text_add(sched_job *j, const void *p, size_t n)
{
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = j->text_cap ? j->text_cap * 2 : 256;
        while (cap < j->text_len + n + 1)
            cap *= 2;
        char *t = realloc(j->text, cap);
        if (!t)
            return SCHED_ENOMEM;
        j->text = t;
        j->text_cap = cap;
    }
    memcpy(j->text + j->text_len, p, n);
    j->text_len += n;
    j->text[j->text_len] = '\0';
    return SCHED_OK;
}

static const char replacement_char[] = "\xEF\xBF\xBD";

/* Append a token's bytes, keeping j->text valid UTF-8. */
static int text_feed(sched_job *j, gen_state *g, const char *bytes, size_t n)
{
    for (size_t off = 0; off < n;) {
        unsigned char buf[4 + 252];
        size_t room = sizeof buf - g->n_pend;
        size_t take = n - off < room ? n - off : room;
        memcpy(buf, g->pend, g->n_pend);
        memcpy(buf + g->n_pend, bytes + off, take);
        size_t len = g->n_pend + take, i = 0;
        off += take;
        g->n_pend = 0;
        while (i < len) {
            int r = utf8_check(buf + i, len - i);
            if (r == 0) { /* carried over to the next bytes */
                memcpy(g->pend, buf + i, len - i);
                g->n_pend = len - i;
                break;
            }
            if (r > 0 ? text_add(j, buf + i, (size_t)r) : text_add(j, replacement_char, 3))
                return SCHED_ENOMEM;
            i += r > 0 ? (size_t)r : 1;
        }
    }
    return SCHED_OK;
}

static void emit(sched_job *j, gen_state *g, size_t end)
{
    assert(end <= j->text_len);
    if (end > g->emitted && j->sink.on_piece)
        j->sink.on_piece(j->sink.ud, j->text + g->emitted, end - g->emitted);
    if (end > g->emitted)
        g->emitted = end;
}

/* After new text: true when a stop string was found (the text is cut before
 * it); otherwise emit what can no longer become a stop string. */
static bool text_settle(sched_job *j, gen_state *g, const char *const *stops, size_t n_stops)
{
    if (j->text_len == g->emitted)
        return false; /* nothing new (j->text may still be NULL) */
    const char *from = j->text + g->emitted;
    size_t avail = j->text_len - g->emitted;
    const char *hit = NULL;
    for (size_t k = 0; k < n_stops; k++) {
        const char *p = memmem(from, avail, stops[k], strlen(stops[k]));
        if (p && (!hit || p < hit))
            hit = p;
    }
    if (hit) {
        size_t at = (size_t)(hit - j->text);
        emit(j, g, at);
        j->text_len = at;
        j->text[at] = '\0';
        return true;
    }
    size_t hold = 0;
    for (size_t k = 0; k < n_stops; k++) {
        size_t sl = strlen(stops[k]);
        for (size_t h = sl - 1 < avail ? sl - 1 : avail; h > hold; h--) {
            if (memcmp(j->text + j->text_len - h, stops[k], h) == 0) {
                hold = h;
                break;
            }
        }
    }
    emit(j, g, j->text_len - hold);
    return false;
}

/* ---- the worker ------------------------------------------------------------- */

static bool is_end(const sched *s, int32_t id)
{
    if (tok_is_eog(s->tk, id))
        return true;
    for (size_t i = 0; i < s->n_end_ids; i++)
        if (s->end_ids[i] == id)
            return true;
    return false;
}

/* Whether the job must stop now: cancelled, its client gone, or past its
 * deadline (then it fails with SCHED_ETIMEOUT). */
static bool job_cancelled(sched_job *j)
{
    if (atomic_load_explicit(&j->cancel, memory_order_relaxed))
        return true;
    if (j->deadline > 0 && sched_now() > j->deadline) {
        j->status = SCHED_ETIMEOUT;
        snprintf(j->err, sizeof j->err, "the request ran past its time limit");
        return true;
    }
    if (j->sink.gone && j->sink.gone(j->sink.ud)) {
        atomic_store(&j->cancel, true);
        return true;
    }
    return false;
}

static int cached_push(sched *s, const int32_t *ids, size_t n)
{
    if (s->n_cached + n > s->cap_cached) {
        size_t cap = s->cap_cached ? s->cap_cached : 256;
        while (cap < s->n_cached + n)
            cap *= 2;
        int32_t *c = realloc(s->cached, cap * sizeof *c);
        if (!c)
            return SCHED_ENOMEM;
        s->cached = c;
        s->cap_cached = cap;
    }
    memcpy(s->cached + s->n_cached, ids, n * sizeof *ids);
    s->n_cached += n;
    return SCHED_OK;
}

/* Cut the cache back to n tokens. */
static void cached_cut(sched *s, size_t n)
{
    if (n < s->n_cached)
        s->n_cached = n;
    eng_kv_truncate(s->ctx, (int32_t)s->n_cached);
}

/* ---- saved sessions ------------------------------------------------------- */

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

static bool kv_on(const sched *s) { return s->kv_dir && s->st; }

static void kv_path_of(const sched *s, const char *session, char *out, size_t size)
{
    snprintf(out, size, "%s/%s.kv", s->kv_dir, session);
}

static void kv_count(sched *s, uint64_t *counter)
{
    pthread_mutex_lock(&s->mu);
    (*counter)++;
    pthread_mutex_unlock(&s->mu);
}

/* Remove a session's saved state, file and row. */
static void kv_forget(sched *s, const char *session, const char *path)
{
    char err[256];
    unlink(path);
    int rc = store_session_set_kv(s->st, session, NULL, 0, 0, err);
    if (rc && rc != STORE_ENOTFOUND)
        fprintf(stderr, "outpost serve: session %s: forgetting its KV state: %s\n", session, err);
}

/* Evict least recently used saved states, except `keep_id`'s, until `need`
 * more bytes fit the budget. False when they cannot. */
static bool kv_make_room(sched *s, const char *keep_id, int64_t need)
{
    store_kv_entry *v = NULL;
    size_t n = 0;
    char err[256];
    if (store_sessions_lru(s->st, 0, &v, &n, err)) {
        fprintf(stderr, "outpost serve: saved KV states: %s\n", err);
        return false;
    }
    int64_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (!keep_id || strcmp(v[i].id, keep_id))
            total += v[i].kv_bytes;
    for (size_t i = 0; i < n && total + need > s->kv_budget_bytes; i++) {
        if (keep_id && !strcmp(v[i].id, keep_id))
            continue;
        kv_forget(s, v[i].id, v[i].kv_path);
        total -= v[i].kv_bytes;
        kv_count(s, &s->stats.kv_evictions);
    }
    free(v);
    return total + need <= s->kv_budget_bytes;
}

/* Save the live session's cache if it changed and the budget allows it. */
static void kv_park(sched *s)
{
    if (!s->live_dirty || !s->live_session[0] || !kv_on(s) || s->kv_budget_bytes <= 0 ||
        s->n_cached < KV_SAVE_MIN_TOKENS)
        return;
    s->live_dirty = false;
    const char *id = s->live_session;
    int64_t need = (int64_t)eng_kv_file_bytes(s->ctx, (int32_t)s->n_cached);
    if (need > s->kv_budget_bytes || !kv_make_room(s, id, need))
        return;
    char path[STORE_PATH_MAX + 1], err[256];
    kv_path_of(s, id, path, sizeof path);
    if (eng_kv_save(s->ctx, path, s->cached, (int32_t)s->n_cached, err)) {
        fprintf(stderr, "outpost serve: session %s: KV state not saved: %s\n", id, err);
        return;
    }
    int rc = store_session_set_kv(s->st, id, path, (int64_t)s->n_cached, need, err);
    if (rc) {
        /* Deleted meanwhile (STORE_ENOTFOUND), or the store failed: a file
         * the store does not list would sit outside the budget. */
        if (rc != STORE_ENOTFOUND)
            fprintf(stderr, "outpost serve: session %s: recording its KV state: %s\n", id, err);
        unlink(path);
        return;
    }
    kv_count(s, &s->stats.kv_saves);
}

/* Before prefilling a job of a session that is not live: load the session's
 * saved state when it shares a longer prefix with the prompt than the live
 * cache does (*keep). Updates *keep and the cached token list. */
static void kv_restore(sched *s, sched_job *j, size_t *keep)
{
    store_session sess;
    char err[256];
    if (!kv_on(s) || store_session_get(s->st, j->session_id, j->uid, &sess, err) ||
        !sess.kv_path[0])
        return;
    int32_t *ids = NULL, n = 0;
    int rc = eng_kv_peek(s->ctx, sess.kv_path, &ids, &n, err);
    if (!rc) {
        size_t m = common_prefix(ids, (size_t)n, j->tokens, j->n_tokens);
        free(ids);
        ids = NULL;
        if (m <= *keep)
            return; /* the live cache serves this prompt as well */
        rc = eng_kv_load(s->ctx, sess.kv_path, &ids, &n, err);
    }
    if (rc) {
        fprintf(stderr, "outpost serve: session %s: saved KV state not used, prefilling: %s\n",
                j->session_id, err);
        kv_count(s, &s->stats.kv_restore_failures);
        kv_forget(s, j->session_id, sess.kv_path);
        /* A load that failed while reading rows leaves the cache empty. */
        size_t left = (size_t)eng_n_past(s->ctx);
        if (left < s->n_cached)
            s->n_cached = left;
        if (*keep > s->n_cached)
            *keep = s->n_cached;
        return;
    }
    s->n_cached = 0;
    if (cached_push(s, ids, (size_t)n)) {
        free(ids);
        eng_kv_truncate(s->ctx, 0);
        *keep = 0;
        return;
    }
    free(ids);
    *keep = common_prefix(s->cached, s->n_cached, j->tokens, j->n_tokens);
    kv_count(s, &s->stats.kv_restores);
}

/* At start: drop files the store does not list and leftovers of
 * interrupted writes, rows whose file is gone, and what exceeds the budget. */
static void kv_sweep(sched *s)
{
    store_kv_entry *v = NULL;
    size_t n = 0;
    char err[256], path[STORE_PATH_MAX + 1];
    if (store_sessions_lru(s->st, 0, &v, &n, err)) {
        fprintf(stderr, "outpost serve: saved KV states: %s\n", err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(v[i].kv_path, &st) != 0)
            kv_forget(s, v[i].id, v[i].kv_path);
    }
    DIR *d = opendir(s->kv_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            /* only names this file gives: <32 hex>.kv[.tmp.XXXXXX] */
            const char *name = e->d_name;
            const char *ext = name + STORE_ID_SIZE - 1;
            if (strspn(name, "0123456789abcdef") != STORE_ID_SIZE - 1 ||
                (strcmp(ext, ".kv") && strncmp(ext, ".kv.tmp.", 8)))
                continue;
            snprintf(path, sizeof path, "%s/%s", s->kv_dir, name);
            bool listed = false;
            for (size_t i = 0; i < n && !listed; i++)
                listed = !strcmp(v[i].kv_path, path);
            if (!listed)
                unlink(path);
        }
        closedir(d);
    }
    free(v);
    if (!kv_make_room(s, NULL, 0))
        fprintf(stderr, "outpost serve: saved KV states exceed the budget of %lld bytes\n",
                (long long)s->kv_budget_bytes);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double percentile(const double *v, size_t n, double p)
{
    size_t rank = (size_t)ceil(p * (double)n);
    return v[rank ? rank - 1 : 0];
}

static int bucket(const double *bounds, int n, double v)
{
    for (int i = 0; i < n; i++)
        if (v <= bounds[i])
            return i;
    return n;
}

static void update_stats(sched *s, const sched_job *j, size_t n_lat, double job_s)
{
    pthread_mutex_lock(&s->mu);
    sched_stats *st = &s->stats;
    st->jobs++;
    if (j->status != SCHED_OK)
        st->jobs_failed++;
    else if (j->finish == SCHED_FINISH_CANCELLED)
        st->jobs_cancelled++;
    st->prompt_tokens += (uint64_t)(j->prompt_tokens > 0 ? j->prompt_tokens : 0);
    st->completion_tokens += (uint64_t)(j->completion_tokens > 0 ? j->completion_tokens : 0);
    st->cached_tokens += (uint64_t)(j->cached_tokens > 0 ? j->cached_tokens : 0);
    if (j->ttft_ms >= 0) {
        st->ttft_counts[bucket(sched_ttft_bounds_ms, SCHED_TTFT_BUCKETS, j->ttft_ms)]++;
        st->ttft_sum_ms += j->ttft_ms;
    }
    for (size_t i = 0; i < n_lat; i++) {
        st->token_counts[bucket(sched_token_bounds_ms, SCHED_TOKEN_BUCKETS, s->lat_ms[i])]++;
        st->token_sum_ms += s->lat_ms[i];
    }
    if (j->decode_tok_s > 0)
        st->decode_tok_s =
            isnan(st->decode_tok_s) ? j->decode_tok_s : 0.8 * st->decode_tok_s + 0.2 * j->decode_tok_s;
    st->job_s = isnan(st->job_s) ? job_s : 0.8 * st->job_s + 0.2 * job_s;
    pthread_mutex_unlock(&s->mu);
}

static void fail_job(sched_job *j, int status, const char *msg)
{
    j->status = status;
    j->finish = SCHED_FINISH_ERROR;
    if (msg != j->err)
        snprintf(j->err, sizeof j->err, "%s", msg);
}

/* Evaluate the prompt after the common prefix; false when the job ended. */
static bool prefill(sched *s, sched_job *j)
{
    size_t n = j->n_tokens;
    bool same_session = j->session_id[0] && !strcmp(s->live_session, j->session_id);
    if (!same_session)
        kv_park(s);
    size_t keep = s->live_uid == j->uid ? common_prefix(s->cached, s->n_cached, j->tokens, n) : 0;
    if (j->session_id[0] && !same_session)
        kv_restore(s, j, &keep);
    if (keep == n)
        keep = n - 1; /* the last prompt token's logits are needed */
    cached_cut(s, keep);
    j->cached_tokens = (int64_t)keep;
    /* The cache is this job's from here on. */
    snprintf(s->live_session, sizeof s->live_session, "%s", j->session_id);
    s->live_uid = j->uid;
    s->live_dirty = j->session_id[0] != '\0';
    char err[256];
    for (size_t i = keep; i < n;) {
        if (job_cancelled(j)) {
            j->finish = j->status ? SCHED_FINISH_ERROR : SCHED_FINISH_CANCELLED;
            return false;
        }
        size_t chunk = n - i < PREFILL_CHUNK ? n - i : PREFILL_CHUNK;
        int rc = eng_eval(s->ctx, j->tokens + i, (int32_t)chunk, false, err);
        if (rc) {
            fail_job(j, rc == ENG_ENOMEM ? SCHED_ENOMEM : SCHED_EENGINE, err);
            cached_cut(s, i);
            return false;
        }
        if (cached_push(s, j->tokens + i, chunk)) {
            fail_job(j, SCHED_ENOMEM, "out of memory for the cached token list");
            cached_cut(s, 0);
            return false;
        }
        i += chunk;
    }
    return true;
}

static void run_job(sched *s, sched_job *j)
{
    double t_start = sched_now();
    smp *sm = NULL;
    gen_state g = {0};
    size_t n_lat = 0;
    char err[256];
    const eng_hparams *hp = eng_model_hparams(s->model);

    j->status = SCHED_OK;
    j->prompt_tokens = (int64_t)j->n_tokens;
    if (j->n_tokens == 0 || !j->tokens) {
        fail_job(j, SCHED_EINPUT, "the job was not prepared");
        goto done;
    }
    if ((int64_t)j->n_tokens >= s->n_ctx) {
        snprintf(err, sizeof err, "the prompt is %zu tokens; the context holds %d", j->n_tokens,
                 s->n_ctx);
        fail_job(j, SCHED_ETOOLONG, err);
        goto done;
    }
    if (j->max_tokens > 0 && j->max_tokens > (int64_t)s->cap_lat) {
        size_t cap = (size_t)j->max_tokens;
        if (cap > (size_t)s->n_ctx)
            cap = (size_t)s->n_ctx;
        if (cap > s->cap_lat) {
            double *l = realloc(s->lat_ms, cap * sizeof *l);
            if (!l) {
                fail_job(j, SCHED_ENOMEM, "out of memory for latency samples");
                goto done;
            }
            s->lat_ms = l;
            s->cap_lat = cap;
        }
    }
    if (smp_new(&sm, &j->sampling, hp->n_vocab, err)) {
        fail_job(j, SCHED_EINPUT, err);
        goto done;
    }
    if (job_cancelled(j)) {
        j->finish = j->status ? SCHED_FINISH_ERROR : SCHED_FINISH_CANCELLED;
        goto done;
    }
    if (!prefill(s, j))
        goto done;

    size_t from = j->n_tokens > (size_t)j->sampling.repeat_last_n && j->sampling.repeat_last_n >= 0
                      ? j->n_tokens - (size_t)j->sampling.repeat_last_n
                      : 0;
    for (size_t i = from; i < j->n_tokens; i++)
        smp_accept(sm, j->tokens[i]);

    const char *stops[SCHED_MAX_STOP + CHAT_END_MAX];
    size_t n_stops = 0;
    for (size_t i = 0; i < j->n_stop; i++)
        stops[n_stops++] = j->stop[i];
    for (size_t i = 0; i < s->n_tmpl_stops; i++)
        stops[n_stops++] = s->tmpl_stops[i];

    double t_first = 0, t_prev = 0;
    int64_t n_samples = 0;
    bool stop_string = false;
    char piece_buf[256];
    for (;;) {
        int32_t id = smp_sample(sm, eng_logits(s->ctx, -1));
        double t = sched_now();
        n_samples++;
        if (j->completion_tokens == 0 && j->ttft_ms < 0) {
            j->ttft_ms = (t - j->t_arrival) * 1e3;
            t_first = t;
        } else if (n_lat < s->cap_lat) {
            s->lat_ms[n_lat++] = (t - t_prev) * 1e3;
        }
        t_prev = t;
        if (is_end(s, id)) {
            j->finish = SCHED_FINISH_STOP;
            break;
        }
        smp_accept(sm, id);
        j->completion_tokens++;
        int len = tok_piece(s->tk, id, false, piece_buf, sizeof piece_buf);
        int frc = SCHED_OK;
        if (len > (int)sizeof piece_buf) {
            char *big = malloc((size_t)len);
            if (!big || tok_piece(s->tk, id, false, big, (size_t)len) != len)
                frc = SCHED_ENOMEM;
            else
                frc = text_feed(j, &g, big, (size_t)len);
            free(big);
        } else if (len > 0) {
            frc = text_feed(j, &g, piece_buf, (size_t)len);
        }
        if (frc) {
            fail_job(j, SCHED_ENOMEM, "out of memory for the generated text");
            break;
        }
        if (text_settle(j, &g, stops, n_stops)) {
            j->finish = SCHED_FINISH_STOP;
            stop_string = true;
            break;
        }
        if (j->completion_tokens >= j->max_tokens ||
            eng_n_past(s->ctx) >= s->n_ctx) {
            j->finish = SCHED_FINISH_LENGTH;
            break;
        }
        if (job_cancelled(j)) {
            j->finish = j->status ? SCHED_FINISH_ERROR : SCHED_FINISH_CANCELLED;
            break;
        }
        int rc = eng_eval(s->ctx, &id, 1, false, err);
        if (rc) {
            fail_job(j, rc == ENG_ENOMEM ? SCHED_ENOMEM : SCHED_EENGINE, err);
            break;
        }
        if (cached_push(s, &id, 1)) {
            fail_job(j, SCHED_ENOMEM, "out of memory for the cached token list");
            cached_cut(s, 0);
            break;
        }
    }
    /* Unless a stop string cut the text (what follows it is dropped), a
     * tail held back for a stop string that never completed is text, and an
     * unfinished character becomes U+FFFD. */
    if (!stop_string) {
        if (g.n_pend && text_add(j, replacement_char, 3))
            fail_job(j, SCHED_ENOMEM, "out of memory for the generated text");
        if (j->status == SCHED_OK)
            emit(j, &g, j->text_len);
    }
    /* One decode step lies between consecutive samples. */
    if (n_samples >= 2 && t_prev > t_first)
        j->decode_tok_s = (double)(n_samples - 1) / (t_prev - t_first);
    if (n_lat > 0) {
        qsort(s->lat_ms, n_lat, sizeof *s->lat_ms, cmp_double);
        j->token_p50_ms = percentile(s->lat_ms, n_lat, 0.50);
        j->token_p95_ms = percentile(s->lat_ms, n_lat, 0.95);
    }
done:
    smp_free(sm);
    if (!j->text && text_add(j, "", 0) && j->status == SCHED_OK)
        fail_job(j, SCHED_ENOMEM, "out of memory for the generated text");
    update_stats(s, j, n_lat, sched_now() - t_start);
    if (sched_job_record(s->st, j, err))
        fprintf(stderr, "outpost serve: telemetry for request %s: %s\n", j->request_id, err);
    /* The caller may free the job as soon as on_done is called: drain must
     * no longer find it (it still waits for `busy`). */
    pthread_mutex_lock(&s->mu);
    s->running = NULL;
    pthread_mutex_unlock(&s->mu);
    j->sink.on_done(j->sink.ud, j);
}

/* Attach the adapter waiting in lora_next (worker, under mu, between jobs).
 * The KV cache was computed with the old adapters, so it is forgotten: the
 * live session is saved first when no adapter was attached (contexts with
 * adapters neither save nor load KV states). */
static void lora_apply(sched *s)
{
    if (!s->lora)
        kv_park(s);
    const eng_lora *const one[1] = {s->lora_next};
    s->lora_rc = eng_ctx_set_loras(s->ctx, one, NULL, s->lora_next ? 1 : 0, s->lora_err);
    if (s->lora_rc) {
        eng_lora_close(s->lora_next);
        s->lora_rc = SCHED_EINPUT;
    } else {
        cached_cut(s, 0);
        s->live_session[0] = '\0';
        s->live_dirty = false;
        eng_lora_close(s->lora);
        s->lora = s->lora_next;
    }
    s->lora_next = NULL;
    s->lora_change = false;
    pthread_cond_broadcast(&s->cv_idle);
}

static void *worker_main(void *arg)
{
    sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->q_len == 0 && !s->stop && !s->lora_change)
            pthread_cond_wait(&s->cv_work, &s->mu);
        if (s->lora_change) {
            lora_apply(s);
            continue;
        }
        if (s->q_len == 0)
            break;
        sched_job *j = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        s->stats.queue_depth = (int64_t)s->q_len;
        s->running = j;
        s->stats.busy = true;
        pthread_mutex_unlock(&s->mu);
        run_job(s, j);
        pthread_mutex_lock(&s->mu);
        s->stats.busy = false;
        pthread_cond_broadcast(&s->cv_idle);
    }
    pthread_mutex_unlock(&s->mu);
    /* Stopping: the live session is saved so a restart can resume it. */
    kv_park(s);
    return NULL;
}

/* ---- lifetime --------------------------------------------------------------- */

static int warm_up(sched *s, char err[256])
{
    /* Touch every weight page and size the scratch buffers: one prompt pass
     * of two tokens and one decode step, then forget them. */
    int32_t t0 = tok_bos(s->tk) >= 0 ? tok_bos(s->tk) : 0;
    int32_t ids[2] = {t0, t0};
    int rc = eng_eval(s->ctx, ids, 2, false, err);
    if (!rc)
        rc = eng_eval(s->ctx, ids, 1, false, err);
    eng_kv_truncate(s->ctx, 0);
    return rc;
}

int sched_open(sched **out, const sched_opts *o, char err[256])
{
    *out = NULL;
    sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, 256, "out of memory");
        return SCHED_ENOMEM;
    }
    int rc = SCHED_ENOMEM;
    snprintf(s->name, sizeof s->name, "%s", o->name ? o->name : "default");
    s->st = o->st;
    s->stats.decode_tok_s = NAN;
    s->stats.job_s = NAN;
    s->q_cap = o->queue_max > 0 ? (size_t)o->queue_max : 16;
    s->stats.queue_max = (int64_t)s->q_cap;
    s->max_tokens_default = o->max_tokens_default > 0 ? o->max_tokens_default : 256;
    s->max_tokens_limit = o->max_tokens_limit;
    s->max_prompt_tokens = o->max_prompt_tokens;
    s->kv_budget_bytes = o->kv_budget_bytes > 0 ? o->kv_budget_bytes : 0;
    if (o->kv_dir && o->st && !(s->kv_dir = strdup(o->kv_dir))) {
        snprintf(err, 256, "out of memory");
        goto fail;
    }
    if (!(s->queue = calloc(s->q_cap, sizeof *s->queue))) {
        snprintf(err, 256, "out of memory for a queue of %zu", s->q_cap);
        goto fail;
    }
    pthread_condattr_t ca;
    if (pthread_mutex_init(&s->mu, NULL)) {
        snprintf(err, 256, "cannot create a mutex");
        goto fail;
    }
    s->mu_ok = true;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    s->cv_work_ok = pthread_cond_init(&s->cv_work, &ca) == 0;
    s->cv_idle_ok = pthread_cond_init(&s->cv_idle, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!s->cv_work_ok || !s->cv_idle_ok) {
        snprintf(err, 256, "cannot create a condition variable");
        goto fail;
    }

    char eerr[256];
    if (!o->path || eng_model_open(&s->model, o->path, eerr)) {
        snprintf(err, 256, "%s", o->path ? eerr : "no model file given");
        rc = SCHED_ELOAD;
        goto fail;
    }
    const eng_hparams *hp = eng_model_hparams(s->model);
    s->tk = eng_model_tok(s->model);
    eng_ctx_params cp = eng_ctx_params_default();
    cp.n_ctx = o->n_ctx > 0 ? o->n_ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    cp.n_threads = o->n_threads;
    cp.n_batch = o->n_batch;
    if (o->kv_type == QT_Q8_0)
        cp.kv_type = QT_Q8_0;
    if (eng_ctx_new(&s->ctx, s->model, &cp, eerr)) {
        snprintf(err, 256, "%s: %s", o->path, eerr);
        rc = SCHED_ELOAD;
        goto fail;
    }
    s->n_ctx = eng_n_ctx(s->ctx);

    chat_detect_gguf(eng_model_gguf(s->model), s->tk, &s->tmpl);
    if (o->chat_template && o->chat_template[0] &&
        chat_family_parse(o->chat_template, &s->tmpl.family) != CHAT_OK) {
        snprintf(err, 256, "%s: chat template '%s' is not a known family", s->name,
                 o->chat_template);
        rc = SCHED_EINPUT;
        goto fail;
    }
    const char *ends[CHAT_END_MAX];
    size_t n_ends = chat_end_tokens(&s->tmpl, ends, CHAT_END_MAX);
    for (size_t i = 0; i < n_ends; i++) {
        int32_t id = tok_find(s->tk, ends[i], strlen(ends[i]));
        if (id >= 0)
            s->end_ids[s->n_end_ids++] = id;
    }
    s->n_tmpl_stops = chat_stop_texts(&s->tmpl, s->tmpl_stops, CHAT_END_MAX);
    if (o->warmup && warm_up(s, eerr)) {
        snprintf(err, 256, "%s: warm-up: %s", o->path, eerr);
        rc = SCHED_ELOAD;
        goto fail;
    }
    if (kv_on(s))
        kv_sweep(s);
    if (pthread_create(&s->thread, NULL, worker_main, s)) {
        snprintf(err, 256, "cannot start the engine worker thread");
        goto fail;
    }
    s->thread_ok = true;
    *out = s;
    return SCHED_OK;
fail:
    sched_close(s);
    return rc;
}

int sched_drain(sched *s, int timeout_ms)
{
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    while ((s->q_len || s->stats.busy) && timeout_ms > 0)
        if (pthread_cond_timedwait(&s->cv_idle, &s->mu, &deadline) == ETIMEDOUT)
            break;
    int n = (int)s->q_len + (s->running ? 1 : 0);
    for (size_t i = 0; i < s->q_len; i++)
        atomic_store(&s->queue[(s->q_head + i) % s->q_cap]->cancel, true);
    if (s->running)
        atomic_store(&s->running->cancel, true);
    while (s->q_len || s->stats.busy)
        pthread_cond_wait(&s->cv_idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return n;
}

void sched_close(sched *s)
{
    if (!s)
        return;
    if (s->thread_ok) {
        sched_drain(s, 0);
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv_work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    if (s->cv_work_ok)
        pthread_cond_destroy(&s->cv_work);
    if (s->cv_idle_ok)
        pthread_cond_destroy(&s->cv_idle);
    if (s->mu_ok)
        pthread_mutex_destroy(&s->mu);
    eng_ctx_free(s->ctx);
    eng_lora_close(s->lora); /* after the context it was attached to */
    eng_lora_close(s->lora_next);
    eng_model_close(s->model);
    free(s->queue);
    free(s->kv_dir);
    free(s->cached);
    free(s->lat_ms);
    free(s);
}

const char *sched_name(const sched *s) { return s->name; }
const eng_model *sched_model(const sched *s) { return s->model; }
int32_t sched_n_ctx(const sched *s) { return s->n_ctx; }

int sched_submit(sched *s, sched_job *j, char err[256])
{
    pthread_mutex_lock(&s->mu);
    int rc = SCHED_OK;
    if (s->closing) {
        snprintf(err, 256, "the agent is shutting down");
        rc = SCHED_ECLOSED;
    } else if (s->q_len == s->q_cap) {
        snprintf(err, 256, "the queue of model %s is full (%zu waiting)", s->name, s->q_len);
        rc = SCHED_EFULL;
    } else {
        s->queue[(s->q_head + s->q_len) % s->q_cap] = j;
        s->q_len++;
        s->stats.queue_depth = (int64_t)s->q_len;
        pthread_cond_signal(&s->cv_work);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int sched_set_adapter(sched *s, const char *path, char err[256])
{
    eng_lora *l = NULL;
    if (path && eng_lora_open(&l, s->model, path, err))
        return SCHED_ELOAD;
    pthread_mutex_lock(&s->mu);
    while (s->lora_change)
        pthread_cond_wait(&s->cv_idle, &s->mu);
    if (s->stop || s->closing) {
        pthread_mutex_unlock(&s->mu);
        eng_lora_close(l);
        snprintf(err, 256, "model %s is shutting down", s->name);
        return SCHED_ECLOSED;
    }
    s->lora_next = l;
    s->lora_change = true;
    pthread_cond_signal(&s->cv_work);
    while (s->lora_change)
        pthread_cond_wait(&s->cv_idle, &s->mu);
    int rc = s->lora_rc;
    if (rc)
        snprintf(err, 256, "%s", s->lora_err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void sched_get_stats(sched *s, sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}

static int local_submit(void *ud, sched_job *job, char err[256])
{
    return sched_submit(ud, job, err);
}

sched_backend sched_backend_local(sched *s)
{
    return (sched_backend){.name = "local", .ud = s, .submit = local_submit};
}
