/*
 * fleet_ota.c - model.offer / adapter.set, the OTA chunk handler and the
 * worker that installs what arrived (see fleet_ota.h for the protocol, the
 * crash-safety rules and the health check).
 *
 * One update at a time: `cur` is the offer in flight (NULL: none). The
 * command handler sets it (fleet thread), the chunk handler fills its
 * transfer (Paho's receive thread), the worker takes it once complete or
 * failed, installs, replies and clears it. Everything touching `cur` holds
 * `mu`; the install itself runs without the lock (chunks of another
 * transfer meanwhile are not acknowledged: the broker keeps them).
 *
 * Transfer ids of offers that ended (done, failed, refused) are remembered
 * (a small ring) so their late or redelivered chunks are acknowledged and
 * dropped rather than redelivered forever.
 */
#include "fleet_ota.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fetch_http.h"
#include "install.h"
#include "manifest.h"
#include "ota_sign.h"
#include "transfer.h"

#define DONE_RING 32
/* A chunk whose offer has not been seen is offered again by the channel
 * (not acknowledged) for this long - the offer is a command, handled on
 * the fleet thread, and may lag its first chunks - then dropped: an offer
 * the channel refused (bad signature, expired) never comes. */
#define UNKNOWN_CHUNK_WAIT_MS 5000.0
#define PROBE_DEFAULT "Hello"
#define PROBE_MAX_TOKENS 16
#define PATH_BYTES 4200
/* Delivery by URL (args.url): libcurl's limits for one GET, and the retries:
 * up to URL_MAX_TRIES GETs in a row that store no chunk, URL_BACKOFF_MIN_MS
 * apart at first, doubling up to URL_BACKOFF_MAX_MS. */
#define URL_MAX_BYTES 2048
#define URL_CONNECT_TIMEOUT_S 15L
#define URL_LOW_SPEED_BYTES 1024L
#define URL_LOW_SPEED_TIME_S 30L
#define URL_MAX_TRIES 6u
#define URL_BACKOFF_MIN_MS 500.0
#define URL_BACKOFF_MAX_MS 8000.0

typedef enum offer_kind { OFFER_MODEL, OFFER_ADAPTER } offer_kind;

/* The parts of a manifest this module uses (filled by mview_parse). */
typedef struct mview {
    uint64_t version;
    bool delta;
    uint8_t base_hash[OTA_HASH_BYTES];
    uint8_t target_hash[OTA_HASH_BYTES];
    uint64_t target_size;
    ota_xfer_spec spec;
    uint8_t (*chunk_hashes)[OTA_XFER_HASH_BYTES]; /* owned; spec.chunk_hashes points here */
    char probe[1024];
    char expect[256];
    double max_ppl; /* <= 0: no ceiling */
} mview;

typedef struct offer {
    offer_kind kind;
    uint64_t seq;
    char cmd[FLEET_CMD_NAME_MAX + 1];
    uint64_t round;
    char *manifest, *sig;
    char *url; /* NULL: the payload comes in chunks on /ota */
    mview m;
    ota_xfer *xfer;
    bool failed;
    char fail_err[256];
} offer;

struct fleet_ota {
    char state_dir[PATH_BYTES];
    char ota_dir[PATH_BYTES + 8], offer_path[PATH_BYTES + 16];
    char adapter_dir[PATH_BYTES + 16], adapter_state[PATH_BYTES + 32];
    fleet_ota_host host;
    ota_install *inst;
    ota_install_recovery rec;
    bool have_key;
    ota_pubkey key;
    fleet *fleet;
    char fetch_module[PATH_BYTES]; /* "": no delivery by URL */
    char url_ca[PATH_BYTES];       /* "": the system's CAs */
    void *fetch_dl;                /* worker-only; opened once, never closed */
    const fetch_http_ops *fetch;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_ok, stop;
    offer *cur;
    bool recovery_pending; /* the worker owes the recovery's follow-up */
    bool recovering;       /* ... and is doing it (the install is busy) */
    uint64_t model_version; /* the active version, for status (the install's
                               own state belongs to the worker) */
    uint8_t done[DONE_RING][OTA_XFER_ID_BYTES];
    unsigned n_done;
    uint8_t unknown_id[OTA_XFER_ID_BYTES]; /* the chunk waiting for its offer */
    double unknown_since_ms;               /* < 0: none */

    /* worker-only (and read by status under mu) */
    sched *retiring;
    double retire_idle_since_ms; /* < 0: not idle yet */
    uint64_t adapter_round;
    char adapter_path[PATH_BYTES + 64];
};

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- manifest ------------------------------------------------------------------ */

static void mview_free(mview *m)
{
    free(m->chunk_hashes);
    m->chunk_hashes = NULL;
}

static int mview_parse(const char *text, size_t len, mview *out, char err[256])
{
    memset(out, 0, sizeof *out);
    ota_manifest *mf = NULL;
    int rc = ota_manifest_parse(text, len, "manifest", &mf, err);
    if (rc)
        return rc;
    out->version = mf->version;
    out->delta = mf->kind == OTA_MANIFEST_DELTA;
    memcpy(out->base_hash, mf->base_hash, OTA_HASH_BYTES);
    memcpy(out->target_hash, mf->target_hash, OTA_HASH_BYTES);
    out->target_size = mf->target_size;
    out->spec.size_bytes = mf->payload_size;
    memcpy(out->spec.hash, mf->payload_hash, OTA_XFER_HASH_BYTES);
    out->spec.chunk_size_bytes = mf->chunk_size;
    out->spec.n_chunks = mf->n_chunks;
    if (mf->n_chunks && !(out->chunk_hashes = malloc((size_t)mf->n_chunks * OTA_XFER_HASH_BYTES))) {
        ota_manifest_free(mf);
        snprintf(err, 256, "manifest: out of memory for %" PRIu32 " chunk hashes", mf->n_chunks);
        return OTA_ENOMEM;
    }
    if (mf->n_chunks)
        memcpy(out->chunk_hashes, mf->chunk_hashes, (size_t)mf->n_chunks * OTA_XFER_HASH_BYTES);
    out->spec.chunk_hashes = (const uint8_t(*)[OTA_XFER_HASH_BYTES])out->chunk_hashes;
    snprintf(out->probe, sizeof out->probe, "%s",
             mf->health_prompt && mf->health_prompt[0] ? mf->health_prompt : PROBE_DEFAULT);
    snprintf(out->expect, sizeof out->expect, "%s", mf->health_expect ? mf->health_expect : "");
    out->max_ppl = mf->health_max_ppl;
    ota_manifest_free(mf);
    return OTA_OK;
}

/* ---- offers ------------------------------------------------------------------------ */

static void offer_free(offer *f)
{
    if (!f)
        return;
    ota_xfer_close(f->xfer);
    mview_free(&f->m);
    free(f->manifest);
    free(f->sig);
    free(f->url);
    free(f);
}

