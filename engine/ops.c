/*
 * ops.c - float kernels of the forward pass (see ops.h). These run once per
 * token per layer on vectors of a few thousand floats; the weight matmuls
 * dominate, so clarity wins here. Sums are accumulated in double where the
 * vector length would otherwise cost precision.
 */
#include "ops.h"

#include <math.h>

void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void ops_rope(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, double pos,
              float freq_base)
{
    /* RoPE: pair (2i, 2i+1) turns by pos * base^(-2i/n_rot). */
    for (int32_t i = 0; i < n_rot / 2; i++) {
        double theta = pos * pow((double)freq_base, -2.0 * i / (double)n_rot);
        float c = (float)cos(theta), s = (float)sin(theta);
        for (int32_t h = 0; h < n_heads; h++) {
            float *p = x + (int64_t)h * head_dim + 2 * i;
            float a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
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
