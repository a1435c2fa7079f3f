/*
 * manifest.h - OTA update manifests (ota_manifest_): what a signed offer
 * promises about the file that follows it.
 *
 * A manifest is one JSON object (signed as a file with minisign, see
 * ota_sign.h: MANIFEST and MANIFEST.minisig):
 *
 *   {
 *     "version": 7,                    integer >= 1; a device installs only
 *                                      a version above its current one
 *     "kind": "delta",                 "full" (the payload is the model) or
 *                                      "delta" (ota/delta.h, against base)
 *     "base":   {"hash": HEX64, "size": N},     delta only (BLAKE2b-256)
 *     "target": {"hash": HEX64, "size": N},     the model after install
 *     "payload": {"hash": HEX64, "size": N,     what is transferred
 *                 "chunk_size": N,              1 KiB .. 64 MiB
 *                 "chunks": [HEX64, ...]},      BLAKE2b-256 of each chunk,
 *                                               ceil(size / chunk_size) of them
 *     "health": {"prompt": TEXT,                optional; prompt required
 *                "expect_substring": TEXT,      optional
 *                "max_ppl": X}                  optional, > 0
 *   }
 *
 * Parsing is strict: an unknown key anywhere, a missing required key, a
 * value of another type, a hash that is not 64 hex digits, a chunk count
 * that does not match, or a "full" manifest whose payload is not its target
 * is refused with one line naming the field. The parser is fuzzed
 * (tests/fuzz/fuzz_delta.c).
 *
 * Ownership: ota_manifest_parse and ota_manifest_from_file return a
 * malloc'd manifest the caller frees with ota_manifest_free; text from
 * ota_manifest_format is malloc'd too.
 */
#ifndef OUTPOST_OTA_MANIFEST_H
#define OUTPOST_OTA_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_sign.h"

#define OTA_MANIFEST_HASH_BYTES 32
#define OTA_MANIFEST_CHUNK_MIN (UINT32_C(1) << 10)
#define OTA_MANIFEST_CHUNK_MAX (UINT32_C(64) << 20)
#define OTA_MANIFEST_CHUNK_DEFAULT (UINT32_C(256) << 10)
/* At most this many chunks (a 1 GiB payload in 1 KiB chunks). */
#define OTA_MANIFEST_CHUNKS_MAX (UINT32_C(1) << 20)

typedef enum ota_manifest_kind {
    OTA_MANIFEST_FULL = 1,
    OTA_MANIFEST_DELTA = 2,
} ota_manifest_kind;

typedef struct ota_manifest {
    uint64_t version;
    ota_manifest_kind kind;
    uint8_t base_hash[OTA_MANIFEST_HASH_BYTES]; /* zero for full */
    uint64_t base_size;
    uint8_t target_hash[OTA_MANIFEST_HASH_BYTES];
    uint64_t target_size;
    uint8_t payload_hash[OTA_MANIFEST_HASH_BYTES];
    uint64_t payload_size;
    uint32_t chunk_size;
    uint32_t n_chunks;
    uint8_t *chunk_hashes; /* n_chunks * OTA_MANIFEST_HASH_BYTES */
    char *health_prompt;   /* NULL: no health section */
    char *health_expect;   /* NULL: none */
    double health_max_ppl; /* 0: no ceiling */
} ota_manifest;

/* name: what err calls the text (e.g. its path). */
int ota_manifest_parse(const char *text, size_t len, const char *name, ota_manifest **out,
                       char err[256]);
int ota_manifest_load(const char *path, ota_manifest **out, char err[256]);
void ota_manifest_free(ota_manifest *m);

/* A manifest for payload_path: kind delta reads base and target from the
 * delta's header; kind full makes the payload the target. chunk_size 0:
 * OTA_MANIFEST_CHUNK_DEFAULT. The payload is read once, in a bounded buffer. */
int ota_manifest_from_file(const char *payload_path, ota_manifest_kind kind, uint64_t version,
                           uint32_t chunk_size, ota_manifest **out, char err[256]);
/* Set the health section (prompt required; expect may be NULL; max_ppl 0: none). */
int ota_manifest_set_health(ota_manifest *m, const char *prompt, const char *expect,
                            double max_ppl, char err[256]);
/* The JSON text (two-space indented, ends with a newline); NULL when out of memory. */
char *ota_manifest_format(const ota_manifest *m);

#endif