static void done_add(fleet_ota *o, const uint8_t id[OTA_XFER_ID_BYTES])
{
    memcpy(o->done[o->n_done % DONE_RING], id, OTA_XFER_ID_BYTES);
    o->n_done++;
}

static bool done_has(const fleet_ota *o, const uint8_t id[OTA_XFER_ID_BYTES])
{
    unsigned n = o->n_done < DONE_RING ? o->n_done : DONE_RING;
    for (unsigned i = 0; i < n; i++)
        if (!memcmp(o->done[i], id, OTA_XFER_ID_BYTES))
            return true;
    return false;
}

static int offer_save(fleet_ota *o, const offer *f, char err[256])
{
    json_t *j = json_pack("{s:s, s:I, s:s, s:I, s:s, s:s}", "kind",
                          f->kind == OFFER_MODEL ? "model" : "adapter", "seq", (json_int_t)f->seq,
                          "cmd", f->cmd, "round", (json_int_t)f->round, "manifest", f->manifest,
                          "manifest_sig", f->sig);
    if (j && f->url && json_object_set_new(j, "url", json_string(f->url))) {
        json_decref(j);
        j = NULL;
    }
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        snprintf(err, 256, "%s: out of memory", o->offer_path);
        return -1;
    }
    int rc = ota_write_file_atomic(o->offer_path, text, strlen(text), err);
    free(text);
    return rc ? -1 : 0;
}

/* The offer from its parts, manifest parsed (not yet verified); *out owns
 * copies. */
static int offer_build(offer_kind kind, uint64_t seq, const char *cmd, uint64_t round,
                       const char *manifest, const char *sig, const char *url, offer **out,
                       char err[256])
{
    *out = NULL;
    offer *f = calloc(1, sizeof *f);
    if (!f || !(f->manifest = strdup(manifest)) || !(f->sig = strdup(sig)) ||
        (url && !(f->url = strdup(url)))) {
        offer_free(f);
        snprintf(err, 256, "out of memory");
        return -1;
    }
    f->kind = kind;
    f->seq = seq;
    snprintf(f->cmd, sizeof f->cmd, "%s", cmd);
    f->round = round;
    char merr[256];
    if (mview_parse(manifest, strlen(manifest), &f->m, merr)) {
        snprintf(err, 256, "%s", merr);
        offer_free(f);
        return -1;
    }
    *out = f;
    return 0;
}

/* Signature of the manifest text with a key the fleet trusts now: the
 * channel's current key or the installed next one (after key.rotate), or,
 * before the channel is up, the --fleet-key file. The signature's key id
 * picks the key. */
static int offer_verify(fleet_ota *o, const offer *f, char err[256])
{
    ota_pubkey keys[2];
    size_t n_keys = 0;
    fleet_keys fk;
    if (o->fleet && fleet_keys_get(o->fleet, &fk) == 0) {
        keys[n_keys++] = fk.current;
        if (fk.has_next)
            keys[n_keys++] = fk.next;
    } else if (o->have_key) {
        keys[n_keys++] = o->key;
    }
    if (n_keys == 0) {
        snprintf(err, 256, "manifest: no fleet key to verify it with");
        return -1;
    }
    ota_sig sig;
    char serr[256];
    if (ota_sig_parse(f->sig, strlen(f->sig), "manifest_sig", &sig, serr)) {
        snprintf(err, 256, "bad signature: %s", serr);
        return -1;
    }
    const ota_pubkey *key = &keys[0];
    for (size_t i = 0; i < n_keys; i++)
        if (memcmp(keys[i].key_id, sig.key_id, OTA_KEY_ID_BYTES) == 0)
            key = &keys[i];
    if (ota_verify_buffer(key, f->manifest, strlen(f->manifest), "manifest", &sig, 0, serr)) {
        snprintf(err, 256, "bad signature: %s", serr);
        return -1;
    }
    return 0;
}

/* Whether the offer can apply now (version, round, base). */
static int offer_admissible(fleet_ota *o, const offer *f, char err[256])
{
    if (f->kind == OFFER_ADAPTER) {
        if (f->round <= o->adapter_round) {
            snprintf(err, 256, "adapter round %" PRIu64 " is not above the current round %" PRIu64,
                     f->round, o->adapter_round);
            return -1;
        }
        if (f->m.delta) {
            snprintf(err, 256, "adapter: a delta manifest; adapters travel whole");
            return -1;
        }
        return 0;
    }
    ota_install_state s;
    ota_install_get_state(o->inst, &s);
    if (f->m.version <= s.active_version) {
        snprintf(err, 256, "version %" PRIu64 " is not above the installed version %" PRIu64
                 " (anti-rollback)", f->m.version, s.active_version);
        return -1;
    }
    if (f->m.delta) {
        uint8_t have[OTA_HASH_BYTES];
        char herr[256];
        if (ota_install_active_hash(o->inst, have, herr)) {
            snprintf(err, 256, "%s", herr);
            return -1;
        }
        if (memcmp(have, f->m.base_hash, OTA_HASH_BYTES)) {
            char want_hex[2 * OTA_HASH_BYTES + 1], have_hex[2 * OTA_HASH_BYTES + 1];
            ota_hex_encode(f->m.base_hash, OTA_HASH_BYTES, want_hex);
            ota_hex_encode(have, OTA_HASH_BYTES, have_hex);
            snprintf(err, 256, "wrong base: the delta is against %.16s..., this device serves "
                     "%.16s...", want_hex, have_hex);
            return -1;
        }
    }
    return 0;
}

/* ---- replies ----------------------------------------------------------------------- */

static void reply(fleet_ota *o, const offer *f, bool ok, const char *error, json_t *result)
{
    if (!o->fleet)
        return;
    if (fleet_resp_send(o->fleet, f->seq, f->cmd, ok, error, result))
        fprintf(stderr, "outpost serve: ota: reply to %s seq %" PRIu64 " not queued\n", f->cmd,
                f->seq);
}

static void event(fleet_ota *o, json_t *fields)
{
    char err[256];
    if (o->fleet && fleet_event_put(o->fleet, "ota", fields, err))
        fprintf(stderr, "outpost serve: ota: event: %s\n", err);
}

/* The offer ended: forget it on disk and in memory (cur cleared by the caller). */
static void offer_end(fleet_ota *o, offer *f)
{
    done_add(o, f->m.spec.hash);
    /* The offer file first: a crash in between leaves a transfer no offer
     * names (removed at the next start), never an offer without its data. */
    unlink(o->offer_path);
    if (f->xfer) {
        ota_xfer_discard(f->xfer);
        f->xfer = NULL;
    }
}

/* ---- command handlers (fleet thread) ------------------------------------------------- */

