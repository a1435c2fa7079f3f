/*
 * quant.c - the qt_ type table: one row per element type, run-time choice of
 * kernels, fp16/bf16 conversions, and type names.
 *
 * scalar_rows below is the table: each supported type is one line naming
 * its block geometry, activation type and reference kernels (defined in
 * quant_<family>.c). A SIMD row is the scalar row with the kernels that
 * implementation has swapped in from its override list (avx2_overrides), so
 * a type without a SIMD kernel still works there, on its scalar code. The
 * SIMD rows are filled once, under pthread_once, together with the CPU
 * probe; after that every row is read-only and may be shared by threads.
 *
 * Types GGUF files may name but we cannot compute with (K-quants, integer
 * and F64 tensors) still have a name and a block geometry, so file tools can
 * print and size them; qt_get() returns NULL for them.
 *
 * Environment: OUTPOST_NO_SIMD=1 (any value but empty or "0") makes qt_get()
 * and qt_best_impl() use the scalar rows, to tell a kernel bug from a model
 * bug. qt_get_impl() still hands out any implementation the CPU can run.
 */
#include <pthread.h>
#include <stdlib.h>
#include <strings.h>

#include "quant_impl.h"

#define ROW(T, name_, elems, bytes, quantized, dot_type, to, from, dot)                 \
    [T] = { .type = T, .name = name_, .block_elems = elems, .block_bytes = bytes,     \
            .is_quantized = quantized, .vec_dot_type = dot_type, .to_float = to,       \
            .from_float = from, .vec_dot = dot }

static const qt_traits scalar_rows[QT_TYPE_COUNT] = {
    ROW(QT_F32, "f32", 1, 4, false, QT_F32, qt_f32_to_float, qt_f32_from_float, qt_f32_vec_dot),
    ROW(QT_F16, "f16", 1, 2, false, QT_F16, qt_f16_to_float, qt_f16_from_float, qt_f16_vec_dot),
    ROW(QT_BF16, "bf16", 1, 2, false, QT_BF16, qt_bf16_to_float, qt_bf16_from_float, qt_bf16_vec_dot),
    ROW(QT_Q4_0, "q4_0", QT_QK, sizeof(qt_block_q4_0), true, QT_Q8_0, qt_q4_0_to_float, qt_q4_0_from_float, qt_q4_0_vec_dot),
    ROW(QT_Q4_1, "q4_1", QT_QK, sizeof(qt_block_q4_1), true, QT_Q8_1, qt_q4_1_to_float, qt_q4_1_from_float, qt_q4_1_vec_dot),
    ROW(QT_Q5_0, "q5_0", QT_QK, sizeof(qt_block_q5_0), true, QT_Q8_0, qt_q5_0_to_float, qt_q5_0_from_float, qt_q5_0_vec_dot),
    ROW(QT_Q5_1, "q5_1", QT_QK, sizeof(qt_block_q5_1), true, QT_Q8_1, qt_q5_1_to_float, qt_q5_1_from_float, qt_q5_1_vec_dot),
    ROW(QT_Q8_0, "q8_0", QT_QK, sizeof(qt_block_q8_0), true, QT_Q8_0, qt_q8_0_to_float, qt_q8_0_from_float, qt_q8_0_vec_dot),
    ROW(QT_Q8_1, "q8_1", QT_QK, sizeof(qt_block_q8_1), true, QT_Q8_1, qt_q8_1_to_float, qt_q8_1_from_float, NULL),
};

/* ggml ids with a name and a size but no kernels here (GGUF v3 type list). */
static const struct {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} storage_only[QT_TYPE_COUNT] = {
    [QT_Q2_K] = { "q2_k", 256, 84 },
    [QT_Q3_K] = { "q3_k", 256, 110 },
    [QT_Q4_K] = { "q4_k", 256, 144 },
    [QT_Q5_K] = { "q5_k", 256, 176 },
    [QT_Q6_K] = { "q6_k", 256, 210 },
    [QT_Q8_K] = { "q8_k", 256, 292 },
    [QT_I8] = { "i8", 1, 1 },
    [QT_I16] = { "i16", 1, 2 },
    [QT_I32] = { "i32", 1, 4 },
    [QT_I64] = { "i64", 1, 8 },
    [QT_F64] = { "f64", 1, 8 },
};

#ifdef OUTPOST_HAVE_AVX2
/* Kernels quant_avx2.c provides; NULL keeps the scalar one. */
static const struct {
    qt_type type;
    qt_to_float_fn to_float;
    qt_from_float_fn from_float;
    qt_vec_dot_fn vec_dot;
} avx2_overrides[] = {
    { QT_F32, NULL, NULL, qt_avx2_f32_vec_dot },
    { QT_F16, qt_avx2_f16_to_float, qt_avx2_f16_from_float, qt_avx2_f16_vec_dot },
    { QT_BF16, qt_avx2_bf16_to_float, qt_avx2_bf16_from_float, qt_avx2_bf16_vec_dot },
    { QT_Q4_0, NULL, NULL, qt_avx2_q4_0_vec_dot },
    { QT_Q4_1, NULL, NULL, qt_avx2_q4_1_vec_dot },
    { QT_Q5_0, NULL, NULL, qt_avx2_q5_0_vec_dot },
    { QT_Q5_1, NULL, NULL, qt_avx2_q5_1_vec_dot },
    { QT_Q8_0, NULL, qt_avx2_q8_0_from_float, qt_avx2_q8_0_vec_dot },
    { QT_Q8_1, NULL, qt_avx2_q8_1_from_float, NULL },
};

