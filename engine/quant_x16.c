/*
 * quant_x16.c - the interleaved in-memory layouts Q4_0 x16, Q8_0 x16,
 * Q4_K x16 and Q6_K x16 (weights) and A8 x16 (their activations):
 * reference kernels and the repacks from Q4_0, Q8_0, Q4_K and Q6_K.
 *
 * Why: a Q4_0 row as stored is 18-byte blocks, a 2-byte scale then 16 bytes
 * of nibbles, so a SIMD kernel reading it in place spends shuffles gathering
 * the nibbles of several blocks into one register and their scales into the
 * lanes that meet them, and leaves each block's integer dot spread over
 * several int32 lanes that each need their own float work. On the AVX-512
 * machine we tune on that made decode compute-bound at about 40 GB/s per
 * core with the data in L2, too close to the ~25 GB/s per core that DRAM
 * delivers for the two to overlap (decode reached ~88% of the read
 * bandwidth, measured). So on such machines model.c copies Q4_0 matrices
 * once, at load, into this layout (same size; counted in repacked_bytes):
 *
 *   Q4_0 x16, 288 bytes per 16 blocks (512 elements):
 *     qs[64 k + 4 j .. + 4] = qs bytes 4k .. 4k + 3 of block j (k = 0..3)
 *     d[j]                  = block j's fp16 scale
 *   x16 block g of a row is qs then d when g is even, d then qs when g is
 *   odd: pairs of blocks are [qs d d qs], so with rows starting on 64 bytes
 *   (model.c pads them) every 64-byte code load is aligned; loads split
 *   across cache lines halved the kernel's speed in L2 (measured). Rows are
 *   therefore converted and read whole, from their first element.
 *
 *   Q8_0 x16 is the same for Q8_0 (544 bytes: 512 of codes, dwords k =
 *   0..7, then the 16 scales; odd blocks scales first).
 *
 *   Q4_K x16 holds two Q4_K super-blocks (288 bytes, as they take): their
 *   16 sub-blocks of 32 are the 16 blocks, codes laid out as Q4_0 x16's
 *   (code byte e of a sub-block holds codes e and e + 16, where Q4_K pairs
 *   sub-blocks in one byte instead), and the 32 bytes of scales hold the
 *   two d and two dmin as fp16 and the 16 six-bit scales and mins repacked
 *   so that a few byte masks and shifts put them one per lane
 *   (quant_impl.h has the bytes). Q4_K read in place cost ~45 vector
 *   instructions per 256 elements (unpacking its 12-byte scales, pairing
 *   them with the sub-blocks, 16-bit products): decode ran at 88-92% of
 *   the read bandwidth; this layout costs about half and reaches 97-99%
 *   on the same two-thread stream (measured).
 *
 *   Q6_K x16 holds two Q6_K super-blocks (420 bytes, as they take). A
 *   32-element block's two 16-element sub-blocks are exactly the low and
 *   the high nibbles of Q4_0 x16's code bytes, so the codes' low four bits
 *   are laid out as Q4_0 x16's, and their top two bits follow in two more
 *   vectors (one per half), four 2-bit fields per byte: field k of byte
 *   4 j + e belongs to the code in nibble-vector k at the same byte. A
 *   shift, a mask and one vpternlogd rebuild each 6-bit code vector; each
 *   half keeps its own integer sum, as each has its own int8 scale. 420 is
 *   no multiple of 64, so a row holds every block's 384 bytes of codes
 *   first (aligned) and all their scales after (quant_impl.h has the
 *   bytes); the repack needs the row length to place them. Read in place,
 *   Q6_K decoded at ~0.79-0.80 of a two-thread read stream where this
 *   layout reaches ~0.84-0.89, as Q4_K x16 does (alternating in one run,
 *   measured), and TinyLlama Q4_K_M, whose Q6_K matrices are a quarter of
 *   its bytes, decoded ~9% faster.
 *
 * A 64-byte load of qs then holds dword k of all 16 blocks, one block per
 * int32 lane, and vpdpbusd against the activations laid out the same way
 * (A8 x16, below) leaves each block's dot in its own lane after eight
 * instructions, with no shuffles; one conversion and one FMA with the 16
 * scales (one 32-byte load) finish 512 elements.
 *
 *   A8 x16, 640 bytes per 512 elements:
 *     qs[64 k + 4 j .. + 4] = codes 4k .. 4k + 3 of block j (k = 0..7)
 *     d[j]                  = block j's scale (Q8_0's fp16 value, as float)
 *     sum[j]                = the sum of block j's 32 codes
 *
 * Activations are quantized exactly as Q8_0 (same codes, same fp16-rounded
 * scales), so a dot against Q4_0 x16 equals the Q4_0 x Q8_0 dot up to float
 * summation order; sum[] serves the weights' -8 offset, and Q4_K x16's
 * mins, and (with the low halves' sums, which its kernels take) Q6_K
 * x16's -32 offsets. Q4_K and Q6_K as stored meet Q8_K activations (one
 * scale per 256 elements); their x16 layouts meet these, one scale per 32,
 * a finer rounding of the same activations (test_repack checks both
 * against float).
 *
 * These layouts exist only in memory: their type ids are past every id a
 * GGUF file may name, and qt_type_from_name() does not know their names.
 */