/* args.url: an https:// URL of printable ASCII, no spaces, bounded. */
static int url_check(fleet_ota *o, const char *name, const char *url, char err[256])
{
    size_t n = strlen(url);
    if (strncmp(url, "https://", 8) != 0 || n <= 8 || n > URL_MAX_BYTES) {
        snprintf(err, 256, "%s: args.url \"%.60s\": expected an https:// URL of at most %d "
                 "bytes", name, url, URL_MAX_BYTES);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (url[i] <= 0x20 || url[i] >= 0x7f) {
            snprintf(err, 256, "%s: args.url: byte %zu is 0x%02x (expected printable ASCII, no "
                     "spaces)", name, i, (unsigned char)url[i]);
            return -1;
        }
    if (!o->fetch_module[0]) {
        snprintf(err, 256, "%s: args.url: this agent has no download module (delivery by URL "
                 "is off)", name);
        return -1;
    }
    return 0;
}

static int on_offer(fleet_ota *o, offer_kind kind, const fleet_cmd *cmd, char err[256])
{
    json_t *jm = json_object_get(cmd->args, "manifest");
    json_t *js = json_object_get(cmd->args, "manifest_sig");
    json_t *jr = json_object_get(cmd->args, "round");
    json_t *ju = json_object_get(cmd->args, "url");
    if (!json_is_string(jm) || !json_is_string(js)) {
        snprintf(err, 256, "%s: args need \"manifest\" and \"manifest_sig\" strings", cmd->name);
        return -1;
    }
    if (ju && !json_is_string(ju)) {
        snprintf(err, 256, "%s: args.url: expected a string", cmd->name);
        return -1;
    }
    const char *url = ju ? json_string_value(ju) : NULL;
    if (url && url_check(o, cmd->name, url, err))
        return -1;
    uint64_t round = 0;
    if (kind == OFFER_ADAPTER) {
        if (!json_is_integer(jr) || json_integer_value(jr) < 1) {
            snprintf(err, 256, "adapter.set: args need \"round\", an integer >= 1");
            return -1;
        }
        round = (uint64_t)json_integer_value(jr);
    }
    offer *f = NULL;
    if (offer_build(kind, cmd->seq, cmd->name, round, json_string_value(jm),
                    json_string_value(js), url, &f, err))
        return -1;
    pthread_mutex_lock(&o->mu);
    int rc = -1;
    if (offer_verify(o, f, err)) {
        done_add(o, f->m.spec.hash);
        goto out;
    }
    /* Only one update at a time; with none in flight the install is idle,
     * so its state may be read here. */
    if (o->cur || o->recovering) {
        if (o->cur)
            snprintf(err, 256, "busy: the update to %s %" PRIu64 " is in flight (%" PRIu32
                     " of %" PRIu32 " chunks)", o->cur->kind == OFFER_MODEL ? "version" : "round",
                     o->cur->kind == OFFER_MODEL ? o->cur->m.version : o->cur->round,
                     o->cur->xfer ? ota_xfer_n_received(o->cur->xfer) : 0,
                     o->cur->xfer ? ota_xfer_n_chunks(o->cur->xfer) : 0);
        else
            snprintf(err, 256, "busy: finishing an update after a restart");
        goto out;
    }
    if (offer_admissible(o, f, err)) {
        done_add(o, f->m.spec.hash);
        goto out;
    }
    char xerr[256];
    if (ota_xfer_open(o->ota_dir, &f->m.spec, &f->xfer, xerr)) {
        snprintf(err, 256, "%s", xerr);
        done_add(o, f->m.spec.hash);
        goto out;
    }
    if (offer_save(o, f, err)) {
        ota_xfer_discard(f->xfer);
        f->xfer = NULL;
        goto out;
    }
    char idhex[2 * OTA_XFER_ID_BYTES + 1];
    ota_xfer_id_hex(ota_xfer_id(f->xfer), idhex);
    fprintf(stderr, "outpost serve: ota: %s accepted: %s %" PRIu64 ", transfer %s, %" PRIu32
            " chunks (%" PRIu32 " already here)%s%.200s\n", cmd->name,
            kind == OFFER_MODEL ? "version" : "round", kind == OFFER_MODEL ? f->m.version : round,
            idhex, ota_xfer_n_chunks(f->xfer), ota_xfer_n_received(f->xfer),
            f->url ? ", from " : "", f->url ? f->url : "");
    o->cur = f;
    f = NULL;
    pthread_cond_broadcast(&o->cv);
    rc = FLEET_REPLY_LATER;
out:
    pthread_mutex_unlock(&o->mu);
    offer_free(f);
    /* The publisher sends the chunks once status names the transfer (so no
     * chunk races ahead of its offer). */
    if (rc == FLEET_REPLY_LATER && o->fleet)
        fleet_status_changed(o->fleet);
    return rc;
}

static int on_model_offer(void *ud, const fleet_cmd *cmd, json_t **result, char err[256])
{
    (void)result;
    return on_offer(ud, OFFER_MODEL, cmd, err);
}

static int on_adapter_set(void *ud, const fleet_cmd *cmd, json_t **result, char err[256])
{
    (void)result;
    return on_offer(ud, OFFER_ADAPTER, cmd, err);
}

/* ---- chunks (Paho's receive thread) -------------------------------------------------- */

static int on_chunk(void *ud, const char *topic, const void *msg, size_t len, char err[256])
{
    fleet_ota *o = ud;
    uint8_t id[OTA_XFER_ID_BYTES];
    uint32_t index;
    const uint8_t *data;
    size_t n;
    if (ota_xfer_msg_parse(msg, len, id, &index, &data, &n, err)) {
        /* It can never become valid: acknowledge and drop. */
        fprintf(stderr, "outpost serve: ota: %s: %s (dropped)\n", topic, err);
        return 0;
    }
    char idhex[2 * OTA_XFER_ID_BYTES + 1];
    ota_xfer_id_hex(id, idhex);
    pthread_mutex_lock(&o->mu);
    int rc = 0;
    offer *f = o->cur;
    if (f && f->xfer && f->url && !memcmp(id, ota_xfer_id(f->xfer), OTA_XFER_ID_BYTES)) {
        rc = 0; /* the worker downloads this one; chunks of it are dropped */
    } else if (f && f->xfer && !f->failed &&
               !memcmp(id, ota_xfer_id(f->xfer), OTA_XFER_ID_BYTES)) {
        char perr[256];
        int prc = ota_xfer_put(f->xfer, index, data, n, perr);
        if (prc == OTA_ECHUNK) {
            /* A chunk that does not match the signed manifest: the update
             * fails now (the worker replies); acknowledged so the broker
             * forgets it. */
            f->failed = true;
            snprintf(f->fail_err, sizeof f->fail_err, "%s", perr);
            pthread_cond_broadcast(&o->cv);
        } else if (prc) {
            snprintf(err, 256, "%s", perr); /* not stored: not acknowledged */
            rc = -1;
        } else if (ota_xfer_complete(f->xfer)) {
            pthread_cond_broadcast(&o->cv);
        }
    } else if (done_has(o, id) || (f && f->failed)) {
        rc = 0; /* a finished, refused or failed transfer: drop */
    } else {
        double now = mono_ms();
        if (o->unknown_since_ms < 0 || memcmp(o->unknown_id, id, OTA_XFER_ID_BYTES)) {
            memcpy(o->unknown_id, id, OTA_XFER_ID_BYTES);
            o->unknown_since_ms = now;
        }
        if (now - o->unknown_since_ms >= UNKNOWN_CHUNK_WAIT_MS) {
            fprintf(stderr, "outpost serve: ota: transfer %s: no offer came for it in %.0f s; "
                    "its chunks are dropped\n", idhex, UNKNOWN_CHUNK_WAIT_MS / 1000);
            done_add(o, id);
            o->unknown_since_ms = -1;
            rc = 0;
        } else {
            snprintf(err, 256, "chunk %" PRIu32 " of transfer %s: no offer for it (yet)", index,
                     idhex);
            rc = -1;
        }
    }
    pthread_mutex_unlock(&o->mu);
    return rc;
}

/* ---- health check ---------------------------------------------------------------------- */

typedef struct probe_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} probe_wait;

