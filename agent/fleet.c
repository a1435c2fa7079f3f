/*
 * fleet.c - the fleet channel over MQTT (contract in fleet.h).
 *
 * One fleet thread owns everything that changes: the Paho client's
 * connection state, the reconnect timer, the table of telemetry messages
 * handed to Paho and not yet acknowledged, the trusted keys and the last
 * accepted seq. Paho's callbacks (its own threads) only append events to a
 * queue and signal the thread; the one exception is the OTA chunk handler,
 * called on Paho's receive thread so that returning 1 (= PUBACK) waits for
 * the chunk to be stored.
 *
 * Reconnecting is our own loop, not Paho's automaticReconnect: Paho doubles
 * its interval without jitter (a fleet of devices would come back in
 * lock-step after a broker restart) and does not retry a first connect that
 * failed. Delay n (from 0) is d = min(max, min * 2^n) and the wait is drawn
 * uniformly from [d/2, d] ("equal jitter"); a successful connect resets n.
 *
 * Sessions are persistent (MQTT 3.1.1 clean session 0; MQTT 5 clean start 0
 * with a session expiry of FLEET_SESSION_EXPIRY_S), so the broker keeps our
 * QoS 1 subscriptions and the commands and chunks that arrive while we are
 * away. Paho keeps no files (MQTTCLIENT_PERSISTENCE_NONE): what must
 * survive a restart is in SQLite already. Outbound at-least-once: each
 * outbox row is published at QoS 1 and acknowledged in the store only in
 * Paho's onSuccess for its token (the PUBACK). A row whose publish failed,
 * or that Paho no longer holds after a reconnect, is published again; so a
 * crash between PUBACK and the store's ack can repeat a message, which the
 * consumer recognises by its "id".
 *
 * Inbound: a command is stored in the store's inbox before its message
 * callback returns (which is when Paho sends the PUBACK), then verified and
 * run on the fleet thread; accepting it persists the new last seq and
 * deletes it from the inbox in one transaction, before it runs. So a command
 * the broker saw acknowledged is taken up again after a crash or a stop
 * (inbox_replay at the next start) and runs at most once; one that was
 * refused may have its refusal repeated. Chunks of an OTA transfer are
 * stored by the transfer itself before the PUBACK (ota/transfer.c).
 *
 * Telemetry: requests recorded by the scheduler (requests table) are copied
 * into the outbox by store_requests_export(), each exactly once, in one
 * transaction with the mark; roll-ups are computed from the same table
 * every rollup_interval_s. Replies on /resp go through the outbox too, so a
 * reply survives a broker outage and a restart like telemetry does.
 */
#include "fleet.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "mqtt_dl.h"
#include "pol.h"

#define FLEET_DEFAULT_PREFIX "outpost/v1"
#define FLEET_SESSION_EXPIRY_S (7 * 24 * 3600)
#define FLEET_CONNECT_TIMEOUT_S 10
#define FLEET_INFLIGHT_MAX 32     /* outbox messages handed to Paho at once */
#define FLEET_EXPORT_BATCH 256    /* requests copied into the outbox per step */
#define FLEET_EXPORT_INTERVAL_S 1.0
#define FLEET_LOST_GRACE_S 5.0    /* after a reconnect, before re-sending what Paho dropped */
#define FLEET_CLOSE_WAIT_MS 3000  /* at close: offline status and outstanding PUBACKs */
#define FLEET_STORE_RETRY_PAUSE_US 200000 /* a chunk or command not stored: before Paho offers it again */
#define FLEET_INBOX_MAX 1024      /* commands stored and not yet taken up */
#define FLEET_INBOX_MAX_ATTEMPTS 3 /* starts a stored command may be taken up in */
#define FLEET_POLICY_MAX_BYTES (1u << 20)

/* Settings keys in the store. */
#define SET_STATE "fleet.state"       /* {"last_seq", "current", "next", "provisioned"} */
#define SET_POLICY "fleet.policy"     /* {"version", "source"} */
#define SET_CONFIG "fleet.config"     /* runtime keys set by config.set */
#define SET_DROPS "fleet.outbox_drops" /* {"rollups", "records"} */
#define SET_ROLLUP_SINCE "fleet.rollup_since_ms"

typedef enum ev_kind {
    EV_CONNECTED,
    EV_CONNECT_FAILED,
    EV_LOST,
    EV_PUB_OK,
    EV_PUB_FAILED,
    EV_CMD,
    EV_WAKE,
} ev_kind;

/* EV_WAKE's token: what else to do. */
enum { WAKE_PUMP = 0, WAKE_STATUS = 1, WAKE_FLUSH = 2 };

typedef struct fleet_ev {
    struct fleet_ev *next;
    ev_kind kind;
    MQTTAsync_token token;
    int code;
    char *data; /* EV_CMD: payload; EV_CONNECT_FAILED/EV_LOST: message */
    size_t len;
    int64_t inbox_id; /* EV_CMD: its row in the store's inbox */
} fleet_ev;

typedef struct inflight {
    int64_t outbox_id; /* 0: free slot */
    MQTTAsync_token token;
    double lost_since; /* > 0: Paho did not list it after a reconnect */
} inflight;

typedef enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_UP } conn_state;

struct fleet {
    /* Fixed at open. */
    char *url, *device, *prefix, *ca, *cert, *key, *user, *pass, *agent_version;
    char **groups;
    size_t n_groups;
    int mqtt_version, keepalive_s, reconnect_min_ms, reconnect_max_ms;
    char *t_status, *t_telemetry, *t_resp, *t_cmd, *t_ota;
    char **t_group_cmd, **t_group_ota;
    fleet_handlers h;
    store *st;
    struct pol *policy;
    void (*log)(void *ud, const char *line);
    void *log_ud;
    MQTTAsync client;
    pthread_t thread;
    bool thread_started;

    /* The event queue and the values other threads read. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fleet_ev *head, *tail;
    bool stop;
    char policy_version[64];
    fleet_keys keys_shared; /* a copy of keys for fleet_keys_get() */

    /* Fleet thread only. */
    conn_state conn;
    int attempt;
    double next_connect_s;
    double connected_at_s;
    inflight fly[FLEET_INFLIGHT_MAX];
    int64_t cursor; /* highest outbox id handed to Paho */
    bool check_lost;
    fleet_keys keys;
    uint64_t last_seq;
    char provisioned[OTA_PUBKEY_BASE64_LEN + 1];
    int64_t rollup_interval_s, outbox_max_msgs;
    store_outbox_drops drops;
    double next_export_s, next_rollup_s;
    int64_t rollup_since_ms;
};

/* ---- small helpers -------------------------------------------------------- */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_(fleet *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(fleet *f, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (f->log)
        f->log(f->log_ud, line);
    else
        fprintf(stderr, "outpost fleet: %s\n", line);
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *ok = false;
    return d;
}

static char *topic_of(const char *prefix, const char *a, const char *b, const char *c)
{
    size_t n = strlen(prefix) + strlen(a) + strlen(b) + (c ? strlen(c) + 1 : 0) + 3;
    char *t = malloc(n);
    if (t)
        snprintf(t, n, "%s/%s/%s%s%s", prefix, a, b, c ? "/" : "", c ? c : "");
    return t;
}

/* A topic level: 1..FLEET_ID_MAX bytes, no MQTT wildcard or separator. */
static bool topic_level_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n > 0 && n <= FLEET_ID_MAX && !strpbrk(s, "/+#");
}

static uint32_t random_u32(void)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint32_t)(mono_s() * 1e9);
    return r;
}

/* ---- events (any thread) ------------------------------------------------ */

