/*
 * fleet_cmd.c - signed fleet command envelopes (format and rules in
 * fleet_cmd.h).
 *
 * The one invariant: nothing in a payload is believed before its signature
 * verifies with a fleet key. The payload is parsed once, up front, only so
 * that a rejected command's claimed seq and name can be echoed in the
 * reply; every decision is taken after verification, from the verified
 * bytes. Signatures must be prehashed ("ED"): minisign's documentation asks
 * new uses not to accept legacy ones by default, and nothing signs
 * envelopes the legacy way.
 */
#include "fleet_cmd.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const cmd_names[FLEET_CMD_COUNT] = {
    [FLEET_CMD_PING] = "ping",
    [FLEET_CMD_CONFIG_SET] = "config.set",
    [FLEET_CMD_POLICY_SET] = "policy.set",
    [FLEET_CMD_MODEL_OFFER] = "model.offer",
    [FLEET_CMD_ADAPTER_SET] = "adapter.set",
    [FLEET_CMD_TELEMETRY_FLUSH] = "telemetry.flush",
    [FLEET_CMD_KEY_ROTATE] = "key.rotate",
};

static const char *const target_names[] = {
    [FLEET_TARGET_DEVICE] = "device",
    [FLEET_TARGET_GROUP] = "group",
};

const char *fleet_cmd_name(fleet_cmd_kind kind)
{
    return (unsigned)kind < FLEET_CMD_COUNT ? cmd_names[kind] : NULL;
}

const char *fleet_reject_name(int rc)
{
    switch (rc) {
    case FLEET_OK: return "ok";
    case FLEET_EMALFORMED: return "malformed";
    case FLEET_EUNSIGNED: return "unsigned";
    case FLEET_EBADSIG: return "bad_signature";
    case FLEET_EEXPIRED: return "expired";
    case FLEET_EREPLAY: return "replayed";
    case FLEET_ETARGET: return "wrong_target";
    case FLEET_EUNKNOWN: return "unknown_command";
    case FLEET_EARGS: return "bad_args";
    case FLEET_ETOOBIG: return "too_large";
    case FLEET_ENOMEM: return "out_of_memory";
    default: return "error";
    }
}

/* An error line goes to an operator in /resp: it must be one line of
 * valid UTF-8 even when it quotes the input (a field name with a newline,
 * jansson's message about a bad byte) or was cut at 255 bytes inside a
 * multi-byte character. Control bytes become '?'; if jansson still finds
 * the line is not UTF-8, every non-ASCII byte does. */
static void err_clean(char *err)
{
    size_t n = strlen(err);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)err[i] < 0x20 || err[i] == 0x7f)
            err[i] = '?';
    json_t *probe = json_stringn(err, n);
    if (probe) {
        json_decref(probe);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)err[i] >= 0x80)
            err[i] = '?';
}

/* Every error line starts with the rejection's name. */
static int reject(int rc, char err[256], const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reject(int rc, char err[256], const char *fmt, ...)
{
    int n = snprintf(err, 256, "%s: ", fleet_reject_name(rc));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, 256 - (size_t)n, fmt, ap);
    va_end(ap);
    err_clean(err);
    return rc;
}

/* Fields of an object must all be in allowed (NULL-terminated); returns the
 * first one that is not, or NULL. */
static const char *unknown_field(json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        bool known = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(key, *a) == 0)
                known = true;
        if (!known)
            return key;
    }
    return NULL;
}

/* A string of 1..max bytes without NUL; NULL otherwise. */
static const char *short_string(json_t *v, size_t max)
{
    if (!json_is_string(v))
        return NULL;
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n > max || strlen(s) != n)
        return NULL;
    return s;
}

/* What a payload claims, before it is believed: for the reply only. */
static void claim(json_t *payload, fleet_cmd *out)
{
    json_t *seq = json_object_get(payload, "seq");
    if (json_is_integer(seq) && json_integer_value(seq) > 0)
        out->seq = (uint64_t)json_integer_value(seq);
    const char *name = short_string(json_object_get(json_object_get(payload, "body"), "cmd"),
                                    FLEET_CMD_NAME_MAX);
    if (name)
        snprintf(out->name, sizeof out->name, "%s", name);
}

