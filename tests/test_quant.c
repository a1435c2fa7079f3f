/*
 * test_quant.c - the qt_ type table: block layouts against the ggml spec,
 * quantizer rounding, round-trip error bounds, SIMD rows against the scalar
 * reference, fp16/bf16 conversion edge cases, names and row sizes.
 *
 * Every check runs for each implementation this CPU can run (scalar always,
 * AVX2 when present). Data comes from a fixed-seed generator, so a failure
 * reproduces.
 *
 * Tolerances, and why:
 * - round trip: an element is off by at most half a step of the fp32 scale
 *   the quantizer used (a full step for the one code Q4_0/Q5_0 clamp), plus
 *   the code times the error of storing that scale (and the min) as fp16;
 * - SIMD dot vs scalar dot: integer block sums are exact in both, only the
 *   float summation order differs: |simd - scalar| <= 1e-5 * sum|x_i * y_i|
 *   + 1e-6;
 * - dot vs dot of dequantized floats: the same, plus for Q4_1/Q5_1 the fp16
 *   rounding of the activation's s = d * sum(q) times the weight's min;
 * - SIMD quantizers (Q8_0, Q8_1, F16, BF16) must give the scalar bytes
 *   exactly, for ordinary data and for NaN, inf and subnormals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quant.h"

static const qt_type all_types[] = { QT_F32,  QT_F16,  QT_BF16, QT_Q4_0, QT_Q4_1,
                                     QT_Q5_0, QT_Q5_1, QT_Q8_0, QT_Q8_1 };
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static const qt_impl all_impls[] = { QT_IMPL_SCALAR, QT_IMPL_AVX2 };
#define N_IMPLS (sizeof all_impls / sizeof all_impls[0])

static const int64_t quant_lengths[] = { 32, 64, 96, 256, 1024, 4096 + 32 };
static const int64_t float_lengths[] = { 1, 7, 8, 31, 33, 64, 100, 4096 + 5 };

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) /* [0, 1) */
{
    return (double)(rng_next(s) >> 11) * 0x1p-53;
}

static float rng_gauss(uint64_t *s)
{
    double u = rng_unit(s) + 1e-300;
    double v = rng_unit(s);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Gaussian data with awkward blocks mixed in: all zero, tiny (the fp16 scale
 * underflows), constant (max == min), and one with an outlier. */
static void fill_data(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        int64_t blk = i / 32;
        float g = rng_gauss(&s);
        switch (n >= 32 ? blk % 7 : 0) {
        case 3:
            x[i] = 0.0f;
            break;
        case 5:
            x[i] = g * 1e-6f;
            break;
        case 6:
            x[i] = 0.75f;
            break;
        case 1:
            x[i] = (i % 32 == 13) ? 40.0f : g;
            break;
        default:
            x[i] = g;
        }
    }
}

