/*
 * ota/transfer.c - chunked payload reception with a durable progress map
 * (see transfer.h for the message and file formats).
 *
 * Durability order for one chunk: hash check, pwrite at its offset,
 * fdatasync of the payload file, set the bit in memory, pwrite the one map
 * byte holding it, fdatasync of the map. The map byte is a single-byte
 * write, so a crash leaves it old or new; an old byte only costs a
 * redelivered chunk (the broker has not had our acknowledgement).
 */
#include "transfer.h"

#include "delta.h"   /* ota_file_hash */
#include "install.h" /* ota_hex_encode */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAP_MAGIC "OTM1"
#define MAP_HEADER_BYTES (4 + 4 + OTA_XFER_HASH_BYTES)
#define PATH_BYTES 4200

struct ota_xfer {
    uint8_t id[OTA_XFER_ID_BYTES];
    uint64_t size_bytes;
    uint8_t hash[OTA_XFER_HASH_BYTES];
    uint32_t chunk_size_bytes, n_chunks, n_received;
    uint8_t (*chunk_hashes)[OTA_XFER_HASH_BYTES];
    uint8_t *bitmap;
    size_t bitmap_bytes;
    int part_fd, map_fd;
    char part_path[PATH_BYTES], map_path[PATH_BYTES];
};

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void ota_xfer_spec_id(const ota_xfer_spec *spec, uint8_t id[OTA_XFER_ID_BYTES])
{
    memcpy(id, spec->hash, OTA_XFER_ID_BYTES);
}

void ota_xfer_id_hex(const uint8_t id[OTA_XFER_ID_BYTES], char out[2 * OTA_XFER_ID_BYTES + 1])
{
    ota_hex_encode(id, OTA_XFER_ID_BYTES, out);
}

const uint8_t *ota_xfer_id(const ota_xfer *x)
{
    return x->id;
}

int ota_xfer_msg_parse(const void *msg, size_t len, uint8_t id[OTA_XFER_ID_BYTES],
                       uint32_t *index, const uint8_t **data, size_t *data_len, char err[256])
{
    const uint8_t *p = msg;
    if (!p || len < OTA_XFER_HEADER_BYTES || memcmp(p, OTA_XFER_MAGIC, 4)) {
        snprintf(err, 256, "ota chunk: %zu bytes without the \"" OTA_XFER_MAGIC "\" header", len);
        return OTA_ECHUNK;
    }
    memcpy(id, p + 4, OTA_XFER_ID_BYTES);
    *index = get_u32(p + 12);
    *data = p + OTA_XFER_HEADER_BYTES;
    *data_len = len - OTA_XFER_HEADER_BYTES;
    return OTA_OK;
}

int ota_xfer_msg_build(const uint8_t id[OTA_XFER_ID_BYTES], uint32_t index, const void *data,
                       size_t len, uint8_t **out, size_t *out_len, char err[256])
{
    uint8_t *m = malloc(OTA_XFER_HEADER_BYTES + len);
    if (!m) {
        snprintf(err, 256, "ota chunk %" PRIu32 ": out of memory", index);
        return OTA_ENOMEM;
    }
    memcpy(m, OTA_XFER_MAGIC, 4);
    memcpy(m + 4, id, OTA_XFER_ID_BYTES);
    put_u32(m + 12, index);
    if (len)
        memcpy(m + OTA_XFER_HEADER_BYTES, data, len);
    *out = m;
    *out_len = OTA_XFER_HEADER_BYTES + len;
    return OTA_OK;
}

static int check_spec(const ota_xfer_spec *s, char err[256])
{
    if (s->chunk_size_bytes < OTA_XFER_CHUNK_MIN_BYTES ||
        s->chunk_size_bytes > OTA_XFER_CHUNK_MAX_BYTES) {
        snprintf(err, 256, "ota transfer: chunk size %" PRIu32 " outside [%u, %u]",
                 s->chunk_size_bytes, OTA_XFER_CHUNK_MIN_BYTES, OTA_XFER_CHUNK_MAX_BYTES);
        return OTA_EINVAL;
    }
    uint64_t want = (s->size_bytes + s->chunk_size_bytes - 1) / s->chunk_size_bytes;
    if (s->size_bytes == 0 || s->n_chunks != want || s->n_chunks > OTA_XFER_MAX_CHUNKS ||
        !s->chunk_hashes) {
        snprintf(err, 256, "ota transfer: %" PRIu32 " chunks of %" PRIu32 " bytes do not make "
                 "%" PRIu64 " bytes (or more than %u chunks)", s->n_chunks, s->chunk_size_bytes,
                 s->size_bytes, OTA_XFER_MAX_CHUNKS);
        return OTA_EINVAL;
    }
    return OTA_OK;
}

