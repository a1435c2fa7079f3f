/*
 * quant_avx2.c - AVX2 + FMA + F16C kernels for the qt_ table.
 *
 * This file alone is compiled with -mavx2 -mfma -mf16c; quant.c calls into
 * it only after its CPU probe has seen all three features, so nothing here
 * may run (or be inlined) elsewhere.
 *
 * The 8-bit dots are integer: 32 weight codes times 32 activation codes per
 * block with maddubs (u8 x s8 -> pairs of s16) and madd (-> s32), then one
 * FMA by the product of the two block scales. maddubs needs one unsigned
 * operand; signed weights are made unsigned by moving their sign onto the
 * activation (sign_epi8), which is exact because activation codes never hold
 * -128 (our quantizers clamp to -127..127). Pair sums stay within s16: at
 * most 2 * 128 * 127. Decode is memory-bound, so two blocks go per loop turn
 * into two accumulators, weights are software-prefetched, and block scales
 * come from a 64K-entry fp16 table (see fp16_table) so the loop spends its
 * shuffle port on the integer dot alone.
 *
 * The Q8 quantizers must give the scalar bytes exactly (tests check): same
 * fp32 scale arithmetic, same clamp, and roundf's ties-away-from-zero built
 * from truncation, because the CPU's round-to-nearest would round ties to
 * even.
 */
#include <immintrin.h>

#include "quant_impl.h"

static inline float fp16_to_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}

static inline uint16_t f32_to_fp16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Weights stream from DRAM once per token; with the hardware prefetcher
 * alone the Q4_0 dot read 3 GB/s where the memory gives 21 (measured), so
 * each loop turn also asks for the line this far ahead. Past the row's end
 * it warms the next row, which a matmul reads next; a prefetch never faults,
 * and the address is formed as an integer so no pointer leaves its object. */
#define PREFETCH_BYTES 2048

static inline void prefetch_ahead(const void *p)
{
    _mm_prefetch((const char *)((uintptr_t)p + PREFETCH_BYTES), _MM_HINT_T0);
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

/* ---- F32, F16, BF16 ---------------------------------------------------- */

void qt_avx2_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const float *a = x;
    const float *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += a[i] * b[i];
    *s = sum;
}

static inline __m256 load8_f16(const unsigned char *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

void qt_avx2_f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8_f16(p + 2 * i));
    for (; i < n; i++)
        dst[i] = fp16_to_f32(load_u16(p + 2 * i));
}

void qt_avx2_f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(p + 2 * i), h);
    }
    for (; i < n; i++)
        store_u16(p + 2 * i, f32_to_fp16(src[i]));
}

void qt_avx2_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_ahead(a + 2 * i);
        acc0 = _mm256_fmadd_ps(load8_f16(a + 2 * i), load8_f16(b + 2 * i), acc0);
        acc1 = _mm256_fmadd_ps(load8_f16(a + 2 * i + 16), load8_f16(b + 2 * i + 16), acc1);
        acc2 = _mm256_fmadd_ps(load8_f16(a + 2 * i + 32), load8_f16(b + 2 * i + 32), acc2);
        acc3 = _mm256_fmadd_ps(load8_f16(a + 2 * i + 48), load8_f16(b + 2 * i + 48), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(load8_f16(a + 2 * i), load8_f16(b + 2 * i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += fp16_to_f32(load_u16(a + 2 * i)) * fp16_to_f32(load_u16(b + 2 * i));
    *s = sum;
}

static inline __m256 load8_bf16(const unsigned char *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

void qt_avx2_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const unsigned char *p = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8_bf16(p + 2 * i));
    for (; i < n; i++)
        dst[i] = qt_bf16_to_fp32(load_u16(p + 2 * i));
}

void qt_avx2_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    unsigned char *p = dst;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i bias = _mm256_set1_epi32(0x7fff);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
        __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        __m256i top = _mm256_srli_epi32(u, 16);
        /* round to nearest even: add 0x7fff plus the lowest kept bit */
        __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(top, one));
        r = _mm256_srli_epi32(r, 16);
        r = _mm256_blendv_epi8(r, _mm256_or_si256(top, quiet), is_nan);
        /* packus works per 128-bit lane; gather the two 64-bit halves */
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), _MM_SHUFFLE(3, 1, 2, 0));
        _mm_storeu_si128((__m128i *)(p + 2 * i), _mm256_castsi256_si128(packed));
    }
    for (; i < n; i++)
        store_u16(p + 2 * i, qt_bf16_encode(src[i]));
}