static uint16_t rd16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void wr16(unsigned char *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static float rdh(const unsigned char *p)
{
    return qt_fp16_to_fp32(rd16(p));
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static bool has_min(qt_type t)
{
    return t == QT_Q4_1 || t == QT_Q5_1;
}

static bool is_float_type(qt_type t)
{
    return t == QT_F32 || t == QT_F16 || t == QT_BF16;
}

/* ---- table, names, sizes ------------------------------------------------ */

static void table_rows_have_ggml_geometry_and_activation_types(void **state)
{
    (void)state;
    static const struct {
        qt_type t;
        uint32_t elems, bytes;
        qt_type dot;
        bool quantized, has_dot;
    } want[] = {
        { QT_F32, 1, 4, QT_F32, false, true },     { QT_F16, 1, 2, QT_F16, false, true },
        { QT_BF16, 1, 2, QT_BF16, false, true },   { QT_Q4_0, 32, 18, QT_Q8_0, true, true },
        { QT_Q4_1, 32, 20, QT_Q8_1, true, true },  { QT_Q5_0, 32, 22, QT_Q8_0, true, true },
        { QT_Q5_1, 32, 24, QT_Q8_1, true, true },  { QT_Q8_0, 32, 34, QT_Q8_0, true, true },
        { QT_Q8_1, 32, 36, QT_Q8_1, true, false },
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        for (size_t m = 0; m < N_IMPLS; m++) {
            const qt_traits *r = qt_get_impl(want[k].t, all_impls[m]);
            if (!r) {
                assert_int_equal(all_impls[m], QT_IMPL_AVX2);
                continue;
            }
            assert_int_equal(r->type, want[k].t);
            assert_int_equal(r->block_elems, want[k].elems);
            assert_int_equal(r->block_bytes, want[k].bytes);
            assert_int_equal(r->vec_dot_type, want[k].dot);
            assert_int_equal(r->is_quantized, want[k].quantized);
            assert_non_null(r->to_float);
            assert_non_null(r->from_float);
            assert_int_equal(r->vec_dot != NULL, want[k].has_dot);
            assert_string_equal(r->name, qt_type_name(want[k].t));
        }
    }
}

static void get_returns_null_for_unknown_and_storage_only_types(void **state)
{
    (void)state;
    assert_null(qt_get((qt_type)4));
    assert_null(qt_get((qt_type)5));
    assert_null(qt_get(QT_F64));
    assert_null(qt_get(QT_I32));
    assert_null(qt_get(QT_TYPE_COUNT));
    assert_null(qt_get((qt_type)-1));
    assert_null(qt_get_impl(QT_Q4_0, (qt_impl)99));
    assert_non_null(qt_get_impl(QT_Q4_0, QT_IMPL_SCALAR));
    assert_ptr_equal(qt_get(QT_Q4_0), qt_get_impl(QT_Q4_0, qt_best_impl()));
    assert_ptr_equal(qt_get(QT_Q4_0), qt_get_impl(QT_Q4_0, QT_IMPL_BEST));
}

static void row_bytes_counts_blocks_and_rejects_partial_blocks(void **state)
{
    (void)state;
    assert_int_equal(qt_row_bytes(QT_Q4_0, 4096), 128 * 18);
    assert_int_equal(qt_row_bytes(QT_Q4_1, 64), 40);
    assert_int_equal(qt_row_bytes(QT_Q5_0, 32), 22);
    assert_int_equal(qt_row_bytes(QT_Q5_1, 96), 72);
    assert_int_equal(qt_row_bytes(QT_Q8_0, 4096), 128 * 34);
    assert_int_equal(qt_row_bytes(QT_Q8_1, 32), 36);
    assert_int_equal(qt_row_bytes(QT_F32, 7), 28);
    assert_int_equal(qt_row_bytes(QT_F16, 7), 14);
    assert_int_equal(qt_row_bytes(QT_BF16, 3), 6);
    assert_int_equal(qt_row_bytes(QT_Q6_K, 512), 420);
    assert_int_equal(qt_row_bytes(QT_Q4_K, 256), 144);
    assert_int_equal(qt_row_bytes(QT_I8, 5), 5);
    assert_int_equal(qt_row_bytes(QT_Q4_0, 33), 0);
    assert_int_equal(qt_row_bytes(QT_Q8_0, 16), 0);
    assert_int_equal(qt_row_bytes(QT_Q6_K, 32), 0);
    assert_int_equal(qt_row_bytes(QT_Q4_0, -32), 0);
    assert_int_equal(qt_row_bytes((qt_type)5, 32), 0);
    assert_int_equal(qt_row_bytes((qt_type)39, 32), 0);
    assert_int_equal(qt_row_bytes(QT_TYPE_COUNT, 32), 0);
    assert_int_equal(qt_row_bytes(QT_F64, INT64_MAX), 0); /* would overflow */
}

static void type_from_name_is_case_insensitive_and_rejects_unknown(void **state)
{
    (void)state;
    assert_int_equal(qt_type_from_name("q4_0"), QT_Q4_0);
    assert_int_equal(qt_type_from_name("Q4_1"), QT_Q4_1);
    assert_int_equal(qt_type_from_name("q5_0"), QT_Q5_0);
    assert_int_equal(qt_type_from_name("q5_1"), QT_Q5_1);
    assert_int_equal(qt_type_from_name("Q8_0"), QT_Q8_0);
    assert_int_equal(qt_type_from_name("q8_1"), QT_Q8_1);
    assert_int_equal(qt_type_from_name("F16"), QT_F16);
    assert_int_equal(qt_type_from_name("f32"), QT_F32);
    assert_int_equal(qt_type_from_name("BF16"), QT_BF16);
    assert_int_equal(qt_type_from_name("q6_K"), QT_Q6_K);
    assert_int_equal(qt_type_from_name("nope"), -1);
    assert_int_equal(qt_type_from_name("q4"), -1);
    assert_int_equal(qt_type_from_name("q4_0 "), -1);
    assert_int_equal(qt_type_from_name(""), -1);
    assert_int_equal(qt_type_from_name("?"), -1);
    assert_int_equal(qt_type_from_name(NULL), -1);
    int named = 0;
    for (int t = 0; t < QT_TYPE_COUNT; t++) {
        const char *name = qt_type_name((qt_type)t);
        if (strcmp(name, "?") == 0)
            continue;
        named++;
        /* in-memory layouts have names for messages, but users cannot ask for them */
        assert_int_equal(qt_type_from_name(name), t < QT_FILE_TYPE_COUNT ? t : -1);
    }
    assert_int_equal(named, 25);
    assert_string_equal(qt_type_name(QT_Q4_0X16), "q4_0x16");
    assert_int_equal(qt_type_from_name("q4_0x16"), -1);
    assert_int_equal(qt_type_from_name("q4_kx16"), -1);
    assert_int_equal(qt_type_from_name("q6_kx16"), -1);
    assert_string_equal(qt_type_name((qt_type)5), "?");
    assert_string_equal(qt_type_name(QT_TYPE_COUNT), "?");
    assert_string_equal(qt_impl_name(QT_IMPL_SCALAR), "scalar");
    assert_string_equal(qt_impl_name(QT_IMPL_AVX2), "avx2");
}

/* Q4_0 x16, Q8_0 x16 and Q4_K x16 are rearrangements: a repacked row (whichever
 * kernel this CPU repacks with) dequantizes to exactly the values of the row
 * it came from, across an odd number of x16 blocks (so both block layouts, codes-first and
 * scales-first, are checked). */
static void check_repack_keeps_every_value(qt_type from, qt_type to)
{
    const int64_t n = 3 * 512;
    const size_t bytes = qt_row_bytes(from, n);
    const int64_t block_elems = from == QT_Q4_K || from == QT_Q6_K ? 256 : 32;
    const size_t d_at = from == QT_Q6_K ? 208 : 0; /* where a block's fp16 d is */
    const size_t block = qt_row_bytes(from, block_elems);
    assert_int_equal(qt_repack_type(from, n) == from || qt_repack_type(from, n) == to, true);
    assert_int_equal(qt_row_bytes(to, n), bytes);
    unsigned char *src = malloc(bytes), *dst = malloc(bytes);
    float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    assert_true(src && dst && want && got);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < bytes; i++) {
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        src[i] = (unsigned char)(seed >> 56);
    }
    for (int64_t b = 0; b < n / block_elems; b++) { /* finite scales (and Q4_K's dmin) */
        uint16_t h = qt_fp32_to_fp16(0.001f * (float)(b + 1) * (b % 2 ? -1.0f : 1.0f));
        memcpy(src + block * (size_t)b + d_at, &h, 2);
        if (from == QT_Q4_K) {
            h = qt_fp32_to_fp16(0.0003f * (float)(b + 2));
            memcpy(src + block * (size_t)b + 2, &h, 2);
        }
    }
    qt_repack_row(from, src, dst, n);
    qt_get_impl(from, QT_IMPL_SCALAR)->to_float(src, want, n);
    qt_get_impl(to, QT_IMPL_SCALAR)->to_float(dst, got, n);
    assert_memory_equal(want, got, sizeof(float) * n);
    free(src);
    free(dst);
    free(want);
    free(got);
}

static void x16_repacks_keep_every_value(void **state)
{
    (void)state;
    check_repack_keeps_every_value(QT_Q4_0, QT_Q4_0X16);
    check_repack_keeps_every_value(QT_Q8_0, QT_Q8_0X16);
    check_repack_keeps_every_value(QT_Q4_K, QT_Q4_KX16);
    check_repack_keeps_every_value(QT_Q6_K, QT_Q6_KX16);
}

/* The env var is read once per process, so ask a fresh copy of this binary. */
static void run_self_best_impl(const char *no_simd, char *out, size_t out_len)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        if (no_simd)
            setenv("OUTPOST_NO_SIMD", no_simd, 1);
        else
            unsetenv("OUTPOST_NO_SIMD");
        execl("/proc/self/exe", "test_quant", "--print-best-impl", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < out_len && (r = read(fds[0], out + got, out_len - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void no_simd_env_forces_scalar_rows(void **state)
{
    (void)state;
    char out[64];
    run_self_best_impl("1", out, sizeof out);
    assert_string_equal(out, "scalar");
    run_self_best_impl(NULL, out, sizeof out);
    const char *want = qt_get_impl(QT_Q4_0, QT_IMPL_AMX)      ? "amx"
                       : qt_get_impl(QT_Q4_0, QT_IMPL_AVX512) ? "avx512"
                       : qt_get_impl(QT_Q4_0, QT_IMPL_AVXVNNI) ? "avxvnni"
                       : qt_get_impl(QT_Q4_0, QT_IMPL_AVX2)   ? "avx2"
                                                               : "scalar";
    assert_string_equal(out, want);
    run_self_best_impl("0", out, sizeof out);
    assert_string_equal(out, want);
}

/* ---- hand-built blocks (layouts from the ggml spec) --------------------- */

static void decode_with_every_impl(qt_type t, const unsigned char *blk, int64_t n, const float *want)
{
    float got[64];
    for (size_t m = 0; m < N_IMPLS; m++) {
        const qt_traits *r = qt_get_impl(t, all_impls[m]);
        if (!r)
            continue;
        r->to_float(blk, got, n);
        for (int64_t j = 0; j < n; j++) {
            if (got[j] != want[j])
                fail_msg("%s/%s element %lld: got %g, want %g", qt_type_name(t),
                         qt_impl_name(all_impls[m]), (long long)j, got[j], want[j]);
        }
    }
}

static void q8_0_block_layout_decodes_to_known_values(void **state)
{
    (void)state;
    unsigned char blk[34];
    float want[32];
    wr16(blk, 0x3800); /* 0.5 */
    for (int j = 0; j < 32; j++) {
        blk[2 + j] = (unsigned char)(int8_t)(j * 8 - 128);
        want[j] = (float)(j * 8 - 128) * 0.5f;
    }
    decode_with_every_impl(QT_Q8_0, blk, 32, want);
    assert_true(want[0] == -64.0f);
}

static void q8_1_block_layout_decodes_to_known_values(void **state)
{
    (void)state;
    unsigned char blk[36];
    float want[32];
    wr16(blk, 0xc000); /* -2.0 */
    wr16(blk + 2, 0x1234); /* s is not part of the values */
    for (int j = 0; j < 32; j++) {
        blk[4 + j] = (unsigned char)(int8_t)(j - 20);
        want[j] = (float)(j - 20) * -2.0f;
    }
    decode_with_every_impl(QT_Q8_1, blk, 32, want);
}

static void q4_0_block_layout_puts_low_nibbles_first(void **state)
{
    (void)state;
    unsigned char blk[18];
    float want[32];
    wr16(blk, 0x4000); /* 2.0 */
    for (int j = 0; j < 16; j++) {
        blk[2 + j] = (unsigned char)(j | (15 - j) << 4);
        want[j] = (float)(j - 8) * 2.0f;
        want[j + 16] = (float)(15 - j - 8) * 2.0f;
    }
    decode_with_every_impl(QT_Q4_0, blk, 32, want);
    assert_true(want[0] == -16.0f && want[16] == 14.0f && want[31] == -16.0f);
}

static void q4_1_block_layout_adds_the_min(void **state)
{
    (void)state;
    unsigned char blk[20];
    float want[32];
    wr16(blk, 0x3800);     /* d 0.5 */
    wr16(blk + 2, 0xbc00); /* m -1.0 */
    for (int j = 0; j < 16; j++) {
        blk[4 + j] = (unsigned char)((15 - j) | j << 4);
        want[j] = (float)(15 - j) * 0.5f - 1.0f;
        want[j + 16] = (float)j * 0.5f - 1.0f;
    }
    decode_with_every_impl(QT_Q4_1, blk, 32, want);
}

/* qh 0x80a50001: bit j is the fifth bit of element j (little-endian). */
static const unsigned char q5_qh[4] = { 0x01, 0x00, 0xa5, 0x80 };

static int q5_code(int j)
{
    uint32_t qh = 0x80a50001u;
    int low = j < 16 ? (j * 5) & 0x0f : ((j - 16) * 3) & 0x0f;
    return low | (int)((qh >> j) & 1u) << 4;
}

static void fill_q5_nibbles(unsigned char *qs)
{
    for (int j = 0; j < 16; j++)
        qs[j] = (unsigned char)(((j * 5) & 0x0f) | ((j * 3) & 0x0f) << 4);
}

static void q5_0_block_layout_takes_fifth_bit_from_qh(void **state)
{
    (void)state;
    unsigned char blk[22];
    float want[32];
    wr16(blk, 0x3c00);
    memcpy(blk + 2, q5_qh, 4);
    fill_q5_nibbles(blk + 6);
    for (int j = 0; j < 32; j++)
        want[j] = (float)(q5_code(j) - 16);
    decode_with_every_impl(QT_Q5_0, blk, 32, want);
    /* spot checks straight from the bytes: element 0 low nibble 0, bit set */
    assert_true(want[0] == 0.0f);
    assert_true(want[1] == 5.0f - 16.0f);
    assert_true(want[31] == (float)((45 & 0x0f) + 16 - 16));
    assert_true(want[16] == -16.0f + 16.0f); /* bit 16 of 0x80a50001 is set */
}

static void q5_1_block_layout_takes_fifth_bit_from_qh(void **state)
{
    (void)state;
    unsigned char blk[24];
    float want[32];
    wr16(blk, 0x3400);     /* d 0.25 */
    wr16(blk + 2, 0x4200); /* m 3.0 */
    memcpy(blk + 4, q5_qh, 4);
    fill_q5_nibbles(blk + 8);
    for (int j = 0; j < 32; j++)
        want[j] = (float)q5_code(j) * 0.25f + 3.0f;
    decode_with_every_impl(QT_Q5_1, blk, 32, want);
    assert_true(want[0] == 16.0f * 0.25f + 3.0f);
}

static void f16_and_bf16_rows_decode_little_endian_halves(void **state)
{
    (void)state;
    const unsigned char f16[] = { 0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x80 };
    const float want16[] = { 1.0f, -2.0f, 65504.0f, 0x1p-24f, -0.0f };
    decode_with_every_impl(QT_F16, f16, 5, want16);
    const unsigned char bf16[] = { 0x80, 0x3f, 0x49, 0xc0, 0x80, 0x7f };
    const float wantb[] = { 1.0f, -3.140625f, INFINITY };
    decode_with_every_impl(QT_BF16, bf16, 3, wantb);
}

/* ---- quantizers against ggml's reference rounding ----------------------- */

static void quantize_with_every_impl(qt_type t, const float *x, const unsigned char *want, size_t len)
{
    unsigned char got[64];
    for (size_t m = 0; m < N_IMPLS; m++) {
        const qt_traits *r = qt_get_impl(t, all_impls[m]);
        if (!r)
            continue;
        memset(got, 0xee, sizeof got);
        r->from_float(x, got, 32);
        for (size_t k = 0; k < len; k++) {
            if (got[k] != want[k])
                fail_msg("%s/%s byte %zu: got 0x%02x, want 0x%02x", qt_type_name(t),
                         qt_impl_name(all_impls[m]), k, got[k], want[k]);
        }
        assert_int_equal(got[len], 0xee); /* wrote exactly one block */
    }
}

static void q8_0_quantizer_rounds_ties_away_from_zero(void **state)
{
    (void)state;
    float x[32] = { -127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 126.5f, -126.4f, 0.49999997f, 3.0f };
    unsigned char want[34] = { 0x00, 0x3c }; /* d = 127 / 127 */
    const int8_t q[10] = { -127, 3, -3, 1, -1, 2, 127, -126, 0, 3 };
    for (int j = 0; j < 10; j++)
        want[2 + j] = (unsigned char)q[j];
    quantize_with_every_impl(QT_Q8_0, x, want, sizeof want);

    unsigned char want1[36] = { 0x00, 0x3c };
    int sum = 0;
    for (int j = 0; j < 10; j++) {
        want1[4 + j] = (unsigned char)q[j];
        sum += q[j];
    }
    wr16(want1 + 2, qt_fp32_to_fp16((float)sum));
    quantize_with_every_impl(QT_Q8_1, x, want1, sizeof want1);
}

static void q4_0_quantizer_matches_ggml_reference(void **state)
{
    (void)state;
    /* x = j - 16: the largest magnitude is -16, so d = -16 / -8 = 2 and code
     * = min(15, trunc(x / 2 + 8.5)): halves round up, 15 / 2 clamps */
    float x[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16);
    const unsigned char want[18] = { 0x00, 0x40, 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3,
                                     0xb3, 0xc4, 0xc4, 0xd5, 0xd5, 0xe6, 0xe6, 0xf7,
                                     0xf7, 0xf8 };
    quantize_with_every_impl(QT_Q4_0, x, want, sizeof want);
}

static void q4_1_quantizer_matches_ggml_reference(void **state)
{
    (void)state;
    float x[32];
    unsigned char want[20] = { 0x00, 0x3c, 0x00, 0x3c };
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j % 16) + 1.0f; /* min 1, max 16, d 1 */
    for (int k = 0; k < 16; k++)
        want[4 + k] = (unsigned char)(k | k << 4);
    quantize_with_every_impl(QT_Q4_1, x, want, sizeof want);
}

static void q5_0_quantizer_matches_ggml_reference(void **state)
{
    (void)state;
    float x[32];
    unsigned char want[22] = { 0x00, 0x3c, 0x00, 0x00, 0xff, 0xff };
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16); /* max -16, d 1, code j */
    for (int k = 0; k < 16; k++)
        want[6 + k] = (unsigned char)(k | k << 4);
    quantize_with_every_impl(QT_Q5_0, x, want, sizeof want);
}

static void q5_1_quantizer_matches_ggml_reference(void **state)
{
    (void)state;
    float x[32];
    unsigned char want[24] = { 0x00, 0x3c, 0x00, 0x40, 0x00, 0x00, 0xff, 0xff };
    for (int j = 0; j < 32; j++)
        x[j] = (float)j + 2.0f; /* min 2, max 33, d 1, code j */
    for (int k = 0; k < 16; k++)
        want[8 + k] = (unsigned char)(k | k << 4);
    quantize_with_every_impl(QT_Q5_1, x, want, sizeof want);
}

static void all_zero_block_gets_zero_scale_and_decodes_to_zero(void **state)
{
    (void)state;
    float zeros[64] = { 0 };
    unsigned char blk[64 * 4];
    float out[64];
    for (size_t k = 0; k < N_TYPES; k++) {
        for (size_t m = 0; m < N_IMPLS; m++) {
            const qt_traits *r = qt_get_impl(all_types[k], all_impls[m]);
            if (!r)
                continue;
            r->from_float(zeros, blk, 64);
            r->to_float(blk, out, 64);
            for (int j = 0; j < 64; j++)
                assert_true(out[j] == 0.0f);
            /* Q4_0/Q5_0 store -0 (max / -8 with max 0), as ggml does */
            if (r->is_quantized)
                assert_true(rdh(blk) == 0.0f);
            if (r->vec_dot) {
                const qt_traits *ry = qt_get_impl(r->vec_dot_type, all_impls[m]);
                unsigned char yb[64 * 4];
                float ones[64];
                for (int j = 0; j < 64; j++)
                    ones[j] = 1.0f;
                ry->from_float(ones, yb, 64);
                float s = -1.0f;
                r->vec_dot(64, &s, blk, yb);
                assert_true(s == 0.0f);
            }
        }
    }
}

/* ---- round trip --------------------------------------------------------- */

/* Check one block (or element, for float types) against the bound described
 * in the file's opening comment. */
static void check_block_error(qt_type t, const float *x, const unsigned char *blk, const float *y,
                              int64_t count, const char *impl, int64_t where)
{
    double bound[32];
    switch (t) {
    case QT_F32:
        bound[0] = 0.0;
        break;
    case QT_F16:
        bound[0] = fabs(x[0]) < 0x1p-14 ? 0x1p-25 : fabs(x[0]) * 0x1p-11;
        break;
    case QT_BF16:
        bound[0] = fabs(x[0]) * 0x1p-8;
        break;
    case QT_Q8_0:
    case QT_Q8_1: {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        double b = d * (0.5 + 1e-5) + 127.0 * fabs((double)d - rdh(blk));
        for (int j = 0; j < 32; j++)
            bound[j] = b;
        break;
    }
    case QT_Q4_0:
    case QT_Q5_0: {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        double levels = t == QT_Q4_0 ? 8.0 : 16.0;
        float d = max / (float)-levels;
        for (int j = 0; j < 32; j++) {
            double r = d != 0.0f ? (double)x[j] / d : 0.0;
            /* the top code is levels - 1: values past it clamp */
            double steps = r >= levels - 0.5 - 1e-4 ? 1.0 : 0.5;
            bound[j] = fabs(d) * (steps + 1e-5) + levels * fabs((double)d - rdh(blk));
        }
        break;
    }
    case QT_Q4_1:
    case QT_Q5_1: {
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            min = fminf(min, x[j]);
            max = fmaxf(max, x[j]);
        }
        double top = t == QT_Q4_1 ? 15.0 : 31.0;
        float d = (max - min) / (float)top;
        double b = d * (0.5 + 1e-5) + top * fabs((double)d - rdh(blk)) +
                   fabs((double)min - rdh(blk + 2)) + 1e-6 * (fabs(min) + fabs(max));
        for (int j = 0; j < 32; j++)
            bound[j] = b;
        break;
    }
    default:
        fail_msg("no bound for %s", qt_type_name(t));
    }
    for (int64_t j = 0; j < count; j++) {
        double err = fabs((double)x[j] - (double)y[j]);
        if (!(err <= bound[j] + 1e-12))
            fail_msg("%s/%s element %lld: x %.9g decoded %.9g, error %.3g > bound %.3g",
                     qt_type_name(t), impl, (long long)(where + j), x[j], y[j], err, bound[j]);
    }
}

static void roundtrip_error_is_bounded_for_every_type_and_impl(void **state)
{
    (void)state;
    const int64_t max_n = 4096 + 32;
    float *x = malloc(max_n * sizeof *x);
    float *y = malloc(max_n * sizeof *y);
    unsigned char *q = malloc(qt_row_bytes(QT_F32, max_n));
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(q);
    for (size_t k = 0; k < N_TYPES; k++) {
        qt_type t = all_types[k];
        bool fl = is_float_type(t);
        const int64_t *lens = fl ? float_lengths : quant_lengths;
        size_t n_lens = fl ? sizeof float_lengths / sizeof float_lengths[0]
                           : sizeof quant_lengths / sizeof quant_lengths[0];
        for (size_t m = 0; m < N_IMPLS; m++) {
            const qt_traits *r = qt_get_impl(t, all_impls[m]);
            if (!r)
                continue;
            for (size_t li = 0; li < n_lens; li++) {
                int64_t n = lens[li];
                fill_data(x, n, 1000 + (uint64_t)n);
                r->from_float(x, q, n);
                r->to_float(q, y, n);
                int64_t be = r->block_elems;
                size_t bb = r->block_bytes;
                for (int64_t b = 0; b < n / be; b++)
                    check_block_error(t, x + b * be, q + (size_t)b * bb, y + b * be, be,
                                      qt_impl_name(all_impls[m]), b * be);
            }
        }
    }
    free(x);
    free(y);
    free(q);
}

/* ---- SIMD against scalar ------------------------------------------------ */

/* Specials for the conversion rows: ties, subnormals, overflow, NaN, inf,
 * and random bit patterns (so every exponent and payload shows up). */
static void fill_specials(float *x, int64_t n, uint64_t seed)
{
    static const uint32_t fixed[] = {
        0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001,
        0x7fa00000, 0x477fe000, 0x477ff000, 0x477fefff, 0x477ff001, 0x33000000, 0x33000001,
        0x33c00000, 0x387fc000, 0x38800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x7f7fffff,
        0x00000001, 0x807fffff, 0x3f800fff, 0x3f801000, 0x3f803000, 0xc7800000, 0x4b800000,
    };
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        if ((size_t)i < sizeof fixed / sizeof fixed[0])
            x[i] = bits_f32(fixed[i]);
        else if (i % 3 == 0)
            x[i] = bits_f32((uint32_t)rng_next(&s));
        else
            x[i] = rng_gauss(&s) * (float)ldexp(1.0, (int)(rng_next(&s) % 60) - 30);
    }
}

