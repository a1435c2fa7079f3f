/*
 * delta.c - tensor-aware model deltas: the diff, the patch and the format's
 * parsers (format and ownership: delta.h).
 *
 * Invariants: every length read from a delta is checked against the bytes
 * that are there before it is used (ota_delta_check walks the whole delta
 * before a patch writes its first byte); anonymous memory is a fixed set of
 * piece-sized buffers and one zstd context, whatever the model size, since
 * the model files and the delta are mapped and tensors are processed in
 * pieces; a patch never leaves out_path half-written, and renames nothing
 * into place before the base's hash (computed by a second thread while the
 * output is written) matched the delta's.
 */
#include "delta.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <zstd.h>

#include "gguf.h"
#include "quant.h"

#define NO_INDEX 0xFFFFFFFFu
#define DEFAULT_LEVEL 9
/* zstd windows: pieces and their references stay below 2^27 bytes. */
#define WINDOW_LOG_MAX 27
#define META_WINDOW_LOG 22
#define META_CHUNK_BYTES (UINT32_C(1) << 20)

static void set_err(char err[256], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char err[256], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
}

const char *ota_delta_kind_name(ota_delta_kind k)
{
    switch (k) {
    case OTA_DELTA_SAME: return "same";
    case OTA_DELTA_PATCH: return "patch";
    case OTA_DELTA_NEW: return "new";
    case OTA_DELTA_QDIFF: return "qdiff";
    case OTA_DELTA_END: return "end";
    }
    return "?";
}

/* ---- little-endian fields --------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- hashing and files -------------------------------------------------------- */

void ota_hash_hex(const uint8_t hash[OTA_DELTA_HASH_BYTES], char out[2 * OTA_DELTA_HASH_BYTES + 1])
{
    sodium_bin2hex(out, 2 * OTA_DELTA_HASH_BYTES + 1, hash, OTA_DELTA_HASH_BYTES);
}

/* libsodium's update takes any length; feed it in bounded steps anyway so
 * that a mapped file is read sequentially. */
static void hash_update(crypto_generichash_state *st, const uint8_t *p, uint64_t n)
{
    while (n > 0) {
        size_t step = n > (UINT64_C(1) << 24) ? (size_t)1 << 24 : (size_t)n;
        crypto_generichash_update(st, p, step);
        p += step;
        n -= step;
    }
}

static void hash_buffer(const uint8_t *p, uint64_t n, uint8_t out[OTA_DELTA_HASH_BYTES])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, OTA_DELTA_HASH_BYTES);
    hash_update(&st, p, n);
    crypto_generichash_final(&st, out, OTA_DELTA_HASH_BYTES);
}

typedef struct mapped {
    const uint8_t *p; /* NULL for an empty file */
    size_t n;
} mapped;

/* Map path read-only; with keep_fd the open descriptor is handed to the
 * caller (who closes it), else closed here. */
static int map_file_fd(const char *path, mapped *m, int *keep_fd, char err[256])
{
    m->p = NULL;
    m->n = 0;
    if (keep_fd)
        *keep_fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, "%s: cannot open: %s", path, strerror(errno));
        return OTA_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        set_err(err, "%s: not a regular file", path);
        close(fd);
        return OTA_EIO;
    }
    if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            set_err(err, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return OTA_EIO;
        }
        madvise(p, (size_t)sb.st_size, MADV_SEQUENTIAL);
        m->p = p;
        m->n = (size_t)sb.st_size;
    }
    if (keep_fd)
        *keep_fd = fd;
    else
        close(fd);
    return OTA_OK;
}

static int map_file(const char *path, mapped *m, char err[256])
{
    return map_file_fd(path, m, NULL, err);
}

static void unmap_file(mapped *m)
{
    if (m->p)
        munmap((void *)m->p, m->n);
    m->p = NULL;
    m->n = 0;
}

int ota_file_hash(const char *path, uint8_t out[OTA_DELTA_HASH_BYTES], uint64_t *size_bytes,
                  char err[256])
{
    if (sodium_init() < 0) {
        set_err(err, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    mapped m;
    int rc = map_file(path, &m, err);
    if (rc)
        return rc;
    hash_buffer(m.p, m.n, out);
    if (size_bytes)
        *size_bytes = m.n;
    unmap_file(&m);
    return OTA_OK;
}

static int write_all(int fd, const void *buf, size_t n, const char *path, char err[256])
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            set_err(err, "%s: write failed: %s", path, w < 0 ? strerror(errno) : "no progress");
            return OTA_EIO;
        }
        p += w;
        n -= (size_t)w;
    }
    return OTA_OK;
}

/* fsync the directory holding path, so that a rename into it is durable. */
static int fsync_dir_of(const char *path, char err[256])
{
    char *copy = strdup(path);
    if (!copy) {
        set_err(err, "out of memory");
        return OTA_ENOMEM;
    }
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = OTA_OK;
    if (fd < 0 || fsync(fd) != 0) {
        set_err(err, "%s: cannot sync directory: %s", dir, strerror(errno));
        rc = OTA_EIO;
    }
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

static char *tmp_path_of(const char *path)
{
    size_t n = strlen(path);
    char *t = malloc(n + 5);
    if (t) {
        memcpy(t, path, n);
        memcpy(t + n, ".tmp", 5);
    }
    return t;
}

/* ---- the block-aware transform -------------------------------------------------- */

/* Bytes per block of the types QDIFF knows, 0 for the others. Both have an
 * fp16 scale first and then the quants (ggml block_q4_0, block_q8_0). */
static uint32_t qdiff_block_bytes(uint32_t type)
{
    if (type == QT_Q4_0)
        return 2 + 16;
    if (type == QT_Q8_0)
        return 2 + 32;
    return 0;
}

/* The base block's quants rescaled to the target block's scale: what the
 * target's quants most likely are when the weights moved only a little
 * (the scale of a block follows its largest weight, so a fine-tune changes
 * it slightly and shifts every quant of the block with it). Plain integer
 * arithmetic on the double ratio, one multiply and one rounding, so that
 * every machine predicts the same values. */
static void qdiff_predict(uint32_t type, const uint8_t *b, uint16_t td_bits, uint8_t *pred)
{
    double bd = qt_fp16_to_fp32(get_u16(b)), td = qt_fp16_to_fp32(td_bits);
    double ratio = bd / td;
    bool plain = !(td != 0) || !isfinite(ratio) || !isfinite(bd) || fabs(ratio) > 64;
    if (type == QT_Q4_0) {
        /* 16 possible quants: predict each once. */
        uint8_t map[16];
        for (int v = 0; v < 16; v++) {
            int p = v;
            if (!plain) {
                p = (int)lrint((double)(v - 8) * ratio) + 8;
                p = p < 0 ? 0 : p > 15 ? 15 : p;
            }
            map[v] = (uint8_t)p;
        }
        for (int j = 0; j < 16; j++)
            pred[j] = (uint8_t)(map[b[2 + j] & 0x0F] | map[b[2 + j] >> 4] << 4);
    } else {
        for (int j = 0; j < 32; j++) {
            int v = (int8_t)b[2 + j];
            if (!plain) {
                v = (int)lrint((double)v * ratio);
                v = v < -128 ? -128 : v > 127 ? 127 : v;
            }
            pred[j] = (uint8_t)(int8_t)v;
        }
    }
}

/* target blocks -> differences from the prediction (layout: delta.h). */
static void qdiff_forward(uint32_t type, const uint8_t *tgt, const uint8_t *base, size_t n_bytes,
                          uint8_t *out)
{
    uint32_t bb = qdiff_block_bytes(type);
    size_t nb = n_bytes / bb, qb = bb - 2;
    uint8_t *lo = out, *hi = out + nb, *q = out + 2 * nb;
    uint8_t pred[32];
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *t = tgt + i * bb, *b = base + i * bb;
        uint16_t d = (uint16_t)(get_u16(t) - get_u16(b));
        lo[i] = (uint8_t)d;
        hi[i] = (uint8_t)(d >> 8);
        qdiff_predict(type, b, get_u16(t), pred);
        if (type == QT_Q4_0) {
            for (size_t j = 0; j < qb; j++) {
                uint8_t tv = t[2 + j], bv = pred[j];
                q[j] = (uint8_t)(((tv - bv) & 0x0F) | (((tv >> 4) - (bv >> 4)) & 0x0F) << 4);
            }
        } else {
            for (size_t j = 0; j < qb; j++)
                q[j] = (uint8_t)(t[2 + j] - pred[j]);
        }
        q += qb;
    }
}