#include "quant_impl.h"

static inline uint32_t x16_load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void x16_store32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

/* x16 block g (xbytes long) of a row from 16 legacy blocks of bbytes each,
 * a 2-byte scale then `dwords` dwords of codes: Q4_0 (18, 4) or Q8_0 (34, 8). */
static void x16_put(uint8_t *row, int64_t g, size_t xbytes, const uint8_t *b, size_t bbytes, int dwords)
{
    uint8_t *qs = row + qt_x16_qs_at(g, xbytes), *d = row + qt_x16_d_at(g, xbytes);
    for (int j = 0; j < 16; j++, b += bbytes) {
        memcpy(d + 2 * j, b, sizeof(uint16_t));
        for (int k = 0; k < dwords; k++)
            memcpy(qs + 64 * k + 4 * j, b + 2 + 4 * k, 4);
    }
}

/* x16 block g of a row of n elements from the stored blocks of its 512. */
typedef void (*x16_put_fn)(uint8_t *row, int64_t g, int64_t n, const uint8_t *stored);

/* A row of the stored type (group_bytes per 512 elements) into x16 blocks. */
static void x16_from_stored(x16_put_fn put, size_t group_bytes, const void *src, void *dst, int64_t n)
{
    for (int64_t g = 0; g < n / QT_QK_X16; g++)
        put(dst, g, n, (const uint8_t *)src + (size_t)g * group_bytes);
}

/* from_float: each 512 elements quantized to the stored type, then put. */
static void x16_quantize(x16_put_fn put, qt_from_float_fn quantize, const float *src, void *dst, int64_t n)
{
    uint8_t stored[16 * sizeof(qt_block_q8_0)]; /* the largest group: 16 Q8_0 blocks */
    _Static_assert(2 * sizeof(qt_block_q4_k) <= sizeof stored, "a Q4_K group fits");
    _Static_assert(2 * sizeof(qt_block_q6_k) <= sizeof stored, "a Q6_K group fits");
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        quantize(src + g * QT_QK_X16, stored, QT_QK_X16);
        put(dst, g, n, stored);
    }
}

static void q4_0_put(uint8_t *row, int64_t g, int64_t n, const uint8_t *stored)
{
    (void)n;
    x16_put(row, g, sizeof(qt_block_q4_0x16), stored, sizeof(qt_block_q4_0), 4);
}

static void q8_0_put(uint8_t *row, int64_t g, int64_t n, const uint8_t *stored)
{
    (void)n;
    x16_put(row, g, sizeof(qt_block_q8_0x16), stored, sizeof(qt_block_q8_0), 8);
}

void qt_q4_0x16_from_q4_0(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_stored(q4_0_put, 16 * sizeof(qt_block_q4_0), src, dst, n);
}

void qt_q4_0x16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q4_0x16 *b = src;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)src + qt_x16_qs_at(g, sizeof *b);
        const uint8_t *dp = (const uint8_t *)src + qt_x16_d_at(g, sizeof *b);
        for (int j = 0; j < 16; j++) {
            uint16_t h;
            memcpy(&h, dp + 2 * j, sizeof h);
            const float d = qt_fp16_decode(h);
            float *out = dst + g * QT_QK_X16 + j * QT_QK;
            for (int e = 0; e < 16; e++) {
                const uint8_t q = qs[64 * (e / 4) + 4 * j + e % 4];
                out[e] = (float)((q & 0x0f) - 8) * d;
                out[e + 16] = (float)((q >> 4) - 8) * d;
            }
        }
    }
}

void qt_q4_0x16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    x16_quantize(q4_0_put, qt_q4_0_from_float, src, dst, n);
}

