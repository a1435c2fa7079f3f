/*
 * ota_sign.h - minisign-compatible Ed25519 keys and signatures (ota_).
 *
 * Reads and writes minisign's three text formats byte for byte, so that
 * `minisign -V` accepts what we sign and we accept what `minisign -S` signs
 * (minisign documentation, "Signature format", "Public key format",
 * "Secret key format"):
 *
 *   public key   untrusted comment: <text>
 *                base64("Ed" || key_id[8] || public_key[32])
 *   secret key   untrusted comment: <text>
 *                base64("Ed" || kdf_alg[2] || "B2" || kdf_salt[32] ||
 *                       kdf_opslimit[8, LE] || kdf_memlimit[8, LE] ||
 *                       keynum_sk[104])
 *                keynum_sk = (key_id[8] || secret_key[64] || checksum[32]),
 *                XORed with scrypt(password, salt) when kdf_alg is "Sc",
 *                stored as is when kdf_alg is "\0\0" (minisign -W);
 *                checksum = BLAKE2b-256("Ed" || key_id || secret_key)
 *   signature    untrusted comment: <text>
 *                base64(sig_alg[2] || key_id[8] || signature[64])
 *                trusted comment: <text>
 *                base64(global_signature[64])
 *                sig_alg "ED": signature = Ed25519(BLAKE2b-512(data)) (the
 *                default since minisign 0.11); "Ed" (legacy): Ed25519(data);
 *                global_signature = Ed25519(signature || trusted comment).
 *
 * Invariants: a key or signature struct filled by a parser passed every
 * check of its format (lengths, algorithms, checksum); a verify function
 * returns OTA_OK only when the key ids match, the data's signature and the
 * trusted comment's global signature all verify. Files are hashed in a
 * bounded buffer (prehashed signatures) or mapped (legacy ones), never read
 * whole into memory.
 *
 * Ownership: every struct here is plain data owned by the caller; text
 * returned by the *_format functions is malloc'd and the caller frees it.
 * Secret key material should be wiped with ota_seckey_wipe().
 *
 * Errors: functions return OTA_OK (0) or a negative OTA_E* code and write
 * one line into err naming the file (or the name the caller gave for a
 * buffer), the field and what was wrong; an output struct is unspecified
 * after an error.
 */
#ifndef OUTPOST_OTA_SIGN_H
#define OUTPOST_OTA_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_KEY_ID_BYTES 8
#define OTA_PUBLIC_KEY_BYTES 32
#define OTA_SECRET_KEY_BYTES 64
#define OTA_SIGNATURE_BYTES 64
/* Longest comment text accepted or written (after its "... comment: "
 * prefix), as minisign's own limits. */
#define OTA_UNTRUSTED_MAX 1024
#define OTA_TRUSTED_MAX 8192
/* base64 of "Ed" || key_id || public_key (42 bytes), as `minisign -P` takes. */
#define OTA_PUBKEY_BASE64_LEN 56
/* Caps on a secret key file's scrypt parameters, so that a hostile key file
 * cannot ask for unbounded work or memory (minisign writes 2^25 ops and
 * 1 GiB, its "sensitive" limits). */
#define OTA_KDF_OPSLIMIT_MAX (UINT64_C(1) << 32)
#define OTA_KDF_MEMLIMIT_MAX (UINT64_C(2) << 30)

enum {
    OTA_OK = 0,
    OTA_EIO = -1,       /* a file could not be opened, read or written */
    OTA_EFORMAT = -2,   /* not a well-formed minisign key or signature */
    OTA_EKEYID = -3,    /* the signature was made by another key (key ids differ) */
    OTA_EBADSIG = -4,   /* the data does not match the signature */
    OTA_ETRUSTED = -5,  /* the trusted comment does not match its global signature */
    OTA_EPASSWORD = -6, /* encrypted secret key: no password given, or a wrong one */
    OTA_ELEGACY = -7,   /* legacy signature where OTA_VERIFY_PREHASHED_ONLY was asked */
    OTA_ENOMEM = -8,
    OTA_EINVAL = -9,    /* an argument is unusable (comment with a newline, too long) */
    OTA_ECRYPTO = -10,  /* libsodium failed (initialisation, scrypt allocation) */
};

typedef struct ota_pubkey {
    uint8_t key_id[OTA_KEY_ID_BYTES];
    uint8_t pk[OTA_PUBLIC_KEY_BYTES];
} ota_pubkey;

typedef struct ota_seckey {
    uint8_t key_id[OTA_KEY_ID_BYTES];
    uint8_t sk[OTA_SECRET_KEY_BYTES]; /* libsodium's layout: seed || public key */
} ota_seckey;

typedef enum ota_sig_alg {
    OTA_SIG_PREHASHED, /* "ED" */
    OTA_SIG_LEGACY,    /* "Ed" */
} ota_sig_alg;