static void probe_piece(void *ud, const char *text, size_t len)
{
    (void)ud;
    (void)text;
    (void)len;
}

static void probe_done(void *ud, sched_job *job)
{
    (void)job;
    probe_wait *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Perplexity of text under m (BOS first; every next token scored). */
static int probe_ppl(const eng_model *m, const char *text, double *ppl, char err[256])
{
    const tok *tk = eng_model_tok(m);
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(tk, text, strlen(text), TOK_ADD_BOS, &ids, &n, err))
        return -1;
    if (n < 2) {
        free(ids);
        snprintf(err, 256, "perplexity: the probe text is shorter than two tokens");
        return -1;
    }
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = (int32_t)(n + 8);
    p.n_threads = 1;
    eng_ctx *c = NULL;
    int rc = eng_ctx_new(&c, m, &p, err);
    if (!rc)
        rc = eng_eval(c, ids, (int32_t)n, true, err);
    if (!rc) {
        int32_t n_vocab = tok_n_vocab(tk);
        double nll = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            const float *lg = eng_logits(c, (int32_t)i);
            float mx = lg[0];
            for (int32_t v = 1; v < n_vocab; v++)
                mx = lg[v] > mx ? lg[v] : mx;
            double sum = 0;
            for (int32_t v = 0; v < n_vocab; v++)
                sum += exp((double)(lg[v] - mx));
            nll += log(sum) + (double)mx - (double)lg[ids[i + 1]];
        }
        *ppl = exp(nll / (double)(n - 1));
    }
    eng_ctx_free(c);
    free(ids);
    return rc ? -1 : 0;
}

int fleet_ota_health_check(const fleet_ota_host *host, const char *path, const char *probe,
                           const char *expect, double max_ppl, sched **out, char err[256])
{
    if (out)
        *out = NULL;
    sched *s = NULL;
    char lerr[256];
    if (host->model_open(host->ud, path, &s, lerr)) {
        snprintf(err, 256, "load: %s", lerr);
        return -1;
    }
    probe_wait w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    sched_job *j = sched_job_new();
    int rc = -1;
    if (!j || sched_job_set_prompt(j, probe, strlen(probe))) {
        snprintf(err, 256, "probe: out of memory");
        goto out;
    }
    j->raw = true;
    j->max_tokens = PROBE_MAX_TOKENS;
    j->sampling.temp = 0;
    /* Recorded like any request (a unique id), so the check shows in telemetry. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(j->request_id, sizeof j->request_id, "ota-health-check-%lld%09ld",
             (long long)now.tv_sec, now.tv_nsec);
    snprintf(j->model, sizeof j->model, "%s", sched_name(s));
    j->t_arrival = sched_now();
    j->sink = (sched_sink){.ud = &w, .on_piece = probe_piece, .on_done = probe_done};
    char serr[256];
    if (sched_prepare(s, j, serr) || sched_submit(s, j, serr)) {
        snprintf(err, 256, "probe: %s", serr);
        goto out;
    }
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    if (j->status != SCHED_OK) {
        snprintf(err, 256, "probe: generation failed: %s", j->err);
        goto out;
    }
    if (j->completion_tokens < 1) {
        snprintf(err, 256, "probe: the model generated nothing for \"%.40s\"", probe);
        goto out;
    }
    if (expect && expect[0] && (!j->text || !strstr(j->text, expect))) {
        snprintf(err, 256, "probe: the answer \"%.60s\" does not contain \"%.60s\"",
                 j->text ? j->text : "", expect);
        goto out;
    }
    if (max_ppl > 0) {
        double ppl = 0;
        if (probe_ppl(sched_model(s), probe, &ppl, serr)) {
            snprintf(err, 256, "probe: %s", serr);
            goto out;
        }
        if (!(ppl <= max_ppl)) {
            snprintf(err, 256, "probe: perplexity %.3f above the ceiling %.3f", ppl, max_ppl);
            goto out;
        }
    }
    rc = 0;
out:
    sched_job_free(j);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (rc || !out)
        sched_close(s);
    else
        *out = s;
    return rc;
}

typedef struct health_ctx {
    fleet_ota *o;
    const mview *m;
    sched *candidate; /* the checked model, kept to serve */
} health_ctx;

static int health_cb(void *ud, const char *model_path, char err[256])
{
    health_ctx *h = ud;
    const char *probe = h->m ? h->m->probe : PROBE_DEFAULT;
    const char *expect = h->m ? h->m->expect : "";
    double max_ppl = h->m ? h->m->max_ppl : 0;
    return fleet_ota_health_check(&h->o->host, model_path, probe, expect, max_ppl,
                                  &h->candidate, err);
}

/* ---- the worker ----------------------------------------------------------------------- */

static void retire(fleet_ota *o, sched *old)
{
    if (!old)
        return;
    if (o->retiring) /* a second swap before the first old model went idle */
        sched_close(o->retiring);
    o->retiring = old;
    o->retire_idle_since_ms = -1;
}

/* Close the retiring model once it has been idle long enough that no request
 * that found it before the swap can still be on its way in. */
static void retire_poll(fleet_ota *o, bool force)
{
    if (!o->retiring)
        return;
    sched_stats st;
    sched_get_stats(o->retiring, &st);
    double now = mono_ms();
    if (st.busy || st.queue_depth > 0)
        o->retire_idle_since_ms = -1;
    else if (o->retire_idle_since_ms < 0)
        o->retire_idle_since_ms = now;
    if (force || (o->retire_idle_since_ms >= 0 &&
                  now - o->retire_idle_since_ms >= FLEET_OTA_RETIRE_IDLE_MS)) {
        sched_close(o->retiring);
        o->retiring = NULL;
        fprintf(stderr, "outpost serve: ota: the previous model is closed\n");
    }
}