static void ev_push_cmd(fleet *f, ev_kind kind, MQTTAsync_token token, int code,
                        const void *data, size_t len, int64_t inbox_id)
{
    fleet_ev *e = calloc(1, sizeof *e);
    if (!e)
        return; /* a lost wake-up is recovered by the periodic steps */
    e->kind = kind;
    e->token = token;
    e->code = code;
    e->inbox_id = inbox_id;
    if (data) {
        if (!(e->data = malloc(len + 1))) {
            free(e);
            return;
        }
        memcpy(e->data, data, len);
        e->data[len] = '\0';
        e->len = len;
    }
    pthread_mutex_lock(&f->mu);
    if (f->tail)
        f->tail->next = e;
    else
        f->head = e;
    f->tail = e;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void ev_push(fleet *f, ev_kind kind, MQTTAsync_token token, int code, const void *data,
                    size_t len)
{
    ev_push_cmd(f, kind, token, code, data, len, 0);
}

static void ev_free(fleet_ev *e)
{
    if (e) {
        free(e->data);
        free(e);
    }
}

/* ---- Paho callbacks: queue and return --------------------------------------- */

static void on_connect_ok(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    ev_push(ctx, EV_CONNECTED, 0, 0, NULL, 0);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData *d)
{
    const char *m = d && d->message ? d->message : "";
    ev_push(ctx, EV_CONNECT_FAILED, 0, d ? d->code : 0, m, strlen(m));
}

static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    (void)d;
    ev_push(ctx, EV_CONNECTED, 0, 0, NULL, 0);
}

static void on_connect_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    const char *m = d && d->message ? d->message : "";
    ev_push(ctx, EV_CONNECT_FAILED, 0, d ? (d->code ? d->code : (int)d->reasonCode) : 0, m,
            strlen(m));
}

static void on_pub_ok(void *ctx, MQTTAsync_successData *d)
{
    ev_push(ctx, EV_PUB_OK, d ? d->token : 0, 0, NULL, 0);
}

static void on_pub_fail(void *ctx, MQTTAsync_failureData *d)
{
    ev_push(ctx, EV_PUB_FAILED, d ? d->token : 0, d ? d->code : 0, NULL, 0);
}

static void on_pub_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    /* MQTT 5: a PUBACK with a reason code of 0x80 or above is a refusal. */
    if (d && d->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR)
        ev_push(ctx, EV_PUB_FAILED, d->token, (int)d->reasonCode, NULL, 0);
    else
        ev_push(ctx, EV_PUB_OK, d ? d->token : 0, 0, NULL, 0);
}

static void on_pub_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    ev_push(ctx, EV_PUB_FAILED, d ? d->token : 0, d ? d->code : 0, NULL, 0);
}

static void on_lost(void *ctx, char *cause)
{
    const char *m = cause ? cause : "";
    ev_push(ctx, EV_LOST, 0, 0, m, strlen(m));
}

static bool is_ota_topic(fleet *f, const char *topic)
{
    if (strcmp(topic, f->t_ota) == 0)
        return true;
    for (size_t i = 0; i < f->n_groups; i++)
        if (strcmp(topic, f->t_group_ota[i]) == 0)
            return true;
    return false;
}

static int on_message(void *ctx, char *topic_name, int topic_len, MQTTAsync_message *m)
{
    fleet *f = ctx;
    /* A topic with a NUL inside is none of ours: acknowledge and drop it. */
    bool plain = topic_len == 0 || (size_t)topic_len == strlen(topic_name);
    if (plain && is_ota_topic(f, topic_name)) {
        if (f->h.ota_chunk) {
            char err[256] = "";
            int rc = f->h.ota_chunk(f->h.ota_ud, topic_name, m->payload, (size_t)m->payloadlen,
                                    err);
            if (rc != 0) {
                /* Not stored: no PUBACK. Paho offers the message again; the
                 * pause keeps a persistent failure (disk full) from spinning. */
                logf_(f, "ota chunk on %s not stored (%s); it will be offered again", topic_name,
                      err);
                usleep(FLEET_STORE_RETRY_PAUSE_US);
                return 0;
            }
        } else {
            logf_(f, "ota chunk on %s dropped: no OTA handler in this agent", topic_name);
        }
    } else if (plain) {
        /* Stored before the PUBACK, deleted once accepted or refused: a
         * command the broker saw acknowledged survives a crash or a stop. An
         * empty message may come with no buffer at all. */
        const void *data = m->payload ? m->payload : "";
        size_t len = m->payload ? (size_t)m->payloadlen : 0;
        char err[256] = "";
        int64_t id = 0;
        if (store_inbox_put(f->st, topic_name, data, len, FLEET_INBOX_MAX, &id, err)) {
            logf_(f, "command on %s not stored (%s); it will be offered again", topic_name, err);
            usleep(FLEET_STORE_RETRY_PAUSE_US);
            return 0;
        }
        ev_push_cmd(f, EV_CMD, 0, 0, data, len, id);
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic_name);
    return 1;
}

/* ---- persistence of the command state ------------------------------------------ */

/* inbox_id > 0: the command that moved the state leaves the inbox in the
 * same transaction. */
static int save_state(fleet *f, uint64_t last_seq, const fleet_keys *k, int64_t inbox_id,
                      char err[256])
{
    char cur[OTA_PUBKEY_BASE64_LEN + 1], nxt[OTA_PUBKEY_BASE64_LEN + 1];
    ota_pubkey_base64(&k->current, cur);
    if (k->has_next)
        ota_pubkey_base64(&k->next, nxt);
    json_t *o = json_pack("{s:I,s:s,s:s?,s:s}", "last_seq", (json_int_t)last_seq, "current", cur,
                          "next", k->has_next ? nxt : NULL, "provisioned", f->provisioned);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        snprintf(err, 256, "fleet: out of memory saving the command state");
        return FLEET_CH_ENOMEM;
    }
    int rc = inbox_id > 0 ? store_inbox_done(f->st, inbox_id, SET_STATE, text, err)
                          : store_setting_set(f->st, SET_STATE, text, err);
    free(text);
    return rc ? FLEET_CH_ESTORE : 0;
}

/* Keys and last seq: the stored state, unless the provisioned key file has
 * changed since it was stored (the device was re-provisioned: start over
 * with the file's key and seq 0). */
static int load_state(fleet *f, const char *key_path, char err[256])
{
    ota_pubkey file_key;
    if (ota_pubkey_load(key_path, &file_key, err) != OTA_OK)
        return FLEET_CH_EINVAL;
    ota_pubkey_base64(&file_key, f->provisioned);
    f->keys = (fleet_keys){.current = file_key};
    f->last_seq = 0;
    char *text = NULL;
    int rc = store_setting_get(f->st, SET_STATE, &text, err);
    if (rc == STORE_ENOTFOUND)
        return 0;
    if (rc)
        return FLEET_CH_ESTORE;
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    const char *cur = NULL, *prov = NULL;
    json_t *jnext = NULL;
    json_int_t seq = 0;
    if (!o || json_unpack(o, "{s:I,s:s,s?o,s:s}", "last_seq", &seq, "current", &cur, "next",
                          &jnext, "provisioned", &prov) != 0 || seq < 0 ||
        (jnext && !json_is_null(jnext) && !json_is_string(jnext))) {
        json_decref(o);
        snprintf(err, 256, "store setting %s: not the fleet state this build writes", SET_STATE);
        return FLEET_CH_ESTORE;
    }
    if (strcmp(prov, f->provisioned) != 0) {
        logf_(f, "fleet key file %s differs from the key provisioned before: trusting it, "
                 "sequence restarts", key_path);
        json_decref(o);
        return 0;
    }
    fleet_keys k = {0};
    rc = ota_pubkey_from_base64(cur, SET_STATE ".current", &k.current, err);
    if (!rc && json_is_string(jnext)) {
        k.has_next = true;
        rc = ota_pubkey_from_base64(json_string_value(jnext), SET_STATE ".next", &k.next, err);
    }
    json_decref(o);
    if (rc)
        return FLEET_CH_ESTORE;
    f->keys = k;
    f->last_seq = (uint64_t)seq;
    return 0;
}

