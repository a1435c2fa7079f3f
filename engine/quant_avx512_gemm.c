/*
 * quant_avx512_gemm.c - cache-blocked AVX-512 VNNI gemm tiles (qt_gemm_fn)
 * for prompt batches: Q4_0 and Q8_0 weights against Q8_0 activations, Q4_K
 * and Q6_K weights against Q8_K activations; and every kernel of the
 * interleaved Q4_0 x16, Q8_0 x16, Q4_K x16 and Q6_K x16 weights
 * (quant_x16.c has the layouts): their decode, their prompt tiles (the
 * ones below, with the weights unpacked through 16 x 16 transposes) and
 * the A8 x16 activation quantizer.
 *
 * Compiled, like quant_avx512.c, with AVX-512 F/BW/VL/DQ + VNNI and called
 * only after quant.c's probe saw them. For the stored layouts, batches of
 * fewer than BG_MIN_TOKENS tokens (decode among them) go to quant_avx512.c's
 * tiles and gemv kernels.
 *
 * Layout ("row lanes"): one zmm holds 16 weight rows, lane r = row r. For
 * one 32-element block (or sub-block) the weights are unpacked once per
 * call into 8 zmm W[k] (k = 0..7; 4 for Q6_K's 16-element sub-blocks): lane r of W[k] holds the unsigned byte
 * codes of elements 4k .. 4k + 3 of row r. A token's activation block is
 * signed bytes in memory in element order, so dword k of it, broadcast to
 * all lanes, meets W[k] as vpdpbusd's signed operand: eight
 * vpdpbusd leave the block's integer dot of all 16 rows with that token,
 * one row per lane, with no shuffles and no horizontal sums. Per-block
 * scales are applied in float after the integer dot: one conversion, one
 * multiply by the 16 rows' weight scales and one FMA with the token's
 * activation scale per 16 x 32 multiply-adds.
 *
 * Tiling: a call takes up to BG_ROWS rows (BG_ROWS / 16 row groups) and
 * BG_COLS tokens, in chunks of BG_KC blocks along the row. Per chunk the
 * token side is summarised once into a panel (each token's block scales as
 * floats, and for the legacy types the offset term, below) that every row
 * group reads; per row group and chunk the weights are unpacked once into
 * W (BG_KC x 576 bytes, in L1) and then every token of the call streams
 * past them in register tiles of BG_NT tokens.
 *
 * Unpacking: 16 rows' codes are read with plain 16-byte loads (four rows
 * per zmm) and turned into dword-k-of-every-row vectors by a 16 x 4 dword
 * register transpose (two vpermt2d and two vshufi64x2 per four outputs);
 * no gathers (they cost a fifth of the kernel's time in a first version).
 * The token panel folds each token's 32 codes with one vpdpbusd against
 * ones and reduces eight tokens at a time with a vphaddd tree.
 *
 * Row groups go two at a time where there are two (bg_tile2: 32 rows by
 * BG_NT2 = 4 tokens, each activation broadcast meeting both groups); a
 * last single group takes bg_tile below.
 *
 * Register budget of the inner loop (16 rows x BG_NT = 8 tokens): 8 zmm W
 * for the current block, 1 zmm of weight scales, 8 float accumulators (one
 * per token, 16 rows each), and the int32 dots in flight plus temporaries:
 * about 22 of the 32 zmm registers, no spills. Activation dwords come as
 * 4-byte broadcasts and the token scale as the FMA's {1to16} operand (loads,
 * no shuffle work). Per token and block: 8 vpdpbusd, 1 add, 1 conversion,
 * 1 multiply, 1 FMA. Measured on the AMD EPYC this was written on (one
 * core, 2048 x 2048 Q4_0 by 128 tokens, best of 15 on a busy machine):
 * ~225 GMAC/s, against ~245 GMAC/s for a loop of independent vpdpbusd
 * alone, and ~60-130 GMAC/s for quant_avx512.c's 4 x 4 tiles.
 *
 * Memory traffic: weights are read from their mmapped home once per call
 * (the unpacked copy, in L1, is reused by every token of the call: 128
 * tokens per read for a 128-token prompt); activations are Q8 rows
 * quantized once per matmul by matmul.c and read from L2 once per row
 * group; outputs are accumulated in place in s (16 consecutive floats per
 * token per group, loaded and stored once per chunk).
 *
 * Offsets: vpdpbusd multiplies unsigned by signed bytes, so weight codes
 * enter unsigned: Q4_0 as stored (0..15, true value code - 8), Q8_0 as
 * code + 128. The correction -8 * sum(y) (or -128 * sum(y)) per token and
 * block is exact in int32 and is the accumulator's start value, from the
 * panel. Q4_K and Q6_K use Q8_K's bsums instead: the mins (Q4_K) and the
 * -32 offset (Q6_K) meet the bsums in vpdpwssd against per-row int16 pairs.
 * Q4_K x16 goes through the same tiles as Q4_0 x16, its sub-blocks as the
 * blocks: the weight scale is d * scale of the sub-block, there is no
 * integer offset, and the mins cost one more FMA per block and token,
 * dmin * min (per row, unpacked with the scales) times the token's scale
 * times its code sum (from the panel). Q6_K x16 too: its codes are
 * rebuilt from the nibbles and top bits once, at unpacking; the two halves
 * of a block (steps 0..3 and 4..7, already separate sums) start from their
 * own -32 offsets (the panel's off and off_hi) and meet their own d *
 * scale (W's d and m): one more conversion and FMA per block and token.
 * Every integer sum is exact; results
 * match the scalar dot up to float rounding order (the test's tolerance).
 *
 * K-quants: a Q4_K super-block is 8 sub-blocks of 32 with 6-bit scales:
 * each sub-block's int32 dot (8 vpdpbusd) is multiplied by the rows' scale
 * (vpmulld) and summed, then one conversion and FMA per super-block. Q6_K
 * has 16 sub-blocks of 16 (4 vpdpbusd each) the same way.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include <stdbool.h>

#include "quant_impl.h"

#define BG_ROWS QT_AVX512_BGEMM_ROWS
#define BG_COLS QT_AVX512_BGEMM_COLS
#define BG_KC 32 /* legacy blocks per chunk: W is 20 KiB per row group, the panel 72 KiB */
#define BG_KKC 4 /* K super-blocks per chunk: W is 21 KiB (Q4_K) */
#define BG_NT 8  /* tokens per register tile */
#define BG_MIN_TOKENS 8

_Static_assert(BG_ROWS % 16 == 0, "row groups are 16 rows");

static inline uint32_t bg_load_u32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __m512i bg_bcast(const void *p)
{
    return _mm512_set1_epi32((int)bg_load_u32(p));
}

static inline __mmask16 bg_row_mask(int r0, int nr)
{
    int k = nr - r0 >= 16 ? 16 : nr - r0;
    return (__mmask16)((1u << k) - 1u);
}

/* ---- Q4_0 and Q8_0 ----------------------------------------------------- */

enum { BG_Q4_0, BG_Q8_0, BG_Q4_0X16, BG_Q8_0X16, BG_Q4_KX16, BG_Q6_KX16 };

static inline bool bg_is_x16(int kind) { return kind >= BG_Q4_0X16; }

/* Bytes per 32-element block of a kind's weight rows (x16 blocks hold 16);
 * for Q6_K x16, of its codes (the scales sit at the row's end). */
static inline size_t bg_block_bytes(int kind)
{
    switch (kind) {
    case BG_Q4_0: return sizeof(qt_block_q4_0);
    case BG_Q8_0: return sizeof(qt_block_q8_0);
    case BG_Q4_0X16: return sizeof(qt_block_q4_0x16) / 16;
    case BG_Q4_KX16: return sizeof(qt_block_q4_kx16) / 16;
    case BG_Q6_KX16: return 384 / 16;
    default: return sizeof(qt_block_q8_0x16) / 16;
    }
}

typedef struct bg_panel {
    float d[BG_KC][BG_COLS + 16];     /* token scales by block (room for a last group of 16) */
    int32_t off[BG_KC][BG_COLS + 16]; /* -(weight offset) * sum of the token's codes */
    int32_t off_hi[BG_KC][BG_COLS + 16]; /* Q6_K x16: off of the high half (off: the low half) */
    float ms[BG_KC][BG_COLS + 16];    /* Q4_K x16: token scale * sum of its codes, for the mins */
} bg_panel;

typedef struct bg_wpack {
    __m512i w[BG_KC][8];
    __m512 d[BG_KC]; /* Q6_K x16: d * scale of the low half */
    __m512 m[BG_KC]; /* Q4_K x16: each row's dmin * min of the block; Q6_K x16: d * scale of the high half */
} bg_wpack;

