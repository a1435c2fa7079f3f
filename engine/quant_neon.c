/*
 * quant_neon.c - AArch64 Advanced SIMD (NEON) kernels for the qt_ table.
 *
 * Built for aarch64 only, and built twice (engine/meson.build). The first
 * build targets ARMv8.0, which every 64-bit Arm core runs, and defines every
 * qt_neon_* kernel. The second adds -march=armv8.2-a+dotprod and
 * QT_NEON_DOTPROD, and defines only the 8-bit integer dots again, as
 * qt_neondp_*, with SDOT (vdotq_s32: four 4-byte dot products into four
 * int32 per instruction) in place of widening multiplies. quant.c hands out
 * the qt_neondp_* rows only when the kernel's AT_HWCAP has HWCAP_ASIMDDP, so
 * nothing from the second object may run elsewhere. One source keeps the two
 * paths the same code except for the 16-byte dot step (dot16 below).
 *
 * Integer dots sum code * activation exactly in int32 per block, then fold
 * the block in with one float multiply-add by the product of the scales. On
 * the ARMv8.0 path each int16 lane holds two products before it is widened;
 * that stays in range because activation codes lie in -127..127 (every qt_
 * quantizer clamps there) while weight codes may reach -128: at most
 * 2 * 128 * 127. Only the float summation order differs from the scalar
 * reference.
 *
 * The quantizers (F16, BF16, Q8_0, Q8_1, Q8_K) give the scalar bytes exactly
 * (tests hold them to it): same fp32 scale arithmetic, same compare-based
 * clamp (a NaN becomes -127), and the rounding the scalar code uses -
 * FCVTAS rounds ties away from zero like roundf (Q8_0/Q8_1), FCVTNS ties to
 * even like quant_k.c's nearest() (Q8_K). fp16 conversions are the FCVT
 * instructions, which Linux runs with default NaN and flush-to-zero off, so
 * NaN payloads and subnormals come out as qt_fp16_encode/decode give them.
 *
 * Blocks may sit at any byte address; NEON loads (LD1) do not require
 * alignment, and every multi-byte field is read through its byte address.
 */
#include <arm_neon.h>
#include <stddef.h>

#include "quant_impl.h"

#if defined(__ARM_BIG_ENDIAN)
#error "quant_neon.c reads GGUF's little-endian fields straight into vector lanes"
#endif

#ifdef QT_NEON_DOTPROD
#ifndef __ARM_FEATURE_DOTPROD
#error "QT_NEON_DOTPROD needs the dot product extension enabled (-march=armv8.2-a+dotprod)"
#endif
#define INT8_KERNEL(name) qt_neondp_##name
#else
#define INT8_KERNEL(name) qt_neon_##name
#endif

static inline float fp16_to_f32(uint16_t h)
{
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

static inline int8x16_t as_s8(uint8x16_t v)
{
    return vreinterpretq_s8_u8(v);
}

/* ---- conversions and float dots (ARMv8.0 build only) ------------------- */
#ifndef QT_NEON_DOTPROD

static inline uint16_t f32_to_fp16(float f)
{
    __fp16 v = (__fp16)f;
    uint16_t h;
    memcpy(&h, &v, sizeof h);
    return h;
}

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

void qt_neon_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const float *a = x;
    const float *b = y;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        acc2 = vfmaq_f32(acc2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        acc3 = vfmaq_f32(acc3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++)
        sum += a[i] * b[i];
    *s = sum;
}

/* Eight halves from any byte address. */
static inline float16x8_t load8_f16(const unsigned char *p)
{
    return vreinterpretq_f16_u8(vld1q_u8(p));
}

void qt_neon_f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = load8_f16(p + 2 * i);
        vst1q_f32(dst + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(dst + i + 4, vcvt_high_f32_f16(h));
    }
    for (; i < n; i++)
        dst[i] = fp16_to_f32(load_u16(p + 2 * i));
}

void qt_neon_f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(src + i)), vld1q_f32(src + i + 4));
        vst1q_u8(p + 2 * i, vreinterpretq_u8_f16(h));
    }
    for (; i < n; i++)
        store_u16(p + 2 * i, f32_to_fp16(src[i]));
}

/* Widens to fp32 and accumulates there: fp16 arithmetic would round every
 * partial sum to 11 bits. */
