/*
 * test_ota_sign.c - minisign-compatible keys and signatures (agent/ota_sign.c)
 * and signed fleet command envelopes (agent/fleet_cmd.c).
 *
 * Files are real files in a fresh mkdtemp directory, removed afterwards.
 * A few vectors were made by the real minisign 0.11 (`minisign -G -W`,
 * `-S`, `-S -l`) and are pasted here, so that compatibility with its
 * output is checked even where minisign is not installed; the integration
 * test tests/integration/test_ota_sign.sh runs the binary itself both ways.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "fleet_cmd.h"
#include "ota_sign.h"

/* ---- vectors from minisign 0.11 --------------------------------------------- */

/* minisign -G -W -p k.pub -s k.key (note the all-zero checksum minisign
 * writes for an unencrypted key), then `echo hello > f; minisign -S -s k.key
 * -m f` and `minisign -S -l ...`. */
static const char ms_pub[] =
    "untrusted comment: minisign public key 9C2995586DA84AFF\n"
    "RWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPO\n";
static const char ms_key[] =
    "untrusted comment: minisign encrypted secret key\n"
    "RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/0qobViVKZxEiNuQjxM2"
    "Kt2hTLLk1k2zlaYSSpSf1w4xNy8NJ+xuLlg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPOAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
static const char ms_data[] = "hello\n";
static const char ms_sig[] =
    "untrusted comment: signature from minisign secret key\n"
    "RUT/SqhtWJUpnEaYzsTjWwjkCygZvccm2EIdHwNcMs+mWDB7rpiLlQTyJyn9Ur6YvPl/fxeo011QqtqxAull5Wz9jesJ"
    "pjWgfQs=\n"
    "trusted comment: timestamp:1796512991\tfile:f\thashed\n"
    "q2SDwL1fOFWb/G9zeohsBQoO8XH4499DyCm0E6eE9J/PJmTZqxKik4X0Y5r56bhckliBvRMCR3h+RHmXErlrCA==\n";
static const char ms_sig_legacy[] =
    "untrusted comment: signature from minisign secret key\n"
    "RWT/SqhtWJUpnCbkdH0DvLM5z3rk3ihuCT1w53iL2/HPcuSF7wd0jVdxtT6pQsRBcawa9WX4xYu0LicFNTJAOHwiblg7"
    "qnxBdw0=\n"
    "trusted comment: timestamp:1796512991\tfile:f\n"
    "9SCX5I4vH1AEen8FWPeQYzzLcKawltZ75LAJ8Kp/5bEJiKX8bqpOdR0kDnSyOflsJgortfKoidgGgCcgSwuGDA==\n";

/* ---- fixture ------------------------------------------------------------------ */