static void qdiff_inverse(uint32_t type, const uint8_t *diff, const uint8_t *base, size_t n_bytes,
                          uint8_t *out)
{
    uint32_t bb = qdiff_block_bytes(type);
    size_t nb = n_bytes / bb, qb = bb - 2;
    const uint8_t *lo = diff, *hi = diff + nb, *q = diff + 2 * nb;
    uint8_t pred[32];
    for (size_t i = 0; i < nb; i++) {
        uint8_t *t = out + i * bb;
        const uint8_t *b = base + i * bb;
        uint16_t td = (uint16_t)(get_u16(b) + (uint16_t)(lo[i] | hi[i] << 8));
        put_u16(t, td);
        qdiff_predict(type, b, td, pred);
        if (type == QT_Q4_0) {
            for (size_t j = 0; j < qb; j++) {
                uint8_t bv = pred[j], dv = q[j];
                t[2 + j] = (uint8_t)(((bv + dv) & 0x0F) | (((bv >> 4) + (dv >> 4)) & 0x0F) << 4);
            }
        } else {
            for (size_t j = 0; j < qb; j++)
                t[2 + j] = (uint8_t)(pred[j] + q[j]);
        }
        q += qb;
    }
}

/* The base bytes piece k of a PATCH record is compressed against. */
static void patch_prefix(uint64_t base_bytes, uint32_t piece_bytes, uint64_t k, uint64_t *lo,
                         uint64_t *hi)
{
    uint64_t a = k > 0 ? (k - 1) * piece_bytes : 0;
    uint64_t b = (k + 2) * piece_bytes;
    if (a > base_bytes)
        a = base_bytes;
    if (b > base_bytes)
        b = base_bytes;
    *lo = a;
    *hi = b;
}

static uint64_t piece_count(uint64_t size, uint32_t piece_bytes)
{
    return piece_bytes ? (size + piece_bytes - 1) / piece_bytes : 0;
}

/* ---- parsers ------------------------------------------------------------------ */