/* Q4_K x16's 32 bytes of scales (quant_impl.h) as two float vectors, lane j
 * = sub-block j: d * scale_j and dmin * min_j of its super-block. The
 * products are the ones Q4_K's reference forms (same rounding). */
static inline __attribute__((always_inline)) void k16_scales(const uint8_t *sa, __m512 *ws, __m512 *wm)
{
    const __m128i m0f = _mm_set1_epi8(0x0f);
    const __m128i x = _mm_loadu_si128((const __m128i *)(sa + 8)); /* scale | (min & 3) << 6 */
    const __m128i q = _mm_loadl_epi64((const __m128i *)(sa + 24)); /* min >> 2, two per byte */
    const __m128i mh = _mm_unpacklo_epi64(_mm_and_si128(q, m0f), _mm_and_si128(_mm_srli_epi16(q, 4), m0f));
    const __m128i sc = _mm_and_si128(x, _mm_set1_epi8(63));
    const __m128i m = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(x, 6), _mm_set1_epi8(3)), _mm_slli_epi16(mh, 2));
    const __m512 dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)sa))); /* d0 d1 dmin0 dmin1 */
    const __m512i half = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512 d = _mm512_permutexvar_ps(half, dd);
    const __m512 dmin = _mm512_permutexvar_ps(_mm512_add_epi32(half, _mm512_set1_epi32(2)), dd);
    *ws = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)), d);
    *wm = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)), dmin);
}

/* Q6_K x16's top-bit vector h (quant_impl.h) with the two bits for code
 * dword k at bits 4..5 of each byte (other bits unmasked). */
static inline __attribute__((always_inline)) __m512i q6_top(__m512i h, int k)
{
    switch (k) {
    case 0: return _mm512_slli_epi16(h, 4);
    case 1: return _mm512_slli_epi16(h, 2);
    case 2: return h;
    default: return _mm512_srli_epi16(h, 2);
    }
}

/* Q6_K x16 codes, 0..63 per byte: the low four bits of nib (the rest
 * masked off) or'ed with top's bits 4..5 (one vpternlogd: (a & b) | c). */
static inline __attribute__((always_inline)) __m512i q6_code(__m512i nib, __m512i top)
{
    return _mm512_ternarylogic_epi32(nib, _mm512_set1_epi8(0x0f), _mm512_and_si512(top, _mm512_set1_epi8(0x30)),
                                     0xea);
}

/* Q6_K x16's scales of one x16 block as two float vectors, lane j = block
 * j: d * scale of its low half and of its high half (Q6_K's products). */
static inline __attribute__((always_inline)) void q6_scales(const uint8_t *sc, __m512 *lo, __m512 *hi)
{
    uint32_t dd;
    memcpy(&dd, sc + 32, sizeof dd);
    const __m512i half = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512 d = _mm512_permutexvar_ps(half, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dd))));
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sc))), d);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(sc + 16)))), d);
}

/* Token side of blocks kb .. kb + nkb for tokens 0 .. nt, eight tokens of
 * one block at a time: each token's 32 codes fold to 8 dword sums in one
 * vpdpbusd against ones, and a tree of vphaddd turns the eight tokens'
 * partial sums into their eight totals (no scalar reduction per token). */
static inline __attribute__((always_inline)) void bg_panel_fill(bg_panel *p, const uint8_t *y,
                                                                size_t y_stride, int nt, int64_t kb,
                                                                int nkb, int shift)
{
    const __m256i ones = _mm256_set1_epi8(1);
    const __m128i sh = _mm_cvtsi32_si128(shift);
    for (int t0 = 0; t0 < nt; t0 += 8) {
        const qt_block_q8_0 *row[8];
        for (int t = 0; t < 8; t++) /* missing tokens repeat the last; not read back */
            row[t] = (const qt_block_q8_0 *)(y + (size_t)(t0 + t < nt ? t0 + t : nt - 1) * y_stride) + kb;
        for (int b = 0; b < nkb; b++) {
            __m256i v[8];
            uint16_t dh[8];
            for (int t = 0; t < 8; t++) {
                v[t] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones,
                                           _mm256_loadu_si256((const __m256i *)row[t][b].qs));
                dh[t] = row[t][b].d;
            }
            __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
            __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
            __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
            /* lane halves: [t0..t3 low | t0..t3 high] and the same for t4..t7 */
            __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                                           _mm256_permute2x128_si256(h0123, h4567, 0x31));
            __m256i off = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sll_epi32(sum, sh));
            _mm256_storeu_si256((__m256i *)&p->off[b][t0], off);
            _mm256_storeu_ps(&p->d[b][t0], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh)));
        }
    }
}

/* Dword k of each of 16 rows, rows given as four zmm of four rows' 16-byte
 * lanes (z[i] lane j = row 4 i + j): a 16 x 4 dword transpose into out[0..4). */
static inline void bg_transpose16x4(const __m512i z[4], __m512i out[4])
{
    /* a: rows 0..7 of dwords 0, 1 (8 each); b: of dwords 2, 3; c, d: rows 8..15 */
    const __m512i i01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i i23 = _mm512_add_epi32(i01, _mm512_set1_epi32(2));
    __m512i a = _mm512_permutex2var_epi32(z[0], i01, z[1]), b = _mm512_permutex2var_epi32(z[0], i23, z[1]);
    __m512i c = _mm512_permutex2var_epi32(z[2], i01, z[3]), d = _mm512_permutex2var_epi32(z[2], i23, z[3]);
    out[0] = _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(1, 0, 1, 0));
    out[1] = _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 2, 3, 2));
    out[2] = _mm512_shuffle_i64x2(b, d, _MM_SHUFFLE(1, 0, 1, 0));
    out[3] = _mm512_shuffle_i64x2(b, d, _MM_SHUFFLE(3, 2, 3, 2));
}

/* 16 bytes at p + rows[r] for r = 4 i .. 4 i + 3 into z[i]. */
static inline void bg_load16x16(const uint8_t *const rows[16], size_t off, __m512i z[4])
{
    for (int i = 0; i < 4; i++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows[4 * i] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * i + 1] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * i + 2] + off)), 2);
        z[i] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * i + 3] + off)), 3);
    }
}

/* 16 x 16 dwords in place: v[i] lane j becomes v[j] lane i. Unpacks pair
 * rows within 128-bit lanes, then whole lanes move across registers. */
