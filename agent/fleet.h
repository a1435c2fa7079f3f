/*
 * fleet.h - the fleet channel (fleet_): this device's link to its fleet
 * over an MQTT broker (Eclipse Paho C, asynchronous API).
 *
 * Topics (ARCHITECTURE.md, "MQTT"; <p> is the prefix, default outpost/v1):
 *   <p>/<device>/status      out, retained: {"state": "online"|"offline",
 *                            "version", "model", "model_version",
 *                            "policy_version", "adapter_round", "health",
 *                            "outbox": {...}}; the broker publishes the
 *                            "offline" form as our last will
 *   <p>/<device>/telemetry   out, QoS 1, from the SQLite outbox: {"id",
 *                            "type": "request"|"rollup"|..., ...}
 *   <p>/<device>/cmd         in, QoS 1: signed envelopes (fleet_cmd.h)
 *   <p>/group/<g>/cmd        in, QoS 1, for every configured group
 *   <p>/<device>/resp        out, QoS 1: one reply per command
 *   <p>/<device>/ota         in, QoS 1, binary OTA chunks (a deviation the
 *   <p>/group/<g>/ota        report names: chunks are not JSON envelopes;
 *                            each is bound by a hash in the signed manifest)
 *
 * Invariants:
 *   - A command acts only after fleet_cmd_verify() accepted it AND the new
 *     last seq (and keys, when they changed) are stored in SQLite; every
 *     command, accepted or not, gets exactly one /resp reply (a handler
 *     that defers its reply with FLEET_REPLY_LATER owes it through
 *     fleet_resp_send()).
 *   - A telemetry message leaves the outbox only after the broker's PUBACK
 *     for it; the outbox is bounded (oldest roll-ups dropped first, then
 *     oldest other records; both counted and reported in the next roll-up
 *     and in status).
 *   - An OTA chunk is acknowledged to the broker only after the ota_chunk
 *     handler returned 0 (it stored the chunk durably); with the persistent
 *     session the broker redelivers what was not acknowledged.
 *
 * Threads: fleet_open() starts one fleet thread that owns the Paho client,
 * the reconnect timer, the outbox pump and command execution. Paho's
 * callbacks only queue events for it, except the OTA chunk handler, which
 * runs on Paho's receive thread so that the acknowledgement waits for it.
 * Command and status handlers run on the fleet thread; they may block for
 * a short while (compile a policy) but must start long work elsewhere.
 * fleet_resp_send(), fleet_status_changed(), fleet_event_put() and
 * fleet_flush() may be called from any thread.
 *
 * Ownership: fleet_opts strings are copied by fleet_open(); the store is
 * borrowed and must outlive the fleet; JSON handed to the handlers is
 * borrowed for the call; *result returned by a handler becomes the fleet's.
 */
#ifndef OUTPOST_FLEET_H
#define OUTPOST_FLEET_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_cmd.h"
#include "store.h"

/* Result codes (0 = ok). */
enum {
    FLEET_CH_OK = 0,
    FLEET_CH_EINVAL = -1,  /* bad option: URL, file, id */
    FLEET_CH_ESTORE = -2,  /* the store failed */
    FLEET_CH_ENOMEM = -3,
    FLEET_CH_EMQTT = -4,   /* Paho refused (create, TLS options) */
    FLEET_CH_ESTATE = -5,  /* closed, or not connected where that matters */
};

/* A command handler returns 0 (ok: reply now with *result), -1 (failed: reply
 * now with err), or FLEET_REPLY_LATER: the handler keeps the command's seq
 * and name and sends the one reply itself with fleet_resp_send() later. */
#define FLEET_REPLY_LATER 1

struct pol;

typedef int (*fleet_cmd_fn)(void *ud, const fleet_cmd *cmd, json_t **result, char err[256]);

