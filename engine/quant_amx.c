/*
 * quant_amx.c - gemm tiles on AMX (Advanced Matrix Extensions: TILE and
 * INT8) for prompt batches: Q4_0 and Q8_0 weights against Q8_0
 * activations, Q4_K and Q5_K against Q8_K.
 *
 * This file alone is compiled with -mamx-tile -mamx-int8 (and the AVX-512
 * flags); quant.c hands its kernels out only after the CPU probe saw AMX
 * and the kernel granted this process the tile data state (Linux asks for
 * arch_prctl(ARCH_REQ_XCOMP_PERM) first, or the first tile instruction
 * faults). Each call loads its own tile configuration and releases the
 * tiles before it returns, so no AMX state outlives a call.
 *
 * One TDPBSSD multiplies 16 tokens' codes of one 32-element block (A: 16
 * rows of 32 signed bytes, read straight from the Q8_0 activation rows) by
 * 16 weight rows' codes of the same block (B: the rows' codes
 * transposed into the tile's dword-interleaved layout, 512 bytes, built once
 * per call and block and reused by every token group) into 16 x 16 exact
 * int32 dots. Scales differ per block, so the int32 tile is stored after
 * every block and folded into float accumulators with AVX-512: per token,
 * one conversion, one scale product (weight scales x the token's scale) and
 * one FMA for 16 rows. Those three instructions per 16 x 32 multiply-adds,
 * and the tile store before them, bound the speed: on the machine this was
 * tuned on, tile instructions and AVX-512 arithmetic did not overlap at all
 * (measured), so the tile path runs at about 1.8 times the VNNI kernels
 * rather than the tile unit's peak.
 *
 * Batches too small to fill a token tile go to the AVX-512 VNNI kernels
 * (quant_avx512.c), which also serve decode.
 */
#include <immintrin.h>
#include <stddef.h>

#include "quant_impl.h"

#define AMX_KC 32 /* blocks per chunk: the B tiles of 16 rows take 16 KiB */
#define AMX_MIN_TOKENS 16

_Static_assert(QT_AMX_GEMM_ROWS % 16 == 0, "AMX tiles cover 16 weight rows");
_Static_assert(QT_AMX_GEMM_COLS % 16 == 0, "AMX tiles cover 16 tokens");

/* The LDTILECFG memory operand (Intel SDM, palette 1): tile t has rows[t]
 * rows of colsb[t] bytes. */
typedef struct tile_config {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0 and 3: C (16 tokens x 16 int32); 1 and 4: A (16 tokens x 32
 * bytes); 2 and 5: B (8 rows of 16 dwords). Two sets, so one block's
 * product overlaps the previous block's store. */
static void tiles_configure(void)
{
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int set = 0; set < 2; set++) {
        int t = 3 * set;
        c.rows[t] = 16;
        c.colsb[t] = 64;
        c.rows[t + 1] = 16;
        c.colsb[t + 1] = 32;
        c.rows[t + 2] = 8;
        c.colsb[t + 2] = 64;
    }
    _tile_loadconfig(&c);
}

enum { AMX_Q4_0, AMX_Q8_0 };

/* Eight dword-vectors V (V[j] holds rows 2j and 2j + 1, 32 bytes each) to
 * the B tile: out row k = dword k of each of the 16 rows. */