static qt_traits avx2_rows[QT_TYPE_COUNT];
#endif

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static qt_impl best_impl = QT_IMPL_SCALAR;

#ifdef OUTPOST_HAVE_AVX2
#include <cpuid.h>

static bool have_avx2;

/* AVX2, FMA and F16C in the CPU, and the OS saving YMM state (XCR0 bits 1
 * and 2), as the Intel SDM asks before using 256-bit registers. */
static bool cpu_has_avx2_fma_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    bool fma = c & (1u << 12);
    bool osxsave = c & (1u << 27);
    bool avx = c & (1u << 28);
    bool f16c = c & (1u << 29);
    if (!(fma && osxsave && avx && f16c))
        return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 6u) != 6u)
        return false;
    if (__get_cpuid_max(0, NULL) < 7)
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    return b & (1u << 5);
}
#endif

static void probe(void)
{
#ifdef OUTPOST_HAVE_AVX2
    have_avx2 = cpu_has_avx2_fma_f16c();
    for (int t = 0; t < QT_TYPE_COUNT; t++)
        avx2_rows[t] = scalar_rows[t];
    for (size_t i = 0; i < sizeof avx2_overrides / sizeof avx2_overrides[0]; i++) {
        qt_traits *row = &avx2_rows[avx2_overrides[i].type];
        if (avx2_overrides[i].to_float)
            row->to_float = avx2_overrides[i].to_float;
        if (avx2_overrides[i].from_float)
            row->from_float = avx2_overrides[i].from_float;
        if (avx2_overrides[i].vec_dot)
            row->vec_dot = avx2_overrides[i].vec_dot;
    }
    if (have_avx2) {
        qt_avx2_init();
        best_impl = QT_IMPL_AVX2;
    }
#endif
    const char *no_simd = getenv("OUTPOST_NO_SIMD");
    if (no_simd && no_simd[0] && strcmp(no_simd, "0") != 0)
        best_impl = QT_IMPL_SCALAR;
}

static bool known_row(qt_type t)
{
    return (int)t >= 0 && t < QT_TYPE_COUNT && scalar_rows[t].name != NULL;
}

const qt_traits *qt_get_impl(qt_type t, qt_impl impl)
{
    if (!known_row(t))
        return NULL;
    pthread_once(&probe_once, probe);
    if (impl == QT_IMPL_BEST)
        impl = best_impl;
    switch (impl) {
    case QT_IMPL_SCALAR:
        return &scalar_rows[t];
    case QT_IMPL_AVX2:
#ifdef OUTPOST_HAVE_AVX2
        return have_avx2 ? &avx2_rows[t] : NULL;
#else
        return NULL;
#endif
    default:
        return NULL;
    }
}

const qt_traits *qt_get(qt_type t)
{
    return qt_get_impl(t, QT_IMPL_BEST);
}

qt_impl qt_best_impl(void)
{
    pthread_once(&probe_once, probe);
    return best_impl;
}

const char *qt_impl_name(qt_impl impl)
{
    switch (impl) {
    case QT_IMPL_BEST:
        return "best";
    case QT_IMPL_SCALAR:
        return "scalar";
    case QT_IMPL_AVX2:
        return "avx2";
    }
    return "?";
}

const char *qt_type_name(qt_type t)
{
    if ((int)t < 0 || t >= QT_TYPE_COUNT)
        return "?";
    if (scalar_rows[t].name)
        return scalar_rows[t].name;
    if (storage_only[t].name)
        return storage_only[t].name;
    return "?";
}

int qt_type_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int t = 0; t < QT_TYPE_COUNT; t++) {
        const char *known = qt_type_name((qt_type)t);
        if (strcmp(known, "?") != 0 && strcasecmp(known, name) == 0)
            return t;
    }
    return -1;
}

bool qt_block_size(qt_type t, uint32_t *elems, uint32_t *bytes)
{
    if ((int)t < 0 || t >= QT_TYPE_COUNT)
        return false;
    *elems = scalar_rows[t].name ? scalar_rows[t].block_elems : storage_only[t].block_elems;
    *bytes = scalar_rows[t].name ? scalar_rows[t].block_bytes : storage_only[t].block_bytes;
    return *elems != 0;
}

size_t qt_row_bytes(qt_type t, int64_t n)
{
    uint32_t elems, bytes;
    if (n < 0 || !qt_block_size(t, &elems, &bytes) || (uint64_t)n % elems != 0)
        return 0;
    uint64_t blocks = (uint64_t)n / elems;
    if (blocks > SIZE_MAX / bytes)
        return 0;
    return (size_t)(blocks * bytes);
}

float qt_fp16_to_fp32(uint16_t h)
{
    return qt_fp16_decode(h);
}

uint16_t qt_fp32_to_fp16(float f)
{
    return qt_fp16_encode(f);
}

uint16_t qt_fp32_to_bf16(float f)
{
    return qt_bf16_encode(f);
}