/* ---- outbox: put, pump, acknowledgements ---------------------------------- */

static void drops_note(fleet *f, const store_outbox_drops *before)
{
    if (f->drops.rollups == before->rollups && f->drops.records == before->records)
        return;
    logf_(f, "outbox over its bound of %" PRId64 " messages: dropped %" PRId64
             " roll-up(s) and %" PRId64 " record(s) so far", f->outbox_max_msgs, f->drops.rollups,
          f->drops.records);
    char text[96], err[256];
    snprintf(text, sizeof text, "{\"rollups\":%" PRId64 ",\"records\":%" PRId64 "}",
             f->drops.rollups, f->drops.records);
    if (store_setting_set(f->st, SET_DROPS, text, err))
        logf_(f, "%s", err);
}

/* fleet thread */
static int outbox_put_json(fleet *f, const char *topic, json_t *o, store_outbox_kind kind,
                           char err[256])
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (!text) {
        snprintf(err, 256, "fleet: out of memory formatting a message for %s", topic);
        return FLEET_CH_ENOMEM;
    }
    store_outbox_drops before = f->drops;
    int rc = store_outbox_put_kind(f->st, topic, text, strlen(text), kind, f->outbox_max_msgs,
                                   NULL, &f->drops, err);
    free(text);
    drops_note(f, &before);
    return rc ? FLEET_CH_ESTORE : 0;
}

static inflight *fly_find(fleet *f, MQTTAsync_token tok)
{
    for (int i = 0; i < FLEET_INFLIGHT_MAX; i++)
        if (f->fly[i].outbox_id && f->fly[i].token == tok)
            return &f->fly[i];
    return NULL;
}

static int fly_count(fleet *f)
{
    int n = 0;
    for (int i = 0; i < FLEET_INFLIGHT_MAX; i++)
        n += f->fly[i].outbox_id != 0;
    return n;
}

static void fly_forget(fleet *f, inflight *x)
{
    /* Published again from the store: move the cursor back before it. */
    if (x->outbox_id <= f->cursor)
        f->cursor = x->outbox_id - 1;
    x->outbox_id = 0;
}

static void pump(fleet *f)
{
    if (f->conn != CONN_UP)
        return;
    int room = FLEET_INFLIGHT_MAX - fly_count(f);
    if (room <= 0)
        return;
    store_outbox_msg *m = NULL;
    size_t n = 0;
    char err[256];
    /* Skip what Paho already holds: the cursor never passes an in-flight
     * row that must be sent again (fly_forget moves it back). */
    int64_t after = f->cursor;
    if (store_outbox_peek_after(f->st, after, (size_t)room, &m, &n, err)) {
        logf_(f, "outbox: %s", err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        bool held = false;
        for (int k = 0; k < FLEET_INFLIGHT_MAX; k++)
            held |= f->fly[k].outbox_id == m[i].id;
        if (held) {
            f->cursor = m[i].id;
            continue;
        }
        inflight *slot = NULL;
        for (int k = 0; k < FLEET_INFLIGHT_MAX && !slot; k++)
            if (!f->fly[k].outbox_id)
                slot = &f->fly[k];
        if (!slot)
            break;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.context = f;
        if (f->mqtt_version == 5) {
            ro.onSuccess5 = on_pub_ok5;
            ro.onFailure5 = on_pub_fail5;
        } else {
            ro.onSuccess = on_pub_ok;
            ro.onFailure = on_pub_fail;
        }
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = m[i].payload;
        msg.payloadlen = (int)m[i].payload_len;
        msg.qos = 1;
        msg.retained = 0;
        int rc = MQTTAsync_sendMessage(f->client, m[i].topic, &msg, &ro);
        if (rc != MQTTASYNC_SUCCESS) {
            logf_(f, "publish to %s: %s (will retry)", m[i].topic, MQTTAsync_strerror(rc));
            break;
        }
        *slot = (inflight){.outbox_id = m[i].id, .token = ro.token};
        f->cursor = m[i].id;
    }
    store_outbox_free(m, n);
}

static void pub_done(fleet *f, const fleet_ev *e)
{
    inflight *x = fly_find(f, e->token);
    if (!x)
        return;
    if (e->kind == EV_PUB_OK) {
        char err[256];
        if (store_outbox_ack(f->st, &x->outbox_id, 1, err))
            logf_(f, "outbox ack: %s", err); /* sent again later: the id dedupes */
        x->outbox_id = 0;
    } else {
        logf_(f, "publish of outbox message %" PRId64 " failed (code %d); will retry",
              x->outbox_id, e->code);
        fly_forget(f, x);
    }
}

/* After a reconnect: a message Paho no longer holds and whose PUBACK we have
 * not seen for a while is published again. */
static void check_lost(fleet *f)
{
    if (!f->check_lost || f->conn != CONN_UP)
        return;
    MQTTAsync_token *toks = NULL;
    if (MQTTAsync_getPendingTokens(f->client, &toks) != MQTTASYNC_SUCCESS)
        return;
    double now = mono_s();
    bool any_lost = false;
    for (int i = 0; i < FLEET_INFLIGHT_MAX; i++) {
        inflight *x = &f->fly[i];
        if (!x->outbox_id)
            continue;
        bool pending = false;
        for (int k = 0; toks && toks[k] != -1; k++)
            pending |= toks[k] == x->token;
        if (pending) {
            x->lost_since = 0;
        } else if (x->lost_since == 0) {
            x->lost_since = now;
            any_lost = true;
        } else if (now - x->lost_since >= FLEET_LOST_GRACE_S) {
            fly_forget(f, x);
        } else {
            any_lost = true;
        }
    }
    MQTTAsync_free(toks);
    f->check_lost = any_lost;
}

/* ---- telemetry ------------------------------------------------------------------- */

static json_t *measure(double v)
{
    return isnan(v) ? json_null() : json_real(v);
}

static int format_request(void *ud, const store_request_row *r, char **payload, size_t *len,
                          char err[256])
{
    fleet *f = ud;
    json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:o,s:o,s:o,s:o,s:f}",
                          "id", r->id, "type", "request", "device", f->device, "ts_ms",
                          (json_int_t)r->created_ms, "route", store_route_name(r->route),
                          "reason", r->reason, "model", r->model, "status", r->status,
                          "prompt_tokens", (json_int_t)r->prompt_tokens, "completion_tokens",
                          (json_int_t)r->completion_tokens, "cached_tokens",
                          (json_int_t)r->cached_tokens, "ttft_ms", measure(r->ttft_ms),
                          "tok_s", measure(r->decode_tok_s), "token_p50_ms",
                          measure(r->token_p50_ms), "token_p95_ms", measure(r->token_p95_ms),
                          "cost_usd", r->cost_usd);
    *payload = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!*payload) {
        snprintf(err, 256, "fleet: cannot format request %.64s (not UTF-8, or out of memory)",
                 r->id);
        return -1;
    }
    *len = strlen(*payload);
    return 0;
}

static int export_requests(fleet *f, size_t *total)
{
    *total = 0;
    char err[256];
    size_t n;
    do {
        store_outbox_drops before = f->drops;
        if (store_requests_export(f->st, f->t_telemetry, FLEET_EXPORT_BATCH, format_request, f,
                                  f->outbox_max_msgs, &n, &f->drops, err)) {
            logf_(f, "telemetry export: %s", err);
            return -1;
        }
        drops_note(f, &before);
        *total += n;
    } while (n == FLEET_EXPORT_BATCH);
    return 0;
}