int ota_delta_header_parse(const void *buf, size_t len, const char *name, ota_delta_header *out,
                           char err[256])
{
    const uint8_t *p = buf;
    if (len < OTA_DELTA_HEADER_BYTES) {
        set_err(err, "%s: %zu bytes, shorter than a delta header (%d bytes)", name, len,
                OTA_DELTA_HEADER_BYTES);
        return OTA_EFORMAT;
    }
    if (memcmp(p, OTA_DELTA_MAGIC, 8) != 0) {
        set_err(err, "%s: not an outpost model delta (no \"%s\" magic)", name, OTA_DELTA_MAGIC);
        return OTA_EFORMAT;
    }
    uint8_t h[OTA_DELTA_HASH_BYTES];
    hash_buffer(p, 120, h);
    if (sodium_memcmp(h, p + 120, OTA_DELTA_HASH_BYTES) != 0) {
        set_err(err, "%s: header hash mismatch (the delta is damaged)", name);
        return OTA_EFORMAT;
    }
    out->version = get_u32(p + 8);
    if (out->version != OTA_DELTA_VERSION) {
        set_err(err, "%s: format version %u, expected %u", name, out->version, OTA_DELTA_VERSION);
        return OTA_EFORMAT;
    }
    out->n_records = get_u32(p + 12);
    out->base_bytes = get_u64(p + 16);
    out->target_bytes = get_u64(p + 24);
    memcpy(out->base_hash, p + 32, OTA_DELTA_HASH_BYTES);
    memcpy(out->target_hash, p + 64, OTA_DELTA_HASH_BYTES);
    out->meta_bytes = get_u64(p + 96);
    out->meta_payload_bytes = get_u64(p + 104);
    if (get_u32(p + 112) != 0 || get_u32(p + 116) != 0) {
        set_err(err, "%s: header flags 0x%x: unknown (expected 0)", name, get_u32(p + 112));
        return OTA_EFORMAT;
    }
    if (out->meta_bytes > out->target_bytes) {
        set_err(err, "%s: meta bytes %llu exceed the target size %llu", name,
                (unsigned long long)out->meta_bytes, (unsigned long long)out->target_bytes);
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

static void header_format(const ota_delta_header *h, uint8_t p[OTA_DELTA_HEADER_BYTES])
{
    memset(p, 0, OTA_DELTA_HEADER_BYTES);
    memcpy(p, OTA_DELTA_MAGIC, 8);
    put_u32(p + 8, OTA_DELTA_VERSION);
    put_u32(p + 12, h->n_records);
    put_u64(p + 16, h->base_bytes);
    put_u64(p + 24, h->target_bytes);
    memcpy(p + 32, h->base_hash, OTA_DELTA_HASH_BYTES);
    memcpy(p + 64, h->target_hash, OTA_DELTA_HASH_BYTES);
    put_u64(p + 96, h->meta_bytes);
    put_u64(p + 104, h->meta_payload_bytes);
    hash_buffer(p, 120, p + 120);
}

int ota_delta_record_parse(const void *buf, size_t len, const char *name, ota_delta_record *r,
                           char err[256])
{
    const uint8_t *p = buf;
    if (len < OTA_DELTA_RECORD_BYTES) {
        set_err(err, "%s: truncated record header (%zu of %d bytes)", name, len,
                OTA_DELTA_RECORD_BYTES);
        return OTA_EFORMAT;
    }
    unsigned kind = p[0];
    if (kind < OTA_DELTA_SAME || kind > OTA_DELTA_END) {
        set_err(err, "%s: record kind %u unknown (expected 1..5)", name, kind);
        return OTA_EFORMAT;
    }
    r->kind = (ota_delta_kind)kind;
    if (p[1] > 1 || get_u16(p + 2) != 0) {
        set_err(err, "%s: record gap mode %u / reserved %u: expected 0 or 1 / 0", name, p[1],
                get_u16(p + 2));
        return OTA_EFORMAT;
    }
    r->gap_raw = p[1] == 1;
    r->qt_type = get_u32(p + 4);
    r->piece_bytes = get_u32(p + 8);
    r->base_index = get_u32(p + 12);
    r->gap_bytes = get_u64(p + 16);
    r->size_bytes = get_u64(p + 24);
    r->base_offset = get_u64(p + 32);
    r->base_bytes = get_u64(p + 40);
    r->payload_bytes = get_u64(p + 48);
    memcpy(r->hash, p + 56, OTA_DELTA_HASH_BYTES);
    const char *k = ota_delta_kind_name(r->kind);
    if (r->gap_bytes > OTA_DELTA_GAP_MAX) {
        set_err(err, "%s: %s record: gap of %llu bytes (at most %llu)", name, k,
                (unsigned long long)r->gap_bytes, (unsigned long long)OTA_DELTA_GAP_MAX);
        return OTA_EFORMAT;
    }
    uint64_t gap_payload = r->gap_raw ? r->gap_bytes : 0;
    if (r->payload_bytes < gap_payload) {
        set_err(err, "%s: %s record: payload %llu bytes, less than its raw gap %llu", name, k,
                (unsigned long long)r->payload_bytes, (unsigned long long)gap_payload);
        return OTA_EFORMAT;
    }
    bool pieces = r->kind == OTA_DELTA_PATCH || r->kind == OTA_DELTA_NEW ||
                  r->kind == OTA_DELTA_QDIFF;
    if (pieces && (r->piece_bytes == 0 || r->piece_bytes > OTA_DELTA_PIECE_MAX)) {
        set_err(err, "%s: %s record: piece size %u (expected 1..%u)", name, k, r->piece_bytes,
                OTA_DELTA_PIECE_MAX);
        return OTA_EFORMAT;
    }
    if (!pieces && (r->piece_bytes != 0 || r->payload_bytes != gap_payload)) {
        set_err(err, "%s: %s record: piece size %u, payload %llu: a %s record has no pieces",
                name, k, r->piece_bytes, (unsigned long long)r->payload_bytes, k);
        return OTA_EFORMAT;
    }
    bool has_base = r->kind == OTA_DELTA_SAME || r->kind == OTA_DELTA_PATCH ||
                    r->kind == OTA_DELTA_QDIFF;
    if (!has_base && (r->base_bytes != 0 || r->base_offset != 0 || r->base_index != NO_INDEX)) {
        set_err(err, "%s: %s record names a base tensor", name, k);
        return OTA_EFORMAT;
    }
    if (r->base_offset > UINT64_MAX - r->base_bytes) {
        set_err(err, "%s: %s record: base range overflows", name, k);
        return OTA_EFORMAT;
    }
    if ((r->kind == OTA_DELTA_SAME || r->kind == OTA_DELTA_QDIFF) &&
        r->base_bytes != r->size_bytes) {
        set_err(err, "%s: %s record: base tensor %llu bytes, target %llu: sizes must match",
                name, k, (unsigned long long)r->base_bytes, (unsigned long long)r->size_bytes);
        return OTA_EFORMAT;
    }
    if (r->kind == OTA_DELTA_QDIFF) {
        uint32_t bb = qdiff_block_bytes(r->qt_type);
        if (bb == 0 || r->piece_bytes % bb != 0 || r->size_bytes % bb != 0) {
            set_err(err, "%s: qdiff record: type %u, piece %u, size %llu: not whole Q4_0/Q8_0 blocks",
                    name, r->qt_type, r->piece_bytes, (unsigned long long)r->size_bytes);
            return OTA_EFORMAT;
        }
    }
    if (r->kind == OTA_DELTA_END && r->size_bytes != 0) {
        set_err(err, "%s: end record with %llu tensor bytes", name,
                (unsigned long long)r->size_bytes);
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

static void record_format(const ota_delta_record *r, uint8_t p[OTA_DELTA_RECORD_BYTES])
{
    memset(p, 0, OTA_DELTA_RECORD_BYTES);
    p[0] = (uint8_t)r->kind;
    p[1] = r->gap_raw ? 1 : 0;
    put_u32(p + 4, r->qt_type);
    put_u32(p + 8, r->piece_bytes);
    put_u32(p + 12, r->base_index);
    put_u64(p + 16, r->gap_bytes);
    put_u64(p + 24, r->size_bytes);
    put_u64(p + 32, r->base_offset);
    put_u64(p + 40, r->base_bytes);
    put_u64(p + 48, r->payload_bytes);
    memcpy(p + 56, r->hash, OTA_DELTA_HASH_BYTES);
}

/* A zstd frame of exactly `len` bytes whose header promises `raw` bytes. */
static int check_frame(const uint8_t *p, size_t len, uint64_t raw, const char *name,
                       const char *what, char err[256])
{
    size_t fl = ZSTD_findFrameCompressedSize(p, len);
    unsigned long long cs = ZSTD_getFrameContentSize(p, len);
    if (ZSTD_isError(fl) || fl != len || cs != raw) {
        set_err(err, "%s: %s: not one zstd frame of %llu bytes (damaged delta)", name, what,
                (unsigned long long)raw);
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

int ota_delta_check(const void *buf, size_t len, const char *name, ota_delta_header *out,
                    char err[256])
{
    const uint8_t *p = buf;
    ota_delta_header h;
    int rc = ota_delta_header_parse(buf, len, name, &h, err);
    if (rc)
        return rc;
    size_t pos = OTA_DELTA_HEADER_BYTES;
    if (h.meta_payload_bytes > len - pos) {
        set_err(err, "%s: truncated: meta payload of %llu bytes, %zu left", name,
                (unsigned long long)h.meta_payload_bytes, len - pos);
        return OTA_EFORMAT;
    }
    if ((rc = check_frame(p + pos, (size_t)h.meta_payload_bytes, h.meta_bytes, name, "meta", err)))
        return rc;
    pos += (size_t)h.meta_payload_bytes;
    uint64_t target_pos = h.meta_bytes;
    for (uint64_t i = 0;; i++) {
        ota_delta_record r;
        char rname[200];
        snprintf(rname, sizeof rname, "%s: record %llu", name, (unsigned long long)i);
        if ((rc = ota_delta_record_parse(p + pos, len - pos, rname, &r, err)))
            return rc;
        pos += OTA_DELTA_RECORD_BYTES;
        if ((r.kind == OTA_DELTA_END) != (i == h.n_records)) {
            set_err(err, "%s: %s record where the header promises %s", rname,
                    ota_delta_kind_name(r.kind),
                    i == h.n_records ? "the end record" : "a tensor record");
            return OTA_EFORMAT;
        }
        if (r.payload_bytes > len - pos) {
            set_err(err, "%s: truncated: payload of %llu bytes, %zu left", rname,
                    (unsigned long long)r.payload_bytes, len - pos);
            return OTA_EFORMAT;
        }
        if (r.base_offset + r.base_bytes > h.base_bytes) {
            set_err(err, "%s: base range %llu+%llu past the base's %llu bytes", rname,
                    (unsigned long long)r.base_offset, (unsigned long long)r.base_bytes,
                    (unsigned long long)h.base_bytes);
            return OTA_EFORMAT;
        }
        if (r.gap_bytes > h.target_bytes - target_pos ||
            r.size_bytes > h.target_bytes - target_pos - r.gap_bytes) {
            set_err(err, "%s: gap %llu + tensor %llu bytes run past the target's %llu", rname,
                    (unsigned long long)r.gap_bytes, (unsigned long long)r.size_bytes,
                    (unsigned long long)h.target_bytes);
            return OTA_EFORMAT;
        }
        target_pos += r.gap_bytes + r.size_bytes;
        size_t end = pos + (size_t)r.payload_bytes;
        if (r.gap_raw)
            pos += (size_t)r.gap_bytes;
        uint64_t np = piece_count(r.size_bytes, r.piece_bytes);
        for (uint64_t k = 0; k < np; k++) {
            if (end - pos < 4) {
                set_err(err, "%s: piece %llu: truncated length", rname, (unsigned long long)k);
                return OTA_EFORMAT;
            }
            uint32_t fl = get_u32(p + pos);
            pos += 4;
            if (fl > end - pos) {
                set_err(err, "%s: piece %llu: %u bytes, %zu left in the record", rname,
                        (unsigned long long)k, fl, end - pos);
                return OTA_EFORMAT;
            }
            uint64_t raw = r.size_bytes - k * r.piece_bytes;
            if (raw > r.piece_bytes)
                raw = r.piece_bytes;
            char what[64];
            snprintf(what, sizeof what, "piece %llu", (unsigned long long)k);
            if ((rc = check_frame(p + pos, fl, raw, rname, what, err)))
                return rc;
            pos += fl;
        }
        if (pos != end) {
            set_err(err, "%s: payload %llu bytes, its pieces use %llu", rname,
                    (unsigned long long)r.payload_bytes,
                    (unsigned long long)(r.payload_bytes - (end - pos)));
            return OTA_EFORMAT;
        }
        if (r.kind == OTA_DELTA_END)
            break;
    }
    if (pos != len) {
        set_err(err, "%s: %zu bytes after the end record", name, len - pos);
        return OTA_EFORMAT;
    }
    if (target_pos != h.target_bytes) {
        set_err(err, "%s: records rebuild %llu bytes, the target has %llu", name,
                (unsigned long long)target_pos, (unsigned long long)h.target_bytes);
        return OTA_EFORMAT;
    }
    if (out)
        *out = h;
    return OTA_OK;
}

int ota_delta_read_header(const char *path, ota_delta_header *out, char err[256])
{
    if (sodium_init() < 0) {
        set_err(err, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    uint8_t buf[OTA_DELTA_HEADER_BYTES];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, "%s: cannot open: %s", path, strerror(errno));
        return OTA_EIO;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0) {
        set_err(err, "%s: read failed: %s", path, strerror(errno));
        return OTA_EIO;
    }
    return ota_delta_header_parse(buf, (size_t)n, path, out, err);
}

/* ---- diff --------------------------------------------------------------------- */

typedef struct differ {
    const char *out_path;
    int fd;
    uint64_t out_pos;
    ZSTD_CCtx *cc;
    int level;
    uint8_t *tbuf, *obuf, *obuf2; /* transform; two compressed outputs */
    size_t obuf_cap;
    char *err;
} differ;

static int out_write(differ *d, const void *p, size_t n)
{
    int rc = write_all(d->fd, p, n, d->out_path, d->err);
    if (!rc)
        d->out_pos += n;
    return rc;
}

static unsigned ceil_log2(uint64_t n)
{
    unsigned l = 0;
    while (l < 63 && (UINT64_C(1) << l) < n)
        l++;
    return l;
}

/* Compress src (with an optional reference prefix) into dst; its size or 0
 * after an error (err filled). */
static size_t compress_piece(differ *d, const uint8_t *prefix, size_t prefix_n, const uint8_t *src,
                             size_t n, uint8_t *dst)
{
    ZSTD_CCtx_reset(d->cc, ZSTD_reset_session_and_parameters);
    unsigned wlog = ceil_log2((uint64_t)prefix_n + n);
    if (wlog < 10)
        wlog = 10;
    if (wlog > WINDOW_LOG_MAX)
        wlog = WINDOW_LOG_MAX;
    size_t r = ZSTD_CCtx_setParameter(d->cc, ZSTD_c_compressionLevel, d->level);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setParameter(d->cc, ZSTD_c_windowLog, (int)wlog);
    if (!ZSTD_isError(r) && prefix_n > 0)
        r = ZSTD_CCtx_setParameter(d->cc, ZSTD_c_enableLongDistanceMatching, 1);
    if (!ZSTD_isError(r) && prefix_n > 0)
        r = ZSTD_CCtx_refPrefix(d->cc, prefix, prefix_n);
    if (!ZSTD_isError(r))
        r = ZSTD_compress2(d->cc, dst, d->obuf_cap, src, n);
    if (ZSTD_isError(r)) {
        set_err(d->err, "%s: zstd: %s", d->out_path, ZSTD_getErrorName(r));
        return 0;
    }
    return r;
}

static int write_piece(differ *d, const uint8_t *frame, size_t n, uint64_t *payload)
{
    uint8_t len[4];
    put_u32(len, (uint32_t)n);
    int rc = out_write(d, len, 4);
    if (!rc)
        rc = out_write(d, frame, n);
    *payload += 4 + n;
    return rc;
}

/* Code one piece of a record of the given kind into dst; its size or 0. */
static size_t code_piece(differ *d, ota_delta_kind kind, uint32_t type, const uint8_t *tgt,
                         const uint8_t *base, uint64_t base_bytes, uint32_t pb, uint64_t k,
                         size_t n, uint8_t *dst)
{
    if (kind == OTA_DELTA_NEW)
        return compress_piece(d, NULL, 0, tgt + k * pb, n, dst);
    if (kind == OTA_DELTA_QDIFF) {
        qdiff_forward(type, tgt + k * pb, base + k * pb, n, d->tbuf);
        return compress_piece(d, NULL, 0, d->tbuf, n, dst);
    }
    uint64_t lo, hi;
    patch_prefix(base_bytes, pb, k, &lo, &hi);
    return compress_piece(d, base + lo, (size_t)(hi - lo), tgt + k * pb, n, dst);
}

static bool same_shape(const gguf_tensor *a, const gguf_tensor *b)
{
    if (a->type != b->type || a->n_dims != b->n_dims || a->size_bytes != b->size_bytes)
        return false;
    for (int i = 0; i < GGUF_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i])
            return false;
    return true;
}

static int cmp_offset(const void *a, const void *b)
{
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static bool all_zero(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* One target tensor, or the END record when t is NULL. *tgt_pos: the target
 * bytes the delta covers so far. */
static int diff_record(differ *d, const mapped *bm, const gguf *gb, const mapped *tm,
                       uint64_t data_off, const gguf_tensor *t, uint64_t *tgt_pos,
                       const ota_delta_opts *o, const char *target_path, ota_delta_stats *st)
{
    ota_delta_record r;
    memset(&r, 0, sizeof r);
    r.kind = t ? OTA_DELTA_NEW : OTA_DELTA_END;
    r.base_index = NO_INDEX;
    uint64_t start = t ? data_off + t->offset : tm->n;
    if (start < *tgt_pos || start - *tgt_pos > OTA_DELTA_GAP_MAX) {
        set_err(d->err, "%s: %s: %llu bytes of padding before it (at most %llu supported)",
                target_path, t ? t->name : "end of the tensor data",
                (unsigned long long)(start - *tgt_pos), (unsigned long long)OTA_DELTA_GAP_MAX);
        return OTA_EFORMAT;
    }
    r.gap_bytes = start - *tgt_pos;
    r.gap_raw = !all_zero(tm->p + *tgt_pos, r.gap_bytes);
    const uint8_t *tgt = tm->p + start, *base = NULL;
    uint32_t pb = 0;
    if (t) {
        r.size_bytes = t->size_bytes;
        r.qt_type = t->type;
        hash_buffer(tgt, r.size_bytes, r.hash);
        size_t nb = gguf_tensor_count(gb);
        const gguf_tensor *bt = NULL;
        for (size_t i = 0; i < nb && !bt; i++) {
            if (strcmp(gguf_tensor_at(gb, i)->name, t->name) == 0) {
                bt = gguf_tensor_at(gb, i);
                r.base_index = (uint32_t)i;
            }
        }
        if (bt) {
            r.base_offset = gguf_data_offset(gb) + bt->offset;
            r.base_bytes = bt->size_bytes;
            base = bm->p + r.base_offset;
            if (same_shape(bt, t) && memcmp(base, tgt, t->size_bytes) == 0)
                r.kind = OTA_DELTA_SAME;
            else if (!o->no_patch)
                r.kind = OTA_DELTA_PATCH;
        }
        if (r.kind == OTA_DELTA_NEW) {
            r.base_index = NO_INDEX;
            r.base_offset = r.base_bytes = 0;
            base = NULL;
        }
        if (r.kind == OTA_DELTA_PATCH || r.kind == OTA_DELTA_NEW) {
            pb = o->piece_bytes;
            uint32_t bb = qdiff_block_bytes(t->type);
            if (bb && pb >= bb)
                pb = pb / bb * bb;
            r.piece_bytes = pb;
        }
    }
    uint64_t rec_pos = d->out_pos;
    uint8_t hdr[OTA_DELTA_RECORD_BYTES];
    memset(hdr, 0, sizeof hdr);
    int rc = out_write(d, hdr, sizeof hdr);
    if (!rc && r.gap_raw) {
        rc = out_write(d, tm->p + *tgt_pos, (size_t)r.gap_bytes);
        r.payload_bytes += r.gap_bytes;
    }
    uint64_t np = piece_count(r.size_bytes, pb);
    for (uint64_t k = 0; !rc && k < np; k++) {
        size_t n = (size_t)(r.size_bytes - k * pb < pb ? r.size_bytes - k * pb : pb);
        size_t c = code_piece(d, r.kind, r.qt_type, tgt, base, r.base_bytes, pb, k, n, d->obuf);
        const uint8_t *frame = d->obuf;
        /* The block-aware transform is chosen on the first piece when it
         * codes it smaller than zstd's patch does. */
        if (c && k == 0 && r.kind == OTA_DELTA_PATCH && !o->no_qdiff &&
            qdiff_block_bytes(r.qt_type) && r.base_bytes == r.size_bytes &&
            gguf_tensor_at(gb, r.base_index)->type == r.qt_type) {
            size_t c2 = code_piece(d, OTA_DELTA_QDIFF, r.qt_type, tgt, base, r.base_bytes, pb, k,
                                   n, d->obuf2);
            if (c2 && c2 < c) {
                r.kind = OTA_DELTA_QDIFF;
                c = c2;
                frame = d->obuf2;
            }
        }
        if (!c)
            return OTA_EIO;
        rc = write_piece(d, frame, c, &r.payload_bytes);
    }
    if (rc)
        return rc;
    record_format(&r, hdr);
    if (pwrite(d->fd, hdr, sizeof hdr, (off_t)rec_pos) != (ssize_t)sizeof hdr) {
        set_err(d->err, "%s: write failed: %s", d->out_path, strerror(errno));
        return OTA_EIO;
    }
    *tgt_pos = start + r.size_bytes;
    if (st) {
        st->n_same += r.kind == OTA_DELTA_SAME;
        st->n_patch += r.kind == OTA_DELTA_PATCH;
        st->n_new += r.kind == OTA_DELTA_NEW;
        st->n_qdiff += r.kind == OTA_DELTA_QDIFF;
    }
    return OTA_OK;
}

/* The target's bytes before its tensor data, as one zstd frame, streamed. */
static int diff_meta(differ *d, const uint8_t *p, uint64_t n, uint64_t *payload)
{
    ZSTD_CCtx_reset(d->cc, ZSTD_reset_session_and_parameters);
    size_t r = ZSTD_CCtx_setParameter(d->cc, ZSTD_c_compressionLevel, d->level);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setParameter(d->cc, ZSTD_c_windowLog, META_WINDOW_LOG);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setPledgedSrcSize(d->cc, n);
    ZSTD_inBuffer in = {p, (size_t)n, 0};
    uint64_t start = d->out_pos;
    while (!ZSTD_isError(r)) {
        ZSTD_outBuffer out = {d->obuf, d->obuf_cap, 0};
        r = ZSTD_compressStream2(d->cc, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(r))
            break;
        int rc = out_write(d, d->obuf, out.pos);
        if (rc)
            return rc;
        if (r == 0) {
            *payload = d->out_pos - start;
            return OTA_OK;
        }
    }
    set_err(d->err, "%s: zstd: %s", d->out_path, ZSTD_getErrorName(r));
    return OTA_EIO;
}

int ota_delta_diff(const char *base_path, const char *target_path, const char *out_path,
                   const ota_delta_opts *opts, ota_delta_stats *stats, char err[256])
{
    if (sodium_init() < 0) {
        set_err(err, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    ota_delta_opts o = opts ? *opts : (ota_delta_opts){0};
    if (o.level == 0)
        o.level = DEFAULT_LEVEL;
    if (o.piece_bytes == 0)
        o.piece_bytes = OTA_DELTA_PIECE_DEFAULT;
    if (o.level < 1 || o.level > ZSTD_maxCLevel() || o.piece_bytes < 4096 ||
        o.piece_bytes > OTA_DELTA_PIECE_MAX) {
        set_err(err, "delta options: level %d (1..%d), piece %u bytes (4096..%u)", o.level,
                ZSTD_maxCLevel(), o.piece_bytes, OTA_DELTA_PIECE_MAX);
        return OTA_EINVAL;
    }
    ota_delta_stats st;
    memset(&st, 0, sizeof st);
    gguf *gb = NULL, *gt = NULL;
    mapped bm = {0}, tm = {0};
    const gguf_tensor **order = NULL;
    char *tmp = tmp_path_of(out_path);
    differ d = {.out_path = out_path, .fd = -1, .level = o.level, .err = err};
    int rc = OTA_ENOMEM;
    if (!tmp)
        goto oom;
    if ((rc = gguf_open(&gb, base_path, err)) || (rc = gguf_open(&gt, target_path, err))) {
        rc = rc == GGUF_ENOMEM ? OTA_ENOMEM : rc == GGUF_EIO ? OTA_EIO : OTA_EFORMAT;
        goto done;
    }
    if ((rc = map_file(base_path, &bm, err)) || (rc = map_file(target_path, &tm, err)))
        goto done;
    if (bm.n != gguf_file_size(gb) || tm.n != gguf_file_size(gt)) {
        set_err(err, "%s: the file changed while it was read", bm.n != gguf_file_size(gb) ?
                base_path : target_path);
        rc = OTA_EIO;
        goto done;
    }
    ota_delta_header h;
    memset(&h, 0, sizeof h);
    h.base_bytes = bm.n;
    h.target_bytes = tm.n;
    hash_buffer(bm.p, bm.n, h.base_hash);
    hash_buffer(tm.p, tm.n, h.target_hash);
    size_t nt = gguf_tensor_count(gt);
    h.n_records = (uint32_t)nt;
    h.meta_bytes = gguf_data_offset(gt);
    if (h.meta_bytes > tm.n)
        h.meta_bytes = tm.n;
    rc = OTA_ENOMEM;
    order = malloc((nt ? nt : 1) * sizeof *order);
    d.obuf_cap = ZSTD_compressBound(o.piece_bytes);
    d.tbuf = malloc(o.piece_bytes);
    d.obuf = malloc(d.obuf_cap);
    d.obuf2 = malloc(d.obuf_cap);
    d.cc = ZSTD_createCCtx();
    if (!order || !d.tbuf || !d.obuf || !d.obuf2 || !d.cc)
        goto oom;
    for (size_t i = 0; i < nt; i++)
        order[i] = gguf_tensor_at(gt, i);
    qsort(order, nt, sizeof *order, cmp_offset);
    d.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (d.fd < 0) {
        set_err(err, "%s: cannot create: %s", tmp, strerror(errno));
        rc = OTA_EIO;
        goto done;
    }
    uint8_t hb[OTA_DELTA_HEADER_BYTES];
    memset(hb, 0, sizeof hb);
    if ((rc = out_write(&d, hb, sizeof hb)))
        goto done;
    if ((rc = diff_meta(&d, tm.p, h.meta_bytes, &h.meta_payload_bytes)))
        goto done;
    uint64_t tgt_pos = h.meta_bytes;
    for (size_t i = 0; i <= nt; i++) {
        rc = diff_record(&d, &bm, gb, &tm, gguf_data_offset(gt), i < nt ? order[i] : NULL,
                         &tgt_pos, &o, target_path, &st);
        if (rc)
            goto done;
    }
    header_format(&h, hb);
    if (pwrite(d.fd, hb, sizeof hb, 0) != (ssize_t)sizeof hb || fsync(d.fd) != 0) {
        set_err(err, "%s: write failed: %s", tmp, strerror(errno));
        rc = OTA_EIO;
        goto done;
    }
    if (close(d.fd) != 0) {
        d.fd = -1;
        set_err(err, "%s: close failed: %s", tmp, strerror(errno));
        rc = OTA_EIO;
        goto done;
    }
    d.fd = -1;
    if (rename(tmp, out_path) != 0) {
        set_err(err, "%s: cannot rename into place: %s", out_path, strerror(errno));
        rc = OTA_EIO;
        goto done;
    }
    if ((rc = fsync_dir_of(out_path, err)))
        goto done;
    st.base_bytes = bm.n;
    st.target_bytes = tm.n;
    st.delta_bytes = d.out_pos;
    if (stats)
        *stats = st;
    rc = OTA_OK;
    goto done;
oom:
    set_err(err, "out of memory");
    rc = OTA_ENOMEM;
done:
    if (d.fd >= 0) {
        close(d.fd);
        unlink(tmp);
    }
    ZSTD_freeCCtx(d.cc);
    free(d.tbuf);
    free(d.obuf);
    free(d.obuf2);
    free(order);
    free(tmp);
    unmap_file(&bm);
    unmap_file(&tm);
    gguf_close(gb);
    gguf_close(gt);
    return rc;
}

/* ---- patch -------------------------------------------------------------------- */

/* The patch asks the kernel to start writing the output back every this many
 * bytes (sync_file_range without waiting), so that the closing fsync finds
 * little left to write. */
#define WRITEBACK_STEP_BYTES (UINT64_C(64) << 20)

/* The checks that need no part of the writing: the base's whole-file hash,
 * and then each rebuilt (non-SAME) tensor's hash, read back from
 * out_path.tmp (page cache) once the writer has finished that tensor. A
 * second thread does both while the writer goes on, so the writer only
 * rebuilds, writes and takes the output's hash; nothing is renamed into
 * place before the thread is joined and every result compared. Without a
 * thread (pthread_create failed) the base is hashed before the first byte
 * is written and the tensors after the last, as one thread would. The
 * thread only reads the base's mapping and the output file, both of which
 * outlive it. */
typedef struct tensor_job {
    uint64_t out_offset, size_bytes, index;
    ota_delta_kind kind;
    uint8_t hash[OTA_DELTA_HASH_BYTES];
} tensor_job;

typedef struct checker {
    const uint8_t *p; /* the base */
    size_t n;
    uint8_t hash[OTA_DELTA_HASH_BYTES];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tensor_job *jobs; /* n_jobs queued of cap_jobs (the record count) */
    size_t n_jobs, cap_jobs, next_job;
    bool writer_done;
    int out_fd; /* out_path.tmp, read-only */
    uint8_t *rbuf;
    size_t rbuf_bytes;
    /* results (read after the join) */
    bool tensor_bad;
    tensor_job bad;
    int read_errno; /* reading the output back failed: errno, or -1 for a short read */
    pthread_t thread;
    bool threaded;
} checker;

static void checker_hash_job(checker *c, const tensor_job *jb)
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, OTA_DELTA_HASH_BYTES);
    for (uint64_t done = 0; done < jb->size_bytes;) {
        size_t want = jb->size_bytes - done < c->rbuf_bytes ? (size_t)(jb->size_bytes - done)
                                                             : c->rbuf_bytes;
        ssize_t r = pread(c->out_fd, c->rbuf, want, (off_t)(jb->out_offset + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            c->read_errno = r < 0 ? errno : -1;
            return;
        }
        crypto_generichash_update(&st, c->rbuf, (size_t)r);
        done += (uint64_t)r;
    }
    uint8_t h[OTA_DELTA_HASH_BYTES];
    crypto_generichash_final(&st, h, sizeof h);
    if (sodium_memcmp(h, jb->hash, sizeof h) != 0 && !c->tensor_bad) {
        c->tensor_bad = true;
        c->bad = *jb;
    }
}

/* Hash queued tensors until the writer is done and the queue empty (with
 * wait false: only what is queued now). After the first failure the rest
 * are skipped. */
static void checker_run_jobs(checker *c, bool wait)
{
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->next_job < c->n_jobs) {
            tensor_job jb = c->jobs[c->next_job++];
            pthread_mutex_unlock(&c->mu);
            if (!c->tensor_bad && c->read_errno == 0)
                checker_hash_job(c, &jb);
            pthread_mutex_lock(&c->mu);
            continue;
        }
        if (c->writer_done || !wait)
            break;
        pthread_cond_wait(&c->cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
}

static void *checker_main(void *arg)
{
    checker *c = arg;
    hash_buffer(c->p, c->n, c->hash);
    checker_run_jobs(c, true);
    return NULL;
}

static int checker_init(checker *c, const uint8_t *p, size_t n, size_t cap_jobs,
                        size_t rbuf_bytes)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    c->n = n;
    c->out_fd = -1;
    c->cap_jobs = cap_jobs;
    c->rbuf_bytes = rbuf_bytes;
    c->jobs = malloc((cap_jobs ? cap_jobs : 1) * sizeof *c->jobs);
    c->rbuf = malloc(rbuf_bytes);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c->jobs && c->rbuf ? OTA_OK : OTA_ENOMEM;
}

static void checker_start(checker *c)
{
    c->threaded = pthread_create(&c->thread, NULL, checker_main, c) == 0;
    if (!c->threaded)
        hash_buffer(c->p, c->n, c->hash);
}

static void checker_push(checker *c, const tensor_job *jb)
{
    pthread_mutex_lock(&c->mu);
    if (c->n_jobs < c->cap_jobs)
        c->jobs[c->n_jobs++] = *jb;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* The writer is done (or gave up): wait for the checks. */
static void checker_finish(checker *c)
{
    pthread_mutex_lock(&c->mu);
    c->writer_done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->threaded) {
        pthread_join(c->thread, NULL);
        c->threaded = false;
    } else {
        checker_run_jobs(c, false);
    }
}

static bool checker_base_ok(const checker *c, const uint8_t want[OTA_DELTA_HASH_BYTES])
{
    return sodium_memcmp(c->hash, want, OTA_DELTA_HASH_BYTES) == 0;
}

static void checker_free(checker *c)
{
    if (c->threaded)
        checker_finish(c);
    if (c->out_fd >= 0)
        close(c->out_fd);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->jobs);
    free(c->rbuf);
}

typedef struct patcher {
    const char *delta_path, *tmp_path;
    int fd;
    int base_fd;  /* the base, open, for copy_file_range (-1: write from the map) */
    bool use_cfr; /* copy_file_range works between these files */
    ZSTD_DCtx *dc;
    uint8_t *pbuf, *tbuf, *mbuf;
    crypto_generichash_state file_hash; /* the output, as it is written */
    uint64_t out_bytes;
    uint64_t writeback_bytes; /* output handed to writeback so far */
    checker *check;           /* hashes each rebuilt tensor (read back) */
    char *err;
} patcher;

static void start_writeback(patcher *pt)
{
    if (pt->out_bytes - pt->writeback_bytes < WRITEBACK_STEP_BYTES)
        return;
    /* Advice only: an error here shows again at the closing fsync. */
    (void)sync_file_range(pt->fd, (off_t)pt->writeback_bytes,
                          (off_t)(pt->out_bytes - pt->writeback_bytes), SYNC_FILE_RANGE_WRITE);
    pt->writeback_bytes = pt->out_bytes;
}

static int emit(patcher *pt, const uint8_t *p, size_t n)
{
    hash_update(&pt->file_hash, p, n);
    int rc = write_all(pt->fd, p, n, pt->tmp_path, pt->err);
    if (!rc) {
        pt->out_bytes += n;
        start_writeback(pt);
    }
    return rc;
}

/* n bytes the base supplies verbatim at off (a SAME tensor): hashed from the
 * map into the output's hash, and copied file to file by the kernel
 * (copy_file_range: no trip through this process, a reflink where the file
 * system shares extents) or, where it cannot, written from the map. */
static int emit_base(patcher *pt, const mapped *bm, uint64_t off, size_t n)
{
    if (n == 0)
        return OTA_OK;
    hash_update(&pt->file_hash, bm->p + off, n);
    size_t copied = 0;
    loff_t in_off = (loff_t)off;
    while (pt->use_cfr && copied < n) {
        ssize_t c = copy_file_range(pt->base_fd, &in_off, pt->fd, NULL, n - copied, 0);
        if (c < 0 && errno == EINTR)
            continue;
        if (c < 0 && copied == 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
                                     errno == EOPNOTSUPP || errno == EBADF)) {
            pt->use_cfr = false; /* not between these files: write from the map */
            break;
        }
        if (c <= 0) {
            set_err(pt->err, "%s: copying %zu base bytes at %llu failed: %s", pt->tmp_path, n,
                    (unsigned long long)off, c < 0 ? strerror(errno) : "the base ended early");
            return OTA_EIO;
        }
        copied += (size_t)c;
    }
    if (copied < n) {
        int rc = write_all(pt->fd, bm->p + off + copied, n - copied, pt->tmp_path, pt->err);
        if (rc)
            return rc;
    }
    pt->out_bytes += n;
    start_writeback(pt);
    return OTA_OK;
}

static int patch_meta(patcher *pt, const uint8_t *src, uint64_t n, uint64_t raw)
{
    ZSTD_DCtx_reset(pt->dc, ZSTD_reset_session_and_parameters);
    size_t r = ZSTD_DCtx_setParameter(pt->dc, ZSTD_d_windowLogMax, META_WINDOW_LOG);
    ZSTD_inBuffer in = {src, (size_t)n, 0};
    uint64_t start = pt->out_bytes;
    while (!ZSTD_isError(r)) {
        ZSTD_outBuffer out = {pt->mbuf, META_CHUNK_BYTES, 0};
        r = ZSTD_decompressStream(pt->dc, &out, &in);
        if (ZSTD_isError(r))
            break;
        if (out.pos > raw - (pt->out_bytes - start)) {
            set_err(pt->err, "%s: meta: decompresses past its %llu bytes", pt->delta_path,
                    (unsigned long long)raw);
            return OTA_EFORMAT;
        }
        int rc = emit(pt, pt->mbuf, out.pos);
        if (rc)
            return rc;
        if (r == 0)
            break;
        if (in.pos == in.size && out.pos < out.size) {
            set_err(pt->err, "%s: meta: zstd frame truncated", pt->delta_path);
            return OTA_EFORMAT;
        }
    }
    if (ZSTD_isError(r)) {
        set_err(pt->err, "%s: meta: zstd: %s", pt->delta_path, ZSTD_getErrorName(r));
        return OTA_EFORMAT;
    }
    if (pt->out_bytes - start != raw || in.pos != in.size) {
        set_err(pt->err, "%s: meta: %llu bytes rebuilt, %llu expected", pt->delta_path,
                (unsigned long long)(pt->out_bytes - start), (unsigned long long)raw);
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

static int decompress_piece(patcher *pt, const uint8_t *prefix, size_t prefix_n,
                            const uint8_t *src, size_t n, uint8_t *dst, size_t raw,
                            const char *what)
{
    ZSTD_DCtx_reset(pt->dc, ZSTD_reset_session_and_parameters);
    size_t r = ZSTD_DCtx_setParameter(pt->dc, ZSTD_d_windowLogMax, WINDOW_LOG_MAX);
    if (!ZSTD_isError(r) && prefix_n > 0)
        r = ZSTD_DCtx_refPrefix(pt->dc, prefix, prefix_n);
    if (!ZSTD_isError(r))
        r = ZSTD_decompressDCtx(pt->dc, dst, raw, src, n);
    if (ZSTD_isError(r) || r != raw) {
        set_err(pt->err, "%s: %s: %s", pt->delta_path, what,
                ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong decompressed size");
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

/* Rebuild one record's gap and tensor; src points after its header. */
static int patch_record(patcher *pt, const mapped *bm, const ota_delta_record *r,
                        const uint8_t *src, uint64_t index)
{
    char what[96];
    int rc;
    if (r->gap_raw) {
        if ((rc = emit(pt, src, (size_t)r->gap_bytes)))
            return rc;
        src += r->gap_bytes;
    } else {
        static const uint8_t zeros[4096];
        for (uint64_t left = r->gap_bytes; left > 0;) {
            size_t n = left > sizeof zeros ? sizeof zeros : (size_t)left;
            if ((rc = emit(pt, zeros, n)))
                return rc;
            left -= n;
        }
    }
    if (r->kind == OTA_DELTA_END)
        return OTA_OK;
    const uint8_t *base = bm->p ? bm->p + r->base_offset : NULL;
    if (r->kind == OTA_DELTA_SAME) {
        /* The bytes are the base's, whose whole-file hash was checked, and
         * the diff compared them with the target's tensor; a record pointing
         * elsewhere is caught by the whole-file target hash. Hashing them
         * a third time would only cost time. */
        return emit_base(pt, bm, r->base_offset, (size_t)r->size_bytes);
    }
    tensor_job jb = {.out_offset = pt->out_bytes, .size_bytes = r->size_bytes, .index = index,
                     .kind = r->kind};
    memcpy(jb.hash, r->hash, sizeof jb.hash);
    uint32_t pb = r->piece_bytes;
    uint64_t np = piece_count(r->size_bytes, pb);
    for (uint64_t k = 0; k < np; k++) {
        size_t raw = (size_t)(r->size_bytes - k * pb < pb ? r->size_bytes - k * pb : pb);
        uint32_t fl = get_u32(src);
        src += 4;
        snprintf(what, sizeof what, "record %llu piece %llu", (unsigned long long)index,
                 (unsigned long long)k);
        if (r->kind == OTA_DELTA_NEW) {
            rc = decompress_piece(pt, NULL, 0, src, fl, pt->pbuf, raw, what);
        } else if (r->kind == OTA_DELTA_QDIFF) {
            rc = decompress_piece(pt, NULL, 0, src, fl, pt->tbuf, raw, what);
            if (!rc)
                qdiff_inverse(r->qt_type, pt->tbuf, base + k * pb, raw, pt->pbuf);
        } else {
            uint64_t lo, hi;
            patch_prefix(r->base_bytes, pb, k, &lo, &hi);
            rc = decompress_piece(pt, base ? base + lo : NULL, (size_t)(hi - lo), src, fl,
                                  pt->pbuf, raw, what);
        }
        if (rc)
            return rc;
        if ((rc = emit(pt, pt->pbuf, raw)))
            return rc;
        src += fl;
    }
    /* Its hash is checked by the checker thread, from the file. */
    checker_push(pt->check, &jb);
    return OTA_OK;
}

int ota_delta_patch(const char *base_path, const char *delta_path, const char *out_path,
                    ota_delta_stats *stats, char err[256])
{
    if (sodium_init() < 0) {
        set_err(err, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    mapped dm = {0}, bm = {0};
    patcher pt = {.delta_path = delta_path, .fd = -1, .base_fd = -1, .use_cfr = true, .err = err};
    checker ck;
    bool ck_init = false;
    char *tmp = tmp_path_of(out_path);
    int rc;
    if (!tmp) {
        set_err(err, "out of memory");
        return OTA_ENOMEM;
    }
    pt.tmp_path = tmp;
    ota_delta_header h;
    memset(&h, 0, sizeof h);
    if ((rc = map_file(delta_path, &dm, err)) ||
        (rc = ota_delta_check(dm.p ? dm.p : (const uint8_t *)"", dm.n, delta_path, &h, err)))
        goto done;
    if ((rc = map_file_fd(base_path, &bm, &pt.base_fd, err)))
        goto done;
    if (bm.n != h.base_bytes) {
        set_err(err, "%s: %zu bytes, but the delta was made from a base of %llu bytes (wrong base)",
                base_path, bm.n, (unsigned long long)h.base_bytes);
        rc = OTA_DELTA_EBASE;
        goto done;
    }
    size_t pb_max = 0;
    const uint8_t *p = dm.p + OTA_DELTA_HEADER_BYTES + h.meta_payload_bytes;
    const uint8_t *scan = p;
    for (uint64_t i = 0; i <= h.n_records; i++) {
        ota_delta_record r;
        ota_delta_record_parse(scan, OTA_DELTA_RECORD_BYTES, delta_path, &r, err);
        if (r.piece_bytes > pb_max)
            pb_max = r.piece_bytes;
        scan += OTA_DELTA_RECORD_BYTES + r.payload_bytes;
    }
    rc = OTA_ENOMEM;
    pt.dc = ZSTD_createDCtx();
    pt.mbuf = malloc(META_CHUNK_BYTES);
    pt.pbuf = malloc(pb_max ? pb_max : 1);
    pt.tbuf = malloc(pb_max ? pb_max : 1);
    ck_init = true;
    if (checker_init(&ck, bm.p, bm.n, (size_t)h.n_records, pb_max ? pb_max : 4096) ||
        !pt.dc || !pt.mbuf || !pt.pbuf || !pt.tbuf) {
        set_err(err, "out of memory");
        goto done;
    }
    pt.check = &ck;
    /* The base's hash runs beside the writing; only the rename waits for it. */
    checker_start(&ck);
    if (!ck.threaded && !checker_base_ok(&ck, h.base_hash))
        goto wrong_base; /* hashed first: nothing written */
    pt.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (pt.fd >= 0 && (ck.out_fd = open(tmp, O_RDONLY | O_CLOEXEC)) < 0) {
        close(pt.fd);
        pt.fd = -1;
        unlink(tmp);
    }
    if (pt.fd < 0) {
        set_err(err, "%s: cannot create: %s", tmp, strerror(errno));
        rc = OTA_EIO;
    } else {
        crypto_generichash_init(&pt.file_hash, NULL, 0, OTA_DELTA_HASH_BYTES);
        rc = patch_meta(&pt, dm.p + OTA_DELTA_HEADER_BYTES, h.meta_payload_bytes, h.meta_bytes);
        for (uint64_t i = 0; !rc && i <= h.n_records; i++) {
            ota_delta_record r;
            ota_delta_record_parse(p, OTA_DELTA_RECORD_BYTES, delta_path, &r, err);
            rc = patch_record(&pt, &bm, &r, p + OTA_DELTA_RECORD_BYTES, i);
            p += OTA_DELTA_RECORD_BYTES + r.payload_bytes;
        }
    }
    /* A wrong base explains any failure of the rebuild (a tensor or the
     * file not matching its hash), so it is what a failure reports. */
    checker_finish(&ck);
    if (!checker_base_ok(&ck, h.base_hash))
        goto wrong_base;
    if (rc)
        goto done;
    if (ck.read_errno) {
        set_err(err, "%s: reading back record %llu failed: %s", tmp,
                (unsigned long long)ck.jobs[ck.next_job ? ck.next_job - 1 : 0].index,
                ck.read_errno > 0 ? strerror(ck.read_errno) : "the file is short");
        rc = OTA_EIO;
        goto done;
    }
    if (ck.tensor_bad) {
        set_err(err, "%s: record %llu (%s): the rebuilt tensor does not match its hash",
                delta_path, (unsigned long long)ck.bad.index, ota_delta_kind_name(ck.bad.kind));
        rc = OTA_DELTA_EHASH;
        goto done;
    }
    uint8_t hash[OTA_DELTA_HASH_BYTES];
    crypto_generichash_final(&pt.file_hash, hash, sizeof hash);
    if (pt.out_bytes != h.target_bytes || sodium_memcmp(hash, h.target_hash, sizeof hash) != 0) {
        set_err(err, "%s: the rebuilt file does not match the target's BLAKE2b", delta_path);
        rc = OTA_DELTA_EHASH;
        goto done;
    }
    if (fsync(pt.fd) != 0 || close(pt.fd) != 0) {
        pt.fd = -1;
        set_err(err, "%s: cannot sync: %s", tmp, strerror(errno));
        unlink(tmp);
        rc = OTA_EIO;
        goto done;
    }
    pt.fd = -1;
    if (rename(tmp, out_path) != 0) {
        set_err(err, "%s: cannot rename into place: %s", out_path, strerror(errno));
        unlink(tmp);
        rc = OTA_EIO;
        goto done;
    }
    if ((rc = fsync_dir_of(out_path, err)))
        goto done;
    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->base_bytes = bm.n;
        stats->target_bytes = h.target_bytes;
        stats->delta_bytes = dm.n;
    }
    rc = OTA_OK;
    goto done;
wrong_base: {
        char want[2 * OTA_DELTA_HASH_BYTES + 1];
        ota_hash_hex(h.base_hash, want);
        set_err(err, "%s: BLAKE2b differs from the delta's base %.16s... (wrong base)",
                base_path, want);
        rc = OTA_DELTA_EBASE;
    }
done:
    if (ck_init) /* joins the thread first: it reads bm and tmp */
        checker_free(&ck);
    if (pt.fd >= 0) {
        close(pt.fd);
        unlink(tmp);
    }
    if (pt.base_fd >= 0)
        close(pt.base_fd);
    ZSTD_freeDCtx(pt.dc);
    free(pt.mbuf);
    free(pt.pbuf);
    free(pt.tbuf);
    free(tmp);
    unmap_file(&dm);
    unmap_file(&bm);
    return rc;
}