typedef struct fixture {
    char dir[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/outpost-ota-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static char *path_in(const fixture *f, const char *name)
{
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 256, "%s/%s", f->dir, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static char *read_text(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = malloc(1 << 16);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Replace the first occurrence of from in text (malloc'd result). */
static char *replace(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    assert_non_null(at);
    size_t head = (size_t)(at - text), fl = strlen(from), tl = strlen(to);
    char *out = malloc(strlen(text) - fl + tl + 1);
    assert_non_null(out);
    memcpy(out, text, head);
    memcpy(out + head, to, tl);
    strcpy(out + head + tl, at + fl);
    return out;
}

static void assert_err_has(const char *err, const char *needle)
{
    if (!strstr(err, needle))
        fail_msg("error line '%s' does not mention '%s'", err, needle);
    assert_null(strchr(err, '\n'));
}

/* ---- keys ------------------------------------------------------------------------ */

static void keygen_files_load_back_equal(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk, pk2, pk3;
    ota_seckey sk, sk2;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    assert_int_equal(ota_pubkey_save(path_in(f, "k.pub"), &pk, false, err), OTA_OK);
    assert_int_equal(ota_seckey_save(path_in(f, "k.key"), &sk, NULL, NULL, false, err), OTA_OK);
    assert_int_equal(ota_pubkey_load(path_in(f, "k.pub"), &pk2, err), OTA_OK);
    assert_int_equal(ota_seckey_load(path_in(f, "k.key"), NULL, &sk2, err), OTA_OK);
    assert_memory_equal(&pk, &pk2, sizeof pk);
    assert_memory_equal(&sk, &sk2, sizeof sk);

    struct stat st;
    assert_int_equal(stat(path_in(f, "k.key"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* The public key file is minisign's: comment names the key id. */
    char id[17], b64[OTA_PUBKEY_BASE64_LEN + 1];
    ota_key_id_hex(pk.key_id, id);
    ota_pubkey_base64(&pk, b64);
    assert_int_equal(strlen(b64), OTA_PUBKEY_BASE64_LEN);
    char *text = read_text(path_in(f, "k.pub"), NULL);
    char want[256];
    snprintf(want, sizeof want, "untrusted comment: minisign public key %s\n%s\n", id, b64);
    assert_string_equal(text, want);
    free(text);
    assert_int_equal(ota_pubkey_from_base64(b64, "-P", &pk3, err), OTA_OK);
    assert_memory_equal(&pk, &pk3, sizeof pk);

    ota_pubkey derived;
    ota_seckey_public(&sk, &derived);
    assert_memory_equal(&pk, &derived, sizeof pk);
}

static void key_id_prints_as_minisign_does(void **state)
{
    (void)state;
    char err[256], id[17];
    ota_pubkey pk;
    assert_int_equal(ota_pubkey_parse(ms_pub, strlen(ms_pub), "k.pub", &pk, err), OTA_OK);
    ota_key_id_hex(pk.key_id, id);
    assert_string_equal(id, "9C2995586DA84AFF");
}

static void save_keeps_existing_file_without_overwrite(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    write_bytes(path_in(f, "k.pub"), "keep me\n", 8);
    assert_int_equal(ota_pubkey_save(path_in(f, "k.pub"), &pk, false, err), OTA_EIO);
    assert_err_has(err, "already exists");
    char *text = read_text(path_in(f, "k.pub"), NULL);
    assert_string_equal(text, "keep me\n");
    free(text);
    assert_int_equal(ota_pubkey_save(path_in(f, "k.pub"), &pk, true, err), OTA_OK);
    ota_pubkey back;
    assert_int_equal(ota_pubkey_load(path_in(f, "k.pub"), &back, err), OTA_OK);
    assert_memory_equal(&pk, &back, sizeof pk);
}

static void minisign_unencrypted_key_with_zero_checksum_signs(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    ota_sig sig;
    assert_int_equal(ota_pubkey_parse(ms_pub, strlen(ms_pub), "k.pub", &pk, err), OTA_OK);
    assert_int_equal(ota_seckey_parse(ms_key, strlen(ms_key), "k.key", NULL, &sk, err), OTA_OK);
    assert_memory_equal(sk.key_id, pk.key_id, OTA_KEY_ID_BYTES);
    write_bytes(path_in(f, "f"), ms_data, strlen(ms_data));
    assert_int_equal(ota_sign_file(&sk, path_in(f, "f"), OTA_SIG_PREHASHED, NULL, NULL, &sig, err),
                     OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &sig, 0, err), OTA_OK);
    /* Ed25519 is deterministic: our signature of minisign's data with
     * minisign's key is minisign's signature. */
    ota_sig theirs;
    assert_int_equal(ota_sig_parse(ms_sig, strlen(ms_sig), "f.minisig", &theirs, err), OTA_OK);
    assert_memory_equal(sig.sig, theirs.sig, OTA_SIGNATURE_BYTES);
}

static void seckey_rejects_corrupt_keys(void **state)
{
    (void)state;
    char err[256];
    ota_seckey sk;
    /* A key whose checksum is real but wrong. */
    ota_pubkey pk;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    char *text;
    assert_int_equal(ota_seckey_format(&sk, NULL, NULL, &text, err), OTA_OK);
    uint8_t blob[158];
    size_t got;
    const char *b64 = strchr(text, '\n') + 1;
    assert_int_equal(sodium_base642bin(blob, sizeof blob, b64, strcspn(b64, "\n"), NULL, &got,
                                       NULL, sodium_base64_VARIANT_ORIGINAL), 0);
    assert_int_equal(got, 158);

    char line[512];
    uint8_t bad[158];
    struct {
        size_t off;
        uint8_t val;
        const char *needle;
    } cases[] = {
        {157, 0, "checksum mismatch"},          /* last checksum byte */
        {0, 'X', "unknown signature algorithm"},
        {2, 'Z', "unknown kdf algorithm"},
        {4, 'Q', "unknown checksum algorithm"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(bad, blob, sizeof bad);
        bad[cases[i].off] = (uint8_t)(cases[i].val ? cases[i].val : bad[cases[i].off] ^ 1);
        char enc[256];
        sodium_bin2base64(enc, sizeof enc, bad, sizeof bad, sodium_base64_VARIANT_ORIGINAL);
        snprintf(line, sizeof line, "untrusted comment: x\n%s\n", enc);
        assert_int_equal(ota_seckey_parse(line, strlen(line), "bad.key", NULL, &sk, err),
                         OTA_EFORMAT);
        assert_err_has(err, "bad.key");
        assert_err_has(err, cases[i].needle);
    }
    /* Zero checksum (as minisign -W writes) but a damaged secret: the
     * public half no longer matches the seed. */
    memcpy(bad, blob, sizeof bad);
    memset(bad + 158 - 32, 0, 32);
    bad[54 + 8 + 3] ^= 0x40;
    char enc[256];
    sodium_bin2base64(enc, sizeof enc, bad, sizeof bad, sodium_base64_VARIANT_ORIGINAL);
    snprintf(line, sizeof line, "untrusted comment: x\n%s\n", enc);
    assert_int_equal(ota_seckey_parse(line, strlen(line), "bad.key", NULL, &sk, err), OTA_EFORMAT);
    assert_err_has(err, "does not match");
    /* Truncated and garbage files. */
    assert_int_equal(ota_seckey_parse(text, 60, "cut.key", NULL, &sk, err), OTA_EFORMAT);
    assert_err_has(err, "cut.key");
    assert_int_equal(ota_seckey_parse("garbage", 7, "junk.key", NULL, &sk, err), OTA_EFORMAT);
    assert_err_has(err, "junk.key: minisign secret key file ends before line 2 (secret key)");
    assert_int_equal(ota_seckey_parse("garbage\nmore\n", 13, "junk.key", NULL, &sk, err),
                     OTA_EFORMAT);
    assert_err_has(err, "junk.key: line 1: expected 'untrusted comment: ");
    free(text);
}

static void encrypted_seckey_needs_its_password(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk, back;
    /* libsodium's "interactive" scrypt limits: fast enough for a unit test;
     * minisign's own (1 GiB) are exercised by the integration test. */
    ota_kdf_limits cheap = {crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_INTERACTIVE,
                            crypto_pwhash_scryptsalsa208sha256_MEMLIMIT_INTERACTIVE};
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    assert_int_equal(ota_seckey_save(path_in(f, "e.key"), &sk, "s3cret", &cheap, false, err),
                     OTA_OK);
    char *text = read_text(path_in(f, "e.key"), NULL);
    assert_non_null(strstr(text, "untrusted comment: minisign encrypted secret key\nRWRTY"));
    free(text);
    assert_int_equal(ota_seckey_load(path_in(f, "e.key"), "s3cret", &back, err), OTA_OK);
    assert_memory_equal(&sk, &back, sizeof sk);
    assert_int_equal(ota_seckey_load(path_in(f, "e.key"), "wrong", &back, err), OTA_EPASSWORD);
    assert_err_has(err, "wrong password");
    assert_int_equal(ota_seckey_load(path_in(f, "e.key"), NULL, &back, err), OTA_EPASSWORD);
    assert_err_has(err, "encrypted");

    /* A key file asking scrypt for more than the cap is refused before
     * any work is done. */
    ota_kdf_limits huge = {cheap.opslimit, OTA_KDF_MEMLIMIT_MAX * 2};
    assert_int_equal(ota_seckey_save(path_in(f, "h.key"), &sk, "pw", &huge, false, err),
                     OTA_EINVAL);
    text = read_text(path_in(f, "e.key"), NULL);
    const char *b64 = strchr(text, '\n') + 1;
    uint8_t blob[158];
    size_t got;
    assert_int_equal(sodium_base642bin(blob, sizeof blob, b64, strcspn(b64, "\n"), NULL, &got,
                                       NULL, sodium_base64_VARIANT_ORIGINAL), 0);
    blob[46 + 5] = 0x10; /* memlimit (LE at offset 46) += 2^44 */
    char enc[256], line[512];
    sodium_bin2base64(enc, sizeof enc, blob, sizeof blob, sodium_base64_VARIANT_ORIGINAL);
    snprintf(line, sizeof line, "untrusted comment: x\n%s\n", enc);
    assert_int_equal(ota_seckey_parse(line, strlen(line), "big.key", "s3cret", &back, err),
                     OTA_EFORMAT);
    assert_err_has(err, "scrypt limits too large");
    free(text);
}

typedef struct bad_text {
    const char *text;
    const char *needle;
} bad_text;

static void pubkey_rejects_malformed_files(void **state)
{
    (void)state;
    static const bad_text cases[] = {
        {"", "ends before line 1"},
        {"untrusted comment: minisign public key 9C2995586DA84AFF\n", "ends before line 2 (public key)"},
        {"comment: x\nRWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPO\n",
         "line 1: expected 'untrusted comment: "},
        {"untrusted comment: x\nRWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSA*O\n",
         "bad base64: '*' at column 55"},
        {"untrusted comment: x\nRWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6\n",
         "line 2 (public key): wrong length: decodes to 33 bytes, expected 42"},
        {"untrusted comment: x\nRWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAP\n",
         "wrong length: 55 base64 characters, expected 56 (42 bytes)"},
        {"untrusted comment: x\nRW==SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPO\n",
         "bad padding"},
        {"untrusted comment: x\nRUT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPO\n",
         "unknown signature algorithm 'ED'"},
        {"untrusted comment: x\n\n", "line 2 (public key): empty"},
        {"untrusted comment: x\nRWT/SqhtWJUpnFg1quChCwZsjy2QJqeP9JlhY6qTy7x6eYBeyE+LSAPO\nmore\n",
         "text after line 2"},
    };
    char err[256];
    ota_pubkey pk;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = ota_pubkey_parse(cases[i].text, strlen(cases[i].text), "k.pub", &pk, err);
        if (rc != OTA_EFORMAT)
            fail_msg("case %zu: rc %d, err '%s'", i, rc, err);
        assert_err_has(err, "k.pub");
        assert_err_has(err, cases[i].needle);
    }
    /* A NUL byte, and CRLF line ends (accepted: a file edited on Windows). */
    static const char nul[] = "untrusted comment: x\0y\nRWT/\n";
    assert_int_equal(ota_pubkey_parse(nul, sizeof nul - 1, "k.pub", &pk, err), OTA_EFORMAT);
    assert_err_has(err, "NUL byte at offset 20");
    char *crlf = replace(ms_pub, "AFF\n", "AFF\r\n");
    assert_int_equal(ota_pubkey_parse(crlf, strlen(crlf), "k.pub", &pk, err), OTA_OK);
    free(crlf);
    assert_int_equal(ota_pubkey_from_base64("RWT/Sqht", "-P", &pk, err), OTA_EFORMAT);
    assert_err_has(err, "-P: public key: wrong length: decodes to 6 bytes, expected 42");
    assert_int_equal(ota_pubkey_load("/nonexistent/k.pub", &pk, err), OTA_EIO);
    assert_err_has(err, "/nonexistent/k.pub: cannot open");
}

static void sig_rejects_malformed_files(void **state)
{
    (void)state;
    char err[256];
    ota_sig sig;
    char *three = strdup(ms_sig);
    assert_non_null(three);
    *strstr(three, "q2SD") = '\0';
    char *bad_alg = replace(ms_sig, "RUT/", "RXT/");
    char *no_tc = replace(ms_sig, "\ntrusted comment: ", "\ntrusted: ");
    char *short_global = replace(ms_sig, "ErlrCA==\n", "\n");
    char *bad_b64 = replace(ms_sig, "RUT/Sqht", "RUT/Sq#t");
    char *cut_sig = replace(ms_sig, "jesJpjWgfQs=\n", "jesJ\n");
    char *big_tc = malloc(OTA_TRUSTED_MAX + 400);
    assert_non_null(big_tc);
    snprintf(big_tc, 200, "untrusted comment: x\n%.*s\ntrusted comment: ",
             (int)strcspn(strchr(ms_sig, '\n') + 1, "\n"), strchr(ms_sig, '\n') + 1);
    size_t n = strlen(big_tc);
    memset(big_tc + n, 'a', OTA_TRUSTED_MAX + 1);
    strcpy(big_tc + n + OTA_TRUSTED_MAX + 1, "\nq2SD\n");
    const bad_text cases[] = {
        {three, "ends before line 4 (global signature)"},
        {bad_alg, "line 2 (signature): unknown signature algorithm 'Et'"},
        {no_tc, "line 3: expected 'trusted comment: "},
        {short_global, "line 4 (global signature): wrong length"},
        {bad_b64, "line 2 (signature): bad base64: '#' at column 7"},
        {cut_sig, "line 2 (signature): wrong length: decodes to 69 bytes, expected 74"},
        {big_tc, "line 3: comment is 8193 bytes, more than 8192"},
        {"untrusted comment: x", "ends before line 2 (signature)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = ota_sig_parse(cases[i].text, strlen(cases[i].text), "f.minisig", &sig, err);
        if (rc != OTA_EFORMAT)
            fail_msg("case %zu: rc %d, err '%s'", i, rc, err);
        assert_err_has(err, "f.minisig: ");
        assert_err_has(err, cases[i].needle);
    }
    free(three);
    free(bad_alg);
    free(no_tc);
    free(short_global);
    free(bad_b64);
    free(cut_sig);
    free(big_tc);
}

/* ---- signing and verifying ------------------------------------------------------ */

static void verifies_minisign_signatures(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_sig sig, legacy;
    write_bytes(path_in(f, "f"), ms_data, strlen(ms_data));
    assert_int_equal(ota_pubkey_parse(ms_pub, strlen(ms_pub), "k.pub", &pk, err), OTA_OK);
    assert_int_equal(ota_sig_parse(ms_sig, strlen(ms_sig), "f.minisig", &sig, err), OTA_OK);
    assert_int_equal(sig.alg, OTA_SIG_PREHASHED);
    assert_string_equal(sig.trusted_comment, "timestamp:1796512991\tfile:f\thashed");
    assert_string_equal(sig.untrusted_comment, "signature from minisign secret key");
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &sig, 0, err), OTA_OK);
    assert_int_equal(ota_verify_buffer(&pk, ms_data, strlen(ms_data), "buf", &sig, 0, err),
                     OTA_OK);
    assert_int_equal(ota_sig_parse(ms_sig_legacy, strlen(ms_sig_legacy), "f.legacy", &legacy, err),
                     OTA_OK);
    assert_int_equal(legacy.alg, OTA_SIG_LEGACY);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &legacy, 0, err), OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &legacy, OTA_VERIFY_PREHASHED_ONLY, err),
                     OTA_ELEGACY);
    assert_err_has(err, "legacy (Ed) signature refused");
    /* Our formatter writes minisign's file back byte for byte. */
    char *text = ota_sig_format(&sig);
    assert_string_equal(text, ms_sig);
    free(text);
    text = ota_pubkey_format(&pk);
    assert_string_equal(text, ms_pub);
    free(text);
}

static void sign_file_round_trip_streams_large_files(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    /* Three hash chunks and a bit: the streamed hash must equal the
     * one-shot hash, which Ed25519's determinism lets us compare. */
    size_t len = 3 * 256 * 1024 + 17;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 131 + (i >> 9));
    write_bytes(path_in(f, "big.bin"), data, len);
    ota_sig from_file, from_buf, loaded;
    assert_int_equal(ota_sign_file(&sk, path_in(f, "big.bin"), OTA_SIG_PREHASHED, "t", NULL,
                                   &from_file, err), OTA_OK);
    assert_int_equal(ota_sign_buffer(&sk, data, len, OTA_SIG_PREHASHED, "t", NULL, &from_buf, err),
                     OTA_OK);
    assert_memory_equal(from_file.sig, from_buf.sig, OTA_SIGNATURE_BYTES);
    assert_memory_equal(from_file.global_sig, from_buf.global_sig, OTA_SIGNATURE_BYTES);
    assert_int_equal(ota_sig_save(path_in(f, "big.bin.minisig"), &from_file, err), OTA_OK);
    assert_int_equal(ota_sig_load(path_in(f, "big.bin.minisig"), &loaded, err), OTA_OK);
    assert_int_equal(loaded.alg, from_file.alg);
    assert_memory_equal(loaded.key_id, from_file.key_id, OTA_KEY_ID_BYTES);
    assert_memory_equal(loaded.sig, from_file.sig, OTA_SIGNATURE_BYTES);
    assert_memory_equal(loaded.global_sig, from_file.global_sig, OTA_SIGNATURE_BYTES);
    assert_string_equal(loaded.trusted_comment, "t");
    assert_string_equal(loaded.untrusted_comment, from_file.untrusted_comment);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "big.bin"), &loaded, 0, err), OTA_OK);

    /* Default trusted comment: minisign's shape. */
    ota_sig dflt;
    assert_int_equal(ota_sign_file(&sk, path_in(f, "big.bin"), OTA_SIG_PREHASHED, NULL, NULL,
                                   &dflt, err), OTA_OK);
    assert_non_null(strstr(dflt.trusted_comment, "\tfile:big.bin\thashed"));
    assert_int_equal(strncmp(dflt.trusted_comment, "timestamp:", 10), 0);
    assert_string_equal(dflt.untrusted_comment, "signature from outpost secret key");

    /* Legacy signing maps the file and verifies the same way. */
    ota_sig leg;
    assert_int_equal(ota_sign_file(&sk, path_in(f, "big.bin"), OTA_SIG_LEGACY, NULL, NULL, &leg,
                                   err), OTA_OK);
    assert_int_equal(leg.alg, OTA_SIG_LEGACY);
    assert_null(strstr(leg.trusted_comment, "hashed"));
    assert_int_equal(ota_verify_file(&pk, path_in(f, "big.bin"), &leg, 0, err), OTA_OK);
    assert_int_equal(ota_verify_buffer(&pk, data, len, "buf", &leg, 0, err), OTA_OK);

    /* An empty file signs and verifies in both formats. */
    write_bytes(path_in(f, "empty"), "", 0);
    assert_int_equal(ota_sign_file(&sk, path_in(f, "empty"), OTA_SIG_LEGACY, "e", NULL, &leg, err),
                     OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "empty"), &leg, 0, err), OTA_OK);
    assert_int_equal(ota_sign_file(&sk, path_in(f, "empty"), OTA_SIG_PREHASHED, "e", NULL, &leg,
                                   err), OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "empty"), &leg, 0, err), OTA_OK);
    free(data);
}

