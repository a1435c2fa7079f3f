/*
 * fuzz_minisign.c - libFuzzer target for the minisign parsers
 * (agent/ota_sign.c) and the fleet command envelope (agent/fleet_cmd.c).
 *
 * Every input goes to every parser: as a public key file, a bare base64
 * public key, a secret key file (no password, so no scrypt: a fuzzed key
 * could otherwise ask for 2 GiB of it per run), a signature file, a raw
 * envelope, and as a payload that the harness signs with its own fleet key
 * and wraps, so that the payload checks behind the signature are reached
 * too. Promises checked (a broken one aborts, which libFuzzer reports):
 * a known result code; an error line that is one line of valid UTF-8 under
 * 256 bytes; an accepted signature formats and parses back to the same
 * fields; a signature never verifies against data it was not made for; a
 * payload we signed is never reported unsigned or mis-signed; an accepted
 * command is for us, unexpired, above the last seq, a known name with an
 * object of args; the /resp reply is always JSON.
 *
 * The input buffer belongs to libFuzzer and is not NUL-terminated; the
 * parsers get its length.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_cmd.h"
#include "ota_sign.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_minisign: broken promise: %s (%s:%d)\n", #cond,    \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#define NOW 1700000000
#define LAST_SEQ 3

static ota_pubkey fleet_pk;
static ota_seckey fleet_sk;
static fleet_keys keys;
static const char *const groups[] = {"lab"};
static const fleet_identity me = {"dev-1", groups, 1};

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    FUZZ_CHECK(sodium_init() >= 0);
    uint8_t seed[32];
    memset(seed, 7, sizeof seed);
    crypto_sign_seed_keypair(fleet_pk.pk, fleet_sk.sk, seed);
    memset(fleet_pk.key_id, 0xA5, OTA_KEY_ID_BYTES);
    memcpy(fleet_sk.key_id, fleet_pk.key_id, OTA_KEY_ID_BYTES);
    keys.current = fleet_pk;
    done = true;
}

static void check_err(const char *err)
{
    size_t n = strlen(err);
    FUZZ_CHECK(n > 0 && n < 256);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f);
    json_t *j = json_stringn(err, n);
    FUZZ_CHECK(j != NULL);
    json_decref(j);
}

static bool ota_code(int rc)
{
    return rc <= 0 && rc >= OTA_ECRYPTO;
}

static void fuzz_keys(const char *text, size_t len)
{
    char err[256];
    ota_pubkey pk;
    int rc = ota_pubkey_parse(text, len, "fuzz.pub", &pk, err);
    FUZZ_CHECK(rc == OTA_OK || rc == OTA_EFORMAT);
    if (rc) {
        check_err(err);
    } else {
        char *back = ota_pubkey_format(&pk);
        FUZZ_CHECK(back != NULL);
        ota_pubkey again;
        FUZZ_CHECK(ota_pubkey_parse(back, strlen(back), "back", &again, err) == OTA_OK);
        FUZZ_CHECK(memcmp(&pk, &again, sizeof pk) == 0);
        free(back);
    }

    char *z = malloc(len + 1);
    FUZZ_CHECK(z != NULL);
    memcpy(z, text, len);
    z[len] = '\0';
    rc = ota_pubkey_from_base64(z, "-P", &pk, err);
    FUZZ_CHECK(rc == OTA_OK || rc == OTA_EFORMAT);
    if (rc)
        check_err(err);
    free(z);

    ota_seckey sk;
    rc = ota_seckey_parse(text, len, "fuzz.key", NULL, &sk, err);
    FUZZ_CHECK(rc == OTA_OK || rc == OTA_EFORMAT || rc == OTA_EPASSWORD);
    if (rc) {
        check_err(err);
    } else {
        /* An accepted key signs, and its public half verifies that. */
        ota_sig sig;
        ota_pubkey pub;
        ota_seckey_public(&sk, &pub);
        FUZZ_CHECK(ota_sign_buffer(&sk, "x", 1, OTA_SIG_PREHASHED, "t", NULL, &sig, err) == OTA_OK);
        FUZZ_CHECK(ota_verify_buffer(&pub, "x", 1, "x", &sig, 0, err) == OTA_OK);
    }
}