static void attach_adapter(fleet_ota *o, sched *s)
{
    if (!o->adapter_path[0] || !s)
        return;
    char err[256];
    if (sched_set_adapter(s, o->adapter_path, err))
        fprintf(stderr, "outpost serve: ota: adapter round %" PRIu64 " (%s) not attached: %s\n",
                o->adapter_round, o->adapter_path, err);
}

/* Make the checked model serve (after the commit). */
static void serve_candidate(fleet_ota *o, sched *cand)
{
    attach_adapter(o, cand);
    sched *old = o->host.model_swap(o->host.ud, cand);
    retire(o, old);
    if (o->fleet)
        fleet_status_changed(o->fleet);
}

static json_t *model_result(fleet_ota *o, const ota_install_report *rep)
{
    ota_install_state s;
    ota_install_get_state(o->inst, &s);
    pthread_mutex_lock(&o->mu);
    o->model_version = s.active_version;
    pthread_mutex_unlock(&o->mu);
    return json_pack("{s:I, s:s, s:f, s:f, s:I, s:s}", "version", (json_int_t)rep->version,
                     "outcome", ota_install_outcome_name(rep->outcome), "stage_ms", rep->stage_ms,
                     "check_ms", rep->check_ms, "model_version", (json_int_t)s.active_version,
                     "slot", ota_slot_name(s.active));
}

static void apply_model(fleet_ota *o, offer *f)
{
    char err[256] = "";
    ota_install_report rep = {.outcome = OTA_OUTCOME_FAILED, .version = f->m.version};
    health_ctx h = {.o = o, .m = &f->m};
    /* Installed already: the agent stopped after the commit, before the
     * offer was cleared. Say so again rather than refuse it as a rollback. */
    ota_install_state st;
    ota_install_get_state(o->inst, &st);
    uint8_t active[OTA_HASH_BYTES];
    if (st.active_version == f->m.version && !ota_install_active_hash(o->inst, active, err) &&
        !memcmp(active, f->m.target_hash, OTA_HASH_BYTES)) {
        rep.outcome = OTA_OUTCOME_COMMITTED;
        json_t *res = model_result(o, &rep);
        reply(o, f, true, NULL, res);
        json_decref(res);
        return;
    }
    int rc = ota_xfer_verify(f->xfer, err);
    if (!rc) {
        char idhex[2 * OTA_XFER_ID_BYTES + 1];
        ota_xfer_id_hex(ota_xfer_id(f->xfer), idhex);
        ota_install_update u = {
            .target = {.version = f->m.version, .size_bytes = f->m.target_size, .tag = idhex},
            .kind = f->m.delta ? OTA_PAYLOAD_DELTA : OTA_PAYLOAD_FULL,
            .payload_path = ota_xfer_path(f->xfer),
            .health = health_cb,
            .health_ud = &h,
        };
        memcpy(u.target.hash, f->m.target_hash, OTA_HASH_BYTES);
        memcpy(u.base_hash, f->m.base_hash, OTA_HASH_BYTES);
        rc = ota_install_apply(o->inst, &u, &rep, err);
    }
    json_t *res = model_result(o, &rep); /* also the version status reports */
    if (!rc && h.candidate) {
        serve_candidate(o, h.candidate);
        h.candidate = NULL;
    }
    if (h.candidate) /* checked, but the commit failed */
        sched_close(h.candidate);
    fprintf(stderr, "outpost serve: ota: version %" PRIu64 ": %s (stage %.0f ms, check %.0f ms)%s%s\n",
            f->m.version, ota_install_outcome_name(rep.outcome), rep.stage_ms, rep.check_ms,
            rc ? ": " : "", rc ? err : "");
    reply(o, f, rc == 0, rc ? err : NULL, res);
    event(o, res);
    json_decref(res);
}

static int adapter_state_save(fleet_ota *o, uint64_t round, const char *path, char err[256])
{
    char text[PATH_BYTES + 128];
    int n = snprintf(text, sizeof text, "%" PRIu64 "\n%s\n", round, path);
    return ota_write_file_atomic(o->adapter_state, text, (size_t)n, err);
}

static void adapter_state_load(fleet_ota *o)
{
    FILE *fp = fopen(o->adapter_state, "r");
    if (!fp)
        return;
    char line1[64], line2[PATH_BYTES + 64];
    if (fgets(line1, sizeof line1, fp) && fgets(line2, sizeof line2, fp)) {
        line2[strcspn(line2, "\n")] = '\0';
        uint64_t r = strtoull(line1, NULL, 10);
        if (r > 0 && access(line2, R_OK) == 0) {
            o->adapter_round = r;
            snprintf(o->adapter_path, sizeof o->adapter_path, "%s", line2);
        }
    }
    fclose(fp);
}