static void verify_rejects_tampered_file(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    ota_sig sig;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    write_bytes(path_in(f, "m.bin"), "model weights v1", 16);
    for (int alg = 0; alg < 2; alg++) {
        assert_int_equal(ota_sign_file(&sk, path_in(f, "m.bin"), (ota_sig_alg)alg, NULL, NULL,
                                       &sig, err), OTA_OK);
        write_bytes(path_in(f, "m2.bin"), "model weights v2", 16);
        assert_int_equal(ota_verify_file(&pk, path_in(f, "m2.bin"), &sig, 0, err), OTA_EBADSIG);
        assert_err_has(err, "m2.bin: signature verification failed");
        assert_int_equal(ota_verify_buffer(&pk, "model weights v1 ", 17, "blob", &sig, 0, err),
                         OTA_EBADSIG);
        assert_err_has(err, "blob: ");
    }
    assert_int_equal(ota_verify_file(&pk, path_in(f, "absent"), &sig, 0, err), OTA_EIO);
    assert_err_has(err, "cannot open");
}

static void verify_rejects_tampered_trusted_comment(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk;
    ota_sig sig;
    write_bytes(path_in(f, "f"), ms_data, strlen(ms_data));
    assert_int_equal(ota_pubkey_parse(ms_pub, strlen(ms_pub), "k.pub", &pk, err), OTA_OK);
    char *tampered = replace(ms_sig, "file:f", "file:g");
    assert_int_equal(ota_sig_parse(tampered, strlen(tampered), "f.minisig", &sig, err), OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &sig, 0, err), OTA_ETRUSTED);
    assert_err_has(err, "trusted comment does not match its global signature");
    free(tampered);
    /* The untrusted comment is what its name says: changing it is fine. */
    char *relabelled = replace(ms_sig, "signature from minisign", "anything at all");
    assert_int_equal(ota_sig_parse(relabelled, strlen(relabelled), "f.minisig", &sig, err), OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &sig, 0, err), OTA_OK);
    free(relabelled);
}

