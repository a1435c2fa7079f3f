/*
 * ota/sign.c - minisign-compatible keys and signatures (see ota_sign.h for
 * the formats, cited from minisign's documentation).
 *
 * Parsing is strict and line-based: every file is exactly its lines (LF or
 * CRLF; trailing blank lines allowed, nothing else after them), every
 * base64 line decodes to exactly its length, every algorithm tag is known.
 * One error line names the file, the line and the field.
 *
 * Two facts about the real minisign (0.11, checked against the Debian
 * binary) that the documentation does not state and this file relies on:
 *  - `minisign -G -W` writes kdf algorithm "\0\0", a zero salt and zero
 *    limits, and an all-zero checksum, which minisign never checks for an
 *    unencrypted key. We accept a zero checksum on unencrypted keys (and
 *    still check that the secret key's public half matches its seed), and
 *    always write the real checksum, which minisign accepts too.
 *  - The signature file's third line starts "trusted comment: " (the
 *    documentation's "trusted_comment:" is a typo).
 *
 * Memory: prehashed signing and verification stream the file through
 * BLAKE2b-512 in HASH_CHUNK_BYTES; legacy ones map the file (Ed25519 over
 * the whole data needs it all), so anonymous memory stays bounded either way.
 * Secret material (decrypted keys, scrypt output) is wiped before return.
 */
#include "ota_sign.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define UNTRUSTED_PREFIX "untrusted comment: "
#define TRUSTED_PREFIX "trusted comment: "
#define HASH_BYTES 64          /* BLAKE2b-512: what "ED" signs */
#define CHECKSUM_BYTES 32      /* BLAKE2b-256: the secret key checksum */
#define SALT_BYTES 32
#define KEYNUM_SK_BYTES (OTA_KEY_ID_BYTES + OTA_SECRET_KEY_BYTES + CHECKSUM_BYTES) /* 104 */
#define PUBKEY_BLOB_BYTES (2 + OTA_KEY_ID_BYTES + OTA_PUBLIC_KEY_BYTES)            /* 42 */
#define SECKEY_BLOB_BYTES (2 + 2 + 2 + SALT_BYTES + 8 + 8 + KEYNUM_SK_BYTES)       /* 158 */
#define SIG_BLOB_BYTES (2 + OTA_KEY_ID_BYTES + OTA_SIGNATURE_BYTES)                /* 74 */
/* Offsets in the secret key blob. */
#define SK_KDF_ALG 2
#define SK_CKSUM_ALG 4
#define SK_SALT 6
#define SK_OPSLIMIT (SK_SALT + SALT_BYTES)
#define SK_MEMLIMIT (SK_OPSLIMIT + 8)
#define SK_KEYNUM (SK_MEMLIMIT + 8)
/* Key and signature files are a few hundred bytes; the cap only stops a
 * wrong path (a model file) from being read whole. */
#define SMALL_FILE_MAX (64 * 1024)
#define HASH_CHUNK_BYTES (256 * 1024)

