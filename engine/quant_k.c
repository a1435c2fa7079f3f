/*
 * quant_k.c - reference kernels of the K-quants: Q2_K, Q3_K, Q4_K, Q5_K and
 * Q6_K weights, and Q8_K, the 8-bit activation blocks all of them dot with.
 *
 * A K-quant super-block covers 256 elements as 16 sub-blocks of 16 (Q2_K,
 * Q3_K, Q6_K) or 8 of 32 (Q4_K, Q5_K); each sub-block has a small integer
 * scale (and, for Q2_K/Q4_K/Q5_K, a min) that multiplies the super-block's
 * fp16 d (and dmin). Where each code and scale lives is in quant_impl.h; the
 * code_* and *_scale helpers below read exactly that and nothing else reads
 * the packing, so the decoders, the dots and the packers agree by
 * construction.
 *
 * The quantizers follow ggml's reference quantizers without an importance
 * matrix (what llama-quantize runs when given none), float operation for
 * float operation, so a tensor we quantize has the bytes llama.cpp writes:
 * each sub-block's scale comes from a search that minimises a weighted
 * error (fit_scale_min: min/max grid, then stretched grids with a weighted
 * least-squares scale and offset; fit_symmetric_*: sign-aware grids with
 * x^2 weights), the sub-block scales are then quantized to 4 or 6 bits
 * against the largest, and the codes are re-rounded against the stored
 * scales. Where ggml's integer conversions would be undefined (NaN or
 * infinite input), ours clamp, so any input gives some block.
 *
 * The dots sum code * activation exactly in integers per super-block and
 * use Q8_K's bsums for the min terms: sum_i min * y_i is min * bsum per
 * sub-block. Q8_K keeps a positive scale (d = 1 / (127 / amax)): ggml's
 * sign follows the element of largest magnitude, which flips d and every
 * code together and so represents the same values exactly; a positive d
 * lets the SIMD quantizer skip finding that element. The AVX2 quantizer in
 * quant_avx2_k.c reproduces these bytes exactly; tests hold it to that.
 */
#include <math.h>
#include <stdbool.h>

#include "quant_impl.h"

/* ggml's threshold below which a group counts as all zero. */
#define GROUP_EPS 1e-15f

/* Round to nearest, ties to even (ggml's nearest_int, which adds 1.5 * 2^23
 * and reads the mantissa). Defined for every float: NaN gives 0 and the
 * argument is clamped to the range where the trick is exact. */
