/*
 * delta.h - tensor-aware binary deltas between two GGUF model files (ota_delta_).
 *
 * `ota_delta_diff` writes a delta that turns BASE into TARGET; `ota_delta_patch`
 * applies it. Both map the model files and work one tensor (and inside a
 * tensor one piece of at most 4 MiB) at a time, so their anonymous memory is
 * bounded (a few pieces plus zstd's contexts, well under 64 MiB) whatever the
 * model size. The output of a patch is byte-identical to TARGET or there is
 * no output at all.
 *
 * Format, version 1 (all integers little-endian):
 *
 *   header, 152 bytes
 *     0   magic "OTADELTA"
 *     8   u32 version (1)
 *     12  u32 record count (tensor records; the END record is not counted)
 *     16  u64 base size         24  u64 target size
 *     32  base BLAKE2b-256      64  target BLAKE2b-256 (of the whole files)
 *     96  u64 meta bytes: the target's bytes before its tensor data (GGUF
 *         header, metadata, tensor infos, alignment padding), copied verbatim
 *     104 u64 meta payload bytes (one zstd frame, window at most 4 MiB)
 *     112 u32 flags (0)         116 u32 reserved (0)
 *     120 BLAKE2b-256 of bytes 0..119 (a damaged header is refused at once)
 *   the meta payload
 *   one record per target tensor, in the order of their data in the file,
 *   then one END record; the file ends right after it. A record is an
 *   88-byte header and its payload:
 *     0   u8  kind: 1 SAME, 2 PATCH, 3 NEW, 4 QDIFF, 5 END
 *     1   u8  gap mode: 0 the gap is zero bytes, 1 its raw bytes open the payload
 *     2   u16 reserved (0)      4   u32 the target tensor's ggml type
 *     8   u32 piece bytes (PATCH, NEW, QDIFF; else 0)
 *     12  u32 base tensor index (SAME, PATCH, QDIFF; else 0xFFFFFFFF)
 *     16  u64 gap bytes: target bytes between the previous tensor's end (or
 *         the meta) and this tensor: GGUF alignment padding, kept exactly
 *     24  u64 tensor bytes      32  u64 base offset   40  u64 base bytes
 *         (the base tensor's place in the base file; 0 and 0 for NEW, END)
 *     48  u64 payload bytes
 *     56  BLAKE2b-256 of the target tensor's bytes (zero for END)
 *   The tensor is cut into pieces of `piece bytes` (the last may be
 *   shorter); each piece is a u32 length and one zstd frame:
 *     SAME   no pieces: the base tensor's bytes (same size) are the target's.
 *            The patch does not hash them again: they come from the base,
 *            whose whole-file hash it checked, and the whole-file target
 *            hash catches a record that points at other bytes. Every other
 *            record's rebuilt tensor is checked against its hash.
 *     PATCH  piece k compressed with a reference prefix (zstd's refPrefix,
 *            long-distance matching) of the base tensor's bytes from
 *            (k-1)*piece to (k+2)*piece, clipped to the base tensor.
 *     NEW    piece k compressed alone.
 *     QDIFF  Q4_0 / Q8_0 blocks against the base tensor's blocks in the same
 *            places (same type and size): the piece's n blocks become the
 *            low bytes of (d_target - d_base) mod 2^16 of the fp16 scales'
 *            bit patterns (n bytes), their high bytes (n), then per block
 *            the quants as differences from a prediction, mod 16 per nibble
 *            (Q4_0, packed as the block packs them) or mod 256 (Q8_0), and
 *            that is compressed alone. The prediction of quant q is the
 *            base's quant in the same position rescaled to the target's
 *            scale: lrint((q_base - z) * (double)d_base / d_target) + z,
 *            clamped to the type's range (z = 8 for Q4_0, 0 for Q8_0), or
 *            q_base itself when d_target is 0 or the ratio is not finite or
 *            above 64. A fine-tune that moves every weight a little leaves
 *            most differences 0 or +-1.
 *   END carries only the gap after the last tensor (kind 5, size 0).
 *
 * Ownership: the caller owns every path and struct; nothing here keeps a
 * pointer after returning. Errors: OTA_OK or a negative code (ota_sign.h's
 * OTA_E*, or OTA_DELTA_EBASE for a base that is not the delta's), and one
 * line in err naming the file and what was wrong.
 */
#ifndef OUTPOST_OTA_DELTA_H
#define OUTPOST_OTA_DELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_sign.h"

#define OTA_DELTA_MAGIC "OTADELTA"
#define OTA_DELTA_VERSION 1u
#define OTA_DELTA_HASH_BYTES 32
#define OTA_DELTA_HEADER_BYTES 152
#define OTA_DELTA_RECORD_BYTES 88
/* The largest piece a delta may use (a reader refuses more): the bound on
 * the patcher's buffers. */