void qt_neon_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float16x8_t a0 = load8_f16(a + 2 * i), a1 = load8_f16(a + 2 * i + 16);
        float16x8_t b0 = load8_f16(b + 2 * i), b1 = load8_f16(b + 2 * i + 16);
        acc0 = vfmaq_f32(acc0, vcvt_f32_f16(vget_low_f16(a0)), vcvt_f32_f16(vget_low_f16(b0)));
        acc1 = vfmaq_f32(acc1, vcvt_high_f32_f16(a0), vcvt_high_f32_f16(b0));
        acc2 = vfmaq_f32(acc2, vcvt_f32_f16(vget_low_f16(a1)), vcvt_f32_f16(vget_low_f16(b1)));
        acc3 = vfmaq_f32(acc3, vcvt_high_f32_f16(a1), vcvt_high_f32_f16(b1));
    }
    for (; i + 8 <= n; i += 8) {
        float16x8_t a0 = load8_f16(a + 2 * i), b0 = load8_f16(b + 2 * i);
        acc0 = vfmaq_f32(acc0, vcvt_f32_f16(vget_low_f16(a0)), vcvt_f32_f16(vget_low_f16(b0)));
        acc1 = vfmaq_f32(acc1, vcvt_high_f32_f16(a0), vcvt_high_f32_f16(b0));
    }
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++)
        sum += fp16_to_f32(load_u16(a + 2 * i)) * fp16_to_f32(load_u16(b + 2 * i));
    *s = sum;
}

/* A bfloat16 is the top half of a binary32: widen each lane by 16 bits. */
static inline float32x4_t bf16_low4(uint16x8_t v)
{
    return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
}

static inline float32x4_t bf16_high4(uint16x8_t v)
{
    return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16));
}

static inline uint16x8_t load8_u16(const unsigned char *p)
{
    return vreinterpretq_u16_u8(vld1q_u8(p));
}

void qt_neon_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16x8_t h = load8_u16(p + 2 * i);
        vst1q_f32(dst + i, bf16_low4(h));
        vst1q_f32(dst + i + 4, bf16_high4(h));
    }
    for (; i < n; i++)
        dst[i] = qt_bf16_to_fp32(load_u16(p + 2 * i));
}

/* qt_bf16_encode on four lanes: add 0x7fff plus the lowest kept bit (round
 * to nearest even), except that a NaN keeps its top half and turns quiet. */
static inline uint16x4_t bf16_encode4(float32x4_t f)
{
    uint32x4_t u = vreinterpretq_u32_f32(f);
    uint32x4_t is_nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffffu)), vdupq_n_u32(0x7f800000u));
    uint32x4_t top = vshrq_n_u32(u, 16);
    uint32x4_t r = vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7fffu)), vandq_u32(top, vdupq_n_u32(1)));
    r = vbslq_u32(is_nan, vorrq_u32(top, vdupq_n_u32(0x40u)), vshrq_n_u32(r, 16));
    return vmovn_u32(r);
}

void qt_neon_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16x8_t h = vcombine_u16(bf16_encode4(vld1q_f32(src + i)), bf16_encode4(vld1q_f32(src + i + 4)));
        vst1q_u8(p + 2 * i, vreinterpretq_u8_u16(h));
    }
    for (; i < n; i++)
        store_u16(p + 2 * i, qt_bf16_encode(src[i]));
}

void qt_neon_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint16x8_t a0 = load8_u16(a + 2 * i), a1 = load8_u16(a + 2 * i + 16);
        uint16x8_t b0 = load8_u16(b + 2 * i), b1 = load8_u16(b + 2 * i + 16);
        acc0 = vfmaq_f32(acc0, bf16_low4(a0), bf16_low4(b0));
        acc1 = vfmaq_f32(acc1, bf16_high4(a0), bf16_high4(b0));
        acc2 = vfmaq_f32(acc2, bf16_low4(a1), bf16_low4(b1));
        acc3 = vfmaq_f32(acc3, bf16_high4(a1), bf16_high4(b1));
    }
    for (; i + 8 <= n; i += 8) {
        uint16x8_t a0 = load8_u16(a + 2 * i), b0 = load8_u16(b + 2 * i);
        acc0 = vfmaq_f32(acc0, bf16_low4(a0), bf16_low4(b0));
        acc1 = vfmaq_f32(acc1, bf16_high4(a0), bf16_high4(b0));
    }
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++)
        sum += qt_bf16_to_fp32(load_u16(a + 2 * i)) * qt_bf16_to_fp32(load_u16(b + 2 * i));
    *s = sum;
}