static inline __attribute__((always_inline)) void bg_transpose16x16(__m512i v[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    /* u[4 i + c], 128-bit lane L: rows 4 i .. 4 i + 3 of column 4 L + c */
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i b = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i e = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i f = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
        v[c] = _mm512_shuffle_i32x4(a, e, _MM_SHUFFLE(2, 0, 2, 0));
        v[4 + c] = _mm512_shuffle_i32x4(a, e, _MM_SHUFFLE(3, 1, 3, 1));
        v[8 + c] = _mm512_shuffle_i32x4(b, f, _MM_SHUFFLE(2, 0, 2, 0));
        v[12 + c] = _mm512_shuffle_i32x4(b, f, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* Q4_0 x16 or Q8_0 x16 rows into W: one 64-byte load per row gives dword
 * k of 16 blocks (lane = block); a 16 x 16 transpose makes it lane = row,
 * block by block, which is what the tiles want. The scales likewise, as
 * floats. kb and nkb are multiples of 16 (rows of whole x16 blocks). */
/* An x16 block's scales decoded per row into two vectors (lane = block),
 * k16_scales or q6_scales, turned lane = row by two transposes into W's
 * d and m for blocks 16 g .. 16 g + 15. */
typedef void (*bg_scales_fn)(const uint8_t *sc, __m512 *a, __m512 *b);
static inline __attribute__((always_inline)) void bg_pack_scale_pairs(bg_wpack *wp, int g,
                                                                      const uint8_t *const rows[16], size_t off,
                                                                      bg_scales_fn scales)
{
    __m512i a[16], b[16];
    for (int r = 0; r < 16; r++) {
        __m512 x, y;
        scales(rows[r] + off, &x, &y);
        a[r] = _mm512_castps_si512(x);
        b[r] = _mm512_castps_si512(y);
    }
    bg_transpose16x16(a);
    bg_transpose16x16(b);
    for (int j = 0; j < 16; j++) {
        wp->d[16 * g + j] = _mm512_castsi512_ps(a[j]);
        wp->m[16 * g + j] = _mm512_castsi512_ps(b[j]);
    }
}

/* Q6_K x16 rows into W the same way: the code vectors and both top-bit
 * vectors transposed, then combined into 0..63 codes per row lane; the
 * scales as bg_pack_x16's, d * scale of each half (W's d and m). */
static inline __attribute__((always_inline)) void bg_pack_q6x16(bg_wpack *wp, const uint8_t *const rows[16],
                                                                int64_t n, int64_t kb, int nkb)
{
    for (int g = 0; g < nkb / 16; g++) {
        const int64_t gi = kb / 16 + g;
        const size_t qo = qt_q6x16_qs_at(gi), so = qt_q6x16_sc_at(gi, n);
        __m512i v[16], h0[16], h1[16];
        for (int r = 0; r < 16; r++) {
            h0[r] = _mm512_loadu_si512(rows[r] + qo + 256);
            h1[r] = _mm512_loadu_si512(rows[r] + qo + 320);
        }
        bg_transpose16x16(h0);
        bg_transpose16x16(h1);
        for (int k = 0; k < 4; k++) {
            for (int r = 0; r < 16; r++)
                v[r] = _mm512_loadu_si512(rows[r] + qo + 64 * k);
            bg_transpose16x16(v);
            for (int j = 0; j < 16; j++) {
                wp->w[16 * g + j][k] = q6_code(v[j], q6_top(h0[j], k));
                wp->w[16 * g + j][k + 4] = q6_code(_mm512_srli_epi16(v[j], 4), q6_top(h1[j], k));
            }
        }
        bg_pack_scale_pairs(wp, g, rows, so, q6_scales);
    }
}

static inline __attribute__((always_inline)) void bg_pack_x16(int kind, bg_wpack *wp, const uint8_t *x,
                                                              size_t x_stride, int64_t n, int r0, int nr,
                                                              int64_t kb, int nkb)
{
    const bool q4 = kind != BG_Q8_0X16;
    const size_t bbytes = 16 * bg_block_bytes(kind);
    const __m512i m4 = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8((char)0x80);
    const uint8_t *rows[16];
    for (int r = 0; r < 16; r++) /* rows past nr repeat the last; their lanes are not stored */
        rows[r] = x + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * x_stride;
    if (kind == BG_Q6_KX16) {
        bg_pack_q6x16(wp, rows, n, kb, nkb);
        return;
    }
    for (int g = 0; g < nkb / 16; g++) {
        const int64_t gi = kb / 16 + g;
        const size_t qo = qt_x16_qs_at(gi, bbytes), dof = qt_x16_d_at(gi, bbytes);
        __m512i v[16];
        for (int k = 0; k < (q4 ? 4 : 8); k++) {
            for (int r = 0; r < 16; r++)
                v[r] = _mm512_loadu_si512(rows[r] + qo + 64 * k);
            bg_transpose16x16(v);
            for (int j = 0; j < 16; j++) {
                if (q4) {
                    wp->w[16 * g + j][k] = _mm512_and_si512(v[j], m4);
                    wp->w[16 * g + j][k + 4] = _mm512_and_si512(_mm512_srli_epi32(v[j], 4), m4);
                } else {
                    wp->w[16 * g + j][k] = _mm512_xor_si512(v[j], flip);
                }
            }
        }
        if (kind == BG_Q4_KX16) {
            bg_pack_scale_pairs(wp, g, rows, dof, k16_scales);
            continue;
        }
        for (int r = 0; r < 16; r++)
            v[r] = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rows[r] + dof))));
        bg_transpose16x16(v);
        for (int j = 0; j < 16; j++)
            wp->d[16 * g + j] = _mm512_castsi512_ps(v[j]);
    }
}

/* The panel of bg_panel_fill from A8 x16 activations, which carry each
 * block's scale as a float and its code sum already: 16 tokens' 16 blocks
 * at a time, turned from lane = block to lane = token by bg_transpose16x16
 * (the panel has room for a last group of 16; missing tokens repeat the
 * last, and are not read back). Q4_K x16 has no integer offset (off = 0)
 * but mins, which meet scale * sum (ms). */
static inline void bg_panel_fill_x16(int kind, bg_panel *p, const uint8_t *y, size_t y_stride, int nt, int64_t kb,
                                     int nkb)
{
    const bool k16 = kind == BG_Q4_KX16, q6 = kind == BG_Q6_KX16;
    const __m512i ones = _mm512_set1_epi8(1);
    const __m128i shift = _mm_cvtsi32_si128(kind == BG_Q4_0X16 ? 3 : q6 ? 5 : 7);
    for (int t0 = 0; t0 < nt; t0 += 16) {
        const qt_block_a8_x16 *a[16];
        for (int t = 0; t < 16; t++)
            a[t] = (const qt_block_a8_x16 *)(y + (size_t)(t0 + t < nt ? t0 + t : nt - 1) * y_stride) + kb / 16;
        for (int g = 0; g < nkb / 16; g++) {
            __m512i d[16], e[16], f[16]; /* e: the offsets, or Q4_K x16's ms; f: Q6_K x16's high halves' */
            for (int t = 0; t < 16; t++) {
                __m512i sum = _mm512_loadu_si512(a[t][g].sum);
                d[t] = _mm512_loadu_si512(a[t][g].d);
                if (q6) { /* the low halves' sums: dwords 0..3 of each block */
                    __m512i lo = _mm512_setzero_si512();
                    for (int k = 0; k < 4; k++)
                        lo = _mm512_dpbusd_epi32(lo, ones, _mm512_loadu_si512(a[t][g].qs + 64 * k));
                    f[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(_mm512_sub_epi32(sum, lo), shift));
                    sum = lo;
                }
                e[t] = k16 ? _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(d[t]), _mm512_cvtepi32_ps(sum)))
                           : _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(sum, shift));
            }
            bg_transpose16x16(d);
            bg_transpose16x16(e);
            if (q6)
                bg_transpose16x16(f);
            for (int j = 0; j < 16; j++) {
                _mm512_storeu_si512(&p->d[16 * g + j][t0], d[j]);
                _mm512_storeu_si512(&p->off[16 * g + j][t0], k16 ? _mm512_setzero_si512() : e[j]);
                if (k16)
                    _mm512_storeu_si512(&p->ms[16 * g + j][t0], e[j]);
                if (q6)
                    _mm512_storeu_si512(&p->off_hi[16 * g + j][t0], f[j]);
            }
        }
    }
}

/* Unpack 16 rows' blocks kb .. kb + nkb into W: plain loads of each row's
 * codes and a register transpose (no gathers). */
static inline __attribute__((always_inline)) void bg_pack(int kind, bg_wpack *wp, const uint8_t *x,
                                                          size_t x_stride, int64_t n, int r0, int nr,
                                                          int64_t kb, int nkb)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    if (bg_is_x16(kind)) {
        bg_pack_x16(kind, wp, x, x_stride, n, r0, nr, kb, nkb);
        return;
    }
    const size_t bbytes = kind == BG_Q4_0 ? sizeof(qt_block_q4_0) : sizeof(qt_block_q8_0);
    const uint8_t *rows[16];
    for (int r = 0; r < 16; r++) /* rows past nr repeat the last; their lanes are not stored */
        rows[r] = x + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * x_stride + (size_t)kb * bbytes;
    for (int b = 0; b < nkb; b++) {
        const size_t o = (size_t)b * bbytes;
        __m512i z[4], q[4];
        uint16_t dh[16];
        for (int r = 0; r < 16; r++)
            memcpy(&dh[r], rows[r] + o, sizeof(uint16_t));
        wp->d[b] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dh));
        bg_load16x16(rows, o + 2, z);
        bg_transpose16x4(z, q);
        if (kind == BG_Q4_0) {
            for (int k = 0; k < 4; k++) {
                wp->w[b][k] = _mm512_and_si512(q[k], m4);
                wp->w[b][k + 4] = _mm512_and_si512(_mm512_srli_epi32(q[k], 4), m4);
            }
        } else {
            const __m512i flip = _mm512_set1_epi8((char)0x80);
            for (int k = 0; k < 4; k++)
                wp->w[b][k] = _mm512_xor_si512(q[k], flip);
            bg_load16x16(rows, o + 18, z);
            bg_transpose16x4(z, q);
            for (int k = 0; k < 4; k++)
                wp->w[b][k + 4] = _mm512_xor_si512(q[k], flip);
        }
    }
}

/* s[t][0..16) (masked) += the chunk's dots of the group with tokens t0 ..
 * t0 + N; first: the accumulators start from zero instead of s. */
