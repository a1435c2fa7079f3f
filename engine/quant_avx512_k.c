/*
 * quant_avx512_k.c - AVX-512 kernels of the K-quants: the weight-times-Q8_K
 * dots and the Q8_K activation quantizer.
 *
 * Compiled, like quant_avx512.c, with the AVX-512 F/BW/VL/DQ + VNNI flags
 * and called only after quant.c's probe saw those features.
 *
 * A 512-bit register holds 64 codes in element order, so it meets 64
 * activation bytes loaded as they lie. Codes are made unsigned bytes (as
 * stored: 0..3, 0..7 with Q3_K's offset 4, 0..15, 0..31, 0..63 with Q6_K's
 * offset 32) for vpmaddubsw against the signed activations (pair sums below
 * 2 * 63 * 128 fit int16); vpdpwssd then multiplies the pairs by the
 * sub-block scales as int16 and adds them into int32 lanes, so the whole
 * super-block stays an exact integer. The mins and offsets come back with
 * one vpmaddwd of Q8_K's bsums per super-block. Only the order in which the
 * per-super-block floats are added differs from the scalar reference.
 *
 * The Q8_K quantizer gives the scalar bytes exactly: the same fp32 scale,
 * the clamp before rounding (NaN to -127), and round-to-nearest-even, the
 * CPU's default mode, which the scalar code's 1.5 * 2^23 trick also uses.
 */
#include <immintrin.h>
#include <stddef.h>

#include "quant_impl.h"

#define PREFETCH_BYTES 2048

/* Always inlined, as in quant_avx512.c: GCC 12 deletes calls of an
 * outlined prefetch helper it judges side-effect free. */
static inline __attribute__((always_inline)) void prefetch_block(const void *p, size_t bytes)
{
    uintptr_t ahead = (uintptr_t)p + PREFETCH_BYTES;
    for (size_t off = 0; off < bytes; off += 64)
        _mm_prefetch((const char *)(ahead + off), _MM_HINT_T0);
}

static inline float fp16(uint16_t h)
{
    return _cvtsh_ss(h);
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The 16 int16 bsums of a Q8_K block, read through bytes (the block is
 * packed, so no int16 pointer into it is formed). */
static inline __m256i load_bsums(const qt_block_q8_k *b)
{
    return _mm256_loadu_si256((const __m256i *)((const unsigned char *)b + offsetof(qt_block_q8_k, bsums)));
}

static inline float load_d(const qt_block_q8_k *b)
{
    float d;
    memcpy(&d, (const unsigned char *)b + offsetof(qt_block_q8_k, d), sizeof d);
    return d;
}

static inline __m512i load_codes(const qt_block_q8_k *b, int k)
{
    return _mm512_loadu_si512((const unsigned char *)b + offsetof(qt_block_q8_k, qs) + 64 * k);
}

/* 32 bytes to both halves, the upper half shifted right by `hi` bits and
 * the lower by `lo` (per 64-bit lane, so bits cross bytes; callers mask). */
static inline __m512i split32(const uint8_t *p, int lo, int hi)
{
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_srlv_epi64(v, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo));
}

/* The maddubs pairs of a 64-code register as int16 lanes l = 0..31 (codes
 * 2l and 2l + 1): lane l gets scale[first + l / lanes] of the 16 int16
 * scales in s (lanes: 16 for 32-code sub-blocks, 8 for 16-code ones). */
static inline __m512i spread_scales(__m512i s, int first, int lanes)
{
    const __m512i l =
        _mm512_cvtepu8_epi16(_mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                              18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));
    __m512i idx =
        _mm512_add_epi16(_mm512_srli_epi16(l, lanes == 16 ? 4 : 3), _mm512_set1_epi16((short)first));
    return _mm512_permutexvar_epi16(idx, s);
}

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* isum += sum over 64 codes of code * y * its sub-block scale. */
static inline __m512i dot64(__m512i isum, __m512i codes, __m512i y, __m512i scales16)
{
    return _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(codes, y), scales16);
}

/* Q4_K/Q5_K's eight 6-bit scales and mins as bytes: sc in the low 8 bytes,
 * m in the high 8 (quant_impl.h has the packing). */
static inline __m128i k4_scales_mins(const uint8_t s[12])
{
    uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
    uint32_t sc_lo = a & 0x3f3f3f3fu, m_lo = b & 0x3f3f3f3fu;
    uint32_t sc_hi = (c & 0x0f0f0f0fu) | ((a & 0xc0c0c0c0u) >> 2);
    uint32_t m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b & 0xc0c0c0c0u) >> 2);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
}