static int crypto_ready(char err[256])
{
    if (sodium_init() < 0) {
        snprintf(err, 256, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    return OTA_OK;
}

/* ---- small helpers ---------------------------------------------------------- */

static void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void ota_key_id_hex(const uint8_t key_id[OTA_KEY_ID_BYTES], char out[17])
{
    static const char hex[] = "0123456789ABCDEF";
    for (int i = 0; i < OTA_KEY_ID_BYTES; i++) {
        uint8_t b = key_id[OTA_KEY_ID_BYTES - 1 - i];
        out[2 * i] = hex[b >> 4];
        out[2 * i + 1] = hex[b & 15];
    }
    out[16] = '\0';
}

/* A two-byte algorithm tag for an error line: "Ed", or "\x00\x01". */
static void alg_text(const uint8_t a[2], char out[16])
{
    if (isprint(a[0]) && isprint(a[1]))
        snprintf(out, 16, "'%c%c'", a[0], a[1]);
    else
        snprintf(out, 16, "0x%02x%02x", a[0], a[1]);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* ---- reading the text formats ---------------------------------------------- */

typedef struct text_line {
    const char *p;
    size_t n;
} text_line;

/* Cut text into exactly n lines; what names the kind of file and fields[i]
 * what line i+1 holds. Blank text may follow the last line, nothing else. */
static int split_lines(const char *text, size_t len, const char *name, const char *what,
                       const char *const *fields, size_t n, text_line *lines, char err[256])
{
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        snprintf(err, 256, "%s: not a %s: NUL byte at offset %zu", name, what,
                 (size_t)(nul - text));
        return OTA_EFORMAT;
    }
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (pos >= len) {
            snprintf(err, 256, "%s: %s ends before line %zu (%s)", name, what, i + 1, fields[i]);
            return OTA_EFORMAT;
        }
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t ln = end - pos;
        if (ln > 0 && text[pos + ln - 1] == '\r')
            ln--;
        lines[i].p = text + pos;
        lines[i].n = ln;
        pos = nl ? end + 1 : len;
    }
    for (; pos < len; pos++)
        if (!isspace((unsigned char)text[pos])) {
            snprintf(err, 256, "%s: %s has text after line %zu (%s)", name, what, n,
                     fields[n - 1]);
            return OTA_EFORMAT;
        }
    return OTA_OK;
}

/* A comment line: prefix, then at most max bytes of text, copied to out
 * (NUL-terminated) when out is not NULL. */
static int comment_line(const text_line *l, const char *prefix, size_t max, const char *name,
                        int lineno, char *out, char err[256])
{
    size_t plen = strlen(prefix);
    if (l->n < plen || memcmp(l->p, prefix, plen) != 0) {
        snprintf(err, 256, "%s: line %d: expected '%s...'", name, lineno, prefix);
        return OTA_EFORMAT;
    }
    size_t tlen = l->n - plen;
    if (tlen > max) {
        snprintf(err, 256, "%s: line %d: comment is %zu bytes, more than %zu", name, lineno,
                 tlen, max);
        return OTA_EFORMAT;
    }
    if (out) {
        memcpy(out, l->p + plen, tlen);
        out[tlen] = '\0';
    }
    return OTA_OK;
}

/* A base64 line that must decode to exactly want bytes. */
static int base64_line(const char *p, size_t n, const char *name, int lineno, const char *field,
                       uint8_t *out, size_t want, char err[256])
{
    char where[64];
    if (lineno > 0)
        snprintf(where, sizeof where, "line %d (%s)", lineno, field);
    else
        snprintf(where, sizeof where, "%s", field);
    if (n == 0) {
        snprintf(err, 256, "%s: %s: empty, expected base64", name, where);
        return OTA_EFORMAT;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!(isalnum(c) || c == '+' || c == '/' || c == '=')) {
            if (isprint(c))
                snprintf(err, 256, "%s: %s: bad base64: '%c' at column %zu", name, where, c,
                         i + 1);
            else
                snprintf(err, 256, "%s: %s: bad base64: byte 0x%02x at column %zu", name,
                         where, c, i + 1);
            return OTA_EFORMAT;
        }
    }
    size_t want_chars = 4 * ((want + 2) / 3);
    uint8_t buf[256];
    if (n % 4 != 0 || n > 4 * (sizeof buf / 3)) {
        snprintf(err, 256, "%s: %s: wrong length: %zu base64 characters, expected %zu (%zu bytes)",
                 name, where, n, want_chars, want);
        return OTA_EFORMAT;
    }
    size_t got = 0;
    const char *end = NULL;
    if (sodium_base642bin(buf, sizeof buf, p, n, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != p + n) {
        snprintf(err, 256, "%s: %s: bad base64: %zu characters with bad padding (expected %zu)",
                 name, where, n, want_chars);
        sodium_memzero(buf, sizeof buf);
        return OTA_EFORMAT;
    }
    if (got != want) {
        snprintf(err, 256, "%s: %s: wrong length: decodes to %zu bytes, expected %zu", name,
                 where, got, want);
        sodium_memzero(buf, sizeof buf);
        return OTA_EFORMAT;
    }
    memcpy(out, buf, want);
    sodium_memzero(buf, sizeof buf);
    return OTA_OK;
}

/* A whole small file, NUL-terminated, malloc'd. */
static int read_small_file(const char *path, const char *what, char **out, size_t *len,
                           char err[256])
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot open %s: %s", path, what, strerror(errno));
        return OTA_EIO;
    }
    char *buf = malloc(SMALL_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        snprintf(err, 256, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, SMALL_FILE_MAX + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(err, 256, "%s: cannot read %s: %s", path, what, strerror(errno));
            close(fd);
            free(buf);
            return OTA_EIO;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > SMALL_FILE_MAX) {
            snprintf(err, 256, "%s: not a %s: larger than %d bytes", path, what, SMALL_FILE_MAX);
            close(fd);
            free(buf);
            return OTA_EFORMAT;
        }
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return OTA_OK;
}

/* Write text to path through a temporary file in the same directory,
 * fsync'd; then rename over path (overwrite) or link it in place, which
 * fails if path exists. The file is either absent, old, or whole. */
