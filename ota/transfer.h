/*
 * transfer.h - chunked reception of an OTA payload (ota_xfer_): the bytes a
 * signed manifest announces (a whole model, a delta or an adapter), cut in
 * fixed-size chunks, each one hashed in the manifest.
 *
 * Chunk message (the binary MQTT payload on <prefix>/<device>/ota and
 * <prefix>/group/<g>/ota), all integers little-endian:
 *
 *   offset  size  field
 *        0     4  magic "OTC1"
 *        4     8  transfer id: the first 8 bytes of the payload's BLAKE2b-256
 *                 hash as the manifest names it
 *       12     4  chunk index (0-based)
 *       16     n  chunk data: chunk_size_bytes, the last chunk what is left
 *
 * Chunks carry no signature of their own: each must hash (BLAKE2b-256) to
 * the manifest's entry for its index, and the manifest is signed.
 *
 * On disk, in the directory the caller gives, per transfer id (hex):
 *   <id>.part   the payload, chunks written at index * chunk_size_bytes
 *   <id>.map    "OTM1", n_chunks (u32), payload hash (32), then one bit per
 *               chunk (LSB first): set only after the chunk's data was
 *               fsync'd, and fsync'd itself before ota_xfer_put returns.
 * So a set bit always means durable data, and ota_xfer_put returning 0 is
 * the moment the chunk may be acknowledged to the broker: a crash before it
 * costs a redelivery, never a hole. Reopening resumes from the map.
 *
 * Invariants: a chunk is written only after its hash matched; the payload
 * is declared complete only when every bit is set and the whole file hashes
 * to the payload hash (ota_xfer_verify).
 *
 * Threads: one ota_xfer is used by one thread at a time.
 * Ownership: ota_xfer_open's handle is freed by ota_xfer_close; the spec's
 * chunk hashes are copied.
 */
#ifndef OUTPOST_OTA_TRANSFER_H
#define OUTPOST_OTA_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_sign.h" /* OTA_OK, OTA_E* */

enum {
    OTA_ECHUNK = -40,    /* a chunk that does not match its hash, index or length */
    OTA_EXFERID = -41,   /* a chunk of another transfer */
    OTA_EINCOMPLETE = -42, /* verify before every chunk arrived */
};

#define OTA_XFER_MAGIC "OTC1"
#define OTA_XFER_ID_BYTES 8
#define OTA_XFER_HEADER_BYTES 16
#define OTA_XFER_HASH_BYTES 32
/* Bounds on what a manifest may ask (a hostile one must not make us allocate
 * or create unbounded files). */
#define OTA_XFER_CHUNK_MIN_BYTES 1024
#define OTA_XFER_CHUNK_MAX_BYTES (8u << 20)
#define OTA_XFER_MAX_CHUNKS (1u << 20)

typedef struct ota_xfer_spec {
    uint64_t size_bytes;                       /* the whole payload */
    uint8_t hash[OTA_XFER_HASH_BYTES];         /* BLAKE2b-256 of the payload */
    uint32_t chunk_size_bytes;
    uint32_t n_chunks;                         /* ceil(size / chunk size) */
    const uint8_t (*chunk_hashes)[OTA_XFER_HASH_BYTES]; /* n_chunks entries */
} ota_xfer_spec;

typedef struct ota_xfer ota_xfer;

/* Check the spec (sizes, counts, bounds), then create or resume the
 * transfer's files in dir (created if missing). */
int ota_xfer_open(const char *dir, const ota_xfer_spec *spec, ota_xfer **out, char err[256]);
void ota_xfer_close(ota_xfer *x);
/* Close and delete the transfer's files. */
void ota_xfer_discard(ota_xfer *x);

/* The transfer id of a spec / of an open transfer, and as 16 hex digits. */
void ota_xfer_spec_id(const ota_xfer_spec *spec, uint8_t id[OTA_XFER_ID_BYTES]);
void ota_xfer_id_hex(const uint8_t id[OTA_XFER_ID_BYTES], char out[2 * OTA_XFER_ID_BYTES + 1]);
const uint8_t *ota_xfer_id(const ota_xfer *x);

/* Split a chunk message (no copy: *data points into msg). */
int ota_xfer_msg_parse(const void *msg, size_t len, uint8_t id[OTA_XFER_ID_BYTES],
                       uint32_t *index, const uint8_t **data, size_t *data_len, char err[256]);
/* Build one (malloc'd into *out). */
int ota_xfer_msg_build(const uint8_t id[OTA_XFER_ID_BYTES], uint32_t index, const void *data,
                       size_t len, uint8_t **out, size_t *out_len, char err[256]);

/* Store one chunk durably (see the top of this file). A chunk already
 * stored is accepted again without writing (redelivery). */
int ota_xfer_put(ota_xfer *x, uint32_t index, const void *data, size_t len, char err[256]);
/* A whole chunk message: id checked (OTA_EXFERID), then ota_xfer_put. */
int ota_xfer_put_msg(ota_xfer *x, const void *msg, size_t len, char err[256]);

uint32_t ota_xfer_n_received(const ota_xfer *x);
uint32_t ota_xfer_n_chunks(const ota_xfer *x);
bool ota_xfer_complete(const ota_xfer *x);
bool ota_xfer_has_chunk(const ota_xfer *x, uint32_t index);
/* Every chunk present and the file's hash is the payload hash. A mismatch
 * (only possible if the disk changed it) clears the map: start over. */
int ota_xfer_verify(ota_xfer *x, char err[256]);
/* The payload file (<dir>/<id>.part). */
const char *ota_xfer_path(const ota_xfer *x);

#endif
