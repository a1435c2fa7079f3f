/*
 * test_quant_k.c - the K-quant rows of the qt_ table (Q2_K ... Q6_K and the
 * Q8_K activations): block layouts against the ggml spec, the quantizers'
 * accuracy, and every SIMD kernel against the scalar reference.
 *
 * Every check runs for each implementation this build names and this CPU
 * runs (scalar always; AVX2 and any later SIMD rows when present). Data comes
 * from a fixed-seed generator, so a failure reproduces. Rows sit at odd
 * addresses in buffers of exactly their size, so under ASan a kernel that
 * reads past a block or relies on alignment fails here.
 *
 * Tolerances, and why:
 * - layouts: hand-built blocks decode exactly (every product involved is
 *   exact in binary32);
 * - quantizers: every code is the nearest grid value for the scales the
 *   block stores (error at most half a step, plus 1e-5 of it for the float
 *   division, unless the code is clamped at the end of its range), and the
 *   RMS error on Gaussian data is below a per-type ceiling and strictly
 *   ordered Q6_K < Q5_K < Q4_K < Q3_K < Q2_K; Q4_K and Q5_K beat Q4_0 and
 *   Q5_0, which spend the same bits per weight;
 * - dots: integer block sums are exact in every implementation, so only the
 *   float summation order differs: |simd - scalar| <= 1e-5 * M + 1e-6 with
 *   M = sum_i (|x_i| + |m_i|) |y_i| over the dequantized rows, m_i the min
 *   term of element i (the part that cancels); the same bound holds against
 *   the double-precision dot of the dequantized rows;
 * - the Q8_K quantizer: every implementation gives the scalar bytes exactly,
 *   for ordinary data and for NaN, infinities and subnormals.
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

static const qt_type k_types[] = { QT_Q2_K, QT_Q3_K, QT_Q4_K, QT_Q5_K, QT_Q6_K };
#define N_K_TYPES (sizeof k_types / sizeof k_types[0])

static const int64_t lengths[] = { 256, 512, 768, 4096, 4096 + 256 };
#define N_LENGTHS (sizeof lengths / sizeof lengths[0])

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

static void fill_gauss(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_gauss(&s);
}

/* Gaussian data with awkward super-blocks mixed in: all zero, tiny (the
 * fp16 scales underflow), constant, all positive (min above zero), one with
 * an outlier, and one whose sub-blocks differ in scale by 1000x. */