static inline __attribute__((always_inline)) void bg_tile(int kind, int N, const bg_wpack *wp,
                                                          const bg_panel *p, int nkb, int t0,
                                                          const uint8_t *y, size_t y_stride, int64_t kb,
                                                          float *s, size_t ld_s, __mmask16 rmask, int first)
{
    /* where a token's code dword k of block b is: Q8_0 blocks as stored
     * (codes from byte 2, dwords 4 bytes apart), or A8 x16 (dword k of
     * block j at 64 k + 4 j of its 640-byte group) */
    const bool x16 = bg_is_x16(kind);
    const size_t kstep = x16 ? 64 : 4;
    __m512 acc[BG_NT];
    const uint8_t *yt[BG_NT];
    for (int t = 0; t < N; t++) {
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rmask, s + (size_t)(t0 + t) * ld_s);
        yt[t] = y + (size_t)(t0 + t) * y_stride +
                (x16 ? (size_t)(kb / 16) * sizeof(qt_block_a8_x16) : (size_t)kb * sizeof(qt_block_q8_0) + 2);
    }
    for (int b = 0; b < nkb; b++) {
        __m512i w0 = wp->w[b][0], w1 = wp->w[b][1], w2 = wp->w[b][2], w3 = wp->w[b][3];
        __m512i w4 = wp->w[b][4], w5 = wp->w[b][5], w6 = wp->w[b][6], w7 = wp->w[b][7];
        __m512 dw = wp->d[b];
        const size_t boff = x16 ? (size_t)(b / 16) * sizeof(qt_block_a8_x16) + 4 * (size_t)(b % 16)
                                : (size_t)b * sizeof(qt_block_q8_0);
        for (int t = 0; t < N; t++) {
            const uint8_t *q = yt[t] + boff;
            __m512i i0 = _mm512_set1_epi32(p->off[b][t0 + t]);
            __m512i i1 = _mm512_dpbusd_epi32(kind == BG_Q6_KX16 ? _mm512_set1_epi32(p->off_hi[b][t0 + t])
                                                                : _mm512_setzero_si512(),
                                             w4, bg_bcast(q + 4 * kstep));
            i0 = _mm512_dpbusd_epi32(i0, w0, bg_bcast(q));
            i1 = _mm512_dpbusd_epi32(i1, w5, bg_bcast(q + 5 * kstep));
            i0 = _mm512_dpbusd_epi32(i0, w1, bg_bcast(q + kstep));
            i1 = _mm512_dpbusd_epi32(i1, w6, bg_bcast(q + 6 * kstep));
            i0 = _mm512_dpbusd_epi32(i0, w2, bg_bcast(q + 2 * kstep));
            i1 = _mm512_dpbusd_epi32(i1, w7, bg_bcast(q + 7 * kstep));
            i0 = _mm512_dpbusd_epi32(i0, w3, bg_bcast(q + 3 * kstep));
            __m512 f;
            if (kind == BG_Q6_KX16) /* the halves have their own scales */
                f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), wp->m[b], _mm512_mul_ps(_mm512_cvtepi32_ps(i0), dw));
            else
                f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), dw);
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(p->d[b][t0 + t]), acc[t]);
            if (kind == BG_Q4_KX16)
                acc[t] = _mm512_fnmadd_ps(wp->m[b], _mm512_set1_ps(p->ms[b][t0 + t]), acc[t]);
        }
    }
    for (int t = 0; t < N; t++)
        _mm512_mask_storeu_ps(s + (size_t)(t0 + t) * ld_s, rmask, acc[t]);
}

static inline __attribute__((always_inline)) void bg_tokens(int kind, const bg_wpack *wp, const bg_panel *p,
                                                            int nkb, int nt, const uint8_t *y,
                                                            size_t y_stride, int64_t kb, float *s,
                                                            size_t ld_s, __mmask16 rmask, int first)
{
    int t0 = 0;
    for (; t0 + BG_NT <= nt; t0 += BG_NT)
        bg_tile(kind, BG_NT, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first);
    switch (nt - t0) {
    case 7: bg_tile(kind, 7, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 6: bg_tile(kind, 6, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 5: bg_tile(kind, 5, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 4: bg_tile(kind, 4, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 3: bg_tile(kind, 3, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 2: bg_tile(kind, 2, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 1: bg_tile(kind, 1, wp, p, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    default: break;
    }
}

/* bg_tile for two row groups at once (32 rows) and four tokens: each
 * activation dword, broadcast once, meets both groups' weights, halving the
 * broadcast loads per multiply-add. One thread on 2048-element rows, 64
 * rows by 128 tokens per call: 253-260 -> 304 GMAC/s for Q4_0 x16 and 276
 * -> 309 for Q4_0 (three or five or six tokens per tile were slower;
 * measured). N <= BG_NT2 tokens; wb's rows start 16 after wa's. */
#define BG_NT2 4
static inline __attribute__((always_inline)) void bg_tile2(int kind, int N, const bg_wpack *wa, const bg_wpack *wb,
                                                           const bg_panel *p, int nkb, int t0, const uint8_t *y,
                                                           size_t y_stride, int64_t kb, float *s, size_t ld_s,
                                                           __mmask16 mb, int first)
{
    const bool x16 = bg_is_x16(kind);
    const size_t kstep = x16 ? 64 : 4;
    __m512 acca[BG_NT2], accb[BG_NT2];
    const uint8_t *yt[BG_NT2];
    for (int t = 0; t < N; t++) {
        float *st = s + (size_t)(t0 + t) * ld_s;
        acca[t] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st);
        accb[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mb, st + 16);
        yt[t] = y + (size_t)(t0 + t) * y_stride +
                (x16 ? (size_t)(kb / 16) * sizeof(qt_block_a8_x16) : (size_t)kb * sizeof(qt_block_q8_0) + 2);
    }
    for (int b = 0; b < nkb; b++) {
        const size_t boff = x16 ? (size_t)(b / 16) * sizeof(qt_block_a8_x16) + 4 * (size_t)(b % 16)
                                : (size_t)b * sizeof(qt_block_q8_0);
        const __m512 da = wa->d[b], db = wb->d[b];
        for (int t = 0; t < N; t++) {
            const uint8_t *q = yt[t] + boff;
            const __m512i off = _mm512_set1_epi32(p->off[b][t0 + t]);
            /* four chains of four: eight-long chains left the vpdpbusd
             * units waiting on their latency (measured) */
            __m512i ia = off, ib = off;
            __m512i ja = kind == BG_Q6_KX16 ? _mm512_set1_epi32(p->off_hi[b][t0 + t]) : _mm512_setzero_si512(), jb = ja;
            for (int k = 0; k < 4; k++) {
                const __m512i yk = bg_bcast(q + (size_t)k * kstep), zk = bg_bcast(q + (size_t)(k + 4) * kstep);
                ia = _mm512_dpbusd_epi32(ia, wa->w[b][k], yk);
                ib = _mm512_dpbusd_epi32(ib, wb->w[b][k], yk);
                ja = _mm512_dpbusd_epi32(ja, wa->w[b][k + 4], zk);
                jb = _mm512_dpbusd_epi32(jb, wb->w[b][k + 4], zk);
            }
            const __m512 dy = _mm512_set1_ps(p->d[b][t0 + t]);
            if (kind == BG_Q6_KX16) { /* the halves have their own scales */
                const __m512 fa = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ja), wa->m[b], _mm512_mul_ps(_mm512_cvtepi32_ps(ia), da));
                const __m512 fb = _mm512_fmadd_ps(_mm512_cvtepi32_ps(jb), wb->m[b], _mm512_mul_ps(_mm512_cvtepi32_ps(ib), db));
                acca[t] = _mm512_fmadd_ps(fa, dy, acca[t]);
                accb[t] = _mm512_fmadd_ps(fb, dy, accb[t]);
                continue;
            }
            ia = _mm512_add_epi32(ia, ja);
            ib = _mm512_add_epi32(ib, jb);
            acca[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia), da), dy, acca[t]);
            accb[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ib), db), dy, accb[t]);
            if (kind == BG_Q4_KX16) {
                const __m512 ms = _mm512_set1_ps(p->ms[b][t0 + t]);
                acca[t] = _mm512_fnmadd_ps(wa->m[b], ms, acca[t]);
                accb[t] = _mm512_fnmadd_ps(wb->m[b], ms, accb[t]);
            }
        }
    }
    for (int t = 0; t < N; t++) {
        float *st = s + (size_t)(t0 + t) * ld_s;
        _mm512_storeu_ps(st, acca[t]);
        _mm512_mask_storeu_ps(st + 16, mb, accb[t]);
    }
}

/* The weight bytes the next bg_pack will read: rows from an address, a
 * stride, and the stretch of each row. bg_tokens2 prefetches its lines into
 * L2 a part at a time between tiles, so the pack meets them in cache instead
 * of waiting on memory row after row (one thread, 2048-wide Q4_0 x16 rows
 * streamed from memory: 257 -> 270 GMAC/s, measured). The address may lie
 * past the call's rows (the thread's next tile, usually), so it is an
 * integer, not a pointer: a prefetch never faults, and no pointer is formed
 * outside its object. */
typedef struct bg_next {
    uintptr_t base;
    size_t stride, bytes;
    int rows;
    /* the cursor: the next line to prefetch is line `line` of row `row` */
    int row;
    size_t line;
} bg_next;