static void verify_rejects_wrong_key(void **state)
{
    fixture *f = *state;
    char err[256];
    ota_pubkey pk, other;
    ota_seckey sk, other_sk;
    ota_sig sig;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    assert_int_equal(ota_keygen(&other, &other_sk, err), OTA_OK);
    write_bytes(path_in(f, "f"), "data", 4);
    assert_int_equal(ota_sign_file(&sk, path_in(f, "f"), OTA_SIG_PREHASHED, NULL, NULL, &sig, err),
                     OTA_OK);
    assert_int_equal(ota_verify_file(&other, path_in(f, "f"), &sig, 0, err), OTA_EKEYID);
    char a[17], b[17];
    ota_key_id_hex(sig.key_id, a);
    ota_key_id_hex(other.key_id, b);
    assert_err_has(err, a);
    assert_err_has(err, b);
    /* Another key claiming this key's id gets no further than the maths. */
    memcpy(other_sk.key_id, sk.key_id, OTA_KEY_ID_BYTES);
    assert_int_equal(ota_sign_file(&other_sk, path_in(f, "f"), OTA_SIG_PREHASHED, NULL, NULL, &sig,
                                   err), OTA_OK);
    assert_int_equal(ota_verify_file(&pk, path_in(f, "f"), &sig, 0, err), OTA_EBADSIG);
}