/* Shared body of Q4_K and Q5_K (five = has qh). */
static inline __attribute__((always_inline)) void dot_k4(int64_t n, float *restrict s, const void *restrict x,
                                                         const void *restrict y, bool five)
{
    const qt_block_q8_k *b = y;
    const size_t bbytes = five ? sizeof(qt_block_q5_k) : sizeof(qt_block_q4_k);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps();
    __m256 macc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const uint8_t *blk = (const uint8_t *)x + (size_t)i * bbytes;
        prefetch_block(blk, bbytes);
        uint16_t d, dmin;
        memcpy(&d, blk, 2);
        memcpy(&dmin, blk + 2, 2);
        const uint8_t *scales = blk + 4;
        const uint8_t *qh = blk + 16;
        const uint8_t *qs = five ? blk + 48 : blk + 16;
        __m128i sm = k4_scales_mins(scales);
        __m512i sm16 = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(sm)); /* sc 0..7, m 8..15 */
        __m512i isum = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i codes = _mm512_and_si512(split32(qs + 32 * k, 0, 4), m4);
            if (five) {
                __m512i h = _mm512_and_si512(split32(qh, 2 * k, 2 * k + 1), _mm512_set1_epi8(1));
                codes = _mm512_or_si512(codes, _mm512_slli_epi16(h, 4));
            }
            isum = dot64(isum, codes, load_codes(&b[i], k), spread_scales(sm16, 2 * k, 16));
        }
        const float dy = load_d(&b[i]);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(dy * fp16(d)), acc);
        /* mins: m_j meets bsum 2j + bsum 2j + 1 */
        __m256i mins = _mm256_cvtepu8_epi16(
            _mm_shuffle_epi8(sm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
        __m256i msum = _mm256_madd_epi16(load_bsums(&b[i]), mins);
        macc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dy * fp16(dmin)), macc);
    }
    *s = _mm512_reduce_add_ps(acc) - hsum256(macc);
}

void qt_avx512_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    dot_k4(n, s, x, y, false);
}

void qt_avx512_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    dot_k4(n, s, x, y, true);
}

void qt_avx512_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q6_k *a = x;
    const qt_block_q8_k *b = y;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
        __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i isum = _mm512_setzero_si512();
        for (int c = 0; c < 2; c++) {
            __m512i ql = _mm512_loadu_si512(a[i].ql + 64 * c);
            const uint8_t *qh = a[i].qh + 32 * c;
            /* elements 128c + 0..63: low nibbles; qh bits 0-1, then 2-3 */
            __m512i h0 = _mm512_slli_epi16(split32(qh, 0, 2), 4);
            __m512i q0 = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m4), h0, m30, 0xf8); /* a | (b & c) */
            /* elements 128c + 64..127: high nibbles; qh bits 4-5, then 6-7 */
            __m512i h1 = _mm512_slli_epi16(split32(qh, 4, 6), 4);
            __m512i q1 =
                _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h1, m30, 0xf8);
            isum = dot64(isum, q0, load_codes(&b[i], 2 * c), spread_scales(sc, 8 * c, 8));
            isum = dot64(isum, q1, load_codes(&b[i], 2 * c + 1), spread_scales(sc, 8 * c + 4, 8));
        }
        /* codes are stored + 32: take 32 * scale_j * bsum_j back out */
        __m256i off = _mm256_madd_epi16(load_bsums(&b[i]), sc16);
        __m512i off512 = _mm512_slli_epi32(_mm512_castsi256_si512(off), 5);
        off512 = _mm512_maskz_mov_epi32(0x00ff, off512);
        isum = _mm512_sub_epi32(isum, off512);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(load_d(&b[i]) * fp16(a[i].d)), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

/* Q2_K: codes 0..3 in 2-bit fields; element e lives in qs[32 (e / 128) +
 * e % 32] at bit 2 ((e % 128) / 32), so 64 elements (e / 64 = k) are the 32
 * bytes of half k / 2 shifted by 4 (k % 2) and 4 (k % 2) + 2. Each 4-bit
 * scale covers 16 codes; its min (the high nibble) meets bsum j. */
void qt_avx512_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q2_k *a = x;
    const qt_block_q8_k *b = y;
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512 acc = _mm512_setzero_ps();
    __m256 macc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        __m128i raw = _mm_loadu_si128((const __m128i *)a[i].scales);
        __m512i sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0f))));
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f)));
        __m512i isum = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            int sh = 4 * (k % 2);
            __m512i codes = _mm512_and_si512(split32(a[i].qs + 32 * (k / 2), sh, sh + 2), m3);
            isum = dot64(isum, codes, load_codes(&b[i], k), spread_scales(sc, 4 * k, 8));
        }
        const float dy = load_d(&b[i]);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(dy * fp16(a[i].d)), acc);
        __m256i msum = _mm256_madd_epi16(load_bsums(&b[i]), mins);
        macc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dy * fp16(a[i].dmin)), macc);
    }
    *s = _mm512_reduce_add_ps(acc) - hsum256(macc);
}

