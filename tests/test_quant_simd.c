/*
 * test_quant_simd.c - every SIMD row of the qt_ table against the scalar
 * reference: dots, gemm tiles, quantizers and decoders, for each
 * implementation this CPU can run (AVX2, AVX-512, ... as qt_impl lists them;
 * the scalar row is the definition of correct).
 *
 * Data comes from a fixed-seed generator, so a failure reproduces. Rows sit
 * at odd addresses and odd strides, as rows inside model files do.
 *
 * Tolerances, and why:
 * - dot and gemm vs the scalar dot: the integer block sums are exact in both,
 *   only the float summation order differs, so
 *   |simd - scalar| <= 1e-5 * M + 1e-6, where M bounds the magnitude of the
 *   terms summed: sum |x_i y_i| over the dequantized rows, plus the min terms
 *   for the types with a min (|m * s| per block for Q4_1/Q5_1, and for the
 *   K-quants 2 * 63 * |dmin| * |y_i| per element, 63 being the largest
 *   6-bit min);
 * - quantizers (Q8_0, Q8_1, Q8_K, F16, BF16) and decoders must give the
 *   scalar bytes and floats exactly, for ordinary data and for NaN, inf and
 *   subnormals;
 * - a gemm tile writes its nr x nt outputs and nothing else;
 * - the matmul (mm_run, which tiles rows and tokens for the gemm kernels)
 *   gives bit-identical outputs for every thread count, and each output is
 *   within the dot tolerance of the scalar dot of its row and token;
 * - ops_swiglu and ops_exp (a vector exp where the CPU has AVX-512)
 *   against expf: within 4 ulp of the scalar swiglu per element (the vector
 *   exp is within 2 ulp of expf; the quotient and product add rounding),
 *   exp(x - sub) within 2 ulp, the sum within 1e-6 relative, and the ends
 *   of the range (overflow to inf, underflow to 0, NaN) as expf gives them.
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

#include "model_impl.h" /* mm_run and its job and weight structs */
#include "ops.h"
#include "pool.h"
#include "quant.h"

static const qt_type dot_types[] = { QT_F32,  QT_F16,  QT_BF16, QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1,
                                     QT_Q8_0, QT_Q2_K, QT_Q3_K, QT_Q4_K, QT_Q5_K, QT_Q6_K };
#define N_DOT_TYPES (sizeof dot_types / sizeof dot_types[0])

static const qt_type conv_types[] = { QT_F16,  QT_BF16, QT_Q8_0, QT_Q8_1, QT_Q8_K,
                                      QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1 };
#define N_CONV_TYPES (sizeof conv_types / sizeof conv_types[0])

/* Byte offsets of the fp16 scale d and of the fp16 min (m or dmin; -1: none)
 * inside one block, per the ggml block layouts. */
static void scale_fields(qt_type t, int *d_off, int *min_off)
{
    *min_off = -1;
    switch (t) {
    case QT_Q4_1:
    case QT_Q5_1:
    case QT_Q4_K:
    case QT_Q5_K:
        *d_off = 0;
        *min_off = 2;
        break;
    case QT_Q2_K:
        *d_off = 80;
        *min_off = 82;
        break;
    case QT_Q3_K:
        *d_off = 108;
        break;
    case QT_Q6_K:
        *d_off = 208;
        break;
    default:
        *d_off = 0;
        break;
    }
}

static bool is_k_quant(qt_type t)
{
    return t >= QT_Q2_K && t <= QT_Q6_K;
}

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1p-53;
}

static float rng_gauss(uint64_t *s)
{
    double u = rng_unit(s) + 1e-300;
    double v = rng_unit(s);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void wr16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static double rdh(const unsigned char *p)
{
    return qt_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8));
}

/* Gaussian data with awkward stretches: all zero, tiny, constant, outliers. */
static void fill_data(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        float g = rng_gauss(&s);
        switch ((i / 32) % 9) {
        case 3:
            x[i] = 0.0f;
            break;
        case 5:
            x[i] = g * 1e-6f;
            break;
        case 7:
            x[i] = i % 32 == 7 ? 50.0f * g : g;
            break;
        case 8:
            x[i] = 0.75f;
            break;
        default:
            x[i] = g;
        }
    }
}

/* Conversion specials: ties, subnormals, overflow, NaN, inf, random bits. */
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
        else if (i % 3 == 1)
            x[i] = (float)(int)(rng_next(&s) % 255) - 127.0f + 0.5f; /* ties after scaling */
        else
            x[i] = rng_gauss(&s) * (float)ldexp(1.0, (int)(rng_next(&s) % 60) - 30);
    }
}

