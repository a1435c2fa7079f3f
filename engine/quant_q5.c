/*
 * quant_q5.c - reference kernels of Q5_0 and Q5_1 (5-bit weights).
 *
 * A 5-bit code is stored split: its low four bits packed as in Q4 (element j
 * in the low nibble of qs[j], element j + 16 in the high nibble) and its top
 * bit in qh, a little-endian uint32 whose bit j belongs to element j. Q5_0 is
 * symmetric (d = max / -16, x = (q - 16) * d) and dots against Q8_0; Q5_1 is
 * min/max (d = (max - min) / 31, x = q * d + m) and dots against Q8_1.
 * Rounding follows ggml's reference quantizers.
 */
#include "quant_impl.h"

static inline uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
           (uint32_t)qh[3] << 24;
}

static inline void store_qh(uint8_t qh[4], uint32_t v)
{
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(v >> (8 * k));
}

/* The 5-bit codes of one block, in element order. */
static void unpack_q5(const uint8_t qs[QT_QK / 2], const uint8_t qh[4], int codes[QT_QK])
{
    uint32_t h = load_qh(qh);
    for (int j = 0; j < QT_QK / 2; j++) {
        codes[j] = (qs[j] & 0x0f) | (int)((h >> j) & 1u) << 4;
        codes[j + QT_QK / 2] = (qs[j] >> 4) | (int)((h >> (j + QT_QK / 2)) & 1u) << 4;
    }
}

static void pack_q5(const int codes[QT_QK], uint8_t qs[QT_QK / 2], uint8_t qh[4])
{
    uint32_t h = 0;
    for (int j = 0; j < QT_QK / 2; j++) {
        int lo = codes[j];
        int hi = codes[j + QT_QK / 2];
        qs[j] = (uint8_t)((lo & 0x0f) | (hi & 0x0f) << 4);
        h |= (uint32_t)(lo >> 4) << j;
        h |= (uint32_t)(hi >> 4) << (j + QT_QK / 2);
    }
    store_qh(qh, h);
}

void qt_q5_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int codes[QT_QK];
        unpack_q5(b[i].qs, b[i].qh, codes);
        float d = qt_fp16_decode(b[i].d);
        for (int j = 0; j < QT_QK; j++)
            dst[i * QT_QK + j] = (float)(codes[j] - 16) * d;
    }
}

void qt_q5_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        const float *x = src + i * QT_QK;
        float amax = 0.0f;
        float max = 0.0f;
        for (int j = 0; j < QT_QK; j++) {
            float a = x[j] < 0.0f ? -x[j] : x[j];
            if (a > amax) {
                amax = a;
                max = x[j];
            }
        }
        float d = max / -16.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int codes[QT_QK];
        for (int j = 0; j < QT_QK; j++)
            codes[j] = qt_trunc_code(x[j] * id + 16.5f, 31);
        b[i].d = qt_fp16_encode(d);
        pack_q5(codes, b[i].qs, b[i].qh);
    }
}

void qt_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_0 *a = x;
    const qt_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int codes[QT_QK];
        unpack_q5(a[i].qs, a[i].qh, codes);
        int sumi = 0;
        for (int j = 0; j < QT_QK; j++)
            sumi += (codes[j] - 16) * b[i].qs[j];
        sum += (float)sumi * (qt_fp16_decode(a[i].d) * qt_fp16_decode(b[i].d));
    }
    *s = sum;
}

void qt_q5_1_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int codes[QT_QK];
        unpack_q5(b[i].qs, b[i].qh, codes);
        float d = qt_fp16_decode(b[i].d);
        float m = qt_fp16_decode(b[i].m);
        for (int j = 0; j < QT_QK; j++)
            dst[i * QT_QK + j] = (float)codes[j] * d + m;
    }
}

void qt_q5_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        const float *x = src + i * QT_QK;
        float min = x[0];
        float max = x[0];
        for (int j = 1; j < QT_QK; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        float d = (max - min) / 31.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int codes[QT_QK];
        for (int j = 0; j < QT_QK; j++)
            codes[j] = qt_trunc_code((x[j] - min) * id + 0.5f, 31);
        b[i].d = qt_fp16_encode(d);
        b[i].m = qt_fp16_encode(min);
        pack_q5(codes, b[i].qs, b[i].qh);
    }
}

void qt_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_1 *a = x;
    const qt_block_q8_1 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int codes[QT_QK];
        unpack_q5(a[i].qs, a[i].qh, codes);
        int sumi = 0;
        for (int j = 0; j < QT_QK; j++)
            sumi += codes[j] * b[i].qs[j];
        sum += (float)sumi * (qt_fp16_decode(a[i].d) * qt_fp16_decode(b[i].d)) +
               qt_fp16_decode(a[i].m) * qt_fp16_decode(b[i].s);
    }
    *s = sum;
}