static inline int nearest(float v)
{
    if (!(v == v))
        return 0;
    if (v > 4194303.0f)
        v = 4194303.0f;
    else if (v < -4194303.0f)
        v = -4194303.0f;
    return (int)(qt_f32_bits(v + 12582912.0f) & 0x007fffffu) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- where the codes and scales live ---------------------------------- */

static inline int q2_k_code(const qt_block_q2_k *b, int e)
{
    return (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

/* -4..3 */
static inline int q3_k_code(const qt_block_q3_k *b, int e)
{
    int low = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    int high = (b->hmask[e % 32] >> (e / 32)) & 1;
    return low - (high ? 0 : 4);
}

/* -32..31 */
static inline int q3_k_scale(const uint8_t s[12], int j)
{
    int low = j < 8 ? s[j] & 0xf : s[j - 8] >> 4;
    int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | high << 4) - 32;
}

static inline int q4_k_code(const qt_block_q4_k *b, int e)
{
    uint8_t byte = b->qs[32 * (e / 64) + e % 32];
    return e % 64 < 32 ? byte & 0xf : byte >> 4;
}

static inline int q5_k_code(const qt_block_q5_k *b, int e)
{
    uint8_t byte = b->qs[32 * (e / 64) + e % 32];
    int low = e % 64 < 32 ? byte & 0xf : byte >> 4;
    return low | ((b->qh[e % 32] >> (e / 32)) & 1) << 4;
}

/* -32..31 */
static inline int q6_k_code(const qt_block_q6_k *b, int e)
{
    int c = e / 128, k = (e % 128) / 32, l = e % 32;
    uint8_t lo = b->ql[64 * c + 32 * (k % 2) + l];
    int low = k < 2 ? lo & 0xf : lo >> 4;
    int high = (b->qh[32 * c + l] >> (2 * k)) & 3;
    return (low | high << 4) - 32;
}

/* ---- scale searches (ggml's make_qkx2, make_q3 and make_qx quants) ----- */

/* Fits x[i] ~ scale * L[i] - min, codes L in 0..nmax, min >= 0: first the
 * grid from min(x, 0) to max(x) in nmax steps, then nstep + 1 grids with
 * nmax + rmin + rdelta * k steps over the current range, each followed by
 * the weighted least-squares scale and offset of its codes; the candidate
 * with the least weighted error (absolute if use_mad, else squared) wins.
 * As in ggml, a better candidate moves the offset the later grids start
 * from. Returns the scale and stores min (>= 0) in *min_out. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *min_out, float rmin, float rdelta, int nstep, bool use_mad)
{
    float lo = x[0], hi = x[0];
    float sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0)
        lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *min_out = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clamp_int(nearest(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * L[i] + lo - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best += w[i] * diff;
    }
    uint8_t cand[32];
    for (int k = 0; k <= nstep; k++) {
        iscale = (rmin + rdelta * (float)k + (float)nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest(iscale * (x[i] - lo)), 0, nmax);
            cand[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0))
            continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * cand[i] + this_min - x[i];
            diff = use_mad ? fabsf(diff) : diff * diff;
            err += w[i] * diff;
        }
        if (err < best) {
            memcpy(L, cand, (size_t)n);
            best = err;
            scale = this_scale;
            lo = this_min;
        }
    }
    *min_out = -lo;
    return scale;
}

/* The element of largest magnitude, with its sign (the first one on ties). */
static float signed_absmax(int n, const float *x, float *amax_out)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

/* Symmetric codes -nmax..nmax-1 (stored as L + nmax) for Q3_K: start from
 * the grid that maps the largest element to -nmax, then move single codes
 * while that raises (sum w x l)^2 / (sum w l^2) with w = x^2, i.e. lowers
 * the weighted squared error at the optimal scale, for up to five sweeps.
 * Returns that optimal scale. */
static float fit_symmetric_sweeps(int n, int nmax, const float *x, int8_t *L)
{
    float amax;
    float max = signed_absmax(n, x, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int sweep = 0; sweep < 5; sweep++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (!(slx > 0))
                continue;
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            int l = clamp_int(nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (l == L[i])
                continue;
            slx += w * x[i] * (float)l;
            sl2 += w * (float)l * (float)l;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)l;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Symmetric codes for Q6_K: the grid mapping the largest element to -nmax
 * and 18 grids with nmax +- 0.1 k steps; keeps the one with the largest
 * (sum w x l)^2 / (sum w l^2), w = x^2, and returns its least-squares
 * scale. */
static float fit_symmetric_grids(int n, int nmax, const float *x, int8_t *L)
{
    float amax;
    float max = signed_absmax(n, x, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int k = -9; k <= 9; k++) {
        if (k == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)k) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clamp_int(nearest(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* ---- Q2_K ----------------------------------------------------------------- */

void qt_q2_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q2_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = qt_fp16_decode(b[i].d);
        float dmin = qt_fp16_decode(b[i].dmin);
        float *out = dst + i * QT_QK_K;
        for (int e = 0; e < QT_QK_K; e++) {
            uint8_t sc = b[i].scales[e / 16];
            float dl = d * (float)(sc & 0xf);
            float ml = dmin * (float)(sc >> 4);
            out[e] = dl * (float)q2_k_code(&b[i], e) - ml;
        }
    }
}

void qt_q2_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q2_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        uint8_t L[QT_QK_K];
        float w[16], scales[16], mins[16];
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++)
                w[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f,
                                      15, true);
            if (scales[j] > max_scale)
                max_scale = scales[j];
            if (mins[j] > max_min)
                max_min = mins[j];
        }
        memset(b[i].scales, 0, sizeof b[i].scales);
        b[i].d = qt_fp16_encode(0.0f);
        b[i].dmin = qt_fp16_encode(0.0f);
        if (max_scale > 0) {
            float iscale = 15.0f / max_scale;
            for (int j = 0; j < 16; j++)
                b[i].scales[j] = (uint8_t)clamp_int(nearest(iscale * scales[j]), 0, 15);
            b[i].d = qt_fp16_encode(max_scale / 15.0f);
        }
        if (max_min > 0) {
            float iscale = 15.0f / max_min;
            for (int j = 0; j < 16; j++)
                b[i].scales[j] |= (uint8_t)(clamp_int(nearest(iscale * mins[j]), 0, 15) << 4);
            b[i].dmin = qt_fp16_encode(max_min / 15.0f);
        }
        /* codes again against the scales as stored; a zero scale keeps the
         * search's codes, which then decode to -dmin * min anyway */
        for (int j = 0; j < 16; j++) {
            float d = qt_fp16_decode(b[i].d) * (float)(b[i].scales[j] & 0xf);
            if (d == 0)
                continue;
            float dm = qt_fp16_decode(b[i].dmin) * (float)(b[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)clamp_int(nearest((x[16 * j + l] + dm) / d), 0, 3);
        }
        memset(b[i].qs, 0, sizeof b[i].qs);
        for (int e = 0; e < QT_QK_K; e++)
            b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)(L[e] << (2 * ((e % 128) / 32)));
    }
}

void qt_q2_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q2_k *a = x;
    const qt_block_q8_k *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 16; j++) {
            int dot = 0;
            for (int e = 16 * j; e < 16 * j + 16; e++)
                dot += q2_k_code(&a[i], e) * b[i].qs[e];
            isum += (a[i].scales[j] & 0xf) * dot;
            msum += (a[i].scales[j] >> 4) * b[i].bsums[j];
        }
        float dall = b[i].d * qt_fp16_decode(a[i].d);
        float dmin = b[i].d * qt_fp16_decode(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

/* ---- Q3_K ----------------------------------------------------------------- */

void qt_q3_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q3_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = qt_fp16_decode(b[i].d);
        float *out = dst + i * QT_QK_K;
        for (int e = 0; e < QT_QK_K; e++) {
            float dl = d * (float)q3_k_scale(b[i].scales, e / 16);
            out[e] = dl * (float)q3_k_code(&b[i], e);
        }
    }
}