static inline void transpose_to_b(__m512i v[8], int8_t *out)
{
    const __m512i pair = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    __m512i a[8];
    for (int j = 0; j < 8; j++)
        v[j] = _mm512_permutexvar_epi32(pair, v[j]); /* qword k = dword k of both rows */
    for (int j = 0; j < 8; j += 2) {
        a[j] = _mm512_unpacklo_epi64(v[j], v[j + 1]);
        a[j + 1] = _mm512_unpackhi_epi64(v[j], v[j + 1]);
    }
    /* a[2i + p] lane l holds qwords 2l + p of v[2i] and v[2i + 1] */
    for (int p = 0; p < 2; p++) {
        __m512i lo01 = _mm512_shuffle_i32x4(a[p], a[2 + p], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i lo23 = _mm512_shuffle_i32x4(a[4 + p], a[6 + p], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i hi01 = _mm512_shuffle_i32x4(a[p], a[2 + p], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i hi23 = _mm512_shuffle_i32x4(a[4 + p], a[6 + p], _MM_SHUFFLE(3, 2, 3, 2));
        _mm512_storeu_si512(out + 64 * (0 + p), _mm512_shuffle_i32x4(lo01, lo23, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + 64 * (2 + p), _mm512_shuffle_i32x4(lo01, lo23, _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_storeu_si512(out + 64 * (4 + p), _mm512_shuffle_i32x4(hi01, hi23, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + 64 * (6 + p), _mm512_shuffle_i32x4(hi01, hi23, _MM_SHUFFLE(3, 1, 3, 1)));
    }
}

/* Signed codes of one Q4_0 block in element order (nibble - 8). */
static inline __m256i q4_0_codes(const qt_block_q4_0 *b)
{
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b->qs));
    v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
    v = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
    return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}

/* B tiles and row scales of blocks kb .. kb + nkb of 16 rows (rows past nr
 * repeat row 0; their outputs are never stored). */
static inline __attribute__((always_inline)) void weights_prepare(int kind, int8_t (*bt)[512],
                                                                  float (*dw)[16], const uint8_t *x,
                                                                  size_t x_stride, int nr, int64_t kb,
                                                                  int nkb)
{
    const size_t bbytes = kind == AMX_Q4_0 ? sizeof(qt_block_q4_0) : sizeof(qt_block_q8_0);
    const uint8_t *rows[16];
    for (int r = 0; r < 16; r++)
        rows[r] = x + (size_t)(r < nr ? r : 0) * x_stride + (size_t)kb * bbytes;
    for (int b = 0; b < nkb; b++) {
        __m512i v[8];
        uint16_t d[16];
        for (int j = 0; j < 8; j++) {
            __m256i r0, r1;
            if (kind == AMX_Q4_0) {
                const qt_block_q4_0 *b0 = (const qt_block_q4_0 *)rows[2 * j] + b;
                const qt_block_q4_0 *b1 = (const qt_block_q4_0 *)rows[2 * j + 1] + b;
                r0 = q4_0_codes(b0);
                r1 = q4_0_codes(b1);
                d[2 * j] = b0->d;
                d[2 * j + 1] = b1->d;
            } else {
                const qt_block_q8_0 *b0 = (const qt_block_q8_0 *)rows[2 * j] + b;
                const qt_block_q8_0 *b1 = (const qt_block_q8_0 *)rows[2 * j + 1] + b;
                r0 = _mm256_loadu_si256((const __m256i *)b0->qs);
                r1 = _mm256_loadu_si256((const __m256i *)b1->qs);
                d[2 * j] = b0->d;
                d[2 * j + 1] = b1->d;
            }
            v[j] = _mm512_inserti64x4(_mm512_castsi256_si512(r0), r1, 1);
        }
        transpose_to_b(v, bt[b]);
        _mm512_storeu_ps(dw[b], _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d)));
    }
}

/* Scales of blocks kb .. kb + nkb of tokens 0 .. nt, as dy[token][block]:
 * one gather of 16 blocks' fp16 d per token (each read covers d and the
 * first two codes, inside the block), widened with one conversion. */
static void token_scales(float (*dy)[AMX_KC], const uint8_t *y, size_t y_stride, int nt, int64_t kb, int nkb)
{
    const __m512i idx =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)sizeof(qt_block_q8_0)));
    for (int m = 0; m < nt; m++) {
        const uint8_t *row = y + (size_t)m * y_stride + (size_t)kb * sizeof(qt_block_q8_0);
        for (int b0 = 0; b0 < nkb; b0 += 16) {
            int cnt = nkb - b0 < 16 ? nkb - b0 : 16;
            __mmask16 k = (__mmask16)((1u << cnt) - 1u);
            __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx,
                                                    row + (size_t)b0 * sizeof(qt_block_q8_0), 1);
            _mm512_storeu_ps(&dy[m][b0], _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)));
        }
    }
}

/* acc[m] += C[m] * dw * dy[m][b] for the 16 tokens of one stored C tile. */
static inline __attribute__((always_inline)) void fold(__m512 acc[16], const int32_t (*c)[16],
                                                       const float *dw, const float (*dy)[AMX_KC], int b)
{
    __m512 w = _mm512_loadu_ps(dw);
#pragma GCC unroll 16
    for (int m = 0; m < 16; m++) {
        __m512 f = _mm512_cvtepi32_ps(_mm512_loadu_si512(c[m]));
        acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(w, _mm512_set1_ps(dy[m][b])), acc[m]);
    }
}