#define OTA_DELTA_PIECE_MAX (UINT32_C(8) << 20)
#define OTA_DELTA_PIECE_DEFAULT (UINT32_C(4) << 20)
/* Gaps (padding) longer than this are not a GGUF the diff understands. */
#define OTA_DELTA_GAP_MAX (UINT64_C(1) << 20)

enum {
    OTA_DELTA_EBASE = -20, /* the base file is not the one the delta was made from */
    OTA_DELTA_EHASH = -21, /* a rebuilt tensor or file does not match its hash */
};

typedef enum ota_delta_kind {
    OTA_DELTA_SAME = 1,
    OTA_DELTA_PATCH = 2,
    OTA_DELTA_NEW = 3,
    OTA_DELTA_QDIFF = 4,
    OTA_DELTA_END = 5,
} ota_delta_kind;

const char *ota_delta_kind_name(ota_delta_kind k);

typedef struct ota_delta_header {
    uint32_t version;
    uint32_t n_records;
    uint64_t base_bytes;
    uint64_t target_bytes;
    uint8_t base_hash[OTA_DELTA_HASH_BYTES];
    uint8_t target_hash[OTA_DELTA_HASH_BYTES];
    uint64_t meta_bytes;
    uint64_t meta_payload_bytes;
} ota_delta_header;

typedef struct ota_delta_record {
    ota_delta_kind kind;
    bool gap_raw;
    uint32_t qt_type;
    uint32_t piece_bytes;
    uint32_t base_index;
    uint64_t gap_bytes;
    uint64_t size_bytes;
    uint64_t base_offset;
    uint64_t base_bytes;
    uint64_t payload_bytes;
    uint8_t hash[OTA_DELTA_HASH_BYTES];
} ota_delta_record;

typedef struct ota_delta_opts {
    int level;            /* zstd level, 1..19; 0: the default (9) */
    uint32_t piece_bytes; /* 0: OTA_DELTA_PIECE_DEFAULT */
    bool no_qdiff;        /* never use the block-aware transform */
    bool no_patch;        /* never use base tensors as reference (NEW/SAME only) */
} ota_delta_opts;

typedef struct ota_delta_stats {
    uint64_t base_bytes, target_bytes, delta_bytes;
    unsigned n_same, n_patch, n_new, n_qdiff;
} ota_delta_stats;

/* Write the delta from base_path to target_path into out_path (through
 * out_path.tmp, renamed into place). opts and stats may be NULL. */
int ota_delta_diff(const char *base_path, const char *target_path, const char *out_path,
                   const ota_delta_opts *opts, ota_delta_stats *stats, char err[256]);

/* Rebuild the target into out_path: checks the base's size before writing
 * anything; a second thread hashes the whole base and then each rebuilt
 * (non-SAME) tensor, read back from out_path.tmp once written, while the
 * writer rebuilds and writes (taking the whole output's hash as its bytes
 * are written: no second pass over the file; SAME tensors go file to file
 * with copy_file_range where the kernel can). Every result is compared
 * before the rename (fsync the file, rename, fsync the directory). A wrong
 * base is reported as such (OTA_DELTA_EBASE) even when the rebuild failed
 * first. On any error out_path is left as it was and out_path.tmp is
 * removed. Anonymous memory: the piece buffers (three of at most the
 * largest piece), one zstd context and the second thread's stack. */
int ota_delta_patch(const char *base_path, const char *delta_path, const char *out_path,
                    ota_delta_stats *stats, char err[256]);

/* Parsers (name: what err calls the buffer). A header is checked against its
 * own hash; a record's fields against each other (lengths, kinds, pieces). */
int ota_delta_header_parse(const void *buf, size_t len, const char *name, ota_delta_header *out,
                           char err[256]);
int ota_delta_record_parse(const void *buf, size_t len, const char *name, ota_delta_record *out,
                           char err[256]);
/* Walk a whole delta held in memory: header, meta frame, every record and
 * piece framing, the END record and nothing after it; sizes add up to the
 * target size. Decompresses nothing. */
int ota_delta_check(const void *buf, size_t len, const char *name, ota_delta_header *out,
                    char err[256]);
/* The header of a delta file (for manifests). */
int ota_delta_read_header(const char *path, ota_delta_header *out, char err[256]);

/* BLAKE2b-256 of a whole file (mapped and read sequentially), and its size. */
int ota_file_hash(const char *path, uint8_t out[OTA_DELTA_HASH_BYTES], uint64_t *size_bytes,
                  char err[256]);
void ota_hash_hex(const uint8_t hash[OTA_DELTA_HASH_BYTES], char out[2 * OTA_DELTA_HASH_BYTES + 1]);

#endif