static void fill_data(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        float g = rng_gauss(&s);
        switch ((i / 256) % 8) {
        case 1:
            x[i] = 0.0f;
            break;
        case 2:
            x[i] = g * 1e-7f;
            break;
        case 3:
            x[i] = 0.75f;
            break;
        case 4:
            x[i] = fabsf(g) + 2.0f;
            break;
        case 5:
            x[i] = i % 256 == 77 ? 50.0f : g;
            break;
        case 6:
            x[i] = (i / 16) % 2 ? g * 1000.0f : g;
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

/* Implementations are numbered from QT_IMPL_SCALAR up to the first without
 * a name, so rows added later (other instruction sets) are checked too. */
static int impl_end(void)
{
    int k = QT_IMPL_SCALAR;
    while (strcmp(qt_impl_name((qt_impl)k), "?") != 0)
        k++;
    return k;
}

/* A buffer of exactly `bytes` usable bytes starting at an odd address. */
typedef struct odd_buf {
    unsigned char *base;
    unsigned char *p;
} odd_buf;

static odd_buf odd_alloc(size_t bytes, size_t offset)
{
    odd_buf b;
    b.base = malloc(bytes + offset);
    assert_non_null(b.base);
    b.p = b.base + offset;
    return b;
}

/* ---- what the tests know of the layouts --------------------------------- */

/* Where the fp16 d (and dmin, -1 if none) sit, which bytes hold codes (so a
 * copy with them zeroed decodes to the min terms), the largest code, and
 * whether codes are signed around zero. */
typedef struct k_layout {
    qt_type t;
    size_t bytes;
    int d_off, dmin_off;
    int codes_off, codes_len;
    int sub;      /* elements per sub-block */
} k_layout;

static const k_layout layouts[] = {
    { QT_Q2_K, 84, 80, 82, 16, 64, 16 },
    { QT_Q3_K, 110, 108, -1, 0, 96, 16 },
    { QT_Q4_K, 144, 0, 2, 16, 128, 32 },
    { QT_Q5_K, 176, 0, 2, 16, 160, 32 },
    { QT_Q6_K, 210, 208, -1, 0, 192, 16 },
};

static const k_layout *layout_of(qt_type t)
{
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++)
        if (layouts[k].t == t)
            return &layouts[k];
    fail_msg("no layout for %s", qt_type_name(t));
    return NULL;
}

/* Sub-block j's integer scale and min, read as the ggml spec describes (an
 * independent reading of the packing the engine implements). */
static void spec_scale_min(qt_type t, const unsigned char *blk, int j, int *sc, int *m)
{
    *sc = 0;
    *m = 0;
    switch (t) {
    case QT_Q2_K:
        *sc = blk[j] & 0xf;
        *m = blk[j] >> 4;
        break;
    case QT_Q3_K: {
        const unsigned char *s = blk + 96;
        int low = j < 8 ? s[j] & 0xf : s[j - 8] >> 4;
        int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *sc = (low | high << 4) - 32;
        break;
    }
    case QT_Q4_K:
    case QT_Q5_K: {
        const unsigned char *s = blk + 4;
        if (j < 4) {
            *sc = s[j] & 63;
            *m = s[j + 4] & 63;
        } else {
            *sc = (s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4;
            *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
        }
        break;
    }
    case QT_Q6_K:
        *sc = (int8_t)blk[192 + j];
        break;
    default:
        fail_msg("no scales for %s", qt_type_name(t));
    }
}

/* The code range of a type as the decoder sees it. */
static void code_range(qt_type t, int *lo, int *hi)
{
    switch (t) {
    case QT_Q2_K: *lo = 0; *hi = 3; break;
    case QT_Q3_K: *lo = -4; *hi = 3; break;
    case QT_Q4_K: *lo = 0; *hi = 15; break;
    case QT_Q5_K: *lo = 0; *hi = 31; break;
    default: *lo = -32; *hi = 31; break;
    }
}

/* Decodes blk with every implementation and compares to want exactly. */
static void expect_decode(qt_type t, const unsigned char *blk, const float *want)
{
    float out[256];
    for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
        const qt_traits *r = qt_get_impl(t, (qt_impl)m);
        if (!r)
            continue;
        odd_buf b = odd_alloc(r->block_bytes, 1);
        memcpy(b.p, blk, r->block_bytes);
        r->to_float(b.p, out, 256);
        for (int e = 0; e < 256; e++)
            if (out[e] != want[e])
                fail_msg("%s/%s element %d: decoded %.9g, want %.9g", qt_type_name(t),
                         qt_impl_name((qt_impl)m), e, out[e], want[e]);
        free(b.base);
    }
}

/* ---- table -------------------------------------------------------------- */

static void k_rows_have_ggml_geometry_and_dot_with_q8_k(void **state)
{
    (void)state;
    static const struct {
        qt_type t;
        const char *name;
        uint32_t bytes;
    } want[] = {
        { QT_Q2_K, "q2_k", 84 },  { QT_Q3_K, "q3_k", 110 }, { QT_Q4_K, "q4_k", 144 },
        { QT_Q5_K, "q5_k", 176 }, { QT_Q6_K, "q6_k", 210 }, { QT_Q8_K, "q8_k", 292 },
    };
    int impls_seen = 0;
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
            const qt_traits *r = qt_get_impl(want[k].t, (qt_impl)m);
            if (!r)
                continue;
            impls_seen++;
            assert_int_equal(r->type, want[k].t);
            assert_string_equal(r->name, want[k].name);
            assert_int_equal(r->block_elems, 256);
            assert_int_equal(r->block_bytes, want[k].bytes);
            assert_true(r->is_quantized);
            assert_int_equal(r->vec_dot_type, QT_Q8_K);
            assert_non_null(r->to_float);
            assert_non_null(r->from_float);
            /* Q8_K is activation-only, like Q8_1 */
            assert_int_equal(r->vec_dot != NULL, want[k].t != QT_Q8_K);
        }
        assert_int_equal(qt_type_from_name(want[k].name), want[k].t);
    }
    assert_true(impls_seen >= 6);
    assert_non_null(qt_get(QT_Q4_K));
    assert_int_equal(qt_row_bytes(QT_Q4_K, 4096), 16 * 144);
    assert_int_equal(qt_row_bytes(QT_Q6_K, 2048), 8 * 210);
    assert_int_equal(qt_row_bytes(QT_Q8_K, 512), 2 * 292);
    assert_int_equal(qt_row_bytes(QT_Q2_K, 576), 0);
    assert_int_equal(qt_row_bytes(QT_Q3_K, 64), 0);
}

/* ---- layouts ------------------------------------------------------------ */