static inline __attribute__((always_inline)) void amx_gemm(int kind, int64_t n, float *restrict s,
                                                           size_t ld_s, const void *restrict x,
                                                           size_t x_stride, int nr, const void *restrict y,
                                                           size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK;
    const int ng = (nt + 15) / 16;
    int8_t bt[AMX_KC][512] __attribute__((aligned(64)));
    float dw[AMX_KC][16] __attribute__((aligned(64)));
    float dy[QT_AMX_GEMM_COLS][AMX_KC] __attribute__((aligned(64)));
    int32_t cbuf[2][16][16] __attribute__((aligned(64)));
    /* the last token group, when partial, is copied here with zero rows
     * below it, so tile loads never read past the activations */
    int8_t tail[AMX_KC][16][32] __attribute__((aligned(64)));
    const int tail_rows = nt % 16;
    const uint8_t *ybytes = y;

    tiles_configure();
    for (int64_t kb = 0; kb < nb; kb += AMX_KC) {
        const int nkb = nb - kb < AMX_KC ? (int)(nb - kb) : AMX_KC;
        token_scales(dy, ybytes, y_stride, nt, kb, nkb);
        if (nt % 16)
            memset(dy[nt], 0, sizeof dy[0] * (size_t)(16 - nt % 16));
        if (tail_rows) {
            memset(tail, 0, sizeof tail);
            for (int m = 0; m < tail_rows; m++) {
                const qt_block_q8_0 *row =
                    (const qt_block_q8_0 *)(ybytes + (size_t)(16 * (ng - 1) + m) * y_stride);
                for (int b = 0; b < nkb; b++)
                    memcpy(tail[b][m], row[kb + b].qs, 32);
            }
        }
        for (int r0 = 0; r0 < nr; r0 += 16) {
            const int rows = nr - r0 < 16 ? nr - r0 : 16;
            const __mmask16 rmask = (__mmask16)((1u << rows) - 1u);
            weights_prepare(kind, bt, dw, (const uint8_t *)x + (size_t)r0 * x_stride, x_stride, rows, kb,
                            nkb);
            for (int g = 0; g < ng; g++) {
                const int t0 = 16 * g;
                const bool is_tail = tail_rows && g == ng - 1;
                const int mt = is_tail ? tail_rows : 16;
                const uint8_t *abase =
                    is_tail ? (const uint8_t *)tail[0][0]
                            : ybytes + (size_t)t0 * y_stride + (size_t)kb * sizeof(qt_block_q8_0) + 2;
                const size_t astride = is_tail ? 32 : y_stride;
                const size_t ablock = is_tail ? sizeof tail[0] : sizeof(qt_block_q8_0);
                /* loops over m run all 16 so the accumulators stay in registers */
                __m512 acc[16];
#pragma GCC unroll 16
                for (int m = 0; m < 16; m++)
                    acc[m] = kb == 0 || m >= mt
                                 ? _mm512_setzero_ps()
                                 : _mm512_maskz_loadu_ps(rmask, s + (size_t)(t0 + m) * ld_s + r0);
                int b = 0;
                for (; b + 2 <= nkb; b += 2) {
                    _tile_zero(0);
                    _tile_loadd(1, abase + (size_t)b * ablock, astride);
                    _tile_loadd(2, bt[b], 64);
                    _tile_dpbssd(0, 1, 2);
                    _tile_zero(3);
                    _tile_loadd(4, abase + (size_t)(b + 1) * ablock, astride);
                    _tile_loadd(5, bt[b + 1], 64);
                    _tile_dpbssd(3, 4, 5);
                    _tile_stored(0, cbuf[0], 64);
                    _tile_stored(3, cbuf[1], 64);
                    fold(acc, (const int32_t(*)[16])cbuf[0], dw[b], dy + t0, b);
                    fold(acc, (const int32_t(*)[16])cbuf[1], dw[b + 1], dy + t0, b + 1);
                }
                if (b < nkb) {
                    _tile_zero(0);
                    _tile_loadd(1, abase + (size_t)b * ablock, astride);
                    _tile_loadd(2, bt[b], 64);
                    _tile_dpbssd(0, 1, 2);
                    _tile_stored(0, cbuf[0], 64);
                    fold(acc, (const int32_t(*)[16])cbuf[0], dw[b], dy + t0, b);
                }
#pragma GCC unroll 16
                for (int m = 0; m < 16; m++)
                    if (m < mt)
                        _mm512_mask_storeu_ps(s + (size_t)(t0 + m) * ld_s + r0, rmask, acc[m]);
            }
        }
    }
    _tile_release();
}