static void fuzz_sig(const char *text, size_t len)
{
    char err[256];
    ota_sig *sig = malloc(sizeof *sig), *again = malloc(sizeof *again);
    FUZZ_CHECK(sig && again);
    int rc = ota_sig_parse(text, len, "fuzz.minisig", sig, err);
    FUZZ_CHECK(rc == OTA_OK || rc == OTA_EFORMAT);
    if (rc) {
        check_err(err);
        goto done;
    }
    char *back = ota_sig_format(sig);
    FUZZ_CHECK(back != NULL);
    FUZZ_CHECK(ota_sig_parse(back, strlen(back), "back", again, err) == OTA_OK);
    FUZZ_CHECK(again->alg == sig->alg);
    FUZZ_CHECK(memcmp(again->key_id, sig->key_id, OTA_KEY_ID_BYTES) == 0);
    FUZZ_CHECK(memcmp(again->sig, sig->sig, OTA_SIGNATURE_BYTES) == 0);
    FUZZ_CHECK(memcmp(again->global_sig, sig->global_sig, OTA_SIGNATURE_BYTES) == 0);
    FUZZ_CHECK(strcmp(again->trusted_comment, sig->trusted_comment) == 0);
    FUZZ_CHECK(strcmp(again->untrusted_comment, sig->untrusted_comment) == 0);
    free(back);
    /* Nobody forges the harness key. */
    rc = ota_verify_buffer(&fleet_pk, text, len, "data", sig, 0, err);
    FUZZ_CHECK(ota_code(rc) && rc != OTA_OK);
    check_err(err);
done:
    free(sig);
    free(again);
}

static void check_verdict(int rc, const fleet_cmd *c, const char *err, bool we_signed)
{
    FUZZ_CHECK(rc <= 0 && rc >= FLEET_ENOMEM);
    if (we_signed)
        FUZZ_CHECK(rc != FLEET_EUNSIGNED && rc != FLEET_EBADSIG);
    FUZZ_CHECK(strlen(c->name) <= FLEET_CMD_NAME_MAX);
    if (rc == FLEET_OK) {
        FUZZ_CHECK(json_is_object(c->args));
        FUZZ_CHECK(c->seq > LAST_SEQ);
        FUZZ_CHECK(c->expires_s > NOW);
        FUZZ_CHECK((unsigned)c->kind < FLEET_CMD_COUNT);
        FUZZ_CHECK(strcmp(c->name, fleet_cmd_name(c->kind)) == 0);
        FUZZ_CHECK(c->keys_changed == (c->kind == FLEET_CMD_KEY_ROTATE));
        FUZZ_CHECK(memcmp(&c->keys.current, &fleet_pk, sizeof fleet_pk) == 0);
    } else {
        check_err(err);
        FUZZ_CHECK(c->args == NULL);
        FUZZ_CHECK(!c->keys_changed);
        FUZZ_CHECK(memcmp(&c->keys, &keys, sizeof keys) == 0);
    }
    char *resp = fleet_resp_json(c, rc, err, NULL);
    FUZZ_CHECK(resp != NULL);
    json_t *j = json_loads(resp, 0, NULL);
    FUZZ_CHECK(j != NULL);
    FUZZ_CHECK(json_is_boolean(json_object_get(j, "ok")));
    json_decref(j);
    free(resp);
}

static void fuzz_envelope(const char *text, size_t len)
{
    char err[256];
    fleet_cmd c;
    int rc = fleet_cmd_verify(text, len, &me, &keys, NOW, LAST_SEQ, &c, err);
    check_verdict(rc, &c, err, false);
    fleet_cmd_free(&c);

    char *env = NULL;
    rc = fleet_cmd_seal(&fleet_sk, text, len, NULL, &env, err);
    FUZZ_CHECK(rc == FLEET_OK || rc == FLEET_EMALFORMED);
    if (rc != FLEET_OK) {
        check_err(err);
        return;
    }
    size_t elen = strlen(env);
    rc = fleet_cmd_verify(env, elen, &me, &keys, NOW, LAST_SEQ, &c, err);
    FUZZ_CHECK(rc != FLEET_ETOOBIG || elen > FLEET_ENVELOPE_MAX_BYTES);
    FUZZ_CHECK(rc != FLEET_EMALFORMED || strncmp(err, "malformed: payload", 18) == 0);
    check_verdict(rc, &c, err, elen <= FLEET_ENVELOPE_MAX_BYTES);
    fleet_cmd_free(&c);
    free(env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    const char *text = (const char *)data;
    fuzz_keys(text, size);
    fuzz_sig(text, size);
    fuzz_envelope(text, size);
    return 0;
}
