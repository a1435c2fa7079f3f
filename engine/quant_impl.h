/*
 * quant_impl.h - what the qt_ kernel files share and nothing else includes:
 * the block layouts, inline fp16 bit conversions, and the per-type kernels
 * that quant.c puts into its table.
 *
 * Block layouts are the ggml/GGUF ones byte for byte, because weights are
 * read in place from files llama.cpp wrote. Blocks sit back to back inside
 * mmapped tensor data, so a block may start at any even (or, from a careless
 * caller, odd) address: the structs are packed (alignment 1) and the compiler
 * emits unaligned loads for the fp16 fields, which keeps UBSan quiet and costs
 * nothing on the CPUs we target.
 *
 * Naming: qt_<type>_<op> is the portable reference kernel (quant_float.c,
 * quant_q4.c, quant_q5.c, quant_q8.c, quant_k.c); qt_avx2_<type>_<op> is its
 * AVX2 twin in quant_avx2.c or quant_avx2_k.c, which alone are compiled with
 * -mavx2 -mfma -mf16c and may only be called after quant.c's CPU probe said
 * yes (quant_avx2_gemm.c adds its gemm tiles); qt_avx512_<type>_<op> comes
 * from quant_avx512.c, quant_avx512_k.c and quant_avx512_gemm.c (AVX-512 +
 * VNNI) and qt_amx_<type>_gemm from quant_amx.c, under the same rule. On AArch64, qt_neon_<type>_<op> (ARMv8.0 NEON) and qt_neondp_<type>_<op>
 * (its 8-bit dots on SDOT, for cores with HWCAP_ASIMDDP) both come from
 * quant_neon.c, built once for each.
 */
#ifndef OUTPOST_QUANT_IMPL_H
#define OUTPOST_QUANT_IMPL_H

#include <stdint.h>
#include <string.h>

#include "quant.h"

/* Elements per block of every legacy ggml quant (Q4_0 ... Q8_1). */
#define QT_QK 32

#define QT_PACKED __attribute__((packed))

/* ggml block_q8_0: x = qs * d. */
typedef struct QT_PACKED qt_block_q8_0 {
    uint16_t d; /* fp16 */
    int8_t qs[QT_QK];
} qt_block_q8_0;

/* ggml block_q8_1: x = qs * d, and s = d * (sum of qs) for the _1 weights'
 * offset term. Activation-only. */
typedef struct QT_PACKED qt_block_q8_1 {
    uint16_t d; /* fp16 */
    uint16_t s; /* fp16 */
    int8_t qs[QT_QK];
} qt_block_q8_1;

/* ggml block_q4_0: element j (0..15) is the low nibble of qs[j], element
 * j + 16 the high nibble; x = (nibble - 8) * d. */
typedef struct QT_PACKED qt_block_q4_0 {
    uint16_t d;
    uint8_t qs[QT_QK / 2];
} qt_block_q4_0;

/* ggml block_q4_1: nibbles as Q4_0; x = nibble * d + m. */
typedef struct QT_PACKED qt_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[QT_QK / 2];
} qt_block_q4_1;

/* ggml block_q5_0: low four bits as Q4_0; qh is a little-endian uint32 whose
 * bit j is bit 4 of element j; x = (q5 - 16) * d. */
typedef struct QT_PACKED qt_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QT_QK / 2];
} qt_block_q5_0;

/* ggml block_q5_1: bits as Q5_0; x = q5 * d + m. */
typedef struct QT_PACKED qt_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QT_QK / 2];
} qt_block_q5_1;

/* ---- K-quants: super-blocks of 256 (ggml's QK_K) ------------------------
 * A super-block holds 16 sub-blocks of 16 or 8 of 32 elements, each with its
 * own small integer scale (and min) that multiplies the super-block's fp16 d
 * (and dmin). Element order inside the packed arrays is ggml's; the comment
 * of each struct says where element e (0..255) lives. */
#define QT_QK_K 256

/* ggml block_q2_K: code e is bits 2*((e % 128) / 32) of qs[32 * (e / 128) +
 * e % 32]; scales[e / 16] holds that sub-block's scale (low nibble) and min
 * (high nibble); x = d * scale * code - dmin * min. */
