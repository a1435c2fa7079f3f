/*
 * quant_avx2_gemm.c - AVX2 gemm tiles (qt_gemm_fn) of Q4_0 and Q8_0 weights
 * against Q8_0 activations, for prompt batches on CPUs without AVX-512.
 *
 * Compiled, like quant_avx2.c, with -mavx2 -mfma -mf16c and called only
 * after quant.c's probe saw all three.
 *
 * The layout is quant_avx512.c's in 256-bit registers: lane 4 r + c holds
 * weight row r (of two) against token c (of four). Over one 32-element
 * block, step k (0..7) meets dword k of each row (replicated across its
 * 128-bit lane by a shuffle) with dword k of the four tokens (the same 16
 * bytes in both lanes, loaded from a panel the call builds once per chunk
 * of blocks), so after eight steps every lane holds its own pair's whole
 * block dot: no horizontal sums, and one conversion and FMA per 8 outputs.
 * vpmaddubsw needs unsigned weights: Q4_0 codes enter as stored (0..15),
 * their offset 8 comes back as -8 * (sum of the token's codes), kept in the
 * panel; the eight steps' pair sums stay below 8 * 2 * 15 * 127 < 2^15, so
 * they add in int16 and widen once per block. Q8_0 codes move their sign
 * onto the activation (as in quant_avx2.c) and widen every step.
 *
 * One token (decode) has nothing to fill lanes with and goes to the dot of
 * quant_avx2.c row by row.
 *
 * Built twice: as above, and with -mavxvnni and QT_GEMM_AVXVNNI defined
 * (functions named *_avxvnni), where each step is one vpdpbusd (VEX
 * encoded) and Q8_0 codes enter as code + 128 with -128 * (sum of the
 * token's codes) in the panel, as in quant_avx512.c. quant.c hands the
 * second build out only on CPUs with AVX-VNNI.
 */
#include <immintrin.h>

#include "quant_impl.h"

#ifdef QT_GEMM_AVXVNNI
#define GEMM_FN(name) name##_avxvnni
#else
#define GEMM_FN(name) name
#endif

#define GEMM_ROWS QT_AVX2_GEMM_ROWS
#define GEMM_COLS QT_AVX2_GEMM_COLS
#define GEMM_KC 32 /* blocks per chunk: the panel (20 KiB) stays in L1 */

typedef struct act_panel {
    int32_t y[GEMM_KC][GEMM_COLS / 4][8][4]; /* [block][group][k][token] code dwords */
    int32_t off[GEMM_KC][GEMM_COLS / 4][4];  /* -(weight offset) * sum of codes */
    float dy[GEMM_KC][GEMM_COLS / 4][4];     /* activation scales */
} act_panel;

/* Fill the panel for blocks kb .. kb + nkb of tokens 0 .. nt (missing tokens
 * of the last group get zero codes and scale), offset term -(sum << shift).
 * Always inlined, as its AVX-512 twin must be (GCC 12 dropped an outlined
 * copy's stores into the caller's panel). */
static inline __attribute__((always_inline)) void panel_fill(act_panel *p, const uint8_t *y, size_t y_stride,
                                                             int nt, int64_t kb, int nkb, int shift)
{
    const __m256i ones = _mm256_set1_epi16(1);
    for (int g = 0; g < (nt + 3) / 4; g++) {
        const qt_block_q8_0 *rows[4];
        for (int c = 0; c < 4; c++)
            rows[c] =
                4 * g + c < nt ? (const qt_block_q8_0 *)(y + (size_t)(4 * g + c) * y_stride) + kb : NULL;
        for (int b = 0; b < nkb; b++) {
            __m256i t[4];
            float d[4];
            int32_t sum[4];
            for (int c = 0; c < 4; c++) {
                t[c] = rows[c] ? _mm256_loadu_si256((const __m256i *)rows[c][b].qs) : _mm256_setzero_si256();
                d[c] = rows[c] ? _cvtsh_ss(rows[c][b].d) : 0.0f;
                /* sum of 32 signed codes: |x| * sign(1, x) pairs, then words */
                __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), t[c]);
                __m256i s32 = _mm256_madd_epi16(s16, ones);
                __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
                h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
                h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 1, 1, 1)));
                sum[c] = _mm_cvtsi128_si32(h);
            }
            /* 4 x 8 dwords to 8 x 4: [t0 k, t1 k, t2 k, t3 k] for each k */
            __m256i a01 = _mm256_unpacklo_epi32(t[0], t[1]); /* t0k0 t1k0 t0k1 t1k1 | k4 k5 */
            __m256i b01 = _mm256_unpackhi_epi32(t[0], t[1]); /* k2 k3 | k6 k7 */
            __m256i a23 = _mm256_unpacklo_epi32(t[2], t[3]);
            __m256i b23 = _mm256_unpackhi_epi32(t[2], t[3]);
            __m256i k04 = _mm256_unpacklo_epi64(a01, a23); /* k0 | k4 */
            __m256i k15 = _mm256_unpackhi_epi64(a01, a23); /* k1 | k5 */
            __m256i k26 = _mm256_unpacklo_epi64(b01, b23);
            __m256i k37 = _mm256_unpackhi_epi64(b01, b23);
            int32_t(*out)[4] = p->y[b][g];
            _mm256_storeu_si256((__m256i *)out[0], _mm256_permute2x128_si256(k04, k15, 0x20));
            _mm256_storeu_si256((__m256i *)out[2], _mm256_permute2x128_si256(k26, k37, 0x20));
            _mm256_storeu_si256((__m256i *)out[4], _mm256_permute2x128_si256(k04, k15, 0x31));
            _mm256_storeu_si256((__m256i *)out[6], _mm256_permute2x128_si256(k26, k37, 0x31));
            for (int c = 0; c < 4; c++) {
                p->off[b][g][c] = -(int32_t)((uint32_t)sum[c] << shift);
                p->dy[b][g][c] = d[c];
            }
        }
    }
}