void qt_a8_x16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 tmp[16];
    qt_block_a8_x16 *o = dst;
    for (int64_t g = 0; g < n / QT_QK_X16; g++, o++) {
        qt_q8_0_from_float(src + g * QT_QK_X16, tmp, QT_QK_X16);
        for (int j = 0; j < 16; j++) {
            int32_t sum = 0;
            for (int e = 0; e < QT_QK; e++)
                sum += tmp[j].qs[e];
            const float d = qt_fp16_decode(tmp[j].d);
            memcpy(&o->d[j], &d, sizeof d);
            memcpy(&o->sum[j], &sum, sizeof sum);
            for (int k = 0; k < 8; k++)
                memcpy(&o->qs[64 * k + 4 * j], &tmp[j].qs[4 * k], 4);
        }
    }
}

void qt_a8_x16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_a8_x16 *b = src;
    for (int64_t g = 0; g < n / QT_QK_X16; g++, b++) {
        for (int j = 0; j < 16; j++) {
            float d;
            memcpy(&d, &b->d[j], sizeof d);
            for (int e = 0; e < QT_QK; e++)
                dst[g * QT_QK_X16 + j * QT_QK + e] = (float)b->qs[64 * (e / 4) + 4 * j + e % 4] * d;
        }
    }
}

void qt_q4_0x16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_0x16 *a = x;
    const qt_block_a8_x16 *b = y;
    float sum = 0.0f;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)x + qt_x16_qs_at(g, sizeof *a);
        const uint8_t *dp = (const uint8_t *)x + qt_x16_d_at(g, sizeof *a);
        for (int j = 0; j < 16; j++) {
            int32_t sumi = 0;
            for (int e = 0; e < 16; e++) {
                const uint8_t q = qs[64 * (e / 4) + 4 * j + e % 4];
                sumi += ((q & 0x0f) - 8) * b[g].qs[64 * (e / 4) + 4 * j + e % 4];
                sumi += ((q >> 4) - 8) * b[g].qs[256 + 64 * (e / 4) + 4 * j + e % 4];
            }
            uint16_t h;
            float dy;
            memcpy(&h, dp + 2 * j, sizeof h);
            memcpy(&dy, &b[g].d[j], sizeof dy);
            sum += (float)sumi * (qt_fp16_decode(h) * dy);
        }
    }
    *s = sum;
}

/* ---- Q8_0 x16 --------------------------------------------------------- */

void qt_q8_0x16_from_q8_0(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_stored(q8_0_put, 16 * sizeof(qt_block_q8_0), src, dst, n);
}

void qt_q8_0x16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    x16_quantize(q8_0_put, qt_q8_0_from_float, src, dst, n);
}

void qt_q8_0x16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q8_0x16 *b = src;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const int8_t *qs = (const int8_t *)src + qt_x16_qs_at(g, sizeof *b);
        const uint8_t *dp = (const uint8_t *)src + qt_x16_d_at(g, sizeof *b);
        for (int j = 0; j < 16; j++) {
            uint16_t h;
            memcpy(&h, dp + 2 * j, sizeof h);
            const float d = qt_fp16_decode(h);
            for (int e = 0; e < QT_QK; e++)
                dst[g * QT_QK_X16 + j * QT_QK + e] = (float)qs[64 * (e / 4) + 4 * j + e % 4] * d;
        }
    }
}

void qt_q8_0x16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q8_0x16 *a = x;
    const qt_block_a8_x16 *b = y;
    float sum = 0.0f;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const int8_t *qs = (const int8_t *)x + qt_x16_qs_at(g, sizeof *a);
        const uint8_t *dp = (const uint8_t *)x + qt_x16_d_at(g, sizeof *a);
        for (int j = 0; j < 16; j++) {
            int32_t sumi = 0;
            for (int e = 0; e < QT_QK; e++) {
                const size_t at = 64 * (size_t)(e / 4) + 4 * (size_t)j + (size_t)(e % 4);
                sumi += qs[at] * b[g].qs[at];
            }
            uint16_t h;
            float dy;
            memcpy(&h, dp + 2 * j, sizeof h);
            memcpy(&dy, &b[g].d[j], sizeof dy);
            sum += (float)sumi * (qt_fp16_decode(h) * dy);
        }
    }
    *s = sum;
}

/* ---- Q4_K x16 ---------------------------------------------------------- */

/* Sub-block j (0..15) of an x16 block's 32 bytes of scales: its super-
 * block's d and dmin, and its 6-bit scale and min. */
static void k16_scale_min(const uint8_t *sa, int j, float *d, float *dmin, int *sc, int *m)
{
    uint16_t h[4];
    memcpy(h, sa, sizeof h);
    *d = qt_fp16_decode(h[j / 8]);
    *dmin = qt_fp16_decode(h[2 + j / 8]);
    *sc = sa[8 + j] & 63;
    *m = sa[8 + j] >> 6 | ((sa[24 + j % 8] >> (4 * (j / 8))) & 15) << 2;
}