/* Q3_K: the low two bits as Q2_K, the third from hmask (bit e / 32 of
 * hmask[e % 32], set meaning +4 over the stored -4 offset), so the stored
 * code low | bit << 2 is the signed code + 4. Scales are 6-bit, minus 32. */
void qt_avx512_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q3_k *a = x;
    const qt_block_q8_k *b = y;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i one = _mm512_set1_epi8(1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const uint8_t *sp = a[i].scales;
        uint32_t w0 = load_u32(sp), w1 = load_u32(sp + 4), w2 = load_u32(sp + 8);
        /* scale j: low nibble from byte j % 8 (high nibble for j >= 8),
         * top two bits from byte 8 + j % 4 at bit 2 (j / 4) */
        uint32_t lo0 = w0 & 0x0f0f0f0fu, lo1 = w1 & 0x0f0f0f0fu;
        uint32_t lo2 = (w0 >> 4) & 0x0f0f0f0fu, lo3 = (w1 >> 4) & 0x0f0f0f0fu;
        uint32_t hi0 = (w2 << 4) & 0x30303030u, hi1 = (w2 << 2) & 0x30303030u;
        uint32_t hi2 = w2 & 0x30303030u, hi3 = (w2 >> 2) & 0x30303030u;
        __m128i sc8 = _mm_sub_epi8(
            _mm_setr_epi32((int)(lo0 | hi0), (int)(lo1 | hi1), (int)(lo2 | hi2), (int)(lo3 | hi3)),
            _mm_set1_epi8(32));
        __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i isum = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            int sh = 4 * (k % 2);
            __m512i low = _mm512_and_si512(split32(a[i].qs + 32 * (k / 2), sh, sh + 2), m3);
            __m512i hb = _mm512_and_si512(split32(a[i].hmask, 2 * k, 2 * k + 1), one);
            __m512i codes = _mm512_or_si512(low, _mm512_slli_epi16(hb, 2));
            isum = dot64(isum, codes, load_codes(&b[i], k), spread_scales(sc, 4 * k, 8));
        }
        /* stored codes are signed + 4 */
        __m256i off = _mm256_madd_epi16(load_bsums(&b[i]), sc16);
        isum = _mm512_sub_epi32(
            isum, _mm512_maskz_mov_epi32(0x00ff, _mm512_slli_epi32(_mm512_castsi256_si512(off), 2)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(load_d(&b[i]) * fp16(a[i].d)), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

/* ---- Q8_K quantizer ------------------------------------------------------- */

void qt_avx512_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 lo = _mm512_set1_ps(-127.0f);
    const __m512 hi = _mm512_set1_ps(127.0f);
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        unsigned char *blk = (unsigned char *)dst + (size_t)i * sizeof(qt_block_q8_k);
        /* max_ps returns its second operand when the first is NaN, so the
         * running maximum skips NaNs as the scalar `if (a > amax)` does */
        __m512 m = _mm512_setzero_ps();
        for (int k = 0; k < QT_QK_K / 16; k++)
            m = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + 16 * k)), m);
        const float amax = _mm512_reduce_max_ps(m);
        if (amax == 0.0f) {
            memset(blk, 0, sizeof(qt_block_q8_k));
            continue;
        }
        const float iscale = 127.0f / amax;
        const __m512 vid = _mm512_set1_ps(iscale);
        __m512i sums = _mm512_setzero_si512(); /* lane j: bsum j */
        for (int k = 0; k < QT_QK_K / 16; k++) {
            __m512 t = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), vid);
            /* max first: a NaN becomes -127 like the scalar clamp */
            t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
            __m512i q = _mm512_cvtps_epi32(t);
            _mm_storeu_si128((__m128i *)(blk + offsetof(qt_block_q8_k, qs) + 16 * k),
                             _mm512_cvtepi32_epi8(q));
            sums = _mm512_mask_set1_epi32(sums, (__mmask16)(1u << k), _mm512_reduce_add_epi32(q));
        }
        _mm256_storeu_si256((__m256i *)(blk + offsetof(qt_block_q8_k, bsums)), _mm512_cvtepi32_epi16(sums));
        const float d = 1 / iscale;
        memcpy(blk + offsetof(qt_block_q8_k, d), &d, sizeof d);
    }
}

/* ---- gemm tiles ------------------------------------------------------------
 *
 * Prompt batches (nt > 1), laid out as quant_avx512.c's tiles: lane 4 r + c
 * of a register is weight row r (of four) against token c (of four), and
 * step k multiplies dword k of each row (replicated over its 128-bit lane)
 * by dword k of the four tokens (one 16-byte load from a panel the call
 * builds once per chunk). A sub-block's steps leave its exact int32 dot in
 * every lane; it meets its scale (d * sub-block scale per row) in one
 * conversion and FMA, and a super-block's sum meets the token's Q8_K d in
 * one more. Q4_K/Q5_K's mins come from the tokens' bsums with four
 * vpdpwssd per super-block (mins paired as int16 per row, bsum pairs per
 * token); Q6_K's offset 32 starts each sub-block's dot at -32 * bsum.
 * Decode (nt == 1) of Q4_K and Q6_K has its own kernel (k_gemv, after the
 * tiles); Q5_K's uses the dot above row by row.
 */

