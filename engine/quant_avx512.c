/*
 * quant_avx512.c - AVX-512 kernels for the qt_ table: F, BW, VL, DQ and VNNI
 * (vpdpbusd), plus AVX2, FMA and F16C, which every such CPU has.
 *
 * This file alone is compiled with those flags; quant.c calls into it only
 * after its CPU probe has seen every one of them (and the OS saving ZMM
 * state), so nothing here may run or be inlined elsewhere.
 *
 * 8-bit dots: one 512-bit register holds two 32-element blocks, 16 int32
 * lanes of vpdpbusd sums, eight per block; they become floats once per block
 * pair and meet the pair's scale products in one FMA. vpdpbusd multiplies
 * unsigned by signed bytes, so weights enter unsigned (4- and 5-bit codes as
 * stored, 8-bit codes with 128 added) and the offset comes back out exactly
 * in int32 as k * (sum of the activation codes), itself a vpdpbusd. No lane
 * can overflow: a lane sums four products of at most 255 * 127.
 *
 * Block scales come from a 64K-entry fp16 -> fp32 table (as in quant_avx2.c,
 * and for the same reason: a load instead of shuffle-port conversions).
 *
 * The Q8 quantizers give the scalar bytes exactly: the same fp32 arithmetic
 * and clamp, and roundf's ties-away-from-zero built from truncation.
 *
 * The gemm tiles of Q4_0 and Q8_0 (prompt batches, and the decode path that
 * shares activation work across rows) close the file; their layout is
 * described there.
 */
#include <immintrin.h>

#include "quant_impl.h"

static float fp16_table[1 << 16] __attribute__((aligned(64)));

void qt_avx512_init(void)
{
    const __m256i step = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (uint32_t h = 0; h < (1u << 16); h += 16) {
        __m256i v = _mm256_add_epi16(_mm256_set1_epi16((short)h), step);
        _mm512_store_ps(fp16_table + h, _mm512_cvtph_ps(v));
    }
}

/* Decode reads weights once per token; the hardware prefetcher alone keeps
 * too few lines in flight (see quant_avx2.c), so loops also ask for the line
 * this far ahead. Past a row's end that warms the next row, which a matmul
 * reads next; prefetches never fault, and the address is formed as an
 * integer so no pointer leaves its object. */
#define PREFETCH_BYTES 2048

/* Always inlined: a prefetch helper left outlined inside a big kernel is
 * judged side-effect free by GCC 12 and its calls deleted (it happened to
 * the decode loop below, which then read DRAM at two thirds of the speed). */
static inline __attribute__((always_inline)) void prefetch_ahead(const void *p, size_t off)
{
    _mm_prefetch((const char *)((uintptr_t)p + PREFETCH_BYTES + off), _MM_HINT_T0);
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Mask of the low k lanes (k <= 16). */
static inline __mmask16 low_mask16(int64_t k)
{
    return (__mmask16)((1u << k) - 1u);
}

/* ---- F32, F16, BF16 ---------------------------------------------------- */

void qt_avx512_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const float *a = x;
    const float *b = y;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int k = 0; k < 4; k++)
            prefetch_ahead(a + i, (size_t)k * 64);
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

static inline __m512 load16_f16(const unsigned char *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 maskz_load_f16(__mmask16 m, const unsigned char *p)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

void qt_avx512_f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, load16_f16(p + 2 * i));
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, maskz_load_f16(m, p + 2 * i));
    }
}

void qt_avx512_f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(p + 2 * i), h);
    }
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        __m256i h =
            _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(p + 2 * i, m, h);
    }
}

void qt_avx512_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        prefetch_ahead(a + 2 * i, 0);
        prefetch_ahead(a + 2 * i, 64);
        acc0 = _mm512_fmadd_ps(load16_f16(a + 2 * i), load16_f16(b + 2 * i), acc0);
        acc1 = _mm512_fmadd_ps(load16_f16(a + 2 * i + 32), load16_f16(b + 2 * i + 32), acc1);
        acc2 = _mm512_fmadd_ps(load16_f16(a + 2 * i + 64), load16_f16(b + 2 * i + 64), acc2);
        acc3 = _mm512_fmadd_ps(load16_f16(a + 2 * i + 96), load16_f16(b + 2 * i + 96), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(load16_f16(a + 2 * i), load16_f16(b + 2 * i), acc0);
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        acc1 = _mm512_fmadd_ps(maskz_load_f16(m, a + 2 * i), maskz_load_f16(m, b + 2 * i), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

static inline __m512 widen_bf16(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 load16_bf16(const unsigned char *p)
{
    return widen_bf16(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 maskz_load_bf16(__mmask16 m, const unsigned char *p)
{
    return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
}

void qt_avx512_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, load16_bf16(p + 2 * i));
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, maskz_load_bf16(m, p + 2 * i));
    }
}

/* Round to nearest even by adding 0x7fff plus the lowest kept bit; a NaN
 * keeps its top bits and is made quiet, as qt_bf16_encode does. */
static inline __m256i bf16_round(__m512 v)
{
    __m512i u = _mm512_castps_si512(v);
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i top = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                 _mm512_and_si512(top, _mm512_set1_epi32(1)));
    r = _mm512_srli_epi32(r, 16);
    r = _mm512_mask_or_epi32(r, nan, top, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

void qt_avx512_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(p + 2 * i), bf16_round(_mm512_loadu_ps(src + i)));
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        _mm256_mask_storeu_epi16(p + 2 * i, m, bf16_round(_mm512_maskz_loadu_ps(m, src + i)));
    }
}

