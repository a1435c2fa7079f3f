/*
 * ops.h - the small float kernels of the forward pass: RMS norm, RoPE,
 * softmax, the gated FFN activations, soft-capping. Single-threaded, in place
 * where that is natural.
 */
#ifndef OUTPOST_OPS_H
#define OUTPOST_OPS_H

#include <stdbool.h>
#include <stdint.h>

/* out = x / rms(x) * w over n elements (out may equal x). */
void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* How RoPE turns the first n_rot dims of every head. Pair i (of n_rot/2)
 * turns by angle pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]. */
typedef struct ops_rope_cfg {
    int32_t head_dim, n_rot;
    bool neox;                  /* pairs (i, i + n_rot/2) (GPT-NeoX), else (2i, 2i+1) */
    float freq_base;
    float freq_scale;           /* linear position scaling; 1 = none */
    const float *freq_factors;  /* [n_rot/2] divisors of the frequencies, or NULL */
    float mscale;               /* cos and sin are multiplied by it; 1 = a pure rotation */
} ops_rope_cfg;

/* Rotate each of n_heads heads of x (head_dim floats apart) for position pos. */
void ops_rope_apply(float *x, int32_t n_heads, const ops_rope_cfg *cfg, double pos);
/* The same in two steps, for a position whose rotation is applied many
 * times (every layer of a pass): cs[2i], cs[2i+1] = cos, sin of pair i
 * (n_rot floats), then the heads turned by them; the result is bit for bit
 * that of ops_rope_apply. */
void ops_rope_table(float *cs, const ops_rope_cfg *cfg, double pos);
void ops_rope_apply_table(float *x, int32_t n_heads, const ops_rope_cfg *cfg, const float *cs);
/* The plain case: adjacent pairs, no scaling (the "normal" RoPE of Llama
 * GGUF files). */
void ops_rope(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, double pos,
              float freq_base);
/* In-place softmax over n values. */
void ops_softmax(float *x, int64_t n);
/* x[i] = silu(x[i]) * y[i]; on CPUs with AVX-512 through a vector exp
 * within 2 ulp of expf, elsewhere (and always in ops_swiglu_ref) through
 * expf itself. */
void ops_swiglu(float *x, const float *y, int64_t n);
void ops_swiglu_ref(float *x, const float *y, int64_t n);
/* x[i] = exp(x[i]) for i < n, element by element: each result depends on
 * its input only (the vector exp of ops_swiglu where there is one, expf
 * elsewhere), not on n or i. */
void ops_exp(float *x, int64_t n);
/* x[i] = gelu(x[i]) * y[i], GELU in its tanh approximation (Gemma's
 * gelu_pytorch_tanh). */
void ops_geglu(float *x, const float *y, int64_t n);
/* x[i] = cap * tanh(x[i] / cap) */
void ops_softcap(float *x, int64_t n, float cap);

#endif