#define KG_ROWS QT_AVX512_KGEMM_ROWS
#define KG_COLS QT_AVX512_KGEMM_COLS
#define KG_KC 4 /* super-blocks per chunk: the panel takes 18 KiB */

typedef struct k_panel {
    int32_t y[KG_KC][KG_COLS / 4][64][4];   /* [sb][group][k][token] code dwords */
    int32_t off[KG_KC][KG_COLS / 4][16][4]; /* Q6_K: -32 * bsum j per token */
    int32_t bsp[KG_KC][KG_COLS / 4][4][4];  /* Q4_K/Q5_K: bsum pairs (2p, 2p + 1) per token */
    float dy[KG_KC][KG_COLS / 4][4];
} k_panel;

enum { KG_Q4_K, KG_Q5_K, KG_Q6_K };

/* Always inlined for the reason panel_fill in quant_avx512.c gives. */
static inline __attribute__((always_inline)) void k_panel_fill(k_panel *p, const uint8_t *y, size_t y_stride,
                                                               int nt, int64_t kb, int nkb)
{
    const __m512i idx_lo = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
    const __m512i idx_hi = _mm512_add_epi32(idx_lo, _mm512_set1_epi32(4));
    for (int g = 0; g < (nt + 3) / 4; g++) {
        const qt_block_q8_k *rows[4];
        for (int c = 0; c < 4; c++)
            rows[c] =
                4 * g + c < nt ? (const qt_block_q8_k *)(y + (size_t)(4 * g + c) * y_stride) + kb : NULL;
        for (int b = 0; b < nkb; b++) {
            int16_t bs[4][16];
            for (int c = 0; c < 4; c++) {
                p->dy[b][g][c] = rows[c] ? load_d(&rows[c][b]) : 0.0f;
                if (rows[c])
                    _mm256_storeu_si256((__m256i *)bs[c], load_bsums(&rows[c][b]));
                else
                    memset(bs[c], 0, sizeof bs[c]);
            }
            for (int q = 0; q < 8; q++) { /* 32 codes of each token */
                __m256i t[4];
                for (int c = 0; c < 4; c++)
                    t[c] = rows[c] ? _mm256_loadu_si256((const __m256i *)(rows[c][b].qs + 32 * q))
                                   : _mm256_setzero_si256();
                __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(t[0]), t[1], 1);
                __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(t[2]), t[3], 1);
                _mm512_storeu_si512(p->y[b][g][8 * q], _mm512_permutex2var_epi32(z01, idx_lo, z23));
                _mm512_storeu_si512(p->y[b][g][8 * q + 4], _mm512_permutex2var_epi32(z01, idx_hi, z23));
            }
            for (int c = 0; c < 4; c++) {
                for (int j = 0; j < 16; j++)
                    p->off[b][g][j][c] = -32 * bs[c][j];
                for (int q = 0; q < 4; q++) {
                    int lo = bs[c][4 * q] + bs[c][4 * q + 1], hi = bs[c][4 * q + 2] + bs[c][4 * q + 3];
                    p->bsp[b][g][q][c] = (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
                }
            }
        }
    }
}

static inline __m512i bcast128(const int32_t *p)
{
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
}

/* [v[r] x4 for r = 0..3] from four floats. */
static inline __m512 spread4(const float v[4])
{
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(v)));
}

/* The eight steps of a 32-code sub-block from z01 = rows 0-1, z23 = rows
 * 2-3 (32 unsigned codes each), into lane accumulators per token group. */
static inline __attribute__((always_inline)) void sub32(__m512i *isum, __m512i z01, __m512i z23,
                                                        const int32_t (*yk)[KG_COLS / 4][64][4], int k0,
                                                        int ng, const int32_t (*init)[4])
{
    __m512i w[8];
    for (int k = 0; k < 8; k++) {
        __m512i idx = _mm512_setr_epi32(k, k, k, k, 8 + k, 8 + k, 8 + k, 8 + k, 16 + k, 16 + k, 16 + k,
                                        16 + k, 24 + k, 24 + k, 24 + k, 24 + k);
        w[k] = _mm512_permutex2var_epi32(z01, idx, z23);
    }
    for (int g = 0; g < ng; g++) {
        __m512i i0 = init ? bcast128(init[g]) : _mm512_setzero_si512();
        __m512i i1 = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            i0 = _mm512_dpbusd_epi32(i0, w[k], bcast128((*yk)[g][k0 + k]));
            i1 = _mm512_dpbusd_epi32(i1, w[k + 4], bcast128((*yk)[g][k0 + k + 4]));
        }
        isum[g] = _mm512_add_epi32(i0, i1);
    }
}