void qt_avx512_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        prefetch_ahead(a + 2 * i, 0);
        prefetch_ahead(a + 2 * i, 64);
        acc0 = _mm512_fmadd_ps(load16_bf16(a + 2 * i), load16_bf16(b + 2 * i), acc0);
        acc1 = _mm512_fmadd_ps(load16_bf16(a + 2 * i + 32), load16_bf16(b + 2 * i + 32), acc1);
        acc2 = _mm512_fmadd_ps(load16_bf16(a + 2 * i + 64), load16_bf16(b + 2 * i + 64), acc2);
        acc3 = _mm512_fmadd_ps(load16_bf16(a + 2 * i + 96), load16_bf16(b + 2 * i + 96), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(load16_bf16(a + 2 * i), load16_bf16(b + 2 * i), acc0);
    if (i < n) {
        __mmask16 m = low_mask16(n - i);
        acc1 = _mm512_fmadd_ps(maskz_load_bf16(m, a + 2 * i), maskz_load_bf16(m, b + 2 * i), acc1);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

/* ---- Q8 activation quantizers ----------------------------------------- */

/* 16 floats, already multiplied by 1/d, to codes by quant_q8.c's rule. */
static inline __m512i q8_codes(__m512 t)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    /* max first: a NaN becomes -127 like the scalar clamp */
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
    __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 frac = _mm512_andnot_ps(sign, _mm512_sub_ps(t, whole));
    __m512 away = _mm512_or_ps(_mm512_and_ps(t, sign), _mm512_set1_ps(1.0f));
    __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_cvtps_epi32(_mm512_mask_add_ps(whole, up, whole, away));
}

/* One block of 32 floats to codes; returns the fp32 scale and the code sum. */
static inline float quantize_block_q8(const float *x, int8_t *qs, int *sum_out)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 v0 = _mm512_loadu_ps(x);
    __m512 v1 = _mm512_loadu_ps(x + 16);
    /* max_ps returns its second operand when the first is NaN, so the
     * running maximum skips NaNs as the scalar `if (a > amax)` does */
    __m512 m = _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_setzero_ps());
    m = _mm512_max_ps(_mm512_andnot_ps(sign, v1), m);
    float d = _mm512_reduce_max_ps(m) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    __m512 vid = _mm512_set1_ps(id);
    __m512i q0 = q8_codes(_mm512_mul_ps(v0, vid));
    __m512i q1 = q8_codes(_mm512_mul_ps(v1, vid));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtepi32_epi8(q1));
    *sum_out = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    return d;
}

void qt_avx512_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    }
}

void qt_avx512_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        b[i].s = (uint16_t)_cvtss_sh(d * (float)sum, _MM_FROUND_TO_NEAREST_INT);
    }
}

/* ---- 8-bit integer dots ------------------------------------------------ */

/* [lo in lanes 0..7 | hi in lanes 8..15]: the scales of a block pair. A
 * lone last block passes hi = 0, so its empty upper half adds nothing. */
static inline __m512 pair_ps(float lo, float hi)
{
    return _mm512_mask_broadcastss_ps(_mm512_set1_ps(lo), 0xff00, _mm_set_ss(hi));
}

/* Scale products of the pair (blocks i and i + 1, or block i alone). */
static inline __m512 scales(uint16_t dx0, uint16_t dy0, uint16_t dx1, uint16_t dy1, bool pair)
{
    return pair_ps(fp16_table[dx0] * fp16_table[dy0], pair ? fp16_table[dx1] * fp16_table[dy1] : 0.0f);
}

/* Activation codes of two blocks, or of one with zeros above. */
static inline __m512i y_codes(const int8_t *y0, const int8_t *y1, bool pair)
{
    __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y0));
    if (pair)
        return _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)y1), 1);
    return _mm512_maskz_mov_epi64(0x0f, v);
}

/* 4-bit codes of two blocks as bytes in element order (the low nibbles of a
 * block are its elements 0..15, the high nibbles 16..31): each 16-byte qs
 * goes to two 128-bit lanes, the odd lanes shift right by 4, a mask keeps
 * the low nibble. One block alone leaves the upper half zero. */