void qt_q3_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q3_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        int8_t L[QT_QK_K];
        float scales[16];
        float max_scale = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            scales[j] = fit_symmetric_sweeps(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(b[i].scales, 0, sizeof b[i].scales);
        b[i].d = qt_fp16_encode(0.0f);
        if (max_scale != 0) {
            /* the largest scale becomes -32, the most negative 6-bit code */
            float iscale = -32.0f / max_scale;
            for (int j = 0; j < 16; j++) {
                int l = clamp_int(nearest(iscale * scales[j]), -32, 31) + 32;
                if (j < 8)
                    b[i].scales[j] = (uint8_t)(l & 0xf);
                else
                    b[i].scales[j - 8] |= (uint8_t)((l & 0xf) << 4);
                b[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            b[i].d = qt_fp16_encode(1 / iscale);
        }
        for (int j = 0; j < 16; j++) {
            float d = qt_fp16_decode(b[i].d) * (float)q3_k_scale(b[i].scales, j);
            if (d == 0)
                continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(clamp_int(nearest(x[16 * j + l] / d), -4, 3) + 4);
        }
        memset(b[i].hmask, 0, sizeof b[i].hmask);
        memset(b[i].qs, 0, sizeof b[i].qs);
        for (int e = 0; e < QT_QK_K; e++) {
            int code = L[e];
            if (code > 3) {
                b[i].hmask[e % 32] |= (uint8_t)(1u << (e / 32));
                code -= 4;
            }
            b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)(code << (2 * ((e % 128) / 32)));
        }
    }
}

void qt_q3_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q3_k *a = x;
    const qt_block_q8_k *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int dot = 0;
            for (int e = 16 * j; e < 16 * j + 16; e++)
                dot += q3_k_code(&a[i], e) * b[i].qs[e];
            isum += q3_k_scale(a[i].scales, j) * dot;
        }
        sum += b[i].d * qt_fp16_decode(a[i].d) * (float)isum;
    }
    *s = sum;
}

