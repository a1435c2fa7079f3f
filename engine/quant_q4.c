/*
 * quant_q4.c - reference kernels of Q4_0 and Q4_1 (4-bit weights).
 *
 * Q4_0 is symmetric: the element of largest magnitude, with its sign, maps
 * to code 0, so d = max / -8 and the grid is (code - 8) * d. Q4_1 spans
 * [min, max] with 16 levels, d = (max - min) / 15, x = code * d + m. Both
 * follow ggml's reference rounding (truncate x / d + offset + 0.5, clamp to
 * 15) so our quantized files match llama.cpp's. Q4_0 dots against Q8_0
 * activations, Q4_1 against Q8_1, whose s = d * sum(q) carries Q4_1's offset
 * term (m * sum(y)) without touching the codes.
 */
#include "quant_impl.h"

void qt_q4_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        float d = qt_fp16_decode(b[i].d);
        float *out = dst + i * QT_QK;
        for (int j = 0; j < QT_QK / 2; j++) {
            out[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            out[j + QT_QK / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void qt_q4_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q4_0 *b = dst;
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
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = qt_fp16_encode(d);
        for (int j = 0; j < QT_QK / 2; j++) {
            int lo = qt_trunc_code(x[j] * id + 8.5f, 15);
            int hi = qt_trunc_code(x[j + QT_QK / 2] * id + 8.5f, 15);
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void qt_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_0 *a = x;
    const qt_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QT_QK / 2; j++) {
            sumi += ((a[i].qs[j] & 0x0f) - 8) * b[i].qs[j];
            sumi += ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + QT_QK / 2];
        }
        sum += (float)sumi * (qt_fp16_decode(a[i].d) * qt_fp16_decode(b[i].d));
    }
    *s = sum;
}

void qt_q4_1_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        float d = qt_fp16_decode(b[i].d);
        float m = qt_fp16_decode(b[i].m);
        float *out = dst + i * QT_QK;
        for (int j = 0; j < QT_QK / 2; j++) {
            out[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
            out[j + QT_QK / 2] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void qt_q4_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q4_1 *b = dst;
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
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = qt_fp16_encode(d);
        b[i].m = qt_fp16_encode(min);
        for (int j = 0; j < QT_QK / 2; j++) {
            int lo = qt_trunc_code((x[j] - min) * id + 0.5f, 15);
            int hi = qt_trunc_code((x[j + QT_QK / 2] - min) * id + 0.5f, 15);
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void qt_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_1 *a = x;
    const qt_block_q8_1 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QT_QK / 2; j++) {
            sumi += (a[i].qs[j] & 0x0f) * b[i].qs[j];
            sumi += (a[i].qs[j] >> 4) * b[i].qs[j + QT_QK / 2];
        }
        sum += (float)sumi * (qt_fp16_decode(a[i].d) * qt_fp16_decode(b[i].d)) +
               qt_fp16_decode(a[i].m) * qt_fp16_decode(b[i].s);
    }
    *s = sum;
}