static inline __m512i nibble_codes(const uint8_t *q0, const uint8_t *q1, bool pair)
{
    __m512i v;
    if (pair) {
        v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q0));
        v = _mm512_mask_broadcast_i32x4(v, 0xff00, _mm_loadu_si128((const __m128i *)q1));
    } else {
        v = _mm512_maskz_broadcast_i32x4(0x00ff, _mm_loadu_si128((const __m128i *)q0));
    }
    v = _mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

/* Q5: 0x10 added to the bytes whose fifth bit qh holds. Byte j of each half
 * is element j, so the pair's qh words are the byte mask as they stand. */
static inline __m512i add_fifth_bit(__m512i v, const uint8_t *qh0, const uint8_t *qh1, bool pair)
{
    uint64_t bits = load_u32(qh0);
    if (pair)
        bits |= (uint64_t)load_u32(qh1) << 32;
    return _mm512_mask_add_epi8(v, (__mmask64)bits, v, _mm512_set1_epi8(0x10));
}

/* sum(w * y) - k * sum(y) per lane: the dot of the unsigned stored codes
 * minus their offset k, still exact in int32. */
static inline __m512i dot_offset(__m512i w, __m512i y, char k)
{
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, y);
    __m512i off = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(k), y);
    return _mm512_sub_epi32(dot, off);
}

static inline __m512 fma_lanes(__m512i dot, __m512 scale, __m512 acc)
{
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
}

/* One step over blocks i and i + 1 (or i alone) of each type. A lone block
 * reads nothing past itself: its "next" pointers point at it again.
 * offsets collects the _1 types' min terms; the symmetric types have none. */

static inline __m512 step_q8_0(__m512 acc, float *offsets, const qt_block_q8_0 *a, const qt_block_q8_0 *b,
                               bool pair)
{
    (void)offsets;
    const qt_block_q8_0 *a1 = pair ? a + 1 : a, *b1 = pair ? b + 1 : b;
    __m512i w = y_codes(a->qs, a1->qs, pair);
    w = _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80)); /* w + 128 as unsigned */
    return fma_lanes(dot_offset(w, y_codes(b->qs, b1->qs, pair), (char)0x80),
                     scales(a->d, b->d, a1->d, b1->d, pair), acc);
}

static inline __m512 step_q4_0(__m512 acc, float *offsets, const qt_block_q4_0 *a, const qt_block_q8_0 *b,
                               bool pair)
{
    (void)offsets;
    const qt_block_q4_0 *a1 = pair ? a + 1 : a;
    const qt_block_q8_0 *b1 = pair ? b + 1 : b;
    __m512i w = nibble_codes(a->qs, a1->qs, pair);
    return fma_lanes(dot_offset(w, y_codes(b->qs, b1->qs, pair), 8), scales(a->d, b->d, a1->d, b1->d, pair),
                     acc);
}

static inline __m512 step_q5_0(__m512 acc, float *offsets, const qt_block_q5_0 *a, const qt_block_q8_0 *b,
                               bool pair)
{
    (void)offsets;
    const qt_block_q5_0 *a1 = pair ? a + 1 : a;
    const qt_block_q8_0 *b1 = pair ? b + 1 : b;
    __m512i w = add_fifth_bit(nibble_codes(a->qs, a1->qs, pair), a->qh, a1->qh, pair);
    return fma_lanes(dot_offset(w, y_codes(b->qs, b1->qs, pair), 16), scales(a->d, b->d, a1->d, b1->d, pair),
                     acc);
}

/* The _1 types have no offset in their codes; their min m adds m * s per
 * block (s = d * sum of the activation codes, stored in Q8_1). */
static inline __m512 step_q4_1(__m512 acc, float *offsets, const qt_block_q4_1 *a, const qt_block_q8_1 *b,
                               bool pair)
{
    const qt_block_q4_1 *a1 = pair ? a + 1 : a;
    const qt_block_q8_1 *b1 = pair ? b + 1 : b;
    __m512i w = nibble_codes(a->qs, a1->qs, pair);
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, y_codes(b->qs, b1->qs, pair));
    *offsets += fp16_table[a->m] * fp16_table[b->s];
    if (pair)
        *offsets += fp16_table[a1->m] * fp16_table[b1->s];
    return fma_lanes(dot, scales(a->d, b->d, a1->d, b1->d, pair), acc);
}

static inline __m512 step_q5_1(__m512 acc, float *offsets, const qt_block_q5_1 *a, const qt_block_q8_1 *b,
                               bool pair)
{
    const qt_block_q5_1 *a1 = pair ? a + 1 : a;
    const qt_block_q8_1 *b1 = pair ? b + 1 : b;
    __m512i w = add_fifth_bit(nibble_codes(a->qs, a1->qs, pair), a->qh, a1->qh, pair);
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, y_codes(b->qs, b1->qs, pair));
    *offsets += fp16_table[a->m] * fp16_table[b->s];
    if (pair)
        *offsets += fp16_table[a1->m] * fp16_table[b1->s];
    return fma_lanes(dot, scales(a->d, b->d, a1->d, b1->d, pair), acc);
}