void qt_avx2_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const unsigned char *a = x;
    const unsigned char *b = y;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_ahead(a + 2 * i);
        acc0 = _mm256_fmadd_ps(load8_bf16(a + 2 * i), load8_bf16(b + 2 * i), acc0);
        acc1 = _mm256_fmadd_ps(load8_bf16(a + 2 * i + 16), load8_bf16(b + 2 * i + 16), acc1);
        acc2 = _mm256_fmadd_ps(load8_bf16(a + 2 * i + 32), load8_bf16(b + 2 * i + 32), acc2);
        acc3 = _mm256_fmadd_ps(load8_bf16(a + 2 * i + 48), load8_bf16(b + 2 * i + 48), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(load8_bf16(a + 2 * i), load8_bf16(b + 2 * i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++)
        sum += qt_bf16_to_fp32(load_u16(a + 2 * i)) * qt_bf16_to_fp32(load_u16(b + 2 * i));
    *s = sum;
}

/* ---- Q8 activation quantizers ----------------------------------------- */

/* One block of 32 floats to codes, exactly as quant_q8.c's scalar rule;
 * returns the fp32 scale and the code sum. */
static inline float quantize_block_q8(const float *x, int8_t *qs, int *sum_out)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax8 = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        /* max_ps returns its second operand when the first is NaN, which
         * skips NaNs just as the scalar `if (a > amax)` does */
        amax8 = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), amax8);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float d = _mm_cvtss_f32(m) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;

    const __m256 vid = _mm256_set1_ps(id);
    const __m256 lo = _mm256_set1_ps(-127.0f);
    const __m256 hi = _mm256_set1_ps(127.0f);
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        __m256 t = _mm256_mul_ps(v[k], vid);
        /* max first: a NaN becomes -127 like the scalar clamp */
        t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
        __m256 whole = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, whole));
        __m256 away = _mm256_or_ps(_mm256_and_ps(t, sign), one);
        __m256 up = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), away);
        q[k] = _mm256_cvtps_epi32(_mm256_add_ps(whole, up));
    }
    *sum_out = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    /* packs interleave 128-bit lanes; the permute puts the 4-byte groups
     * back in element order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return d;
}

void qt_avx2_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = f32_to_fp16(d);
    }
}

void qt_avx2_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QT_QK; i++) {
        int sum;
        float d = quantize_block_q8(src + i * QT_QK, b[i].qs, &sum);
        b[i].d = f32_to_fp16(d);
        b[i].s = f32_to_fp16(d * (float)sum);
    }
}

/* ---- 8-bit integer dots ------------------------------------------------ */

/* Every fp16 value as float. Block scales are looked up here instead of
 * converted with F16C: a broadcast straight from memory is a load, while
 * the F16C route (insert, convert, broadcast) queues three shuffle-port uops
 * per scale on the port the integer dot itself needs, which cost a quarter
 * of the Q4_0 dot's speed (measured). Filled once by qt_avx2_init() before any AVX2 row is
 * handed out; only the entries real scales use become cache-resident. */
static float fp16_table[1 << 16] __attribute__((aligned(64)));

