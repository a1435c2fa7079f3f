/*
 * quant_q8.c - reference kernels of Q8_0 (weights and activations) and Q8_1
 * (activations for the Q4_1/Q5_1 weights).
 *
 * The quantizer is ggml's reference rule: d = amax / 127, q = round(x / d)
 * with ties away from zero, d kept in fp32 while quantizing and stored as
 * fp16. Codes are clamped to -127..127 so the SIMD dots (which negate
 * activation codes) never meet -128, and so a non-finite input yields some
 * code instead of an undefined float-to-int conversion. The AVX2 quantizers
 * in quant_avx2.c reproduce this bit for bit; tests hold them to it.
 */
#include <math.h>

#include "quant_impl.h"

/* Quantizes 32 floats to codes; returns the fp32 scale and the code sum. */
static float quantize_block_q8(const float *x, int8_t *qs, int *sum_out)
{
    float amax = 0.0f;
    for (int j = 0; j < QT_QK; j++) {
        float a = fabsf(x[j]);
        if (a > amax)
            amax = a;
    }
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < QT_QK; j++) {
        float v = x[j] * id;
        if (v > 127.0f)
            v = 127.0f;
        else if (!(v >= -127.0f))
            v = -127.0f;
        int q = (int)roundf(v);
        qs[j] = (int8_t)q;
        sum += q;
    }
    *sum_out = sum;
    return d;
}

void qt_q8_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        float d = qt_fp16_decode(b[i].d);
        for (int j = 0; j < QT_QK; j++)
            dst[i * QT_QK + j] = (float)b[i].qs[j] * d;
    }
}

void qt_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = qt_fp16_encode(d);
    }
}

void qt_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q8_0 *a = x;
    const qt_block_q8_0 *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QT_QK; j++)
            sumi += a[i].qs[j] * b[i].qs[j];
        sum += (float)sumi * (qt_fp16_decode(a[i].d) * qt_fp16_decode(b[i].d));
    }
    *s = sum;
}

void qt_q8_1_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        float d = qt_fp16_decode(b[i].d);
        for (int j = 0; j < QT_QK; j++)
            dst[i * QT_QK + j] = (float)b[i].qs[j] * d;
    }
}

void qt_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = qt_fp16_encode(d);
        b[i].s = qt_fp16_encode(d * (float)sum);
    }
}
