/*
 * test_quant_neon.c - what the AArch64 NEON rows of the qt_ table must do
 * beyond matching the scalar kernels on random data (test_quant_simd.c
 * does that for every SIMD row): pick the implementation the CPU's hwcaps
 * allow, honour the environment switches, and round exact ties the way the
 * scalar quantizers do (random data almost never lands on a tie).
 *
 * Built only for aarch64; CI runs it under qemu-aarch64 twice, on an
 * emulated core with the dot product extension and on one without, so both
 * the SDOT rows and their absence are seen. The selection test forks
 * children before this process has touched the table, because the CPU
 * probe runs once per process (qemu-user cannot re-exec the binary).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quant.h"

#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

static const qt_impl neon_impls[] = { QT_IMPL_NEON, QT_IMPL_NEON_DOTPROD };
#define N_NEON (sizeof neon_impls / sizeof neon_impls[0])

/* qt_best_impl() in a fresh child with one environment variable set (or
 * none), returned through the exit status. */
static qt_impl best_impl_in_child(const char *env_name)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        unsetenv("OUTPOST_NO_SIMD");
        unsetenv("OUTPOST_NO_DOTPROD");
        if (env_name)
            setenv(env_name, "1", 1);
        _exit((int)qt_best_impl());
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return (qt_impl)WEXITSTATUS(status);
}

/* Must stay the first test: the children inherit this process's probe. */
static void best_impl_follows_hwcaps_and_environment(void **state)
{
    (void)state;
    unsigned long hwcap = getauxval(AT_HWCAP);
    bool asimd = hwcap & HWCAP_ASIMD, dotprod = asimd && (hwcap & HWCAP_ASIMDDP);
    print_message("# hwcaps: asimd %d, asimddp %d\n", asimd, dotprod);
    qt_impl plain = asimd ? QT_IMPL_NEON : QT_IMPL_SCALAR;
    assert_int_equal(best_impl_in_child(NULL), dotprod ? QT_IMPL_NEON_DOTPROD : plain);
    assert_int_equal(best_impl_in_child("OUTPOST_NO_DOTPROD"), plain);
    assert_int_equal(best_impl_in_child("OUTPOST_NO_SIMD"), QT_IMPL_SCALAR);

    /* qt_get_impl hands out exactly the rows the CPU can run */
    assert_int_equal(qt_get_impl(QT_Q4_0, QT_IMPL_NEON) != NULL, asimd);
    assert_int_equal(qt_get_impl(QT_Q4_0, QT_IMPL_NEON_DOTPROD) != NULL, dotprod);
    assert_null(qt_get_impl(QT_Q4_0, QT_IMPL_AVX2));
    assert_null(qt_get_impl(QT_Q4_0, QT_IMPL_AVX512));
    assert_string_equal(qt_impl_name(QT_IMPL_NEON), "neon");
    assert_string_equal(qt_impl_name(QT_IMPL_NEON_DOTPROD), "neon-dotprod");
}

/* Every weight type with a dot has a NEON kernel in both NEON rows (none
 * falls back to scalar), and the SDOT row differs exactly in the 8-bit dots. */