/* Random bytes for every code, then sane fp16 scales (and mins). */
static void fill_random_blocks(qt_type t, unsigned char *q, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    size_t bytes = qt_row_bytes(t, n);
    for (size_t i = 0; i < bytes; i++)
        q[i] = (unsigned char)rng_next(&s);
    const qt_traits *r = qt_get_impl(t, QT_IMPL_SCALAR);
    int d_off, min_off;
    scale_fields(t, &d_off, &min_off);
    if (t == QT_Q6_KX16) { /* int8 scales (any bytes), then the two fp16 d of each x16 block */
        for (int64_t b = 0; b < n / 512; b++)
            for (int j = 0; j < 2; j++)
                wr16(q + 384 * (size_t)(n / 512) + 36 * (size_t)b + 32 + 2 * (size_t)j,
                     qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
        return;
    }
    for (int64_t b = 0; b < n / (int64_t)r->block_elems; b++) {
        unsigned char *blk = q + (size_t)b * r->block_bytes;
        if (t == QT_Q4_0X16 || t == QT_Q8_0X16 || t == QT_Q4_KX16) {
            /* 32 bytes of scales after the codes (even blocks) or before
             * them (odd): 16 fp16 scales, or Q4_K x16's d0, d1, dmin0, dmin1
             * and then 6-bit scales and mins, which any bytes are */
            for (int j = 0; j < (t == QT_Q4_KX16 ? 4 : 16); j++)
                wr16(blk + (b % 2 ? 0 : r->block_bytes - 32) + 2 * j,
                     qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
            continue;
        }
        wr16(blk + d_off, qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
        if (min_off >= 0)
            wr16(blk + min_off,
                 qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * (is_k_quant(t) ? 0.01f : 1.0f)));
    }
}

/* Implementations besides scalar that this build and CPU can run. */
static int simd_impls(qt_impl *out, int cap)
{
    int n = 0;
    for (int i = QT_IMPL_SCALAR + 1; strcmp(qt_impl_name((qt_impl)i), "?") != 0; i++)
        if (qt_get_impl(QT_F32, (qt_impl)i) && n < cap)
            out[n++] = (qt_impl)i;
    return n;
}

/* M of the file comment for x (type t) against y (its activation type). */
static double dot_magnitude(qt_type t, const unsigned char *xq, const unsigned char *yq, int64_t n,
                            const float *xd, const float *yd)
{
    const qt_traits *r = qt_get_impl(t, QT_IMPL_SCALAR);
    int d_off, min_off;
    scale_fields(t, &d_off, &min_off);
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m += fabs((double)xd[i] * yd[i]);
    if (t == QT_Q4_KX16) { /* the K-quant min term, dmin from the x16 block's scales */
        for (int64_t b = 0; b < n / 512; b++) {
            const unsigned char *sa = xq + (size_t)b * r->block_bytes + (b % 2 ? 0 : r->block_bytes - 32);
            for (int64_t i = 512 * b; i < 512 * (b + 1); i++)
                m += 2.0 * 63.0 * fabs(rdh(sa + 4 + 2 * ((i % 512) / 256))) * fabs(yd[i]);
        }
        return m;
    }
    if (min_off < 0 || !r->is_quantized)
        return m;
    for (int64_t b = 0; b < n / (int64_t)r->block_elems; b++) {
        const unsigned char *blk = xq + (size_t)b * r->block_bytes;
        double mn = fabs(rdh(blk + min_off));
        if (is_k_quant(t)) {
            int64_t be = r->block_elems;
            for (int64_t i = b * be; i < (b + 1) * be; i++)
                m += 2.0 * 63.0 * mn * fabs(yd[i]);
        } else {
            m += mn * fabs(rdh(yq + (size_t)b * 36 + 2)); /* Q8_1's s */
        }
    }
    return m;
}

/* Lengths to test: every block count up to 9, then odd sizes and one long row. */
static int lengths_for(qt_type t, int64_t *out)
{
    const qt_traits *r = qt_get_impl(t, QT_IMPL_SCALAR);
    int n = 0;
    if (!r->is_quantized) {
        for (int64_t k = 1; k <= 70; k++)
            out[n++] = k;
        static const int64_t more[] = { 127, 128, 129, 1000, 4096 + 5 };
        for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
            out[n++] = more[i];
        return n;
    }
    int64_t be = r->block_elems;
    for (int64_t k = 1; k <= 9; k++)
        out[n++] = k * be;
    static const int64_t blocks[] = { 15, 16, 17, 33, 64, 129 };
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        if (blocks[i] * be <= 17 * 256)
            out[n++] = blocks[i] * be;
    return n;
}

#define MAX_N 8192

typedef struct bufs {
    float *xf, *yf, *xd, *yd;
    unsigned char *xbuf, *ybuf;
} bufs;

static void bufs_alloc(bufs *b, size_t rows)
{
    b->xf = malloc(MAX_N * sizeof(float));
    b->yf = malloc(MAX_N * sizeof(float) * rows);
    b->xd = malloc(MAX_N * sizeof(float) * rows);
    b->yd = malloc(MAX_N * sizeof(float) * rows);
    b->xbuf = malloc((MAX_N * sizeof(float) + 64) * rows);
    b->ybuf = malloc((MAX_N * sizeof(float) + 64) * rows);
    assert_non_null(b->xf);
    assert_non_null(b->yf);
    assert_non_null(b->xd);
    assert_non_null(b->yd);
    assert_non_null(b->xbuf);
    assert_non_null(b->ybuf);
}

static void bufs_free(bufs *b)
{
    free(b->xf);
    free(b->yf);
    free(b->xd);
    free(b->yd);
    free(b->xbuf);
    free(b->ybuf);
}

/* Weights: quantized data (pass 0) or random codes (pass 1). Activations:
 * data quantized by the scalar activation quantizer. */
static void make_row(qt_type t, int pass, int64_t n, uint64_t seed, float *xf, unsigned char *xq)
{
    const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
    if (pass == 0 || !rs->is_quantized) {
        fill_data(xf, n, seed);
        rs->from_float(xf, xq, n);
    } else {
        fill_random_blocks(t, xq, n, seed);
    }
}

static void make_act(qt_type t, int64_t n, uint64_t seed, float *yf, unsigned char *yq)
{
    const qt_traits *ys = qt_get_impl(qt_get_impl(t, QT_IMPL_SCALAR)->vec_dot_type, QT_IMPL_SCALAR);
    fill_data(yf, n, seed);
    ys->from_float(yf, yq, n);
}

/* ---- dots ----------------------------------------------------------------- */

static void check_dots(qt_impl impl)
{
    bufs b;
    bufs_alloc(&b, 1);
    int64_t lens[128];
    for (size_t k = 0; k < N_DOT_TYPES; k++) {
        qt_type t = dot_types[k];
        const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        const qt_traits *rv = qt_get_impl(t, impl);
        if (!rs || !rs->vec_dot || !rv)
            continue;
        const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
        int nl = lengths_for(t, lens);
        /* F32 rows are float arrays; every other row may sit at any byte */
        for (size_t off = 0; off < (t == QT_F32 ? 1u : 3u); off++) {
            unsigned char *xq = b.xbuf + off, *yq = b.ybuf + 2 * off;
            for (int pass = 0; pass < (rs->is_quantized ? 2 : 1); pass++) {
                for (int li = 0; li < nl; li++) {
                    int64_t n = lens[li];
                    make_row(t, pass, n, 31 + (uint64_t)n + 7 * off, b.xf, xq);
                    make_act(t, n, 57 + (uint64_t)n, b.yf, yq);
                    rs->to_float(xq, b.xd, n);
                    ys->to_float(yq, b.yd, n);
                    double m = dot_magnitude(t, xq, yq, n, b.xd, b.yd);
                    float want = NAN, got = NAN;
                    rs->vec_dot(n, &want, xq, yq);
                    rv->vec_dot(n, &got, xq, yq);
                    double tol = 1e-5 * m + 1e-6;
                    if (!(fabs((double)got - want) <= tol))
                        fail_msg("%s/%s pass %d n %lld offset %zu: dot %.9g, scalar %.9g (tol %.3g)",
                                 qt_type_name(t), qt_impl_name(impl), pass, (long long)n, off, got, want,
                                 tol);
                    if (n >= 64)
                        assert_true(m > 0.0);
                }
            }
        }
    }
    bufs_free(&b);
}

static void simd_dots_match_scalar_for_every_type_length_and_offset(void **state)
{
    (void)state;
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    if (ni == 0) {
        skip();
        return;
    }
    for (int i = 0; i < ni; i++)
        check_dots(impls[i]);
}

/* Q8_0 weights may hold -128 (files from other tools), which the offset
 * and sign tricks of the 8-bit dots must still get exactly right. */
static void q8_0_dots_are_exact_for_weight_code_minus_128(void **state)
{
    (void)state;
    enum { NB = 5 };
    unsigned char x[NB * 34], y[NB * 34];
    float yf[NB * 32];
    for (int j = 0; j < NB * 32; j++)
        yf[j] = (float)((j * 37) % 255 - 127);
    qt_get_impl(QT_Q8_0, QT_IMPL_SCALAR)->from_float(yf, y, NB * 32);
    double want = 0.0;
    for (int b = 0; b < NB; b++) {
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
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    for (int i = 0; i < ni; i++) {
        const qt_traits *r = qt_get_impl(QT_Q8_0, impls[i]);
        for (int nb = 1; nb <= NB; nb++) {
            double w = 0.0;
            for (int b = 0; b < nb; b++) {
                long sumi = 0;
                for (int j = 0; j < 32; j++)
                    sumi += (long)(int8_t)x[34 * b + 2 + j] * (int8_t)y[34 * b + 2 + j];
                w += (double)sumi * rdh(y + 34 * b);
            }
            float s = 0.0f;
            r->vec_dot(nb * 32, &s, x, y);
            assert_float_equal(s, w, fabs(w) * 1e-6 + 1e-6);
        }
    }
}

/* ---- gemm tiles ------------------------------------------------------------ */

/* Whether check_gemm tries v rows (or tokens) of at most max: every size for
 * small tiles; for big ones (the 64 x 128 prompt tiles) the small sizes,
 * both sides of every multiple of 16 (the kernels' row groups and token
 * tiles) and the largest, which keeps the test's time near the small tiles'. */
static bool gemm_size_tried(int v, int max, bool big)
{
    return !big || v <= 18 || v >= max - 2 || v % 16 <= 1 || v % 16 == 15;
}

/* Every tile shape nr x nt up to the row's limits (sampled as above for big
 * tiles), against scalar dots of the same rows; outputs outside the tile
 * keep their sentinel. */
static void check_gemm(qt_impl impl, qt_type t)
{
    const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
    const qt_traits *rv = qt_get_impl(t, impl);
    if (!rv || !rv->gemm)
        return;
    const int R = rv->gemm_rows, T = rv->gemm_cols;
    assert_true(R >= 1 && T >= 1);
    const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
    const int64_t be = rs->block_elems;
    const int64_t lens[] = { be, 2 * be, 3 * be, (be == 32 ? 67 : 5) * be };
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const int64_t n = lens[li];
        /* odd strides and odd starting addresses */
        const size_t xs = qt_row_bytes(t, n) + 3, ys_ = qt_row_bytes(rs->vec_dot_type, n) + 5;
        unsigned char *xb = malloc(xs * (size_t)R + 8), *yb = malloc(ys_ * (size_t)T + 8);
        float *xf = malloc((size_t)n * sizeof(float)), *yf = malloc((size_t)n * sizeof(float));
        float *xd = malloc((size_t)n * sizeof(float) * (size_t)R);
        float *yd = malloc((size_t)n * sizeof(float) * (size_t)T);
        double *want = malloc(sizeof(double) * (size_t)R * (size_t)T);
        double *tol = malloc(sizeof(double) * (size_t)R * (size_t)T);
        const size_t ld = (size_t)R + 3;
        float *s = malloc(sizeof(float) * ld * (size_t)(T + 1));
        assert_true(xb && yb && xf && yf && xd && yd && want && tol && s);
        unsigned char *x = xb + 1, *y = yb + 3;
        for (int r = 0; r < R; r++) {
            make_row(t, r % 2, n, 1000 + (uint64_t)(r * 31) + (uint64_t)n, xf, x + (size_t)r * xs);
            rs->to_float(x + (size_t)r * xs, xd + (size_t)r * n, n);
        }
        for (int c = 0; c < T; c++) {
            make_act(t, n, 5000 + (uint64_t)(c * 17) + (uint64_t)n, yf, y + (size_t)c * ys_);
            ys->to_float(y + (size_t)c * ys_, yd + (size_t)c * n, n);
        }
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < T; c++) {
                float w;
                rs->vec_dot(n, &w, x + (size_t)r * xs, y + (size_t)c * ys_);
                want[r * T + c] = w;
                tol[r * T + c] = 1e-5 * dot_magnitude(t, x + (size_t)r * xs, y + (size_t)c * ys_, n,
                                                      xd + (size_t)r * n, yd + (size_t)c * n) +
                                 1e-6;
            }
        }
        const float sentinel = bits_f32(0x7fc0dead);
        const bool big = R * T > 2048;
        for (int nr = 1; nr <= R; nr++) {
            for (int nt = 1; nt <= T; nt++) {
                if (!gemm_size_tried(nr, R, big) || !gemm_size_tried(nt, T, big))
                    continue;
                for (size_t i = 0; i < ld * (size_t)(T + 1); i++)
                    s[i] = sentinel;
                rv->gemm(n, s, ld, x, xs, nr, y, ys_, nt);
                for (int c = 0; c <= T; c++) {
                    for (size_t r = 0; r < ld; r++) {
                        float g = s[(size_t)c * ld + r];
                        if (c < nt && (int)r < nr) {
                            double w = want[r * (size_t)T + (size_t)c];
                            if (!(fabs((double)g - w) <= tol[r * (size_t)T + (size_t)c]))
                                fail_msg("%s/%s gemm %dx%d n %lld: out[%d][%zu] %.9g, scalar %.9g",
                                         qt_type_name(t), qt_impl_name(impl), nr, nt, (long long)n, c, r, g,
                                         w);
                        } else if (f32_bits(g) != f32_bits(sentinel)) {
                            fail_msg("%s/%s gemm %dx%d n %lld wrote out[%d][%zu] outside its tile",
                                     qt_type_name(t), qt_impl_name(impl), nr, nt, (long long)n, c, r);
                        }
                    }
                }
            }
        }
        free(xb);
        free(yb);
        free(xf);
        free(yf);
        free(xd);
        free(yd);
        free(want);
        free(tol);
        free(s);
    }
}