static int put_rollup(fleet *f)
{
    int64_t now = wall_ms();
    store_rollup r;
    char err[256], id[STORE_ID_SIZE];
    if (store_requests_rollup(f->st, f->rollup_since_ms, &r, err) || store_new_id(id, err)) {
        logf_(f, "roll-up: %s", err);
        return -1;
    }
    json_t *groups = json_array();
    for (int i = 0; groups && i < r.n_groups; i++)
        json_array_append_new(groups, json_pack("{s:s,s:s,s:I}", "route",
                                                store_route_name(r.groups[i].route), "status",
                                                r.groups[i].status, "n",
                                                (json_int_t)r.groups[i].n));
    int64_t pending = 0;
    store_outbox_pending(f->st, &pending, err);
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I,s:I},s:I,s:I,s:I,s:f,s:o,s:o,s:o,s:o,"
        "s:{s:I,s:I,s:I}}",
        "id", id, "type", "rollup", "device", f->device, "ts_ms", (json_int_t)now, "since_ms",
        (json_int_t)f->rollup_since_ms, "until_ms", (json_int_t)now, "n_requests",
        (json_int_t)r.n_requests, "n_errors", (json_int_t)r.n_errors, "by_route", "local",
        (json_int_t)r.n_by_route[STORE_ROUTE_LOCAL], "peer",
        (json_int_t)r.n_by_route[STORE_ROUTE_PEER], "cloud",
        (json_int_t)r.n_by_route[STORE_ROUTE_CLOUD], "prompt_tokens",
        (json_int_t)r.prompt_tokens, "completion_tokens", (json_int_t)r.completion_tokens,
        "cached_tokens", (json_int_t)r.cached_tokens, "cost_usd", r.cost_usd, "ttft_p50_ms",
        r.ttft_p50_ms < 0 ? json_null() : json_real(r.ttft_p50_ms), "ttft_p95_ms",
        r.ttft_p95_ms < 0 ? json_null() : json_real(r.ttft_p95_ms), "tok_s_mean",
        r.decode_tok_s_mean < 0 ? json_null() : json_real(r.decode_tok_s_mean), "groups",
        groups ? groups : json_array(), "outbox", "pending", (json_int_t)pending,
        "dropped_rollups", (json_int_t)f->drops.rollups, "dropped_records",
        (json_int_t)f->drops.records);
    if (!o) {
        logf_(f, "roll-up: out of memory");
        return -1;
    }
    int rc = outbox_put_json(f, f->t_telemetry, o, STORE_OUTBOX_ROLLUP, err);
    json_decref(o);
    if (rc) {
        logf_(f, "roll-up: %s", err);
        return -1;
    }
    f->rollup_since_ms = now;
    char text[32];
    snprintf(text, sizeof text, "%" PRId64, now);
    if (store_setting_set(f->st, SET_ROLLUP_SINCE, text, err))
        logf_(f, "roll-up: %s", err);
    return 0;
}

/* ---- status ------------------------------------------------------------------------------ */

static json_t *status_json(fleet *f, bool online)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "state", json_string(online ? "online" : "offline"));
    json_object_set_new(o, "device", json_string(f->device));
    json_object_set_new(o, "version", json_string(f->agent_version));
    json_object_set_new(o, "model", json_null());
    json_object_set_new(o, "model_version", json_null());
    pthread_mutex_lock(&f->mu);
    json_object_set_new(o, "policy_version",
                        f->policy_version[0] ? json_string(f->policy_version) : json_null());
    pthread_mutex_unlock(&f->mu);
    json_object_set_new(o, "adapter_round", json_null());
    json_object_set_new(o, "health", json_string(online ? "ok" : "unknown"));
    if (online) {
        if (f->h.status)
            f->h.status(f->h.status_ud, o);
        int64_t pending = 0;
        char err[256];
        store_outbox_pending(f->st, &pending, err);
        json_object_set_new(o, "outbox", json_pack("{s:I,s:I,s:I}", "pending", (json_int_t)pending,
                                                   "dropped_rollups", (json_int_t)f->drops.rollups,
                                                   "dropped_records",
                                                   (json_int_t)f->drops.records));
        json_object_set_new(o, "ts_ms", json_integer((json_int_t)wall_ms()));
    }
    return o;
}

/* Publishes the retained status; returns the token (0 on failure). */
static MQTTAsync_token publish_status(fleet *f, bool online)
{
    if (f->conn != CONN_UP)
        return 0;
    json_t *o = status_json(f, online);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return 0;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = text;
    msg.payloadlen = (int)strlen(text);
    msg.qos = 1;
    msg.retained = 1;
    int rc = MQTTAsync_sendMessage(f->client, f->t_status, &msg, &ro);
    free(text);
    if (rc != MQTTASYNC_SUCCESS) {
        logf_(f, "status publish: %s", MQTTAsync_strerror(rc));
        return 0;
    }
    return ro.token;
}

/* ---- connecting ---------------------------------------------------------------------- */

static void schedule_reconnect(fleet *f, const char *why)
{
    int64_t d = f->reconnect_min_ms;
    for (int i = 0; i < f->attempt && d < f->reconnect_max_ms; i++)
        d *= 2;
    if (d > f->reconnect_max_ms)
        d = f->reconnect_max_ms;
    int64_t wait_ms = d / 2 + (int64_t)(random_u32() % (uint32_t)(d / 2 + 1));
    f->attempt++;
    f->conn = CONN_DOWN;
    f->next_connect_s = mono_s() + (double)wait_ms / 1000.0;
    logf_(f, "broker %s: %s; retry %d in %" PRId64 " ms", f->url, why, f->attempt, wait_ms);
}

static void start_connect(fleet *f)
{
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions co5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;
    MQTTAsync_connectOptions *o = f->mqtt_version == 5 ? &co5 : &co;
    o->keepAliveInterval = f->keepalive_s;
    o->connectTimeout = FLEET_CONNECT_TIMEOUT_S;
    o->context = f;
    o->username = f->user;
    o->password = f->pass;
    o->automaticReconnect = 0;
    if (f->mqtt_version == 5) {
        o->cleanstart = 0;
        o->onSuccess5 = on_connect_ok5;
        o->onFailure5 = on_connect_fail5;
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        p.value.integer4 = FLEET_SESSION_EXPIRY_S;
        MQTTProperties_add(&props, &p);
        o->connectProperties = &props;
    } else {
        o->MQTTVersion = MQTTVERSION_3_1_1;
        o->cleansession = 0;
        o->onSuccess = on_connect_ok;
        o->onFailure = on_connect_fail;
    }
    /* The will: what the broker says for us when we vanish. */
    json_t *wj = status_json(f, false);
    char *wtext = wj ? json_dumps(wj, JSON_COMPACT) : NULL;
    json_decref(wj);
    will.topicName = f->t_status;
    will.message = wtext ? wtext : "{\"state\":\"offline\"}";
    will.retained = 1;
    will.qos = 1;
    o->will = &will;
    if (strncmp(f->url, "ssl://", 6) == 0) {
        ssl.trustStore = f->ca;
        ssl.keyStore = f->cert;
        ssl.privateKey = f->key;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2;
        o->ssl = &ssl;
    }
    f->conn = CONN_CONNECTING;
    int rc = MQTTAsync_connect(f->client, o);
    free(wtext);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s", MQTTAsync_strerror(rc));
        schedule_reconnect(f, why);
    }
}

static void subscribe_all(fleet *f)
{
    size_t n = 2 + 2 * f->n_groups;
    char **topics = calloc(n, sizeof *topics);
    int *qos = calloc(n, sizeof *qos);
    if (!topics || !qos) {
        free(topics);
        free(qos);
        logf_(f, "subscribe: out of memory");
        return;
    }
    size_t k = 0;
    topics[k++] = f->t_cmd;
    topics[k++] = f->t_ota;
    for (size_t i = 0; i < f->n_groups; i++) {
        topics[k++] = f->t_group_cmd[i];
        topics[k++] = f->t_group_ota[i];
    }
    for (size_t i = 0; i < n; i++)
        qos[i] = 1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int rc = MQTTAsync_subscribeMany(f->client, (int)n, topics, qos, &ro);
    if (rc != MQTTASYNC_SUCCESS)
        logf_(f, "subscribe: %s", MQTTAsync_strerror(rc));
    free(topics);
    free(qos);
}