/* Fresh map: header and a zero bitmap, fsync'd (file and directory). */
static int map_create(ota_xfer *x, char err[256])
{
    uint8_t hdr[MAP_HEADER_BYTES];
    memcpy(hdr, MAP_MAGIC, 4);
    put_u32(hdr + 4, x->n_chunks);
    memcpy(hdr + 8, x->hash, OTA_XFER_HASH_BYTES);
    memset(x->bitmap, 0, x->bitmap_bytes);
    x->n_received = 0;
    if (ftruncate(x->map_fd, 0) ||
        pwrite(x->map_fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr ||
        pwrite(x->map_fd, x->bitmap, x->bitmap_bytes, MAP_HEADER_BYTES) !=
            (ssize_t)x->bitmap_bytes ||
        fsync(x->map_fd)) {
        snprintf(err, 256, "%s: cannot write: %s", x->map_path, strerror(errno));
        return OTA_EIO;
    }
    return ota_fsync_parent(x->map_path, err);
}

/* Resume from an existing map when it belongs to this payload. */
static bool map_load(ota_xfer *x)
{
    uint8_t hdr[MAP_HEADER_BYTES];
    if (pread(x->map_fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr ||
        memcmp(hdr, MAP_MAGIC, 4) || get_u32(hdr + 4) != x->n_chunks ||
        memcmp(hdr + 8, x->hash, OTA_XFER_HASH_BYTES))
        return false;
    if (pread(x->map_fd, x->bitmap, x->bitmap_bytes, MAP_HEADER_BYTES) !=
        (ssize_t)x->bitmap_bytes)
        return false;
    x->n_received = 0;
    for (uint32_t i = 0; i < x->n_chunks; i++)
        x->n_received += (x->bitmap[i / 8] >> (i % 8)) & 1;
    /* Bits past the last chunk must be clear. */
    for (uint32_t i = x->n_chunks; i < x->bitmap_bytes * 8; i++)
        if ((x->bitmap[i / 8] >> (i % 8)) & 1)
            return false;
    return true;
}

int ota_xfer_open(const char *dir, const ota_xfer_spec *spec, ota_xfer **out, char err[256])
{
    *out = NULL;
    int rc = check_spec(spec, err);
    if (rc)
        return rc;
    if (mkdir(dir, 0700) && errno != EEXIST) {
        snprintf(err, 256, "%s: cannot create: %s", dir, strerror(errno));
        return OTA_EIO;
    }
    ota_xfer *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, 256, "ota transfer: out of memory");
        return OTA_ENOMEM;
    }
    x->part_fd = x->map_fd = -1;
    ota_xfer_spec_id(spec, x->id);
    x->size_bytes = spec->size_bytes;
    memcpy(x->hash, spec->hash, OTA_XFER_HASH_BYTES);
    x->chunk_size_bytes = spec->chunk_size_bytes;
    x->n_chunks = spec->n_chunks;
    x->bitmap_bytes = (x->n_chunks + 7) / 8;
    x->chunk_hashes = malloc((size_t)x->n_chunks * OTA_XFER_HASH_BYTES);
    x->bitmap = calloc(x->bitmap_bytes, 1);
    if (!x->chunk_hashes || !x->bitmap) {
        snprintf(err, 256, "ota transfer: out of memory for %" PRIu32 " chunks", x->n_chunks);
        rc = OTA_ENOMEM;
        goto fail;
    }
    memcpy(x->chunk_hashes, spec->chunk_hashes, (size_t)x->n_chunks * OTA_XFER_HASH_BYTES);
    char idhex[2 * OTA_XFER_ID_BYTES + 1];
    ota_xfer_id_hex(x->id, idhex);
    snprintf(x->part_path, sizeof x->part_path, "%s/%s.part", dir, idhex);
    snprintf(x->map_path, sizeof x->map_path, "%s/%s.map", dir, idhex);
    x->part_fd = open(x->part_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    x->map_fd = open(x->map_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (x->part_fd < 0 || x->map_fd < 0) {
        snprintf(err, 256, "%s: cannot open: %s", x->part_fd < 0 ? x->part_path : x->map_path,
                 strerror(errno));
        rc = OTA_EIO;
        goto fail;
    }
    if (!map_load(x)) {
        /* Nothing usable to resume: old bytes in the part file must not
         * survive into the new transfer. */
        if (ftruncate(x->part_fd, 0)) {
            snprintf(err, 256, "%s: cannot truncate: %s", x->part_path, strerror(errno));
            rc = OTA_EIO;
            goto fail;
        }
        if ((rc = map_create(x, err)))
            goto fail;
    }
    *out = x;
    return OTA_OK;
fail:
    ota_xfer_close(x);
    return rc;
}

void ota_xfer_close(ota_xfer *x)
{
    if (!x)
        return;
    if (x->part_fd >= 0)
        close(x->part_fd);
    if (x->map_fd >= 0)
        close(x->map_fd);
    free(x->chunk_hashes);
    free(x->bitmap);
    free(x);
}

void ota_xfer_discard(ota_xfer *x)
{
    if (!x)
        return;
    unlink(x->part_path);
    unlink(x->map_path);
    ota_xfer_close(x);
}

bool ota_xfer_has_chunk(const ota_xfer *x, uint32_t index)
{
    return index < x->n_chunks && ((x->bitmap[index / 8] >> (index % 8)) & 1);
}

int ota_xfer_put(ota_xfer *x, uint32_t index, const void *data, size_t len, char err[256])
{
    if (index >= x->n_chunks) {
        snprintf(err, 256, "ota chunk %" PRIu32 ": index past the last chunk (%" PRIu32 ")",
                 index, x->n_chunks - 1);
        return OTA_ECHUNK;
    }
    uint64_t off = (uint64_t)index * x->chunk_size_bytes;
    uint64_t want = x->size_bytes - off < x->chunk_size_bytes ? x->size_bytes - off
                                                              : x->chunk_size_bytes;
    if (len != want) {
        snprintf(err, 256, "ota chunk %" PRIu32 ": %zu bytes, expected %" PRIu64, index, len,
                 want);
        return OTA_ECHUNK;
    }
    uint8_t h[OTA_XFER_HASH_BYTES];
    crypto_generichash(h, sizeof h, data, len, NULL, 0);
    if (sodium_memcmp(h, x->chunk_hashes[index], sizeof h)) {
        snprintf(err, 256, "ota chunk %" PRIu32 ": hash does not match the manifest (corrupted)",
                 index);
        return OTA_ECHUNK;
    }
    if (ota_xfer_has_chunk(x, index))
        return OTA_OK;
    const uint8_t *p = data;
    size_t left = len;
    uint64_t at = off;
    while (left) {
        ssize_t n = pwrite(x->part_fd, p, left, (off_t)at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, 256, "%s: write of chunk %" PRIu32 " failed: %s", x->part_path, index,
                     strerror(errno));
            return OTA_EIO;
        }
        p += n;
        at += (uint64_t)n;
        left -= (size_t)n;
    }
    if (fdatasync(x->part_fd)) {
        snprintf(err, 256, "%s: fdatasync: %s", x->part_path, strerror(errno));
        return OTA_EIO;
    }
    uint8_t byte = x->bitmap[index / 8] | (uint8_t)(1u << (index % 8));
    if (pwrite(x->map_fd, &byte, 1, (off_t)(MAP_HEADER_BYTES + index / 8)) != 1 ||
        fdatasync(x->map_fd)) {
        snprintf(err, 256, "%s: cannot record chunk %" PRIu32 ": %s", x->map_path, index,
                 strerror(errno));
        return OTA_EIO;
    }
    x->bitmap[index / 8] = byte;
    x->n_received++;
    return OTA_OK;
}

int ota_xfer_put_msg(ota_xfer *x, const void *msg, size_t len, char err[256])
{
    uint8_t id[OTA_XFER_ID_BYTES];
    uint32_t index;
    const uint8_t *data;
    size_t n;
    int rc = ota_xfer_msg_parse(msg, len, id, &index, &data, &n, err);
    if (rc)
        return rc;
    if (memcmp(id, x->id, OTA_XFER_ID_BYTES)) {
        char a[2 * OTA_XFER_ID_BYTES + 1], b[2 * OTA_XFER_ID_BYTES + 1];
        ota_xfer_id_hex(id, a);
        ota_xfer_id_hex(x->id, b);
        snprintf(err, 256, "ota chunk %" PRIu32 ": transfer %s, expected %s", index, a, b);
        return OTA_EXFERID;
    }
    return ota_xfer_put(x, index, data, n, err);
}

uint32_t ota_xfer_n_received(const ota_xfer *x)
{
    return x->n_received;
}

uint32_t ota_xfer_n_chunks(const ota_xfer *x)
{
    return x->n_chunks;
}

bool ota_xfer_complete(const ota_xfer *x)
{
    return x->n_received == x->n_chunks;
}

const char *ota_xfer_path(const ota_xfer *x)
{
    return x->part_path;
}

int ota_xfer_verify(ota_xfer *x, char err[256])
{
    if (!ota_xfer_complete(x)) {
        snprintf(err, 256, "%s: %" PRIu32 " of %" PRIu32 " chunks received", x->part_path,
                 x->n_received, x->n_chunks);
        return OTA_EINCOMPLETE;
    }
    uint8_t h[OTA_XFER_HASH_BYTES];
    uint64_t size = 0;
    int rc = ota_file_hash(x->part_path, h, &size, err);
    if (rc)
        return rc;
    if (size != x->size_bytes || sodium_memcmp(h, x->hash, sizeof h)) {
        snprintf(err, 256, "%s: the assembled payload (%" PRIu64 " bytes) does not hash to the "
                 "manifest's payload hash; starting over", x->part_path, size);
        char e2[256];
        if (ftruncate(x->part_fd, 0) || map_create(x, e2))
            fprintf(stderr, "ota transfer: reset: %s\n", x->map_path);
        return OTA_ECHUNK;
    }
    return OTA_OK;
}
