/*
 * ops.h - the small float kernels of the forward pass: RMS norm, RoPE,
 * softmax, SiLU. Single-threaded, in place where that is natural.
 */
#ifndef OUTPOST_OPS_H
#define OUTPOST_OPS_H

#include <stdint.h>

/* out = x / rms(x) * w over n elements (out may equal x). */
void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* Rotate the first n_rot dims of each of n_heads heads of head_dim floats by
 * position pos (adjacent pairs, the "normal" RoPE of Llama GGUF files). */
void ops_rope(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, double pos,
              float freq_base);
/* In-place softmax over n values. */
void ops_softmax(float *x, int64_t n);
/* x[i] = silu(x[i]) * y[i] */
void ops_swiglu(float *x, const float *y, int64_t n);

#endif
