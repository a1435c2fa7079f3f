/*
 * quant.c - the qt_ type table: one row per element type, run-time choice of
 * kernels, fp16/bf16 conversions, and type names.
 *
 * scalar_rows below is the table: each supported type is one line naming
 * its block geometry, activation type and reference kernels (defined in
 * quant_<family>.c). A SIMD row is the scalar row with the kernels that
 * implementation has swapped in from its override list (avx2_overrides,
 * avx512_overrides, which starts from the AVX2 row; avxvnni_gemms over
 * the AVX2 row; amx_gemms over the AVX-512 row; neon_overrides, and neondp_overrides over the NEON row), so
 * a type without a SIMD kernel still works there, on the next simpler code.
 * Gemm tiles (the *_gemms lists) are swapped in the same way. The SIMD rows
 * are filled once, under pthread_once, together with the CPU probe; after
 * that every row is read-only and may be shared by threads.
 *
 * Types GGUF files may name but we cannot compute with (integer and F64
 * tensors) still have a name and a block geometry, so file tools can
 * print and size them; qt_get() returns NULL for them.
 *
 * Environment: OUTPOST_NO_SIMD=1 (any value but empty or "0") makes qt_get()
 * and qt_best_impl() use the scalar rows, to tell a kernel bug from a model
 * bug. OUTPOST_NO_AVX512=1 caps them at plain AVX2 and OUTPOST_NO_AMX=1 at
 * AVX-512 without AMX tiles (to compare them on one machine), and
 * OUTPOST_NO_DOTPROD=1 keeps an Arm core with SDOT on the ARMv8.0 NEON
 * rows. qt_get_impl() still hands out any implementation the CPU can run.
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
    ROW(QT_Q2_K, "q2_k", QT_QK_K, sizeof(qt_block_q2_k), true, QT_Q8_K, qt_q2_k_to_float, qt_q2_k_from_float, qt_q2_k_vec_dot),
    ROW(QT_Q3_K, "q3_k", QT_QK_K, sizeof(qt_block_q3_k), true, QT_Q8_K, qt_q3_k_to_float, qt_q3_k_from_float, qt_q3_k_vec_dot),
    ROW(QT_Q4_K, "q4_k", QT_QK_K, sizeof(qt_block_q4_k), true, QT_Q8_K, qt_q4_k_to_float, qt_q4_k_from_float, qt_q4_k_vec_dot),
    ROW(QT_Q5_K, "q5_k", QT_QK_K, sizeof(qt_block_q5_k), true, QT_Q8_K, qt_q5_k_to_float, qt_q5_k_from_float, qt_q5_k_vec_dot),
    ROW(QT_Q6_K, "q6_k", QT_QK_K, sizeof(qt_block_q6_k), true, QT_Q8_K, qt_q6_k_to_float, qt_q6_k_from_float, qt_q6_k_vec_dot),
    ROW(QT_Q8_K, "q8_k", QT_QK_K, sizeof(qt_block_q8_k), true, QT_Q8_K, qt_q8_k_to_float, qt_q8_k_from_float, NULL),
    ROW(QT_Q4_0X16, "q4_0x16", QT_QK_X16, sizeof(qt_block_q4_0x16), true, QT_A8_X16, qt_q4_0x16_to_float, qt_q4_0x16_from_float, qt_q4_0x16_vec_dot),
    ROW(QT_Q8_0X16, "q8_0x16", QT_QK_X16, sizeof(qt_block_q8_0x16), true, QT_A8_X16, qt_q8_0x16_to_float, qt_q8_0x16_from_float, qt_q8_0x16_vec_dot),
    ROW(QT_A8_X16, "a8_x16", QT_QK_X16, sizeof(qt_block_a8_x16), true, QT_A8_X16, qt_a8_x16_to_float, qt_a8_x16_from_float, NULL),
    ROW(QT_Q4_KX16, "q4_kx16", QT_QK_X16, sizeof(qt_block_q4_kx16), true, QT_A8_X16, qt_q4_kx16_to_float, qt_q4_kx16_from_float, qt_q4_kx16_vec_dot),
    ROW(QT_Q6_KX16, "q6_kx16", QT_QK_X16, sizeof(qt_block_q6_kx16), true, QT_A8_X16, qt_q6_kx16_to_float, qt_q6_kx16_from_float, qt_q6_kx16_vec_dot),
};

/* ggml ids with a name and a size but no kernels here (GGUF v3 type list). */
static const struct {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} storage_only[QT_TYPE_COUNT] = {
    [QT_I8] = { "i8", 1, 1 },
    [QT_I16] = { "i16", 1, 2 },
    [QT_I32] = { "i32", 1, 4 },
    [QT_I64] = { "i64", 1, 8 },
    [QT_F64] = { "f64", 1, 8 },
};

