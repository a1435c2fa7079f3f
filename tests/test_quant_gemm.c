/*
 * test_quant_gemm.c - the cache-blocked prompt gemm (quant_avx512_gemm.c)
 * against the scalar reference and against the decode path, on random data.
 *
 * For Q4_0, Q8_0 (Q8_0 activations), Q4_K and Q6_K (Q8_K activations): the
 * AVX-512 row's gemm is called the way matmul.c calls it for a prompt (up to
 * gemm_rows rows x gemm_cols tokens per call), with ragged sizes (rows not a
 * multiple of the 16-row groups, tokens not a multiple of the 8-token
 * register tiles, the 8-token threshold below which it hands the call to the
 * older tiles) and rows long enough to cross several of its chunks (2048 and
 * 2080 elements: 65 blocks of 32 cross two 32-block chunks with one left;
 * 2304 = 9 super-blocks cross two 4-super-block chunks with one left).
 *
 * Tolerance (as test_quant_simd.c documents): every integer block sum is
 * exact in both, only the float summation order differs, so
 * |gemm - scalar| <= 1e-5 * M + 1e-6, M = sum |x_i y_i| over the dequantized
 * row and activation plus, for Q4_K, 2 * 63 * |dmin| * |y_i| per element.
 * The same bound holds against the decode kernel (the row's gemm with one
 * token, i.e. quant_avx512.c's gemv), which is what "matches the gemv path"
 * means. Each output outside the asked tile must keep its sentinel. The test
 * is skipped on CPUs without AVX-512 VNNI.
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

#include "quant.h"

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Uniform in [-1, 1) with an occasional outlier, as activations have. */
static void fill(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        float v = (float)((double)(rng_next(&s) >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
        x[i] = (rng_next(&s) % 97 == 0) ? v * 8.0f : v;
    }
}

typedef struct gemm_case {
    qt_type type;
    int64_t n;
} gemm_case;

static const gemm_case cases[] = {
    { QT_Q4_0, 2048 }, { QT_Q4_0, 2080 }, { QT_Q8_0, 2080 },
    { QT_Q4_K, 2304 }, { QT_Q6_K, 2304 }, { QT_Q4_K, 256 },
    { QT_Q4_0X16, 2048 }, { QT_Q4_0X16, 5632 }, { QT_Q8_0X16, 2048 }, { QT_Q8_0X16, 5632 },
    { QT_Q4_KX16, 2048 }, { QT_Q4_KX16, 5632 }, { QT_Q6_KX16, 2048 }, { QT_Q6_KX16, 5632 },
};

static void check_case(const gemm_case *gc)
{
    const qt_type t = gc->type;
    const int64_t n = gc->n;
    const qt_traits *rv = qt_get_impl(t, QT_IMPL_AVX512);
    const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
    assert_non_null(rv);
    assert_non_null(rv->gemm);
    const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
    const int R = rv->gemm_rows, T = rv->gemm_cols;
    assert_true(R >= 16 && T >= 16);
    const size_t xs = qt_row_bytes(t, n) + 1; /* odd stride, as inside a file */
    const size_t yst = qt_row_bytes(rs->vec_dot_type, n) + 3;
    unsigned char *xb = malloc(xs * (size_t)R + 4), *yb = malloc(yst * (size_t)T + 4);
    float *f = malloc((size_t)n * sizeof(float));
    float *xd = malloc((size_t)n * sizeof(float) * (size_t)R);
    float *yd = malloc((size_t)n * sizeof(float) * (size_t)T);
    double *want = malloc(sizeof(double) * (size_t)R * (size_t)T);
    double *tol = malloc(sizeof(double) * (size_t)R * (size_t)T);
    const size_t ld = (size_t)R + 5;
    float *s = malloc(sizeof(float) * ld * (size_t)(T + 1));
    assert_true(xb && yb && f && xd && yd && want && tol && s);
    unsigned char *x = xb + 1, *y = yb + 3;
    for (int r = 0; r < R; r++) {
        fill(f, n, 100 + (uint64_t)r);
        rs->from_float(f, x + (size_t)r * xs, n);
        rs->to_float(x + (size_t)r * xs, xd + (size_t)r * n, n);
    }
    for (int c = 0; c < T; c++) {
        fill(f, n, 9000 + (uint64_t)c);
        ys->from_float(f, y + (size_t)c * yst, n);
        ys->to_float(y + (size_t)c * yst, yd + (size_t)c * n, n);
    }
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < T; c++) {
            float w;
            rs->vec_dot(n, &w, x + (size_t)r * xs, y + (size_t)c * yst);
            want[(size_t)r * T + c] = w;
            double m = 0.0;
            const float *xr = xd + (size_t)r * n, *yr = yd + (size_t)c * n;
            for (int64_t i = 0; i < n; i++)
                m += fabs((double)xr[i] * yr[i]);
            if (t == QT_Q4_K) {
                /* dmin per super-block: the first two bytes after d */
                for (int64_t sb = 0; sb < n / 256; sb++) {
                    uint16_t h;
                    memcpy(&h, x + (size_t)r * xs + (size_t)sb * qt_row_bytes(t, 256) + 2, 2);
                    double dmin = fabs((double)qt_fp16_to_fp32(h));
                    for (int64_t i = 256 * sb; i < 256 * sb + 256; i++)
                        m += 2.0 * 63.0 * dmin * fabs((double)yr[i]);
                }
            }
            tol[(size_t)r * T + c] = 1e-5 * m + 1e-6;
        }
    }
    /* shapes: ragged rows and tokens around the kernel's groups and tiles */
    const int rows[] = { 1, 15, 16, 17, 33, R - 1, R };
    const int toks[] = { 1, 7, 8, 9, 15, 17, 63, T - 1, T };
    const float sentinel = -12345.0f;
    for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
        for (size_t ti = 0; ti < sizeof toks / sizeof toks[0]; ti++) {
            const int nr = rows[ri], nt = toks[ti];
            for (size_t i = 0; i < ld * (size_t)(T + 1); i++)
                s[i] = sentinel;
            rv->gemm(n, s, ld, x, xs, nr, y, yst, nt);
            for (int c = 0; c <= T; c++) {
                for (size_t r = 0; r < ld; r++) {
                    const float g = s[(size_t)c * ld + r];
                    if (c < nt && (int)r < nr) {
                        const double w = want[r * (size_t)T + (size_t)c];
                        if (!(fabs((double)g - w) <= tol[r * (size_t)T + (size_t)c]))
                            fail_msg("%s n %lld tile %dx%d: out[%d][%zu] = %.9g, scalar %.9g",
                                     qt_type_name(t), (long long)n, nr, nt, c, r, g, w);
                    } else if (g != sentinel) {
                        fail_msg("%s n %lld tile %dx%d wrote out[%d][%zu] outside its tile",
                                 qt_type_name(t), (long long)n, nr, nt, c, r);
                    }
                }
            }
        }
    }
    /* the full tile against the decode path, token by token */
    rv->gemm(n, s, ld, x, xs, R, y, yst, T);
    float *g1 = malloc(sizeof(float) * (size_t)R);
    assert_non_null(g1);
    for (int c = 0; c < T; c += 5) {
        rv->gemm(n, g1, 0, x, xs, R, y + (size_t)c * yst, yst, 1);
        for (int r = 0; r < R; r++)
            if (!(fabs((double)s[(size_t)c * ld + r] - g1[r]) <= tol[(size_t)r * T + c]))
                fail_msg("%s n %lld: prompt out[%d][%d] = %.9g, decode path %.9g", qt_type_name(t),
                         (long long)n, c, r, s[(size_t)c * ld + r], g1[r]);
    }
    free(g1);
    free(xb);
    free(yb);
    free(f);
    free(xd);
    free(yd);
    free(want);
    free(tol);
    free(s);
}