static void neon_rows_replace_every_dot_and_activation_quantizer(void **state)
{
    (void)state;
    const qt_traits *plain_f32 = qt_get_impl(QT_F32, QT_IMPL_NEON);
    assert_non_null(plain_f32); /* every AArch64 Linux core has Advanced SIMD */
    static const qt_type dots[] = { QT_F32,  QT_F16,  QT_BF16, QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1,
                                    QT_Q8_0, QT_Q2_K, QT_Q3_K, QT_Q4_K, QT_Q5_K, QT_Q6_K };
    for (size_t k = 0; k < sizeof dots / sizeof dots[0]; k++) {
        const qt_traits *s = qt_get_impl(dots[k], QT_IMPL_SCALAR);
        const qt_traits *n = qt_get_impl(dots[k], QT_IMPL_NEON);
        const qt_traits *d = qt_get_impl(dots[k], QT_IMPL_NEON_DOTPROD);
        assert_non_null(s);
        assert_non_null(n);
        if (n->vec_dot == s->vec_dot)
            fail_msg("%s: the NEON row uses the scalar dot", qt_type_name(dots[k]));
        if (d && s->is_quantized && d->vec_dot == n->vec_dot)
            fail_msg("%s: the dotprod row does not use SDOT", qt_type_name(dots[k]));
        if (d && !s->is_quantized && d->vec_dot != n->vec_dot)
            fail_msg("%s: float dots should be shared by both NEON rows", qt_type_name(dots[k]));
    }
    static const qt_type quantizers[] = { QT_F16, QT_BF16, QT_Q8_0, QT_Q8_1, QT_Q8_K };
    for (size_t k = 0; k < sizeof quantizers / sizeof quantizers[0]; k++) {
        const qt_traits *s = qt_get_impl(quantizers[k], QT_IMPL_SCALAR);
        const qt_traits *n = qt_get_impl(quantizers[k], QT_IMPL_NEON);
        if (n->from_float == s->from_float)
            fail_msg("%s: the NEON row uses the scalar quantizer", qt_type_name(quantizers[k]));
    }
}

/* Runs t's quantizer of every NEON row on x (n elements) and checks the
 * bytes against want and against the scalar row. */
static void quantize_and_compare(qt_type t, const float *x, int64_t n, const unsigned char *want,
                                 size_t want_len)
{
    size_t bytes = qt_row_bytes(t, n);
    unsigned char *ref = malloc(bytes + 2), *got = malloc(bytes + 2);
    assert_non_null(ref);
    assert_non_null(got);
    qt_get_impl(t, QT_IMPL_SCALAR)->from_float(x, ref, n);
    for (size_t k = 0; k < want_len; k++)
        if (ref[k] != want[k])
            fail_msg("%s/scalar byte %zu: 0x%02x, expected 0x%02x", qt_type_name(t), k, ref[k],
                     want[k]);
    for (size_t m = 0; m < N_NEON; m++) {
        const qt_traits *r = qt_get_impl(t, neon_impls[m]);
        if (!r)
            continue;
        memset(got, 0xee, bytes + 2);
        r->from_float(x, got + 1, n); /* odd address, as rows inside files */
        assert_int_equal(got[0], 0xee);
        assert_int_equal(got[bytes + 1], 0xee);
        for (size_t k = 0; k < bytes; k++)
            if (got[1 + k] != ref[k])
                fail_msg("%s/%s byte %zu: 0x%02x, scalar 0x%02x", qt_type_name(t),
                         qt_impl_name(neon_impls[m]), k, got[1 + k], ref[k]);
    }
    free(ref);
    free(got);
}

/* amax 127 makes the scale exactly 1, so x / d = x and halves are ties. */
static const float tie_block[32] = { -127.0f, 2.5f,  -2.5f, 0.5f,  -0.5f, 1.5f,   -1.5f, 126.5f,
                                     -126.5f, 3.5f,  -3.5f, 0.49f, 4.5f,  -4.5f,  64.5f, -64.5f,
                                     NAN,     1e30f, 7.0f,  -7.0f, 0.0f,  -0.0f,  9.5f,  10.5f,
                                     11.5f,   12.5f, 13.5f, 14.5f, 15.5f, -16.5f, 17.5f, 18.5f };