/* One type's kernels in a SIMD implementation; NULL keeps the row's own. */
typedef struct qt_override {
    qt_type type;
    qt_to_float_fn to_float;
    qt_from_float_fn from_float;
    qt_vec_dot_fn vec_dot;
} qt_override;

/* One type's gemm tile in a SIMD implementation, and its largest tile. */
typedef struct qt_gemm_override {
    qt_type type;
    qt_gemm_fn gemm;
    uint8_t rows, cols;
} qt_gemm_override;

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* rows = base with the overrides o[0..n) and gemm tiles g[0..ng) swapped in. */
static inline void apply_overrides(qt_traits *rows, const qt_traits *base, const qt_override *o,
                                   size_t n, const qt_gemm_override *g, size_t ng)
{
    for (int t = 0; t < QT_TYPE_COUNT; t++)
        rows[t] = base[t];
    for (size_t i = 0; i < n; i++) {
        qt_traits *row = &rows[o[i].type];
        if (o[i].to_float)
            row->to_float = o[i].to_float;
        if (o[i].from_float)
            row->from_float = o[i].from_float;
        if (o[i].vec_dot)
            row->vec_dot = o[i].vec_dot;
    }
    for (size_t i = 0; i < ng; i++) {
        qt_traits *row = &rows[g[i].type];
        row->gemm = g[i].gemm;
        row->gemm_rows = g[i].rows;
        row->gemm_cols = g[i].cols;
    }
}

#ifdef OUTPOST_HAVE_AVX2
/* Kernels quant_avx2.c provides. */
static const qt_override avx2_overrides[] = {
    { QT_F32, NULL, NULL, qt_avx2_f32_vec_dot },
    { QT_F16, qt_avx2_f16_to_float, qt_avx2_f16_from_float, qt_avx2_f16_vec_dot },
    { QT_BF16, qt_avx2_bf16_to_float, qt_avx2_bf16_from_float, qt_avx2_bf16_vec_dot },
    { QT_Q4_0, NULL, NULL, qt_avx2_q4_0_vec_dot },
    { QT_Q4_1, NULL, NULL, qt_avx2_q4_1_vec_dot },
    { QT_Q5_0, NULL, NULL, qt_avx2_q5_0_vec_dot },
    { QT_Q5_1, NULL, NULL, qt_avx2_q5_1_vec_dot },
    { QT_Q8_0, NULL, qt_avx2_q8_0_from_float, qt_avx2_q8_0_vec_dot },
    { QT_Q8_1, NULL, qt_avx2_q8_1_from_float, NULL },
    { QT_Q2_K, NULL, NULL, qt_avx2_q2_k_vec_dot },
    { QT_Q3_K, NULL, NULL, qt_avx2_q3_k_vec_dot },
    { QT_Q4_K, NULL, NULL, qt_avx2_q4_k_vec_dot },
    { QT_Q5_K, NULL, NULL, qt_avx2_q5_k_vec_dot },
    { QT_Q6_K, NULL, NULL, qt_avx2_q6_k_vec_dot },
    { QT_Q8_K, NULL, qt_avx2_q8_k_from_float, NULL },
};

