/*
 * http.c - the HTTP front: listeners, access control, routes, and the life
 * of a generation request from its body to the last SSE event.
 *
 * One MHD daemon per listener (Unix socket, TCP), each with its own small
 * pool of epoll threads. Handlers never block: a generation request is
 * validated, routed and queued, then its connection is suspended; the
 * engine worker's callbacks (sink) append output under the request's mutex
 * and resume the connection, and MHD calls back to send it. For streaming,
 * the response is a chunked body whose reader suspends the connection
 * whenever it has caught up with the generator.
 *
 * A request record (http_req) is shared by up to three owners: the
 * connection (until MHD reports the request completed), the job (until its
 * on_done), and the streaming response (until MHD frees it); the last one
 * to let go frees it. Suspend and resume are paired through r->suspended,
 * read and written under r->mu, so a wake-up can neither be lost nor hit a
 * connection that is not suspended. The worker never calls into MHD while
 * holding r->mu.
 *
 * Client disconnects: MHD does not watch a suspended connection, so before
 * every token the worker asks `gone`, which polls the socket for a hang-up
 * while (and only while) the connection is parked and its descriptor
 * therefore still open.
 *
 * One turn at a time per session: a request that names a session holds the
 * session's turn from before it loads the history until its job has recorded
 * the reply (or it ends without a job); another request for the same session
 * waits, suspended, in a FIFO line (see session_acquire for why it waits
 * rather than being refused). Lock order: session_mu, then a request's mu.
 */
#include "http.h"

#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- routes and counters -------------------------------------------------- */

typedef enum route {
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_CHAT,
    R_COMPLETIONS,
    R_SESSIONS,
    R_SESSION,
    R_POLICY_RELOAD,
    R_OTHER,
    R_COUNT
} route;

static const char *const route_paths[R_COUNT] = {
    "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
    "/v1/sessions", "/v1/sessions/{id}", "/v1/policy/reload", "other"};

/* 499 (as nginx counts it): the client hung up before its answer. */
static const unsigned status_codes[] = {200, 400, 401, 403, 404, 405, 413, 429, 499, 500, 503, 504};
#define N_CODES (sizeof status_codes / sizeof status_codes[0])

static size_t code_index(unsigned code)
{
    for (size_t i = 0; i < N_CODES; i++)
        if (status_codes[i] == code)
            return i;
    return N_CODES; /* "other" */
}

typedef struct listener {
    http_server *h;
    bool tcp;
    int fd;
    struct MHD_Daemon *d;
} listener;

struct http_server {
    listener lu, lt;          /* Unix socket, TCP */
    char *socket_path;
    int tcp_port;
    size_t max_body;
    double request_timeout_s;
    api_limits limits;
    uid_t self_uid;
    gid_t self_gid;

    atomic_bool ready;
    http_services svc;        /* written before ready is set, read after */
    int64_t started;          /* Unix seconds: the models' "created" */

    pthread_rwlock_t access_lock;
    uint32_t *uids, *gids;
    size_t n_uids, n_gids;
    char *api_key;

    struct MHD_Response *health_ok, *health_loading;
    atomic_int in_flight;
    atomic_uint_fast64_t requests[R_COUNT][N_CODES + 1];
    atomic_uint_fast64_t route_decisions[POL_TARGET_COUNT];
    atomic_uint_fast64_t policy_fallbacks;

    pthread_mutex_t online_mu; /* the cached "online" fact */
    double online_checked;
    bool online;

    pthread_mutex_t facts_mu;  /* the device facts, as the sampler last set them */
    http_device_facts facts;

    pthread_mutex_t session_mu; /* turns, and every request's turn fields */
    struct session_turn *turns; /* sessions with a turn in flight */
};

/* ---- the request record --------------------------------------------------- */

typedef enum phase {
    PH_BODY,    /* receiving the body */
    PH_TURN,    /* suspended until its session's previous turn is over */
    PH_WAIT,    /* suspended until the job has output (or is done) */
    PH_ANSWERED /* a response is queued */
} phase;

typedef struct http_req http_req;

/* A session with a turn in flight: the request holding it is not listed;
 * the ones waiting are, oldest first. */
typedef struct session_turn {
    struct session_turn *next;
    char id[STORE_ID_SIZE];
    http_req *first, *last;
} session_turn;

struct http_req {
    http_server *h;
    struct MHD_Connection *conn;
    route rt;
    char method[8];
    char sid[STORE_NAME_MAX + 1]; /* R_SESSION: the id in the path */
    bool tcp;
    uid_t uid;
    phase ph;
    char *body;
    size_t len, cap;
    bool too_big;

    pthread_mutex_t mu;
    atomic_int refs;
    int fd;                /* the connection's socket, -1 once MHD is done with it */
    bool suspended;
    bool conn_gone;        /* MHD is done with the request */
    bool hung_up;          /* the worker saw the client's socket close */
    bool in_flight;        /* counted in h->in_flight */
    api_request q;         /* the parsed body */
    sched_job *job;
    bool stream;
    bool job_done;
    bool any_piece;        /* on_piece was called */
    bool stream_closed;    /* the final events are in `out` */
    char *out;             /* SSE bytes not yet handed to MHD */
    size_t out_len, out_off, out_cap;
    char resp_id[API_ID_SIZE];
    int64_t created;
    double t_arrival;      /* sched_now() when the body was complete */

    /* Session turns (session_mu). turn: the session this request holds or
     * waits for; turn_held: it holds it; turn_next: the next in line. */
    session_turn *turn;
    bool turn_held;
    http_req *turn_next;
    bool turn_granted;     /* (r->mu) the turn came while it waited */
    bool submitted;        /* a backend took the job (MHD's thread only) */
};

static void req_release(http_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->in_flight)
        atomic_fetch_sub(&r->h->in_flight, 1);
    pthread_mutex_destroy(&r->mu);
    sched_job_free(r->job);
    api_request_free(&r->q);
    free(r->body);
    free(r->out);
    free(r);
}

static http_req *req_new(http_server *h, struct MHD_Connection *conn, route rt, bool tcp,
                         uid_t uid)
{
    http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (pthread_mutex_init(&r->mu, NULL)) {
        free(r);
        return NULL;
    }
    r->h = h;
    r->conn = conn;
    r->rt = rt;
    r->tcp = tcp;
    r->uid = uid;
    r->fd = -1;
    atomic_init(&r->refs, 1);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        r->fd = ci->connect_fd;
    return r;
}

/* ---- responses ------------------------------------------------------------- */

static enum MHD_Result respond(http_server *h, struct MHD_Connection *c, route rt,
                               unsigned code, struct MHD_Response *resp)
{
    atomic_fetch_add(&h->requests[rt][code_index(code)], 1);
    enum MHD_Result ret = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result respond_text(http_server *h, struct MHD_Connection *c, route rt,
                                    unsigned code, const char *type, char *text, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    return respond(h, c, rt, code, resp);
}

/* A malloc'd JSON text as the whole body (NULL: out of memory). */
static enum MHD_Result respond_json(http_server *h, struct MHD_Connection *c, route rt,
                                    unsigned code, char *json)
{
    if (!json)
        return MHD_NO;
    return respond_text(h, c, rt, code, "application/json", json, strlen(json));
}

/* A jansson value as the whole body; takes the reference. */
static enum MHD_Result respond_value(http_server *h, struct MHD_Connection *c, route rt,
                                     unsigned code, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return respond_json(h, c, rt, code, s);
}

static enum MHD_Result respond_error(http_server *h, struct MHD_Connection *c, route rt,
                                     unsigned code, const char *err_code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* An error in OpenAI's shape, with our own code name. */
static enum MHD_Result respond_error(http_server *h, struct MHD_Connection *c, route rt,
                                     unsigned code, const char *err_code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return respond_json(h, c, rt, code, api_error_json((int)code, NULL, err_code, msg));
}

/* ---- access control -------------------------------------------------------- */

static bool id_in(const uint32_t *v, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == id)
            return true;
    return false;
}

/* SO_PEERCRED of a socket peer, checked against the allowed lists. */
static bool peer_allowed(http_server *h, int fd, uid_t *uid)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) || len != sizeof cr)
        return false;
    *uid = cr.uid;
    if (cr.uid == 0 || cr.uid == h->self_uid)
        return true;
    pthread_rwlock_rdlock(&h->access_lock);
    bool ok = id_in(h->uids, h->n_uids, cr.uid) || cr.gid == h->self_gid ||
              id_in(h->gids, h->n_gids, cr.gid);
#ifdef SO_PEERGROUPS
    if (!ok) {
        gid_t groups[256];
        socklen_t glen = sizeof groups;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
            for (size_t i = 0; i < glen / sizeof groups[0] && !ok; i++)
                ok = groups[i] == h->self_gid || id_in(h->gids, h->n_gids, groups[i]);
    }
#endif
    pthread_rwlock_unlock(&h->access_lock);
    return ok;
}

/* Constant-time comparison, so the key cannot be guessed byte by byte. */
static bool same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = la != lb;
    for (size_t i = 0; i < la; i++)
        diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (lb ? lb : 1)];
    return diff == 0;
}

static bool bearer_ok(http_server *h, struct MHD_Connection *c)
{
    pthread_rwlock_rdlock(&h->access_lock);
    bool ok = true;
    if (h->api_key) {
        const char *auth =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        ok = auth && strncasecmp(auth, "Bearer ", 7) == 0 && same_secret(auth + 7, h->api_key);
    }
    pthread_rwlock_unlock(&h->access_lock);
    return ok;
}