static void simd_from_float_is_bit_identical_to_scalar(void **state)
{
    (void)state;
    if (!qt_get_impl(QT_F32, QT_IMPL_AVX2)) {
        skip();
        return;
    }
    const int64_t n = 4096 + 32;
    float *x = malloc(n * sizeof *x);
    unsigned char *a = malloc(qt_row_bytes(QT_F32, n) + 1);
    unsigned char *b = malloc(qt_row_bytes(QT_F32, n) + 1);
    assert_non_null(x);
    assert_non_null(a);
    assert_non_null(b);
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 0)
            fill_data(x, n, 77);
        else
            fill_specials(x, n, 78 + (uint64_t)pass);
        for (size_t k = 0; k < N_TYPES; k++) {
            qt_type t = all_types[k];
            /* quantizers without a SIMD kernel share the scalar function;
             * skip specials for them: they are covered by the round trip */
            const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
            const qt_traits *rv = qt_get_impl(t, QT_IMPL_AVX2);
            if (pass > 0 && rs->from_float == rv->from_float)
                continue;
            for (int64_t len = 1; len <= n; len = len * 3 + 1) {
                int64_t nn = len - len % (int64_t)rs->block_elems;
                if (nn == 0)
                    continue;
                size_t bytes = qt_row_bytes(t, nn);
                /* odd destination: rows live unaligned inside files */
                rs->from_float(x, a + 1, nn);
                rv->from_float(x, b + 1, nn);
                if (memcmp(a + 1, b + 1, bytes) != 0) {
                    for (size_t i = 0; i < bytes; i++)
                        if (a[1 + i] != b[1 + i])
                            fail_msg("%s pass %d n %lld: byte %zu differs (scalar 0x%02x, "
                                     "avx2 0x%02x)",
                                     qt_type_name(t), pass, (long long)nn, i, a[1 + i], b[1 + i]);
                }
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

static void simd_to_float_is_bit_identical_to_scalar(void **state)
{
    (void)state;
    if (!qt_get_impl(QT_F32, QT_IMPL_AVX2)) {
        skip();
        return;
    }
    /* every fp16/bf16 bit pattern, NaNs included, plus random quant bytes */
    const int64_t n = 65536 + 3;
    unsigned char *src = malloc(2 * (size_t)n + 1);
    float *a = malloc(n * sizeof *a);
    float *b = malloc(n * sizeof *b);
    assert_non_null(src);
    assert_non_null(a);
    assert_non_null(b);
    uint64_t s = 5;
    for (int64_t i = 0; i < n; i++)
        wr16(src + 1 + 2 * i, (uint16_t)(i < 65536 ? (uint64_t)i : rng_next(&s)));
    for (size_t k = 0; k < N_TYPES; k++) {
        qt_type t = all_types[k];
        const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        const qt_traits *rv = qt_get_impl(t, QT_IMPL_AVX2);
        int64_t nn = n - n % (int64_t)rs->block_elems;
        if (t == QT_F32)
            continue; /* a memcpy in both */
        rs->to_float(src + 1, a, nn);
        rv->to_float(src + 1, b, nn);
        for (int64_t i = 0; i < nn; i++) {
            if (f32_bits(a[i]) != f32_bits(b[i]))
                fail_msg("%s element %lld: scalar %08x avx2 %08x", qt_type_name(t), (long long)i,
                         f32_bits(a[i]), f32_bits(b[i]));
        }
    }
    free(src);
    free(a);
    free(b);
}

/* Fill a weight row with random bytes, then give every block a sane fp16
 * scale (and min), so every code and every qh pattern gets exercised. */
static void fill_random_blocks(qt_type t, unsigned char *q, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    size_t bytes = qt_row_bytes(t, n);
    for (size_t i = 0; i < bytes; i++)
        q[i] = (unsigned char)rng_next(&s);
    const qt_traits *r = qt_get_impl(t, QT_IMPL_SCALAR);
    for (int64_t b = 0; b < n / 32; b++) {
        unsigned char *blk = q + (size_t)b * r->block_bytes;
        wr16(blk, qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
        if (has_min(t))
            wr16(blk + 2, qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0)));
    }
}

/* Tolerance scale for a dot: sum |x_i y_i| over the dequantized rows, plus
 * for Q4_1/Q5_1 the size of the min terms; *s_err gets the extra slack for
 * Q8_1's fp16 s (see the file comment). */
static double dot_scale(qt_type t, const float *xd, const float *yd, const unsigned char *xq,
                        const unsigned char *yq, int64_t n, double *exact, double *s_err)
{
    double sum_abs = 0.0, dot = 0.0, extra = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum_abs += fabs((double)xd[i] * yd[i]);
        dot += (double)xd[i] * yd[i];
    }
    if (has_min(t)) {
        size_t xb = qt_row_bytes(t, 32);
        for (int64_t b = 0; b < n / 32; b++) {
            const unsigned char *xblk = xq + (size_t)b * xb;
            const unsigned char *yblk = yq + (size_t)b * 36;
            int sumq = 0;
            for (int j = 0; j < 32; j++)
                sumq += (int8_t)yblk[4 + j];
            double m = fabs(rdh(xblk + 2));
            double sv = fabs(rdh(yblk + 2));
            sum_abs += m * sv;
            extra += m * (sv + fabs(rdh(yblk) * sumq)) * 0x1p-10;
        }
    }
    *exact = dot;
    *s_err = extra;
    return sum_abs;
}

