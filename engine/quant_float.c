/*
 * quant_float.c - reference kernels of the unquantized rows: F32, F16, BF16.
 *
 * Each of these types is its own activation type (a row of F16 weights is
 * dotted with activations converted to F16), so vec_dot multiplies two rows
 * of the same type. The reference dots accumulate in double: they define the
 * right answer the SIMD rows are measured against, not the speed.
 */
#include "quant_impl.h"

void qt_f32_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void qt_f32_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void qt_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const float *a = x;
    const float *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * (double)b[i];
    *s = (float)sum;
}

/* fp16 and bf16 rows are read through memcpy: a row handed to us from a file
 * or a byte buffer is not promised to be 2-byte aligned. */
static inline uint16_t load_u16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_u16(unsigned char *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

void qt_f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = qt_fp16_decode(load_u16(p + 2 * i));
}

void qt_f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    for (int64_t i = 0; i < n; i++)
        store_u16(p + 2 * i, qt_fp16_encode(src[i]));
}

void qt_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)qt_fp16_decode(load_u16(a + 2 * i)) *
               (double)qt_fp16_decode(load_u16(b + 2 * i));
    *s = (float)sum;
}

void qt_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = qt_bf16_to_fp32(load_u16(p + 2 * i));
}

void qt_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    for (int64_t i = 0; i < n; i++)
        store_u16(p + 2 * i, qt_bf16_encode(src[i]));
}

void qt_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)qt_bf16_to_fp32(load_u16(a + 2 * i)) *
               (double)qt_bf16_to_fp32(load_u16(b + 2 * i));
    *s = (float)sum;
}