/* Prefetch the next `count` lines of nx and move its cursor past them (no
 * divisions: a first version indexed lines as i / lines, i % lines and
 * spent more on the divides than the prefetches saved). always_inline: GCC
 * deems a function of nothing but prefetches free of effects and drops the
 * calls (seen at -O1 and above). */
static inline __attribute__((always_inline)) void bg_prefetch_some(bg_next *nx, int count)
{
    for (; count > 0 && nx->row < nx->rows; count--) {
        _mm_prefetch((const char *)(nx->base + (size_t)nx->row * nx->stride + 64 * nx->line), _MM_HINT_T1);
        if (++nx->line * 64 >= nx->bytes) {
            nx->line = 0;
            nx->row++;
        }
    }
}

static inline __attribute__((always_inline)) void bg_tokens2(int kind, const bg_wpack *wa, const bg_wpack *wb,
                                                             const bg_panel *p, int nkb, int nt, const uint8_t *y,
                                                             size_t y_stride, int64_t kb, float *s, size_t ld_s,
                                                             __mmask16 mb, int first, bg_next *nx)
{
    int t0 = 0;
    /* the lines spread over the tiles, a few more per tile than even */
    const int tiles = nt / BG_NT2 > 0 ? nt / BG_NT2 : 1;
    const int per_tile = (int)(((nx->bytes + 63) / 64 * (size_t)nx->rows) / (size_t)tiles) + 2;
    for (; t0 + BG_NT2 <= nt; t0 += BG_NT2) {
        bg_prefetch_some(nx, per_tile);
        bg_tile2(kind, BG_NT2, wa, wb, p, nkb, t0, y, y_stride, kb, s, ld_s, mb, first);
    }
    switch (nt - t0) {
    case 3: bg_tile2(kind, 3, wa, wb, p, nkb, t0, y, y_stride, kb, s, ld_s, mb, first); break;
    case 2: bg_tile2(kind, 2, wa, wb, p, nkb, t0, y, y_stride, kb, s, ld_s, mb, first); break;
    case 1: bg_tile2(kind, 1, wa, wb, p, nkb, t0, y, y_stride, kb, s, ld_s, mb, first); break;
    default: break;
    }
}

static inline __attribute__((always_inline)) void bg_gemm(int kind, int64_t n, float *restrict s, size_t ld_s,
                                                          const void *restrict x, size_t x_stride, int nr,
                                                          const void *restrict y, size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK;
    bg_panel panel;
    bg_wpack wp, wp2;
    for (int64_t kb = 0; kb < nb; kb += BG_KC) {
        const int nkb = nb - kb < BG_KC ? (int)(nb - kb) : BG_KC;
        if (bg_is_x16(kind))
            bg_panel_fill_x16(kind, &panel, y, y_stride, nt, kb, nkb);
        else
            bg_panel_fill(&panel, y, y_stride, nt, kb, nkb, kind == BG_Q4_0 ? 3 : 7);
        int r0 = 0;
        for (; r0 + 16 < nr; r0 += 32) { /* two groups, the second possibly short */
            bg_pack(kind, &wp, x, x_stride, n, r0, nr, kb, nkb);
            bg_pack(kind, &wp2, x, x_stride, n, r0 + 16, nr, kb, nkb);
            /* next: the following pair of groups, or the first of the next chunk */
            const size_t bbytes = bg_block_bytes(kind);
            const int nkb_next = nb - (kb + BG_KC) < BG_KC ? (int)(nb - (kb + BG_KC)) : BG_KC;
            const uintptr_t xa = (uintptr_t)x;
            bg_next nx;
            if (r0 + 32 < nr)
                nx = (bg_next){ xa + (size_t)(r0 + 32) * x_stride + (size_t)kb * bbytes, x_stride,
                                (size_t)nkb * bbytes, nr - (r0 + 32) < 32 ? nr - (r0 + 32) : 32, 0, 0 };
            else if (nkb_next > 0)
                nx = (bg_next){ xa + (size_t)(kb + BG_KC) * bbytes, x_stride, (size_t)nkb_next * bbytes,
                                nr < 32 ? nr : 32, 0, 0 };
            else /* the rows after this call's */
                nx = (bg_next){ xa + (size_t)nr * x_stride, x_stride, (size_t)(nb < BG_KC ? nb : BG_KC) * bbytes,
                                32, 0, 0 };
            bg_tokens2(kind, &wp, &wp2, &panel, nkb, nt, y, y_stride, kb, s + r0, ld_s, bg_row_mask(r0 + 16, nr),
                       kb == 0, &nx);
        }
        for (; r0 < nr; r0 += 16) {
            bg_pack(kind, &wp, x, x_stride, n, r0, nr, kb, nkb);
            bg_tokens(kind, &wp, &panel, nkb, nt, y, y_stride, kb, s + r0, ld_s, bg_row_mask(r0, nr), kb == 0);
        }
    }
}

/* Whether a call goes to quant_avx512.c instead: batches too small to
 * repay unpacking the weights. */
static inline bool bg_delegate(int nt)
{
    return nt < BG_MIN_TOKENS;
}

/* The call in quant_avx512.c's tile sizes. */
static void bg_by_tiles(qt_gemm_fn f, int rows, int cols, int64_t n, float *restrict s, size_t ld_s,
                        const void *restrict x, size_t x_stride, int nr, const void *restrict y,
                        size_t y_stride, int nt)
{
    for (int r = 0; r < nr; r += rows)
        for (int t = 0; t < nt; t += cols)
            f(n, s + (size_t)t * ld_s + r, ld_s, (const uint8_t *)x + (size_t)r * x_stride, x_stride,
              nr - r < rows ? nr - r : rows, (const uint8_t *)y + (size_t)t * y_stride, y_stride,
              nt - t < cols ? nt - t : cols);
}

void qt_avx512_q4_0_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (bg_delegate(nt)) {
        bg_by_tiles(qt_avx512_q4_0_gemm, QT_AVX512_GEMM_ROWS, QT_AVX512_GEMM_COLS, n, s, ld_s, x, x_stride,
                    nr, y, y_stride, nt);
        return;
    }
    bg_gemm(BG_Q4_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q8_0_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (bg_delegate(nt)) {
        bg_by_tiles(qt_avx512_q8_0_gemm, QT_AVX512_GEMM_ROWS, QT_AVX512_GEMM_COLS, n, s, ld_s, x, x_stride,
                    nr, y, y_stride, nt);
        return;
    }
    bg_gemm(BG_Q8_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

/* ---- Q4_0 x16 ----------------------------------------------------------- */

/* Decode (and batches too small for bg_gemm, one token at a time): each
 * row streams through front to back; per 512 elements, four 64-byte loads
 * of weights, eight vpdpbusd with the activation dwords as memory operands
 * (two chains per nibble half: the dependency chain of one vpdpbusd after
 * another, not the instruction count, bounded a first version, measured),
 * and one conversion, multiply and FMA with the 16 scales. The high
 * nibbles are masked in place (code * 16) and the sum shifted back once,
 * exactly (it is a multiple of 16). */
#define X16_PREFETCH_BYTES 4096

static inline __attribute__((always_inline)) __m512i x16_q4_idot(const uint8_t *qs, const qt_block_a8_x16 *a)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m4h = _mm512_set1_epi8((char)0xf0);
    const __m512i w0 = _mm512_loadu_si512(qs), w1 = _mm512_loadu_si512(qs + 64);
    const __m512i w2 = _mm512_loadu_si512(qs + 128), w3 = _mm512_loadu_si512(qs + 192);
    __m512i l0 = _mm512_setzero_si512(), l1 = l0, h0 = l0, h1 = l0;
    l0 = _mm512_dpbusd_epi32(l0, _mm512_and_si512(w0, m4), _mm512_loadu_si512(a->qs));
    h0 = _mm512_dpbusd_epi32(h0, _mm512_and_si512(w0, m4h), _mm512_loadu_si512(a->qs + 256));
    l1 = _mm512_dpbusd_epi32(l1, _mm512_and_si512(w1, m4), _mm512_loadu_si512(a->qs + 64));
    h1 = _mm512_dpbusd_epi32(h1, _mm512_and_si512(w1, m4h), _mm512_loadu_si512(a->qs + 320));
    l0 = _mm512_dpbusd_epi32(l0, _mm512_and_si512(w2, m4), _mm512_loadu_si512(a->qs + 128));
    h0 = _mm512_dpbusd_epi32(h0, _mm512_and_si512(w2, m4h), _mm512_loadu_si512(a->qs + 384));
    l1 = _mm512_dpbusd_epi32(l1, _mm512_and_si512(w3, m4), _mm512_loadu_si512(a->qs + 192));
    h1 = _mm512_dpbusd_epi32(h1, _mm512_and_si512(w3, m4h), _mm512_loadu_si512(a->qs + 448));
    return _mm512_add_epi32(_mm512_add_epi32(l0, l1), _mm512_srai_epi32(_mm512_add_epi32(h0, h1), 4));
}

/* Per lane (block): the integer dot of unsigned codes 0..15 with the
 * activations, then Q4_0's -8 offset (off the chains: it needs no dot). */
static inline __attribute__((always_inline)) __m512 x16_dot(__m512 acc, const uint8_t *qs, const uint8_t *d,
                                                            const qt_block_a8_x16 *a)
{
    const __m512i i = _mm512_sub_epi32(x16_q4_idot(qs, a), _mm512_slli_epi32(_mm512_loadu_si512(a->sum), 3));
    __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, _mm512_loadu_ps(a->d)), acc);
}