static const qt_gemm_override avx2_gemms[] = {
    { QT_Q4_0, qt_avx2_q4_0_gemm, QT_AVX2_GEMM_ROWS, QT_AVX2_GEMM_COLS },
    { QT_Q8_0, qt_avx2_q8_0_gemm, QT_AVX2_GEMM_ROWS, QT_AVX2_GEMM_COLS },
};

static qt_traits avx2_rows[QT_TYPE_COUNT];
#endif

#ifdef OUTPOST_HAVE_AVXVNNI
/* The AVX2 row with its tiles on AVX-VNNI (quant_avx2_gemm.c built again). */
static const qt_gemm_override avxvnni_gemms[] = {
    { QT_Q4_0, qt_avx2_q4_0_gemm_avxvnni, QT_AVX2_GEMM_ROWS, QT_AVX2_GEMM_COLS },
    { QT_Q8_0, qt_avx2_q8_0_gemm_avxvnni, QT_AVX2_GEMM_ROWS, QT_AVX2_GEMM_COLS },
};

static qt_traits avxvnni_rows[QT_TYPE_COUNT];
static bool have_avxvnni;
#endif

#ifdef OUTPOST_HAVE_AVX512
/* Kernels quant_avx512.c provides, over the AVX2 row. */
static const qt_override avx512_overrides[] = {
    { QT_F32, NULL, NULL, qt_avx512_f32_vec_dot },
    { QT_F16, qt_avx512_f16_to_float, qt_avx512_f16_from_float, qt_avx512_f16_vec_dot },
    { QT_BF16, qt_avx512_bf16_to_float, qt_avx512_bf16_from_float, qt_avx512_bf16_vec_dot },
    { QT_Q4_0, NULL, NULL, qt_avx512_q4_0_vec_dot },
    { QT_Q4_1, NULL, NULL, qt_avx512_q4_1_vec_dot },
    { QT_Q5_0, NULL, NULL, qt_avx512_q5_0_vec_dot },
    { QT_Q5_1, NULL, NULL, qt_avx512_q5_1_vec_dot },
    { QT_Q8_0, NULL, qt_avx512_q8_0_from_float, qt_avx512_q8_0_vec_dot },
    { QT_Q8_1, NULL, qt_avx512_q8_1_from_float, NULL },
    { QT_Q2_K, NULL, NULL, qt_avx512_q2_k_vec_dot },
    { QT_Q3_K, NULL, NULL, qt_avx512_q3_k_vec_dot },
    { QT_Q4_K, NULL, NULL, qt_avx512_q4_k_vec_dot },
    { QT_Q5_K, NULL, NULL, qt_avx512_q5_k_vec_dot },
    { QT_Q6_K, NULL, NULL, qt_avx512_q6_k_vec_dot },
    { QT_Q8_K, NULL, qt_avx512_q8_k_from_float, NULL },
    { QT_A8_X16, NULL, qt_avx512_a8_x16_from_float, NULL },
};