/* ---- 8-bit activation quantizers ---------------------------------------- */

/* Largest |x| over four lanes, NaNs skipped: a lane only ever takes a value
 * greater than the one it holds, as the scalar `if (a > amax)` does. */
static inline float32x4_t amax_step(float32x4_t amax, float32x4_t v)
{
    float32x4_t a = vabsq_f32(v);
    return vbslq_f32(vcgtq_f32(a, amax), a, amax);
}

/* The scalar clamp to -127..127, NaN included (it fails >= and goes low). */
static inline float32x4_t clamp127(float32x4_t t)
{
    const float32x4_t hi = vdupq_n_f32(127.0f), lo = vdupq_n_f32(-127.0f);
    t = vbslq_f32(vcgtq_f32(t, hi), hi, t);
    return vbslq_f32(vcgeq_f32(t, lo), t, lo);
}

/* Sixteen int32 codes (within -127..127) to sixteen bytes. */
static inline int8x16_t narrow16(int32x4_t q0, int32x4_t q1, int32x4_t q2, int32x4_t q3)
{
    int16x8_t lo = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
    int16x8_t hi = vcombine_s16(vmovn_s32(q2), vmovn_s32(q3));
    return vcombine_s8(vmovn_s16(lo), vmovn_s16(hi));
}

/* One block of 32 floats to codes, as quant_q8.c's quantize_block_q8;
 * returns the fp32 scale and the code sum. */
static inline float quantize_block_q8(const float *x, int8_t *qs, int *sum_out)
{
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(x + 4 * k);
        amax = amax_step(amax, v[k]);
    }
    float d = vmaxvq_f32(amax) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32x4_t q[8];
    int32x4_t sum = vdupq_n_s32(0);
    for (int k = 0; k < 8; k++) {
        q[k] = vcvtaq_s32_f32(clamp127(vmulq_n_f32(v[k], id)));
        sum = vaddq_s32(sum, q[k]);
    }
    vst1q_s8(qs, narrow16(q[0], q[1], q[2], q[3]));
    vst1q_s8(qs + 16, narrow16(q[4], q[5], q[6], q[7]));
    *sum_out = vaddvq_s32(sum);
    return d;
}

void qt_neon_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = qt_fp16_encode(d);
    }
}

void qt_neon_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = qt_fp16_encode(d);
        b[i].s = qt_fp16_encode(d * (float)sum);
    }
}

/* quant_k.c's Q8_K rule: positive d = amax / 127, codes rounded to nearest
 * even, an all-zero block for amax 0, and bsums of each 16 codes. */
void qt_neon_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *out = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        unsigned char *blk = out + (size_t)i * sizeof(qt_block_q8_k);
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int k = 0; k < QT_QK_K; k += 4)
            amax = amax_step(amax, vld1q_f32(x + k));
        float m = vmaxvq_f32(amax);
        if (m == 0.0f) {
            memset(blk, 0, sizeof(qt_block_q8_k));
            continue;
        }
        float iscale = 127.0f / m;
        int8_t *qs = (int8_t *)(blk + offsetof(qt_block_q8_k, qs));
        int16_t bsums[QT_QK_K / 16];
        for (int j = 0; j < QT_QK_K / 16; j++) {
            const float *xj = x + 16 * j;
            int32x4_t q0 = vcvtnq_s32_f32(clamp127(vmulq_n_f32(vld1q_f32(xj), iscale)));
            int32x4_t q1 = vcvtnq_s32_f32(clamp127(vmulq_n_f32(vld1q_f32(xj + 4), iscale)));
            int32x4_t q2 = vcvtnq_s32_f32(clamp127(vmulq_n_f32(vld1q_f32(xj + 8), iscale)));
            int32x4_t q3 = vcvtnq_s32_f32(clamp127(vmulq_n_f32(vld1q_f32(xj + 12), iscale)));
            vst1q_s8(qs + 16 * j, narrow16(q0, q1, q2, q3));
            bsums[j] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q0, q1), vaddq_s32(q2, q3)));
        }
        memcpy(blk + offsetof(qt_block_q8_k, bsums), bsums, sizeof bsums);
        float d = 1 / iscale;
        memcpy(blk + offsetof(qt_block_q8_k, d), &d, sizeof d);
    }
}

#endif /* !QT_NEON_DOTPROD */

/* ---- 8-bit integer dots (both builds) ---------------------------------- */