/* Q4_K x16: the same integer dot per sub-block, then dy * (d scale * dot -
 * dmin min * sum(y)). */
static inline __attribute__((always_inline)) __m512 k16_dot(__m512 acc, const uint8_t *qs, const uint8_t *sa,
                                                            const qt_block_a8_x16 *a)
{
    const __m512i i = x16_q4_idot(qs, a);
    __m512 ws, wm;
    k16_scales(sa, &ws, &wm);
    __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(i), ws);
    t = _mm512_fnmadd_ps(wm, _mm512_cvtepi32_ps(_mm512_loadu_si512(a->sum)), t);
    return _mm512_fmadd_ps(t, _mm512_loadu_ps(a->d), acc);
}

/* Q6_K x16: per 512 elements six 64-byte loads of codes; each code vector
 * is rebuilt (low four bits and two top bits, three or four instructions)
 * and meets its activation dwords in vpdpbusd, low and high halves in
 * their own sums, as they have their own scales. Four vpdpbusd against
 * 32s give the low halves' -32 offsets; the high halves' is the block's
 * from sum[] less that. Then per half one conversion and one FMA with
 * d * scale, and one FMA with the block's activation scale. */
static inline __attribute__((always_inline)) __m512 q6x16_dot(__m512 acc, const uint8_t *qs, const uint8_t *sc,
                                                               const qt_block_a8_x16 *a)
{
    const __m512i c32 = _mm512_set1_epi8(32);
    const __m512i h0 = _mm512_loadu_si512(qs + 256), h1 = _mm512_loadu_si512(qs + 320);
    __m512i lo = _mm512_setzero_si512(), hi = lo, off = lo;
    for (int k = 0; k < 4; k++) {
        const __m512i l = _mm512_loadu_si512(qs + 64 * k), y = _mm512_loadu_si512(a->qs + 64 * k);
        lo = _mm512_dpbusd_epi32(lo, q6_code(l, q6_top(h0, k)), y);
        hi = _mm512_dpbusd_epi32(hi, q6_code(_mm512_srli_epi16(l, 4), q6_top(h1, k)),
                                 _mm512_loadu_si512(a->qs + 64 * (k + 4)));
        off = _mm512_dpbusd_epi32(off, c32, y);
    }
    const __m512i sum32 = _mm512_slli_epi32(_mm512_loadu_si512(a->sum), 5);
    lo = _mm512_sub_epi32(lo, off);
    hi = _mm512_sub_epi32(hi, _mm512_sub_epi32(sum32, off));
    __m512 wl, wh;
    q6_scales(sc, &wl, &wh);
    const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), wh, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), wl));
    return _mm512_fmadd_ps(t, _mm512_loadu_ps(a->d), acc);
}

static inline __attribute__((always_inline)) void x16_prefetch(const void *p, int lines)
{
    for (int l = 0; l < lines; l++)
        _mm_prefetch((const char *)((uintptr_t)p + X16_PREFETCH_BYTES + 64 * (size_t)l), _MM_HINT_T0);
}

/* Q8_0 x16 the same way: eight 64-byte loads of codes per 512 elements,
 * each flipped to unsigned (+128, by xor) for vpdpbusd, the -128 * sum
 * offset added once. */
static inline __attribute__((always_inline)) __m512 q8x16_dot(__m512 acc, const uint8_t *qs, const uint8_t *d,
                                                              const qt_block_a8_x16 *a)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    for (int k = 0; k < 8; k += 4) {
        c0 = _mm512_dpbusd_epi32(c0, _mm512_xor_si512(_mm512_loadu_si512(qs + 64 * k), flip),
                                 _mm512_loadu_si512(a->qs + 64 * k));
        c1 = _mm512_dpbusd_epi32(c1, _mm512_xor_si512(_mm512_loadu_si512(qs + 64 * k + 64), flip),
                                 _mm512_loadu_si512(a->qs + 64 * k + 64));
        c2 = _mm512_dpbusd_epi32(c2, _mm512_xor_si512(_mm512_loadu_si512(qs + 64 * k + 128), flip),
                                 _mm512_loadu_si512(a->qs + 64 * k + 128));
        c3 = _mm512_dpbusd_epi32(c3, _mm512_xor_si512(_mm512_loadu_si512(qs + 64 * k + 192), flip),
                                 _mm512_loadu_si512(a->qs + 64 * k + 192));
    }
    __m512i off = _mm512_slli_epi32(_mm512_loadu_si512(a->sum), 7);
    __m512i i = _mm512_add_epi32(_mm512_sub_epi32(c0, off), c1);
    i = _mm512_add_epi32(i, _mm512_add_epi32(c2, c3));
    __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, _mm512_loadu_ps(a->d)), acc);
}

/* Decode of Q4_0 x16 or Q8_0 x16 rows (kind BG_Q4_0X16 or BG_Q8_0X16):
 * each row front to back, two x16 blocks ([qs d][d qs]) per step. */