static void gemm_tiles_of_every_shape_match_scalar_dots(void **state)
{
    (void)state;
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    int tested = 0;
    for (int i = 0; i < ni; i++) {
        for (int t = 0; t < QT_TYPE_COUNT; t++) {
            const qt_traits *r = qt_get_impl((qt_type)t, impls[i]);
            if (r && r->gemm) {
                check_gemm(impls[i], (qt_type)t);
                tested++;
            }
        }
    }
    if (tested == 0)
        skip();
}

/* A decode call (one token) over rows longer than the activation chunk the
 * gemm kernels prepare at a time (256 blocks of 32 or 32 super-blocks in
 * the AVX-512 ones), so rows are summed over several passes. */
static void gemm_decode_of_long_rows_matches_scalar_dots(void **state)
{
    (void)state;
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    int tested = 0;
    for (int i = 0; i < ni; i++) {
        for (int t = 0; t < QT_TYPE_COUNT; t++) {
            const qt_traits *rv = qt_get_impl((qt_type)t, impls[i]);
            if (!rv || !rv->gemm)
                continue;
            const qt_traits *rs = qt_get_impl((qt_type)t, QT_IMPL_SCALAR);
            const qt_traits *ys = qt_get_impl(rs->vec_dot_type, QT_IMPL_SCALAR);
            const int64_t n = rs->block_elems == 32 ? 32 * 601 : rs->block_elems == 256 ? 256 * 75 : 512 * 37;
            const int nr = 3;
            const size_t xs = qt_row_bytes((qt_type)t, n) + 1, yb = qt_row_bytes(rs->vec_dot_type, n);
            unsigned char *x = malloc(xs * nr), *y = malloc(yb);
            float *xf = malloc((size_t)n * sizeof(float)), *yf = malloc((size_t)n * sizeof(float));
            float *xd = malloc((size_t)n * sizeof(float)), *yd = malloc((size_t)n * sizeof(float));
            float s[3];
            assert_true(x && y && xf && yf && xd && yd);
            make_act((qt_type)t, n, 77, yf, y);
            ys->to_float(y, yd, n);
            for (int r = 0; r < nr; r++)
                make_row((qt_type)t, r % 2, n, 900 + (uint64_t)r, xf, x + (size_t)r * xs);
            rv->gemm(n, s, 0, x, xs, nr, y, yb, 1);
            for (int r = 0; r < nr; r++) {
                float want;
                rs->vec_dot(n, &want, x + (size_t)r * xs, y);
                rs->to_float(x + (size_t)r * xs, xd, n);
                double tol = 1e-5 * dot_magnitude((qt_type)t, x + (size_t)r * xs, y, n, xd, yd) + 1e-6;
                if (!(fabs((double)s[r] - want) <= tol))
                    fail_msg("%s/%s decode of %lld elements, row %d: %.9g, scalar %.9g",
                             qt_type_name((qt_type)t), qt_impl_name(impls[i]), (long long)n, r, s[r], want);
            }
            free(x);
            free(y);
            free(xf);
            free(yf);
            free(xd);
            free(yd);
            tested++;
        }
    }
    if (tested == 0)
        skip();
}