enum { TILE_Q4_0, TILE_Q8_0 };

/* Two weight rows' block as the eight per-step operands and the scales
 * [d0 x4 | d1 x4]; Q8_0 keeps the signed codes (w) for the sign trick. */
typedef struct row_steps {
    __m256i w[8];
    __m256 d;
} row_steps;

static inline __attribute__((always_inline)) void steps(int kind, row_steps *o, const uint8_t *r0,
                                                        const uint8_t *r1)
{
    uint16_t d0, d1;
    __m256i lo, hi;
    if (kind == TILE_Q4_0) {
        const qt_block_q4_0 *a0 = (const qt_block_q4_0 *)r0, *a1 = (const qt_block_q4_0 *)r1;
        __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a0->qs)),
                                            _mm_loadu_si128((const __m128i *)a1->qs), 1);
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        lo = _mm256_and_si256(q, m4);                       /* elements 0..15 of each row */
        hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4); /* elements 16..31 */
        d0 = a0->d;
        d1 = a1->d;
    } else {
        const qt_block_q8_0 *a0 = (const qt_block_q8_0 *)r0, *a1 = (const qt_block_q8_0 *)r1;
        __m256i v0 = _mm256_loadu_si256((const __m256i *)a0->qs);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)a1->qs);
        lo = _mm256_permute2x128_si256(v0, v1, 0x20); /* dwords 0..3 of each row */
        hi = _mm256_permute2x128_si256(v0, v1, 0x31); /* dwords 4..7 */
#ifdef QT_GEMM_AVXVNNI
        lo = _mm256_xor_si256(lo, _mm256_set1_epi8((char)0x80)); /* code + 128, unsigned */
        hi = _mm256_xor_si256(hi, _mm256_set1_epi8((char)0x80));
#endif
        d0 = a0->d;
        d1 = a1->d;
    }
    o->w[0] = _mm256_shuffle_epi32(lo, _MM_SHUFFLE(0, 0, 0, 0));
    o->w[1] = _mm256_shuffle_epi32(lo, _MM_SHUFFLE(1, 1, 1, 1));
    o->w[2] = _mm256_shuffle_epi32(lo, _MM_SHUFFLE(2, 2, 2, 2));
    o->w[3] = _mm256_shuffle_epi32(lo, _MM_SHUFFLE(3, 3, 3, 3));
    o->w[4] = _mm256_shuffle_epi32(hi, _MM_SHUFFLE(0, 0, 0, 0));
    o->w[5] = _mm256_shuffle_epi32(hi, _MM_SHUFFLE(1, 1, 1, 1));
    o->w[6] = _mm256_shuffle_epi32(hi, _MM_SHUFFLE(2, 2, 2, 2));
    o->w[7] = _mm256_shuffle_epi32(hi, _MM_SHUFFLE(3, 3, 3, 3));
    o->d = _mm256_set_m128(_mm_set1_ps(_cvtsh_ss(d1)), _mm_set1_ps(_cvtsh_ss(d0)));
}

static inline __m256i bcast16(const int32_t *p)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
}

/* The block's exact int32 dot of every (row, token) lane of group g. */
static inline __attribute__((always_inline)) __m256i block_dot(int kind, const row_steps *o,
                                                               const act_panel *p, int b, int g)
{
    const int32_t(*yk)[4] = p->y[b][g];
#ifdef QT_GEMM_AVXVNNI
    (void)kind; /* both kinds are unsigned codes with the offset in the panel */
    __m256i i32 = bcast16(p->off[b][g]);
    for (int k = 0; k < 8; k++)
        i32 = _mm256_dpbusd_avx_epi32(i32, o->w[k], bcast16(yk[k]));
    return i32;
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == TILE_Q4_0) {
        __m256i i16 = _mm256_maddubs_epi16(o->w[0], bcast16(yk[0]));
        for (int k = 1; k < 8; k++)
            i16 = _mm256_add_epi16(i16, _mm256_maddubs_epi16(o->w[k], bcast16(yk[k])));
        return _mm256_add_epi32(_mm256_madd_epi16(i16, ones), bcast16(p->off[b][g]));
    }
    __m256i i32 = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++) {
        __m256i w = o->w[k];
        __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(bcast16(yk[k]), w));
        i32 = _mm256_add_epi32(i32, _mm256_madd_epi16(p16, ones));
    }
    return i32;