/* Code e (0..31) of sub-block j from an x16 block's codes. */
static inline int k16_code(const uint8_t *qs, int j, int e)
{
    const uint8_t q = qs[64 * ((e % 16) / 4) + 4 * j + e % 4];
    return e < 16 ? q & 0x0f : q >> 4;
}

/* x16 block g of a row from its two Q4_K super-blocks; code bytes four at
 * a time (dword k of one sub-block per step: byte by byte, this put was
 * half of a Q4_K_M model's load time). */
static void k16_put(uint8_t *row, int64_t g, int64_t n, const uint8_t *stored)
{
    (void)n;
    const qt_block_q4_k *a = (const qt_block_q4_k *)stored;
    uint8_t *qs = row + qt_x16_qs_at(g, sizeof(qt_block_q4_kx16));
    uint8_t *sa = row + qt_x16_d_at(g, sizeof(qt_block_q4_kx16));
    const uint16_t h[4] = { a[0].d, a[1].d, a[0].dmin, a[1].dmin };
    memcpy(sa, h, sizeof h);
    memset(sa + 24, 0, 8);
    for (int j = 0; j < 16; j++) {
        const qt_block_q4_k *sb = &a[j / 8];
        const int s = j % 8;
        int sc, m;
        qt_k4_scale_min(sb->scales, s, &sc, &m);
        sa[8 + j] = (uint8_t)(sc | (m & 3) << 6);
        sa[24 + j % 8] |= (uint8_t)((m >> 2) << (4 * (j / 8)));
        /* sub-block s: low (s even) or high nibbles of qs[32 (s / 2) ..];
         * its codes e and e + 16 share a byte here */
        const uint8_t *q = sb->qs + 32 * (s / 2);
        for (int k = 0; k < 4; k++) {
            const uint32_t lo = x16_load32(q + 4 * k), hi = x16_load32(q + 16 + 4 * k);
            const uint32_t v = s % 2 ? ((lo >> 4) & 0x0f0f0f0fu) | (hi & 0xf0f0f0f0u)
                                     : (lo & 0x0f0f0f0fu) | (hi & 0x0f0f0f0fu) << 4;
            x16_store32(qs + 64 * k + 4 * j, v);
        }
    }
}

void qt_q4_kx16_from_q4_k(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_stored(k16_put, 2 * sizeof(qt_block_q4_k), src, dst, n);
}

void qt_q4_kx16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)src + qt_x16_qs_at(g, sizeof(qt_block_q4_kx16));
        const uint8_t *sa = (const uint8_t *)src + qt_x16_d_at(g, sizeof(qt_block_q4_kx16));
        for (int j = 0; j < 16; j++) {
            float d, dmin;
            int sc, m;
            k16_scale_min(sa, j, &d, &dmin, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m; /* as Q4_K's to_float */
            float *out = dst + g * QT_QK_X16 + j * QT_QK;
            for (int e = 0; e < QT_QK; e++)
                out[e] = dl * (float)k16_code(qs, j, e) - ml;
        }
    }
}

void qt_q4_kx16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    x16_quantize(k16_put, qt_q4_k_from_float, src, dst, n);
}

/* Per sub-block: dy * (d scale * sum(code * y) - dmin min * sum(y)). */
void qt_q4_kx16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_a8_x16 *b = y;
    float sum = 0.0f;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)x + qt_x16_qs_at(g, sizeof(qt_block_q4_kx16));
        const uint8_t *sa = (const uint8_t *)x + qt_x16_d_at(g, sizeof(qt_block_q4_kx16));
        for (int j = 0; j < 16; j++) {
            int32_t sumi = 0, ysum;
            for (int e = 0; e < QT_QK; e++)
                sumi += k16_code(qs, j, e) * b[g].qs[64 * (e / 4) + 4 * j + e % 4];
            float d, dmin, dy;
            int sc, m;
            k16_scale_min(sa, j, &d, &dmin, &sc, &m);
            memcpy(&dy, &b[g].d[j], sizeof dy);
            memcpy(&ysum, &b[g].sum[j], sizeof ysum);
            sum += dy * (d * (float)sc * (float)sumi - dmin * (float)m * (float)ysum);
        }
    }
    *s = sum;
}

/* ---- Q6_K x16 ---------------------------------------------------------- */