typedef struct QT_PACKED qt_block_q2_k {
    uint8_t scales[QT_QK_K / 16];
    uint8_t qs[QT_QK_K / 4];
    uint16_t d;    /* fp16 */
    uint16_t dmin; /* fp16 */
} qt_block_q2_k;

/* ggml block_q3_K: the low two bits of code e sit as in Q2_K; its third bit
 * is bit 4 * (e / 128) + (e % 128) / 32 of hmask[e % 32], and a clear bit
 * means minus 4, so x = d * (scale - 32) * (low2 - (bit ? 0 : 4)). The 16
 * 6-bit scales pack into 12 bytes: low nibbles of 0..7 in bytes 0..7, of
 * 8..15 in the high nibbles of bytes 0..7, and the top two bits of scale j
 * at bits 2 * (j / 4) of byte 8 + j % 4. */
typedef struct QT_PACKED qt_block_q3_k {
    uint8_t hmask[QT_QK_K / 8];
    uint8_t qs[QT_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} qt_block_q3_k;

/* ggml block_q4_K: 8 sub-blocks of 32. Code e is the low nibble of
 * qs[32 * (e / 64) + e % 32] for e % 64 < 32, else its high nibble. The
 * 6-bit scale and min of sub-block j pack into 12 bytes: for j < 4 the low
 * six bits of bytes j and j + 4; for j >= 4 the nibbles of byte j + 4
 * (scale low, min high) with their top two bits in bits 6-7 of bytes j - 4
 * (scale) and j (min). x = d * scale * code - dmin * min. */
typedef struct QT_PACKED qt_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[QT_QK_K / 2];
} qt_block_q4_k;

/* Scale and min of sub-block j (0..7) from the 12-byte packing Q4_K and
 * Q5_K share. */
static inline void qt_k4_scale_min(const uint8_t s[12], int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* ggml block_q5_K: Q4_K plus a fifth bit per code: bit e / 32 of
 * qh[e % 32]. */
typedef struct QT_PACKED qt_block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[QT_QK_K / 8];
    uint8_t qs[QT_QK_K / 2];
} qt_block_q5_k;

/* ggml block_q6_K: with c = e / 128, k = (e % 128) / 32, l = e % 32, the
 * low four bits of code e are nibble k / 2 of ql[64 * c + 32 * (k % 2) + l]
 * and the top two bits 2 * k .. 2 * k + 1 of qh[32 * c + l];
 * x = d * scales[e / 16] * (code - 32). */
typedef struct QT_PACKED qt_block_q6_k {
    uint8_t ql[QT_QK_K / 2];
    uint8_t qh[QT_QK_K / 4];
    int8_t scales[QT_QK_K / 16];
    uint16_t d;
} qt_block_q6_k;

/* ggml block_q8_K: activations for every K-quant dot. x = qs * d with d in
 * fp32; bsums[j] is the sum of qs[16 j .. 16 j + 15], which turns the
 * weights' mins and offsets into one short dot per super-block. */
typedef struct QT_PACKED qt_block_q8_k {
    float d;
    int8_t qs[QT_QK_K];
    int16_t bsums[QT_QK_K / 16];
} qt_block_q8_k;

/* In-memory interleaved layouts (quant_x16.c explains them): 16 consecutive
 * 32-element blocks of a row form one 512-element block. */
#define QT_QK_X16 512

/* Q4_0 x16: the 16 Q4_0 blocks' bytes rearranged, 288 bytes: 256 of codes
 * (dword k = qs bytes 4k .. 4k + 3 of block j at 64 k + 4 j, k = 0..3) and
 * 16 fp16 scales. Q8_0 x16 likewise, 544 bytes: 512 of codes (dword k =
 * codes 4k .. 4k + 3, k = 0..7) and 16 fp16 scales. Even x16 blocks of a
 * row hold the codes first, odd ones the scales first, so every code dword
 * vector of a 64-byte-aligned row is 64-byte aligned (qt_x16_qs_at and
 * qt_x16_d_at find them). */
typedef struct QT_PACKED qt_block_q4_0x16 {
    uint8_t bytes[288];
} qt_block_q4_0x16;

