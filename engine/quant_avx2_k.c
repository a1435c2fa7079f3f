/*
 * quant_avx2_k.c - AVX2 + FMA + F16C kernels of the K-quants: the five
 * weight-times-Q8_K dots and the Q8_K activation quantizer.
 *
 * Compiled, like quant_avx2.c, with -mavx2 -mfma -mf16c and called only
 * after quant.c's CPU probe has seen all three.
 *
 * Every dot is integer inside a super-block and exact: codes are made
 * unsigned bytes (0..3, 0..7, 0..15, 0..31, 0..63) so maddubs can multiply
 * them with the signed activation bytes (pair sums stay below 2 * 63 * 128,
 * inside int16), madd applies the sub-block scales as int16 and widens to
 * int32. What the unsigned codes leave out is folded in with Q8_K's bsums
 * (sums of 16 activation codes) in one madd per super-block: the mins of
 * Q2_K/Q4_K/Q5_K (dmin * m * bsum) and the offsets of the signed types
 * (Q3_K's codes are stored as c + 4, Q6_K's as c + 32). So the result
 * differs from the scalar reference only in the order the per-block floats
 * are summed. Per-sub-block scales are spread across lanes with byte
 * shuffles, which run on a port the multiplies do not need.
 *
 * Decode reads each weight once per token from DRAM, so each block turn
 * also prefetches the lines PREFETCH_BYTES ahead (see quant_avx2.c for the
 * measurement behind it).
 *
 * The Q8_K quantizer gives the scalar bytes exactly: same fp32 scale
 * arithmetic, the same clamp before rounding (NaN to -127), and rounding to
 * nearest even (the CPU's default mode, which the scalar code's 1.5 * 2^23
 * trick also uses).
 */
#include <immintrin.h>
#include <stddef.h>

#include "quant_impl.h"

#define PREFETCH_BYTES 2048

/* Every line of the block PREFETCH_BYTES ahead; the address is formed as
 * an integer, so no pointer leaves its object, and a prefetch never
 * faults. */
static inline void prefetch_block(const void *p, size_t bytes)
{
    uintptr_t ahead = (uintptr_t)p + PREFETCH_BYTES;
    for (size_t off = 0; off < bytes; off += 64)
        _mm_prefetch((const char *)(ahead + off), _MM_HINT_T0);
}

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256i load32(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* The 16 int16 bsums of a Q8_K block (read through bytes: the block is
 * packed, so no int16 pointer into it is formed). */
static inline __m256i load_bsums(const qt_block_q8_k *b)
{
    return load32((const unsigned char *)b + offsetof(qt_block_q8_k, bsums));
}

/* A 32-byte vector of codes covers two 16-element sub-blocks, 2p in its low
 * lane and 2p + 1 in its high lane, so its scales are wanted as int16 with
 * scale 2p in all of the low lane and 2p + 1 in all of the high lane. Once
 * per super-block the 16 byte scales become int16 with the even ones in the
 * low lane and the odd ones in the high lane (pair_scales_*); then one byte
 * shuffle per vector picks int16 p in both lanes (scale_pair). */
static inline __m128i even_then_odd(__m128i scales)
{
    return _mm_shuffle_epi8(scales, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
}

static inline __m256i pair_scales_s8(__m128i scales)
{
    return _mm256_cvtepi8_epi16(even_then_odd(scales));
}

static inline __m256i pair_scales_u8(__m128i scales)
{
    return _mm256_cvtepu8_epi16(even_then_odd(scales));
}

static inline __m256i scale_pair(__m256i pair_scales, int p)
{
    return _mm256_shuffle_epi8(pair_scales, _mm256_set1_epi16((short)((2 * p + 1) << 8 | 2 * p)));
}

/* sum over 32 of code * activation, widened and scaled: madd(maddubs(u, q),
 * scale) with u unsigned codes, q signed activation bytes. */
static inline __m256i dot_scaled(__m256i u, const int8_t *q8, __m256i scale)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, load32(q8)), scale);
}

/* ---- Q2_K ----------------------------------------------------------------- */