/* ---- facts for the policy -------------------------------------------------- */

/* Whether the device has a default route (IPv4 or IPv6): the cheapest real
 * sign of being online. Reachability of the cloud itself is the cloud
 * backend's to measure; until it does, the RTTs stay unknown. */
static bool default_route_exists(void)
{
    char line[512];
    bool found = false;
    FILE *f = fopen("/proc/net/route", "re");
    if (f) {
        if (fgets(line, sizeof line, f)) /* the header */
            while (!found && fgets(line, sizeof line, f)) {
                char ifname[64];
                unsigned long dest, gw, flags;
                if (sscanf(line, "%63s %lx %lx %lx", ifname, &dest, &gw, &flags) == 4 &&
                    dest == 0 && (flags & 1) && strcmp(ifname, "lo") != 0)
                    found = true;
            }
        fclose(f);
    }
    if (!found && (f = fopen("/proc/net/ipv6_route", "re"))) {
        while (!found && fgets(line, sizeof line, f)) {
            char dest[40], ifname[64];
            unsigned plen;
            if (sscanf(line, "%39s %x %*s %*s %*s %*s %*s %*s %*s %63s", dest, &plen, ifname) ==
                    3 &&
                plen == 0 && strcmp(ifname, "lo") != 0 &&
                strspn(dest, "0") == strlen(dest))
                found = true;
        }
        fclose(f);
    }
    return found;
}

static bool online_now(http_server *h)
{
    pthread_mutex_lock(&h->online_mu);
    double now = sched_now();
    if (now - h->online_checked > 5.0 || h->online_checked == 0) {
        h->online = default_route_exists();
        h->online_checked = now;
    }
    bool on = h->online;
    pthread_mutex_unlock(&h->online_mu);
    return on;
}

/* ---- device facts ------------------------------------------------------------ */

void http_device_facts_unknown(http_device_facts *f)
{
    *f = (http_device_facts){.battery_pct = NAN, .on_ac = -1, .temp_c = NAN,
                             .cpu_pressure_pct = NAN, .mem_pressure_pct = NAN,
                             .io_pressure_pct = NAN};
}

void http_set_device_facts(http_server *h, const http_device_facts *f)
{
    pthread_mutex_lock(&h->facts_mu);
    h->facts = *f;
    pthread_mutex_unlock(&h->facts_mu);
}

static http_device_facts device_facts(http_server *h)
{
    pthread_mutex_lock(&h->facts_mu);
    http_device_facts f = h->facts;
    pthread_mutex_unlock(&h->facts_mu);
    return f;
}

/* The policy's view: unknown stays unknown (nil in Lua). */
static void device_facts_into(http_server *h, pol_env *env)
{
    http_device_facts f = device_facts(h);
    env->battery_pct = f.battery_pct;
    env->on_ac = f.on_ac < 0 ? POL_UNKNOWN : f.on_ac != 0;
    env->temp_c = f.temp_c;
}

/* Peer and cloud as their backends last measured them: an RTT only while
 * reachable (nil otherwise), this month's cloud spend and the budget. A
 * remote that answers its probe also counts as being online without a
 * default route (a peer on the local network, a cloud behind a proxy). */
static void remote_facts_into(http_server *h, pol_env *env)
{
    cloud_facts f;
    if (h->svc.peer_link) {
        cloud_get_facts(h->svc.peer_link, &f);
        env->peer_rtt_ms = f.rtt_ms;
        env->online = env->online || f.online;
    }
    if (h->svc.cloud_link) {
        cloud_get_facts(h->svc.cloud_link, &f);
        env->cloud_rtt_ms = f.rtt_ms;
        env->online = env->online || f.online;
        env->cloud_spend_usd = f.spend_usd_month;
        env->cloud_budget_usd = f.budget_usd_month;
    }
}

/* ---- response bodies (api_) ----------------------------------------------- */

static api_served served_of(const sched_job *j)
{
    pol_target t = j->route == STORE_ROUTE_PEER    ? POL_TARGET_PEER
                   : j->route == STORE_ROUTE_CLOUD ? POL_TARGET_CLOUD
                                                   : POL_TARGET_LOCAL;
    return (api_served){.route = t, .reason = j->reason, .ttft_ms = j->ttft_ms,
                        .cached_tokens = j->cached_tokens, .truncated = j->truncated,
                        .session = j->session_id,
                        .remote = {.target = j->remote_target, .route = j->remote_route,
                                   .reason = j->remote_reason, .error = j->remote_error}};
}

static api_finish finish_of(const sched_job *j)
{
    return j->finish == SCHED_FINISH_LENGTH ? API_FINISH_LENGTH : API_FINISH_STOP;
}

static char *completion_body(const http_req *r)
{
    const sched_job *j = r->job;
    api_served sv = served_of(j);
    api_result res = {
        .id = r->resp_id, .created = r->created, .model = j->model, .text = j->text,
        .text_len = j->text_len, .finish = finish_of(j),
        .usage = {.prompt_tokens = j->prompt_tokens, .completion_tokens = j->completion_tokens},
        .served = &sv,
    };
    char *json = NULL, err[256];
    int rc = r->rt == R_CHAT ? api_chat_response(&res, &json, err)
                             : api_completion_response(&res, &json, err);
    if (rc)
        fprintf(stderr, "outpost serve: response: %s\n", err);
    return json;
}

/* One stream chunk's JSON (malloc'd), or NULL when out of memory. */
static char *chunk_json(const http_req *r, const api_chunk *c)
{
    char *json = NULL, err[256];
    int rc = r->rt == R_CHAT ? api_chat_chunk(c, &json, err) : api_completion_chunk(c, &json, err);
    if (rc)
        fprintf(stderr, "outpost serve: stream chunk: %s\n", err);
    return json;
}

static api_chunk chunk_base(const http_req *r)
{
    return (api_chunk){.id = r->resp_id, .created = r->created, .model = r->job->model,
                       .include_usage = r->q.include_usage};
}

/* ---- streaming ---------------------------------------------------------------- */

static bool out_add(http_req *r, const char *p, size_t n)
{
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 1024;
        while (cap < r->out_len + n)
            cap *= 2;
        char *o = realloc(r->out, cap);
        if (!o)
            return false;
        r->out = o;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    return true;
}

/* "data: <json>\n\n"; takes the malloc'd text. */
static bool out_event(http_req *r, char *s)
{
    if (!s)
        return false;
    bool ok = out_add(r, "data: ", 6) && out_add(r, s, strlen(s)) && out_add(r, "\n\n", 2);
    free(s);
    return ok;
}

/* Take the suspended flag: the caller resumes the connection after
 * unlocking. Called with r->mu held. */
static bool take_suspended(http_req *r)
{
    bool was = r->suspended;
    r->suspended = false;
    return was;
}

static void sink_piece(void *ud, const char *text, size_t len)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    bool first = !r->any_piece;
    r->any_piece = true;
    bool wake = false;
    if (r->stream && !r->conn_gone) {
        api_chunk c = chunk_base(r);
        c.role = first;
        c.text = text;
        c.text_len = len;
        out_event(r, chunk_json(r, &c));
        wake = take_suspended(r);
    }
    pthread_mutex_unlock(&r->mu);
    if (wake)
        MHD_resume_connection(r->conn);
}

static void close_stream(http_req *r);
static void session_release(http_server *h, http_req *r);

static void sink_done(void *ud, sched_job *j)
{
    http_req *r = ud;
    (void)j;
    /* The job has recorded its turn: the next request for the session may
     * load the history now, before this client even sees the answer. */
    session_release(r->h, r);
    pthread_mutex_lock(&r->mu);
    r->job_done = true;
    bool wake = false;
    if (!r->conn_gone) {
        if (r->stream && r->ph == PH_ANSWERED)
            close_stream(r);
        wake = take_suspended(r);
    }
    pthread_mutex_unlock(&r->mu);
    if (wake)
        MHD_resume_connection(r->conn);
    req_release(r);
}