/* Code e (0..31, 0..63 in value) of block j from an x16 block's codes. */
static inline int q6x16_code(const uint8_t *qs, int j, int e)
{
    const int h = e / 16, k = (e % 16) / 4, b = e % 4;
    const int lo = (qs[64 * k + 4 * j + b] >> (4 * h)) & 15;
    const int hi = (qs[256 + 64 * h + 4 * j + b] >> (2 * k)) & 3;
    return lo | hi << 4;
}

/* Half h of block j: d * scale, as Q6_K's to_float forms it. */
static inline float q6x16_scale(const uint8_t *sc, int j, int h)
{
    uint16_t d;
    memcpy(&d, sc + 32 + 2 * (j / 8), sizeof d);
    return qt_fp16_decode(d) * (float)(int8_t)sc[16 * h + j];
}

/* The 256 codes (0..63) of a Q6_K super-block in element order, whole
 * bytes at a time (qt_block_q6_k's layout; the repack of a model's Q6_K
 * matrices took ~0.4 s longer code by code). */
static void q6_k_codes(const qt_block_q6_k *b, uint8_t q[QT_QK_K])
{
    for (int c = 0; c < 2; c++) {
        const uint8_t *ql = b->ql + 64 * c, *qh = b->qh + 32 * c;
        uint8_t *o = q + 128 * c;
        for (int l = 0; l < 32; l++) {
            o[l] = (uint8_t)((ql[l] & 15) | (qh[l] & 3) << 4);
            o[l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (qh[l] >> 6) << 4);
        }
    }
}

/* x16 block g of a row of n elements from its two Q6_K super-blocks. */
static void q6x16_put(uint8_t *row, int64_t g, int64_t n, const uint8_t *stored)
{
    const qt_block_q6_k *a = (const qt_block_q6_k *)stored;
    uint8_t *qs = row + qt_q6x16_qs_at(g), *sc = row + qt_q6x16_sc_at(g, n);
    uint8_t q[QT_QK_X16];
    q6_k_codes(&a[0], q);
    q6_k_codes(&a[1], q + QT_QK_K);
    for (int j = 0; j < 16; j++) {
        const uint8_t *b = q + QT_QK * j;
        for (int h = 0; h < 2; h++)
            sc[16 * h + j] = (uint8_t)a[j / 8].scales[2 * (j % 8) + h];
        /* four bytes (e = 0..3) at a time, as k16_put */
        for (int k = 0; k < 4; k++)
            x16_store32(qs + 64 * k + 4 * j,
                        (x16_load32(b + 4 * k) & 0x0f0f0f0fu) | (x16_load32(b + 16 + 4 * k) & 0x0f0f0f0fu) << 4);
        for (int h = 0; h < 2; h++) {
            uint32_t top = 0;
            for (int k = 0; k < 4; k++)
                top |= ((x16_load32(b + 16 * h + 4 * k) >> 4) & 0x03030303u) << (2 * k);
            x16_store32(qs + 256 + 64 * h + 4 * j, top);
        }
    }
    memcpy(sc + 32, &a[0].d, sizeof a[0].d);
    memcpy(sc + 34, &a[1].d, sizeof a[1].d);
}

void qt_q6_kx16_from_q6_k(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_stored(q6x16_put, 2 * sizeof(qt_block_q6_k), src, dst, n);
}

void qt_q6_kx16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    x16_quantize(q6x16_put, qt_q6_k_from_float, src, dst, n);
}

void qt_q6_kx16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)src + qt_q6x16_qs_at(g);
        const uint8_t *sc = (const uint8_t *)src + qt_q6x16_sc_at(g, n);
        for (int j = 0; j < 16; j++) {
            float *out = dst + g * QT_QK_X16 + j * QT_QK;
            for (int e = 0; e < QT_QK; e++)
                out[e] = q6x16_scale(sc, j, e / 16) * (float)(q6x16_code(qs, j, e) - 32);
        }
    }
}

/* Per half block: dy * d scale * sum((code - 32) * y). */
void qt_q6_kx16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_a8_x16 *b = y;
    float sum = 0.0f;
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        const uint8_t *qs = (const uint8_t *)x + qt_q6x16_qs_at(g);
        const uint8_t *sc = (const uint8_t *)x + qt_q6x16_sc_at(g, n);
        for (int j = 0; j < 16; j++) {
            float dy;
            memcpy(&dy, &b[g].d[j], sizeof dy);
            for (int h = 0; h < 2; h++) {
                int32_t sumi = 0;
                for (int e = 16 * h; e < 16 * h + 16; e++)
                    sumi += (q6x16_code(qs, j, e) - 32) * b[g].qs[64 * (e / 4) + 4 * j + e % 4];
                sum += dy * (q6x16_scale(sc, j, h) * (float)sumi);
            }
        }
    }
    *s = sum;
}