void qt_avx2_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q2_k *a = x;
    const qt_block_q8_k *b = y;
    const __m256i three = _mm256_set1_epi8(3);
    const __m128i low4 = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m128i sm = _mm_loadu_si128((const __m128i *)a[i].scales);
        const __m128i scales = _mm_and_si128(sm, low4);
        const __m128i mins = _mm_and_si128(_mm_srli_epi16(sm, 4), low4);
        const __m256i msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), load_bsums(&b[i]));
        const __m256i pairs = pair_scales_u8(scales);
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < 2; c++) {
            const __m256i q = load32(a[i].qs + 32 * c);
            const int8_t *q8 = b[i].qs + 128 * c;
            isum = _mm256_add_epi32(isum, dot_scaled(_mm256_and_si256(q, three), q8,
                                                     scale_pair(pairs, 4 * c)));
            isum = _mm256_add_epi32(isum, dot_scaled(_mm256_and_si256(_mm256_srli_epi16(q, 2), three),
                                                     q8 + 32, scale_pair(pairs, 4 * c + 1)));
            isum = _mm256_add_epi32(isum, dot_scaled(_mm256_and_si256(_mm256_srli_epi16(q, 4), three),
                                                     q8 + 64, scale_pair(pairs, 4 * c + 2)));
            isum = _mm256_add_epi32(isum, dot_scaled(_mm256_and_si256(_mm256_srli_epi16(q, 6), three),
                                                     q8 + 96, scale_pair(pairs, 4 * c + 3)));
        }
        const float yd = b[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].d)), _mm256_cvtepi32_ps(isum), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].dmin)), _mm256_cvtepi32_ps(msum), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Q3_K ----------------------------------------------------------------- */

/* The 16 6-bit scales, minus 32, as signed bytes in sub-block order. */
static inline __m128i q3_k_scales(const uint8_t s12[12])
{
    uint32_t w[3];
    memcpy(w, s12, sizeof w); /* little-endian, as the format and x86 are */
    const uint32_t nib = 0x0f0f0f0f, two = 0x03030303;
    uint32_t s0 = (w[0] & nib) | (w[2] & two) << 4;
    uint32_t s1 = (w[1] & nib) | ((w[2] >> 2) & two) << 4;
    uint32_t s2 = ((w[0] >> 4) & nib) | ((w[2] >> 4) & two) << 4;
    uint32_t s3 = ((w[1] >> 4) & nib) | ((w[2] >> 6) & two) << 4;
    return _mm_sub_epi8(_mm_setr_epi32((int)s0, (int)s1, (int)s2, (int)s3), _mm_set1_epi8(32));
}