void qt_avx2_init(void)
{
    for (uint32_t h = 0; h < (1u << 16); h += 8) {
        __m128i v = _mm_add_epi16(_mm_set1_epi16((short)h), _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_store_ps(fp16_table + h, _mm256_cvtph_ps(v));
    }
}

/* Product of two block scales in all eight lanes. */
static inline __m256 scale2(uint16_t dx, uint16_t dy)
{
    return _mm256_mul_ps(_mm256_broadcast_ss(&fp16_table[dx]), _mm256_broadcast_ss(&fp16_table[dy]));
}

/* Sum of x * y over 32 signed bytes, as 8 float partial sums. */
static inline __m256 dot_s8(__m256i x, __m256i y)
{
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* Same with x unsigned (0..31). */
static inline __m256 dot_u8(__m256i x, __m256i y)
{
    __m256i p16 = _mm256_maddubs_epi16(x, y);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

static inline __m256i load32_s8(const int8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* 16 bytes of nibbles to 32 bytes in element order (low nibbles are
 * elements 0..15, high nibbles 16..31): the bytes go to both halves by a
 * broadcast load, the upper half shifts right by 4, the mask keeps each
 * byte's low nibble. */
static inline __m256i unpack_nibbles(const uint8_t *qs)
{
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* Q5's qh bits to bytes: 0xff where element j's fifth bit is set. */
static inline __m256i expand_qh(const uint8_t *qh)
{
    uint32_t h;
    memcpy(&h, qh, sizeof h); /* little-endian, as the format stores it */
    /* byte j of the result looks at byte j / 8 of h ... */
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                    _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                                      0x0101010101010101LL, 0));
    /* ... and tests bit j % 8 of it */
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

void qt_avx2_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q8_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        /* two blocks are 68 bytes: two lines keep the prefetch stream whole */
        prefetch_ahead(&a[i]);
        prefetch_ahead((const char *)&a[i] + 64);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(load32_s8(a[i].qs), load32_s8(b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a[i + 1].d, b[i + 1].d),
                               dot_s8(load32_s8(a[i + 1].qs), load32_s8(b[i + 1].qs)), acc1);
    }
    if (i < nb)
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(load32_s8(a[i].qs), load32_s8(b[i].qs)), acc0);
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

static inline __m256i unpack_q4_0(const qt_block_q4_0 *b)
{
    return _mm256_sub_epi8(unpack_nibbles(b->qs), _mm256_set1_epi8(8));
}

void qt_avx2_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        prefetch_ahead(&a[i]);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(unpack_q4_0(&a[i]), load32_s8(b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a[i + 1].d, b[i + 1].d),
                               dot_s8(unpack_q4_0(&a[i + 1]), load32_s8(b[i + 1].qs)), acc1);
    }
    if (i < nb)
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(unpack_q4_0(&a[i]), load32_s8(b[i].qs)), acc0);
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* The _1 types add m * s per block: the min times the activation's d * sum. */
static inline float min_term(uint16_t m, uint16_t s)
{
    return fp16_table[m] * fp16_table[s];
}

void qt_avx2_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float offsets = 0.0f;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        prefetch_ahead(&a[i]);
        offsets += min_term(a[i].m, b[i].s) + min_term(a[i + 1].m, b[i + 1].s);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_u8(unpack_nibbles(a[i].qs), load32_s8(b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a[i + 1].d, b[i + 1].d),
                               dot_u8(unpack_nibbles(a[i + 1].qs), load32_s8(b[i + 1].qs)), acc1);
    }
    if (i < nb) {
        offsets += min_term(a[i].m, b[i].s);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_u8(unpack_nibbles(a[i].qs), load32_s8(b[i].qs)), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1)) + offsets;
}

/* Q5_0 codes minus 16 as signed bytes: a nibble with the fifth bit set is
 * already q - 16; without it q - 16 = nibble - 16, i.e. nibble | 0xf0. */
static inline __m256i unpack_q5_0(const qt_block_q5_0 *b)
{
    __m256i no_top = _mm256_andnot_si256(expand_qh(b->qh), _mm256_set1_epi8((char)0xf0));
    return _mm256_or_si256(unpack_nibbles(b->qs), no_top);
}

static inline __m256i unpack_q5_1(const qt_block_q5_1 *b)
{
    __m256i top = _mm256_and_si256(expand_qh(b->qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(unpack_nibbles(b->qs), top);
}

void qt_avx2_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_0 *a = x;
    const qt_block_q8_0 *b = y;
    const int64_t nb = n / QT_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        prefetch_ahead(&a[i]);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(unpack_q5_0(&a[i]), load32_s8(b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a[i + 1].d, b[i + 1].d),
                               dot_s8(unpack_q5_0(&a[i + 1]), load32_s8(b[i + 1].qs)), acc1);
    }
    if (i < nb)
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_s8(unpack_q5_0(&a[i]), load32_s8(b[i].qs)), acc0);
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

void qt_avx2_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_1 *a = x;
    const qt_block_q8_1 *b = y;
    const int64_t nb = n / QT_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float offsets = 0.0f;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        prefetch_ahead(&a[i]);
        offsets += min_term(a[i].m, b[i].s) + min_term(a[i + 1].m, b[i + 1].s);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_u8(unpack_q5_1(&a[i]), load32_s8(b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a[i + 1].d, b[i + 1].d),
                               dot_u8(unpack_q5_1(&a[i + 1]), load32_s8(b[i + 1].qs)), acc1);
    }
    if (i < nb) {
        offsets += min_term(a[i].m, b[i].s);
        acc0 = _mm256_fmadd_ps(scale2(a[i].d, b[i].d),
                               dot_u8(unpack_q5_1(&a[i]), load32_s8(b[i].qs)), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1)) + offsets;
}