/* acc + the dot of 16 signed bytes, as four int32 partial sums. */
static inline int32x4_t dot16(int32x4_t acc, int8x16_t x, int8x16_t y)
{
#ifdef QT_NEON_DOTPROD
    return vdotq_s32(acc, x, y);
#else
    int16x8_t p = vmull_s8(vget_low_s8(x), vget_low_s8(y));
    p = vmlal_high_s8(p, x, y);
    return vpadalq_s16(acc, p);
#endif
}

/* The dot of 32 codes (x0: elements 0..15, x1: 16..31) with 32 bytes at y. */
static inline int32x4_t dot32(int8x16_t x0, int8x16_t x1, const int8_t *y)
{
    return dot16(dot16(vdupq_n_s32(0), x0, vld1q_s8(y)), x1, vld1q_s8(y + 16));
}

/* acc + one block's integer sums times its scale. */
static inline float32x4_t fold(float32x4_t acc, int32x4_t sums, float scale)
{
    return vfmaq_n_f32(acc, vcvtq_f32_s32(sums), scale);
}

static inline float scale2(uint16_t dx, uint16_t dy)
{
    return fp16_to_f32(dx) * fp16_to_f32(dy);
}

void INT8_KERNEL(q8_0_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q8_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        int32x4_t p0 = dot32(vld1q_s8(a[i].qs), vld1q_s8(a[i].qs + 16), b[i].qs);
        int32x4_t p1 = dot32(vld1q_s8(a[i + 1].qs), vld1q_s8(a[i + 1].qs + 16), b[i + 1].qs);
        acc0 = fold(acc0, p0, scale2(a[i].d, b[i].d));
        acc1 = fold(acc1, p1, scale2(a[i + 1].d, b[i + 1].d));
    }
    if (i < nb)
        acc0 = fold(acc0, dot32(vld1q_s8(a[i].qs), vld1q_s8(a[i].qs + 16), b[i].qs),
                    scale2(a[i].d, b[i].d));
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* 16 bytes of nibbles to codes 0..15: low nibbles are elements 0..15 of the
 * block, high nibbles 16..31. */
static inline void unpack_nibbles(const uint8_t *qs, uint8x16_t *lo, uint8x16_t *hi)
{
    uint8x16_t v = vld1q_u8(qs);
    *lo = vandq_u8(v, vdupq_n_u8(0x0f));
    *hi = vshrq_n_u8(v, 4);
}

static inline int32x4_t q4_0_block(const qt_block_q4_0 *a, const qt_block_q8_0 *b)
{
    uint8x16_t lo, hi;
    unpack_nibbles(a->qs, &lo, &hi);
    const int8x16_t eight = vdupq_n_s8(8);
    return dot32(vsubq_s8(as_s8(lo), eight), vsubq_s8(as_s8(hi), eight), b->qs);
}

void INT8_KERNEL(q4_0_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fold(acc0, q4_0_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
        acc1 = fold(acc1, q4_0_block(&a[i + 1], &b[i + 1]), scale2(a[i + 1].d, b[i + 1].d));
    }
    if (i < nb)
        acc0 = fold(acc0, q4_0_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

static inline int32x4_t q4_1_block(const qt_block_q4_1 *a, const qt_block_q8_1 *b)
{
    uint8x16_t lo, hi;
    unpack_nibbles(a->qs, &lo, &hi);
    return dot32(as_s8(lo), as_s8(hi), b->qs);
}

/* The _1 types add m * s per block: the weight's min times the activation's
 * d * sum of codes. */
void INT8_KERNEL(q4_1_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float offsets = 0.0f;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        offsets += scale2(a[i].m, b[i].s) + scale2(a[i + 1].m, b[i + 1].s);
        acc0 = fold(acc0, q4_1_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
        acc1 = fold(acc1, q4_1_block(&a[i + 1], &b[i + 1]), scale2(a[i + 1].d, b[i + 1].d));
    }
    if (i < nb) {
        offsets += scale2(a[i].m, b[i].s);
        acc0 = fold(acc0, q4_1_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets;
}

/* Q5's qh bits as bytes: 0xff where element j's fifth bit is set. Byte j
 * of the result tests bit j % 8 of qh[j / 8]. */
static inline void expand_qh(const uint8_t qh[4], uint8x16_t *lo, uint8x16_t *hi)
{
    const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL));
    *lo = vtstq_u8(vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])), bit);
    *hi = vtstq_u8(vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])), bit);
}