/* The verified payload's fields into out; target name into *target_name. */
static int parse_payload(json_t *p, fleet_cmd *out, const char **target_name, json_t **args,
                         char err[256])
{
    static const char *const top[] = {"target", "seq", "expires", "body", NULL};
    static const char *const body_fields[] = {"cmd", "args", NULL};
    if (!json_is_object(p))
        return reject(FLEET_EMALFORMED, err, "payload is not a JSON object");
    const char *bad = unknown_field(p, top);
    if (bad)
        return reject(FLEET_EMALFORMED, err, "payload: unknown field '%.64s'", bad);

    json_t *t = json_object_get(p, "target");
    if (!json_is_object(t) || json_object_size(t) != 1)
        return reject(FLEET_EMALFORMED, err,
                      "payload: target must be {\"device\": ID} or {\"group\": NAME}");
    json_t *dev = json_object_get(t, "device"), *grp = json_object_get(t, "group");
    out->target = dev ? FLEET_TARGET_DEVICE : FLEET_TARGET_GROUP;
    const char *tn = short_string(dev ? dev : grp, FLEET_ID_MAX);
    if (!(dev || grp) || !tn)
        return reject(FLEET_EMALFORMED, err,
                      "payload: target must be {\"device\": ID} or {\"group\": NAME} with a "
                      "string of 1..%d bytes", FLEET_ID_MAX);
    *target_name = tn;

    json_t *seq = json_object_get(p, "seq");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1)
        return reject(FLEET_EMALFORMED, err, "payload: seq must be an integer >= 1");
    out->seq = (uint64_t)json_integer_value(seq);

    json_t *exp = json_object_get(p, "expires");
    if (!json_is_integer(exp))
        return reject(FLEET_EMALFORMED, err,
                      "payload: expires must be an integer (Unix time in seconds)");
    out->expires_s = (int64_t)json_integer_value(exp);

    json_t *body = json_object_get(p, "body");
    if (!json_is_object(body))
        return reject(FLEET_EMALFORMED, err, "payload: body must be an object");
    if ((bad = unknown_field(body, body_fields)))
        return reject(FLEET_EMALFORMED, err, "payload: body: unknown field '%.64s'", bad);
    const char *name = short_string(json_object_get(body, "cmd"), FLEET_CMD_NAME_MAX);
    if (!name)
        return reject(FLEET_EMALFORMED, err, "payload: body.cmd must be a string of 1..%d bytes",
                      FLEET_CMD_NAME_MAX);
    snprintf(out->name, sizeof out->name, "%s", name);
    json_t *a = json_object_get(body, "args");
    if (a && !json_is_object(a))
        return reject(FLEET_EMALFORMED, err, "payload: body.args must be an object");
    *args = a;
    return FLEET_OK;
}

static bool targets_me(const fleet_cmd *c, const char *name, const fleet_identity *me)
{
    if (c->target == FLEET_TARGET_DEVICE)
        return me->device_id && strcmp(name, me->device_id) == 0;
    for (size_t i = 0; i < me->n_groups; i++)
        if (me->groups[i] && strcmp(name, me->groups[i]) == 0)
            return true;
    return false;
}

/* key.rotate: install args.next_key as the next key of out->keys. */
static int rotate(json_t *args, fleet_cmd *out, char err[256])
{
    static const char *const fields[] = {"next_key", NULL};
    const char *bad = args ? unknown_field(args, fields) : NULL;
    if (bad)
        return reject(FLEET_EARGS, err, "key.rotate: unknown argument '%.64s'", bad);
    const char *b64 = short_string(args ? json_object_get(args, "next_key") : NULL, 256);
    if (!b64)
        return reject(FLEET_EARGS, err,
                      "key.rotate: args.next_key must be a base64 minisign public key");
    ota_pubkey next;
    char kerr[256];
    if (ota_pubkey_from_base64(b64, "key.rotate args.next_key", &next, kerr) != OTA_OK)
        return reject(FLEET_EARGS, err, "%s", kerr);
    if (memcmp(next.key_id, out->keys.current.key_id, OTA_KEY_ID_BYTES) == 0)
        return reject(FLEET_EARGS, err,
                      "key.rotate: next_key has the key id of the current key");
    out->keys.next = next;
    out->keys.has_next = true;
    out->keys_changed = true;
    return FLEET_OK;
}

