/*
 * quant.h - tensor element types as rows of one table (the qt_ module).
 *
 * Every type the engine stores weights or activations in is one row of
 * qt_traits: block size, block bytes, to_float, from_float, and a dot product
 * against the row's activation type (vec_dot_type). Quantized weights are
 * multiplied with activations that were quantized to 8 bits per block
 * (Q8_0, Q8_1, or Q8_K for the K-quants), so the inner loops are integer dot
 * products.
 *
 * Each row exists once per implementation: the scalar reference (portable C,
 * the definition of correct) and SIMD variants chosen at run time from the
 * CPU's features. qt_get() returns the fastest available; tests compare it
 * against qt_get_impl(t, QT_IMPL_SCALAR). Rows are static and immutable; the
 * CPU feature probe runs once (thread-safe) on first use.
 *
 * Type ids are the ggml/GGUF numbering, so a GGUF tensor's type field is a
 * qt_type as it stands.
 */
#ifndef OUTPOST_QUANT_H
#define OUTPOST_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum qt_type {
    QT_F32 = 0,
    QT_F16 = 1,
    QT_Q4_0 = 2,
    QT_Q4_1 = 3,
    QT_Q5_0 = 6,
    QT_Q5_1 = 7,
    QT_Q8_0 = 8,
    QT_Q8_1 = 9,
    QT_Q2_K = 10,
    QT_Q3_K = 11,
    QT_Q4_K = 12,
    QT_Q5_K = 13,
    QT_Q6_K = 14,
    QT_Q8_K = 15,
    QT_I8 = 24,
    QT_I16 = 25,
    QT_I32 = 26,
    QT_I64 = 27,
    QT_F64 = 28,
    QT_BF16 = 30,
    QT_FILE_TYPE_COUNT = 40, /* ids a GGUF file may name are below this */
    /* In-memory layouts of our own, never read from or written to a file
     * (quant_x16.c): Q4_0, Q8_0, Q4_K and Q6_K weights with 16 blocks
     * (K-quants: two super-blocks) interleaved, as model.c repacks them
     * for the AVX-512 kernels, and their activations. */
    QT_Q4_0X16 = 40,
    QT_A8_X16 = 41,
    QT_Q8_0X16 = 42,
    QT_Q4_KX16 = 43,
    QT_Q6_KX16 = 44,
    QT_TYPE_COUNT = 45 /* ids below this may be looked up */
} qt_type;

typedef enum qt_impl {
    QT_IMPL_BEST = 0, /* fastest this CPU runs */
    QT_IMPL_SCALAR,   /* portable reference */
    QT_IMPL_AVX2,     /* x86-64 AVX2 + FMA + F16C */
    QT_IMPL_AVX512,   /* x86-64 AVX-512 F/BW/VL/DQ + VNNI (on top of AVX2) */
    QT_IMPL_NEON,     /* AArch64 Advanced SIMD, ARMv8.0 (every 64-bit Arm core) */
    QT_IMPL_NEON_DOTPROD, /* NEON with the ARMv8.2 dot product extension (SDOT) */
    QT_IMPL_AMX,      /* x86-64 AVX-512 row with AMX-INT8 gemm tiles for prompts */
    QT_IMPL_AVXVNNI,  /* x86-64 AVX2 row with AVX-VNNI gemm tiles (no AVX-512) */
} qt_impl;

/* Dequantize n elements (n a multiple of block_elems). */
typedef void (*qt_to_float_fn)(const void *restrict src, float *restrict dst, int64_t n);
/* Quantize n elements (n a multiple of block_elems). */
typedef void (*qt_from_float_fn)(const float *restrict src, void *restrict dst, int64_t n);
/* *s = dot(x, y) over n elements; x has this row's type, y its vec_dot_type. */
typedef void (*qt_vec_dot_fn)(int64_t n, float *restrict s, const void *restrict x,
                              const void *restrict y);

/* A tile of a matrix product: s[t * ld_s + r] = dot(x row r, y row t) for
 * r < nr, t < nt, over n elements. x rows (this row's type) lie x_stride
 * bytes apart, y rows (vec_dot_type) y_stride bytes apart. nr and nt are at
 * most the row's gemm_rows and gemm_cols. One call unpacks each weight block
 * once for nt activation rows and loads each activation block once for nr
 * weight rows, which is what makes prompt processing compute-efficient. */
typedef void (*qt_gemm_fn)(int64_t n, float *restrict s, size_t ld_s, const void *restrict x,
                           size_t x_stride, int nr, const void *restrict y, size_t y_stride,
                           int nt);

typedef struct qt_traits {
    qt_type type;
    const char *name;       /* "q4_0", as users spell it */
    uint32_t block_elems;   /* elements per block */
    uint32_t block_bytes;   /* bytes per block */
    bool is_quantized;
    qt_type vec_dot_type;   /* what activations are converted to for vec_dot */
    qt_to_float_fn to_float;
    qt_from_float_fn from_float; /* NULL where quantizing is not supported */
    qt_vec_dot_fn vec_dot;       /* NULL for activation-only or storage-only types */
    qt_gemm_fn gemm;             /* NULL: callers loop over vec_dot */
    uint8_t gemm_rows, gemm_cols; /* largest tile gemm takes */
} qt_traits;

/* The row for t with the fastest kernels, or NULL for an unknown/unsupported id. */
const qt_traits *qt_get(qt_type t);
/* The row for t in one implementation; NULL when unknown or not runnable here. */
const qt_traits *qt_get_impl(qt_type t, qt_impl impl);
/* Look a type up by its name ("q8_0", "F16", case-insensitive); -1 if unknown
 * or an in-memory layout (ids from QT_FILE_TYPE_COUNT on), which users never name. */
int qt_type_from_name(const char *name);
const char *qt_type_name(qt_type t); /* "?" for unknown */
const char *qt_impl_name(qt_impl impl);
/* The in-memory layout the fastest kernels here want for weight rows of t
 * with ne0 elements (QT_Q4_0X16 for Q4_0, QT_Q8_0X16 for Q8_0, QT_Q4_KX16
 * for Q4_K and QT_Q6_KX16 for Q6_K on AVX-512 CPUs without AMX), or t itself when
 * rows are best used as stored. OUTPOST_NO_REPACK=1 makes it always t. */
qt_type qt_repack_type(qt_type t, int64_t ne0);
/* Convert n elements of one row from `from` to its repack type (same size). */
void qt_repack_row(qt_type from, const void *restrict src, void *restrict dst, int64_t n);
/* Which implementation qt_get() uses. */
qt_impl qt_best_impl(void);

/* Block geometry of any type a GGUF file may hold, including types with no
 * kernels here (integers, F64); false for an unknown id. */
bool qt_block_size(qt_type t, uint32_t *elems, uint32_t *bytes);

/* Bytes of a row of n elements, or 0 if n is not a multiple of the block size
 * or t is unknown. */
size_t qt_row_bytes(qt_type t, int64_t n);

/* IEEE half and bfloat16 conversions (round to nearest even). */
float qt_fp16_to_fp32(uint16_t h);
uint16_t qt_fp32_to_fp16(float f);
static inline float qt_bf16_to_fp32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
uint16_t qt_fp32_to_bf16(float f);

#endif