/* ---- Q4_K and Q5_K ----------------------------------------------------------
 *
 * A Q4_K sub-block is 32 codes with one scale, so it is one tile product as
 * a Q4_0 block is: A holds 16 tokens' 32 Q8_K codes of the sub-block (read
 * in place), B the 16 rows' unsigned codes (TDPBSUD multiplies signed A by
 * unsigned B, so no offset term), and the fold multiplies by d * sc_j per
 * row and the token's Q8_K d. The mins (dmin * m_j times the sub-block's
 * activation sum) go in once per super-block: eight FMAs per token, with
 * the sums (from Q8_K's bsums) times d prepared per token.
 */
#define AMX_KKC 4 /* super-blocks per chunk: 32 B tiles, 16 KiB */

enum { AMX_Q4_K, AMX_Q5_K };

/* Row r's eight 6-bit scales and mins (the Q4_K/Q5_K packing in
 * quant_impl.h). */
static inline void k4_unpack(const uint8_t s[12], int sc[8], int m[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xf) | (s[j] >> 6) << 4;
        m[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4;
    }
}

/* B tiles of the eight sub-blocks of super-blocks kb .. kb + nkb for 16
 * rows, with d * sc_j and dmin * m_j per row (rows past nr repeat row 0). */
static inline __attribute__((always_inline)) void k_weights_prepare(int kind, int8_t (*bt)[8][512],
                                                                    float (*w)[8][16], float (*mn)[8][16],
                                                                    const uint8_t *x, size_t x_stride, int nr,
                                                                    int64_t kb, int nkb)
{
    const size_t bbytes = kind == AMX_Q4_K ? sizeof(qt_block_q4_k) : sizeof(qt_block_q5_k);
    const size_t qs_off = kind == AMX_Q4_K ? 16 : 48;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int b = 0; b < nkb; b++) {
        const uint8_t *blk[16];
        for (int r = 0; r < 16; r++) {
            blk[r] = x + (size_t)(r < nr ? r : 0) * x_stride + (size_t)(kb + b) * bbytes;
            uint16_t d16, dm16;
            memcpy(&d16, blk[r], 2);
            memcpy(&dm16, blk[r] + 2, 2);
            int sc[8], m[8];
            k4_unpack(blk[r] + 4, sc, m);
            float d = _cvtsh_ss(d16), dmin = _cvtsh_ss(dm16);
            for (int j = 0; j < 8; j++) {
                w[b][j][r] = d * (float)sc[j];
                mn[b][j][r] = dmin * (float)m[j];
            }
        }
        for (int q = 0; q < 4; q++) { /* sub-blocks 2q (low nibbles), 2q + 1 (high) */
            __m512i lo[8], hi[8];
            for (int j = 0; j < 8; j++) {
                __m512i z = _mm512_inserti64x4(
                    _mm512_castsi256_si512(
                        _mm256_loadu_si256((const __m256i *)(blk[2 * j] + qs_off + 32 * q))),
                    _mm256_loadu_si256((const __m256i *)(blk[2 * j + 1] + qs_off + 32 * q)), 1);
                lo[j] = _mm512_and_si512(z, m4);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
                if (kind == AMX_Q5_K) {
                    __m512i h = _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(blk[2 * j] + 16))),
                        _mm256_loadu_si256((const __m256i *)(blk[2 * j + 1] + 16)), 1);
                    const __m512i one = _mm512_set1_epi8(1);
                    lo[j] = _mm512_or_si512(
                        lo[j], _mm512_slli_epi16(
                                   _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_set1_epi64(2 * q)), one), 4));
                    hi[j] = _mm512_or_si512(
                        hi[j],
                        _mm512_slli_epi16(
                            _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_set1_epi64(2 * q + 1)), one), 4));
                }
            }
            transpose_to_b(lo, bt[b][2 * q]);
            transpose_to_b(hi, bt[b][2 * q + 1]);
        }
    }
}