int fleet_cmd_verify(const char *envelope, size_t len, const fleet_identity *me,
                     const fleet_keys *keys, int64_t now_s, uint64_t last_seq, fleet_cmd *out,
                     char err[256])
{
    memset(out, 0, sizeof *out);
    out->keys = *keys;
    err[0] = '\0';
    if (len > FLEET_ENVELOPE_MAX_BYTES)
        return reject(FLEET_ETOOBIG, err, "envelope is %zu bytes, more than %d", len,
                      FLEET_ENVELOPE_MAX_BYTES);

    int rc;
    json_t *env = NULL, *payload = NULL;
    ota_sig *sig = NULL;
    json_error_t je;
    env = json_loadb(envelope, len, JSON_REJECT_DUPLICATES, &je);
    if (!env) {
        rc = reject(FLEET_EMALFORMED, err, "envelope is not JSON: %.120s (line %d, column %d)",
                    je.text, je.line, je.column);
        goto done;
    }
    static const char *const env_fields[] = {"payload", "sig", NULL};
    const char *bad;
    if (!json_is_object(env)) {
        rc = reject(FLEET_EMALFORMED, err, "envelope is not a JSON object");
        goto done;
    }
    if ((bad = unknown_field(env, env_fields))) {
        rc = reject(FLEET_EMALFORMED, err, "envelope: unknown field '%.64s'", bad);
        goto done;
    }
    json_t *jp = json_object_get(env, "payload");
    if (!json_is_string(jp)) {
        rc = reject(FLEET_EMALFORMED, err, "envelope: payload missing or not a string");
        goto done;
    }
    const char *ptext = json_string_value(jp);
    size_t plen = json_string_length(jp);
    payload = json_loadb(ptext, plen, JSON_REJECT_DUPLICATES, &je);
    if (payload)
        claim(payload, out);

    json_t *js = json_object_get(env, "sig");
    if (!js || json_is_null(js) || (json_is_string(js) && json_string_length(js) == 0)) {
        rc = reject(FLEET_EUNSIGNED, err, "envelope carries no signature");
        goto done;
    }
    if (!json_is_string(js)) {
        rc = reject(FLEET_EMALFORMED, err, "envelope: sig is not a string");
        goto done;
    }
    if (!(sig = malloc(sizeof *sig))) {
        rc = reject(FLEET_ENOMEM, err, "out of memory");
        goto done;
    }
    char oerr[256];
    if (ota_sig_parse(json_string_value(js), json_string_length(js), "envelope sig", sig,
                      oerr) != OTA_OK) {
        rc = reject(FLEET_EBADSIG, err, "%s", oerr);
        goto done;
    }
    const ota_pubkey *key = NULL;
    bool by_next = false;
    if (memcmp(sig->key_id, keys->current.key_id, OTA_KEY_ID_BYTES) == 0) {
        key = &keys->current;
    } else if (keys->has_next && memcmp(sig->key_id, keys->next.key_id, OTA_KEY_ID_BYTES) == 0) {
        key = &keys->next;
        by_next = true;
    } else {
        char a[17], b[17], c[17] = "";
        ota_key_id_hex(sig->key_id, a);
        ota_key_id_hex(keys->current.key_id, b);
        if (keys->has_next)
            ota_key_id_hex(keys->next.key_id, c);
        rc = reject(FLEET_EBADSIG, err, "signed by key %s, not a fleet key (current %s%s%s)", a,
                    b, keys->has_next ? ", next " : "", c);
        goto done;
    }
    if (ota_verify_buffer(key, ptext, plen, "payload", sig, OTA_VERIFY_PREHASHED_ONLY, oerr) !=
        OTA_OK) {
        rc = reject(FLEET_EBADSIG, err, "%s", oerr);
        goto done;
    }

    /* Verified: from here on the payload is the fleet's word. */
    if (!payload) {
        rc = reject(FLEET_EMALFORMED, err, "payload is not JSON: %.120s (line %d, column %d)",
                    je.text, je.line, je.column);
        goto done;
    }
    const char *target_name = NULL;
    json_t *args = NULL;
    out->seq = 0;
    out->name[0] = '\0';
    claim(payload, out);
    if ((rc = parse_payload(payload, out, &target_name, &args, err)))
        goto done;
    if (!targets_me(out, target_name, me)) {
        rc = reject(FLEET_ETARGET, err, "for %s '%.*s', not this device ('%.*s')%s",
                    target_names[out->target], FLEET_ID_MAX, target_name, FLEET_ID_MAX,
                    me->device_id ? me->device_id : "",
                    out->target == FLEET_TARGET_GROUP ? " nor one of its groups" : "");
        goto done;
    }
    if (now_s >= out->expires_s) {
        rc = reject(FLEET_EEXPIRED, err, "expired at %" PRId64 ", now %" PRId64, out->expires_s,
                    now_s);
        goto done;
    }
    if (out->seq <= last_seq) {
        rc = reject(FLEET_EREPLAY, err, "seq %" PRIu64 " is not above the last accepted %" PRIu64,
                    out->seq, last_seq);
        goto done;
    }
    int kind = -1;
    for (int i = 0; i < FLEET_CMD_COUNT; i++)
        if (strcmp(out->name, cmd_names[i]) == 0)
            kind = i;
    if (kind < 0) {
        rc = reject(FLEET_EUNKNOWN, err, "unknown command '%s'", out->name);
        goto done;
    }
    out->kind = (fleet_cmd_kind)kind;
    if (by_next) {
        /* The signer has moved to the next key: it becomes the only one. */
        out->keys.current = keys->next;
        out->keys.has_next = false;
        memset(&out->keys.next, 0, sizeof out->keys.next);
        out->keys_changed = true;
    }
    if (out->kind == FLEET_CMD_KEY_ROTATE && (rc = rotate(args, out, err)))
        goto done;
    out->args = args ? json_incref(args) : json_object();
    if (!out->args) {
        rc = reject(FLEET_ENOMEM, err, "out of memory");
        goto done;
    }
    rc = FLEET_OK;
done:
    if (rc != FLEET_OK) {
        out->keys = *keys;
        out->keys_changed = false;
    }
    free(sig);
    json_decref(payload);
    json_decref(env);
    return rc;
}