static void sign_refuses_multiline_comments(void **state)
{
    (void)state;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    ota_sig sig;
    assert_int_equal(ota_keygen(&pk, &sk, err), OTA_OK);
    assert_int_equal(ota_sign_buffer(&sk, "x", 1, OTA_SIG_PREHASHED, "a\nb", NULL, &sig, err),
                     OTA_EINVAL);
    assert_err_has(err, "trusted comment: must be one line");
    assert_int_equal(ota_sign_buffer(&sk, "x", 1, OTA_SIG_PREHASHED, NULL, "a\rb", &sig, err),
                     OTA_EINVAL);
    assert_err_has(err, "untrusted comment");
}

/* ---- fleet envelopes ---------------------------------------------------------------- */

typedef struct fleet_fx {
    ota_pubkey a_pk, b_pk, c_pk;
    ota_seckey a_sk, b_sk, c_sk;
    fleet_keys keys; /* current A, no next */
} fleet_fx;

static const char *const my_groups[] = {"lab", "eu"};
static const fleet_identity me = {"dev-1", my_groups, 2};
#define NOW 1700000000

static int fleet_setup(void **state)
{
    fleet_fx *f = calloc(1, sizeof *f);
    char err[256];
    if (!f || ota_keygen(&f->a_pk, &f->a_sk, err) || ota_keygen(&f->b_pk, &f->b_sk, err) ||
        ota_keygen(&f->c_pk, &f->c_sk, err)) {
        free(f);
        return -1;
    }
    f->keys.current = f->a_pk;
    *state = f;
    return 0;
}