static void q2_k_block_layout_decodes_to_known_values(void **state)
{
    (void)state;
    unsigned char blk[84] = { 0 };
    int sc[16] = { 0 }, mn[16] = { 0 }, code[256] = { 0 };
    wr16(blk + 80, 0x3c00); /* d 1 */
    wr16(blk + 82, 0x3800); /* dmin 0.5 */
    /* scales[j]: scale in the low nibble, min in the high one */
    blk[0] = 0x21, sc[0] = 1, mn[0] = 2;
    blk[1] = 0x03, sc[1] = 3;
    blk[2] = 0x12, sc[2] = 2, mn[2] = 1;
    blk[4] = 0x05, sc[4] = 5;
    blk[6] = 0x37, sc[6] = 7, mn[6] = 3;
    blk[14] = 0x2a, sc[14] = 10, mn[14] = 2;
    /* qs[0] holds elements 0, 32, 64, 96 in bit pairs 0-1 ... 6-7 */
    blk[16 + 0] = 0xe4, code[0] = 0, code[32] = 1, code[64] = 2, code[96] = 3;
    blk[16 + 17] = 0x03, code[17] = 3;
    /* the second 128 elements use qs[32..63]: 229 = 128 + 96 + 5 */
    blk[16 + 32 + 5] = 0xc0, code[229] = 3;
    float want[256];
    for (int e = 0; e < 256; e++)
        want[e] = (float)(sc[e / 16] * code[e]) - 0.5f * (float)mn[e / 16];
    assert_true(want[0] == -1.0f && want[32] == 1.5f && want[64] == 10.0f);
    assert_true(want[96] == 19.5f && want[17] == 9.0f && want[229] == 29.0f);
    expect_decode(QT_Q2_K, blk, want);
}

static void q3_k_block_layout_takes_third_bit_from_hmask_and_6_bit_scales(void **state)
{
    (void)state;
    unsigned char blk[110] = { 0 };
    int sc[16], code[256];
    for (int j = 0; j < 16; j++)
        sc[j] = -32; /* all scale bits clear */
    for (int e = 0; e < 256; e++)
        code[e] = -4; /* low bits 0 and hmask bit clear */
    wr16(blk + 108, 0x3800); /* d 0.5 */
    unsigned char *s = blk + 96;
    /* scale 0 = 33 - 32: low nibble 1 in byte 0, top bits 2 in byte 8 bits 0-1 */
    s[0] = 0x01, s[8] = 0x02, sc[0] = 1;
    /* scale 9 = 29 - 32: low nibble 0xd in byte 1's high nibble, top bits 1
     * in byte 9 (8 + 9 % 4) bits 4-5 (2 * (9 / 4)) */
    s[1] = 0xd0, s[9] = 0x10, sc[9] = -3;
    /* element 0: low bits 3 in qs[0], hmask[0] bit 0 set: code 3 */
    blk[32 + 0] = 0x03, blk[0] = 0x01, code[0] = 3;
    /* element 40 = 32 + 8: qs[8] bits 2-3, hmask[8] bit 1: code 2 */
    blk[32 + 8] = 0x08, blk[8] = 0x02, code[40] = 2;
    /* element 150 = 128 + 22: qs[32 + 22] bits 0-1 = 1, hmask[22] bit 4
     * clear: 1 - 4 */
    blk[32 + 32 + 22] = 0x01, code[150] = -3;
    float want[256];
    for (int e = 0; e < 256; e++)
        want[e] = 0.5f * (float)(sc[e / 16] * code[e]);
    assert_true(want[0] == 1.5f && want[40] == -32.0f && want[150] == 4.5f);
    assert_true(want[1] == -2.0f && want[144] == 6.0f && want[255] == 64.0f);
    expect_decode(QT_Q3_K, blk, want);
}

/* Q4_K and Q5_K share the scale packing; Q5_K adds qh. */
static void build_k4_block(unsigned char *blk, int sc[8], int mn[8], int code[256], bool q5)
{
    int qs = q5 ? 48 : 16;
    wr16(blk, 0x3c00);     /* d 1 */
    wr16(blk + 2, 0x3400); /* dmin 0.25 */
    unsigned char *s = blk + 4;
    /* sub-block 0: scale 1 (byte 0), min 2 (byte 4) */
    s[0] = 1, s[4] = 2, sc[0] = 1, mn[0] = 2;
    /* sub-block 5: scale 37 = 0x25 and min 19 = 0x13: low nibbles in byte 9,
     * top bits in bits 6-7 of byte 1 (scale) and byte 5 (min), whose low six
     * bits (scale 1, min 1) stay 0 */
    s[9] = 0x35, s[1] = 0x80, s[5] = 0x40, sc[5] = 37, mn[5] = 19;
    /* element 0 low nibble of qs[0], element 32 its high nibble */
    blk[qs + 0] = 0xa7, code[0] = 7, code[32] = 10;
    /* element 167 = 128 + 32 + 7: high nibble of qs[64 + 7] */
    blk[qs + 71] = 0xf0, code[167] = 15;
    if (q5) {
        /* fifth bit of element e: bit e / 32 of qh[e % 32] */
        blk[16 + 7] = 0x20, code[167] += 16;
        blk[16 + 0] = 0x01, code[0] += 16;
    }
}