/* Four blocks per turn into two accumulators, then a pair, then a lone
 * block; every cache line of the weights is prefetched once per turn. */
#define DOT_LOOP(STEP, BLOCK_T, offs)                                  \
    do {                                                               \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(); \
        int64_t i = 0;                                                 \
        for (; i + 4 <= nb; i += 4) {                                  \
            for (size_t off = 0; off < 4 * sizeof(BLOCK_T); off += 64) \
                prefetch_ahead(&a[i], off);                            \
            acc0 = STEP(acc0, offs, &a[i], &b[i], true);               \
            acc1 = STEP(acc1, offs, &a[i + 2], &b[i + 2], true);       \
        }                                                              \
        if (i + 2 <= nb) {                                             \
            acc0 = STEP(acc0, offs, &a[i], &b[i], true);               \
            i += 2;                                                    \
        }                                                              \
        if (i < nb)                                                    \
            acc1 = STEP(acc1, offs, &a[i], &b[i], false);              \
        sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));         \
    } while (0)

void qt_avx512_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q8_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float sum;
    DOT_LOOP(step_q8_0, qt_block_q8_0, NULL);
    *s = sum;
}

void qt_avx512_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float sum;
    DOT_LOOP(step_q4_0, qt_block_q4_0, NULL);
    *s = sum;
}

void qt_avx512_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    float sum;
    DOT_LOOP(step_q5_0, qt_block_q5_0, NULL);
    *s = sum;
}

void qt_avx512_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    float sum, offsets = 0.0f;
    DOT_LOOP(step_q4_1, qt_block_q4_1, &offsets);
    *s = sum + offsets;
}

void qt_avx512_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    float sum, offsets = 0.0f;
    DOT_LOOP(step_q5_1, qt_block_q5_1, &offsets);
    *s = sum + offsets;
}

/* ---- gemm tiles ------------------------------------------------------------
 *
 * Prompt batches (nt > 1). One register holds a 4 x 4 block of outputs:
 * lane 4 r + c is weight row r against token c. Over one 32-element block,
 * step k (0..7) multiplies dword k of each row (replicated across its
 * 128-bit lane) by dword k of each token (the four tokens' dwords, the same
 * in every 128-bit lane), so eight vpdpbusd leave the whole block's integer
 * dot of every (row, token) pair in its own lane: no horizontal sums, and
 * one conversion, one scale product and one FMA per 16 outputs per block.
 *
 * The token side of that layout (four tokens' codes interleaved by dword,
 * their offset terms and scales) is built once per call and chunk of blocks
 * into a panel on the stack (act_panel) and then read by every row; the row
 * side is unpacked per block from the weights in place. A call takes up to
 * GEMM_ROWS rows so the panel's cost spreads over many rows.
 *
 * Decode (nt == 1) has no second token to fill lanes with; it has its own
 * kernels (gemv_q4_0, gemv_q8_0), described after the tiles.
 */

#define GEMM_ROWS QT_AVX512_GEMM_ROWS
#define GEMM_COLS QT_AVX512_GEMM_COLS
#define GEMM_KC 32 /* blocks per chunk: the panel (20 KiB) stays in L1 */

typedef struct act_panel {
    int32_t y[GEMM_KC][GEMM_COLS / 4][8][4]; /* [block][group][k][token] code dwords */
    int32_t off[GEMM_KC][GEMM_COLS / 4][4];  /* -(weight offset) * sum of codes */
    float dy[GEMM_KC][GEMM_COLS / 4][4];     /* activation scales */
} act_panel;

/* Fill the panel for blocks kb .. kb + nkb of tokens 0 .. nt (missing tokens
 * of the last group get zero codes and scale), offset term -(sum << shift).
 * Always inlined: GCC 12's interprocedural analysis dropped the call of an
 * outlined copy (its stores into the caller's stack panel were lost at -O1
 * and above; clang and GCC -O0 were right), which the gemm test caught. */
