/*
 * fleet_ota.h - OTA model updates and federated adapter updates driven by
 * the fleet channel (fleet_ota_): the model.offer and adapter.set command
 * handlers, the chunk handler, and the worker that applies what arrived.
 *
 * model.offer args: {"manifest": "<manifest text>", "manifest_sig": "<minisign
 * signature file text of the manifest>"}. adapter.set args: the same plus
 * {"round": N}. The manifest (ota/manifest.h) names the version, the payload
 * (a whole file or a delta), its chunks' hashes and the health check. The
 * handler verifies the signature with the fleet key, refuses a version not
 * above the installed one (or a round not above the current adapter's),
 * a delta whose base is not the serving model, or a second update while one
 * is in flight; otherwise it records the offer durably (<state>/ota/offer)
 * and defers its /resp reply (FLEET_REPLY_LATER). Chunks then arrive on the
 * /ota topics (ota/transfer.h) and are stored before they are acknowledged.
 * When the last one is in, the worker thread verifies the payload and
 * installs it (ota/install.h: stage, health check, commit or roll back), or
 * for an adapter copies it to <state>/adapters and hot-swaps it into the
 * serving model; then it sends the one reply. A corrupted chunk ends the
 * update at once with a failure reply (the chunk is acknowledged so the
 * broker forgets it; later chunks of that transfer are dropped).
 *
 * Delivery by URL: args may name {"url": "https://..."} (the command is
 * signed, so the URL is the fleet's; the manifest is unchanged). Then no
 * chunks travel on /ota (any that do for that transfer are dropped): the
 * worker downloads the payload with outpost-fetch.so (libcurl, loaded on
 * the first such offer, fetch_http.h) into the same transfer files, cutting
 * the body into the manifest's chunks, each hash-checked and stored
 * durably as a chunk from MQTT would be. After a broken connection, or a
 * restart (the offer file keeps the URL), it asks "Range: bytes=N-" from
 * the first chunk not stored. TLS is verified (fleet.ota_ca, or the
 * system's CAs); https:// only. Connect timeout 15 s, a transfer below
 * 1 KiB/s for 30 s is cut; up to 6 GETs in a row that store nothing,
 * 0.5 s apart doubling to 8 s, then the update fails. A chunk that does not
 * match the manifest fails it at once. The rest (whole-file hash, install,
 * health check, commit or roll back, the one /resp reply) is the chunked
 * path's.
 *
 * Crash safety: the offer file and the transfer's map make a restart resume
 * the download where it was; ota/install's recovery keeps a model to serve
 * and says whether the apply restarts or needs its health check, which the
 * worker then runs, replying to the original offer's seq.
 *
 * Health check (model): the staged model is opened with the default
 * model's settings (load + warm-up), the probe prompt (the manifest's, or
 * "Hello") is generated greedily for up to 16 tokens and must give text
 * (containing the manifest's expected substring, when it names one); with a
 * perplexity ceiling, the perplexity of the probe text itself must be below
 * it. A model that passes is the one that then serves: the host's
 * model_swap makes it the default; requests already queued or running
 * finish on the old model, which is closed once it has been idle for
 * FLEET_OTA_RETIRE_IDLE_MS.
 *
 * Threads: handlers run on the fleet thread (commands) and Paho's receive
 * thread (chunks); one worker thread applies. One mutex guards the
 * in-flight offer.
 *
 * Ownership: fleet_ota_open returns a handle freed by fleet_ota_close
 * (which closes any model still retiring); the host callbacks' ud is
 * borrowed.
 */
#ifndef OUTPOST_FLEET_OTA_H
#define OUTPOST_FLEET_OTA_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "fleet.h"
#include "scheduler.h"

#define FLEET_OTA_RETIRE_IDLE_MS 2000

/* What the agent lends the OTA worker. */
typedef struct fleet_ota_host {
    void *ud;
    /* Open path with the default model's settings (load, context, warm-up). */
    int (*model_open)(void *ud, const char *path, sched **out, char err[256]);
    /* Make s the default model (ownership passes to the agent); returns the
     * old default, which the caller retires. */
    sched *(*model_swap)(void *ud, sched *s);
    /* The default model now. */
    sched *(*model_current)(void *ud);
} fleet_ota_host;

typedef struct fleet_ota_opts {
    const char *state_dir;      /* <state_dir>/models, /ota, /adapters */
    const char *factory_model;  /* the configured default model file */
    const char *fleet_key_path; /* verifies manifest signatures; NULL: refuse offers */
    const char *fetch_module;   /* outpost-fetch.so; NULL: offers naming a URL are refused */
    const char *url_ca;         /* CA file for URL downloads; NULL: the system's */
    fleet_ota_host host;
} fleet_ota_opts;

typedef struct fleet_ota fleet_ota;

/* Opens (and recovers) the install directory. Call before the models load:
 * fleet_ota_model_path() is the file the default model is to be served from. */
int fleet_ota_open(const fleet_ota_opts *o, fleet_ota **out, char err[256]);
const char *fleet_ota_model_path(const fleet_ota *o);

/* The handlers for fleet_open (model_offer, adapter_set, ota_chunk and
 * their ud); status is left to the caller, who calls fleet_ota_status. */
void fleet_ota_handlers(fleet_ota *o, fleet_handlers *h);
/* Once the fleet is open and the models serve: attach the channel (for
 * replies and status), re-attach the stored adapter, start the worker (it
 * resumes what recovery left). */
int fleet_ota_start(fleet_ota *o, fleet *f, char err[256]);
/* "model_version", "adapter_round" and "ota" (the update in flight:
 * {"transfer": id hex, "cmd", "seq", "chunks"}, or null) into a status
 * object. `outpost fleet publish` waits for "ota" to name its transfer
 * before it sends the chunks, so that no chunk arrives before its offer. */
void fleet_ota_status(fleet_ota *o, json_t *status);
/* Stop the worker (an apply in progress finishes first) and close a
 * retiring model; the handlers still store what arrives. NULL is fine. */
void fleet_ota_stop(fleet_ota *o);
/* fleet_ota_stop, then free. After fleet_close (no handler may run). */
void fleet_ota_close(fleet_ota *o);

/* The health check on its own (tests): open path through the host, run the
 * probe; on success *out (may be NULL: closed) is the opened model. */
int fleet_ota_health_check(const fleet_ota_host *host, const char *path, const char *probe,
                           const char *expect, double max_ppl, sched **out, char err[256]);

#endif