#endif
}

/* acc[g] += this block's 2 x 4 products of rows (o) and token group g. */
static inline __attribute__((always_inline)) void tile_block(int kind, __m256 *acc, const row_steps *o,
                                                             const act_panel *p, int b, int ng)
{
    for (int g = 0; g < ng; g++) {
        __m256 dy = _mm256_broadcast_ps((const __m128 *)p->dy[b][g]);
        acc[g] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(kind, o, p, b, g)), _mm256_mul_ps(o->d, dy), acc[g]);
    }
}

static inline __attribute__((always_inline)) void gemm_tiles(int kind, int64_t n, float *restrict s,
                                                             size_t ld_s, const void *restrict x,
                                                             size_t x_stride, int nr, const void *restrict y,
                                                             size_t y_stride, int nt)
{
    const int64_t nb = n / QT_QK;
    const int ng = (nt + 3) / 4;
    const int nsub = (nr + 1) / 2;
    const size_t bbytes = kind == TILE_Q4_0 ? sizeof(qt_block_q4_0) : sizeof(qt_block_q8_0);
    act_panel panel;
    __m256 accs[GEMM_ROWS / 2][GEMM_COLS / 4];
    for (int i = 0; i < nsub; i++)
        for (int g = 0; g < GEMM_COLS / 4; g++)
            accs[i][g] = _mm256_setzero_ps();
    for (int64_t kb = 0; kb < nb; kb += GEMM_KC) {
        int nkb = nb - kb < GEMM_KC ? (int)(nb - kb) : GEMM_KC;
#ifdef QT_GEMM_AVXVNNI
        panel_fill(&panel, y, y_stride, nt, kb, nkb, kind == TILE_Q4_0 ? 3 : 7);
#else
        panel_fill(&panel, y, y_stride, nt, kb, nkb, kind == TILE_Q4_0 ? 3 : 0);
#endif
        for (int sub = 0; sub < nsub; sub++) {
            /* a missing second row repeats the first; its lanes are not stored */
            int row1 = 2 * sub + 1 < nr ? 2 * sub + 1 : 2 * sub;
            const uint8_t *r0 = (const uint8_t *)x + (size_t)(2 * sub) * x_stride + (size_t)kb * bbytes;
            const uint8_t *r1 = (const uint8_t *)x + (size_t)row1 * x_stride + (size_t)kb * bbytes;
            __m256 acc[GEMM_COLS / 4];
            for (int g = 0; g < GEMM_COLS / 4; g++)
                acc[g] = accs[sub][g];
            for (int b = 0; b < nkb; b++) {
                row_steps o;
                steps(kind, &o, r0 + (size_t)b * bbytes, r1 + (size_t)b * bbytes);
                switch (ng) {
                case 1:
                    tile_block(kind, acc, &o, &panel, b, 1);
                    break;
                case 2:
                    tile_block(kind, acc, &o, &panel, b, 2);
                    break;
                case 3:
                    tile_block(kind, acc, &o, &panel, b, 3);
                    break;
                default:
                    tile_block(kind, acc, &o, &panel, b, 4);
                    break;
                }
            }
            for (int g = 0; g < GEMM_COLS / 4; g++)
                accs[sub][g] = acc[g];
        }
    }
    for (int sub = 0; sub < nsub; sub++) {
        for (int g = 0; g < ng; g++) {
            float lanes[8];
            _mm256_storeu_ps(lanes, accs[sub][g]);
            for (int r = 0; r < 2 && 2 * sub + r < nr; r++)
                for (int c = 0; c < 4 && 4 * g + c < nt; c++)
                    s[(size_t)(4 * g + c) * ld_s + (size_t)(2 * sub + r)] = lanes[4 * r + c];
        }
    }
}

void GEMM_FN(qt_avx2_q4_0_gemm)(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1) {
        for (int r = 0; r < nr; r++)
            qt_avx2_q4_0_vec_dot(n, &s[r], (const uint8_t *)x + (size_t)r * x_stride, y);
        return;
    }
    gemm_tiles(TILE_Q4_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}

void GEMM_FN(qt_avx2_q8_0_gemm)(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt)
{
    if (nt == 1) {
        for (int r = 0; r < nr; r++)
            qt_avx2_q8_0_vec_dot(n, &s[r], (const uint8_t *)x + (size_t)r * x_stride, y);
        return;
    }
    gemm_tiles(TILE_Q8_0, n, s, ld_s, x, x_stride, nr, y, y_stride, nt);
}