static inline __attribute__((always_inline)) void panel_fill(act_panel *p, const uint8_t *y, size_t y_stride,
                                                             int nt, int64_t kb, int nkb, int shift)
{
    const __m512i idx_lo = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
    const __m512i idx_hi = _mm512_add_epi32(idx_lo, _mm512_set1_epi32(4));
    const __m512i ones = _mm512_set1_epi8(1);
    for (int g = 0; g < (nt + 3) / 4; g++) {
        const qt_block_q8_0 *rows[4];
        for (int c = 0; c < 4; c++)
            rows[c] =
                4 * g + c < nt ? (const qt_block_q8_0 *)(y + (size_t)(4 * g + c) * y_stride) + kb : NULL;
        for (int b = 0; b < nkb; b++) {
            __m256i t[4];
            float d[4];
            for (int c = 0; c < 4; c++) {
                t[c] = rows[c] ? _mm256_loadu_si256((const __m256i *)rows[c][b].qs) : _mm256_setzero_si256();
                d[c] = rows[c] ? fp16_table[rows[c][b].d] : 0.0f;
            }
            __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(t[0]), t[1], 1);
            __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(t[2]), t[3], 1);
            __m512i lo = _mm512_permutex2var_epi32(z01, idx_lo, z23);
            __m512i hi = _mm512_permutex2var_epi32(z01, idx_hi, z23);
            _mm512_storeu_si512(&p->y[b][g][0][0], lo);
            _mm512_storeu_si512(&p->y[b][g][4][0], hi);
            __m512i sum =
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo), ones, hi);
            __m128i s4 = _mm_add_epi32(
                _mm_add_epi32(_mm512_castsi512_si128(sum), _mm512_extracti32x4_epi32(sum, 1)),
                _mm_add_epi32(_mm512_extracti32x4_epi32(sum, 2), _mm512_extracti32x4_epi32(sum, 3)));
            s4 = _mm_sub_epi32(_mm_setzero_si128(), _mm_sll_epi32(s4, _mm_cvtsi32_si128(shift)));
            _mm_storeu_si128((__m128i *)p->off[b][g], s4);
            _mm_storeu_ps(p->dy[b][g], _mm_loadu_ps(d));
        }
    }
}

/* Four weight rows' block as the eight per-step operands (unsigned codes)
 * and their scales [d0 x4 | d1 x4 | d2 x4 | d3 x4]. */
typedef struct row_steps {
    __m512i w[8];
    __m512 d;
} row_steps;

static inline __m512 row_scales(uint16_t d0, uint16_t d1, uint16_t d2, uint16_t d3)
{
    __m512 v = _mm512_set1_ps(fp16_table[d0]);
    v = _mm512_mask_broadcastss_ps(v, 0x00f0, _mm_load_ss(&fp16_table[d1]));
    v = _mm512_mask_broadcastss_ps(v, 0x0f00, _mm_load_ss(&fp16_table[d2]));
    return _mm512_mask_broadcastss_ps(v, 0xf000, _mm_load_ss(&fp16_table[d3]));
}

static inline void steps_q4_0(row_steps *o, const qt_block_q4_0 *r0, const qt_block_q4_0 *r1,
                              const qt_block_q4_0 *r2, const qt_block_q4_0 *r3)
{
    __m512i q = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)r0->qs));
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)r1->qs), 1);
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)r2->qs), 2);
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)r3->qs), 3);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i lo = _mm512_and_si512(q, m4);                       /* elements 0..15 */
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4); /* elements 16..31 */
    o->w[0] = _mm512_shuffle_epi32(lo, _MM_PERM_AAAA);
    o->w[1] = _mm512_shuffle_epi32(lo, _MM_PERM_BBBB);
    o->w[2] = _mm512_shuffle_epi32(lo, _MM_PERM_CCCC);
    o->w[3] = _mm512_shuffle_epi32(lo, _MM_PERM_DDDD);
    o->w[4] = _mm512_shuffle_epi32(hi, _MM_PERM_AAAA);
    o->w[5] = _mm512_shuffle_epi32(hi, _MM_PERM_BBBB);
    o->w[6] = _mm512_shuffle_epi32(hi, _MM_PERM_CCCC);
    o->w[7] = _mm512_shuffle_epi32(hi, _MM_PERM_DDDD);
    o->d = row_scales(r0->d, r1->d, r2->d, r3->d);
}

static inline void steps_q8_0(row_steps *o, const qt_block_q8_0 *r0, const qt_block_q8_0 *r1,
                              const qt_block_q8_0 *r2, const qt_block_q8_0 *r3)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)r0->qs)),
                                     _mm256_loadu_si256((const __m256i *)r1->qs), 1);
    __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)r2->qs)),
                                     _mm256_loadu_si256((const __m256i *)r3->qs), 1);
    z01 = _mm512_xor_si512(z01, flip);
    z23 = _mm512_xor_si512(z23, flip);
    for (int k = 0; k < 8; k++) {
        __m512i idx = _mm512_setr_epi32(k, k, k, k, 8 + k, 8 + k, 8 + k, 8 + k, 16 + k, 16 + k, 16 + k,
                                        16 + k, 24 + k, 24 + k, 24 + k, 24 + k);
        o->w[k] = _mm512_permutex2var_epi32(z01, idx, z23);
    }
    o->d = row_scales(r0->d, r1->d, r2->d, r3->d);
}

/* Weight types with a gemm tile, as compile-time choices of one template. */
enum { TILE_Q4_0, TILE_Q8_0 };