static void q4_k_block_layout_unpacks_6_bit_scales_and_mins(void **state)
{
    (void)state;
    unsigned char blk[144] = { 0 };
    int sc[8] = { 0 }, mn[8] = { 0 }, code[256] = { 0 };
    build_k4_block(blk, sc, mn, code, false);
    float want[256];
    for (int e = 0; e < 256; e++)
        want[e] = (float)(sc[e / 32] * code[e]) - 0.25f * (float)mn[e / 32];
    assert_true(want[0] == 6.5f && want[32] == 0.0f && want[167] == 550.25f);
    assert_true(want[1] == -0.5f && want[160] == -4.75f);
    expect_decode(QT_Q4_K, blk, want);
}

static void q5_k_block_layout_takes_fifth_bit_from_qh(void **state)
{
    (void)state;
    unsigned char blk[176] = { 0 };
    int sc[8] = { 0 }, mn[8] = { 0 }, code[256] = { 0 };
    build_k4_block(blk, sc, mn, code, true);
    float want[256];
    for (int e = 0; e < 256; e++)
        want[e] = (float)(sc[e / 32] * code[e]) - 0.25f * (float)mn[e / 32];
    assert_true(want[0] == 22.5f && want[167] == 1142.25f && want[7] == -0.5f);
    expect_decode(QT_Q5_K, blk, want);
}

static void q6_k_block_layout_splits_codes_over_ql_and_qh(void **state)
{
    (void)state;
    unsigned char blk[210] = { 0 };
    int sc[16] = { 0 }, code[256];
    for (int e = 0; e < 256; e++)
        code[e] = -32;
    wr16(blk + 208, 0x3800); /* d 0.5 */
    blk[192 + 0] = 2, sc[0] = 2;
    blk[192 + 3] = 0xff, sc[3] = -1;
    blk[192 + 15] = 127, sc[15] = 127;
    /* element 0: low nibble of ql[0], bits 0-1 of qh[0]: 5 | 2 << 4 */
    blk[0] = 0x05, blk[128 + 0] = 0x02, code[0] = 37 - 32;
    /* element 50 (group 1, l 18): low nibble of ql[32 + 18], bits 2-3 of
     * qh[18] */
    blk[50] = 0x0f, blk[128 + 18] = 0x0c, code[50] = 63 - 32;
    /* element 255 (second half, group 3, l 31): high nibble of
     * ql[64 + 32 + 31], bits 6-7 of qh[32 + 31] */
    blk[127] = 0x90, blk[128 + 63] = 0x40, code[255] = 25 - 32;
    float want[256];
    for (int e = 0; e < 256; e++)
        want[e] = 0.5f * (float)sc[e / 16] * (float)code[e];
    assert_true(want[0] == 5.0f && want[50] == -15.5f && want[255] == -444.5f);
    assert_true(want[1] == -32.0f && want[48] == 16.0f && want[64] == 0.0f);
    expect_decode(QT_Q6_K, blk, want);
}

static void q8_k_block_holds_fp32_scale_codes_and_sums(void **state)
{
    (void)state;
    unsigned char blk[292] = { 0 };
    float d = 0.25f;
    memcpy(blk, &d, sizeof d);
    float want[256];
    for (int e = 0; e < 256; e++) {
        int8_t q = (int8_t)(e - 128);
        blk[4 + e] = (unsigned char)q;
        want[e] = 0.25f * (float)q;
    }
    expect_decode(QT_Q8_K, blk, want);
}

/* ---- the Q8_K quantizer ------------------------------------------------- */

static void q8_k_quantizer_maps_largest_magnitude_to_127_and_sums_codes(void **state)
{
    (void)state;
    float x[512];
    for (int e = 0; e < 256; e++)
        x[e] = (float)(e - 128) * 0.5f; /* amax 64, at element 0, negative */
    memset(x + 256, 0, 256 * sizeof *x);  /* an all-zero block */
    for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
        const qt_traits *r = qt_get_impl(QT_Q8_K, (qt_impl)m);
        if (!r)
            continue;
        odd_buf b = odd_alloc(2 * 292, 3);
        r->from_float(x, b.p, 512);
        float d;
        memcpy(&d, b.p, sizeof d);
        float iscale = 127.0f / 64.0f;
        assert_true(d == 1.0f / iscale);
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int e = 16 * j; e < 16 * j + 16; e++) {
                int8_t q = (int8_t)b.p[4 + e];
                assert_int_equal(q, (int)lrintf(x[e] * iscale));
                sum += q;
            }
            assert_int_equal((int16_t)rd16(b.p + 260 + 2 * j), sum);
        }
        assert_int_equal((int8_t)b.p[4], -127);
        for (int k = 292; k < 584; k++)
            assert_int_equal(b.p[k], 0);
        free(b.base);
    }
}