static int write_file_atomic(const char *path, const char *text, size_t len, mode_t mode,
                             bool overwrite, char err[256])
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp-XXXXXX");
    if (!tmp) {
        snprintf(err, 256, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return OTA_EIO;
    }
    int rc = OTA_EIO;
    if (fchmod(fd, mode) != 0) {
        snprintf(err, 256, "%s: cannot set mode %o: %s", path, (unsigned)mode, strerror(errno));
        goto fail;
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            snprintf(err, 256, "%s: write error: %s", path, strerror(errno));
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        snprintf(err, 256, "%s: fsync: %s", path, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        snprintf(err, 256, "%s: close: %s", path, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (overwrite) {
        if (rename(tmp, path) != 0) {
            snprintf(err, 256, "%s: cannot rename into place: %s", path, strerror(errno));
            goto fail;
        }
    } else {
        if (link(tmp, path) != 0) {
            if (errno == EEXIST)
                snprintf(err, 256, "%s: already exists (not overwritten)", path);
            else
                snprintf(err, 256, "%s: cannot create: %s", path, strerror(errno));
            goto fail;
        }
        unlink(tmp);
    }
    free(tmp);
    return OTA_OK;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return rc;
}

/* ---- keys ------------------------------------------------------------------- */

int ota_keygen(ota_pubkey *pk, ota_seckey *sk, char err[256])
{
    int rc = crypto_ready(err);
    if (rc)
        return rc;
    randombytes_buf(sk->key_id, OTA_KEY_ID_BYTES);
    uint8_t pub[OTA_PUBLIC_KEY_BYTES];
    if (crypto_sign_keypair(pub, sk->sk) != 0) {
        snprintf(err, 256, "key generation failed");
        return OTA_ECRYPTO;
    }
    memcpy(pk->key_id, sk->key_id, OTA_KEY_ID_BYTES);
    memcpy(pk->pk, pub, OTA_PUBLIC_KEY_BYTES);
    return OTA_OK;
}

void ota_seckey_public(const ota_seckey *sk, ota_pubkey *pk)
{
    memcpy(pk->key_id, sk->key_id, OTA_KEY_ID_BYTES);
    /* libsodium's secret key is seed || public key. */
    memcpy(pk->pk, sk->sk + 32, OTA_PUBLIC_KEY_BYTES);
}

void ota_seckey_wipe(ota_seckey *sk)
{
    sodium_memzero(sk, sizeof *sk);
}

static int pubkey_blob(const uint8_t blob[PUBKEY_BLOB_BYTES], const char *name,
                       const char *where, ota_pubkey *out, char err[256])
{
    if (blob[0] != 'E' || blob[1] != 'd') {
        char a[16];
        alg_text(blob, a);
        snprintf(err, 256, "%s: %s: unknown signature algorithm %s (expected 'Ed')", name, where,
                 a);
        return OTA_EFORMAT;
    }
    memcpy(out->key_id, blob + 2, OTA_KEY_ID_BYTES);
    memcpy(out->pk, blob + 2 + OTA_KEY_ID_BYTES, OTA_PUBLIC_KEY_BYTES);
    return OTA_OK;
}

int ota_pubkey_parse(const char *text, size_t len, const char *name, ota_pubkey *out,
                     char err[256])
{
    static const char *const fields[] = {"untrusted comment", "public key"};
    text_line l[2];
    uint8_t blob[PUBKEY_BLOB_BYTES];
    int rc = crypto_ready(err);
    if (!rc)
        rc = split_lines(text, len, name, "minisign public key file", fields, 2, l, err);
    if (!rc)
        rc = comment_line(&l[0], UNTRUSTED_PREFIX, OTA_UNTRUSTED_MAX, name, 1, NULL, err);
    if (!rc)
        rc = base64_line(l[1].p, l[1].n, name, 2, "public key", blob, sizeof blob, err);
    if (!rc)
        rc = pubkey_blob(blob, name, "line 2 (public key)", out, err);
    return rc;
}

int ota_pubkey_from_base64(const char *b64, const char *name, ota_pubkey *out, char err[256])
{
    uint8_t blob[PUBKEY_BLOB_BYTES];
    int rc = crypto_ready(err);
    if (!rc)
        rc = base64_line(b64, strlen(b64), name, 0, "public key", blob, sizeof blob, err);
    if (!rc)
        rc = pubkey_blob(blob, name, "public key", out, err);
    return rc;
}

int ota_pubkey_load(const char *path, ota_pubkey *out, char err[256])
{
    char *text;
    size_t len;
    int rc = read_small_file(path, "minisign public key file", &text, &len, err);
    if (rc)
        return rc;
    rc = ota_pubkey_parse(text, len, path, out, err);
    free(text);
    return rc;
}

void ota_pubkey_base64(const ota_pubkey *pk, char out[OTA_PUBKEY_BASE64_LEN + 1])
{
    uint8_t blob[PUBKEY_BLOB_BYTES];
    blob[0] = 'E';
    blob[1] = 'd';
    memcpy(blob + 2, pk->key_id, OTA_KEY_ID_BYTES);
    memcpy(blob + 2 + OTA_KEY_ID_BYTES, pk->pk, OTA_PUBLIC_KEY_BYTES);
    sodium_bin2base64(out, OTA_PUBKEY_BASE64_LEN + 1, blob, sizeof blob,
                      sodium_base64_VARIANT_ORIGINAL);
}

char *ota_pubkey_format(const ota_pubkey *pk)
{
    char id[17], b64[OTA_PUBKEY_BASE64_LEN + 1];
    ota_key_id_hex(pk->key_id, id);
    ota_pubkey_base64(pk, b64);
    size_t cap = sizeof UNTRUSTED_PREFIX + 64 + sizeof b64;
    char *out = malloc(cap);
    if (out)
        snprintf(out, cap, UNTRUSTED_PREFIX "minisign public key %s\n%s\n", id, b64);
    return out;
}

int ota_pubkey_save(const char *path, const ota_pubkey *pk, bool overwrite, char err[256])
{
    char *text = ota_pubkey_format(pk);
    if (!text) {
        snprintf(err, 256, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    int rc = write_file_atomic(path, text, strlen(text), 0644, overwrite, err);
    free(text);
    return rc;
}

/* BLAKE2b-256("Ed" || key_id || secret key): minisign's key checksum. */
static void seckey_checksum(const uint8_t *keynum, uint8_t out[CHECKSUM_BYTES])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, CHECKSUM_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)"Ed", 2);
    crypto_generichash_update(&st, keynum, OTA_KEY_ID_BYTES + OTA_SECRET_KEY_BYTES);
    crypto_generichash_final(&st, out, CHECKSUM_BYTES);
    sodium_memzero(&st, sizeof st);
}

/* XOR keynum_sk with scrypt(password, salt) under the file's limits. */
static int seckey_xor_kdf(uint8_t *keynum, const char *password, const uint8_t *salt,
                          uint64_t opslimit, uint64_t memlimit, const char *name, char err[256])
{
    uint8_t stream[KEYNUM_SK_BYTES];
    if (crypto_pwhash_scryptsalsa208sha256(stream, sizeof stream, password, strlen(password),
                                           salt, (unsigned long long)opslimit,
                                           (size_t)memlimit) != 0) {
        snprintf(err, 256, "%s: scrypt key derivation failed (opslimit %" PRIu64
                 ", memlimit %" PRIu64 " bytes): out of memory?", name, opslimit, memlimit);
        sodium_memzero(stream, sizeof stream);
        return OTA_ECRYPTO;
    }
    for (size_t i = 0; i < sizeof stream; i++)
        keynum[i] ^= stream[i];
    sodium_memzero(stream, sizeof stream);
    return OTA_OK;
}

int ota_seckey_parse(const char *text, size_t len, const char *name, const char *password,
                     ota_seckey *out, char err[256])
{
    static const char *const fields[] = {"untrusted comment", "secret key"};
    text_line l[2];
    uint8_t blob[SECKEY_BLOB_BYTES];
    const char *where = "line 2 (secret key)";
    char a[16];
    int rc = crypto_ready(err);
    if (!rc)
        rc = split_lines(text, len, name, "minisign secret key file", fields, 2, l, err);
    if (!rc)
        rc = comment_line(&l[0], UNTRUSTED_PREFIX, OTA_UNTRUSTED_MAX, name, 1, NULL, err);
    if (!rc)
        rc = base64_line(l[1].p, l[1].n, name, 2, "secret key", blob, sizeof blob, err);
    if (rc)
        return rc;

    rc = OTA_EFORMAT;
    bool encrypted = false;
    if (blob[0] != 'E' || blob[1] != 'd') {
        alg_text(blob, a);
        snprintf(err, 256, "%s: %s: unknown signature algorithm %s (expected 'Ed')", name, where,
                 a);
        goto done;
    }
    if (blob[SK_KDF_ALG] == 'S' && blob[SK_KDF_ALG + 1] == 'c') {
        encrypted = true;
    } else if (blob[SK_KDF_ALG] != 0 || blob[SK_KDF_ALG + 1] != 0) {
        alg_text(blob + SK_KDF_ALG, a);
        snprintf(err, 256, "%s: %s: unknown kdf algorithm %s (expected 'Sc' or none)", name,
                 where, a);
        goto done;
    }
    if (blob[SK_CKSUM_ALG] != 'B' || blob[SK_CKSUM_ALG + 1] != '2') {
        alg_text(blob + SK_CKSUM_ALG, a);
        snprintf(err, 256, "%s: %s: unknown checksum algorithm %s (expected 'B2')", name, where,
                 a);
        goto done;
    }
    uint8_t *keynum = blob + SK_KEYNUM;
    if (encrypted) {
        uint64_t ops = load_le64(blob + SK_OPSLIMIT), mem = load_le64(blob + SK_MEMLIMIT);
        if (ops > OTA_KDF_OPSLIMIT_MAX || mem > OTA_KDF_MEMLIMIT_MAX) {
            snprintf(err, 256, "%s: %s: scrypt limits too large (opslimit %" PRIu64
                     ", memlimit %" PRIu64 " bytes; at most %" PRIu64 " and %" PRIu64 ")",
                     name, where, ops, mem, OTA_KDF_OPSLIMIT_MAX, OTA_KDF_MEMLIMIT_MAX);
            goto done;
        }
        if (!password) {
            snprintf(err, 256, "%s: the secret key is encrypted (scrypt) and no password was given",
                     name);
            rc = OTA_EPASSWORD;
            goto done;
        }
        rc = seckey_xor_kdf(keynum, password, blob + SK_SALT, ops, mem, name, err);
        if (rc)
            goto done;
        rc = OTA_EFORMAT;
    }
    uint8_t sum[CHECKSUM_BYTES];
    seckey_checksum(keynum, sum);
    const uint8_t *stored = keynum + OTA_KEY_ID_BYTES + OTA_SECRET_KEY_BYTES;
    bool sum_ok = sodium_memcmp(sum, stored, CHECKSUM_BYTES) == 0;
    sodium_memzero(sum, sizeof sum);
    if (encrypted && !sum_ok) {
        snprintf(err, 256, "%s: wrong password for the encrypted secret key (checksum mismatch)",
                 name);
        rc = OTA_EPASSWORD;
        goto done;
    }
    if (!encrypted && !sum_ok && !all_zero(stored, CHECKSUM_BYTES)) {
        snprintf(err, 256, "%s: %s: checksum mismatch: the key is corrupt", name, where);
        goto done;
    }
    /* The secret key holds its own public half: a damaged key (whose zero
     * checksum proves nothing) is caught here rather than by the verifier. */
    uint8_t seed[32], pk[32], sk[64];
    memcpy(seed, keynum + OTA_KEY_ID_BYTES, sizeof seed);
    crypto_sign_seed_keypair(pk, sk, seed);
    bool pair_ok = memcmp(pk, keynum + OTA_KEY_ID_BYTES + 32, 32) == 0;
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(sk, sizeof sk);
    if (!pair_ok) {
        snprintf(err, 256, "%s: %s: the public half does not match the secret seed: the key is corrupt",
                 name, where);
        goto done;
    }
    memcpy(out->key_id, keynum, OTA_KEY_ID_BYTES);
    memcpy(out->sk, keynum + OTA_KEY_ID_BYTES, OTA_SECRET_KEY_BYTES);
    rc = OTA_OK;
done:
    sodium_memzero(blob, sizeof blob);
    return rc;
}

int ota_seckey_load(const char *path, const char *password, ota_seckey *out, char err[256])
{
    char *text;
    size_t len;
    int rc = read_small_file(path, "minisign secret key file", &text, &len, err);
    if (rc)
        return rc;
    rc = ota_seckey_parse(text, len, path, password, out, err);
    sodium_memzero(text, len);
    free(text);
    return rc;
}

int ota_seckey_format(const ota_seckey *sk, const char *password, const ota_kdf_limits *kdf,
                      char **out, char err[256])
{
    *out = NULL;
    int rc = crypto_ready(err);
    if (rc)
        return rc;
    ota_kdf_limits lim = {crypto_pwhash_scryptsalsa208sha256_OPSLIMIT_SENSITIVE,
                          crypto_pwhash_scryptsalsa208sha256_MEMLIMIT_SENSITIVE};
    if (kdf)
        lim = *kdf;
    if (password && (lim.opslimit > OTA_KDF_OPSLIMIT_MAX || lim.memlimit_bytes > OTA_KDF_MEMLIMIT_MAX)) {
        snprintf(err, 256, "secret key: scrypt limits too large (opslimit %" PRIu64
                 ", memlimit %" PRIu64 " bytes)", lim.opslimit, lim.memlimit_bytes);
        return OTA_EINVAL;
    }
    uint8_t blob[SECKEY_BLOB_BYTES];
    memset(blob, 0, sizeof blob);
    blob[0] = 'E';
    blob[1] = 'd';
    if (password) {
        blob[SK_KDF_ALG] = 'S';
        blob[SK_KDF_ALG + 1] = 'c';
        randombytes_buf(blob + SK_SALT, SALT_BYTES);
        store_le64(blob + SK_OPSLIMIT, lim.opslimit);
        store_le64(blob + SK_MEMLIMIT, lim.memlimit_bytes);
    }
    blob[SK_CKSUM_ALG] = 'B';
    blob[SK_CKSUM_ALG + 1] = '2';
    uint8_t *keynum = blob + SK_KEYNUM;
    memcpy(keynum, sk->key_id, OTA_KEY_ID_BYTES);
    memcpy(keynum + OTA_KEY_ID_BYTES, sk->sk, OTA_SECRET_KEY_BYTES);
    seckey_checksum(keynum, keynum + OTA_KEY_ID_BYTES + OTA_SECRET_KEY_BYTES);
    if (password) {
        rc = seckey_xor_kdf(keynum, password, blob + SK_SALT, lim.opslimit, lim.memlimit_bytes,
                            "secret key", err);
        if (rc) {
            sodium_memzero(blob, sizeof blob);
            return rc;
        }
    }
    const char *comment = password ? "minisign encrypted secret key" : "minisign secret key";
    size_t b64_cap = sodium_base64_ENCODED_LEN(sizeof blob, sodium_base64_VARIANT_ORIGINAL);
    size_t cap = sizeof UNTRUSTED_PREFIX + strlen(comment) + 1 + b64_cap + 1;
    char *text = malloc(cap);
    if (!text) {
        sodium_memzero(blob, sizeof blob);
        snprintf(err, 256, "secret key: out of memory");
        return OTA_ENOMEM;
    }
    int n = snprintf(text, cap, UNTRUSTED_PREFIX "%s\n", comment);
    sodium_bin2base64(text + n, b64_cap, blob, sizeof blob, sodium_base64_VARIANT_ORIGINAL);
    strcat(text, "\n");
    sodium_memzero(blob, sizeof blob);
    *out = text;
    return OTA_OK;
}

int ota_seckey_save(const char *path, const ota_seckey *sk, const char *password,
                    const ota_kdf_limits *kdf, bool overwrite, char err[256])
{
    char *text;
    int rc = ota_seckey_format(sk, password, kdf, &text, err);
    if (rc)
        return rc;
    size_t len = strlen(text);
    rc = write_file_atomic(path, text, len, 0600, overwrite, err);
    sodium_memzero(text, len);
    free(text);
    return rc;
}

/* ---- signature files --------------------------------------------------------- */

int ota_sig_parse(const char *text, size_t len, const char *name, ota_sig *out, char err[256])
{
    static const char *const fields[] = {"untrusted comment", "signature", "trusted comment",
                                         "global signature"};
    text_line l[4];
    uint8_t blob[SIG_BLOB_BYTES];
    int rc = crypto_ready(err);
    if (!rc)
        rc = split_lines(text, len, name, "minisign signature file", fields, 4, l, err);
    if (!rc)
        rc = comment_line(&l[0], UNTRUSTED_PREFIX, OTA_UNTRUSTED_MAX, name, 1,
                          out->untrusted_comment, err);
    if (!rc)
        rc = base64_line(l[1].p, l[1].n, name, 2, "signature", blob, sizeof blob, err);
    if (!rc)
        rc = comment_line(&l[2], TRUSTED_PREFIX, OTA_TRUSTED_MAX, name, 3, out->trusted_comment,
                          err);
    if (!rc)
        rc = base64_line(l[3].p, l[3].n, name, 4, "global signature", out->global_sig,
                         OTA_SIGNATURE_BYTES, err);
    if (rc)
        return rc;
    if (blob[0] == 'E' && blob[1] == 'D') {
        out->alg = OTA_SIG_PREHASHED;
    } else if (blob[0] == 'E' && blob[1] == 'd') {
        out->alg = OTA_SIG_LEGACY;
    } else {
        char a[16];
        alg_text(blob, a);
        snprintf(err, 256, "%s: line 2 (signature): unknown signature algorithm %s (expected 'ED' or 'Ed')",
                 name, a);
        return OTA_EFORMAT;
    }
    memcpy(out->key_id, blob + 2, OTA_KEY_ID_BYTES);
    memcpy(out->sig, blob + 2 + OTA_KEY_ID_BYTES, OTA_SIGNATURE_BYTES);
    return OTA_OK;
}

int ota_sig_load(const char *path, ota_sig *out, char err[256])
{
    char *text;
    size_t len;
    int rc = read_small_file(path, "minisign signature file", &text, &len, err);
    if (rc)
        return rc;
    rc = ota_sig_parse(text, len, path, out, err);
    free(text);
    return rc;
}

char *ota_sig_format(const ota_sig *sig)
{
    uint8_t blob[SIG_BLOB_BYTES];
    blob[0] = 'E';
    blob[1] = sig->alg == OTA_SIG_PREHASHED ? 'D' : 'd';
    memcpy(blob + 2, sig->key_id, OTA_KEY_ID_BYTES);
    memcpy(blob + 2 + OTA_KEY_ID_BYTES, sig->sig, OTA_SIGNATURE_BYTES);
    char b64sig[sodium_base64_ENCODED_LEN(SIG_BLOB_BYTES, sodium_base64_VARIANT_ORIGINAL)];
    char b64global[sodium_base64_ENCODED_LEN(OTA_SIGNATURE_BYTES, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64sig, sizeof b64sig, blob, sizeof blob, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(b64global, sizeof b64global, sig->global_sig, OTA_SIGNATURE_BYTES,
                      sodium_base64_VARIANT_ORIGINAL);
    size_t cap = sizeof UNTRUSTED_PREFIX + strnlen(sig->untrusted_comment, OTA_UNTRUSTED_MAX) +
                 sizeof b64sig + sizeof TRUSTED_PREFIX +
                 strnlen(sig->trusted_comment, OTA_TRUSTED_MAX) + sizeof b64global + 8;
    char *out = malloc(cap);
    if (out)
        snprintf(out, cap, UNTRUSTED_PREFIX "%.*s\n%s\n" TRUSTED_PREFIX "%.*s\n%s\n",
                 OTA_UNTRUSTED_MAX, sig->untrusted_comment, b64sig, OTA_TRUSTED_MAX,
                 sig->trusted_comment, b64global);
    return out;
}

int ota_sig_save(const char *path, const ota_sig *sig, char err[256])
{
    char *text = ota_sig_format(sig);
    if (!text) {
        snprintf(err, 256, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    int rc = write_file_atomic(path, text, strlen(text), 0644, true, err);
    free(text);
    return rc;
}

/* ---- hashing and mapping data files ---------------------------------------------- */

/* BLAKE2b-512 of a file, read in HASH_CHUNK_BYTES pieces. */
static int hash_file(const char *path, uint8_t out[HASH_BYTES], char err[256])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot open: %s", path, strerror(errno));
        return OTA_EIO;
    }
    uint8_t *buf = malloc(HASH_CHUNK_BYTES);
    if (!buf) {
        close(fd);
        snprintf(err, 256, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, HASH_BYTES);
    int rc = OTA_OK;
    for (;;) {
        ssize_t n = read(fd, buf, HASH_CHUNK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, 256, "%s: read error: %s", path, strerror(errno));
            rc = OTA_EIO;
            break;
        }
        if (n == 0)
            break;
        crypto_generichash_update(&st, buf, (unsigned long long)n);
    }
    if (!rc)
        crypto_generichash_final(&st, out, HASH_BYTES);
    free(buf);
    close(fd);
    return rc;
}

typedef struct mapped {
    const uint8_t *p;
    size_t len;
    void *map; /* NULL for an empty file */
} mapped;

static int map_file(const char *path, mapped *m, char err[256])
{
    static const uint8_t empty[1];
    m->p = empty;
    m->len = 0;
    m->map = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot open: %s", path, strerror(errno));
        return OTA_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, 256, "%s: not a regular file", path);
        close(fd);
        return OTA_EIO;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        snprintf(err, 256, "%s: too large to map (%" PRIu64 " bytes)", path,
                 (uint64_t)st.st_size);
        close(fd);
        return OTA_EIO;
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            snprintf(err, 256, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return OTA_EIO;
        }
        madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
        m->map = p;
        m->p = p;
        m->len = (size_t)st.st_size;
    }
    close(fd);
    return OTA_OK;
}

static void unmap_file(mapped *m)
{
    if (m->map)
        munmap(m->map, m->len);
    m->map = NULL;
}

/* ---- signing ------------------------------------------------------------------------ */

/* A caller's comment must be one line within max bytes. */
static int check_comment_arg(const char *s, size_t max, const char *what, char err[256])
{
    size_t n = strlen(s);
    if (n > max) {
        snprintf(err, 256, "%s: %zu bytes, more than %zu", what, n, max);
        return OTA_EINVAL;
    }
    if (strpbrk(s, "\r\n")) {
        snprintf(err, 256, "%s: must be one line (contains a line break)", what);
        return OTA_EINVAL;
    }
    return OTA_OK;
}

/* The rest of a signature once sig->sig is made: comments and the global
 * signature over sig || trusted comment. */
static int finish_sig(const ota_seckey *sk, ota_sig_alg alg, const char *trusted,
                      const char *untrusted, ota_sig *out, char err[256])
{
    out->alg = alg;
    memcpy(out->key_id, sk->key_id, OTA_KEY_ID_BYTES);
    snprintf(out->untrusted_comment, sizeof out->untrusted_comment, "%s", untrusted);
    snprintf(out->trusted_comment, sizeof out->trusted_comment, "%s", trusted);
    size_t tlen = strlen(out->trusted_comment);
    uint8_t *msg = malloc(OTA_SIGNATURE_BYTES + tlen);
    if (!msg) {
        snprintf(err, 256, "out of memory");
        return OTA_ENOMEM;
    }
    memcpy(msg, out->sig, OTA_SIGNATURE_BYTES);
    memcpy(msg + OTA_SIGNATURE_BYTES, out->trusted_comment, tlen);
    crypto_sign_detached(out->global_sig, NULL, msg, OTA_SIGNATURE_BYTES + tlen, sk->sk);
    free(msg);
    return OTA_OK;
}

/* Default comments (minisign's, with our name in the untrusted one).
 * file: the signed file's base name, or NULL. */
static void default_trusted(char *buf, size_t cap, ota_sig_alg alg, const char *file)
{
    int n = snprintf(buf, cap, "timestamp:%lld", (long long)time(NULL));
    if (file) {
        const char *base = strrchr(file, '/');
        base = base ? base + 1 : file;
        n += snprintf(buf + n, cap - (size_t)n, "\tfile:");
        for (; *base && (size_t)n + 16 < cap; base++)
            buf[n++] = (*base == '\r' || *base == '\n') ? '?' : *base;
        buf[n] = '\0';
    }
    if (alg == OTA_SIG_PREHASHED)
        snprintf(buf + n, cap - (size_t)n, "\thashed");
}

static int sign_prepare(const char *trusted, const char *untrusted, char err[256])
{
    int rc = crypto_ready(err);
    if (!rc && trusted)
        rc = check_comment_arg(trusted, OTA_TRUSTED_MAX, "trusted comment", err);
    if (!rc && untrusted)
        rc = check_comment_arg(untrusted, OTA_UNTRUSTED_MAX, "untrusted comment", err);
    return rc;
}

#define DEFAULT_UNTRUSTED "signature from outpost secret key"

int ota_sign_buffer(const ota_seckey *sk, const void *data, size_t len, ota_sig_alg alg,
                    const char *trusted, const char *untrusted, ota_sig *out, char err[256])
{
    int rc = sign_prepare(trusted, untrusted, err);
    if (rc)
        return rc;
    if (alg == OTA_SIG_PREHASHED) {
        uint8_t h[HASH_BYTES];
        crypto_generichash(h, sizeof h, data, len, NULL, 0);
        crypto_sign_detached(out->sig, NULL, h, sizeof h, sk->sk);
    } else {
        crypto_sign_detached(out->sig, NULL, data, len, sk->sk);
    }
    char def[128];
    if (!trusted) {
        default_trusted(def, sizeof def, alg, NULL);
        trusted = def;
    }
    return finish_sig(sk, alg, trusted, untrusted ? untrusted : DEFAULT_UNTRUSTED, out, err);
}

int ota_sign_file(const ota_seckey *sk, const char *path, ota_sig_alg alg,
                  const char *trusted, const char *untrusted, ota_sig *out, char err[256])
{
    int rc = sign_prepare(trusted, untrusted, err);
    if (rc)
        return rc;
    if (alg == OTA_SIG_PREHASHED) {
        uint8_t h[HASH_BYTES];
        if ((rc = hash_file(path, h, err)))
            return rc;
        crypto_sign_detached(out->sig, NULL, h, sizeof h, sk->sk);
    } else {
        mapped m;
        if ((rc = map_file(path, &m, err)))
            return rc;
        crypto_sign_detached(out->sig, NULL, m.p, m.len, sk->sk);
        unmap_file(&m);
    }
    char def[OTA_TRUSTED_MAX + 1];
    if (!trusted) {
        default_trusted(def, sizeof def, alg, path);
        trusted = def;
    }
    return finish_sig(sk, alg, trusted, untrusted ? untrusted : DEFAULT_UNTRUSTED, out, err);
}

/* ---- verification ------------------------------------------------------------------- */

static int verify_pre(const ota_pubkey *pk, const ota_sig *sig, unsigned flags,
                      const char *name, char err[256])
{
    int rc = crypto_ready(err);
    if (rc)
        return rc;
    if (memcmp(pk->key_id, sig->key_id, OTA_KEY_ID_BYTES) != 0) {
        char a[17], b[17];
        ota_key_id_hex(sig->key_id, a);
        ota_key_id_hex(pk->key_id, b);
        snprintf(err, 256, "%s: signature key id %s does not match the public key's %s", name,
                 a, b);
        return OTA_EKEYID;
    }
    if (sig->alg == OTA_SIG_LEGACY && (flags & OTA_VERIFY_PREHASHED_ONLY)) {
        snprintf(err, 256, "%s: legacy (Ed) signature refused: a prehashed (ED) signature is required",
                 name);
        return OTA_ELEGACY;
    }
    return OTA_OK;
}

static int verify_post(const ota_pubkey *pk, const ota_sig *sig, int data_ok, const char *name,
                       char err[256])
{
    if (data_ok != 0) {
        snprintf(err, 256, "%s: signature verification failed: the data does not match the signature",
                 name);
        return OTA_EBADSIG;
    }
    size_t tlen = strnlen(sig->trusted_comment, OTA_TRUSTED_MAX);
    uint8_t *msg = malloc(OTA_SIGNATURE_BYTES + tlen);
    if (!msg) {
        snprintf(err, 256, "%s: out of memory", name);
        return OTA_ENOMEM;
    }
    memcpy(msg, sig->sig, OTA_SIGNATURE_BYTES);
    memcpy(msg + OTA_SIGNATURE_BYTES, sig->trusted_comment, tlen);
    int ok = crypto_sign_verify_detached(sig->global_sig, msg, OTA_SIGNATURE_BYTES + tlen, pk->pk);
    free(msg);
    if (ok != 0) {
        snprintf(err, 256, "%s: trusted comment does not match its global signature (tampered)",
                 name);
        return OTA_ETRUSTED;
    }
    return OTA_OK;
}

int ota_verify_buffer(const ota_pubkey *pk, const void *data, size_t len, const char *name,
                      const ota_sig *sig, unsigned flags, char err[256])
{
    int rc = verify_pre(pk, sig, flags, name, err);
    if (rc)
        return rc;
    int ok;
    if (sig->alg == OTA_SIG_PREHASHED) {
        uint8_t h[HASH_BYTES];
        crypto_generichash(h, sizeof h, data, len, NULL, 0);
        ok = crypto_sign_verify_detached(sig->sig, h, sizeof h, pk->pk);
    } else {
        ok = crypto_sign_verify_detached(sig->sig, data, len, pk->pk);
    }
    return verify_post(pk, sig, ok, name, err);
}

int ota_verify_file(const ota_pubkey *pk, const char *path, const ota_sig *sig, unsigned flags,
                    char err[256])
{
    int rc = verify_pre(pk, sig, flags, path, err);
    if (rc)
        return rc;
    int ok;
    if (sig->alg == OTA_SIG_PREHASHED) {
        uint8_t h[HASH_BYTES];
        if ((rc = hash_file(path, h, err)))
            return rc;
        ok = crypto_sign_verify_detached(sig->sig, h, sizeof h, pk->pk);
    } else {
        mapped m;
        if ((rc = map_file(path, &m, err)))
            return rc;
        ok = crypto_sign_verify_detached(sig->sig, m.p, m.len, pk->pk);
        unmap_file(&m);
    }
    return verify_post(pk, sig, ok, path, err);
}