/* ---- Q4_K and Q5_K -------------------------------------------------------- */

/* The part Q4_K and Q5_K share: 8 sub-blocks of 32 fitted with the weights
 * sqrt(mean x^2) + |x|, scales and mins quantized to 6 bits against the
 * largest of each, codes 0..nmax re-rounded against the stored values. */
static void quantize_k4_block(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out,
                              uint16_t *dmin_out, uint8_t scales_out[12], uint8_t L[QT_QK_K])
{
    float w[32], scales[8], mins[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], rmin, 0.1f,
                                  nstep, false);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    memset(scales_out, 0, 12);
    for (int j = 0; j < 8; j++) {
        int ls = clamp_int(nearest(inv_scale * scales[j]), 0, 63);
        int lm = clamp_int(nearest(inv_min * mins[j]), 0, 63);
        if (j < 4) {
            scales_out[j] = (uint8_t)ls;
            scales_out[j + 4] = (uint8_t)lm;
        } else {
            scales_out[j + 4] = (uint8_t)((ls & 0xf) | (lm & 0xf) << 4);
            scales_out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales_out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = qt_fp16_encode(max_scale / 63.0f);
    *dmin_out = qt_fp16_encode(max_min / 63.0f);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        qt_k4_scale_min(scales_out, j, &sc, &m);
        float d = qt_fp16_decode(*d_out) * (float)sc;
        if (d == 0)
            continue;
        float dm = qt_fp16_decode(*dmin_out) * (float)m;
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)clamp_int(nearest((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

void qt_q4_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q4_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = qt_fp16_decode(b[i].d);
        float dmin = qt_fp16_decode(b[i].dmin);
        float *out = dst + i * QT_QK_K;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            qt_k4_scale_min(b[i].scales, j, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            for (int e = 32 * j; e < 32 * j + 32; e++)
                out[e] = dl * (float)q4_k_code(&b[i], e) - ml;
        }
    }
}

void qt_q4_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q4_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        uint8_t L[QT_QK_K];
        uint16_t d, dmin;
        quantize_k4_block(src + i * QT_QK_K, 15, -1.0f, 20, &d, &dmin, b[i].scales, L);
        b[i].d = d;
        b[i].dmin = dmin;
        for (int e = 0; e < QT_QK_K; e++) {
            uint8_t *q = &b[i].qs[32 * (e / 64) + e % 32];
            if (e % 64 < 32)
                *q = L[e];
            else
                *q |= (uint8_t)(L[e] << 4);
        }
    }
}

void qt_q4_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q4_k *a = x;
    const qt_block_q8_k *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m, dot = 0;
            qt_k4_scale_min(a[i].scales, j, &sc, &m);
            for (int e = 32 * j; e < 32 * j + 32; e++)
                dot += q4_k_code(&a[i], e) * b[i].qs[e];
            isum += sc * dot;
            msum += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        float dall = b[i].d * qt_fp16_decode(a[i].d);
        float dmin = b[i].d * qt_fp16_decode(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

void qt_q5_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q5_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = qt_fp16_decode(b[i].d);
        float dmin = qt_fp16_decode(b[i].dmin);
        float *out = dst + i * QT_QK_K;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            qt_k4_scale_min(b[i].scales, j, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            for (int e = 32 * j; e < 32 * j + 32; e++)
                out[e] = dl * (float)q5_k_code(&b[i], e) - ml;
        }
    }
}

void qt_q5_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q5_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        uint8_t L[QT_QK_K];
        uint16_t d, dmin;
        quantize_k4_block(src + i * QT_QK_K, 31, -0.5f, 15, &d, &dmin, b[i].scales, L);
        b[i].d = d;
        b[i].dmin = dmin;
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int e = 0; e < QT_QK_K; e++) {
            uint8_t *q = &b[i].qs[32 * (e / 64) + e % 32];
            int low = L[e] & 0xf;
            if (e % 64 < 32)
                *q = (uint8_t)low;
            else
                *q |= (uint8_t)(low << 4);
            b[i].qh[e % 32] |= (uint8_t)((L[e] >> 4) << (e / 32));
        }
    }
}