void fleet_cmd_free(fleet_cmd *c)
{
    if (!c)
        return;
    json_decref(c->args);
    c->args = NULL;
}

char *fleet_resp_json(const fleet_cmd *c, int rc, const char *error, json_t *result)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    bool ok = json_object_set_new(o, "seq", c->seq ? json_integer((json_int_t)c->seq)
                                                   : json_null()) == 0 &&
              json_object_set_new(o, "cmd", c->name[0] ? json_string(c->name) : json_null()) == 0 &&
              json_object_set_new(o, "ok", json_boolean(rc == FLEET_OK)) == 0;
    if (ok && rc != FLEET_OK) {
        /* An error that is not UTF-8 (not one of ours) is replaced by its kind. */
        json_t *e = error ? json_string(error) : NULL;
        ok = json_object_set_new(o, "error", e ? e : json_string(fleet_reject_name(rc))) == 0;
    }
    if (ok && result)
        ok = json_object_set(o, "result", result) == 0;
    char *text = ok ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

int fleet_payload_build(fleet_target_kind target, const char *name, uint64_t seq,
                        int64_t expires_s, const char *cmd, json_t *args, char **out,
                        char err[256])
{
    *out = NULL;
    if ((unsigned)target > FLEET_TARGET_GROUP || !name || !cmd || seq < 1 || seq > INT64_MAX)
        return reject(FLEET_EMALFORMED, err, "payload: bad target, name, command or seq");
    json_t *p = json_pack("{s:{s:s},s:I,s:I,s:{s:s}}", "target", target_names[target], name,
                          "seq", (json_int_t)seq, "expires", (json_int_t)expires_s, "body",
                          "cmd", cmd);
    if (!p)
        return reject(FLEET_EMALFORMED, err, "payload: cannot build (name or command not UTF-8?)");
    if (args && json_object_set(json_object_get(p, "body"), "args", args) != 0) {
        json_decref(p);
        return reject(FLEET_ENOMEM, err, "out of memory");
    }
    *out = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    return *out ? FLEET_OK : reject(FLEET_ENOMEM, err, "out of memory");
}

int fleet_cmd_seal(const ota_seckey *sk, const char *payload, size_t len, const char *trusted,
                   char **envelope, char err[256])
{
    *envelope = NULL;
    if (memchr(payload, '\0', len))
        return reject(FLEET_EMALFORMED, err, "payload contains a NUL byte");
    ota_sig *sig = malloc(sizeof *sig);
    if (!sig)
        return reject(FLEET_ENOMEM, err, "out of memory");
    char oerr[256];
    int rc = ota_sign_buffer(sk, payload, len, OTA_SIG_PREHASHED, trusted, NULL, sig, oerr);
    if (rc != OTA_OK) {
        free(sig);
        return reject(rc == OTA_ENOMEM ? FLEET_ENOMEM : FLEET_EMALFORMED, err, "%s", oerr);
    }
    char *sigtext = ota_sig_format(sig);
    free(sig);
    if (!sigtext)
        return reject(FLEET_ENOMEM, err, "out of memory");
    json_t *e = json_pack("{s:s%,s:s}", "payload", payload, len, "sig", sigtext);
    free(sigtext);
    if (!e)
        return reject(FLEET_EMALFORMED, err, "payload is not UTF-8 text");
    *envelope = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    return *envelope ? FLEET_OK : reject(FLEET_ENOMEM, err, "out of memory");
}