/* ---- commands ------------------------------------------------------------------------- */

/* config.set: the runtime keys. */
typedef struct rt_key {
    const char *name;
    int64_t min, max;
    size_t off;
} rt_key;

static const rt_key rt_keys[] = {
    {"fleet.rollup_interval_s", 10, 86400, offsetof(fleet, rollup_interval_s)},
    {"fleet.outbox_max_msgs", 100, 10000000, offsetof(fleet, outbox_max_msgs)},
};
#define N_RT_KEYS (sizeof rt_keys / sizeof rt_keys[0])
#define RT_KEYS_TEXT "fleet.rollup_interval_s, fleet.outbox_max_msgs"

static const rt_key *rt_find(const char *name)
{
    for (size_t i = 0; i < N_RT_KEYS; i++)
        if (strcmp(name, rt_keys[i].name) == 0)
            return &rt_keys[i];
    return NULL;
}

/* All or nothing: every key is checked before any is applied. */
static int apply_config(fleet *f, json_t *args, bool persist, json_t **result, char err[256])
{
    const char *k;
    json_t *v;
    if (json_object_size(args) == 0) {
        snprintf(err, 256, "config.set: args must name at least one key (settable: %s)",
                 RT_KEYS_TEXT);
        return -1;
    }
    json_object_foreach(args, k, v) {
        const rt_key *rk = rt_find(k);
        if (!rk) {
            snprintf(err, 256, "config.set: '%.64s' cannot be set at run time (settable: %s)", k,
                     RT_KEYS_TEXT);
            return -1;
        }
        if (!json_is_integer(v) || json_integer_value(v) < rk->min ||
            json_integer_value(v) > rk->max) {
            snprintf(err, 256, "config.set: %s must be an integer in %" PRId64 "..%" PRId64, k,
                     rk->min, rk->max);
            return -1;
        }
    }
    if (persist) {
        /* Merged over what earlier commands set, then stored, then applied. */
        char *old = NULL;
        json_t *all = NULL;
        if (store_setting_get(f->st, SET_CONFIG, &old, err) == 0)
            all = json_loads(old, 0, NULL);
        free(old);
        if (!json_is_object(all)) {
            json_decref(all);
            all = json_object();
        }
        char *text = NULL;
        if (!all || json_object_update(all, args) || !(text = json_dumps(all, JSON_COMPACT))) {
            json_decref(all);
            snprintf(err, 256, "config.set: out of memory");
            return -1;
        }
        json_decref(all);
        int rc = store_setting_set(f->st, SET_CONFIG, text, err);
        free(text);
        if (rc)
            return -1;
    }
    json_object_foreach(args, k, v) {
        const rt_key *rk = rt_find(k);
        *(int64_t *)((char *)f + rk->off) = (int64_t)json_integer_value(v);
    }
    if (result)
        *result = json_pack("{s:O}", "applied", args);
    return 0;
}

static void load_config_overrides(fleet *f)
{
    char *text = NULL, err[256];
    if (store_setting_get(f->st, SET_CONFIG, &text, err))
        return;
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    if (json_is_object(o) && apply_config(f, o, false, NULL, err))
        logf_(f, "stored runtime config ignored: %s", err);
    json_decref(o);
}

static int do_policy_set(fleet *f, const fleet_cmd *c, json_t **result, char err[256])
{
    if (!f->policy) {
        snprintf(err, 256, "policy.set: this agent runs without a policy runtime");
        return -1;
    }
    json_t *src = json_object_get(c->args, "source");
    json_t *ver = json_object_get(c->args, "version");
    const char *k;
    json_t *v;
    json_object_foreach(c->args, k, v) if (strcmp(k, "source") && strcmp(k, "version")) {
        snprintf(err, 256, "policy.set: unknown argument '%.64s' (expected source, version)", k);
        return -1;
    }
    if (!json_is_string(src) || json_string_length(src) == 0 ||
        json_string_length(src) > FLEET_POLICY_MAX_BYTES) {
        snprintf(err, 256, "policy.set: args.source must be the Lua text of the policy (1 byte "
                           "to 1 MiB)");
        return -1;
    }
    char version[64];
    if (!ver)
        snprintf(version, sizeof version, "%" PRIu64, c->seq);
    else if (json_is_string(ver) && json_string_length(ver) > 0 && json_string_length(ver) < 64 &&
             strlen(json_string_value(ver)) == json_string_length(ver))
        snprintf(version, sizeof version, "%s", json_string_value(ver));
    else if (json_is_integer(ver))
        snprintf(version, sizeof version, "%" JSON_INTEGER_FORMAT, json_integer_value(ver));
    else {
        snprintf(err, 256, "policy.set: args.version must be a string of 1..63 bytes or an "
                           "integer");
        return -1;
    }
    char name[96];
    snprintf(name, sizeof name, "fleet policy %s", version);
    char perr[256];
    if (pol_replace_source(f->policy, json_string_value(src), json_string_length(src), name,
                           perr)) {
        snprintf(err, 256, "policy.set: %s (the previous policy keeps running)", perr);
        return -1;
    }
    pthread_mutex_lock(&f->mu);
    snprintf(f->policy_version, sizeof f->policy_version, "%s", version);
    pthread_mutex_unlock(&f->mu);
    json_t *saved = json_pack("{s:s,s:O}", "version", version, "source", src);
    char *text = saved ? json_dumps(saved, JSON_COMPACT) : NULL;
    json_decref(saved);
    char serr[256] = "out of memory";
    bool persisted = text && store_setting_set(f->st, SET_POLICY, text, serr) == 0;
    free(text);
    if (!persisted)
        logf_(f, "policy %s runs but is not saved: %s", version, serr);
    *result = json_pack("{s:s,s:b}", "policy_version", version, "persisted", persisted);
    return 0;
}

static void load_stored_policy(fleet *f)
{
    if (!f->policy)
        return;
    char *text = NULL, err[256];
    if (store_setting_get(f->st, SET_POLICY, &text, err))
        return;
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    const char *ver = NULL, *src = NULL;
    size_t len = 0;
    if (!o || json_unpack(o, "{s:s,s:s%}", "version", &ver, "source", &src, &len)) {
        logf_(f, "store setting %s is damaged; the configured policy runs", SET_POLICY);
    } else {
        char name[96];
        snprintf(name, sizeof name, "fleet policy %s", ver);
        if (pol_replace_source(f->policy, src, len, name, err)) {
            logf_(f, "stored %s: %s; the configured policy runs", name, err);
        } else {
            pthread_mutex_lock(&f->mu);
            snprintf(f->policy_version, sizeof f->policy_version, "%s", ver);
            pthread_mutex_unlock(&f->mu);
            logf_(f, "running %s (set by the fleet)", name);
        }
    }
    json_decref(o);
}

static int queue_resp(fleet *f, const fleet_cmd *c, int rc, const char *error, json_t *result)
{
    char *text = fleet_resp_json(c, rc, error, result);
    char err[256];
    if (!text) {
        logf_(f, "reply to seq %" PRIu64 ": out of memory", c->seq);
        return FLEET_CH_ENOMEM;
    }
    store_outbox_drops before = f->drops;
    int src = store_outbox_put_kind(f->st, f->t_resp, text, strlen(text), STORE_OUTBOX_RECORD,
                                    f->outbox_max_msgs, NULL, &f->drops, err);
    free(text);
    drops_note(f, &before);
    if (src) {
        logf_(f, "reply to seq %" PRIu64 ": %s", c->seq, err);
        return FLEET_CH_ESTORE;
    }
    return 0;
}