static bool sink_gone(void *ud)
{
    http_req *r = ud;
    pthread_mutex_lock(&r->mu);
    bool gone = r->conn_gone;
    if (!gone && r->suspended && r->fd >= 0) {
        struct pollfd p = {.fd = r->fd, .events = POLLRDHUP};
        gone = poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
        r->hung_up = gone;
    }
    pthread_mutex_unlock(&r->mu);
    return gone;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_req *r = cls;
    (void)pos;
    pthread_mutex_lock(&r->mu);
    ssize_t n;
    if (r->out_off < r->out_len) {
        size_t avail = r->out_len - r->out_off;
        size_t k = avail < max ? avail : max;
        memcpy(buf, r->out + r->out_off, k);
        r->out_off += k;
        if (r->out_off == r->out_len)
            r->out_off = r->out_len = 0;
        n = (ssize_t)k;
    } else if (r->stream_closed) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        MHD_suspend_connection(r->conn);
        r->suspended = true;
        n = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

static void sse_free(void *cls) { req_release(cls); }

/* ---- one turn at a time per session ------------------------------------------ */

/* Take the session's turn for r, or join the line for it. A turn rebuilds
 * the conversation from the store and appends to it, so two at once would
 * both miss the other's messages and interleave their own.
 *
 * Decision: a second request for a busy session waits for the turn (FIFO,
 * bounded by the request timeout: 504 if its deadline passes first) instead
 * of being refused with 409. A chat app may well send a follow-up while the
 * reply to the previous message still streams, or retry after a timeout; as
 * with messages posted to a conversation, users expect them answered in
 * order with the earlier turn in the history, not an error every client has
 * to retry around (OpenAI's Assistants API refuses a message while a run is
 * active, and its clients poll). The wait costs a suspended connection and
 * nothing else.
 *
 * Returns 0 when r holds the turn, 1 when it waits in line (holding a
 * reference to r, dropped when it leaves the line), -1 when out of memory. */
static int session_acquire(http_server *h, http_req *r, const char *id)
{
    pthread_mutex_lock(&h->session_mu);
    session_turn *t = h->turns;
    while (t && strcmp(t->id, id))
        t = t->next;
    int rc = 0;
    if (!t) {
        if ((t = calloc(1, sizeof *t))) {
            snprintf(t->id, sizeof t->id, "%s", id);
            t->next = h->turns;
            h->turns = t;
            r->turn = t;
            r->turn_held = true;
        } else {
            rc = -1;
        }
    } else {
        atomic_fetch_add(&r->refs, 1);
        r->turn = t;
        r->turn_next = NULL;
        if (t->last)
            t->last->turn_next = r;
        else
            t->first = r;
        t->last = r;
        rc = 1;
    }
    pthread_mutex_unlock(&h->session_mu);
    return rc;
}

/* Let go of r's turn (if it holds one) and hand it to the next in line,
 * waking its connection; the last holder frees the entry. */
static void session_release(http_server *h, http_req *r)
{
    pthread_mutex_lock(&h->session_mu);
    session_turn *t = r->turn_held ? r->turn : NULL;
    http_req *next = NULL;
    if (t) {
        r->turn = NULL;
        r->turn_held = false;
        if ((next = t->first)) {
            t->first = next->turn_next;
            if (!t->first)
                t->last = NULL;
            next->turn_next = NULL;
            next->turn_held = true;
        } else {
            session_turn **pp = &h->turns;
            while (*pp != t)
                pp = &(*pp)->next;
            *pp = t->next;
            free(t);
        }
    }
    pthread_mutex_unlock(&h->session_mu);
    if (!next)
        return;
    pthread_mutex_lock(&next->mu);
    next->turn_granted = true;
    bool wake = !next->conn_gone && take_suspended(next);
    pthread_mutex_unlock(&next->mu);
    if (wake)
        MHD_resume_connection(next->conn);
    req_release(next); /* the line's reference */
}

/* The connection of r is over: leave the line, or give up a turn that no
 * job will release. */
static void session_leave(http_server *h, http_req *r)
{
    pthread_mutex_lock(&h->session_mu);
    session_turn *t = r->turn;
    bool queued = t && !r->turn_held;
    bool held = t && r->turn_held && !r->submitted;
    if (queued) {
        http_req **pp = &t->first, *prev = NULL;
        while (*pp != r) {
            prev = *pp;
            pp = &(*pp)->turn_next;
        }
        *pp = r->turn_next;
        if (t->last == r)
            t->last = prev;
        r->turn_next = NULL;
        r->turn = NULL;
    }
    pthread_mutex_unlock(&h->session_mu);
    if (queued)
        req_release(r); /* the line's reference; the connection still has its own */
    else if (held)
        session_release(h, r);
}

/* ---- generation -------------------------------------------------------------- */

static unsigned status_for(int rc)
{
    switch (rc) {
    case SCHED_EINPUT:
    case SCHED_ETOOLONG: return 400;
    case SCHED_EFULL: return 429;
    case SCHED_ECLOSED: return 503;
    case SCHED_ETIMEOUT: return 504;
    default: return 500;
    }
}

static const char *code_for(int rc)
{
    switch (rc) {
    case SCHED_EINPUT: return "invalid_request";
    case SCHED_ETOOLONG: return "context_length_exceeded";
    case SCHED_EFULL: return "queue_full";
    case SCHED_ECLOSED: return "shutting_down";
    case SCHED_ENOMEM: return "out_of_memory";
    case SCHED_ETIMEOUT: return "timeout";
    default: return "generation_failed";
    }
}

static sched *find_model(http_server *h, const char *name)
{
    const http_services *s = &h->svc;
    if (!strcmp(name, "default"))
        return s->n_models ? s->models[s->default_model] : NULL;
    for (size_t i = 0; i < s->n_models; i++)
        if (!strcmp(sched_name(s->models[i]), name))
            return s->models[i];
    return NULL;
}

/* Load the session's conversation into the job (before the new messages). */
static int load_session(http_server *h, http_req *r, const char *id, const char *model,
                        unsigned *code, char err[256])
{
    sched_job *j = r->job;
    store *st = h->svc.st;
    if (!st) {
        *code = 404;
        snprintf(err, 256, "sessions need the store, which this agent runs without");
        return -1;
    }
    int rc;
    if (!strcmp(id, "new")) {
        if ((rc = store_session_create(st, r->uid, model, NULL, j->session_id, err))) {
            *code = rc == STORE_EFULL ? 507 : 500;
            return -1;
        }
        return 0;
    }
    store_session sess;
    if ((rc = store_session_get(st, id, r->uid, &sess, err))) {
        *code = rc == STORE_ENOTFOUND ? 404 : 500;
        if (rc == STORE_ENOTFOUND)
            snprintf(err, 256, "no session '%s'", id);
        return -1;
    }
    snprintf(j->session_id, sizeof j->session_id, "%s", sess.id);
    store_message *m = NULL;
    size_t n = 0;
    if ((rc = store_messages_load(st, sess.id, r->uid, &m, &n, err))) {
        *code = 500;
        return -1;
    }
    rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = sched_job_add_msg(j, m[i].role, m[i].content, m[i].content_len);
    store_messages_free(m, n);
    if (rc) {
        *code = 500;
        snprintf(err, 256, "out of memory loading session '%s'", id);
        return -1;
    }
    j->n_history = j->n_msgs;
    return 0;
}

/* PII kinds anywhere in the conversation (history included: a cloud would
 * see all of it). */
static size_t scan_pii(http_server *h, const sched_job *j, const char *names[PII_KIND_COUNT])
{
    const pii *d = h->svc.pii;
    if (!d)
        return 0;
    bool seen[PII_KIND_COUNT] = {false};
    char err[256];
    for (size_t i = 0; i <= j->n_msgs; i++) {
        const char *text = i < j->n_msgs ? j->msgs[i].content : j->prompt;
        size_t len = i < j->n_msgs ? j->msgs[i].len : j->prompt_len;
        pii_finding *f = NULL;
        size_t nf = 0;
        if (!text || pii_scan(d, text, len, &f, &nf, err))
            continue;
        for (size_t k = 0; k < nf; k++)
            seen[f[k].kind] = true;
        free(f);
    }
    size_t n = 0;
    for (int k = 0; k < PII_KIND_COUNT; k++)
        if (seen[k])
            names[n++] = pii_kind_name((pii_kind)k);
    return n;
}

/* Ask the policy where to answer; fills job route/reason and returns the
 * backend to use. */
static sched_backend decide(http_server *h, http_req *r, sched *local, const api_request *q)
{
    sched_job *j = r->job;
    pol_decision d;
    const char *pii_names[PII_KIND_COUNT];
    if (h->svc.policy) {
        pol_req preq = {
            .prompt_tokens = j->full_tokens,
            .messages = (int64_t)(j->raw ? 1 : j->n_msgs),
            .route_requested = q->outpost.route,
            .privacy = q->outpost.privacy,
            .pii = pii_names,
            .n_pii = scan_pii(h, j, pii_names),
            .max_latency_ms = q->outpost.max_latency_ms,
        };
        pol_env env;
        pol_env_init(&env);
        env.online = online_now(h);
        remote_facts_into(h, &env);
        device_facts_into(h, &env);
        sched_stats st;
        sched_get_stats(local, &st);
        env.local_tok_s = st.decode_tok_s;
        env.queue_depth = st.queue_depth;
        char err[256];
        if (pol_route(h->svc.policy, &preq, &env, &d, err)) {
            atomic_fetch_add(&h->policy_fallbacks, 1);
            fprintf(stderr, "outpost serve: policy: %s (answered locally)\n", err);
        }
    } else {
        memset(&d, 0, sizeof d);
        d.target = POL_TARGET_LOCAL;
        snprintf(d.reason, sizeof d.reason, "no_policy");
    }
    if (d.max_tokens > 0 && d.max_tokens < j->max_tokens)
        j->max_tokens = d.max_tokens;
    snprintf(j->reason, sizeof j->reason, "%s", d.reason);
    j->redact = d.redact;
    atomic_fetch_add(&h->route_decisions[d.target], 1);

    sched_backend local_be = sched_backend_local(local);
    if (d.target == POL_TARGET_LOCAL)
        return local_be;
    const sched_backend *remote = d.target == POL_TARGET_PEER ? &h->svc.peer : &h->svc.cloud;
    const char *name = pol_target_name(d.target);
    if (!remote->submit) {
        snprintf(j->reason, sizeof j->reason, "%s_unconfigured", name);
        return local_be;
    }
    j->route = d.target == POL_TARGET_PEER ? STORE_ROUTE_PEER : STORE_ROUTE_CLOUD;
    return *remote;
}

static enum MHD_Result answer_generation(http_req *r);

/* The job's request from the parsed body. */
static int job_from_request(sched_job *j, const api_request *q)
{
    int rc = 0;
    for (size_t i = 0; i < q->n_messages && !rc; i++)
        rc = sched_job_add_msg(j, q->messages[i].role, q->messages[i].content,
                               q->messages[i].content_len);
    if (!rc && q->kind == API_COMPLETION)
        rc = sched_job_set_prompt(j, q->prompt, q->prompt_len);
    for (size_t i = 0; i < q->n_stop && !rc; i++)
        rc = sched_job_add_stop(j, q->stop[i], strlen(q->stop[i]));
    j->sampling.temp = (float)q->sampling.temperature;
    j->sampling.top_p = (float)q->sampling.top_p;
    j->sampling.top_k = q->sampling.top_k;
    j->sampling.min_p = (float)q->sampling.min_p;
    j->sampling.repeat_penalty = (float)q->sampling.repeat_penalty;
    if (q->has_seed)
        j->sampling.seed = q->seed;
    j->max_tokens = q->max_tokens;
    return rc;
}

/* Refuse a job the backend did not take: 429 with Retry-After, or 503. */
static enum MHD_Result refuse_job(http_req *r, sched *sc, int rc)
{
    http_server *h = r->h;
    sched_job *j = r->job;
    char err[256];
    j->status = rc;
    if (sched_job_record(h->svc.st, j, err))
        fprintf(stderr, "outpost serve: telemetry: %s\n", err);
    char *body = api_error_json((int)status_for(rc), NULL, code_for(rc),
                                rc == SCHED_EFULL ? "the model's queue is full; retry later"
                                                  : "the agent is shutting down");
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (rc == SCHED_EFULL) {
        /* The queue ahead at the recent pace of a job. */
        sched_stats st;
        sched_get_stats(sc, &st);
        double wait = isnan(st.job_s) ? 1 : st.job_s * (double)(st.queue_depth + 1);
        char ra[16];
        snprintf(ra, sizeof ra, "%d", wait < 1 ? 1 : wait > 600 ? 600 : (int)ceil(wait));
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    return respond(h, r->conn, r->rt, status_for(rc), resp);
}

/* Build, route and submit the job of a validated request (holding its
 * session's turn, if it names one). */
static enum MHD_Result submit_generation(http_req *r, sched *sc)
{
    http_server *h = r->h;
    char err[256] = "", perr[256] = "";
    unsigned code = 400;
    api_request *q = &r->q;
    int rc;
    if (!(r->job = sched_job_new()))
        return respond_error(h, r->conn, r->rt, 500, "out_of_memory", "out of memory");
    sched_job *j = r->job;
    j->t_arrival = r->t_arrival;
    if (h->request_timeout_s > 0)
        j->deadline = j->t_arrival + h->request_timeout_s;
    j->uid = r->uid;
    j->route = STORE_ROUTE_LOCAL;
    snprintf(j->model, sizeof j->model, "%s", sched_name(sc));
    r->stream = q->stream;
    if (q->outpost.session[0] &&
        load_session(h, r, q->outpost.session, sched_name(sc), &code, err))
        return respond_error(h, r->conn, r->rt, code,
                             code == 404 ? "session_not_found" : "session_error", "%s", err);
    if (job_from_request(j, q))
        return respond_error(h, r->conn, r->rt, 500, "out_of_memory", "out of memory");
    /* A prompt too long for this model may still suit a remote backend:
     * that failure waits for the routing decision. */
    int prc = sched_prepare(sc, j, perr);
    if (prc && prc != SCHED_ETOOLONG)
        return respond_error(h, r->conn, r->rt, status_for(prc), code_for(prc), "%s", perr);

    if (api_new_id(q->kind, r->resp_id, err))
        return respond_error(h, r->conn, r->rt, 500, "internal_error", "%s", err);
    snprintf(j->request_id, sizeof j->request_id, "%s", r->resp_id);
    r->created = (int64_t)time(NULL);

    sched_backend be = decide(h, r, sc, &r->q);
    bool local = be.ud == (void *)sc;
    if (local && prc)
        return respond_error(h, r->conn, r->rt, status_for(prc), code_for(prc), "%s", perr);
    j->sink = (sched_sink){.ud = r, .on_piece = sink_piece, .on_done = sink_done,
                           .gone = sink_gone};
    atomic_fetch_add(&r->refs, 1); /* the job's reference */
    /* Set before the job can finish; cleared again below if no backend
     * took it (then no on_done will come). */
    r->submitted = true;
    if (!local)
        snprintf(j->remote_target, sizeof j->remote_target, "%s", be.name ? be.name : "remote");
    rc = be.submit(be.ud, j, err);
    if (rc && !local) {
        /* The remote side refused at once: answer here, and say why (the
         * backend's own reason, such as over_budget, when it gave one). */
        const char *target = be.name ? be.name : "remote";
        snprintf(j->remote_error, sizeof j->remote_error, "%s", err);
        if (j->route != STORE_ROUTE_LOCAL) {
            snprintf(j->reason, sizeof j->reason, "%s_unreachable", target);
            j->route = STORE_ROUTE_LOCAL;
        }
        if (prc) {
            atomic_fetch_sub(&r->refs, 1);
            r->submitted = false;
            return respond_error(h, r->conn, r->rt, status_for(prc), code_for(prc),
                                 "%s (the policy chose the %s, which could not be reached: %s)",
                                 perr, target, err);
        }
        rc = sched_submit(sc, j, err);
    }
    if (rc) {
        atomic_fetch_sub(&r->refs, 1);
        r->submitted = false;
        return refuse_job(r, sc, rc);
    }
    r->in_flight = true;
    atomic_fetch_add(&h->in_flight, 1);
    pthread_mutex_lock(&r->mu);
    r->ph = PH_WAIT;
    bool ready = r->job_done || (r->stream && r->any_piece);
    if (!ready) {
        MHD_suspend_connection(r->conn);
        r->suspended = true;
    }
    pthread_mutex_unlock(&r->mu);
    return ready ? answer_generation(r) : MHD_YES;
}

/* submit_generation, then give back a session turn that no job will
 * release. (Once submitted, r->turn belongs to the job's on_done.) */
static enum MHD_Result run_generation(http_req *r, sched *sc)
{
    enum MHD_Result ret = submit_generation(r, sc);
    if (!r->submitted && r->turn)
        session_release(r->h, r);
    return ret;
}

static enum MHD_Result start_generation(http_req *r)
{
    http_server *h = r->h;
    r->t_arrival = sched_now();
    char err[256] = "";
    api_request *q = &r->q;
    int rc = r->rt == R_CHAT ? api_parse_chat(r->body, r->len, &h->limits, q, err)
                             : api_parse_completion(r->body, r->len, &h->limits, q, err);
    if (rc)
        return respond_error(h, r->conn, r->rt, (unsigned)api_error_status(rc),
                             api_error_code(rc), "%s", err);
    if (q->kind == API_COMPLETION && q->outpost.session[0])
        return respond_error(h, r->conn, r->rt, 400, "invalid_value",
                             "outpost.session: sessions are for /v1/chat/completions");
    sched *sc = find_model(h, q->model);
    if (!sc)
        return respond_error(h, r->conn, r->rt, 404, "model_not_found",
                             "the model '%s' does not exist", q->model);
    const char *sid = q->outpost.session;
    if (!sid[0] || !strcmp(sid, "new") || !h->svc.st)
        return run_generation(r, sc);

    /* Only the owner queues behind a session: anyone else gets the 404 at
     * once. */
    store_session sess;
    if ((rc = store_session_get(h->svc.st, sid, r->uid, &sess, err))) {
        if (rc == STORE_ENOTFOUND)
            return respond_error(h, r->conn, r->rt, 404, "session_not_found", "no session '%s'",
                                 sid);
        return respond_error(h, r->conn, r->rt, 500, "session_error", "%s", err);
    }
    rc = session_acquire(h, r, sess.id);
    if (rc < 0)
        return respond_error(h, r->conn, r->rt, 500, "out_of_memory", "out of memory");
    if (rc == 0)
        return run_generation(r, sc);
    pthread_mutex_lock(&r->mu);
    bool granted = r->turn_granted;
    if (!granted) {
        r->ph = PH_TURN;
        MHD_suspend_connection(r->conn);
        r->suspended = true;
    }
    pthread_mutex_unlock(&r->mu);
    return granted ? run_generation(r, sc) : MHD_YES;
}

/* Woken with its session's turn: go on, unless the wait used up the
 * request's time. */
static enum MHD_Result resume_generation(http_req *r)
{
    http_server *h = r->h;
    double waited_s = sched_now() - r->t_arrival;
    if (h->request_timeout_s > 0 && waited_s >= h->request_timeout_s) {
        session_release(h, r);
        return respond_error(h, r->conn, r->rt, 504, "timeout",
                             "the session's previous turn took the whole request timeout "
                             "(%.0f s)", h->request_timeout_s);
    }
    sched *sc = find_model(h, r->q.model);
    if (!sc) {
        session_release(h, r);
        return respond_error(h, r->conn, r->rt, 404, "model_not_found",
                             "the model '%s' does not exist", r->q.model);
    }
    return run_generation(r, sc);
}

/* The closing events of a stream: the finish reason with the usage and
 * outpost objects (or the error), then [DONE]. Called with r->mu held. */
static void close_stream(http_req *r)
{
    const sched_job *j = r->job;
    if (j->status == SCHED_OK) {
        api_served sv = served_of(j);
        api_chunk c = chunk_base(r);
        c.role = !r->any_piece;
        c.finish = finish_of(j);
        c.served = &sv;
        out_event(r, chunk_json(r, &c));
        if (r->q.include_usage) {
            api_usage u = {j->prompt_tokens, j->completion_tokens};
            c = chunk_base(r);
            c.usage = &u;
            out_event(r, chunk_json(r, &c));
        }
    } else {
        out_event(r, api_error_json(500, NULL, "generation_failed", j->err));
    }
    out_add(r, "data: [DONE]\n\n", 14);
    r->stream_closed = true;
}

/* Called again after the job woke the connection: send what there is. */
static enum MHD_Result answer_generation(http_req *r)
{
    http_server *h = r->h;
    pthread_mutex_lock(&r->mu);
    bool done = r->job_done, any = r->any_piece;
    if (!done && !(r->stream && any)) {
        /* Nothing to send yet: park again. */
        MHD_suspend_connection(r->conn);
        r->suspended = true;
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&r->mu);
    sched_job *j = r->job;
    if (done && (!r->stream || !any)) {
        /* The job is over (its fields are final) and nothing was sent. */
        if (j->status != SCHED_OK) {
            r->ph = PH_ANSWERED;
            return respond_error(h, r->conn, r->rt, status_for(j->status), code_for(j->status),
                                 "%s", j->err);
        }
        if (j->finish == SCHED_FINISH_CANCELLED && r->hung_up) {
            /* Nobody to answer: close the connection. */
            r->ph = PH_ANSWERED;
            atomic_fetch_add(&h->requests[r->rt][code_index(499)], 1);
            return MHD_NO;
        }
        if (j->finish == SCHED_FINISH_CANCELLED) {
            r->ph = PH_ANSWERED;
            return respond_error(h, r->conn, r->rt, 503, "cancelled",
                                 "the request was cancelled (the agent is stopping)");
        }
        if (!r->stream) {
            r->ph = PH_ANSWERED;
            return respond_json(h, r->conn, r->rt, 200, completion_body(r));
        }
    }
    /* Streaming: headers now, events through sse_read. */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, r, sse_free);
    if (!resp)
        return MHD_NO;
    atomic_fetch_add(&r->refs, 1); /* the response's reference */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    pthread_mutex_lock(&r->mu);
    r->ph = PH_ANSWERED;
    /* A job that ended before this point left the closing events to us. */
    if (r->job_done && !r->stream_closed)
        close_stream(r);
    pthread_mutex_unlock(&r->mu);
    return respond(h, r->conn, r->rt, 200, resp);
}

/* ---- the other routes ---------------------------------------------------------- */

static enum MHD_Result answer_models(http_server *h, struct MHD_Connection *c)
{
    api_model_info *info = calloc(h->svc.n_models ? h->svc.n_models : 1, sizeof *info);
    if (!info)
        return MHD_NO;
    for (size_t i = 0; i < h->svc.n_models; i++)
        info[i] = (api_model_info){.id = sched_name(h->svc.models[i]), .created = h->started};
    char *json = NULL, err[256];
    if (api_models_list(info, h->svc.n_models, &json, err))
        fprintf(stderr, "outpost serve: /v1/models: %s\n", err);
    free(info);
    return respond_json(h, c, R_MODELS, 200, json);
}

static json_t *session_json(const store_session *s)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "id", s->id, "object", "session",
                     "model", s->model, "title", s->title, "created",
                     (json_int_t)(s->created_ms / 1000), "updated",
                     (json_int_t)(s->updated_ms / 1000), "last_used",
                     (json_int_t)(s->last_used_ms / 1000), "messages",
                     (json_int_t)s->n_messages);
}