/* The scalar rows have no gemm (callers loop over vec_dot there), and every
 * SIMD row with one declares a usable tile. */
static void gemm_rows_declare_their_tile(void **state)
{
    (void)state;
    for (int t = 0; t < QT_TYPE_COUNT; t++) {
        const qt_traits *r = qt_get_impl((qt_type)t, QT_IMPL_SCALAR);
        if (r)
            assert_null(r->gemm);
    }
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    for (int i = 0; i < ni; i++) {
        for (int t = 0; t < QT_TYPE_COUNT; t++) {
            const qt_traits *r = qt_get_impl((qt_type)t, impls[i]);
            if (r && r->gemm) {
                assert_non_null(r->vec_dot);
                assert_true(r->gemm_rows >= 1 && r->gemm_cols >= 1);
            }
        }
    }
}

/* ---- the matmul on top of the tiles ------------------------------------- */

/* Jobs whose weights meet different activations (Q4_0: Q8_0, Q4_K: Q8_K)
 * cannot share one quantized input: mm_run says so and computes nothing. */
static void matmul_rejects_jobs_of_different_activation_types(void **state)
{
    (void)state;
    const int64_t ne0 = 256;
    unsigned char a[18 * 8] = { 0 }, b[144] = { 0 }; /* one row of Q4_0 and of Q4_K */
    eng_w wa = { .name = "blk.0.attn_q.weight", .data = a, .type = QT_Q4_0, .ne0 = ne0, .ne1 = 1,
                 .row_bytes = sizeof a };
    eng_w wb = { .name = "blk.0.attn_v.weight", .data = b, .type = QT_Q4_K, .ne0 = ne0, .ne1 = 1,
                 .row_bytes = sizeof b };
    float x[256] = { 0 }, ya = 7.0f, yb = 7.0f;
    mm_job jobs[2] = { { &wa, &ya }, { &wb, &yb } };
    pool *p;
    char err[256];
    assert_int_equal(pool_new(&p, 2, err), 0);
    mm_scratch sc = { 0 };
    assert_false(mm_can_share(&wa, &wb));
    assert_int_equal(mm_run(p, &sc, jobs, 2, x, 1, err), ENG_EUSAGE);
    assert_non_null(strstr(err, "blk.0.attn_v.weight"));
    assert_non_null(strstr(err, "activation type"));
    assert_true(ya == 7.0f && yb == 7.0f);
    mm_scratch_release(&sc);
    pool_free(p);
}