static int fleet_teardown(void **state)
{
    free(*state);
    return 0;
}

/* A sealed envelope; args is JSON text or NULL. */
static char *envelope(const ota_seckey *sk, fleet_target_kind t, const char *name, uint64_t seq,
                      int64_t expires, const char *cmd, const char *args)
{
    char err[256], *payload, *env;
    json_t *a = args ? json_loads(args, 0, NULL) : NULL;
    if (args)
        assert_non_null(a);
    assert_int_equal(fleet_payload_build(t, name, seq, expires, cmd, a, &payload, err), FLEET_OK);
    json_decref(a);
    assert_int_equal(fleet_cmd_seal(sk, payload, strlen(payload), NULL, &env, err), FLEET_OK);
    free(payload);
    return env;
}

static char *seal_raw(const ota_seckey *sk, const char *payload)
{
    char err[256], *env;
    assert_int_equal(fleet_cmd_seal(sk, payload, strlen(payload), NULL, &env, err), FLEET_OK);
    return env;
}

static int verify_env(const char *env, const fleet_keys *keys, uint64_t last, fleet_cmd *out,
                 char err[256])
{
    return fleet_cmd_verify(env, strlen(env), &me, keys, NOW, last, out, err);
}

static void fleet_accepts_signed_ping(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    char *env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 42, NOW + 60, "ping",
                         "{\"note\": \"caf\\u00e9 \\\"quoted\\\"\\n\"}");
    assert_int_equal(verify_env(env, &f->keys, 41, &c, err), FLEET_OK);
    assert_int_equal(c.kind, FLEET_CMD_PING);
    assert_string_equal(c.name, "ping");
    assert_int_equal(c.seq, 42);
    assert_int_equal(c.expires_s, NOW + 60);
    assert_int_equal(c.target, FLEET_TARGET_DEVICE);
    assert_false(c.keys_changed);
    assert_memory_equal(&c.keys, &f->keys, sizeof c.keys);
    assert_string_equal(json_string_value(json_object_get(c.args, "note")),
                        "caf\xc3\xa9 \"quoted\"\n");
    char *resp = fleet_resp_json(&c, FLEET_OK, NULL, json_object_get(c.args, "note"));
    assert_string_equal(resp, "{\"seq\":42,\"cmd\":\"ping\",\"ok\":true,"
                              "\"result\":\"caf\xc3\xa9 \\\"quoted\\\"\\n\"}");
    free(resp);
    fleet_cmd_free(&c);
    free(env);
    /* args may be left out: an empty object comes back. */
    env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 43, NOW + 60, "telemetry.flush", NULL);
    assert_int_equal(verify_env(env, &f->keys, 42, &c, err), FLEET_OK);
    assert_int_equal(c.kind, FLEET_CMD_TELEMETRY_FLUSH);
    assert_true(json_is_object(c.args) && json_object_size(c.args) == 0);
    fleet_cmd_free(&c);
    free(env);
}

static void fleet_accepts_group_target(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    char *env = envelope(&f->a_sk, FLEET_TARGET_GROUP, "eu", 7, NOW + 1, "policy.set",
                         "{\"source\": \"function route() end\"}");
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_OK);
    assert_int_equal(c.kind, FLEET_CMD_POLICY_SET);
    assert_int_equal(c.target, FLEET_TARGET_GROUP);
    assert_int_equal(c.seq, 7);
    fleet_cmd_free(&c);
    free(env);
}

static void fleet_rejects_unsigned(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    const char *payload = "{\\\"target\\\":{\\\"device\\\":\\\"dev-1\\\"},\\\"seq\\\":9,"
                          "\\\"expires\\\":1800000000,\\\"body\\\":{\\\"cmd\\\":\\\"ping\\\"}}";
    const char *forms[] = {"{\"payload\": \"%s\"}", "{\"payload\": \"%s\", \"sig\": \"\"}",
                           "{\"payload\": \"%s\", \"sig\": null}"};
    for (size_t i = 0; i < 3; i++) {
        char env[512];
        snprintf(env, sizeof env, forms[i], payload);
        assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EUNSIGNED);
        assert_err_has(err, "unsigned: ");
        /* The claim is echoed for the reply, unverified. */
        assert_int_equal(c.seq, 9);
        assert_string_equal(c.name, "ping");
        assert_null(c.args);
        char *resp = fleet_resp_json(&c, FLEET_EUNSIGNED, err, NULL);
        json_t *r = json_loads(resp, 0, NULL);
        assert_non_null(r);
        assert_int_equal(json_integer_value(json_object_get(r, "seq")), 9);
        assert_string_equal(json_string_value(json_object_get(r, "cmd")), "ping");
        assert_true(json_is_false(json_object_get(r, "ok")));
        assert_string_equal(json_string_value(json_object_get(r, "error")), err);
        json_decref(r);
        free(resp);
        fleet_cmd_free(&c);
    }
}