void qt_q5_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q5_k *a = x;
    const qt_block_q8_k *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m, dot = 0;
            qt_k4_scale_min(a[i].scales, j, &sc, &m);
            for (int e = 32 * j; e < 32 * j + 32; e++)
                dot += q5_k_code(&a[i], e) * b[i].qs[e];
            isum += sc * dot;
            msum += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        }
        float dall = b[i].d * qt_fp16_decode(a[i].d);
        float dmin = b[i].d * qt_fp16_decode(a[i].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

/* ---- Q6_K ----------------------------------------------------------------- */

void qt_q6_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q6_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = qt_fp16_decode(b[i].d);
        float *out = dst + i * QT_QK_K;
        for (int e = 0; e < QT_QK_K; e++)
            out[e] = d * (float)b[i].scales[e / 16] * (float)q6_k_code(&b[i], e);
    }
}

void qt_q6_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q6_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        int8_t L[QT_QK_K];
        float scales[16];
        float max_scale = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            scales[j] = fit_symmetric_grids(16, 32, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&b[i], 0, sizeof b[i]);
        if (amax < GROUP_EPS)
            continue; /* all codes 0 with d 0: the block decodes to zeros */
        /* the largest scale becomes -128, the most negative int8 */
        float iscale = -128.0f / max_scale;
        b[i].d = qt_fp16_encode(1 / iscale);
        for (int j = 0; j < 16; j++)
            b[i].scales[j] = (int8_t)clamp_int(nearest(iscale * scales[j]), -128, 127);
        for (int j = 0; j < 16; j++) {
            float d = qt_fp16_decode(b[i].d) * (float)b[i].scales[j];
            if (d == 0)
                continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(clamp_int(nearest(x[16 * j + l] / d), -32, 31) + 32);
        }
        for (int e = 0; e < QT_QK_K; e++) {
            int c = e / 128, k = (e % 128) / 32, l = e % 32;
            b[i].ql[64 * c + 32 * (k % 2) + l] |= (uint8_t)((L[e] & 0xf) << (4 * (k / 2)));
            b[i].qh[32 * c + l] |= (uint8_t)((L[e] >> 4) << (2 * k));
        }
    }
}

void qt_q6_k_vec_dot(int64_t n, float *restrict s, const void *restrict x, const void *restrict y)
{
    const qt_block_q6_k *a = x;
    const qt_block_q8_k *b = y;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int dot = 0;
            for (int e = 16 * j; e < 16 * j + 16; e++)
                dot += q6_k_code(&a[i], e) * b[i].qs[e];
            isum += a[i].scales[j] * dot;
        }
        sum += b[i].d * qt_fp16_decode(a[i].d) * (float)isum;
    }
    *s = sum;
}

/* ---- Q8_K ----------------------------------------------------------------- */

void qt_q8_k_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const qt_block_q8_k *b = src;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        float d = b[i].d;
        for (int e = 0; e < QT_QK_K; e++)
            dst[i * QT_QK_K + e] = (float)b[i].qs[e] * d;
    }
}

void qt_q8_k_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    qt_block_q8_k *b = dst;
    for (int64_t i = 0; i < n / QT_QK_K; i++) {
        const float *x = src + i * QT_QK_K;
        float amax = 0.0f;
        for (int e = 0; e < QT_QK_K; e++) {
            float a = fabsf(x[e]);
            if (a > amax)
                amax = a;
        }
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        float iscale = 127.0f / amax;
        for (int e = 0; e < QT_QK_K; e++) {
            /* clamped first, so a NaN or an overflowing product still gives
             * a code, -127 for NaN as in the SIMD twin */
            float v = x[e] * iscale;
            if (v > 127.0f)
                v = 127.0f;
            else if (!(v >= -127.0f))
                v = -127.0f;
            b[i].qs[e] = (int8_t)nearest(v);
        }
        for (int j = 0; j < QT_QK_K / 16; j++) {
            int sum = 0;
            for (int e = 16 * j; e < 16 * j + 16; e++)
                sum += b[i].qs[e];
            b[i].bsums[j] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}