static void blocked_gemm_matches_scalar_and_decode(void **state)
{
    (void)state;
    if (!qt_get_impl(QT_Q4_0, QT_IMPL_AVX512))
        skip();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i]);
}

/* Codes at their extremes (every weight and activation at full scale), where
 * a lost carry or an int16 overflow would show. */
static void blocked_gemm_is_exact_at_extreme_codes(void **state)
{
    (void)state;
    if (!qt_get_impl(QT_Q4_0, QT_IMPL_AVX512))
        skip();
    const qt_type types[] = { QT_Q4_0, QT_Q8_0, QT_Q4_K, QT_Q6_K, QT_Q4_0X16, QT_Q8_0X16, QT_Q4_KX16, QT_Q6_KX16 };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const qt_type t = types[ti];
        const qt_traits *rv = qt_get_impl(t, QT_IMPL_AVX512), *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
        const int64_t n = 512;
        const int nr = 20, nt = 12;
        const size_t xs = qt_row_bytes(t, n), yst = qt_row_bytes(rs->vec_dot_type, n);
        unsigned char *x = malloc(xs * nr), *y = malloc(yst * nt);
        float *f = malloc(sizeof(float) * n), *s = malloc(sizeof(float) * nr * nt);
        assert_true(x && y && f && s);
        for (int r = 0; r < nr; r++) {
            for (int64_t i = 0; i < n; i++)
                f[i] = (r % 2 ? -1.0f : 1.0f) * (i % 3 == 0 ? -1.0f : 1.0f);
            rs->from_float(f, x + (size_t)r * xs, n);
        }
        for (int c = 0; c < nt; c++) {
            for (int64_t i = 0; i < n; i++)
                f[i] = (c % 2 ? -1.0f : 1.0f) * (i % 2 ? 1.0f : -1.0f) * (i % 5 == 0 ? -1.0f : 1.0f);
            ys->from_float(f, y + (size_t)c * yst, n);
        }
        rv->gemm(n, s, (size_t)nr, x, xs, nr, y, yst, nt);
        for (int c = 0; c < nt; c++) {
            for (int r = 0; r < nr; r++) {
                float w;
                rs->vec_dot(n, &w, x + (size_t)r * xs, y + (size_t)c * yst);
                if (!(fabs((double)s[c * nr + r] - w) <= 1e-5 * 2.0 * (double)n + 1e-6))
                    fail_msg("%s extreme codes: out[%d][%d] = %.9g, scalar %.9g", qt_type_name(t), c, r,
                             s[c * nr + r], w);
            }
        }
        free(x);
        free(y);
        free(f);
        free(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blocked_gemm_matches_scalar_and_decode),
        cmocka_unit_test(blocked_gemm_is_exact_at_extreme_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