/* acc[g] += this block's 4 x 4 products of rows (o) and token group g. */
static inline __attribute__((always_inline)) void tile_block(__m512 *acc, const row_steps *o,
                                                             const act_panel *p, int b, int ng)
{
    for (int g = 0; g < ng; g++) {
        const int32_t(*yk)[4] = p->y[b][g];
        __m512i i0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p->off[b][g]));
        __m512i i1 = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            i0 = _mm512_dpbusd_epi32(i0, o->w[k],
                                     _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)yk[k])));
            i1 = _mm512_dpbusd_epi32(i1, o->w[k + 4],
                                     _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)yk[k + 4])));
        }
        __m512 dy = _mm512_broadcast_f32x4(_mm_loadu_ps(p->dy[b][g]));
        acc[g] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), _mm512_mul_ps(o->d, dy), acc[g]);
    }
}

static inline __attribute__((always_inline)) void gemm_tiles(int kind, int64_t n, float *restrict s,
                                                             size_t ld_s, const void *restrict x,
                                                             size_t x_stride, int nr, const void *restrict y,
                                                             size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK;
    const int ng = (nt + 3) / 4;
    const int nsub = (nr + 3) / 4;
    const size_t bbytes = kind == TILE_Q4_0 ? sizeof(qt_block_q4_0) : sizeof(qt_block_q8_0);
    act_panel panel;
    __m512 accs[GEMM_ROWS / 4][GEMM_COLS / 4];
    for (int i = 0; i < nsub; i++)
        for (int g = 0; g < ng; g++)
            accs[i][g] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < nb; kb += GEMM_KC) {
        int nkb = nb - kb < GEMM_KC ? (int)(nb - kb) : GEMM_KC;
        panel_fill(&panel, y, y_stride, nt, kb, nkb, kind == TILE_Q4_0 ? 3 : 7);
        for (int sub = 0; sub < nsub; sub++) {
            /* rows past nr repeat the first row; their lanes are not stored */
            const uint8_t *rp[4];
            for (int r = 0; r < 4; r++) {
                int row = 4 * sub + r < nr ? 4 * sub + r : 4 * sub;
                rp[r] = (const uint8_t *)x + (size_t)row * x_stride + (size_t)kb * bbytes;
            }
            __m512 acc[GEMM_COLS / 4];
            for (int g = 0; g < GEMM_COLS / 4; g++)
                acc[g] = accs[sub][g];
            for (int b = 0; b < nkb; b++) {
                row_steps o;
                if (kind == TILE_Q4_0)
                    steps_q4_0(&o, (const qt_block_q4_0 *)rp[0] + b, (const qt_block_q4_0 *)rp[1] + b,
                               (const qt_block_q4_0 *)rp[2] + b, (const qt_block_q4_0 *)rp[3] + b);
                else
                    steps_q8_0(&o, (const qt_block_q8_0 *)rp[0] + b, (const qt_block_q8_0 *)rp[1] + b,
                               (const qt_block_q8_0 *)rp[2] + b, (const qt_block_q8_0 *)rp[3] + b);
                switch (ng) {
                case 1:
                    tile_block(acc, &o, &panel, b, 1);
                    break;
                case 2:
                    tile_block(acc, &o, &panel, b, 2);
                    break;
                case 3:
                    tile_block(acc, &o, &panel, b, 3);
                    break;
                default:
                    tile_block(acc, &o, &panel, b, 4);
                    break;
                }
            }
            for (int g = 0; g < GEMM_COLS / 4; g++)
                accs[sub][g] = acc[g];
        }
    }
    for (int sub = 0; sub < nsub; sub++) {
        for (int g = 0; g < ng; g++) {
            float lanes[16];
            _mm512_storeu_ps(lanes, accs[sub][g]);
            for (int r = 0; r < 4 && 4 * sub + r < nr; r++)
                for (int c = 0; c < 4 && 4 * g + c < nt; c++)
                    s[(size_t)(4 * g + c) * ld_s + (size_t)(4 * sub + r)] = lanes[4 * r + c];
        }
    }
}

/* Decode (one token). The activation side is worked out once per call into
 * a layout that meets the weights as they lie, then each row streams
 * through alone, front to back (one sequential read per thread for the
 * prefetchers).
 *
 * Q4_0 goes four blocks (72 bytes) per register: a 64-byte and a 16-byte
 * load of the row, one vpermt2w gathering the four 16-byte qs (they start
 * at even offsets, 2 + 18 k, so 16-bit lanes suffice, and AVX-512 BW is
 * enough) into one register; a mask gives elements 0..15 of each block, a
 * shift and a mask 16..31, and the activation quad is stored in that order
 * (q4_quad). Lanes 4k..4k+3 of the two vpdpbusd hold block k, so the four
 * fp16 scales (one vpermw of the first load) widen straight into the float
 * lanes that meet them. Q8_0 goes two blocks (68 bytes) per register the
 * same way (q8_pair). Per block of weights that is about half the
 * instructions of the dots above (measured in L2 on a Zen 5 core: Q4_0 from
 * 27 to 45 GB/s, Q8_0 from 40 to 52 GB/s), which decode needs: at two
 * threads each core must keep up with half the machine's DRAM bandwidth
 * with time to spare. */
#define GEMV_PREFETCH_BYTES 4096 /* ahead of the read position (2 KiB was too short, measured) */