static void q8_0_and_q8_1_quantizers_round_ties_away_from_zero(void **state)
{
    (void)state;
    /* 1e30 makes amax huge: use it only in the second block */
    float x[64];
    memcpy(x, tie_block, sizeof tie_block);
    x[16] = 1.0f;
    x[17] = 1.0f;
    memcpy(x + 32, tie_block, sizeof tie_block);
    static const int8_t want_codes[32] = { -127, 3,   -3, 1,  -1, 2,  -2,  127, -127, 4,  -4,
                                           0,    5,   -5, 65, -65, 1, 1,   7,   -7,   0,  0,
                                           10,   11,  12, 13, 14,  15, 16, -17, 18,   19 };
    unsigned char want[34] = { 0x00, 0x3c }; /* d = fp16 1.0 */
    for (int j = 0; j < 32; j++)
        want[2 + j] = (unsigned char)want_codes[j];
    quantize_and_compare(QT_Q8_0, x, 64, want, sizeof want);
    quantize_and_compare(QT_Q8_1, x, 64, NULL, 0);
}

static void q8_k_quantizer_rounds_ties_to_even(void **state)
{
    (void)state;
    float x[512];
    for (int i = 0; i < 256; i++)
        x[i] = tie_block[i % 32];
    x[16] = 1.0f;
    x[17] = 1.0f;
    for (int i = 32; i < 256; i++)
        if (i % 32 == 16 || i % 32 == 17)
            x[i] = -0.5f;
    for (int i = 256; i < 512; i++)
        x[i] = tie_block[i % 32] * 0.25f; /* NaN, a huge amax, no ties */
    /* d (fp32 1.0), then codes with halves to even: 2.5 -> 2, 3.5 -> 4 */
    static const int8_t want_codes[32] = { -127, 2,   -2, 0,  0,  2,  -2,  126, -126, 4,  -4,
                                           0,    4,   -4, 64, -64, 1, 1,   7,   -7,   0,  0,
                                           10,   10,  12, 12, 14,  14, 16, -16, 18,   18 };
    unsigned char want[4 + 32] = { 0x00, 0x00, 0x80, 0x3f };
    for (int j = 0; j < 32; j++)
        want[4 + j] = (unsigned char)want_codes[j];
    quantize_and_compare(QT_Q8_K, x, 512, want, sizeof want);
}

/* A row whose block scale is the largest finite fp16 and codes at both
 * extremes: the int32 sums and the float fold must not overflow or lose
 * the sign, on every NEON row, for the types whose activations are Q8_0. */
static void int8_dots_are_exact_on_extreme_codes(void **state)
{
    (void)state;
    enum { NB = 3 };
    unsigned char y[NB * 34];
    float yf[NB * 32];
    for (int j = 0; j < NB * 32; j++)
        yf[j] = j % 3 ? 127.0f : -127.0f;
    qt_get_impl(QT_Q8_0, QT_IMPL_SCALAR)->from_float(yf, y, NB * 32);
    /* Q4_0 with every nibble 0 (code -8) and 15 (code 7) alternating bytes */
    unsigned char x4[NB * 18];
    for (int b = 0; b < NB; b++) {
        x4[18 * b] = 0x00;
        x4[18 * b + 1] = 0x3c; /* d 1.0 */
        for (int j = 0; j < 16; j++)
            x4[18 * b + 2 + j] = j % 2 ? 0xf0 : 0x0f;
    }
    float want = 0.0f;
    qt_get_impl(QT_Q4_0, QT_IMPL_SCALAR)->vec_dot(NB * 32, &want, x4, y);
    assert_true(fabsf(want) > 1000.0f);
    for (size_t m = 0; m < N_NEON; m++) {
        const qt_traits *r = qt_get_impl(QT_Q4_0, neon_impls[m]);
        if (!r)
            continue;
        float got = 0.0f;
        r->vec_dot(NB * 32, &got, x4, y);
        assert_float_equal(got, want, fabsf(want) * 1e-6f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(best_impl_follows_hwcaps_and_environment),
        cmocka_unit_test(neon_rows_replace_every_dot_and_activation_quantizer),
        cmocka_unit_test(q8_0_and_q8_1_quantizers_round_ties_away_from_zero),
        cmocka_unit_test(q8_k_quantizer_rounds_ties_to_even),
        cmocka_unit_test(int8_dots_are_exact_on_extreme_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