/* Q4_0, Q8_0 and K-quant weights (several jobs of odd heights, as the
 * attention projections are; of mixed types, as Q4_K_M's Q4_K attn_q and
 * attn_k beside a Q6_K attn_v are) times batches of 1, 3, 17 and 37
 * tokens, with 1, 2, 3 and 5 threads. */
static void matmul_is_thread_count_invariant_and_matches_scalar(void **state)
{
    (void)state;
    enum { N_JOBS = 3, MAX_TOK = 37 };
    static const qt_type cases[][N_JOBS] = {
        { QT_Q4_0, QT_Q4_0, QT_Q4_0 }, { QT_Q8_0, QT_Q8_0, QT_Q8_0 }, { QT_Q4_K, QT_Q4_K, QT_Q4_K },
        { QT_Q6_K, QT_Q6_K, QT_Q6_K }, { QT_F16, QT_F16, QT_F16 },     { QT_Q4_K, QT_Q4_K, QT_Q6_K },
        { QT_Q4_KX16, QT_Q4_KX16, QT_Q6_KX16 },
    };
    static const int32_t batches[] = { 1, 3, 17, 37 };
    static const int64_t heights[] = { 130, 67, 9 };
    const int64_t ne0 = 512;
    for (size_t ti = 0; ti < sizeof cases / sizeof cases[0]; ti++) {
        const qt_type t = cases[ti][N_JOBS - 1]; /* named in messages */
        const qt_traits *ys = qt_get_impl(qt_get_impl(t, QT_IMPL_SCALAR)->vec_dot_type, QT_IMPL_SCALAR);
        const size_t yb = qt_row_bytes(ys->type, ne0);
        const qt_traits *rsj[N_JOBS];
        size_t rbj[N_JOBS];
        eng_w w[N_JOBS];
        unsigned char *wdata[N_JOBS];
        float *xf = malloc((size_t)MAX_TOK * ne0 * sizeof(float));
        float *row = malloc((size_t)ne0 * sizeof(float));
        unsigned char *yq = malloc(yb);
        assert_true(xf && row && yq);
        fill_data(xf, MAX_TOK * ne0, 4242 + ti);
        for (int j = 0; j < N_JOBS; j++) {
            const qt_traits *rs = rsj[j] = qt_get_impl(cases[ti][j], QT_IMPL_SCALAR);
            const size_t rb = rbj[j] = qt_row_bytes(cases[ti][j], ne0);
            assert_int_equal(rs->vec_dot_type, ys->type);
            wdata[j] = malloc(rb * (size_t)heights[j]);
            assert_non_null(wdata[j]);
            for (int64_t r = 0; r < heights[j]; r++) {
                fill_data(row, ne0, 77 + (uint64_t)(j * 1000 + r));
                rs->from_float(row, wdata[j] + (size_t)r * rb, ne0);
            }
            w[j] = (eng_w){ .id = j,
                            .name = "w",
                            .data = wdata[j],
                            .type = cases[ti][j],
                            .ne0 = ne0,
                            .ne1 = heights[j],
                            .row_bytes = rb };
        }
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
            const int32_t n = batches[bi];
            float *first[N_JOBS] = { NULL };
            for (int nth = 1; nth <= 5; nth += nth == 3 ? 2 : 1) {
                pool *p;
                char err[256];
                assert_int_equal(pool_new(&p, nth, err), 0);
                mm_scratch sc = { 0 };
                mm_job jobs[N_JOBS];
                float *out[N_JOBS];
                for (int j = 0; j < N_JOBS; j++) {
                    out[j] = malloc(sizeof(float) * (size_t)n * (size_t)heights[j]);
                    assert_non_null(out[j]);
                    jobs[j] = (mm_job){ &w[j], out[j] };
                }
                assert_int_equal(mm_run(p, &sc, jobs, N_JOBS, xf, n, err), 0);
                for (int j = 0; j < N_JOBS; j++) {
                    if (!first[j]) {
                        first[j] = out[j];
                        continue;
                    }
                    if (memcmp(first[j], out[j], sizeof(float) * (size_t)n * (size_t)heights[j]) != 0)
                        fail_msg("%s: %d tokens, %d threads: output differs from 1 thread", qt_type_name(t),
                                 n, nth);
                    free(out[j]);
                }
                mm_scratch_release(&sc);
                pool_free(p);
            }
            /* every output against the scalar dot of the same quantized rows */
            float *xd = malloc((size_t)ne0 * sizeof(float)), *yd = malloc((size_t)ne0 * sizeof(float));
            assert_true(xd && yd);
            for (int32_t tok = 0; tok < n; tok++) {
                ys->from_float(xf + (size_t)tok * ne0, yq, ne0);
                ys->to_float(yq, yd, ne0);
                for (int j = 0; j < N_JOBS; j++) {
                    const qt_traits *rs = rsj[j];
                    for (int64_t r = 0; r < heights[j]; r++) {
                        const unsigned char *wr = wdata[j] + (size_t)r * rbj[j];
                        float want;
                        rs->vec_dot(ne0, &want, wr, yq);
                        rs->to_float(wr, xd, ne0);
                        double tol = 1e-5 * dot_magnitude(cases[ti][j], wr, yq, ne0, xd, yd) + 1e-6;
                        float got = first[j][(size_t)tok * (size_t)heights[j] + (size_t)r];
                        if (!(fabs((double)got - want) <= tol))
                            fail_msg("%s: %d tokens: job %d row %lld token %d: %.9g, scalar %.9g",
                                     qt_type_name(t), n, j, (long long)r, tok, got, want);
                    }
                }
            }
            free(xd);
            free(yd);
            for (int j = 0; j < N_JOBS; j++)
                free(first[j]);
        }
        for (int j = 0; j < N_JOBS; j++)
            free(wdata[j]);
        free(xf);
        free(row);
        free(yq);
    }
}