static inline __attribute__((always_inline)) void prefetch_far(const void *p, size_t off)
{
    _mm_prefetch((const char *)((uintptr_t)p + GEMV_PREFETCH_BYTES + off), _MM_HINT_T0);
}

/* Four Q8_0 activation blocks as a Q4_0 row quad meets them. */
typedef struct q4_quad {
    __m512i ylo; /* elements 0..15 of blocks 0..3, 16 bytes each */
    __m512i yhi; /* elements 16..31 */
    __m512i off; /* -8 * the codes each int32 lane meets: the weights' offset */
    __m512 dy;   /* lane 4 k + j: scale of block k */
} q4_quad;

/* Two Q8_0 activation blocks as a Q8_0 row pair meets them. */
typedef struct q8_pair {
    __m512i y;   /* codes of both blocks */
    __m512i off; /* -128 * the codes each lane meets (weights enter + 128) */
    __m512 dy;   /* lanes 0..7 block 0, 8..15 block 1 */
} q8_pair;

#define GEMV_QUADS 64  /* Q4_0 quads per pass over the rows: 16 KiB */
#define GEMV_PAIRS 128 /* Q8_0 pairs per pass: 24 KiB */

static inline __m512i neg_dpbusd(__m512i acc, char k, __m512i y)
{
    return _mm512_sub_epi32(acc, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(k), y));
}

static inline void q4_quad_fill(q4_quad *o, const qt_block_q8_0 *b)
{
    /* block k's two halves to 128-bit lane k of lo and of hi */
    __m512i y01 = y_codes(b[0].qs, b[1].qs, true), y23 = y_codes(b[2].qs, b[3].qs, true);
    __m512i lo = _mm512_shuffle_i64x2(y01, y23, _MM_SHUFFLE(2, 0, 2, 0));
    __m512i hi = _mm512_shuffle_i64x2(y01, y23, _MM_SHUFFLE(3, 1, 3, 1));
    o->ylo = lo;
    o->yhi = hi;
    o->off = neg_dpbusd(neg_dpbusd(_mm512_setzero_si512(), 8, lo), 8, hi);
    __m512 d = _mm512_set1_ps(fp16_table[b[0].d]);
    d = _mm512_mask_broadcastss_ps(d, 0x00f0, _mm_load_ss(&fp16_table[b[1].d]));
    d = _mm512_mask_broadcastss_ps(d, 0x0f00, _mm_load_ss(&fp16_table[b[2].d]));
    o->dy = _mm512_mask_broadcastss_ps(d, 0xf000, _mm_load_ss(&fp16_table[b[3].d]));
}

static inline void q8_pair_fill(q8_pair *o, const qt_block_q8_0 *b)
{
    __m512i y = y_codes(b[0].qs, b[1].qs, true);
    o->y = y;
    o->off = neg_dpbusd(_mm512_setzero_si512(), (char)0x80, y);
    o->dy = pair_ps(fp16_table[b[0].d], fp16_table[b[1].d]);
}

/* Word gathers of q4_quad_dot. qs: word w is block w / 8, qs word w % 8,
 * at row word 9 (w / 8) + 1 + w % 8; indices from 32 on pick the second
 * load, 16 bytes from byte 56, whose words 4..7 are the last block's end.
 * d: lane 4 k + j gets block k's scale. */
static const uint16_t q4_idx_qs[32] __attribute__((aligned(64))) = {
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17,
    19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32 + 4, 32 + 5, 32 + 6, 32 + 7};
static const uint16_t q4_idx_d[32] __attribute__((aligned(64))) = {0, 0, 0, 0, 9, 9, 9, 9, 18, 18, 18, 18,
                                                                   27, 27, 27, 27};
/* That of q8_pair_dot: lanes 0..7 block 0's scale, 8..15 block 1's. */
static const uint16_t q8_idx_d[32] __attribute__((aligned(64))) = {0, 0, 0, 0, 0, 0, 0, 0,
                                                                   17, 17, 17, 17, 17, 17, 17, 17};

/* acc += the dot of the Q4_0 row quad at p with activation quad a. */
static inline __attribute__((always_inline)) __m512 q4_quad_dot(__m512 acc, const uint8_t *p, const q4_quad *a)
{
    const __m512i idx_qs = _mm512_load_si512(q4_idx_qs);
    const __m512i idx_d = _mm512_load_si512(q4_idx_d);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    /* the quad's last 8 bytes through a 16-byte load: a second 64-byte load
     * would cross a cache line nearly every time (measured 12% slower) */
    __m512i v0 = _mm512_loadu_si512(p);
    __m512i v1 = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + 56)));
    __m512i q = _mm512_permutex2var_epi16(v0, idx_qs, v1);
    __m512i i = _mm512_dpbusd_epi32(a->off, _mm512_and_si512(q, m4), a->ylo);
    i = _mm512_dpbusd_epi32(i, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), a->yhi);
    __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx_d, v0)));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, a->dy), acc);
}