static inline __attribute__((always_inline)) void kgemm_tiles(int kind, int64_t n, float *restrict s,
                                                              size_t ld_s, const void *restrict x,
                                                              size_t x_stride, int nr, const void *restrict y,
                                                              size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK_K;
    const int ng = (nt + 3) / 4;
    const int nsub = (nr + 3) / 4;
    const size_t bbytes = kind == KG_Q4_K   ? sizeof(qt_block_q4_k)
                          : kind == KG_Q5_K ? sizeof(qt_block_q5_k)
                                            : sizeof(qt_block_q6_k);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    k_panel panel;
    __m512 accs[KG_ROWS / 4][KG_COLS / 4];
    for (int i = 0; i < nsub; i++)
        for (int g = 0; g < KG_COLS / 4; g++)
            accs[i][g] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < nb; kb += KG_KC) {
        const int nkb = nb - kb < KG_KC ? (int)(nb - kb) : KG_KC;
        k_panel_fill(&panel, y, y_stride, nt, kb, nkb);
        for (int sub = 0; sub < nsub; sub++) {
            /* rows past nr repeat the first row; their lanes are not stored */
            const uint8_t *rp[4];
            for (int r = 0; r < 4; r++) {
                int row = 4 * sub + r < nr ? 4 * sub + r : 4 * sub;
                rp[r] = (const uint8_t *)x + (size_t)row * x_stride + (size_t)kb * bbytes;
            }
            __m512 acc[KG_COLS / 4];
            for (int g = 0; g < KG_COLS / 4; g++)
                acc[g] = accs[sub][g];
            for (int b = 0; b < nkb; b++) {
                const uint8_t *blk[4];
                for (int r = 0; r < 4; r++)
                    blk[r] = rp[r] + (size_t)b * bbytes;
                __m512 sacc[KG_COLS / 4];
                for (int g = 0; g < KG_COLS / 4; g++)
                    sacc[g] = _mm512_setzero_ps();
                __m512i isum[KG_COLS / 4];
                if (kind != KG_Q6_K) {
                    /* per row: d * sc_j for j = 0..7, dmin, mins as int16 pairs */
                    float dsc[8][4], dmin[4];
                    int32_t mpair[4][4];
                    uint8_t sm[4][16];
                    for (int r = 0; r < 4; r++) {
                        uint16_t d16, dm16;
                        memcpy(&d16, blk[r], 2);
                        memcpy(&dm16, blk[r] + 2, 2);
                        _mm_storeu_si128((__m128i *)sm[r], k4_scales_mins(blk[r] + 4));
                        float d = fp16(d16);
                        dmin[r] = fp16(dm16);
                        for (int j = 0; j < 8; j++)
                            dsc[j][r] = d * (float)sm[r][j];
                        for (int q = 0; q < 4; q++)
                            mpair[q][r] =
                                (int32_t)((uint32_t)sm[r][8 + 2 * q] | (uint32_t)sm[r][9 + 2 * q] << 16);
                    }
                    for (int q = 0; q < 4; q++) { /* sub-blocks 2q, 2q + 1 */
                        __m256i c[4];
                        for (int r = 0; r < 4; r++)
                            c[r] = _mm256_loadu_si256(
                                (const __m256i *)(blk[r] + (kind == KG_Q5_K ? 48 : 16) + 32 * q));
                        __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(c[0]), c[1], 1);
                        __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(c[2]), c[3], 1);
                        __m512i lo01 = _mm512_and_si512(z01, m4), lo23 = _mm512_and_si512(z23, m4);
                        __m512i hi01 = _mm512_and_si512(_mm512_srli_epi16(z01, 4), m4);
                        __m512i hi23 = _mm512_and_si512(_mm512_srli_epi16(z23, 4), m4);
                        if (kind == KG_Q5_K) {
                            __m256i h[4];
                            for (int r = 0; r < 4; r++)
                                h[r] = _mm256_loadu_si256((const __m256i *)(blk[r] + 16));
                            __m512i h01 = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
                            __m512i h23 = _mm512_inserti64x4(_mm512_castsi256_si512(h[2]), h[3], 1);
                            const __m512i one = _mm512_set1_epi8(1);
                            __m512i cnt_lo = _mm512_set1_epi64(2 * q), cnt_hi = _mm512_set1_epi64(2 * q + 1);
                            lo01 = _mm512_or_si512(
                                lo01,
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h01, cnt_lo), one), 4));
                            lo23 = _mm512_or_si512(
                                lo23,
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h23, cnt_lo), one), 4));
                            hi01 = _mm512_or_si512(
                                hi01,
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h01, cnt_hi), one), 4));
                            hi23 = _mm512_or_si512(
                                hi23,
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h23, cnt_hi), one), 4));
                        }
                        for (int half = 0; half < 2; half++) {
                            int j = 2 * q + half;
                            const int32_t(*yk)[KG_COLS / 4][64][4] = &panel.y[b];
                            sub32(isum, half ? hi01 : lo01, half ? hi23 : lo23, yk, 8 * j, ng, NULL);
                            __m512 sc = spread4(dsc[j]);
                            for (int g = 0; g < ng; g++)
                                sacc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[g]), sc, sacc[g]);
                        }
                    }
                    /* mins: sum over pairs of m_2q * bs'_2q + m_2q+1 * bs'_2q+1 */
                    __m512 vdmin = spread4(dmin);
                    for (int g = 0; g < ng; g++) {
                        __m512i ms = _mm512_setzero_si512();
                        for (int q = 0; q < 4; q++) {
                            __m512i mv = _mm512_permutexvar_epi32(
                                _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)mpair[q])));
                            ms = _mm512_dpwssd_epi32(ms, mv, bcast128(panel.bsp[b][g][q]));
                        }
                        sacc[g] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), vdmin, sacc[g]);
                    }
                } else {
                    /* Q6_K: unpack each row's 256 codes (0..63) to a buffer in
                     * element order, then take 16 codes of each row per sub-block */
                    uint8_t codes[4][256] __attribute__((aligned(64)));
                    float dsc[16][4];
                    for (int r = 0; r < 4; r++) {
                        const qt_block_q6_k *a = (const qt_block_q6_k *)blk[r];
                        const __m512i m30 = _mm512_set1_epi8(0x30);
                        for (int c = 0; c < 2; c++) {
                            __m512i ql = _mm512_loadu_si512(a->ql + 64 * c);
                            const uint8_t *qh = a->qh + 32 * c;
                            __m512i h0 = _mm512_slli_epi16(split32(qh, 0, 2), 4);
                            __m512i h1 = _mm512_slli_epi16(split32(qh, 4, 6), 4);
                            _mm512_store_si512(
                                codes[r] + 128 * c,
                                _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m4), h0, m30, 0xf8));
                            _mm512_store_si512(
                                codes[r] + 128 * c + 64,
                                _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h1,
                                                          m30, 0xf8));
                        }
                        float d = fp16(a->d);
                        for (int j = 0; j < 16; j++)
                            dsc[j][r] = d * (float)a->scales[j];
                    }
                    for (int j = 0; j < 16; j++) {
                        __m512i q =
                            _mm512_castsi128_si512(_mm_load_si128((const __m128i *)(codes[0] + 16 * j)));
                        q = _mm512_inserti32x4(q, _mm_load_si128((const __m128i *)(codes[1] + 16 * j)), 1);
                        q = _mm512_inserti32x4(q, _mm_load_si128((const __m128i *)(codes[2] + 16 * j)), 2);
                        q = _mm512_inserti32x4(q, _mm_load_si128((const __m128i *)(codes[3] + 16 * j)), 3);
                        __m512i w0 = _mm512_shuffle_epi32(q, _MM_PERM_AAAA);
                        __m512i w1 = _mm512_shuffle_epi32(q, _MM_PERM_BBBB);
                        __m512i w2 = _mm512_shuffle_epi32(q, _MM_PERM_CCCC);
                        __m512i w3 = _mm512_shuffle_epi32(q, _MM_PERM_DDDD);
                        __m512 sc = spread4(dsc[j]);
                        for (int g = 0; g < ng; g++) {
                            const int32_t(*yk)[4] = panel.y[b][g];
                            __m512i i0 = bcast128(panel.off[b][g][j]);
                            i0 = _mm512_dpbusd_epi32(i0, w0, bcast128(yk[4 * j]));
                            __m512i i1 =
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, bcast128(yk[4 * j + 1]));
                            i0 = _mm512_dpbusd_epi32(i0, w2, bcast128(yk[4 * j + 2]));
                            i1 = _mm512_dpbusd_epi32(i1, w3, bcast128(yk[4 * j + 3]));
                            sacc[g] =
                                _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), sc, sacc[g]);
                        }
                    }
                }
                for (int g = 0; g < ng; g++)
                    acc[g] = _mm512_fmadd_ps(sacc[g], _mm512_broadcast_f32x4(_mm_loadu_ps(panel.dy[b][g])),
                                             acc[g]);
            }
            for (int g = 0; g < KG_COLS / 4; g++)
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