typedef struct QT_PACKED qt_block_q8_0x16 {
    uint8_t bytes[544];
} qt_block_q8_0x16;

/* Q4_K x16: two Q4_K super-blocks' bytes rearranged, 288 bytes: their 16
 * sub-blocks of 32 as 16 blocks laid out like Q4_0 x16's (code byte e of a
 * sub-block holds codes e and e + 16), and 32 bytes of scales: fp16 d0, d1,
 * dmin0, dmin1 (bytes 0..7), then byte 8 + j = scale_j | (min_j & 3) << 6,
 * and byte 24 + i = min_i >> 2 | (min_(i + 8) >> 2) << 4 (i = 0..7), for
 * sub-blocks j = 0..15 (0..7 of the first super-block). quant_x16.c. */
typedef struct QT_PACKED qt_block_q4_kx16 {
    uint8_t bytes[288];
} qt_block_q4_kx16;

/* Q6_K x16: two Q6_K super-blocks (420 bytes, as they take), but split in
 * a row: every x16 block's 384 bytes of codes first, 64-byte aligned,
 * then every block's 36 bytes of scales (quant_x16.c explains it):
 *   codes of block g at 384 g (qt_q6x16_qs_at):
 *     [0, 256):   the low four bits, laid out as Q4_0 x16's codes
 *     [256, 384): byte 256 + 64 h + 4 j + e, bits 2 k .. 2 k + 1: the top
 *                 two bits of element 32 j + 16 h + 4 k + e (h, k as below)
 *   scales of block g at 384 G + 36 g in a row of G blocks (qt_q6x16_sc_at):
 *     byte j, 16 + j: the int8 scales of elements 32 j .. + 15 and
 *     32 j + 16 .. + 31; bytes 32..35: the two super-blocks' fp16 d. */
typedef struct QT_PACKED qt_block_q6_kx16 {
    uint8_t bytes[420];
} qt_block_q6_kx16;

static inline size_t qt_q6x16_qs_at(int64_t g)
{
    return (size_t)g * 384;
}

static inline size_t qt_q6x16_sc_at(int64_t g, int64_t n)
{
    return (size_t)(n / QT_QK_X16) * 384 + (size_t)g * 36;
}

/* Byte offsets in a row of x16 blocks of `bytes` bytes each: block g's
 * codes, and its 32 bytes of scales. */
static inline size_t qt_x16_qs_at(int64_t g, size_t bytes)
{
    return (size_t)g * bytes + (g % 2 ? 32 : 0);
}

static inline size_t qt_x16_d_at(int64_t g, size_t bytes)
{
    return (size_t)g * bytes + (g % 2 ? 0 : bytes - 32);
}

/* A8 x16 (activations against Q4_0 x16): code dword k (k = 0..7, codes
 * 4k .. 4k + 3) of block j is qs[64 k + 4 j .. + 4]; d[j] is block j's Q8_0
 * scale (fp16-rounded, as Q8_0 stores it) widened to float; sum[j] the sum
 * of its 32 codes. */
typedef struct QT_PACKED qt_block_a8_x16 {
    int8_t qs[512];
    float d[16];
    int32_t sum[16];
} qt_block_a8_x16;