/* Specials: NaN, infinities, subnormals, huge values, and random bits. */
static void fill_specials(float *x, int64_t n, uint64_t seed)
{
    static const uint32_t fixed[] = {
        0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001,
        0x00000001, 0x807fffff, 0x7f7fffff, 0x3f800000, 0xbf800000, 0x00800000,
    };
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        int blk = (int)(i / 256);
        if (blk == 0 && (size_t)i < sizeof fixed / sizeof fixed[0])
            u = fixed[i];
        else if (blk == 1)
            u = (uint32_t)rng_next(&s);
        else if (blk == 2)
            u = (uint32_t)(rng_next(&s) & 0x807fffff); /* subnormals only */
        else if (blk == 3 && i % 256 == 9)
            u = 0x7fc00000; /* one NaN among ordinary values */
        else {
            float f = rng_gauss(&s) * (float)ldexp(1.0, (int)(rng_next(&s) % 40) - 20);
            memcpy(&u, &f, sizeof u);
        }
        memcpy(&x[i], &u, sizeof u);
    }
}

static void simd_q8_k_quantizer_is_bit_identical_to_scalar(void **state)
{
    (void)state;
    const qt_traits *rs = qt_get_impl(QT_Q8_K, QT_IMPL_SCALAR);
    const int64_t n = 8 * 256;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    odd_buf want = odd_alloc(qt_row_bytes(QT_Q8_K, n), 1);
    odd_buf got = odd_alloc(qt_row_bytes(QT_Q8_K, n), 1);
    int compared = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0)
            fill_data(x, n, 7);
        else
            fill_specials(x, n, 8);
        rs->from_float(x, want.p, n);
        for (int m = QT_IMPL_SCALAR + 1; m < impl_end(); m++) {
            const qt_traits *r = qt_get_impl(QT_Q8_K, (qt_impl)m);
            if (!r)
                continue;
            memset(got.p, 0xa5, qt_row_bytes(QT_Q8_K, n));
            r->from_float(x, got.p, n);
            for (size_t k = 0; k < qt_row_bytes(QT_Q8_K, n); k++)
                if (got.p[k] != want.p[k])
                    fail_msg("%s pass %d: byte %zu (block %zu, offset %zu) is %02x, scalar %02x",
                             qt_impl_name((qt_impl)m), pass, k, k / 292, k % 292, got.p[k],
                             want.p[k]);
            compared++;
        }
    }
    free(x);
    free(want.base);
    free(got.base);
    if (!compared)
        skip();
}

/* ---- weight quantizers --------------------------------------------------- */

/* Every code is the grid value nearest to its input for the scales the
 * block stores, or the end of the range when the input lies beyond it. */
static void check_nearest_codes(qt_type t, const float *x, const unsigned char *blk,
                                const float *y, const char *impl, int64_t where)
{
    const k_layout *L = layout_of(t);
    float d = rdh(blk + L->d_off);
    float dmin = L->dmin_off >= 0 ? rdh(blk + L->dmin_off) : 0.0f;
    int lo, hi;
    code_range(t, &lo, &hi);
    for (int j = 0; j < 256 / L->sub; j++) {
        int sc, m;
        spec_scale_min(t, blk, j, &sc, &m);
        double step = (double)d * sc, off = -(double)dmin * m;
        for (int e = j * L->sub; e < (j + 1) * L->sub; e++) {
            if (step == 0.0) {
                if (fabs(y[e] - off) > 1e-6 * fabs(off))
                    fail_msg("%s/%s element %lld: zero scale but decoded %.9g, min term %.9g",
                             qt_type_name(t), impl, (long long)(where + e), y[e], off);
                continue;
            }
            double c = ((double)y[e] - off) / step;
            double want_c = fmin(fmax(nearbyint(((double)x[e] - off) / step), lo), hi);
            /* the quantizer divides in float: allow a tie to go either way */
            double err = fabs((double)x[e] - y[e]);
            double best = fabs((double)x[e] - (want_c * step + off));
            if (fabs(c - want_c) > 1e-3 && err > best + 1e-5 * fabs(step) + 1e-6 * fabs(off))
                fail_msg("%s/%s element %lld: x %.9g decoded %.9g (code %.3f), nearest code %.0f "
                         "gives %.9g",
                         qt_type_name(t), impl, (long long)(where + e), x[e], y[e], c, want_c,
                         want_c * step + off);
        }
    }
}

static void quantized_codes_are_nearest_for_the_stored_scales(void **state)
{
    (void)state;
    const int64_t n = 16 * 256;
    float *x = malloc(n * sizeof *x);
    float *y = malloc(n * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    fill_data(x, n, 11);
    for (size_t k = 0; k < N_K_TYPES; k++) {
        qt_type t = k_types[k];
        for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
            const qt_traits *r = qt_get_impl(t, (qt_impl)m);
            if (!r)
                continue;
            odd_buf q = odd_alloc(qt_row_bytes(t, n), 1);
            r->from_float(x, q.p, n);
            r->to_float(q.p, y, n);
            for (int64_t b = 0; b < n / 256; b++)
                check_nearest_codes(t, x + 256 * b, q.p + (size_t)b * r->block_bytes,
                                    y + 256 * b, qt_impl_name((qt_impl)m), 256 * b);
            /* the all-zero and the constant super-blocks come back exactly */
            for (int e = 256; e < 512; e++)
                assert_true(y[e] == 0.0f);
            free(q.base);
        }
    }
    free(x);
    free(y);
}