/* A refused command leaves the inbox after its reply is queued: a crash in
 * between repeats the refusal, never an action. */
static void inbox_forget(fleet *f, int64_t inbox_id)
{
    char err[256];
    if (inbox_id > 0 && store_inbox_done(f->st, inbox_id, NULL, NULL, err))
        logf_(f, "inbox: %s", err);
}

static void handle_cmd(fleet *f, int64_t inbox_id, const char *payload, size_t len)
{
    fleet_identity me = {.device_id = f->device, .groups = (const char *const *)f->groups,
                         .n_groups = f->n_groups};
    fleet_cmd c;
    char err[256];
    int rc = fleet_cmd_verify(payload, len, &me, &f->keys, wall_ms() / 1000, f->last_seq, &c,
                              err);
    if (rc != FLEET_OK) {
        logf_(f, "command rejected: %s", err);
        queue_resp(f, &c, rc, err, NULL);
        inbox_forget(f, inbox_id);
        fleet_cmd_free(&c);
        return;
    }
    /* Persist before acting, and take the command out of the inbox in the
     * same transaction: a crash from here on never runs it twice. */
    if (save_state(f, c.seq, &c.keys, inbox_id, err)) {
        logf_(f, "command seq %" PRIu64 " not run: %s", c.seq, err);
        queue_resp(f, &c, FLEET_EMALFORMED, err, NULL);
        inbox_forget(f, inbox_id);
        fleet_cmd_free(&c);
        return;
    }
    f->last_seq = c.seq;
    if (c.keys_changed) {
        f->keys = c.keys;
        pthread_mutex_lock(&f->mu);
        f->keys_shared = c.keys;
        pthread_mutex_unlock(&f->mu);
    }
    logf_(f, "command %s seq %" PRIu64 " accepted", c.name, c.seq);

    json_t *result = NULL;
    int hrc = 0;
    err[0] = '\0';
    fleet_cmd_fn fn = NULL;
    switch (c.kind) {
    case FLEET_CMD_PING:
        result = json_pack("{s:b,s:I,s:s}", "pong", 1, "ts_ms", (json_int_t)wall_ms(), "version",
                           f->agent_version);
        break;
    case FLEET_CMD_TELEMETRY_FLUSH: {
        size_t n = 0;
        export_requests(f, &n);
        put_rollup(f);
        int64_t pending = 0;
        store_outbox_pending(f->st, &pending, err);
        err[0] = '\0';
        result = json_pack("{s:I,s:I}", "exported", (json_int_t)n, "pending",
                           (json_int_t)pending);
        break;
    }
    case FLEET_CMD_KEY_ROTATE: {
        char hex[17];
        ota_key_id_hex(f->keys.next.key_id, hex);
        result = json_pack("{s:s}", "next_key_id", hex);
        break;
    }
    case FLEET_CMD_CONFIG_SET:
        hrc = apply_config(f, c.args, true, &result, err);
        break;
    case FLEET_CMD_POLICY_SET:
        hrc = do_policy_set(f, &c, &result, err);
        if (!hrc)
            publish_status(f, true);
        break;
    case FLEET_CMD_MODEL_OFFER:
    case FLEET_CMD_ADAPTER_SET:
        fn = c.kind == FLEET_CMD_MODEL_OFFER ? f->h.model_offer : f->h.adapter_set;
        if (!fn) {
            snprintf(err, 256, "%s: not available in this agent", c.name);
            hrc = -1;
        } else {
            hrc = fn(f->h.cmd_ud, &c, &result, err);
        }
        break;
    default:
        snprintf(err, 256, "%s: no handler", c.name);
        hrc = -1;
        break;
    }
    if (hrc == FLEET_REPLY_LATER) {
        json_decref(result);
    } else {
        if (hrc && !err[0])
            snprintf(err, 256, "%s failed", c.name);
        queue_resp(f, &c, hrc ? FLEET_EARGS : FLEET_OK, hrc ? err : NULL, result);
        json_decref(result);
        if (hrc)
            logf_(f, "command %s seq %" PRIu64 " failed: %s", c.name, c.seq, err);
    }
    fleet_cmd_free(&c);
}

/* ---- the fleet thread --------------------------------------------------------------- */

static void on_connected(fleet *f)
{
    bool again = f->connected_at_s > 0;
    f->conn = CONN_UP;
    f->attempt = 0;
    f->connected_at_s = mono_s();
    logf_(f, "connected to %s (MQTT %s)%s", f->url, f->mqtt_version == 5 ? "5" : "3.1.1",
          again ? " again" : "");
    subscribe_all(f);
    publish_status(f, true);
    f->check_lost = true;
}

/* Commands stored by an earlier run and not taken up (the agent stopped or
 * died with them queued), oldest first, before anything new can arrive. One
 * that was already taken up FLEET_INBOX_MAX_ATTEMPTS times without finishing
 * (it kills the agent) is dropped, so it cannot keep the agent down. */
static void inbox_replay(fleet *f)
{
    /* Bounded: a row the store fails to delete is not taken up forever. */
    for (int round = 0; round < FLEET_INBOX_MAX * (FLEET_INBOX_MAX_ATTEMPTS + 1) / 16 + 1;
         round++) {
        store_outbox_msg *m = NULL;
        size_t n = 0;
        char err[256];
        if (store_inbox_peek(f->st, 16, &m, &n, err)) {
            logf_(f, "inbox: %s", err);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (m[i].attempts > FLEET_INBOX_MAX_ATTEMPTS) {
                logf_(f, "inbox: command %" PRId64 " on %s dropped: taken up %" PRId64
                         " times without finishing", m[i].id, m[i].topic, m[i].attempts - 1);
                inbox_forget(f, m[i].id);
                continue;
            }
            logf_(f, "inbox: taking up command %" PRId64 " stored by an earlier run", m[i].id);
            handle_cmd(f, m[i].id, (const char *)m[i].payload, m[i].payload_len);
        }
        store_outbox_free(m, n);
        if (n == 0)
            return;
    }
}

