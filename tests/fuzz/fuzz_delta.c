/*
 * fuzz_delta.c - libFuzzer target for the model delta parsers
 * (ota/delta.c: ota_delta_header_parse, ota_delta_record_parse,
 * ota_delta_check) and the OTA manifest parser (ota/manifest.c).
 *
 * The first input byte picks the parser: 0 the delta as given; 1 the delta
 * with its header hash recomputed first (the header carries a BLAKE2b of
 * itself, which random bytes never match, so this lets the fuzzer past it
 * to the records, piece framing and zstd frame headers); 2 every 88 bytes
 * as a record header; 3 the rest as a manifest. Promises checked (a broken
 * one aborts, which libFuzzer reports): a known result code; an error line
 * that is one line under 256 bytes; an accepted delta's sizes add up (its
 * records rebuild exactly the target size, checked by ota_delta_check
 * itself, here: the header fields are as parsed); an accepted manifest
 * formats and parses back to the same fields.
 *
 * The input buffer belongs to libFuzzer and is not NUL-terminated; the
 * parsers get its length.
 */
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delta.h"
#include "manifest.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_delta: broken promise: %s (%s:%d)\n", #cond,       \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static void check_err(int rc, const char *err)
{
    FUZZ_CHECK(rc == OTA_OK || rc == OTA_EFORMAT || rc == OTA_ENOMEM);
    if (rc != OTA_OK) {
        size_t n = strnlen(err, 256);
        FUZZ_CHECK(n > 0 && n < 256);
        FUZZ_CHECK(!memchr(err, '\n', n));
    }
}

static void fuzz_manifest(const uint8_t *data, size_t size)
{
    char err[256] = "";
    ota_manifest *m = NULL, *back = NULL;
    int rc = ota_manifest_parse((const char *)data, size, "fuzz", &m, err);
    check_err(rc, err);
    if (rc != OTA_OK) {
        FUZZ_CHECK(m == NULL);
        return;
    }
    char *text = ota_manifest_format(m);
    FUZZ_CHECK(text != NULL);
    rc = ota_manifest_parse(text, strlen(text), "formatted", &back, err);
    if (rc != OTA_OK)
        fprintf(stderr, "fuzz_delta: %s\n", err);
    FUZZ_CHECK(rc == OTA_OK);
    FUZZ_CHECK(back->version == m->version && back->kind == m->kind);
    FUZZ_CHECK(back->target_size == m->target_size && back->payload_size == m->payload_size);
    FUZZ_CHECK(back->n_chunks == m->n_chunks && back->chunk_size == m->chunk_size);
    FUZZ_CHECK(!memcmp(back->target_hash, m->target_hash, 32));
    FUZZ_CHECK(!m->n_chunks || !memcmp(back->chunk_hashes, m->chunk_hashes, (size_t)m->n_chunks * 32));
    FUZZ_CHECK((back->health_prompt == NULL) == (m->health_prompt == NULL));
    FUZZ_CHECK(!m->health_prompt || strcmp(back->health_prompt, m->health_prompt) == 0);
    free(text);
    ota_manifest_free(back);
    ota_manifest_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        FUZZ_CHECK(sodium_init() >= 0);
        ready = true;
    }
    if (size < 1)
        return 0;
    unsigned mode = data[0] % 4;
    data++;
    size--;
    char err[256] = "";
    if (mode == 3) {
        fuzz_manifest(data, size);
        return 0;
    }
    if (mode == 2) {
        for (size_t at = 0; at < size; at += OTA_DELTA_RECORD_BYTES) {
            ota_delta_record r;
            int rc = ota_delta_record_parse(data + at, size - at, "fuzz", &r, err);
            check_err(rc, err);
            if (rc == OTA_OK)
                FUZZ_CHECK(r.kind >= OTA_DELTA_SAME && r.kind <= OTA_DELTA_END);
        }
        return 0;
    }
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    if (mode == 1 && size >= OTA_DELTA_HEADER_BYTES)
        crypto_generichash(copy + 120, 32, copy, 120, NULL, 0);
    ota_delta_header h;
    int rc = ota_delta_check(copy, size, "fuzz", &h, err);
    check_err(rc, err);
    if (rc == OTA_OK) {
        ota_delta_header h2;
        FUZZ_CHECK(ota_delta_header_parse(copy, size, "fuzz", &h2, err) == OTA_OK);
        FUZZ_CHECK(h2.target_bytes == h.target_bytes && h2.n_records == h.n_records);
        FUZZ_CHECK(h.meta_bytes <= h.target_bytes);
    }
    free(copy);
    return 0;
}