/* ---- decode (one token) ------------------------------------------------------
 *
 * The activation side of each super-block is copied once per call into
 * 64-byte-aligned registers (k_act): Q8_K's codes sit at offset 4 of a
 * 292-byte block, so reading them in place split nearly every 64-byte load
 * across two cache lines, once per row. Q4_K's codes are reordered on the
 * way to match its weights as they lie: a 64-byte load of qs holds
 * sub-blocks 0 and 2 in its low nibbles and 1 and 3 in its high ones (and
 * 4..7 likewise in the next 64 bytes), so y[k] holds the activations of
 * those sub-block pairs, and bs the bsum pairs its mins meet. The six-bit
 * scales and mins of a row's super-block are unpacked with two vpshufb
 * and a few masks instead of scalar code. Then each row streams through
 * alone, front to back, as in quant_avx512.c's decode. */
#define KGEMV_SB 32 /* super-blocks per pass over the rows: 10 KiB of k_act */
#define KGEMV_PREFETCH_BYTES 4096

typedef struct k_act {
    __m512i y[4];
    __m256i bs; /* Q4_K: bsum pairs in int16 lanes 8..15 (0..7 zero); Q6_K: the 16 bsums */
    float d;
} k_act;

static inline __attribute__((always_inline)) void prefetch_row(const uint8_t *p, size_t bytes)
{
    uintptr_t ahead = (uintptr_t)p + KGEMV_PREFETCH_BYTES;
    for (size_t off = 0; off < bytes; off += 64)
        _mm_prefetch((const char *)(ahead + off), _MM_HINT_T0);
}

