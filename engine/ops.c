/*
 * ops.c - float kernels of the forward pass (see ops.h). These run once per
 * token per layer on vectors of a few thousand floats; the weight matmuls
 * dominate, so clarity wins here, with two exceptions measured in decode
 * (where this work runs on one thread while the memory bus idles): the
 * FFN activation's exp, 5632 expf calls per layer, goes through an AVX-512
 * vector exp where the CPU has one (0.32 -> 0.12 ms per token, TinyLlama
 * shape; attention's softmax uses it too, ops_exp), and RoPE's cos and
 * sin are computed once per position per pass (ops_rope_table) instead of
 * once per layer (0.32 -> 0.14 ms per token with the KV stores). Sums are
 * accumulated in double where the vector length would otherwise cost
 * precision.
 */
#include "ops.h"

#include <math.h>
#include <stddef.h>

void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

/* cos and sin of pair i at position pos (times mscale): the one formula
 * both ways of applying RoPE use, so they agree bit for bit. */
static void rope_pair(const ops_rope_cfg *cfg, double pos, int32_t i, float *c_out, float *s_out)
{
    double theta = pos * pow((double)cfg->freq_base, -2.0 * i / (double)cfg->n_rot);
    if (cfg->freq_factors)
        theta /= (double)cfg->freq_factors[i];
    if (cfg->freq_scale != 1.0f)
        theta *= (double)cfg->freq_scale;
    float c = (float)cos(theta), s = (float)sin(theta);
    if (cfg->mscale != 1.0f) {
        c *= cfg->mscale;
        s *= cfg->mscale;
    }
    *c_out = c;
    *s_out = s;
}

/* x[0] and x[partner] of each pair turned by (c, s). */
static inline void rope_turn(float *p, int32_t partner, float c, float s)
{
    float a = p[0], b = p[partner];
    p[0] = a * c - b * s;
    p[partner] = a * s + b * c;
}

void ops_rope_apply(float *x, int32_t n_heads, const ops_rope_cfg *cfg, double pos)
{
    const int32_t half = cfg->n_rot / 2;
    /* NeoX style pairs dim i with dim i + n_rot/2 (rotate_half in the HF
     * code); the original style pairs neighbours. Dims past n_rot stay. */
    const int32_t stride = cfg->neox ? 1 : 2, partner = cfg->neox ? half : 1;
    for (int32_t i = 0; i < half; i++) {
        float c, s;
        rope_pair(cfg, pos, i, &c, &s);
        for (int32_t h = 0; h < n_heads; h++)
            rope_turn(x + (int64_t)h * cfg->head_dim + stride * i, partner, c, s);
    }
}

void ops_rope_table(float *cs, const ops_rope_cfg *cfg, double pos)
{
    for (int32_t i = 0; i < cfg->n_rot / 2; i++)
        rope_pair(cfg, pos, i, &cs[2 * i], &cs[2 * i + 1]);
}

void ops_rope_apply_table(float *x, int32_t n_heads, const ops_rope_cfg *cfg, const float *cs)
{
    const int32_t half = cfg->n_rot / 2;
    const int32_t stride = cfg->neox ? 1 : 2, partner = cfg->neox ? half : 1;
    for (int32_t h = 0; h < n_heads; h++) {
        float *head = x + (int64_t)h * cfg->head_dim;
        for (int32_t i = 0; i < half; i++)
            rope_turn(head + stride * i, partner, cs[2 * i], cs[2 * i + 1]);
    }
}

void ops_rope(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, double pos,
              float freq_base)
{
    ops_rope_cfg cfg = {.head_dim = head_dim, .n_rot = n_rot, .neox = false,
                        .freq_base = freq_base, .freq_scale = 1.0f, .freq_factors = NULL,
                        .mscale = 1.0f};
    ops_rope_apply(x, n_heads, &cfg, pos);
}

void ops_softmax(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > max)
            max = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

/* exp on AVX-512 lanes: x = n ln2 + r with n = round(x log2 e) and |r| <=
 * ln2/2 (ln2 in two parts, so r is exact to float precision), e^r by the
 * degree-7 Taylor-like minimax polynomial of Cephes' expf, and 2^n applied
 * by vscalefps, which gives inf, denormals and 0 at the ends of the range
 * without a clamp. Within 2 ulp of expf (test_quant_simd checks swiglu
 * against the scalar one). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define OPS_HAVE_AVX512 1
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x)
{
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f"))) static void swiglu_avx512(float *x, const float *y, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i), w = _mm512_maskz_loadu_ps(m, y + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_div_ps(v, _mm512_add_ps(one, e)), w));
    }
}

__attribute__((target("avx512f"))) static void exp_avx512(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(x + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static bool ops_avx512(void)
{
    return __builtin_cpu_supports("avx512f");
}
#endif

void ops_swiglu_ref(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-x[i])) * y[i];
}

void ops_swiglu(float *x, const float *y, int64_t n)
{
#ifdef OPS_HAVE_AVX512
    if (ops_avx512()) {
        swiglu_avx512(x, y, n);
        return;
    }
#endif
    ops_swiglu_ref(x, y, n);
}

void ops_exp(float *x, int64_t n)
{
#ifdef OPS_HAVE_AVX512
    if (ops_avx512()) {
        exp_avx512(x, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        x[i] = expf(x[i]);
}

void ops_geglu(float *x, const float *y, int64_t n)
{
    /* GELU(v) ~ v/2 (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))) (Hendrycks and
     * Gimpel, "Gaussian Error Linear Units", the tanh approximation). */
    const float k = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))) * y[i];
    }
}

void ops_softcap(float *x, int64_t n, float cap)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = cap * tanhf(x[i] / cap);
}