static inline __attribute__((always_inline)) void x16_gemv(int kind, int64_t n, float *restrict s,
                                                           const uint8_t *restrict x, size_t x_stride, int nr,
                                                           const uint8_t *restrict y)
{
    const size_t bytes = 16 * bg_block_bytes(kind);
    const int lines = (int)((2 * bytes + 63) / 64);
    const int64_t ng = n / QT_QK_X16;
    const qt_block_a8_x16 *a = (const qt_block_a8_x16 *)y;
    for (int r = 0; r < nr; r++) {
        const uint8_t *w = x + (size_t)r * x_stride;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int64_t g = 0; g < ng; g += 2) {
            const uint8_t *p = w + (size_t)g * bytes;
            x16_prefetch(p, g + 1 < ng ? lines : lines / 2 + 1);
            /* g is even: [qs d] here, [d qs] after (qt_x16_qs_at, qt_x16_d_at) */
            const uint8_t *qs0 = p, *d0 = p + bytes - 32;
            if (kind == BG_Q4_0X16)
                acc0 = x16_dot(acc0, qs0, d0, &a[g]);
            else if (kind == BG_Q4_KX16)
                acc0 = k16_dot(acc0, qs0, d0, &a[g]);
            else
                acc0 = q8x16_dot(acc0, qs0, d0, &a[g]);
            if (g + 1 < ng) {
                const uint8_t *qs1 = p + bytes + 32, *d1 = p + bytes;
                if (kind == BG_Q4_0X16)
                    acc1 = x16_dot(acc1, qs1, d1, &a[g + 1]);
                else if (kind == BG_Q4_KX16)
                    acc1 = k16_dot(acc1, qs1, d1, &a[g + 1]);
                else
                    acc1 = q8x16_dot(acc1, qs1, d1, &a[g + 1]);
            }
        }
        s[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

/* Decode of Q6_K x16 rows: each row's codes front to back, two x16 blocks
 * per step, the scales from the row's end (not prefetched: the hardware
 * finds them, and prefetching them a row ahead was no faster, measured). */
static void q6x16_gemv(int64_t n, float *restrict s, const uint8_t *restrict x, size_t x_stride, int nr,
                       const uint8_t *restrict y)
{
    const int64_t ng = n / QT_QK_X16;
    const qt_block_a8_x16 *a = (const qt_block_a8_x16 *)y;
    for (int r = 0; r < nr; r++) {
        const uint8_t *w = x + (size_t)r * x_stride;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 2 <= ng; g += 2) {
            x16_prefetch(w + qt_q6x16_qs_at(g), 12);
            acc0 = q6x16_dot(acc0, w + qt_q6x16_qs_at(g), w + qt_q6x16_sc_at(g, n), &a[g]);
            acc1 = q6x16_dot(acc1, w + qt_q6x16_qs_at(g + 1), w + qt_q6x16_sc_at(g + 1, n), &a[g + 1]);
        }
        if (g < ng) {
            x16_prefetch(w + qt_q6x16_qs_at(g), 6);
            acc0 = q6x16_dot(acc0, w + qt_q6x16_qs_at(g), w + qt_q6x16_sc_at(g, n), &a[g]);
        }
        s[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

/* The gemm entry of the x16 types: decode and small batches one token at
 * a time through x16_gemv (q6x16_gemv), prompts through bg_gemm. */
static inline __attribute__((always_inline)) void x16_gemm(int kind, int64_t n, float *restrict s, size_t ld_s,
                                                           const void *restrict x, size_t x_stride, int nr,
                                                           const void *restrict y, size_t y_stride, int nt)
{
    if (bg_delegate(nt)) {
        for (int t = 0; t < nt; t++) {
            float *st = s + (size_t)t * ld_s;
            const uint8_t *yt = (const uint8_t *)y + (size_t)t * y_stride;
            if (kind == BG_Q6_KX16)
                q6x16_gemv(n, st, x, x_stride, nr, yt);
            else
                x16_gemv(kind, n, st, x, x_stride, nr, yt);
        }
        return;
    }
    bg_gemm(kind, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q4_0x16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                            size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    x16_gemm(BG_Q4_0X16, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q8_0x16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                            size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    x16_gemm(BG_Q8_0X16, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q4_kx16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                            size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    x16_gemm(BG_Q4_KX16, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q6_kx16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                            size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    x16_gemm(BG_Q6_KX16, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

/* qt_q4_0x16_from_q4_0 and qt_q8_0x16_from_q8_0 with the transposes of
 * bg_pack: the 16 blocks' codes (16 bytes per half, bbytes apart) are the
 * "rows" of a 16 x 4 dword transpose, one per half (one half for Q4_0, two
 * for Q8_0). */
static void x16_from_legacy(const uint8_t *src, uint8_t *dst, int64_t n, size_t bbytes, size_t xbytes, int halves)
{
    for (int64_t g = 0; g < n / QT_QK_X16; g++, src += 16 * bbytes) {
        const uint8_t *blocks[16];
        uint16_t dh[16];
        for (int j = 0; j < 16; j++) {
            blocks[j] = src + (size_t)j * bbytes;
            memcpy(&dh[j], blocks[j], sizeof dh[j]);
        }
        uint8_t *qs = dst + qt_x16_qs_at(g, xbytes), *d = dst + qt_x16_d_at(g, xbytes);
        for (int h = 0; h < halves; h++) {
            __m512i z[4], q[4];
            bg_load16x16(blocks, 2 + 16 * (size_t)h, z);
            bg_transpose16x4(z, q);
            for (int k = 0; k < 4; k++)
                _mm512_storeu_si512(qs + 64 * (4 * h + k), q[k]);
        }
        _mm256_storeu_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)dh));
    }
}

void qt_avx512_q4_0x16_from_q4_0(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_legacy(src, dst, n, sizeof(qt_block_q4_0), sizeof(qt_block_q4_0x16), 1);
}

void qt_avx512_q8_0x16_from_q8_0(const void *restrict src, void *restrict dst, int64_t n)
{
    x16_from_legacy(src, dst, n, sizeof(qt_block_q8_0), sizeof(qt_block_q8_0x16), 2);
}

/* Q8_0 as qt_avx512_q8_0_from_float makes it (so codes and scales match the
 * Q8_0 path bit for bit), then rearranged 16 blocks at a time with the
 * 16 x 4 transposes of bg_pack; the code sums come from vpdpbusd against
 * ones. */
void qt_avx512_a8_x16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    const __m512i ones = _mm512_set1_epi8(1);
    qt_block_q8_0 tmp[16];
    qt_block_a8_x16 *o = dst;
    const uint8_t *rows[16];
    for (int j = 0; j < 16; j++)
        rows[j] = (const uint8_t *)&tmp[j];
    for (int64_t g = 0; g < n / QT_QK_X16; g++, o++) {
        qt_avx512_q8_0_from_float(src + g * QT_QK_X16, tmp, QT_QK_X16);
        __m512i sum = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            __m512i z[4], q[4];
            bg_load16x16(rows, 2 + 16 * (size_t)h, z);
            bg_transpose16x4(z, q);
            for (int k = 0; k < 4; k++) {
                _mm512_storeu_si512(o->qs + 64 * (4 * h + k), q[k]);
                sum = _mm512_dpbusd_epi32(sum, ones, q[k]);
            }
        }
        _mm512_storeu_si512(o->sum, sum);
        uint16_t dh[16];
        for (int j = 0; j < 16; j++)
            dh[j] = tmp[j].d;
        _mm512_storeu_ps(o->d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dh)));
    }
}

/* ---- Q4_K and Q6_K ------------------------------------------------------ */

enum { BG_Q4_K, BG_Q6_K };

/* Q4_K: W[sub-block j][step k]; sc: the rows' 6-bit scales of sub-block j
 * as int32; m: their mins twice per dword (int16 pair, for vpdpwssd against
 * the two bsums of the sub-block). Q6_K: 16 sub-blocks of 4 steps in the
 * same 64 W; sc: the int8 scales as int32; m[i]: -32 * scales 2i, 2i + 1
 * as an int16 pair. */
typedef struct bg_kpack {
    __m512i w[BG_KKC][64];
    __m512i sc[BG_KKC][16];
    __m512i m[BG_KKC][8];
    __m512 d[BG_KKC], dmin[BG_KKC];
} bg_kpack;

/* 16 rows' dwords [4 g, 4 g + 4) of the 16 bytes at offset off: out[k] lane r
 * = dword k of row r's 16 bytes. */
static inline void bg_rows16(const uint8_t *const rows[16], size_t off, __m512i out[4])
{
    __m512i z[4];
    bg_load16x16(rows, off, z);
    bg_transpose16x4(z, out);
}

/* Unpack 16 rows' super-blocks kb .. kb + nkb (rows r0 .. r0 + 16, clamped
 * to nr - 1) into wp: plain loads and register transposes, scales decoded
 * in lanes. */
static inline __attribute__((always_inline)) void bg_kpack_fill(int kind, bg_kpack *wp, const uint8_t *x,
                                                                size_t x_stride, int r0, int nr,
                                                                int64_t kb, int nkb)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
    const __m512i m6 = _mm512_set1_epi32(63), m2d = _mm512_set1_epi32(3), m4d = _mm512_set1_epi32(15);
    const __m512i lo16 = _mm512_set1_epi32(0xffff);
    const size_t bbytes = kind == BG_Q4_K ? sizeof(qt_block_q4_k) : sizeof(qt_block_q6_k);
    const uint8_t *rows[16];
    for (int r = 0; r < 16; r++)
        rows[r] = x + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * x_stride + (size_t)kb * bbytes;
    for (int b = 0; b < nkb; b++) {
        const size_t o = (size_t)b * bbytes;
        __m512i v[4];
        if (kind == BG_Q4_K) {
            /* bytes 0..15: d, dmin (dword 0), the 12 scale bytes (dwords 1..3) */
            bg_rows16(rows, o, v);
            wp->d[b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_and_si512(v[0], lo16)));
            wp->dmin[b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v[0], 16)));
            const __m512i s0 = v[1], s1 = v[2], s2 = v[3];
            for (int j = 0; j < 8; j++) {
                __m512i sc, mn;
                if (j < 4) {
                    sc = _mm512_and_si512(_mm512_srli_epi32(s0, 8 * j), m6);
                    mn = _mm512_and_si512(_mm512_srli_epi32(s1, 8 * j), m6);
                } else {
                    const int sh = 8 * (j - 4);
                    sc = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, sh), m4d),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s0, sh + 6), m2d), 4));
                    mn = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, sh + 4), m4d),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s1, sh + 6), m2d), 4));
                }
                wp->sc[b][j] = sc;
                wp->m[b][j] = _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16));
            }
            for (int g = 0; g < 8; g++) {
                /* qs dwords 4 g .. 4 g + 3: sub-blocks 2 (g / 2) (low nibbles) and
                 * + 1 (high), steps 4 (g % 2) .. + 3 */
                bg_rows16(rows, o + 16 + 16 * (size_t)g, v);
                for (int k = 0; k < 4; k++) {
                    const int i = 4 * g + k;
                    wp->w[b][16 * (i / 8) + i % 8] = _mm512_and_si512(v[k], m4);
                    wp->w[b][16 * (i / 8) + 8 + i % 8] = _mm512_and_si512(_mm512_srli_epi32(v[k], 4), m4);
                }
            }
        } else {
            /* element e0 = 16 j + 4 kk: half c = e0 / 128, quarter q = (e0 % 128) / 32,
             * l = e0 % 32; low nibble q / 2 of ql[64 c + 32 (q % 2) + l],
             * top bits 2 q of qh[32 c + l] */
            __m512i qh[16];
            for (int g = 0; g < 4; g++)
                bg_rows16(rows, o + 128 + 16 * (size_t)g, qh + 4 * g);
            for (int g = 0; g < 8; g++) {
                bg_rows16(rows, o + 16 * (size_t)g, v);
                for (int k = 0; k < 4; k++) {
                    const int i = 4 * g + k; /* ql dword i */
                    const int c = i / 16, qm = (i % 16) / 8, l4 = i % 8;
                    for (int half = 0; half < 2; half++) {
                        const int q = qm + 2 * half;
                        const int e0 = 128 * c + 32 * q + 4 * l4;
                        __m512i lo = half ? _mm512_srli_epi32(v[k], 4) : v[k];
                        __m512i hi = _mm512_srli_epi32(qh[8 * c + l4], 2 * q);
                        wp->w[b][e0 / 4] = _mm512_or_si512(_mm512_and_si512(lo, m4),
                                                           _mm512_slli_epi32(_mm512_and_si512(hi, m2), 4));
                    }
                }
            }
            /* bytes 192..207: the 16 int8 scales, four per dword */
            bg_rows16(rows, o + 192, v);
            __m512i sc[16];
            for (int j = 0; j < 16; j++) {
                sc[j] = _mm512_srai_epi32(_mm512_slli_epi32(v[j / 4], 24 - 8 * (j % 4)), 24);
                wp->sc[b][j] = sc[j];
            }
            for (int i = 0; i < 8; i++) {
                __m512i a = _mm512_and_si512(_mm512_mullo_epi32(sc[2 * i], _mm512_set1_epi32(-32)), lo16);
                __m512i c2 = _mm512_slli_epi32(_mm512_mullo_epi32(sc[2 * i + 1], _mm512_set1_epi32(-32)), 16);
                wp->m[b][i] = _mm512_or_si512(a, c2);
            }
            uint16_t dh[16];
            for (int r = 0; r < 16; r++)
                memcpy(&dh[r], rows[r] + o + 208, sizeof(uint16_t));
            wp->d[b] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dh));
        }
    }
}