typedef struct fleet_handlers {
    /* config.set, policy.set, ping, telemetry.flush and key.rotate are the
     * channel's own (config.set takes the fleet.* runtime keys; policy.set
     * needs opts.policy). model.offer and adapter.set go here; a NULL
     * handler answers ok=false "not available". */
    fleet_cmd_fn model_offer;
    fleet_cmd_fn adapter_set;
    void *cmd_ud;
    /* A message on an /ota topic (device or group). Return 0 only once it
     * is durably stored (then it is acknowledged); non-zero leaves it
     * unacknowledged (Paho offers it again after a pause, and the broker
     * redelivers after a reconnect). topic is borrowed for the call. */
    int (*ota_chunk)(void *ud, const char *topic, const void *msg, size_t len, char err[256]);
    void *ota_ud;
    /* Fills the live fields of a status object: "model", "model_version",
     * "adapter_round", "health" (string: "ok", "degraded", ...). The channel
     * sets "state", "version", "policy_version" and "outbox" itself. */
    void (*status)(void *ud, json_t *status);
    void *status_ud;
} fleet_handlers;

typedef struct fleet_opts {
    const char *broker_url;        /* mqtt://host:port or mqtts://host:port */
    const char *device_id;         /* one topic level */
    const char *const *groups;
    size_t n_groups;
    const char *topic_prefix;      /* NULL: "outpost/v1" */
    const char *fleet_key_path;    /* minisign public key; trusted until a
                                      key.rotate stored another in SQLite */
    const char *ca_path;           /* mqtts: CA file; NULL: the system's */
    const char *cert_path, *key_path; /* mqtts client certificate (PEM) */
    const char *username, *password;  /* NULL: none */
    int mqtt_version;              /* 4 (3.1.1) or 5; 0: 4 */
    int keepalive_s;               /* 0: 30 */
    int reconnect_min_ms;          /* first retry delay; 0: 500 */
    int reconnect_max_ms;          /* backoff ceiling; 0: 30000 */
    int64_t rollup_interval_s;     /* 0: 300; runtime-settable */
    int64_t outbox_max_msgs;       /* unsent telemetry kept; 0: 10000; runtime-settable */
    const char *agent_version;     /* status "version"; NULL: OUTPOST_VERSION */
    struct pol *policy;            /* policy.set replaces it; NULL: refused */
    /* One line per event (connect, reconnect, command verdicts); NULL: stderr. */
    void (*log)(void *ud, const char *line);
    void *log_ud;
} fleet_opts;

typedef struct fleet fleet;

/* Checks the options, loads the keys (SQLite first, else the key file),
 * creates the client and starts the fleet thread, which connects in the
 * background (a broker that is down is not an error: it retries). */
int fleet_open(const fleet_opts *o, const fleet_handlers *h, store *st, fleet **out,
               char err[256]);

/* The one reply to a command whose handler returned FLEET_REPLY_LATER
 * (seq and name as the fleet_cmd carried). result is borrowed. Queued in
 * memory and sent at QoS 1 as soon as connected. */
int fleet_resp_send(fleet *f, uint64_t seq, const char *cmd_name, bool ok, const char *error,
                    json_t *result);

/* Republish the retained status (model or adapter changed). */
int fleet_status_changed(fleet *f);

/* Queue a telemetry record of another type through the outbox (e.g. "ota"
 * progress): fields is borrowed; "id", "type", "ts_ms" and "device" are
 * added. Survives restarts like request records. */
int fleet_event_put(fleet *f, const char *type, json_t *fields, char err[256]);

/* Export new request records and a roll-up now, and publish the outbox
 * (what telemetry.flush does). */
int fleet_flush(fleet *f);

/* The fleet keys trusted now (after any key.rotate): to verify what else
 * the fleet signs, e.g. an OTA manifest. Any thread. */
int fleet_keys_get(fleet *f, fleet_keys *out);

/* The policy version last installed by policy.set ("" when none). */
void fleet_policy_version(fleet *f, char out[64]);

/* Stops the thread, publishes the retained "offline" status, waits briefly
 * for outstanding acknowledgements, disconnects. NULL is fine. */
void fleet_close(fleet *f);

#endif