static void fleet_rejects_mis_signed(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    /* By a key the device does not know. */
    char *env = envelope(&f->c_sk, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EBADSIG);
    assert_err_has(err, "bad_signature: signed by key");
    assert_err_has(err, "not a fleet key");
    free(env);
    /* Payload changed after signing (seq 5 -> 6). */
    env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "ping", NULL);
    char *changed = replace(env, "\\\"seq\\\":5", "\\\"seq\\\":6");
    assert_int_equal(verify_env(changed, &f->keys, 0, &c, err), FLEET_EBADSIG);
    assert_err_has(err, "does not match the signature");
    assert_int_equal(c.seq, 6); /* what it claimed */
    free(changed);
    /* A stranger's key claiming the fleet key's id. */
    ota_seckey forger = f->c_sk;
    memcpy(forger.key_id, f->a_sk.key_id, OTA_KEY_ID_BYTES);
    free(env);
    env = envelope(&forger, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EBADSIG);
    free(env);
    /* A signature that is not a minisign signature. */
    env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "ping", NULL);
    char *garbled = replace(env, "\\ntrusted comment: ", "\\ntrusted remark: ");
    assert_int_equal(verify_env(garbled, &f->keys, 0, &c, err), FLEET_EBADSIG);
    assert_err_has(err, "envelope sig: line 3");
    free(garbled);
    free(env);
    /* A legacy (whole-data) signature: refused for envelopes. */
    const char *payload = "{\"target\":{\"device\":\"dev-1\"},\"seq\":5,\"expires\":1800000000,"
                          "\"body\":{\"cmd\":\"ping\"}}";
    ota_sig sig;
    assert_int_equal(ota_sign_buffer(&f->a_sk, payload, strlen(payload), OTA_SIG_LEGACY, "t",
                                     NULL, &sig, err), OTA_OK);
    char *sigtext = ota_sig_format(&sig);
    json_t *e = json_pack("{s:s,s:s}", "payload", payload, "sig", sigtext);
    char *legacy = json_dumps(e, 0);
    assert_int_equal(verify_env(legacy, &f->keys, 0, &c, err), FLEET_EBADSIG);
    assert_err_has(err, "legacy");
    free(legacy);
    json_decref(e);
    free(sigtext);
}

static void fleet_rejects_expired(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    int64_t when[] = {NOW, NOW - 1, 0};
    for (size_t i = 0; i < 3; i++) {
        char *env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 5, when[i], "ping", NULL);
        assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EEXPIRED);
        assert_err_has(err, "expired: expired at");
        free(env);
    }
}

static void fleet_rejects_replayed(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    char *env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 10, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 10, &c, err), FLEET_EREPLAY);
    assert_err_has(err, "replayed: seq 10 is not above the last accepted 10");
    assert_int_equal(verify_env(env, &f->keys, 11, &c, err), FLEET_EREPLAY);
    /* The first delivery is accepted, and what it returns, fed back, makes
     * the same envelope a replay. */
    assert_int_equal(verify_env(env, &f->keys, 9, &c, err), FLEET_OK);
    uint64_t last = c.seq;
    fleet_cmd_free(&c);
    assert_int_equal(verify_env(env, &f->keys, last, &c, err), FLEET_EREPLAY);
    free(env);
}

static void fleet_rejects_mis_targeted(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    char *env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-2", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_ETARGET);
    assert_err_has(err, "wrong_target: for device 'dev-2'");
    free(env);
    env = envelope(&f->a_sk, FLEET_TARGET_GROUP, "us", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_ETARGET);
    assert_err_has(err, "for group 'us'");
    free(env);
    /* A group named like the device is not the device. */
    env = envelope(&f->a_sk, FLEET_TARGET_GROUP, "dev-1", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_ETARGET);
    free(env);
}

static void fleet_rejects_malformed(void **state)
{
    fleet_fx *f = *state;
    char err[256];
    fleet_cmd c;
    const char *outer[] = {
        "not json", "[1,2]", "{\"payload\": 5, \"sig\": \"x\"}",
        "{\"payload\": \"{}\", \"sig\": \"x\", \"extra\": 1}",
        "{\"payload\": \"{}\", \"payload\": \"{}\", \"sig\": \"x\"}",
        "{\"payload\": \"{}\", \"sig\": 7}",
        "{\"payload\": \"{}\", \"sig\": \"x\", \"line\\nbreak\": 1}",
    };
    for (size_t i = 0; i < sizeof outer / sizeof outer[0]; i++) {
        int rc = verify_env(outer[i], &f->keys, 0, &c, err);
        if (rc != FLEET_EMALFORMED)
            fail_msg("outer case %zu: rc %d, err '%s'", i, rc, err);
        assert_err_has(err, "malformed: ");
    }
    /* A quoted field name cannot break the one-line error. */
    assert_err_has(err, "unknown field 'line?break'");
    /* Nor can bytes that are not UTF-8 make the reply's error line invalid
     * (found by fuzz_minisign: jansson quotes the first byte of a
     * character after a bad escape). */
    static const char bad_utf8[] = "{\"payload\": \"\\\xe6\x9b\x9a\", \"sig\": \"x\"}";
    assert_int_equal(verify_env(bad_utf8, &f->keys, 0, &c, err), FLEET_EMALFORMED);
    json_t *as_json = json_string(err);
    assert_non_null(as_json);
    json_decref(as_json);
    char *reply = fleet_resp_json(&c, FLEET_EMALFORMED, err, NULL);
    assert_non_null(reply);
    free(reply);
    /* Signed, but not the documented payload. */
    const char *inner[] = {
        "not json at all",
        "[]",
        "{\"target\":{\"device\":\"dev-1\"},\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":\"5\",\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":5.0,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":0,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"dev-1\",\"group\":\"eu\"},\"seq\":5,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":\"dev-1\",\"seq\":5,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"\"},\"seq\":5,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":5,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\",\"args\":[]}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":5,\"expires\":1800000000,\"body\":{}}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":5,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"},\"not_before\":1}",
        "{\"target\":{\"device\":\"dev-1\"},\"seq\":5,\"seq\":6,\"expires\":1800000000,\"body\":{\"cmd\":\"ping\"}}",
    };
    for (size_t i = 0; i < sizeof inner / sizeof inner[0]; i++) {
        char *env = seal_raw(&f->a_sk, inner[i]);
        int rc = verify_env(env, &f->keys, 0, &c, err);
        if (rc != FLEET_EMALFORMED)
            fail_msg("inner case %zu: rc %d, err '%s'", i, rc, err);
        assert_err_has(err, "malformed: payload");
        assert_null(c.args);
        free(env);
    }
    /* Too large to look at. */
    size_t big = FLEET_ENVELOPE_MAX_BYTES + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    assert_int_equal(fleet_cmd_verify(huge, big, &me, &f->keys, NOW, 0, &c, err), FLEET_ETOOBIG);
    free(huge);
    /* Signed and well-formed, but no such command. */
    char *env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "reboot", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EUNKNOWN);
    assert_err_has(err, "unknown_command: unknown command 'reboot'");
    assert_string_equal(c.name, "reboot");
    free(env);
}