_Static_assert(sizeof(qt_block_q8_0) == 34, "Q8_0 block is 34 bytes in GGUF");
_Static_assert(sizeof(qt_block_q8_1) == 36, "Q8_1 block is 36 bytes in GGUF");
_Static_assert(sizeof(qt_block_q4_0) == 18, "Q4_0 block is 18 bytes in GGUF");
_Static_assert(sizeof(qt_block_q4_0x16) == 16 * sizeof(qt_block_q4_0), "Q4_0 x16 is 16 Q4_0 blocks rearranged");
_Static_assert(sizeof(qt_block_a8_x16) == 640, "A8 x16 is 640 bytes");
_Static_assert(sizeof(qt_block_q8_0x16) == 16 * sizeof(qt_block_q8_0), "Q8_0 x16 is 16 Q8_0 blocks rearranged");
_Static_assert(sizeof(qt_block_q4_kx16) == 2 * 144, "Q4_K x16 is two Q4_K super-blocks rearranged");
_Static_assert(sizeof(qt_block_q6_kx16) == 2 * 210, "Q6_K x16 is two Q6_K super-blocks rearranged");
_Static_assert(sizeof(qt_block_q4_1) == 20, "Q4_1 block is 20 bytes in GGUF");
_Static_assert(sizeof(qt_block_q5_0) == 22, "Q5_0 block is 22 bytes in GGUF");
_Static_assert(sizeof(qt_block_q5_1) == 24, "Q5_1 block is 24 bytes in GGUF");
_Static_assert(sizeof(qt_block_q2_k) == 84, "Q2_K block is 84 bytes in GGUF");
_Static_assert(sizeof(qt_block_q3_k) == 110, "Q3_K block is 110 bytes in GGUF");
_Static_assert(sizeof(qt_block_q4_k) == 144, "Q4_K block is 144 bytes in GGUF");
_Static_assert(sizeof(qt_block_q5_k) == 176, "Q5_K block is 176 bytes in GGUF");
_Static_assert(sizeof(qt_block_q6_k) == 210, "Q6_K block is 210 bytes in GGUF");
_Static_assert(sizeof(qt_block_q8_k) == 292, "Q8_K block is 292 bytes");

static inline uint32_t qt_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float qt_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE 754 binary16 -> binary32, exact. A NaN keeps its payload and comes
 * out quiet, as the F16C instruction does, so scalar and SIMD rows agree. */
static inline float qt_fp16_decode(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f)
        return qt_f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in binary32 */
        float f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    return qt_f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

/* binary32 -> binary16, round to nearest, ties to even; overflow goes to
 * infinity; a NaN stays a NaN (quiet, top payload bits kept, like F16C). */
static inline uint16_t qt_fp16_encode(float f)
{
    uint32_t u = qt_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    /* 65520 is halfway between 65504 (odd mantissa) and 2^16: ties go up */
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        /* normal in binary16: rebias the exponent, round 13 dropped bits */
        uint32_t h = (a - 0x38000000u) >> 13;
        uint32_t rest = a & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    /* subnormal in binary16: count units of 2^-24 */
    uint32_t e = a >> 23;
    if (e < 102) /* below 2^-25: rounds to zero (2^-25 itself ties to 0) */
        return sign;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

/* binary32 -> bfloat16, round to nearest even; NaN stays NaN (quiet). */
static inline uint16_t qt_bf16_encode(float f)
{
    uint32_t u = qt_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ggml's reference quantizers turn v = x / d + offset into a code by
 * truncation and clamp it to the top code; this is that rule, defined for
 * every float (NaN and negatives give 0) so no cast is ever undefined. */
static inline int qt_trunc_code(float v, int top)
{
    if (!(v > 0.0f))
        return 0;
    if (v >= (float)top)
        return top;
    return (int)v;
}

/* Portable reference kernels (one trio per type; Q8_1 has no vec_dot). */
void qt_f32_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_f32_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_f16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_f16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);

void qt_q8_0_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q8_1_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n);

void qt_q4_0x16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q4_0x16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q4_0x16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q4_0x16_from_q4_0(const void *restrict src, void *restrict dst, int64_t n);
void qt_q8_0x16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q8_0x16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q8_0x16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q8_0x16_from_q8_0(const void *restrict src, void *restrict dst, int64_t n);
void qt_q4_kx16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q4_kx16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q4_kx16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q4_kx16_from_q4_k(const void *restrict src, void *restrict dst, int64_t n);
void qt_q6_kx16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q6_kx16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q6_kx16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q6_kx16_from_q6_k(const void *restrict src, void *restrict dst, int64_t n);
void qt_a8_x16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_a8_x16_from_float(const float *restrict src, void *restrict dst, int64_t n);

void qt_q4_0_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q4_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q4_1_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q4_1_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);

void qt_q5_0_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q5_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q5_1_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q5_1_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);

/* K-quants (quant_k.c); every weight type dots against Q8_K. */
void qt_q2_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q2_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q3_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q3_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q4_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q4_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q5_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q5_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q6_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q6_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_q8_k_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n);

#ifdef OUTPOST_HAVE_AVX2
/* AVX2 + FMA + F16C kernels (quant_avx2.c). The 8-bit dots assume the
 * activation codes lie in -127..127, which every qt_ quantizer guarantees. */