/* s[t][0..16) (masked) += the chunk's dots of the group with tokens t0 ..
 * t0 + N. */
static inline __attribute__((always_inline)) void bg_ktile(int kind, int N, const bg_kpack *wp, int nkb,
                                                           int t0, const uint8_t *y, size_t y_stride,
                                                           int64_t kb, float *s, size_t ld_s,
                                                           __mmask16 rmask, int first)
{
    __m512 acc[BG_NT];
    const qt_block_q8_k *yt[BG_NT];
    for (int t = 0; t < N; t++) {
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rmask, s + (size_t)(t0 + t) * ld_s);
        yt[t] = (const qt_block_q8_k *)(y + (size_t)(t0 + t) * y_stride) + kb;
    }
    for (int b = 0; b < nkb; b++) {
        __m512i isc[BG_NT];
        for (int t = 0; t < N; t++)
            isc[t] = _mm512_setzero_si512();
        if (kind == BG_Q4_K) {
            for (int j = 0; j < 8; j++) {
                const __m512i *w = wp->w[b] + 8 * j;
                __m512i w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7];
                __m512i sc = wp->sc[b][j];
                for (int t = 0; t < N; t++) {
                    const int8_t *q = yt[t][b].qs + 32 * j;
                    __m512i i0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, bg_bcast(q));
                    __m512i i1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w4, bg_bcast(q + 16));
                    i0 = _mm512_dpbusd_epi32(i0, w1, bg_bcast(q + 4));
                    i1 = _mm512_dpbusd_epi32(i1, w5, bg_bcast(q + 20));
                    i0 = _mm512_dpbusd_epi32(i0, w2, bg_bcast(q + 8));
                    i1 = _mm512_dpbusd_epi32(i1, w6, bg_bcast(q + 24));
                    i0 = _mm512_dpbusd_epi32(i0, w3, bg_bcast(q + 12));
                    i1 = _mm512_dpbusd_epi32(i1, w7, bg_bcast(q + 28));
                    isc[t] = _mm512_add_epi32(isc[t], _mm512_mullo_epi32(_mm512_add_epi32(i0, i1), sc));
                }
            }
            for (int t = 0; t < N; t++) {
                const uint8_t *bs = (const uint8_t *)(yt[t] + b) + offsetof(qt_block_q8_k, bsums);
                __m512i im = _mm512_setzero_si512();
                for (int j = 0; j < 8; j++)
                    im = _mm512_dpwssd_epi32(im, wp->m[b][j], bg_bcast(bs + 4 * j));
                __m512 f = _mm512_fmsub_ps(_mm512_cvtepi32_ps(isc[t]), wp->d[b],
                                           _mm512_mul_ps(_mm512_cvtepi32_ps(im), wp->dmin[b]));
                acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(yt[t][b].d), acc[t]);
            }
        } else {
            for (int j = 0; j < 16; j++) {
                const __m512i *w = wp->w[b] + 4 * j;
                __m512i w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
                __m512i sc = wp->sc[b][j];
                for (int t = 0; t < N; t++) {
                    const int8_t *q = yt[t][b].qs + 16 * j;
                    __m512i i0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, bg_bcast(q));
                    __m512i i1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w2, bg_bcast(q + 8));
                    i0 = _mm512_dpbusd_epi32(i0, w1, bg_bcast(q + 4));
                    i1 = _mm512_dpbusd_epi32(i1, w3, bg_bcast(q + 12));
                    isc[t] = _mm512_add_epi32(isc[t], _mm512_mullo_epi32(_mm512_add_epi32(i0, i1), sc));
                }
            }
            for (int t = 0; t < N; t++) {
                const uint8_t *bs = (const uint8_t *)(yt[t] + b) + offsetof(qt_block_q8_k, bsums);
                __m512i i = isc[t];
                for (int p = 0; p < 8; p++)
                    i = _mm512_dpwssd_epi32(i, wp->m[b][p], bg_bcast(bs + 4 * p));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(i), wp->d[b]),
                                         _mm512_set1_ps(yt[t][b].d), acc[t]);
            }
        }
    }
    for (int t = 0; t < N; t++)
        _mm512_mask_storeu_ps(s + (size_t)(t0 + t) * ld_s, rmask, acc[t]);
}

static inline __attribute__((always_inline)) void bg_ktokens(int kind, const bg_kpack *wp, int nkb, int nt,
                                                             const uint8_t *y, size_t y_stride, int64_t kb,
                                                             float *s, size_t ld_s, __mmask16 rmask,
                                                             int first)
{
    int t0 = 0;
    for (; t0 + BG_NT <= nt; t0 += BG_NT)
        bg_ktile(kind, BG_NT, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first);
    switch (nt - t0) {
    case 7: bg_ktile(kind, 7, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 6: bg_ktile(kind, 6, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 5: bg_ktile(kind, 5, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 4: bg_ktile(kind, 4, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 3: bg_ktile(kind, 3, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 2: bg_ktile(kind, 2, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    case 1: bg_ktile(kind, 1, wp, nkb, t0, y, y_stride, kb, s, ld_s, rmask, first); break;
    default: break;
    }
}

static inline __attribute__((always_inline)) void bg_kgemm(int kind, int64_t n, float *restrict s,
                                                           size_t ld_s, const void *restrict x,
                                                           size_t x_stride, int nr, const void *restrict y,
                                                           size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK_K;
    bg_kpack wp;
    for (int64_t kb = 0; kb < nb; kb += BG_KKC) {
        const int nkb = nb - kb < BG_KKC ? (int)(nb - kb) : BG_KKC;
        for (int r0 = 0; r0 < nr; r0 += 16) {
            bg_kpack_fill(kind, &wp, x, x_stride, r0, nr, kb, nkb);
            bg_ktokens(kind, &wp, nkb, nt, y, y_stride, kb, s + r0, ld_s, bg_row_mask(r0, nr), kb == 0);
        }
    }
}

void qt_avx512_q4_k_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (bg_delegate(nt)) {
        bg_by_tiles(qt_avx512_q4_k_gemm, QT_AVX512_KGEMM_ROWS, QT_AVX512_KGEMM_COLS, n, s, ld_s, x,
                    x_stride, nr, y, y_stride, nt);
        return;
    }
    bg_kgemm(BG_Q4_K, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_avx512_q6_k_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (bg_delegate(nt)) {
        bg_by_tiles(qt_avx512_q6_k_gemm, QT_AVX512_KGEMM_ROWS, QT_AVX512_KGEMM_COLS, n, s, ld_s, x,
                    x_stride, nr, y, y_stride, nt);
        return;
    }
    bg_kgemm(BG_Q6_K, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}