/* Copy src to dst through dst.tmp, fsync'd (the adapter's own file). */
static int copy_durable(const char *src, const char *dst, char err[256])
{
    char tmp[PATH_BYTES + 128];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    FILE *in = fopen(src, "rb"), *out = in ? fopen(tmp, "wb") : NULL;
    int rc = 0;
    if (!in || !out) {
        snprintf(err, 256, "%s: %s", in ? tmp : src, strerror(errno));
        rc = -1;
    }
    char buf[1 << 16];
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            snprintf(err, 256, "%s: write failed", tmp);
            rc = -1;
        }
    if (!rc && (ferror(in) || fflush(out) || fsync(fileno(out)))) {
        snprintf(err, 256, "%s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (in)
        fclose(in);
    if (out && fclose(out) && !rc) {
        snprintf(err, 256, "%s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (!rc && rename(tmp, dst)) {
        snprintf(err, 256, "%s: cannot rename into place: %s", dst, strerror(errno));
        rc = -1;
    }
    if (rc)
        unlink(tmp);
    return rc ? -1 : ota_fsync_parent(dst, err);
}

static void apply_adapter(fleet_ota *o, offer *f)
{
    char err[256] = "";
    char path[PATH_BYTES + 64];
    snprintf(path, sizeof path, "%s/round-%" PRIu64 ".gguf", o->adapter_dir, f->round);
    int rc = ota_xfer_verify(f->xfer, err);
    if (!rc && (rc = copy_durable(ota_xfer_path(f->xfer), path, err)) == 0) {
        sched *cur = o->host.model_current(o->host.ud);
        char aerr[256];
        if (sched_set_adapter(cur, path, aerr)) {
            snprintf(err, 256, "adapter round %" PRIu64 ": %s (the previous adapter stays)",
                     f->round, aerr);
            unlink(path);
            rc = -1;
        } else if (adapter_state_save(o, f->round, path, err)) {
            rc = -1;
        } else {
            if (o->adapter_path[0] && strcmp(o->adapter_path, path))
                unlink(o->adapter_path);
            pthread_mutex_lock(&o->mu);
            o->adapter_round = f->round;
            snprintf(o->adapter_path, sizeof o->adapter_path, "%s", path);
            pthread_mutex_unlock(&o->mu);
        }
    }
    fprintf(stderr, "outpost serve: ota: adapter round %" PRIu64 ": %s%s\n", f->round,
            rc ? "refused: " : "active", rc ? err : "");
    json_t *res = json_pack("{s:I, s:s, s:I}", "round", (json_int_t)f->round, "outcome",
                            rc ? "failed" : "active", "adapter_round",
                            (json_int_t)o->adapter_round);
    reply(o, f, rc == 0, rc ? err : NULL, res);
    if (o->fleet)
        fleet_status_changed(o->fleet);
    event(o, res);
    json_decref(res);
}

/* What ota/install's recovery left to do, with the offer it belonged to. */
static void recovery_follow_up(fleet_ota *o)
{
    ota_install_recovery *r = &o->rec;
    pthread_mutex_lock(&o->mu);
    offer *f = o->cur && o->cur->kind == OFFER_MODEL ? o->cur : NULL;
    pthread_mutex_unlock(&o->mu);
    if (r->needs_check) {
        health_ctx h = {.o = o, .m = f ? &f->m : NULL};
        char err[256] = "";
        double t0 = mono_ms();
        int rc = ota_install_check(o->inst, health_cb, &h, err);
        ota_install_report rep = {.outcome = rc ? (rc == OTA_EHEALTH ? OTA_OUTCOME_ROLLED_BACK
                                                                     : OTA_OUTCOME_FAILED)
                                                : OTA_OUTCOME_COMMITTED,
                                  .version = r->pending_version, .check_ms = mono_ms() - t0};
        json_t *res = model_result(o, &rep);
        if (!rc && h.candidate)
            serve_candidate(o, h.candidate);
        else if (h.candidate)
            sched_close(h.candidate);
        fprintf(stderr, "outpost serve: ota: version %" PRIu64 " (after a restart): %s%s%s\n",
                r->pending_version, ota_install_outcome_name(rep.outcome), rc ? ": " : "",
                rc ? err : "");
        if (f)
            reply(o, f, rc == 0, rc ? err : NULL, res);
        json_decref(res);
        if (f) {
            pthread_mutex_lock(&o->mu);
            offer_end(o, f);
            o->cur = NULL;
            pthread_mutex_unlock(&o->mu);
            offer_free(f);
        }
    } else if (r->rolled_back && f) {
        char err[256];
        snprintf(err, 256, "version %" PRIu64 ": the agent restarted during %d health checks; "
                 "rolled back", r->pending_version, OTA_INSTALL_MAX_CHECKS);
        reply(o, f, false, err, NULL);
        pthread_mutex_lock(&o->mu);
        offer_end(o, f);
        o->cur = NULL;
        pthread_mutex_unlock(&o->mu);
        offer_free(f);
    }
    /* r->interrupted: the offer (if any) is in cur and its transfer resumes;
     * the apply restarts from the payload when it is complete. */
}

/* ---- delivery by URL (worker) ------------------------------------------------------------ */

static bool stopping(fleet_ota *o)
{
    pthread_mutex_lock(&o->mu);
    bool stop = o->stop;
    pthread_mutex_unlock(&o->mu);
    return stop;
}

/* outpost-fetch.so, loaded on the first URL offer (fetch_http.h). */
static const fetch_http_ops *fetch_load(fleet_ota *o, char err[256])
{
    if (o->fetch)
        return o->fetch;
    void *h = dlopen(o->fetch_module, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, 256, "cannot load the download module: %s", why ? why : o->fetch_module);
        return NULL;
    }
    const fetch_http_ops *ops = dlsym(h, FETCH_HTTP_SYMBOL);
    if (!ops || ops->abi_version != FETCH_HTTP_ABI_VERSION ||
        ops->struct_size < sizeof(fetch_http_ops) || !ops->get) {
        snprintf(err, 256, "%s: %s (expected version %u; reinstall outpost)", o->fetch_module,
                 !ops ? "no " FETCH_HTTP_SYMBOL " symbol" : "a mismatched download module",
                 FETCH_HTTP_ABI_VERSION);
        dlclose(h);
        return NULL;
    }
    o->fetch_dl = h;
    o->fetch = ops;
    return ops;
}

/* One GET's bytes, cut into the manifest's chunks, each stored (hash
 * checked, fsync'd, map bit set) by ota_xfer_put as soon as it is whole. */
typedef struct url_dl {
    fleet_ota *o;
    offer *f;
    uint8_t *buf;    /* the chunk being filled */
    uint32_t index;  /* its index */
    size_t have;     /* its bytes so far */
    uint32_t stored; /* chunks this GET stored */
    bool bad;        /* a chunk did not match the manifest: the update fails */
    char err[256];
} url_dl;

static size_t chunk_bytes(const ota_xfer_spec *s, uint32_t i)
{
    uint64_t left = s->size_bytes - (uint64_t)i * s->chunk_size_bytes;
    return left < s->chunk_size_bytes ? (size_t)left : s->chunk_size_bytes;
}

static bool url_on_data(void *ud, uint64_t at_bytes, const void *p, size_t n)
{
    url_dl *d = ud;
    const ota_xfer_spec *s = &d->f->m.spec;
    if (stopping(d->o)) {
        snprintf(d->err, sizeof d->err, "the agent is stopping");
        return false;
    }
    const uint8_t *b = p;
    uint64_t next = (uint64_t)d->index * s->chunk_size_bytes + d->have;
    if (at_bytes > next) {
        snprintf(d->err, sizeof d->err, "the server sent byte %" PRIu64 " where %" PRIu64
                 " was due", at_bytes, next);
        return false;
    }
    if (n <= next - at_bytes) /* before what is needed (a 200 from byte 0) */
        return true;
    b += next - at_bytes;
    n -= (size_t)(next - at_bytes);
    while (n > 0) {
        if (d->index >= s->n_chunks) {
            snprintf(d->err, sizeof d->err, "the server sends more than the manifest's %" PRIu64
                     " bytes", s->size_bytes);
            d->bad = true;
            return false;
        }
        size_t want = chunk_bytes(s, d->index) - d->have;
        size_t take = n < want ? n : want;
        memcpy(d->buf + d->have, b, take);
        d->have += take;
        b += take;
        n -= take;
        if (d->have < chunk_bytes(s, d->index))
            continue;
        pthread_mutex_lock(&d->o->mu);
        int rc = ota_xfer_put(d->f->xfer, d->index, d->buf, d->have, d->err);
        pthread_mutex_unlock(&d->o->mu);
        if (rc) {
            d->bad = rc == OTA_ECHUNK;
            return false;
        }
        d->index++;
        d->have = 0;
        d->stored++;
    }
    return true;
}

static bool url_cancelled(void *ud)
{
    url_dl *d = ud;
    return stopping(d->o);
}

/* Wait ms, or less if the agent stops. */
static void url_backoff(fleet_ota *o, double ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&o->mu);
    while (!o->stop && pthread_cond_timedwait(&o->cv, &o->mu, &ts) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&o->mu);
}