static void *thread_main(void *arg)
{
    fleet *f = arg;
    inbox_replay(f);
    f->next_connect_s = mono_s();
    f->next_export_s = mono_s();
    f->next_rollup_s = mono_s() + (double)f->rollup_interval_s;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        double now = mono_s();
        double wake = f->next_export_s;
        if (f->conn == CONN_DOWN && f->next_connect_s < wake)
            wake = f->next_connect_s;
        if (f->next_rollup_s < wake)
            wake = f->next_rollup_s;
        if (f->check_lost && now + 1.0 < wake)
            wake = now + 1.0;
        while (!f->head && !f->stop && mono_s() < wake) {
            double left = wake - mono_s();
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(left * 1e9);
            ts.tv_sec += (time_t)(ns / 1000000000);
            ts.tv_nsec = (long)(ns % 1000000000);
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        }
        fleet_ev *list = f->head;
        f->head = f->tail = NULL;
        bool stop = f->stop;
        pthread_mutex_unlock(&f->mu);

        while (list) {
            fleet_ev *e = list;
            list = e->next;
            switch (e->kind) {
            case EV_CONNECTED: on_connected(f); break;
            case EV_CONNECT_FAILED: {
                char why[300];
                snprintf(why, sizeof why, "connect failed (code %d%s%.200s)", e->code,
                         e->data && e->data[0] ? ": " : "", e->data ? e->data : "");
                schedule_reconnect(f, why);
                break;
            }
            case EV_LOST:
                if (f->conn == CONN_UP)
                    schedule_reconnect(f, "connection lost");
                break;
            case EV_PUB_OK:
            case EV_PUB_FAILED: pub_done(f, e); break;
            case EV_CMD: /* when stopping, left in the inbox for the next start */
                if (!stop)
                    handle_cmd(f, e->inbox_id, e->data, e->len);
                break;
            case EV_WAKE:
                if (e->token == WAKE_STATUS) {
                    publish_status(f, true);
                } else if (e->token == WAKE_FLUSH) {
                    size_t n;
                    export_requests(f, &n);
                    put_rollup(f);
                }
                break;
            }
            ev_free(e);
        }
        if (stop)
            break;
        now = mono_s();
        if (f->conn == CONN_DOWN && now >= f->next_connect_s)
            start_connect(f);
        if (now >= f->next_export_s) {
            size_t n;
            export_requests(f, &n);
            f->next_export_s = now + FLEET_EXPORT_INTERVAL_S;
        }
        if (now >= f->next_rollup_s) {
            put_rollup(f);
            f->next_rollup_s = now + (double)f->rollup_interval_s;
        }
        check_lost(f);
        pump(f);
    }

    /* Shutting down: the offline status, then a short wait for PUBACKs. */
    if (f->conn == CONN_UP) {
        MQTTAsync_token tok = publish_status(f, false);
        double until = mono_s() + FLEET_CLOSE_WAIT_MS / 1000.0;
        if (tok)
            MQTTAsync_waitForCompletion(f->client, tok, FLEET_CLOSE_WAIT_MS);
        while (fly_count(f) > 0 && mono_s() < until) {
            pthread_mutex_lock(&f->mu);
            fleet_ev *list = f->head;
            f->head = f->tail = NULL;
            pthread_mutex_unlock(&f->mu);
            if (!list)
                usleep(10000);
            while (list) {
                fleet_ev *e = list;
                list = e->next;
                if (e->kind == EV_PUB_OK || e->kind == EV_PUB_FAILED)
                    pub_done(f, e);
                ev_free(e);
            }
        }
        MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer;
        dopt.timeout = 1000;
        MQTTAsync_disconnect(f->client, &dopt);
        for (int i = 0; i < 100 && MQTTAsync_isConnected(f->client); i++)
            usleep(10000);
        logf_(f, "disconnected (offline status published)");
    }
    return NULL;
}

/* ---- open, close, API ---------------------------------------------------------------- */

/* mqtt:// -> tcp://, mqtts:// -> ssl:// (Paho's schemes); host:port required. */
static int paho_url(const char *url, char **out, bool *tls, char err[256])
{
    const char *rest;
    if (strncmp(url, "mqtt://", 7) == 0) {
        rest = url + 7;
        *tls = false;
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        rest = url + 8;
        *tls = true;
    } else {
        snprintf(err, 256, "fleet.broker: '%.128s' is not mqtt://host:port or mqtts://host:port",
                 url);
        return FLEET_CH_EINVAL;
    }
    const char *colon = strrchr(rest, ':');
    if (!rest[0] || !colon || colon == rest || !colon[1] || strchr(rest, '/') ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || atol(colon + 1) < 1 ||
        atol(colon + 1) > 65535) {
        snprintf(err, 256, "fleet.broker: '%.128s' needs host:port (port 1..65535)", url);
        return FLEET_CH_EINVAL;
    }
    size_t n = strlen(rest) + 7;
    if (!(*out = malloc(n))) {
        snprintf(err, 256, "fleet: out of memory");
        return FLEET_CH_ENOMEM;
    }
    snprintf(*out, n, "%s://%s", *tls ? "ssl" : "tcp", rest);
    return 0;
}

static void free_strv(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void fleet_free(fleet *f)
{
    if (!f)
        return;
    if (f->client)
        MQTTAsync_destroy(&f->client);
    fleet_ev *e = f->head;
    while (e) {
        fleet_ev *next = e->next;
        ev_free(e);
        e = next;
    }
    free(f->url);
    free(f->device);
    free(f->prefix);
    free(f->ca);
    free(f->cert);
    free(f->key);
    if (f->pass) {
        memset(f->pass, 0, strlen(f->pass));
        free(f->pass);
    }
    free(f->user);
    free(f->agent_version);
    free(f->t_status);
    free(f->t_telemetry);
    free(f->t_resp);
    free(f->t_cmd);
    free(f->t_ota);
    free_strv(f->t_group_cmd, f->n_groups);
    free_strv(f->t_group_ota, f->n_groups);
    free_strv(f->groups, f->n_groups);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

static void load_counters(fleet *f)
{
    char *text = NULL, err[256];
    if (store_setting_get(f->st, SET_DROPS, &text, err) == 0) {
        json_t *o = json_loads(text, 0, NULL);
        json_int_t r = 0, c = 0;
        if (o && json_unpack(o, "{s:I,s:I}", "rollups", &r, "records", &c) == 0)
            f->drops = (store_outbox_drops){.rollups = r, .records = c};
        json_decref(o);
        free(text);
    }
    text = NULL;
    f->rollup_since_ms = wall_ms();
    if (store_setting_get(f->st, SET_ROLLUP_SINCE, &text, err) == 0) {
        long long v = strtoll(text, NULL, 10);
        if (v > 0)
            f->rollup_since_ms = v;
        free(text);
    }
}

int fleet_open(const fleet_opts *o, const fleet_handlers *h, store *st, fleet **out,
               char err[256])
{
    *out = NULL;
    if (!o || !st || !o->broker_url || !o->device_id || !o->fleet_key_path) {
        snprintf(err, 256, "fleet: broker, device id, fleet key and store are all required");
        return FLEET_CH_EINVAL;
    }
    if (!topic_level_ok(o->device_id)) {
        snprintf(err, 256, "fleet.device_id: '%.64s' is not one MQTT topic level of 1..%d bytes",
                 o->device_id, FLEET_ID_MAX);
        return FLEET_CH_EINVAL;
    }
    for (size_t i = 0; i < o->n_groups; i++)
        if (!topic_level_ok(o->groups[i])) {
            snprintf(err, 256, "fleet.groups: '%.64s' is not one MQTT topic level",
                     o->groups[i] ? o->groups[i] : "(null)");
            return FLEET_CH_EINVAL;
        }
    if (o->mqtt_version != 0 && o->mqtt_version != 4 && o->mqtt_version != 5) {
        snprintf(err, 256, "fleet.mqtt_version: %d is not 4 (3.1.1) or 5", o->mqtt_version);
        return FLEET_CH_EINVAL;
    }
    if ((o->cert_path == NULL) != (o->key_path == NULL)) {
        snprintf(err, 256, "fleet: a client certificate needs its key and the other way round");
        return FLEET_CH_EINVAL;
    }
    if (mqtt_dl_load(err))
        return FLEET_CH_EMQTT;
    fleet *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, 256, "fleet: out of memory");
        return FLEET_CH_ENOMEM;
    }
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    bool tls = false;
    int rc = paho_url(o->broker_url, &f->url, &tls, err);
    if (rc) {
        fleet_free(f);
        return rc;
    }
    if (!tls && (o->ca_path || o->cert_path)) {
        snprintf(err, 256, "fleet: --ca/--cert/--key need an mqtts:// broker (got %.128s)",
                 o->broker_url);
        fleet_free(f);
        return FLEET_CH_EINVAL;
    }
    bool ok = true;
    f->device = dup_or_null(o->device_id, &ok);
    f->prefix = dup_or_null(o->topic_prefix ? o->topic_prefix : FLEET_DEFAULT_PREFIX, &ok);
    f->ca = dup_or_null(o->ca_path, &ok);
    f->cert = dup_or_null(o->cert_path, &ok);
    f->key = dup_or_null(o->key_path, &ok);
    f->user = dup_or_null(o->username, &ok);
    f->pass = dup_or_null(o->password, &ok);
    f->agent_version = dup_or_null(o->agent_version ? o->agent_version : "unknown", &ok);
    f->mqtt_version = o->mqtt_version == 5 ? 5 : 4;
    f->keepalive_s = o->keepalive_s > 0 ? o->keepalive_s : 30;
    f->reconnect_min_ms = o->reconnect_min_ms > 0 ? o->reconnect_min_ms : 500;
    f->reconnect_max_ms = o->reconnect_max_ms > 0 ? o->reconnect_max_ms : 30000;
    if (f->reconnect_max_ms < f->reconnect_min_ms)
        f->reconnect_max_ms = f->reconnect_min_ms;
    f->rollup_interval_s = o->rollup_interval_s > 0 ? o->rollup_interval_s : 300;
    f->outbox_max_msgs = o->outbox_max_msgs > 0 ? o->outbox_max_msgs : 10000;
    f->h = h ? *h : (fleet_handlers){0};
    f->st = st;
    f->policy = o->policy;
    f->log = o->log;
    f->log_ud = o->log_ud;
    f->n_groups = o->n_groups;
    if (ok && o->n_groups) {
        f->groups = calloc(o->n_groups, sizeof *f->groups);
        f->t_group_cmd = calloc(o->n_groups, sizeof *f->t_group_cmd);
        f->t_group_ota = calloc(o->n_groups, sizeof *f->t_group_ota);
        ok = f->groups && f->t_group_cmd && f->t_group_ota;
        for (size_t i = 0; ok && i < o->n_groups; i++) {
            f->groups[i] = strdup(o->groups[i]);
            f->t_group_cmd[i] = topic_of(f->prefix, "group", o->groups[i], "cmd");
            f->t_group_ota[i] = topic_of(f->prefix, "group", o->groups[i], "ota");
            ok = f->groups[i] && f->t_group_cmd[i] && f->t_group_ota[i];
        }
    }
    if (ok) {
        f->t_status = topic_of(f->prefix, f->device, "status", NULL);
        f->t_telemetry = topic_of(f->prefix, f->device, "telemetry", NULL);
        f->t_resp = topic_of(f->prefix, f->device, "resp", NULL);
        f->t_cmd = topic_of(f->prefix, f->device, "cmd", NULL);
        f->t_ota = topic_of(f->prefix, f->device, "ota", NULL);
        ok = f->t_status && f->t_telemetry && f->t_resp && f->t_cmd && f->t_ota;
    }
    if (!ok) {
        snprintf(err, 256, "fleet: out of memory");
        fleet_free(f);
        return FLEET_CH_ENOMEM;
    }
    if (strlen(f->t_status) > STORE_TOPIC_MAX || strlen(f->t_telemetry) > STORE_TOPIC_MAX) {
        snprintf(err, 256, "fleet: topic '%.64s...' is longer than %d bytes", f->t_telemetry,
                 STORE_TOPIC_MAX);
        fleet_free(f);
        return FLEET_CH_EINVAL;
    }
    if ((rc = load_state(f, o->fleet_key_path, err))) {
        fleet_free(f);
        return rc;
    }
    f->keys_shared = f->keys;
    load_counters(f);
    load_config_overrides(f);
    load_stored_policy(f);

    char client_id[FLEET_ID_MAX + 16];
    snprintf(client_id, sizeof client_id, "outpost-%s", f->device);
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = f->mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    co.sendWhileDisconnected = 0;
    rc = MQTTAsync_createWithOptions(&f->client, f->url, client_id, MQTTCLIENT_PERSISTENCE_NONE,
                                     NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        f->client = NULL;
        snprintf(err, 256, "fleet: MQTT client for %.128s: %s", f->url, MQTTAsync_strerror(rc));
        fleet_free(f);
        return FLEET_CH_EMQTT;
    }
    rc = MQTTAsync_setCallbacks(f->client, f, on_lost, on_message, NULL);
    if (rc != MQTTASYNC_SUCCESS) {
        snprintf(err, 256, "fleet: MQTT callbacks: %s", MQTTAsync_strerror(rc));
        fleet_free(f);
        return FLEET_CH_EMQTT;
    }
    if (pthread_create(&f->thread, NULL, thread_main, f) != 0) {
        snprintf(err, 256, "fleet: cannot start its thread: %s", strerror(errno));
        fleet_free(f);
        return FLEET_CH_ENOMEM;
    }
    f->thread_started = true;
    *out = f;
    return 0;
}