static const qt_gemm_override avx512_gemms[] = {
    { QT_Q4_0X16, qt_avx512_q4_0x16_gemm, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q8_0X16, qt_avx512_q8_0x16_gemm, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q4_KX16, qt_avx512_q4_kx16_gemm, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q6_KX16, qt_avx512_q6_kx16_gemm, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q4_0, qt_avx512_q4_0_gemm_blocked, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q8_0, qt_avx512_q8_0_gemm_blocked, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q4_K, qt_avx512_q4_k_gemm_blocked, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
    { QT_Q5_K, qt_avx512_q5_k_gemm, QT_AVX512_KGEMM_ROWS, QT_AVX512_KGEMM_COLS },
    { QT_Q6_K, qt_avx512_q6_k_gemm_blocked, QT_AVX512_BGEMM_ROWS, QT_AVX512_BGEMM_COLS },
};

static qt_traits avx512_rows[QT_TYPE_COUNT];
static bool have_avx512;
#endif

#ifdef OUTPOST_HAVE_AMX
/* Prompt tiles on AMX (quant_amx.c), over the AVX-512 row. */
static const qt_gemm_override amx_gemms[] = {
    { QT_Q4_0, qt_amx_q4_0_gemm, QT_AMX_GEMM_ROWS, QT_AMX_GEMM_COLS },
    { QT_Q8_0, qt_amx_q8_0_gemm, QT_AMX_GEMM_ROWS, QT_AMX_GEMM_COLS },
    { QT_Q4_K, qt_amx_q4_k_gemm, QT_AMX_GEMM_ROWS, QT_AMX_GEMM_COLS },
    { QT_Q5_K, qt_amx_q5_k_gemm, QT_AMX_GEMM_ROWS, QT_AMX_GEMM_COLS },
};

static qt_traits amx_rows[QT_TYPE_COUNT];
static bool have_amx;
#endif

#ifdef OUTPOST_HAVE_NEON
#include <sys/auxv.h>

/* Kernels quant_neon.c provides for every AArch64 core. */
static const qt_override neon_overrides[] = {
    { QT_F32, NULL, NULL, qt_neon_f32_vec_dot },
    { QT_F16, qt_neon_f16_to_float, qt_neon_f16_from_float, qt_neon_f16_vec_dot },
    { QT_BF16, qt_neon_bf16_to_float, qt_neon_bf16_from_float, qt_neon_bf16_vec_dot },
    { QT_Q4_0, NULL, NULL, qt_neon_q4_0_vec_dot },
    { QT_Q4_1, NULL, NULL, qt_neon_q4_1_vec_dot },
    { QT_Q5_0, NULL, NULL, qt_neon_q5_0_vec_dot },
    { QT_Q5_1, NULL, NULL, qt_neon_q5_1_vec_dot },
    { QT_Q8_0, NULL, qt_neon_q8_0_from_float, qt_neon_q8_0_vec_dot },
    { QT_Q8_1, NULL, qt_neon_q8_1_from_float, NULL },
    { QT_Q2_K, NULL, NULL, qt_neon_q2_k_vec_dot },
    { QT_Q3_K, NULL, NULL, qt_neon_q3_k_vec_dot },
    { QT_Q4_K, NULL, NULL, qt_neon_q4_k_vec_dot },
    { QT_Q5_K, NULL, NULL, qt_neon_q5_k_vec_dot },
    { QT_Q6_K, NULL, NULL, qt_neon_q6_k_vec_dot },
    { QT_Q8_K, NULL, qt_neon_q8_k_from_float, NULL },
};

/* Its 8-bit dots on SDOT, over the NEON row. */
static const qt_override neondp_overrides[] = {
    { QT_Q4_0, NULL, NULL, qt_neondp_q4_0_vec_dot },
    { QT_Q4_1, NULL, NULL, qt_neondp_q4_1_vec_dot },
    { QT_Q5_0, NULL, NULL, qt_neondp_q5_0_vec_dot },
    { QT_Q5_1, NULL, NULL, qt_neondp_q5_1_vec_dot },
    { QT_Q8_0, NULL, NULL, qt_neondp_q8_0_vec_dot },
    { QT_Q2_K, NULL, NULL, qt_neondp_q2_k_vec_dot },
    { QT_Q3_K, NULL, NULL, qt_neondp_q3_k_vec_dot },
    { QT_Q4_K, NULL, NULL, qt_neondp_q4_k_vec_dot },
    { QT_Q5_K, NULL, NULL, qt_neondp_q5_k_vec_dot },
    { QT_Q6_K, NULL, NULL, qt_neondp_q6_k_vec_dot },
};

static qt_traits neon_rows[QT_TYPE_COUNT];
static qt_traits neondp_rows[QT_TYPE_COUNT];
static bool have_neon, have_neondp;

/* Linux reports Advanced SIMD and the dot product extension in AT_HWCAP
 * (bits 1 and 20 in the arm64 ELF hwcaps); the names come from glibc's
 * <sys/auxv.h>, the numbers stand in for older headers. */
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
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

#ifdef OUTPOST_HAVE_AVXVNNI
/* AVX-VNNI: CPUID leaf 7 sub-leaf 1, EAX bit 4 (asked only with AVX2
 * present, so leaf 7 exists). */
static bool cpu_has_avxvnni(void)
{
    unsigned a, b, c, d;
    __cpuid_count(7, 1, a, b, c, d);
    return a & (1u << 4);
}
#endif

#ifdef OUTPOST_HAVE_AVX512
/* AVX-512 F, DQ, BW, VL and VNNI (CPUID leaf 7: EBX bits 16, 17, 30, 31,
 * ECX bit 11) with the OS saving opmask and all 32 ZMM registers (XCR0 bits
 * 5-7). Called only once AVX2 is known present, so XGETBV is available. */
static bool cpu_has_avx512_vnni(void)
{
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned need_b = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
    if ((b & need_b) != need_b || !(c & (1u << 11)))
        return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    return (xcr0_lo & 0xe6u) == 0xe6u;
}
#endif

#ifdef OUTPOST_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>

/* AMX-TILE and AMX-INT8 (CPUID leaf 7 EDX bits 24, 25), the OS managing
 * tile state (XCR0 bits 17-18), and Linux's leave for this process to use
 * tile data: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), codes
 * 0x1023 and 18 in the kernel's uapi, without which the first tile
 * instruction faults. */
static bool cpu_has_amx_int8(void)
{
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    if ((d & (3u << 24)) != (3u << 24))
        return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & (3u << 17)) != (3u << 17))
        return false;