/* Per token m < nt: the Q8_K d of each super-block, and the eight
 * sub-block activation sums times d (zero past nt). */
static void k_token_prepare(float (*dy)[AMX_KKC], float (*sd)[AMX_KKC][8], const uint8_t *y, size_t y_stride,
                            int nt, int nt_pad, int64_t kb, int nkb)
{
    for (int m = 0; m < nt_pad; m++) {
        for (int b = 0; b < nkb; b++) {
            if (m >= nt) {
                dy[m][b] = 0.0f;
                for (int j = 0; j < 8; j++)
                    sd[m][b][j] = 0.0f;
                continue;
            }
            const uint8_t *blk = y + (size_t)m * y_stride + (size_t)(kb + b) * sizeof(qt_block_q8_k);
            float d;
            int16_t bs[16];
            memcpy(&d, blk + offsetof(qt_block_q8_k, d), sizeof d);
            memcpy(bs, blk + offsetof(qt_block_q8_k, bsums), sizeof bs);
            dy[m][b] = d;
            for (int j = 0; j < 8; j++)
                sd[m][b][j] = (float)(bs[2 * j] + bs[2 * j + 1]) * d;
        }
    }
}

static inline __attribute__((always_inline)) void amx_kgemm(int kind, int64_t n, float *restrict s,
                                                            size_t ld_s, const void *restrict x,
                                                            size_t x_stride, int nr, const void *restrict y,
                                                            size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK_K;
    const int ng = (nt + 15) / 16;
    int8_t bt[AMX_KKC][8][512] __attribute__((aligned(64)));
    float w[AMX_KKC][8][16] __attribute__((aligned(64)));
    float mn[AMX_KKC][8][16] __attribute__((aligned(64)));
    float dy[QT_AMX_GEMM_COLS][AMX_KKC] __attribute__((aligned(64)));
    float sd[QT_AMX_GEMM_COLS][AMX_KKC][8] __attribute__((aligned(64)));
    int32_t cbuf[2][16][16] __attribute__((aligned(64)));
    int8_t tail[AMX_KKC][8][16][32] __attribute__((aligned(64)));
    const int tail_rows = nt % 16;
    const uint8_t *ybytes = y;

    tiles_configure();
    for (int64_t kb = 0; kb < nb; kb += AMX_KKC) {
        const int nkb = nb - kb < AMX_KKC ? (int)(nb - kb) : AMX_KKC;
        k_token_prepare(dy, sd, ybytes, y_stride, nt, 16 * ng, kb, nkb);
        if (tail_rows) {
            memset(tail, 0, sizeof tail);
            for (int m = 0; m < tail_rows; m++) {
                const qt_block_q8_k *row =
                    (const qt_block_q8_k *)(ybytes + (size_t)(16 * (ng - 1) + m) * y_stride);
                for (int b = 0; b < nkb; b++)
                    for (int j = 0; j < 8; j++)
                        memcpy(tail[b][j][m], row[kb + b].qs + 32 * j, 32);
            }
        }
        for (int r0 = 0; r0 < nr; r0 += 16) {
            const int rows = nr - r0 < 16 ? nr - r0 : 16;
            const __mmask16 rmask = (__mmask16)((1u << rows) - 1u);
            k_weights_prepare(kind, bt, w, mn, (const uint8_t *)x + (size_t)r0 * x_stride, x_stride, rows, kb,
                              nkb);
            for (int g = 0; g < ng; g++) {
                const int t0 = 16 * g;
                const bool is_tail = tail_rows && g == ng - 1;
                const int mt = is_tail ? tail_rows : 16;
                __m512 acc[16];
#pragma GCC unroll 16
                for (int m = 0; m < 16; m++)
                    acc[m] = kb == 0 || m >= mt
                                 ? _mm512_setzero_ps()
                                 : _mm512_maskz_loadu_ps(rmask, s + (size_t)(t0 + m) * ld_s + r0);
                for (int b = 0; b < nkb; b++) {
                    const uint8_t *abase;
                    size_t astride;
                    if (is_tail) {
                        abase = (const uint8_t *)tail[b][0][0];
                        astride = 32;
                    } else {
                        abase = ybytes + (size_t)t0 * y_stride + (size_t)(kb + b) * sizeof(qt_block_q8_k) +
                                offsetof(qt_block_q8_k, qs);
                        astride = y_stride;
                    }
                    const size_t ajump = is_tail ? sizeof tail[0][0] : 32;
                    for (int j = 0; j < 8; j += 2) {
                        _tile_zero(0);
                        _tile_loadd(1, abase + (size_t)j * ajump, astride);
                        _tile_loadd(2, bt[b][j], 64);
                        _tile_dpbsud(0, 1, 2);
                        _tile_zero(3);
                        _tile_loadd(4, abase + (size_t)(j + 1) * ajump, astride);
                        _tile_loadd(5, bt[b][j + 1], 64);
                        _tile_dpbsud(3, 4, 5);
                        _tile_stored(0, cbuf[0], 64);
                        _tile_stored(3, cbuf[1], 64);
                        for (int h = 0; h < 2; h++) {
                            __m512 wv = _mm512_load_ps(w[b][j + h]);
#pragma GCC unroll 16
                            for (int m = 0; m < 16; m++) {
                                __m512 f = _mm512_cvtepi32_ps(_mm512_load_si512(cbuf[h][m]));
                                acc[m] = _mm512_fmadd_ps(f, _mm512_mul_ps(wv, _mm512_set1_ps(dy[t0 + m][b])),
                                                         acc[m]);
                            }
                        }
                    }
                    for (int j = 0; j < 8; j++) {
                        __m512 mv = _mm512_load_ps(mn[b][j]);
#pragma GCC unroll 16
                        for (int m = 0; m < 16; m++)
                            acc[m] = _mm512_fnmadd_ps(mv, _mm512_set1_ps(sd[t0 + m][b][j]), acc[m]);
                    }
                }
#pragma GCC unroll 16
                for (int m = 0; m < 16; m++)
                    if (m < mt)
                        _mm512_mask_storeu_ps(s + (size_t)(t0 + m) * ld_s + r0, rmask, acc[m]);
            }
        }
    }
    _tile_release();
}

