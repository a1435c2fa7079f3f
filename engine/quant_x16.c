/*
 * quant_x16.c - the interleaved in-memory layouts Q4_0 x16 and Q8_0 x16
 * (weights) and A8 x16 (their activations): reference kernels and the
 * repacks from Q4_0 and Q8_0.
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
 * summation order; sum[] serves the weights' -8 offset.
 *
 * These layouts exist only in memory: their type ids are past every id a
 * GGUF file may name, and qt_type_from_name() does not know their names.
 */
#include "quant_impl.h"

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

void qt_q4_0x16_from_q4_0(const void *restrict src, void *restrict dst, int64_t n)
{
    for (int64_t g = 0; g < n / QT_QK_X16; g++)
        x16_put(dst, g, sizeof(qt_block_q4_0x16), (const uint8_t *)((const qt_block_q4_0 *)src + 16 * g),
                sizeof(qt_block_q4_0), 4);
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
    qt_block_q4_0 tmp[16];
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        qt_q4_0_from_float(src + g * QT_QK_X16, tmp, QT_QK_X16);
        x16_put(dst, g, sizeof(qt_block_q4_0x16), (const uint8_t *)tmp, sizeof(qt_block_q4_0), 4);
    }
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
    for (int64_t g = 0; g < n / QT_QK_X16; g++)
        x16_put(dst, g, sizeof(qt_block_q8_0x16), (const uint8_t *)((const qt_block_q8_0 *)src + 16 * g),
                sizeof(qt_block_q8_0), 8);
}

void qt_q8_0x16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 tmp[16];
    for (int64_t g = 0; g < n / QT_QK_X16; g++) {
        qt_q8_0_from_float(src + g * QT_QK_X16, tmp, QT_QK_X16);
        x16_put(dst, g, sizeof(qt_block_q8_0x16), (const uint8_t *)tmp, sizeof(qt_block_q8_0), 8);
    }
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