/* Builds the fp16 lookup table the 8-bit dots read their block scales from;
 * quant.c calls it once, after the CPU probe, before any AVX2 row is used. */
void qt_avx2_init(void);
void qt_avx2_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_f16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_avx2_f16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx2_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_avx2_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx2_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx2_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx2_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
/* K-quant dots and the Q8_K quantizer (quant_avx2_k.c, same flags). */
void qt_avx2_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx2_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
#endif

#ifdef OUTPOST_HAVE_AVX2
/* AVX2 gemm tiles for prompt batches (quant_avx2_gemm.c, same flags as
 * quant_avx2.c); one token falls back to the AVX2 dot row by row. */
void qt_avx2_q4_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                       size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx2_q8_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                       size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
/* The same tiles built with -mavxvnni (one vpdpbusd per step), for CPUs
 * with AVX-VNNI; quant.c checks CPUID before handing them out (only built
 * when the compiler knows -mavxvnni: OUTPOST_HAVE_AVXVNNI). */
void qt_avx2_q4_0_gemm_avxvnni(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                               size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx2_q8_0_gemm_avxvnni(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                               size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
#define QT_AVX2_GEMM_ROWS 64
#define QT_AVX2_GEMM_COLS 16
#endif

#ifdef OUTPOST_HAVE_AVX512
/* AVX-512 F/BW/VL/DQ + VNNI kernels (quant_avx512.c, K-quants in
 * quant_avx512_k.c); callable only after
 * quant.c's probe saw those features. qt_avx512_init() fills their fp16
 * table and runs once, before any AVX-512 row is handed out. */
void qt_avx512_init(void);
void qt_avx512_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_f16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_avx512_f16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_avx512_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_avx512_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q4_0x16_from_q4_0(const void *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q8_0x16_from_q8_0(const void *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q4_kx16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                            int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q6_kx16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                            int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q8_0x16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                            int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_a8_x16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_avx512_q4_0x16_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x, size_t x_stride,
                            int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q4_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                         size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q8_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                         size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q4_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                         size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q5_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                         size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q6_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                         size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
/* Cache-blocked prompt tiles (quant_avx512_gemm.c, same flags): batches of
 * fewer than 8 tokens go to the tiles above. */
void qt_avx512_q4_0_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q8_0_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q4_k_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_avx512_q6_k_gemm_blocked(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                                 size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
#define QT_AVX512_BGEMM_ROWS 64
#define QT_AVX512_BGEMM_COLS 128
/* Largest tile the AVX-512 gemm kernels take (rows, tokens). */
#define QT_AVX512_GEMM_ROWS 64
#define QT_AVX512_GEMM_COLS 16
#define QT_AVX512_KGEMM_ROWS 64
#define QT_AVX512_KGEMM_COLS 16
#endif

#ifdef OUTPOST_HAVE_AMX
/* AMX-TILE + AMX-INT8 gemm tiles (quant_amx.c), on top of the AVX-512 row;
 * callable only after quant.c's probe saw AMX and got the kernel's leave to
 * use tile data. Batches of fewer than 16 tokens go to the AVX-512 kernels. */
void qt_amx_q4_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                      size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_amx_q8_0_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                      size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_amx_q4_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                      size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
void qt_amx_q5_k_gemm(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                      size_t x_stride, int nr, const void *restrict y, size_t y_stride, int nt);
#define QT_AMX_GEMM_ROWS 64
#define QT_AMX_GEMM_COLS 128
#endif

#ifdef OUTPOST_HAVE_NEON
/* AArch64 NEON kernels (quant_neon.c, built twice). qt_neon_* need only
 * ARMv8.0 Advanced SIMD; qt_neondp_* are the same 8-bit dots on SDOT and
 * may only be called after quant.c's probe saw HWCAP_ASIMDDP. */
void qt_neon_f32_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_f16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_neon_f16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_neon_f16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_bf16_to_float(const void *restrict src, float *restrict dst, int64_t n);
void qt_neon_bf16_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_neon_bf16_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_neon_q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_neon_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n);
void qt_neon_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neon_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q8_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q4_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q4_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q5_0_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q5_1_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void qt_neondp_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
#endif

#endif