/* For each type with a dot: weights quantized (pass 0) or random bytes
 * (pass 1), activations quantized; compare the impl's dot against the
 * scalar dot and against the dot of the dequantized rows. */
static void check_dots(qt_impl impl)
{
    const int64_t max_n = 4096 + 32;
    float *xf = malloc(max_n * sizeof *xf);
    float *yf = malloc(max_n * sizeof *yf);
    float *xd = malloc(max_n * sizeof *xd);
    float *yd = malloc(max_n * sizeof *yd);
    unsigned char *xbuf = malloc(qt_row_bytes(QT_F32, max_n) + 4);
    unsigned char *ybuf = malloc(qt_row_bytes(QT_F32, max_n) + 4);
    assert_non_null(xf);
    assert_non_null(yf);
    assert_non_null(xd);
    assert_non_null(yd);
    assert_non_null(xbuf);
    assert_non_null(ybuf);
    for (size_t k = 0; k < N_TYPES; k++) {
        qt_type t = all_types[k];
        const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        const qt_traits *rv = qt_get_impl(t, impl);
        if (!rs->vec_dot)
            continue;
        const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
        bool fl = is_float_type(t);
        const int64_t *lens = fl ? float_lengths : quant_lengths;
        size_t n_lens = fl ? sizeof float_lengths / sizeof float_lengths[0]
                           : sizeof quant_lengths / sizeof quant_lengths[0];
        /* rows from files may sit at odd addresses; F32 rows are float arrays */
        size_t off = t == QT_F32 ? 0 : 1;
        unsigned char *xq = xbuf + off;
        unsigned char *yq = ybuf + off;
        for (int pass = 0; pass < (fl ? 1 : 2); pass++) {
            for (size_t li = 0; li < n_lens; li++) {
                int64_t n = lens[li];
                fill_data(xf, n, 31 + (uint64_t)n);
                fill_data(yf, n, 57 + (uint64_t)n);
                if (pass == 0)
                    rs->from_float(xf, xq, n);
                else
                    fill_random_blocks(t, xq, n, 99 + (uint64_t)n);
                ys->from_float(yf, yq, n);
                rs->to_float(xq, xd, n);
                ys->to_float(yq, yd, n);
                double exact, s_err;
                double scale = dot_scale(t, xd, yd, xq, yq, n, &exact, &s_err);
                float got_ref = NAN, got = NAN;
                rs->vec_dot(n, &got_ref, xq, yq);
                rv->vec_dot(n, &got, xq, yq);
                double tol = 1e-5 * scale + 1e-6;
                if (!(fabs((double)got - got_ref) <= tol))
                    fail_msg("%s/%s pass %d n %lld: dot %.9g, scalar %.9g (tol %.3g)",
                             qt_type_name(t), qt_impl_name(impl), pass, (long long)n, got,
                             got_ref, tol);
                if (!(fabs((double)got - exact) <= tol + s_err))
                    fail_msg("%s/%s pass %d n %lld: dot %.9g, dequantized dot %.9g (tol %.3g)",
                             qt_type_name(t), qt_impl_name(impl), pass, (long long)n, got, exact,
                             tol + s_err);
                /* a dot of random data must not be trivially zero */
                if (n >= 64)
                    assert_true(scale > 0.0);
            }
        }
    }
    free(xf);
    free(yf);
    free(xd);
    free(yd);
    free(xbuf);
    free(ybuf);
}