static enum MHD_Result answer_sessions(http_server *h, struct MHD_Connection *c, route rt,
                                       const char *method, const char *id, uid_t uid,
                                       json_t *create)
{
    store *st = h->svc.st;
    char err[256];
    if (!st)
        return respond_error(h, c, rt, 404, "session_not_found", "this agent keeps no sessions");
    if (rt == R_SESSIONS && !strcmp(method, "GET")) {
        store_session *v = NULL;
        size_t n = 0;
        if (store_session_list(st, uid, 0, &v, &n, err))
            return respond_error(h, c, rt, 500, "store_error", "%s", err);
        json_t *data = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(data, session_json(&v[i]));
        free(v);
        return respond_value(h, c, rt, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    if (rt == R_SESSIONS) { /* POST: create */
        const char *model = json_string_value(json_object_get(create, "model"));
        const char *title = json_string_value(json_object_get(create, "title"));
        sched *sc = find_model(h, model ? model : "default");
        if (!sc)
            return respond_error(h, c, rt, 404, "model_not_found", "the model '%s' does not exist",
                                 model ? model : "default");
        char sid[STORE_ID_SIZE];
        store_session s;
        if (store_session_create(st, uid, sched_name(sc), title, sid, err) ||
            store_session_get(st, sid, uid, &s, err))
            return respond_error(h, c, rt, 400, "session_error", "%s", err);
        return respond_value(h, c, rt, 200, session_json(&s));
    }
    store_session s;
    if (!strcmp(method, "DELETE")) {
        int rc = store_session_delete(st, id, uid, &s, err);
        if (rc == STORE_ENOTFOUND)
            return respond_error(h, c, rt, 404, "session_not_found", "no session '%s'", id);
        if (rc)
            return respond_error(h, c, rt, 500, "store_error", "%s", err);
        if (s.kv_path[0])
            unlink(s.kv_path);
        return respond_value(h, c, rt, 200, json_pack("{s:s, s:s, s:b}", "id", s.id, "object",
                                                     "session.deleted", "deleted", 1));
    }
    int rc = store_session_get(st, id, uid, &s, err);
    if (rc == STORE_ENOTFOUND)
        return respond_error(h, c, rt, 404, "session_not_found", "no session '%s'", id);
    if (rc)
        return respond_error(h, c, rt, 500, "store_error", "%s", err);
    store_message *m = NULL;
    size_t n = 0;
    if (store_messages_load(st, id, uid, &m, &n, err))
        return respond_error(h, c, rt, 500, "store_error", "%s", err);
    json_t *o = session_json(&s), *msgs = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(msgs, json_pack("{s:s, s:s%, s:I}", "role",
                                              store_role_name(m[i].role), "content", m[i].content,
                                              m[i].content_len, "created",
                                              (json_int_t)(m[i].created_ms / 1000)));
    store_messages_free(m, n);
    json_object_set_new(o, "data", msgs);
    return respond_value(h, c, rt, 200, o);
}

/* ---- /metrics -------------------------------------------------------------------- */

typedef struct textbuf {
    char *p;
    size_t len, cap;
    bool failed;
} textbuf;

static void tb_printf(textbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(textbuf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    if (!b->p && !(b->p = malloc(b->cap = 8192))) {
        b->failed = true;
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void tb_histogram(textbuf *b, const char *name, const char *model, const double *bounds,
                         int nb, const uint64_t *counts, double sum)
{
    uint64_t cum = 0;
    for (int i = 0; i < nb; i++) {
        cum += counts[i];
        tb_printf(b, "%s_bucket{model=\"%s\",le=\"%g\"} %llu\n", name, model, bounds[i] / 1000,
                  (unsigned long long)cum);
    }
    cum += counts[nb];
    tb_printf(b, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", name, model,
              (unsigned long long)cum);
    tb_printf(b, "%s_sum{model=\"%s\"} %.6f\n%s_count{model=\"%s\"} %llu\n", name, model,
              sum / 1000, name, model, (unsigned long long)cum);
}

/* The cloud spend (0 without a cloud), and per remote target whether it is
 * reachable, its round trip and how its calls ended. */
static void metrics_remotes(http_server *h, textbuf *b)
{
    cloud_facts f[2];
    cloud *links[2] = {h->svc.peer_link, h->svc.cloud_link};
    for (int i = 0; i < 2; i++)
        if (links[i])
            cloud_get_facts(links[i], &f[i]);
    tb_printf(b, "# HELP outpost_cloud_spend_usd Estimated cloud spend this month.\n"
                 "# TYPE outpost_cloud_spend_usd gauge\noutpost_cloud_spend_usd %.6f\n",
              links[1] ? f[1].spend_usd_month : 0.0);
    if (links[1] && !isnan(f[1].budget_usd_month))
        tb_printf(b, "# HELP outpost_cloud_budget_usd The monthly cloud budget.\n"
                     "# TYPE outpost_cloud_budget_usd gauge\noutpost_cloud_budget_usd %.6f\n",
                  f[1].budget_usd_month);
    if (!links[0] && !links[1])
        return;
    tb_printf(b, "# HELP outpost_remote_up 1 when the last probe or call reached the target.\n"
                 "# TYPE outpost_remote_up gauge\n");
    for (int i = 0; i < 2; i++)
        if (links[i])
            tb_printf(b, "outpost_remote_up{target=\"%s\"} %d\n", cloud_target(links[i]),
                      f[i].online ? 1 : 0);
    tb_printf(b, "# HELP outpost_remote_rtt_seconds Round trip of the last probe.\n"
                 "# TYPE outpost_remote_rtt_seconds gauge\n");
    for (int i = 0; i < 2; i++)
        if (links[i] && !isnan(f[i].rtt_ms))
            tb_printf(b, "outpost_remote_rtt_seconds{target=\"%s\"} %.6f\n",
                      cloud_target(links[i]), f[i].rtt_ms / 1e3);
    tb_printf(b, "# HELP outpost_remote_calls_total Jobs routed to a remote target, by how "
                 "they ended (fallback: answered locally after a failed call; refused: "
                 "answered locally at once).\n# TYPE outpost_remote_calls_total counter\n");
    for (int i = 0; i < 2; i++) {
        if (!links[i])
            continue;
        const char *t = cloud_target(links[i]);
        tb_printf(b, "outpost_remote_calls_total{target=\"%s\",result=\"ok\"} %llu\n"
                     "outpost_remote_calls_total{target=\"%s\",result=\"failed\"} %llu\n"
                     "outpost_remote_calls_total{target=\"%s\",result=\"fallback\"} %llu\n"
                     "outpost_remote_calls_total{target=\"%s\",result=\"refused\"} %llu\n",
                  t, (unsigned long long)f[i].calls_ok, t, (unsigned long long)f[i].calls_failed,
                  t, (unsigned long long)f[i].fallbacks, t, (unsigned long long)f[i].refused);
    }
}

/* Saved KV states of sessions: what each model's worker saved, restored,
 * refused on restore and evicted for the budget, and what is on disk now
 * (all models share one directory and budget). */
static void metrics_kv(http_server *h, textbuf *b, sched_stats *st, size_t nm)
{
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"outpost_kv_saves_total", "Session KV states written to disk.",
         offsetof(sched_stats, kv_saves)},
        {"outpost_kv_restores_total", "Session KV states loaded back into the live cache.",
         offsetof(sched_stats, kv_restores)},
        {"outpost_kv_restore_failures_total",
         "Saved KV states refused on restore (damaged, another model); the turn prefilled.",
         offsetof(sched_stats, kv_restore_failures)},
        {"outpost_kv_evictions_total", "Saved KV states removed to fit the disk budget.",
         offsetof(sched_stats, kv_evictions)},
    };
    for (size_t k = 0; k < sizeof counters / sizeof counters[0]; k++) {
        tb_printf(b, "# HELP %s %s\n# TYPE %s counter\n", counters[k].name, counters[k].help,
                  counters[k].name);
        for (size_t i = 0; i < nm; i++) {
            uint64_t v;
            memcpy(&v, (const char *)&st[i] + counters[k].off, sizeof v);
            tb_printf(b, "%s{model=\"%s\"} %llu\n", counters[k].name,
                      sched_name(h->svc.models[i]), (unsigned long long)v);
        }
    }
    int64_t sessions = 0, bytes = 0;
    char err[256];
    if (!h->svc.st || store_kv_usage(h->svc.st, &sessions, &bytes, err))
        return;
    tb_printf(b, "# HELP outpost_kv_saved_sessions Sessions whose KV state is on disk.\n"
                 "# TYPE outpost_kv_saved_sessions gauge\noutpost_kv_saved_sessions %lld\n"
                 "# HELP outpost_kv_disk_bytes Bytes of saved KV states on disk.\n"
                 "# TYPE outpost_kv_disk_bytes gauge\noutpost_kv_disk_bytes %lld\n",
              (long long)sessions, (long long)bytes);
}

/* Known facts only: a gauge that is absent means "this device cannot say". */
static void metrics_device_facts(http_server *h, textbuf *b)
{
    http_device_facts f = device_facts(h);
    if (!isnan(f.battery_pct))
        tb_printf(b, "# HELP outpost_battery_percent Battery charge (sensor plugins).\n"
                     "# TYPE outpost_battery_percent gauge\noutpost_battery_percent %g\n",
                  f.battery_pct);
    if (f.on_ac >= 0)
        tb_printf(b, "# HELP outpost_on_ac 1 on mains power, 0 on battery.\n"
                     "# TYPE outpost_on_ac gauge\noutpost_on_ac %d\n", f.on_ac ? 1 : 0);
    if (!isnan(f.temp_c))
        tb_printf(b, "# HELP outpost_temperature_celsius The hottest thermal zone.\n"
                     "# TYPE outpost_temperature_celsius gauge\noutpost_temperature_celsius %g\n",
                  f.temp_c);
    const struct { const char *name; double v; } psi[] = {
        {"cpu", f.cpu_pressure_pct}, {"memory", f.mem_pressure_pct}, {"io", f.io_pressure_pct}};
    bool head = false;
    for (size_t i = 0; i < sizeof psi / sizeof psi[0]; i++) {
        if (isnan(psi[i].v))
            continue;
        if (!head)
            tb_printf(b, "# HELP outpost_pressure_stall_percent Share of the last 10 s some "
                         "task stalled on the resource (PSI some avg10).\n"
                         "# TYPE outpost_pressure_stall_percent gauge\n");
        head = true;
        tb_printf(b, "outpost_pressure_stall_percent{resource=\"%s\"} %g\n", psi[i].name,
                  psi[i].v);
    }
}

static enum MHD_Result answer_metrics(http_server *h, struct MHD_Connection *c)
{
    textbuf b = {0};
    tb_printf(&b, "# HELP outpost_up 1 when the models are loaded and requests are served.\n"
                  "# TYPE outpost_up gauge\noutpost_up %d\n",
              atomic_load(&h->ready) ? 1 : 0);
    tb_printf(&b, "# HELP outpost_http_requests_total HTTP requests answered, by route and "
                  "status.\n# TYPE outpost_http_requests_total counter\n");
    for (int rt = 0; rt < R_COUNT; rt++)
        for (size_t k = 0; k <= N_CODES; k++) {
            uint64_t n = atomic_load(&h->requests[rt][k]);
            if (n == 0)
                continue;
            char code[8];
            if (k < N_CODES)
                snprintf(code, sizeof code, "%u", status_codes[k]);
            else
                snprintf(code, sizeof code, "other");
            tb_printf(&b, "outpost_http_requests_total{route=\"%s\",code=\"%s\"} %llu\n",
                      route_paths[rt], code, (unsigned long long)n);
        }
    tb_printf(&b, "# HELP outpost_route_decisions_total Routing decisions, by target the "
                  "policy chose.\n# TYPE outpost_route_decisions_total counter\n");
    for (int t = POL_TARGET_LOCAL; t < POL_TARGET_COUNT; t++)
        tb_printf(&b, "outpost_route_decisions_total{target=\"%s\"} %llu\n",
                  pol_target_name((pol_target)t),
                  (unsigned long long)atomic_load(&h->route_decisions[t]));
    if (h->svc.policy) {
        pol_counters pc;
        pol_stats(h->svc.policy, &pc);
        tb_printf(&b, "# HELP outpost_policy_errors_total route() calls that failed and went "
                      "local.\n# TYPE outpost_policy_errors_total counter\n"
                      "outpost_policy_errors_total %llu\n"
                      "# TYPE outpost_policy_reloads_total counter\n"
                      "outpost_policy_reloads_total %llu\n",
                  (unsigned long long)pc.errors, (unsigned long long)pc.reloads);
    }
    metrics_remotes(h, &b);
    metrics_device_facts(h, &b);
    tb_printf(&b, "# HELP outpost_in_flight_requests Generation requests queued or running.\n"
                  "# TYPE outpost_in_flight_requests gauge\noutpost_in_flight_requests %d\n",
              atomic_load(&h->in_flight));

    static const char *const heads[] = {
        "# HELP outpost_queue_depth Requests waiting for the model's engine.\n"
        "# TYPE outpost_queue_depth gauge\n",
        "# HELP outpost_prompt_tokens_total Prompt tokens of finished requests.\n"
        "# TYPE outpost_prompt_tokens_total counter\n",
        "# HELP outpost_completion_tokens_total Generated tokens.\n"
        "# TYPE outpost_completion_tokens_total counter\n",
        "# HELP outpost_cached_tokens_total Prompt tokens reused from the KV cache.\n"
        "# TYPE outpost_cached_tokens_total counter\n",
        "# HELP outpost_requests_total Generation requests the engine finished.\n"
        "# TYPE outpost_requests_total counter\n",
        "# HELP outpost_decode_tokens_per_second Recent decode speed.\n"
        "# TYPE outpost_decode_tokens_per_second gauge\n",
    };
    size_t nm = atomic_load(&h->ready) ? h->svc.n_models : 0;
    sched_stats *st = nm ? calloc(nm, sizeof *st) : NULL;
    if (nm && !st)
        nm = 0;
    for (size_t i = 0; i < nm; i++)
        sched_get_stats(h->svc.models[i], &st[i]);
    for (size_t k = 0; k < sizeof heads / sizeof heads[0]; k++) {
        tb_printf(&b, "%s", heads[k]);
        for (size_t i = 0; i < nm; i++) {
            const char *name = sched_name(h->svc.models[i]);
            switch (k) {
            case 0: tb_printf(&b, "outpost_queue_depth{model=\"%s\"} %lld\n", name,
                              (long long)st[i].queue_depth); break;
            case 1: tb_printf(&b, "outpost_prompt_tokens_total{model=\"%s\"} %llu\n", name,
                              (unsigned long long)st[i].prompt_tokens); break;
            case 2: tb_printf(&b, "outpost_completion_tokens_total{model=\"%s\"} %llu\n", name,
                              (unsigned long long)st[i].completion_tokens); break;
            case 3: tb_printf(&b, "outpost_cached_tokens_total{model=\"%s\"} %llu\n", name,
                              (unsigned long long)st[i].cached_tokens); break;
            case 4:
                tb_printf(&b, "outpost_requests_total{model=\"%s\",status=\"ok\"} %llu\n", name,
                          (unsigned long long)(st[i].jobs - st[i].jobs_failed -
                                               st[i].jobs_cancelled));
                tb_printf(&b, "outpost_requests_total{model=\"%s\",status=\"cancelled\"} %llu\n",
                          name, (unsigned long long)st[i].jobs_cancelled);
                tb_printf(&b, "outpost_requests_total{model=\"%s\",status=\"error\"} %llu\n",
                          name, (unsigned long long)st[i].jobs_failed);
                break;
            default: tb_printf(&b, "outpost_decode_tokens_per_second{model=\"%s\"} %g\n", name,
                               isnan(st[i].decode_tok_s) ? 0 : st[i].decode_tok_s); break;
            }
        }
    }
    tb_printf(&b, "# HELP outpost_ttft_seconds Time from a request's arrival to its first "
                  "token.\n# TYPE outpost_ttft_seconds histogram\n");
    for (size_t i = 0; i < nm; i++)
        tb_histogram(&b, "outpost_ttft_seconds", sched_name(h->svc.models[i]),
                     sched_ttft_bounds_ms, SCHED_TTFT_BUCKETS, st[i].ttft_counts, st[i].ttft_sum_ms);
    tb_printf(&b, "# HELP outpost_token_latency_seconds Time between consecutive generated "
                  "tokens.\n# TYPE outpost_token_latency_seconds histogram\n");
    for (size_t i = 0; i < nm; i++)
        tb_histogram(&b, "outpost_token_latency_seconds", sched_name(h->svc.models[i]),
                     sched_token_bounds_ms, SCHED_TOKEN_BUCKETS, st[i].token_counts,
                     st[i].token_sum_ms);
    metrics_kv(h, &b, st, nm);
    free(st);
    if (b.failed) {
        free(b.p);
        return respond_error(h, c, R_METRICS, 500, "out_of_memory", "out of memory");
    }
    return respond_text(h, c, R_METRICS, 200, "text/plain; version=0.0.4", b.p, b.len);
}

/* ---- dispatch ---------------------------------------------------------------------- */

static route route_of(const char *url, const char **id)
{
    *id = NULL;
    if (!strcmp(url, "/health"))
        return R_HEALTH;
    if (!strcmp(url, "/metrics"))
        return R_METRICS;
    if (!strcmp(url, "/v1/models"))
        return R_MODELS;
    if (!strcmp(url, "/v1/chat/completions"))
        return R_CHAT;
    if (!strcmp(url, "/v1/completions"))
        return R_COMPLETIONS;
    if (!strcmp(url, "/v1/sessions"))
        return R_SESSIONS;
    if (!strcmp(url, "/v1/policy/reload"))
        return R_POLICY_RELOAD;
    if (!strncmp(url, "/v1/sessions/", 13) && url[13] && !strchr(url + 13, '/') &&
        strlen(url + 13) <= STORE_NAME_MAX) {
        *id = url + 13;
        return R_SESSION;
    }
    return R_OTHER;
}

static bool method_ok(route rt, const char *m)
{
    switch (rt) {
    case R_HEALTH:
    case R_METRICS:
    case R_MODELS: return !strcmp(m, "GET") || !strcmp(m, "HEAD");
    case R_CHAT:
    case R_COMPLETIONS:
    case R_POLICY_RELOAD: return !strcmp(m, "POST");
    case R_SESSIONS: return !strcmp(m, "GET") || !strcmp(m, "POST");
    case R_SESSION: return !strcmp(m, "GET") || !strcmp(m, "DELETE");
    default: return true;
    }
}

static enum MHD_Result answer_reload(http_server *h, http_req *r)
{
    if (r->tcp || (r->uid != 0 && r->uid != h->self_uid))
        return respond_error(h, r->conn, r->rt, 403, "forbidden",
                             "only root or the agent's own user may reload the policy");
    char err[256] = "no reload handler";
    if (!h->svc.reload || h->svc.reload(h->svc.reload_ud, err))
        return respond_error(h, r->conn, r->rt, 400, "reload_failed", "%s", err);
    return respond_value(h, r->conn, r->rt, 200, json_pack("{s:b}", "reloaded", 1));
}

/* The request is complete: answer it. */
static enum MHD_Result answer_body(http_req *r)
{
    http_server *h = r->h;
    if (r->rt == R_SESSION || (r->rt == R_SESSIONS && strcmp(r->method, "POST")))
        return answer_sessions(h, r->conn, r->rt, r->method, r->sid, r->uid, NULL);
    if (r->too_big)
        return respond_error(h, r->conn, r->rt, 413, "body_too_large",
                             "the request body is larger than %zu bytes", h->max_body);
    switch (r->rt) {
    case R_CHAT:
    case R_COMPLETIONS: return start_generation(r);
    case R_POLICY_RELOAD: return answer_reload(h, r);
    case R_SESSIONS: {
        json_t *body = NULL;
        if (r->len) {
            json_error_t je;
            body = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &je);
            if (!json_is_object(body)) {
                json_decref(body);
                return respond_error(h, r->conn, r->rt, 400, "invalid_json",
                                     "the body must be a JSON object");
            }
        }
        enum MHD_Result ret = answer_sessions(h, r->conn, r->rt, "POST", NULL, r->uid, body);
        json_decref(body);
        return ret;
    }
    default: return respond_error(h, r->conn, r->rt, 404, "not_found", "no such route");
    }
}

/* Stand-ins for a request record, one per route, for the routes that need
 * none (their address says which). */
static char markers[R_COUNT];

static bool is_marker(const void *p)
{
    return (const char *)p >= markers && (const char *)p < markers + R_COUNT;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    listener *l = cls;
    http_server *h = l->h;
    http_req *r = *con_cls;
    (void)version;
    if (r && !is_marker(r)) {
        if (r->ph == PH_BODY && *upload_size) {
            size_t n = *upload_size;
            *upload_size = 0;
            if (r->too_big || r->len + n > h->max_body) {
                r->too_big = true;
                return MHD_YES;
            }
            if (r->len + n + 1 > r->cap) {
                size_t cap = r->cap ? r->cap : 4096;
                while (cap < r->len + n + 1)
                    cap *= 2;
                char *b = realloc(r->body, cap);
                if (!b)
                    return MHD_NO;
                r->body = b;
                r->cap = cap;
            }
            memcpy(r->body + r->len, upload_data, n);
            r->len += n;
            return MHD_YES;
        }
        if (r->ph == PH_BODY)
            return answer_body(r);
        if (r->ph == PH_TURN)
            return resume_generation(r);
        if (r->ph == PH_WAIT)
            return answer_generation(r);
        return MHD_YES;
    }

    /* Routes without a request record: the first call only marks the
     * request, and the answer goes out on the second, once MHD has read the
     * whole request; answered on the first call, the connection would be
     * closed instead of kept alive. */
    if (is_marker(r)) {
        route rt = (route)((char *)r - markers);
        if (*upload_size) { /* a body on a GET: ignored */
            *upload_size = 0;
            return MHD_YES;
        }
        if (rt == R_HEALTH) {
            bool ready = atomic_load_explicit(&h->ready, memory_order_acquire);
            atomic_fetch_add(&h->requests[R_HEALTH][code_index(ready ? 200 : 503)], 1);
            return MHD_queue_response(c, ready ? 200 : 503,
                                      ready ? h->health_ok : h->health_loading);
        }
        if (rt == R_METRICS)
            return answer_metrics(h, c);
        return answer_models(h, c);
    }

    const char *id;
    route rt = route_of(url, &id);
    if (rt == R_HEALTH && (!strcmp(method, "GET") || !strcmp(method, "HEAD"))) {
        *con_cls = &markers[R_HEALTH];
        return MHD_YES;
    }
    uid_t uid = HTTP_TCP_UID;
    if (l->tcp) {
        if (!bearer_ok(h, c))
            return respond_error(h, c, rt, 401, "invalid_api_key",
                                 "missing or wrong 'Authorization: Bearer' key");
    } else {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || !peer_allowed(h, ci->connect_fd, &uid))
            return respond_error(h, c, rt, 403, "forbidden",
                                 "this user may not use the agent (not in its allowed users "
                                 "or groups)");
    }
    if (rt == R_OTHER)
        return respond_error(h, c, rt, 404, "not_found", "no route %s %s", method, url);
    if (!method_ok(rt, method))
        return respond_error(h, c, rt, 405, "method_not_allowed", "%s does not take %s",
                             route_paths[rt], method);
    if (rt == R_METRICS) {
        *con_cls = &markers[R_METRICS];
        return MHD_YES;
    }
    if (!atomic_load_explicit(&h->ready, memory_order_acquire))
        return respond_error(h, c, rt, 503, "loading", "the agent is loading its models");
    if (rt == R_MODELS) {
        *con_cls = &markers[R_MODELS];
        return MHD_YES;
    }

    /* Refuse an announced oversize body before reading it. */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > h->max_body)
        return respond_error(h, c, rt, 413, "body_too_large",
                             "the request body is larger than %zu bytes", h->max_body);
    if (!(r = req_new(h, c, rt, l->tcp, uid)))
        return MHD_NO;
    snprintf(r->method, sizeof r->method, "%s", method);
    if (id)
        snprintf(r->sid, sizeof r->sid, "%s", id);
    *con_cls = r;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    http_req *r = *con_cls;
    if (!r || is_marker(r))
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->conn_gone = true;
    r->fd = -1;
    if (r->job && !r->job_done)
        atomic_store(&r->job->cancel, true);
    pthread_mutex_unlock(&r->mu);
    session_leave(r->h, r);
    req_release(r);
}