static void fleet_rotates_keys(void **state)
{
    fleet_fx *f = *state;
    char err[256], b_b64[OTA_PUBKEY_BASE64_LEN + 1], args[128];
    fleet_cmd c;
    ota_pubkey_base64(&f->b_pk, b_b64);
    snprintf(args, sizeof args, "{\"next_key\": \"%s\"}", b_b64);

    /* Before rotation, B's signature means nothing. */
    char *env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 1, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EBADSIG);
    free(env);
    /* key.rotate signed by the next key itself is refused too. */
    env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 1, NOW + 60, "key.rotate", args);
    assert_int_equal(verify_env(env, &f->keys, 0, &c, err), FLEET_EBADSIG);
    free(env);

    /* A (current) installs B as next. */
    env = envelope(&f->a_sk, FLEET_TARGET_GROUP, "lab", 2, NOW + 60, "key.rotate", args);
    assert_int_equal(verify_env(env, &f->keys, 1, &c, err), FLEET_OK);
    assert_int_equal(c.kind, FLEET_CMD_KEY_ROTATE);
    assert_true(c.keys_changed);
    assert_true(c.keys.has_next);
    assert_memory_equal(&c.keys.current, &f->a_pk, sizeof f->a_pk);
    assert_memory_equal(&c.keys.next, &f->b_pk, sizeof f->b_pk);
    fleet_keys rotated = c.keys;
    uint64_t last = c.seq;
    fleet_cmd_free(&c);
    free(env);

    /* Both keys are trusted now; A still works and changes nothing. */
    env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 3, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &rotated, last, &c, err), FLEET_OK);
    assert_false(c.keys_changed);
    last = c.seq;
    fleet_cmd_free(&c);
    free(env);

    /* A rejected command signed by B promotes nothing. */
    env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 4, NOW - 1, "ping", NULL);
    assert_int_equal(verify_env(env, &rotated, last, &c, err), FLEET_EEXPIRED);
    assert_false(c.keys_changed);
    assert_memory_equal(&c.keys, &rotated, sizeof rotated);
    free(env);

    /* The first accepted command signed by B makes it the only key. */
    env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 5, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &rotated, last, &c, err), FLEET_OK);
    assert_true(c.keys_changed);
    assert_memory_equal(&c.keys.current, &f->b_pk, sizeof f->b_pk);
    assert_false(c.keys.has_next);
    fleet_keys after = c.keys;
    last = c.seq;
    fleet_cmd_free(&c);
    free(env);

    /* A is retired. */
    env = envelope(&f->a_sk, FLEET_TARGET_DEVICE, "dev-1", 6, NOW + 60, "ping", NULL);
    assert_int_equal(verify_env(env, &after, last, &c, err), FLEET_EBADSIG);
    assert_err_has(err, "not a fleet key");
    free(env);

    /* Bad rotations. */
    const char *bad_args[] = {"{}", "{\"next_key\": 5}", "{\"next_key\": \"RWQ\"}",
                              "{\"next_key\": \"x\", \"also\": 1}"};
    for (size_t i = 0; i < 4; i++) {
        env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 7, NOW + 60, "key.rotate",
                       bad_args[i]);
        int rc = verify_env(env, &after, last, &c, err);
        if (rc != FLEET_EARGS)
            fail_msg("bad rotation %zu: rc %d, err '%s'", i, rc, err);
        assert_err_has(err, "bad_args: ");
        assert_false(c.keys_changed);
        free(env);
    }
    snprintf(args, sizeof args, "{\"next_key\": \"%s\"}", b_b64);
    env = envelope(&f->b_sk, FLEET_TARGET_DEVICE, "dev-1", 7, NOW + 60, "key.rotate", args);
    assert_int_equal(verify_env(env, &after, last, &c, err), FLEET_EARGS);
    assert_err_has(err, "key id of the current key");
    free(env);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
#define F(name) cmocka_unit_test_setup_teardown(name, fleet_setup, fleet_teardown)
    const struct CMUnitTest tests[] = {
        T(keygen_files_load_back_equal),
        T(key_id_prints_as_minisign_does),
        T(save_keeps_existing_file_without_overwrite),
        T(minisign_unencrypted_key_with_zero_checksum_signs),
        T(seckey_rejects_corrupt_keys),
        T(encrypted_seckey_needs_its_password),
        T(pubkey_rejects_malformed_files),
        T(sig_rejects_malformed_files),
        T(verifies_minisign_signatures),
        T(sign_file_round_trip_streams_large_files),
        T(verify_rejects_tampered_file),
        T(verify_rejects_tampered_trusted_comment),
        T(verify_rejects_wrong_key),
        T(sign_refuses_multiline_comments),
        F(fleet_accepts_signed_ping),
        F(fleet_accepts_group_target),
        F(fleet_rejects_unsigned),
        F(fleet_rejects_mis_signed),
        F(fleet_rejects_expired),
        F(fleet_rejects_replayed),
        F(fleet_rejects_mis_targeted),
        F(fleet_rejects_malformed),
        F(fleet_rotates_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