static double rms_error(qt_type t, const float *x, int64_t n)
{
    const qt_traits *r = qt_get_impl(t, QT_IMPL_SCALAR);
    unsigned char *q = malloc(qt_row_bytes(t, n));
    float *y = malloc(n * sizeof *y);
    assert_non_null(q);
    assert_non_null(y);
    r->from_float(x, q, n);
    r->to_float(q, y, n);
    double se = 0.0, sx = 0.0;
    for (int64_t i = 0; i < n; i++) {
        se += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        sx += (double)x[i] * x[i];
    }
    free(q);
    free(y);
    return sqrt(se / sx);
}

static void rms_error_on_gaussian_data_is_bounded_and_ordered_by_bits(void **state)
{
    (void)state;
    const int64_t n = 64 * 256;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    fill_gauss(x, n, 12345);
    /* ceilings a little above what ggml's reference quantizers reach on
     * N(0, 1) (relative RMS error) */
    static const double ceiling[] = { 0.40, 0.20, 0.10, 0.05, 0.025 };
    double err[N_K_TYPES];
    for (size_t k = 0; k < N_K_TYPES; k++) {
        err[k] = rms_error(k_types[k], x, n);
        print_message("# %s relative RMS error %.5f\n", qt_type_name(k_types[k]), err[k]);
        if (!(err[k] < ceiling[k]))
            fail_msg("%s: relative RMS error %.5f, ceiling %.3f", qt_type_name(k_types[k]),
                     err[k], ceiling[k]);
        if (k > 0 && !(err[k] < err[k - 1]))
            fail_msg("%s (%.5f) is not more accurate than %s (%.5f)", qt_type_name(k_types[k]),
                     err[k], qt_type_name(k_types[k - 1]), err[k - 1]);
    }
    /* same bits per weight (4.5 and 5.5), lower error: what the sub-block
     * scales and the scale search buy */
    double q4_0 = rms_error(QT_Q4_0, x, n), q5_0 = rms_error(QT_Q5_0, x, n);
    print_message("# q4_0 %.5f, q5_0 %.5f\n", q4_0, q5_0);
    assert_true(err[2] < q4_0);
    assert_true(err[3] < q5_0);
    free(x);
}

static void weight_quantizers_agree_across_impls_and_blocks_are_independent(void **state)
{
    (void)state;
    const int64_t n = 8 * 256;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    fill_specials(x, n, 21);
    for (size_t k = 0; k < N_K_TYPES; k++) {
        qt_type t = k_types[k];
        size_t bytes = qt_row_bytes(t, n), bb = qt_row_bytes(t, 256);
        const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        odd_buf want = odd_alloc(bytes, 1), got = odd_alloc(bytes, 1), one = odd_alloc(bb, 1);
        /* NaN, infinities and subnormals must give some block, not a trap */
        rs->from_float(x, want.p, n);
        for (int64_t b = 0; b < n / 256; b++) {
            rs->from_float(x + 256 * b, one.p, 256);
            assert_memory_equal(one.p, want.p + (size_t)b * bb, bb);
        }
        for (int m = QT_IMPL_SCALAR + 1; m < impl_end(); m++) {
            const qt_traits *r = qt_get_impl(t, (qt_impl)m);
            if (!r)
                continue;
            r->from_float(x, got.p, n);
            assert_memory_equal(got.p, want.p, bytes);
        }
        /* the ordinary super-blocks still decode close to their input */
        float y[256];
        rs->to_float(want.p + 4 * bb, y, 256);
        for (int e = 0; e < 256; e++)
            assert_true(isfinite(y[e]));
        free(want.base);
        free(got.base);
        free(one.base);
    }
    free(x);
}

static void all_zero_rows_give_zero_scales_and_zero_dots(void **state)
{
    (void)state;
    float zeros[512] = { 0 }, ones[512], out[512];
    for (int e = 0; e < 512; e++)
        ones[e] = 1.0f;
    for (size_t k = 0; k < N_K_TYPES; k++) {
        for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
            const qt_traits *r = qt_get_impl(k_types[k], (qt_impl)m);
            if (!r)
                continue;
            const k_layout *L = layout_of(k_types[k]);
            odd_buf q = odd_alloc(2 * L->bytes, 1), yq = odd_alloc(2 * 292, 3);
            r->from_float(zeros, q.p, 512);
            r->to_float(q.p, out, 512);
            for (int e = 0; e < 512; e++)
                assert_true(out[e] == 0.0f);
            assert_true(rdh(q.p + L->d_off) == 0.0f);
            if (L->dmin_off >= 0)
                assert_true(rdh(q.p + L->dmin_off) == 0.0f);
            qt_get_impl(QT_Q8_K, (qt_impl)m)->from_float(ones, yq.p, 512);
            float s = -1.0f;
            r->vec_dot(512, &s, q.p, yq.p);
            assert_true(s == 0.0f);
            free(q.base);
            free(yq.base);
        }
    }
}