/* ---- listeners ---------------------------------------------------------------------- */

static int unix_listener(const char *path, unsigned mode, int *out, char err[256])
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, 256, "socket path %s is longer than %zu bytes", path, sizeof sa.sun_path - 1);
        return HTTP_EUSAGE;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, 256, "socket: %s", strerror(errno));
        return HTTP_ESOCKET;
    }
    struct stat stbuf;
    if (lstat(path, &stbuf) == 0) {
        /* A socket left by an agent that died is removed; one that answers
         * belongs to a running agent, and anything else is not ours. */
        if (!S_ISSOCK(stbuf.st_mode)) {
            snprintf(err, 256, "%s exists and is not a socket", path);
            close(fd);
            return HTTP_ESOCKET;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool alive = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0)
            close(probe);
        if (alive) {
            snprintf(err, 256, "%s: another agent is already listening there", path);
            close(fd);
            return HTTP_ESOCKET;
        }
        unlink(path);
    }
    /* The file is created 0600 and only then opened to the group, so no
     * other user can connect in between. */
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc || chmod(path, mode) || listen(fd, SOMAXCONN)) {
        snprintf(err, 256, "%s: %s", path, strerror(errno));
        if (rc == 0)
            unlink(path);
        close(fd);
        return HTTP_ESOCKET;
    }
    *out = fd;
    return HTTP_OK;
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}