/* ---- quantizers and decoders -------------------------------------------- */

static void simd_quantizers_are_bit_identical_to_scalar(void **state)
{
    (void)state;
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    if (ni == 0) {
        skip();
        return;
    }
    const int64_t n = 8 * 256 + 256;
    float *x = malloc(n * sizeof *x);
    unsigned char *a = malloc(n * sizeof(float) + 8);
    unsigned char *b = malloc(n * sizeof(float) + 8);
    assert_true(x && a && b);
    for (int i = 0; i < ni; i++) {
        for (int pass = 0; pass < 3; pass++) {
            if (pass == 0)
                fill_data(x, n, 77);
            else
                fill_specials(x, n, 78 + (uint64_t)pass);
            for (size_t k = 0; k < N_CONV_TYPES; k++) {
                qt_type t = conv_types[k];
                const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
                const qt_traits *rv = qt_get_impl(t, impls[i]);
                if (!rs || !rv || !rs->from_float || rs->from_float == rv->from_float)
                    continue;
                for (int64_t len = 1; len <= n; len = len * 2 + 1) {
                    int64_t nn = len - len % (int64_t)rs->block_elems;
                    if (nn == 0)
                        continue;
                    size_t bytes = qt_row_bytes(t, nn);
                    for (size_t off = 1; off <= 3; off += 2) {
                        memset(a, 0xa5, bytes + off + 2);
                        memset(b, 0xa5, bytes + off + 2);
                        rs->from_float(x, a + off, nn);
                        rv->from_float(x, b + off, nn);
                        for (size_t j = 0; j < bytes + off + 2; j++)
                            if (a[j] != b[j])
                                fail_msg("%s/%s pass %d n %lld: byte %zu differs (scalar 0x%02x, "
                                         "simd 0x%02x)",
                                         qt_type_name(t), qt_impl_name(impls[i]), pass, (long long)nn, j,
                                         a[j], b[j]);
                    }
                }
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

static void simd_decoders_are_bit_identical_to_scalar(void **state)
{
    (void)state;
    qt_impl impls[8];
    int ni = simd_impls(impls, 8);
    if (ni == 0) {
        skip();
        return;
    }
    /* every fp16/bf16 bit pattern, then random bytes for the block types */
    const int64_t n = 65536 + 2 * 256;
    unsigned char *src = malloc(4 * (size_t)n + 1);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    assert_true(src && a && b);
    uint64_t s = 5;
    for (int64_t i = 0; i < 2 * n; i++)
        wr16(src + 1 + 2 * i, (uint16_t)(i < 65536 ? (uint64_t)i : rng_next(&s)));
    for (int i = 0; i < ni; i++) {
        for (size_t k = 0; k < N_CONV_TYPES + N_DOT_TYPES; k++) {
            qt_type t = k < N_CONV_TYPES ? conv_types[k] : dot_types[k - N_CONV_TYPES];
            const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
            const qt_traits *rv = qt_get_impl(t, impls[i]);
            if (!rs || !rv || rs->to_float == rv->to_float)
                continue;
            for (int64_t len = 1; len <= n; len = len * 3 + 1) {
                int64_t nn = len - len % (int64_t)rs->block_elems;
                if (nn == 0)
                    continue;
                if (rs->is_quantized)
                    fill_random_blocks(t, src + 1, nn, 9 + (uint64_t)len);
                memset(b, 0, (size_t)n * sizeof *b);
                rs->to_float(src + 1, a, nn);
                rv->to_float(src + 1, b, nn);
                for (int64_t j = 0; j < nn; j++)
                    if (f32_bits(a[j]) != f32_bits(b[j]))
                        fail_msg("%s/%s n %lld element %lld: scalar %08x simd %08x", qt_type_name(t),
                                 qt_impl_name(impls[i]), (long long)nn, (long long)j, f32_bits(a[j]),
                                 f32_bits(b[j]));
                if (nn < n)
                    assert_int_equal(f32_bits(b[nn]), 0); /* nothing past the end */
            }
        }
    }
    free(src);
    free(a);
    free(b);
}

/* Distance in units in the last place between two finite floats of one sign
 * (0 when equal, also for two infinities). */
static uint32_t ulp_diff(float a, float b)
{
    if (a == b)
        return 0;
    if (isnan(a) && isnan(b))
        return 0;
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if ((ia < 0) != (ib < 0))
        return fabsf(a - b) < 1e-37f ? 0 : UINT32_MAX;
    return ia > ib ? (uint32_t)(ia - ib) : (uint32_t)(ib - ia);
}

static void vector_exp_kernels_match_expf(void **state)
{
    (void)state;
    enum { N = 4099 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(a);
    assert_non_null(b);
    uint64_t st = 12345;
    for (int i = 0; i < N; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(st >> 11) / 9007199254740992.0; /* [0, 1) */
        x[i] = (float)((u - 0.5) * (i < 4000 ? 40.0 : 400.0)); /* the tail spans the range ends */
        y[i] = (float)(1.0 - u * 2.0);
    }
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 88.0f;
    x[3] = -88.0f;
    x[4] = 120.0f;
    x[5] = -120.0f;
    x[6] = NAN;
    float *whole = malloc(N * sizeof *whole);
    assert_non_null(whole);
    for (int i = 0; i < N; i++)
        whole[i] = (i == 6 ? 0.0f : fminf(x[i], 80.0f)) - 3.0f;
    ops_exp(whole, N);
    for (int n = 1; n <= N; n = n < 40 ? n + 1 : n * 3) {
        memcpy(a, x, (size_t)n * sizeof *a);
        memcpy(b, x, (size_t)n * sizeof *b);
        ops_swiglu_ref(a, y, n);
        ops_swiglu(b, y, n);
        for (int i = 0; i < n; i++)
            if (ulp_diff(a[i], b[i]) > 4)
                fail_msg("swiglu n %d x[%d] = %g: expf %.9g vector %.9g", n, i, (double)x[i],
                         (double)a[i], (double)b[i]);
        /* exp(x - 3) for the finite, non-overflowing scores attention has;
         * each element's bits the same whatever n (attention relies on it) */
        for (int i = 0; i < n; i++) {
            b[i] = (i == 6 ? 0.0f : fminf(x[i], 80.0f)) - 3.0f;
            a[i] = expf(b[i]);
        }
        ops_exp(b, n);
        for (int i = 0; i < n; i++) {
            if (ulp_diff(a[i], b[i]) > 2 && !(a[i] < 1e-37f && b[i] < 1e-37f))
                fail_msg("exp n %d x[%d] = %g: expf %.9g vector %.9g", n, i, (double)x[i],
                         (double)a[i], (double)b[i]);
            if (memcmp(&b[i], &whole[i], sizeof(float)) != 0)
                fail_msg("exp n %d x[%d]: %.9g, but %.9g in a call of %d", n, i, (double)b[i],
                         (double)whole[i], N);
        }
    }
    free(whole);
    free(x);
    free(y);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(simd_dots_match_scalar_for_every_type_length_and_offset),
        cmocka_unit_test(q8_0_dots_are_exact_for_weight_code_minus_128),
        cmocka_unit_test(gemm_rows_declare_their_tile),
        cmocka_unit_test(gemm_tiles_of_every_shape_match_scalar_dots),
        cmocka_unit_test(gemm_decode_of_long_rows_matches_scalar_dots),
        cmocka_unit_test(matmul_is_thread_count_invariant_and_matches_scalar),
        cmocka_unit_test(matmul_rejects_jobs_of_different_activation_types),
        cmocka_unit_test(simd_quantizers_are_bit_identical_to_scalar),
        cmocka_unit_test(simd_decoders_are_bit_identical_to_scalar),
        cmocka_unit_test(vector_exp_kernels_match_expf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