void qt_avx2_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q3_k *a = x;
    const qt_block_q8_k *b = y;
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i four = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m128i scales = q3_k_scales(a[i].scales);
        /* codes are stored as c + 4 (0..7); take 4 * scale * bsum back off */
        const __m256i offs = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), load_bsums(&b[i]));
        __m256i isum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offs, 2));
        const __m256i pairs = pair_scales_s8(scales);
        /* bit k of every hmask byte is the third bit of code group k; each
         * step moves the next one to bit 0 (bits crossing from the high byte
         * of a 16-bit lane land above bit 0 and are masked off) */
        __m256i hm = load32(a[i].hmask);
        for (int c = 0; c < 2; c++) {
            const __m256i q = load32(a[i].qs + 32 * c);
            const int8_t *q8 = b[i].qs + 128 * c;
            for (int j = 0; j < 4; j++) {
                __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), three);
                __m256i high = _mm256_and_si256(_mm256_slli_epi16(hm, 2), four);
                hm = _mm256_srli_epi16(hm, 1);
                isum = _mm256_add_epi32(isum, dot_scaled(_mm256_or_si256(low, high), q8 + 32 * j,
                                                         scale_pair(pairs, 4 * c + j)));
            }
        }
        const float dd = b[i].d * _cvtsh_ss(a[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(isum), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Q4_K and Q5_K -------------------------------------------------------- */

/* Eight 6-bit scales (bytes 0..7) and mins (bytes 8..15) from the 12-byte
 * packing: bytes 0..3 hold scales 0..3 and 4..7 mins 0..3 in their low six
 * bits, with the top two bits of scales/mins 4..7 above them; bytes 8..11
 * hold the low nibbles of scales 4..7 (low) and mins 4..7 (high). */
static inline __m128i k4_scales_mins(const uint8_t s12[12])
{
    uint32_t w[3];
    memcpy(w, s12, sizeof w);
    const uint32_t six = 0x3f3f3f3f, nib = 0x0f0f0f0f, two = 0x03030303;
    uint32_t sc_lo = w[0] & six;
    uint32_t sc_hi = (w[2] & nib) | ((w[0] >> 6) & two) << 4;
    uint32_t m_lo = w[1] & six;
    uint32_t m_hi = ((w[2] >> 4) & nib) | ((w[1] >> 6) & two) << 4;
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
}

/* min * (bsum 2j + bsum 2j+1) summed over the sub-blocks, as 8 int32. */
static inline __m256i k4_min_sums(__m128i sm, const qt_block_q8_k *b)
{
    /* each min twice, once per 16-element half of its sub-block */
    __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
    return _mm256_madd_epi16(mins, load_bsums(b));
}

/* Scale j as int16 in all 16 lanes of a vector whose two halves both hold
 * the eight scales. */
static inline __m256i k4_scale(__m256i scales16, int j)
{
    return _mm256_shuffle_epi8(scales16, _mm256_set1_epi16((short)((2 * j + 1) << 8 | 2 * j)));
}

void qt_avx2_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_k *a = x;
    const qt_block_q8_k *b = y;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m128i sm = k4_scales_mins(a[i].scales);
        const __m256i msum = k4_min_sums(sm, &b[i]);
        const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = load32(a[i].qs + 32 * j);
            const int8_t *q8 = b[i].qs + 64 * j;
            __m256i lo = _mm256_and_si256(q, low4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            isum = _mm256_add_epi32(isum, dot_scaled(lo, q8, k4_scale(scales, 2 * j)));
            isum = _mm256_add_epi32(isum, dot_scaled(hi, q8 + 32, k4_scale(scales, 2 * j + 1)));
        }
        const float yd = b[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].d)), _mm256_cvtepi32_ps(isum), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].dmin)), _mm256_cvtepi32_ps(msum), acc);
    }
    *s = hsum_ps(acc);
}

void qt_avx2_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_k *a = x;
    const qt_block_q8_k *b = y;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m128i sm = k4_scales_mins(a[i].scales);
        const __m256i msum = k4_min_sums(sm, &b[i]);
        const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        /* bit k of every qh byte is the fifth bit of sub-block k's codes;
         * each turn uses bits 0 and 1 and shifts the next two down (bits
         * crossing from the high byte land above bit 1 and are masked) */
        __m256i hb = load32(a[i].qh);
        __m256i isum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i q = load32(a[i].qs + 32 * j);
            const int8_t *q8 = b[i].qs + 64 * j;
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, low4),
                                         _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4),
                                         _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4));
            hb = _mm256_srli_epi16(hb, 2);
            isum = _mm256_add_epi32(isum, dot_scaled(lo, q8, k4_scale(scales, 2 * j)));
            isum = _mm256_add_epi32(isum, dot_scaled(hi, q8 + 32, k4_scale(scales, 2 * j + 1)));
        }
        const float yd = b[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].d)), _mm256_cvtepi32_ps(isum), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(yd * _cvtsh_ss(a[i].dmin)), _mm256_cvtepi32_ps(msum), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Q6_K ----------------------------------------------------------------- */