/* acc += the dot of the Q8_0 row pair at p with activation pair a. The codes
 * come in as two 32-byte loads (a word gather from two 64-byte loads was
 * slower, measured), the two scales through one vpermw. */
static inline __attribute__((always_inline)) __m512 q8_pair_dot(__m512 acc, const uint8_t *p, const q8_pair *a)
{
    const __m512i idx_d = _mm512_load_si512(q8_idx_d);
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 2))),
                                   _mm256_loadu_si256((const __m256i *)(p + 36)), 1);
    q = _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
    __m512i i = _mm512_dpbusd_epi32(a->off, q, a->y);
    __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx_d, _mm512_loadu_si512(p))));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, a->dy), acc);
}

static void gemv_q4_0(int64_t n, float *restrict s, const void *restrict x, size_t x_stride, int nr,
                      const void *restrict y)
{
    const int64_t nb = n / QT_QK, nq = nb / 4;
    const qt_block_q8_0 *b = y;
    q4_quad aq[GEMV_QUADS];
    for (int r = 0; r < nr; r++)
        s[r] = 0.0f;
    for (int64_t q0 = 0; q0 < nq; q0 += GEMV_QUADS) {
        const int nqc = nq - q0 < GEMV_QUADS ? (int)(nq - q0) : GEMV_QUADS;
        for (int q = 0; q < nqc; q++)
            q4_quad_fill(&aq[q], b + 4 * (q0 + q));
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = (const uint8_t *)x + (size_t)r * x_stride + (size_t)q0 * 72;
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            int q = 0;
            for (; q + 2 <= nqc; q += 2) {
                const uint8_t *p = row + (size_t)q * 72;
                prefetch_far(p, 0);
                prefetch_far(p, 64);
                prefetch_far(p, 128);
                acc0 = q4_quad_dot(acc0, p, &aq[q]);
                acc1 = q4_quad_dot(acc1, p + 72, &aq[q + 1]);
            }
            if (q < nqc)
                acc0 = q4_quad_dot(acc0, row + (size_t)q * 72, &aq[q]);
            s[r] += _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        }
    }
    if (nb % 4) { /* the last one to three blocks, as in the dots */
        const int64_t i = 4 * nq;
        for (int r = 0; r < nr; r++) {
            const qt_block_q4_0 *a = (const qt_block_q4_0 *)((const uint8_t *)x + (size_t)r * x_stride) + i;
            __m512 acc = _mm512_setzero_ps();
            if (nb - i >= 2)
                acc = step_q4_0(acc, NULL, a, b + i, true);
            if ((nb - i) % 2)
                acc = step_q4_0(acc, NULL, a + nb - i - 1, b + nb - 1, false);
            s[r] += _mm512_reduce_add_ps(acc);
        }
    }
}

static void gemv_q8_0(int64_t n, float *restrict s, const void *restrict x, size_t x_stride, int nr,
                      const void *restrict y)
{
    const int64_t nb = n / QT_QK, np = nb / 2;
    const qt_block_q8_0 *b = y;
    q8_pair ap[GEMV_PAIRS];
    for (int r = 0; r < nr; r++)
        s[r] = 0.0f;
    for (int64_t p0 = 0; p0 < np; p0 += GEMV_PAIRS) {
        const int npc = np - p0 < GEMV_PAIRS ? (int)(np - p0) : GEMV_PAIRS;
        for (int p = 0; p < npc; p++)
            q8_pair_fill(&ap[p], b + 2 * (p0 + p));
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = (const uint8_t *)x + (size_t)r * x_stride + (size_t)p0 * 68;
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            int p = 0;
            for (; p + 2 <= npc; p += 2) {
                const uint8_t *a = row + (size_t)p * 68;
                prefetch_far(a, 0);
                prefetch_far(a, 64);
                prefetch_far(a, 128);
                acc0 = q8_pair_dot(acc0, a, &ap[p]);
                acc1 = q8_pair_dot(acc1, a + 68, &ap[p + 1]);
            }
            if (p < npc)
                acc0 = q8_pair_dot(acc0, row + (size_t)p * 68, &ap[p]);
            s[r] += _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        }
    }
    if (nb % 2) {
        for (int r = 0; r < nr; r++) {
            const qt_block_q8_0 *a = (const qt_block_q8_0 *)((const uint8_t *)x + (size_t)r * x_stride) + nb - 1;
            s[r] += _mm512_reduce_add_ps(step_q8_0(_mm512_setzero_ps(), NULL, a, b + nb - 1, false));
        }
    }
}

void qt_avx512_q4_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                         int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1)
        gemv_q4_0(n, s, x, x_stride, nr, y);
    else
        gemm_tiles(TILE_Q4_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q8_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                         int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1)
        gemv_q8_0(n, s, x, x_stride, nr, y);
    else
        gemm_tiles(TILE_Q8_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}