static inline void k_act_fill(k_act *a, const qt_block_q8_k *b, bool reorder)
{
    __m512i v[4];
    for (int k = 0; k < 4; k++)
        v[k] = load_codes(b, k);
    __m256i bs = load_bsums(b);
    if (reorder) {
        /* codes 0..255 as 64-byte thirds v[0..3]: y0 = [0..31 | 64..95], y1 = [32..63 | 96..127], ... */
        a->y[0] = _mm512_shuffle_i64x2(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0));
        a->y[1] = _mm512_shuffle_i64x2(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2));
        a->y[2] = _mm512_shuffle_i64x2(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0));
        a->y[3] = _mm512_shuffle_i64x2(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2));
        /* sub-block j (32 codes) has bsums 2j and 2j + 1; their sum goes to lane 8 + j */
        __m256i pairs = _mm256_madd_epi16(bs, _mm256_set1_epi16(1)); /* 8 int32 */
        __m128i p16 = _mm256_cvtepi32_epi16(pairs);
        a->bs = _mm256_inserti128_si256(_mm256_setzero_si256(), p16, 1);
    } else {
        for (int k = 0; k < 4; k++)
            a->y[k] = v[k];
        a->bs = bs;
    }
    a->d = load_d(b);
}

/* Q4_K's header (d, dmin and the 12 scale bytes, as one 16-byte load) to
 * int16 lanes: scales 0..7, then mins 0..7 (quant_impl.h has the packing;
 * k4_scales_mins above is the same in scalar code). */
static inline __m256i k4_header_scales(__m128i h)
{
    /* scale byte i is header byte 4 + i */
    const __m128i pick = _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i pick_top = _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11);
    __m128i p = _mm_shuffle_epi8(h, pick);
    __m128i low = _mm_and_si128(p, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
    __m128i high_nib = _mm_and_si128(_mm_srli_epi16(p, 4), _mm_setr_epi32(0, 0, 0, 0x0f0f0f0f));
    __m128i top = _mm_srli_epi16(_mm_and_si128(_mm_shuffle_epi8(h, pick_top), _mm_set1_epi8((char)0xc0)), 2);
    return _mm256_cvtepu8_epi16(_mm_ternarylogic_epi32(low, high_nib, top, 0xfe)); /* a | b | c */
}

/* int16 lanes 0..15 get scale first, 16..31 scale second, of 16 in s. */
static inline __m512i two_scales(__m512i s, int first, int second)
{
    __m512i idx = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)first), _mm512_set1_epi16((short)second));
    return _mm512_permutexvar_epi16(idx, s);
}

static inline __m512 q4k_dot_sb(__m512 acc, __m256 *macc, const uint8_t *blk, const k_act *a)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m128i h = _mm_loadu_si128((const __m128i *)blk);
    __m256i sm = k4_header_scales(h);
    __m512i sm5 = _mm512_castsi256_si512(sm);
    __m512i q0 = _mm512_loadu_si512(blk + 16);
    __m512i q1 = _mm512_loadu_si512(blk + 80);
    __m512i i0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(_mm512_and_si512(q0, m4), a->y[0]), two_scales(sm5, 0, 2));
    __m512i i1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q0, 4), m4), a->y[1]),
                                     two_scales(sm5, 1, 3));
    i0 = _mm512_dpwssd_epi32(i0, _mm512_maddubs_epi16(_mm512_and_si512(q1, m4), a->y[2]), two_scales(sm5, 4, 6));
    i1 = _mm512_dpwssd_epi32(i1, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q1, 4), m4), a->y[3]),
                             two_scales(sm5, 5, 7));
    /* [d, dmin] * dy */
    __m128 dd = _mm_mul_ps(_mm_cvtph_ps(h), _mm_set1_ps(a->d));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), _mm512_broadcastss_ps(dd), acc);
    __m256i mins = _mm256_madd_epi16(sm, a->bs); /* lanes 4..7: mins times bsum pairs */
    *macc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), *macc);
    return acc;
}