int fleet_resp_send(fleet *f, uint64_t seq, const char *cmd_name, bool ok, const char *error,
                    json_t *result)
{
    if (!f)
        return FLEET_CH_ESTATE;
    fleet_cmd c = {.seq = seq};
    snprintf(c.name, sizeof c.name, "%s", cmd_name ? cmd_name : "");
    char *text = fleet_resp_json(&c, ok ? FLEET_OK : FLEET_EARGS, error ? error : "failed", result);
    if (!text)
        return FLEET_CH_ENOMEM;
    char err[256];
    /* The drop counters are the fleet thread's: no bound here (one reply). */
    int rc = store_outbox_put_kind(f->st, f->t_resp, text, strlen(text), STORE_OUTBOX_RECORD, 0,
                                   NULL, NULL, err);
    free(text);
    if (rc) {
        logf_(f, "reply to seq %" PRIu64 ": %s", seq, err);
        return FLEET_CH_ESTORE;
    }
    ev_push(f, EV_WAKE, 0, 0, NULL, 0);
    return 0;
}

int fleet_status_changed(fleet *f)
{
    if (!f)
        return FLEET_CH_ESTATE;
    ev_push(f, EV_WAKE, WAKE_STATUS, 0, NULL, 0);
    return 0;
}

int fleet_event_put(fleet *f, const char *type, json_t *fields, char err[256])
{
    if (!f || !type || !type[0]) {
        snprintf(err, 256, "fleet_event_put: no fleet or no type");
        return FLEET_CH_EINVAL;
    }
    char id[STORE_ID_SIZE];
    if (store_new_id(id, err))
        return FLEET_CH_ESTORE;
    json_t *o = fields ? json_deep_copy(fields) : json_object();
    if (!json_is_object(o) ||
        json_object_set_new(o, "id", json_string(id)) ||
        json_object_set_new(o, "type", json_string(type)) ||
        json_object_set_new(o, "device", json_string(f->device)) ||
        json_object_set_new(o, "ts_ms", json_integer((json_int_t)wall_ms()))) {
        json_decref(o);
        snprintf(err, 256, "fleet_event_put: fields must be an object (or out of memory)");
        return FLEET_CH_EINVAL;
    }
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) {
        snprintf(err, 256, "fleet_event_put: out of memory");
        return FLEET_CH_ENOMEM;
    }
    int rc = store_outbox_put_kind(f->st, f->t_telemetry, text, strlen(text), STORE_OUTBOX_RECORD,
                                   0, NULL, NULL, err);
    free(text);
    if (rc)
        return FLEET_CH_ESTORE;
    ev_push(f, EV_WAKE, 0, 0, NULL, 0);
    return 0;
}

int fleet_flush(fleet *f)
{
    if (!f)
        return FLEET_CH_ESTATE;
    ev_push(f, EV_WAKE, WAKE_FLUSH, 0, NULL, 0);
    return 0;
}

int fleet_keys_get(fleet *f, fleet_keys *out)
{
    if (!f)
        return FLEET_CH_ESTATE;
    pthread_mutex_lock(&f->mu);
    *out = f->keys_shared;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

void fleet_policy_version(fleet *f, char out[64])
{
    out[0] = '\0';
    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    snprintf(out, 64, "%s", f->policy_version);
    pthread_mutex_unlock(&f->mu);
}

void fleet_close(fleet *f)
{
    if (!f)
        return;
    if (f->thread_started) {
        pthread_mutex_lock(&f->mu);
        f->stop = true;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
    }
    fleet_free(f);
}