#define AMX_K_GEMM(name, kind, fallback)                                                                  \
    void name(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride, int nr, \
              const void *restrict y, size_t y_stride, int nt)                                            \
    {                                                                                                     \
        if (nt < AMX_MIN_TOKENS) {                                                                        \
            for (int t = 0; t < nt; t += QT_AVX512_KGEMM_COLS) {                                          \
                int c = nt - t < QT_AVX512_KGEMM_COLS ? nt - t : QT_AVX512_KGEMM_COLS;                    \
                fallback(n, s + (size_t)t * ld_s, ld_s, x, x_stride, nr,                                  \
                         (const uint8_t *)y + (size_t)t * y_stride, y_stride, c);                         \
            }                                                                                             \
            return;                                                                                       \
        }                                                                                                 \
        amx_kgemm(kind, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);                                    \
    }

AMX_K_GEMM(qt_amx_q4_k_gemm, AMX_Q4_K, qt_avx512_q4_k_gemm)
AMX_K_GEMM(qt_amx_q5_k_gemm, AMX_Q5_K, qt_avx512_q5_k_gemm)

void qt_amx_q4_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                      int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt < AMX_MIN_TOKENS) {
        for (int t = 0; t < nt; t += QT_AVX512_GEMM_COLS) {
            int c = nt - t < QT_AVX512_GEMM_COLS ? nt - t : QT_AVX512_GEMM_COLS;
            qt_avx512_q4_0_gemm(n, s + (size_t)t * ld_s, ld_s, x, x_stride, nr,
                                (const uint8_t *)y + (size_t)t * y_stride, y_stride, c);
        }
        return;
    }
    amx_gemm(AMX_Q4_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void qt_amx_q8_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                      int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt < AMX_MIN_TOKENS) {
        for (int t = 0; t < nt; t += QT_AVX512_GEMM_COLS) {
            int c = nt - t < QT_AVX512_GEMM_COLS ? nt - t : QT_AVX512_GEMM_COLS;
            qt_avx512_q8_0_gemm(n, s + (size_t)t * ld_s, ld_s, x, x_stride, nr,
                                (const uint8_t *)y + (size_t)t * y_stride, y_stride, c);
        }
        return;
    }
    amx_gemm(AMX_Q8_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}