void qt_avx2_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q6_k *a = x;
    const qt_block_q8_k *b = y;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i top2 = _mm256_set1_epi8(0x30);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m128i scales = _mm_loadu_si128((const __m128i *)a[i].scales);
        /* codes are stored as c + 32 (0..63); take 32 * scale * bsum off */
        const __m256i offs = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), load_bsums(&b[i]));
        __m256i isum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offs, 5));
        const __m256i pairs = pair_scales_s8(scales);
        for (int c = 0; c < 2; c++) {
            const __m256i l0 = load32(a[i].ql + 64 * c);
            const __m256i l1 = load32(a[i].ql + 64 * c + 32);
            const __m256i h = load32(a[i].qh + 32 * c);
            const int8_t *q8 = b[i].qs + 128 * c;
            /* group k's top bits are bits 2k..2k+1 of h, moved to 4..5 */
            __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low4),
                                         _mm256_and_si256(_mm256_slli_epi16(h, 4), top2));
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                         _mm256_and_si256(_mm256_slli_epi16(h, 2), top2));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                         _mm256_and_si256(h, top2));
            __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                         _mm256_and_si256(_mm256_srli_epi16(h, 2), top2));
            isum = _mm256_add_epi32(isum, dot_scaled(q0, q8, scale_pair(pairs, 4 * c)));
            isum = _mm256_add_epi32(isum, dot_scaled(q1, q8 + 32, scale_pair(pairs, 4 * c + 1)));
            isum = _mm256_add_epi32(isum, dot_scaled(q2, q8 + 64, scale_pair(pairs, 4 * c + 2)));
            isum = _mm256_add_epi32(isum, dot_scaled(q3, q8 + 96, scale_pair(pairs, 4 * c + 3)));
        }
        const float dd = b[i].d * _cvtsh_ss(a[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(isum), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Q8_K quantizer ------------------------------------------------------- */

/* Four 8-lane int32 vectors (32 codes) to 32 bytes in element order: the
 * packs interleave 128-bit lanes, the permute undoes it. */
static inline __m256i pack_codes(const __m256i q[4])
{
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* The sums of four 8-lane vectors, in order, as 4 int32. */
static inline __m128i hsum4_epi32(__m256i v0, __m256i v1, __m256i v2, __m256i v3)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

void qt_avx2_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f);
    const __m256 hi = _mm256_set1_ps(127.0f);
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        unsigned char *blk = (unsigned char *)dst + (size_t)i * sizeof(qt_block_q8_k);
        /* max_ps returns its second operand when the first is NaN, which
         * skips NaNs as the scalar `if (a > amax)` does */
        __m256 m8 = _mm256_setzero_ps();
        for (int k = 0; k < QT_QK_K / 8; k++)
            m8 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)), m8);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (amax == 0.0f) {
            memset(blk, 0, sizeof(qt_block_q8_k));
            continue;
        }
        const float iscale = 127.0f / amax;
        const __m256 vid = _mm256_set1_ps(iscale);
        __m256i sums[QT_QK_K / 16]; /* per 16 codes, 8 partial sums each */
        for (int g = 0; g < QT_QK_K / 32; g++) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + 32 * g + 8 * k), vid);
                /* max first: a NaN becomes -127 like the scalar clamp */
                t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
                q[k] = _mm256_cvtps_epi32(t);
            }
            _mm256_storeu_si256((__m256i *)(blk + offsetof(qt_block_q8_k, qs) + 32 * g), pack_codes(q));
            sums[2 * g] = _mm256_add_epi32(q[0], q[1]);
            sums[2 * g + 1] = _mm256_add_epi32(q[2], q[3]);
        }
        __m128i b0 = hsum4_epi32(sums[0], sums[1], sums[2], sums[3]);
        __m128i b1 = hsum4_epi32(sums[4], sums[5], sums[6], sums[7]);
        __m128i b2 = hsum4_epi32(sums[8], sums[9], sums[10], sums[11]);
        __m128i b3 = hsum4_epi32(sums[12], sums[13], sums[14], sums[15]);
        unsigned char *bs = blk + offsetof(qt_block_q8_k, bsums);
        _mm_storeu_si128((__m128i *)bs, _mm_packs_epi32(b0, b1));
        _mm_storeu_si128((__m128i *)(bs + 16), _mm_packs_epi32(b2, b3));
        const float d = 1 / iscale;
        memcpy(blk + offsetof(qt_block_q8_k, d), &d, sizeof d);
    }
}