/* Download the offer's payload from its URL into its transfer, from the
 * first chunk not stored yet (a Range request after a broken connection or
 * a restart). 0: every chunk is stored; 1: the agent stops (the offer
 * resumes at the next start); -1: the update fails (err): a chunk that does
 * not match the manifest, or URL_MAX_TRIES GETs in a row that stored
 * nothing. */
static int url_download(fleet_ota *o, offer *f, char err[256])
{
    const fetch_http_ops *ops = fetch_load(o, err);
    if (!ops)
        return -1;
    const ota_xfer_spec *s = &f->m.spec;
    url_dl d = {.o = o, .f = f, .buf = malloc(s->chunk_size_bytes ? s->chunk_size_bytes : 1)};
    if (!d.buf) {
        snprintf(err, 256, "url: out of memory for a %" PRIu32 "-byte chunk", s->chunk_size_bytes);
        return -1;
    }
    unsigned tries = 0;
    double backoff_ms = URL_BACKOFF_MIN_MS;
    int rc = 0;
    while (!ota_xfer_complete(f->xfer)) {
        uint32_t first = 0;
        while (first < s->n_chunks && ota_xfer_has_chunk(f->xfer, first))
            first++;
        d.index = first;
        d.have = 0;
        d.stored = 0;
        d.err[0] = '\0';
        fetch_http_req req = {
            .url = f->url,
            .offset_bytes = (uint64_t)first * s->chunk_size_bytes,
            .max_bytes = s->size_bytes,
            .ca_file = o->url_ca[0] ? o->url_ca : NULL,
            .connect_timeout_s = URL_CONNECT_TIMEOUT_S,
            .low_speed_bytes = URL_LOW_SPEED_BYTES,
            .low_speed_time_s = URL_LOW_SPEED_TIME_S,
            .on_data = url_on_data,
            .cancelled = url_cancelled,
            .ud = &d,
        };
        fetch_http_result res;
        char ferr[256] = "";
        int grc = ops->get(&req, &res, ferr);
        fprintf(stderr, "outpost serve: ota: GET from byte %" PRIu64 ": HTTP %ld, %" PRIu64
                " bytes, %" PRIu32 " chunks stored (%" PRIu32 " of %" PRIu32 ")%s%s\n",
                req.offset_bytes, res.status, res.body_bytes, d.stored,
                ota_xfer_n_received(f->xfer), s->n_chunks, grc ? ": " : "",
                grc ? (d.err[0] ? d.err : ferr) : "");
        if (d.bad) {
            snprintf(err, 256, "url: %s", d.err);
            rc = -1;
            break;
        }
        if (stopping(o)) {
            rc = 1;
            break;
        }
        if (ota_xfer_complete(f->xfer))
            break;
        if (!grc)
            snprintf(ferr, sizeof ferr, "%.120s: the body ended after %" PRIu64 " bytes, "
                     "before the manifest's %" PRIu64, f->url,
                     req.offset_bytes + res.body_bytes, s->size_bytes);
        else if (d.err[0])
            snprintf(ferr, sizeof ferr, "%s", d.err);
        if (d.stored) {
            tries = 0;
            backoff_ms = URL_BACKOFF_MIN_MS;
        }
        if (++tries >= URL_MAX_TRIES) {
            snprintf(err, 256, "url: %s (%u tries)", ferr, tries);
            rc = -1;
            break;
        }
        url_backoff(o, backoff_ms);
        backoff_ms = backoff_ms * 2 > URL_BACKOFF_MAX_MS ? URL_BACKOFF_MAX_MS : backoff_ms * 2;
    }
    free(d.buf);
    return rc;
}

static void *worker_main(void *arg)
{
    fleet_ota *o = arg;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        if (o->recovery_pending) {
            o->recovery_pending = false;
            o->recovering = true;
            pthread_mutex_unlock(&o->mu);
            recovery_follow_up(o);
            pthread_mutex_lock(&o->mu);
            o->recovering = false;
            continue;
        }
        offer *f = o->cur;
        bool ready = f && (f->failed || (f->xfer && ota_xfer_complete(f->xfer)));
        if (o->stop)
            break;
        if (!ready && f && f->url && f->xfer) {
            /* Delivery by URL: the worker downloads (cur stays f: only the
             * worker clears it). */
            pthread_mutex_unlock(&o->mu);
            char derr[256] = "";
            int drc = url_download(o, f, derr);
            pthread_mutex_lock(&o->mu);
            if (drc < 0) {
                f->failed = true;
                snprintf(f->fail_err, sizeof f->fail_err, "%s", derr);
            }
            continue;
        }
        if (!ready) {
            pthread_mutex_unlock(&o->mu);
            retire_poll(o, false);
            pthread_mutex_lock(&o->mu);
            if (o->stop || o->cur != f || o->recovery_pending)
                continue;
            if (f && (f->failed || (f->xfer && ota_xfer_complete(f->xfer))))
                continue;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&o->cv, &o->mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&o->mu);
        if (f->failed) {
            fprintf(stderr, "outpost serve: ota: %s seq %" PRIu64 " failed: %s\n", f->cmd, f->seq,
                    f->fail_err);
            json_t *res = json_pack("{s:s}", "outcome", "failed");
            reply(o, f, false, f->fail_err, res);
            json_decref(res);
        } else if (f->kind == OFFER_MODEL) {
            apply_model(o, f);
        } else {
            apply_adapter(o, f);
        }
        pthread_mutex_lock(&o->mu);
        offer_end(o, f);
        o->cur = NULL;
        offer_free(f);
        if (o->fleet) { /* status no longer names the transfer */
            pthread_mutex_unlock(&o->mu);
            fleet_status_changed(o->fleet);
            pthread_mutex_lock(&o->mu);
        }
    }
    pthread_mutex_unlock(&o->mu);
    retire_poll(o, true);
    return NULL;
}

/* ---- lifetime --------------------------------------------------------------------------- */

/* The offer saved before a restart, with its transfer reopened (resume). */
static void offer_restore(fleet_ota *o)
{
    FILE *fp = fopen(o->offer_path, "rb");
    if (!fp)
        return;
    json_error_t je;
    json_t *j = json_loadf(fp, 0, &je);
    fclose(fp);
    const char *kind = NULL, *cmd = NULL, *manifest = NULL, *sig = NULL;
    json_int_t seq = 0, round = 0;
    char err[256] = "";
    offer *f = NULL;
    const char *url = NULL;
    if (!j || json_unpack(j, "{s:s, s:I, s:s, s:I, s:s, s:s, s?s}", "kind", &kind, "seq", &seq,
                          "cmd", &cmd, "round", &round, "manifest", &manifest, "manifest_sig",
                          &sig, "url", &url)) {
        snprintf(err, 256, "%s: unreadable", o->offer_path);
    } else if (!offer_build(strcmp(kind, "adapter") ? OFFER_MODEL : OFFER_ADAPTER,
                            (uint64_t)seq, cmd, (uint64_t)round, manifest, sig, url, &f, err) &&
               !ota_xfer_open(o->ota_dir, &f->m.spec, &f->xfer, err)) {
        fprintf(stderr, "outpost serve: ota: resuming %s seq %" PRIu64 " (%" PRIu32 " of %" PRIu32
                " chunks here)\n", f->cmd, f->seq, ota_xfer_n_received(f->xfer),
                ota_xfer_n_chunks(f->xfer));
        o->cur = f;
        f = NULL;
    }
    if (err[0]) {
        fprintf(stderr, "outpost serve: ota: the saved offer is dropped: %s\n", err);
        unlink(o->offer_path);
    }
    offer_free(f);
    json_decref(j);
}