static inline __m512 q6k_dot_sb(__m512 acc, const uint8_t *blk, const k_act *a)
{
    const qt_block_q6_k *b = (const qt_block_q6_k *)blk;
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    __m512i sc = _mm512_castsi256_si512(sc16);
    /* codes are stored + 32: each sub-block's dot starts at -32 * scale * bsum */
    __m512i isum = _mm512_castsi256_si512(_mm256_slli_epi32(_mm256_madd_epi16(a->bs, sc16), 5));
    isum = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_maskz_mov_epi32(0x00ff, isum));
    __m512i isum1 = _mm512_setzero_si512();
    for (int c = 0; c < 2; c++) {
        __m512i ql = _mm512_loadu_si512(b->ql + 64 * c);
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * c)));
        /* elements 128c + 0..63: low nibbles, qh bits 0-1 then 2-3 moved to bits 4-5 */
        __m512i h0 = _mm512_sllv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4));
        __m512i c0 = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m4), h0, m30, 0xf8); /* a | (b & c) */
        /* elements 128c + 64..127: high nibbles, qh bits 4-5 then 6-7 */
        __m512i h1 = _mm512_srlv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0));
        __m512i c1 = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h1, m30, 0xf8);
        isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(c0, a->y[2 * c]), spread_scales(sc, 8 * c, 8));
        isum1 = _mm512_dpwssd_epi32(isum1, _mm512_maddubs_epi16(c1, a->y[2 * c + 1]), spread_scales(sc, 8 * c + 4, 8));
    }
    uint16_t d;
    memcpy(&d, &b->d, 2);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(isum, isum1)), _mm512_set1_ps(a->d * fp16(d)), acc);
}

enum { KV_Q4_K, KV_Q6_K };

static inline __attribute__((always_inline)) void k_gemv(int kind, int64_t n, float *restrict s,
                                                         const void *restrict x, size_t x_stride, int nr,
                                                         const void *restrict y)
{
    const int64_t nsb = n / QT_QK_K;
    const size_t bbytes = kind == KV_Q4_K ? sizeof(qt_block_q4_k) : sizeof(qt_block_q6_k);
    const qt_block_q8_k *b = y;
    k_act act[KGEMV_SB];
    for (int r = 0; r < nr; r++)
        s[r] = 0.0f;
    for (int64_t i0 = 0; i0 < nsb; i0 += KGEMV_SB) {
        const int nc = nsb - i0 < KGEMV_SB ? (int)(nsb - i0) : KGEMV_SB;
        for (int i = 0; i < nc; i++)
            k_act_fill(&act[i], b + i0 + i, kind == KV_Q4_K);
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = (const uint8_t *)x + (size_t)r * x_stride + (size_t)i0 * bbytes;
            __m512 acc = _mm512_setzero_ps();
            __m256 macc = _mm256_setzero_ps();
            for (int i = 0; i < nc; i++) {
                const uint8_t *blk = row + (size_t)i * bbytes;
                prefetch_row(blk, bbytes);
                if (kind == KV_Q4_K)
                    acc = q4k_dot_sb(acc, &macc, blk, &act[i]);
                else
                    acc = q6k_dot_sb(acc, blk, &act[i]);
            }
            s[r] += _mm512_reduce_add_ps(acc) - hsum256(macc);
        }
    }
}

#define K_GEMM(name, kind, dot)                                                                           \
    void name(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride, int nr, \
              const void *restrict y, size_t y_stride, int nt)                                            \
    {                                                                                                     \
        if (nt == 1) {                                                                                    \
            for (int r = 0; r < nr; r++)                                                                  \
                dot(n, &s[r], (const uint8_t *)x + (size_t)r * x_stride, y);                              \
            return;                                                                                       \
        }                                                                                                 \
        kgemm_tiles(kind, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);                                  \
    }

K_GEMM(qt_avx512_q5_k_gemm, KG_Q5_K, qt_avx512_q5_k_vec_dot)

void qt_avx512_q4_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                         int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1)
        k_gemv(KV_Q4_K, n, s, x, x_stride, nr, y);
    else
        kgemm_tiles(KG_Q4_K, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q6_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                         int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1)
        k_gemv(KV_Q6_K, n, s, x, x_stride, nr, y);
    else
        kgemm_tiles(KG_Q6_K, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}
