/*
 * ops.c - float kernels of the forward pass (see ops.h). These run once per
 * token per layer on vectors of a few thousand floats; the weight matmuls
 * dominate, so clarity wins here. Sums are accumulated in double where the
 * vector length would otherwise cost precision.
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

void ops_rope_apply(float *x, int32_t n_heads, const ops_rope_cfg *cfg, double pos)
{
    const int32_t half = cfg->n_rot / 2;
    /* NeoX style pairs dim i with dim i + n_rot/2 (rotate_half in the HF
     * code); the original style pairs neighbours. Dims past n_rot stay. */
    const int32_t stride = cfg->neox ? 1 : 2, partner = cfg->neox ? half : 1;
    for (int32_t i = 0; i < half; i++) {
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
        for (int32_t h = 0; h < n_heads; h++) {
            float *p = x + (int64_t)h * cfg->head_dim + stride * i;
            float a = p[0], b = p[partner];
            p[0] = a * c - b * s;
            p[partner] = a * s + b * c;
        }
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

void ops_swiglu(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-x[i])) * y[i];
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