#ifdef __linux__
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
}
#endif

/* An environment switch is on unless unset, empty or "0". */
static bool env_on(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

static void probe(void)
{
#ifdef OUTPOST_HAVE_AVX2
    have_avx2 = cpu_has_avx2_fma_f16c();
    apply_overrides(avx2_rows, scalar_rows, avx2_overrides, COUNT_OF(avx2_overrides), avx2_gemms,
                    COUNT_OF(avx2_gemms));
    if (have_avx2) {
        qt_avx2_init();
        best_impl = QT_IMPL_AVX2;
    }
#endif
#ifdef OUTPOST_HAVE_AVXVNNI
    have_avxvnni = have_avx2 && cpu_has_avxvnni();
    apply_overrides(avxvnni_rows, avx2_rows, NULL, 0, avxvnni_gemms, COUNT_OF(avxvnni_gemms));
    if (have_avxvnni)
        best_impl = QT_IMPL_AVXVNNI;
#endif
#ifdef OUTPOST_HAVE_AVX512
    have_avx512 = have_avx2 && cpu_has_avx512_vnni();
    apply_overrides(avx512_rows, avx2_rows, avx512_overrides, COUNT_OF(avx512_overrides),
                    avx512_gemms, COUNT_OF(avx512_gemms));
    if (have_avx512) {
        qt_avx512_init();
        best_impl = env_on("OUTPOST_NO_AVX512") ? QT_IMPL_AVX2 : QT_IMPL_AVX512;
    }
#endif
#ifdef OUTPOST_HAVE_AMX
    have_amx = have_avx512 && cpu_has_amx_int8();
    apply_overrides(amx_rows, avx512_rows, NULL, 0, amx_gemms, COUNT_OF(amx_gemms));
    if (have_amx && best_impl == QT_IMPL_AVX512 && !env_on("OUTPOST_NO_AMX"))
        best_impl = QT_IMPL_AMX;
#endif
#ifdef OUTPOST_HAVE_NEON
    unsigned long hwcap = getauxval(AT_HWCAP);
    have_neon = hwcap & HWCAP_ASIMD;
    have_neondp = have_neon && (hwcap & HWCAP_ASIMDDP);
    apply_overrides(neon_rows, scalar_rows, neon_overrides, COUNT_OF(neon_overrides), NULL, 0);
    apply_overrides(neondp_rows, neon_rows, neondp_overrides, COUNT_OF(neondp_overrides), NULL, 0);
    if (have_neon)
        best_impl = QT_IMPL_NEON;
    if (have_neondp && !env_on("OUTPOST_NO_DOTPROD"))
        best_impl = QT_IMPL_NEON_DOTPROD;
#endif
    if (env_on("OUTPOST_NO_SIMD"))
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
    case QT_IMPL_AVX512:
#ifdef OUTPOST_HAVE_AVX512
        return have_avx512 ? &avx512_rows[t] : NULL;
#else
        return NULL;
#endif
    case QT_IMPL_AVXVNNI:
#ifdef OUTPOST_HAVE_AVXVNNI
        return have_avxvnni ? &avxvnni_rows[t] : NULL;
#else
        return NULL;
#endif
    case QT_IMPL_AMX:
#ifdef OUTPOST_HAVE_AMX
        return have_amx ? &amx_rows[t] : NULL;
#else
        return NULL;
#endif
    case QT_IMPL_NEON:
#ifdef OUTPOST_HAVE_NEON
        return have_neon ? &neon_rows[t] : NULL;
#else
        return NULL;
#endif
    case QT_IMPL_NEON_DOTPROD:
#ifdef OUTPOST_HAVE_NEON
        return have_neondp ? &neondp_rows[t] : NULL;
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

/* The in-memory layouts weights are repacked into (quant_x16.c), one row
 * each: what from becomes, and the row conversions, portable and (where
 * built) AVX-512. */
typedef void (*qt_repack_fn)(const void *restrict src, void *restrict dst, int64_t n);
#ifdef OUTPOST_HAVE_AVX512
#define AVX512_REPACK(f) f
#else
#define AVX512_REPACK(f) NULL
#endif
static const struct {
    qt_type from, to;
    qt_repack_fn scalar, avx512;
} repacks[] = {
    { QT_Q4_0, QT_Q4_0X16, qt_q4_0x16_from_q4_0, AVX512_REPACK(qt_avx512_q4_0x16_from_q4_0) },
    { QT_Q8_0, QT_Q8_0X16, qt_q8_0x16_from_q8_0, AVX512_REPACK(qt_avx512_q8_0x16_from_q8_0) },
    { QT_Q4_K, QT_Q4_KX16, qt_q4_kx16_from_q4_k, NULL },
    { QT_Q6_K, QT_Q6_KX16, qt_q6_kx16_from_q6_k, NULL },
};

static int repack_index(qt_type t)
{
    for (size_t i = 0; i < COUNT_OF(repacks); i++)
        if (repacks[i].from == t)
            return (int)i;
    return -1;
}

qt_type qt_repack_type(qt_type t, int64_t ne0)
{
    pthread_once(&probe_once, probe);
    /* AVX-512 without AMX: AMX's prompt tiles read Q4_0 and Q8_0 as stored
     * and beat the repacked kernels there. */
    const int i = repack_index(t);
    if (i < 0 || best_impl != QT_IMPL_AVX512 || ne0 <= 0 || ne0 % QT_QK_X16 != 0 || env_on("OUTPOST_NO_REPACK"))
        return t;
    return repacks[i].to;
}

void qt_repack_row(qt_type from, const void *restrict src, void *restrict dst, int64_t n)
{
    pthread_once(&probe_once, probe);
    const int i = repack_index(from);
    if (i < 0) {
        memcpy(dst, src, qt_row_bytes(from, n));
        return;
    }
#ifdef OUTPOST_HAVE_AVX512
    if (have_avx512 && repacks[i].avx512) {
        repacks[i].avx512(src, dst, n);
        return;
    }
#endif
    repacks[i].scalar(src, dst, n);
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
    case QT_IMPL_AVX512:
        return "avx512";
    case QT_IMPL_NEON:
        return "neon";
    case QT_IMPL_NEON_DOTPROD:
        return "neon-dotprod";
    case QT_IMPL_AMX:
        return "amx";
    case QT_IMPL_AVXVNNI:
        return "avxvnni";
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
    for (int t = 0; t < QT_FILE_TYPE_COUNT; t++) {
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