static int tcp_listener(const char *host, int port, bool have_key, int *out, int *port_out,
                        char err[256])
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res = NULL;
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai) {
        snprintf(err, 256, "listen address %s: %s", host, gai_strerror(gai));
        return HTTP_EUSAGE;
    }
    int fd = -1, rc = HTTP_ESOCKET;
    snprintf(err, 256, "listen address %s: no usable address", host);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (!is_loopback(ai->ai_addr) && !have_key) {
            snprintf(err, 256, "refusing to listen on %s:%d, which is not a loopback address, "
                     "without an API key (set OUTPOST_API_KEY or listen.api_key)", host, port);
            rc = HTTP_EUSAGE;
            break;
        }
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
                *port_out = ntohs(ss.ss_family == AF_INET
                                      ? ((struct sockaddr_in *)&ss)->sin_port
                                      : ((struct sockaddr_in6 *)&ss)->sin6_port);
            rc = HTTP_OK;
            break;
        }
        snprintf(err, 256, "listen on %s:%d: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (rc == HTTP_OK)
        *out = fd;
    return rc;
}

/* libmicrohttpd's own complaints (a client gone mid-response, ...), as
 * one line each in the agent's log. Its note on a handler refusing a
 * request is left out: ours refuse when the client has hung up (counted as
 * 499 in /metrics) or, rarely, when memory runs out. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    if (!strncmp(line, "Application reported internal error", 35))
        return;
    fprintf(stderr, "outpost serve: http (%s): %s\n", ((listener *)cls)->tcp ? "tcp" : "socket",
            line);
}

static int start_daemon(listener *l, const http_opts *o, char err[256])
{
    unsigned threads = o->threads ? o->threads : 2;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_TURBO | MHD_USE_ERROR_LOG;
    l->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, l,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, l,
                            MHD_OPTION_LISTEN_SOCKET, l->fd,
                            MHD_OPTION_THREAD_POOL_SIZE, threads,
                            MHD_OPTION_CONNECTION_LIMIT,
                            o->max_connections ? o->max_connections : 4096u,
                            MHD_OPTION_CONNECTION_TIMEOUT,
                            o->idle_timeout_s ? o->idle_timeout_s : 60u,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
                            MHD_OPTION_END);
    if (!l->d) {
        snprintf(err, 256, "libmicrohttpd did not start on the %s listener",
                 l->tcp ? "TCP" : "socket");
        return HTTP_EDAEMON;
    }
    return HTTP_OK;
}

int http_set_access(http_server *h, const uint32_t *uids, size_t n_uids, const uint32_t *gids,
                    size_t n_gids, const char *api_key, char err[256])
{
    uint32_t *u = n_uids ? malloc(n_uids * sizeof *u) : NULL;
    uint32_t *g = n_gids ? malloc(n_gids * sizeof *g) : NULL;
    char *k = api_key && api_key[0] ? strdup(api_key) : NULL;
    if ((n_uids && !u) || (n_gids && !g) || (api_key && api_key[0] && !k)) {
        free(u);
        free(g);
        free(k);
        snprintf(err, 256, "out of memory");
        return HTTP_ENOMEM;
    }
    if (n_uids)
        memcpy(u, uids, n_uids * sizeof *u);
    if (n_gids)
        memcpy(g, gids, n_gids * sizeof *g);
    pthread_rwlock_wrlock(&h->access_lock);
    free(h->uids);
    free(h->gids);
    free(h->api_key);
    h->uids = u;
    h->n_uids = n_uids;
    h->gids = g;
    h->n_gids = n_gids;
    h->api_key = k;
    pthread_rwlock_unlock(&h->access_lock);
    return HTTP_OK;
}

int http_start(http_server **out, const http_opts *o, char err[256])
{
    *out = NULL;
    if (!o->socket_path && !o->tcp_host) {
        snprintf(err, 256, "no listener: give a socket path or a TCP address");
        return HTTP_EUSAGE;
    }
    http_server *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, 256, "out of memory");
        return HTTP_ENOMEM;
    }
    int rc = HTTP_ENOMEM;
    h->lu = (listener){.h = h, .tcp = false, .fd = -1};
    h->lt = (listener){.h = h, .tcp = true, .fd = -1};
    h->self_uid = geteuid();
    h->self_gid = getegid();
    h->max_body = o->max_body_bytes ? o->max_body_bytes : 4u << 20;
    h->started = (int64_t)time(NULL);
    h->request_timeout_s = o->request_timeout_s;
    if (o->limits)
        h->limits = *o->limits;
    else
        api_limits_default(&h->limits);
    if (h->limits.max_stop > SCHED_MAX_STOP)
        h->limits.max_stop = SCHED_MAX_STOP;
    atomic_init(&h->ready, false);
    atomic_init(&h->in_flight, 0);
    pthread_rwlock_init(&h->access_lock, NULL);
    pthread_mutex_init(&h->online_mu, NULL);
    pthread_mutex_init(&h->facts_mu, NULL);
    http_device_facts_unknown(&h->facts);
    pthread_mutex_init(&h->session_mu, NULL);
    static const char ok_body[] = "{\"status\":\"ok\"}";
    static const char loading_body[] = "{\"status\":\"loading\"}";
    h->health_ok = MHD_create_response_from_buffer(sizeof ok_body - 1, (void *)ok_body,
                                                   MHD_RESPMEM_PERSISTENT);
    h->health_loading = MHD_create_response_from_buffer(
        sizeof loading_body - 1, (void *)loading_body, MHD_RESPMEM_PERSISTENT);
    if (!h->health_ok || !h->health_loading)
        goto fail;
    MHD_add_response_header(h->health_ok, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(h->health_loading, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if ((rc = http_set_access(h, o->allowed_uids, o->n_allowed_uids, o->allowed_gids,
                              o->n_allowed_gids, o->api_key, err)))
        goto fail;

    if (o->socket_path) {
        if (!(h->socket_path = strdup(o->socket_path))) {
            rc = HTTP_ENOMEM;
            snprintf(err, 256, "out of memory");
            goto fail;
        }
        if ((rc = unix_listener(o->socket_path, o->socket_mode ? o->socket_mode : 0660,
                                &h->lu.fd, err))) {
            free(h->socket_path);
            h->socket_path = NULL;
            goto fail;
        }
        if ((rc = start_daemon(&h->lu, o, err)))
            goto fail;
    }
    if (o->tcp_host) {
        if ((rc = tcp_listener(o->tcp_host, o->tcp_port, o->api_key && o->api_key[0], &h->lt.fd,
                               &h->tcp_port, err)))
            goto fail;
        if ((rc = start_daemon(&h->lt, o, err)))
            goto fail;
    }
    *out = h;
    return HTTP_OK;
fail:
    http_stop(h);
    return rc;
}

void http_set_services(http_server *h, const http_services *svc) { h->svc = *svc; }

void http_set_ready(http_server *h, bool ready)
{
    atomic_store_explicit(&h->ready, ready, memory_order_release);
}

int http_tcp_port(const http_server *h) { return h->lt.d ? h->tcp_port : 0; }

int http_in_flight(http_server *h) { return atomic_load(&h->in_flight); }

/* After MHD_quiesce_daemon the listening socket is ours to close; if it
 * fails, MHD still owns the socket and closes it when stopped. */