static void scalar_vec_dot_matches_dot_of_dequantized(void **state)
{
    (void)state;
    check_dots(QT_IMPL_SCALAR);
}

static void simd_vec_dot_matches_scalar_and_dequantized(void **state)
{
    (void)state;
    if (!qt_get_impl(QT_F32, QT_IMPL_AVX2)) {
        skip();
        return;
    }
    check_dots(QT_IMPL_AVX2);
}

/* Q8_0 weights may hold -128 (files from other tools); the SIMD sign trick
 * must still be exact for them. */
static void q8_0_dot_handles_weight_code_minus_128(void **state)
{
    (void)state;
    unsigned char x[2 * 34], y[2 * 34];
    float yf[64];
    for (int j = 0; j < 64; j++)
        yf[j] = (float)((j * 37) % 255 - 127);
    qt_get_impl(QT_Q8_0, QT_IMPL_SCALAR)->from_float(yf, y, 64);
    double want = 0.0;
    for (int b = 0; b < 2; b++) {
        wr16(x + 34 * b, 0x3c00);
        long sumi = 0;
        for (int j = 0; j < 32; j++) {
            int8_t c = (int8_t)(j % 2 ? -128 : 127 - j);
            x[34 * b + 2 + j] = (unsigned char)c;
            sumi += (long)c * (int8_t)y[34 * b + 2 + j];
        }
        want += (double)sumi * rdh(y + 34 * b);
    }
    assert_true(fabs(want) > 1000.0);
    for (size_t m = 0; m < N_IMPLS; m++) {
        const qt_traits *r = qt_get_impl(QT_Q8_0, all_impls[m]);
        if (!r)
            continue;
        float s = 0.0f;
        r->vec_dot(64, &s, x, y);
        assert_float_equal(s, want, fabs(want) * 1e-6);
    }
}