/* ---- dots ------------------------------------------------------------------ */

/* Random bytes with sane fp16 scales: every code, scale and min pattern
 * shows up, including Q6_K scale -128 and Q3_K scale -32. */
static void fill_random_blocks(qt_type t, unsigned char *q, int64_t n, uint64_t seed)
{
    const k_layout *L = layout_of(t);
    uint64_t s = seed;
    size_t bytes = qt_row_bytes(t, n);
    for (size_t i = 0; i < bytes; i++)
        q[i] = (unsigned char)rng_next(&s);
    for (int64_t b = 0; b < n / 256; b++) {
        unsigned char *blk = q + (size_t)b * L->bytes;
        wr16(blk + L->d_off, qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
        if (L->dmin_off >= 0)
            wr16(blk + L->dmin_off, qt_fp32_to_fp16((float)(rng_unit(&s) * 2.0 - 1.0) * 0.01f));
    }
}

/* M of the file comment: sum (|x_i| + |m_i|) |y_i|, m_i read by decoding a
 * copy of the row with its codes zeroed (leaving d * 0 - dmin * min). */
static double dot_scale(qt_type t, const unsigned char *xq, const float *xd, const float *yd,
                        int64_t n)
{
    const k_layout *L = layout_of(t);
    size_t bytes = qt_row_bytes(t, n);
    unsigned char *z = malloc(bytes);
    float *mins = malloc(n * sizeof *mins);
    assert_non_null(z);
    assert_non_null(mins);
    memcpy(z, xq, bytes);
    bool has_min = L->dmin_off >= 0;
    for (int64_t b = 0; b < n / 256 && has_min; b++)
        memset(z + (size_t)b * L->bytes + L->codes_off, 0, (size_t)L->codes_len);
    qt_get_impl(t, QT_IMPL_SCALAR)->to_float(z, mins, n);
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m += (fabs(xd[i]) + (has_min ? fabs(mins[i]) : 0.0)) * fabs(yd[i]);
    free(z);
    free(mins);
    return m;
}

static void check_dots(int impl)
{
    const int64_t max_n = 4096 + 256;
    float *xf = malloc(max_n * sizeof *xf), *yf = malloc(max_n * sizeof *yf);
    float *xd = malloc(max_n * sizeof *xd), *yd = malloc(max_n * sizeof *yd);
    assert_non_null(xf);
    assert_non_null(yf);
    assert_non_null(xd);
    assert_non_null(yd);
    for (size_t k = 0; k < N_K_TYPES; k++) {
        qt_type t = k_types[k];
        const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
        const qt_traits *rv = qt_get_impl(t, (qt_impl)impl);
        const qt_traits *ys = qt_get_impl(QT_Q8_K, QT_IMPL_SCALAR);
        for (int pass = 0; pass < 2; pass++) {
            for (size_t li = 0; li < N_LENGTHS; li++) {
                int64_t n = lengths[li];
                odd_buf xq = odd_alloc(qt_row_bytes(t, n), 1);
                odd_buf yq = odd_alloc(qt_row_bytes(QT_Q8_K, n), 3);
                fill_data(xf, n, 31 + (uint64_t)n);
                fill_gauss(yf, n, 57 + (uint64_t)n);
                if (pass == 0)
                    rs->from_float(xf, xq.p, n);
                else
                    fill_random_blocks(t, xq.p, n, 99 + (uint64_t)n + k);
                ys->from_float(yf, yq.p, n);
                rs->to_float(xq.p, xd, n);
                ys->to_float(yq.p, yd, n);
                double exact = 0.0;
                for (int64_t i = 0; i < n; i++)
                    exact += (double)xd[i] * yd[i];
                double m_scale = dot_scale(t, xq.p, xd, yd, n);
                double tol = 1e-5 * m_scale + 1e-6;
                float ref = NAN, got = NAN;
                rs->vec_dot(n, &ref, xq.p, yq.p);
                rv->vec_dot(n, &got, xq.p, yq.p);
                if (!(fabs((double)got - ref) <= tol))
                    fail_msg("%s/%s pass %d n %lld: dot %.9g, scalar %.9g (tol %.3g)",
                             qt_type_name(t), qt_impl_name((qt_impl)impl), pass, (long long)n, got,
                             ref, tol);
                if (!(fabs((double)got - exact) <= tol))
                    fail_msg("%s/%s pass %d n %lld: dot %.9g, dequantized dot %.9g (tol %.3g)",
                             qt_type_name(t), qt_impl_name((qt_impl)impl), pass, (long long)n, got,
                             exact, tol);
                /* the rows must not be trivially small */
                assert_true(m_scale > 1.0);
                free(xq.base);
                free(yq.base);
            }
        }
    }
    free(xf);
    free(yf);
    free(xd);
    free(yd);
}

static void scalar_vec_dot_matches_dot_of_dequantized_rows(void **state)
{
    (void)state;
    check_dots(QT_IMPL_SCALAR);
}

static void simd_vec_dots_match_scalar_and_dequantized_rows(void **state)
{
    (void)state;
    int checked = 0;
    for (int m = QT_IMPL_SCALAR + 1; m < impl_end(); m++) {
        if (!qt_get_impl(QT_Q4_K, (qt_impl)m))
            continue;
        check_dots(m);
        checked++;
    }
    if (!checked)
        skip();
}

/* Extreme codes meet extreme activations: every code at its largest value
 * against activations of +-127, in all five types, so an intermediate that
 * overflowed int16 (maddubs saturates) would show. */
static void dots_are_exact_at_the_extremes_of_codes_and_activations(void **state)
{
    (void)state;
    float yf[256];
    /* codes +-127 in same-sign pairs (the largest maddubs pair sums), with
     * nonzero bsums so the min and offset terms count */
    for (int e = 0; e < 256; e++)
        yf[e] = (e / 2) % 3 == 0 ? -1.0f : 1.0f;
    unsigned char yq[292];
    qt_get_impl(QT_Q8_K, QT_IMPL_SCALAR)->from_float(yf, yq, 256);
    for (size_t k = 0; k < N_K_TYPES; k++) {
        qt_type t = k_types[k];
        const k_layout *L = layout_of(t);
        for (int variant = 0; variant < 2; variant++) {
            unsigned char blk[210];
            /* every bit set: largest codes and scales (Q6_K: scales -128);
             * variant 0 then clears the codes: smallest codes (Q6_K: scales
             * 127) */
            memset(blk, 0xff, L->bytes);
            if (t == QT_Q6_K)
                memset(blk + 192, variant ? 0x80 : 0x7f, 16);
            if (variant == 0)
                memset(blk + L->codes_off, 0x00, (size_t)L->codes_len);
            wr16(blk + L->d_off, 0x3c00);
            if (L->dmin_off >= 0)
                wr16(blk + L->dmin_off, 0x3c00);
            float xd[256], yd[256];
            const qt_traits *rs = qt_get_impl(t, QT_IMPL_SCALAR);
            rs->to_float(blk, xd, 256);
            qt_get_impl(QT_Q8_K, QT_IMPL_SCALAR)->to_float(yq, yd, 256);
            double exact = 0.0;
            for (int e = 0; e < 256; e++)
                exact += (double)xd[e] * yd[e];
            for (int m = QT_IMPL_SCALAR; m < impl_end(); m++) {
                const qt_traits *r = qt_get_impl(t, (qt_impl)m);
                if (!r)
                    continue;
                float s = NAN;
                r->vec_dot(256, &s, blk, yq);
                if (!(fabs((double)s - exact) <= 1e-6 * fabs(exact) + 1e-6))
                    fail_msg("%s/%s variant %d: dot %.9g, exact %.9g", qt_type_name(t),
                             qt_impl_name((qt_impl)m), variant, s, exact);
            }
        }
    }
}

int main(void)
{
    printf("# qt best implementation on this CPU: %s\n", qt_impl_name(qt_best_impl()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(k_rows_have_ggml_geometry_and_dot_with_q8_k),
        cmocka_unit_test(q2_k_block_layout_decodes_to_known_values),
        cmocka_unit_test(q3_k_block_layout_takes_third_bit_from_hmask_and_6_bit_scales),
        cmocka_unit_test(q4_k_block_layout_unpacks_6_bit_scales_and_mins),
        cmocka_unit_test(q5_k_block_layout_takes_fifth_bit_from_qh),
        cmocka_unit_test(q6_k_block_layout_splits_codes_over_ql_and_qh),
        cmocka_unit_test(q8_k_block_holds_fp32_scale_codes_and_sums),
        cmocka_unit_test(q8_k_quantizer_maps_largest_magnitude_to_127_and_sums_codes),
        cmocka_unit_test(simd_q8_k_quantizer_is_bit_identical_to_scalar),
        cmocka_unit_test(quantized_codes_are_nearest_for_the_stored_scales),
        cmocka_unit_test(rms_error_on_gaussian_data_is_bounded_and_ordered_by_bits),
        cmocka_unit_test(weight_quantizers_agree_across_impls_and_blocks_are_independent),
        cmocka_unit_test(all_zero_rows_give_zero_scales_and_zero_dots),
        cmocka_unit_test(scalar_vec_dot_matches_dot_of_dequantized_rows),
        cmocka_unit_test(simd_vec_dots_match_scalar_and_dequantized_rows),
        cmocka_unit_test(dots_are_exact_at_the_extremes_of_codes_and_activations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