static void close_listener(listener *l)
{
    if (l->d) {
        int fd = MHD_quiesce_daemon(l->d);
        if (fd >= 0)
            close(fd);
    } else if (l->fd >= 0) {
        close(l->fd);
    }
    l->fd = -1;
}

void http_close_listeners(http_server *h)
{
    close_listener(&h->lu);
    close_listener(&h->lt);
    if (h->socket_path) {
        unlink(h->socket_path);
        free(h->socket_path);
        h->socket_path = NULL;
    }
}

void http_stop(http_server *h)
{
    if (!h)
        return;
    http_close_listeners(h);
    if (h->lu.d)
        MHD_stop_daemon(h->lu.d);
    if (h->lt.d)
        MHD_stop_daemon(h->lt.d);
    if (h->health_ok)
        MHD_destroy_response(h->health_ok);
    if (h->health_loading)
        MHD_destroy_response(h->health_loading);
    pthread_rwlock_destroy(&h->access_lock);
    pthread_mutex_destroy(&h->online_mu);
    pthread_mutex_destroy(&h->facts_mu);
    pthread_mutex_destroy(&h->session_mu);
    while (h->turns) { /* only when a daemon stopped with requests in line */
        session_turn *t = h->turns;
        h->turns = t->next;
        free(t);
    }
    free(h->uids);
    free(h->gids);
    free(h->api_key);
    free(h->socket_path);
    free(h);
}
