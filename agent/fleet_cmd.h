/*
 * fleet_cmd.h - signed fleet command envelopes (fleet_): what arrives on
 * <prefix>/<device>/cmd and <prefix>/group/<group>/cmd, checked before
 * anything acts on it.
 *
 * Envelope (the MQTT payload), a JSON object with exactly two fields:
 *
 *   {"payload": "<P>", "sig": "<S>"}
 *
 *   P  the command, as JSON text carried in a JSON string:
 *        {"target":  {"device": "<device id>"} | {"group": "<group name>"},
 *         "seq":     <integer >= 1>,
 *         "expires": <integer, Unix time in seconds>,
 *         "body":    {"cmd": "<name>", "args": {...}}}      (args optional)
 *      Every field is required (but args) and no other field is allowed:
 *      an old device must not silently ignore a condition a newer signer
 *      added. Duplicate keys are refused.
 *   S  the minisign signature file text (four lines, prehashed "ED") of the
 *      exact bytes of P, as `minisign -S -m payload.json` or `outpost ota
 *      sign` writes it. The signature covers P's bytes, not a re-serialised
 *      form, so no JSON canonicalisation is involved: the receiver verifies
 *      the string it decoded, then parses it.
 *
 * Checks, in order (the first failure is the verdict): size, envelope
 * JSON, presence of a signature (FLEET_EUNSIGNED), signature: a fleet key
 * with the signature's key id, the payload's signature and the trusted
 * comment's (FLEET_EBADSIG); only then the payload's fields
 * (FLEET_EMALFORMED), target is this device or one of its groups
 * (FLEET_ETARGET), now < expires (FLEET_EEXPIRED), seq > last accepted
 * (FLEET_EREPLAY), a known command (FLEET_EUNKNOWN), its arguments when
 * this module owns them (key.rotate; FLEET_EARGS).
 *
 * Sequence: one counter per fleet signing key holder, increasing across all
 * commands (device and group); gaps are fine. The caller keeps the last
 * accepted seq (SQLite) and passes it in; on FLEET_OK, out->seq is the new
 * value. Persist it (and out->keys when out->keys_changed) before acting on
 * the command, so that a crash never lets the same command run twice.
 *
 * Keys and rotation: the device trusts keys->current and, once installed,
 * keys->next. `key.rotate` with args {"next_key": "<base64 public key, as
 * minisign -P takes>"}, signed by a trusted key, installs next_key as the
 * next key. The first accepted command signed by the next key promotes it
 * to current and retires the old current key. Either way out->keys is the
 * key state after the command and out->keys_changed says to persist it.
 *
 * Replies: on rejection out->seq and out->name carry what the payload
 * claimed (unverified, 0 and "" when unreadable) so fleet_resp_json() can
 * echo them on /resp for the operator to match; err is the one-line reason
 * ("expired: ...", "replayed: ...").
 *
 * Ownership: out->args is a new reference owned by out (fleet_cmd_free);
 * text returned by fleet_resp_json, fleet_payload_build and fleet_cmd_seal
 * is malloc'd for the caller to free.
 */
#ifndef OUTPOST_FLEET_CMD_H
#define OUTPOST_FLEET_CMD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_sign.h"

#define FLEET_ENVELOPE_MAX_BYTES (1024 * 1024)
#define FLEET_ID_MAX 128      /* bytes of a device id or group name */
#define FLEET_CMD_NAME_MAX 64 /* bytes of a command name */

enum {
    FLEET_OK = 0,
    FLEET_EMALFORMED = -1, /* envelope or payload is not the documented JSON */
    FLEET_EUNSIGNED = -2,  /* no signature */
    FLEET_EBADSIG = -3,    /* unreadable signature, unknown key, or it does not verify */
    FLEET_EEXPIRED = -4,
    FLEET_EREPLAY = -5,    /* seq not above the last accepted */
    FLEET_ETARGET = -6,    /* for another device or a group this device is not in */
    FLEET_EUNKNOWN = -7,   /* unknown command name */
    FLEET_EARGS = -8,      /* bad arguments (key.rotate) */
    FLEET_ETOOBIG = -9,    /* envelope larger than FLEET_ENVELOPE_MAX_BYTES */
    FLEET_ENOMEM = -10,
};

typedef enum fleet_cmd_kind {
    FLEET_CMD_PING,
    FLEET_CMD_CONFIG_SET,
    FLEET_CMD_POLICY_SET,
    FLEET_CMD_MODEL_OFFER,
    FLEET_CMD_ADAPTER_SET,
    FLEET_CMD_TELEMETRY_FLUSH,
    FLEET_CMD_KEY_ROTATE,
    FLEET_CMD_COUNT,
} fleet_cmd_kind;

typedef enum fleet_target_kind {
    FLEET_TARGET_DEVICE,
    FLEET_TARGET_GROUP,
} fleet_target_kind;

typedef struct fleet_keys {
    ota_pubkey current;
    bool has_next;
    ota_pubkey next;
} fleet_keys;

/* Who this device is; the strings are borrowed. */
typedef struct fleet_identity {
    const char *device_id;
    const char *const *groups;
    size_t n_groups;
} fleet_identity;

typedef struct fleet_cmd {
    fleet_cmd_kind kind;                /* valid on FLEET_OK */
    char name[FLEET_CMD_NAME_MAX + 1];  /* the command name ("" if unreadable) */
    uint64_t seq;                       /* FLEET_OK: the new last accepted seq */
    int64_t expires_s;
    fleet_target_kind target;
    json_t *args;                       /* FLEET_OK: an object (maybe empty); else NULL */
    fleet_keys keys;                    /* the key state after this command */
    bool keys_changed;                  /* FLEET_OK: persist keys */
} fleet_cmd;

/* "ping", "config.set", ...; NULL for an out-of-range kind. */
const char *fleet_cmd_name(fleet_cmd_kind kind);
/* "unsigned", "bad_signature", "expired", ... for a FLEET_E* code. */
const char *fleet_reject_name(int rc);

/* Check one envelope (see the top of this file). me and keys are read only;
 * now_s is the caller's clock (Unix seconds). out is always initialised
 * (free it with fleet_cmd_free). */
int fleet_cmd_verify(const char *envelope, size_t len, const fleet_identity *me,
                     const fleet_keys *keys, int64_t now_s, uint64_t last_seq, fleet_cmd *out,
                     char err[256]);
void fleet_cmd_free(fleet_cmd *c);

/* The /resp reply for c: {"seq": N|null, "cmd": NAME|null, "ok": rc == 0,
 * "error": error (when rc != 0), "result": result (when given, borrowed)}.
 * Compact JSON on one line; NULL when out of memory. */
char *fleet_resp_json(const fleet_cmd *c, int rc, const char *error, json_t *result);

/* ---- the signer's side (outpost fleet cmd, tests) ------------------------- */

/* Payload text for a command; args may be NULL (borrowed). */
int fleet_payload_build(fleet_target_kind target, const char *name, uint64_t seq,
                        int64_t expires_s, const char *cmd, json_t *args, char **out,
                        char err[256]);
/* Sign payload (prehashed, trusted comment given or minisign's default)
 * and wrap it in an envelope. */
int fleet_cmd_seal(const ota_seckey *sk, const char *payload, size_t len, const char *trusted,
                   char **envelope, char err[256]);

#endif