/* ---- fp16 / bf16 -------------------------------------------------------- */

static double fp16_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v = exp == 0 ? ldexp(mant, -24) : ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

static void fp16_roundtrips_every_bit_pattern(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qt_fp16_to_fp32((uint16_t)h);
        uint32_t exp = (h >> 10) & 0x1f;
        if (exp == 0x1f && (h & 0x3ff)) {
            assert_true(isnan(f));
            /* NaN stays NaN, keeps sign and payload, comes back quiet */
            assert_int_equal(qt_fp32_to_fp16(f), h | 0x200);
            continue;
        }
        if (exp == 0x1f)
            assert_true(isinf(f) && (signbit(f) != 0) == (h >> 15));
        else
            assert_true((double)f == fp16_value((uint16_t)h));
        assert_int_equal(qt_fp32_to_fp16(f), h);
    }
}

static void fp16_rounds_ties_to_even_between_every_pair(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        for (int neg = 0; neg < 2; neg++) {
            uint16_t lo = (uint16_t)(h | (neg ? 0x8000 : 0));
            uint16_t hi = (uint16_t)(lo + 1);
            float a = qt_fp16_to_fp32(lo), b = qt_fp16_to_fp32(hi);
            float mid = (float)(((double)a + b) / 2); /* exact: 12 bits */
            uint16_t even = (h & 1) ? hi : lo;
            assert_int_equal(qt_fp32_to_fp16(mid), even);
            assert_int_equal(qt_fp32_to_fp16(nextafterf(mid, b)), hi);
            assert_int_equal(qt_fp32_to_fp16(nextafterf(mid, a)), lo);
        }
    }
}