typedef struct ota_sig {
    ota_sig_alg alg;
    uint8_t key_id[OTA_KEY_ID_BYTES];
    uint8_t sig[OTA_SIGNATURE_BYTES];
    uint8_t global_sig[OTA_SIGNATURE_BYTES];
    char untrusted_comment[OTA_UNTRUSTED_MAX + 1]; /* without "untrusted comment: " */
    char trusted_comment[OTA_TRUSTED_MAX + 1];     /* without "trusted comment: " */
} ota_sig;

/* scrypt parameters for writing an encrypted secret key. */
typedef struct ota_kdf_limits {
    uint64_t opslimit;
    uint64_t memlimit_bytes;
} ota_kdf_limits;

/* ---- keys ----------------------------------------------------------------- */

/* A fresh key pair with a random key id. */
int ota_keygen(ota_pubkey *pk, ota_seckey *sk, char err[256]);
/* The public half of a secret key. */
void ota_seckey_public(const ota_seckey *sk, ota_pubkey *pk);
void ota_seckey_wipe(ota_seckey *sk);

/* The key id as minisign prints it: the 8 bytes read as a little-endian
 * 64-bit number, 16 upper-case hex digits. */
void ota_key_id_hex(const uint8_t key_id[OTA_KEY_ID_BYTES], char out[17]);

/* Public key file text (name: what err calls it, e.g. the path). */
int ota_pubkey_parse(const char *text, size_t len, const char *name, ota_pubkey *out,
                     char err[256]);
/* The base64 line alone, as `minisign -P` takes it. */
int ota_pubkey_from_base64(const char *b64, const char *name, ota_pubkey *out, char err[256]);
int ota_pubkey_load(const char *path, ota_pubkey *out, char err[256]);
void ota_pubkey_base64(const ota_pubkey *pk, char out[OTA_PUBKEY_BASE64_LEN + 1]);
/* The two-line file; NULL when out of memory. */
char *ota_pubkey_format(const ota_pubkey *pk);
/* Written through a temporary file; an existing file is replaced only
 * when overwrite is true (else OTA_EIO naming it). */
int ota_pubkey_save(const char *path, const ota_pubkey *pk, bool overwrite, char err[256]);

/* Secret key file text. password: NULL when none was given (an encrypted
 * key then fails with OTA_EPASSWORD); ignored for unencrypted keys. */
int ota_seckey_parse(const char *text, size_t len, const char *name, const char *password,
                     ota_seckey *out, char err[256]);
int ota_seckey_load(const char *path, const char *password, ota_seckey *out, char err[256]);
/* password NULL: unencrypted (what `minisign -G -W` writes, but with the
 * checksum filled in); else scrypt-encrypted with the given limits (NULL:
 * minisign's, 2^25 ops and 1 GiB). *out is malloc'd. */
int ota_seckey_format(const ota_seckey *sk, const char *password, const ota_kdf_limits *kdf,
                      char **out, char err[256]);
/* Mode 0600, through a temporary file; overwrite as ota_pubkey_save. */
int ota_seckey_save(const char *path, const ota_seckey *sk, const char *password,
                    const ota_kdf_limits *kdf, bool overwrite, char err[256]);

/* ---- signatures ----------------------------------------------------------- */

int ota_sig_parse(const char *text, size_t len, const char *name, ota_sig *out, char err[256]);
int ota_sig_load(const char *path, ota_sig *out, char err[256]);
/* The four-line file; NULL when out of memory. */
char *ota_sig_format(const ota_sig *sig);
/* Replaces path atomically (temporary file + rename). */
int ota_sig_save(const char *path, const ota_sig *sig, char err[256]);

/* Sign data. trusted/untrusted: one line each (no CR, LF or NUL), at most
 * OTA_TRUSTED_MAX / OTA_UNTRUSTED_MAX bytes; NULL gives minisign's defaults
 * ("timestamp:<unix time>[\tfile:<base name>]\thashed" for ED, without
 * "\thashed" for legacy; "signature from outpost secret key"). */
int ota_sign_buffer(const ota_seckey *sk, const void *data, size_t len, ota_sig_alg alg,
                    const char *trusted, const char *untrusted, ota_sig *out, char err[256]);
int ota_sign_file(const ota_seckey *sk, const char *path, ota_sig_alg alg,
                  const char *trusted, const char *untrusted, ota_sig *out, char err[256]);

/* Verification flags. */
#define OTA_VERIFY_PREHASHED_ONLY 1u /* refuse legacy "Ed" signatures (minisign -H) */

/* Check key id, then the data's signature, then the trusted comment's.
 * name: what err calls the data. */
int ota_verify_buffer(const ota_pubkey *pk, const void *data, size_t len, const char *name,
                      const ota_sig *sig, unsigned flags, char err[256]);
int ota_verify_file(const ota_pubkey *pk, const char *path, const ota_sig *sig, unsigned flags,
                    char err[256]);

#endif