/* Q5_0 codes minus 16 as signed bytes: with the fifth bit set the nibble
 * already is q - 16; without it q - 16 = nibble - 16 = nibble | 0xf0. */
static inline int32x4_t q5_0_block(const qt_block_q5_0 *a, const qt_block_q8_0 *b)
{
    uint8x16_t lo, hi, top_lo, top_hi;
    unpack_nibbles(a->qs, &lo, &hi);
    expand_qh(a->qh, &top_lo, &top_hi);
    const uint8x16_t f0 = vdupq_n_u8(0xf0);
    lo = vorrq_u8(lo, vbicq_u8(f0, top_lo));
    hi = vorrq_u8(hi, vbicq_u8(f0, top_hi));
    return dot32(as_s8(lo), as_s8(hi), b->qs);
}

static inline int32x4_t q5_1_block(const qt_block_q5_1 *a, const qt_block_q8_1 *b)
{
    uint8x16_t lo, hi, top_lo, top_hi;
    unpack_nibbles(a->qs, &lo, &hi);
    expand_qh(a->qh, &top_lo, &top_hi);
    const uint8x16_t x10 = vdupq_n_u8(0x10);
    lo = vorrq_u8(lo, vandq_u8(top_lo, x10));
    hi = vorrq_u8(hi, vandq_u8(top_hi, x10));
    return dot32(as_s8(lo), as_s8(hi), b->qs);
}

void INT8_KERNEL(q5_0_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fold(acc0, q5_0_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
        acc1 = fold(acc1, q5_0_block(&a[i + 1], &b[i + 1]), scale2(a[i + 1].d, b[i + 1].d));
    }
    if (i < nb)
        acc0 = fold(acc0, q5_0_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
    *s = vaddvq_f32(vaddq_f32(acc0, acc1));
}

void INT8_KERNEL(q5_1_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float offsets = 0.0f;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        offsets += scale2(a[i].m, b[i].s) + scale2(a[i + 1].m, b[i + 1].s);
        acc0 = fold(acc0, q5_1_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
        acc1 = fold(acc1, q5_1_block(&a[i + 1], &b[i + 1]), scale2(a[i + 1].d, b[i + 1].d));
    }
    if (i < nb) {
        offsets += scale2(a[i].m, b[i].s);
        acc0 = fold(acc0, q5_1_block(&a[i], &b[i]), scale2(a[i].d, b[i].d));
    }
    *s = vaddvq_f32(vaddq_f32(acc0, acc1)) + offsets;
}

/* ---- K-quant dots against Q8_K ----------------------------------------- *
 * Each super-block's integer sum (codes times activations, weighted by the
 * sub-block scales) is exact in int32, as in quant_k.c, and the mins come
 * in through Q8_K's bsums. The block layouts are described in
 * quant_impl.h. */

static inline float q8_k_d(const qt_block_q8_k *b)
{
    float d;
    memcpy(&d, (const unsigned char *)b + offsetof(qt_block_q8_k, d), sizeof d);
    return d;
}

/* The 16 int16 bsums of a Q8_K block, read through bytes (the block is
 * packed, so a bsums pointer would not be int16-aligned). */
static inline void q8_k_bsums(const qt_block_q8_k *b, int16x8_t *lo, int16x8_t *hi)
{
    const uint8_t *p = (const uint8_t *)b + offsetof(qt_block_q8_k, bsums);
    *lo = vreinterpretq_s16_u8(vld1q_u8(p));
    *hi = vreinterpretq_s16_u8(vld1q_u8(p + 16));
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Q4_K/Q5_K's twelve scale bytes to eight 6-bit scales and mins, four at
 * a time: for sub-blocks 0..3 the low six bits of bytes 0..3 (scales) and
 * 4..7 (mins); for 4..7 the nibbles of bytes 8..11 below the top two bits
 * of bytes 0..3 (scales) and 4..7 (mins), moved down from bits 6-7 to 4-5. */
static inline void k4_unpack(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8])
{
    uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
    uint32_t w[4] = {
        a & 0x3f3f3f3fu,
        (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u),
        b & 0x3f3f3f3fu,
        ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u),
    };
    memcpy(sc, &w[0], 8);
    memcpy(mn, &w[2], 8);
}