static void fp16_edge_cases_convert_exactly(void **state)
{
    (void)state;
    assert_int_equal(qt_fp32_to_fp16(0.0f), 0x0000);
    assert_int_equal(qt_fp32_to_fp16(-0.0f), 0x8000);
    assert_true(signbit(qt_fp16_to_fp32(0x8000)) && qt_fp16_to_fp32(0x8000) == 0.0f);
    assert_int_equal(qt_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(qt_fp32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(qt_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(qt_fp32_to_fp16(nextafterf(65520.0f, 0.0f)), 0x7bff);
    assert_int_equal(qt_fp32_to_fp16(65520.0f), 0x7c00); /* tie to even: up */
    assert_int_equal(qt_fp32_to_fp16(-65520.0f), 0xfc00);
    assert_int_equal(qt_fp32_to_fp16(1e6f), 0x7c00);
    assert_int_equal(qt_fp32_to_fp16(FLT_MAX), 0x7c00);
    assert_int_equal(qt_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(qt_fp32_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(qt_fp32_to_fp16(0x1p-14f), 0x0400);     /* smallest normal */
    assert_int_equal(qt_fp32_to_fp16(0x1p-24f), 0x0001);     /* smallest subnormal */
    assert_int_equal(qt_fp32_to_fp16(0x1p-25f), 0x0000);     /* tie: to even zero */
    assert_int_equal(qt_fp32_to_fp16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
    assert_int_equal(qt_fp32_to_fp16(0x3p-25f), 0x0002);     /* tie between 1 and 2 */
    assert_int_equal(qt_fp32_to_fp16(0x5p-25f), 0x0002);     /* tie between 2 and 3 */
    assert_int_equal(qt_fp32_to_fp16(-0x1p-26f), 0x8000);    /* underflow keeps sign */
    assert_int_equal(qt_fp32_to_fp16(0x1p-149f), 0x0000);    /* fp32 subnormal */
    assert_int_equal(qt_fp32_to_fp16(0x1.ffcp-15f), 0x0400); /* ties up into normal */
    assert_int_equal(qt_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00); /* tie, even below */
    assert_int_equal(qt_fp32_to_fp16(1.0f + 0x3p-11f), 0x3c02); /* tie, even above */
    assert_int_equal(qt_fp32_to_fp16(1.0f / 3.0f), 0x3555);
    assert_true(isnan(qt_fp16_to_fp32(qt_fp32_to_fp16(NAN))));
    assert_true(isnan(qt_fp16_to_fp32(qt_fp32_to_fp16(bits_f32(0x7f800001)))));
    assert_true(qt_fp16_to_fp32(0x7bff) == 65504.0f);
    assert_true(qt_fp16_to_fp32(0x0001) == 0x1p-24f);
    assert_true(qt_fp16_to_fp32(0x03ff) == 0x3ffp-24f);
    assert_true(isinf(qt_fp16_to_fp32(0x7c00)));
}

static void bf16_rounds_to_nearest_even_and_keeps_nan(void **state)
{
    (void)state;
    assert_int_equal(qt_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(qt_fp32_to_bf16(0.0f), 0x0000);
    assert_int_equal(qt_fp32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(qt_fp32_to_bf16(bits_f32(0x3f808000)), 0x3f80); /* tie, even below */
    assert_int_equal(qt_fp32_to_bf16(bits_f32(0x3f818000)), 0x3f82); /* tie, even above */
    assert_int_equal(qt_fp32_to_bf16(bits_f32(0x3f808001)), 0x3f81);
    assert_int_equal(qt_fp32_to_bf16(bits_f32(0x3f807fff)), 0x3f80);
    assert_int_equal(qt_fp32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(qt_fp32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(qt_fp32_to_bf16(FLT_MAX), 0x7f80); /* past the last midpoint */
    assert_int_equal(qt_fp32_to_bf16(bits_f32(0x7f7f7fff)), 0x7f7f);
    assert_int_equal(qt_fp32_to_bf16(0x1p-149f), 0x0000);
    /* a NaN whose payload sits only in the dropped bits must not become inf */
    uint16_t n1 = qt_fp32_to_bf16(bits_f32(0x7f800001));
    assert_true(isnan(qt_bf16_to_fp32(n1)));
    assert_true(isnan(qt_bf16_to_fp32(qt_fp32_to_bf16(bits_f32(0xffffffff)))));
    assert_true(isnan(qt_bf16_to_fp32(qt_fp32_to_bf16(NAN))));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qt_bf16_to_fp32((uint16_t)h);
        if (isnan(f))
            assert_true(isnan(qt_bf16_to_fp32(qt_fp32_to_bf16(f))));
        else
            assert_int_equal(qt_fp32_to_bf16(f), h);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--print-best-impl") == 0) {
        fputs(qt_impl_name(qt_best_impl()), stdout);
        return 0;
    }
    printf("# qt best implementation on this CPU: %s\n", qt_impl_name(qt_best_impl()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table_rows_have_ggml_geometry_and_activation_types),
        cmocka_unit_test(get_returns_null_for_unknown_and_storage_only_types),
        cmocka_unit_test(row_bytes_counts_blocks_and_rejects_partial_blocks),
        cmocka_unit_test(type_from_name_is_case_insensitive_and_rejects_unknown),
        cmocka_unit_test(x16_repacks_keep_every_value),
        cmocka_unit_test(no_simd_env_forces_scalar_rows),
        cmocka_unit_test(q8_0_block_layout_decodes_to_known_values),
        cmocka_unit_test(q8_1_block_layout_decodes_to_known_values),
        cmocka_unit_test(q4_0_block_layout_puts_low_nibbles_first),
        cmocka_unit_test(q4_1_block_layout_adds_the_min),
        cmocka_unit_test(q5_0_block_layout_takes_fifth_bit_from_qh),
        cmocka_unit_test(q5_1_block_layout_takes_fifth_bit_from_qh),
        cmocka_unit_test(f16_and_bf16_rows_decode_little_endian_halves),
        cmocka_unit_test(q8_0_quantizer_rounds_ties_away_from_zero),
        cmocka_unit_test(q4_0_quantizer_matches_ggml_reference),
        cmocka_unit_test(q4_1_quantizer_matches_ggml_reference),
        cmocka_unit_test(q5_0_quantizer_matches_ggml_reference),
        cmocka_unit_test(q5_1_quantizer_matches_ggml_reference),
        cmocka_unit_test(all_zero_block_gets_zero_scale_and_decodes_to_zero),
        cmocka_unit_test(roundtrip_error_is_bounded_for_every_type_and_impl),
        cmocka_unit_test(simd_from_float_is_bit_identical_to_scalar),
        cmocka_unit_test(simd_to_float_is_bit_identical_to_scalar),
        cmocka_unit_test(scalar_vec_dot_matches_dot_of_dequantized),
        cmocka_unit_test(simd_vec_dot_matches_scalar_and_dequantized),
        cmocka_unit_test(q8_0_dot_handles_weight_code_minus_128),
        cmocka_unit_test(fp16_roundtrips_every_bit_pattern),
        cmocka_unit_test(fp16_rounds_ties_to_even_between_every_pair),
        cmocka_unit_test(fp16_edge_cases_convert_exactly),
        cmocka_unit_test(bf16_rounds_to_nearest_even_and_keeps_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