/* Transfer files no saved offer names (a crash between unlinking the offer
 * and discarding its transfer, or an offer that could not be restored). */
static void sweep_transfers(fleet_ota *o)
{
    char keep[2 * OTA_XFER_ID_BYTES + 1] = "";
    if (o->cur && o->cur->xfer)
        ota_xfer_id_hex(ota_xfer_id(o->cur->xfer), keep);
    DIR *d = opendir(o->ota_dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *dot = strrchr(e->d_name, '.');
        if (!dot || (strcmp(dot, ".part") && strcmp(dot, ".map")))
            continue;
        if (keep[0] && !strncmp(e->d_name, keep, strlen(keep)))
            continue;
        char p[PATH_BYTES + 300];
        snprintf(p, sizeof p, "%s/%s", o->ota_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

int fleet_ota_open(const fleet_ota_opts *opts, fleet_ota **out, char err[256])
{
    *out = NULL;
    fleet_ota *o = calloc(1, sizeof *o);
    if (!o) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    o->host = opts->host;
    snprintf(o->state_dir, sizeof o->state_dir, "%s", opts->state_dir);
    snprintf(o->fetch_module, sizeof o->fetch_module, "%s",
             opts->fetch_module ? opts->fetch_module : "");
    snprintf(o->url_ca, sizeof o->url_ca, "%s", opts->url_ca ? opts->url_ca : "");
    snprintf(o->ota_dir, sizeof o->ota_dir, "%s/ota", o->state_dir);
    snprintf(o->offer_path, sizeof o->offer_path, "%s/offer", o->ota_dir);
    snprintf(o->adapter_dir, sizeof o->adapter_dir, "%s/adapters", o->state_dir);
    snprintf(o->adapter_state, sizeof o->adapter_state, "%s/state", o->adapter_dir);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->retire_idle_since_ms = -1;
    o->unknown_since_ms = -1;
    char models[PATH_BYTES + 16];
    snprintf(models, sizeof models, "%s/models", o->state_dir);
    ota_install_opts io = {.dir = models, .factory_path = opts->factory_model};
    if (mkdir(o->ota_dir, 0700) && errno != EEXIST) {
        snprintf(err, 256, "%s: cannot create: %s", o->ota_dir, strerror(errno));
        goto fail;
    }
    if (mkdir(o->adapter_dir, 0700) && errno != EEXIST) {
        snprintf(err, 256, "%s: cannot create: %s", o->adapter_dir, strerror(errno));
        goto fail;
    }
    if (ota_install_open(&io, &o->inst, &o->rec, err))
        goto fail;
    if (opts->fleet_key_path) {
        if (ota_pubkey_load(opts->fleet_key_path, &o->key, err))
            goto fail;
        o->have_key = true;
    }
    if (o->rec.interrupted || o->rec.needs_check || o->rec.rolled_back || o->rec.n_removed ||
        o->rec.active_missing)
        fprintf(stderr, "outpost serve: ota: recovery: phase was %s%s%s%s, %d stray file(s) "
                "removed%s\n", ota_phase_name(o->rec.found_phase),
                o->rec.interrupted ? ", staging restarts" : "",
                o->rec.needs_check ? ", health check pending" : "",
                o->rec.rolled_back ? ", rolled back" : "", o->rec.n_removed,
                o->rec.active_missing ? ", the active model was missing" : "");
    ota_install_state st;
    ota_install_get_state(o->inst, &st);
    o->model_version = st.active_version;
    offer_restore(o);
    sweep_transfers(o);
    adapter_state_load(o);
    o->recovery_pending = o->rec.needs_check || o->rec.rolled_back;
    *out = o;
    return 0;
fail:
    ota_install_close(o->inst);
    pthread_cond_destroy(&o->cv);
    pthread_mutex_destroy(&o->mu);
    free(o);
    return -1;
}

const char *fleet_ota_model_path(const fleet_ota *o)
{
    return ota_install_active_path(o->inst);
}

void fleet_ota_handlers(fleet_ota *o, fleet_handlers *h)
{
    h->model_offer = on_model_offer;
    h->adapter_set = on_adapter_set;
    h->cmd_ud = o;
    h->ota_chunk = on_chunk;
    h->ota_ud = o;
}

int fleet_ota_start(fleet_ota *o, fleet *f, char err[256])
{
    o->fleet = f;
    attach_adapter(o, o->host.model_current(o->host.ud));
    if (pthread_create(&o->thread, NULL, worker_main, o)) {
        snprintf(err, 256, "cannot start the OTA worker thread");
        return -1;
    }
    o->thread_ok = true;
    return 0;
}

void fleet_ota_status(fleet_ota *o, json_t *status)
{
    pthread_mutex_lock(&o->mu);
    uint64_t round = o->adapter_round, version = o->model_version;
    json_t *ota = NULL;
    if (o->cur && o->cur->xfer) {
        char idhex[2 * OTA_XFER_ID_BYTES + 1];
        ota_xfer_id_hex(ota_xfer_id(o->cur->xfer), idhex);
        ota = json_pack("{s:s, s:s, s:I, s:I}", "transfer", idhex, "cmd", o->cur->cmd, "seq",
                        (json_int_t)o->cur->seq, "chunks",
                        (json_int_t)ota_xfer_n_chunks(o->cur->xfer));
    }
    pthread_mutex_unlock(&o->mu);
    json_object_set_new(status, "model_version", json_integer((json_int_t)version));
    json_object_set_new(status, "adapter_round", json_integer((json_int_t)round));
    json_object_set_new(status, "ota", ota ? ota : json_null());
}

void fleet_ota_stop(fleet_ota *o)
{
    if (!o || !o->thread_ok)
        return;
    pthread_mutex_lock(&o->mu);
    o->stop = true;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->thread, NULL);
    o->thread_ok = false;
}

void fleet_ota_close(fleet_ota *o)
{
    if (!o)
        return;
    fleet_ota_stop(o);
    if (o->retiring)
        sched_close(o->retiring);
    offer_free(o->cur);
    ota_install_close(o->inst);
    pthread_cond_destroy(&o->cv);
    pthread_mutex_destroy(&o->mu);
    free(o);
}