/* sum over 8 sub-blocks of min j * (bsums 2j + bsums 2j+1). */
static inline int k4_min_sum(const uint8_t mn[8], const qt_block_q8_k *b)
{
    int16x8_t lo, hi;
    q8_k_bsums(b, &lo, &hi);
    int16x8_t pairs = vpaddq_s16(lo, hi); /* at most 32 * 127 each */
    int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
    int32x4_t p = vmull_s16(vget_low_s16(mins), vget_low_s16(pairs));
    p = vmlal_high_s16(p, mins, pairs);
    return vaddvq_s32(p);
}

void INT8_KERNEL(q4_k_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_k *a = x;
    const qt_block_q8_k *b = y;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        uint8_t sc[8], mn[8];
        k4_unpack(a[i].scales, sc, mn);
        int msum = k4_min_sum(mn, &b[i]);
        const uint8_t *q = a[i].qs;
        const int8_t *yq = b[i].qs;
        int32x4_t acc = vdupq_n_s32(0);
        /* 64 elements per turn: low nibbles of 32 bytes, then high nibbles */
        for (int c = 0; c < 4; c++) {
            uint8x16_t v0 = vld1q_u8(q + 32 * c), v1 = vld1q_u8(q + 32 * c + 16);
            int32x4_t lo = dot32(as_s8(vandq_u8(v0, m4)), as_s8(vandq_u8(v1, m4)), yq + 64 * c);
            int32x4_t hi = dot32(as_s8(vshrq_n_u8(v0, 4)), as_s8(vshrq_n_u8(v1, 4)), yq + 64 * c + 32);
            acc = vmlaq_n_s32(acc, lo, sc[2 * c]);
            acc = vmlaq_n_s32(acc, hi, sc[2 * c + 1]);
        }
        int isum = vaddvq_s32(acc);
        float dall = q8_k_d(&b[i]) * fp16_to_f32(a[i].d);
        float dmin = q8_k_d(&b[i]) * fp16_to_f32(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

void INT8_KERNEL(q5_k_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_k *a = x;
    const qt_block_q8_k *b = y;
    const uint8x16_t m4 = vdupq_n_u8(0x0f), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        uint8_t sc[8], mn[8];
        k4_unpack(a[i].scales, sc, mn);
        int msum = k4_min_sum(mn, &b[i]);
        const uint8_t *q = a[i].qs;
        const int8_t *yq = b[i].qs;
        /* fifth bits: bit j of qh[l] belongs to sub-block j; shifted down by
         * two per turn so bits 0 and 1 are always this turn's pair */
        uint8x16_t h0 = vld1q_u8(a[i].qh), h1 = vld1q_u8(a[i].qh + 16);
        int32x4_t acc = vdupq_n_s32(0);
        for (int c = 0; c < 4; c++) {
            uint8x16_t v0 = vld1q_u8(q + 32 * c), v1 = vld1q_u8(q + 32 * c + 16);
            uint8x16_t l0 = vorrq_u8(vandq_u8(v0, m4), vshlq_n_u8(vandq_u8(h0, one), 4));
            uint8x16_t l1 = vorrq_u8(vandq_u8(v1, m4), vshlq_n_u8(vandq_u8(h1, one), 4));
            uint8x16_t u0 = vorrq_u8(vshrq_n_u8(v0, 4), vshlq_n_u8(vandq_u8(h0, two), 3));
            uint8x16_t u1 = vorrq_u8(vshrq_n_u8(v1, 4), vshlq_n_u8(vandq_u8(h1, two), 3));
            h0 = vshrq_n_u8(h0, 2);
            h1 = vshrq_n_u8(h1, 2);
            acc = vmlaq_n_s32(acc, dot32(as_s8(l0), as_s8(l1), yq + 64 * c), sc[2 * c]);
            acc = vmlaq_n_s32(acc, dot32(as_s8(u0), as_s8(u1), yq + 64 * c + 32), sc[2 * c + 1]);
        }
        int isum = vaddvq_s32(acc);
        float dall = q8_k_d(&b[i]) * fp16_to_f32(a[i].d);
        float dmin = q8_k_d(&b[i]) * fp16_to_f32(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

/* Q6_K codes minus 32: low four bits from ql, top two (in bits 0-1 of
 * high2) from qh. */
static inline int8x16_t q6_codes(uint8x16_t low4, uint8x16_t high2)
{
    return vsubq_s8(as_s8(vorrq_u8(low4, vshlq_n_u8(high2, 4))), vdupq_n_s8(32));
}

void INT8_KERNEL(q6_k_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q6_k *a = x;
    const qt_block_q8_k *b = y;
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m2 = vdupq_n_u8(3);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int32x4_t acc = vdupq_n_s32(0);
        /* two halves of 128; in each, element 32 k + l takes nibble k / 2 of
         * ql[32 (k % 2) + l] and bits 2k, 2k+1 of qh[l]; 16 elements share
         * one scale */
        for (int c = 0; c < 2; c++) {
            const uint8_t *ql = a[i].ql + 64 * c;
            const uint8_t *qh = a[i].qh + 32 * c;
            const int8_t *sc = a[i].scales + 8 * c;
            const int8_t *yq = b[i].qs + 128 * c;
            uint8x16_t L0 = vld1q_u8(ql), L1 = vld1q_u8(ql + 16);
            uint8x16_t L2 = vld1q_u8(ql + 32), L3 = vld1q_u8(ql + 48);
            uint8x16_t H0 = vld1q_u8(qh), H1 = vld1q_u8(qh + 16);
            int8x16_t c0 = q6_codes(vandq_u8(L0, m4), vandq_u8(H0, m2));
            int8x16_t c1 = q6_codes(vandq_u8(L1, m4), vandq_u8(H1, m2));
            int8x16_t c2 = q6_codes(vandq_u8(L2, m4), vandq_u8(vshrq_n_u8(H0, 2), m2));
            int8x16_t c3 = q6_codes(vandq_u8(L3, m4), vandq_u8(vshrq_n_u8(H1, 2), m2));
            int8x16_t c4 = q6_codes(vshrq_n_u8(L0, 4), vandq_u8(vshrq_n_u8(H0, 4), m2));
            int8x16_t c5 = q6_codes(vshrq_n_u8(L1, 4), vandq_u8(vshrq_n_u8(H1, 4), m2));
            int8x16_t c6 = q6_codes(vshrq_n_u8(L2, 4), vshrq_n_u8(H0, 6));
            int8x16_t c7 = q6_codes(vshrq_n_u8(L3, 4), vshrq_n_u8(H1, 6));
            const int32x4_t z = vdupq_n_s32(0);
            acc = vmlaq_n_s32(acc, dot16(z, c0, vld1q_s8(yq)), sc[0]);
            acc = vmlaq_n_s32(acc, dot16(z, c1, vld1q_s8(yq + 16)), sc[1]);
            acc = vmlaq_n_s32(acc, dot16(z, c2, vld1q_s8(yq + 32)), sc[2]);
            acc = vmlaq_n_s32(acc, dot16(z, c3, vld1q_s8(yq + 48)), sc[3]);
            acc = vmlaq_n_s32(acc, dot16(z, c4, vld1q_s8(yq + 64)), sc[4]);
            acc = vmlaq_n_s32(acc, dot16(z, c5, vld1q_s8(yq + 80)), sc[5]);
            acc = vmlaq_n_s32(acc, dot16(z, c6, vld1q_s8(yq + 96)), sc[6]);
            acc = vmlaq_n_s32(acc, dot16(z, c7, vld1q_s8(yq + 112)), sc[7]);
        }
        sum += q8_k_d(&b[i]) * fp16_to_f32(a[i].d) * (float)vaddvq_s32(acc);
    }
    *s = sum;
}

/* Q3_K's twelve scale bytes to sixteen 6-bit scales minus 32: low nibbles
 * of bytes 0..7 are scales 0..7, their high nibbles 8..15, and the top two
 * bits of scale j sit at bits 2 * (j / 4) of byte 8 + j % 4, moved here to
 * bits 4-5 four scales at a time. */
static inline void q3_k_scales(const uint8_t s[12], int8_t out[16])
{
    uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
    uint32_t w[4] = {
        (a & 0x0f0f0f0fu) | ((c << 4) & 0x30303030u),
        (b & 0x0f0f0f0fu) | ((c << 2) & 0x30303030u),
        ((a >> 4) & 0x0f0f0f0fu) | (c & 0x30303030u),
        ((b >> 4) & 0x0f0f0f0fu) | ((c >> 2) & 0x30303030u),
    };
    uint8_t u[16];
    memcpy(u, w, sizeof u);
    vst1q_s8(out, vsubq_s8(as_s8(vld1q_u8(u)), vdupq_n_s8(32)));
}

void INT8_KERNEL(q3_k_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q3_k *a = x;
    const qt_block_q8_k *b = y;
    const uint8x16_t m2 = vdupq_n_u8(3), one = vdupq_n_u8(1);
    const int8x16_t four = vdupq_n_s8(4);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int8_t sc[16];
        q3_k_scales(a[i].scales, sc);
        /* hmask bit 4c + k of byte l is the third bit of element
         * 128c + 32k + l; shifted down one per 32 elements */
        uint8x16_t h0 = vld1q_u8(a[i].hmask), h1 = vld1q_u8(a[i].hmask + 16);
        int32x4_t acc = vdupq_n_s32(0);
        const int32x4_t z = vdupq_n_s32(0);
        for (int c = 0; c < 2; c++) {
            uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * c), q1 = vld1q_u8(a[i].qs + 32 * c + 16);
            const int8_t *yq = b[i].qs + 128 * c;
            for (int k = 0; k < 4; k++) {
                /* code = low two bits | third bit << 2, minus 4 */
                uint8x16_t u0 = vorrq_u8(vandq_u8(q0, m2), vshlq_n_u8(vandq_u8(h0, one), 2));
                uint8x16_t u1 = vorrq_u8(vandq_u8(q1, m2), vshlq_n_u8(vandq_u8(h1, one), 2));
                int j = 8 * c + 2 * k;
                acc = vmlaq_n_s32(acc, dot16(z, vsubq_s8(as_s8(u0), four), vld1q_s8(yq + 32 * k)), sc[j]);
                acc = vmlaq_n_s32(acc, dot16(z, vsubq_s8(as_s8(u1), four), vld1q_s8(yq + 32 * k + 16)),
                                  sc[j + 1]);
                q0 = vshrq_n_u8(q0, 2);
                q1 = vshrq_n_u8(q1, 2);
                h0 = vshrq_n_u8(h0, 1);
                h1 = vshrq_n_u8(h1, 1);
            }
        }
        sum += q8_k_d(&b[i]) * fp16_to_f32(a[i].d) * (float)vaddvq_s32(acc);
    }
    *s = sum;
}

void INT8_KERNEL(q2_k_vec_dot)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q2_k *a = x;
    const qt_block_q8_k *b = y;
    const uint8x16_t m2 = vdupq_n_u8(3), m4 = vdupq_n_u8(0x0f);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        /* scales byte j: sub-block j's scale (low nibble) and min (high) */
        uint8x16_t sb = vld1q_u8(a[i].scales);
        int8_t sc[16];
        vst1q_s8(sc, as_s8(vandq_u8(sb, m4)));
        int16x8_t lo, hi;
        q8_k_bsums(&b[i], &lo, &hi);
        uint8x16_t mins = vshrq_n_u8(sb, 4);
        int16x8_t m_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
        int16x8_t m_hi = vreinterpretq_s16_u16(vmovl_high_u8(mins));
        int32x4_t mp = vmull_s16(vget_low_s16(m_lo), vget_low_s16(lo));
        mp = vmlal_high_s16(mp, m_lo, lo);
        mp = vmlal_s16(mp, vget_low_s16(m_hi), vget_low_s16(hi));
        mp = vmlal_high_s16(mp, m_hi, hi);
        int msum = vaddvq_s32(mp);

        int32x4_t acc = vdupq_n_s32(0);
        const int32x4_t z = vdupq_n_s32(0);
        for (int c = 0; c < 2; c++) {
            uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * c), q1 = vld1q_u8(a[i].qs + 32 * c + 16);
            const int8_t *yq = b[i].qs + 128 * c;
            for (int k = 0; k < 4; k++) {
                int j = 8 * c + 2 * k;
                acc = vmlaq_n_s32(acc, dot16(z, as_s8(vandq_u8(q0, m2)), vld1q_s8(yq + 32 * k)), sc[j]);
                acc = vmlaq_n_s32(acc, dot16(z, as_s8(vandq_u8(q1, m2)), vld1q_s8(yq + 32 * k + 16)),
                                  sc[j + 1]);
                q0 = vshrq_n_u8(q0, 2);
                q1 = vshrq_n_u8(q1, 2);
            }
        }
        float dall = q8_k_d(&b[i]) * fp16_to_f32(a[i].d);
        float dmin = q8_k_d(&b[i]) * fp16_to_f32(a[i].dmin);
        sum += dall * (float)vaddvq_s32(acc) - dmin * (float)msum;
    }
    *s = sum;
}
